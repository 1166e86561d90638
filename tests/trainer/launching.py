"""Run launch/ entry points in subprocesses (plain python or torchrun on gloo) for stage tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(fault: str | None = None, **extra: str) -> dict[str, str]:
    """The environment a launched stage runs in: repo on the path, one thread, the given fault."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("PONDER_FAULT", None)
    if fault:
        env["PONDER_FAULT"] = fault
    return env


def launch_command(script: str, overrides: list[str], nproc: int = 1) -> list[str]:
    """`python launch/<script>` (nproc 1) or `torchrun --nproc_per_node=<nproc> launch/<script>`."""
    if nproc == 1:
        cmd = [sys.executable, str(REPO / "launch" / script)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", str(REPO / "launch" / script)]
    return cmd + overrides


def launch(script: str, overrides: list[str], nproc: int = 1, fault: str | None = None,
           timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a stage to the end (see launch_command) and capture its output."""
    return subprocess.run(launch_command(script, overrides, nproc), env=launch_env(fault), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stderr tail ---\n{proc.stderr[-4000:]}"
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tagged_processes(tag: str, key: str = "PONDER_TEST_TAG") -> list[int]:
    """PIDs of live processes whose environment carries `key=tag` (children inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"{key}={tag}".encode() in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in ticks) of a live process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int, recursive: bool = True) -> list[int]:
    """PIDs of a process's children (and theirs), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents.setdefault(stat[1], []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        if recursive:
            todo += kids
    return out


def running(pids: list[int]) -> list[int]:
    """Those of pids still running (zombies are dead)."""
    return [p for p in pids if (stat := _stat(p)) is not None and stat[0] != "Z"]
