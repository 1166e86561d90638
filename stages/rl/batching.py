"""Trained responses -> per-rank packed micro-steps.

After rollout every rank knows every kept response (they are all-gathered), so each computes the
same plan without further communication: responses are dealt to ranks longest first, each to the
rank with the fewest tokens so far (sequence-length balancing), and a rank packs its own into
rows of at most `micro_tokens` (first-fit decreasing: few micro-steps). Each micro-step is one
packed row; its tokens carry their response's advantage and the engine's log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from data_pipelines.batch import Batch, collate_rows
from data_pipelines.document import Document
from data_pipelines.prompts import EncodedPrompt, rollout_document

from .loss import token_weight
from .rollout.base import Completion


@dataclass
class TrainSample:
    group: int  # position of its prompt in the step's prompt list
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
    old_logprobs: torch.Tensor | None = None  # filled by the trainer before the update

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
    """One packed row of samples; padding is rounded up to a multiple of 8 tokens."""
    docs = [sample_document(s, prompts[s.group], averaging) for s in samples]
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
