"""bench/peers.py without TRL: argument handling, rates from timings and logs, the ratio table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import peers  # noqa: E402


def test_arguments_defaults_quick_and_overrides():
    args, s = peers.parse_args([])
    assert args.lines == ["sft", "pretrain", "rl"] and s.ranks == (1, 2) and s.shape == peers.Shape()
    args, s = peers.parse_args(["--quick", "--lines", "rl", "--ranks", "2", "--rl-steps", "3", "--lr", "0.01"])
    assert args.lines == ["rl"] and s.ranks == (2,) and s.rl_steps == 3 and s.lr == 0.01
    assert s.shape.hidden == 128 and s.sft_steps == 4  # quick settings, the explicit values on top


@pytest.mark.parametrize("argv", [["--lines", "sft,dpo"], ["--ranks", "one"], ["--ranks", "0"],
                                  ["--prompts", "3", "--group", "3", "--mini-batches", "2"]])
def test_bad_arguments_stop_at_start(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        peers.parse_args(argv)
    assert exc.value.code == 2 and "error" in capsys.readouterr().err


def test_the_shape_is_a_valid_ponder_model_of_about_20m_parameters():
    s = peers.Shape()
    cfg = peers.model_config(s)  # ModelConfig validates head_dim / M-RoPE sections / merger width
    assert cfg.text_head_dim == 32 and f"model.text_hidden_size={s.hidden}" in s.overrides()
    per_layer = 2 * s.hidden * s.hidden + 2 * s.hidden * (s.hidden // s.heads * s.kv_heads) + 3 * s.hidden * s.intermediate
    params = s.layers * per_layer + 2 * cfg.vocab_size * s.hidden
    assert 18e6 < params < 24e6


def test_ratio_directions():
    assert peers.ratio(130.0, 100.0) == pytest.approx(1.3)
    assert peers.ratio(2.0, 3.0, higher_is_better=False) == pytest.approx(1.5)  # seconds per step
    assert peers.ratio(None, 1.0) is None and peers.ratio(1.0, 0.0) is None


def test_steady_rates_leave_out_the_first_step():
    lines = [{"step": 0, "eval/accuracy": 0.1}] + [
        {"step": i, "step_time_s": t, "tokens": 100 * i} for i, t in ((1, 9.0), (2, 1.0), (3, 3.0))]
    st = peers.steady(lines, "tokens")
    assert st == {"step_s": 2.0, "seconds": 4.0, "count": 200}


def test_peer_rates_sum_ranks_after_warmup():
    timings = [{"times": [10.0, 11.0, 13.0, 14.0], "counts": [[5, 50], [4, 40], [6, 60], [2, 20]]},
               {"times": [10.1, 11.1, 13.1, 14.1], "counts": [[1, 10], [1, 10], [1, 10], [1, 10]]}]
    r = peers.peer_rates(timings, skip_steps=2)
    assert r == {"seconds": 3.0, "steps": 2, "samples": 6 + 2 + 1 + 1, "tokens": 60 + 20 + 10 + 10}


def test_table_ratios_and_skips(tmp_path, capsys):
    m = "Glm4 20.0M, text"
    results = [
        dict(line="sft", model=m, ranks=1, system="ponder sft", samples_per_s=13.0, tokens_per_s=650.0, samples=40,
             eval_loss=1.2),
        dict(line="sft", model=m, ranks=1, system="TRL SFTTrainer", samples_per_s=10.0, tokens_per_s=500.0, samples=40,
             eval_loss=1.3),
        dict(line="sft", model=m, ranks=2, system="ponder sft", samples_per_s=20.0, tokens_per_s=900.0, samples=80,
             eval_loss=1.1),
        dict(line="sft", model="Glm4v tiny, images", ranks=1, system="TRL SFTTrainer", skipped="needs torchvision"),
        dict(line="rl", model=m, ranks=1, system="ponder rl (vllm)", step_s=2.0, rollouts=64, accuracy=0.5),
        dict(line="rl", model=m, ranks=1, system="TRL GRPOTrainer", step_s=5.0, rollouts=64, accuracy=0.4),
    ]
    table = peers.build_table(results, "## header")
    lines = table.splitlines()
    row = lambda system, ranks=1: next(x for x in lines if f"| {ranks} | {system} |" in x)
    assert "**1.30x**" in row("ponder sft")  # 650 / 500 real tokens/s
    assert "**2.50x**" in row("ponder rl (vllm)")  # 5.0 / 2.0 s per step
    assert "| — |" in row("ponder sft", 2)  # no TRL row at 2 ranks: no ratio
    assert "skipped" in row("TRL SFTTrainer") or "needs torchvision" in table
    assert "### pretrain" not in table and lines[0] == "## header"
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"header": "## header", "results": results}))
    assert peers.main(["--table", str(saved)]) == 0
    assert capsys.readouterr().out.strip() == table
