"""Streaming reader: shards of samples -> documents -> packed Batches, with an exact saved position.

A shard is a unit of a `SampleSource`: a webdataset tar (`TarShards`, pretraining) or a "virtual
shard" of N chat records from JSONL / HF `datasets` (`data_pipelines.records.RecordShards`, SFT).
Each (rank, dataloader worker) pair reads its own *stream*: the shards whose index in this epoch's
shuffled list is congruent to its stream id, or, with `resample`, shards drawn with replacement.
A stream's position is (epoch, shard slot, sample index) of the next raw sample plus the
positions (and token offsets, for split documents) of the documents still in the packing buffer.
Restoring re-reads from the oldest buffered document, re-processing only the buffered ones, so
the batches that follow are exactly those an uninterrupted run would have produced.

Bad samples (corrupt tar members, truncated or undecodable images, malformed JSON, extreme
aspect ratios) are counted by reason and skipped; a truncated shard ends early and is counted.
"""

from __future__ import annotations

import glob
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import braceexpand
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from trainer.preemption import data_worker_init

from .batch import Batch
from .document import Document
from .packing import Packer, PackingConfig, packed_batches
from .processor import BadSample

Position = tuple[int, int, int]  # (epoch, shard slot in this stream's epoch list, sample index)


@dataclass
class ReaderConfig:
    shards: str = ""  # a directory of .tar files, a glob, or a brace pattern ("a/shard-{000000..000009}.tar")
    seed: int = 0
    shuffle_shards: bool = True
    resample: bool = False  # draw shards with replacement (webdataset's `resampled`)
    num_workers: int = 0  # dataloader workers per rank; each is one stream
    batch_rows: int = 1  # packed rows per micro-batch
    max_epochs: int | None = None  # None: loop over the data until the trainer stops
    prefetch_factor: int = 2
    packing: PackingConfig = field(default_factory=PackingConfig)


def resolve_shards(spec: str) -> list[str]:
    """Shard paths from a directory, glob or brace pattern, sorted for a stable order."""
    if not spec:
        raise ValueError("data.shards is empty: give a directory, glob or brace pattern of .tar shards")
    if os.path.isdir(spec):
        paths = sorted(glob.glob(os.path.join(spec, "*.tar")))
    else:
        paths = sorted(p for pattern in braceexpand.braceexpand(spec) for p in glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no .tar shards found for {spec!r}")
    return paths


class _CountingHandler:
    """webdataset error handler: count and continue (a bad member or a truncated tar)."""

    def __init__(self, skipped: Counter):
        self.skipped = skipped

    def __call__(self, exn: Exception) -> bool:
        self.skipped["corrupt_tar"] += 1
        return True


class SampleSource(Protocol):
    """Numbered shards of raw samples; reading a shard twice yields the same samples."""

    def __len__(self) -> int: ...

    def name(self, shard: int) -> str: ...

    def samples(self, shard: int, on_error: Callable[[Exception], bool]) -> Iterable[Any]: ...


class TarShards:
    """webdataset tar shards; a sample is webdataset's dict (`__key__`, `json`, image members)."""

    def __init__(self, spec: str):
        self.paths = resolve_shards(spec)

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, shard: int) -> str:
        return self.paths[shard]

    def samples(self, shard: int, on_error: Callable[[Exception], bool]) -> Iterable[dict]:
        return wds.tariterators.tarfile_samples([{"url": self.paths[shard]}], handler=on_error)


