"""Grounding: the box holds JSON boxes `[[x1, y1, x2, y2], ...]` (or one `[x1, y1, x2, y2]`) in 0-999
per-mille coordinates. Golds published in pixels (`data.box_units=pixels`: the record's info has
`box_units` and the first image's `image_size`) are scaled to the same grid first.

reward = (gold boxes matched one-to-one at IoU > iou_threshold) / max(#gold, #predicted).
The issue's metric is the matched fraction of gold boxes; dividing by the larger count as well makes
spraying many boxes to cover every gold one worthless, and equals that fraction whenever the count is
right. Malformed JSON, coordinates outside 0-999, or x1 >= x2 score 0.

Click (`click`, ScreenSpot's metric for GUI grounding): the predicted point, or a box's centre,
inside the one gold box.
"""

from __future__ import annotations

import math
from typing import Any

from ..config import RewardConfig
from ..registry import register_verifier
from ..types import GroundTruthError, Verdict
from .boxes import PERMILLE_LIMIT, BoxFormatError, as_box, as_boxes, count_matches, loads_strict


def gold_boxes(ground_truth: Any, info: dict[str, Any]) -> list[list[float]]:
    """The gold boxes on the 0-999 grid (pixel golds scaled by the first image's size)."""
    try:
        gold = as_boxes(loads_strict(ground_truth) if isinstance(ground_truth, str) else ground_truth, 10 ** 6,
                        limit=None if info.get("box_units") == "pixels" else PERMILLE_LIMIT)
    except BoxFormatError as err:
        raise GroundTruthError(f"grounding gold: {err}") from None
    if info.get("box_units") == "pixels":
        return [permille_box(box, info.get("image_size")) for box in gold]
    return [list(box) for box in gold]


@register_verifier("grounding")
def verify_grounding(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    gold = gold_boxes(ground_truth, info)
    try:
        pred = as_boxes(loads_strict(answer.strip()), config.max_boxes)
    except BoxFormatError as err:
        return Verdict(0.0, f"wrong:malformed_boxes({err})")
    if not gold or not pred:
        return Verdict(1.0, "correct") if not gold and not pred else Verdict(0.0, "wrong")
    reward = count_matches(gold, pred, config.iou_threshold) / max(len(gold), len(pred))
    return Verdict(reward, "correct" if reward == 1.0 else "partial" if reward > 0 else "wrong")


def permille_box(box: list[float], image_size: Any) -> list[int]:
    """A pixel box on an image of `image_size` (width, height) on the 0-999 grid (x * 1000 / width),
    rounded outwards so that a small box keeps its area."""
    if not (isinstance(image_size, (list, tuple)) and len(image_size) == 2 and all(v > 0 for v in image_size)):
        raise GroundTruthError("grounding gold in pixels (data.box_units=pixels) without its image's size: "
                               "the prompt has no image")
    width, height = image_size
    x1, y1 = (min(998, math.floor(v * 1000 / size)) for v, size in ((box[0], width), (box[1], height)))
    x2, y2 = (min(999, max(low + 1, math.ceil(v * 1000 / size)))  # a box of a few pixels keeps a width
              for v, size, low in ((box[2], width, x1), (box[3], height, y1)))
    return [x1, y1, x2, y2]


@register_verifier("click")
def verify_click(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    """GUI grounding as ScreenSpot scores it: 1 when the predicted click, a point `[x, y]` or a
    box's centre (0-999 per mille), falls inside the gold box, edges included."""
    gold = gold_boxes(ground_truth, info)
    if len(gold) != 1:
        raise GroundTruthError(f"click gold: one box, got {len(gold)}")
    try:
        x, y = click_point(loads_strict(answer.strip()))
    except BoxFormatError as err:
        return Verdict(0.0, f"wrong:malformed_point({err})")
    x1, y1, x2, y2 = gold[0]
    return Verdict(1.0, "correct") if x1 <= x <= x2 and y1 <= y <= y2 else Verdict(0.0, "wrong")


def click_point(value: Any) -> tuple[float, float]:
    """[x, y], or a box [x1, y1, x2, y2] as its centre; either may be wrapped in one list."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    if isinstance(value, list) and len(value) == 4:
        x1, y1, x2, y2 = as_box(value)
        return (x1 + x2) / 2, (y1 + y2) / 2
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= PERMILLE_LIMIT for v in value)):
        raise BoxFormatError(f"a click is [x, y] within 0-{PERMILLE_LIMIT}, or a box")
    return float(value[0]), float(value[1])
