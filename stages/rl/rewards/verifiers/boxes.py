"""Boxes in per-mille coordinates [x1, y1, x2, y2] (0-999 of width/height): parsing, IoU, matching."""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

Box = tuple[float, float, float, float]
PERMILLE_LIMIT = 999  # the largest coordinate on the 0-999 grid


class BoxFormatError(ValueError):
    pass


def _reject_constant(name: str) -> None:
    raise BoxFormatError(f"{name} is not a coordinate")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise BoxFormatError("duplicate key")  # {"action_type": "click", "action_type": "type"}
    return dict(pairs)


def loads_strict(text: str) -> Any:
    """JSON without NaN/Infinity and without duplicate object keys."""
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except BoxFormatError:
        raise
    except json.JSONDecodeError as err:
        raise BoxFormatError(f"not JSON: {err.msg}") from None
    except ValueError:  # an integer longer than Python converts (4,300 digits)
        raise BoxFormatError("number too long") from None
    except RecursionError:  # "[[[[..." thousands deep
        raise BoxFormatError("nested too deeply") from None


def as_box(value: Any, limit: float | None = PERMILLE_LIMIT) -> Box:
    """`limit`: the largest coordinate allowed (None: any, pixel boxes before scaling)."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise BoxFormatError("a box is [x1, y1, x2, y2]")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise BoxFormatError("box coordinates must be numbers")
    x1, y1, x2, y2 = (float(v) for v in value)
    top = math.inf if limit is None else limit
    if not (0 <= x1 < x2 <= top and 0 <= y1 < y2 <= top):
        raise BoxFormatError(f"box must satisfy 0 <= x1 < x2 <= {top:g} and 0 <= y1 < y2 <= {top:g}")
    return x1, y1, x2, y2


def as_boxes(value: Any, max_boxes: int, limit: float | None = PERMILLE_LIMIT) -> list[Box]:
    """One box [x1,y1,x2,y2] or a list of boxes [[...], ...] (an empty list is no box)."""
    if not isinstance(value, (list, tuple)):
        raise BoxFormatError("boxes must be a list")
    if len(value) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [as_box(value, limit)]
    if len(value) > max_boxes:
        raise BoxFormatError(f"more than {max_boxes} boxes")
    return [as_box(v, limit) for v in value]


def iou(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def count_matches(gold: Sequence[Box], pred: Sequence[Box], threshold: float) -> int:
    """Size of a maximum one-to-one matching between gold and predicted boxes with IoU > threshold
    (augmenting paths; at most max_boxes on each side)."""
    edges = [[j for j, p in enumerate(pred) if iou(g, p) > threshold] for g in gold]
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in edges[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, set()) for i in range(len(gold)))
