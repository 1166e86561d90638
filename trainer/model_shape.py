"""What the memory planner needs to know about a model, read off a Glm4v built on the meta device.

`model_shape(cfg)` builds the recipe's model with `torch.device("meta")` (no memory, no weights
read) from the preset fields, or from `cfg.init`'s config.json when that checkpoint exists, and
returns every parameter's element count plus the layer widths activations depend on. Nothing here
touches a process group; the arithmetic lives in `trainer.memory_plan`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from transformers import Glm4vConfig, Glm4vForConditionalGeneration

from data_pipelines.tokenizer import SpecialTokens

from .checkpoint import resolve_hf_dir
from .model import ModelConfig, count_parameters, glm4v_config

VISUAL = "model.visual."
LANGUAGE = ("model.language_model.", "lm_head.")


@dataclass(frozen=True)
class ModelShape:
    """Parameter counts (elements) and layer widths of one Glm4v.

    `numels[i]` / `ndims[i]` / `trainable[i]`: element count and rank of parameter i and whether
    the optimizer owns it (recipes can freeze the vision tower or the language model).
    """

    numels: tuple[int, ...]
    ndims: tuple[int, ...]
    trainable: tuple[bool, ...]
    counts: dict[str, int]  # vision, merger, language, total (elements)
    largest_module: tuple[str, int]  # the module owning the most parameter elements directly
    attn_implementation: str
    # text decoder
    text_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rotary_dim: int  # head_dim * partial_rotary_factor
    # vision tower
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_mlp: int  # the vision blocks' MLP width (transformers: out_hidden_size)
    merger_dim: int  # the patch merger's width (= text hidden)
    merger_intermediate: int  # the patch merger's SwiGLU width
    patch_elements: int  # input values per patch: channels x temporal patch x patch x patch
    spatial_merge: int  # patches per LLM token along each side
    vision_trainable: bool
    language_trainable: bool

    @property
    def total_params(self) -> int:
        return sum(self.numels)

    @property
    def trainable_params(self) -> int:
        return sum(n for n, t in zip(self.numels, self.trainable) if t)

    @property
    def kv_bytes_per_token_bf16(self) -> int:
        """Bytes of K and V per token over all decoder layers in bf16 (a vLLM KV-cache slot)."""
        return 2 * self.text_layers * self.kv_heads * self.head_dim * 2


def _stand_in_special_tokens() -> SpecialTokens:
    """Token ids only name tokens; they do not change any shape. Any small distinct ids do."""
    return SpecialTokens(**{f.name: i for i, f in enumerate(dataclasses.fields(SpecialTokens))})


def transformers_config(cfg: ModelConfig) -> Glm4vConfig:
    """The Glm4vConfig the run would build: `cfg.init`'s config.json when it is on disk (a
    ponder checkpoint's hf/ or an HF directory), else the size fields (preset)."""
    if cfg.init:
        try:  # any model.init form: a run dir, checkpoints/step_N, an HF dir
            return Glm4vConfig(**json.loads((resolve_hf_dir(cfg.init) / "config.json").read_text()))
        except FileNotFoundError:
            pass  # not on disk (yet): plan from the preset's size fields
    return glm4v_config(cfg, _stand_in_special_tokens())


def model_shape(cfg: ModelConfig, freeze_vision: bool = False, freeze_language: bool = False) -> ModelShape:
    """Build cfg's Glm4v on the meta device and read its parameters and widths."""
    config = transformers_config(cfg)
    with torch.device("meta"):
        # sdpa here whatever cfg asks for: flash_attention_2 checks for its kernels at build time;
        # the implementation only matters to the activation arithmetic, which reads cfg's choice.
        model = Glm4vForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    numels, ndims, trainable = [], [], []
    for name, param in model.named_parameters():
        frozen = (freeze_vision and name.startswith(VISUAL)) or (freeze_language and name.startswith(LANGUAGE))
        numels.append(param.numel())
        ndims.append(param.dim())
        trainable.append(not frozen)
    largest = max(
        ((name or "<root>", sum(p.numel() for p in module.parameters(recurse=False)))
         for name, module in model.named_modules()),
        key=lambda item: item[1],
    )
    text, vision = config.text_config, config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    rope = getattr(text, "rope_parameters", None) or {}
    partial = rope.get("partial_rotary_factor", getattr(text, "partial_rotary_factor", 1.0))
    return ModelShape(
        numels=tuple(numels),
        ndims=tuple(ndims),
        trainable=tuple(trainable),
        counts=count_parameters(model),
        largest_module=largest,
        attn_implementation=cfg.attn_implementation,
        text_layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        heads=text.num_attention_heads,
        kv_heads=text.num_key_value_heads,
        head_dim=head_dim,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        rotary_dim=int(head_dim * partial),
        vision_depth=vision.depth,
        vision_hidden=vision.hidden_size,
        vision_heads=vision.num_heads,
        vision_mlp=vision.out_hidden_size,
        merger_dim=vision.out_hidden_size,
        merger_intermediate=vision.intermediate_size,
        patch_elements=vision.in_channels * vision.temporal_patch_size * vision.patch_size**2,
        spatial_merge=vision.spatial_merge_size,
        vision_trainable=not freeze_vision,
        language_trainable=not freeze_language,
    )
