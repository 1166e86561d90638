"""Visual verifiable tasks: one family of drawn scenes that feeds every stage (issue #12).

Why one family: the demo's stages should tell one story. Pretraining captions describe the very
scenes SFT reasons about and RL grades, so what the tiny model learns first (a caption opens with the
tally of colours, "I see 2 red and 1 blue shapes.") is the skill the later stages build on. Every task has a difficulty knob (`level`
1..5: more shapes and colours, longer numbers) and a ground truth in exactly the form its verifier
grades (docs/rewards.md):

    domain           question                                   verifier         answer
    visual_count     How many red shapes are there?             counting         "3"
    visual_majority  Which colour do most shapes have?          multiple_choice  "red" (+ options)
    visual_ocr       What number is written in the image?       ocr              "4071"
    visual_ground    Where is the circle? ...                   grounding        [[x1, y1, x2, y2]]

Scenes are drawn on a 112x112 canvas cut into a 4x4 grid of 28 px cells with at most one shape
per cell: a cell is exactly one LLM token of the GLM processor (14 px patches merged 2x2), so an
image costs 16 tokens and each token sees one shape. Everything is a pure function of
(seed, stage, split, index): the same arguments give the same bytes, and the first n records of a
larger run are the n records of a smaller one.

    python -m data_pipelines.visual_tasks --out DIR --num N --seed S --stage pretrain|sft|rl|all \
        [--split train] [--difficulty 1-5] [--tasks visual_count,visual_ocr] [--no-difficulty-label] \
        [--other-image-control]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .synthetic import COLOURS, SHAPES, cot_response

# The verifier of each domain (the default of `rewards.domain_verifiers`).
DOMAIN_VERIFIERS = {
    "visual_count": "counting",
    "visual_majority": "multiple_choice",
    "visual_ocr": "ocr",
    "visual_ground": "grounding",
}
DOMAINS = tuple(DOMAIN_VERIFIERS)
STAGES = ("pretrain", "sft", "rl")
COLOUR_OPTIONS = list(COLOURS)  # the majority task's options: a closed set, answered by name
# Record `difficulty` (a human label the curriculum reads as a tier prior) per level.
LEVEL_TIERS = {1: "very_easy", 2: "easy", 3: "medium", 4: "hard", 5: "very_hard"}


@dataclass(frozen=True)
class Level:
    """What a difficulty level draws: how many shapes, from how many colours; number length."""

    shapes: tuple[int, int]
    colours: int
    digits: int


LEVELS = {
    1: Level((2, 3), 2, 2),
    2: Level((4, 5), 3, 3),
    3: Level((6, 8), 3, 4),
    4: Level((9, 11), 4, 5),
    5: Level((12, 15), 5, 6),
}


@dataclass(frozen=True)
class Canvas:
    """Image size and grid; keep `cell` a multiple of 28 so a cell is whole LLM tokens."""

    width: int = 112
    height: int = 112
    cell: int = 28

    def __post_init__(self) -> None:
        if self.cell < 16 or self.rows < 1 or self.cols < 1:
            raise ValueError(f"canvas {self.width}x{self.height} needs at least one cell of >= 16 px")

    @property
    def rows(self) -> int:
        return self.height // self.cell

    @property
    def cols(self) -> int:
        return self.width // self.cell


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    row: int
    col: int
    box: tuple[int, int, int, int]  # pixels, x0, y0 inclusive and x1, y1 exclusive


@dataclass(frozen=True)
class VisualTask:
    """One drawn image with its question, graded answer, reasoning and caption."""

    domain: str
    level: int
    image: Image.Image
    question: str
    answer: Any  # the RL ground truth, in the form the domain's verifier grades
    reasoning: str  # the short chain of thought SFT teaches (inside <think>)
    statement: str  # the answer sentence, `{}` where the boxed answer goes
    caption: str  # pretraining text describing the image
    info: dict[str, Any] = field(default_factory=dict)  # extra record fields the verifier reads


@dataclass(frozen=True)
class FamilyConfig:
    """What one run writes: `num` records (documents for pretraining) of one split."""

    num: int
    seed: int = 0
    split: str = "train"
    levels: tuple[int, ...] = tuple(LEVELS)
    domains: tuple[str, ...] = DOMAINS
    canvas: Canvas = Canvas()
    label_difficulty: bool = True  # write `difficulty` (a tier name) in RL records
    images_per_doc: tuple[int, int] = (1, 3)
    other_image_control: bool = False  # RL stage: also write <split>_other_image.jsonl (see other_image_set)

    def __post_init__(self) -> None:
        if self.num < 0 or not self.levels or not self.domains:
            raise ValueError("num must be >= 0 and levels, domains non-empty")
        if unknown := [lv for lv in self.levels if lv not in LEVELS]:
            raise ValueError(f"unknown levels {unknown}; levels are {list(LEVELS)}")
        if unknown := [d for d in self.domains if d not in DOMAIN_VERIFIERS]:
            raise ValueError(f"unknown tasks {unknown}; tasks are {list(DOMAINS)}")
        if not self.split.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"split {self.split!r}: letters, digits, '-' and '_' only")


# ---- drawing -----------------------------------------------------------------------------------
def _background(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(232, 255) for _ in range(3))


def _shape_in_cell(rng: random.Random, canvas: Canvas, kind: str, colour: str, cell: int) -> Shape:
    """A shape of 60-85% of the cell, jittered inside it with a 1 px margin, so neighbours never
    touch: every shape is its own blob, for the model and for the tests that count blobs."""
    row, col = divmod(cell, canvas.cols)
    side = round(canvas.cell * rng.uniform(0.6, 0.85))
    x0 = col * canvas.cell + rng.randint(1, canvas.cell - side - 1)
    y0 = row * canvas.cell + rng.randint(1, canvas.cell - side - 1)
    return Shape(kind, colour, row, col, (x0, y0, x0 + side, y0 + side))


def place_shapes(rng: random.Random, canvas: Canvas, specs: list[tuple[str, str]]) -> list[Shape]:
    """(kind, colour) specs in distinct random cells, returned in reading order (row by row)."""
    if len(specs) > canvas.rows * canvas.cols:
        raise ValueError(f"{len(specs)} shapes do not fit a {canvas.rows}x{canvas.cols} grid")
    cells = sorted(rng.sample(range(canvas.rows * canvas.cols), len(specs)))
    return [_shape_in_cell(rng, canvas, kind, colour, cell) for (kind, colour), cell in zip(specs, cells)]


def draw_scene(canvas: Canvas, shapes: list[Shape], rng: random.Random) -> Image.Image:
    """The shapes on a light background, without anti-aliasing (colours are exact)."""
    img = Image.new("RGB", (canvas.width, canvas.height), _background(rng))
    draw = ImageDraw.Draw(img)
    for s in shapes:
        x0, y0, x1, y1 = s.box
        fill = COLOURS[s.colour]
        if s.kind == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif s.kind == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
    return img


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # scalable built-in font (Pillow >= 10.1)


def draw_number(canvas: Canvas, text: str, rng: random.Random) -> Image.Image:
    """`text` in dark ink at a random size (at least 45% of what fits) and position."""
    img = Image.new("RGB", (canvas.width, canvas.height), _background(rng))
    draw = ImageDraw.Draw(img)
    fit = int(canvas.height * 0.6)
    while fit > 10:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=_font(fit))
        if right - left <= 0.92 * canvas.width:
            break
        fit -= 1
    size = rng.randint(max(10, int(fit * 0.45)), fit)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=_font(size))
    x = rng.randint(0, max(0, canvas.width - (right - left))) - left
    y = rng.randint(0, max(0, canvas.height - (bottom - top))) - top
    draw.text((x, y), text, font=_font(size), fill=tuple(rng.randint(0, 90) for _ in range(3)))
    return img


def per_mille(box: tuple[int, int, int, int], canvas: Canvas) -> list[int]:
    """A pixel box as the grounding verifier's [x1, y1, x2, y2] in 0-999 of width / height."""
    x0, y0, x1, y1 = box
    sx, sy = 1000 / canvas.width, 1000 / canvas.height
    return [min(999, round(x0 * sx)), min(999, round(y0 * sy)), min(999, round(x1 * sx)), min(999, round(y1 * sy))]


