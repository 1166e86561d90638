"""Video files -> the frames the processor keeps, decoded with PyAV (FFmpeg's libraries).

GLM-4.1V samples videos at 2 fps (at most 300 s; 600 frames spread evenly beyond that):
`processor.sample_frame_indices` picks the frame indices from the stream's frame count and rate,
and only those frames are kept while decoding, each shrunk at once to the size smart_resize gives
the whole clip, so memory stays at the processor's pixel budget whatever the file's length.
The processor then pairs the frames through the 3D patch conv and the timestamps follow.

Every way a file can be bad becomes `BadVideoError` (counted as `bad_video` and skipped by the
reader and the shard writer): not a container FFmpeg can open, no video stream, no frames, no
frame rate, frames larger than `MAX_FRAME_PIXELS`, fewer decodable frames than the stream claims.
PyAV is imported on first use, so image-only pipelines do not need it.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image

from .processor import BadVideoError, ProcessedVideo, VisionProcessor, sample_frame_indices, smart_resize

# Frames above this are refused, not decoded: 8K UHD (7680 x 4320) passes, a corrupt or hostile
# header claiming 100k x 100k does not (PIL's decompression-bomb limit is of the same order).
MAX_FRAME_PIXELS = 7680 * 4320
# Files above this are refused by the shard writer before reading (one sample is held in memory
# while a shard is written and read): 2 GiB is over an hour of 1080p at usual bitrates, and the
# model keeps at most 600 frames of any video.
MAX_VIDEO_BYTES = 2 * 1024**3
VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "avi", "mov", "m4v", "mpg", "mpeg", "ts", "gif")
# Extensions that name a video for sure: a .gif is an image unless a record says otherwise
VIDEO_FILE_EXTENSIONS = tuple(ext for ext in VIDEO_EXTENSIONS if ext != "gif")


@dataclass(frozen=True)
class VideoClip:
    """A video cut to [start, end) seconds (MVBench's `start` / `end`: the question is about that
    part), or a folder of frames extracted at `fps` (MVBench's TVQA frames at 3 fps), cut the same
    way. The clip's timestamps start at 0."""

    source: Any  # a file's path or bytes, or a folder's path
    start: float = 0.0
    end: float | None = None  # None: to the end
    fps: float | None = None  # a folder's frame rate (a file's is its stream's)

    def frame_range(self, frames: int, fps: float) -> range:
        """The indices of the frames (of `frames` at `fps`) inside the clip."""
        first = min(frames, int(self.start * fps))
        last = frames if self.end is None else min(frames, math.ceil(self.end * fps))
        return range(first, last)


FRAME_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")  # the frames a folder of frames holds


def frames_in_order(folder: Path) -> list[Path]:
    """A folder's frames in time order: frame 2 before frame 10 whether or not the names are
    zero-padded; hidden files (macOS' ._1.jpg) left out."""
    def number_order(path: Path) -> list:
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name)]

    return sorted((p for p in folder.iterdir() if p.suffix[1:].lower() in FRAME_EXTENSIONS
                   and not p.name.startswith(".")), key=number_order)


def clip_bounds(start: Any = None, end: Any = None, fps: Any = None) -> tuple[float, float | None, float | None]:
    """(start, end, fps) of a clip or frame list, checked once for every reader (prompt sets, chat
    records, shards): numbers or their text (TSV cells); None, "" or a float column's NaN is not given
    (start: 0). ValueError unless 0 <= start < end < inf and 0 < fps < inf."""
    def number(value: Any) -> float | None:
        if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and value != value):
            return None
        if isinstance(value, bool):
            return math.nan
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan

    first, last, rate = number(start), number(end), number(fps)
    first = 0.0 if first is None else first
    if not (0 <= first < math.inf) or (last is not None and not first < last < math.inf) or (
            rate is not None and not 0 < rate < math.inf):
        raise ValueError(f"a video part needs 0 <= start < end (seconds) and 0 < fps, finite; got start={start!r} "
                         f"end={end!r} fps={fps!r}")
    return first, last, rate


def frames_fps(value: Any) -> float | None:
    """The frame rate a list or folder of frames needs: `value` as a finite number > 0, None when it
    is missing or is not one."""
    try:
        return clip_bounds(fps=value)[2]
    except ValueError:
        return None


def _av() -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("video files need PyAV: pip install 'av>=14,<19' (its wheels ship FFmpeg)") from exc
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the stream's header says (the shard writer records it next to the member)."""

    width: int
    height: int
    frames: int  # decoded frame count (counted when the container does not say)
    fps: float


def _open(data: bytes):
    av = _av()
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise BadVideoError(f"undecodable video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise BadVideoError("no video stream")
    return container


def _frame_count(data: bytes, stream_frames: int) -> int:
    """The header's frame count, or a decoding pass that counts them (some containers omit it)."""
    if stream_frames > 0:
        return stream_frames
    av = _av()
    container = _open(data)
    try:
        return sum(1 for _ in container.decode(video=0))
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise BadVideoError(f"undecodable video ({exc})") from exc
    finally:
        container.close()


def probe_video(data: bytes) -> VideoInfo:
    """Size, frame count and rate of the first video stream; `BadVideoError` if unusable."""
    container = _open(data)
    try:
        stream = container.streams.video[0]
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if isinstance(rate, Fraction | int | float) and rate else 0.0
        declared = int(stream.frames or 0)
    finally:
        container.close()
    if width <= 0 or height <= 0:
        raise BadVideoError(f"video frames of {width}x{height}")
    if width * height > MAX_FRAME_PIXELS:
        raise BadVideoError(f"video frames of {width}x{height} exceed {MAX_FRAME_PIXELS} pixels")
    if not fps > 0:
        raise BadVideoError("video has no frame rate")
    frames = _frame_count(data, declared)
    if frames <= 0:
        raise BadVideoError("video has no frames")
    return VideoInfo(width, height, frames, fps)


def decode_video(data: bytes, processor: VisionProcessor, clip: VideoClip | None = None) -> ProcessedVideo:
    """A video file's bytes -> the processed video (2 fps sampling, frame pairs, timestamps); with
    `clip`, only its part of the video (timestamps from the clip's start)."""
    av = _av()
    info = probe_video(data)
    cfg = processor.cfg
    window = clip.frame_range(info.frames, info.fps) if clip else range(info.frames)
    if not window:
        raise BadVideoError(f"the clip [{clip.start}, {clip.end}) s holds no frame of the "
                            f"{info.frames / info.fps:.1f} s video")
    in_clip = sample_frame_indices(len(window), info.fps, cfg)
    indices = [window.start + i for i in in_clip]
    wanted = sorted(set(indices))
    padded = len(indices) + (-len(indices) % cfg.temporal_patch_size)
    height, width = smart_resize(padded, info.height, info.width, cfg.temporal_patch_size, cfg.factor,
                                 cfg.video_min_pixels, cfg.video_max_pixels, cfg.max_aspect_ratio)
    kept: dict[int, Image.Image] = {}
    container = _open(data)
    try:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                image = frame.to_image()  # RGB
                # The processor would resize to this same size; doing it here bounds memory.
                kept[i] = image if image.size == (width, height) else image.resize(
                    (width, height), resample=Image.Resampling.BICUBIC)
                if len(kept) == len(wanted):
                    break
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise BadVideoError(f"undecodable video ({exc})") from exc
    finally:
        container.close()
    if len(kept) < len(wanted):
        raise BadVideoError(f"video decodes to fewer frames than its {info.frames} declared")
    return processor.process_sampled_video([kept[i] for i in indices], in_clip, info.fps)
