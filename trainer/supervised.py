"""What pretraining and SFT share: packed micro-batches from a stateful loader, the token-weighted
cross-entropy of trainer/loss.py, and the reader's position in the checkpoint."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
import torch.distributed as dist

from data_pipelines.batch import Batch

from .distributed import DistInfo, all_reduce_sum
from .loop import StepPlan, Update, UpdateResult
from .logging import log
from .loss import weighted_loss_sum
from .sequence_parallel import SequenceParallel, shard_batch


MASS_SKIP_MIN_READ = 64  # records read before a skipped share is reported


class StatefulLoader(Protocol):
    def __iter__(self) -> Iterator[Batch]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def stats(self) -> dict: ...


class PackedBatches:
    """A supervised stage for `Trainer.fit`: `grad_accum` packed micro-batches per rank and step;
    the objective is Σ label_weights · token loss / its global sum."""

    eval_at_start = False

    def __init__(self, name: str, loader: StatefulLoader, info: DistInfo, grad_accum: int, rows: int, seq_len: int,
                 evaluate: Callable[[], dict[str, Any]] | None = None, eval_every: int = 0,
                 sp: SequenceParallel | None = None):
        """`rows`: packed rows per micro-batch on a rank, each `seq_len` tokens. With `sp` active the
        ranks of a group read the same rows and each trains on its slice of them."""
        self.name, self.loader, self.info, self.grad_accum = name, loader, info, grad_accum
        self.evaluate, self.eval_every = evaluate, eval_every
        self.sp = sp if sp is not None and sp.active else None
        self.slots_per_step = rows * grad_accum * info.world_size * seq_len // (self.sp.size if self.sp else 1)
        self.progress = {"tokens": 0}
        self.batches: Iterator[Batch] | None = None  # opened at the first step, after any resume
        self.skips_reported: set[str | None] = set()  # None: the whole stream; else a source's name

    def describe(self) -> str:
        return f"{self.slots_per_step} token slots per step ({self.grad_accum} micro-batches per rank)"

    def plan(self, step: int) -> StepPlan:
        if self.batches is None:
            self.batches = iter(self.loader)
        micro = [next(self.batches).to(self.info.device) for _ in range(self.grad_accum)]
        # images and videos the step trains on (whole rows: the ranks of a sequence-parallel group
        # read the same rows, so each group counts them once), so a user sees the media arrive
        media = [sum(len(g) for b in micro if (g := getattr(b, grid)) is not None) / (self.sp.size if self.sp else 1)
                 for grid in ("image_grid_thw", "video_grid_thw")]
        if self.sp is not None:  # weights and tokens below then count each slice once
            micro = [shard_batch(b, self.sp) for b in micro]
        local = torch.tensor([float(sum(b.label_weights.sum() for b in micro)),
                              float(sum(b.num_tokens for b in micro)), *media], device=self.info.device)
        weight_total, tokens, images, videos = all_reduce_sum(local).tolist()
        self.progress["tokens"] += int(tokens)
        return StepPlan([Update(micro, weight_total)], int(tokens),
                        {"tokens": self.progress["tokens"], "packing_efficiency": tokens / self.slots_per_step,
                         "images/train": round(images), "videos/train": round(videos)})

    def loss(self, ds, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        weighted, _ = weighted_loss_sum(ds, batch)
        return weighted, weighted.new_zeros(0)

    def finish(self, record: dict[str, Any], results: list[UpdateResult]) -> None:
        pass

    def log_stats(self) -> dict[str, Any]:
        """Data counters summed over ranks (each rank reads its own streams)."""
        everyone: list = [None] * self.info.world_size
        dist.all_gather_object(everyone, self.loader.stats())
        if self.sp is not None:  # the ranks of a group read the same rows: count each group once
            everyone = everyone[:: self.sp.size]
        skipped: Counter = Counter()
        sources: dict[str, dict] = {}  # a mixture's per-source counters (data.sources)
        for stats in everyone:
            skipped.update(stats["skipped"])
            for name, src in stats.get("sources", {}).items():
                into = sources.setdefault(name, {"documents": 0, "tokens": 0, "skipped": Counter()})
                into["documents"] += src["documents"]
                into["tokens"] += src["tokens"]
                into["skipped"].update(src["skipped"])
        out = {"skipped": dict(skipped), "documents": sum(s.get("documents", 0) for s in everyone)}
        if sources:
            out["sources"] = {n: {**v, "skipped": dict(v["skipped"])} for n, v in sorted(sources.items())}
        # documents counts what reached the packer, dropped there or not; skipped holds those drops
        self._report_mass_skips(skipped, out["documents"] - sum(s.get("documents_dropped", 0) for s in everyone))
        for name, src in sorted(sources.items()):  # a small source can lose every record unnoticed in the total
            self._report_mass_skips(src["skipped"], src["documents"], f"source {name}")
        return out

    def _report_mass_skips(self, skipped: Counter, documents: int, source: str | None = None) -> None:
        """Once per run (and per mixture source), in the log: a tenth or more of the records read so
        far were skipped. The start-up check passes as soon as one record is usable; a wrong
        data.image_root can still drop every image record and train on the text-only rest
        (metrics.jsonl alone counted it)."""
        dropped = sum(skipped.values())
        read = dropped + documents
        if source in self.skips_reported or read < MASS_SKIP_MIN_READ or dropped < 0.1 * read:
            return
        self.skips_reported.add(source)
        if not self.info.is_main:  # the counts are every rank's; other ranks log warnings too
            return
        reasons = ", ".join(f"{r} {n}" for r, n in skipped.most_common())
        log.warning("%s: %d of the %d records read so far were skipped (%s); docs/data.md lists each reason's fix",
                    f"{self.name} {source}" if source else self.name, dropped, read, reasons)

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["data"])
