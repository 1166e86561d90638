"""Per-domain verifiers on realistic model outputs, and adversarial outputs that must score 0."""

from __future__ import annotations

import random
import time

import pytest

from stages.rl.rewards import RewardConfig, score
from stages.rl.rewards.verifiers.boxes import iou
from stages.rl.rewards.verifiers.ocr import levenshtein, word_error_rate

from .helpers import respond


def reward(domain, box, gold, config=None, **info):
    return score(domain, respond(box), gold, config=config, **info).reward


def reason(domain, box, gold, **info):
    return score(domain, respond(box), gold, **info).reason


# Math --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("box, gold", [
    ("\\frac{3}{4}", "0.75"), ("0.75", "\\frac34"), ("\\dfrac{9}{12}", "\\frac{3}{4}"), ("3/4", 0.75),
    ("42", 42), ("x = 42", "42"), ("k=42", "42"), ("f(2) = 5", "5"), ("\\boxed{12}", "12"), ("$12$", "12"),
    ("12\\%", "12\\%"), ("0.75", "75\\%"), ("45^\\circ", "45"), ("\\$1,250", "1250"), ("1{,}000", "1000"),
    ("12 \\text{ apples}", "12"), ("5\\,\\text{cm}", "5 \\text{ cm}"), ("−3", "-3"), ("-3", "−3"),
    ("2\\sqrt{3}", "\\sqrt{12}"), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("0.707107", "\\frac{\\sqrt2}{2}"),
    ("\\frac{\\pi}{3}", "\\frac{1}{3}\\pi"), ("6.283185", "2\\pi"), ("(x+1)^2", "x^2+2x+1"),
    ("\\left(0, 1\\right]", "(0,1]"), ("x \\in [2, 5)", "[2,5)"), ("(-\\infty, -1) \\cup (1, \\infty)", "(-\\infty,-1)\\cup(1,\\infty)"),
    ("\\{3, 1, 2\\}", "\\{1,2,3\\}"), ("1, 2", "2, 1"), ("x = 2, y = 3", "x=2, y=3"), ("(2, 3)", "(2,3)"),
    ("x \\leq 5", "x \\le 5"), ("\\frac{-1 \\pm \\sqrt{5}}{2}", "\\frac{-1 \\pm \\sqrt{5}}{2}"), ("\\text{Monday}", "Monday"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("2√3", "2\\sqrt{3}"), ("√3/2", "\\frac{\\sqrt{3}}{2}"), ("√(12)", "2\\sqrt{3}"), ("√{x+1}", "\\sqrt{x+1}"),
    ("√2.25", "1.5"), ("√ab", "\\sqrt{ab}"),  # the radical sign of plain-text answers (MathVerse)
])
def test_math_equivalent_forms_score_1(box, gold):
    assert reward("math", box, gold) == 1.0


@pytest.mark.parametrize("box, gold", [
    ("\\frac{4}{3}", "0.75"), ("0.33", "\\frac13"), ("0.7", "0.75"), ("3.1416", "3.14159"), ("3.14", "\\pi"),
    ("[0, 1]", "(0, 1]"), ("(0, 1)", "(0,1]"), ("\\{1, 2\\}", "\\{1, 2, 3\\}"), ("-42", "42"), ("x^2+2x+2", "(x+1)^2"),
    ("2.0000001", "2"), ("12\\%", "13\\%"), ("Tuesday", "Monday"), ("3√2", "2\\sqrt{3}"), ("√3", "3"), ("b\\sqrt{a}", "√ab"),
])
def test_math_wrong_answers_score_0(box, gold):
    assert reward("math", box, gold) == 0.0


