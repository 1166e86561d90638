"""Test helpers for the data floor: hand-built Documents (text runs and images of given patch
grids) and a comparable signature of a Batch."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from data_pipelines.document import Document, DocumentBuilder, Visual

# Small fixed ids standing in for the special tokens (a real tokenizer is not needed here).
IMAGE_START, IMAGE_END, IMAGE, VIDEO_START, VIDEO_END = 10, 11, 14, 12, 13
STAND_IN = SimpleNamespace(image_start=IMAGE_START, image_end=IMAGE_END, image=IMAGE,
                           video_start=VIDEO_START, video_end=VIDEO_END)
PATCH_DIM = 3 * 2 * 14 * 14


def make_doc(key: str, pieces: list, seed: int = 0, vocab: int = 200, first_text_id: int = 30,
             special=STAND_IN) -> Document:
    """pieces: ints are text runs of that many tokens; (h, w) tuples are images of h x w patches;
    ("video", t, h, w) a video of t frame pairs. `special`: ids of the vision tokens."""
    s = special
    g = torch.Generator().manual_seed(seed)
    doc = DocumentBuilder(key)
    for piece in pieces:
        if isinstance(piece, int):
            doc.add_tokens(torch.randint(first_text_id, vocab, (piece,), generator=g).tolist(), train=True)
        elif piece[0] == "video":
            _, t, h, w = piece
            n = h * w // 4
            ids, types = [s.video_start], [0]
            for frame in range(t):
                ids += [s.image_start] + [s.image] * n + [s.image_end] + [first_text_id + frame]
                types += [0] + [2] * n + [0, 0]
            ids.append(s.video_end)
            types.append(0)
            pixels = torch.randn(t * h * w, PATCH_DIM, generator=g)
            doc.add_visual(ids, types, Visual(pixels, torch.tensor([t, h, w])), "video")
        else:
            h, w = piece
            n = h * w // 4
            pixels = torch.randn(h * w, PATCH_DIM, generator=g)
            doc.add_visual([s.image_start] + [s.image] * n + [s.image_end], [0] + [1] * n + [0],
                           Visual(pixels, torch.tensor([1, h, w])), "image")
    return doc.build()


def signature(batch) -> tuple:
    """What two batches must share to be the same: ids, labels, positions, document keys, pixels."""
    pixels = None if batch.pixel_values is None else round(float(batch.pixel_values.double().sum()), 6)
    return batch.input_ids.tolist(), batch.labels.tolist(), batch.position_ids.tolist(), batch.doc_keys, pixels


def mixed_docs(special) -> list[Document]:
    """Five documents with text, images of several grids and a video: what packed-attention tests pack."""
    return [
        make_doc("a", [7, (4, 6), 5], seed=1, special=special),
        make_doc("b", [12], seed=2, special=special),
        make_doc("c", [3, (2, 2), 4, (6, 4), 2], seed=3, special=special),
        make_doc("v", [4, ("video", 2, 4, 4), 3], seed=4, special=special),
        make_doc("d", [(4, 4), 9], seed=5, special=special),
    ]
