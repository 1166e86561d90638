"""Math (and physics, chart-derived arithmetic): symbolic / numeric equivalence with math-verify.

The whole boxed text is parsed as one LaTeX expression with latex2sympy (math-verify's own parser and
normaliser: \\frac, \\sqrt, \\pi, intervals, sets, units in \\text{} stripped); then math-verify's
`verify` decides equivalence (floats compared to `math_float_rounding` decimals). We are stricter than
math-verify's extraction on purpose: it searches the text for the last parseable expression, so
"43. Actually 42" would be read as 42. Here the box must hold one answer, and:
- a hedge the gold does not use ("between", "or", "approximately", \\pm, <, ...) scores 0;
- numbers separated only by spacing ("42 43", which parses as a product) or a degree mark ("60° 30",
  a sum) score 0;
- look-alike digits (fullwidth, Arabic-Indic, bold, superscript) score 0;
- an equation is accepted only as an assignment `x = value` or `f(2) = value` (math-verify keeps the
  right-hand side of any equation, so "43 = 42" would pass);
The degree sign (°, \\degree) is read as ^{\\circ} on both sides, so "60°" equals "60^\\circ" and "60";
the radical sign as \\sqrt ("2√3", "√(x+1)").
No Python eval anywhere: latex2sympy is a grammar-based parser.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from latex2sympy2_extended.latex2sympy2 import NormalizationConfig, convert_to_pct, latex2sympy, normalize_latex
from latex2sympy2_extended.logic import And
from math_verify import verify
from math_verify.grader import should_treat_as_complex
from sympy import Basic, Eq, Symbol
from sympy.core.function import AppliedUndef
from sympy.core.relational import Relational

from ..config import RewardConfig
from ..registry import register_verifier
from ..text import has_juxtaposed_numbers, has_lookalike_digits, hedge_in
from ..types import GroundTruthError, Verdict

# math-verify's normalisation for boxed answers (units and \text{} wrappers removed, decimals made exact).
_NORMALIZATION = NormalizationConfig(
    basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all", equations=False,
)
# We call verify(timeout_seconds=None) because score() enforces the limit; drop math-verify's warning
# that no limit is set.
logging.getLogger("math_verify.grader").addFilter(lambda record: "Timeout is disabled" not in record.getMessage())
_MINUS = str.maketrans({"\u2212": "-"})  # the typographic minus is a rendering of '-', not a look-alike
# The degree sign (°, \degree, also as an exponent) is a rendering of ^{\circ}, which latex2sympy reads;
# it is not a look-alike.
_DEGREE = re.compile(r"\^\{\s*(?:°|\\degree)\s*\}|\^?(?:°|\\degree(?![A-Za-z]))")


# The radical sign, as plain-text answers write roots (MathVerse's "2√3"): √3, √(x+1), √{x} are \sqrt{...}
_ROOT = re.compile(r"√\s*(?:\(([^()]*)\)|\{([^{}]*)\}|(\d+(?:\.\d+)?|[A-Za-z]+))")


def _canonical(text: str) -> str:
    """Typographic minus, degree and root signs written the way the LaTeX parser reads them."""
    text = _ROOT.sub(lambda m: f"\\sqrt{{{next(g for g in m.groups() if g is not None)}}}", text.translate(_MINUS))
    return _DEGREE.sub(lambda _: "^{\\circ}", text)


@lru_cache(maxsize=4096)
def parse_math(text: str) -> Basic | None:
    """The sympy value of a LaTeX answer, None when it does not parse. A trailing % / \\% becomes a
    percentage the way math-verify marks it (so 9\\% equals 9 and 0.09)."""
    text = text.strip()
    percent = False
    for suffix in ("\\%", "%"):
        if text.endswith(suffix):
            text, percent = text[: -len(suffix)].rstrip(), True
            break
    normalized = normalize_latex(text, config=_NORMALIZATION)
    if not normalized.strip():
        return None
    try:
        expr = latex2sympy(normalized, is_real=not should_treat_as_complex(normalized), convert_degrees=False,
                           normalization_config=None)
    except Exception:  # latex2sympy raises bare Exceptions on syntax errors
        return None
    return convert_to_pct(expr) if percent else expr


def gold_text(ground_truth: Any) -> str:
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, (str, int, float)):
        raise GroundTruthError(f"math ground truth must be a string or a number, got {type(ground_truth).__name__}")
    return str(ground_truth).strip()


def _is_relation(expr: Basic) -> bool:
    return isinstance(expr, (Relational, And))


def _structure_problem(gold: Basic, pred: Basic) -> str | None:
    """Answers math-verify would accept for the wrong reason."""
    if _is_relation(pred) and not _is_relation(gold):
        if isinstance(pred, And) or not isinstance(pred, Eq):
            return "multiple_answers" if isinstance(pred, And) else "relation_for_value"
        if not isinstance(pred.lhs, (Symbol, AppliedUndef)) or _is_relation(pred.rhs):
            return "not_an_assignment"
    return None


@register_verifier("math")
def verify_math(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    text = answer.strip()
    gold = _canonical(gold_text(ground_truth))
    if len(text) > config.math_max_answer_chars:
        return Verdict(0.0, "wrong:too_long")
    written, text = text, _canonical(text)
    if has_lookalike_digits(text):
        return Verdict(0.0, "wrong:lookalike_digits")
    hedge = hedge_in(text, gold)
    if hedge is not None:
        return Verdict(0.0, f"wrong:hedged({hedge})")
    if (has_juxtaposed_numbers(text) or has_juxtaposed_numbers(written)) and not has_juxtaposed_numbers(gold):
        return Verdict(0.0, "wrong:multiple_answers")
    return _compare(gold, text, config.math_float_rounding, config.math_numeric_precision)


# A group of rollouts often repeats the same boxed answer; equal inputs give equal verdicts. A
# timeout raises through the cache, so it is never stored.
@lru_cache(maxsize=16384)
def _compare(gold: str, text: str, float_rounding: int, numeric_precision: int) -> Verdict:
    gold_expr = parse_math(gold)
    if gold_expr is None:
        # Gold that is not math (a word, a name): exact text after whitespace normalisation.
        same = " ".join(text.split()) == " ".join(gold.split())
        return Verdict(1.0, "correct") if same else Verdict(0.0, "wrong:text_mismatch")
    pred_expr = parse_math(text)
    if pred_expr is None:
        return Verdict(0.0, "wrong:unparseable")
    problem = _structure_problem(gold_expr, pred_expr)
    if problem is not None:
        return Verdict(0.0, f"wrong:{problem}")
    equal = verify(gold_expr, pred_expr, float_rounding=float_rounding, numeric_precision=numeric_precision,
                   timeout_seconds=None)
    return Verdict(1.0, "correct") if equal else Verdict(0.0, "wrong")