@pytest.mark.parametrize("box, gold, why", [
    ("a number between 0 and 10", "5", "wrong:hedged(between)"),
    ("\\text{between } 40 \\text{ and } 44", "42", "wrong:hedged(between)"),
    ("0 \\text{ to } 10", "5", "wrong:hedged(to)"),
    ("about 42", "42", "wrong:hedged(about)"),
    ("\\approx 42", "42", "wrong:hedged(\\approx)"),
    ("42 \\pm 1", "42", "wrong:hedged(\\pm)"),
    ("40 < x < 44", "42", "wrong:hedged(<)"),
    ("42?", "42", "wrong:hedged(?)"),
    ("not 43", "42", "wrong:hedged(not)"),
    ("42 \\text{ or } 43", "42", "wrong:hedged(or)"),
    # A correct answer followed by a wrong one (or the reverse).
    ("42. Actually 43", "42", "wrong:unparseable"),
    ("43. Actually 42", "42", "wrong:unparseable"),
    ("42, 43", "42", "wrong"),
    ("42 \\quad 43", "42", "wrong:multiple_answers"),
    ("42 43", "42", "wrong:multiple_answers"),
    ("2 1", "2", "wrong:multiple_answers"),
    ("43 \\\\ 42", "42", "wrong:multiple_answers"),
    ("x = 43 = 42", "42", "wrong:multiple_answers"),
    ("43 = 42", "42", "wrong:not_an_assignment"),
    # Unicode look-alike digits: fullwidth, Arabic-Indic, mathematical bold, superscript, mixed.
    ("４２", "42", "wrong:lookalike_digits"),
    ("٤٢", "42", "wrong:lookalike_digits"),
    ("𝟒𝟐", "42", "wrong:lookalike_digits"),
    ("4²", "42", "wrong:lookalike_digits"),
    ("4２", "42", "wrong:lookalike_digits"),
    ("\\frac{1}{２}", "0.5", "wrong:lookalike_digits"),
])
def test_math_adversarial_outputs_score_0(box, gold, why):
    r = score("math", respond(box), gold)
    assert (r.reward, r.reason) == (0.0, why)


@pytest.mark.parametrize("gold", ["60°", 60])  # the other spellings of the gold: test_math_degree_golds
@pytest.mark.parametrize("box, expected, why", [
    ("60°", 1.0, "correct"), ("60^\\circ", 1.0, "correct"), ("60^{\\circ}", 1.0, "correct"), ("60", 1.0, "correct"),
    ("60\\degree", 1.0, "correct"), ("$60^{°}$", 1.0, "correct"), ("\\theta = 60°", 1.0, "correct"),
    ("30°", 0.0, "wrong"), ("-60°", 0.0, "wrong"),
    ("about 60°", 0.0, "wrong:hedged(about)"), ("\\approx 60°", 0.0, "wrong:hedged(\\approx)"),
    ("60° \\text{ or } 120°", 0.0, "wrong:hedged(or)"), ("60° \\pm 1°", 0.0, "wrong:hedged(\\pm)"),
    ("６０°", 0.0, "wrong:lookalike_digits"),
    # latex2sympy reads a number after a degree mark as a sum (60° 30' is 90): two answers, not one.
    ("60° 30", 0.0, "wrong:multiple_answers"), ("30°60'", 0.0, "wrong:multiple_answers"),
])
def test_math_degree_sign_reads_as_circ(box, gold, expected, why):
    r = score("math", respond(box), gold)
    assert (r.reward, r.reason) == (expected, why)


@pytest.mark.parametrize("gold", ["60^\\circ", "60^{\\circ}", "60", "60 \\degree"])
def test_math_degree_golds(gold):
    assert [reward("math", box, gold) for box in ("60°", "60^\\circ", "60", "30°")] == [1.0, 1.0, 1.0, 0.0]


def test_math_degree_mark_after_a_number_stays_two_numbers():
    assert reason("math", "60° 30", "90") == "wrong:multiple_answers"
    assert reason("math", "60^\\circ 30", "90") == "wrong:multiple_answers"
    assert reward("math", "60^\\circ + 30^\\circ", "90") == 1.0  # a written-out sum stays a sum


def test_math_answer_outside_the_box_scores_0():
    assert score("math", respond("43", before="The answer is 42, written as "), "42").reward == 0.0
    assert score("math", respond(None, before="\\boxed{42}"), "42").reason == "format:no_box"


def test_math_bad_ground_truth_is_reported_not_raised():
    r = score("math", respond("42"), None)
    assert (r.reward, r.format_ok) == (0.0, True)
    assert r.reason.startswith("bad_ground_truth:")


def test_math_answer_length_cap():
    assert reason("math", "1+" * 600 + "1", "1201") == "wrong:too_long"


# Multiple choice ---------------------------------------------------------------------------------

OPTIONS = ["London", "Paris", "Rome", "Madrid"]


@pytest.mark.parametrize("box", ["B", "b", "(B)", "B.", "B)", "[B]", "Option B", "answer: B", "\\text{B}", "**B**",
                                 "$B$", "B. Paris", "B: paris", "(B) Paris", "Paris", "paris."])
def test_choice_realistic_answers_score_1(box):
    assert reward("multiple_choice", box, "B", options=OPTIONS) == 1.0


@pytest.mark.parametrize("box, why", [
    ("C", "wrong"), ("Rome", "wrong"), ("A or B", "wrong:multiple_answers"), ("A, B", "wrong:multiple_answers"),
    ("B and C", "wrong:multiple_answers"), ("AB", "wrong:multiple_answers"), ("B. Rome", "wrong:text_contradicts_letter"),
    ("E", "wrong:letter_out_of_range"), ("В", "wrong:no_choice"), ("I think B but maybe C", "wrong:letter_out_of_range"),
    ("a cat", "wrong:no_choice"), ("Paris or Rome", "wrong:letter_out_of_range"),
])
def test_choice_adversarial_answers_score_0(box, why):
    r = score("multiple_choice", respond(box), "B", options=OPTIONS)
    assert (r.reward, r.reason) == (0.0, why)


