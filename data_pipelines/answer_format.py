"""The answer format GLM-4.1V-Thinking is trained to: `<think>…</think><answer>…</answer>`, and for
verifiable answers exactly one `<|begin_of_box|>…<|end_of_box|>`.

One implementation for everyone: SFT filters its data and scores its generations with it, and the
RL reward gate (`stages.rl.rewards.gate`) re-exports it. Linear-time string scans only (no
backtracking regex), so a 10^6-character response costs microseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
BOX_OPEN, BOX_CLOSE = "<|begin_of_box|>", "<|end_of_box|>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


@dataclass(frozen=True)
class Parsed:
    """A response that passed the structural gate. `box` is the boxed text (None when there is none)."""

    think: str
    answer: str
    box: str | None
    box_count: int


class FormatError(ValueError):
    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def parse_response(response: str) -> Parsed:
    """Split a response into think / answer / box; raise FormatError(detail) when malformed.

    Rules: the (whitespace-stripped) response is `<think>` T `</think>` ws `<answer>` A `</answer>`,
    each tag exactly once (so nothing nests or repeats), and box markers occur only inside A.
    """
    text = response.strip()
    for tag in _TAGS:
        count = text.count(tag)
        if count == 0:
            raise FormatError(f"missing_{tag.strip('</>')}{'_close' if tag.startswith('</') else ''}")
        if count > 1:
            raise FormatError("repeated_tag")
    if not text.startswith(THINK_OPEN) or not text.endswith(ANSWER_CLOSE):
        raise FormatError("text_outside_tags")
    think_end = text.index(THINK_CLOSE)
    answer_start = text.index(ANSWER_OPEN)
    if answer_start < think_end:
        raise FormatError("bad_order")
    if text[think_end + len(THINK_CLOSE):answer_start].strip():
        raise FormatError("text_outside_tags")
    think = text[len(THINK_OPEN):think_end]
    answer = text[answer_start + len(ANSWER_OPEN):-len(ANSWER_CLOSE)]
    opens, closes = text.count(BOX_OPEN), text.count(BOX_CLOSE)
    if BOX_OPEN in think or BOX_CLOSE in think:
        raise FormatError("box_in_think")
    if opens != closes:
        raise FormatError("unbalanced_box")
    if opens == 0:
        return Parsed(think, answer, None, 0)
    if opens > 1:
        return Parsed(think, answer, None, opens)
    start, end = answer.index(BOX_OPEN), answer.index(BOX_CLOSE)
    if end < start:
        raise FormatError("unbalanced_box")
    return Parsed(think, answer, answer[start + len(BOX_OPEN):end], 1)


def answer_outside_box(parsed: Parsed) -> str:
    """The answer text with the boxed part removed (what the language check reads)."""
    if parsed.box is None:
        return parsed.answer
    return parsed.answer.replace(BOX_OPEN + parsed.box + BOX_CLOSE, " ", 1)


def format_violation(response: str, require_box: bool = True) -> str | None:
    """None for a well-formed response, else why not (`missing_think`, `no_box`, ...).

    With `require_box` (verifiable answers) the answer must hold exactly one non-empty box, the
    reasons being those of the reward gate (`no_box`, `multiple_boxes`, `empty_box`).
    """
    try:
        parsed = parse_response(response)
    except FormatError as err:
        return err.detail
    if not require_box:
        return None
    if parsed.box_count != 1:
        return "no_box" if parsed.box_count == 0 else "multiple_boxes"
    return None if parsed.box.strip() else "empty_box"


# R1-style long CoT (DeepSeek-R1 distillations, OpenR1; OpenThoughts / Bespoke-Stratos with their own
# markers): the thinking closed by its tag, then the answer as plain text with \boxed{...}.
R1_THINKING = (("<think>", "</think>"), ("<|begin_of_thought|>", "<|end_of_thought|>"))
R1_SOLUTION = ("<|begin_of_solution|>", "<|end_of_solution|>")


def from_r1(response: str) -> str | None:
    """An R1-style response in this format, or None when it is not one.

    Everything before the closing thinking tag is the thinking (its opening tag may be missing: R1's
    chat template writes it into the prompt), everything after it the answer, and every
    `\\boxed{...}` of the answer (braces matched) becomes a box. Responses already holding
    `<answer>` or box markers, or text before the opening tag, are not R1-style."""
    if ANSWER_OPEN in response or BOX_OPEN in response or BOX_CLOSE in response or any(_stage_tags(response).values()):
        return None  # LLaVA-CoT's stages are from_llava_cot's, even with a stray </think> inside
    for opening, closing in R1_THINKING:
        if response.count(closing) != 1 or response.count(opening) > 1:
            continue
        head, answer = response.split(closing)
        if opening in head:
            before, head = head.split(opening)
            if before.strip():
                return None
        answer = answer.strip()
        if answer.startswith(R1_SOLUTION[0]) and answer.endswith(R1_SOLUTION[1]):
            answer = answer[len(R1_SOLUTION[0]):-len(R1_SOLUTION[1])].strip()
        if not answer or any(tag in head or tag in answer for tag in _TAGS):
            return None
        return f"{THINK_OPEN}{head.strip()}{THINK_CLOSE}{ANSWER_OPEN}{_latex_boxes(answer)}{ANSWER_CLOSE}"
    return None


# LLaVA-CoT's four stages (Xkev/LLaVA-CoT-100k); the caption may be missing
_LLAVA_COT = re.compile(r"^\s*<SUMMARY>(.*?)</SUMMARY>\s*(?:<CAPTION>(.*?)</CAPTION>\s*)?<REASONING>(.*?)</REASONING>"
                        r"\s*<CONCLUSION>(.*?)</CONCLUSION>\s*$", re.DOTALL | re.IGNORECASE)
LLAVA_COT_STAGES = ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")


def _stage_tags(response: str) -> dict[str, int]:
    upper = response.upper()
    return {tag: upper.count(f"<{tag}>") + upper.count(f"</{tag}>") for tag in LLAVA_COT_STAGES}


def from_llava_cot(response: str) -> str | None:
    """A LLaVA-CoT response in this format, or None when it is not one: summary, caption and
    reasoning are the thinking, the conclusion the answer (its `\\boxed{...}` a box; it has none as
    published, so `require_box` skips it: open-ended answers train with data.chat.require_box=false)."""
    tags = _stage_tags(response)  # each stage once (a regex over repeated stages is slow, and leaks tags)
    if any(n not in (0, 2) for n in tags.values()) or 0 in (tags["SUMMARY"], tags["REASONING"], tags["CONCLUSION"]):
        return None
    stages = _LLAVA_COT.match(response)
    if stages is None or any(tag in response for tag in (*_TAGS, BOX_OPEN, BOX_CLOSE)):
        return None
    thinking = "\n\n".join(part.strip() for part in stages.groups()[:3] if part and part.strip())
    answer = stages.group(4).strip()
    if not thinking or not answer:
        return None
    return f"{THINK_OPEN}{thinking}{THINK_CLOSE}{ANSWER_OPEN}{_latex_boxes(answer)}{ANSWER_CLOSE}"


def from_published(response: str) -> str | None:
    """A response in a published long-CoT format (R1-style, LLaVA-CoT) in this one, or None."""
    return from_r1(response) or from_llava_cot(response)


_LATEX_BOX = re.compile(r"\\boxed\s*\{")
# Math delimiters around nothing but one box ("$\\boxed{5}$"): they go with it.
_AROUND_BOX = (("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)"))


def _box_end(text: str, opened: int) -> int | None:
    """Where a box whose `{` ends at `opened` closes (after its matching brace; escaped braces `\\{`
    do not count), None if it never closes."""
    depth, j = 1, opened
    while j < len(text) and depth:
        if text[j] == "\\":
            j += 2
            continue
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return None if depth else j


def _latex_boxes(text: str) -> str:
    """Each `\\boxed{...}` (nested braces matched) as `<|begin_of_box|>...<|end_of_box|>`, math
    delimiters around nothing but the box dropped; one whose braces never close stays as it is."""
    out, i = [], 0
    while (box := _LATEX_BOX.search(text, i)) and (end := _box_end(text, box.end())) is not None:
        before, content, after = text[i:box.start()], text[box.end():end - 1], end
        for left, right in _AROUND_BOX:
            if before.rstrip().endswith(left) and text[after:].lstrip().startswith(right):
                before = before.rstrip()[:-len(left)]
                after = len(text) - len(text[after:].lstrip()) + len(right)
                break
        out += [before, BOX_OPEN, content, BOX_CLOSE]
        i = after
    return "".join(out) + text[i:]


def latex_box_content(text: str) -> str | None:
    """What `\\boxed{...}` holds when it is the whole (stripped) text, else None."""
    text = text.strip()
    if (box := _LATEX_BOX.match(text)) and _box_end(text, box.end()) == len(text):
        return text[box.end():-1].strip()
    return None


# A final answer inside a worked solution or a wrapper, as published golds write it
_ANY_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BARE_BOX = re.compile(r"\\boxed[ \t]+([^\s${}]+)")  # hendrycks' "\boxed 2" (no braces): one token
_GSM8K_FINAL = re.compile(r"(?:^|\n)####[ \t]*(-?[\d,]*\.?\d+)\s*$")  # GSM8K: the solution, then "#### 72"
_ANSWER_TAGS = re.compile(r"^\s*<answer>(.*)</answer>\s*$", re.DOTALL)  # R1-V's "<answer> 3 </answer>"
# What may stand between two boxes of one answer ("$x=\boxed{3}$ or $x=\boxed{-3}$", "(1) ...; (2) ...")
_BOX_JOINER = re.compile(r"(?:and|or|\(\w{1,3}\)|\w{1,3}\)|[A-Za-z](?:_\{?\w+\}?)?=)*")


def _joins(between: str) -> bool:
    return _BOX_JOINER.fullmatch(re.sub(r"[\s$,;.]|\\[()\[\]]", "", between)) is not None


def tagged_answer(text: str) -> str | None:
    """What one `<answer>...</answer>` holds when it is the whole text (R1-V's and Video-R1's golds),
    else None."""
    if (tags := _ANSWER_TAGS.match(text)) is not None and text.count("<answer>") == 1:
        return tags.group(1).strip()
    return None


def final_answer(text: str) -> str | None:
    """The final answer a published gold holds, None if it is not written inside one:
    - the whole text in one `<answer>...</answer>` (R1-V's CLEVR): what the tags hold;
    - a worked solution ending in `#### <number>` (GSM8K): the number, thousands commas dropped,
      as its grader does;
    - a worked solution with boxes (MATH): its last box (`\\boxed{...}`, `\\fbox{...}`), as hendrycks'
      `last_boxed_only_string` takes it: earlier boxes are intermediate results; boxes separated by
      nothing but separators and labels ("$x=\\boxed{3}$ or $x=\\boxed{-3}$") are one answer, joined
      by ", "; without braced boxes, a brace-less `\\boxed 2`."""
    if (tagged := tagged_answer(text)) is not None:
        return tagged
    if (gsm8k := _GSM8K_FINAL.search(text)) is not None:
        return re.sub(r"(?<=\d),(?=\d{3}\b)", "", gsm8k.group(1))
    boxes = []  # (start, end, content)
    for box in _ANY_BOX.finditer(text):
        if (end := _box_end(text, box.end())) is not None and (not boxes or box.start() >= boxes[-1][1]):
            boxes.append((box.start(), end, text[box.end():end - 1].strip()))
    if boxes:
        run = [boxes[-1]]
        while len(run) < len(boxes) and _joins(text[boxes[-len(run) - 1][1]:run[0][0]]):
            run.insert(0, boxes[-len(run) - 1])
        answer = ", ".join(content for _, _, content in run if content)
        while (inner := latex_box_content(answer)) is not None:  # \boxed{\boxed{3}}
            answer = inner
        return answer
    bare = _BARE_BOX.findall(text)
    return bare[-1].rstrip(".") if bare else None
