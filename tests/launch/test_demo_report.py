"""The demo report: the curriculum line (gain per 1,000 prompts rolled out, each run's learning rate)
and the rows of the stages that were evaluated."""

import json
from pathlib import Path

from launch.demo_report import write_report


def _run(run: Path, lr: float, points: list[tuple[int, float]]) -> None:
    """A run dir with its config and in-run evaluations: (prompts rolled out that step, accuracy)."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"trainer:\n  optim:\n    lr: {lr}\n")
    lines = [{"step": step, "prompts_rolled_out": rolled, "eval/accuracy": acc}
             for step, (rolled, acc) in enumerate(points)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_the_curriculum_line_gives_gains_per_rollout_and_learning_rates(tmp_path: Path) -> None:
    _run(tmp_path / "rlcs", 6e-4, [(0, 0.30), (500, 0.40), (500, 0.50)])  # +20 points in 1,000 prompts
    _run(tmp_path / "rl_uniform", 2e-4, [(0, 0.30), (1000, 0.40)])  # +10 points in 1,000 prompts
    report = write_report(tmp_path, rl_steps=2, timings={}).read_text()
    line = next(line for line in report.splitlines() if line.startswith("Curriculum vs uniform"))
    assert "RLCS +20.00 pts, uniform +10.00 pts (ratio 2.00)" in line
    assert line.endswith("peak learning rates: RLCS 0.0006, uniform 0.0002")
    assert (tmp_path / "plots" / "curriculum_vs_uniform.png").stat().st_size > 0


def _evaluated(out: Path, step: str, accuracy: float) -> None:
    """An eval step's eval.json: the held-out set and its control, every number `accuracy`."""
    numbers = {"accuracy": accuracy, "pass@1": accuracy, "pass@4": accuracy, "pass@8": accuracy, "format_ok_rate": 1.0}
    one = {"greedy": {"all": numbers}, "sampled": {"all": numbers, "domains": {"visual_count": numbers}}}
    (out / step).mkdir(parents=True)
    (out / step / "eval.json").write_text(json.dumps({"sets": {"eval": one, "eval_other_image": one}}))


def test_the_uniform_run_has_a_row_when_it_was_evaluated(tmp_path: Path) -> None:
    for step, accuracy in (("eval_pretrain", 0.0), ("eval_sft", 0.367), ("eval_rlcs", 0.526)):
        _evaluated(tmp_path, step, accuracy)
    report = write_report(tmp_path, rl_steps=2, timings={}).read_text()
    assert "| rlcs | 52.6 | 52.6 |" in report and "uniform" not in report  # the quick demo has no uniform run
    _evaluated(tmp_path, "eval_rl_uniform", 0.49)
    report = write_report(tmp_path, rl_steps=2, timings={}).read_text()
    uniform = "uniform RL (from SFT, RLCS's rollouts)"
    assert f"| {uniform} | 49.0 | 49.0 | 49.0 | 49.0 | 49.0 | 100.0 | 49.0 |" in report
    assert f"| domain | pretrain (sampled acc) | sft (sampled acc) | rlcs (sampled acc) | {uniform} (sampled acc) |" in report
    assert "| visual_count | 0.0 | 36.7 | 52.6 | 49.0 |" in report
