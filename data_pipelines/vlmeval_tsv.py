"""Prompt sets as VLMEvalKit publishes them (`LMUData/<set>.tsv`: MMBench, MMStar, AI2D_TEST, OCRBench,
HallusionBench, MathVista_MINI, MMMU_DEV_VAL, MME, ...) -> rows for data_pipelines/prompt_columns.py.

A tab-separated file with a header, written by pandas (an empty cell is NaN). Every cell is read as
text (an `answer` of "1" stays text, so it is read as an option index only where no option says "1").
The `image` column holds base64 JPEG/PNG text (chat.py decodes it); VLMEvalKit's own conventions are
applied here, as its `ImageBaseDataset` applies them:
- a cell of at most 64 characters is the `index` of another row whose image this row shares (MMBench
  and MME ask several questions about one image);
- a cell that is the Python text of a list holds several images (MMMU_DEV_VAL).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .prompt_columns import python_text

SHARED_IMAGE_MAX_CHARS = 64  # VLMEvalKit's bound: a longer cell is an image, a shorter one an index
_MAX_FIELD = 2**31 - 1  # an image cell is 20-200 KB of base64; csv's default limit is 128 KB


def read_tsv_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a VLMEvalKit TSV as dicts of text (None for empty cells), images resolved."""
    csv.field_size_limit(_MAX_FIELD)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not in the header
            rows = [{k: (v if v != "" else None) for k, v in row.items() if k is not None}
                    for row in csv.DictReader(f, delimiter="\t")]
    except UnicodeDecodeError as err:
        raise ValueError(f"prompt data {path}: not UTF-8 text ({err})") from err
    if rows and "image" in rows[0]:
        by_index = {row.get("index"): row.get("image") for row in rows}
        for row in rows:
            row["image"] = _image_cell(row.get("image"), by_index)
    return rows


def _image_cell(cell: str | None, by_index: dict[Any, str | None]) -> Any:
    if cell is None:
        return None
    if len(cell) <= SHARED_IMAGE_MAX_CHARS and cell in by_index:
        shared = by_index[cell]
        return _image_cell(shared, {}) if shared is not None and len(shared) > SHARED_IMAGE_MAX_CHARS else cell
    if cell.startswith("["):
        images = python_text(cell)
        if isinstance(images, list) and all(isinstance(i, str) for i in images):
            return images
    return cell
