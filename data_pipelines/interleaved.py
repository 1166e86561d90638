"""Interleaved image-text-video samples (as written by `shards.py`) -> Documents for pretraining.

A sample is webdataset's dict: `json` (the document: id + segments) and one member per image,
video file or video frame. Text is trained on; image spans (`<|begin_of_image|>` + N x
`<|image|>` + `<|end_of_image|>`) and whole videos (`<|begin_of_video|>`, per frame pair an image
span and its timestamp, `<|end_of_video|>`) are not, and the document ends with `<|endoftext|>`.
A video segment is `{"video": "vid000.mp4"}` (a file, decoded at 2 fps by data_pipelines/video.py)
or `{"video": ["vid000.f000.jpg", ...], "fps": F}` (frames already extracted at F frames per
second; frame i is at i / F seconds), both processed as Glm4vProcessor does.
"""

from __future__ import annotations

import json
from typing import Any

from transformers import PreTrainedTokenizerBase

from .document import Document, DocumentBuilder, Visual
from .processor import (BadSample, BadVideoError, EmptyImageError, ImageDecodeError, ProcessedVideo, VisionProcessor,
                        image_token_ids, sample_frame_indices, video_token_ids)
from .tokenizer import SpecialTokens
from .video import VideoClip, clip_bounds, decode_video, frames_fps


class MalformedSample(BadSample):
    reason = "malformed_sample"


class MissingImage(BadSample):
    reason = "missing_image"


class InterleavedDocuments:
    """Callable turning one webdataset sample into a Document; raises `BadSample` to skip it."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, processor: VisionProcessor):
        self.tokenizer = tokenizer
        self.processor = processor
        self.special = SpecialTokens.from_tokenizer(tokenizer)

    def __call__(self, sample: dict[str, Any]) -> Document:
        try:
            meta = json.loads(sample["json"])
            segments = meta["segments"]
            if not isinstance(segments, list) or not segments:
                raise ValueError("no segments")
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise MalformedSample(f"{sample.get('__key__')}: bad document JSON ({exc})") from exc
        doc = DocumentBuilder(str(meta.get("id", sample["__key__"])))
        for segment in segments:
            if not isinstance(segment, dict):
                raise MalformedSample(f"{doc.key}: segment is not an object")
            if "text" in segment:
                text = segment["text"]
                if not isinstance(text, str):
                    raise MalformedSample(f"{doc.key}: text segment is not a string")
                self.add_text(doc, text)
            elif "image" in segment:
                self.add_image(doc, _member(sample, str(segment["image"]), doc.key))
            elif "video" in segment:
                self.add_video(doc, self._video(sample, segment, doc.key))
            else:
                raise MalformedSample(f"{doc.key}: segment has neither text, image nor video")
        doc.add_tokens([self.special.eos], train=True)
        return doc.build()

    # Shared with the other pretraining sources (data_pipelines.sources): one way to add each part.
    def add_text(self, doc: DocumentBuilder, text: str) -> None:
        """Text is trained on."""
        doc.add_tokens(self.tokenizer.encode(text, add_special_tokens=False), train=True)

    def add_image(self, doc: DocumentBuilder, source: Any) -> None:
        """An image span (bytes, path or PIL image), never trained on and never cut."""
        image = self.processor.process_image(source)
        n = int(image.grid_thw.prod()) // self.processor.cfg.merge_size**2
        ids = image_token_ids(n, self.special)
        types = [0] + [1] * n + [0]
        doc.add_visual(ids, types, Visual(image.pixel_values, image.grid_thw), "image")

    def add_video(self, doc: DocumentBuilder, video: ProcessedVideo) -> None:
        """A video span with its frames' timestamps, never trained on and never cut."""
        ids, types = video_token_ids(video.grid_thw, video.timestamps, self.special, self.tokenizer,
                                     self.processor.cfg.merge_size)
        doc.add_visual(ids, types, Visual(video.pixel_values, video.grid_thw), "video")

    def _video(self, sample: dict[str, Any], segment: dict[str, Any], key: str):
        """A video file member, or a list of frame members at `fps` -> the processed video."""
        source = segment["video"]
        if isinstance(source, str):  # a file; with start / end, the part of it the document is about
            try:
                start, end, _ = clip_bounds(segment.get("start"), segment.get("end"))
            except ValueError as exc:  # shards written by hand
                raise BadVideoError(f"{key}: {exc}") from exc
            clip = VideoClip(None, start, end) if ("start" in segment or "end" in segment) else None
            return decode_video(_member(sample, source, key), self.processor, clip)
        fps = segment.get("fps")
        if not isinstance(source, list) or not source or not all(isinstance(f, str) for f in source):
            raise BadVideoError(f"{key}: a video is a file member or a non-empty list of frame members")
        if (fps := frames_fps(fps)) is None:
            raise BadVideoError(f"{key}: video frames need a positive fps, got {segment.get('fps')!r}")
        indices = sample_frame_indices(len(source), float(fps), self.processor.cfg)
        frames = [_member(sample, source[i], key) for i in indices]
        try:
            return self.processor.process_sampled_video(frames, indices, float(fps))
        except (ImageDecodeError, EmptyImageError) as exc:  # one bad frame spoils the video
            raise BadVideoError(f"{key}: {exc}") from exc


def _member(sample: dict[str, Any], name: str, key: str) -> bytes:
    """Bytes of a member named `img000.jpg` or `KEY.img000.jpg` (webdataset drops the key)."""
    for candidate in (name.lower(), name.split(".", 1)[-1].lower()):
        if candidate in sample and isinstance(sample[candidate], bytes):
            return sample[candidate]
    raise MissingImage(f"{key}: member {name} missing")