def test_choice_letter_and_a_roman_numeral_option():
    """DynaMath's options I..IV: "(B) II" is B with its text, not the letters B, I, I."""
    numerals = ["I", "II", "III", "IV"]
    for box in ("(B) II", "B II", "B. II", "II", "B"):
        assert reward("multiple_choice", box, "B", options=numerals) == 1.0, box
    for box, why in (("(B) III", "wrong:text_contradicts_letter"), ("A C", "wrong:multiple_answers"), ("III", "wrong")):
        r = score("multiple_choice", respond(box), "B", options=numerals)
        assert (r.reward, r.reason) == (0.0, why), box


def test_choice_option_texts_with_degree_marks():
    """MathVerse's angle options ("B:40°"): the number names the option, as `math` reads 40 as 40°."""
    angles = {"A": "20°", "B": "40°", "C": "60°", "D": "80°"}
    for box in ("40", "40°", "40^\\circ", "40^{\\circ}", "40 degrees", "B:40", "B. 40°", "B"):
        assert reward("multiple_choice", box, "B", options=angles) == 1.0, box
    for box, why in (("60", "wrong"), ("A:40", "wrong:text_contradicts_letter"), ("B:60", "wrong:text_contradicts_letter")):
        r = score("multiple_choice", respond(box), "B", options=angles)
        assert (r.reward, r.reason) == (0.0, why), box
    assert reward("multiple_choice", "to a high", "B", options=["low", "to a high degree"]) == 0.0  # words stay
    both = {"A": "40", "B": "40°"}  # the exact text first: each names its own option
    assert [reward("multiple_choice", box, gold, options=both) for box, gold in (("40", "A"), ("40°", "B"))] == [1.0, 1.0]
    assert reason("math", "√2 3", "3\\sqrt{2}") == "wrong:multiple_answers"  # two numbers, as "2 3" is


def test_choice_gold_forms_and_multi_select():
    assert reward("multiple_choice", "B", "(b)") == 1.0
    assert reward("multiple_choice", "B", "Paris", options=OPTIONS) == 1.0
    assert reward("multiple_choice", "B", "Paris", options={"A": "London", "B": "Paris"}) == 1.0
    assert reward("multiple_choice", "A, C", ["A", "C"]) == 1.0
    assert reward("multiple_choice", "C and A", "A,C") == 1.0
    assert reward("multiple_choice", "A", ["A", "C"]) == 0.0
    assert reward("multiple_choice", "A, B, C", ["A", "C"]) == 0.0
    # Without the options, free text after the letter cannot be checked.
    assert reason("multiple_choice", "B. Paris", "B") == "wrong:unverifiable_text"
    assert reason("multiple_choice", "B", "Z", options=OPTIONS).startswith("bad_ground_truth:")


@pytest.mark.parametrize("box, gold, expected", [
    ("Yes", "Yes", 1.0), ("yes", "Yes", 1.0), ("YES", "Yes", 1.0), ("Yes.", "Yes", 1.0), ("**Yes**", "Yes", 1.0),
    ("\\text{Yes}", "yes", 1.0), ("No", "No", 1.0),
    ("No", "Yes", 0.0), ("SEY", "Yes", 0.0), ("Y, E, S", "Yes", 0.0), ("Y", "Yes", 0.0), ("Yes, it is", "Yes", 0.0),
    ("Yes or No", "Yes", 0.0), ("Yes No", "Yes", 0.0), ("A", "Yes", 0.0), ("(A) Yes", "Yes", 0.0),
    ("Eiffel Tower", "Eiffel Tower", 1.0), ("eiffel  tower.", "Eiffel Tower", 1.0), ("Tower", "Eiffel Tower", 0.0),
])
def test_choice_word_gold_without_options_is_an_option_text(box, gold, expected):
    """MME, POPE, RealWorldQA golds ("Yes", a name) graded with multiple_choice and no options."""
    r = score("multiple_choice", respond(box), gold)
    assert (r.reward, r.reason) == (expected, "correct" if expected else "wrong")


