"""A checkpoint's manifest: every file's size and SHA-256, written after all files and before COMPLETE.

At resume a checkpoint whose files do not match (a truncated shard, a missing file, flipped bytes)
is damaged. Checksums are split over the ranks (file i is hashed by rank i % world), so a large
checkpoint is hashed in parallel; the helpers here are plain functions of a directory and a share.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.json"
NOT_LISTED = {MANIFEST, "COMPLETE"}


def list_files(root: Path) -> list[str]:
    """Every file under root (relative POSIX paths, sorted), the manifest and marker excepted."""
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in NOT_LISTED:
                out.append(rel)
    return sorted(out)


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digest_share(root: Path, files: list[str], rank: int, world: int) -> dict[str, dict[str, Any]]:
    """{file: {size, sha256}} for this rank's share of files."""
    return {rel: {"size": (root / rel).stat().st_size, "sha256": sha256(root / rel)}
            for rel in files[rank::world]}


def write_text_atomic(path: Path, text: str) -> None:
    """`path` holds either its old content or all of `text`, whatever kills the process when."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_manifest(root: Path, entries: dict[str, dict[str, Any]]) -> None:
    write_text_atomic(root / MANIFEST, json.dumps({"files": dict(sorted(entries.items()))}, indent=1))


def read_manifest(root: Path) -> dict[str, dict[str, Any]] | None:
    """The manifest's entries; None when the checkpoint has none (written before manifests)."""
    path = root / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text())["files"]


def check_share(root: Path, rank: int = 0, world: int = 1, checksums: bool = True) -> list[str]:
    """What is wrong with root against its manifest: every file's presence and size, and the
    checksums of this rank's share. Empty: intact (or no manifest to check against)."""
    try:
        entries = read_manifest(root)
    except (OSError, ValueError, KeyError) as err:
        return [f"{MANIFEST} unreadable ({type(err).__name__})"]
    if entries is None:
        return []
    problems = []
    for i, (rel, entry) in enumerate(sorted(entries.items())):
        path = root / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel} missing")
            continue
        if size != entry["size"]:
            problems.append(f"{rel} has {size} bytes, {entry['size']} expected")
        elif checksums and i % world == rank and sha256(path) != entry["sha256"]:
            problems.append(f"{rel} checksum mismatch")
    return problems
