"""Shared by the reward tests: a response builder, and user verifiers defined at module level (so
worker processes can import them by reference)."""

from __future__ import annotations

import ctypes
import os
import signal
import time

from stages.rl.rewards import RewardConfig, Verdict, register_verifier

THINK = "The question asks for the value. Let me work through it step by step and check the result."


def respond(box: str | None, think: str = THINK, before: str = "The answer is ", after: str = "") -> str:
    """A well-formed GLM-4.1V response; box=None leaves the box out."""
    boxed = "" if box is None else f"<|begin_of_box|>{box}<|end_of_box|>"
    return f"<think>{think}</think><answer>{before}{boxed}{after}</answer>"


@register_verifier("exact_text")
def exact_text(answer: str, ground_truth: str, config: RewardConfig, **info) -> Verdict:
    return Verdict(1.0, "correct") if answer.strip() == ground_truth else Verdict(0.0, "wrong")


class LengthRatio:
    """A class verifier (instantiated once): reward = min(len)/max(len), info may scale it."""

    def __call__(self, answer: str, ground_truth: str, config: RewardConfig, scale: float = 1.0, **info) -> float:
        return scale * min(len(answer), len(ground_truth)) / max(len(answer), len(ground_truth))


def stuck_in_c(answer: str, ground_truth, config: RewardConfig, **info) -> float:
    """Blocks SIGALRM then sleeps: the in-worker time limit cannot fire, only a kill ends it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(60)
    return 1.0


def exits(answer: str, ground_truth, config: RewardConfig, **info) -> float:
    os._exit(3)


def segfaults(answer: str, ground_truth, config: RewardConfig, **info) -> float:
    ctypes.string_at(0)
    return 1.0


def raises(answer: str, ground_truth, config: RewardConfig, **info) -> float:
    raise ZeroDivisionError("verifier bug")


def stub_judge(answer: str, ground_truth, question: str = "", **info) -> float:
    """Stands in for a reward model: full marks when the answer mentions the reference."""
    return 1.0 if str(ground_truth).lower() in answer.lower() else 0.25


def hogs_memory(answer: str, ground_truth, config: RewardConfig, **info) -> float:
    """Allocates 2 GiB at once: beyond a worker's worker_memory_mb it must fail, not take the host down."""
    return float(len(bytearray(2 << 30)))
