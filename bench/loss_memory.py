"""Peak memory of the per-token loss (forward + backward of lm_head + cross-entropy) at the 9B
vocabulary, chunked vs whole-row, at 8k and 32k tokens: `python bench/loss_memory.py`.

The 32k whole-row case needs ~60 GB, more than this machine has, so every case is measured on fake
tensors (torch's FakeTensorMode: shapes and dtypes, no storage) by torch's MemTracker, which adds
up every tensor alive at each moment of the forward and backward. A real run at `--check-tokens`
cross-checks the tracker against the measured resident-memory high-water mark of a process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.loss import chunked_token_losses  # noqa: E402

VOCAB, HIDDEN = 151_552, 4096  # GLM-4.1V-9B
GIB = 2**30


def _case(tokens: int, vocab: int, hidden: int, dtype: torch.dtype):
    weight = torch.randn(vocab, hidden, dtype=dtype, requires_grad=True)  # lm_head
    x = torch.randn(1, tokens, hidden, dtype=dtype, requires_grad=True)
    y = torch.randint(0, vocab, (1, tokens))
    return weight, x, y


def _step(weight, x, y, chunk: int) -> None:
    # A function, not an nn.Module: the tracker follows a module through one call per step only.
    losses = chunked_token_losses(x, y, lambda h: torch.nn.functional.linear(h, weight), chunk)
    losses.sum().backward()


def tracked_peak(tokens: int, chunk: int, vocab: int = VOCAB, hidden: int = HIDDEN,
                 dtype: torch.dtype = torch.bfloat16) -> int:
    """Peak bytes of tensors created by the loss's forward and backward (inputs and weights excluded)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    with FakeTensorMode():
        weight, x, y = _case(tokens, vocab, hidden, dtype)
        tracker = MemTracker()
        tracker.track_external(weight, x, y)
        with tracker:
            before = tracker.get_tracker_snapshot("current")
            _step(weight, x, y, chunk)
        peak = tracker.get_tracker_snapshot("peak")
    device = next(iter(peak))
    return peak[device]["Total"] - before.get(device, {}).get("Total", 0)


def _real_peak_child(tokens: int, chunk: int, vocab: int, hidden: int) -> None:
    weight, x, y = _case(tokens, vocab, hidden, torch.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _step(weight, x, y, chunk)
    print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base}))


def real_peak(tokens: int, chunk: int, vocab: int, hidden: int) -> int:
    """Resident-memory high-water mark added by the loss step, in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--child", str(tokens), str(chunk), str(vocab), str(hidden)],
                         capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=2048, help="trainer.loss_chunk_tokens")
    parser.add_argument("--check-tokens", type=int, default=4096)
    parser.add_argument("--child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _real_peak_child(*args.child)
        return
    print(f"loss peak memory, vocab {VOCAB:,}, hidden {HIDDEN}, bf16 logits, chunk {args.chunk} (fake tensors)")
    print(f"{'tokens':>7} {'whole row GiB':>14} {'chunked GiB':>12} {'ratio':>7}")
    for tokens in (8192, 32768):
        whole, chunked = tracked_peak(tokens, 0), tracked_peak(tokens, args.chunk)
        print(f"{tokens:>7} {whole / GIB:>14.2f} {chunked / GIB:>12.2f} {whole / chunked:>7.1f}x")
    n, v, h = args.check_tokens, 32_768, 256
    print(f"cross-check, fp32, {n} tokens, vocab {v:,}, hidden {h}: tracker vs measured RSS high-water mark")
    for chunk in (0, 512):
        tracked, measured = tracked_peak(n, chunk, v, h, torch.float32), real_peak(n, chunk, v, h)
        print(f"  chunk {chunk:>4}: tracked {tracked / 2**20:8.1f} MiB  measured {measured / 2**20:8.1f} MiB "
              f"({measured / tracked:.2f}x)")


if __name__ == "__main__":
    main()
