"""Prompt sets in the columns HF datasets use -> ponder's prompt record (docs/data.md, "Prompt sets").

A row's fields are found under ponder's names first, then under the common names
(`question` | `problem` | `prompt` | `query`, `answer` | `solution` | `ground_truth` | ..., `image`
| `images`, `video` | `videos`, `options` | `choices`, `id` | `pid` | ...), or under the columns
`data.columns` names. A list under `answers` (DocVQA, TextVQA, VQAv2: what annotators accepted;
A-OKVQA's `direct_answers`; any list with `data.accepted_answers`) becomes `{"any_of": [...]}`: a
response is graded against each, and the best grade counts; with `data.answers_metric=vqa` it becomes
`{"vqa_answers": [...]}`, repeats kept, graded by the VQA accuracy. Options published one per
column (MMBench's `A`..`D`, SEED-Bench's `choice_a`..`choice_d`) become `options` by letter, and a
`hint` goes before the question, as lmms-eval renders MMBench. Options are listed under a question
that does not list them with `data.options_in_prompt=true`.
`data.mc_to_blank` turns a multiple-choice row whose answer is one unique option into a
fill-in-the-blank one: the options leave the prompt and the answer becomes the option's text.
"""

from __future__ import annotations

import ast
import re
import string
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from .answer_format import latex_box_content
from .processor import IMAGE_EXTENSIONS
from .video import VIDEO_FILE_EXTENSIONS

ANY_OF = "any_of"  # a ground truth of several accepted answers (stages/rl/rewards/scoring.py)
VQA_ANSWERS = "vqa_answers"  # the annotators' answers, repeats kept, graded by the VQA accuracy
ANSWERS_METRICS = {"best": ANY_OF, "vqa": VQA_ANSWERS}

CANDIDATES = {
    "id": ("id", "pid", "uid", "idx", "question_id", "questionId", "index", "unique_id"),
    "domain": ("domain",),
    "question": ("question", "problem", "prompt", "query"),
    "answer": ("answer", "solution", "ground_truth", "gt_answer", "label", "answers"),
    "images": ("images", "image", "decoded_image", "image_path"),
    "videos": ("videos", "video"),
    "options": ("options", "choices", "candidates", "option"),
    "context": ("context", "hint"),
    "difficulty": ("difficulty",),
}
ANY_OF_COLUMNS = ("answers", "direct_answers")
# One image or video per row in one column, of the kind the row's `data_type` names ("image" /
# "video") or else its file extension shows (Video-R1's `path`); read when a row has no media
# under the images / videos columns
MEDIA_COLUMNS = ("path",)
MEDIA_KIND_COLUMN = "data_type"
# Options one per column, by letter: MMBench's A, B, ...; SEED-Bench's choice_a, ...; by 0-based
# number: NExT-QA's a0 .. a4
OPTION_COLUMNS = ("{A}", "choice_{a}", "choice_{A}", "option_{a}", "option_{A}", "a{i}")
# An option that refers to the others cannot stand alone as a blank's answer.
_REFERS_TO_OTHERS = re.compile(r"\b(all|none|both|neither) of (the )?(above|these|them|options)\b"
                               r"|^\(?[a-h]\)?\s*(,|and|&)\s*\(?[a-h]\)?$", re.IGNORECASE)
_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_OPTIONS_LINE = re.compile(r"^[ \t]*(?:options|choices)[ \t]*:[ \t]*(\S.*)$", re.IGNORECASE | re.MULTILINE)
# The same header alone on its line, one option per line below it (ViRL39K's M3CoT rows: "Choices:\nA: red")
_OPTIONS_HEADER = re.compile(r"^[ \t]*(?:options|choices)[ \t]*:?[ \t\r]*$", re.IGNORECASE | re.MULTILINE)
# One option a line: "A: red", "B. blue", "(C) green", TempCompass's "Caption A: A man runs."
_OPTION_ROW = re.compile(r"^\s*(?:Caption\s+)?(?:\(([A-Z])\)|([A-Z])\s*[:.)])\s*(\S.*?)\s*$")
# An option that starts with its own letter: Video-MME's "A. Apples.", also "(B) red", "C) x", "D: y"
_OWN_LETTER = "^\\s*(\\({letter}\\)\\s*|{letter}[.:)]\\s+)(?=\\S)"


