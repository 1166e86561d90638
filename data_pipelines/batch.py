"""The one batch type every stage hands to the trainer, and how packed rows become one."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from .document import Document

IGNORE_INDEX = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L) next-token targets, already shifted; IGNORE_INDEX = no loss
    # (4, B, L): row 0 per-document text positions (restart at 0 per document — transformers reads
    # them to keep attention inside each document), rows 1..3 the 3D M-RoPE positions.
    position_ids: torch.Tensor
    mm_token_type_ids: torch.Tensor  # (B, L)
    doc_ids: torch.Tensor  # (B, L) unique per document in the batch, -1 on padding
    label_weights: torch.Tensor  # (B, L) float: loss weight per target (0 where no target)
    pixel_values: torch.Tensor | None = None  # (patches, 1176) in token order
    image_grid_thw: torch.Tensor | None = None  # (images, 3)
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    doc_keys: list[str] = field(default_factory=list)  # doc_ids -> key

    @property
    def num_tokens(self) -> int:
        return int((self.doc_ids >= 0).sum())

    def to(self, device: torch.device | str) -> "Batch":
        moved = {
            f.name: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**moved)

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        """Keyword arguments for `Glm4vForConditionalGeneration.forward` (no labels: the trainer
        computes the loss itself from `labels` and `label_weights`)."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "mm_token_type_ids": self.mm_token_type_ids,
            "pixel_values": self.pixel_values,
            "image_grid_thw": self.image_grid_thw,
            "pixel_values_videos": self.pixel_values_videos,
            "video_grid_thw": self.video_grid_thw,
        }


def collate_rows(rows: list[list[Document]], seq_len: int, pad_id: int, spatial_merge_size: int = 2) -> Batch:
    """Packed rows (each a list of documents of total length <= seq_len) -> one padded Batch."""
    b = len(rows)
    input_ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((4, b, seq_len), dtype=torch.long)
    mm_types = torch.zeros((b, seq_len), dtype=torch.long)
    doc_ids = torch.full((b, seq_len), -1, dtype=torch.long)
    weights = torch.zeros((b, seq_len), dtype=torch.float32)
    images, videos, keys = [], [], []
    for r, docs in enumerate(rows):
        offset = 0
        for doc in docs:
            n = len(doc)
            if offset + n > seq_len:
                raise ValueError(f"row {r} holds {offset + n} tokens > seq_len {seq_len}")
            sl = slice(offset, offset + n)
            input_ids[r, sl] = doc.input_ids
            mm_types[r, sl] = doc.mm_token_type_ids
            positions[0, r, sl] = torch.arange(n)
            positions[1:, r, sl] = doc.positions(spatial_merge_size)
            targets = doc.loss_mask[1:]
            labels[r, offset : offset + n - 1] = torch.where(targets, doc.input_ids[1:], IGNORE_INDEX)
            weights[r, offset : offset + n - 1] = targets.float() * doc.token_weight
            doc_ids[r, sl] = len(keys)
            keys.append(doc.chunk_key)
            images += doc.images
            videos += doc.videos
            offset += n
        # Padding is one more pseudo-document (positions restart), so it never joins real attention.
        pad = seq_len - offset
        positions[:, r, offset:] = torch.arange(pad)
    return Batch(
        input_ids=input_ids,
        labels=labels,
        position_ids=positions,
        mm_token_type_ids=mm_types,
        doc_ids=doc_ids,
        label_weights=weights,
        pixel_values=torch.cat([v.pixel_values for v in images]) if images else None,
        image_grid_thw=torch.stack([v.grid_thw for v in images]) if images else None,
        pixel_values_videos=torch.cat([v.pixel_values for v in videos]) if videos else None,
        video_grid_thw=torch.stack([v.grid_thw for v in videos]) if videos else None,
        doc_keys=keys,
    )
