"""Reward system for RL: format gate, per-domain verifiers, penalties, batch scoring (docs/rewards.md).

    from stages.rl.rewards import score
    score("math", "<think>…</think><answer><|begin_of_box|>\\frac{1}{2}<|end_of_box|></answer>", "0.5")
"""

from . import verifiers  # noqa: F401 - registers the built-in verifiers
from .config import RewardConfig
from .pool import RewardItem, RewardPool, score_batch
from .registry import (check_domains, get_verifier, load_verifier, register_verifier, registered_names,
                       resolve_verifier)
from .scoring import score, score_with
from .types import GroundTruthError, RewardConfigError, RewardResult, UnknownVerifierError, Verdict

__all__ = [
    "check_domains", "GroundTruthError", "RewardConfig", "RewardConfigError", "RewardItem", "RewardPool", "RewardResult",
    "UnknownVerifierError", "Verdict", "get_verifier", "load_verifier", "register_verifier", "registered_names",
    "resolve_verifier", "score", "score_batch", "score_with",
]