@dataclass
class PromptColumns:
    """The column holding each field of a prompt record; null: ponder's name, then the common names;
    "": no column (a set whose `domain` column is a category, Video-MME's, reads every row as
    data.domain; the row's value stays, as `row_domain`)."""

    # A nested field is a dotted path ("reward_model.ground_truth"; into a list of dicts: "answers.answer").
    # images may name several columns separated by commas ("image_1,image_2"); so may id, whose values
    # are then joined by "/" (HallusionBench: "set_id,figure_id,question_id"; MME: "question_id,answer").
    id: Optional[str] = None  # default: id, pid, uid, idx, question_id, questionId, index; else the row number
    domain: Optional[str] = None  # default: domain; else data.domain
    question: Optional[str] = None  # default: question, problem, prompt, query (a list of chat turns = messages)
    answer: Optional[str] = None  # default: answer, solution, ground_truth, gt_answer, label, answers
    images: Optional[str] = None  # default: images, image, decoded_image, image_path (one image or a list)
    videos: Optional[str] = None  # default: videos, video (one video or a list)
    options: Optional[str] = None  # default: options, choices, candidates (a list, a dict by letter, or its Python text);
    # else one column per option by letter (A, B, ...; choice_a, ...; option_a, ...)
    context: Optional[str] = None  # default: context, hint (text that goes before the question)
    # The curriculum's prior for each prompt (docs/rl.md): a pass rate in [0, 1] or a tier name
    # (ViRL39K: PassRate_7BUntrained; an empty cell is no prior); default: difficulty
    difficulty: Optional[str] = None
    # Images and videos in one column, each row's kind by its `data_type` or file extension (Video-R1:
    # path); default: path, when its values name image or video files
    media: Optional[str] = None
    # The part of each video the question is about, in seconds (MVBench: start, end); default: all of it
    video_start: Optional[str] = None
    video_end: Optional[str] = None


BOX_UNITS = ("permille", "pixels")  # data.box_units


@dataclass
class PromptLayout:
    """How the rows of a prompt set map onto prompt records (shared by RL, grading, evaluation)."""

    columns: PromptColumns = field(default_factory=PromptColumns)
    domain: Optional[str] = None  # the domain of rows without one (a verifier or rewards.domain_verifiers key)
    mc_to_blank: bool = False  # unique-answer multiple choice -> fill in the blank (options out of the prompt)
    # List the options ("A. red") under questions that keep them and do not list them already. Off by
    # default: ponder's own visual-majority records carry options for the verifier, not the prompt.
    options_in_prompt: bool = False
    # How a list of annotators' answers (`answers`) grades: "best" (the best grade against any one) or
    # "vqa" (the VQA accuracy: min(#annotators who gave it / 3, 1), averaged leave-one-out)
    answers_metric: str = "best"
    # A list answer in any column is the answers annotators accepted (OCRBench's `answer`); default: only
    # under `answers` / `direct_answers` (elsewhere a list may be a chart's values or grounding boxes)
    accepted_answers: bool = False
    answer_is_index: bool = False  # the answer (an int or digits) is the 0-based index of an option (AI2D)
    # answer -> gold (HallusionBench: ++data.answer_map.1=Yes; in YAML quote both: {"1": "Yes"})
    answer_map: dict[str, str] = field(default_factory=dict)
    # A path built from the row's columns (relative to data.image_root) where a set names its media
    # by id only: Video-MME's "data/{videoID}.mp4", NExT-QA's "NExTVideo/{video}.mp4"
    image_path: Optional[str] = None
    video_path: Optional[str] = None
    # The frame rate of videos given as a folder of frames (MVBench's TVQA: 3); a folder is read only with it
    frames_fps: Optional[float] = None
    # Grounding golds: "permille" (GLM-4.1V's 0-999 of the image's width / height) or "pixels" of the
    # prompt's first image as published (VLM-R1's RefCOCO), scaled to 0-999 when the image is read
    box_units: str = "permille"

    def __post_init__(self) -> None:
        if self.answers_metric not in ANSWERS_METRICS:
            raise ValueError(f"data.answers_metric must be one of {sorted(ANSWERS_METRICS)}, got {self.answers_metric!r}")
        for key in ("image_path", "video_path"):
            template = getattr(self, key)
            try:
                bad = template is not None and any(name is not None and (not name or "[" in name or spec or conversion)
                                                   for _, name, spec, conversion in string.Formatter().parse(template))
            except ValueError:
                bad = True
            if bad:
                raise ValueError(f"data.{key}={template!r}: a path with column names in braces, e.g. 'data/{{videoID}}.mp4'")
        if empty := [k for k, v in vars(self.columns).items() if v == "" and k != "domain"]:
            raise ValueError(f"data.columns.{empty[0]}='': only the domain column can be none (a category column)")
        if self.box_units not in BOX_UNITS:
            raise ValueError(f"data.box_units must be one of {BOX_UNITS}, got {self.box_units!r}")
        if self.frames_fps is not None and not 0 < self.frames_fps < float("inf"):
            raise ValueError(f"data.frames_fps must be > 0, got {self.frames_fps}")


