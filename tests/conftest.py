"""Fixtures every test folder shares: the tiny GLM tokenizer (built from the repo's corpus, the
same for every test) and helpers that compare batches; and how pytest-xdist splits the suite."""

from __future__ import annotations

import pytest

from data_pipelines.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny byte-level BPE with every GLM special token and the chat template."""
    return build_tiny_tokenizer()


# ----------------------------------------------------------------------------------------------
# pytest-xdist (`make test`: -n 2 --dist loadscope). A test file is one unit of work, so a module's
# shared fixtures (trained runs, launches) are built once; tests/sweeps/ is one unit, because its
# tests share the one local Slurm cluster. (xdist's own `xdist_group` marker does not group under
# pytest 9: xdist renames `item._nodeid`, which pytest 9 no longer reads.)
SERIAL_DIRS = ("tests/sweeps",)

# Files of a minute or more, heaviest first (worker seconds on two loaded cores, 2026-12-02): they
# start first, so no worker is left with a long file while the other has nothing to do. The rest
# follow in collection order.
HEAVY_FIRST = (
    "tests/trainer/test_pretrain.py",  # 361
    "tests/sweeps",  # 283
    "tests/launch/test_demo.py",  # 235
    "tests/rl/test_rl_vllm_run.py",  # 156
    "tests/sft/test_sft_run.py",  # 146
    "tests/rl/test_rl_run.py",  # 126
    "tests/rl/test_rl_images.py",  # 117
    "tests/trainer/test_memory_plan.py",  # ~100
    "tests/eval/test_eval.py",  # 83
)


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its file, or a directory that runs as one."""
    path = nodeid.split("::", 1)[0]
    return next((d for d in SERIAL_DIRS if path.startswith(d + "/")), path)


def _heavy_rank(nodeid: str) -> int:
    unit = work_unit(nodeid)
    return HEAVY_FIRST.index(unit) if unit in HEAVY_FIRST else len(HEAVY_FIRST)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the heavy-first order of the collection
    return FileScheduling(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # an xdist worker; a plain run keeps pytest's order
        items.sort(key=lambda item: _heavy_rank(item.nodeid))  # stable: a file keeps its order
