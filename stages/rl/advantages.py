"""Group-relative advantages (GRPO): each response's reward against its group's."""

from __future__ import annotations

import torch

ADVANTAGE_SCALES = ("std", "none")


def group_advantages(rewards: torch.Tensor, scale: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean(r)) / (std(r) + eps) over the last dim (one group per row), with the
    population std; `scale="none"` leaves out the division (Dr. GRPO)."""
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"advantage scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    rewards = rewards.to(torch.float64)
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if scale == "none":
        return centred
    return centred / (rewards.std(dim=-1, unbiased=False, keepdim=True) + eps)
