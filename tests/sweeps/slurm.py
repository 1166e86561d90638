"""A real single-machine Slurm for the sweep tests, and a driver for `launch/<stage>.py -m` sweeps on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_LOCAL = REPO / "scripts" / "slurm_local.sh"


@contextmanager
def local_slurm(nodes: int = 1) -> Iterator[dict[str, str]]:
    """Install Slurm when missing (skip, saying why, only if that is impossible), start it, stop it.

    nodes=2: two slurmd, ponder-n1 and ponder-n2, each in its own UTS/mount namespace (needs root).
    Yields the environment that points clients (sbatch, squeue, submitit) at the instance.
    """
    installed = subprocess.run([str(SLURM_LOCAL), "install"], capture_output=True, text=True, timeout=900)
    if installed.returncode != 0:
        reason = f"Slurm cannot be installed here: {installed.stderr.strip() or installed.stdout.strip()}"
        print(reason, file=sys.stderr)
        pytest.skip(reason)
    # Under /tmp, not pytest's private tmp dirs: munged runs as the munge user and must reach it.
    state = Path(tempfile.mkdtemp(prefix="ponder-slurm-", dir="/tmp"))
    command = "start" if nodes == 1 else "start2"
    started = subprocess.run([str(SLURM_LOCAL), command, str(state)], capture_output=True, text=True, timeout=120)
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "PYTHONUNBUFFERED": "1"}
    env.pop("PONDER_FAULT", None)
    try:
        assert started.returncode == 0, f"slurm_local.sh start failed:\n{started.stdout}\n{started.stderr}"
        yield env
    finally:
        # Jobs outlive slurmd (their slurmstepd keeps them): cancel and wait before stopping the daemons.
        subprocess.run(["scancel", "--partition=debug"], env=env, capture_output=True, timeout=60)
        wait_for(lambda: not squeue(env), timeout=60, what="the queue to drain", fail=False)
        stopped = subprocess.run([str(SLURM_LOCAL), "stop", str(state)], capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, f"slurm_local.sh stop failed:\n{stopped.stderr}"
        shutil.rmtree(state, ignore_errors=True)


def squeue(env: dict[str, str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %t"], env=env, capture_output=True, text=True, timeout=60)
    return out.stdout.split("\n")[:-1] if out.returncode == 0 else []


def wait_for(condition: Callable[[], bool], timeout: float, what: str, fail: bool = True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    if fail:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
    return False


def start_sweep(env: dict[str, str], script: str, overrides: list[str], sweep_dir: Path,
                launcher: str = "slurm_cpu") -> subprocess.Popen:
    """`python launch/<script> -m <overrides> hydra/launcher=<launcher>`, run from outside the repo."""
    cmd = [sys.executable, str(REPO / "launch" / script), "-m", *overrides,
           f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}"]
    log = open(sweep_dir.parent / f"{sweep_dir.name}.driver.log", "w")
    return subprocess.Popen(cmd, env=env, cwd=sweep_dir.parent, stdout=log, stderr=subprocess.STDOUT)


def finish_sweep(proc: subprocess.Popen, sweep_dir: Path, timeout: float) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the sweep did not finish in {timeout:.0f} s\n{sweep_logs(sweep_dir)}") from None
    assert code == 0, f"the sweep driver exited with {code}\n{sweep_logs(sweep_dir)}"


def array_job_id(sweep_dir: Path, num: int) -> str:
    """Slurm's id of sweep job `num` (`<array id>_<num>`), from submitit's folder names."""
    names = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.endswith(f"_{num}")]
    assert len(names) == 1, names
    return names[0]


def job_log(sweep_dir: Path, num: int) -> str:
    folder = sweep_dir / ".submitit" / array_job_id(sweep_dir, num)
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("*_log.*")))


def sweep_logs(sweep_dir: Path) -> str:
    driver = sweep_dir.parent / f"{sweep_dir.name}.driver.log"
    parts = [f"--- driver ---\n{driver.read_text()[-3000:]}" if driver.exists() else "(no driver log)"]
    for folder in sorted((sweep_dir / ".submitit").glob("*_*")) if (sweep_dir / ".submitit").exists() else []:
        for path in sorted(folder.glob("*_log.*")):
            parts.append(f"--- {folder.name}/{path.name} ---\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


def completed_steps(run_dir: Path) -> int:
    """Steps in metrics.jsonl so far, counting whole lines only (the writer may be mid-line)."""
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
