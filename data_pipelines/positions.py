"""3D M-RoPE positions for one document, computed on the data side.

A re-implementation of `Glm4vModel.get_rope_index` for a single sequence (tested equal to it), so
packing can give every document its own positions without a model instance. Text advances all
three axes together; an image/video-frame block takes (t, h, w) grid positions offset by the
current position, after which text resumes at `start + max(h, w)` (in merged-patch units).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mrope_positions(
    mm_token_type_ids: torch.Tensor,
    image_grids: Sequence[torch.Tensor] = (),
    video_grids: Sequence[torch.Tensor] = (),
    spatial_merge_size: int = 2,
) -> torch.Tensor:
    """Positions `(3, L)` for one document; grids are `(t, h, w)` in patches, in order of use."""
    types = mm_token_type_ids.tolist()
    # A video of T temporal patches shows up as T frame blocks separated by timestamp text.
    frame_grids = [torch.tensor([1, int(g[1]), int(g[2])]) for g in video_grids for _ in range(int(g[0]))]
    grids = {1: iter(image_grids), 2: iter(frame_grids)}
    out = torch.empty(3, len(types), dtype=torch.long)
    pos, start = 0, 0
    while start < len(types):
        kind = types[start]
        end = start
        while end < len(types) and types[end] == kind:
            end += 1
        if kind == 0:
            out[:, start:end] = torch.arange(pos, pos + end - start)
            pos += end - start
        else:
            try:
                t, h, w = (int(v) for v in next(grids[kind]))
            except StopIteration:
                raise ValueError("more vision blocks in the tokens than grids given") from None
            h, w = h // spatial_merge_size, w // spatial_merge_size
            if t * h * w != end - start:
                raise ValueError(f"vision block of {end - start} tokens does not match grid {t}x{h}x{w}")
            tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
            out[0, start:end] = tt.reshape(-1) + pos
            out[1, start:end] = hh.reshape(-1) + pos
            out[2, start:end] = ww.reshape(-1) + pos
            pos += max(h, w)
        start = end
    return out