@pytest.mark.parametrize("box, gold, options, expected", [
    ("A, C", "AC", OPTIONS, 1.0), ("C and A", "ACD", OPTIONS, 0.0), ("A, C, D", "ACD", OPTIONS, 1.0),
    ("AC", "AC", OPTIONS, 1.0), ("A", "AC", OPTIONS, 0.0),
    ("Yes", "Yes", ["Yes", "No"], 1.0), ("A", "Yes", ["Yes", "No"], 1.0), ("B", "Yes", ["Yes", "No"], 0.0),
    # Without options "AC" is a letter set when upper case, in order, within A..H; "YES" is a word.
    ("AC", "AC", None, 1.0), ("A, C", "AC", None, 1.0), ("C", "AC", None, 0.0), ("SEY", "YES", None, 0.0),
    ("A, C", "A, C", None, 1.0), ("A C", "A C", None, 1.0),  # separated letters stay a letter set
])
def test_choice_letter_runs_are_letters_only_against_options(box, gold, options, expected):
    assert reward("multiple_choice", box, gold, options=options) == expected


def test_choice_word_gold_with_options_must_be_an_option():
    assert reason("multiple_choice", "Yes", "Yes", options=OPTIONS).startswith("bad_ground_truth:")
    assert reason("multiple_choice", "A", "ABE", options=OPTIONS).startswith("bad_ground_truth:")
    assert reason("multiple_choice", "A", "  ").startswith("bad_ground_truth:")


# Counting ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("box", ["7", "7 apples", "There are 7 apples.", "seven", "Seven", "\\text{7}", "$7$", "**7**"])
def test_counting_realistic_answers_score_1(box):
    assert reward("counting", box, 7) == 1.0


@pytest.mark.parametrize("box, why", [
    ("8", "wrong"), ("about 7", "wrong:hedged(about)"), ("7 or 8", "wrong:hedged(or)"),
    ("a number between 0 and 10", "wrong:hedged(between)"), ("at least 7", "wrong:hedged(least)"),
    ("7-8", "wrong:multiple_numbers"), ("7, 8", "wrong:multiple_numbers"), ("7 then 8", "wrong:multiple_numbers"),
    ("seven or eight", "wrong:hedged(or)"), ("7.0", "wrong:not_integer"), ("7.5", "wrong:not_integer"),
    ("７", "wrong:lookalike_digits"), ("٧", "wrong:lookalike_digits"), ("𝟕", "wrong:lookalike_digits"),
    ("⁷", "wrong:lookalike_digits"), ("⑦", "wrong:lookalike_digits"), ("七", "wrong:lookalike_digits"),
    ("many", "wrong:no_number"),
])
def test_counting_adversarial_answers_score_0(box, why):
    r = score("counting", respond(box), 7)
    assert (r.reward, r.reason) == (0.0, why)


def test_counting_gold_forms():
    assert reward("counting", "1,024", "1024") == 1.0
    assert reward("counting", "12", 12.0) == 1.0
    assert reason("counting", "12", "twelve-ish").startswith("bad_ground_truth:")


# OCR ---------------------------------------------------------------------------------------------

def _dp_levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_bit_parallel_levenshtein_equals_dynamic_programming():
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 70)))
        b = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 70)))
        assert levenshtein(a, b) == _dp_levenshtein(a, b), (a, b)
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3


def test_ocr_reward_is_one_minus_normalised_edit_distance():
    gold = "Total amount due: $1,234.56"
    assert reward("ocr", gold, gold) == 1.0
    assert reward("ocr", "Total  amount due:\n$1,234.56", gold) == 1.0  # whitespace runs collapse
    assert reward("ocr", "Total amount due: $1,284.56", gold) == pytest.approx(1 - 1 / 27)
    assert reward("ocr", "total amount due: $1,234.56", gold) == pytest.approx(1 - 1 / 27)
    assert reward("ocr", "total amount due: $1,234.56", gold, config=RewardConfig(ocr_case_sensitive=False)) == 1.0
    assert reward("ocr", "欢迎光临", "欢迎光临本店") == pytest.approx(1 - 2 / 6)


def test_anls_is_case_blind_and_cuts_at_half():
    """ANLS (Biten et al. 2019): max over the golds of 1 - NL when NL < 0.5, else 0."""
    assert reward("anls", "march 3, 1979", "March 3, 1979") == 1.0
    assert reward("anls", "Marhc 3, 1979", "March 3, 1979") == pytest.approx(1 - 2 / 13)
    assert reward("anls", "1979", "March 3, 1979") == 0.0  # 9 of 13 characters away: another answer
    assert reward("ocr", "1979", "March 3, 1979") == pytest.approx(4 / 13)
    assert reward("anls", "3/3/79", {"any_of": ["March 3, 1979", "3/3/79"]}) == 1.0


