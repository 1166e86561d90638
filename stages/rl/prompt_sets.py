"""A prompt set as every prompt-reading stage takes it (RL, grading, eval): its usable records and
skip counts, stopped at load, before any engine or policy starts, when nothing in it can be graded."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from data_pipelines.prompt_columns import PromptLayout
from data_pipelines.prompts import PromptRecord, load_prompt_records, require_records

from .rewards import RewardConfig, check_domains


def load_gradable_prompts(path: str | Path, layout: PromptLayout, rewards: RewardConfig,
                          limit: int | None = None) -> tuple[list[PromptRecord], Counter]:
    """The first `limit` usable records of a set (all when None) and the skip counts; a set with no
    usable record, or a domain with no verifier, stops here (not at its first score)."""
    records, skipped = load_prompt_records(path, layout)
    require_records(path, records, skipped)
    records = records[:limit]
    check_domains((r.domain for r in records), rewards)
    return records, skipped
