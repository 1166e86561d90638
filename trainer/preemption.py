"""Preemption that saves: on the scheduler's signal every rank finishes its step, all save one
checkpoint together, and the run stops so that the requeued job resumes with no completed step lost.

The sweep job (launch/job.py) sets `PONDER_PREEMPT_SIGNAL` for its workers: `USR2` (submitit's
time-out/preemption warning, `--signal=USR2@signal_delay_s`) or `TERM` (clusters that preempt with
SIGTERM and a grace time before SIGKILL; USR2, the time-limit warning, still saves too). Without it (a plain `torchrun` outside a sweep job) nothing
is installed and the loop runs exactly as before, without the per-step agreement below.

The signal may reach the ranks at different steps (nodes get it at slightly different times): the
flag is all-reduced (MAX) once per step, so every rank stops after the same step.
"""

from __future__ import annotations

import os
import signal
import sys

import torch
import torch.distributed as dist

ENV = "PONDER_PREEMPT_SIGNAL"
SIGNALS = {"USR2": signal.SIGUSR2, "TERM": signal.SIGTERM}
# Exit status of a worker that saved and stopped on preemption (EX_TEMPFAIL: "try again later").
PREEMPTED_EXIT = 75


def configured_signals() -> tuple[signal.Signals, ...]:
    """The signals the job asked the workers to save on, none outside a sweep job."""
    name = os.environ.get(ENV, "").upper().removeprefix("SIG")
    if not name:
        return ()
    if name not in SIGNALS:
        sys.exit(f"ponder: {ENV}={os.environ[ENV]!r}: expected one of {sorted(SIGNALS)}")
    return tuple(dict.fromkeys((signal.SIGUSR2, SIGNALS[name])))


class PreemptionWatch:
    """Set by the signal handler, agreed on by all ranks at the end of each step."""

    def __init__(self, signums: tuple[signal.Signals, ...] = ()) -> None:
        self.signums = signums
        self.requested = False
        for signum in signums:
            signal.signal(signum, self._on_signal)  # for TERM: replaces exit-on-SIGTERM (launch/common)

    @classmethod
    def from_env(cls) -> PreemptionWatch:
        return cls(configured_signals())

    @property
    def enabled(self) -> bool:
        return bool(self.signums)

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.requested:
            print(f"ponder: {signal.Signals(signum).name} received: finishing this step, then saving",
                  file=sys.stderr, flush=True)
        self.requested = True

    def agreed(self) -> bool:
        """Collective (every rank, every step, when enabled): did any rank get the signal?"""
        if not self.enabled:
            return False
        flag = torch.tensor([1.0 if self.requested else 0.0])
        if dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def data_worker_init(worker_id: int) -> None:
    """DataLoader workers of a run that saves on SIGTERM: the scheduler signals every process of the
    job; a worker killed by it would fail the step the ranks are finishing. The loader stops them."""
    if signal.SIGTERM in configured_signals():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
