"""The splits of a downloaded hub dataset as its card says: README.md's YAML header lists
`configs: [{config_name, data_files: [{split, path}]}]`, paths being globs relative to the card.

File names alone cannot tell MathVerse's `testmini.parquet` from its `testmini_text_only.parquet`
(the same problems without their images): the card names them as two splits. records.py asks for
one split when a folder holds several: the card's, and the split words in file names beside it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CARD = "README.md"
_HEADER = re.compile(r"\A\s*---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)  # as the hub reads it


@dataclass(frozen=True)
class CardSplit:
    config: str
    split: str
    patterns: tuple[str, ...]  # globs relative to the card's folder (`data/train-*`)


def card_splits(directory: Path) -> tuple[Path, list[CardSplit]]:
    """(the card's folder, its splits): the card in `directory` or in the folder above it (a hub
    `data/`, one of MMMU's subjects; `..` when `directory` is `.`). No card, or one without
    `configs`: (directory, [])."""
    for root in (directory, Path(os.path.normpath(os.path.join(directory, "..")))):
        if splits := read_card(root / CARD):
            return root, splits
    return directory, []


def read_card(card: Path) -> list[CardSplit]:
    """Every config's splits; [] for a missing file, a card without configs or unreadable YAML (a
    card is documentation: it never stops a run)."""
    try:
        header = _HEADER.match(card.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError):
        return []
    if not header:
        return []
    import yaml

    try:
        meta = yaml.load(header.group(1), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # a corpus card: MBs
    except yaml.YAMLError as exc:
        logging.getLogger(__name__).warning("%s: its YAML header is not read (%s)", card, exc)
        return []
    configs = meta.get("configs") if isinstance(meta, dict) else None
    return [CardSplit(str(config.get("config_name", "default")), split, tuple(patterns))
            for config in (configs if isinstance(configs, list) else []) if isinstance(config, dict)
            for split, patterns in _data_files(config.get("data_files")) if patterns]


def _data_files(spec: Any) -> list[tuple[str, list[str]]]:
    """(split, paths) of the forms the hub takes: a path or a list of paths (the train split), a
    list of {split, path}, or a mapping split -> path(s)."""
    if isinstance(spec, dict):
        return [(str(split), _paths(paths)) for split, paths in spec.items()]
    if isinstance(spec, list) and all(isinstance(item, dict) for item in spec):
        return [(str(item.get("split", "train")), _paths(item.get("path"))) for item in spec]
    return [("train", _paths(spec))]


def _paths(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [v.removeprefix("./") for v in values if isinstance(v, str) and v]


def matches(relative_path: str, pattern: str) -> bool:
    """The hub's glob: `*` and `?` within one folder, `**` across folders (`[...]` is literal)."""
    return _compiled(pattern).fullmatch(relative_path) is not None


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern:
    parts = re.split(r"(\*\*/?|\*|\?)", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(p, re.escape(p)) for p in parts))


def splits_of(root: Path, splits: list[CardSplit], file: Path) -> list[tuple[str, str]]:
    """(split, the card's pattern under `root` that names it) for every card split holding `file`."""
    relative = Path(os.path.relpath(file, root)).as_posix()
    return [(s.split, str(root / pattern)) for s in splits for pattern in s.patterns if matches(relative, pattern)]
