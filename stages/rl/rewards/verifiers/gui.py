"""GUI actions: the box holds one JSON action, e.g.
`{"action_type": "click", "box_2d": [[x1, y1, x2, y2]]}` or `{"action_type": "type", "text": "hello"}`.

Reward 1 when the action type matches, the set of fields equals the gold's (gui_ignored_fields aside:
a missing or an extra field is wrong), every field but box_2d is equal (strings trimmed, and
compared case-insensitively except gui_case_sensitive_fields; numbers by value), and every gold box
is matched one-to-one by a predicted box at IoU > iou_threshold. Otherwise 0. Duplicate JSON keys
(two action types in one object) score 0.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..config import RewardConfig
from ..registry import register_verifier
from ..types import GroundTruthError, Verdict
from .boxes import BoxFormatError, as_boxes, count_matches, loads_strict

BOX_FIELD = "box_2d"


def _equal(pred: Any, gold: Any, case_sensitive: bool) -> bool:
    if isinstance(gold, str):
        if not isinstance(pred, str):
            return False
        p, g = pred.strip(), gold.strip()
        return p == g if case_sensitive else p.casefold() == g.casefold()
    if isinstance(gold, bool) or isinstance(pred, bool):
        return pred is gold
    if isinstance(gold, (int, float)):
        return isinstance(pred, (int, float)) and pred == gold
    if isinstance(gold, list):
        return isinstance(pred, list) and len(pred) == len(gold) and all(
            _equal(p, g, case_sensitive) for p, g in zip(pred, gold))
    if isinstance(gold, Mapping):
        return isinstance(pred, Mapping) and pred.keys() == gold.keys() and all(
            _equal(pred[k], gold[k], case_sensitive) for k in gold)
    return pred == gold


def _gold_action(ground_truth: Any) -> Mapping[str, Any]:
    gold = loads_strict(ground_truth) if isinstance(ground_truth, str) else ground_truth
    if not isinstance(gold, Mapping) or not isinstance(gold.get("action_type"), str):
        raise GroundTruthError("GUI gold must be a dict with a string 'action_type'")
    return gold


@register_verifier("gui")
def verify_gui(answer: str, ground_truth: Any, config: RewardConfig, **info: Any) -> Verdict:  # noqa: ARG001
    try:
        gold = _gold_action(ground_truth)
    except BoxFormatError as err:
        raise GroundTruthError(f"GUI gold: {err}") from None
    try:
        pred = loads_strict(answer.strip())
    except BoxFormatError as err:
        return Verdict(0.0, f"wrong:malformed_action({err})")
    if not isinstance(pred, Mapping) or not isinstance(pred.get("action_type"), str):
        return Verdict(0.0, "wrong:malformed_action")
    if pred["action_type"].strip().casefold() != gold["action_type"].strip().casefold():
        return Verdict(0.0, "wrong:action_type")
    ignored = set(config.gui_ignored_fields)
    if set(pred) - ignored != set(gold) - ignored:
        return Verdict(0.0, "wrong:fields")
    for key in set(gold) - ignored - {"action_type", BOX_FIELD}:
        if not _equal(pred[key], gold[key], key in config.gui_case_sensitive_fields):
            return Verdict(0.0, f"wrong:field({key})")
    if BOX_FIELD in gold and BOX_FIELD not in ignored:
        try:
            gold_boxes = as_boxes(gold[BOX_FIELD], 10 ** 6)
        except BoxFormatError as err:
            raise GroundTruthError(f"GUI gold box_2d: {err}") from None
        try:
            pred_boxes = as_boxes(pred[BOX_FIELD], config.max_boxes)
        except BoxFormatError as err:
            return Verdict(0.0, f"wrong:malformed_box({err})")
        if len(pred_boxes) != len(gold_boxes) or \
                count_matches(gold_boxes, pred_boxes, config.iou_threshold) != len(gold_boxes):
            return Verdict(0.0, "wrong:box")
    return Verdict(1.0, "correct")
