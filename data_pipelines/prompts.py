"""RL prompt records, their token encoding, rollout documents and the difficulty sidecar.

A prompt record (one JSONL line, or one row of an HF dataset):

    {"id": "geo-17", "domain": "math", "question": "What is the area?", "images": ["img/17.png"],
     "answer": "12", "difficulty": "hard"}

`messages` (chat turns, image items as `{"type": "image"}`) may replace `question`; fields other
than the known ones (e.g. `options` for multiple choice) travel to the verifier as `info`.
`difficulty` is an optional human label: a pass rate in [0, 1] or a tier name.

The difficulty sidecar (`<data>.difficulty.jsonl`, or `difficulty.jsonl` inside a dataset
directory) holds offline pass rates keyed by id: one JSON line per graded prompt,
`{"id", "passes", "samples", "pass_rate", "grader", "human"?}` (`pass_rate` merges the model's
passes with the record's human label, which `human` carries); a later line for the same id replaces an earlier one,
so grading appends as it goes and a killed grading run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from .chat import DEFAULT_VIDEO_FPS, ChatRenderer, media_payload
from .chat_formats import PLACEHOLDER, PLACEHOLDERS, image_mark_is_video, placeholder_items
from .processor import BadSample
from .prompt_columns import PromptLayout, normalize_row, with_unique_ids
from .records import (DataSourceError, RecordsNotFound, is_pattern, is_saved_dataset, load_table, pattern_stem,
                      resolve_records, rows_in, undecoded_videos)
from .video import VideoClip, clip_bounds
from .vlmeval_tsv import read_tsv_rows
from .document import Document, Visual

NUMBERED_IMAGE = re.compile(r"<image ?(\d+)>")  # MMMU's "<image 1>", MathVision's "<image1>"
KNOWN_FIELDS = ("id", "domain", "messages", "question", "images", "videos", "answer", "difficulty")


class PromptRecordError(ValueError):
    """A record that cannot be used; `reason` is the skip-counter key."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass
class PromptRecord:
    id: str
    domain: str
    messages: list[dict]
    answer: Any
    images: list[Any] = field(default_factory=list)  # paths (relative to the image root), bytes or PIL images
    # each (frames, fps) — frames as paths / bytes / PIL images — or (a video file, None)
    videos: list[tuple[Any, float | None]] = field(default_factory=list)
    difficulty: float | str | None = None  # human label: pass rate or tier name
    info: dict[str, Any] = field(default_factory=dict)  # extra fields, passed to the verifier
    # Where its relative media paths resolve unless data.image_root says: the folder of its file
    # (of a save_to_disk directory: the folder holding it)
    root: str | None = None

    def user_text(self) -> str:
        """The text of every user turn (images and videos left out)."""
        parts: list[str] = []
        for message in self.messages:
            content = message.get("content") if message.get("role") == "user" else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [i["text"] for i in content if isinstance(i, dict) and isinstance(i.get("text"), str)]
        return "".join(parts)


def _difficulty(value: Any) -> Any:
    """A pass-rate cell as a number (TSV cells are text: "0.75"), an empty one (NaN, "") as None;
    tier names and anything else as they are."""
    if isinstance(value, str):
        try:
            value = float(value) if value.strip() else None
        except ValueError:
            return value
    return None if isinstance(value, float) and math.isnan(value) else value


def _count_items(messages: list[dict], kind: str) -> int:
    n = 0
    for msg in messages:
        if isinstance(msg.get("content"), list):
            n += sum(1 for item in msg["content"] if isinstance(item, dict) and item.get("type") == kind)
    return n


