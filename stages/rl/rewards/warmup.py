"""Imported only by the reward pool's forkserver: builds the LaTeX parser and math-verify's lazy state
once, so every worker forked from it (and every replacement after a timeout) starts warm instead of
paying the first parse (~0.5 s) inside some item's time limit."""

from __future__ import annotations

from .verifiers.math_answer import _compare

_compare("\\frac{1}{2}", "0.5", 6, 15)
_compare.cache_clear()