class ShardStream(IterableDataset):
    def __init__(
        self,
        cfg: ReaderConfig,
        to_document: Callable[[Any], Document],
        pad_id: int,
        rank: int = 0,
        world_size: int = 1,
        source: SampleSource | None = None,
    ):
        """`source` defaults to the tar shards of `cfg.shards`."""
        self.cfg = cfg
        self.to_document = to_document
        self.pad_id = pad_id
        self.rank, self.world_size = rank, world_size
        self.source = source if source is not None else TarShards(cfg.shards)
        self.streams_per_rank = max(1, cfg.num_workers)
        total = self.streams_per_rank * world_size
        if not cfg.resample and len(self.source) < total:
            raise ValueError(
                f"{len(self.source)} shards cannot feed {total} streams (world size x workers): "
                "write more, smaller shards (records: lower records_per_shard), use fewer workers, "
                "or set resample=true"
            )
        self.resume_states: dict[int, dict] = {}
        self.rotation = 0  # physical worker i serves logical stream (i + rotation) % streams

    # -- order -------------------------------------------------------------------------------
    def _epoch_shards(self, stream: int, epoch: int) -> list[int]:
        global_stream = self.rank * self.streams_per_rank + stream
        total = self.streams_per_rank * self.world_size
        shards = range(len(self.source))
        if self.cfg.resample:
            rng = random.Random(f"{self.cfg.seed}/{global_stream}/{epoch}")
            return [rng.choice(shards) for _ in range(max(1, len(shards) // total))]
        order = list(shards)
        if self.cfg.shuffle_shards:
            random.Random(f"{self.cfg.seed}/{epoch}").shuffle(order)
        return order[global_stream::total]

    def _raw_samples(self, stream: int, start: Position, skipped: Counter) -> Iterator[tuple[Position, dict]]:
        epoch, slot, skip = start
        handler = _CountingHandler(skipped)
        while self.cfg.max_epochs is None or epoch < self.cfg.max_epochs:
            whole_epoch, seen = (slot, skip) == (0, 0), 0
            shards = self._epoch_shards(stream, epoch)
            while slot < len(shards):
                for index, sample in enumerate(self.source.samples(shards[slot], handler)):
                    seen += 1
                    if index >= skip:
                        yield (epoch, slot, index), sample
                slot, skip = slot + 1, 0
            if whole_epoch and seen == 0:  # looping on would spin forever without a sample
                names = [self.source.name(s) for s in shards]
                raise RuntimeError(f"stream {stream} read no sample in a whole epoch of {names}")
            epoch, slot = epoch + 1, 0

    # -- one stream ----------------------------------------------------------------------------
    def stream_batches(self, stream: int, state: dict | None = None) -> Iterator[tuple[Batch, dict]]:
        """Batches of one logical stream, each with the stream's state right after it."""
        packer = Packer(self.cfg.packing)
        skipped: Counter = Counter()
        next_pos: Position = (0, 0, 0)
        pending: list[tuple[Position, int]] = []
        if state:
            next_pos = tuple(state["next"])
            pending = [(tuple(p[:3]), p[3]) for p in state["pending"]]
            skipped.update(state["skipped"])
            for name in ("rows", "tokens", "documents", "splits"):
                setattr(packer.stats, name, state["packing"][name])
            packer.stats.dropped.update(state["packing"]["dropped"])
        raw = self._raw_samples(stream, next_pos, skipped)

        def documents() -> Iterator[Document]:
            nonlocal next_pos
            epoch, usable, whole_epoch = next_pos[0], 0, next_pos[1:] == (0, 0)
            for pos, sample in raw:
                if pos[0] != epoch:
                    if whole_epoch and usable == 0:  # every sample bad: fail instead of spinning
                        raise RuntimeError(f"stream {stream}: a whole epoch held no usable sample")
                    epoch, usable, whole_epoch = pos[0], 0, True
                next_pos = (pos[0], pos[1], pos[2] + 1)
                try:
                    doc = self.to_document(sample)
                except BadSample as exc:
                    skipped[exc.reason] += 1
                    continue
                doc.origin = pos
                usable += 1
                yield doc

        if pending:  # rebuild the packing buffer exactly as it was saved
            wanted = {p for p, _ in pending}
            found: dict[Position, Document] = {}
            replay = self._raw_samples(stream, min(wanted), Counter())  # skips were counted already
            for pos, sample in replay:
                if pos in wanted:
                    doc = self.to_document(sample)
                    doc.origin = pos
                    found[pos] = doc
                if len(found) == len(wanted):
                    break
            packer.buffer = [found[p].slice(offset) for p, offset in pending]

        for batch in packed_batches(documents(), packer, self.cfg.batch_rows, self.pad_id):
            yield batch, {
                "next": list(next_pos),
                "pending": [[*d.origin, d.offset] for d in packer.buffer],
                "skipped": dict(skipped),
                "packing": {
                    "rows": packer.stats.rows,
                    "tokens": packer.stats.tokens,
                    "documents": packer.stats.documents,
                    "splits": packer.stats.splits,
                    "dropped": dict(packer.stats.dropped),
                },
            }

    def __iter__(self) -> Iterator[tuple[Batch, int, dict]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        stream = (worker + self.rotation) % self.streams_per_rank
        for batch, state in self.stream_batches(stream, self.resume_states.get(stream)):
            yield batch, stream, state


def _identity(x):
    return x


class PackedLoader:
    """Iterates Batches from a ShardStream (in-process or in workers) and tracks its exact state."""

    def __init__(self, dataset: ShardStream):
        self.dataset = dataset
        self.num_streams = dataset.streams_per_rank
        self.states: dict[int, dict] = {}
        self.next_stream = 0

    def __iter__(self) -> Iterator[Batch]:
        workers = self.dataset.cfg.num_workers
        self.dataset.resume_states = dict(self.states)
        self.dataset.rotation = self.next_stream
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=workers,
            collate_fn=_identity,
            prefetch_factor=self.dataset.cfg.prefetch_factor if workers else None,
            persistent_workers=False,
            worker_init_fn=data_worker_init,  # a job's SIGTERM must not kill them mid-save
        )
        for batch, stream, state in loader:
            self.states[stream] = state
            self.next_stream = (stream + 1) % self.num_streams
            yield batch

    def state_dict(self) -> dict:
        return {
            "num_streams": self.num_streams,
            "next_stream": self.next_stream,
            "streams": {str(k): v for k, v in self.states.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_streams"] != self.num_streams:
            raise ValueError(
                f"reader state has {state['num_streams']} streams per rank but this run has "
                f"{self.num_streams} (data.num_workers): resume with the same number of workers"
            )
        self.states = {int(k): v for k, v in state["streams"].items()}
        self.next_stream = int(state["next_stream"])

    def stats(self) -> dict[str, Any]:
        """Counters summed over this rank's streams: skips by reason, packing totals."""
        skipped: Counter = Counter()
        packing: Counter = Counter()
        for state in self.states.values():
            skipped.update(state["skipped"])
            skipped.update(state["packing"]["dropped"])
            packing.update({k: state["packing"][k] for k in ("rows", "tokens", "documents", "splits")})
        return {"skipped": dict(skipped), **packing}

