"""Does RLCS learn? A synthetic verifiable task on CPU, from a warm start that is right 30-60% of
the time, with the real pipeline: launch/grade.py, then launch/rl.py recipe=rlcs_tiny, then the
same number of steps with uniform sampling at an equal rollout budget.

    python bench/rl_learns.py [--steps 300] [--engine vllm] [--out DIR] [--reuse-warm-start]

Task (data_pipelines.synthetic.make_rl_task_records): "Largest number: 3 8 1" / "Smallest number: 4 2",
integer answers graded exactly; 512 training prompts, 128 held-out ones. Policy: a text-only Glm4
of the tiny preset's decoder shape (vLLM serves it on CPU), warm-started by supervised steps until
its held-out accuracy (sampled at temperature 1) is in [0.30, 0.60].

Held-out accuracy is measured on the final checkpoints, greedy and sampled (T = 1, 8 responses per
prompt). Degenerate groups (all responses right, or all wrong) are counted in the batches that
were trained on (`degenerate_fraction_trained` in metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.rl.helpers import TASK_VERIFIERS, save_policy, task_data, tiny_policy, warm_start  # noqa: E402

TARGET = (0.30, 0.60)


def accuracy(policy: Path, data: Path, samples: int, temperature: float) -> dict[str, float]:
    """Held-out pass rate of an HF checkpoint (transformers engine, the rewards of the recipe)."""
    from data_pipelines.processor import VisionProcessor
    from data_pipelines.chat import ChatRenderer
    from data_pipelines.prompts import encode_prompt_record, load_prompt_records
    from data_pipelines.tokenizer import SpecialTokens, load_tokenizer
    from stages.rl.policy import load_policy
    from trainer.checkpoint import resolve_hf_dir
    from stages.rl.rewards import RewardConfig, score
    from stages.rl.rollout.base import RolloutConfig, completion_text, rollout
    from stages.rl.rollout.hf_engine import HFEngine

    policy = resolve_hf_dir(policy)  # a run's checkpoints/step_N, or an HF directory
    tok = load_tokenizer(policy)
    special = SpecialTokens.from_tokenizer(tok)
    records, _ = load_prompt_records(data)
    prompts = [encode_prompt_record(r, ChatRenderer(tok, VisionProcessor())) for r in records]
    engine = HFEngine(load_policy(policy), special, batch_size=512)
    cfg = RolloutConfig(engine="hf", max_new_tokens=24, forced_answer_tokens=8)
    groups = rollout(engine, prompts, cfg, special, seeds=list(range(len(prompts))), n=samples,
                     temperature=temperature)
    rewards = RewardConfig(domain_verifiers={d: "counting" for d in ("max", "min", "count")})
    by_domain: dict[str, list[float]] = {}
    for r, group in zip(records, groups):
        for c in group:
            by_domain.setdefault(r.domain, []).append(score(r.domain, completion_text(c.token_ids, tok, special),
                                                            r.answer, config=rewards).reward)
    every = [x for v in by_domain.values() for x in v]
    return {"all": sum(every) / len(every), **{d: sum(v) / len(v) for d, v in sorted(by_domain.items())}}


def launch(script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "launch" / script), *args], env=env, cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def rl(run: Path, policy: Path, train: Path, held_out: Path, engine: str, steps: int,
       extra: list[str]) -> tuple[list[dict], float]:
    shutil.rmtree(run, ignore_errors=True)  # a fresh run, not a resume of an earlier bench's
    started = time.perf_counter()
    launch("rl.py", ["recipe=rlcs_tiny", f"model.init={policy}", f"data.path={train}", f"eval.path={held_out}",
                     f"eval.every={max(1, steps // 6)}",
                     f"rollout.engine={engine}", f"trainer.max_steps={steps}", f"trainer.save_every={steps}",
                     "logging.progress_bar=false", "logging.wandb_mode=disabled", f"rollout.sync_dir={run.parent}",
                     f"hydra.run.dir={run}", *TASK_VERIFIERS, *extra])
    elapsed = time.perf_counter() - started
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()], elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    parser.add_argument("--out", default=None)
    parser.add_argument("--reuse-warm-start", action="store_true", help="keep <out>/sft from an earlier run")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="rl_learns_"))
    train, held_out = task_data(root / "data", n_train=512, n_eval=128)

    # 1. Warm start until the policy is right 30-60% of the time (sampled, held out).
    sft, note = root / "sft", root / "sft" / "warm_start.json"
    if not (args.reuse_warm_start and note.exists()):
        model, tok = tiny_policy(text_only=True)
        done, start_acc = 0, 0.0
        while start_acc < TARGET[0] and done < 400:
            warm_start(model, tok, train, steps=10, seed=done)
            done += 10
            save_policy(model, tok, sft)
            start_acc = accuracy(sft, held_out, samples=4, temperature=1.0)["all"]
        if not TARGET[0] <= start_acc <= TARGET[1]:
            raise SystemExit(f"warm start landed at {start_acc:.2f}, outside {TARGET}: change the step size")
        note.write_text(json.dumps({"steps": done, "accuracy": start_acc}))
    print("warm start: {steps} supervised steps, held-out sampled accuracy {accuracy:.3f}".format(
        **json.loads(note.read_text())))

    # 2. Offline difficulty grading (pass@8), the curriculum's starting tiers.
    graded = json.loads(launch("grade.py", ["recipe=grade_tiny", f"model.init={sft}", f"data.path={train}",
                                            f"rollout.engine={args.engine}", *TASK_VERIFIERS]).stdout.splitlines()[-1])
    print("offline grading:", {k: v for k, v in graded.items() if k.startswith("tier/")})

    # 3. RLCS, then uniform sampling with the same number of rollouts per step.
    rlcs, rlcs_s = rl(root / "rlcs", sft, train, held_out, args.engine, args.steps, [])
    steps = [m for m in rlcs if m["step"] > 0]
    per_step = round(sum(m["prompts_rolled_out"] for m in steps) / len(steps))
    uniform, uniform_s = rl(root / "uniform", sft, train, held_out, args.engine, args.steps,
                            ["curriculum.enabled=false", f"batch.prompts_per_step={per_step}"])

    rows = []
    before_greedy = accuracy(sft, held_out, 1, 0.0)
    before_sampled = accuracy(sft, held_out, 8, 1.0)
    for name, lines, seconds in (("rlcs", rlcs, rlcs_s), ("uniform", uniform, uniform_s)):
        final = root / name / "checkpoints" / f"step_{args.steps}"
        greedy, sampled = accuracy(final, held_out, 1, 0.0), accuracy(final, held_out, 8, 1.0)
        trained = [m for m in lines if m["step"] > 0]
        degenerate = sum(m["degenerate_fraction_trained"] for m in trained) / len(trained)
        rollouts = sum(m["prompts_rolled_out"] for m in trained)
        rows.append((name, seconds, rollouts, degenerate, greedy, sampled))
        curve = [(m["step"], round(m["eval/accuracy"], 3)) for m in lines if "eval/accuracy" in m]
        quarters = [round(sum(m["degenerate_fraction_trained"] for m in q) / len(q), 3)
                    for q in (trained[i * len(trained) // 4 : (i + 1) * len(trained) // 4] for i in range(4))]
        print(f"{name}: held-out accuracy (T=1, 4 samples) by step {curve}; "
              f"degenerate groups trained by quarter of the run {quarters}")
    print(f"\nheld-out accuracy of the warm start: sampled {before_sampled['all']:.3f} "
          f"({', '.join(f'{k} {v:.2f}' for k, v in before_sampled.items() if k != 'all')}), "
          f"greedy {before_greedy['all']:.3f}")
    print(f"| run | steps | wall s | prompts rolled out | degenerate groups trained | held-out sampled (gain) "
          f"| held-out greedy (gain) |")
    print("|---|---|---|---|---|---|---|")
    for name, seconds, rollouts, degenerate, greedy, sampled in rows:
        print(f"| {name} | {args.steps} | {seconds:.0f} | {rollouts} | {100 * degenerate:.1f}% "
              f"| {sampled['all']:.3f} ({100 * (sampled['all'] - before_sampled['all']):+.1f} pts) "
              f"| {greedy['all']:.3f} ({100 * (greedy['all'] - before_greedy['all']):+.1f} pts) |")
    print("per domain, sampled:", {name: {k: round(v, 3) for k, v in s.items()} for name, *_, s in rows})
    print(f"artifacts: {root}")
    if any(math.isnan(r[3]) for r in rows):
        raise SystemExit("no steps logged")


if __name__ == "__main__":
    main()
