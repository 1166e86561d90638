"""Fixtures every test folder shares: the tiny GLM tokenizer (built from the repo's corpus, the
same for every test) and helpers that compare batches."""

from __future__ import annotations

import pytest

from data_pipelines.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny byte-level BPE with every GLM special token and the chat template."""
    return build_tiny_tokenizer()
