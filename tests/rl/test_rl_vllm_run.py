"""`launch/rl.py` with the real vLLM engine (CPU, text-only Glm4 policy): every step's rollouts come
from the weights the trainer just synced, and SIGTERM (how torchrun and Slurm stop a worker) ends
the run with its vLLM processes, instead of leaving them running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from tests.rl.helpers import TASK_VERIFIERS, save_policy, task_data, tiny_policy, warm_start
from tests.trainer.launching import REPO, launch_command, launch_env, metrics, tagged_processes

pytest.importorskip("vllm")


def test_vllm_rollouts_follow_every_update_and_sigterm_stops_the_engine(tmp_path):
    train, _ = task_data(tmp_path / "data", n_train=48, n_eval=8)
    model, tok = tiny_policy(text_only=True)
    warm_start(model, tok, train, steps=60)  # right on some prompts, wrong on others: non-zero advantages
    policy = save_policy(model, tok, tmp_path / "sft")
    run, tag = tmp_path / "run", uuid.uuid4().hex
    args = ["recipe=rlcs_tiny", f"model.init={policy}", f"data.path={train}", "eval.path=null",
            "rollout.engine=vllm", f"rollout.sync_dir={tmp_path}", "trainer.max_steps=50", "trainer.save_every=2",
            "trainer.optim.lr=1e-2",  # large steps: rollouts from stale weights would show in the gap
            "batch.prompts_per_step=6", "rollout.group_size=4", "logging.progress_bar=false",
            "logging.wandb_mode=disabled", f"hydra.run.dir={run}", *TASK_VERIFIERS]
    output = tmp_path / "output.log"
    with output.open("w") as out:
        proc = subprocess.Popen(launch_command("rl.py", args), env=launch_env(PONDER_TEST_TAG=tag), cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)

    def tail() -> str:
        return output.read_text()[-3000:]

    try:
        deadline = time.monotonic() + 400
        log = run / "metrics.jsonl"
        while not (log.exists() and log.read_text().count("\n") >= 3):
            assert proc.poll() is None, tail()
            assert time.monotonic() < deadline, "no 3 RL steps within 400 s"
            time.sleep(1)
        assert len(tagged_processes(tag)) >= 2  # the trainer and vLLM's engine process(es)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, tail()
        deadline = time.monotonic() + 30
        while tagged_processes(tag) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert tagged_processes(tag) == [], "vLLM processes outlived the stopped run"
    finally:
        for pid in tagged_processes(tag):  # whatever a failure left behind
            os.kill(pid, signal.SIGKILL)

    lines = metrics(run)
    assert any(m["tokens_trained"] > 0 for m in lines) and max(m["grad_norm"] for m in lines) > 0
    # After each update the engine samples from the new weights: its log-probs are the trainer's.
    assert max(m["logprob_gap"] for m in lines) < 1e-4
    assert all(m["time/sync_s"] > 0 for m in lines)
    assert int((run / "checkpoints" / "latest").read_text().removeprefix("step_")) >= 2
