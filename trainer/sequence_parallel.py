"""Sequence parallelism (Ulysses): one packed row split over `trainer.sequence_parallel_size` ranks.

Layout. Ranks are grouped in consecutive blocks of `size` (an SP group); the groups are the data
parallel replicas: each group reads its own rows (reader rank = rank // size), every rank of a
group reads the same ones and keeps one contiguous slice of `L / size` positions of every row.
ZeRO-3 still partitions parameters, gradients and optimizer state over the whole world, as
DeepSpeed's ALST does over its sequence-data-parallel group.

Attention (DeepSpeed-Ulysses). Everything but attention is per position, so it runs on the local
slice. In attention an all-to-all turns (B, H, L/size, D) into (B, H/size, L, D): each rank attends
over the whole row for its share of the heads, with the same per-document boundaries as
without SP (read from the full row's `position_ids` row 0), then a second all-to-all brings the
output back to the local slice. Key/value heads that do not divide by `size` (GQA: 2 KV heads at
sp=4) are repeated to the query heads first.

Vision. Each rank runs the vision tower on the images and video frames that have at least one
token in its slice (one cut by the boundary runs on both neighbours; a slice without any runs the
tower on forward.py's dummy, so every rank runs the same modules, as ZeRO-3 requires) and places
their features on its tokens; the tower's gradient comes only through those tokens, and the sum
over the group is the full gradient.

Loss. Labels are shifted on the data side, so each slice's loss is a plain token sum; the
normaliser is summed over slices, and the trainer's `x world size` undoes DeepSpeed's average over
all ranks: the update is exactly that of the unsplit batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from data_pipelines.batch import Batch

from .distributed import DistInfo
from .forward import visual_inputs


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place in the sequence-parallel layout."""

    size: int  # ranks per row (1: off)
    rank: int  # this rank's slice index within its group
    group: dist.ProcessGroup | None  # the ranks sharing this rank's rows (None when size is 1)
    data_rank: int  # index of this rank's group among the data-parallel replicas
    data_world: int  # number of data-parallel replicas (world size / size)

    @property
    def active(self) -> bool:
        return self.size > 1


