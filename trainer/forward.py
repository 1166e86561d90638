"""The training forward: Glm4v with the vision tower run exactly once per call.

ZeRO-3 gathers each submodule's parameters with collectives as the module runs, so every rank
must run the same modules in the same order. A batch without images would skip the vision tower
on one rank and hang the others; so a call without visuals runs the tower on a 2x2-patch dummy
whose output is multiplied by 0 (same graph, no effect on the loss). Images and video frames go
through the tower in one call, which also sidesteps transformers' Glm4v placing video features
with the image token id (it cannot mix images and videos in one forward; `mm_token_type_ids`
can: 1 image, 2 video).

Called with `per_token_loss=True` (every stage's training, π_old and eval losses) a forward returns
the per-token cross-entropy of `batch.labels` instead of logits, computed `loss_chunk_tokens`
positions at a time (trainer/loss.py `chunked_token_losses`): full-vocabulary logits never exist
for a whole row (at 151,552 vocab x 32k tokens they would be ~20 GB in fp32).
"""

from __future__ import annotations

import torch
from torch import nn

from data_pipelines.batch import Batch

from .loss import chunked_token_losses

PATCH_DIM = 3 * 2 * 14 * 14


class UniformVisionForward(nn.Module):
    def __init__(self, model: nn.Module, loss_chunk_tokens: int = 0):
        super().__init__()
        self.model = model  # the Glm4vForConditionalGeneration (its state dict keys gain "model.")
        self.loss_chunk_tokens = loss_chunk_tokens
        self.images_seen = 0  # images and video frames through the vision tower (not the dummy): metrics

    def forward(self, batch: Batch, per_token_loss: bool = False) -> torch.Tensor:
        """Logits `(B, L, V)`, or with `per_token_loss` the cross-entropy of `batch.labels` `(B, L)`."""
        if per_token_loss:
            # A sequence-parallel slice hands the attention its SequenceShard (trainer/sequence_parallel.py).
            extra = {"sequence_parallel": batch.shard} if getattr(batch, "shard", None) is not None else {}
            hidden = self.model.model(inputs_embeds=self.embed(batch), position_ids=batch.position_ids,
                                      use_cache=False, **extra).last_hidden_state
            return chunked_token_losses(hidden, batch.labels, self.model.lm_head, self.loss_chunk_tokens)
        out = self.model(inputs_embeds=self.embed(batch), position_ids=batch.position_ids, use_cache=False)
        return out.logits

    def embed(self, batch: Batch) -> torch.Tensor:
        """Token embeddings with image / video-frame features in place (the vision tower runs once,
        on a dummy when there are no visuals). Generation prefills from these too."""
        inner = self.model.model
        embeds = inner.get_input_embeddings()(batch.input_ids)
        pixels, grids = visual_inputs(batch, embeds.device)
        features = torch.cat(inner.get_image_features(pixels, grids).pooler_output).to(embeds.dtype)
        if batch.pixel_values is None and batch.pixel_values_videos is None:
            return embeds + 0.0 * features.sum()
        self.images_seen += len(grids)
        embeds = embeds.clone()
        index = getattr(batch, "feature_index", None)
        if index is not None:  # a sequence-parallel slice: the features of its own tokens
            visual = index >= 0
            embeds[visual] = features[index[visual]]
            # The slice's pixels are those of its own items (sequence_parallel._slice_visuals); rows of
            # an item cut by the slice boundary that land on the neighbour's tokens join at weight 0.
            return embeds + 0.0 * features.sum()
        n_image = int((batch.mm_token_type_ids == 1).sum())
        embeds[batch.mm_token_type_ids == 1] = features[:n_image]
        embeds[batch.mm_token_type_ids == 2] = features[n_image:]
        return embeds


def visual_inputs(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Image patches then video-frame patches, with per-image / per-frame (1, h, w) grids."""
    pixels, grids = [], []
    if batch.pixel_values is not None:
        pixels.append(batch.pixel_values)
        grids.append(batch.image_grid_thw)
    if batch.pixel_values_videos is not None:
        pixels.append(batch.pixel_values_videos)
        thw = batch.video_grid_thw
        frames = torch.repeat_interleave(thw[:, 1:], thw[:, 0], dim=0)
        grids.append(torch.cat([torch.ones_like(frames[:, :1]), frames], dim=1))
    if not pixels:
        return torch.zeros(4, PATCH_DIM, device=device), torch.tensor([[1, 2, 2]], device=device)
    return torch.cat(pixels), torch.cat(grids)


class TextForward(nn.Module):
    """The training forward of a text-only decoder (`Glm4ForCausalLM`, e.g. the policy vLLM serves
    on CPU): row 0 of `position_ids` restarts per document, and with no attention mask transformers
    builds the block-causal mask of the packed row from it."""

    def __init__(self, model: nn.Module, loss_chunk_tokens: int = 0):
        super().__init__()
        self.model = model  # the same attribute as UniformVisionForward: checkpoint keys gain "model."
        self.loss_chunk_tokens = loss_chunk_tokens
        self.images_seen = 0  # a text-only model sees none

    def forward(self, batch: Batch, per_token_loss: bool = False) -> torch.Tensor:
        if batch.pixel_values is not None or batch.pixel_values_videos is not None:
            raise ValueError("a text-only model got a batch with images or videos")
        if per_token_loss:
            hidden = self.model.model(input_ids=batch.input_ids, position_ids=batch.position_ids[0],
                                      use_cache=False).last_hidden_state
            return chunked_token_losses(hidden, batch.labels, self.model.lm_head, self.loss_chunk_tokens)
        return self.model(input_ids=batch.input_ids, position_ids=batch.position_ids[0], use_cache=False).logits


def wrap_forward(model: nn.Module, loss_chunk_tokens: int = 0) -> nn.Module:
    """The training forward for `model`: vision-language models run the tower uniformly.
    `loss_chunk_tokens`: positions per chunk of the per-token loss (0: the whole row at once)."""
    cls = UniformVisionForward if hasattr(model.config, "vision_config") else TextForward
    return cls(model, loss_chunk_tokens)
