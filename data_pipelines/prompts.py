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
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from transformers import PreTrainedTokenizerBase

from .document import Document, DocumentBuilder, Visual
from .processor import VisionProcessor, image_token_ids
from .tokenizer import SpecialTokens

KNOWN_FIELDS = ("id", "domain", "messages", "question", "images", "answer", "difficulty")


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
    difficulty: float | str | None = None  # human label: pass rate or tier name
    info: dict[str, Any] = field(default_factory=dict)  # extra fields, passed to the verifier


def _count_image_items(messages: list[dict]) -> int:
    n = 0
    for msg in messages:
        if isinstance(msg.get("content"), list):
            n += sum(1 for item in msg["content"] if isinstance(item, dict) and item.get("type") == "image")
    return n


def parse_record(raw: dict[str, Any]) -> PromptRecord:
    """Validate one raw record; raise PromptRecordError with a counter reason."""
    if not isinstance(raw, dict):
        raise PromptRecordError("malformed_record", "not an object")
    rid = raw.get("id")
    if not isinstance(rid, str) or not rid:
        raise PromptRecordError("malformed_record", "id must be a non-empty string")
    domain = raw.get("domain")
    if not isinstance(domain, str) or not domain:
        raise PromptRecordError("malformed_record", f"{rid}: domain must be a non-empty string")
    if raw.get("answer") is None:
        raise PromptRecordError("missing_answer", f"{rid}: no answer")
    images = raw.get("images") or []
    if not isinstance(images, list):
        raise PromptRecordError("malformed_record", f"{rid}: images must be a list")
    messages, question = raw.get("messages"), raw.get("question")
    if (messages is None) == (question is None):
        raise PromptRecordError("malformed_record", f"{rid}: give exactly one of messages or question")
    if question is not None:
        if not isinstance(question, str) or not question.strip():
            raise PromptRecordError("malformed_record", f"{rid}: question must be a non-empty string")
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
    elif not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant", "observation") for m in messages
    ):
        raise PromptRecordError("malformed_record", f"{rid}: messages must be a list of chat turns")
    elif _count_image_items(messages) != len(images):
        raise PromptRecordError("image_count_mismatch", f"{rid}: image items in messages != len(images)")
    difficulty = raw.get("difficulty")
    if difficulty is not None and not isinstance(difficulty, (int, float, str)):
        raise PromptRecordError("malformed_record", f"{rid}: difficulty must be a number or a tier name")
    info = {k: v for k, v in raw.items() if k not in KNOWN_FIELDS}
    return PromptRecord(rid, domain, messages, raw["answer"], list(images), difficulty, info)


def _raw_records(path: Path) -> tuple[list[Any], Counter]:
    """JSONL lines, or the rows of an HF dataset (a `save_to_disk` directory, .parquet, .json)."""
    bad = Counter()
    if path.is_file() and path.suffix == ".jsonl":
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad["malformed_json"] += 1
        return rows, bad
    import datasets  # only for HF datasets: it is slow to import

    if path.is_dir():
        dataset = datasets.load_from_disk(str(path))
    elif path.suffix in (".parquet", ".json"):
        dataset = datasets.load_dataset(path.suffix[1:], data_files=str(path), split="train")
    else:
        raise ValueError(f"prompt data {path}: expected .jsonl, .parquet, .json or a save_to_disk directory")
    if isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"prompt data {path} holds several splits ({list(dataset)}); point at one")
    return list(dataset), bad


