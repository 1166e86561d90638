"""OCR: reward = 1 - levenshtein(pred, gold) / max(len(pred), len(gold)), after collapsing whitespace;
ANLS (`anls`): the same, case-insensitive, and 0 from a normalised distance of 0.5 on;
word error rate (`wer`, Video-R1's OCR reward): 1 - word-level edit distance / the gold's word count, at least 0.

Levenshtein uses the bit-parallel algorithm of Myers (1999) as formulated by Hyyrö (2001), on Python
integers as bit vectors: O(len(a) * len(b) / 64) word operations, so page-long texts cost milliseconds.
"""

from __future__ import annotations

from typing import Any

from ..config import RewardConfig
from ..registry import register_verifier
from ..types import GroundTruthError, Verdict


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; unit costs)."""
    if len(a) < len(b):
        a, b = b, a  # the shorter string is the bit-vector pattern
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << m) - 1
    top = 1 << (m - 1)
    pv, mv, dist = mask, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = ((((eq & pv) + pv) & mask) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & mask
        mh = pv & xh
        if ph & top:
            dist += 1
        elif mh & top:
            dist -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv
    return dist


def _normalize(text: str, case_sensitive: bool) -> str:
    text = " ".join(text.split())
    return text if case_sensitive else text.casefold()


@register_verifier("ocr")
def verify_ocr(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    if not isinstance(ground_truth, str):
        raise GroundTruthError(f"OCR gold must be a string, got {type(ground_truth).__name__}")
    return _verdict(_similarity(_normalize(answer, config.ocr_case_sensitive),
                                _normalize(ground_truth, config.ocr_case_sensitive)))


def _similarity(pred: str, gold: str) -> float:
    """1 - levenshtein / the longer length (1.0 for two empty texts)."""
    longest = max(len(pred), len(gold))
    return 1.0 - levenshtein(pred, gold) / longest if longest else 1.0


def _verdict(reward: float) -> Verdict:
    return Verdict(reward, "correct" if reward == 1.0 else "partial" if reward > 0 else "wrong")


@register_verifier("anls")
def verify_anls(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    """ANLS (DocVQA, InfographicVQA, ST-VQA): 1 - normalised edit distance after lower-casing and
    collapsing whitespace, and 0 where that distance is 0.5 or more (a different answer, not a
    misread one). With several accepted answers ({"any_of": [...]}) the best counts, as ANLS takes."""
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, (str, int, float)):
        raise GroundTruthError(f"ANLS gold must be a string, got {type(ground_truth).__name__}")
    similarity = _similarity(_normalize(answer, False), _normalize(str(ground_truth), False))
    return _verdict(similarity if similarity > 0.5 else 0.0)  # a distance of 0.5 or more scores 0


def word_error_rate(hypothesis: str, reference: str) -> float:
    """Word-level edit distance (words split on whitespace) / the reference's word count (at least 1):
    each distinct word becomes one character, so `levenshtein` counts word edits."""
    codes: dict[str, str] = {}

    def spell(text: str) -> str:
        return "".join(codes.setdefault(word, chr(len(codes))) for word in text.split())

    reference_words = spell(reference)
    return levenshtein(spell(hypothesis), reference_words) / max(1, len(reference_words))


@register_verifier("wer")
def verify_wer(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    """Video-R1's OCR reward: max(0, 1 - WER) against the gold (case as `ocr_case_sensitive` says).
    Credit falls per wrong, missing or extra word, not per character."""
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, (str, int, float)):
        raise GroundTruthError(f"WER gold must be a string, got {type(ground_truth).__name__}")
    error = word_error_rate(_normalize(answer, config.ocr_case_sensitive),
                            _normalize(str(ground_truth), config.ocr_case_sensitive))
    return _verdict(max(0.0, 1.0 - error))
