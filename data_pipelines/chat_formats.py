"""Chat records in the layouts SFT data is published in -> ponder's `messages` (docs/data.md).

- ShareGPT: `{"conversations": [{"from": "human" | "gpt" | "system", "value": str}], "images": [...]}`
  (or one `image`; Mantis-Instruct: `conversation`), each `<image>` in a value standing for the next image;
- LLaVA: the same with `human` / `gpt` and one `image` path (llava_instruct_150k.json, a JSON array);
- OpenAI: `{"messages": [{"role", "content": str | [{"type": "text" | "image_url" | "image", ...}]}]}`
  (also the Responses API's `input_text` / `input_image`),
  `image_url.url` a `data:` URL, a `file://` URL or a path; string contents may hold `<image>` and
  `<video>` placeholders filled from top-level `images` / `videos` lists (LLaMA-Factory's layout;
  LLaVA-Video-178K's one `video` marked by `<image>`);
- The Cauldron (also FineVision): `{"images": [...], "texts": [{"user": str, "assistant": str}, ...]}`,
  no placeholders: the images go before the first user text (as Idefics2 and SmolVLM train on it);
- columns: one question and its response in columns, the thinking in a column of its own: s1K
  (`question`, `thinking_trajectories`, `attempt`), s1K-1.1 (`deepseek_thinking_trajectory`,
  `deepseek_attempt`; its gemini_ columns when those are missing); the response is
  `<think>thinking</think>attempt`, which `ChatConfig.convert_r1` trains in the box format;
  Video-R1-COT (`problem`, `process`, `solution` = "<answer>B</answer>", `options`, `path`): the
  thinking, then the gold in the box, the options listed under the question, `path` the image or
  video (by `data_type`);
- ponder: OpenAI's shape with `{"type": "image", "image": IMG}` items (chat.py), passed through.

A record with media and no placeholder at all has them before its first user text (InternVL's
rule); one whose placeholders and media disagree in number raises `ImageMismatch` (counted
`image_mismatch`).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, NamedTuple

from .answer_format import ANSWER_CLOSE, ANSWER_OPEN, BOX_CLOSE, BOX_OPEN, THINK_CLOSE, THINK_OPEN, tagged_answer
from .processor import BadSample
from .prompt_columns import MEDIA_KIND_COLUMN, media_by_kind, options_block

CHAT_FORMATS = ("auto", "ponder", "sharegpt", "llava", "openai", "cauldron", "columns")
# The `columns` layout: the question column, then (thinking columns, response columns) of one
# source each, the first source whose response holds text (s1K-1.1's DeepSeek before its Gemini)
PROMPT_COLUMNS = ("question", "problem", "prompt")


class ResponseSource(NamedTuple):
    thinking: tuple[str, ...]
    response: tuple[str, ...]
    # The response column holds the gold answer, not a written one (Video-R1-COT's `solution`,
    # "<answer>B</answer>"): boxed whole, and read only beside its thinking (MATH's `solution`
    # alone is a worked solution, RL data)
    gold: bool = False


RESPONSE_SOURCES = (ResponseSource(("deepseek_thinking_trajectory",), ("deepseek_attempt",)),
                    ResponseSource(("thinking_trajectories",), ("attempt",)),
                    ResponseSource(("gemini_thinking_trajectory",), ("gemini_attempt",)),
                    ResponseSource(("thinking", "reasoning"), ("response", "output")),
                    ResponseSource(("process",), ("solution",), gold=True))
SYSTEM_COLUMNS = ("system", "system_prompt")  # ShareGPT's top-level system prompt; OpenOrca's
PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
PLACEHOLDERS = re.compile(f"({PLACEHOLDER}|{VIDEO_PLACEHOLDER})")
MEDIA_ITEMS = ("image", "video", "image_url", "input_image")
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


class ImageMismatch(BadSample):
    reason = "image_mismatch"


class UnknownChatLayout(BadSample):
    reason = "malformed_chat"


class RemoteImage(BadSample):
    reason = "remote_image"


def image_mark_is_video(texts: list[str], images: int, videos: int) -> bool:
    """LLaVA-Video-178K marks its video with `<image>`: with videos, no images and no `<video>` in
    the texts, an `<image>` placeholder stands for the next video."""
    return bool(videos and not images and not any(VIDEO_PLACEHOLDER in t for t in texts))


def placeholder_items(text: str, image_is_video: bool = False) -> list[dict]:
    """A text holding `<image>` / `<video>` placeholders as content items: its text pieces, and a
    bare `{"type": kind}` where each placeholder stands (the caller gives it its media). A
    placeholder whose record lacks that medium is a counted mismatch, never a text-only record."""
    items: list[dict] = []
    for i, piece in enumerate(PLACEHOLDERS.split(text)):  # text, mark, text, mark, ..., text
        if i % 2 == 0:
            if piece.strip():
                items.append({"type": "text", "text": piece})
        else:
            items.append({"type": "video" if piece == VIDEO_PLACEHOLDER or image_is_video else "image"})
    return items


def detect(record: dict) -> str:
    """`sharegpt` (also LLaVA: `conversations` or from/value turns), `cauldron` (`texts` of user /
    assistant pairs), `openai` (messages with image_url items, `<image>` placeholders or top-level
    images), `columns` (no turns; a question and a response column, s1K) or `ponder`."""
    if isinstance(record.get("conversations"), list) or (isinstance(record.get("conversation"), list)
                                                         and not isinstance(record.get("messages"), list)):
        return "sharegpt"  # Mantis-Instruct names it `conversation`
    if _cauldron_pairs(record.get("texts")):
        return "cauldron"
    turns = record.get("messages")
    if not isinstance(turns, list):
        return "columns" if _column_pair(record) else "ponder"  # the renderer reports what is missing
    if any(isinstance(t, dict) and "from" in t and "role" not in t for t in turns):
        return "sharegpt"
    if (_top_media(record, "image") or _top_media(record, "video")
            or any(_needs_conversion(t.get("content")) for t in turns if isinstance(t, dict))):
        return "openai"
    return "ponder"


def _needs_conversion(content: Any) -> bool:
    if isinstance(content, str):
        return bool(PLACEHOLDERS.search(content))
    if isinstance(content, list):
        return any(isinstance(i, dict) and (i.get("type") in ("image_url", "input_image", "input_text")
                                            or (i.get("type") in ("image", "video") and i.get(i["type"]) is None))
                   for i in content)
    return False


def _role(turn: dict) -> Any:
    """A turn's role, `role` or ShareGPT's `from`, with ShareGPT's names mapped (`human` -> user)."""
    role = turn.get("role") if turn.get("role") is not None else turn.get("from")
    return ROLE_ALIASES.get(role, role) if isinstance(role, str) else role


