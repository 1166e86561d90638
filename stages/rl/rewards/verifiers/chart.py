"""Chart QA: numbers within a relative tolerance, years and text labels exact.

Gold: a number, a string (a label, or a number written as text such as "45%" or "1,200"), or a list of
those (the answer then lists as many values, separated by ';' or ', ', in the same order).
- Numeric gold: the answer must be one plain ASCII number (currency signs, '%' and thousands commas
  allowed, "45 million" is not a number) with |pred - gold| <= chart_rel_tol * |gold|. A percent
  sign is ignored on both sides (a chart's "45%" is read as 45; 0.45 does not match it).
- Year gold (an integer in [chart_year_min, chart_year_max]): exact.
- Label gold: case- and whitespace-insensitive exact match.
"""

from __future__ import annotations

import re
from typing import Any

from ..config import RewardConfig
from ..registry import register_verifier
from ..text import has_lookalike_digits, hedge_in, parse_plain_number, strip_wrappers
from ..types import GroundTruthError, Verdict

_CURRENCY = "$€£¥"
_LIST_SEPARATOR = re.compile(r"\s*;\s*|,\s+")


def as_number(text: str) -> float | None:
    """A chart value written as text: '1,234.5', '$12', '45%', '45\\%', '-3'."""
    text = strip_wrappers(text).replace("\\%", "%").replace("\\$", "$").replace("\u2212", "-").strip()
    if text.endswith("%"):
        text = text[:-1].rstrip()
    sign = ""
    if text[:1] in "+-":
        sign, text = text[0], text[1:].lstrip()
    if text[:1] and text[0] in _CURRENCY:
        text = text[1:].lstrip()
    return parse_plain_number(sign + text)


def _label(text: str) -> str:
    return " ".join(strip_wrappers(text).casefold().split())


def _gold_value(gold: Any) -> float | str:
    if isinstance(gold, bool) or not isinstance(gold, (int, float, str)):
        raise GroundTruthError(f"chart gold values must be numbers or strings, got {type(gold).__name__}")
    if isinstance(gold, str):
        number = as_number(gold)
        return number if number is not None else _label(gold)
    return float(gold)


def _match_one(pred: str, gold: float | str, config: RewardConfig) -> str | None:
    """None when pred matches gold, else the reason it does not."""
    if isinstance(gold, str):
        return None if _label(pred) == gold else "label_mismatch"
    value = as_number(pred)
    if value is None:
        return "not_a_number"
    if gold.is_integer() and config.chart_year_min <= gold <= config.chart_year_max:
        return None if value == gold else "year_mismatch"
    return None if abs(value - gold) <= config.chart_rel_tol * abs(gold) else "out_of_tolerance"


@register_verifier("chart")
def verify_chart(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    golds = list(ground_truth) if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    if not golds:
        raise GroundTruthError("chart gold list is empty")
    values = [_gold_value(g) for g in golds]
    text = strip_wrappers(answer)
    if has_lookalike_digits(text):
        return Verdict(0.0, "wrong:lookalike_digits")
    hedge = hedge_in(text, " ".join(map(str, golds)))
    if hedge is not None:
        return Verdict(0.0, f"wrong:hedged({hedge})")
    parts = _LIST_SEPARATOR.split(text) if len(values) > 1 else [text]
    if len(parts) != len(values):
        return Verdict(0.0, "wrong:count_mismatch")
    for part, gold in zip(parts, values):
        problem = _match_one(part, gold, config)
        if problem is not None:
            return Verdict(0.0, f"wrong:{problem}")
    return Verdict(1.0, "correct")
