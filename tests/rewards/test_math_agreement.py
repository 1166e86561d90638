"""Our math verdicts against math-verify's own `verify(parse(gold), parse(answer))`.

Where math-verify is certain (its parse produced a sympy value on both sides and no comparison
timed out) the verdicts must agree, except for the pairs listed in DISAGREEMENTS, each with the
reason we are deliberately stricter. The test fails on any unlisted disagreement and on any listed
one that no longer disagrees.
"""

from __future__ import annotations

import logging

from math_verify import parse, verify
from sympy import Basic

from stages.rl.rewards import score

from .helpers import respond


def math_pairs() -> list[tuple[str, str]]:
    """(gold, boxed answer) pairs: equal forms, near misses and hedges over every answer type."""
    pairs: list[tuple[str, str]] = []

    def add(gold: str, *answers: str) -> None:
        pairs.extend((gold, a) for a in answers)

    for n in [0, 1, 7, 12, -5, 100, 2024, 1000000]:
        add(str(n), str(n), f"{n}.0", str(n + 1), f"x = {n}", f"\\text{{{n}}}", f"{n}\\text{{ cm}}",
            f"{n} or {n + 1}", f"between {n - 1} and {n + 1}", f"{n}, {n + 1}", f"{n + 1}. Actually {n}")
        if n:
            add(str(n), str(-n))
    for a, b in [(1, 2), (1, 3), (2, 3), (3, 4), (5, 8), (-7, 4), (22, 7)]:
        add(f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\dfrac{{{a}}}{{{b}}}", f"{a / b:.6f}".rstrip("0"),
            f"\\frac{{{b}}}{{{a}}}", f"{a / b:.2f}", f"\\frac{{{2 * a}}}{{{2 * b}}}", f"\\frac{{{a + 1}}}{{{b}}}")
    for gold, good, bad in [("0.25", "\\frac{1}{4}", "0.26"), ("3.75", "\\frac{15}{4}", "3.7"),
                            ("-1.5", "-\\frac{3}{2}", "1.5"), ("2.5", "5/2", "2.05"), ("0.125", "1/8", "0.12")]:
        add(gold, good, bad, gold + "0")
    for gold, answers in [
        ("\\sqrt{2}", ["\\frac{2}{\\sqrt{2}}", "1.414214", "2^{1/2}", "\\sqrt{3}", "1.41", "2"]),
        ("2\\sqrt{3}", ["\\sqrt{12}", "3.464102", "3\\sqrt{2}", "\\sqrt{6}"]),
        ("\\frac{\\sqrt{3}}{2}", ["\\sqrt{3}/2", "0.866025", "\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{2}", "0.87"]),
        ("2\\pi", ["\\pi \\cdot 2", "6.283185", "2 \\pi", "\\pi", "6.28", "4\\pi"]),
        ("\\frac{\\pi}{3}", ["\\frac{1}{3}\\pi", "\\pi/3", "\\frac{\\pi}{6}", "1.05"]),
        ("\\pi^2", ["\\pi \\cdot \\pi", "9.869604", "2\\pi", "9.87"]),
        ("e^{2}", ["e^2", "7.389056", "2e", "7.39"]),
        ("\\ln 2", ["\\log(2)", "0.693147", "\\ln 3", "0.69"]),
        ("x^2 + 2x + 1", ["(x+1)^2", "1 + 2x + x^2", "x^2 + 2x + 2", "(x-1)^2"]),
        ("\\frac{x}{2}", ["0.5x", "x/2", "2x", "\\frac{2}{x}"]),
        ("y = 2x + 1", ["y = 1 + 2x", "y = 2x - 1", "y = x + 1"]),
        ("(0, 1]", ["(0,1]", "\\left(0, 1\\right]", "[0, 1]", "(0, 1)", "(0, 2]"]),
        ("[-2, 3)", ["[-2,3)", "(-2, 3)", "[-2, 3]", "[2, 3)"]),
        ("(-\\infty, 5]", ["(-\\infty,5]", "(-\\infty, 5)", "(5, \\infty)"]),
        ("[1, \\infty)", ["[1,\\infty)", "(1, \\infty)", "[0, \\infty)"]),
        ("(-\\infty, -1) \\cup (1, \\infty)", ["(-\\infty,-1)\\cup(1,\\infty)", "(-1, 1)", "(-\\infty, -1]\\cup[1, \\infty)"]),
        ("\\{1, 2, 3\\}", ["\\{3, 2, 1\\}", "\\{1,2,3\\}", "1, 2, 3", "\\{1, 2\\}", "\\{1, 2, 4\\}"]),
        ("\\{-1, 1\\}", ["\\{1, -1\\}", "-1, 1", "\\{1\\}", "\\{-1, 0, 1\\}"]),
        ("-5", ["- 5", "(-5)", "-(5)", "−5", "5", "-4"]),
        ("5\\text{ cm}", ["5", "5 \\text{cm}", "5\\,\\text{cm}", "6 \\text{ cm}", "50"]),
        ("12\\text{ meters}", ["12", "12 \\text{ m}", "13"]),
        ("90^\\circ", ["90", "90^{\\circ}", "45^\\circ", "180"]),
        ("\\$30", ["30", "\\$30.00", "\\$31"]),
        ("1000", ["1,000", "10^3", "1{,}000", "100", "1001"]),
        ("3.14159", ["3.14159", "3.1416", "\\pi"]),
        ("2 + 3i", ["3i + 2", "2 - 3i"]),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", ["\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
                                                      "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"]),
        ("42", ["\\approx 42", "42 \\pm 1", "about 42", "42 \\quad 43", "42 43", "43 = 42", "４２", "𝟒𝟐", "٤٢",
                "42?", "not 43", "42 \\text{ or } 43", "40 < x < 44", "42, 43", "\\text{between } 40 \\text{ and } 44",
                "x = 43 = 42", "43 \\\\ 42"]),
        ("5", ["a number between 0 and 10", "0 \\text{ to } 10", "5 \\text{ or } 6"]),
    ]:
        add(gold, *answers)
    return list(dict.fromkeys(pairs))  # some generated pairs repeat


