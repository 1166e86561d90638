"""Where a glm41v_1b training step on one GPU spends its time (the GPU check's `train` row, taken apart).

Variants, each in its own process on the same 8k packed row as `bench/gpu_check.py`'s train check:
  zero3_ckpt   DeepSpeed ZeRO-3 (1 rank) + activation checkpointing: what the stages run by default
  zero2_ckpt   the same under trainer.zero_stage=2; zero0_ckpt: trainer.zero_stage=0
  plain_ckpt   the same forward and loss with plain torch AdamW, checkpointing on
  plain        plain torch AdamW, no checkpointing
and for `zero3_ckpt` and `plain`: the GPU-busy fraction of a step (CUDA kernel time of a profiled
step over the unprofiled step time), the top kernels by CUDA time, and the top Python functions by
cumulative CPU time (cProfile) - a step whose GPU idles is bound by the host, not by the matmuls.

    bash bench/gpu_check.sh --prepare                  # here: the wheels (DeepSpeed, ...)
    device: pip install the wheels, then python bench/gpu_train_profile.py  (writes $OUT)
    python bench/gpu_train_profile.py --cpu-dry-run    # toy sizes on CPU: exercises the script
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.gpu_check import (  # noqa: E402 - the check's own row, builders and step functions
    GIB, build_on, deepspeed_step_fn, plain_step_fn, synchronize, train_inputs)

VARIANTS = ("zero3_ckpt", "zero2_ckpt", "zero0_ckpt", "plain_ckpt", "plain")
PROFILED = ("zero3_ckpt", "plain")


def setup(device: str, small: bool):
    import torch

    _, _, chunk, cfg, tokenizer, batch = train_inputs(device, small)
    torch.manual_seed(0)
    return build_on(device, cfg, tokenizer), batch, chunk


def timed_steps(step, batch, device: str, warmup: int, timed: int) -> float:
    for _ in range(warmup):
        step(batch)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(timed):
        step(batch)
    synchronize(device)
    return (time.perf_counter() - started) / timed


def profile_step(step, batch, device: str, out_dir: Path | None, name: str, step_s: float) -> dict:
    """Kernel time of one step over the unprofiled step time `step_s` (the profiler's own start and
    stop would inflate the wall), top kernels (torch.profiler), top Python functions (cProfile)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    synchronize(device)
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        step(batch)
        synchronize(device)
    wall = time.perf_counter() - started
    events = prof.key_averages()
    # The kernels' own time (an op's self device time is its kernels' again).
    device_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    kernels = events.table(sort_by="self_device_time_total" if device == "cuda" else "self_cpu_time_total",
                           row_limit=20)
    host_ops = events.table(sort_by="self_cpu_time_total", row_limit=20)
    cprof = cProfile.Profile()
    cprof.enable()
    step(batch)
    synchronize(device)
    cprof.disable()
    text = io.StringIO()
    pstats.Stats(cprof, stream=text).sort_stats("cumulative").print_stats(40)
    python_top = text.getvalue()
    text = io.StringIO()
    pstats.Stats(cprof, stream=text).sort_stats("tottime").print_stats(25)
    python_self = text.getvalue()
    if out_dir is not None:
        (out_dir / f"{name}_kernels.txt").write_text(kernels)
        (out_dir / f"{name}_host_ops.txt").write_text(host_ops)
        (out_dir / f"{name}_python.txt").write_text(python_top + "\n\n=== by own time ===\n" + python_self)
    return {"profiled_wall_s": wall, "device_busy_s": device_us / 1e6, "device_busy_fraction": device_us / 1e6 / step_s}


def child(variant: str, device: str, small: bool, out_dir: Path | None) -> dict:
    import torch

    model, batch, chunk = setup(device, small)
    if variant.startswith("zero"):
        step = deepspeed_step_fn(model, chunk, zero_stage=int(variant[len("zero")]))
    else:
        step = plain_step_fn(model, chunk)
        if variant == "plain":
            model.gradient_checkpointing_disable()  # plain_step_fn turns it on
    warmup, timed = (1, 2) if small else (3, 6)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_s = timed_steps(step, batch, device, warmup, timed)
    data = {"variant": variant, "step_s": step_s, "tokens": int(batch.num_tokens),
            "tokens_per_s": batch.num_tokens / step_s,
            "peak_gib": torch.cuda.max_memory_allocated() / GIB if device == "cuda" else float("nan")}
    if variant in PROFILED:
        data.update(profile_step(step, batch, device, out_dir, variant, step_s))
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=int, default=120, help="seconds per variant")
    args = parser.parse_args(argv)
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu_dry_run else "cuda"
    if args.child:
        print("RESULT " + json.dumps(child(args.child, device, args.cpu_dry_run, out_dir)), flush=True)
        return 0
    results = []
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--child", variant] + (["--cpu-dry-run"] if args.cpu_dry_run else [])
        command += ["--out", str(out_dir)] if out_dir is not None else []
        try:
            proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            results.append({"variant": variant, "error": f"timeout {args.timeout} s"})
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            results.append({"variant": variant, "error": " | ".join(proc.stderr.strip().splitlines()[-3:])[-400:]})
        else:
            results.append(json.loads(lines[-1][len("RESULT "):]))
        print(json.dumps(results[-1]), flush=True)
    if out_dir is not None:
        (out_dir / "train_profile.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
