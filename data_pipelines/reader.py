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
import logging
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


REMOTE_PREFIXES = ("pipe:", "http://", "https://")  # opened by webdataset's gopen (curl, a shell pipe)


def resolve_shards(spec: str) -> list[str]:
    """Shard paths or URLs from a directory, glob, brace pattern or webdataset URL, in a stable order.

    Local: every brace expansion without glob characters must exist, and every glob must match,
    else FileNotFoundError names what is missing. `pipe:` URLs are kept as written (their command
    runs when the shard is read); `http(s)://` URLs are kept in order, and the first and last are
    probed with a HEAD request, so a wrong host or brace range fails at start."""
    if not spec:
        raise ValueError("data.shards is empty: give a directory, glob or brace pattern of .tar shards")
    if spec.startswith(REMOTE_PREFIXES):
        urls = list(braceexpand.braceexpand(spec))
        if spec.startswith(("http://", "https://")):
            for url in dict.fromkeys([urls[0], urls[-1]]):
                _probe_url(url)
        return urls
    if os.path.isdir(spec):
        paths = sorted(glob.glob(os.path.join(spec, "*.tar")))
        if not paths:
            raise FileNotFoundError(f"no .tar shards found in the directory {spec!r}")
        return paths
    return expand_paths(spec, "data shards")


def expand_paths(spec: str, what: str) -> list[str]:
    """The files of a brace pattern of globs, sorted; every expansion without glob characters must
    exist and every glob must match, else FileNotFoundError lists what is missing."""
    paths, missing = [], []
    for pattern in braceexpand.braceexpand(spec):
        found = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else ([pattern] if os.path.isfile(pattern) else [])
        if not found:
            missing.append(pattern)
        paths += found
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{what} {spec!r}: {len(missing)} missing: {shown}")
    return sorted(dict.fromkeys(paths))


def _probe_url(url: str) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30):
            pass
    except (urllib.error.URLError, OSError) as exc:
        raise FileNotFoundError(f"shard {url} cannot be read: {exc}") from exc


def check_usable(label: str, source: SampleSource, to_document: Callable[[Any], Document], samples: int = 16) -> None:
    """Stop at start when the first `samples` samples of the first shard are all unusable (the
    wrong layout, a wrong field name, images only as URLs), naming the skip reasons, instead of
    after a whole epoch of skips. Once one is skipped the rest are read too, and a warning says
    so when half of them or more are unusable (MINT-1T's pages with URL images skipped, its few
    pages without images trained)."""
    reasons: Counter = Counter()
    first, usable = "", 0
    for n, sample in enumerate(source.samples(0, _CountingHandler(reasons))):
        if n == samples:
            break
        try:
            to_document(sample)
            usable += 1
            if not reasons:  # a clean start: nothing to say, nothing more to read
                return
        except BadSample as exc:
            reasons[exc.reason] += 1
            first = first or str(exc)
    detail = ", ".join(f"{r}: {k}" for r, k in reasons.most_common()) or "no samples"
    if first:
        detail += f"; the first: {first[:300]}"
    hints = "".join(f" {hint}." for r in reasons if r in USABLE_HINTS
                    for setting, hint in [USABLE_HINTS[r]] if setting not in first)  # not said twice
    if usable:
        if sum(reasons.values()) >= usable:
            logging.getLogger("ponder").warning("%s (%s): %d of its first %d samples are unusable (%s).%s Training "
                                                "goes on with the rest", label, source.name(0),
                                                sum(reasons.values()), usable + sum(reasons.values()), detail, hints)
        return
    raise ValueError(f"{label} ({source.name(0)}): none of its first samples is usable ({detail}).{hints} "
                     "See docs/data.md for the layouts each reader takes")


# What a user can change when every sample fails for one reason (docs/data.md has the full list):
# the setting, and the hint that names it.
USABLE_HINTS = {
    "bad_format": ("skip_bad_format", "Responses not in <think>...</think><answer>...</answer> form (R1-style and "
                   "LLaVA-CoT responses are converted to it): data.chat.require_box=false accepts answers without "
                   "a box (open-ended ones, LLaVA-CoT's conclusions), data.chat.skip_bad_format=false trains "
                   "responses as they are"),
    "missing_image": ("data.image_root", "Relative image paths are read from data.image_root (default: the data "
                      "file's folder)"),
    "missing_video": ("data.image_root", "Relative video paths are read from data.image_root (default: the data "
                      "file's folder)"),
    "no_text": ("text_field", "A text source reads the field its text_field names (default: text)"),
    "no_caption": ("caption_field", "An image-text source reads the caption from caption_field, else the .txt member"),
}


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


@dataclass
class MixturePart:
    """One source of a weighted mixture: its samples, how a sample becomes a Document, its share."""

    name: str
    source: SampleSource
    to_document: Callable[[Any], Document]
    weight: float


