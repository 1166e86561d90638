"""Per-token losses / log-probs of a Batch, and the objective all stages share.

The objective every stage uses is `sum(label_weights * token_loss) / global sum(label_weights)`:
weights 1 give the token mean (pretraining); 1 / n_targets per sample gives the per-sample mean
(SFT, RL). Dividing by the *global* weight sum makes the gradient independent of how samples were
split into micro-batches and ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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


def _head_losses(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, labels: torch.Tensor
                 ) -> torch.Tensor:
    return token_losses(head(hidden), labels)


def chunked_token_losses(hidden: torch.Tensor, labels: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                         chunk: int) -> torch.Tensor:
    """Per-position cross-entropy `(B, L)` of `head(hidden)`, `chunk` positions at a time: the
    logits of one chunk exist at once, in the forward and, recomputed (activation checkpointing),
    in the backward. `chunk <= 0` or a row that fits in one chunk: the plain computation."""
    length = hidden.shape[1]
    if chunk <= 0 or length <= chunk:
        return _head_losses(head, hidden, labels)
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    pieces = []
    for start in range(0, length, chunk):
        h, y = hidden[:, start : start + chunk], labels[:, start : start + chunk]
        if recompute:
            pieces.append(checkpoint(functools.partial(_head_losses, head), h, y, use_reentrant=False))
        else:
            pieces.append(_head_losses(head, h, y))
    return torch.cat(pieces, dim=1)


def batch_losses(ds: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Per-token losses `(B, L)` of a micro-batch through the training forward (`ds` wraps a
    `trainer.forward` module, under DeepSpeed or not), chunked over positions."""
    return ds(batch, per_token_loss=True)


def weighted_loss_sum(ds: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weighted token losses, per-token losses detached) for one micro-batch."""
    losses = batch_losses(ds, batch)
    return (losses * batch.label_weights).sum(), losses.detach()
