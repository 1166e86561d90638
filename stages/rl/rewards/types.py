"""Result types and errors shared by the gate, the verifiers and the scorers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RewardResult:
    """What `score` returns for one response.

    reward: in [0, 1] after penalties. format_ok: the format gate passed. answer: the graded text
    (the boxed text for verifiable domains, the whole answer otherwise; None when the gate failed
    before it could be found). reason: why this reward ("correct", "wrong:hedged", "format:no_box",
    "timeout", ...). penalties: names of the penalties applied.
    """

    reward: float
    format_ok: bool
    answer: str | None
    reason: str
    penalties: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """What a verifier returns: a reward in [0, 1] and a short reason."""

    reward: float
    reason: str


class RewardConfigError(ValueError):
    """The recipe is wrong (unknown domain, missing judge, bad import path); never swallowed."""


class UnknownVerifierError(RewardConfigError, KeyError):
    """No verifier is registered under this name."""


# Reasons of a reward the verifier could not give (`score`'s "bad_ground_truth:...", "verifier_error:..."):
# a 0 that is the data's or the verifier's fault, not the response's. RL and eval count them.
GRADING_ERRORS = ("bad_ground_truth", "verifier_error")


class GroundTruthError(ValueError):
    """The dataset's ground truth cannot be used by the verifier; the item scores min_reward."""
