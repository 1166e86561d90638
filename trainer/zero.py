"""The model under DeepSpeed (ZeRO-3 by default): freezing, AdamW parameter groups, the DeepSpeed
config. In ponder "engine" means a rollout engine; the DeepSpeed object is called `ds` throughout.

We drive DeepSpeed directly rather than through accelerate: one layer fewer between the loop and
ZeRO, and its checkpoint / parameter-gathering calls are used as they are (docs/design.md).
"""

from __future__ import annotations

import deepspeed
import torch

from .config import TrainerConfig
from .distributed import DistInfo
from .forward import wrap_forward
from .logging import log
from .lr_schedule import lr_at
from .model_shape import VISUAL


def resolved_precision(cfg: TrainerConfig) -> str:
    if cfg.precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return cfg.precision


def clips_itself(cfg: TrainerConfig) -> bool:
    """DeepSpeed's fp32 engine without ZeRO clips with the global norm and drops it: its
    `get_global_grad_norm()` stays None, which the loop would read as a non-finite step. There the
    optimizer clips (ClippingAdamW) and DeepSpeed's own clipping is off."""
    return cfg.zero_stage == 0 and resolved_precision(cfg) == "fp32"


class ClippingAdamW(torch.optim.AdamW):
    """AdamW that clips the global gradient norm before stepping and keeps the norm in
    `_global_grad_norm`, where DeepSpeed reads it after every step. Without ZeRO every rank holds
    the whole averaged gradient when `step` runs, so each computes the same norm. A non-finite
    norm skips the update."""

    def __init__(self, params, max_norm: float, **kwargs):
        super().__init__(params, **kwargs)
        self.max_norm = max_norm if max_norm > 0 else float("inf")  # 0: measure, do not clip
        self._global_grad_norm: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        self._global_grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        if not torch.isfinite(self._global_grad_norm):
            return None
        return super().step(closure)


def deepspeed_config(cfg: TrainerConfig, micro_batch_rows: int, grad_accum: int, world_size: int,
                     managed_accumulation: bool = True) -> dict:
    """`managed_accumulation=False`: the caller owns the boundary (every `step()` applies what the
    backward passes since the last one accumulated), for stages whose number of micro-batches
    varies from step to step (RL)."""
    bf16 = resolved_precision(cfg) == "bf16"
    grad_accum = grad_accum if managed_accumulation else 1
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_rows,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_rows * grad_accum * world_size,
        "gradient_clipping": 0.0 if clips_itself(cfg) else cfg.clip_grad_norm,
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


def zero3_loading_config(cfg: TrainerConfig, info: DistInfo) -> dict | None:
    """The config `model.init` is loaded under so that it lands in ZeRO-3 shards (trainer.model.
    partitioned_loading); None where nothing is partitioned (another stage, a world of one)."""
    if cfg.zero_stage != 3 or info.world_size == 1:
        return None
    return deepspeed_config(cfg, 1, 1, info.world_size)


def world_of_one_hint(cfg: TrainerConfig, world_size: int) -> str | None:
    """ZeRO-3 on one rank shards nothing and pays DeepSpeed's per-module gather hooks on the host:
    1.6x slower a step than ZeRO-0 for glm41v_1b on an H200 (bench/RESULTS.md, GPU check). The
    default stays 3 (a resumed run keeps its stage); the user is told."""
    if cfg.zero_stage != 3 or world_size != 1:
        return None
    return ("trainer.zero_stage=3 on a single rank shards nothing and is host-bound (1.6x slower a step than "
            "trainer.zero_stage=0 for glm41v_1b on an H200, bench/RESULTS.md); on one device pass "
            "trainer.zero_stage=0 (a run keeps its stage when resumed)")


def apply_freezing(model: torch.nn.Module, cfg: TrainerConfig) -> None:
    if cfg.freeze_vision:
        model.model.visual.requires_grad_(False)
    if cfg.freeze_language:
        model.model.language_model.requires_grad_(False)
        model.lm_head.requires_grad_(False)


def param_groups(model: torch.nn.Module, weight_decay: float, vision_lr_scale: float = 1.0) -> list[dict]:
    """No weight decay on biases, norms and other 1-D parameters. With `vision_lr_scale` != 1 the
    vision tower's parameters get groups of their own, marked `vision` (set_lr scales their rate by
    the config's value, so a resumed run follows its config, not the groups it saved)."""
    split = vision_lr_scale != 1.0
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:  # under ZeRO-3 init a parameter's real shape is its ds_shape
            vision = split and name.startswith(VISUAL)
            groups.setdefault((len(getattr(p, "ds_shape", p.shape)) >= 2, vision), []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, **({"vision": True} if vision else {})}
            for (decays, vision), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]


def wrap_deepspeed(model: torch.nn.Module, cfg: TrainerConfig, micro_batch_rows: int, grad_accum: int,
                   info: DistInfo, managed_accumulation: bool = True):
    """The model in its training forward (`wrap_forward`) inside a DeepSpeed engine with AdamW (our
    LR schedule is set per step). `ds(batch)` returns logits; `ds.module.model` is the HF model."""
    hint = world_of_one_hint(cfg, info.world_size)
    if hint:
        log.warning(hint)
    apply_freezing(model, cfg)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    o = cfg.optim
    clipping = {"max_norm": cfg.clip_grad_norm} if clips_itself(cfg) else {}
    optimizer = (ClippingAdamW if clipping else torch.optim.AdamW)(
        param_groups(model, o.weight_decay, o.vision_lr_scale),
        lr=lr_at(0, cfg.max_steps, o),
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        fused=torch.cuda.is_available(),
        **clipping,
    )
    ds, *_ = deepspeed.initialize(
        model=wrap_forward(model, cfg.loss_chunk_tokens),
        optimizer=optimizer,
        config=deepspeed_config(cfg, micro_batch_rows, grad_accum, info.world_size, managed_accumulation),
    )
    return ds