def with_unique_ids(rows: list, layout: PromptLayout) -> PromptLayout:
    """The layout, its id column set to the first common id column whose values are unique where the
    first one present repeats (VLMEvalKit's HallusionBench: `question_id` counts within a figure,
    `index` is unique). Unchanged when data.columns.id is given or no such column exists."""
    if layout.columns.id is not None:
        return layout
    dicts = [r for r in rows if isinstance(r, dict)]
    present = [c for c in CANDIDATES["id"] if any(r.get(c) is not None for r in dicts)]

    def values(column: str) -> list[str]:
        return [str(r[column]) for r in dicts if r.get(column) is not None]

    first = values(present[0]) if present else []
    if len(present) < 2 or len(set(first)) == len(first):
        return layout
    better = next((c for c in present[1:] if len(set(v := values(c))) == len(v) == len(dicts)), None)
    return replace(layout, columns=replace(layout.columns, id=better)) if better else layout


def _column(raw: dict, name: str, layout: PromptLayout) -> Optional[str]:
    chosen = getattr(layout.columns, name)
    if chosen is not None:
        return chosen or None  # "": no column
    present = [c for c in CANDIDATES[name]
               if not (_blank(raw.get(c)) if name in ("images", "videos", "options") else raw.get(c) is None)]
    if name in ("images", "videos"):  # MathVision: `image` holds a relative path, `decoded_image` the pixels
        present.sort(key=lambda c: _only_text(raw[c]))
    return present[0] if present else None


def _only_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _any_of(answers: Any, metric: str = "best") -> Any:
    """A list of accepted answers (strings or numbers, or VQAv2's {"answer": ...} dicts, also as the
    dict of lists a `Sequence` feature gives) as {"any_of": [...]}, each once, or, for the VQA metric,
    {"vqa_answers": [...]} with repeats (they are the votes); None when no item is one (the row then
    counts as missing_answer)."""
    if isinstance(answers, dict) and isinstance(answers.get("answer"), list):
        answers = answers["answer"]
    if not isinstance(answers, list):
        return answers
    texts = [a.get("answer") if isinstance(a, dict) else a for a in answers]
    kept = [str(t) for t in texts if isinstance(t, (str, int, float)) and not isinstance(t, bool)]
    if not kept:
        return None
    return {ANY_OF: list(dict.fromkeys(kept))} if metric == "best" else {VQA_ANSWERS: kept}


