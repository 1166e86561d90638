"""Behaviour check for refactors: 20-step runs of pretrain_tiny, sft_tiny and rlcs_tiny (2 ranks).

    python bench/same_metrics.py run --out /tmp/before      # on the old commit
    python bench/same_metrics.py run --out /tmp/after       # on the new one
    python bench/same_metrics.py compare /tmp/before /tmp/after

`run` makes its own data (synthetic, seeded) and policy (a seeded warm start), so two checkouts
produce the same inputs. `compare` demands bit-identical values of every metric the first run
logged, on every step, timing fields aside; metrics only the second run logs are listed as new.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.trainer.launching import check, launch  # noqa: E402

STEPS = 20
TIMING = ("time/", "step_time_s", "tokens_per_s", "sync_fraction", "eval_time_s")


def _data(out: Path) -> dict[str, Path]:
    from data_pipelines.synthetic import make_rl_task_records
    from tests.rl.helpers import save_policy, tiny_policy, warm_start

    data = out / "data"
    py = [sys.executable, "-m"]
    subprocess.run(py + ["data_pipelines.synthetic", "interleaved", "--out", str(data / "pt"), "--num", "200"],
                   check=True, cwd=REPO)
    subprocess.run(py + ["data_pipelines.shards", "write", "--input", str(data / "pt" / "docs.jsonl"),
                         "--image-root", str(data / "pt"), "--out", str(data / "pt" / "shards"),
                         "--samples-per-shard", "20"], check=True, cwd=REPO)
    subprocess.run(py + ["data_pipelines.synthetic", "sft", "--out", str(data / "sft"), "--num", "200",
                         "--name", "train.jsonl"], check=True, cwd=REPO)
    subprocess.run(py + ["data_pipelines.synthetic", "sft", "--out", str(data / "sft"), "--num", "16", "--seed", "1",
                         "--name", "eval.jsonl"], check=True, cwd=REPO)
    rl_train = make_rl_task_records(data / "rl" / "train.jsonl", 96, 0)
    model, tok = tiny_policy(text_only=False)
    warm_start(model, tok, rl_train, steps=60)
    policy = save_policy(model, tok, data / "policy")
    return {"shards": data / "pt" / "shards", "sft": data / "sft", "rl": rl_train, "policy": policy}


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    d = _data(out)
    common = [f"trainer.max_steps={STEPS}", "trainer.save_every=10", "logging.progress_bar=false",
              "logging.wandb_mode=disabled"]
    check(launch("pretrain.py", ["recipe=pretrain_tiny", f"data.shards={d['shards']}", "data.packing.seq_len=512",
                                 f"hydra.run.dir={out / 'pretrain'}", *common], nproc=2))
    check(launch("sft.py", ["recipe=sft_tiny", f"data.train={d['sft'] / 'train.jsonl'}",
                            f"data.eval={d['sft'] / 'eval.jsonl'}", "eval.every=10", "eval.generations=4",
                            "eval.max_new_tokens=16", "data.records_per_shard=8", "data.packing.seq_len=768",
                            f"hydra.run.dir={out / 'sft'}", *common], nproc=2))
    verifiers = [f"rewards.domain_verifiers.{k}=counting" for k in ("max", "min", "count")]
    check(launch("rl.py", ["recipe=rlcs_tiny", f"model.init={d['policy']}", f"data.path={d['rl']}",
                           "eval.path=null", "batch.prompts_per_step=6", "rollout.group_size=4",
                           "rollout.max_new_tokens=16", f"hydra.run.dir={out / 'rl'}", *verifiers, *common],
                 nproc=2))


def _lines(path: Path) -> list[dict]:
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in m.items() if not k.startswith(TIMING)} for m in lines]


def compare(a: Path, b: Path) -> int:
    bad = 0
    for stage in ("pretrain", "sft", "rl"):
        left, right = _lines(a / stage / "metrics.jsonl"), _lines(b / stage / "metrics.jsonl")
        diffs = [(m["step"], k) for m, n in zip(left, right) for k in m if k not in n or m[k] != n[k]]
        new = sorted({k for m, n in zip(left, right) for k in n.keys() - m.keys()})
        same = len(left) == len(right) and not diffs
        bad += not same
        print(f"{stage:9s} {len(left):3d} vs {len(right):3d} lines  "
              f"{'bit-identical' if same else f'DIFFER at {diffs[:5]}'}" + (f"  (new: {', '.join(new)})" if new else ""))
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run").add_argument("--out", type=Path, required=True)
    cmp = sub.add_parser("compare")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.cmd == "run":
        run(args.out)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
