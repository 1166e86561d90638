"""Free-form answers graded by ROUGE, as Video-R1 rewards its `free-form` questions: the mean of the
ROUGE-1, ROUGE-2 and ROUGE-L F-measures of the answer against the gold, with Porter stemming
(Google's `rouge-score` package, the implementation Video-R1 calls: it lower-cases and splits on
anything but letters and digits). A partial credit in [0, 1]; accuracy counts a full 1 only."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..config import RewardConfig
from ..registry import register_verifier
from ..text import strip_wrappers
from ..types import GroundTruthError, Verdict

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer  # imported on first use: only free-form sets need it

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_mean_f(gold: str, answer: str) -> float:
    scores = _scorer().score(gold, answer)
    return sum(scores[kind].fmeasure for kind in ROUGE_TYPES) / len(ROUGE_TYPES)


@register_verifier("rouge")
def verify_rouge(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise GroundTruthError(f"rouge gold must be non-empty text, got {ground_truth!r}")
    score = min(1.0, max(0.0, rouge_mean_f(ground_truth, strip_wrappers(answer))))
    return Verdict(score, "correct" if score == 1.0 else "partial" if score > 0 else "wrong")
