"""RewardConfig: every threshold of the reward system, filled by a recipe (see docs/rewards.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from data_pipelines.visual_tasks import DOMAIN_VERIFIERS as VISUAL_TASK_VERIFIERS

START_METHODS = ("forkserver", "spawn")
LANGUAGE_SCOPES = ("response", "answer")


@dataclass
class RewardConfig:
    # Gate
    min_reward: float = 0.0  # format failures, timeouts, crashes, unusable ground truth
    box_reward_nonverifiable: float = 0.1  # a box in a domain graded without one (judge)
    nonverifiable_domains: list[str] = field(default_factory=lambda: ["judge"])
    # domain -> name or "pkg.mod:attr"; ponder's own visual tasks are graded out of the box (a recipe's
    # entries are added to these, and may override them)
    domain_verifiers: dict[str, str] = field(default_factory=lambda: dict(VISUAL_TASK_VERIFIERS))
    # The verifier of a domain that is neither mapped nor a registered name; None: such a domain
    # stops the run before any rollout, naming the domains (registry.check_domains).
    default_verifier: Optional[str] = None
    max_response_chars: int = 200_000  # longer responses are rejected before any parsing
    max_answer_chars: int = 20_000  # longer boxed answers are rejected
    # Time and isolation
    time_limit_s: float = 5.0  # per item; the verifier is interrupted after this
    kill_grace_s: float = 1.0  # batch workers still busy after time_limit_s + this are killed
    num_workers: Optional[int] = None  # pool size, at most this rank's share of the CPUs (None: all of it); 0: inline
    start_method: str = "forkserver"
    worker_memory_mb: Optional[int] = 4096  # address space a worker may add after start; None: no cap
    # Math
    math_max_answer_chars: int = 1_000
    math_float_rounding: int = 6  # decimals compared when either side is a float
    math_numeric_precision: int = 15
    # Chart
    chart_rel_tol: float = 0.02
    chart_year_min: int = 1000  # integer golds in [min, max] are years: compared exactly
    chart_year_max: int = 2100
    # Boxes (grounding, GUI), per-mille coordinates
    iou_threshold: float = 0.5
    max_boxes: int = 100
    gui_case_sensitive_fields: list[str] = field(default_factory=lambda: ["text"])
    gui_ignored_fields: list[str] = field(default_factory=list)
    # OCR
    ocr_case_sensitive: bool = True
    # Penalties: the reward is multiplied by (1 - penalty) when one fires
    repetition_block_tokens: int = 50
    repetition_min_occurrences: int = 4  # a block of that many tokens seen this often is a loop
    repetition_penalty: float = 0.5
    mixed_language_threshold: float = 0.1  # share of letters outside the dominant script
    mixed_language_min_chars: int = 20  # minority scripts with fewer letters are ignored
    mixed_language_penalty: float = 0.5
    mixed_language_scope: str = "response"  # "response": think + answer; "answer" only; box excluded
    # Model-based judge for non-verifiable domains: "pkg.mod:attr" of judge(answer, ground_truth, **info)
    judge: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("min_reward", "box_reward_nonverifiable", "repetition_penalty", "mixed_language_penalty",
                     "mixed_language_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"rewards.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.time_limit_s <= 0 or self.kill_grace_s <= 0:
            raise ValueError("rewards: time_limit_s and kill_grace_s must be > 0")
        if min(self.max_response_chars, self.max_answer_chars, self.math_max_answer_chars, self.max_boxes) < 1:
            raise ValueError("rewards: the max_* limits must be >= 1")
        if self.start_method not in START_METHODS:
            raise ValueError(f"rewards.start_method must be one of {START_METHODS}, got {self.start_method!r}")
        if self.mixed_language_scope not in LANGUAGE_SCOPES:
            raise ValueError(f"rewards.mixed_language_scope must be one of {LANGUAGE_SCOPES}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError("rewards.num_workers must be >= 0")
        if not 0.0 < self.iou_threshold < 1.0 or self.chart_rel_tol < 0:
            raise ValueError("rewards: need 0 < iou_threshold < 1 and chart_rel_tol >= 0")
        if self.repetition_block_tokens < 2 or self.repetition_min_occurrences < 2:
            raise ValueError("rewards: repetition_block_tokens and repetition_min_occurrences must be >= 2")
