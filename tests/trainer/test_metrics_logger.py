"""The metrics log and its progress bar follow the run's steps."""

import json
from pathlib import Path

from trainer.config import LoggingConfig
from trainer.logging import MetricsLogger


def test_the_bar_follows_steps_not_records(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path, LoggingConfig(wandb_mode="disabled"), is_main=True, run_config=None,
                           start_step=0, total_steps=3)
    logger.log({"step": 0, "eval/accuracy": 0.25})  # the step-0 evaluation: no step trained yet
    assert logger.bar.n == 0
    logger.log({"step": 1, "loss": 0.5})
    logger.log({"step": 2, "loss": 0.25, "eval/accuracy": 0.5})
    assert logger.bar.n == 2
    assert logger.bar.postfix == "loss=0.2500"
    logger.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
