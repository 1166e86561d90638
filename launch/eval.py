"""`[torchrun --nproc_per_node=N] launch/eval.py recipe=eval_tiny model.init=<ckpt> data.paths=[a.jsonl,b.parquet]`

Greedy and sampled accuracy, pass@k, rewards, format and lengths of a checkpoint on prompt sets,
per set and per domain (stages/evaluate.py, docs/eval.md): eval.json and eval.md in the run dir."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from launch.common import exit_after_last_job, plain_data_errors, register, start  # also puts the repo root on sys.path
from stages.evaluate import EvalRunConfig, evaluate, nothing_evaluated, write_report
from trainer.distributed import leave_distributed

register("eval_schema", EvalRunConfig)
FAILED: list[str] = []  # a multirun's jobs with nothing evaluated: the others still run


@hydra.main(config_path="../recipes", config_name="eval", version_base="1.3")
@plain_data_errors
def main(raw: DictConfig) -> None:
    cfg, run_dir, info = start(raw)
    results = evaluate(cfg, info, run_dir / "responses.jsonl" if info.is_main else None)
    if info.is_main:
        print(write_report(results, run_dir), flush=True)
        print(f"eval.json and eval.md{' and responses.jsonl' if cfg.save_responses else ''} are in {run_dir}", flush=True)
    leave_distributed()
    if error := nothing_evaluated(results):  # the same on every rank; the report is written
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise SystemExit(error)
        print(error, file=sys.stderr, flush=True)
        FAILED.append(f"{run_dir}: {error}")


if __name__ == "__main__":
    main()
    if FAILED:  # `-m model.init=runA,runB`: every checkpoint evaluated, then the run fails
        sys.exit("\n".join(FAILED))
    exit_after_last_job()
