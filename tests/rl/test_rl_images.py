"""RLCS on image prompts (issue #12): 2 ranks, ZeRO-3, the HF engine, a tiny Glm4v warm-started on
the visual tasks. The rollouts and the update both saw the images (counted where pixels enter the
engine's generate and the trained model's vision tower), and the groups trained on are informative."""

from __future__ import annotations

import subprocess
import sys

from data_pipelines.prompts import load_prompt_records
from data_pipelines.visual_tasks import DOMAIN_VERIFIERS, correct_response
from tests.rl.helpers import save_policy, tiny_policy, warm_start
from tests.trainer.launching import REPO, check, launch, metrics

STEPS = 4


def test_two_rank_rlcs_on_image_prompts_trains_on_what_it_saw(tmp_path):
    tasks = "visual_count,visual_majority"
    subprocess.run([sys.executable, "-m", "data_pipelines.visual_tasks", "--out", str(tmp_path / "data"), "--num", "64",
                    "--seed", "0", "--stage", "rl", "--difficulty", "1-2", "--tasks", tasks, "--no-difficulty-label"],
                   check=True, cwd=REPO)
    # The held-out set lives in another directory, its images next to it (not next to the training prompts).
    subprocess.run([sys.executable, "-m", "data_pipelines.visual_tasks", "--out", str(tmp_path / "held_out"), "--num",
                    "8", "--seed", "1", "--split", "eval", "--stage", "rl", "--difficulty", "1-2", "--tasks", tasks],
                   check=True, cwd=REPO)
    train = tmp_path / "data" / "rl" / "train.jsonl"
    records, _ = load_prompt_records(train)
    assert all(len(r.images) == 1 for r in records)
    model, tokenizer = tiny_policy(text_only=False)
    warm_start(model, tokenizer, train, steps=160, batch=16, respond=correct_response)
    policy = save_policy(model, tokenizer, tmp_path / "sft")
    run = tmp_path / "run"
    check(launch("rl.py", ["recipe=rlcs_tiny", f"model.init={policy}", f"data.path={train}",
                           f"eval.path={tmp_path / 'held_out' / 'rl' / 'eval.jsonl'}", f"eval.every={STEPS}",
                           "eval.samples=2", f"trainer.max_steps={STEPS}", f"trainer.save_every={STEPS}", "batch.prompts_per_step=6",
                           "rollout.group_size=4", "rollout.max_new_tokens=40", "rollout.forced_answer_tokens=16",
                           "logging.progress_bar=false", f"hydra.run.dir={run}",
                           *[f"++rewards.domain_verifiers.{d}={v}" for d, v in DOMAIN_VERIFIERS.items()]], nproc=2))
    lines = metrics(run)
    evals = [m for m in lines if "eval/accuracy" in m]
    # Before and after training, every held-out prompt was rolled out with its own image.
    assert [(m["step"], m["eval/prompts"], m["eval/prompts_skipped"]) for m in evals] == [(0, 8, 0), (STEPS, 8, 0)]
    lines = [m for m in lines if m["step"] > 0]
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    # Every rolled-out prompt carries one image, sent with each of its G sequences (and again with a
    # forced answer's continuation).
    assert lines[-1]["images/rollout"] >= 4 * sum(m["prompts_rolled_out"] for m in lines) > 0
    # The vision tower of the trained model ran on real images at every step (π_old and updates).
    seen = [m["images/train"] for m in lines]
    assert seen[0] > 0 and all(b > a for a, b in zip(seen, seen[1:]))
    assert all(m["tokens_trained"] > 0 for m in lines)
    assert sum(m["degenerate_fraction_trained"] for m in lines) / STEPS <= 0.5