def parse_video(raw: Any, rid: str) -> tuple[Any, float | None]:
    """A record's video: a file (path or bytes, or HF `Video()`'s {bytes, path}; decoded at 2 fps), or
    `{"frames": [...], "fps": F}`, or `{"frames": [...], "timestamps": [seconds, ...]}` (evenly
    spaced; fps from their spacing), or a clip, `{"video": file or folder of frames, "start": s,
    "end": e, "fps": a folder's frame rate}` (each key but `video` optional)."""
    raw = media_payload(raw)
    if isinstance(raw, (str, bytes)) and raw:
        return raw, None
    if isinstance(raw, dict) and "video" in raw:
        clip = _parse_clip(raw, rid)
        return clip, clip.fps
    frames = raw.get("frames") if isinstance(raw, dict) else None
    if not isinstance(frames, list) or not frames:
        raise PromptRecordError("malformed_record", f"{rid}: a video is a file or {{frames, fps | timestamps}}")
    fps, stamps = raw.get("fps"), raw.get("timestamps")
    if stamps is not None:
        if (not isinstance(stamps, list) or len(stamps) != len(frames)
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in stamps)
                or any(b <= a for a, b in zip(stamps, stamps[1:]))):
            raise PromptRecordError("malformed_record", f"{rid}: video timestamps must increase, one per frame")
        fps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else DEFAULT_VIDEO_FPS
    if fps is not None and not isinstance(fps, (int, float)):
        raise PromptRecordError("malformed_record", f"{rid}: video fps must be a positive number")
    try:
        fps = clip_bounds(fps=fps)[2]
    except ValueError as exc:
        raise PromptRecordError("malformed_record", f"{rid}: {exc}") from exc
    return frames, DEFAULT_VIDEO_FPS if fps is None else fps


def _parse_clip(raw: dict, rid: str) -> VideoClip:
    source = media_payload(raw["video"])
    if not isinstance(source, (str, bytes)) or not source:
        raise PromptRecordError("malformed_record", f"{rid}: a clip's video is a file or a folder of frames")
    try:  # TSV cells are text; a float column's null (NaN) is not given
        start, end, fps = clip_bounds(raw.get("start"), raw.get("end"), raw.get("fps"))
    except ValueError as exc:
        raise PromptRecordError("malformed_record", f"{rid}: {exc}") from exc
    return VideoClip(source, start, end, fps)


def parse_record(raw: dict[str, Any]) -> PromptRecord:
    """Validate one raw record; raise PromptRecordError with a counter reason."""
    if not isinstance(raw, dict):
        raise PromptRecordError("malformed_record", "not an object")
    rid = raw.get("id")
    if not isinstance(rid, str) or not rid:
        raise PromptRecordError("malformed_record", "id must be a non-empty string")
    domain = raw.get("domain")
    if domain is None:  # common in public sets: data.domain names the domain of rows without one
        raise PromptRecordError("missing_domain", f"{rid}: no domain (set data.domain for rows without one)")
    if not isinstance(domain, str) or not domain:
        raise PromptRecordError("malformed_record", f"{rid}: domain must be a non-empty string")
    answer = raw.get("answer")
    if answer is None or isinstance(answer, str) and not answer.strip():  # MathVista's test: golds withheld as ""
        raise PromptRecordError("missing_answer", f"{rid}: no answer")
    images = raw.get("images") or []
    if not isinstance(images, list):
        raise PromptRecordError("malformed_record", f"{rid}: images must be a list")
    videos = raw.get("videos") or []
    if not isinstance(videos, list):
        raise PromptRecordError("malformed_record", f"{rid}: videos must be a list")
    videos = [parse_video(v, rid) for v in videos]
    if images and videos:  # transformers' Glm4v takes one kind per forward (its placeholders share an id)
        raise PromptRecordError("image_and_video", f"{rid}: a prompt holds images or videos, not both")
    messages, question = raw.get("messages"), raw.get("question")
    if (messages is None) == (question is None):
        raise PromptRecordError("malformed_record", f"{rid}: give exactly one of messages or question")
    if question is not None:
        content, order = _question_content(rid, question, len(images), len(videos))
        messages, images = [{"role": "user", "content": content}], [images[i] for i in order]
    else:
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant", "observation") for m in messages
        ):
            raise PromptRecordError("malformed_record", f"{rid}: messages must be a list of chat turns")
        messages = _placeholder_turns(messages, len(images), len(videos))
        if _count_items(messages, "image") != len(images) or _count_items(messages, "video") != len(videos):
            raise PromptRecordError("image_count_mismatch",
                                    f"{rid}: image / video items in messages != images / videos")
    difficulty = _difficulty(raw.get("difficulty"))
    if difficulty is not None and not isinstance(difficulty, (int, float, str)):
        raise PromptRecordError("malformed_record", f"{rid}: difficulty must be a number or a tier name")
    info = {k: v for k, v in raw.items() if k not in KNOWN_FIELDS}
    return PromptRecord(rid, domain, messages, raw["answer"], list(images), videos, difficulty, info)