def _word_edits(hypothesis: list[str], reference: list[str]) -> int:
    """The textbook dynamic programme, row by row: the reference the fast path must equal."""
    row = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        previous, row = row, [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
    return row[-1]


def test_wer_is_video_r1s_ocr_reward():
    """1 - word edits / the gold's words, floored at 0: per word, not per character."""
    gold = "STOP ahead 200 m"
    assert reward("wer", gold, gold) == 1.0
    assert reward("wer", "STOP  ahead\n200 m", gold) == 1.0  # whitespace only splits words
    assert reward("wer", "STOP ahead 300 m", gold) == pytest.approx(0.75)  # one word of four wrong
    assert reward("ocr", "STOP ahead 300 m", gold) == pytest.approx(1 - 1 / 16)  # one character of 16
    assert reward("wer", "STOP ahead", gold) == pytest.approx(0.5)  # two words missing
    assert reward("wer", "STOP now ahead 200 m", gold) == pytest.approx(0.75)  # one extra
    assert reward("wer", "stop ahead 200 m", gold) == pytest.approx(0.75)  # case counts by default
    assert reward("wer", "stop ahead 200 m", gold, config=RewardConfig(ocr_case_sensitive=False)) == 1.0
    assert reward("wer", "a b c d e f g h i", "x") == 0.0  # nine edits for one word: floored at 0
    assert reward("wer", "2024", 2024) == 1.0
    assert reward("wer", "EXIT", {"any_of": ["Exit", "EXIT"]}) == 1.0
    assert reason("wer", "STOP", ["STOP"]).startswith("bad_ground_truth")


def test_word_error_rate_equals_the_textbook_programme():
    rng = random.Random(0)
    words = ["a", "b", "c", "ab", "猫", "b."]
    for _ in range(300):
        hyp = [rng.choice(words) for _ in range(rng.randint(0, 12))]
        ref = [rng.choice(words) for _ in range(rng.randint(0, 12))]
        assert word_error_rate(" ".join(hyp), " ".join(ref)) == _word_edits(hyp, ref) / max(1, len(ref))


def test_ocr_padding_the_answer_costs_reward():
    gold = "STOP"
    assert reward("ocr", "STOP STOP STOP STOP", gold) == pytest.approx(1 - 15 / 19)
    assert reward("ocr", "zzzz", gold) == 0.0


@pytest.mark.parametrize("box, gold", [
    ("The dog.", "dog"), ("two", "2"), ("100,978", "100978"), ("dont", "don't"), ("T-shirt", "t shirt"),
    ("Yes!", "yes"), ("an apple", "apple"), ("3.", "3"), ("2:50 PM", "2:50 pm"), ("none", "0"),
])
def test_vqa_answers_match_after_the_official_processing(box, gold):
    assert reward("vqa", box, gold) == 1.0


@pytest.mark.parametrize("box, gold", [
    ("2.5", "25"), ("girl's", "girls"), ("dogs", "dog"), ("stop sign", "stop"), ("10:30", "1030"), ("eleven", "11"),
])
def test_vqa_answers_that_differ_after_processing_score_0(box, gold):
    assert reward("vqa", box, gold) == 0.0


def _reference_vqa_accuracy(answer: str, annotators: list[str]) -> float:
    """visualqa.org's definition, written out: for each annotator left out, min(#others who gave
    the answer / 3, 1); the mean over the ten."""
    from stages.rl.rewards.verifiers.vqa import normalize_vqa_answer as norm
    accuracies = []
    for left_out in range(len(annotators)):
        others = [a for i, a in enumerate(annotators) if i != left_out]
        accuracies.append(min(1.0, sum(norm(a) == norm(answer) for a in others) / 3))
    return sum(accuracies) / len(accuracies)


def test_vqa_accuracy_over_ten_annotators():
    """{"vqa_answers": [...]} (TextVQA, VQAv2, VizWiz with data.answers_metric=vqa): 0.3 per agreeing
    annotator up to three, 1.0 from four (the leave-one-out mean), equal to the definition written out."""
    assert [reward("vqa", "red", {"vqa_answers": ["red"] * k + ["blue"] * (10 - k)}) for k in range(6)] == \
        pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0, 1.0])
    rng = random.Random(0)
    words = ["stop", "Stop sign", "stop sign", "two", "2", "the sign", "sign", "red"]
    for _ in range(50):
        annotators = [rng.choice(words) for _ in range(10)]
        answer = rng.choice(words)
        assert reward("vqa", answer, {"vqa_answers": annotators}) == pytest.approx(_reference_vqa_accuracy(answer, annotators))
    # another verifier decides what agrees: OCR agrees only at a full grade, so a near miss is no vote
    assert reward("ocr", "Stop", {"vqa_answers": ["Stop"] * 2 + ["Stopp"] * 8}) == pytest.approx(0.6)
    assert reason("vqa", "x", {"vqa_answers": []}).startswith("bad_ground_truth:vqa_answers")
    # an annotator's answer the verifier cannot grade ("many" to counting) does not agree, nor zero the item
    assert reward("counting", "2", {"vqa_answers": ["2", "2", "2", "two", "many"]}) == pytest.approx(0.8)
    # fewer than ten annotators: min(3, n - 1) of the others give full credit, so agreement never lowers it
    assert [reward("vqa", "x", {"vqa_answers": votes}) for votes in (["x"], ["x", "x"], ["x", "y"], ["x"] * 3)] == \
        pytest.approx([1.0, 1.0, 0.5, 1.0])


