"""`bash bench/gpu_check.sh` on a machine without CUDA: one table, every row skipped, exit 0, and
nothing installed (the wheels are only for a GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TITLES = [
    "packed rows: ponder_varlen vs sdpa, Glm4v bf16",
    "glm41v_1b bf16 training, 8k packed rows",
    "chunked loss peak memory at 32k tokens",
    "one RLCS step, tiny Glm4v, image prompts, HF engine",
    "vLLM rollouts on CUDA",
    "multi-GPU ZeRO-3 (NCCL, >1 rank)",
]


def table_rows(stdout: str) -> list[list[str]]:
    """The table's body rows as cells (header and separator dropped)."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the checks would run")
def test_without_cuda_every_row_is_skipped_and_the_exit_status_is_zero(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "PONDER_PYTHON": sys.executable, "PONDER_GPU_SITE": str(site), "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = table_rows(proc.stdout)
    assert [row[0] for row in rows] == TITLES
    assert all(row[1] == "skipped" for row in rows), rows
    assert all(row[3] for row in rows)  # each says why
    assert "no CUDA device" in rows[0][3]
    assert not site.exists()  # no wheels installed without a GPU
    # The same table lands in $OUT (what the device tool brings back), with a json of the rows.
    assert (tmp_path / "gpu_check.md").read_text().strip() in proc.stdout
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["status"] for r in saved["rows"]] == ["skipped"] * len(TITLES)
