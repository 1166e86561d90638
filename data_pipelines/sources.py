"""Pretraining sources read as published, and their weighted mixture (docs/data.md, "Sources").

Kinds (each a `reader.SampleSource` plus a sample -> Document function):
- `interleaved`: ponder's tar shards (`python -m data_pipelines.shards write`);
- `captions`: img2dataset / LAION / DataComp tar shards, `KEY.jpg` + `KEY.txt` + `KEY.json`: one short
  document per pair, the image then its caption; or records of an image and a caption (CC3M-style
  parquet `{image, caption}`, img2dataset's parquet with a `jpg` column);
- `obelics`: OBELICS-style records (parquet, JSON(L), HF `save_to_disk`) with position-aligned
  `texts` and `images` lists, exactly one of the two non-null at each position; MMC4's pages
  (`text_list`, `image_info`) as the same positions;
- `text`: plain text records (JSONL / parquet / ...) with a `text` field, for the text-only share.
Tar paths take directories, globs, brace ranges and webdataset URLs (`pipe:`, `http(s)://`);
record paths take what `records.RecordShards` reads. Missing data fails at start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from .chat import _media, media_payload
from .document import Document, DocumentBuilder
from .interleaved import InterleavedDocuments, MalformedSample
from .processor import IMAGE_EXTENSIONS, BadSample, VisionProcessor
from .video import VIDEO_FILE_EXTENSIONS, decode_video
from .reader import REMOTE_PREFIXES, MixturePart, ReaderConfig, TarShards, check_usable
from .records import FORMATS, RecordShards

KINDS = ("interleaved", "captions", "obelics", "text")
TAR_KINDS = ("interleaved", "captions")
CAPTION_FIELDS = ("caption", "txt", "text", "TEXT")  # captions in record files, by default


class NoImage(BadSample):
    reason = "no_image"


class NoCaption(BadSample):
    reason = "no_caption"


class FailedDownload(BadSample):
    reason = "failed_download"


class NoText(BadSample):
    reason = "no_text"


class RemoteImage(BadSample):
    reason = "remote_image"


@dataclass
class SourceConfig:
    """One entry of `data.sources`."""

    name: str = ""  # unique; the key of this source's counters in metrics.jsonl and its state in checkpoints
    kind: str = "interleaved"  # interleaved | captions | obelics | text
    path: str = ""  # tar kinds: dir / glob / brace range / pipe: or http(s):// URL; records: file, dir, glob
    weight: float = 1.0  # share of the documents (relative; normalised over the sources)
    caption_field: str = "txt"  # captions: "txt" (the KEY.txt member) or a key of KEY.json ("caption");
    # in record files: that column ("txt": the first of caption, txt, text, TEXT)
    text_field: str = "text"  # text: the record field holding the document
    format: str = "auto"  # record kinds: auto | jsonl | parquet | json | disk
    image_root: str | None = None  # record kinds: relative image paths resolve here (default: the data dir)
    records_per_shard: int = 256  # record kinds: records per virtual shard (the unit dealt to streams)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("every data.sources entry needs a name")
        if self.kind not in KINDS:
            raise ValueError(f"data.sources[{self.name}].kind must be one of {KINDS}, got {self.kind!r}")
        if not self.path:
            raise ValueError(f"data.sources[{self.name}].path is empty")
        if not self.weight > 0:
            raise ValueError(f"data.sources[{self.name}].weight must be > 0, got {self.weight}")
        if self.format not in FORMATS:
            raise ValueError(f"data.sources[{self.name}].format must be one of {FORMATS}, got {self.format!r}")


@dataclass
class PretrainDataConfig(ReaderConfig):
    """The reader over `shards` (ponder's interleaved tars) or over a weighted mixture of `sources`."""

    sources: list[SourceConfig] = field(default_factory=list)  # [{name, kind, path, weight, ...}]

    def __post_init__(self) -> None:
        if self.sources and self.shards:
            raise ValueError("give data.shards or data.sources, not both")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources names must be unique, got {names}")


class CaptionDocuments(InterleavedDocuments):
    """An img2dataset sample (`jpg`/`png`/`webp` + `txt` + `json`) -> image, caption, `<|endoftext|>`;
    a video2dataset sample (`mp4` + `txt` + `json`) -> video, caption, `<|endoftext|>`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, processor: VisionProcessor, caption_field: str = "txt"):
        super().__init__(tokenizer, processor)
        self.caption_field = caption_field

    def __call__(self, sample: dict[str, Any]) -> Document:
        key = str(sample.get("__key__"))
        meta: dict = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except (TypeError, ValueError) as exc:  # also UnicodeDecodeError
                raise MalformedSample(f"{key}: bad json member ({exc})") from exc
            if not isinstance(meta, dict):
                raise MalformedSample(f"{key}: json member is not an object")
        # img2dataset writes only successes into tars; other writers may keep the failures' json.
        if meta.get("status") not in (None, "success"):
            raise FailedDownload(f"{key}: status {meta.get('status')!r}")
        image = next((sample[ext] for ext in IMAGE_EXTENSIONS if isinstance(sample.get(ext), bytes)), None)
        video = next((sample[ext] for ext in VIDEO_FILE_EXTENSIONS if isinstance(sample.get(ext), bytes)), None)
        if image is None and video is None:
            raise NoImage(f"{key}: no image or video member ({', '.join(IMAGE_EXTENSIONS + VIDEO_FILE_EXTENSIONS)})")
        caption = _caption(sample, meta, self.caption_field)
        if not caption:
            raise NoCaption(f"{key}: no {self.caption_field} caption")
        return self.pair_document(key, image, caption) if image is not None else self.pair_document(
            key, video, caption, "video")

    def pair_document(self, key: str, media: Any, caption: str, kind: str = "image") -> Document:
        doc = DocumentBuilder(key)
        if kind == "video":
            self.add_video(doc, decode_video(media, self.processor))
        else:
            self.add_image(doc, media)
        self.add_text(doc, caption)
        doc.add_tokens([self.special.eos], train=True)
        return doc.build()


class RecordCaptionDocuments(CaptionDocuments):
    """An image-caption record (parquet / JSON(L) / `save_to_disk`: CC3M-style `{image, caption}`,
    img2dataset's parquet output) -> the same document as a tar pair."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, processor: VisionProcessor, caption_field: str = "txt"):
        super().__init__(tokenizer, processor, caption_field)
        self.caption_fields = CAPTION_FIELDS if caption_field == "txt" else (caption_field,)

    def __call__(self, sample: Any) -> Document:
        record, key, root = _record(sample)
        if record.get("status") not in (None, "success"):  # img2dataset keeps its failures as rows
            raise FailedDownload(f"{key}: status {record.get('status')!r}")
        kind, media = "image", _first_payload(record, ("image", *IMAGE_EXTENSIONS))
        if media is None:
            kind, media = "video", _first_payload(record, ("video", *VIDEO_FILE_EXTENSIONS))
        if media is None:
            raise NoImage(f"{key}: no image or video in the columns image, {', '.join(IMAGE_EXTENSIONS)}, video, "
                          f"{', '.join(VIDEO_FILE_EXTENSIONS)}")
        _refuse_remote(media, key)
        texts = [record.get(f) for f in self.caption_fields]
        caption = next((t.strip() for t in texts if isinstance(t, str) and t.strip()), "")
        if not caption:
            raise NoCaption(f"{key}: no non-empty text in {' / '.join(self.caption_fields)}")
        return self.pair_document(str(record.get("id") or key), _media(media, root, key, kind), caption, kind)


def _first_payload(record: dict, columns: tuple[str, ...]) -> Any:
    return next((p for p in (media_payload(record.get(c)) for c in columns) if p is not None), None)


def _refuse_remote(image: Any, key: str) -> None:
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        raise RemoteImage(f"{key}: {image[:80]} is a URL; download the images first")


def _names_records(cfg: SourceConfig) -> bool:
    """Whether a captions path names record files (or a folder of them) rather than tar shards."""
    if cfg.format != "auto":
        return True
    if cfg.path.startswith(REMOTE_PREFIXES):
        return False
    path = Path(cfg.path)
    if path.is_dir():
        return not any(path.rglob("*.tar"))
    return path.suffix in tuple(f".{f}" for f in FORMATS if f not in ("auto", "disk"))


def _caption(sample: dict[str, Any], meta: dict, field_name: str) -> str:
    if field_name == "txt":
        raw = sample.get("txt")
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    else:
        text = meta.get(field_name)
    return text.strip() if isinstance(text, str) else ""


def _record(sample: Any) -> tuple[dict, str, str | None]:
    """(record, key, image root) of a `RecordShards` sample; JSONL records arrive as bytes."""
    record, key, root = sample["record"], str(sample.get("__key__")), sample.get("root")
    if isinstance(record, (bytes, bytearray, str)):
        try:
            record = json.loads(record)
        except ValueError as exc:  # also UnicodeDecodeError
            raise MalformedSample(f"{key}: not JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise MalformedSample(f"{key}: a record must be an object")
    return record, key, root


class ObelicsDocuments(InterleavedDocuments):
    """An OBELICS-style record -> its texts and images in position order, then `<|endoftext|>`.

    `texts[i]` and `images[i]` describe position i; exactly one is non-null. An image is bytes, an
    HF `Image` value (PIL or `{"bytes", "path"}`) or a path (relative to the image root). MMC4's
    records (`text_list`, `image_info`) are read as the same positions (`_mmc4_positions`)."""

    def __call__(self, sample: Any) -> Document:
        record, key, root = _record(sample)
        if "text_list" in record and "texts" not in record:
            texts, images = _mmc4_positions(record, key)
        else:
            texts, images = record.get("texts"), record.get("images")
        if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images):
            raise MalformedSample(f"{key}: texts and images must be lists of one length")
        doc = DocumentBuilder(str(record.get("id") or key))
        for i, (text, image) in enumerate(zip(texts, images)):
            if (text is None) == (image is None):
                raise MalformedSample(f"{key}: position {i} needs exactly one of text / image")
            if text is not None:
                if not isinstance(text, str):
                    raise MalformedSample(f"{key}: texts[{i}] is not a string")
                self.add_text(doc, text)
                continue
            _refuse_remote(media_payload(image), f"{key}: images[{i}]")
            self.add_image(doc, _media(image, root, key))
        if not doc.ids:
            raise MalformedSample(f"{key}: empty document")
        doc.add_tokens([self.special.eos], train=True)
        return doc.build()


def _mmc4_positions(record: dict, key: str) -> tuple[list, list]:
    """MMC4's page -> OBELICS positions: its `text_list` sentences joined by spaces, each image of
    `image_info` ({image_name, matched_text_index, ...}; the file under the image root, or its
    `image` bytes) before the sentence it was matched to."""
    sentences, infos = record.get("text_list"), record.get("image_info") or []
    if not isinstance(sentences, list) or not isinstance(infos, list):
        raise MalformedSample(f"{key}: text_list and image_info must be lists")
    before: dict[int, list] = {}
    for info in infos:
        index = info.get("matched_text_index") if isinstance(info, dict) else None
        image = (media_payload(info.get("image")) or info.get("image_name")) if isinstance(info, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(sentences) or not image:
            raise MalformedSample(f"{key}: an image_info entry needs image_name and a matched_text_index "
                                  f"within text_list")
        before.setdefault(index, []).append(image)
    texts: list = []
    images: list = []
    for i, sentence in enumerate(sentences):
        for image in before.get(i, []):
            texts.append(None)
            images.append(image)
        texts.append(sentence if i == 0 or not isinstance(sentence, str) else " " + sentence)
        images.append(None)
    return texts, images


class TextDocuments(InterleavedDocuments):
    """A plain-text record -> its text, then `<|endoftext|>`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, processor: VisionProcessor, text_field: str = "text"):
        super().__init__(tokenizer, processor)
        self.text_field = text_field

    def __call__(self, sample: Any) -> Document:
        record, key, _ = _record(sample)
        text = record.get(self.text_field)
        if not isinstance(text, str) or not text.strip():
            raise NoText(f"{key}: no non-empty string {self.text_field!r}")
        doc = DocumentBuilder(str(record.get("id") or key))
        self.add_text(doc, text)
        doc.add_tokens([self.special.eos], train=True)
        return doc.build()


def build_part(cfg: SourceConfig, tokenizer: PreTrainedTokenizerBase, processor: VisionProcessor,
               seed: int = 0, shuffle: bool = True) -> MixturePart:
    """The sample source and document builder of one `data.sources` entry (missing data fails here)."""
    records = cfg.kind not in TAR_KINDS or (cfg.kind == "captions" and _names_records(cfg))
    if records:
        source: Any = RecordShards(cfg.path, cfg.records_per_shard, shuffle, seed, cfg.format, cfg.image_root)
    else:
        source = TarShards(cfg.path)
    if cfg.kind == "interleaved":
        documents: Any = InterleavedDocuments(tokenizer, processor)
    elif cfg.kind == "captions":
        documents = (RecordCaptionDocuments if records else CaptionDocuments)(tokenizer, processor, cfg.caption_field)
    elif cfg.kind == "obelics":
        documents = ObelicsDocuments(tokenizer, processor)
    else:
        documents = TextDocuments(tokenizer, processor, cfg.text_field)
    check_usable(f"data.sources[{cfg.name}] ({cfg.kind})", source, documents)
    return MixturePart(cfg.name, source, documents, cfg.weight)


def build_mixture(sources: list[SourceConfig], tokenizer: PreTrainedTokenizerBase, processor: VisionProcessor,
                  seed: int = 0, shuffle: bool = True) -> list[MixturePart]:
    return [build_part(s, tokenizer, processor, seed, shuffle) for s in sources]
