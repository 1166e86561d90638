"""Verifier registry, user verifiers by import path, the judge hook, and recipe-filled configs."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from stages.rl.rewards import (
    RewardConfig, RewardConfigError, UnknownVerifierError, Verdict, get_verifier, load_verifier, register_verifier,
    registered_names, score,
)

from . import helpers
from .helpers import respond


def test_builtin_domains_are_registered():
    assert {"math", "multiple_choice", "counting", "ocr", "chart", "grounding", "gui", "judge"} <= set(registered_names())


def test_register_function_and_class_and_refuse_silent_clashes():
    assert get_verifier("exact_text") is helpers.exact_text
    assert score("exact_text", respond("blue"), "blue").reward == 1.0
    # Re-registering the same definition (a module imported twice) is not a clash; another one is.
    register_verifier("exact_text")(helpers.exact_text)
    with pytest.raises(RewardConfigError, match="already registered"):
        register_verifier("exact_text")(helpers.LengthRatio)

    @register_verifier("test_registry_class", overwrite=True)
    class Half:
        def __call__(self, answer, ground_truth, config, **info):
            return 0.5

    assert score("test_registry_class", respond("x"), "y").reward == 0.5
    assert isinstance(get_verifier("test_registry_class"), Half)


def test_kinds_of_question_as_public_sets_name_them():
    """Video-R1's `problem_type` values name verifiers after case, spaces and hyphens, or as its own
    kinds; a mapping's keys are read the same way."""
    from stages.rl.rewards import resolve_verifier

    rewards = RewardConfig(domain_verifiers={"free_form": "vqa"})
    named = {kind: resolve_verifier(kind, rewards) for kind in
             ("multiple choice", "OCR", "numerical", "regression", "Free-Form", "Math")}
    assert named == {"multiple choice": get_verifier("multiple_choice"), "OCR": get_verifier("ocr"),
                     "numerical": get_verifier("math"), "regression": get_verifier("mra"),
                     "Free-Form": get_verifier("vqa"), "Math": get_verifier("math")}
    assert score("multiple choice", respond("B"), "B", options=["x", "y"]).reward == 1.0
    assert resolve_verifier("free-form", RewardConfig()) is get_verifier("rouge")  # Video-R1's reward for it
    # Video-R1's own OCR reward, the word error rate, is one mapping away (docs/data.md)
    assert resolve_verifier("OCR", RewardConfig(domain_verifiers={"ocr": "wer"})) is get_verifier("wer")
    assert score("OCR", respond("EXIT 12"), "EXIT 13", config=RewardConfig(domain_verifiers={"ocr": "wer"})).reward == 0.5
    with pytest.raises(UnknownVerifierError):
        resolve_verifier("essay", RewardConfig())
    # exact names come first: a mapping for "Math" leaves the registered domain "math" to its verifier
    assert resolve_verifier("math", RewardConfig(domain_verifiers={"Math": "judge"})) is get_verifier("math")
    assert resolve_verifier("Math", RewardConfig(domain_verifiers={"Math": "judge"})) is get_verifier("judge")


def test_unknown_domain_raises_a_typed_error():
    with pytest.raises(UnknownVerifierError, match="no verifier named 'astrology'") as err:
        score("astrology", respond("x"), "y")
    assert isinstance(err.value, KeyError) and isinstance(err.value, RewardConfigError)


def test_recipe_names_a_user_verifier_by_import_path():
    cfg = RewardConfig(domain_verifiers={"caption": "tests.rewards.helpers:LengthRatio", "physics": "math"})
    r = score("caption", respond("abcd"), "abcdefgh", config=cfg, scale=0.5)
    assert (r.reward, r.reason) == (0.25, "partial")
    assert score("physics", respond("\\frac{1}{2}"), "0.5", config=cfg).reward == 1.0
    assert isinstance(load_verifier("tests.rewards.helpers:LengthRatio"), helpers.LengthRatio)
    assert load_verifier("tests.rewards.helpers:exact_text") is helpers.exact_text


