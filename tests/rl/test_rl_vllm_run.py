"""`launch/rl.py` with the real vLLM engine on 2 CPU ranks (text-only Glm4 policy, one engine per
rank joined to torchrun): every step's rollouts come from the weights the trainer just synced, a run
killed mid-save resumes exactly, and no process outlives a run."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.rl.helpers import TASK_VERIFIERS, save_policy, task_data, tiny_policy, warm_start
from tests.trainer.launching import REPO, check, launch_command, launch_env, metrics, tagged_processes

pytest.importorskip("vllm")

STEPS = 3


def _run(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    tag = uuid.uuid4().hex
    env = launch_env(fault, PONDER_TEST_TAG=tag)
    proc = subprocess.run(launch_command("rl.py", args, nproc=2), env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert tagged_processes(tag) == [], "processes outlived the run"
    return proc


def test_two_rank_vllm_run_follows_every_update_and_resumes_exactly(tmp_path):
    train, _ = task_data(tmp_path / "data", n_train=48, n_eval=8)
    model, tok = tiny_policy(text_only=True)
    warm_start(model, tok, train, steps=60)  # right on some prompts, wrong on others: non-zero advantages
    policy = save_policy(model, tok, tmp_path / "sft")
    run = tmp_path / "run"
    args = ["recipe=rlcs_tiny", f"model.init={policy}", f"data.path={train}", "eval.path=null",
            "rollout.engine=vllm", f"rollout.sync_dir={tmp_path}", f"trainer.max_steps={STEPS}",
            "trainer.save_every=1", "trainer.optim.lr=1e-3",  # large steps: stale weights would show
            "batch.prompts_per_step=6", "rollout.group_size=4", "logging.progress_bar=false",
            "logging.wandb_mode=disabled", f"hydra.run.dir={run}", *TASK_VERIFIERS]

    # Killed while saving the last step, after logging it: its checkpoint never completes.
    killed = _run(args, fault=f"kill_in_save:{STEPS}")
    assert killed.returncode != 0 and (run / "checkpoints" / "latest").read_text() == f"step_{STEPS - 1}"
    assert "rollouts by the vllm engine" in killed.stdout + killed.stderr  # not the HF fallback
    first = metrics(run)
    assert [m["step"] for m in first] == list(range(1, STEPS + 1))
    trained = [m["step"] for m in first if m["tokens_trained"] > 0]
    assert len(trained) >= 2 and max(m["grad_norm"] for m in first) > 0
    # After each update both ranks' engines sample from the new weights: their log-probs are the
    # trainer's (the gap is measured on trained tokens, so on a step after an update too).
    assert max(trained) > 1 and max(m["logprob_gap"] for m in first) < 1e-4

    check(_run(args))  # resume=auto: the last step again, from the previous checkpoint
    again = metrics(run)
    assert [m["step"] for m in again] == list(range(1, STEPS + 1))
    want, got = first[-1], again[-1]
    assert got["prompt_ids"] == want["prompt_ids"]
    for key in ("reward_mean", "expansion_ema", "tokens_trained", "response_length_mean", "logprob_gap", "loss",
                "grad_norm"):
        assert got[key] == want[key], key
