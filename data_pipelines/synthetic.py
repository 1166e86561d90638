"""Deterministic synthetic corpora for tests, the demo and benchmarks (no downloads).

Images are drawn with PIL: coloured shapes ("There are 3 red circles."), rendered words and
arithmetic ("17 + 25" drawn, "= 42" in the text). Everything is a pure function of the seed.
"""

from __future__ import annotations

import functools
import io
import json
import math
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .shards import write_shards

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "orange": (240, 140, 20),
    "purple": (140, 60, 180),
}
SHAPES = ("square", "circle", "triangle")
WORDS = (
    "apple", "river", "stone", "cloud", "garden", "window", "paper", "bridge", "forest", "candle",
    "silver", "orange", "winter", "summer", "planet", "rocket", "violin", "island", "mirror", "pencil",
    "market", "castle", "signal", "number", "letter", "circle", "square", "shadow", "harbor", "lantern",
)
ASPECTS = (1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16, 2.0, 0.5)
MIN_SIDE, MAX_SIDE = 56, 448


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # scalable built-in font (Pillow >= 10.1)


def _image_size(rng: random.Random) -> tuple[int, int]:
    """(width, height) with sides in [56, 448] and one of several aspect ratios."""
    long = rng.randint(2 * MIN_SIDE, MAX_SIDE)
    ratio = rng.choice(ASPECTS)
    short = max(MIN_SIDE, round(long / max(ratio, 1 / ratio)))
    return (long, short) if ratio >= 1 else (short, long)


def _background(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(232, 255) for _ in range(3))