def load_prompt_records(path: str | Path) -> tuple[list[PromptRecord], Counter]:
    """All usable records of a prompt file, and counts of the skipped ones by reason."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt data not found: {path}")
    rows, skipped = _raw_records(path)
    records, seen = [], set()
    for raw in rows:
        try:
            record = parse_record(raw)
        except PromptRecordError as err:
            skipped[err.reason] += 1
            continue
        if record.id in seen:
            skipped["duplicate_id"] += 1
            continue
        seen.add(record.id)
        records.append(record)
    return records, skipped


# ---- encoding ---------------------------------------------------------------------------------
@dataclass
class EncodedPrompt:
    """A rendered prompt: what the trainer sees (images expanded) and what vLLM takes (one
    placeholder per image, PIL/bytes images passed as multi-modal data)."""

    record: PromptRecord
    input_ids: list[int]  # expanded: <|begin_of_image|> <|image|>*N <|end_of_image|>
    mm_token_type_ids: list[int]
    visuals: list[Visual]
    raw_ids: list[int]  # chat-template ids with one <|image|> per image (vLLM expands itself)
    image_sources: list[Any]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def pixel_values(self) -> torch.Tensor | None:
        return torch.cat([v.pixel_values for v in self.visuals]) if self.visuals else None

    @property
    def image_grid_thw(self) -> torch.Tensor | None:
        return torch.stack([v.grid_thw for v in self.visuals]) if self.visuals else None


def resolve_image(source: Any, image_root: str | Path | None) -> Any:
    """A path relative to the image root becomes absolute; HF image dicts become their bytes/path."""
    if isinstance(source, dict):  # HF `Image(decode=False)` rows: {"bytes": ..., "path": ...}
        source = source.get("bytes") or source.get("path")
    if isinstance(source, str) and image_root is not None and not os.path.isabs(source):
        return str(Path(image_root) / source)
    return source


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


def encode_prompt_record(
    record: PromptRecord,
    tokenizer: PreTrainedTokenizerBase,
    processor: VisionProcessor,
    image_root: str | Path | None = None,
    system_prompt: str | None = None,
) -> EncodedPrompt:
    """Render the chat template with a generation prompt and process the images.
    Raises the processor's BadSample (bad image) — the caller counts and skips."""
    special = SpecialTokens.from_tokenizer(tokenizer)
    messages = record.messages
    if system_prompt and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raw_ids = tokenizer.encode(text, add_special_tokens=False)
    sources = [resolve_image(s, image_root) for s in record.images]
    processed = [processor.process_image(s) for s in sources]
    ids, types, visuals = [], [], []
    images = iter(processed)
    i = 0
    while i < len(raw_ids):
        if raw_ids[i : i + 3] == [special.image_start, special.image, special.image_end]:
            image = next(images, None)
            if image is None:
                raise PromptRecordError("image_count_mismatch", f"{record.id}: more image placeholders than images")
            ids += image_token_ids(image.num_tokens, special)
            types += [0] + [1] * image.num_tokens + [0]
            visuals.append(Visual(image.pixel_values, image.grid_thw))
            i += 3
        else:
            ids.append(raw_ids[i])
            types.append(0)
            i += 1
    if next(images, None) is not None:
        raise PromptRecordError("image_count_mismatch", f"{record.id}: more images than placeholders")
    return EncodedPrompt(record, ids, types, visuals, raw_ids, sources)


def rollout_document(prompt: EncodedPrompt, response_ids: list[int], response_train: list[bool],
                     key: str, token_weight: float = 1.0) -> Document:
    """Prompt (never trained) + response tokens (trained where `response_train`: tokens the
    engine inserted, such as a forced `</think><answer>`, are not the policy's samples)."""
    if len(response_ids) != len(response_train):
        raise ValueError("response_ids and response_train differ in length")
    builder = DocumentBuilder(key)
    visuals = iter(prompt.visuals)
    start = 0
    types = prompt.mm_token_type_ids
    i = 0
    while i < len(prompt.input_ids):  # copy text runs, and each image span as an atomic visual
        if types[i] == 1:
            builder.add_tokens(prompt.input_ids[start : i - 1], train=False)
            end = i
            while end < len(types) and types[end] == 1:
                end += 1
            span = slice(i - 1, end + 1)  # with the begin/end markers
            builder.add_visual(prompt.input_ids[span], types[span], next(visuals), "image")
            start = i = end + 1
        else:
            i += 1
    builder.add_tokens(prompt.input_ids[start:], train=False)
    for token, train in zip(response_ids, response_train):
        builder.add_tokens([token], train=train)
    doc = builder.build()
    doc.token_weight = token_weight
    return doc


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
    data_path = Path(data_path)
    if data_path.is_dir():
        return data_path / "difficulty.jsonl"
    return data_path.with_name(data_path.name.rsplit(".", 1)[0] + ".difficulty.jsonl")


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
