"""Chat messages + images/videos -> model inputs for generation (what HF's Glm4vProcessor does,
without torchvision): render the chat template, then expand each `<|image|>` / `<|video|>`
placeholder into the tokens its processed visual needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .processor import VisionProcessor, image_token_ids, video_token_ids
from .tokenizer import SpecialTokens


@dataclass
class PromptInputs:
    input_ids: torch.Tensor  # (1, L)
    mm_token_type_ids: torch.Tensor  # (1, L)
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def expand_visual_placeholders(
    ids: list[int],
    images: list,
    videos: list,
    special: SpecialTokens,
    tokenizer: PreTrainedTokenizerBase,
    merge_size: int = 2,
) -> tuple[list[int], list[int]]:
    """Replace each `<|begin_of_image|><|image|><|end_of_image|>` (and the video form) in `ids`
    with the full expansion of the next processed image (video). Returns (ids, mm types)."""
    out, types = [], []
    images, videos = iter(images), iter(videos)
    i = 0
    while i < len(ids):
        window = ids[i : i + 3]
        if window == [special.image_start, special.image, special.image_end]:
            image = next(images, None)
            if image is None:
                raise ValueError("prompt has more image placeholders than images")
            n = int(image.grid_thw.prod()) // merge_size**2
            out += image_token_ids(n, special)
            types += [0] + [1] * n + [0]
            i += 3
        elif window == [special.video_start, special.video, special.video_end]:
            video = next(videos, None)
            if video is None:
                raise ValueError("prompt has more video placeholders than videos")
            v_ids, v_types = video_token_ids(video.grid_thw, video.timestamps, special, tokenizer, merge_size)
            out += v_ids
            types += v_types
            i += 3
        else:
            out.append(ids[i])
            types.append(0)
            i += 1
    if next(images, None) is not None or next(videos, None) is not None:
        raise ValueError("more images/videos than placeholders in the prompt")
    return out, types


def encode_prompt(
    messages: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    processor: VisionProcessor,
    images: list | None = None,
    videos: list[tuple[list, float]] | None = None,
) -> PromptInputs:
    """A generation prompt: `images` are PIL images / bytes / paths in order of appearance,
    `videos` (frames, fps) pairs."""
    special = SpecialTokens.from_tokenizer(tokenizer)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    processed_images = [processor.process_image(im) for im in images or []]
    processed_videos = [processor.process_video(frames, fps) for frames, fps in videos or []]
    ids, types = expand_visual_placeholders(
        ids, processed_images, processed_videos, special, tokenizer, processor.cfg.merge_size
    )
    return PromptInputs(
        input_ids=torch.tensor([ids]),
        mm_token_type_ids=torch.tensor([types]),
        pixel_values=torch.cat([p.pixel_values for p in processed_images]) if processed_images else None,
        image_grid_thw=torch.stack([p.grid_thw for p in processed_images]) if processed_images else None,
        pixel_values_videos=torch.cat([v.pixel_values for v in processed_videos]) if processed_videos else None,
        video_grid_thw=torch.stack([v.grid_thw for v in processed_videos]) if processed_videos else None,
    )
