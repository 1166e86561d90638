"""Interleaved documents (JSONL + image and video files) -> webdataset tar shards + `index.json`.

One sample per document: `KEY.json` (the document, images and videos replaced by member
references with their sizes) and `KEY.img000.jpg`, `KEY.img001.png`, ... holding the original
image bytes. A video segment is a file (`{"video": "clips/a.mp4"}`, stored as `KEY.vid000.mp4`,
probed with PyAV: size, frame count, fps) or frames already extracted at a known rate
(`{"video": ["f/0.jpg", "f/1.jpg", ...], "fps": 2}`, stored as `KEY.vid000.f000.jpg`, ...). A video
file's segment may name the part of it the document is about, `"start"` / `"end"` in seconds
(Panda-70M's clips): only that part is decoded, its timestamps from 0. A video path naming a
folder of frames (ShareGPTVideo) is read as its frames in time order at the segment's `fps`.
Bad documents are counted by reason and skipped; see docs/data.md for the schema and policy.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import webdataset as wds
from PIL import Image

from .processor import BadSample, image_size
from . import video
from .video import VIDEO_EXTENSIONS, clip_bounds, frames_fps, probe_video

SCHEMA_VERSION = 1
INDEX_NAME = "index.json"
SHARD_PATTERN = "shard-{:06d}.tar"
_MAX_KEY_CHARS = 64  # USTAR names hold 100 bytes: key + ".img000.jpeg" must fit
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# PIL's format name -> extension, for image files whose name has none.
_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


class SkipDocument(Exception):
    """A document that cannot be written; `reason` is the counter key in `WriteStats.skipped`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class WriteStats:
    written: int = 0
    images: int = 0
    videos: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "samples"}] as in index.json
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def summary(self) -> str:
        media = f"{self.images} images" + (f", {self.videos} videos" if self.videos else "")
        lines = [f"wrote {self.written} documents ({media}) into {len(self.shards)} shards"]
        if self.skipped:
            lines.append(f"skipped {sum(self.skipped.values())} documents:")
            lines += [f"  {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        return "\n".join(lines)


def sample_key(doc_id: str) -> str:
    """A tar-safe key: no dots (webdataset splits key/field at the first dot), bounded length.

    Ids that are already safe are kept; others get a hash suffix so that two ids sanitizing to the
    same text ("a.b", "a/b") still get distinct keys.
    """
    safe = _KEY_UNSAFE.sub("_", doc_id)
    if safe == doc_id and 0 < len(safe) <= _MAX_KEY_CHARS:
        return safe
    digest = hashlib.sha1(doc_id.encode("utf-8")).hexdigest()[:10]
    return f"{safe[:_MAX_KEY_CHARS - 11]}_{digest}"


def _parse_line(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SkipDocument("malformed_json", str(exc)) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not doc["id"]:
        raise SkipDocument("malformed_json", "not an object with a non-empty string id")
    segments = doc.get("segments")
    if not isinstance(segments, list) or not segments:
        raise SkipDocument("no_segments", doc["id"])
    for seg in segments:
        # Exactly one of text / image / video: the reader dispatches on which key is present.
        if not isinstance(seg, dict) or len(seg.keys() & {"text", "image", "video"}) != 1:
            raise SkipDocument("malformed_json", f"{doc['id']}: segment {seg!r:.80} needs one of text, image, video")
        if "video" in seg:
            _check_video_segment(doc["id"], seg)
        elif not isinstance(seg.get("text", seg.get("image")), str):
            raise SkipDocument("malformed_json", f"{doc['id']}: segment value is not a string")
    return doc


def _check_video_segment(doc_id: str, seg: dict[str, Any]) -> None:
    video = seg["video"]
    if isinstance(video, str):  # `start` / `end`: the part of the file the document is about (Panda-70M's clips)
        try:  # `fps`: a folder's frame rate
            clip_bounds(seg.get("start"), seg.get("end"), seg.get("fps"))
        except ValueError as exc:
            raise SkipDocument("malformed_json", f"{doc_id}: {exc}") from exc
        return
    if not isinstance(video, list) or not video or not all(isinstance(f, str) for f in video):
        raise SkipDocument("malformed_json", f"{doc_id}: video is a path or a non-empty list of frame paths")
    if frames_fps(seg.get("fps")) is None:
        raise SkipDocument("bad_video", f"{doc_id}: video frames need a positive fps, got {seg.get('fps')!r}")


def _under_root(image_root: Path, rel: str, kind: str) -> Path:
    path = (image_root.resolve() / rel).resolve()
    if not path.is_relative_to(image_root.resolve()):
        raise SkipDocument(f"bad_{kind}_path", f"{rel} is outside the image root")
    return path


def _media_path(image_root: Path, rel: str, kind: str) -> Path:
    path = _under_root(image_root, rel, kind)
    if not path.is_file():
        raise SkipDocument(f"missing_{kind}", rel)
    return path


def _load_video(image_root: Path, rel: str) -> tuple[bytes, dict[str, Any], str]:
    """Original bytes, probed header (width, height, frames, fps) and extension of a video file."""
    path = _media_path(image_root, rel, "video")
    ext = path.suffix[1:].lower()
    if ext not in VIDEO_EXTENSIONS:
        raise SkipDocument("bad_video", f"{rel}: extension {ext!r} is not one of {VIDEO_EXTENSIONS}")
    if path.stat().st_size > video.MAX_VIDEO_BYTES:
        raise SkipDocument("bad_video", f"{rel}: {path.stat().st_size} bytes > {video.MAX_VIDEO_BYTES}")
    data = path.read_bytes()
    try:
        info = probe_video(data)
    except BadSample as exc:  # undecodable, no frames, no rate, absurd size, ...
        raise SkipDocument("bad_video", f"{rel}: {exc}") from exc
    return data, {"width": info.width, "height": info.height, "frames": info.frames, "fps": info.fps}, ext


def _load_image(image_root: Path, rel: str) -> tuple[bytes, int, int, str]:
    """Original bytes, width, height and lower-case extension of one image file."""
    path = _media_path(image_root, rel, "image")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.verify()  # header/structure check only: the reader decodes and catches the rest
        width, height = image_size(data)  # after EXIF rotation, as the processor will see it
    except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise SkipDocument("bad_image", f"{rel}: {exc}") from exc
    if width <= 0 or height <= 0:
        raise SkipDocument("bad_image", f"{rel}: empty image")
    ext = path.suffix[1:].lower() or _FORMAT_EXT.get(fmt or "", "")
    if not ext:
        raise SkipDocument("bad_image", f"{rel}: unknown format {fmt}")
    return data, width, height, ext


def build_sample(doc: dict[str, Any], image_root: Path) -> dict[str, Any]:
    """One parsed document -> the webdataset sample dict (`__key__`, `json`, `imgNNN.ext`)."""
    key = sample_key(doc["id"])
    sample: dict[str, Any] = {"__key__": key}
    segments = []
    for seg in doc["segments"]:
        if "text" in seg:
            segments.append({"text": seg["text"]})
            continue
        if "video" in seg:
            segments.append(_video_members(seg, f"vid{sum('video' in s for s in segments):03d}", image_root, sample))
            continue
        data, width, height, ext = _load_image(image_root, seg["image"])
        name = f"img{sum('image' in s for s in segments):03d}.{ext}"
        sample[name] = data
        segments.append({"image": name, "width": width, "height": height})
    # Extra top-level fields (source, license, ...) pass through untouched.
    record = {**doc, "segments": segments}
    sample["json"] = json.dumps(record, ensure_ascii=False).encode("utf-8")
    return sample


def _frames_of_folder(seg: dict[str, Any], image_root: Path) -> dict[str, Any]:
    """A segment whose video names a folder of frames (ShareGPTVideo's layout) as the list of its
    frames in time order, cut to `start` / `end` at its `fps`; any other segment as it is."""
    if not isinstance(seg["video"], str):
        return seg
    folder = _under_root(image_root, seg["video"], "video")
    if not folder.is_dir():
        return seg
    start, end, fps = clip_bounds(seg.get("start"), seg.get("end"), seg.get("fps"))
    if fps is None:
        raise SkipDocument("missing_video", f"{seg['video']} is a folder of frames: give its \"fps\"")
    frames = video.frames_in_order(folder)
    window = [frames[i] for i in video.VideoClip(None, start, end).frame_range(len(frames), fps)]
    if not window:
        raise SkipDocument("missing_video", f"{seg['video']}: no frames in [{start}, {end}) s")
    return {"video": [str(p.relative_to(image_root.resolve())) for p in window], "fps": fps}


def _video_members(seg: dict[str, Any], stem: str, image_root: Path, sample: dict[str, Any]) -> dict[str, Any]:
    """Add one video's members to `sample`; its segment as the reader expects it."""
    seg = _frames_of_folder(seg, image_root)
    if isinstance(seg["video"], str):
        data, info, ext = _load_video(image_root, seg["video"])
        sample[f"{stem}.{ext}"] = data
        start, end, _ = clip_bounds(seg.get("start"), seg.get("end"))
        bounds = {"start": start, "end": end} if ("start" in seg or "end" in seg) else {}
        return {"video": f"{stem}.{ext}", **info, **bounds}
    names = []
    for i, rel in enumerate(seg["video"]):
        try:
            data, _, _, ext = _load_image(image_root, rel)
        except SkipDocument as exc:  # a bad frame makes the whole video bad
            raise SkipDocument("bad_video", f"frame {rel}: {exc}") from exc
        names.append(f"{stem}.f{i:03d}.{ext}")
        sample[names[-1]] = data
    return {"video": names, "fps": float(seg["fps"])}


def _documents(input_jsonl: Path, image_root: Path, stats: WriteStats) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    with input_jsonl.open("rb") as f:  # bytes: a bad UTF-8 line must be skipped, not end the loop
        for raw in f:
            if not raw.strip():
                continue
            try:
                doc = _parse_line(raw)
                if sample_key(doc["id"]) in seen:
                    raise SkipDocument("duplicate_id", doc["id"])
                sample = build_sample(doc, image_root)
            except SkipDocument as exc:
                stats.skipped[exc.reason] += 1
                continue
            seen.add(sample["__key__"])
            yield sample


def write_shards(
    input_jsonl: str | Path,
    image_root: str | Path,
    out_dir: str | Path,
    samples_per_shard: int,
    overwrite: bool = False,
) -> WriteStats:
    """Write `out_dir/shard-NNNNNN.tar` (at most `samples_per_shard` documents each) + `index.json`.

    Raises FileNotFoundError for a missing input or image root, FileExistsError when `out_dir`
    already holds shards (unless `overwrite`, which removes them first), ValueError for
    samples_per_shard < 1. Bad documents are skipped and counted in the returned stats.
    """
    input_jsonl, image_root, out_dir = Path(input_jsonl), Path(image_root), Path(out_dir)
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if not input_jsonl.is_file():
        raise FileNotFoundError(f"input JSONL not found: {input_jsonl}")
    if not image_root.is_dir():
        raise FileNotFoundError(f"image root not found: {image_root}")
    out_dir.mkdir(parents=True, exist_ok=True)
    old = sorted(out_dir.glob("shard-*.tar")) + sorted(out_dir.glob(INDEX_NAME))
    if old and not overwrite:
        raise FileExistsError(f"{out_dir} already holds shards ({old[0].name}); pass overwrite")
    for path in old:
        path.unlink()

    stats = WriteStats()
    writer: wds.TarWriter | None = None
    for sample in _documents(input_jsonl, image_root, stats):
        if writer is None or stats.shards[-1]["samples"] == samples_per_shard:
            if writer is not None:
                writer.close()
            name = SHARD_PATTERN.format(len(stats.shards))
            # Fixed mtime and owner: the same input gives byte-identical shards.
            writer = wds.TarWriter(str(out_dir / name), encoder=False, mtime=0.0)
            stats.shards.append({"name": name, "samples": 0})
        writer.write(sample)
        stats.shards[-1]["samples"] += 1
        stats.written += 1
        stats.images += sum(name.startswith("img") for name in sample)
        stats.videos += len({name.split(".", 1)[0] for name in sample if name.startswith("vid")})
    if writer is not None:
        writer.close()

    index = {
        "schema_version": SCHEMA_VERSION,
        "total_samples": stats.written,
        "shards": stats.shards,
        "skipped": dict(sorted(stats.skipped.items())),
    }
    tmp = out_dir / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    tmp.replace(out_dir / INDEX_NAME)  # written last and atomically: its presence means complete
    return stats


def read_index(shard_dir: str | Path) -> dict[str, Any]:
    """The parsed `index.json` of a shard directory (checks the schema version)."""
    index = json.loads((Path(shard_dir) / INDEX_NAME).read_text())
    if index.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{shard_dir}: unsupported schema_version {index.get('schema_version')}")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.shards")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="JSONL documents + image root -> webdataset shards")
    w.add_argument("--input", required=True, type=Path, help="JSONL of {id, segments}")
    w.add_argument("--image-root", required=True, type=Path, help="directory image paths are relative to")
    w.add_argument("--out", required=True, type=Path, help="output directory for shard-*.tar and index.json")
    w.add_argument("--samples-per-shard", type=int, default=1000)
    w.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    args = parser.parse_args(argv)
    try:
        stats = write_shards(args.input, args.image_root, args.out, args.samples_per_shard, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(stats.summary())
    return 0 if stats.written else 1


if __name__ == "__main__":
    sys.exit(main())