def test_ocr_long_page_is_fast():
    rng = random.Random(1)
    gold = "".join(rng.choice("abcdefghij klmnop") for _ in range(8000))
    pred = gold[:4000] + "X" + gold[4001:]
    start = time.perf_counter()
    assert reward("ocr", pred, gold) == pytest.approx(1 - 1 / 8000)
    assert time.perf_counter() - start < 1.0


# Chart -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("box, gold", [
    ("45", 45), ("45.5", 45), ("44.2", 45), ("45%", "45%"), ("45", "45%"), ("45\\%", 45), ("\\$1,200", "1200"),
    ("1,200", 1200), ("-3.2", "-3.2"), ("2019", 2019), ("2019", "2019"), ("Brazil", "Brazil"), ("brazil.", "Brazil"),
    ("\\text{North  America}", "north america"), ("12; 15", [12, 15]), ("12, 15", ["12", "15"]), ("0", 0),
])
def test_chart_matches(box, gold):
    assert reward("chart", box, gold) == 1.0


@pytest.mark.parametrize("box, gold, why", [
    ("46", 45, "wrong:out_of_tolerance"), ("2018", 2019, "wrong:year_mismatch"), ("2020", "2019", "wrong:year_mismatch"),
    ("Brasil", "Brazil", "wrong:label_mismatch"), ("0.45", "45%", "wrong:out_of_tolerance"),
    ("45 million", 45, "wrong:not_a_number"), ("15, 12", [12, 15], "wrong:out_of_tolerance"), ("12", [12, 15], "wrong:count_mismatch"),
    ("between 40 and 50", 45, "wrong:hedged(between)"), ("about 45", 45, "wrong:hedged(about)"),
    ("45 or 46", 45, "wrong:hedged(or)"), ("44-46", 45, "wrong:not_a_number"), ("４５", 45, "wrong:lookalike_digits"),
    ("٤٥", 45, "wrong:lookalike_digits"), ("0.01", 0, "wrong:out_of_tolerance"),
])
def test_chart_adversarial_and_wrong(box, gold, why):
    r = score("chart", respond(box), gold)
    assert (r.reward, r.reason) == (0.0, why)


def test_chart_tolerance_comes_from_config():
    assert reward("chart", "46", 45, config=RewardConfig(chart_rel_tol=0.05)) == 1.0
    assert reward("chart", "1990", 1989, config=RewardConfig(chart_year_max=1900)) == 1.0  # not a year any more


# Mean relative accuracy (VSI-Bench) ------------------------------------------------------------

def vsi_bench_mra(pred: float, gold: float) -> float:
    """VSI-Bench's evaluation code, written out with exact decimals: `abs_dist_norm(pred, target) <=
    1 - np.linspace(.5, .95, int((.95 - .5) / .05 + 2))`, whose int() of 10.999... gives 10 thresholds."""
    from fractions import Fraction
    assert int((0.95 - 0.5) / 0.05 + 2) == 10
    error = abs(Fraction(str(pred)) - Fraction(str(gold))) / abs(Fraction(str(gold)))
    return sum(error <= 1 - Fraction(k, 20) for k in range(10, 20)) / 10


@pytest.mark.parametrize("box, gold, expected", [
    ("21", 22.5, 0.9), ("5", 4, 0.6), ("3", 2, 0.1), ("9", 10, 0.9), ("21", 20, 1.0), ("2.2", "2.3", 1.0),
    ("14", 10, 0.3), ("16", 10, 0.0), ("15", 10, 0.1), ("95", 100, 1.0), ("105.0", "100", 1.0), ("1,200", 1000, 0.7),
    ("-2", -2.5, 0.7), ("2.2", 2, 0.9),
    ("21 m", 22.5, 0.9), ("21 meters.", "22.5", 0.9), ("21m", 22.5, 0.9), ("0", 0, 1.0), ("0.1", 0, 0.0),
])
def test_mra_is_the_mean_over_thresholds(box, gold, expected):
    assert reward("mra", box, gold) == pytest.approx(expected)
    if float(gold) != 0:
        assert reward("mra", box, gold) == pytest.approx(vsi_bench_mra(float(box.split()[0].rstrip("m").replace(",", "")),
                                                                         float(gold)))


