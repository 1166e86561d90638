"""DeepSpeed (ZeRO-3 by default) around a Glm4v: distributed setup, optimizer, LR, the step.

We drive DeepSpeed directly rather than through accelerate: one layer fewer between the loop and
ZeRO, and its checkpoint / parameter-gathering calls are used as they are (docs/design.md).
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist

from .config import OptimConfig, TrainerConfig
from .forward import wrap_forward


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> DistInfo:
    """Join the torchrun group (NCCL on GPU, gloo on CPU), or make a group of one."""
    if "RANK" not in os.environ:  # plain `python launch/...`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def resolved_precision(cfg: TrainerConfig) -> str:
    if cfg.precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return cfg.precision


def deepspeed_config(cfg: TrainerConfig, micro_batch_rows: int, world_size: int,
                     managed_accumulation: bool = True) -> dict:
    """`managed_accumulation=False`: the caller owns the boundary (every `step()` applies what the
    backward passes since the last one accumulated), for stages whose number of micro-batches
    varies from step to step (RL)."""
    bf16 = resolved_precision(cfg) == "bf16"
    grad_accum = cfg.grad_accum if managed_accumulation else 1
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_rows,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_rows * grad_accum * world_size,
        "gradient_clipping": cfg.clip_grad_norm,
        "bf16": {"enabled": bf16},
        "zero_optimization": {
            "stage": cfg.zero_stage,
            "overlap_comm": torch.cuda.is_available(),
            "contiguous_gradients": True,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if not managed_accumulation:
        config["managed_gradient_accumulation"] = False
    return config


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warmup, then cosine / linear decay to lr * min_lr_ratio, or constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def apply_freezing(model: torch.nn.Module, cfg: TrainerConfig) -> None:
    if cfg.freeze_vision:
        model.model.visual.requires_grad_(False)
    if cfg.freeze_language:
        model.model.language_model.requires_grad_(False)
        model.lm_head.requires_grad_(False)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and other 1-D parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:  # under ZeRO-3 init a parameter's real shape is its ds_shape
            (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model: torch.nn.Module, cfg: TrainerConfig, micro_batch_rows: int, info: DistInfo,
                 managed_accumulation: bool = True):
    """Wrap the model (in its training forward, `wrap_forward`) in a DeepSpeed engine with AdamW
    (our LR schedule is set per step)."""
    apply_freezing(model, cfg)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        param_groups(model, o.weight_decay),
        lr=lr_at(0, cfg.max_steps, o),
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        fused=torch.cuda.is_available(),
    )
    engine, *_ = deepspeed.initialize(
        model=wrap_forward(model),
        optimizer=optimizer,
        config=deepspeed_config(cfg, micro_batch_rows, info.world_size, managed_accumulation),
    )
    return engine


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value
