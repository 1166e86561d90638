"""Training throughput of the pretraining stage: tokens/s, step time and (on GPU) MFU.

    python bench/train_speed.py                       # CPU: tiny preset, 1 process
    python bench/train_speed.py --preset glm41v_1b --seq-len 8192 --nproc 1 --steps 30   # one H100

Runs the real stage (launch/pretrain.py: packing, ZeRO-3, the uniform vision forward) on
synthetic shards and reads metrics.jsonl; the first steps (warm-up, allocator) are left out.
MFU = model FLOPs per token x tokens/s / peak, with model FLOPs per token = 6 x (non-embedding
parameters) + 12 x layers x hidden x seq_len (causal attention, fwd + bwd, halved for causality
is ignored as usual for packed rows) — the PaLM convention.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def flops_per_token(preset: str, seq_len: int) -> tuple[float, int]:
    import torch

    from data_pipelines.tokenizer import build_tiny_tokenizer
    from trainer.model import build_model, count_parameters, load_preset

    cfg = load_preset(preset)
    cfg.tokenizer = "tiny"
    cfg.vocab_size = max(cfg.vocab_size, 2048)
    with torch.device("meta"):
        model = build_model(cfg, build_tiny_tokenizer())
    params = count_parameters(model)["total"]
    embedding = cfg.vocab_size * cfg.text_hidden_size * 2  # input embedding + untied head
    return 6 * (params - embedding) + 12 * cfg.text_num_hidden_layers * cfg.text_hidden_size * seq_len, params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--docs", type=int, default=400)
    args = parser.parse_args()

    import torch

    from data_pipelines.shards import write_shards
    from data_pipelines.synthetic import make_interleaved_corpus

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        docs = make_interleaved_corpus(tmp / "raw", args.docs, seed=0)
        write_shards(docs, tmp / "raw", tmp / "shards", samples_per_shard=max(1, args.docs // (4 * args.nproc)))
        overrides = [
            "recipe=pretrain_tiny", f"model={args.preset}", "model.tokenizer=tiny", "model.vocab_size=2048",
            f"data.shards={tmp / 'shards'}", f"data.packing.seq_len={args.seq_len}", f"data.batch_rows={args.rows}",
            f"trainer.max_steps={args.steps}", f"trainer.save_every={args.steps + 1}", "trainer.optim.warmup_steps=2",
            "logging.wandb_mode=disabled", "logging.progress_bar=false", f"hydra.run.dir={tmp / 'run'}",
        ]
        launcher = [sys.executable] if args.nproc == 1 else [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(launcher + [str(REPO / "launch" / "pretrain.py")] + overrides, check=True, env=env, cwd=REPO)
        lines = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]

    steady = lines[min(3, len(lines) - 1):]
    tokens_per_s = sum(m["tokens_per_s"] for m in steady) / len(steady)
    step_time = sum(m["step_time_s"] for m in steady) / len(steady)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    per_token, params = flops_per_token(args.preset, args.seq_len)
    print(f"preset {args.preset} ({params / 1e6:.1f}M params), {args.nproc} process(es) on {device}, "
          f"{args.rows} x {args.seq_len} tokens per rank per step")
    print(f"tokens/s {tokens_per_s:,.0f}   step time {step_time:.3f} s   "
          f"packing efficiency {sum(m['packing_efficiency'] for m in steady) / len(steady):.3f}")
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device), None)
    if peak:
        print(f"MFU {per_token * tokens_per_s / (peak * args.nproc):.1%} (target >= 45%)")
    else:
        print(f"model TFLOP/s {per_token * tokens_per_s / 1e12:.3f} (no GPU peak known for {device}: no MFU)")


if __name__ == "__main__":
    main()