def init_sequence_parallel(info: DistInfo, size: int) -> SequenceParallel:
    """Groups of `size` consecutive ranks. Every rank creates every group (a collective)."""
    if size < 1 or info.world_size % size:
        raise ValueError(f"trainer.sequence_parallel_size={size} must divide the world size ({info.world_size})")
    if size == 1:
        return SequenceParallel(1, 0, None, info.rank, info.world_size)
    mine = None
    for start in range(0, info.world_size, size):
        group = dist.new_group(list(range(start, start + size)))
        if start <= info.rank < start + size:
            mine = group
    return SequenceParallel(size, info.rank % size, mine, info.rank // size, info.world_size // size)


def pretraining_only(size: int, stage: str) -> None:
    """SP is wired into the packed pretraining stage; other stages refuse it at start."""
    if size != 1:
        raise ValueError(f"trainer.sequence_parallel_size={size}: sequence parallelism serves pretraining only, "
                         f"not {stage}")


def check_model(size: int, attn_implementation: str, query_heads: int, seq_len: int) -> None:
    """Stop at start on a model / row length the split cannot serve."""
    if size == 1:
        return
    if attn_implementation != "ponder_varlen":
        raise ValueError(f"trainer.sequence_parallel_size={size} needs model.attn_implementation=ponder_varlen "
                         f"(the Ulysses attention lives there), got {attn_implementation!r}")
    if query_heads % size:
        raise ValueError(f"trainer.sequence_parallel_size={size} must divide the text attention heads ({query_heads})")
    if seq_len % size:
        raise ValueError(f"data.packing.seq_len={seq_len} must be a multiple of trainer.sequence_parallel_size={size}")


# ----------------------------------------------------------------------------------------------
# The all-to-all (its own inverse, so the backward is the same exchange)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _exchange(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _exchange(grad, ctx.group), None


def _exchange(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Chunk j of dim 0 goes to rank j; chunk j of the result came from rank j."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


@dataclass
class SequenceShard:
    """What the attention of a sequence-parallel forward needs beyond its local slice. Passed
    through transformers' attention kwargs (`sequence_parallel=`), so activation checkpointing's
    recomputation sees it too."""

    sp: SequenceParallel
    text_positions: torch.Tensor  # (B, L) row 0 of the full rows' position_ids: the documents

    def heads_to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, L/size, D) local slice, all heads -> (B, H/size, L, D) whole row, this rank's heads."""
        b, h, ls, d = x.shape
        n = self.sp.size
        chunks = x.reshape(b, n, h // n, ls, d).transpose(0, 1)  # (n, B, H/n, Ls, D): chunk j -> rank j
        got = _AllToAll.apply(chunks, self.sp.group)  # got[j]: rank j's slice of my heads
        return got.permute(1, 2, 0, 3, 4).reshape(b, h // n, n * ls, d)

    def sequence_to_heads(self, out: torch.Tensor) -> torch.Tensor:
        """(B, L, H/size, D) attention output -> (B, L/size, H, D) local slice, all heads."""
        b, length, hn, d = out.shape
        n = self.sp.size
        chunks = out.reshape(b, n, length // n, hn, d).transpose(0, 1)  # chunk j: rank j's slice
        got = _AllToAll.apply(chunks, self.sp.group)  # got[j]: my slice of rank j's heads
        return got.permute(1, 2, 0, 3, 4).reshape(b, length // n, n * hn, d)

    def split_heads(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole row for this rank's heads; key/value heads repeated when they do not divide."""
        if key.shape[1] % self.sp.size:
            repeats = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
        return self.heads_to_sequence(query), self.heads_to_sequence(key), self.heads_to_sequence(value)


# ----------------------------------------------------------------------------------------------
# Slicing a packed batch


@dataclass
class ShardedBatch(Batch):
    """A Batch cut to this rank's slice of every row (per-position fields). Its pixels are those of
    the images / video frames with tokens in the slice, all given as (1, h, w) image grids (the
    tower treats a frame pair as one item either way); `feature_index` maps each local vision
    token to its row in the tower's output."""

    shard: SequenceShard | None = None
    feature_index: torch.Tensor | None = None  # (B, L/size) row of the tower's features; -1 on text


def shard_batch(batch: Batch, sp: SequenceParallel) -> ShardedBatch:
    """This rank's slice [rank * L/size, (rank + 1) * L/size) of every row."""
    length = batch.input_ids.shape[1]
    width = length // sp.size
    cut = slice(sp.rank * width, (sp.rank + 1) * width)
    fields = {name: getattr(batch, name)[..., cut] for name in
              ("input_ids", "labels", "position_ids", "mm_token_type_ids", "doc_ids", "label_weights")}
    rest = {k: v for k, v in vars(batch).items()
            if k not in fields and k not in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")}
    pixels, grids, index = _slice_visuals(batch, cut)
    return ShardedBatch(**fields, **rest, pixel_values=pixels, image_grid_thw=grids,
                        shard=SequenceShard(sp, batch.position_ids[0]), feature_index=index)


def _slice_visuals(batch: Batch, cut: slice) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """(patches, (1, h, w) grids) of the visual items with tokens in `cut`, and each local token's
    row among their features (-1 on text). The unsplit forward's order: images, then frames, each
    in row-major token order (forward.embed)."""
    types = batch.mm_token_type_ids
    image = (types == 1).flatten().cumsum(0).view_as(types) - 1
    video = (types == 2).flatten().cumsum(0).view_as(types) - 1 + int((types == 1).sum())
    index = torch.where(types == 1, image, torch.where(types == 2, video, torch.full_like(types, -1)))[:, cut]
    if batch.pixel_values is None and batch.pixel_values_videos is None:
        return None, None, index
    pixels, grids = visual_inputs(batch, batch.input_ids.device)
    patches = grids.prod(dim=1)  # per item: its patch rows in `pixels`
    # Whole rows hold every item's tokens, so patches per token (merge**2) is the ratio of totals.
    merge_sq = int(patches.sum()) // int((types > 0).sum())
    tokens = patches // merge_sq
    token_end, patch_end = tokens.cumsum(0), patches.cumsum(0)
    token_start, patch_start = token_end - tokens, patch_end - patches
    local = index[index >= 0]
    item = torch.searchsorted(token_end, local, right=True)  # the item each local token belongs to
    keep = torch.unique(item)  # sorted: the subset keeps the unsplit order
    if keep.numel() == 0:
        return None, None, index
    new_start = (tokens[keep].cumsum(0) - tokens[keep])
    remap = torch.full_like(tokens, -1)
    remap[keep] = torch.arange(keep.numel(), device=keep.device)
    index = index.clone()
    index[index >= 0] = local - token_start[item] + new_start[remap[item]]
    rows = torch.cat([torch.arange(int(patch_start[i]), int(patch_end[i])) for i in keep.tolist()])
    return pixels[rows.to(pixels.device)], grids[keep], index
