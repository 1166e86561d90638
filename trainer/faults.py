"""Fault injection for the kill-and-resume and non-finite-loss tests (off unless PONDER_FAULT is set).

PONDER_FAULT="kill_in_step:15"  SIGKILL this process mid-step 15 (after backward, before the update)
PONDER_FAULT="kill_in_save:20"  SIGKILL mid-save of step 20 (shards written, not yet renamed)
PONDER_FAULT="nan_loss:5,6"     make the loss of steps 5 and 6 non-finite
PONDER_FAULT="enospc_in_save:20"  the save of step 20 finds the disk full (ENOSPC from torch.save)
PONDER_FAULT="error_in_save:20"   an exception in the save of step 20, after every file is written
Only rank PONDER_FAULT_RANK (default 0) is hit; a killed rank takes the whole torchrun job down.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import torch


def _spec() -> tuple[str, set[int]]:
    raw = os.environ.get("PONDER_FAULT", "")
    if not raw or os.environ.get("RANK", "0") != os.environ.get("PONDER_FAULT_RANK", "0"):
        return "", set()
    kind, _, steps = raw.partition(":")
    return kind, {int(s) for s in steps.split(",") if s}


def maybe_kill(where: str, step: int) -> None:
    kind, steps = _spec()
    if kind == f"kill_in_{where}" and step in steps:
        os.kill(os.getpid(), signal.SIGKILL)


def nan_loss(step: int) -> bool:
    kind, steps = _spec()
    return kind == "nan_loss" and step in steps


def maybe_raise(where: str, step: int) -> None:
    kind, steps = _spec()
    if kind == f"error_in_{where}" and step in steps:
        raise RuntimeError(f"injected failure in the {where} of step {step} (PONDER_FAULT)")


@contextmanager
def disk_full(step: int) -> Iterator[None]:
    """Within the block, torch.save (DeepSpeed's writer) fails as on a full disk at the hit step."""
    kind, steps = _spec()
    if kind != "enospc_in_save" or step not in steps:
        yield
        return

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    with mock.patch.object(torch, "save", full):
        yield
