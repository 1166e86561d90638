"""Numerical estimates graded by mean relative accuracy (MRA), VSI-Bench's metric for distances,
sizes, counts and durations (Yang et al., "Thinking in Space", 2024); Video-R1's `regression`
questions are graded by it here:

    MRA = 1/10 · Σ_{θ ∈ {0.50, 0.55, ..., 0.95}} 1[ |ŷ − y| / |y| ≤ 1 − θ ]

with `≤` as VSI-Bench's evaluation code compares (its paper writes `<`; the two differ exactly at
the thresholds, which small integer counts hit: 5 for 4 is 0.6 by the code, 0.5 by the paper), so
21 against 22.5 (6.7% off) scores 0.9. A gold of 0 takes 0 only. Both numbers are compared as the
decimals they are written as (2.2 is 11/5, not the float nearest it).

The answer is one number, a unit word after it allowed ("2.5 meters", "3 m"); hedges ("about 3",
"3 or 4"), several numbers and look-alike digits score 0. Gold: a number, or text that is one
("2.5", "1,200").
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

from ..config import RewardConfig
from ..registry import register_verifier
from ..text import has_lookalike_digits, hedge_in, strip_wrappers
from ..types import GroundTruthError, Verdict
from .chart import as_number

# θ = k / 20 for k = 10..19: the answer passes θ when 20·|ŷ − y| ≤ (20 − k)·|y|, in exact fractions
# (1 − 0.95 in floats is 0.04999..., and 2.2 - 2.0 is 0.20000000000000018)
_THRESHOLDS = range(10, 20)
# One number and, after it, at most a unit of letters (and a trailing full stop)
_ESTIMATE = re.compile(r"^(?P<number>[^\sA-Za-z]+)(?:\s*[A-Za-z][A-Za-z ./]*)?\.?$")


def gold_value(ground_truth: Any) -> float:
    if isinstance(ground_truth, bool):
        raise GroundTruthError("mra gold must be a number, got a bool")
    if isinstance(ground_truth, (int, float)):
        value = float(ground_truth)
    elif isinstance(ground_truth, str) and (value := as_number(ground_truth)) is not None:
        pass
    else:
        raise GroundTruthError(f"mra gold must be a number, got {ground_truth!r}")
    if not math.isfinite(value):
        raise GroundTruthError(f"mra gold must be finite, got {ground_truth!r}")
    return value


def mean_relative_accuracy(prediction: float, gold: float) -> float:
    if gold == 0:
        return 1.0 if prediction == 0 else 0.0
    exact = [Fraction(repr(x)) for x in (prediction, gold)]  # the shortest decimal that is the float
    error, scale = abs(exact[0] - exact[1]), abs(exact[1])
    return sum(20 * error <= (20 - k) * scale for k in _THRESHOLDS) / len(_THRESHOLDS)


@register_verifier("mra")
def verify_mra(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    gold = gold_value(ground_truth)
    text = strip_wrappers(answer).strip()
    if has_lookalike_digits(text):
        return Verdict(0.0, "wrong:lookalike_digits")
    if (hedge := hedge_in(text, str(ground_truth))) is not None:
        return Verdict(0.0, f"wrong:hedged({hedge})")
    match = _ESTIMATE.match(text)
    value = as_number(match.group("number")) if match else None
    if value is None or not math.isfinite(value):
        return Verdict(0.0, "wrong:not_a_number")
    score = mean_relative_accuracy(value, gold)
    return Verdict(score, "correct" if score == 1.0 else "partial" if score > 0 else "wrong")
