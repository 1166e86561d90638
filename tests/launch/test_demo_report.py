"""The demo report's curriculum line: gain per 1,000 prompts rolled out, and each run's learning rate."""

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
