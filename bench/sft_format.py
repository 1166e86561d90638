"""Does SFT teach the answer format? pretrain_tiny -> sft_tiny on synthetic visual QA, on CPU.

    python bench/sft_format.py [--work DIR] [--sft-steps 150] [--nproc 2]

1. 200 synthetic interleaved documents -> shards; `pretrain_tiny` for 30 steps (the base model).
2. 1,000 synthetic chat records (colour / counting / arithmetic VQA, text-only sums, two-image,
   two-turn and video questions) with `<think>…</think><answer>…<|begin_of_box|>X<|end_of_box|></answer>`
   responses; 64 held-out records from another seed.
3. `sft_tiny` from the pretraining run (weights only), evaluating every 50 steps: held-out loss
   and the fraction of greedy answers to the 64 held-out prompts that pass the format gate
   (`data_pipelines.answer_format.format_violation`, box required).
Prints the compliance curve and wall times; exits 1 if the final compliance is below 95%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUIET = ["logging.wandb_mode=disabled", "logging.progress_bar=false"]


def torchrun(script: str, args: list[str], nproc: int) -> float:
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", str(REPO / "launch" / script)]
    proc = subprocess.run(cmd + args, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{script} failed:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="sft_format_"))
    sys.path.insert(0, str(REPO))
    from data_pipelines.shards import write_shards
    from data_pipelines.synthetic import make_interleaved_corpus, make_sft_records

    started = time.perf_counter()
    docs = make_interleaved_corpus(work / "pretrain_data", num_docs=200, seed=0)
    write_shards(docs, work / "pretrain_data", work / "pretrain_data" / "shards", samples_per_shard=25, overwrite=True)
    train = make_sft_records(work / "sft_data", n=1000, seed=0, name="train.jsonl")
    held_out = make_sft_records(work / "sft_data", n=64, seed=1, name="eval.jsonl")
    data_s = time.perf_counter() - started

    pretrain_s = torchrun("pretrain.py", ["recipe=pretrain_tiny", f"data.shards={work / 'pretrain_data' / 'shards'}",
                                          "trainer.max_steps=30", "trainer.save_every=30", "resume=never",
                                          f"hydra.run.dir={work / 'pretrain'}", *QUIET], args.nproc)
    sft_run = work / "sft"
    sft_s = torchrun("sft.py", ["recipe=sft_tiny", f"model.init={work / 'pretrain'}", f"data.train={train}",
                                f"data.eval={held_out}", f"trainer.max_steps={args.sft_steps}", "resume=never",
                                f"eval.every={args.eval_every}", "eval.generations=64",
                                f"hydra.run.dir={sft_run}", *QUIET], args.nproc)

    lines = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in lines if "eval_loss" in m]
    train_s = sum(m["step_time_s"] for m in lines)
    eval_s = sum(m["eval_time_s"] for m in evals)
    print(f"{'step':>5} {'train loss':>10} {'eval loss':>9} {'format ok':>9} {'tokens/answer':>13}  failures")
    for m in evals:
        print(f"{m['step']:>5} {m['loss']:>10.3f} {m['eval_loss']:>9.3f} {m['eval_format_compliance']:>9.1%} "
              f"{m['eval_response_tokens']:>13.1f}  {m['eval_format_failures'] or ''}")
    print(f"time: data {data_s:.0f} s, pretrain (30 steps) {pretrain_s:.0f} s, SFT {sft_s:.0f} s "
          f"({args.sft_steps} steps: {train_s:.0f} s training, {eval_s:.0f} s in {len(evals)} evals), "
          f"{args.nproc} processes")
    final = evals[-1]["eval_format_compliance"]
    print(f"final format compliance on {evals[-1]['eval_generations']} held-out prompts: {final:.1%}")
    return 0 if final >= 0.95 else 1


if __name__ == "__main__":
    raise SystemExit(main())
