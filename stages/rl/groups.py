"""Rollout groups: this rank's share of a step's prompts rolled out and scored, then all-gathered.

Index spaces of an RL step, kept apart by name:
  `drawn[slot]`  the dataset index of the prompt the curriculum put at `slot` of this step's draw;
  `slot`         a prompt's place in the draw (rank r rolls out slots r, r + world, ...);
  `kept`         positions in the gathered, slot-ordered list of groups (what the sampler selects).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from data_pipelines.prompts import EncodedPrompt, PromptRecord
from data_pipelines.tokenizer import SpecialTokens
from stages.rl.rewards import RewardItem

from .rollout.base import Completion, RolloutConfig, RolloutEngine, completion_text, rollout
from .scorer import Scorer


@dataclass
class GroupResult:
    """One rolled-out prompt, as all-gathered: enough to train on it from any rank."""

    slot: int
    prompt_len: int
    completions: list[Completion]
    rewards: list[float]
    format_ok: list[bool]
    penalties: list[tuple[str, ...]]
    reasons: list[str]  # each reward's reason ("correct", "format:no_box", "bad_ground_truth:...")


class GroupRoller:
    """Rolls out and scores prompts on this rank: G completions per prompt, one reward each."""

    def __init__(self, engine: RolloutEngine, scorer: Scorer, cfg: RolloutConfig, tokenizer: PreTrainedTokenizerBase,
                 special: SpecialTokens):
        self.engine, self.scorer, self.cfg = engine, scorer, cfg
        self.tokenizer, self.special = tokenizer, special

    def __call__(self, prompts: dict[int, EncodedPrompt], records: list[PromptRecord], seeds: list[int],
                 n: int, temperature: float) -> tuple[list[GroupResult], float, float]:
        """(groups in slot order, rollout seconds, reward seconds) for the encoded prompts by slot;
        `records` and `seeds` are the whole draw's."""
        slots = list(prompts)
        started = time.perf_counter()
        groups = rollout(self.engine, [prompts[s] for s in slots], self.cfg, self.special, [seeds[s] for s in slots],
                         n=n, temperature=temperature)
        rollout_s = time.perf_counter() - started
        started = time.perf_counter()
        items = [RewardItem(records[s].domain, completion_text(c.token_ids, self.tokenizer, self.special),
                            records[s].answer, records[s].info)
                 for s, group in zip(slots, groups) for c in group]
        scores = iter(self.scorer(items)) if items else iter(())
        results = []
        for slot, group in zip(slots, groups):
            got = [next(scores) for _ in group]
            results.append(GroupResult(slot, len(prompts[slot]), group, [r.reward for r in got],
                                       [r.format_ok for r in got], [r.penalties for r in got], [r.reason for r in got]))
        return results, rollout_s, time.perf_counter() - started

    def close(self) -> None:
        self.scorer.close()
        self.engine.close()


def gather_groups(results: list[GroupResult], failed: list[tuple[int, str]], world_size: int
                  ) -> tuple[list[GroupResult], list[tuple[int, str]]]:
    """Every rank's groups (slot order) and failed (slot, reason) pairs, on every rank."""
    everyone: list = [None] * world_size
    dist.all_gather_object(everyone, (results, failed))
    all_results = sorted((r for rs, _ in everyone for r in rs), key=lambda r: r.slot)
    all_failed = sorted(f for _, fs in everyone for f in fs)
    return all_results, all_failed
