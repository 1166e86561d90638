"""Nothing left running: workers die with torchrun, children with the trainer, even on SIGKILL;
a run directory that a live run writes to refuses a second run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.trainer.launching import REPO, descendants, launch, launch_command, launch_env, metrics, running
from trainer.run_lock import LOCK_NAME, RunDirLocked, RunLock


def _gone(pids: list[int], within_s: float) -> list[int]:
    """The processes still running after up to within_s seconds."""
    deadline = time.monotonic() + within_s
    while True:
        alive = running(pids)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _run_python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=launch_env(), cwd=REPO,
                            stdout=subprocess.PIPE, text=True)


def test_sigkill_of_torchrun_alone_takes_its_workers_and_the_lock_refuses_a_second_run(tmp_path):
    from data_pipelines.shards import write_shards
    from data_pipelines.synthetic import make_interleaved_corpus

    docs = make_interleaved_corpus(tmp_path / "data", num_docs=40, seed=0, text_words=(20, 120))
    write_shards(docs, tmp_path / "data", tmp_path / "shards", samples_per_shard=10)
    run = tmp_path / "run"
    args = ["recipe=pretrain_tiny", "data.packing.seq_len=256", f"data.shards={tmp_path / 'shards'}",
            "trainer.max_steps=500", "trainer.save_every=1000", "logging.wandb_mode=disabled",
            "logging.progress_bar=false", f"hydra.run.dir={run}"]
    first = subprocess.Popen(launch_command("pretrain.py", args, nproc=2), env=launch_env(), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start training"
            time.sleep(0.5)
        owner = json.loads((run / LOCK_NAME).read_text())
        workers = descendants(first.pid)
        assert owner["pid"] in workers  # rank 0 holds the lock

        second = launch("pretrain.py", args + ["trainer.max_steps=2"], timeout=240)
        assert second.returncode != 0
        assert f"in use by a live run (host {owner['host']}, pid {owner['pid']}" in second.stderr
        steps_before = len(metrics(run))

        os.kill(first.pid, signal.SIGKILL)  # the launcher only: its workers are in sessions of their own
        first.wait()
        assert _gone(workers, within_s=10) == []
        assert len(workers) >= 2  # the two ranks (and their DataLoader workers) were there, now gone
        time.sleep(1.0)
        assert len(metrics(run)) <= steps_before + 2  # nobody trains into the directory any more
    finally:
        for pid in running(descendants(first.pid)) if first.poll() is None else []:
            os.kill(pid, signal.SIGKILL)
        first.kill()


def test_a_dead_owners_lock_is_taken_over_and_a_live_ones_is_not(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = os.uname().nodename
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": host, "pid": dead.pid, "start_ticks": 1}))
    lock = RunLock(tmp_path).acquire()
    assert lock.previous["pid"] == dead.pid
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    other = subprocess.run([sys.executable, "-c", f"from trainer.run_lock import RunLock; RunLock({str(tmp_path)!r}).acquire()"],
                           env=launch_env(), cwd=REPO, capture_output=True, text=True)
    assert other.returncode != 0 and f"pid {os.getpid()}" in other.stderr  # another process, a live owner
    assert RunLock(tmp_path).acquire().previous is None  # the owner itself again (two stages in one process)
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()

    # A pid that lives but started at another time is a reused pid: its lock is stale.
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": host, "pid": os.getpid(), "start_ticks": -5}))
    RunLock(tmp_path).acquire().release()
    # Another host's lock: alive while its heartbeat is fresh, taken over once stale.
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(RunDirLocked, match="host elsewhere"):
        RunLock(tmp_path).acquire()
    os.utime(tmp_path / LOCK_NAME, (time.time() - 3600, time.time() - 3600))
    assert RunLock(tmp_path).acquire().previous["host"] == "elsewhere"


def test_forked_children_and_reward_workers_die_with_a_sigkilled_trainer():
    trainer = _run_python("""
        import multiprocessing, os, sys, time
        from trainer import lifetime
        from stages.rl.rewards import RewardConfig, RewardPool
        lifetime.adopt()
        forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,))
        forked.start()  # as vLLM's engine core on CPU and DataLoader workers start
        pool = RewardPool(RewardConfig(), num_workers=2)  # forkserver, then workers forked from it
        print(" ".join(str(w.process.pid) for w in pool._workers), forked.pid, flush=True)
        time.sleep(600)
    """)
    pids = [int(p) for p in trainer.stdout.readline().split()]
    children = descendants(trainer.pid)
    assert set(children) >= set(pids) and len(children) >= 4  # + the forkserver
    trainer.kill()
    trainer.wait()
    assert _gone(children, within_s=10) == []
