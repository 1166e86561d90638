"""The RLCS policy objective: PPO-style clipped surrogate with clip-higher, no KL, no entropy.

Per token t of response i: ρ = exp(logπ_θ − logπ_old), ℓ = −min(ρ·A_i, clip(ρ, 1−ε_low, 1+ε_high)·A_i).
Averaging: per sample (mean over a response's tokens, then over responses: token weight
1/|o_i|, normaliser = number of responses) or per token (weight 1, normaliser = number of
tokens). Like trainer.loss, micro-steps return *weighted sums* and the caller divides by the
global normaliser, so any split into micro-steps and ranks gives the full-batch gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AVERAGING = ("per_sample", "per_token")


@dataclass
class PolicyLossConfig:
    eps_low: float = 0.2
    eps_high: float = 0.28  # clip-higher: ε_high > ε_low lets unlikely good tokens grow
    averaging: str = "per_sample"
    advantage_scale: str = "std"  # "none": Dr. GRPO (no division by the group std)
    advantage_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.averaging not in AVERAGING:
            raise ValueError(f"policy.averaging must be one of {AVERAGING}, got {self.averaging!r}")
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise ValueError("policy: need 0 <= eps_low < 1 and eps_high >= 0")


def token_weight(num_response_tokens: int, averaging: str) -> float:
    """Loss weight of each trained token of a response (the global normaliser is added later)."""
    return 1.0 / max(1, num_response_tokens) if averaging == "per_sample" else 1.0


def sample_normaliser(num_samples: int, num_tokens: int, averaging: str) -> float:
    """Global denominator of the objective: responses (per sample) or trained tokens (per token)."""
    return float(num_samples if averaging == "per_sample" else num_tokens)


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(Σ weights·ℓ, stats). All inputs share a shape; weights are 0 off the trained tokens.
    Stats (detached sums over trained tokens): `clipped` tokens whose clipped branch is active,
    `ratio` Σρ, `tokens` trained-token count."""
    ratio = torch.exp(logprobs - old_logprobs.detach())
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    mask = weights > 0
    with torch.no_grad():
        active = ((advantages > 0) & (ratio > 1 + eps_high)) | ((advantages < 0) & (ratio < 1 - eps_low))
        stats = {"clipped": (active & mask).sum().float(), "ratio": (ratio * mask).sum(),
                 "tokens": mask.sum().float()}
    return (loss * weights).sum(), stats