@pytest.mark.parametrize("box, why", [
    ("about 22", "wrong:hedged(about)"), ("21 or 22", "wrong:hedged(or)"), ("２２", "wrong:lookalike_digits"),
    ("21-23", "wrong:not_a_number"), ("21 and 22", "wrong:not_a_number"), ("twenty", "wrong:not_a_number"),
    ("1e999", "wrong:not_a_number"), ("21 m²", "wrong:lookalike_digits"),
])
def test_mra_refuses_what_is_not_one_estimate(box, why):
    r = score("mra", respond(box), 22.5)
    assert (r.reward, r.reason) == (0.0, why)


def test_mra_gold_must_be_a_number():
    assert score("mra", respond("3"), "three").reason.startswith("bad_ground_truth")
    assert score("mra", respond("3"), True).reason.startswith("bad_ground_truth")


# ROUGE (Video-R1's free-form reward) -------------------------------------------------------------

def test_rouge_is_the_mean_of_rouge1_rouge2_rougel_f_with_stemming():
    """Against the package Video-R1 calls, and hand-counted on one pair: gold "the dog jumps over
    the fence", answer "the dogs jumped over a fence": stems the dog jump over the fenc / the dog
    jump over a fenc; unigrams 5 of 6 on each side (F 5/6), bigrams 3 of 5 (F 3/5), LCS 5 (F 5/6)."""
    from rouge_score import rouge_scorer

    gold, answer = "The dog jumps over the fence.", "the dogs jumped over a fence"
    assert reward("rouge", answer, gold) == pytest.approx((5 / 6 + 3 / 5 + 5 / 6) / 3)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for pair in [(gold, answer), ("A red ball rolls left.", "a ball"), ("Two cats sleep.", "Two cats sleep")]:
        scores = scorer.score(*pair)
        assert reward("rouge", pair[1], pair[0]) == pytest.approx(sum(s.fmeasure for s in scores.values()) / 3)
    assert reward("rouge", "Two cats sleep", "Two cats sleep.") == 1.0
    assert reward("rouge", "nothing alike", "Two cats sleep.") == 0.0
    assert score("rouge", respond("x"), "").reason.startswith("bad_ground_truth")


# Grounding ---------------------------------------------------------------------------------------

def test_iou_values():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0


CAT, DOG = [100, 200, 300, 400], [500, 500, 700, 650]


@pytest.mark.parametrize("box, gold, expected", [
    ("[[100,200,300,400]]", [CAT], 1.0),
    ("[100, 200, 300, 400]", [CAT], 1.0),
    ("[[110,210,310,410]]", [CAT], 1.0),  # IoU 0.82
    ("[[500,500,700,650],[100,200,300,400]]", [CAT, DOG], 1.0),  # order does not matter
    ("[[100,200,300,400]]", [CAT, DOG], 0.5),
    ("[[200,300,400,500]]", [CAT], 0.0),  # IoU 0.14
    ("[]", [], 1.0),
    ("[[100,200,300,400]]", [], 0.0),
    ("[]", [CAT], 0.0),
])
def test_grounding_rewards(box, gold, expected):
    assert reward("grounding", box, gold) == pytest.approx(expected)


def test_grounding_box_spraying_does_not_pay():
    spray = [CAT, DOG] + [[i * 80, 0, i * 80 + 60, 60] for i in range(8)]
    assert reward("grounding", str(spray), [CAT, DOG]) == pytest.approx(2 / 10)
    # One big box over everything matches nothing.
    assert reward("grounding", "[[0,0,999,999]]", [CAT, DOG]) == 0.0
    # Matching is one-to-one: one predicted box cannot claim two overlapping gold boxes.
    assert reward("grounding", "[[100,200,300,400]]", [CAT, [105, 205, 305, 405]]) == 0.5


@pytest.mark.parametrize("box", ["[[100,200,300]]", "[[100,200,300,1000]]", "[[300,200,100,400]]", "[[NaN,0,10,10]]",
                                 "[[100,200,300,400]", "cat at [[100,200,300,400]]", "[[true,0,10,10]]",
                                 "[[-1,0,10,10]]"])
def test_grounding_malformed_boxes_score_0(box):
    r = score("grounding", respond(box), [CAT])
    assert r.reward == 0.0 and r.reason.startswith("wrong:malformed_boxes")


