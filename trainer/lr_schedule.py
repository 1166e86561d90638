"""The learning rate of each optimizer step: linear warmup, then cosine / linear decay, or constant."""

from __future__ import annotations

import math

import torch

from .config import OptimConfig


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warmup, then cosine / linear decay to lr * min_lr_ratio, or constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, vision_lr_scale: float = 1.0) -> None:
    """`lr` on every group; on the vision tower's (marked `vision`, trainer/zero.py param_groups)
    times `vision_lr_scale`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * vision_lr_scale if group.get("vision") else lr