# ---- words -------------------------------------------------------------------------------------
def _noun(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def listing(shapes: list[Shape]) -> str:
    """'Row by row: red circle, blue square.' — the perception step every reasoning starts with."""
    return "Row by row: " + ", ".join(f"{s.colour} {s.kind}" for s in shapes) + "."


def summary(shapes: list[Shape]) -> str:
    """'There are 2 red circles and 1 blue square.' (groups in order of first appearance)."""
    groups = Counter((s.colour, s.kind) for s in shapes)
    parts = [f"{n} {colour} {_noun(n, kind)}" for (colour, kind), n in groups.items()]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    first = next(iter(groups.values()))
    return f"There {'is' if first == 1 else 'are'} {body}."  # the verb agrees with the first group


def tally(shapes: list[Shape]) -> str:
    """'I see 2 red, 1 blue and 3 green shapes.' — colours in the fixed palette order.

    Why this and not a listing: each number is an aggregate over the image (how many cells hold a
    colour), which one attention layer reads off at once; a row-by-row listing needs the k-th shape
    in reading order for every k, which the tiny model does not learn in the demo's minutes (it
    copied the question's colour into every item instead)."""
    counts = Counter(s.colour for s in shapes)
    parts = [f"{counts[c]} {c}" for c in COLOUR_OPTIONS if counts[c]]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"I see {body} {_noun(len(shapes), 'shape')}."


def boxed_answer(domain: str, answer: Any) -> str:
    """The text a correct response boxes for a ground truth (grounding: compact JSON boxes)."""
    if domain == "visual_ground":
        return json.dumps(answer, separators=(",", ":"))
    return str(answer)


def correct_response(domain: str, answer: Any, reasoning: str = "I look at the image.",
                     statement: str = "{}") -> str:
    """A well-formed long-CoT response that boxes the right answer (SFT targets, tests)."""
    return cot_response(reasoning, statement, boxed_answer(domain, answer))


def task_response(task: VisualTask) -> str:
    """The SFT response of a task: its reasoning, then its answer sentence with the box."""
    return correct_response(task.domain, task.answer, task.reasoning, task.statement)


# ---- tasks -------------------------------------------------------------------------------------
def _scene(rng: random.Random, level: int, canvas: Canvas, kinds: Callable[[int], list[str]],
           colours: Callable[[int, list[str]], list[str]]) -> tuple[list[Shape], list[str]]:
    """Shapes of one level: n from the level's range (capped by the grid), kinds and colours
    drawn by the task; returns the shapes in reading order and the level's palette."""
    spec = LEVELS[level]
    n = min(rng.randint(*spec.shapes), canvas.rows * canvas.cols)
    palette = rng.sample(COLOUR_OPTIONS, spec.colours)
    specs = list(zip(kinds(n), colours(n, palette)))
    return place_shapes(rng, canvas, specs), palette


def _random_kinds(rng: random.Random) -> Callable[[int], list[str]]:
    return lambda n: [rng.choice(SHAPES) for _ in range(n)]


def _random_colours(rng: random.Random) -> Callable[[int, list[str]], list[str]]:
    return lambda n, palette: [rng.choice(palette) for _ in range(n)]


def count_task(rng: random.Random, level: int, canvas: Canvas) -> VisualTask:
    """How many shapes of one colour (a colour that is present: the count is 1..n)."""
    shapes, palette = _scene(rng, level, canvas, _random_kinds(rng), _random_colours(rng))
    colour = rng.choice([c for c in palette if any(s.colour == c for s in shapes)])
    count = sum(s.colour == colour for s in shapes)
    verb = "is" if count == 1 else "are"
    return VisualTask(
        "visual_count", level, draw_scene(canvas, shapes, rng), f"How many {colour} shapes are there?", str(count),
        tally(shapes), f"There {verb} {{}} {colour} {_noun(count, 'shape')}.",
        f"{tally(shapes)} {listing(shapes)} {summary(shapes)} {count} of them {verb} {colour}.",
    )


def _majority_colours(rng: random.Random) -> Callable[[int, list[str]], list[str]]:
    """Colours with a unique most frequent one (redrawn until the top count is not tied)."""
    def draw(n: int, palette: list[str]) -> list[str]:
        while True:
            colours = [rng.choice(palette) for _ in range(n)]
            top = Counter(colours).most_common(2)
            if len(top) == 1 or top[0][1] > top[1][1]:
                return colours
    return draw


def majority_task(rng: random.Random, level: int, canvas: Canvas) -> VisualTask:
    """Which colour most shapes have (multiple choice over every colour name, answered by name)."""
    shapes, palette = _scene(rng, level, canvas, _random_kinds(rng), _majority_colours(rng))
    counts = Counter(s.colour for s in shapes)
    colour = counts.most_common(1)[0][0]  # unique: the colours were drawn without a tied top
    return VisualTask(
        "visual_majority", level, draw_scene(canvas, shapes, rng), "Which colour do most shapes have?", colour,
        tally(shapes), "Most shapes are {}.",
        f"{tally(shapes)} {listing(shapes)} {summary(shapes)} Most shapes are {colour}.", {"options": list(COLOUR_OPTIONS)},
    )


def ocr_task(rng: random.Random, level: int, canvas: Canvas) -> VisualTask:
    """Read a number of the level's length (graded by edit distance: a near miss earns part)."""
    digits = LEVELS[level].digits
    number = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
    spelled = ", ".join(number)
    return VisualTask(
        "visual_ocr", level, draw_number(canvas, number, rng), "What number is written in the image?", number,
        f"The digits are {spelled}.", "The number is {}.",
        f"The number {number} is written in the image. Its digits are {spelled}.",
    )


def ground_task(rng: random.Random, level: int, canvas: Canvas) -> VisualTask:
    """The box of the only circle among squares and triangles (IoU-graded, per-mille)."""
    def kinds(n: int) -> list[str]:
        out = ["circle"] + [rng.choice(("square", "triangle")) for _ in range(n - 1)]
        rng.shuffle(out)
        return out

    shapes, _ = _scene(rng, level, canvas, kinds, _random_colours(rng))
    circle = next(s for s in shapes if s.kind == "circle")
    boxes = [per_mille(circle.box, canvas)]
    where = f"The circle is in row {circle.row + 1}, column {circle.col + 1}."
    return VisualTask(
        "visual_ground", level, draw_scene(canvas, shapes, rng),
        "Where is the circle? Give its box [[x1,y1,x2,y2]] in 0-999.", boxes,
        f"{listing(shapes)} {where}", "The circle is at {}.",
        f"{listing(shapes)} {summary(shapes)} {where} The circle is at {boxed_answer('visual_ground', boxes)}.",
    )


TASKS: dict[str, Callable[[random.Random, int, Canvas], VisualTask]] = {
    "visual_count": count_task, "visual_majority": majority_task, "visual_ocr": ocr_task, "visual_ground": ground_task,
}


def item_rng(cfg: FamilyConfig, stage: str, index: int) -> random.Random:
    """The RNG of one record: a pure function of (seed, stage, split, index), so stages and
    splits never share scenes and a record does not depend on the ones before it."""
    return random.Random(f"ponder-visual/{cfg.seed}/{stage}/{cfg.split}/{index}")


def make_task(cfg: FamilyConfig, stage: str, index: int) -> VisualTask:
    """Record `index` of a stage: tasks in turn (balanced domains), a level drawn from cfg.levels."""
    rng = item_rng(cfg, stage, index)
    domain = cfg.domains[index % len(cfg.domains)]
    return TASKS[domain](rng, rng.choice(cfg.levels), cfg.canvas)


# ---- writers -----------------------------------------------------------------------------------
def _record_id(cfg: FamilyConfig, stage: str, index: int) -> str:
    return f"vis-{stage}-{cfg.split}-s{cfg.seed}-{index:06d}"


def _save_png(img: Image.Image, out_dir: Path, rel: str) -> str:
    (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    img.save(out_dir / rel, format="PNG")
    return rel


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def pretrain_doc(cfg: FamilyConfig, index: int, out_dir: Path) -> dict:
    """An interleaved document of 1-3 scenes of the family, each followed by its caption."""
    rng = item_rng(cfg, "pretrain", index)
    doc_id = _record_id(cfg, "pretrain", index)
    segments: list[dict[str, str]] = []
    for j in range(rng.randint(*cfg.images_per_doc)):
        task = TASKS[rng.choice(cfg.domains)](rng, rng.choice(cfg.levels), cfg.canvas)
        segments.append({"image": _save_png(task.image, out_dir, f"images/{doc_id}-{j}.png")})
        segments.append({"text": task.caption})
    return {"id": doc_id, "segments": segments}


def sft_record(task: VisualTask, rid: str, image: str) -> dict:
    """A chat record (docs/data.md): the image and question, then the long-CoT response."""
    user = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": task.question}]}
    return {"id": rid, "domain": task.domain, "level": task.level,
            "messages": [user, {"role": "assistant", "content": task_response(task)}]}


def rl_record(task: VisualTask, rid: str, image: str, label_difficulty: bool = True) -> dict:
    """A prompt record (data_pipelines/prompts.py): `level` and `options` travel as verifier info."""
    record = {"id": rid, "domain": task.domain, "question": task.question, "images": [image],
              "answer": task.answer, "level": task.level, **task.info}
    if label_difficulty:
        record["difficulty"] = LEVEL_TIERS[task.level]
    return record


def other_image_set(records: list[dict]) -> list[dict]:
    """The prompts again, each with the image of the next prompt of its domain (cyclically) and its
    own answer: a control set. A policy that reads its images scores far lower here than on the
    real set; one that answers from the question and its priors scores the same on both."""
    by_domain: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_domain.setdefault(r["domain"], []).append(i)
    out = [dict(r) for r in records]
    for indices in by_domain.values():
        for j, i in enumerate(indices):
            out[i]["images"] = records[indices[(j + 1) % len(indices)]]["images"]
            out[i]["id"] = records[i]["id"] + "-other-image"
    return out


def write_stage(out_dir: str | Path, stage: str, cfg: FamilyConfig) -> Path:
    """Write `out_dir/<split>.jsonl` of one stage with its PNGs under `out_dir/images/` (paths in
    the records are relative to `out_dir`, the image root every reader defaults to)."""
    out_dir = Path(out_dir)
    records = []
    for i in range(cfg.num):
        if stage == "pretrain":
            records.append(pretrain_doc(cfg, i, out_dir))
            continue
        task, rid = make_task(cfg, stage, i), _record_id(cfg, stage, i)
        image = _save_png(task.image, out_dir, f"images/{rid}.png")
        if stage == "sft":
            records.append(sft_record(task, rid, image))
        else:
            records.append(rl_record(task, rid, image, cfg.label_difficulty))
    if stage == "rl" and cfg.other_image_control:
        _write_jsonl(out_dir / f"{cfg.split}_other_image.jsonl", other_image_set(records))
    return _write_jsonl(out_dir / f"{cfg.split}.jsonl", records)


def write_family(out_dir: str | Path, cfg: FamilyConfig, stages: tuple[str, ...] = STAGES) -> dict[str, Path]:
    """Each stage into `out_dir/<stage>/`: {stage: path of its <split>.jsonl}."""
    return {stage: write_stage(Path(out_dir) / stage, stage, cfg) for stage in stages}


# ---- CLI ---------------------------------------------------------------------------------------
def parse_levels(text: str) -> tuple[int, ...]:
    """'3' -> (3,), '1-5' -> (1, 2, 3, 4, 5), '1,3' -> (1, 3)."""
    levels: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        levels += range(int(lo), int(hi or lo) + 1)
    return tuple(levels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.visual_tasks",
                                     description="Visual verifiable tasks for pretraining, SFT and RL.")
    parser.add_argument("--out", required=True, help="writes OUT/<stage>/<split>.jsonl and OUT/<stage>/images/")
    parser.add_argument("--num", type=int, required=True, help="records (pretraining: documents)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--split", default="train", help="file name stem and id part (train, eval, ...)")
    parser.add_argument("--difficulty", default="1-5", help="levels 1..5: '3', '1-3' or '1,4'")
    parser.add_argument("--tasks", default=",".join(DOMAINS), help="comma-separated domains")
    parser.add_argument("--no-difficulty-label", action="store_true", help="RL records without `difficulty`")
    parser.add_argument("--other-image-control", action="store_true",
                        help="RL stage: also write <split>_other_image.jsonl, each prompt with another prompt's image")
    args = parser.parse_args(argv)
    try:
        levels, tasks = parse_levels(args.difficulty), tuple(t.strip() for t in args.tasks.split(","))
        cfg = FamilyConfig(args.num, args.seed, args.split, levels, tasks,
                           label_difficulty=not args.no_difficulty_label, other_image_control=args.other_image_control)
    except ValueError as err:
        parser.error(f"{err}")
    for path in write_family(args.out, cfg, STAGES if args.stage == "all" else (args.stage,)).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