def _question_content(rid: str, question: Any, images: int, videos: int) -> tuple[list[dict], list[int]]:
    """The user turn of a `question`, and the order its images take in it. Each `<image>`
    placeholder is where the next image goes (Geometry3K's "<image>Find x."), each `<video>` the
    next video (LLaVA-Video-178K marks its video with `<image>`: with videos and no image, that is
    the video's place); references that number every image once (MMMU's "<image 1>",
    MathVision's "<image1>") are where that image goes; otherwise the media come first. Only the
    question is on the image (MathVerse's "Vision Only" rows) when it is empty and the prompt has
    media."""
    if not isinstance(question, str):
        raise PromptRecordError("malformed_record", f"{rid}: question must be text")
    if not (question.strip() or images or videos):
        raise PromptRecordError("empty_question", f"{rid}: an empty question needs an image or a video")
    in_order = list(range(images))
    if PLACEHOLDERS.search(question):
        content = placeholder_items(question, image_mark_is_video([question], images, videos))
        placed = tuple(_count_items([{"content": content}], kind) for kind in ("image", "video"))
        if placed != (images, videos):
            raise PromptRecordError("image_count_mismatch", f"{rid}: {placed[0]} image and {placed[1]} video "
                                                            f"placeholders in the question, {images} image(s), "
                                                            f"{videos} video(s)")
        return content, in_order
    numbers = [int(n) - 1 for n in NUMBERED_IMAGE.findall(question)]
    if numbers and not (images or videos):  # MMMU's image_1 .. image_7 not read: say so, not text-only
        raise PromptRecordError("image_count_mismatch", f"{rid}: the question refers to <image {numbers[0] + 1}>, "
                                                        "the row has no image (data.columns.images names its columns)")
    if images and sorted(numbers) == in_order:
        return placeholder_items(NUMBERED_IMAGE.sub(PLACEHOLDER, question)), numbers
    content = [{"type": "image"} for _ in range(images)] + [{"type": "video"} for _ in range(videos)]
    return content + ([{"type": "text", "text": question}] if question.strip() else []), in_order


def _placeholder_turns(messages: list[dict], images: int, videos: int) -> list[dict]:
    """verl's multimodal layout: turns of text whose `<image>` (or `<video>`) marks where the
    record's media go, as content items. Text-only records, and turns that already hold media
    items, stay as they are."""
    if not (images or videos) or _count_items(messages, "image") or _count_items(messages, "video"):
        return messages
    texts = [m["content"] for m in messages if isinstance(m.get("content"), str)]
    image_is_video = image_mark_is_video(texts, images, videos)
    return [{**m, "content": placeholder_items(m["content"], image_is_video)}
            if isinstance(m.get("content"), str) and PLACEHOLDERS.search(m["content"]) else m for m in messages]