@pytest.mark.parametrize("path, message", [
    ("tests.rewards.helpers.exact_text", "expected 'package.module:attr'"),
    ("tests.rewards.no_such_module:f", "cannot load"),
    ("tests.rewards.helpers:missing", "cannot load"),
    ("tests.rewards.helpers:THINK", "not callable"),
])
def test_bad_import_paths_raise_config_errors(path, message):
    with pytest.raises(RewardConfigError, match=message):
        load_verifier(path)


@pytest.mark.parametrize("returned, expected", [
    (1, (1.0, "correct")), (0.3, (0.3, "partial")), (7.0, (1.0, "correct")), (-2, (0.0, "wrong")),
    (Verdict(0.9, "close"), (0.9, "close")), (math.nan, (0.0, "verifier_error:nan")),
    ("yes", (0.0, "verifier_error:returned_str")),
])
def test_verifier_return_values_are_normalised(returned, expected):
    register_verifier("test_registry_returns", overwrite=True)(lambda answer, gt, config, **info: returned)
    r = score("test_registry_returns", respond("x"), "y")
    assert (r.reward, r.reason) == expected


def test_a_raising_verifier_costs_one_item():
    cfg = RewardConfig(domain_verifiers={"buggy": "tests.rewards.helpers:raises"})
    r = score("buggy", respond("x"), "y", config=cfg)
    assert (r.reward, r.format_ok, r.reason) == (0.0, True, "verifier_error:ZeroDivisionError")


def test_judge_hook_is_off_by_default_and_pluggable():
    with pytest.raises(RewardConfigError, match="RewardConfig.judge"):
        score("judge", respond(None, before="Paris."), "Paris")
    cfg = RewardConfig(judge="tests.rewards.helpers:stub_judge")
    assert score("judge", respond(None, before="It is Paris."), "Paris", config=cfg, question="Capital?").reward == 1.0
    assert score("judge", respond(None, before="It is Lyon."), "Paris", config=cfg).reward == 0.25


def test_config_is_filled_by_a_recipe():
    recipe = {"chart_rel_tol": 0.05, "domain_verifiers": {"physics": "math", "chat": "judge"},
              "nonverifiable_domains": ["judge", "chat"],
              "judge": "tests.rewards.helpers:stub_judge", "worker_memory_mb": None}
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RewardConfig), recipe))
    assert isinstance(cfg, RewardConfig)
    assert (cfg.chart_rel_tol, cfg.worker_memory_mb) == (0.05, None)
    assert score("chart", respond("46"), 45, config=cfg).reward == 1.0
    # A dataset domain "chat" graded by the judge: no box needed, a box gets the minimal reward.
    assert score("chat", respond(None, before="It is Paris."), "Paris", config=cfg).reward == 1.0
    assert score("chat", respond("Paris"), "Paris", config=cfg).reason == "box_in_nonverifiable"


def test_any_of_answers_share_one_time_limit_and_pass_over_ungradable_items():
    """Accepted answers ({"any_of": [...]}, DocVQA's list): the best grade of any, all under the one
    `time_limit_s` the reward pool enforces; an item the verifier cannot grade costs only itself."""
    import time

    from stages.rl.rewards import GroundTruthError

    def slow_then_exact(answer, gt, config, **info):
        if gt.startswith("slow"):
            time.sleep(0.3)  # each item is under the limit, three together are over it
            return 0.0
        if gt == "broken":
            raise GroundTruthError("not gradable")
        return float(answer == gt)

    register_verifier("test_registry_any_of", overwrite=True)(slow_then_exact)
    cfg = RewardConfig(time_limit_s=0.5)
    grade = lambda gt: score("test_registry_any_of", respond("x"), {"any_of": gt}, config=cfg)  # noqa: E731
    assert (grade(["broken", "y", "x"]).reward, grade(["broken", "x"]).reason) == (1.0, "correct")
    assert grade(["broken", "y"]).reason == "wrong"
    assert grade(["broken"]).reason == "bad_ground_truth:not gradable"
    assert grade(["slow1", "slow2", "slow3", "x"]).reason == "timeout"
    assert grade(["slow1", "slow1", "slow1", "x"]).reason == "correct"  # the same answer is graded once
    assert grade([]).reason.startswith("bad_ground_truth:any_of")
