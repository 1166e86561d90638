"""GLM-4.1V image/video processor: pixels -> patches, and the prompt tokens that stand for them.

Our own because transformers' `Glm4vProcessor` needs torchvision, which cannot be installed on
CPU machines. It reproduces `Glm4vImageProcessorPil` (smart_resize, PIL BICUBIC, rescale, CLIP
normalize, patch order) and the sampling, patch order and prompt layout of `Glm4vVideoProcessor` /
`Glm4vProcessor`, and adds what data pipelines need: typed errors for bad samples, token counts
from sizes alone, and a fast uint8 -> float patchify (one lookup-table gather per channel).
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")  # image files by name
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class BadSample(Exception):
    """A sample that cannot be used; `reason` is the key its skip counter is kept under."""

    reason: str = "bad_sample"


class AspectRatioError(BadSample):
    reason = "aspect_ratio"


class ImageDecodeError(BadSample):
    reason = "undecodable_image"


class EmptyImageError(BadSample):
    reason = "empty_image"


class BadVideoError(BadSample):
    """No frames, or a frame rate that is not positive."""

    reason = "bad_video"


@dataclass
class ProcessorConfig:
    """GLM-4.1V-9B-Thinking's released processor settings (preprocessor_config.json and
    video_preprocessor_config.json) plus the video sampling of `Glm4vVideoProcessor`."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 112 * 112  # 12,544: bounds on t*h*w with t = temporal_patch_size
    max_pixels: int = 14 * 14 * 2 * 2 * 2 * 6144  # 9,633,792 => at most 6,144 tokens per image
    video_min_pixels: int = 112 * 112
    video_max_pixels: int = 28 * 28 * 2 * 30000  # 47,040,000 over all sampled frames
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    video_fps: float = 2.0
    max_video_seconds: int = 300
    max_aspect_ratio: float = 200.0

    @property
    def factor(self) -> int:
        """Side lengths are multiples of this: one LLM token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @property
    def max_video_frames(self) -> int:
        """Frames sampled evenly from videos longer than `max_video_seconds` (600)."""
        return int(self.max_video_seconds * self.video_fps)


def smart_resize(
    num_frames: int,
    height: int,
    width: int,
    temporal_factor: int = 2,
    factor: int = 28,
    min_pixels: int = 112 * 112,
    max_pixels: int = 14 * 14 * 2 * 2 * 2 * 6144,
    max_aspect_ratio: float = 200.0,
) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, t*h*w within [min_pixels, max_pixels].

    Same arithmetic as transformers' glm4v `smart_resize`, with typed errors for bad samples.
    """
    if num_frames < temporal_factor:
        raise ValueError(f"num_frames {num_frames} must be at least temporal_factor {temporal_factor}")
    if height <= 0 or width <= 0:
        raise EmptyImageError(f"image has no pixels: {width}x{height}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height = int(height * scale)
        width = int(width * scale)
    ratio = max(height, width) / min(height, width)
    if ratio > max_aspect_ratio:
        raise AspectRatioError(f"aspect ratio {ratio:.1f} exceeds {max_aspect_ratio:g}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def sample_frame_indices(
    total_frames: int, fps: float, config: ProcessorConfig = ProcessorConfig()
) -> list[int]:
    """Indices of the frames to keep, exactly as `Glm4vVideoProcessor.sample_frames`.

    `video_fps` frames per second up to `max_video_seconds`; longer videos get `max_video_frames`
    spread evenly. Duplicates are dropped and an odd count is padded by repeating the last index.
    Public so a decoder can decode only these frames.
    """
    if total_frames <= 0:
        raise BadVideoError("video has no frames")
    if not fps > 0:
        raise BadVideoError(f"video fps must be positive, got {fps}")
    max_idx = total_frames - 1
    duration = total_frames / fps  # what transformers' video decoders report as metadata.duration
    if duration <= config.max_video_seconds:
        n = max(int(math.floor(duration * config.video_fps)), 1)
        indices = [min(max_idx, int(math.ceil(i * fps / config.video_fps))) for i in range(n)]
    elif config.max_video_frames >= total_frames:
        indices = list(range(total_frames))
    else:
        seconds = np.linspace(0, duration, config.max_video_frames, endpoint=True)
        indices = [min(max_idx, int(math.ceil(t * fps))) for t in seconds]
    unique = list(dict.fromkeys(indices))
    if len(unique) % 2:
        unique.append(unique[-1])
    return unique


@dataclass
class ProcessedImage:
    pixel_values: torch.Tensor  # float32 (h*w, 3*temporal_patch_size*patch_size**2)
    grid_thw: torch.Tensor  # int64 (3,): (1, h, w) in patches
    num_tokens: int  # LLM tokens: h*w / merge_size**2


@dataclass
class ProcessedVideo:
    pixel_values: torch.Tensor  # float32 (T*h*w, 3*temporal_patch_size*patch_size**2)
    grid_thw: torch.Tensor  # int64 (3,): (T, h, w), T = sampled frames / temporal_patch_size
    timestamps: list[int]  # integer seconds of the first frame of each temporal patch


ImageSource = Image.Image | bytes | bytearray | str | os.PathLike


def _read_source(source: ImageSource) -> Image.Image:
    """Decode fully (so truncation surfaces here), apply EXIF orientation like transformers'
    `load_image` for encoded input, and convert to RGB like the reference's `convert_to_rgb`."""
    if isinstance(source, (str, os.PathLike)):
        source = Path(source).read_bytes()
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise EmptyImageError("image has zero bytes")
        try:
            img = Image.open(io.BytesIO(source))
        except Exception as e:  # PIL raises many exception types on corrupt data
            raise ImageDecodeError(f"cannot decode image: {type(e).__name__}: {e}") from e
        encoded = True
    elif isinstance(source, Image.Image):
        img, encoded = source, False
    else:
        raise TypeError(f"expected a PIL image, bytes or a path, got {type(source).__name__}")
    if img.width == 0 or img.height == 0:
        raise EmptyImageError(f"image has no pixels: {img.width}x{img.height}")
    try:
        img.load()  # a lazily opened image (ours or the caller's) decodes here
        if encoded:
            img = ImageOps.exif_transpose(img)
        return img if img.mode == "RGB" else img.convert("RGB")
    except Exception as e:  # PIL raises many exception types on corrupt data
        raise ImageDecodeError(f"cannot decode image: {type(e).__name__}: {e}") from e


def image_size(source: ImageSource) -> tuple[int, int]:
    """(width, height) as `process_image` will see it (EXIF orientation applied), reading only
    the header of encoded input: what shard writing needs to count tokens without decoding."""
    if isinstance(source, Image.Image):
        return source.size
    if isinstance(source, (str, os.PathLike)):
        source = Path(source).read_bytes()
    if len(source) == 0:
        raise EmptyImageError("image has zero bytes")
    try:
        img = Image.open(io.BytesIO(source))
        width, height = img.size
        if img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    except Exception as e:  # PIL raises many exception types on corrupt headers
        raise ImageDecodeError(f"cannot read image header: {type(e).__name__}: {e}") from e
    return width, height


class VisionProcessor:
    """Images and videos -> (pixel_values, grid_thw) as Glm4v's vision tower expects them."""

    def __init__(self, config: ProcessorConfig = ProcessorConfig()):
        self.cfg = config
        # Reference arithmetic per uint8 value: x*(1/255) in float64 -> float32, then
        # (x - mean) / std in float32. A table makes it one exact gather per channel.
        mean = np.asarray(config.image_mean, dtype=np.float32)[:, None]
        std = np.asarray(config.image_std, dtype=np.float32)[:, None]
        scaled = (np.arange(256, dtype=np.float64) * config.rescale_factor).astype(np.float32)
        self._lut = ((scaled[None, :] - mean) / std).astype(np.float32)  # (3, 256)

    # ---- sizes only -------------------------------------------------------------------------
    def image_grid_for_size(self, width: int, height: int) -> tuple[int, int, int]:
        """(t, h, w) patch grid of an image of this size, without decoding it."""
        cfg = self.cfg
        h, w = smart_resize(
            cfg.temporal_patch_size, height, width, cfg.temporal_patch_size, cfg.factor,
            cfg.min_pixels, cfg.max_pixels, cfg.max_aspect_ratio,
        )
        return 1, h // cfg.patch_size, w // cfg.patch_size

    def num_image_tokens(self, width: int, height: int) -> int:
        """LLM tokens (`<|image|>` copies) an image of this size expands to."""
        t, h, w = self.image_grid_for_size(width, height)
        return t * h * w // self.cfg.merge_size**2

    # ---- images -----------------------------------------------------------------------------
    def process_image(self, source: ImageSource) -> ProcessedImage:
        img = _read_source(source)
        cfg = self.cfg
        h, w = smart_resize(
            cfg.temporal_patch_size, img.height, img.width, cfg.temporal_patch_size, cfg.factor,
            cfg.min_pixels, cfg.max_pixels, cfg.max_aspect_ratio,
        )
        pixels = np.asarray(self._resize(img, h, w))[None]  # (1, h, w, 3) uint8
        patches = self._patchify(pixels, frames_per_patch=1)
        grid = torch.tensor([1, h // cfg.patch_size, w // cfg.patch_size], dtype=torch.long)
        return ProcessedImage(torch.from_numpy(patches), grid, int(grid.prod()) // cfg.merge_size**2)

    # ---- videos -----------------------------------------------------------------------------
    def process_video(self, frames: Sequence[Image.Image], fps: float) -> ProcessedVideo:
        """All decoded frames of a video at `fps` -> sampled, resized, patchified video."""
        indices = sample_frame_indices(len(frames), fps, self.cfg)
        return self.process_sampled_video([frames[i] for i in indices], indices, fps)

    def process_sampled_video(
        self, frames: Sequence[Image.Image], frame_indices: Sequence[int], fps: float
    ) -> ProcessedVideo:
        """Frames (PIL images or encoded bytes) already picked by `sample_frame_indices`; their
        indices give the timestamps."""
        if len(frames) == 0 or len(frames) != len(frame_indices):
            raise BadVideoError(f"{len(frames)} frames for {len(frame_indices)} indices")
        if not fps > 0:
            raise BadVideoError(f"video fps must be positive, got {fps}")
        cfg = self.cfg
        frames, frame_indices = list(frames), list(frame_indices)
        if pad := -len(frames) % cfg.temporal_patch_size:
            frames += frames[-1:] * pad
            frame_indices += frame_indices[-1:] * pad
        rgb = [_read_source(f) for f in frames]
        h, w = smart_resize(
            len(rgb), rgb[0].height, rgb[0].width, cfg.temporal_patch_size, cfg.factor,
            cfg.video_min_pixels, cfg.video_max_pixels, cfg.max_aspect_ratio,
        )
        # All frames go to the first frame's target size: a stray odd-sized frame cannot break the stack.
        pixels = np.stack([np.asarray(self._resize(f, h, w)) for f in rgb])  # (F, h, w, 3)
        patches = self._patchify(pixels, frames_per_patch=cfg.temporal_patch_size)
        grid = torch.tensor(
            [len(rgb) // cfg.temporal_patch_size, h // cfg.patch_size, w // cfg.patch_size], dtype=torch.long
        )
        # Glm4vProcessor: timestamps[::2] of frame_index / fps, written as int(seconds).
        timestamps = [int(i / fps) for i in frame_indices[:: cfg.temporal_patch_size]]
        return ProcessedVideo(torch.from_numpy(patches), grid, timestamps)

    # ---- internals --------------------------------------------------------------------------
    @staticmethod
    def _resize(img: Image.Image, height: int, width: int) -> Image.Image:
        if img.size == (width, height):
            return img  # PIL's resize to the same size is an exact copy
        return img.resize((width, height), resample=Image.Resampling.BICUBIC)

    def _patchify(self, frames: np.ndarray, frames_per_patch: int) -> np.ndarray:
        """(F, H, W, 3) uint8 -> (F/k * H/p * W/p, 3*tp*p*p) float32, normalized.

        Rows in the reference's order (t, h-block, w-block, merge row, merge col); each row is
        (channel, temporal, patch row, patch col). An image (k=1) fills every temporal slot with
        its one frame, exactly as the reference's broadcast does.
        """
        cfg = self.cfg
        p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
        k = frames_per_patch
        f, height, width, c = frames.shape
        gt, gh, gw = f // k, height // p, width // p
        x = frames.reshape(gt, k, gh // m, m, p, gw // m, m, p, c)
        x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)  # (t, H/m, W/m, m, m, C, k, p, p)
        x = np.ascontiguousarray(x).reshape(gt * gh * gw, c, k, p * p)  # uint8: a cheap copy
        out = np.empty((gt * gh * gw, c, tp, p * p), dtype=np.float32)
        for ch in range(c):
            np.take(self._lut[ch], x[:, ch], out=out[:, ch, :k], mode="clip")
        if k < tp:
            out[:, :, k:] = out[:, :, :1]
        return out.reshape(gt * gh * gw, c * tp * p * p)


# ---- prompt expansion -----------------------------------------------------------------------
class SpecialIds(Protocol):
    """Any object with these ids, e.g. `data_pipelines.tokenizer.SpecialTokens`."""

    image_start: int
    image_end: int
    video_start: int
    video_end: int
    image: int
    video: int


def image_token_ids(n_tokens: int, special: SpecialIds) -> list[int]:
    """`<|begin_of_image|>` + `<|image|>` * n + `<|end_of_image|>` (mm_token_type 1 on the
    `<|image|>` copies only, 0 on the markers, as `Glm4vProcessor.create_mm_token_type_ids`)."""
    return [special.image_start, *([special.image] * n_tokens), special.image_end]


def video_token_ids(
    grid_thw: Sequence[int] | torch.Tensor,
    timestamps: Sequence[int],
    special: SpecialIds,
    tokenizer: Any,
    merge_size: int = 2,
) -> tuple[list[int], list[int]]:
    """Token ids and mm_token_type_ids of one video, token for token as `Glm4vProcessor` builds
    `<|begin_of_video|>` + per frame pair (`<|begin_of_image|><|image|>*N<|end_of_image|>{sec}`)
    + `<|end_of_video|>`. Types: 2 on the frames' `<|image|>` tokens, 0 everywhere else.

    Special tokens on both sides of each timestamp split the text, so tokenizing it alone gives
    the same tokens as tokenizing the whole expanded prompt.
    """
    t, h, w = (int(v) for v in grid_thw)
    if len(timestamps) != t:
        raise ValueError(f"{len(timestamps)} timestamps for {t} temporal patches")
    per_frame = h * w // merge_size**2
    stamps = tokenizer([str(int(s)) for s in timestamps], add_special_tokens=False)["input_ids"]
    ids, types = [special.video_start], [0]
    for stamp in stamps:
        ids += [special.image_start, *([special.image] * per_frame), special.image_end, *stamp]
        types += [0, *([2] * per_frame), 0, *([0] * len(stamp))]
    ids.append(special.video_end)
    types.append(0)
    return ids, types


# ---- HF processor files ---------------------------------------------------------------------
def save_hf_processor_files(
    out_dir: str | os.PathLike, tokenizer: Any, config: ProcessorConfig = ProcessorConfig()
) -> None:
    """Write what AutoProcessor / vLLM need to load a Glm4v checkpoint, in the released
    GLM-4.1V-9B-Thinking layout: preprocessor_config.json, video_preprocessor_config.json,
    processor_config.json, and the tokenizer with its chat template (chat_template.jinja)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("tokenizer has no chat template; Glm4vProcessor needs one to render images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = {
        "do_resize": True,
        "resample": int(Image.Resampling.BICUBIC),
        "do_rescale": True,
        "rescale_factor": config.rescale_factor,
        "do_normalize": True,
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
        "do_convert_rgb": True,
        "patch_size": config.patch_size,
        "temporal_patch_size": config.temporal_patch_size,
        "merge_size": config.merge_size,
        "processor_class": "Glm4vProcessor",
    }
    image = {
        "size": {"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels},
        **common,
        "image_processor_type": "Glm4vImageProcessor",
    }
    video = {
        "size": {"shortest_edge": config.video_min_pixels, "longest_edge": config.video_max_pixels},
        **common,
        "do_sample_frames": True,
        "fps": config.video_fps,
        "max_duration": config.max_video_seconds,
        "video_processor_type": "Glm4vVideoProcessor",
    }
    for name, content in (
        ("preprocessor_config.json", image),
        ("video_preprocessor_config.json", video),
        ("processor_config.json", {"processor_class": "Glm4vProcessor"}),
    ):
        (out / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(str(out))
