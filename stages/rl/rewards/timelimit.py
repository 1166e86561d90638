"""Interrupt a call after a wall-clock limit with SIGALRM (main thread of a POSIX process only).

Sympy and mpmath loops run Python bytecode, so the signal handler gets to run. Code stuck in one C
call cannot be interrupted this way; the batch pool covers that case by killing the worker.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


class ScoreTimeout(BaseException):
    """Raised inside the timed call. A BaseException, so library `except Exception` blocks
    (math-verify, sympy) cannot swallow it and carry on."""


def can_interrupt() -> bool:
    """Whether `call_with_time_limit` can enforce its limit here (no timer of someone else's is armed)."""
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
    )


def call_with_time_limit(fn: Callable[[], T], seconds: float) -> T:
    """Run fn(); raise ScoreTimeout if it runs longer than `seconds`.

    Where the limit cannot be enforced (see `can_interrupt`) fn runs unlimited: callers that need a
    hard limit everywhere use the batch pool.
    """
    if not can_interrupt():
        return fn()
    armed = [True]

    def on_alarm(signum, frame):  # noqa: ARG001 - signal handler signature
        if armed[0]:
            raise ScoreTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn()
        finally:
            # The timer is one-shot: once disarmed here, or once it has fired, no alarm is pending.
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