def _raw_records(path: Path) -> tuple[list[Any], list[str], Counter]:
    """(rows, the folder each row's relative media paths resolve in, skip counts) of JSONL lines,
    VLMEvalKit's TSV rows, or the rows of an HF dataset: a `save_to_disk` directory, .parquet or
    .json files, or a downloaded hub folder or glob of them (`data/train-*.parquet`: one split;
    records.resolve_records refuses a folder holding several)."""
    if path.is_file() and path.suffix not in (".jsonl", ".parquet", ".json", ".tsv"):
        raise ValueError(f"prompt data {path}: expected .jsonl, .parquet, .json, .tsv, a folder of them, a glob "
                         "or a save_to_disk directory")
    if path.is_file() and path.suffix == ".tsv":
        rows = read_tsv_rows(path)
        return rows, [_folder(path)] * len(rows), Counter()
    fmt, files = resolve_records(str(path))
    if fmt == "jsonl":
        rows, roots, bad = [], [], Counter()
        for file in files:
            before = len(rows)
            rows += _jsonl_rows(file, bad)
            roots += [_folder(file)] * (len(rows) - before)
        return rows, roots, bad
    if fmt == "disk":
        import datasets  # only for HF datasets: it is slow to import

        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            raise ValueError(f"prompt data {path} holds several splits ({list(dataset)}); point at one")
        rows = list(undecoded_videos(dataset))
        return rows, [_folder(path)] * len(rows), Counter()
    rows = list(undecoded_videos(load_table(fmt, files)))
    folders = [_folder(f) for f in files]
    if len(set(folders)) == 1:
        return rows, folders[:1] * len(rows), Counter()
    counts = [rows_in(f, fmt) for f in files]  # files in several folders: each row resolves in its own
    if sum(counts) != len(rows):
        raise ValueError(f"prompt data {path}: its {fmt} files hold {sum(counts)} rows read one by one and "
                         f"{len(rows)} read together; point at one folder's files or give data.image_root")
    return rows, [folder for folder, n in zip(folders, counts) for _ in range(n)], Counter()


def _folder(path: Path) -> str:
    """The folder a file's relative media paths resolve in: where the file is named, not where a
    symlink points (the hub cache's snapshots/<rev>/x.jsonl links to blobs/<sha>)."""
    return os.path.dirname(os.path.abspath(path))


def _jsonl_rows(path: Path, bad: Counter) -> list[Any]:
    rows = []
    for line in path.read_bytes().splitlines():  # bytes: one line of bad UTF-8 is one skip, not a crash
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            bad["malformed_json"] += 1
    return rows


def load_prompt_records(path: str | Path, layout: PromptLayout | None = None) -> tuple[list[PromptRecord], Counter]:
    """All usable records of a prompt file, and counts of the skipped ones by reason. `layout`:
    where the fields are (common HF column names by default) and the multiple-choice conversion."""
    path = Path(path)
    if not path.exists() and not is_pattern(path):
        raise RecordsNotFound(f"prompt data not found: {path}")
    layout = layout if layout is not None else PromptLayout()
    rows, roots, skipped = _raw_records(path)
    unique = with_unique_ids(rows, layout)
    if unique is not layout:
        logging.getLogger(__name__).info("%s: ids read from the column %r (the first id column repeats)",
                                         path, unique.columns.id)
        layout = unique
    records, seen = [], set()
    for row, raw in enumerate(rows):
        try:
            record = parse_record(normalize_row(raw, row, layout))
        except PromptRecordError as err:
            skipped[err.reason] += 1
            continue
        if record.id in seen:
            skipped["duplicate_id"] += 1
            continue
        seen.add(record.id)
        record.root = roots[row]
        records.append(record)
    if skipped.get("duplicate_id"):  # MME pairs a yes and a no question under one question_id
        logging.getLogger(__name__).warning(
            "%s: %d rows skipped, their id already taken by an earlier row; if they are other prompts, "
            "data.columns.id can join columns into one id (data.columns.id='question_id,answer')",
            path, skipped["duplicate_id"])
    return records, skipped


def require_records(path: str | Path, records: list[PromptRecord], skipped: Counter) -> None:
    """A prompt set with no usable record is a recipe error: stop at load, saying why."""
    if not records:
        hint = (" (set data.domain=<verifier> for rows without a domain)" if skipped.get("missing_domain") else
                " (data.columns.answer=<column> names the answer's column)" if skipped.get("missing_answer") else "")
        raise DataSourceError(f"prompt set {path}: no usable record; skipped: {dict(skipped)}{hint}")


