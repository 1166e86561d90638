"""A prompt set as every prompt-reading stage takes it (RL, grading, eval): its usable records and
skip counts, stopped at load, before any engine or policy starts, when nothing in it can be graded."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from data_pipelines.prompt_columns import PromptLayout, options_not_shown
from data_pipelines.prompts import PromptRecord, load_prompt_records, require_records
from trainer.logging import log

from .rewards import RewardConfig, check_domains


def load_gradable_prompts(path: str | Path, layout: PromptLayout, rewards: RewardConfig,
                          limit: int | None = None) -> tuple[list[PromptRecord], Counter]:
    """The first `limit` usable records of a set (all when None) and the skip counts; a set with no
    usable record, or a domain with no verifier, stops here (not at its first score)."""
    records, skipped = load_prompt_records(path, layout)
    require_records(path, records, skipped)
    records = records[:limit]
    check_domains((r.domain for r in records), rewards)
    if unseen := sum(map(letter_of_unseen_options, records)):
        log.warning("%s: %d of %d prompts are graded against an option letter their question never shows "
                    "(options in columns, not listed); data.options_in_prompt=true lists them under the question",
                    path, unseen, len(records))
    return records, skipped


def letter_of_unseen_options(record: PromptRecord) -> bool:
    """The gold is an option's letter, and the prompt does not show the options: the model is
    graded on letters it never saw (MMBench read without data.options_in_prompt=true)."""
    answer, options = record.answer, record.info.get("options")
    if not isinstance(answer, str) or options is None:
        return False
    return answer.strip().strip("()").upper() in options_not_shown(record.user_text(), options)