def _content(turn: dict) -> Any:
    """A turn's content, `content` or ShareGPT's `value` (an HF table of both has None in the other)."""
    return turn.get("content") if turn.get("content") is not None else turn.get("value")


def _top_media(record: dict, kind: str) -> list[Any]:
    """The record's top-level images (`kind` "image") or videos: `images` (a list) or `image` (one,
    or a list); None-free."""
    media = record.get(kind + "s")
    if media is None:
        media = record.get(kind)
    if media is None:
        return []
    return [m for m in (media if isinstance(media, list) else [media]) if m is not None]


def to_ponder(record: dict, fmt: str = "auto", key: str = "record") -> dict:
    """The record with ponder `messages` (image items carrying their images); unchanged if it is
    already ponder's. Raises `ImageMismatch` / `UnknownChatLayout` (counted skips)."""
    if fmt not in CHAT_FORMATS:
        raise ValueError(f"chat format must be one of {CHAT_FORMATS}, got {fmt!r}")
    if fmt == "auto":
        fmt = detect(record)
    if fmt == "ponder":
        return record
    turns, turns_from = _turns(record, fmt, key)
    if not isinstance(turns, list) or not turns:
        raise UnknownChatLayout(f"{key}: no {fmt} turns")
    images, videos = _top_media(record, "image"), _top_media(record, "video")
    # One column of images and videos, each row's by data_type (Video-R1's path): for question /
    # response columns, or a record that says its media's kind; a `path` beside chat turns that
    # place their own media is metadata, not one more image
    if not images and not videos and (fmt == "columns" or MEDIA_KIND_COLUMN in record):
        by_kind = media_by_kind(dict(record), None)
        images, videos = by_kind.get("images", []), by_kind.get("videos", [])
    media = _Media(images, videos, key)
    if not _marks_media(turns):  # no placeholder anywhere: the media go before the first user text
        turns = _media_first(turns, media)
    image_is_video = image_mark_is_video([str(_content(t)) for t in turns if isinstance(t, dict)],
                                         len(media.given["image"]), len(media.given["video"]))
    messages = []
    system = _first_text(record, SYSTEM_COLUMNS)
    if system is not None:
        messages.append({"role": "system", "content": system})
    for turn in turns:
        if not isinstance(turn, dict):
            raise UnknownChatLayout(f"{key}: a turn is not an object")
        role = _role(turn)
        content = _content(turn)
        if isinstance(content, str) and PLACEHOLDERS.search(content):
            items = placeholder_items(content, image_is_video)
            messages.append({"role": role, "content": [i if i["type"] == "text" else media.item(i["type"])
                                                       for i in items]})
        elif isinstance(content, list):
            messages.append({"role": role, "content": [_item(i, media, key) for i in content]})
        else:
            messages.append({"role": role, "content": content})  # the renderer reports it
    media.check_all_used()
    layout_fields = ("conversations", "messages", "images", "image", "videos", "video", *SYSTEM_COLUMNS, turns_from)
    out = {k: v for k, v in record.items() if k not in layout_fields}
    return {**out, "messages": messages}