_STRICTER_CORRECTION = ("a wrong answer followed by a correction: math-verify extracts the last number "
                        "it can parse; we grade the whole box, which holds two answers")
DISAGREEMENTS = {
    **{(str(n), f"{n + 1}. Actually {n}"): _STRICTER_CORRECTION for n in [0, 1, 7, 12, -5, 100, 2024, 1000000]},
    ("42", "\\approx 42"): "an approximation is a hedge the gold does not make; math-verify drops \\approx",
    ("42", "43 = 42"): "math-verify keeps the right-hand side of any equation; '43 = 42' is a false statement, "
                       "not an assignment",
    ("42", "x = 43 = 42"): "a chain of two values for x: math-verify keeps the last, we count two answers",
    ("42", "43 \\\\ 42"): "two answers on two lines: math-verify reads the last line, we count two answers",
}


def _is_certain(parsed: list) -> bool:
    return any(isinstance(x, Basic) for x in parsed)


def test_at_least_200_pairs_agree_with_math_verify_where_it_is_certain(caplog):
    pairs = math_pairs()
    certain = agreed_correct = 0
    disagreements = {}
    for gold, answer in pairs:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="math_verify"):
            gold_parsed, answer_parsed = parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{answer}}}")
            theirs = verify(gold_parsed, answer_parsed)
        timed_out = any("Timeout" in r.getMessage() for r in caplog.records)
        if timed_out or not _is_certain(gold_parsed) or not _is_certain(answer_parsed):
            continue
        certain += 1
        result = score("math", respond(answer), gold)
        ours = result.reward == 1.0
        if ours != theirs:
            disagreements[(gold, answer)] = (ours, theirs, result.reason)
        agreed_correct += ours and theirs
    assert certain >= 200
    assert agreed_correct >= 80  # the set exercises acceptance, not only rejection
    assert set(disagreements) == set(DISAGREEMENTS), disagreements
    # Every listed disagreement is one where we are stricter, never more lenient.
    assert all(not ours and theirs for ours, theirs, _ in disagreements.values())
