"""score(): length cap -> format gate -> verifier under a time limit -> penalties."""

from __future__ import annotations

import math
from typing import Any, Mapping

from data_pipelines.prompt_columns import ANY_OF, VQA_ANSWERS

from .config import RewardConfig
from .gate import FormatError, Parsed, answer_outside_box, parse_response
from .penalties import has_repetition, is_mixed_language
from .registry import Verifier, resolve_verifier
from .timelimit import ScoreTimeout, call_with_time_limit
from .types import GroundTruthError, RewardConfigError, RewardResult, Verdict

DEFAULT_CONFIG = RewardConfig()


def score(domain: str, response: str, ground_truth: Any, *, config: RewardConfig | None = None,
          **info: Any) -> RewardResult:
    """Reward one response. `info` is passed to the verifier (e.g. `options=` for multiple choice).

    A recipe error (unknown domain, judge not configured) raises RewardConfigError; anything wrong
    with the response or the item gives min_reward with a reason. The verifier runs under
    config.time_limit_s when called from the main thread; see `RewardPool` for a hard limit.
    """
    config = config or DEFAULT_CONFIG
    return score_with(resolve_verifier(domain, config), domain, response, ground_truth, config, info)


def score_with(verifier: Verifier, domain: str, response: str, ground_truth: Any, config: RewardConfig,
               info: Mapping[str, Any]) -> RewardResult:
    """`score` with the verifier already resolved (what the batch workers run)."""
    if not isinstance(response, str):
        return _fail(config, f"bad_response_type:{type(response).__name__}")
    if len(response) > config.max_response_chars:
        return _fail(config, "response_too_long")
    try:
        parsed = parse_response(response)
    except FormatError as err:
        return _fail(config, f"format:{err.detail}")
    if domain in config.nonverifiable_domains:
        if parsed.box_count:
            return RewardResult(config.box_reward_nonverifiable, False, parsed.answer, "box_in_nonverifiable")
        graded = parsed.answer
    else:
        if parsed.box_count != 1:
            return _fail(config, "format:no_box" if parsed.box_count == 0 else "format:multiple_boxes")
        graded = parsed.box.strip()
        if not graded:
            return _fail(config, "format:empty_box")
        if len(graded) > config.max_answer_chars:
            return RewardResult(config.min_reward, True, graded[:200], "answer_too_long")
    verdict = _run_verifier(verifier, graded, ground_truth, config, info)
    if isinstance(verdict, RewardResult):
        return verdict
    reward, penalties = _apply_penalties(verdict.reward, parsed, config)
    return RewardResult(reward, True, graded, verdict.reason, penalties)


def _fail(config: RewardConfig, reason: str) -> RewardResult:
    return RewardResult(config.min_reward, False, None, reason)


def _run_verifier(verifier: Verifier, graded: str, ground_truth: Any, config: RewardConfig,
                  info: Mapping[str, Any]) -> Verdict | RewardResult:
    several = isinstance(ground_truth, dict) and len(ground_truth) == 1 and next(iter(ground_truth))
    if several in (ANY_OF, VQA_ANSWERS):
        accepted = ground_truth[several]
        if not isinstance(accepted, list) or not accepted:
            return RewardResult(config.min_reward, True, graded, f"bad_ground_truth:{several} must be a non-empty list")
        combine = _best_of if several == ANY_OF else _vqa_accuracy
        grade = lambda: combine(verifier, graded, accepted, config, info)  # noqa: E731
    else:
        grade = lambda: verifier(graded, ground_truth, config, **info)  # noqa: E731
    try:  # one limit for the whole grade: the reward pool kills a worker past it
        out = call_with_time_limit(grade, config.time_limit_s)
    except ScoreTimeout:
        return RewardResult(config.min_reward, True, graded, "timeout")
    except RewardConfigError:
        raise
    except GroundTruthError as err:
        return RewardResult(config.min_reward, True, graded, f"bad_ground_truth:{err}")
    except Exception as err:  # a verifier bug must cost one item, not the run
        return RewardResult(config.min_reward, True, graded, f"verifier_error:{type(err).__name__}")
    return out if isinstance(out, RewardResult) else _as_verdict(out, graded, config)


def _grade_each(verifier: Verifier, graded: str, answers: list, config: RewardConfig,
                info: Mapping[str, Any]) -> dict[str, Verdict | RewardResult]:
    """The grade against each distinct answer (a str key; several annotators give the same one). An
    answer the verifier cannot grade is left out; when none can be graded, the first error stands.
    A timeout ends the whole grade (the caller's one limit)."""
    grades: dict[str, Verdict | RewardResult] = {}
    first_error: Exception | None = None
    for one in answers:
        if str(one) in grades:
            continue
        try:
            grades[str(one)] = _as_verdict(verifier(graded, one, config, **info), graded, config)
        except (ScoreTimeout, RewardConfigError):
            raise
        except Exception as err:
            first_error = first_error or err
    if not grades:
        raise first_error  # type: ignore[misc]  # answers is non-empty: some error was kept
    return grades


def _best_of(verifier: Verifier, graded: str, accepted: list, config: RewardConfig,
             info: Mapping[str, Any]) -> Verdict | RewardResult:
    """Several accepted answers (VQA annotators'): the best grade against any one of them."""
    return max(_grade_each(verifier, graded, accepted, config, info).values(),
               key=lambda out: (out.reward, isinstance(out, Verdict)))


def _vqa_accuracy(verifier: Verifier, graded: str, annotators: list, config: RewardConfig,
                  info: Mapping[str, Any]) -> Verdict:
    """The VQA accuracy (visualqa.org): min(#annotators who gave the answer / 3, 1), averaged over
    the sets that leave one annotator out. An annotator agrees when the verifier gives their answer
    a full grade (one it cannot grade, "many" to a counting verifier, does not agree). Fewer than
    ten annotators: full credit takes min(3, n - 1) of the others, so agreement never lowers it."""
    grades = _grade_each(verifier, graded, annotators, config, info)
    matches = [str(one) in grades and grades[str(one)].reward >= 1.0 for one in annotators]
    if len(matches) == 1:
        reward = float(matches[0])
    else:
        needed, agreeing = min(3, len(matches) - 1), sum(matches)
        reward = sum(min(1.0, (agreeing - m) / needed) for m in matches) / len(matches)
    return Verdict(reward, "correct" if reward >= 1.0 else "partial" if reward > 0 else "wrong")


def _as_verdict(out: Any, graded: str, config: RewardConfig) -> Verdict | RewardResult:
    if isinstance(out, Verdict):
        reward, reason = out.reward, out.reason
    elif isinstance(out, (int, float)):
        reward = float(out)
        reason = "correct" if reward >= 1.0 else "wrong" if reward <= 0.0 else "partial"
    else:
        return RewardResult(config.min_reward, True, graded, f"verifier_error:returned_{type(out).__name__}")
    if math.isnan(reward):
        return RewardResult(config.min_reward, True, graded, "verifier_error:nan")
    return Verdict(min(1.0, max(0.0, float(reward))), reason)


def _apply_penalties(reward: float, parsed: Parsed, config: RewardConfig) -> tuple[float, tuple[str, ...]]:
    penalties = []
    if has_repetition(parsed.think + "\n" + parsed.answer, config):
        penalties.append("repetition")
        reward *= 1.0 - config.repetition_penalty
    prose = answer_outside_box(parsed)
    if config.mixed_language_scope == "response":
        prose = parsed.think + "\n" + prose
    if is_mixed_language(prose, config):
        penalties.append("mixed_language")
        reward *= 1.0 - config.mixed_language_penalty
    return reward, tuple(penalties)
