"""Fixtures shared by the prompt-set tests."""

from __future__ import annotations

import pytest

from data_pipelines.chat import ChatRenderer
from data_pipelines.processor import ProcessorConfig, VisionProcessor


@pytest.fixture(scope="module")
def renderer(tokenizer):
    """The one renderer, with a small pixel budget (the test images are 56 x 56)."""
    return ChatRenderer(tokenizer, VisionProcessor(ProcessorConfig(max_pixels=56 * 56 * 4)))
