"""What an RL step logs beyond the loss (rlcs.md "log every step"): rollout statistics, the
update's clipping and ratios, and held-out rewards."""

from __future__ import annotations

import math
from typing import Any

from data_pipelines.prompts import PromptRecord
from trainer.loop import UpdateResult

from .curriculum import GroupOutcome
from .groups import GroupResult
from .rewards.types import GRADING_ERRORS


def p95(values: list[int]) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]) if ordered else 0.0


def rollout_metrics(results: list[GroupResult], outcomes: list[GroupOutcome], kept: list[int],
                    pass_threshold: float) -> dict[str, Any]:
    completions = [c for r in results for c in r.completions]
    lengths = [len(c) for c in completions]
    rewards = [x for r in results for x in r.rewards]
    n = max(1, len(completions))
    return {
        "prompts_rolled_out": len(results), "groups_kept": len(kept),
        "degenerate_fraction_trained": sum(outcomes[k].degenerate for k in kept) / max(1, len(kept)),
        "reward_mean": sum(rewards) / n, "pass_rate": sum(x >= pass_threshold for x in rewards) / n,
        "format_ok_rate": sum(ok for r in results for ok in r.format_ok) / n,
        "repetition_rate": sum("repetition" in p for r in results for p in r.penalties) / n,
        # responses the verifier could not grade (a ground truth its domain's verifier cannot read)
        "grading_error_rate": sum(x.startswith(GRADING_ERRORS) for r in results for x in r.reasons) / n,
        "response_length_mean": sum(lengths) / n, "response_length_p95": p95(lengths),
        "truncation_rate": sum(c.truncated for c in completions) / n,
        "forced_answer_rate": sum(c.forced for c in completions) / n,
    }


def update_metrics(results: list[UpdateResult]) -> dict[str, Any]:
    """Clipped-token fraction, mean ratio and trained tokens over the step's updates (an update
    with nothing to train on counts as zeros), and the engine-vs-trainer log-prob gap over the
    tokens of the first update (RLStage.loss)."""
    clipped, ratio, tokens, gap, gap_tokens = (sum(r.stats[i] if r.stats else 0.0 for r in results)
                                               for i in range(5))
    return {"clip_fraction": clipped / max(tokens, 1.0), "ratio_mean": ratio / max(tokens, 1.0),
            "tokens_trained": int(tokens), "logprob_gap": gap / max(gap_tokens, 1.0)}


def eval_metrics(results: list[GroupResult], records: list[PromptRecord], pass_threshold: float) -> dict[str, float]:
    """Held-out mean reward and pass rate, per domain too."""
    rewards = [x for r in results for x in r.rewards]
    out = {"eval/reward": sum(rewards) / max(1, len(rewards)),
           "eval/accuracy": sum(x >= pass_threshold for x in rewards) / max(1, len(rewards))}
    by_domain: dict[str, list[float]] = {}
    for r in results:
        by_domain.setdefault(records[r.slot].domain, []).extend(r.rewards)
    out.update({f"eval/reward/{d}": sum(v) / len(v) for d, v in by_domain.items()})
    return out