# ---- encoding ----------------------------------------------------------------------------------
@dataclass
class EncodedPrompt:
    """A prompt record rendered by the one renderer (chat.ChatRenderer): what the trainer sees (a
    Document, images expanded, no targets) and what vLLM takes (one placeholder per image, the
    images as multi-modal data)."""

    record: PromptRecord
    document: Document
    raw_ids: list[int]  # chat-template ids with one <|image|> per image (vLLM expands itself)
    image_sources: list[Any]  # each image as read (bytes / PIL), for engines with their own processor

    def __len__(self) -> int:
        return len(self.document)

    @property
    def input_ids(self) -> list[int]:  # expanded: <|begin_of_image|> <|image|>*N <|end_of_image|>
        return self.document.input_ids.tolist()

    @property
    def mm_token_type_ids(self) -> list[int]:
        return self.document.mm_token_type_ids.tolist()

    @property
    def visuals(self) -> list[Visual]:
        return self.document.images

    @property
    def pixel_values(self) -> torch.Tensor | None:
        return torch.cat([v.pixel_values for v in self.visuals]) if self.visuals else None

    @property
    def image_grid_thw(self) -> torch.Tensor | None:
        return torch.stack([v.grid_thw for v in self.visuals]) if self.visuals else None


def open_image(source: Any) -> Image.Image:
    """An RGB PIL image from a path, bytes or PIL image (EXIF orientation applied), for engines
    that run their own image processing (vLLM)."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, (bytes, bytearray)):
        import io

        source = io.BytesIO(source)
    with Image.open(source) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def image_size(source: Any) -> tuple[int, int]:
    """(width, height) of an image as the processor got it (PIL or bytes), EXIF orientation applied
    (a quarter turn swaps them), from the file's header: nothing decoded."""
    if isinstance(source, Image.Image):
        return source.size
    import io

    with Image.open(io.BytesIO(source)) as img:
        width, height = img.size
        turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF Orientation
    return (height, width) if turned else (width, height)


def encode_prompt_record(record: PromptRecord, renderer: ChatRenderer, image_root: str | Path | None = None,
                         system_prompt: str | None = None, max_tokens: int | None = None) -> EncodedPrompt:
    """Render the chat template with a generation prompt and process the images (relative paths
    under `image_root`, data.image_root, else the record's own folder). Raises the
    renderer's BadSample (missing or bad image, placeholders that do not match) or
    PromptRecordError (`prompt_too_long`: over `max_tokens`) — the caller counts and skips."""
    messages = record.messages
    if system_prompt and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    rendered = renderer.render_prompt(messages, record.images, record.videos, root=image_root or record.root,
                                      key=record.id)
    if max_tokens is not None and len(rendered.document) > max_tokens:
        raise PromptRecordError("prompt_too_long", f"{record.id}: {len(rendered.document)} tokens")
    if record.info.get("box_units") == "pixels" and rendered.images:
        record.info["image_size"] = list(image_size(rendered.images[0]))  # pixel golds scale by it
    return EncodedPrompt(record, rendered.document, rendered.raw_ids, rendered.images)


def encode_records(records: list[PromptRecord], slots: Iterable[int], renderer: ChatRenderer,
                   image_root: str | Path | None = None, system_prompt: str | None = None,
                   max_tokens: int | None = None, takes_videos: bool = True
                   ) -> tuple[dict[int, EncodedPrompt], list[tuple[int, str]]]:
    """The records at `slots` encoded (by slot), and the (slot, reason) of those that cannot be used:
    what RL, grading and evaluation count and skip (`takes_videos`: the rollout engine's)."""
    prompts, failed = {}, []
    for slot in slots:
        if records[slot].videos and not takes_videos:
            failed.append((slot, "video_unsupported"))
            continue
        try:
            prompts[slot] = encode_prompt_record(records[slot], renderer, image_root, system_prompt, max_tokens)
        except (BadSample, PromptRecordError) as err:
            failed.append((slot, err.reason))
    return prompts, failed


