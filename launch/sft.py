"""`torchrun --nproc_per_node=N launch/sft.py recipe=sft_tiny model.init=<ckpt> data.train=... [key=value ...]`"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from launch.common import exit_after_last_job, plain_data_errors, register, start
from stages.sft import SFTConfig, run

register("sft_schema", SFTConfig)


@hydra.main(config_path="../recipes", config_name="sft", version_base="1.3")
@plain_data_errors
def main(raw: DictConfig) -> None:
    cfg, run_dir, info = start(raw)
    run(cfg, run_dir, info)


if __name__ == "__main__":
    main()
    exit_after_last_job()
