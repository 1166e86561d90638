"""Text checks shared by the numeric verifiers: look-alike digits, hedges, wrappers, plain numbers."""

from __future__ import annotations

import re
import unicodedata

# Words that turn an answer into a range, a guess, a disjunction or a negation. One that the gold
# itself does not use makes the answer wrong ("a number between 0 and 10" for gold 5).
HEDGE_WORDS = frozenset(
    "between either or approximately approx approximate about around roughly nearly almost maybe perhaps "
    "possibly probably likely guess estimate range somewhere unsure unknown to least most less more greater "
    "fewer than under over below above within not no never except without".split()
)
# Hedges written as LaTeX commands or symbols (after _canonical_symbols).
HEDGE_SYMBOLS = (
    r"\approx", r"\sim", r"\simeq", r"\lesssim", r"\gtrsim", r"\pm", r"\mp", r"\lor", r"\vee",
    r"\ne", r"\le", r"\ge", "...", "<", ">", "?",
)
# Spellings of one symbol, so "\leq" in the answer matches "\le" in the gold.
_SYMBOL_ALIASES = {
    "leqslant": r"\le", "leq": r"\le", "geqslant": r"\ge", "geq": r"\ge", "neq": r"\ne", "lt": "<", "gt": ">",
    "ldots": "...", "cdots": "...", "dots": "...", "≤": r"\le", "≥": r"\ge", "≠": r"\ne", "…": "...",
    "±": r"\pm", "∓": r"\mp", "≈": r"\approx",
}
_ALIAS = re.compile(r"\\(leqslant|leq|geqslant|geq|neq|lt|gt|ldots|cdots|dots)(?![A-Za-z])|([≤≥≠…±∓≈])")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[a-z]+")
# Two numbers separated by nothing but spacing: "42 43", "42 \quad 43", "42 \\ 43" (latex2sympy would
# read the first as the product 42*43, and "2 1" as 2), or by a degree mark: "60^{\circ} 30" and
# "60^{\circ}30'" are read as the sum 90.
_SPACING = r"(?:\s|\\quad|\\qquad|\\\\|\\ |~|\\;|\\:|\\enspace)"
_JUXTAPOSED = re.compile(rf"\d{_SPACING}+[+-]?\d|\d\s*\^\s*(?:\\circ|\{{\s*\\circ\s*\}}){_SPACING}*[+-]?\d")
_WRAPPERS = (
    re.compile(r"^\$\$(.*)\$\$$", re.S),
    re.compile(r"^\$(.*)\$$", re.S),
    re.compile(r"^\\\((.*)\\\)$", re.S),
    re.compile(r"^\\\[(.*)\\\]$", re.S),
    re.compile(r"^\\(?:boxed|text|textbf|mathrm|mathbf|textrm|mbox)\{(.*)\}$", re.S),
    re.compile(r"^\*\*(.*)\*\*$", re.S),
)
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][+-]?\d+)?|[+-]?\.\d+(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)")


def has_lookalike_digits(text: str) -> bool:
    """True if text holds a digit-like character that is not ASCII 0-9: fullwidth '４', Arabic-Indic '٤',
    mathematical bold '𝟒', superscript '²', circled '④', vulgar fractions '½', CJK numerals.

    Numeric verifiers reject these instead of NFKC-normalising them: an answer that only looks right
    is a reward hack, not a formatting variant.
    """
    return any(
        ord(ch) > 127 and (unicodedata.category(ch) == "Nd" or unicodedata.numeric(ch, None) is not None)
        for ch in text
    )


def _canonical_symbols(text: str) -> str:
    return _ALIAS.sub(lambda m: _SYMBOL_ALIASES[m.group(1) or m.group(2)], text)


def hedge_in(answer: str, gold: str) -> str | None:
    """The first hedge word or symbol of `answer` that `gold` does not contain, else None."""
    answer, gold = _canonical_symbols(answer), _canonical_symbols(gold)
    answer_commands = set(_LATEX_COMMAND.findall(answer))
    gold_commands = set(_LATEX_COMMAND.findall(gold))
    for symbol in HEDGE_SYMBOLS:
        if symbol.startswith("\\"):  # whole commands only: "\le" is a prefix of "\left"
            if symbol in answer_commands and symbol not in gold_commands:
                return symbol
        elif symbol in answer and symbol not in gold:
            return symbol
    gold_words = set(_WORD.findall(_LATEX_COMMAND.sub(" ", gold.lower())))
    for word in _WORD.findall(_LATEX_COMMAND.sub(" ", answer.lower())):
        if word in HEDGE_WORDS and word not in gold_words:
            return word
    return None


def has_juxtaposed_numbers(text: str) -> bool:
    return _JUXTAPOSED.search(text) is not None


def strip_wrappers(text: str) -> str:
    """Remove wrappers that span the whole answer ($…$, \\text{…}, **…**) and a final full stop."""
    previous = None
    while previous != text:
        previous = text
        text = text.strip()
        if text.endswith(".") and not text.endswith(".."):
            text = text[:-1].rstrip()
        for pattern in _WRAPPERS:
            match = pattern.match(text)
            if match and _balanced(match.group(1)):
                text = match.group(1)
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
    return depth == 0


def parse_plain_number(text: str) -> float | None:
    """An ASCII decimal number ("1,234.5", "-3", "2e5") spanning the whole text, else None."""
    if not _NUMBER.fullmatch(text):
        return None
    return float(text.replace(",", ""))


def find_numbers(text: str) -> list[str]:
    return _NUMBER.findall(text)


def is_plain_integer(text: str) -> bool:
    return _INTEGER.fullmatch(text) is not None
