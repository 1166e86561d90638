"""Per-token losses / log-probs of a Batch, and the objective all stages share.

The objective every stage uses is `sum(label_weights * token_loss) / global sum(label_weights)`:
weights 1 give the token mean (pretraining); 1 / n_targets per sample gives the per-sample mean
(SFT, RL). Dividing by the *global* weight sum makes the gradient independent of how samples were
split into micro-batches and ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data_pipelines.batch import IGNORE_INDEX, Batch


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per position `(B, L)` in fp32; 0 where the label is ignored."""
    flat = F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return flat.view(labels.shape)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position `(B, L)`; 0 where the label is ignored."""
    return -token_losses(logits, labels)


def weighted_loss_sum(engine: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weighted token losses, per-token losses detached) for one micro-batch.
    `engine` wraps a `trainer.forward.UniformVisionForward`."""
    losses = token_losses(engine(batch), batch.labels)
    return (losses * batch.label_weights).sum(), losses.detach()
