"""Counting: exactly one integer in the box ("7", "7 apples", "There are 7.", "seven"), equal to the gold.

Zero for hedges ("about 7", "7 or 8", "between 5 and 10"), several numbers, decimals, and look-alike
digits ('７', '٧', '𝟕', '⁷').
"""

from __future__ import annotations

import re
from typing import Any

from ..config import RewardConfig
from ..registry import register_verifier
from ..text import find_numbers, has_lookalike_digits, hedge_in, is_plain_integer, strip_wrappers
from ..types import GroundTruthError, Verdict

NUMBER_WORDS = {
    w: i for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_WORD = re.compile(r"[a-z]+")


def gold_count(ground_truth: Any) -> int:
    if isinstance(ground_truth, bool):
        raise GroundTruthError("counting gold must be an integer, got a bool")
    if isinstance(ground_truth, int):
        return ground_truth
    if isinstance(ground_truth, float) and ground_truth.is_integer():
        return int(ground_truth)
    if isinstance(ground_truth, str) and is_plain_integer(ground_truth.strip()):
        return int(ground_truth.strip().replace(",", ""))
    raise GroundTruthError(f"counting gold must be an integer, got {ground_truth!r}")


@register_verifier("counting")
def verify_count(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    gold = gold_count(ground_truth)
    text = strip_wrappers(answer)
    if has_lookalike_digits(text):
        return Verdict(0.0, "wrong:lookalike_digits")
    hedge = hedge_in(text, str(gold))
    if hedge is not None:
        return Verdict(0.0, f"wrong:hedged({hedge})")
    numbers = find_numbers(text)
    words = [NUMBER_WORDS[w] for w in _WORD.findall(text.lower()) if w in NUMBER_WORDS]
    if len(numbers) + len(words) != 1:
        return Verdict(0.0, "wrong:no_number" if not numbers and not words else "wrong:multiple_numbers")
    if numbers:
        if not is_plain_integer(numbers[0]):
            return Verdict(0.0, "wrong:not_integer")
        digits = numbers[0].replace(",", "")
        if len(digits.lstrip("+-0")) > 100:  # no count is that long; int() refuses past 4,300 digits
            return Verdict(0.0, "wrong:number_too_long")
        value = int(digits)
    else:
        value = words[0]
    return Verdict(1.0, "correct") if value == gold else Verdict(0.0, "wrong")
