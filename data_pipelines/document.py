"""One tokenized sample, ready to pack: token ids, modality types, targets and its pixels.

Every stage turns its records into `Document`s (interleaved pretraining docs here, chat records in
`chat.py`); the packer and the batch builder only ever see this type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .positions import mrope_positions


@dataclass
class Visual:
    """One image (t = 1) or video (t = frame pairs): patches `(t*h*w, 1176)` and grid `(t, h, w)`."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor


@dataclass
class Document:
    key: str
    input_ids: torch.Tensor  # (L,) int64
    mm_token_type_ids: torch.Tensor  # (L,) 0 text, 1 image, 2 video frame
    loss_mask: torch.Tensor  # (L,) bool: token t is a training target (predicted at t - 1)
    images: list[Visual] = field(default_factory=list)
    videos: list[Visual] = field(default_factory=list)
    # [start, end) token ranges that must never be cut: an image from <|begin_of_image|> to
    # <|end_of_image|>, a whole video. Sorted, disjoint; each holds exactly one image or video.
    atomic_spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, "image"|"video")
    # Loss weight of each target token; SFT/RL use it for per-sample normalisation.
    token_weight: float = 1.0
    # Where the document came from (opaque to all but its reader) and, for a piece of a split
    # document, its token offset in the whole; the reader uses both to save and restore position.
    origin: tuple = ()
    offset: int = 0
    whole_len: int | None = None

    @property
    def chunk_key(self) -> str:
        """`key` for a whole document, `key@start:end` for a piece of one."""
        if self.whole_len is None or (self.offset == 0 and len(self) == self.whole_len):
            return self.key
        return f"{self.key}@{self.offset}:{self.offset + len(self)}"

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    def positions(self, spatial_merge_size: int = 2) -> torch.Tensor:
        grids_i = [v.grid_thw for v in self.images]
        grids_v = [v.grid_thw for v in self.videos]
        return mrope_positions(self.mm_token_type_ids, grids_i, grids_v, spatial_merge_size)

    def legal_cut(self, at_most: int, at_least: int = 1) -> int | None:
        """Largest cut point c in [at_least, at_most] that does not fall inside an atomic span."""
        cut = min(at_most, len(self) - 1)
        for start, end, _ in reversed(self.atomic_spans):
            if start < cut < end:
                cut = start
            if end <= cut:
                break
        return cut if cut >= at_least else None

    def slice(self, start: int, end: int | None = None) -> "Document":
        """Tokens [start, end) with the visuals whose spans lie inside; cuts must be legal."""
        end = len(self) if end is None else end
        spans, images, videos = [], [], []
        counters = {"image": iter(self.images), "video": iter(self.videos)}
        for s, e, kind in self.atomic_spans:
            visual = next(counters[kind])
            if s < start < e or s < end < e:
                raise ValueError(f"cut inside a {kind} span [{s}, {e}) of {self.key}")
            if start <= s and e <= end:
                spans.append((s - start, e - start, kind))
                (images if kind == "image" else videos).append(visual)
        loss_mask = self.loss_mask[start:end].clone()
        loss_mask[0] = False  # the first token of a chunk has no context to be predicted from
        return Document(
            key=self.key,
            input_ids=self.input_ids[start:end],
            mm_token_type_ids=self.mm_token_type_ids[start:end],
            loss_mask=loss_mask,
            images=images,
            videos=videos,
            atomic_spans=spans,
            token_weight=self.token_weight,
            origin=self.origin,
            offset=self.offset + start,
            whole_len=self.whole_len if self.whole_len is not None else len(self),
        )


class DocumentBuilder:
    """Appends text and visuals to a growing document, tracking spans and loss targets."""

    def __init__(self, key: str):
        self.key = key
        self.ids: list[int] = []
        self.types: list[int] = []
        self.targets: list[bool] = []
        self.images: list[Visual] = []
        self.videos: list[Visual] = []
        self.spans: list[tuple[int, int, str]] = []

    def add_tokens(self, ids: list[int], train: bool, mm_type: int = 0) -> None:
        self.ids += ids
        self.types += [mm_type] * len(ids)
        self.targets += [train] * len(ids)

    def add_visual(self, ids: list[int], types: list[int], visual: Visual, kind: str) -> None:
        """A vision span (markers + placeholders [+ timestamps]); never a training target."""
        start = len(self.ids)
        self.ids += ids
        self.types += types
        self.targets += [False] * len(ids)
        self.spans.append((start, len(self.ids), kind))
        (self.images if kind == "image" else self.videos).append(visual)

    def build(self) -> Document:
        return Document(
            key=self.key,
            input_ids=torch.tensor(self.ids, dtype=torch.long),
            mm_token_type_ids=torch.tensor(self.types, dtype=torch.long),
            loss_mask=torch.tensor(self.targets, dtype=torch.bool),
            images=self.images,
            videos=self.videos,
            atomic_spans=self.spans,
        )
