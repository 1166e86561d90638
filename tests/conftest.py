"""Fixtures every test folder shares: the tiny GLM tokenizer (built from the repo's corpus, the
same for every test) and helpers that compare batches; and how pytest-xdist splits the suite."""

from __future__ import annotations

import os

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


def pytest_configure(config):
    # Each xdist worker gets its share of the cores for the work it does in-process (warm starts,
    # forward passes): two workers at torch's default of every core each run 4 threads on 2 cores,
    # and an oversubscribed step took 1.5x as long as one on its own thread (measured, 2 cores).
    # Launched stages run with OMP_NUM_THREADS=1 (tests/trainer/launching.py).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # an xdist worker; a plain run keeps pytest's order
        items.sort(key=lambda item: _heavy_rank(item.nodeid))  # stable: a file keeps its order
