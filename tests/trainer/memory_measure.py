"""Measure activation memory of a real CPU forward + backward, for the planner's cross-checks.

Two independent measurements:
- `saved_bytes`: bytes of the distinct storages autograd saves for backward while `fn` runs
  (`torch.autograd.graph.saved_tensors_hooks`), parameters excluded. Deterministic. Blind to what
  non-reentrant activation checkpointing keeps (it swaps in its own hooks inside each layer).
- `TensorMemoryTrace`: every allocation and free PyTorch's CPU allocator reports to the profiler
  (`profile_memory=True`), summed in order: exact tensor bytes, peaks inside an op included,
  deterministic. (An earlier sampler read glibc's heap counters at module and autograd hooks; what
  else ran in the same process moved its numbers, so it missed a backward peak once under xdist.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def saved_bytes(fn: Callable[[], object], exclude: list[torch.Tensor]) -> tuple[int, object]:
    """(bytes of distinct storages saved for backward while fn runs, fn's result)."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return sum(seen.values()), result


MARK_AFTER_FORWARD = "ponder::after_forward"


class TensorMemoryTrace:
    """Tensor bytes above the start over a profiled region: the peak, and the level at a mark.

    Parameter gradients should exist before the region (zeroed, not None): backward then adds into
    them, and what the trace sees are activations and working memory only.
    """

    def __init__(self):
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        self.peak = 0
        self.at_mark: int | None = None

    def __enter__(self) -> "TensorMemoryTrace":
        self.profiler.__enter__()
        return self

    @staticmethod
    def mark() -> None:
        """Record the level here (read back as `at_mark`)."""
        with torch.profiler.record_function(MARK_AFTER_FORWARD):
            pass

    def __exit__(self, *exc) -> None:
        self.profiler.__exit__(*exc)
        level = 0
        for event in sorted(self.profiler.profiler.kineto_results.events(), key=lambda e: e.start_ns()):
            if event.name() == "[memory]":
                level += event.nbytes()  # negative for a free
                self.peak = max(self.peak, level)
            elif event.name() == MARK_AFTER_FORWARD:
                self.at_mark = level
