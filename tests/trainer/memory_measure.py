"""Measure activation memory of a real CPU forward + backward, for the planner's cross-checks.

Two independent measurements:
- `saved_bytes`: bytes of the distinct storages autograd saves for backward while `fn` runs
  (`torch.autograd.graph.saved_tensors_hooks`), parameters excluded. Deterministic. Blind to what
  non-reentrant activation checkpointing keeps (it swaps in its own hooks inside each layer).
- `HeapSampler`: glibc's count of bytes in use (`mallinfo2`: arena + mmapped chunks), sampled at
  every module's entry and exit and around every autograd node in backward. PyTorch's CPU
  allocator takes tensor memory from malloc, so the samples follow tensor memory; a peak inside a
  single op is missed, everything between ops is seen.
"""

from __future__ import annotations

import ctypes
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def heap_in_use() -> int | None:
    """Bytes malloc has handed out and not got back (None where glibc's mallinfo2 is missing)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


class HeapSampler:
    """Peak heap bytes above a baseline over a forward + backward, parameter gradients excluded."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.handles = []
        self.grad_bytes = 0
        self.base = 0
        self.peak = 0

    def sample(self, *_args) -> None:
        self.peak = max(self.peak, heap_in_use() - self.grad_bytes)

    def __enter__(self) -> "HeapSampler":
        for module in self.model.modules():
            self.handles.append(module.register_forward_pre_hook(lambda m, a: self.sample()))
            self.handles.append(module.register_forward_hook(lambda m, a, o: self.sample()))
        for p in self.model.parameters():
            if p.requires_grad:
                self.handles.append(p.register_post_accumulate_grad_hook(self._grad_allocated))
        self.base = self.peak = heap_in_use()
        return self

    def _grad_allocated(self, p: torch.Tensor) -> None:
        if not getattr(p, "_sampler_counted", False):
            p._sampler_counted = True
            self.grad_bytes += p.grad.numel() * p.grad.element_size()
        self.sample()

    def watch_backward(self, loss: torch.Tensor) -> None:
        """Sample before and after every autograd node that backward from `loss` will run."""
        seen, stack = set(), [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            node.register_prehook(lambda grads: self.sample())
            node.register_hook(lambda grads_in, grads_out: self.sample())
            stack.extend(next_node for next_node, _ in node.next_functions)

    def __exit__(self, *exc) -> None:
        self.sample()
        for handle in self.handles:
            handle.remove()
        for p in self.model.parameters():
            if hasattr(p, "_sampler_counted"):
                del p._sampler_counted

    @property
    def above_base(self) -> int:
        return self.peak - self.base
