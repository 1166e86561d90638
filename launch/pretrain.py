"""`torchrun --nproc_per_node=N launch/pretrain.py recipe=pretrain_tiny [key=value ...]`"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from launch.common import exit_after_last_job, plain_data_errors, register, start
from stages.pretrain import PretrainConfig, run

register("pretrain_schema", PretrainConfig)


@hydra.main(config_path="../recipes", config_name="pretrain", version_base="1.3")
@plain_data_errors
def main(raw: DictConfig) -> None:
    cfg, run_dir, info = start(raw)
    run(cfg, run_dir, info)


if __name__ == "__main__":
    main()
    exit_after_last_job()
