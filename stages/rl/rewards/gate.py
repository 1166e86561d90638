"""The format gate: `<think>…</think><answer>…</answer>`, and for verifiable domains exactly one box.

It lives in `data_pipelines.answer_format`, shared with SFT (which filters its data and scores its
generations with it); the reward system uses it from here.
"""

from data_pipelines.answer_format import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    BOX_CLOSE,
    BOX_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    FormatError,
    Parsed,
    answer_outside_box,
    format_violation,
    parse_response,
)

__all__ = [
    "ANSWER_CLOSE", "ANSWER_OPEN", "BOX_CLOSE", "BOX_OPEN", "THINK_CLOSE", "THINK_OPEN", "FormatError",
    "Parsed", "answer_outside_box", "format_violation", "parse_response",
]