def _turns(record: dict, fmt: str, key: str) -> tuple[Any, str]:
    """A record's turns in its layout, and the field they came from."""
    if fmt == "cauldron":
        return _cauldron_turns(record, key), "texts"
    if fmt == "columns":
        return _column_turns(record, key), "question"
    # ShareGPT turns may sit under `messages` (LLaMA-Factory) or `conversation` (Mantis-Instruct)
    names = ("conversations", "messages", "conversation") if fmt in ("sharegpt", "llava") else ("messages",)
    name = next((n for n in names if isinstance(record.get(n), list)), names[0])
    return record.get(name), name


def _marks_media(turns: list) -> bool:
    """Whether any turn places media: a placeholder in its text, or a media item."""
    for turn in turns:
        content = _content(turn) if isinstance(turn, dict) else None
        if isinstance(content, str) and PLACEHOLDERS.search(content):
            return True
        if isinstance(content, list) and any(isinstance(i, dict) and i.get("type") in MEDIA_ITEMS for i in content):
            return True
    return False


def _media_first(turns: list, media: "_Media") -> list:
    """The turns with the record's images and videos before the first user text (InternVL's rule
    for records without placeholders; Idefics2 and SmolVLM train on the Cauldron so)."""
    count = {kind: len(items) for kind, items in media.given.items()}
    if not any(count.values()):
        return turns
    for i, turn in enumerate(turns):
        if isinstance(turn, dict) and _role(turn) == "user":
            content = _content(turn)
            if not isinstance(content, (str, list)):
                return turns  # the renderer reports the content
            items = content if isinstance(content, list) else (
                [{"type": "text", "text": content}] if content.strip() else [])
            placed = [{"type": kind} for kind in ("image", "video") for _ in range(count[kind])]
            return [*turns[:i], {**turn, "content": placed + items}, *turns[i + 1:]]
    return turns  # no user turn: the media stay unplaced (a counted mismatch)


def _cauldron_pairs(texts: Any) -> bool:
    return (isinstance(texts, list) and bool(texts)
            and all(isinstance(t, dict) and "user" in t and "assistant" in t for t in texts))


def _cauldron_turns(record: dict, key: str) -> list[dict]:
    """The Cauldron's user / assistant pairs as turns. Without an `<image>` in its user texts (the
    Cauldron has none) the texts are taken as they are (an HTML answer's `<video>` tag is text),
    and the images go before the first user text."""
    pairs = record.get("texts")
    if not _cauldron_pairs(pairs) or not all(isinstance(p[r], str) for p in pairs for r in ("user", "assistant")):
        raise UnknownChatLayout(f"{key}: `texts` is not a list of user / assistant text pairs")
    if any(PLACEHOLDER in pair["user"] for pair in pairs):
        return [{"role": role, "content": pair[role]} for pair in pairs for role in ("user", "assistant")]
    return [{"role": role, "content": [{"type": "text", "text": pair[role]}] if pair[role].strip() else []}
            for pair in pairs for role in ("user", "assistant")]


def _first_text(record: dict, names: tuple[str, ...], join: bool = False) -> str | None:
    """The text of the first of `names` that holds some; with `join` a list of texts (s1K's
    `thinking_trajectories`) is one, joined by blank lines. None if none does."""
    for name in names:
        value = record.get(name)
        if join and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = "\n\n".join(value)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _column_response(record: dict) -> tuple[str | None, str, bool] | None:
    """(thinking, response, whether it is a gold) of the first source whose response holds text
    (and, for a gold, whose thinking does); None if none does."""
    for source in RESPONSE_SOURCES:
        if (text := _first_text(record, source.response)) is not None:
            thinking = _first_text(record, source.thinking, join=True)
            if not source.gold or thinking is not None:
                return thinking, text, source.gold
    return None


