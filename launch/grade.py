"""`python launch/grade.py recipe=grade_tiny model.init=<checkpoint> data.path=<prompts.jsonl> [k=8 ...]`

Offline pass@k of every prompt -> the difficulty sidecar next to the data (resumable)."""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

# launch.common also puts the repo root on sys.path
from launch.common import exit_on_sigterm, hydra_output_dir, plain_data_errors, register
from stages.rl.grading import GradeConfig, grade, local_info
from trainer.logging import setup_log_lines
from trainer.manifest import write_text_atomic

register("grade_schema", GradeConfig)


@hydra.main(config_path="../recipes", config_name="grade", version_base="1.3")
@plain_data_errors
def main(raw: DictConfig) -> None:
    try:
        cfg = OmegaConf.to_object(raw)
    except (ValueError, TypeError) as exc:
        sys.exit(f"ponder: bad recipe value: {exc}")
    exit_on_sigterm()
    setup_log_lines(True)
    counts = json.dumps(grade(cfg, local_info()), sort_keys=True)
    # Last, whole or not at all: a run directory with grade.json holds a finished grading.
    write_text_atomic(hydra_output_dir() / "grade.json", counts + "\n")
    print(counts)


if __name__ == "__main__":
    main()
