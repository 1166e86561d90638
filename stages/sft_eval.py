"""SFT validation: held-out loss and the format compliance of greedy generations.

Under ZeRO-3 every rank must run the same modules the same number of times (parameters are
gathered with collectives as modules run). So the held-out batches and prompts are dealt to ranks
in equal numbers (short ranks repeat one with zero weight / an ignored answer), every prefill runs
the vision tower (`UniformVisionForward.embed`), and a rank whose answer has ended keeps stepping
until every rank's has (`greedy_decode(..., synced=True)`, as HF's `synced_gpus`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Collection

import torch
import torch.distributed as dist

from data_pipelines.answer_format import format_violation
from data_pipelines.batch import IGNORE_INDEX, Batch, collate_rows
from data_pipelines.chat import ChatRenderer
from data_pipelines.document import Document
from data_pipelines.packing import Packer, PackingConfig
from data_pipelines.processor import BadSample
from data_pipelines.records import RecordShards
from data_pipelines.tokenizer import VISION_TOKEN_FIELDS
from trainer.distributed import DistInfo, all_reduce_sum
from trainer.forward import UniformVisionForward
from trainer.logging import log
from trainer.loss import weighted_loss_sum


@dataclass
class EvalConfig:
    every: int = 0  # eval_every: validate after every N optimizer steps and the last; 0 turns it off
    max_records: int = 256  # held-out records (the first ones of data.eval) in the loss
    generations: int = 32  # of those, how many prompts are answered greedily for format compliance
    generation_batch: int = 16  # prompts decoded together on a rank
    max_new_tokens: int = 1024  # an answer not finished by then fails the format check

    def __post_init__(self) -> None:
        if self.every < 0 or self.max_records < 1 or self.generations < 0 or self.max_new_tokens < 1 \
                or self.generation_batch < 1:
            raise ValueError("eval: need every >= 0, max_records >= 1, generations >= 0, max_new_tokens >= 1, "
                             "generation_batch >= 1")


def left_padded(prompts: list[Document], pad_id: int) -> tuple[Batch, torch.Tensor]:
    """Prompts as one left-padded Batch (so every row's next token comes at the same column) and
    its attention mask (0 on padding)."""
    rows, length = len(prompts), max(len(d) for d in prompts)
    ids = torch.full((rows, length), pad_id, dtype=torch.long)
    types = torch.zeros((rows, length), dtype=torch.long)
    mask = torch.zeros((rows, length), dtype=torch.long)
    positions = torch.zeros((4, rows, length), dtype=torch.long)
    for r, doc in enumerate(prompts):
        cols = slice(length - len(doc), length)
        ids[r, cols], types[r, cols], mask[r, cols] = doc.input_ids, doc.mm_token_type_ids, 1
        positions[0, r, cols] = torch.arange(len(doc))
        positions[1:, r, cols] = doc.positions()
    images = [v for d in prompts for v in d.images]
    videos = [v for d in prompts for v in d.videos]
    batch = Batch(
        input_ids=ids, labels=torch.full_like(ids, IGNORE_INDEX), position_ids=positions,
        mm_token_type_ids=types, doc_ids=torch.where(mask.bool(), torch.arange(rows)[:, None], -1),
        label_weights=torch.zeros((rows, length)),
        pixel_values=torch.cat([v.pixel_values for v in images]) if images else None,
        image_grid_thw=torch.stack([v.grid_thw for v in images]) if images else None,
        pixel_values_videos=torch.cat([v.pixel_values for v in videos]) if videos else None,
        video_grid_thw=torch.stack([v.grid_thw for v in videos]) if videos else None,
        doc_keys=[d.key for d in prompts],
    )
    return batch, mask


@torch.no_grad()
def greedy_decode(wrapper: UniformVisionForward, prompts: list[Document], max_new_tokens: int,
                  stop_ids: set[int], pad_id: int, device: torch.device | str = "cpu",
                  synced: bool = False, banned_ids: Collection[int] | None = None) -> list[tuple[list[int], bool]]:
    """Greedy continuations of prompts, batched with a KV cache: per prompt (new tokens, the last
    a stop id if it stopped; whether it stopped). `synced`: step until every rank is done.
    `banned_ids` are never picked; default: the model's vision tokens (`SpecialTokens.vision_ids`,
    read from the Glm4v config that was built from them)."""
    model = wrapper.model
    if banned_ids is None:
        banned_ids = [getattr(model.config, f"{name}_token_id") for name in VISION_TOKEN_FIELDS]
    banned = torch.tensor(sorted(banned_ids), dtype=torch.long, device=device)
    batch, mask = left_padded(prompts, pad_id)
    batch, mask = batch.to(device), mask.to(device)
    out = model(inputs_embeds=wrapper.embed(batch), attention_mask=mask, position_ids=batch.position_ids[1:],
                use_cache=True, logits_to_keep=1)
    # Text after a prompt continues at its largest position on all three M-RoPE axes.
    next_position = batch.position_ids[1:].amax(dim=(0, 2)) + 1  # (rows,)
    tokens: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    for i in range(max_new_tokens):
        chosen = out.logits[:, -1].index_fill(-1, banned, -math.inf).argmax(-1)
        for r, token in enumerate(chosen.tolist()):
            if not stopped[r]:
                tokens[r].append(token)
                stopped[r] = token in stop_ids
        finished = all(stopped) or i == max_new_tokens - 1
        if synced:
            flag = torch.tensor([int(finished)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finished = bool(flag.item())
        if finished:
            break
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
        position = (next_position + i).view(1, -1, 1).expand(3, -1, 1)
        out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=position,
                    past_key_values=out.past_key_values, use_cache=True)
    return list(zip(tokens, stopped))


def _deal(items: list, rank: int, world: int) -> list[tuple[Any, bool]]:
    """This rank's share of `items`, padded so every rank gets as many: (item, counts)."""
    if not items:  # eval.generations=0: no prompts to deal (items[0] below would not exist)
        return []
    per_rank = math.ceil(len(items) / world)
    mine = [(item, True) for item in items[rank::world]]
    return mine + [(items[0], False)] * (per_rank - len(mine))