def _value(raw: dict, column: str) -> Any:
    """raw[column], or a dotted path into nested objects (`reward_model.ground_truth`), mapped over
    a list of dicts (`answers.answer`: VQAv2's annotators)."""
    if column in raw:
        return raw[column]
    value: Any = raw
    for part in column.split("."):
        if isinstance(value, list):
            value = [v.get(part) if isinstance(v, dict) else None for v in value]
        else:
            value = value.get(part) if isinstance(value, dict) else None
    return value


def normalize_row(raw: Any, row: int, layout: PromptLayout) -> Any:
    """The row with ponder's field names (a row already in ponder's layout comes back equal, unless
    it carries a `context` / `hint`, or options one per column: those are read as such, or its
    answer is one whole `\\boxed{...}`: its content)."""
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    for name in CANDIDATES:
        if name == "question" and out.get("messages") is not None:
            continue
        column = _column(raw, name, layout)
        if getattr(layout.columns, name) == "" and name in out:  # not this field: kept under another name
            out[f"row_{name}"] = out.pop(name)
        if column is None or column == name:
            continue
        if "," in column:  # several columns, in order (MMMU's image_1 .. image_7; an id of several parts)
            parts = [v for c in column.split(",") if (v := _value(raw, c.strip())) is not None]
            if name == "id":  # its parts stay: they may be fields of their own (MME's answer)
                parts = [p for p in parts if isinstance(p, (str, int)) and not isinstance(p, bool)]
                out[name] = "/".join(map(str, parts)) if parts else None
                continue
            out[name] = parts
            for c in column.split(","):
                out.pop(c.strip(), None)
        elif column in out:
            out[name] = out.pop(column)
        elif "." in column:  # a nested field: reward_model.ground_truth
            out[name] = _value(raw, column)
    if out.get("id") is None and not any(c in raw for c in CANDIDATES["id"]):
        out["id"] = f"row-{row}"  # HF sets often have no id column: the row number is stable
    elif isinstance(out.get("id"), int) and not isinstance(out["id"], bool):
        out["id"] = str(out["id"])
    answer_column = _column(raw, "answer", layout) or ""
    if layout.accepted_answers or answer_column.split(".")[0] in ANY_OF_COLUMNS:
        answer = out.get("answer")
        if layout.accepted_answers and isinstance(answer, str) and answer.strip().startswith("["):
            answer = python_text(answer)  # VLMEvalKit's OCRBench: "['3/3/79', 'March 3, 1979']"
        out["answer"] = _any_of(answer, layout.answers_metric)
    if isinstance(out.get("answer"), str) and (boxed := latex_box_content(out["answer"])) is not None:
        out["answer"] = boxed or None  # ViRL39K writes every gold as \boxed{...}; an empty box is no answer
    if layout.answer_map:
        out["answer"] = _mapped(out.get("answer"), layout.answer_map)
    if out.get("domain") is None and layout.domain:
        out["domain"] = layout.domain
    elif isinstance(out.get("domain"), int) and not isinstance(out["domain"], bool):
        out["domain"] = str(out["domain"])  # a category column of numbers (CharXiv's reasoning_a_type): map "1", "2"
    if layout.box_units == "pixels":
        out["box_units"] = "pixels"  # the verifier scales the gold by the image size (encode_prompt_record)
    question = out.get("question")
    if isinstance(question, list) and question and all(isinstance(t, dict) and "role" in t for t in question):
        out["messages"] = out.pop("question")  # `prompt` as chat turns (verl and TRL layouts)
    for media, template in (("images", layout.image_path), ("videos", layout.video_path)):
        if template:
            out[media] = _filled(template, raw)
    if out.get("images") is None and out.get("videos") is None:
        out.update(media_by_kind(out, layout.columns.media))
    for media in ("images", "videos"):  # one per row (a video: a file, bytes, or {frames, fps}) or a list
        value = out.get(media)
        if value is not None:  # "" is no medium (MathVerse's text-only split: a string column of "")
            out[media] = [v for v in (value if isinstance(value, list) else [value]) if not _blank(v)]
    if out.get("videos") and (layout.columns.video_start or layout.columns.video_end or layout.frames_fps):
        out["videos"] = [_as_clip(v, raw, layout) for v in out["videos"]]
    if _given(out.get("context")) and isinstance(out.get("question"), str):  # MMBench's hint
        out["question"] = f"{out.pop('context').strip()}\n{out['question']}"
    options = out.get("options")
    if isinstance(options, str) and options.strip().startswith(("[", "{")):
        out["options"] = python_text(options)  # MMMU / MathVerse store the list's Python text
    elif isinstance(options, str):  # We-Math: "A. 200.96;B. 3215.36;...; E. No correct answer"
        out["options"] = _listed_options(options).get("options")
    if out.get("options") is None and layout.columns.options is None:
        out.update(_option_columns(out))
        if out.get("options") is None and isinstance(out.get("question"), str):
            inline = _inline_options(out["question"]) or _trailing_options(out["question"], out.get("answer"))
            if not _letter_outside(out.get("answer"), inline.get("options", {})):
                out.update(inline)  # a letter gold the parsed list lacks: the list is partial, not the options
    if out.get("options") is not None:
        lettered, out["options"] = out["options"], _without_own_letters(out["options"])
        if out["options"] is not lettered:  # a gold written as the whole option ("A. Apples.") follows it
            out["answer"] = _same_option(out.get("answer"), lettered, out["options"])
    if out.get("options") is None:
        out.pop("options", None)
    elif isinstance(out.get("question"), str):
        letters = _lettered(out["options"])
        index, by = _answer_index(out.get("answer"), letters, layout.answer_is_index) if letters else (None, "")
        if layout.mc_to_blank and index is not None and _unique(letters, index):
            out["question"] = _without_options(out["question"], list(letters.values()))
            out["answer"] = list(letters.values())[index]
            out.pop("options")
        else:
            # ScienceQA's, AI2D's index, TempCompass's "B. from right to left": the letter (the
            # multiple-choice verifier grades letters or texts)
            if by in ("index", "lettered_text"):
                out["answer"] = list(letters)[index]
            if layout.options_in_prompt and (block := options_block(out["question"], out["options"])):
                out["question"] = f"{out['question'].rstrip()}\n{block}"
    return out


