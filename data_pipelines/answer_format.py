"""The answer format GLM-4.1V-Thinking is trained to: `<think>…</think><answer>…</answer>`, and for
verifiable answers exactly one `<|begin_of_box|>…<|end_of_box|>`.

One implementation for everyone: SFT filters its data and scores its generations with it, and the
RL reward gate (`stages.rl.rewards.gate`) re-exports it. Linear-time string scans only (no
backtracking regex), so a 10^6-character response costs microseconds.
"""

from __future__ import annotations

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
