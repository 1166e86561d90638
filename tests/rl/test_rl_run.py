"""RLCS end to end on CPU: torchrun (2 ranks, ZeRO-3, gloo) with the HF engine on the tiny Glm4v,
grading, the logged metrics, checkpoints, and a kill-and-resume that continues exactly."""

from __future__ import annotations

import json

import pytest

from tests.rl.helpers import TASK_VERIFIERS, save_policy, task_data, tiny_policy, warm_start
from tests.trainer.launching import check, launch, metrics

STEPS = 6
# Everything rlcs.md asks to log every step.
LOGGED = ["reward/max", "reward/min", "tier_count/medium", "expansion_raw", "expansion_ema",
          "degenerate_fraction_rollout", "degenerate_fraction_trained", "response_length_mean",
          "response_length_p95", "truncation_rate", "forced_answer_rate", "logprob_gap", "clip_fraction",
          "grad_norm", "time/rollout_s", "time/reward_s", "time/train_s", "time/sync_s", "loss", "prompt_ids",
          "grading_error_rate"]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A briefly warm-started tiny Glm4v: right on some prompts, wrong on others."""
    root = tmp_path_factory.mktemp("rl")
    train, _ = task_data(root / "data", n_train=96, n_eval=16)
    model, tok = tiny_policy(text_only=False)
    warm_start(model, tok, train, steps=80)
    return save_policy(model, tok, root / "sft"), train


def _args(policy, run, extra=()):
    path, train = policy
    return ["recipe=rlcs_tiny", f"model.init={path}", f"data.path={train}", "eval.path=null",
            f"trainer.max_steps={STEPS}", "trainer.save_every=2", "batch.prompts_per_step=6",
            "rollout.group_size=4", "rollout.max_new_tokens=16", "logging.progress_bar=false",
            f"hydra.run.dir={run}", *TASK_VERIFIERS, *extra]


@pytest.fixture(scope="module")
def graded(policy):
    path, train = policy
    proc = check(launch("grade.py", ["recipe=grade_tiny", f"model.init={path}", f"data.path={train}", "k=4",
                                     "chunk_prompts=40", "rollout.max_new_tokens=16", *TASK_VERIFIERS]))
    return json.loads(proc.stdout.strip().splitlines()[-1]), train.with_name("train.difficulty.jsonl")


@pytest.fixture(scope="module")
def full_run(policy, graded, tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    check(launch("rl.py", _args(policy, run), nproc=2))
    return run


def test_grading_writes_a_complete_sidecar(graded):
    counts, sidecar = graded
    lines = [json.loads(x) for x in sidecar.read_text().splitlines()]
    assert counts["graded"] == len(lines) == 96 and {x["samples"] for x in lines} == {4}
    assert sum(v for k, v in counts.items() if k.startswith("tier/")) == 96
    assert len({k for k in counts if k.startswith("tier/")}) >= 2  # the warm start spreads difficulty


def test_responses_the_verifier_could_not_grade_are_a_logged_rate():
    from stages.rl.curriculum import GroupOutcome
    from stages.rl.groups import GroupResult
    from stages.rl.metrics import rollout_metrics
    from stages.rl.rollout.base import Completion

    done = Completion([5, 6], [-0.1, -0.2], [True, True], "stop")
    groups = [GroupResult(0, 4, [done, done], [0.0, 1.0], [True, True], [(), ()], ["wrong", "correct"]),
              GroupResult(1, 4, [done, done], [0.0, 0.0], [True, False], [(), ()],
                          ["bad_ground_truth:OCR gold must be a string, got int", "format:no_box"])]
    got = rollout_metrics(groups, [GroupOutcome(0, [0.0, 1.0]), GroupOutcome(1, [0.0, 0.0])], [0], 1.0)
    assert got["grading_error_rate"] == 0.25 and got["format_ok_rate"] == 0.75


def test_two_rank_run_logs_everything_and_trains(full_run):
    lines = metrics(full_run)
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    for key in LOGGED:
        assert key in lines[-1], key
    assert all(m["groups_kept"] == 6 and m["prompts_rolled_out"] >= 6 for m in lines)
    assert any(m["tokens_trained"] > 0 for m in lines) and all(m["loss"] is not None for m in lines)
    # The HF engine runs the trainer's own weights: log-probs agree up to float noise.
    assert max(m["logprob_gap"] for m in lines) < 1e-3
    assert all(m["grading_error_rate"] == 0.0 for m in lines)  # every ground truth read by its verifier
    assert sum(sum(v for k, v in m.items() if k.startswith("tier_count/")) for m in lines) == sum(
        m["prompts_rolled_out"] for m in lines)
    assert list((full_run / "wandb").glob("offline-run-*/run-*.wandb"))  # a real offline wandb run
    ckpt = full_run / "checkpoints" / f"step_{STEPS}"
    assert (ckpt / "hf" / "model.safetensors").exists()
    state = json.loads((ckpt / "rank_0.json").read_text())["sampler"]
    assert state == json.loads((ckpt / "rank_1.json").read_text())["sampler"]  # every rank, one sampler
    assert sum(c[2] for c in state["online"].values()) == sum(m["prompts_rolled_out"] for m in lines)


def test_kill_and_resume_continues_with_the_same_sampler_and_prompts(policy, graded, full_run, tmp_path):
    run = tmp_path / "run"
    killed = launch("rl.py", _args(policy, run), nproc=2, fault="kill_in_step:5")
    assert killed.returncode != 0
    assert (run / "checkpoints" / "latest").read_text() == "step_4"
    check(launch("rl.py", _args(policy, run), nproc=2))  # resume=auto
    resumed, reference = metrics(run), metrics(full_run)
    assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))
    for got, want in zip(resumed[4:], reference[4:]):
        assert got["prompt_ids"] == want["prompt_ids"]
        for key in ("reward_mean", "expansion_ema", "degenerate_fraction_trained", "tokens_trained"):
            assert got[key] == want[key], key
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-7)
    final = lambda r: json.loads((r / "checkpoints" / f"step_{STEPS}" / "rank_0.json").read_text())["sampler"]
    assert final(run) == final(full_run)
