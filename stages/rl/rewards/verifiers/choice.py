"""Multiple choice: the boxed letter ("B", "(B)", "B.", "Option B", TempCompass's "Caption B",
"B. <option text>") or the exact
text of one option (needs `options=` in info).

Ground truth: a letter ("B"), several letters for multi-select (["A", "C"], "A,C", or "AC" when every
letter is an option's), or the text of the correct option. Without options, a gold that is not a
letter or a separated letter list ("Yes", "Paris") is the correct option's text: only that text
scores 1 (so "YES" is not the letter set {Y, E, S}). Options: a list (A, B, C, ... in order) or a
dict letter -> text. Anything naming more letters than the gold, a letter plus another option's
text, or letter + free text when the options are unknown, scores 0. Only ASCII letters count, so a
Cyrillic 'А' is not 'A'.
"""

from __future__ import annotations

import re
import string
from typing import Any, Mapping, Sequence

from ..config import RewardConfig
from ..registry import register_verifier
from ..text import strip_wrappers
from ..types import GroundTruthError, Verdict

_LETTER_ANSWER = re.compile(
    r"(?:(?:option|choice|answer)\s*(?:[:：]\s*)?|caption\s+)?[(\[]?([A-Z])[)\]]?(?:\s*[.:：)]\s*|\s+)?(.*)", re.S | re.I,
)
# Each run of spaces has one way to match (no nested optional \s*), so failing inputs stay linear.
_LETTER_LIST = re.compile(r"[(\[]?[A-Z][)\]]?(?:\s*(?:(?:,|，|;|&|and|or)\s*)?[(\[]?[A-Z][)\]]?)+")
_GOLD_LIST = re.compile(r"[A-Z](?:\s*(?:[,;&]\s*)?[A-Z])*")
_LETTER_RUN = re.compile(r"[A-Z]{2}")


# A degree mark after a number: "40" names the option "40°" (MathVerse's angles; math grades the same)
_DEGREES = re.compile(r"(?<=\d)\s*(?:°|\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree\b|degrees?\b)", re.I)


def _norm(text: str) -> str:
    return " ".join(strip_wrappers(text).casefold().split())


def _by_text(options: dict[str, str], text: str) -> list[str]:
    """The letters whose option reads `text`: exactly (case, spacing, wrappers aside), else without a
    degree mark after a number ("40" is the option "40°" unless "40" is an option too)."""
    exact = [k for k, v in options.items() if _norm(v) == _norm(text)]
    if exact:
        return exact
    bare = _norm(_DEGREES.sub("", text))
    return [k for k, v in options.items() if _norm(_DEGREES.sub("", v)) == bare]


def _options(info: Mapping[str, Any]) -> dict[str, str]:
    options = info.get("options")
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return {str(k).strip().upper(): str(v) for k, v in options.items()}
    if isinstance(options, Sequence) and not isinstance(options, str):
        return {string.ascii_uppercase[i]: str(v) for i, v in enumerate(options)}
    raise GroundTruthError(f"options must be a list or a dict, got {type(options).__name__}")


def _gold_letters(ground_truth: Any, options: dict[str, str]) -> frozenset[str] | str:
    """The gold letter set; without options, a gold that is not letters is returned as its text."""
    if isinstance(ground_truth, (list, tuple, set, frozenset)):
        letters = frozenset(str(x).strip().strip("()").upper() for x in ground_truth)
    elif isinstance(ground_truth, str):
        gold = ground_truth.strip().strip("()")
        by_text = _by_text(options, gold)
        if len(by_text) == 1 and not (len(gold) == 1 and gold.upper() in options):
            return frozenset(by_text)
        letters = frozenset(re.findall(r"[A-Z]", gold.upper()))
        # Adjacent letters ("AC") are a multi-select against options that have them all or, without
        # options, when written upper case in order within A..H: "YES", "Paris" are words (MME, POPE,
        # RealWorldQA golds), not the letter sets {Y, E, S}, {P, A, R, I, S}.
        is_run = _LETTER_RUN.search(gold.upper()) is not None
        in_order = gold.isupper() and sorted(letters) == re.findall(r"[A-Z]", gold) and max(letters, default="Z") <= "H"
        if not _GOLD_LIST.fullmatch(gold.upper()) or (is_run and not (letters <= options.keys() if options else in_order)):
            if options or not _norm(gold):
                raise GroundTruthError(f"multiple-choice gold {ground_truth!r} is not a letter or an option text")
            return ground_truth.strip()
    else:
        raise GroundTruthError(f"multiple-choice gold must be a letter or letters, got {type(ground_truth).__name__}")
    if not letters or any(len(x) != 1 or x not in string.ascii_uppercase for x in letters):
        raise GroundTruthError(f"bad multiple-choice gold {ground_truth!r}")
    if options and not letters <= options.keys():
        raise GroundTruthError(f"gold {sorted(letters)} not among options {sorted(options)}")
    return letters


def _predicted_letters(text: str, options: dict[str, str]) -> frozenset[str] | str:
    """The letters the answer names, or a reason string why it names none unambiguously."""
    by_text = _by_text(options, text)
    if len(by_text) == 1:
        return frozenset(by_text)
    listed = frozenset(re.findall(r"[A-Z]", text)) if _LETTER_LIST.fullmatch(text) else None
    if listed and (not options or listed <= options.keys()):  # "(B) II" is B and its text, not B, I, I
        return listed
    match = _LETTER_ANSWER.fullmatch(text)
    if match is None:
        return "no_choice"
    letter, rest = match.group(1), match.group(2).strip()
    if letter.islower() and rest:
        return "no_choice"  # 'a cat' is an article, not option a
    letter = letter.upper()
    if options and letter not in options:
        return "letter_out_of_range"
    if rest and (not options or _by_text({letter: options[letter]}, rest) != [letter]):
        return "text_contradicts_letter" if options else "unverifiable_text"
    return frozenset({letter})


@register_verifier("multiple_choice")
def verify_choice(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    options = _options(info)
    gold = _gold_letters(ground_truth, options)
    if isinstance(gold, str):
        # The gold is the text of the one option we know: matched like an option text (case, spacing,
        # wrappers and a final full stop aside), so "SEY" or "Yes, it is" do not match "Yes".
        return Verdict(1.0, "correct") if _norm(answer) == _norm(gold) else Verdict(0.0, "wrong")
    predicted = _predicted_letters(strip_wrappers(answer), options)
    if isinstance(predicted, str):
        return Verdict(0.0, f"wrong:{predicted}")
    if len(predicted) > len(gold):
        return Verdict(0.0, "wrong:multiple_answers")
    return Verdict(1.0, "correct") if predicted == gold else Verdict(0.0, "wrong")
