"""Fixtures every test folder shares: the tiny GLM tokenizer (built from the repo's corpus, the
same for every test) and helpers that compare batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipelines.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny byte-level BPE with every GLM special token and the chat template."""
    return build_tiny_tokenizer()


# Under pytest-xdist (`make test TEST_WORKERS=2`: -n 2 --dist loadgroup) every test file stays on one worker, so a
# module's shared fixtures (trained runs, launches) are built once; tests/sweeps/ shares the one
# local Slurm cluster and runs on one worker as a whole.
SERIAL_DIRS = ("sweeps",)


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    for item in items:
        path = Path(str(item.fspath)).relative_to(root)
        group = path.parts[0] if path.parts[0] in SERIAL_DIRS else path.as_posix()
        item.add_marker(pytest.mark.xdist_group(group))
