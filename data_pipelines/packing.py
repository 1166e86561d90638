"""Documents -> fixed-length packed rows -> Batches.

Best fit over a small look-ahead buffer: a row takes the longest buffered document that still
fits; when none fits, the oldest document is split at the last legal cut (never inside an image
or video span) to fill the row. Splitting is for pretraining; SFT/RL keep samples whole and drop
(and count) the ones longer than a row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from .batch import Batch, collate_rows
from .document import Document


@dataclass
class PackingConfig:
    seq_len: int = 8192
    # Look-ahead: at least this many documents, and at least a row's worth of tokens (so rows of
    # short documents, captions say, fill up). More fills rows better, costs memory and latency.
    buffer_docs: int = 64
    split_documents: bool = True  # cut documents that do not fit (pretraining); False drops them
    min_chunk_tokens: int = 32  # never start a split piece shorter than this

    def __post_init__(self) -> None:
        if self.seq_len < 16:
            raise ValueError(f"packing.seq_len must be >= 16, got {self.seq_len}")
        if self.buffer_docs < 1:
            raise ValueError(f"packing.buffer_docs must be >= 1, got {self.buffer_docs}")
        if not 1 <= self.min_chunk_tokens <= self.seq_len:
            raise ValueError("packing.min_chunk_tokens must be in [1, seq_len]")


@dataclass
class PackingStats:
    seq_len: int
    rows: int = 0
    tokens: int = 0  # real (non-padding) tokens emitted
    documents: int = 0
    splits: int = 0
    dropped: Counter = field(default_factory=Counter)

    @property
    def efficiency(self) -> float:
        """Real tokens / token slots of the rows emitted so far."""
        return self.tokens / max(1, self.rows * self.seq_len)


class Packer:
    def __init__(self, cfg: PackingConfig):
        self.cfg = cfg
        self.buffer: list[Document] = []
        self.stats = PackingStats(seq_len=cfg.seq_len)

    def add(self, doc: Document) -> None:
        """Buffer a document, or drop it (counted) when it can never be placed."""
        self.stats.documents += 1
        if len(doc) == 0:
            self.stats.dropped["empty_document"] += 1
        elif any(end - start > self.cfg.seq_len for start, end, _ in doc.atomic_spans):
            self.stats.dropped["vision_span_longer_than_seq_len"] += 1
        elif len(doc) > self.cfg.seq_len and not self.cfg.split_documents:
            self.stats.dropped["longer_than_seq_len"] += 1
        else:
            self.buffer.append(doc)

    @property
    def full(self) -> bool:
        # 64 caption documents of 16 tokens filled an 8,192-token row an eighth of the way.
        return len(self.buffer) >= self.cfg.buffer_docs and sum(map(len, self.buffer)) >= self.cfg.seq_len

    def pop_row(self) -> list[Document]:
        """One row of documents totalling at most seq_len tokens (empty only if the buffer is)."""
        row: list[Document] = []
        room = self.cfg.seq_len
        while self.buffer:
            fits = [i for i, d in enumerate(self.buffer) if len(d) <= room]
            if fits:
                best = max(fits, key=lambda i: len(self.buffer[i]))  # first of the longest: stable
                doc = self.buffer.pop(best)
                row.append(doc)
                room -= len(doc)
                continue
            if not self.cfg.split_documents or room < self.cfg.min_chunk_tokens:
                break
            oldest = self.buffer[0]
            # An empty row accepts any legal piece, so a document always makes progress.
            cut = oldest.legal_cut(at_most=room, at_least=self.cfg.min_chunk_tokens if row else 1)
            if cut is None:
                break  # an image span straddles the room left: the next row takes it whole
            row.append(oldest.slice(0, cut))
            self.buffer[0] = oldest.slice(cut)
            self.stats.splits += 1
            room -= cut
        self.stats.rows += bool(row)
        self.stats.tokens += self.cfg.seq_len - room if row else 0
        return row


def packed_batches(documents: Iterator[Document], packer: Packer, rows_per_batch: int, pad_id: int) -> Iterator[Batch]:
    """Batches of `rows_per_batch` packed rows, pulling documents as the packer's look-ahead empties;
    the last batch may hold fewer rows. Between batches `packer.buffer` holds what is pending (the
    reader saves it for exact resume)."""
    exhausted = False
    while True:
        rows = []
        while len(rows) < rows_per_batch:
            while not exhausted and not packer.full:
                doc = next(documents, None)
                if doc is None:
                    exhausted = True
                else:
                    packer.add(doc)
            row = packer.pop_row()
            if not row:
                break
            rows.append(row)
        if not rows:
            return
        yield collate_rows(rows, packer.cfg.seq_len, pad_id)
