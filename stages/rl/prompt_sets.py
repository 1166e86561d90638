"""A prompt set as every prompt-reading stage takes it (RL, grading, eval): its usable records and
skip counts, stopped at load, before any engine or policy starts, when nothing in it can be graded."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

from data_pipelines.answer_format import final_answer, tagged_answer
from data_pipelines.prompt_columns import PromptLayout, options_not_shown
from data_pipelines.prompts import PromptRecord, load_prompt_records, require_records
from trainer.logging import log

from .rewards import RewardConfig, check_domains, get_verifier, registered_names, resolve_verifier, score_with

# Golds scored against themselves at load, the first of each domain (a misread layout shows in a
# domain's first rows; a set sorted by source may start its OCR rows deep into the file)
GOLD_CHECK_RECORDS = 32
# Verifiers that grade one final answer: a worked solution given as their gold is read for it
# (GSM8K's "#### 72", MATH's last box, R1-V's "<answer> 3 </answer>"); OCR, VQA, chart and grounding
# golds are taken as they are
FINAL_ANSWER_VERIFIERS = ("math", "counting", "multiple_choice")


def load_gradable_prompts(path: str | Path, layout: PromptLayout, rewards: RewardConfig,
                          limit: int | None = None) -> tuple[list[PromptRecord], Counter]:
    """The first `limit` usable records of a set (all when None) and the skip counts; a set with no
    usable record, or a domain with no verifier, stops here (not at its first score)."""
    records, skipped = load_prompt_records(path, layout)
    records = with_final_answers(records, rewards, skipped)
    require_records(path, records, skipped)
    records = records[:limit]
    check_domains((r.domain for r in records), rewards)
    checked = first_of_each_domain(records, GOLD_CHECK_RECORDS)
    if problems := ungradable_golds(checked, rewards):
        log.warning("%s: %d of %d golds checked (the first %d of each domain) cannot be graded by their verifier, "
                    "even answered by themselves (e.g. %s); their prompts will score 0 whatever the model says. "
                    "See docs/data.md for the set's layout (data.columns.answer, data.box_units, ...)", path,
                    len(problems), len(checked), GOLD_CHECK_RECORDS, problems[0][:300])
    if unseen := sum(map(letter_of_unseen_options, records)):
        log.warning("%s: %d of %d prompts are graded against an option letter their question never shows "
                    "(options in columns, not listed); data.options_in_prompt=true lists them under the question",
                    path, unseen, len(records))
    return records, skipped


def _verifier(domain: str, rewards: RewardConfig):
    """The domain's verifier, None where it has none (check_domains says so) or it does not load."""
    try:
        return resolve_verifier(domain, rewards)
    except Exception:  # noqa: BLE001 - UnknownVerifierError / RewardConfigError: reported by check_domains
        return None


def with_final_answers(records: list[PromptRecord], rewards: RewardConfig, skipped: Counter) -> list[PromptRecord]:
    """The records, a text gold graded by a final-answer verifier replaced by the final answer it
    holds (answer_format.final_answer), any other text gold wholly in `<answer>` tags by what they
    hold (Video-R1's OCR and free-form golds); one whose answer is then empty is a `missing_answer` skip."""
    takers = {get_verifier(name) for name in FINAL_ANSWER_VERIFIERS}
    out = []
    for record in records:
        if isinstance(record.answer, str):
            final = (final_answer if _verifier(record.domain, rewards) in takers else tagged_answer)(record.answer)
            if final == "":
                skipped["missing_answer"] += 1
                continue
            if final is not None:
                record = dataclasses.replace(record, answer=final)
        out.append(record)
    return out


def first_of_each_domain(records: list[PromptRecord], n: int) -> list[PromptRecord]:
    """The first `n` records of each domain, in file order."""
    seen: Counter = Counter()
    out = []
    for record in records:
        if seen[record.domain] < n:
            seen[record.domain] += 1
            out.append(record)
    return out


def ungradable_golds(records: list[PromptRecord], rewards: RewardConfig) -> list[str]:
    """"id: reason" of the records whose gold their verifier cannot read (`bad_ground_truth`) when the
    gold itself is the boxed answer (a list as JSON): a misread layout (a wrapper around the gold, pixel
    boxes read as 0-999), found before any rollout. Only the built-in verifiers but the judge are
    called (no model or sandbox at load); golds that are dicts (accepted answers) and pixel boxes
    (scaled once their image is read) are not tried."""
    builtin = {get_verifier(name) for name in registered_names()} - {get_verifier("judge")}
    out = []
    for record in records:
        gold, verifier = record.answer, _verifier(record.domain, rewards)
        if (verifier not in builtin or isinstance(gold, bool) or not isinstance(gold, (str, int, float, list))
                or record.domain in rewards.nonverifiable_domains or record.info.get("box_units") == "pixels"):
            continue
        try:
            written = json.dumps(gold) if isinstance(gold, list) else gold  # boxes as a response writes them
            response = f"<think>.</think><answer><|begin_of_box|>{written}<|end_of_box|></answer>"
            got = score_with(verifier, record.domain, response, gold, rewards, record.info)
        except Exception:  # noqa: BLE001 - a check at load never stops a load that worked without it
            continue
        if got.reason.startswith("bad_ground_truth"):
            out.append(f"{record.id}: {got.reason}")
    return out


def letter_of_unseen_options(record: PromptRecord) -> bool:
    """The gold is an option's letter, and the prompt does not show the options: the model is
    graded on letters it never saw (MMBench read without data.options_in_prompt=true)."""
    answer, options = record.answer, record.info.get("options")
    if not isinstance(answer, str) or options is None:
        return False
    return answer.strip().strip("()").upper() in options_not_shown(record.user_text(), options)
