"""VQA answers (VQAv2, TextVQA, VizWiz, OK-VQA): exact match after the answer processing of the
official VQA evaluation (visualqa.org/evaluation.html), applied to both sides:
lower case; commas between digits dropped (100,978 -> 100978); periods dropped unless a digit
follows; the punctuation the official code lists (; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !) -> space;
number words zero..ten -> digits; articles (a, an, the) dropped; a contraction missing its
apostrophe gets it (dont -> don't).

One gold string gives 1 or 0. The VQA accuracy over the annotators (min(#agreeing / 3, 1), averaged
over the leave-one-out sets) is the scorer's `{"vqa_answers": [...]}` ground truth, which calls
this verifier once per distinct annotator answer (stages/rl/rewards/scoring.py).
"""

from __future__ import annotations

import re
from typing import Any

from ..config import RewardConfig
from ..registry import register_verifier
from ..types import GroundTruthError, Verdict

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
_NUMBER_WORDS["none"] = "0"  # as the official processing reads it
_ARTICLES = {"a", "an", "the"}
# Only forms that are not words themselves ("its", "well", "were", "shed" are left alone).
_CONTRACTIONS = {c.replace("'", ""): c for c in (
    "ain't", "aren't", "can't", "could've", "couldn't", "didn't", "doesn't", "don't", "hadn't", "hasn't",
    "haven't", "he's", "how'd", "how's", "isn't", "it'd", "it'll", "ma'am", "mightn't",
    "might've", "mustn't", "must've", "needn't", "o'clock", "shan't", "should've", "shouldn't", "that's",
    "there's", "they'd", "they'll", "they're", "they've", "wasn't", "weren't", "what's", "where's", "who've",
    "won't", "wouldn't", "would've", "y'all", "you'd", "you'll", "you're", "you've")}
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_NON_DECIMAL_PERIOD = re.compile(r"\.(?!\d)")  # a period before a digit is a decimal point
# The punctuation the official evaluation code replaces (its list: % $ # & * | ~ ^ stay, so "50%" is
# not "50" and "black & white" not "black white").
_TO_SPACE = str.maketrans({p: " " for p in ';/[]"{}()=+\\_-><@`,?!'})


def normalize_vqa_answer(text: str) -> str:
    text = _DIGIT_COMMA.sub("", text.lower())
    text = _NON_DECIMAL_PERIOD.sub("", text).translate(_TO_SPACE)
    words = [_CONTRACTIONS.get(w, _NUMBER_WORDS.get(w, w)) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


@register_verifier("vqa")
def verify_vqa(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, (str, int, float)):
        raise GroundTruthError(f"VQA gold must be a string, got {type(ground_truth).__name__}")
    same = normalize_vqa_answer(answer) == normalize_vqa_answer(str(ground_truth))
    return Verdict(1.0 if same else 0.0, "correct" if same else "wrong")
