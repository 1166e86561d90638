"""Trained groups -> optimizer updates of per-rank packed micro-steps.

After rollout every rank knows every kept response (they are all-gathered), so each computes the
same plan: the kept groups are dealt round-robin to `mini_batches` updates; within an update,
responses are dealt to ranks longest first, each to the rank with the fewest tokens so far
(sequence-length balancing), and a rank packs its own into rows of at most `micro_tokens`
(first-fit decreasing: few micro-steps). Each micro-step is one packed row; its tokens carry their
response's advantage and the engine's log-probs. Ranks with fewer rows get empty ones (ZeRO-3
needs every rank to run the same forwards and backwards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from data_pipelines.batch import Batch, collate_rows
from data_pipelines.document import Document
from data_pipelines.prompts import EncodedPrompt, rollout_document
from trainer.distributed import DistInfo
from trainer.loop import Update
from trainer.loss import batch_losses

from .advantages import group_advantages
from .config import RLConfig
from .groups import GroupResult
from .loss import sample_normaliser, token_weight
from .rollout.base import Completion


@dataclass
class TrainSample:
    slot: int  # its prompt's place in the step's draw
    index: int  # which response of the group
    advantage: float
    prompt_len: int
    completion: Completion

    def __len__(self) -> int:
        return self.prompt_len + len(self.completion)

    @property
    def trained_tokens(self) -> int:
        return sum(self.completion.train_mask)


@dataclass
class PolicyMicroBatch:
    batch: Batch
    advantages: torch.Tensor  # (B, L) aligned with batch.labels
    engine_logprobs: torch.Tensor  # (B, L), NaN where no trained target
    old_logprobs: torch.Tensor | None = None  # π_old; None: the micro-step's own forward (first update)

    def to(self, device: torch.device) -> "PolicyMicroBatch":
        return PolicyMicroBatch(self.batch.to(device), self.advantages.to(device), self.engine_logprobs.to(device),
                                None if self.old_logprobs is None else self.old_logprobs.to(device))


def balance_ranks(lengths: list[int], world_size: int) -> list[int]:
    """The rank of each item: longest first, to the least-loaded rank (ties: lowest rank)."""
    load = [0] * world_size
    owner = [0] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += lengths[i]
    return owner


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of item indices, each summing to at most `capacity`."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[i] > capacity:
            raise ValueError(f"a response of {lengths[i]} tokens does not fit micro_tokens={capacity}")
        row = next((r for r in range(len(rows)) if room[r] >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def sample_document(sample: TrainSample, prompt: EncodedPrompt, averaging: str) -> Document:
    c = sample.completion
    key = f"{prompt.record.id}#{sample.index}"
    return rollout_document(prompt, c.token_ids, c.train_mask, key, token_weight(sample.trained_tokens, averaging))


def micro_batch(samples: list[TrainSample], prompts: dict[int, EncodedPrompt], averaging: str,
                pad_id: int, spatial_merge_size: int = 2) -> PolicyMicroBatch:
    """One packed row of samples (`prompts` by slot); padding is rounded up to a multiple of 8 tokens."""
    docs = [sample_document(s, prompts[s.slot], averaging) for s in samples]
    length = sum(len(d) for d in docs)
    batch = collate_rows([docs], -(-length // 8) * 8, pad_id, spatial_merge_size)
    advantages = torch.zeros(batch.labels.shape, dtype=torch.float32)
    engine = torch.full(batch.labels.shape, float("nan"), dtype=torch.float32)
    offset = 0
    for s, doc in zip(samples, docs):
        # Response token j sits at doc position prompt_len + j; its label slot is one before.
        start = offset + s.prompt_len - 1
        n = len(s.completion)
        trained = torch.tensor(s.completion.train_mask)
        advantages[0, start : start + n] = torch.where(trained, s.advantage, 0.0)
        logprobs = torch.tensor(s.completion.logprobs, dtype=torch.float32)
        engine[0, start : start + n] = torch.where(trained, logprobs, float("nan"))
        offset += len(doc)
    return PolicyMicroBatch(batch, advantages, engine)


def dummy_micro_batch(pad_id: int) -> PolicyMicroBatch:
    """A row with no targets, for ranks with fewer micro-steps than others (ZeRO-3 needs every rank
    to run the same forwards and backwards)."""
    doc = Document("dummy", torch.full((8,), pad_id, dtype=torch.long), torch.zeros(8, dtype=torch.long),
                   torch.zeros(8, dtype=torch.bool))
    batch = collate_rows([[doc]], 8, pad_id)
    return PolicyMicroBatch(batch, torch.zeros(1, 8), torch.full((1, 8), float("nan")))


def rank_rows(samples: list[TrainSample], info: DistInfo, micro_tokens: int) -> list[list[TrainSample]]:
    """This rank's micro-steps: samples balanced over ranks by length, packed into rows."""
    owner = balance_ranks([len(s) for s in samples], info.world_size)
    mine = [s for s, rank in zip(samples, owner) if rank == info.rank]
    rows = first_fit_decreasing([len(s) for s in mine], micro_tokens)
    return [[mine[i] for i in sorted(row)] for row in rows]


def plan_updates(groups: list[GroupResult], cfg: RLConfig, info: DistInfo, prompt_at: Callable[[int], EncodedPrompt],
                 pad_id: int) -> list[Update]:
    """The step's `mini_batches` updates over the kept groups, each with its global normaliser
    (responses or trained tokens, zero-advantage ones included)."""
    pol = cfg.policy
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float64)
    advantages = group_advantages(rewards, pol.advantage_scale, pol.advantage_eps).tolist()
    updates = []
    for first in range(cfg.batch.mini_batches):
        chunk = list(zip(groups, advantages))[first :: cfg.batch.mini_batches]
        samples = [TrainSample(g.slot, j, adv[j], g.prompt_len, c) for g, adv in chunk for j, c in enumerate(g.completions)]
        normaliser = sample_normaliser(len(samples), sum(s.trained_tokens for s in samples), pol.averaging)
        # Zero-advantage responses add nothing to the gradient (no KL, no entropy): they count in
        # the normaliser, their compute is skipped.
        rows = rank_rows([s for s in samples if s.advantage != 0.0], info, cfg.batch.micro_tokens)
        most = torch.tensor([len(rows)], device=info.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        prompts = {s.slot: prompt_at(s.slot) for row in rows for s in row}
        batches = [micro_batch(row, prompts, pol.averaging, pad_id, cfg.processor.merge_size) for row in rows]
        batches += [dummy_micro_batch(pad_id) for _ in range(int(most.item()) - len(rows))]
        updates.append(Update([b.to(info.device) for b in batches], normaliser))
    return updates


@torch.no_grad()
def fill_old_logprobs(ds, micro: list[PolicyMicroBatch]) -> None:
    """π_old of micro-steps trained after the step's first optimizer update: the trainer's model
    before any update of the step. (The first update's micro-steps need no extra forward: their
    own forward runs before any update, so π_old is its detached output.)"""
    for b in micro:
        b.old_logprobs = -batch_losses(ds, b.batch).detach()