def rollout_document(prompt: EncodedPrompt, response_ids: list[int], response_train: list[bool],
                     key: str, token_weight: float = 1.0) -> Document:
    """Prompt (never trained) + response tokens (trained where `response_train`: tokens the
    engine inserted, such as a forced `</think><answer>`, are not the policy's samples)."""
    if len(response_ids) != len(response_train):
        raise ValueError("response_ids and response_train differ in length")
    doc, n = prompt.document, len(response_ids)
    return Document(
        key=key,
        input_ids=torch.cat([doc.input_ids, torch.tensor(response_ids, dtype=torch.long)]),
        mm_token_type_ids=torch.cat([doc.mm_token_type_ids, torch.zeros(n, dtype=torch.long)]),
        loss_mask=torch.cat([torch.zeros(len(doc), dtype=torch.bool), torch.tensor(response_train, dtype=torch.bool)]),
        images=doc.images,
        videos=doc.videos,
        atomic_spans=doc.atomic_spans,
        token_weight=token_weight,
    )


# ---- difficulty sidecar -----------------------------------------------------------------------
@dataclass
class DifficultyEntry:
    id: str
    passes: int
    samples: int
    grader: str = ""  # which model/checkpoint graded it
    human: float | str | None = None  # the record's human label, carried along
    pass_rate: float | None = None  # merged estimate (model grades + human label); None: passes/samples

    def __post_init__(self) -> None:
        if self.pass_rate is None and self.samples:
            self.pass_rate = self.passes / self.samples


def sidecar_path(data_path: str | Path) -> Path:
    """Where a prompt set's grades go: `train.difficulty.jsonl` beside `train.jsonl` (beside
    `data/train-*.parquet` for a glob), inside a save_to_disk directory, beside any other folder
    (inside, it would be read as the folder's records)."""
    data_path = Path(data_path)
    if data_path.is_dir():
        return (data_path / "difficulty.jsonl" if is_saved_dataset(data_path)
                else data_path.with_name(data_path.name + ".difficulty.jsonl"))
    folder, name = Path(os.path.abspath(data_path.parent)), data_path.name
    if is_pattern(data_path):
        while is_pattern(str(folder)):  # MMMU/*/validation-*.parquet: MMMU/validation.difficulty.jsonl
            folder = folder.parent
        name = pattern_stem(name) or folder.name
        return (folder if name != folder.name else folder.parent) / f"{name}.difficulty.jsonl"
    return data_path.with_name(name.rsplit(".", 1)[0] + ".difficulty.jsonl")


def read_sidecar(path: str | Path) -> dict[str, DifficultyEntry]:
    """Entries by id (the last line for an id wins); a missing file is an empty table. A torn last
    line (a grading run killed mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return {}
    entries: dict[str, DifficultyEntry] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            raw = json.loads(line)
            entry = DifficultyEntry(str(raw["id"]), int(raw["passes"]), int(raw["samples"]), str(raw.get("grader", "")),
                                    raw.get("human"), raw.get("pass_rate"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if 0 <= entry.passes <= entry.samples:
            entries[entry.id] = entry
    return entries


def _line(entry: DifficultyEntry) -> str:
    line = {"id": entry.id, "passes": entry.passes, "samples": entry.samples,
            "pass_rate": None if entry.pass_rate is None else round(entry.pass_rate, 6), "grader": entry.grader}
    if entry.human is not None:
        line["human"] = entry.human
    return json.dumps(line) + "\n"


def append_sidecar(path: str | Path, entries: list[DifficultyEntry]) -> None:
    """Append entries and flush to disk (grading calls it after every chunk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(_line(e) for e in entries))
        f.flush()
        os.fsync(f.fileno())


def write_sidecar(path: str | Path, entries: dict[str, DifficultyEntry]) -> None:
    """Rewrite the sidecar atomically with one line per id, sorted by id."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(_line(entries[k]) for k in sorted(entries)), encoding="utf-8")
    os.replace(tmp, path)