def test_grounding_box_count_cap_and_string_gold():
    assert reward("grounding", str([CAT] * 101), [CAT], config=RewardConfig(max_boxes=100)) == 0.0
    assert reward("grounding", "[[100,200,300,400]]", "[[100,200,300,400]]") == 1.0


def test_click_is_screenspots_point_in_box():
    """ScreenSpot: the click (a point, or a box's centre) inside the gold box; pixel golds scaled."""
    gold = [100, 200, 300, 400]
    for box in ("[150, 250]", "[[150, 250]]", "[100, 400]", "[120, 220, 280, 380]", "[[0, 0, 400, 600]]"):
        assert reward("click", box, [gold]) == 1.0, box  # edges count; a box 4x the gold's, centred, too
    assert reward("click", "[99, 250]", [gold]) == 0.0 and reward("grounding", "[[0, 0, 400, 600]]", [gold]) == 0.0
    for box in ("[150]", "[150, 1000]", "[true, 250]", "[NaN, 250]", "click at [150, 250]", '{"x": 150, "y": 250}'):
        r = score("click", respond(box), [gold])
        assert r.reward == 0.0 and r.reason.startswith("wrong:malformed_point"), box
    pixels = {"box_units": "pixels", "image_size": [320, 200]}  # ScreenSpot's bbox: [x1, y1, x2, y2] in pixels
    assert reward("click", "[187, 125]", [20, 10, 100, 40], **pixels) == 1.0  # (60, 25) px is (187.5, 125)
    assert reward("click", "[600, 600]", [20, 10, 100, 40], **pixels) == 0.0
    assert reason("click", "[150, 250]", [gold, gold]).startswith("bad_ground_truth")


# GUI ---------------------------------------------------------------------------------------------

CLICK = {"action_type": "click", "box_2d": [[100, 200, 300, 400]]}
TYPE = {"action_type": "type", "text": "Hello World"}
SCROLL = {"action_type": "scroll", "direction": "down", "box_2d": [[0, 0, 999, 999]]}


@pytest.mark.parametrize("box, gold", [
    ('{"action_type": "click", "box_2d": [[100, 200, 300, 400]]}', CLICK),
    ('{"action_type": "CLICK", "box_2d": [[110, 210, 305, 405]]}', CLICK),
    ('{"box_2d": [100, 200, 300, 400], "action_type": "click"}', CLICK),
    ('{"action_type": "type", "text": " Hello World "}', TYPE),
    ('{"action_type": "scroll", "direction": "Down", "box_2d": [[0, 0, 999, 999]]}', SCROLL),
])
def test_gui_matching_actions_score_1(box, gold):
    assert reward("gui", box, gold) == 1.0


@pytest.mark.parametrize("box, gold, why", [
    ('{"action_type": "long_press", "box_2d": [[100, 200, 300, 400]]}', CLICK, "wrong:action_type"),
    ('{"action_type": "click", "box_2d": [[400, 500, 600, 700]]}', CLICK, "wrong:box"),
    ('{"action_type": "click", "box_2d": [[100, 200, 300, 400], [400, 500, 600, 700]]}', CLICK, "wrong:box"),
    ('{"action_type": "click"}', CLICK, "wrong:fields"),
    ('{"action_type": "click", "box_2d": [[100, 200, 300, 400]], "text": "x"}', CLICK, "wrong:fields"),
    ('{"action_type": "type", "text": "hello world"}', TYPE, "wrong:field(text)"),
    ('{"action_type": "scroll", "direction": "up", "box_2d": [[0, 0, 999, 999]]}', SCROLL, "wrong:field(direction)"),
    ('{"action_type": "click", "action_type": "type", "text": "Hello World"}', TYPE, "wrong:malformed_action(duplicate key)"),
    ('click(100, 200)', CLICK, "wrong:malformed_action(not JSON: Expecting value)"),
    ('["click"]', CLICK, "wrong:malformed_action"),
    ('{"action_type": "click", "box_2d": [[100, 200, 300]]}', CLICK, "wrong:malformed_box(a box is [x1, y1, x2, y2])"),
])
def test_gui_wrong_actions_score_0(box, gold, why):
    r = score("gui", respond(box), gold)
    assert (r.reward, r.reason) == (0.0, why)


def test_gui_ignored_fields_and_string_gold():
    cfg = RewardConfig(gui_ignored_fields=["thought"])
    box = '{"action_type": "type", "text": "Hello World", "thought": "I should type the greeting"}'
    assert reward("gui", box, TYPE, config=cfg) == 1.0
    assert reward("gui", box, TYPE) == 0.0
    assert reward("gui", '{"action_type": "type", "text": "Hello World"}', '{"action_type": "type", "text": "Hello World"}') == 1.0