def options_block(question: str, options: Any) -> str:
    """The lines ("A. red") listing `options` (a list, or a dict by letter; options that start with
    their own letter lose it) under a question that does not list them; "" when it does or there
    are none (Video-R1's SFT rows keep their options in a column of their own)."""
    missing = options_not_shown(question, _without_own_letters(options)) if options else {}
    return "\n".join(f"{k}. {v}" for k, v in missing.items())


def options_not_shown(question: str, options: Any) -> dict[str, str]:
    """The lettered options when the question does not list them; {} when it does, or when every
    option is its own letter (MathVision: the options are on the image)."""
    letters = _lettered(options)
    if not letters or all(_norm(text) == letter.casefold() for letter, text in letters.items()):
        return {}
    return {} if _lists_options(question, letters) else letters


def python_text(text: str) -> Any:
    """The value a list's or dict's Python text writes, or the text itself if it is none."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _filled(template: str, row: dict) -> str:
    """data.image_path / data.video_path with the row's columns (or dotted paths) filled in; a column
    the row lacks (or leaves empty) leaves its `{name}` in place, so the path is a counted
    missing_image / missing_video naming it, not a prompt asked without its media."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        value = _value(row, name) if name else None
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # an id column read as floats (123.0)
        given = isinstance(value, (str, int, float)) and not isinstance(value, bool) and value == value  # NaN
        parts.append(literal + ("" if name is None else str(value) if given else "{" + name + "}"))
    return "".join(parts)


