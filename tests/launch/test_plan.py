"""`python -m launch.plan`: the issue's command line, recipe overrides, RL, errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from launch.plan import main
from tests.trainer.launching import REPO, launch_env

ISSUE = ["recipe=pretrain_9b", "nodes=8", "gpus_per_node=8", "gpu_memory_gib=80"]


def run_plan(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def gib(report: str, label: str) -> float:
    """The GiB figure on the report line starting with `label`."""
    line = next(line for line in report.splitlines() if line.strip().startswith(label))
    return float(line.split()[-1])


def test_the_issue_command_line_runs_as_written():
    proc = subprocess.run([sys.executable, "-m", "launch.plan", *ISSUE], cwd=REPO, env=launch_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "glm41v_9b: 10.29 B parameters" in out
    assert "8 nodes x 8 GPUs = 64 ranks x 80 GiB" in out
    assert "1 x 8,192 tokens (data.batch_rows x data.packing.seq_len)" in out
    assert "verdict: FITS in 80 GiB" in out


def test_recipe_overrides_reach_the_plan(capsys):
    _, on, _ = run_plan(ISSUE, capsys)
    code, off, _ = run_plan(ISSUE + ["trainer.activation_checkpointing=false"], capsys)
    assert code == 0
    assert "activation checkpointing off" in off
    assert gib(off, "saved for backward") > 5 * gib(on, "saved for backward")
    assert "trainer.activation_checkpointing=true" in off  # offered as a knob


def test_long_context_with_sequence_parallel_plans_like_8k_rows(capsys):
    _, short, _ = run_plan(ISSUE, capsys)
    _, long, _ = run_plan(ISSUE + ["data.packing.seq_len=32768", "sequence_parallel=4"], capsys)
    assert "1 x 32,768 tokens" in long and "8,192 tokens per rank" in long
    assert gib(long, "peak in the loss backward") == gib(short, "peak in the loss backward")


def knobs(report: str) -> list[tuple[str, float]]:
    return [(name, float(saved)) for name, saved in
            re.findall(r"^\s+\d+\. (\S+).*saves\s+([\d.]+) GiB", report, flags=re.M)]


def test_rl_plan_counts_vllm_and_ranks_the_knobs(capsys):
    code, out, _ = run_plan(["recipe=rlcs_9b", "nodes=8", "gpus_per_node=8", "gpu_memory_gib=80"], capsys)
    assert code == 0
    assert "vLLM (rollout.gpu_memory_utilization=0.45" in out
    assert "KV cache: 2 prompts x 8 samples x 24,640 tokens" in out  # 128 prompts / 64 ranks, G = 8
    listed = knobs(out)
    assert [s for _, s in listed] == sorted((s for _, s in listed), reverse=True)  # most help first
    assert listed[0][0] == "rollout_sleep=true"  # vLLM's 36 GiB reservation is the largest item


def test_whole_row_loss_is_planned_and_chunking_offered(capsys):
    _, chunked, _ = run_plan(["recipe=rlcs_9b", "nodes=8", "gpus_per_node=8", "gpu_memory_gib=80"], capsys)
    _, whole, _ = run_plan(["recipe=rlcs_9b", "nodes=8", "gpus_per_node=8", "gpu_memory_gib=80",
                            "trainer.loss_chunk_tokens=0"], capsys)
    chunk_peak = gib(chunked, "peak in the loss backward")
    assert gib(whole, "peak in the loss backward") == pytest.approx(16 * chunk_peak, rel=0.01)  # 32k / 2k
    assert "DOES NOT FIT" in whole and "FITS" in chunked
    assert knobs(whole)[0][0] == "trainer.loss_chunk_tokens=2048"


def test_global_batch_split_is_reported(capsys):
    _, pretrain, _ = run_plan(ISSUE, capsys)
    assert "1,536 rows per step = 1 x 64 data-parallel ranks x 24 accumulation" in pretrain
    _, sft, _ = run_plan(["recipe=sft_9b", "nodes=8", "gpus_per_node=8", "gpu_memory_gib=80"], capsys)
    assert "cannot split on 64 data-parallel ranks: trainer.global_batch=32" in sft


def test_markdown_row(capsys):
    code, out, _ = run_plan(ISSUE + ["markdown=true"], capsys)
    header, _, row = out.strip().splitlines()
    assert code == 0 and header.startswith("| plan |") and row.count("|") == header.count("|")


def test_bad_input_is_one_line_and_exit_2(capsys):
    for argv, message in [
        (ISSUE + ["trainer.zero_stag=3"], "zero_stag"),
        (ISSUE + ["nodes=eight"], "nodes"),
        (["recipe=grade_9b"], "cannot tell the stage"),
        (ISSUE + ["trainer.precision=fp8"], "trainer.precision"),
    ]:
        code, out, err = run_plan(argv, capsys)
        assert code == 2 and "per rank" not in out, (argv, out)
        errors = [line for line in err.splitlines() if line.startswith("ponder plan:")]
        assert len(errors) == 1 and message in errors[0], (argv, err)


def test_the_long_context_recipe_plans_with_its_own_sequence_parallelism(capsys):
    code, out, _ = run_plan(["recipe=pretrain_long_9b", "nodes=8", "gpus_per_node=8", "gpu_memory_gib=80"], capsys)
    assert code == 0
    assert "sequence parallel 4" in out  # trainer.sequence_parallel_size, not the planner's default
    assert "1 x 32,768 tokens (data.batch_rows x data.packing.seq_len) -> 8,192 tokens per rank" in out
    assert "batch    1,536 rows per step = 1 x 16 data-parallel ranks x 96 accumulation" in out
