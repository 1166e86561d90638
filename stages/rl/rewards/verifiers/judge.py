"""Model-based judge for non-verifiable domains (the RLHF path), off by default.

RewardConfig.judge names a callable by import path, "pkg.mod:attr" (a class is instantiated once
with no arguments): `judge(answer, ground_truth, **info) -> float in [0, 1]`. `answer` is the whole
`<answer>` text; `info` carries what the dataset item provides (the question, a rubric, ...). The
domain "judge" is in RewardConfig.nonverifiable_domains, so its answers need no box.
"""

from __future__ import annotations

from typing import Any

from ..config import RewardConfig
from ..registry import load_verifier, register_verifier
from ..types import RewardConfigError, Verdict


@register_verifier("judge")
def verify_with_judge(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:
    if config.judge is None:
        raise RewardConfigError("domain 'judge' needs RewardConfig.judge = 'package.module:callable'")
    reward = float(load_verifier(config.judge)(answer, ground_truth, **info))
    return Verdict(reward, "judged")
