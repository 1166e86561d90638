"""Format gate, length caps, the single-item time limit and the penalties, through score()."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from stages.rl.rewards import RewardConfig, score
from stages.rl.rewards.gate import FormatError, parse_response
from stages.rl.rewards.penalties import is_mixed_language, max_block_repeats

from .helpers import THINK, respond

BOX = "<|begin_of_box|>{}<|end_of_box|>"


def test_well_formed_response_is_graded_on_the_box_only():
    r = score("math", respond("\\frac{1}{2}", before="We get 0.3 first, but the answer is "), "0.5")
    assert (r.reward, r.format_ok, r.answer, r.reason, r.penalties) == (1.0, True, "\\frac{1}{2}", "correct", ())
    # Surrounding whitespace and newlines are fine.
    assert score("math", "\n  " + respond("7") + "\n", "7").reward == 1.0


@pytest.mark.parametrize("response, reason", [
    ("<answer>" + BOX.format(42) + "</answer>", "format:missing_think"),
    (f"<think>{THINK}<answer>" + BOX.format(42) + "</answer>", "format:missing_think_close"),
    (f"<think>{THINK}</think>" + BOX.format(42), "format:missing_answer"),
    (f"<think>{THINK}</think><answer>" + BOX.format(42), "format:missing_answer_close"),
    (f"<think>a<think>b</think></think><answer>" + BOX.format(42) + "</answer>", "format:repeated_tag"),
    (respond("42") + "<answer>" + BOX.format(43) + "</answer>", "format:repeated_tag"),
    (f"<answer>{BOX.format(42)}</answer><think>{THINK}</think>", "format:text_outside_tags"),
    (f"Sure! <think>{THINK}</think><answer>{BOX.format(42)}</answer>", "format:text_outside_tags"),
    (f"<think>{THINK}</think> so 42 <answer>{BOX.format(42)}</answer>", "format:text_outside_tags"),
    (f"<think>{THINK}</think><answer>{BOX.format(42)}</answer> 43", "format:text_outside_tags"),
    (f"<think>{THINK}</answer></think><answer>{BOX.format(42)}<answer>", "format:repeated_tag"),
    # Adversarial: several boxes, an answer outside the box, a box inside <think>.
    (respond("42", after=" or maybe " + BOX.format(43)), "format:multiple_boxes"),
    (respond("42") .replace("</answer>", BOX.format(42) + "</answer>"), "format:multiple_boxes"),
    (respond(None, before="The answer is 42."), "format:no_box"),
    (respond("", before="42 "), "format:empty_box"),
    (respond("  \n ", before="42 "), "format:empty_box"),
    (respond("43", think="The answer is " + BOX.format(42)), "format:box_in_think"),
    (respond(None, think="Final: " + BOX.format(42), before="42"), "format:box_in_think"),
    (respond("42").replace("<|end_of_box|>", ""), "format:unbalanced_box"),
    (f"<think>{THINK}</think><answer>The answer is <|end_of_box|>42<|begin_of_box|></answer>", "format:unbalanced_box"),
])
def test_malformed_responses_get_min_reward(response, reason):
    r = score("math", response, "42")
    assert (r.reward, r.format_ok, r.reason) == (0.0, False, reason)


def test_min_reward_is_configurable_and_used_for_gate_failures():
    cfg = RewardConfig(min_reward=0.0, box_reward_nonverifiable=0.05)
    assert score("math", respond(None, before="42"), "42", config=cfg).reward == 0.0
    with pytest.raises(ValueError):
        RewardConfig(min_reward=1.5)
    with pytest.raises(ValueError):
        RewardConfig(mixed_language_scope="everything")


def test_nonverifiable_domain_needs_no_box_and_a_box_gets_the_minimal_reward():
    cfg = RewardConfig(judge="tests.rewards.helpers:stub_judge")
    plain = score("judge", respond(None, before="Paris is the capital of France."), "Paris", config=cfg)
    assert (plain.reward, plain.format_ok, plain.reason) == (1.0, True, "judged")
    assert plain.answer == "Paris is the capital of France."
    boxed = score("judge", respond("Paris"), "Paris", config=cfg)
    assert (boxed.reward, boxed.format_ok, boxed.reason) == (0.1, False, "box_in_nonverifiable")
    # The judge scores everything else; the structural gate still applies.
    assert score("judge", respond(None, before="London."), "Paris", config=cfg).reward == 0.25
    assert score("judge", "Paris", "Paris", config=cfg).reason == "format:missing_think"


def test_million_character_responses_are_rejected_fast():
    huge_correct = respond("42", think="Let me think. " * 75_000)
    assert len(huge_correct) > 10 ** 6
    for response in (huge_correct, "x" * 10 ** 6, "<think>" * 150_000):
        start = time.perf_counter()
        r = score("math", response, "42")
        assert time.perf_counter() - start < 0.05
        assert (r.reward, r.format_ok, r.reason) == (0.0, False, "response_too_long")


def test_long_response_under_the_cap_is_scored_in_linear_time():
    think = " ".join(f"step {i}: we add {i} and {i + 1} to get {2 * i + 1}." for i in range(4_200))
    assert 180_000 < len(respond("42", think=think)) <= RewardConfig().max_response_chars
    start = time.perf_counter()
    assert score("math", respond("42", think=think), "42").reward == 1.0
    assert time.perf_counter() - start < 2.0


def test_boxed_answer_length_is_capped():
    cfg = RewardConfig(max_answer_chars=100)
    r = score("ocr", respond("a" * 101), "a" * 101, config=cfg)
    assert (r.reward, r.reason) == (0.0, "answer_too_long")
    assert score("ocr", respond("a" * 100), "a" * 100, config=cfg).reward == 1.0


def test_pathological_latex_times_out_and_restores_the_alarm_handler():
    cfg = RewardConfig(time_limit_s=0.5)
    before = signal.getsignal(signal.SIGALRM)
    for latex in ("9^{9^{9}}", "(10^{9})!", "\\int_0^1 e^{-x^{5}}\\sin(x^{7}) dx"):
        start = time.perf_counter()
        r = score("math", respond(latex), "1", config=cfg)
        assert time.perf_counter() - start < 1.5, latex
        assert (r.reward, r.format_ok, r.reason) == (0.0, True, "timeout")
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
    assert score("math", respond("\\frac{2}{4}"), "0.5", config=cfg).reward == 1.0


def test_score_works_off_the_main_thread():
    out = []
    thread = threading.Thread(target=lambda: out.append(score("math", respond("\\sqrt{4}"), "2")))
    thread.start()
    thread.join()
    assert out[0].reward == 1.0


def test_parse_response_splits_think_answer_box():
    parsed = parse_response(respond("x=1", think="why", before="so ", after="."))
    assert (parsed.think, parsed.answer, parsed.box, parsed.box_count) == (
        "why", "so <|begin_of_box|>x=1<|end_of_box|>.", "x=1", 1)
    with pytest.raises(FormatError) as err:
        parse_response("<think></think>")
    assert err.value.detail == "missing_answer"


# Penalties ---------------------------------------------------------------------------------------

LOOP = "Wait, let me recompute the area of the triangle using the base and the height given in the figure, " \
       "which are 6 and 4, so the area is one half times 6 times 4. "


def test_generation_loop_halves_the_reward():
    looping = THINK + " " + LOOP * 6
    r = score("math", respond("12", think=looping), "12")
    assert (r.reward, r.reason, r.penalties) == (0.5, "correct", ("repetition",))
    # The paragraph is 38 tokens: a 50-token window spans two copies, so 6 copies hold each window 5 times.
    assert max_block_repeats(looping, 50) == 5
    # Three restatements are not a loop.
    assert score("math", respond("12", think=THINK + " " + LOOP * 3), "12").penalties == ()
    # A wrong answer stays 0; the penalty is still reported.
    wrong = score("math", respond("13", think=looping), "12")
    assert (wrong.reward, wrong.penalties) == (0.0, ("repetition",))


def test_loop_inside_the_answer_counts_too():
    r = score("ocr", respond("hello", before=LOOP * 5), "hello")
    assert (r.reward, r.penalties) == (0.5, ("repetition",))


def test_repetition_thresholds_come_from_config():
    cfg = RewardConfig(repetition_min_occurrences=3, repetition_penalty=1.0)
    r = score("math", respond("12", think=THINK + " " + LOOP * 4), "12", config=cfg)
    assert (r.reward, r.penalties) == (0.0, ("repetition",))
    assert score("math", respond("12", think=THINK + " " + LOOP * 4), "12").penalties == ()


def test_long_varied_reasoning_has_no_repetition_penalty():
    think = " ".join(f"Case {i}: if x = {i} then x^2 = {i * i}, which is {'even' if i % 2 == 0 else 'odd'}." for i in range(400))
    assert score("math", respond("42", think=think), "42").penalties == ()


MIXED_THINK = ("We need the total number of apples. 首先我们计算每个篮子里有多少个苹果，然后把它们加起来得到总数。"
               "Each basket has 4 apples and there are 3 baskets. 所以答案是十二个苹果。")


def test_mixed_language_reasoning_is_penalised():
    r = score("counting", respond("12", think=MIXED_THINK), 12)
    assert (r.reward, r.penalties) == (0.5, ("mixed_language",))
    # Scope "answer" looks at the answer text only (outside the box): this one is clean.
    cfg = RewardConfig(mixed_language_scope="answer")
    assert score("counting", respond("12", think=MIXED_THINK), 12, config=cfg).penalties == ()
    mixed_answer = respond("12", before="The total number of apples is 总共有十二个苹果，每个篮子里有四个苹果，一共三个篮子 in all three baskets together: ")
    assert score("counting", mixed_answer, 12, config=cfg).penalties == ("mixed_language",)


def test_single_language_with_math_notation_or_short_quotes_is_not_mixed():
    cfg = RewardConfig()
    chinese_with_math = "设 $x$ 为苹果的数量，则 $3x + 2 = 14$，解得 $x = 4$。验证：3 乘以 4 加 2 等于 14，正确。" * 3
    assert not is_mixed_language(chinese_with_math, cfg)
    english_with_quote = ("The sign in the image reads 欢迎 which means welcome, so the shop is open. " * 2 +
                          "Counting the letters on the banner carefully gives twelve letters in total.")
    assert not is_mixed_language(english_with_quote, cfg)
    # OCR output in another script is in the box, which the language check does not read.
    r = score("ocr", respond("欢迎光临本店，祝您购物愉快", before="The text reads: "), "欢迎光临本店，祝您购物愉快")
    assert (r.reward, r.penalties) == (1.0, ())
