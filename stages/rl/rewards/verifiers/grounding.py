"""Grounding: the box holds JSON boxes `[[x1, y1, x2, y2], ...]` (or one `[x1, y1, x2, y2]`) in 0-999
per-mille coordinates.

reward = (gold boxes matched one-to-one at IoU > iou_threshold) / max(#gold, #predicted).
The issue's metric is the matched fraction of gold boxes; dividing by the larger count as well makes
spraying many boxes to cover every gold one worthless, and equals that fraction whenever the count is
right. Malformed JSON, coordinates outside 0-999, or x1 >= x2 score 0.
"""

from __future__ import annotations

from typing import Any

from ..config import RewardConfig
from ..registry import register_verifier
from ..types import GroundTruthError, Verdict
from .boxes import BoxFormatError, as_boxes, count_matches, loads_strict


@register_verifier("grounding")
def verify_grounding(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    try:
        gold = as_boxes(loads_strict(ground_truth) if isinstance(ground_truth, str) else ground_truth, 10 ** 6)
    except BoxFormatError as err:
        raise GroundTruthError(f"grounding gold: {err}") from None
    try:
        pred = as_boxes(loads_strict(answer.strip()), config.max_boxes)
    except BoxFormatError as err:
        return Verdict(0.0, f"wrong:malformed_boxes({err})")
    if not gold or not pred:
        return Verdict(1.0, "correct") if not gold and not pred else Verdict(0.0, "wrong")
    reward = count_matches(gold, pred, config.iou_threshold) / max(len(gold), len(pred))
    return Verdict(reward, "correct" if reward == 1.0 else "partial" if reward > 0 else "wrong")