def no_turns_reason(record: dict) -> str:
    """Why a record without turns is no chat, in a user's terms (a prompt record given to SFT)."""
    question = next((c for c in PROMPT_COLUMNS if _first_text(record, (c,)) is not None), None)
    if question is None:
        return "`messages` must be a non-empty list"
    if _column_response(record) is not None:
        return (f"a `{question}` and its response in columns, not `messages`: data.chat.format=columns "
                "(or auto) reads them")
    responses = ", ".join(c for source in RESPONSE_SOURCES if not source.gold for c in source.response)
    return (f"a `{question}` without a response to train (none of {responses} holds text): a prompt record "
            "(RL / eval data, its answer a gold, not a response); SFT reads chats, or a question with its "
            "response in columns (docs/data.md, published chat layouts)")


def _column_pair(record: dict) -> bool:
    return _first_text(record, PROMPT_COLUMNS) is not None and _column_response(record) is not None


def _column_turns(record: dict, key: str) -> list[dict]:
    """The user's question and the assistant's response, `<think>thinking</think>` before it when its
    source has thinking (and the response does not hold its own)."""
    question, response = _first_text(record, PROMPT_COLUMNS), _column_response(record)
    if question is None or response is None:
        raise UnknownChatLayout(f"{key}: no question column ({', '.join(PROMPT_COLUMNS)}) and response column "
                                f"({', '.join(c for source in RESPONSE_SOURCES for c in source.response)}) with text")
    thinking, answer, gold = response
    if gold:  # "<think>...</think>" + "<answer>B</answer>": the gold is the box (Video-R1-COT)
        thinking = _untagged(thinking.strip(), THINK_OPEN, THINK_CLOSE)
        answer = f"{ANSWER_OPEN}{BOX_OPEN}{tagged_answer(answer) or answer.strip()}{BOX_CLOSE}{ANSWER_CLOSE}"
    if thinking is not None and THINK_CLOSE not in answer:
        answer = f"{THINK_OPEN}{thinking.strip()}{THINK_CLOSE}{answer.strip()}"
    if block := options_block(question, record.get("options")):  # Video-R1 keeps them in a column
        question = f"{question.rstrip()}\n{block}"
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _untagged(text: str, opening: str, closing: str) -> str:
    """The text without one pair of tags around all of it."""
    if text.startswith(opening) and text.endswith(closing) and text.count(closing) == 1:
        return text[len(opening):-len(closing)].strip()
    return text


class _Media:
    """A record's top-level images and videos, handed out in placeholder order."""

    def __init__(self, images: list[Any], videos: list[Any], key: str):
        self.given = {"image": images, "video": videos}
        self.used = {"image": 0, "video": 0}
        self.key = key

    def item(self, kind: str) -> dict[str, Any]:
        """The next {"type": kind, kind: ...} content item ("image" or "video")."""
        self.used[kind] += 1
        if self.used[kind] > len(self.given[kind]):
            raise ImageMismatch(f"{self.key}: more {kind} placeholders than the {len(self.given[kind])} {kind}s")
        return {"type": kind, kind: self.given[kind][self.used[kind] - 1]}

    def check_all_used(self) -> None:
        if self.used != {kind: len(items) for kind, items in self.given.items()}:
            raise ImageMismatch(f"{self.key}: {len(self.given['image'])} images and {len(self.given['video'])} "
                                f"videos but {self.used['image']} and {self.used['video']} placeholders")


def _item(item: Any, media: _Media, key: str) -> Any:
    if not isinstance(item, dict):
        return item
    item = {k: v for k, v in item.items() if v is not None}  # HF rows carry every struct field
    kind = item.get("type")
    if kind == "input_text":  # the Responses API's names
        return {"type": "text", "text": item.get("text")}
    if kind in ("image_url", "input_image"):
        url = item.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return {"type": "image", "image": from_url(url, key)}
    if kind in ("image", "video") and kind not in item:
        return media.item(kind)
    return item


def from_url(url: Any, key: str) -> Any:
    """An OpenAI image URL as a processor input: `data:` -> bytes, `file://` or a bare path -> path."""
    if not isinstance(url, str) or not url:
        raise UnknownChatLayout(f"{key}: image_url without a url")
    if url.startswith("data:"):
        try:
            return base64.b64decode(url.split(",", 1)[1], validate=True)
        except (IndexError, binascii.Error) as exc:
            raise UnknownChatLayout(f"{key}: bad data URL ({exc})") from exc
    if url.startswith("file://"):
        return url[len("file://"):]
    if url.startswith(("http://", "https://")):
        raise RemoteImage(f"{key}: {url[:80]} is remote; download the images first")
    return url