def media_by_kind(row: dict, column: Optional[str]) -> dict[str, list]:
    """{"images": [...], "videos": [...]} from one column of media paths (popped from the row), each
    path an image or a video by the row's `data_type`, else by its extension; {} when the column is
    absent, or is the default one and a value is no media file name (it then stays as it is). A
    column named in data.columns.media is read whatever its extensions (an undecodable file is a
    counted skip)."""
    name = column or next((c for c in MEDIA_COLUMNS if c in row), None)
    value = _value(row, name) if name else None
    paths = value if isinstance(value, list) else [value]
    if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        return {}
    declared = row.get(MEDIA_KIND_COLUMN)
    declared = declared.strip().lower() if isinstance(declared, str) else None
    kinds = [declared if declared in ("image", "video") else _kind_by_extension(p, named=column is not None)
             for p in paths]
    if None in kinds:
        return {}
    row.pop(name, None)
    found = {"images": [p for p, k in zip(paths, kinds) if k == "image"],
             "videos": [p for p, k in zip(paths, kinds) if k == "video"]}
    return {media: items for media, items in found.items() if items}


def _kind_by_extension(path: str, named: bool) -> Optional[str]:
    extension = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if extension in VIDEO_FILE_EXTENSIONS:  # a GIF is an image unless data_type says otherwise
        return "video"
    return "image" if extension in IMAGE_EXTENSIONS or named else None


def _as_clip(video: Any, row: dict, layout: PromptLayout) -> Any:
    """A video file or folder as a clip: the part the row's start / end columns give, a folder's
    frame rate (data_pipelines/prompts.py parse_video checks them). Frames already listed stay."""
    if isinstance(video, dict) and ("frames" in video or "video" in video):
        return video
    clip = {"video": video, "start": _value(row, layout.columns.video_start) if layout.columns.video_start else None,
            "end": _value(row, layout.columns.video_end) if layout.columns.video_end else None,
            "fps": layout.frames_fps}
    return {k: v for k, v in clip.items() if v is not None}


def _same_option(answer: Any, before: Any, after: Any) -> Any:
    """The answer, or the option of `after` at the place of the option of `before` it equals."""
    before, after = list(_lettered(before).values()), list(_lettered(after).values())
    texts = [_norm(o) for o in before]
    return after[texts.index(_norm(answer))] if isinstance(answer, str) and texts.count(_norm(answer)) == 1 else answer


def _without_own_letters(options: Any) -> Any:
    """Options that each start with their own letter ("A. Apples.", "B. Red.": Video-MME) without it,
    so the prompt does not say "A. A. Apples." and "Red" grades as B. Anything else as it is."""
    letters = _lettered(options)
    if not letters or not all(isinstance(v, str) for v in (options.values() if isinstance(options, dict) else options)):
        return options
    stripped = {k: re.sub(_OWN_LETTER.format(letter=re.escape(k)), "", v, flags=re.IGNORECASE) for k, v in letters.items()}
    if any(stripped[k] == v or not stripped[k] for k, v in letters.items()):
        return options
    return list(stripped.values()) if isinstance(options, list) else stripped


def _mapped(answer: Any, answer_map: dict[str, str]) -> Any:
    """The answer (or each accepted answer) through data.answer_map; answers it does not name stay."""
    if isinstance(answer, dict) and len(answer) == 1 and isinstance(next(iter(answer.values())), list):
        return {key: [_mapped(a, answer_map) for a in values] for key, values in answer.items()}
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)  # a label column read as floats (1.0): its key is "1"
    if isinstance(answer, (str, int, float)) and not isinstance(answer, bool):
        return answer_map.get(str(answer).strip(), answer)
    return answer


def _blank(value: Any) -> bool:
    """No value: null, or text of nothing but spaces (a media or options cell left empty)."""
    return value is None or isinstance(value, str) and not value.strip()


def _given(text: Any) -> bool:
    """A text a publisher filled in: not null, blank, or pandas' NaN written out ("nan", MMBench)."""
    return isinstance(text, str) and text.strip().lower() not in ("", "nan")