class ShardStream(IterableDataset):
    def __init__(
        self,
        cfg: ReaderConfig,
        to_document: Callable[[Any], Document] | None,
        pad_id: int,
        rank: int = 0,
        world_size: int = 1,
        source: SampleSource | None = None,
        mixture: list[MixturePart] | None = None,
    ):
        """`source` defaults to the tar shards of `cfg.shards`. With `mixture`, every stream
        interleaves the parts' documents at their weights (`source` and `to_document` unused)."""
        self.cfg = cfg
        self.pad_id = pad_id
        self.rank, self.world_size = rank, world_size
        self.mixed = mixture is not None
        if mixture is None:
            mixture = [MixturePart("", source if source is not None else TarShards(cfg.shards), to_document, 1.0)]
        if not mixture or any(not p.weight > 0 for p in mixture):
            raise ValueError("a mixture needs at least one source, each with a weight > 0")
        self.parts = mixture
        self.source, self.to_document = mixture[0].source, mixture[0].to_document
        self.streams_per_rank = max(1, cfg.num_workers)
        total = self.streams_per_rank * world_size
        for part in mixture:
            if not cfg.resample and len(part.source) < total:
                label = f"source {part.name!r}: " if self.mixed else ""
                raise ValueError(
                    f"{label}{len(part.source)} shards cannot feed {total} streams (world size x workers): "
                    "write more, smaller shards (records: lower records_per_shard), use fewer workers, "
                    "or set resample=true"
                )
        self.resume_states: dict[int, dict] = {}
        self.rotation = 0  # physical worker i serves logical stream (i + rotation) % streams

    # -- order -------------------------------------------------------------------------------
    def _epoch_shards(self, stream: int, epoch: int, part: int = 0) -> list[int]:
        global_stream = self.rank * self.streams_per_rank + stream
        total = self.streams_per_rank * self.world_size
        shards = range(len(self.parts[part].source))
        # Part 0 keeps the single-source seeds, so one source reads as it always did.
        seed = self.cfg.seed if part == 0 else f"{self.cfg.seed}/{self.parts[part].name}"
        if self.cfg.resample:
            rng = random.Random(f"{seed}/{global_stream}/{epoch}")
            return [rng.choice(shards) for _ in range(max(1, len(shards) // total))]
        order = list(shards)
        if self.cfg.shuffle_shards:
            random.Random(f"{seed}/{epoch}").shuffle(order)
        return order[global_stream::total]

    def _raw_samples(self, stream: int, start: Position, skipped: Counter, part: int = 0
                     ) -> Iterator[tuple[Position, dict]]:
        epoch, slot, skip = start
        handler = _CountingHandler(skipped)
        source = self.parts[part].source
        while self.cfg.max_epochs is None or epoch < self.cfg.max_epochs:
            whole_epoch, seen = (slot, skip) == (0, 0), 0
            shards = self._epoch_shards(stream, epoch, part)
            while slot < len(shards):
                for index, sample in enumerate(source.samples(shards[slot], handler)):
                    seen += 1
                    if index >= skip:
                        yield (epoch, slot, index), sample
                slot, skip = slot + 1, 0
            if whole_epoch and seen == 0:  # looping on would spin forever without a sample
                names = [source.name(s) for s in shards]
                raise RuntimeError(f"stream {stream} read no sample in a whole epoch of {names}")
            epoch, slot = epoch + 1, 0

    def _part_documents(self, stream: int, part: int, cursor: dict) -> Iterator[Document]:
        """Usable documents of one part from `cursor["next"]`, which it advances; bad samples are
        counted in `cursor["skipped"]`."""
        raw = self._raw_samples(stream, cursor["next"], cursor["skipped"], part)
        to_document = self.parts[part].to_document
        epoch, usable, whole_epoch = cursor["next"][0], 0, cursor["next"][1:] == (0, 0)
        for pos, sample in raw:
            if pos[0] != epoch:
                if whole_epoch and usable == 0:  # every sample bad: fail instead of spinning
                    raise RuntimeError(f"stream {stream}: a whole epoch held no usable sample")
                epoch, usable, whole_epoch = pos[0], 0, True
            cursor["next"] = (pos[0], pos[1], pos[2] + 1)
            try:
                doc = to_document(sample)
            except BadSample as exc:
                cursor["skipped"][exc.reason] += 1
                continue
            doc.origin = (part, *pos) if self.mixed else pos
            usable += 1
            yield doc

    def _choose(self, drawn: list[int], alive: list[int]) -> int:
        """The part whose share of the documents drawn so far lags its weight most (smooth weighted
        round robin): realised proportions stay within one document of the weights."""
        total = sum(self.parts[k].weight for k in alive)
        n = sum(drawn[k] for k in alive) + 1
        return max(alive, key=lambda k: (self.parts[k].weight / total * n - drawn[k], -k))

    def _mixed_documents(self, stream: int, cursors: list[dict]) -> Iterator[Document]:
        parts = [self._part_documents(stream, k, c) for k, c in enumerate(cursors)]
        alive = list(range(len(parts)))
        drawn = [c["documents"] for c in cursors]
        while alive:
            k = self._choose(drawn, alive)
            doc = next(parts[k], None)
            if doc is None:  # exhausted (max_epochs): choosing again among the rest is what resume does too
                alive.remove(k)
                continue
            drawn[k] += 1
            cursors[k]["documents"] += 1
            cursors[k]["tokens"] += len(doc)
            yield doc

    # -- one stream ----------------------------------------------------------------------------
    def stream_batches(self, stream: int, state: dict | None = None) -> Iterator[tuple[Batch, dict]]:
        """Batches of one logical stream, each with the stream's state right after it."""
        packer = Packer(self.cfg.packing)
        cursors = [{"next": (0, 0, 0), "skipped": Counter(), "documents": 0, "tokens": 0} for _ in self.parts]
        pending: list[tuple[tuple, int]] = []
        if state:
            if self.mixed:
                for part, cursor in zip(self.parts, cursors):
                    saved = state["sources"][part.name]
                    cursor.update(next=tuple(saved["next"]), documents=saved["documents"], tokens=saved["tokens"])
                    cursor["skipped"].update(saved["skipped"])
            else:
                cursors[0]["next"] = tuple(state["next"])
                cursors[0]["skipped"].update(state["skipped"])
            pending = [(tuple(p[:-1]), p[-1]) for p in state["pending"]]
            for name in ("rows", "tokens", "documents", "splits"):
                setattr(packer.stats, name, state["packing"][name])
            packer.stats.dropped.update(state["packing"]["dropped"])

        if pending:  # rebuild the packing buffer exactly as it was saved
            found: dict[tuple, Document] = {}
            for k, part in enumerate(self.parts):
                wanted = {p[1:] if self.mixed else p for p, _ in pending if not self.mixed or p[0] == k}
                if not wanted:
                    continue
                replay = self._raw_samples(stream, min(wanted), Counter(), k)  # skips were counted already
                for pos, sample in replay:
                    if pos in wanted:
                        doc = part.to_document(sample)
                        doc.origin = (k, *pos) if self.mixed else pos
                        found[doc.origin] = doc
                        wanted.discard(pos)
                    if not wanted:
                        break
            packer.buffer = [found[p].slice(offset) for p, offset in pending]

        documents = (self._mixed_documents(stream, cursors) if self.mixed
                     else self._part_documents(stream, 0, cursors[0]))
        for batch in packed_batches(documents, packer, self.cfg.batch_rows, self.pad_id):
            packing = {
                "rows": packer.stats.rows,
                "tokens": packer.stats.tokens,
                "documents": packer.stats.documents,
                "splits": packer.stats.splits,
                "dropped": dict(packer.stats.dropped),
            }
            pending_state = [[*d.origin, d.offset] for d in packer.buffer]
            if not self.mixed:
                yield batch, {"next": list(cursors[0]["next"]), "pending": pending_state,
                              "skipped": dict(cursors[0]["skipped"]), "packing": packing}
                continue
            skipped: Counter = Counter()
            for cursor in cursors:
                skipped.update(cursor["skipped"])
            yield batch, {
                "sources": {part.name: {"next": list(c["next"]), "skipped": dict(c["skipped"]),
                                        "documents": c["documents"], "tokens": c["tokens"]}
                            for part, c in zip(self.parts, cursors)},
                "pending": pending_state,
                "skipped": dict(skipped),
                "packing": packing,
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
        """Counters summed over this rank's streams: skips by reason, packing totals, and with a
        mixture, per source: documents, tokens (before packing) and skips by reason."""
        skipped: Counter = Counter()
        packing: Counter = Counter()
        sources: dict[str, dict] = {}
        for state in self.states.values():
            skipped.update(state["skipped"])
            skipped.update(state["packing"]["dropped"])
            packing.update({k: state["packing"][k] for k in ("rows", "tokens", "documents", "splits")})
            packing["documents_dropped"] += sum(state["packing"]["dropped"].values())  # in both counts
            for name, src in state.get("sources", {}).items():
                into = sources.setdefault(name, {"documents": 0, "tokens": 0, "skipped": Counter()})
                into["documents"] += src["documents"]
                into["tokens"] += src["tokens"]
                into["skipped"].update(src["skipped"])
        out = {"skipped": dict(skipped), **packing}
        if sources:
            out["sources"] = {n: {**v, "skipped": dict(v["skipped"])} for n, v in sources.items()}
        return out
