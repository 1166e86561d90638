"""Built-in verifiers; importing this package registers them under their domain names."""

from . import chart, choice, counting, grounding, gui, judge, math_answer, ocr, relative, rouge, vqa

__all__ = ["chart", "choice", "counting", "grounding", "gui", "judge", "math_answer", "ocr", "vqa"]