def _option(value: Any) -> Optional[str]:
    """An option cell as text; None where it is empty (null, NaN, blank, "nan")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # NaN != NaN
        return str(value)
    return value if _given(value) else None


def _option_columns(row: dict) -> dict[str, Any]:
    """{"options": {letter: text}} from options published one per column (A, B, ... or choice_a, ...),
    popping those columns from the row; {} when the row has no such columns. Options left empty
    (null, "nan": MMBench's rows with fewer than four) are left out, the others keep their letters."""
    for pattern in OPTION_COLUMNS:
        names = {}
        for i, letter in enumerate(string.ascii_uppercase):
            name = pattern.format(A=letter, a=letter.lower(), i=i)
            if name not in row:
                break
            names[letter] = name
        if len(names) >= 2:
            options = {letter: _option(row.pop(name)) for letter, name in names.items()}
            kept = {letter: text for letter, text in options.items() if text is not None}
            return {"options": kept} if kept else {}
    return {}


def _inline_options(question: str) -> dict[str, Any]:
    """{"options": {letter: text}} from a line that lists them, MMStar's "Options: A: red, B: blue, C:
    green", or from the lines under an "Options:" / "Choices:" header, one option a line ("A: red",
    "B. blue", "(C) green"); letters in order from A; {} if the question has neither."""
    if (line := _OPTIONS_LINE.search(question)) is not None:
        parts = re.split(r"(?:^|,\s*)([A-H])\s*[:.)]\s*", line.group(1).strip())
        letters, texts = parts[1::2], [t.strip() for t in parts[2::2]]
        if parts[0]:  # text before the first letter: not a list of options
            return {}
    elif (header := _OPTIONS_HEADER.search(question)) is not None:
        letters, texts = _option_rows(question[header.end():].splitlines())
    else:
        return {}
    return _as_options(letters, texts)


def _listed_options(text: str) -> dict[str, Any]:
    """{"options": {letter: text}} from one cell that lists them, "A. x; B. y" (or on lines, or
    "A: x"), letters in order from A; {} for anything else (the row then has no options)."""
    parts = re.split(r"(?:^|[;\n]\s*)\(?([A-H])\s*[.:)]\s*", text.strip())
    if parts[0].strip():
        return {}
    return _as_options(parts[1::2], [t.strip().rstrip(";").strip() for t in parts[2::2]])


def _trailing_options(question: str, answer: Any) -> dict[str, Any]:
    """{"options": {letter: text}} from the option lines that end a question without a header
    (TempCompass: "...?\nA. left\nB. right"), when the gold names one of them by letter, text or
    both ("B. right"); {} otherwise: a question may end in lettered lines that are not its choices
    ("How many are true?\nA. 2 is prime.\nB. 9 is prime." with the gold "1")."""
    lines = question.rstrip().splitlines()
    ending = next((i for i in range(len(lines), 0, -1) if not _OPTION_ROW.match(lines[i - 1])), 0)
    if not any(line.strip() for line in lines[:ending]):
        return {}  # only options: no question above them
    options = _as_options(*_option_rows(lines[ending:]))
    named = _answer_index(answer, options["options"])[1] if options and not isinstance(answer, int) else ""
    return options if named in ("text", "letter", "lettered_text") else {}


def _as_options(letters: list[str], texts: list[str]) -> dict[str, Any]:
    if len(letters) < 2 or letters != list(string.ascii_uppercase[:len(letters)]) or not all(texts):
        return {}
    return {"options": dict(zip(letters, texts))}


def _option_rows(lines: list[str]) -> tuple[list[str], list[str]]:
    """Letters and texts of the option lines at the top of `lines` (blank lines between them
    passed over), up to the first other line."""
    letters, texts = [], []
    for line in lines:
        if not line.strip():
            continue
        row = _OPTION_ROW.match(line)
        if row is None:
            break
        letters.append(row.group(1) or row.group(2))
        texts.append(row.group(3))
    return letters, texts


def _letter_outside(answer: Any, options: dict[str, str]) -> bool:
    """The gold is a lone letter ("J", "(J)") that `options` has no option for."""
    letter = _LETTER.match(answer.strip()) if isinstance(answer, str) else None
    return bool(options) and letter is not None and letter.group(1).upper() not in options


def _lettered(options: Any) -> dict[str, str]:
    """{"A": text, ...} of a list (in order) or a dict keyed by letter; {} if neither."""
    if isinstance(options, dict):
        return {str(k).strip().upper(): str(v) for k, v in options.items()}
    if isinstance(options, (list, tuple)) and 2 <= len(options) <= 26:
        return {string.ascii_uppercase[i]: str(v) for i, v in enumerate(options)}
    return {}


def _answer_index(answer: Any, letters: dict[str, str], is_index: bool = False) -> tuple[Optional[int], str]:
    """The option the answer names and how: by its text, its letter ("B", "(B)", "b.") or its 0-based
    index (an int; digits that are no option's text; with `is_index`, digits always)."""
    texts = [_norm(v) for v in letters.values()]
    if isinstance(answer, bool) or answer is None:
        return None, ""
    digits = str(answer).strip()
    if isinstance(answer, int) or (is_index and digits.isdigit()):
        return _by_index(int(digits), letters)
    if texts.count(_norm(digits)) == 1:
        return texts.index(_norm(digits)), "text"
    match = _LETTER.match(digits)
    if match and match.group(1).upper() in letters:
        return list(letters).index(match.group(1).upper()), "letter"
    row = _OPTION_ROW.match(digits)  # "B. from right to left", "Caption A: ...": the letter and its text
    letter = row and (row.group(1) or row.group(2))
    if letter in letters and _norm(row.group(3)) == texts[list(letters).index(letter)]:
        return list(letters).index(letter), "lettered_text"
    if digits.isdigit():
        return _by_index(int(digits), letters)
    return None, ""


def _by_index(index: int, letters: dict[str, str]) -> tuple[Optional[int], str]:
    """The option a 0-based index names: the index-th letter's, where options left empty (NExT-QA's
    a0..a4, MMBench's D) were dropped; (None, "") when that option is not there."""
    letter = string.ascii_uppercase[index] if 0 <= index < 26 else None
    return (list(letters).index(letter), "index") if letter in letters else (None, "")


def _unique(letters: dict[str, str], index: int) -> bool:
    """The answer's text is one option only and means something on its own."""
    texts = [_norm(v) for v in letters.values()]
    answer = texts[index]
    return bool(answer) and texts.count(answer) == 1 and not _REFERS_TO_OTHERS.search(answer)


def _norm(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def _lists_options(question: str, letters: dict[str, str]) -> bool:
    """The question lists every option already, a line each ("A. red") or inline ("(A) red (B) blue":
    MathVista's `query`, RealWorldQA, MathVerse)."""
    text = _norm(question)
    return all(re.search(rf"(^|\s)(\({re.escape(letter)}\)|{re.escape(letter)}[.:)])\s*{re.escape(_norm(option))}",
                         text, re.IGNORECASE)
               for letter, option in letters.items())


def _lists_an_option(line: str, listed: set[str]) -> bool:
    """A line such as "A. red", "(B) blue" or "C: green" whose text is one of the (normalised) options."""
    body = re.sub(r"^\s*\(?[A-Za-z]\)?[.:)]\s*|^\s*\([A-Za-z]\)\s*", "", line)
    return body != line and _norm(body) in listed


def _without_options(question: str, options: list[str]) -> str:
    """The question without lines that list an option ("A. red", "(B) blue", "C: green") or
    introduce them ("Choices:")."""
    listed, kept = {_norm(o) for o in options}, []
    for line in question.splitlines():
        if _lists_an_option(line, listed):
            continue
        if re.fullmatch(r"\s*(choices|options|answer choices)\s*:?\s*", line, re.IGNORECASE):
            continue
        inline = _inline_options(line).get("options", {})
        if inline and {_norm(o) for o in inline.values()} <= listed:  # MMStar's "Options: A: red, B: blue"
            continue
        kept.append(line)
    return "\n".join(kept).strip()
