"""The one renderer: chat turns + images/videos -> Documents, for every stage's records and prompts.

- SFT records -> training Documents (`ChatRenderer.document`) and their generation prompts (`prompt`);
- RL, grading and eval prompt records -> generation prompts (`render_prompt`, via
  `prompts.encode_prompt_record`), which rollouts extend into training Documents;
- inference inputs for transformers `generate` (`encode_prompt`).
All of them render the tokenizer's chat template, expand each image / video placeholder into the
tokens its processed visual needs, and mark the vision spans that packing must never cut.

A record (docs/data.md, "Chat records"):
    {"id": "...", "messages": [{"role": "system" | "user" | "assistant",
                                "content": str | [{"type": "text", "text": ...},
                                                  {"type": "image", "image": path},
                                                  {"type": "video", "video": [frame paths], "fps": 2}]}]}
It ends with an assistant turn. The template keeps only the answer of earlier assistant turns (the
thinking is stripped from history) and the whole of the last one.

Targets: the tokens of each trained assistant turn (the last one, or all with `train_turns="all"`)
plus the token that ends it (the next role marker, or `<|endoftext|>` after the last turn), so the
model learns to stop. Prompt, image, video and template tokens are never targets. Each target
weighs 1 / (targets of the record): every record adds exactly 1 to the loss weight, however it is
packed (docs/training.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from .answer_format import format_violation, from_published
from .chat_formats import CHAT_FORMATS, from_url, no_turns_reason, to_ponder
from .document import Document, Visual
from .processor import (
    BadSample,
    ProcessedImage,
    ProcessedVideo,
    VisionProcessor,
    image_token_ids,
    sample_frame_indices,
    video_token_ids,
)
from .tokenizer import SpecialTokens
from .video import VIDEO_EXTENSIONS, VideoClip, clip_bounds, decode_video, frames_in_order

TRAIN_TURNS = ("last", "all")
ROLES = ("system", "user", "assistant")
ROLE_MARKERS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>",
                "observation": "<|observation|>"}
_MARKER_RE = re.compile("|".join(re.escape(m) for m in ROLE_MARKERS.values()))
_MARKER_ROLE = {m: r for r, m in ROLE_MARKERS.items()}
DEFAULT_VIDEO_FPS = 2.0


@dataclass
class ChatConfig:
    train_turns: str = "last"  # "last": the final assistant turn; "all": every assistant turn
    skip_bad_format: bool = True  # skip (and count) records whose trained responses break the format
    require_box: bool = True  # the format needs exactly one non-empty <|begin_of_box|>...<|end_of_box|>
    # R1-style responses (thinking closed by </think> or <|end_of_thought|>, then the answer with
    # \boxed{...}) are trained in this format: the rest of the answer, its box as box markers; so are
    # LLaVA-CoT's <SUMMARY><CAPTION><REASONING> (thinking) and <CONCLUSION> (answer)
    convert_r1: bool = True
    format: str = "auto"  # record layout: auto (detected per record) | ponder | sharegpt | llava | openai | cauldron | columns
    # The frame rate of videos given as folders of frames (ShareGPTVideo's frames); a video item's
    # own `fps` wins. Unset, a folder without one is a counted missing_video: a guessed rate would
    # put wrong timestamps in the prompt
    frames_fps: Optional[float] = None

    def __post_init__(self) -> None:
        if self.format not in CHAT_FORMATS:
            raise ValueError(f"chat.format must be one of {CHAT_FORMATS}, got {self.format!r}")
        if self.frames_fps is not None and not 0 < self.frames_fps < math.inf:
            raise ValueError(f"data.chat.frames_fps must be > 0, got {self.frames_fps}")
        if self.train_turns not in TRAIN_TURNS:
            raise ValueError(f"chat.train_turns must be one of {TRAIN_TURNS}, got {self.train_turns!r}")


class MalformedChat(BadSample):
    reason = "malformed_chat"


class BadResponseFormat(BadSample):
    reason = "bad_format"


class MissingMedia(BadSample):
    reason = "missing_image"


class MissingVideo(MissingMedia):
    reason = "missing_video"


@dataclass
class _Message:
    role: str
    text_or_items: str | list[dict]  # what the template renders
    images: list[Any]  # image sources in order of appearance
    videos: list[tuple[list[Any] | Any, float | None]]  # (frame sources, fps), or (a video file, None)


@dataclass
class Rendered:
    document: Document  # images / videos expanded; targets as asked
    raw_ids: list[int]  # the chat template's ids, one placeholder per image / video (vLLM expands itself)
    images: list[Any]  # each image as handed to the processor (bytes or PIL), in order


class ChatRenderer:
    """Callable turning one record sample into a training Document; raises `BadSample` to skip it.

    A sample is a record (dict, or its JSON text/bytes) or the reader's `{"__key__", "record",
    "root"}`, where `root` is the directory relative image paths are read from.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, processor: VisionProcessor,
                 cfg: ChatConfig = ChatConfig()):
        self.tokenizer, self.processor, self.cfg = tokenizer, processor, cfg
        self.special = SpecialTokens.from_tokenizer(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("tokenizer has no chat template")
        probe = [{"role": "user", "content": "x"}]
        with_prompt = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        plain = tokenizer.apply_chat_template(probe, tokenize=False)
        self.generation_prompt = with_prompt[len(plain):]  # "<|assistant|>\n" for GLM
        if not with_prompt.startswith(plain) or not self.generation_prompt.startswith(ROLE_MARKERS["assistant"]):
            raise ValueError(f"chat template is not GLM-shaped: generation prompt {self.generation_prompt!r}")

    # -- public ----------------------------------------------------------------------------------
    def __call__(self, sample: Any) -> Document:
        record, key, root = _unpack(sample)
        return self.document(record, key, root)

    def document(self, record: Any, key: str | None = None, root: str | Path | None = None) -> Document:
        """The training Document of a record: prompt and history untrained, trained turns targeted."""
        key, messages = self._parse(record, key)
        assistant = [i for i, m in enumerate(messages) if m.role == "assistant"]
        trained = assistant if self.cfg.train_turns == "all" else assistant[-1:]
        for i in trained:
            problem = format_violation(messages[i].text_or_items, self.cfg.require_box)
            if problem and self.cfg.convert_r1 and (converted := from_published(messages[i].text_or_items)) is not None:
                messages[i].text_or_items = converted
                problem = format_violation(converted, self.cfg.require_box)
            if problem and self.cfg.skip_bad_format:
                raise BadResponseFormat(f"{key}: turn {i} breaks the answer format ({problem})")
        return self._build(key, messages, root, add_generation_prompt=False, trained=set(trained)).document

    def prompt(self, sample: Any) -> Document:
        """The generation prompt of a record sample (no targets): everything before its last
        assistant turn, ending in the generation prompt `<|assistant|>\\n`."""
        record, key, root = _unpack(sample)
        key, messages = self._parse(record, key)
        return self._build(key, messages[:-1], root, add_generation_prompt=True, trained=set()).document

    def render_prompt(self, messages: list[dict], images: Sequence[Any] = (),
                      videos: Sequence[tuple[list[Any] | Any, float | None]] = (), root: str | Path | None = None,
                      key: str = "prompt") -> Rendered:
        """A generation prompt from chat turns whose image / video items are bare (`{"type":
        "image"}`), with the images and (frames, fps) videos given in order of appearance."""
        turns = [_message(m, key) for m in _attach_media(messages, images, videos, key)]
        return self._build(key, turns, root, add_generation_prompt=True, trained=set())

    # -- parsing ---------------------------------------------------------------------------------
    def _parse(self, record: Any, key: str | None) -> tuple[str, list[_Message]]:
        if isinstance(record, (str, bytes, bytearray)):
            try:
                record = json.loads(record)
            except ValueError as exc:  # also UnicodeDecodeError
                raise MalformedChat(f"{key}: not JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise MalformedChat(f"{key}: a record must be a JSON object")
        if record.get("id") is not None:
            key = str(record["id"])
        key = key or "record"
        record = to_ponder(record, self.cfg.format, key)  # ShareGPT / LLaVA / OpenAI layouts
        raw = record.get("messages")
        if not isinstance(raw, list) or not raw:
            raise MalformedChat(f"{key}: {no_turns_reason(record)}")
        messages = [_message(m, key) for m in raw]
        if messages[-1].role != "assistant":
            raise MalformedChat(f"{key}: the last message must be the assistant's response")
        return key, messages

    # -- rendering -------------------------------------------------------------------------------
    def _pieces(self, messages: list[_Message], add_generation_prompt: bool, key: str) -> list[tuple[str, int | None]]:
        """The rendered conversation cut into (text, assistant message index | None) pieces:
        assistant contents alone, everything else (template, prompts) between them."""
        rendered = self.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.text_or_items} for m in messages],
            tokenize=False, add_generation_prompt=add_generation_prompt,
        )
        markers = list(_MARKER_RE.finditer(rendered))
        expected = [m.role for m in messages] + (["assistant"] if add_generation_prompt else [])
        if [_MARKER_ROLE[m.group()] for m in markers] != expected:
            raise MalformedChat(f"{key}: a message contains a role marker such as <|user|>")
        pieces, cursor = [], 0
        for i, message in enumerate(messages):
            if message.role != "assistant":
                continue
            start = markers[i].start()
            if not rendered.startswith(self.generation_prompt, start):
                raise ValueError(f"chat template renders an assistant turn without {self.generation_prompt!r}")
            start += len(self.generation_prompt)
            end = markers[i + 1].start() if i + 1 < len(markers) else len(rendered)
            pieces += [(rendered[cursor:start], None), (rendered[start:end], i)]
            cursor = end
        pieces.append((rendered[cursor:], None))
        return pieces

    def _build(self, key: str, messages: list[_Message], root: str | Path | None,
               add_generation_prompt: bool, trained: set[int]) -> Rendered:
        pieces = self._pieces(messages, add_generation_prompt, key)
        try:
            media = [_media(src, root, key) for m in messages for src in m.images]
            images = [self.processor.process_image(m) for m in media]
            videos = [self._video(frames, fps, root, key) for m in messages for frames, fps in m.videos]
        except BadSample as exc:  # the processor's messages do not name the record; the skip log should
            if str(exc).startswith(f"{key}:"):
                raise
            raise type(exc)(f"{key}: {exc}") from exc
        sp = self.special
        vision_ids = {sp.image_start, sp.image_end, sp.image, sp.video_start, sp.video_end, sp.video}
        ids: list[int] = []
        raw_ids: list[int] = []
        types: list[int] = []
        targets: list[bool] = []
        spans: list[tuple[int, int, str]] = []
        used_images = used_videos = 0
        ends_turn = False  # the token after a trained turn (next role marker) ends it: a target
        for text, turn in pieces:
            piece = self.tokenizer.encode(text, add_special_tokens=False)
            raw_ids += piece
            if turn is not None:  # an assistant turn: plain text
                if vision_ids.intersection(piece):
                    raise MalformedChat(f"{key}: assistant turn {turn} contains image/video tokens")
                ids += piece
                types += [0] * len(piece)
                targets += [turn in trained] * len(piece)
                ends_turn = turn in trained
                continue
            n_img, n_vid = piece.count(sp.image), piece.count(sp.video)
            try:
                piece, piece_types = _expand_visuals(
                    piece, images[used_images:used_images + n_img], videos[used_videos:used_videos + n_vid],
                    sp, self.tokenizer, self.processor.cfg.merge_size,
                )
                piece_spans = _visual_spans(piece, sp, n_img, n_vid)
            except ValueError as exc:
                raise MalformedChat(f"{key}: images/videos do not match their placeholders ({exc})") from exc
            used_images, used_videos = used_images + n_img, used_videos + n_vid
            spans += [(s + len(ids), e + len(ids), kind) for s, e, kind in piece_spans]
            ids += piece
            types += piece_types
            if piece:
                targets += [ends_turn] + [False] * (len(piece) - 1)
                ends_turn = False
        if used_images != len(images) or used_videos != len(videos):
            raise MalformedChat(f"{key}: {len(images)} images / {len(videos)} videos but "
                                f"{used_images} / {used_videos} placeholders")
        if ends_turn:  # the final turn was trained: it ends with <|endoftext|>
            ids.append(sp.eos)
            types.append(0)
            targets.append(True)
        n_targets = sum(targets)
        document = Document(
            key=key,
            input_ids=torch.tensor(ids, dtype=torch.long),
            mm_token_type_ids=torch.tensor(types, dtype=torch.long),
            loss_mask=torch.tensor(targets, dtype=torch.bool),
            images=[Visual(im.pixel_values, im.grid_thw) for im in images],
            videos=[Visual(v.pixel_values, v.grid_thw) for v in videos],
            atomic_spans=spans,
            token_weight=1.0 / n_targets if n_targets else 1.0,
        )
        return Rendered(document, raw_ids, media)

    # -- media -----------------------------------------------------------------------------------
    def _video(self, frames: list[Any] | Any, fps: float | None, root: str | Path | None, key: str) -> ProcessedVideo:
        if isinstance(frames, VideoClip) or _frames_folder(frames, root) is not None:
            return self._clip(frames if isinstance(frames, VideoClip) else VideoClip(frames), root, key)
        if not isinstance(frames, list):  # a video file (path or bytes)
            return decode_video(_media(frames, root, key, "video"), self.processor)
        indices = sample_frame_indices(len(frames), fps, self.processor.cfg)  # decode only these
        return self.processor.process_sampled_video([_media(frames[i], root, key, "video") for i in indices],
                                                    indices, fps)

    def _clip(self, clip: VideoClip, root: str | Path | None, key: str) -> ProcessedVideo:
        folder = _frames_folder(clip.source, root)
        if folder is None:
            return decode_video(_media(clip.source, root, key, "video"), self.processor, clip)
        if clip.fps is None and self.cfg.frames_fps is not None:
            clip = replace(clip, fps=self.cfg.frames_fps)
        if clip.fps is None:
            raise MissingVideo(f"{key}: {folder} is a folder of frames: give its frame rate (prompt sets: "
                               "data.frames_fps; chat records: data.chat.frames_fps, or the video item's "
                               "\"fps\": {\"type\": \"video\", \"video\": FOLDER, \"fps\": F})")
        frames = frames_in_order(folder)
        window = [frames[i] for i in clip.frame_range(len(frames), clip.fps)]
        if not window:
            raise MissingVideo(f"{key}: no frames of {folder} in [{clip.start}, {clip.end}) s")
        return self._video(window, clip.fps, None, key)


def _under_root(path: str | Path, root: str | Path | None) -> Path:
    """A media path as read: relative ones from `root` (data.image_root)."""
    path = Path(path)
    return path if path.is_absolute() or root is None else Path(root) / path


def _frames_folder(source: Any, root: str | Path | None) -> Path | None:
    """The folder a clip's source names, or None (a file, bytes, or nothing there)."""
    if not isinstance(source, (str, Path)):
        return None
    path = _under_root(source, root)
    try:
        return path if path.is_dir() else None
    except OSError:
        return None


def _unpack(sample: Any) -> tuple[Any, str | None, str | None]:
    if isinstance(sample, dict) and "record" in sample and "messages" not in sample:
        return sample["record"], sample.get("__key__"), sample.get("root")
    return sample, None, None


def _message(raw: Any, key: str) -> _Message:
    if not isinstance(raw, dict) or raw.get("role") not in ROLES:
        raise MalformedChat(f"{key}: a message needs a role in {ROLES}")
    role, content = raw["role"], raw.get("content")
    if isinstance(content, str):
        return _Message(role, content, [], [])
    if not isinstance(content, list):
        raise MalformedChat(f"{key}: content must be a string or a list of items")
    items, images, videos = [], [], []
    for item in content:
        # HF `datasets` rows carry every struct field, absent ones as None.
        item = {k: v for k, v in item.items() if v is not None} if isinstance(item, dict) else None
        kind = None if item is None else item.get("type") or next(
            (k for k in ("text", "image", "video") if k in item), None)
        if kind == "text" and isinstance(item.get("text"), str):
            items.append({"type": "text", "text": item["text"]})
        elif kind == "image" and "image" in item:
            items.append({"type": "image"})
            images.append(item["image"])
        elif kind == "video" and isinstance(video := media_payload(item.get("video")), (str, Path, bytes)) and video:
            items.append({"type": "video"})  # a video file: decoded at 2 fps (data_pipelines/video.py)
            fps = _fps(item.get("fps"), key)  # a folder of frames at its `fps` (a file's own rate is its stream's)
            videos.append((VideoClip(video, fps=fps), fps) if fps is not None and isinstance(video, (str, Path))
                          else (video, None))
        elif kind == "video" and isinstance(item.get("video"), VideoClip):  # a part of a file, or a folder
            items.append({"type": "video"})
            videos.append((item["video"], item["video"].fps))
        elif kind == "video" and isinstance(item.get("video"), list) and item["video"]:
            fps = _fps(item.get("fps", DEFAULT_VIDEO_FPS), key)
            if fps is None:
                raise MalformedChat(f"{key}: video fps must be a positive number, got {item.get('fps')!r}")
            items.append({"type": "video"})
            videos.append((item["video"], fps))
        else:
            raise MalformedChat(f"{key}: bad content item {str(item)[:80]}")
    if role != "user" and (images or videos):
        raise MalformedChat(f"{key}: only user messages may hold images or videos")
    if role == "assistant":  # one string, so the template can strip the thinking of earlier turns
        return _Message(role, "".join(i["text"] for i in items), [], [])
    return _Message(role, items, images, videos)


def _fps(value: Any, key: str) -> float | None:
    try:
        return clip_bounds(fps=value)[2]
    except ValueError as exc:
        raise MalformedChat(f"{key}: video fps must be a positive number, got {value!r}") from exc


def media_payload(source: Any) -> Any:
    """An HF `datasets` Image or Video dict ({bytes, path}) as its bytes, else its path (None when
    it has neither); anything else, a frames dict included, as it is."""
    if isinstance(source, dict) and "frames" not in source and "video" not in source:
        return source.get("bytes") or source.get("path")
    return source


def _media(source: Any, root: str | Path | None, key: str, kind: str = "image") -> Any:
    """A processor input: PIL image or bytes as they are, text as `_text_media` reads it, an HF
    `datasets` Image dict by its bytes or path."""
    source = media_payload(source)
    if isinstance(source, Path):
        source = str(source)
    if isinstance(source, str):
        return _text_media(source, root, key, kind)
    if not isinstance(source, (bytes, bytearray, Image.Image)):  # None, a NaN cell, a number
        raise _missing(kind)(f"{key}: {kind} item without data ({type(source).__name__})")
    return source


# Base64 text as VLMEvalKit's TSVs hold images (no `data:` prefix). Shorter cells there are another
# row's index (data_pipelines/vlmeval_tsv.py reads those). What decodes is taken only if it starts
# as an image or video file does, so a missing path that happens to be base64 stays missing.
_BASE64 = re.compile(r"[A-Za-z0-9+/\s]{65,}={0,2}\s*")
_MEDIA_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"\x1aE\xdf\xa3")


def _decoded_base64(text: str) -> bytes | None:
    """The media file base64 text holds, or None."""
    if not _BASE64.fullmatch(text):
        return None
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except binascii.Error:
        return None
    riff = data[:4] == b"RIFF" and data[8:12] in (b"WEBP", b"AVI ")
    return data if data.startswith(_MEDIA_MAGIC) or riff or data[4:8] == b"ftyp" else None


def _text_media(text: str, root: str | Path | None, key: str, kind: str) -> bytes:
    """The bytes a text names: a `data:` URL, a file (relative paths from `root`; a video of another
    known extension where the named one is missing: Video-MME's .mp4 / .MP4 / .mkv), or base64.
    Nothing found is a counted skip (missing_image / missing_video), never a crash: a long base64
    cell is no legal file name (OSError)."""
    if text.startswith(("data:", "file://", "http://", "https://")):
        source = from_url(text, key)  # a remote URL is a remote_image skip
        if isinstance(source, bytes):
            return source
        text = source
    path = _under_root(text, root)
    candidates = [path]
    if kind == "video" and path.suffix[1:].lower() in VIDEO_EXTENSIONS:
        candidates += [path.with_suffix(f".{ext}") for ext in VIDEO_EXTENSIONS]
        candidates += [path.with_suffix(f".{ext.upper()}") for ext in VIDEO_EXTENSIONS]
    for candidate in candidates:
        try:
            if candidate.is_file():
                return candidate.read_bytes()
        except OSError:  # "File name too long": base64, or nothing we can read
            break
    if (data := _decoded_base64(text)) is not None:
        return data
    shown = str(path) if len(str(path)) <= 120 else str(path)[:100] + f"... ({len(text)} characters)"
    raise _missing(kind)(f"{key}: {kind} {shown} not found (relative paths are read from data.image_root, "
                         "default the data file's folder)")


def _missing(kind: str) -> type[MissingMedia]:
    return MissingVideo if kind == "video" else MissingMedia


def _visual_spans(ids: list[int], sp: SpecialTokens, n_images: int, n_videos: int) -> list[tuple[int, int, str]]:
    """[start, end) of each expanded image (markers included) and each whole video."""
    spans, i = [], 0
    while i < len(ids):
        if ids[i] == sp.video_start:
            end = ids.index(sp.video_end, i) + 1
            spans.append((i, end, "video"))
            i = end
        elif ids[i] == sp.image_start:
            end = ids.index(sp.image_end, i) + 1
            spans.append((i, end, "image"))
            i = end
        else:
            i += 1
    kinds = [kind for _, _, kind in spans]
    if kinds.count("image") != n_images or kinds.count("video") != n_videos:
        raise ValueError("stray image/video marker tokens in the text")
    return spans


def _attach_media(messages: list[dict], images: Sequence[Any], videos: Sequence[tuple[list[Any] | Any, float | None]],
                  key: str) -> list[dict]:
    """Turns whose image (video) items take the given images (videos) in order of appearance; with
    none given, items keep their own `image` / `video` payloads."""
    fill_images, fill_videos = bool(images), bool(videos)
    images, videos = iter(images), iter(videos)
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            items = []
            for item in content:
                kind = item.get("type") if isinstance(item, dict) else None
                if kind == "image" and (fill_images or "image" not in item):
                    item = {"type": "image", "image": next(images, None)}
                elif kind == "video" and (fill_videos or "video" not in item):
                    frames, fps = next(videos, (None, item.get("fps", DEFAULT_VIDEO_FPS)))
                    item = {"type": "video", "video": frames, "fps": fps}
                items.append(item)
            message = {**message, "content": items}
        out.append(message)
    if next(images, None) is not None or next(videos, None) is not None:
        raise MalformedChat(f"{key}: more images / videos than placeholders in the messages")
    return out


def _expand_visuals(ids: list[int], images: list[ProcessedImage], videos: list[ProcessedVideo],
                    special: SpecialTokens, tokenizer: PreTrainedTokenizerBase, merge_size: int = 2
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


@dataclass
class PromptInputs:
    """Keyword inputs of transformers `generate` for one prompt (batch of 1)."""

    input_ids: torch.Tensor  # (1, L)
    mm_token_type_ids: torch.Tensor  # (1, L)
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def encode_prompt(messages: list[dict], tokenizer: PreTrainedTokenizerBase, processor: VisionProcessor,
                  images: list | None = None, videos: list[tuple[list, float]] | None = None) -> PromptInputs:
    """A generation prompt for `generate`: `images` are PIL images / bytes / paths in order of
    appearance, `videos` (frames, fps) pairs; bare image / video items in `messages`."""
    doc = ChatRenderer(tokenizer, processor).render_prompt(messages, images or [], videos or []).document
    cat = lambda visuals: torch.cat([v.pixel_values for v in visuals]) if visuals else None  # noqa: E731
    grids = lambda visuals: torch.stack([v.grid_thw for v in visuals]) if visuals else None  # noqa: E731
    return PromptInputs(doc.input_ids[None], doc.mm_token_type_ids[None], cat(doc.images), grids(doc.images),
                        cat(doc.videos), grids(doc.videos))