class SFTEvaluator:
    """A stage's `evaluate` for `Trainer.fit`; every rank calls it, rank 0's metrics are logged."""

    def __init__(self, cfg: EvalConfig, source: RecordShards, packing: PackingConfig, batch_rows: int,
                 chat: ChatRenderer, ds, info: DistInfo):
        """`source`: the held-out records (unshuffled, the first `cfg.max_records`)."""
        self.cfg, self.chat, self.ds, self.info = cfg, chat, ds, info
        self.pad_id = chat.special.eos
        generation = getattr(ds.module.model, "generation_config", None)  # the HF model inside the forward
        self.stop_ids = set(chat.special.stop_ids(getattr(generation, "eos_token_id", None)))
        packer = Packer(PackingConfig(packing.seq_len, packing.buffer_docs, split_documents=False))
        self.skipped: Counter = Counter()
        prompts: list[Document] = []
        for sample in source.records():
            try:
                doc = chat(sample)
                if len(doc) > packing.seq_len:
                    self.skipped["longer_than_seq_len"] += 1
                    continue
                packer.add(doc)
                if len(prompts) < cfg.generations:
                    prompts.append(chat.prompt(sample))
            except BadSample as exc:
                self.skipped[exc.reason] += 1
        rows = []
        while row := packer.pop_row():
            rows.append(row)
        if not rows:
            raise ValueError(f"the held-out set has no usable record (skipped: {dict(self.skipped)})")
        batches = [collate_rows(rows[i:i + batch_rows], packing.seq_len, self.pad_id)
                   for i in range(0, len(rows), batch_rows)]
        self.batches = _deal(batches, info.rank, info.world_size)
        self.prompts = _deal(prompts, info.rank, info.world_size)
        log.info("eval set: %d records in %d batches, %d prompts; skipped %s",
                 sum(len(r) for r in rows), len(batches), len(prompts), dict(self.skipped) or "none")

    def __call__(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.ds.eval()
        try:
            metrics = {"eval_loss": self._loss(), **self._generations()}
        finally:
            self.ds.train()
        metrics["eval_time_s"] = time.perf_counter() - started
        return metrics

    @torch.no_grad()
    def _loss(self) -> float:
        device = self.info.device
        totals = torch.zeros(2, device=device)  # sum of weighted losses, sum of weights
        for batch, counts in self.batches:
            batch = batch.to(device)
            weighted, _ = weighted_loss_sum(self.ds, batch)
            scale = 1.0 if counts else 0.0  # a padding batch keeps ranks in step, adds nothing
            totals += torch.stack([weighted * scale, batch.label_weights.sum() * scale])
        loss_sum, weight = all_reduce_sum(totals).tolist()
        return loss_sum / max(weight, 1e-12)

    def _generations(self) -> dict[str, Any]:
        if not self.prompts:
            return {}
        passed, answered, truncated, lengths = 0, 0, 0, 0
        failures: Counter = Counter()
        example = None
        size = self.cfg.generation_batch
        for start in range(0, len(self.prompts), size):  # the same number of chunks on every rank
            chunk = self.prompts[start:start + size]
            results = greedy_decode(self.ds.module, [doc for doc, _ in chunk], self.cfg.max_new_tokens,
                                    self.stop_ids, self.pad_id, self.info.device, self.info.world_size > 1,
                                    self.chat.special.vision_ids)
            for (tokens, stopped), (_, counts) in zip(results, chunk):
                if not counts:
                    continue
                ends_turn = stopped and tokens[-1] in self.chat.special.turn_ends  # a declared `</answer>` stays
                text = self.chat.tokenizer.decode(tokens[:-1] if ends_turn else tokens, skip_special_tokens=False)
                problem = format_violation(text, self.chat.cfg.require_box) if stopped else "unfinished"
                answered += 1
                passed += problem is None
                truncated += not stopped
                lengths += len(tokens)
                failures.update([problem] if problem else [])
                example = text if example is None else example
        counts = all_reduce_sum(torch.tensor([passed, answered, truncated, lengths], dtype=torch.float64,
                                             device=self.info.device)).tolist()
        gathered: list = [None] * self.info.world_size
        dist.all_gather_object(gathered, dict(failures))
        total_failures: Counter = Counter()
        for part in gathered:
            total_failures.update(part)
        if self.info.is_main and example is not None:
            log.info("eval sample response: %r", example[:300])
        n = max(counts[1], 1)
        return {
            "eval_format_compliance": counts[0] / n,
            "eval_generations": int(counts[1]),
            "eval_truncated": counts[2] / n,
            "eval_response_tokens": counts[3] / n,
            "eval_format_failures": dict(total_failures),
        }