def draw_shapes(size: tuple[int, int], shapes: list[tuple[str, str]], rng: random.Random) -> Image.Image:
    """Draw (kind, colour) shapes in distinct cells of a grid so that none overlap."""
    w, h = size
    cols, rows = max(2, w // 48), max(2, h // 48)
    if len(shapes) > cols * rows:
        raise ValueError(f"{len(shapes)} shapes do not fit a {w}x{h} image")
    cw, ch = w / cols, h / rows
    img = Image.new("RGB", size, _background(rng))
    draw = ImageDraw.Draw(img)
    for (kind, colour), cell in zip(shapes, rng.sample(range(cols * rows), len(shapes))):
        side = min(cw, ch) * rng.uniform(0.5, 0.8)
        cx = (cell % cols + 0.5) * cw + rng.uniform(-0.1, 0.1) * (cw - side)
        cy = (cell // cols + 0.5) * ch + rng.uniform(-0.1, 0.1) * (ch - side)
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        fill = COLOURS[colour]
        if kind == "square":
            draw.rectangle(box, fill=fill)
        elif kind == "circle":
            draw.ellipse(box, fill=fill)
        elif kind == "triangle":
            draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
        else:
            raise ValueError(f"unknown shape {kind}")
    return img


def draw_text(size: tuple[int, int], text: str, rng: random.Random) -> Image.Image:
    """Render `text` centred, as large as fits (one word per line on portrait images)."""
    w, h = size
    lines = text.split() if h > w else [text]
    body = "\n".join(lines)
    img = Image.new("RGB", size, _background(rng))
    draw = ImageDraw.Draw(img)
    font_size = max(6, int(0.6 * h / len(lines)))
    while True:
        bbox = draw.multiline_textbbox((0, 0), body, font=_font(font_size), align="center")
        left, top, right, bottom = bbox
        if font_size == 6 or (right - left <= 0.9 * w and bottom - top <= 0.9 * h):
            break
        font_size = max(6, int(font_size * 0.85))
    xy = ((w - (right - left)) / 2 - left, (h - (bottom - top)) / 2 - top)
    ink = tuple(rng.randint(0, 90) for _ in range(3))
    draw.multiline_text(xy, body, font=_font(font_size), fill=ink, align="center")
    return img


def _shapes_item(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, str]:
    kind, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    cells = max(2, size[0] // 48) * max(2, size[1] // 48)
    n = rng.randint(1, min(6, cells))
    verb = "is" if n == 1 else "are"
    return draw_shapes(size, [(kind, colour)] * n, rng), f"There {verb} {_plural(n, colour + ' ' + kind)}."


def _words_item(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, str]:
    words = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
    return draw_text(size, words, rng), f'The image says "{words}".'


def _arithmetic(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    if rng.random() < 0.5:
        return f"{a} + {b}", a + b
    a, b = max(a, b), min(a, b)
    return f"{a} - {b}", a - b


def _arithmetic_item(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, str]:
    expr, value = _arithmetic(rng)
    return draw_text(size, expr, rng), f"= {value}"


def make_image(rng: random.Random) -> tuple[Image.Image, str]:
    """One random image (shapes, words or arithmetic) and the text that describes it."""
    item = rng.choice((_shapes_item, _words_item, _arithmetic_item))
    return item(rng, _image_size(rng))


def _sentence(rng: random.Random) -> str:
    """Filler prose with learnable structure (facts a tiny model can pick up)."""
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        return f"{a} plus {b} is {a + b}."
    if kind == 1:
        c1, c2 = rng.sample(list(COLOURS), 2)
        return f"The {c1} {rng.choice(SHAPES)} is next to the {c2} {rng.choice(SHAPES)}."
    if kind == 2:
        return f"We count {_plural(rng.randint(1, 9), rng.choice(SHAPES))} in the picture."
    words = rng.sample(WORDS, rng.randint(4, 9))
    return " ".join(words).capitalize() + "."


def _prose(rng: random.Random, num_words: int) -> str:
    sentences: list[str] = []
    count = 0
    while count < num_words:
        sentences.append(_sentence(rng))
        count += len(sentences[-1].split())
    return " ".join(sentences)


def _save(img: Image.Image, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jpg":
        img.save(path, format="JPEG", quality=90)
    else:
        img.save(path, format="PNG")


def moving_shape_frames(rng: random.Random, num_frames: int, size: tuple[int, int] = (112, 84)
                        ) -> tuple[list[Image.Image], str]:
    """A short clip: one coloured shape crossing the frame, and the sentence describing it."""
    kind, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    w, h = size
    r = rng.randint(8, 14)
    left_to_right = rng.random() < 0.5
    y = rng.randint(r, h - r)
    frames = []
    for i in range(num_frames):
        x0 = r + (w - 2 * r) * i / max(1, num_frames - 1)
        x = x0 if left_to_right else w - x0
        img = Image.new("RGB", size, (245, 245, 240))
        draw = ImageDraw.Draw(img)
        box = (x - r, y - r, x + r, y + r)
        if kind == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        elif kind == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=COLOURS[colour])
        frames.append(img)
    way = "from left to right" if left_to_right else "from right to left"
    return frames, f"A {colour} {kind} moves {way}."


def write_mp4(frames: list[Image.Image], path: Path, fps: int) -> None:
    """Encode frames as an MPEG-4 Part 2 .mp4 with PyAV (FFmpeg's own encoder, in every wheel)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _video_segment(rng: random.Random, out_dir: Path, name: str) -> tuple[dict, str]:
    """A 2-4 s moving-shape clip: an .mp4 file (half the time) or its frames as JPEGs at 4 fps."""
    fps = 4
    frames, caption = moving_shape_frames(rng, fps * rng.randint(2, 4))
    if rng.random() < 0.5:
        rel = f"videos/{name}.mp4"
        write_mp4(frames, out_dir / rel, fps)
        return {"video": rel}, caption
    paths = []
    for i, img in enumerate(frames):
        paths.append(f"videos/{name}/{i:03d}.jpg")
        _save(img, out_dir / paths[-1], "jpg")
    return {"video": paths, "fps": fps}, caption


def make_interleaved_corpus(
    out_dir: str | Path,
    num_docs: int,
    seed: int,
    images_per_doc: tuple[int, int] = (0, 3),
    text_words: tuple[int, int] = (20, 400),
    video_fraction: float = 0.0,
) -> Path:
    """Write `out_dir/docs.jsonl` + `out_dir/images/` in the shard writer's input format.

    Each image is followed by the text describing it; prose fills the rest. With `video_fraction`
    > 0 that share of the documents also holds a short moving-shape video (`out_dir/videos/`, an
    .mp4 written with PyAV or a list of frames with their fps), followed by its description.
    Returns the path of docs.jsonl; media paths in it are relative to `out_dir` (the writer's
    image root).
    """
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "docs.jsonl"
    with path.open("w") as f:
        for i in range(num_docs):
            doc_id = f"doc-{i:06d}"
            n_images = rng.randint(*images_per_doc)
            chunk_words = rng.randint(*text_words) // (n_images + 1)
            segments: list[dict[str, str]] = []
            if n_images == 0 or rng.random() < 0.75:  # some documents open with an image
                segments.append({"text": _prose(rng, chunk_words)})
            for j in range(n_images):
                img, caption = make_image(rng)
                rel = f"images/{doc_id}-{j}.{rng.choice(('jpg', 'png'))}"
                _save(img, out_dir / rel, rel.rsplit(".", 1)[1])
                segments.append({"image": rel})
                segments.append({"text": f"{caption} {_prose(rng, chunk_words)}"})
            if video_fraction > 0 and rng.random() < video_fraction:  # no draw otherwise: old corpora unchanged
                video, caption = _video_segment(rng, out_dir, doc_id)
                segments += [video, {"text": f"{caption} {_prose(rng, chunk_words)}"}]
            f.write(json.dumps({"id": doc_id, "segments": segments}) + "\n")
    return path


@dataclass(frozen=True)
class DocLength:
    """Token counts of one document: text tokens and the LLM tokens of each image."""

    text_tokens: int
    image_tokens: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.text_tokens + sum(self.image_tokens)


def make_length_mix(
    num_docs: int,
    seed: int,
    median_text_tokens: int = 300,
    sigma: float = 1.3,
    max_text_tokens: int = 32768,
    images_per_doc: tuple[int, int] = (0, 4),
    image_side_tokens: tuple[int, int] = (8, 32),
) -> list[DocLength]:
    """Long-tailed document lengths for the packing benchmark (no images drawn).

    Text lengths are lognormal (median `median_text_tokens`; sigma 1.3 puts ~0.6% of documents
    above 8192 tokens). Each image has h x w merged-patch tokens with h, w uniform in
    `image_side_tokens` (64..1024 tokens by default), as real image grids do.
    """
    rng = random.Random(seed)
    mu = math.log(median_text_tokens)
    docs = []
    for _ in range(num_docs):
        text = min(max_text_tokens, max(1, round(rng.lognormvariate(mu, sigma))))
        images = tuple(
            rng.randint(*image_side_tokens) * rng.randint(*image_side_tokens)
            for _ in range(rng.randint(*images_per_doc))
        )
        docs.append(DocLength(text, images))
    return docs


def _rewrite_tar(path: Path, edit: dict[str, bytes | None]) -> None:
    """Rewrite a tar with some members' bytes replaced (None drops the member)."""
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            data = edit.get(info.name, data)
            if data is None:
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_corrupt_corpus(out_dir: str | Path, seed: int, seq_len: int = 512) -> tuple[Path, dict[str, str]]:
    """Shards mixing good documents (keys `good-NNN`) with one of each defect (keys `bad-*`).

    Returns the shard directory and {key: reason} for the bad ones:
      truncated_json   `KEY.json` cut in half (`{"id": "bad-trunc...`)
      invalid_json     `KEY.json` is not JSON at all
      missing_member   the JSON references an image member absent from the tar
      truncated_image  a JPEG cut short (its header and the recorded size still look valid)
      aspect_ratio     a 3000x10 image (ratio 300, beyond GLM's limit of 200)
      too_long         more than `seq_len` text tokens (2 * seq_len words)
      truncated_tar    last sample of the last shard, whose file ends mid-member
    index.json is left as written: the reader must not trust its counts for correctness.
    """
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    src = out_dir / "source"
    (src / "images").mkdir(parents=True, exist_ok=True)

    def image_doc(doc_id: str, img: Image.Image, fmt: str, caption: str) -> dict:
        rel = f"images/{doc_id}.{fmt}"
        _save(img, src / rel, fmt)
        return {"id": doc_id, "segments": [{"text": _prose(rng, 12)}, {"image": rel}, {"text": caption}]}

    def good(i: int) -> dict:
        img, caption = make_image(rng)
        return image_doc(f"good-{i:03d}", img, rng.choice(("jpg", "png")), caption)

    def shapes_doc(doc_id: str, size: tuple[int, int] = (160, 120)) -> dict:
        img, caption = _shapes_item(rng, size)
        return image_doc(doc_id, img, "jpg", caption)

    # Byte-level BPE never merges across spaces: 2 * seq_len words are > seq_len tokens.
    long_text = " ".join(rng.choice(WORDS) for _ in range(2 * seq_len))
    too_long = {"id": "bad-too-long", "segments": [{"text": long_text}]}
    thin = draw_shapes((3000, 10), [("square", "red")] * 8, rng)
    # Order fixes the shard layout (4 per shard): 4, 4, 4, 2 with the tar-truncation victim last.
    docs = [
        good(0), shapes_doc("bad-truncated-json"), good(1), shapes_doc("bad-invalid-json"),
        shapes_doc("bad-truncated-image", (240, 180)), good(2), shapes_doc("bad-missing-member"), good(3),
        image_doc("bad-aspect-ratio", thin, "png", "A thin strip."), too_long, good(4), good(5),
        good(6), shapes_doc("bad-truncated-tar", (200, 200)),
    ]
    (src / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    shard_dir = out_dir / "shards"
    stats = write_shards(src / "docs.jsonl", src, shard_dir, samples_per_shard=4, overwrite=True)
    shards = [shard_dir / s["name"] for s in stats.shards]

    def member(shard: Path, name: str) -> bytes:
        with tarfile.open(shard) as tar:
            return tar.extractfile(name).read()

    jpeg = member(shards[1], "bad-truncated-image.img000.jpg")
    _rewrite_tar(shards[0], {
        "bad-truncated-json.json": member(shards[0], "bad-truncated-json.json")[:24],
        "bad-invalid-json.json": b'{"id": "bad-invalid-json", "segments": [}\xff',
    })
    _rewrite_tar(shards[1], {
        "bad-truncated-image.img000.jpg": jpeg[: len(jpeg) // 2],
        "bad-missing-member.img000.jpg": None,
    })
    # Cut the last shard in the middle of its last member's data (the victim's JSON).
    with tarfile.open(shards[3]) as tar:
        last = tar.getmembers()[-1]
    with shards[3].open("r+b") as f:
        f.truncate(last.offset_data + last.size // 2)

    bad = {
        "bad-truncated-json": "truncated_json",
        "bad-invalid-json": "invalid_json",
        "bad-truncated-image": "truncated_image",
        "bad-missing-member": "missing_member",
        "bad-aspect-ratio": "aspect_ratio",
        "bad-too-long": "too_long",
        "bad-truncated-tar": "truncated_tar",
    }
    return shard_dir, bad


@dataclass(frozen=True)
class VqaItem:
    image: Image.Image
    question: str
    answer: str
    domain: str
    reasoning: str  # a short chain of thought that ends at the answer
    statement: str  # the answer as a sentence, `{}` where the boxed value goes


def _vqa_item(rng: random.Random, draw_size) -> VqaItem:
    """One question about one drawn image: colour of a shape, count of a shape, value of a sum."""
    domain = rng.choice(("colour", "counting", "arithmetic"))
    size = draw_size(rng)
    kind, other = rng.sample(SHAPES, 2)
    colour, other_colour = rng.sample(list(COLOURS), 2)
    cells = max(2, size[0] // 48) * max(2, size[1] // 48)
    if domain == "colour":
        distractors = rng.randint(0, min(2, cells - 1))
        img = draw_shapes(size, [(kind, colour)] + [(other, other_colour)] * distractors, rng)
        return VqaItem(img, f"What colour is the {kind}?", colour, domain,
                       f"The question asks for the colour of the {kind}. There is one {kind} in the image "
                       f"and it is filled with {colour}.", f"The {kind} is {{}}.")
    if domain == "counting":
        count = rng.randint(1, min(6, cells - 1))
        distractors = rng.randint(0, min(3, cells - count))
        img = draw_shapes(size, [(kind, colour)] * count + [(other, other_colour)] * distractors, rng)
        return VqaItem(img, f"How many {kind}s are there?", str(count), domain,
                       f"I count the {kind}s one by one and ignore the {other}s. "
                       f"There {'is' if count == 1 else 'are'} {_plural(count, kind)}.",
                       f"There {'is' if count == 1 else 'are'} {{}} {kind if count == 1 else kind + 's'}.")
    expr, value = _arithmetic(rng)
    img = draw_text(size, expr, rng)
    return VqaItem(img, "What is the value of the expression in the image?", str(value), domain,
                   f"The image shows {expr}. Working it out, {expr} = {value}.", "The value is {}.")


def make_vqa_records(out_dir: str | Path, n: int, seed: int) -> Path:
    """Write `out_dir/vqa.jsonl`: {id, images, question, answer, domain} with PNGs under images/.

    Domains: "colour" (what colour is the square?), "counting" (how many circles, among
    distractors of another kind) and "arithmetic" (the value of a drawn expression).
    """
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    path = out_dir / "vqa.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(n):
            item = _vqa_item(rng, _image_size)
            rel = f"images/vqa-{i:06d}.png"
            _save(item.image, out_dir / rel, "png")
            record = {"id": f"vqa-{i:06d}", "images": [rel], "question": item.question, "answer": item.answer,
                      "domain": item.domain}
            f.write(json.dumps(record) + "\n")
    return path


BOX = "<|begin_of_box|>{}<|end_of_box|>"


def cot_response(reasoning: str, statement: str, final: str) -> str:
    """`<think>reasoning</think><answer>statement with the final value boxed</answer>`."""
    return f"<think>{reasoning}</think><answer>{statement.format(BOX.format(final))}</answer>"


def make_sft_records(
    out_dir: str | Path,
    n: int,
    seed: int,
    name: str = "sft.jsonl",
    image_side: tuple[int, int] = (56, 224),
    mix: dict[str, float] | None = None,
) -> Path:
    """Write `out_dir/<name>`: chat records (docs/data.md) whose responses are long-CoT formatted,
    `<think>…</think><answer>…<|begin_of_box|>X<|end_of_box|>…</answer>`, images under images/.

    Kinds, drawn with probabilities `mix` (default {"image": 0.7, "text": 0.1, "multi_image": 0.1,
    "multi_turn": 0.05, "video": 0.05}): one-image VQA (colour / counting / arithmetic, as
    `make_vqa_records`), text-only sums, two images ("how many circles in both images?"), two
    turns about one image, and a 4-frame video of a moving shape ("what colour is the moving
    circle?"). Image sides are drawn in `image_side` pixels (small keeps CPU runs fast).
    """
    mix = mix or {"image": 0.7, "text": 0.1, "multi_image": 0.1, "multi_turn": 0.05, "video": 0.05}
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    path = out_dir / name
    stem = Path(name).stem

    def draw_size(r: random.Random) -> tuple[int, int]:
        return r.randint(*image_side), r.randint(*image_side)

    def save(img: Image.Image, rel: str) -> dict:
        _save(img, out_dir / rel, "png")
        return {"type": "image", "image": rel}

    def user(*items: dict | str) -> dict:
        return {"role": "user", "content": [{"type": "text", "text": i} if isinstance(i, str) else i for i in items]}

    def assistant(reasoning: str, statement: str, final: str) -> dict:
        return {"role": "assistant", "content": cot_response(reasoning, statement, final)}

    out_dir.mkdir(parents=True, exist_ok=True)
    kinds, weights = list(mix), list(mix.values())
    with path.open("w") as f:
        for i in range(n):
            rid = f"{stem}-{i:06d}"
            kind = rng.choices(kinds, weights)[0]
            if kind == "image":
                item = _vqa_item(rng, draw_size)
                messages = [user(save(item.image, f"images/{rid}.png"), item.question),
                            assistant(item.reasoning, item.statement, item.answer)]
            elif kind == "text":
                a, b = rng.randint(1, 99), rng.randint(1, 99)
                messages = [user(f"What is {a} plus {b}?"),
                            assistant(f"I add {a} and {b}: {a} + {b} = {a + b}.", "The sum is {}.", str(a + b))]
            elif kind == "multi_image":
                shape = rng.choice(SHAPES)
                counts, items = [], []
                for j in range(2):
                    size = draw_size(rng)
                    cells = max(2, size[0] // 48) * max(2, size[1] // 48)
                    counts.append(rng.randint(1, min(3, cells)))
                    colour = rng.choice(list(COLOURS))
                    items.append(save(draw_shapes(size, [(shape, colour)] * counts[-1], rng), f"images/{rid}-{j}.png"))
                total = sum(counts)
                messages = [user(*items, f"How many {shape}s are there in the two images together?"),
                            assistant(f"The first image has {_plural(counts[0], shape)} and the second has "
                                      f"{_plural(counts[1], shape)}, so {counts[0]} + {counts[1]} = {total}.",
                                      "Together there are {} " + f"{shape}s.", str(total))]
            elif kind == "multi_turn":
                item = _vqa_item(rng, draw_size)
                a, b = rng.randint(1, 20), rng.randint(1, 20)
                messages = [user(save(item.image, f"images/{rid}.png"), item.question),
                            assistant(item.reasoning, item.statement, item.answer),
                            user(f"Now, what is {a} times {b}?"),
                            assistant(f"I multiply {a} by {b}: {a} x {b} = {a * b}.", "The product is {}.", str(a * b))]
            else:
                shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
                size = draw_size(rng)
                frames = []
                for t in range(4):  # the shape jumps to a random cell in every frame
                    frame = draw_shapes(size, [(shape, colour)], rng)
                    rel = f"images/{rid}-f{t}.png"
                    _save(frame, out_dir / rel, "png")
                    frames.append(rel)
                messages = [user({"type": "video", "video": frames, "fps": 2}, f"What colour is the moving {shape}?"),
                            assistant(f"Every frame shows one {shape}, and it is {colour} in all of them.",
                                      f"The moving {shape} is {{}}.", colour)]
            f.write(json.dumps({"id": rid, "messages": messages}) + "\n")
    return path


# ---- verifiable RL task (text-only) ------------------------------------------------------------
RL_TASK_DOMAINS = ("max", "min")  # learnable by a ~1M-parameter model; "count" is a harder extra
RL_TASK_THINK = {"max": "I compare the numbers.", "min": "I compare the numbers.", "count": "I count the letter."}


def _rl_task_item(rng: random.Random, domain: str, size: int) -> tuple[str, str]:
    """(question, answer) of one item of `size` elements: the largest or smallest of single digits,
    or how often a letter occurs in a string over {a, b, c}."""
    if domain in ("max", "min"):
        digits = [rng.randint(0, 9) for _ in range(size)]
        word, pick = ("Largest", max) if domain == "max" else ("Smallest", min)
        return f"{word} number: {' '.join(map(str, digits))}", str(pick(digits))
    if domain != "count":
        raise ValueError(f"unknown RL task domain {domain!r}")
    letters = [rng.choice("abc") for _ in range(size)]
    target = rng.choice("abc")
    return f"Count {target} in: {' '.join(letters)}", str(letters.count(target))


def make_rl_task_records(path: str | Path, n: int, seed: int, sizes: tuple[int, int] = (1, 7),
                         domains: tuple[str, ...] = RL_TASK_DOMAINS) -> Path:
    """Write `n` RL prompt records `{id, domain, question, answer, size}` of a verifiable task a
    ~1M-parameter model learns on CPU: `max` / `min` (largest / smallest of `size` digits) and,
    if asked for, `count` (occurrences of a letter; beyond the tiny model's reach). Answers are
    integers, graded exactly (map the domains to the `counting` verifier)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            domain = domains[i % len(domains)]
            size = rng.randint(*sizes)
            question, answer = _rl_task_item(rng, domain, size)
            f.write(json.dumps({"id": f"{domain}-{seed}-{i:05d}", "domain": domain, "question": question,
                                "answer": answer, "size": size}) + "\n")
    return path


def rl_task_response(domain: str, answer: str) -> str:
    """The well-formed response to an RL task item (what a warm-start SFT teaches)."""
    return (f"<think>{RL_TASK_THINK[domain]}</think>"
            f"<answer><|begin_of_box|>{answer}<|end_of_box|></answer>")


def main(argv: list[str] | None = None) -> int:
    """`python -m data_pipelines.synthetic interleaved|vqa|sft --out DIR [--num N] [--seed S] [--name F]
    [--videos FRACTION --min-words N --max-words N]`"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m data_pipelines.synthetic")
    parser.add_argument("kind", choices=["interleaved", "vqa", "sft"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--num", type=int, default=400, help="documents or records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="sft.jsonl", help="sft: the JSONL file name under --out")
    parser.add_argument("--videos", type=float, default=0.0, help="interleaved: share of documents with a video")
    parser.add_argument("--min-words", type=int, default=20, help="interleaved: words per document, at least")
    parser.add_argument("--max-words", type=int, default=400, help="interleaved: words per document, at most")
    args = parser.parse_args(argv)
    if args.kind == "interleaved":
        path = make_interleaved_corpus(args.out, args.num, args.seed, text_words=(args.min_words, args.max_words),
                                       video_fraction=args.videos)
    elif args.kind == "vqa":
        path = make_vqa_records(args.out, args.num, args.seed)
    else:
        path = make_sft_records(args.out, args.num, args.seed, name=args.name)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
