"""Penalties that lower a reward: long repeated blocks (generation loops) and mixed-language text."""

from __future__ import annotations

import re
from collections import Counter

from .config import RewardConfig

# ASCII words, runs of ASCII punctuation, and single non-ASCII characters (so CJK text, which has no
# spaces, is tokenised per character).
_TOKEN = re.compile(r"[A-Za-z0-9_]+|[!-/:-@\[-`{-~]+|[^\x00-\x7f\s]")
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+", re.S)
# Letters per script. Greek is left out: it is mathematical notation in every language. Latin counts
# only words of 3+ letters, so variables (x, dx) and short units (cm, kg) do not count as English.
_SCRIPTS = {
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f]{3,}"),
    "cjk": re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"),
    "cyrillic": re.compile(r"[\u0400-\u04ff]"),
    "arabic": re.compile(r"[\u0621-\u064a\u066e-\u06d3]"),
    "hebrew": re.compile(r"[\u05d0-\u05ea]"),
    "devanagari": re.compile(r"[\u0904-\u0939\u0958-\u0961]"),
    "thai": re.compile(r"[\u0e01-\u0e30]"),
}


def max_block_repeats(text: str, block_tokens: int) -> int:
    """How often the most frequent run of `block_tokens` consecutive tokens occurs (overlaps count)."""
    tokens = _TOKEN.findall(text)
    if len(tokens) < block_tokens:
        return 0
    ids: dict[str, int] = {}
    seq = [ids.setdefault(tok, len(ids)) for tok in tokens]
    windows = zip(*(seq[i:] for i in range(block_tokens)))
    return max(Counter(map(hash, windows)).values())


def has_repetition(text: str, config: RewardConfig) -> bool:
    return max_block_repeats(text, config.repetition_block_tokens) >= config.repetition_min_occurrences


def script_letters(text: str) -> dict[str, int]:
    """Letters per script in the prose of `text` (LaTeX math and commands removed)."""
    prose = _MATH.sub(" ", text)
    counts = {}
    for name, pattern in _SCRIPTS.items():
        n = sum(map(len, pattern.findall(prose)))
        if n:
            counts[name] = n
    return counts


def is_mixed_language(text: str, config: RewardConfig) -> bool:
    counts = script_letters(text)
    total = sum(counts.values())
    if total == 0:
        return False
    minority = total - max(counts.values())
    return minority >= config.mixed_language_min_chars and minority / total > config.mixed_language_threshold
