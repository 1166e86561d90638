"""Long-context pretraining with and without sequence parallelism: per-rank peak memory, tokens/s.

    python bench/long_context.py                  # pretrain_long_tiny (8,192-token rows), 2 CPU ranks
    python bench/long_context.py --steps 8 --seq-len 16384

Runs the real stage (launch/pretrain.py, recipe=pretrain_long_tiny: ZeRO-3, ponder_varlen, videos
in the documents) twice on the same 2 ranks and the same synthetic shards: sp=1 (each rank a whole
row, data parallel 2) and sp=2 (each row split over both ranks). Every rank records its peak
resident memory (ru_maxrss: weights, optimizer, activations and the Python/torch baseline) through
`--rank-peak`, a wrapper that runs the stage's script in the same process. tokens/s is over the
steps after the first two (warm-up), from metrics.jsonl.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import runpy
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rank_peak(out_dir: str, script: str, args: list[str]) -> None:
    """Run `script` as __main__ (torchrun worker) and write this rank's peak RSS when it exits."""
    def record() -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        Path(out_dir, f"rank_{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"peak_rss_bytes": peak}))

    atexit.register(record)
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data(root: Path, docs: int) -> Path:
    from data_pipelines.shards import write_shards
    from data_pipelines.synthetic import make_interleaved_corpus

    path = make_interleaved_corpus(root, docs, seed=0, text_words=(800, 3000), video_fraction=0.3)
    write_shards(path, root, root / "shards", samples_per_shard=8)
    return root / "shards"


def run(sp: int, shards: Path, work: Path, steps: int, seq_len: int) -> dict:
    run_dir, peaks = work / f"sp{sp}", work / f"sp{sp}_peaks"
    peaks.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_port()}",
           str(Path(__file__).resolve()), "--rank-peak", str(peaks), str(REPO / "launch" / "pretrain.py"),
           "recipe=pretrain_long_tiny", f"data.shards={shards}", f"data.packing.seq_len={seq_len}",
           f"trainer.sequence_parallel_size={sp}", f"trainer.max_steps={steps}", f"trainer.save_every={steps + 1}",
           "logging.wandb_mode=disabled", "logging.progress_bar=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"sp={sp} failed:\n{proc.stderr[-3000:]}")
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = lines[2:]
    trained = lines[-1]["tokens"] - lines[1]["tokens"]  # "tokens" is cumulative
    seconds = sum(m["step_time_s"] for m in timed)
    peaks_gib = [json.loads((peaks / f"rank_{r}.json").read_text())["peak_rss_bytes"] / 2**30 for r in range(2)]
    return {"sp": sp, "rows_per_step": 2 // sp, "tokens_per_s": trained / seconds, "step_s": seconds / len(timed),
            "peak_gib": peaks_gib, "final_loss": lines[-1]["loss"], "skipped": lines[-1].get("skipped", {})}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-peak":
        _rank_peak(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=8192, help="8x pretrain_tiny's 1,024")
    parser.add_argument("--docs", type=int, default=96)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="ponder_long_") as tmp:
        work = Path(tmp)
        shards = make_data(work / "data", args.docs)
        results = [run(sp, shards, work, args.steps, args.seq_len) for sp in (1, 2)]
    print(f"pretrain_long_tiny, {args.seq_len:,}-token rows, 2 CPU ranks, ZeRO-3, {args.steps} steps "
          f"(tokens/s over steps 3-{args.steps})\n")
    print("| sequence parallel | rows per step | peak RSS rank 0 (GiB) | peak RSS rank 1 (GiB) | step (s) | tokens/s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| sp={r['sp']} | {r['rows_per_step']} | {r['peak_gib'][0]:.2f} | {r['peak_gib'][1]:.2f} | "
              f"{r['step_s']:.2f} | {r['tokens_per_s']:.0f} |")
    print("\n" + json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
