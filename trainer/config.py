"""Dataclass configs of the shared engine; Hydra recipes fill them, code never reads raw dicts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
WANDB_MODES = ("offline", "online", "disabled")
RESUME_MODES = ("auto", "never")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    warmup_steps: int = 100
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # The vision tower's learning rate as a fraction of `lr` (every step of the schedule): RL can
    # then adapt what the tower sees at a rate that does not break it. 1: one rate for all.
    vision_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"trainer.optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ValueError("trainer.optim: need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0")
        if not 0 < self.vision_lr_scale < math.inf:
            raise ValueError("trainer.optim.vision_lr_scale must be > 0 (trainer.freeze_vision=true freezes the tower)")


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    # Rows per optimizer step over all ranks (packed rows of data.packing.seq_len; RL: responses).
    # Set, it fixes the batch whatever the GPU count: accumulation = global_batch / (micro rows x
    # world size), an error when that does not divide. Unset, `grad_accum` is used as given.
    global_batch: Optional[int] = None
    grad_accum: Optional[int] = None  # micro-batches per optimizer step on each rank (default 1)
    clip_grad_norm: float = 1.0  # 0 disables clipping
    zero_stage: int = 3
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    activation_checkpointing: bool = False
    # Positions per chunk of the per-token loss: full-vocabulary logits exist for one chunk at a
    # time (2,048 x 151,552 x 4 B = 1.2 GB in fp32), never for a whole row. 0: the whole row.
    loss_chunk_tokens: int = 2048
    # Ranks that share each packed row (Ulysses sequence parallelism, trainer/sequence_parallel.py):
    # each holds seq_len / N positions; data parallelism runs over world size / N. Pretraining only.
    sequence_parallel_size: int = 1
    freeze_vision: bool = False
    freeze_language: bool = False
    save_every: int = 1000
    keep_last: int = 3  # completed checkpoints kept; older ones are deleted
    log_every: int = 1
    seed: int = 0
    max_consecutive_nonfinite: int = 5  # then save and stop
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.save_every < 1 or self.log_every < 1:
            raise ValueError("trainer: max_steps, save_every, log_every must be >= 1")
        if (self.grad_accum is not None and self.grad_accum < 1) or (self.global_batch is not None
                                                                    and self.global_batch < 1):
            raise ValueError("trainer: grad_accum and global_batch must be >= 1 when set")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"trainer.zero_stage must be 0..3, got {self.zero_stage}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.loss_chunk_tokens < 0:
            raise ValueError("trainer.loss_chunk_tokens must be >= 0 (0: no chunking)")
        if self.sequence_parallel_size < 1:
            raise ValueError("trainer.sequence_parallel_size must be >= 1")
        if self.keep_last < 1:
            raise ValueError("trainer.keep_last must be >= 1")
        if self.freeze_vision and self.freeze_language:
            raise ValueError("trainer: freezing both the vision tower and the language model leaves nothing to train")

    def accumulation(self, micro_rows: int, world_size: int) -> int:
        """Micro-batches per rank per optimizer step: from `global_batch` when set (it must divide by
        micro rows x world size, and agree with `grad_accum` if that is set too), else `grad_accum`."""
        if self.global_batch is None:
            return self.grad_accum or 1
        per_pass = micro_rows * world_size
        if self.global_batch % per_pass:
            raise ValueError(f"trainer.global_batch={self.global_batch} is not a multiple of micro rows ({micro_rows}) "
                             f"x world size ({world_size}) = {per_pass}: change the batch, the rows or the GPU count")
        derived = self.global_batch // per_pass
        if self.grad_accum is not None and self.grad_accum != derived:
            raise ValueError(f"trainer.grad_accum={self.grad_accum} contradicts trainer.global_batch="
                             f"{self.global_batch} ({micro_rows} rows x {world_size} ranks -> {derived}): set one")
        return derived


@dataclass
class LoggingConfig:
    wandb_mode: str = "offline"  # a real offline run dir under <run_dir>/wandb; `wandb sync` it later
    wandb_project: str = "ponder"
    wandb_name: str | None = None
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"logging.wandb_mode must be one of {WANDB_MODES}, got {self.wandb_mode!r}")
