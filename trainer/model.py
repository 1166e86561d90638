"""The one model definition: presets, build / load / compose a Glm4v, save HF checkpoints.

Every stage gets its model from `build_model(cfg, tokenizer)`:
- `cfg.init` set: load an HF Glm4v checkpoint directory (safetensors only);
- `cfg.vision_init` + `cfg.language_init` set: compose an AIMv2 vision tower and a GLM-4 decoder
  into a fresh Glm4v, as the paper starts pretraining (`compose_model`);
- otherwise: random init from the size fields (filled by a preset in recipes/model/).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import (
    Aimv2VisionConfig,
    Aimv2VisionModel,
    Glm4Config,
    Glm4ForCausalLM,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    PreTrainedTokenizerBase,
)

from data_pipelines.processor import save_hf_processor_files
from data_pipelines.tokenizer import SpecialTokens

from . import attention  # noqa: F401  registers attn_implementation="ponder_varlen" (packed varlen attention)

logger = logging.getLogger(__name__)

# recipes/ sits next to the packages in the (editable) source tree.
PRESET_DIR = Path(__file__).resolve().parents[1] / "recipes" / "model"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

VISUAL = "model.visual."
LANGUAGE = "model.language_model."
# The vision->language projector (2x2 downsample conv + patch merger). It has no counterpart in
# AIMv2 or GLM-4, so composing leaves it at random init.
MERGER = (VISUAL + "downsample.", VISUAL + "merger.")
# AIMv2 tensors with no Glm4v counterpart (the attention-pooling head of the contrastive model).
AIMV2_DROPPED = ("head.",)


@dataclass
class ModelConfig:
    """Where the weights come from and, for random init or compose, the Glm4v shape.

    Size defaults are the released GLM-4.1V-9B shape; presets in recipes/model/ set every field.
    `vision_out_hidden_size` is both the vision MLP width and the merger output (= text hidden);
    `vision_intermediate_size` is the merger's SwiGLU width (transformers' naming).
    """

    preset: str | None = None
    init: str | None = None
    vision_init: str | None = None
    language_init: str | None = None
    # "tiny" (the 2,048-token test tokenizer; with a model.init that carries a tokenizer, that one),
    # a tokenizer directory, or None: the tokenizer saved with model.init's checkpoint. Presets with
    # the real 151,552-token vocabulary set None, so one of the two must be given (checked here, at
    # config time).
    tokenizer: str | None = "tiny"
    attn_implementation: str = "sdpa"  # any transformers name, or "ponder_varlen" (trainer/attention.py)
    dtype: str = "float32"
    # vision tower (Glm4vVisionConfig)
    vision_depth: int = 24
    vision_hidden_size: int = 1536
    vision_num_heads: int = 12
    vision_out_hidden_size: int = 4096
    vision_intermediate_size: int = 13696
    vision_patch_size: int = 14
    vision_image_size: int = 336
    vision_spatial_merge_size: int = 2
    vision_temporal_patch_size: int = 2
    vision_rms_norm_eps: float = 1e-5
    # text decoder (Glm4vTextConfig)
    text_num_hidden_layers: int = 40
    text_hidden_size: int = 4096
    text_num_attention_heads: int = 32
    text_num_key_value_heads: int = 2
    text_intermediate_size: int = 13696
    vocab_size: int = 151552
    max_position_embeddings: int = 65536
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5
    mrope_section: list[int] = field(default_factory=lambda: [8, 12, 12])

    def __post_init__(self) -> None:
        errors = []
        if self.dtype not in DTYPES:
            errors.append(f"dtype {self.dtype!r} not in {sorted(DTYPES)}")
        if self.init and (self.vision_init or self.language_init):
            errors.append("set either init or vision_init/language_init, not both")
        if bool(self.vision_init) != bool(self.language_init):
            errors.append("compose needs both vision_init and language_init")
        if self.text_hidden_size % self.text_num_attention_heads:
            errors.append("text_hidden_size must be a multiple of text_num_attention_heads")
        elif self.text_num_attention_heads % self.text_num_key_value_heads:
            errors.append("text_num_attention_heads must be a multiple of text_num_key_value_heads")
        else:
            rotary_pairs = int(self.text_head_dim * self.partial_rotary_factor) // 2
            if sum(self.mrope_section) != rotary_pairs:
                errors.append(
                    f"mrope_section {list(self.mrope_section)} must sum to head_dim * "
                    f"partial_rotary_factor / 2 = {rotary_pairs}"
                )
        if self.vision_out_hidden_size != self.text_hidden_size:
            errors.append("vision_out_hidden_size must equal text_hidden_size (merger feeds the decoder)")
        if self.vision_hidden_size % (4 * self.vision_num_heads):
            errors.append("vision head_dim must be a multiple of 4 (2D RoPE splits it over h and w)")
        if self.vision_image_size % self.vision_patch_size:
            errors.append("vision_image_size must be a multiple of vision_patch_size")
        if errors:
            raise ValueError("invalid ModelConfig: " + "; ".join(errors))

    def require_tokenizer(self) -> None:
        """For the stages that build their tokenizer from this config (pretrain, SFT): a preset with
        the real vocabulary sets none, so one must be given. RL, grading and evaluation read the
        tokenizer saved with model.init, which they require anyway."""
        if self.tokenizer is None and not self.init:
            raise ValueError(
                f"model.tokenizer is required: this model has a {self.vocab_size:,}-token vocabulary "
                "(presets glm41v_1b, glm41v_9b) that the tiny tokenizer does not fit; set "
                "model.tokenizer=<the released GLM-4.1V tokenizer directory> or model.init=<a checkpoint "
                "that carries one> (a run dir, checkpoints/step_N or an HF dir)")

    @property
    def text_head_dim(self) -> int:
        return self.text_hidden_size // self.text_num_attention_heads


def load_preset(name: str, preset_dir: Path = PRESET_DIR) -> ModelConfig:
    """Read recipes/model/<name>.yaml, whose keys are ModelConfig fields."""
    path = Path(preset_dir) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(preset_dir).glob("*.yaml"))
        raise FileNotFoundError(f"no model preset {name!r} in {preset_dir} (known: {known})")
    values = yaml.safe_load(path.read_text()) or {}
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown ModelConfig fields {unknown}")
    return ModelConfig(**{"preset": name, **values})


def glm4v_config(cfg: ModelConfig, special: SpecialTokens) -> Glm4vConfig:
    """The transformers config for cfg's shape, carrying the tokenizer's special token ids."""
    return Glm4vConfig(
        vision_config=dict(
            depth=cfg.vision_depth,
            hidden_size=cfg.vision_hidden_size,
            num_heads=cfg.vision_num_heads,
            out_hidden_size=cfg.vision_out_hidden_size,
            intermediate_size=cfg.vision_intermediate_size,
            patch_size=cfg.vision_patch_size,
            image_size=cfg.vision_image_size,
            spatial_merge_size=cfg.vision_spatial_merge_size,
            temporal_patch_size=cfg.vision_temporal_patch_size,
            rms_norm_eps=cfg.vision_rms_norm_eps,
        ),
        text_config=dict(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.text_hidden_size,
            intermediate_size=cfg.text_intermediate_size,
            num_hidden_layers=cfg.text_num_hidden_layers,
            num_attention_heads=cfg.text_num_attention_heads,
            num_key_value_heads=cfg.text_num_key_value_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            rms_norm_eps=cfg.rms_norm_eps,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": cfg.rope_theta,
                "partial_rotary_factor": cfg.partial_rotary_factor,
                "mrope_section": list(cfg.mrope_section),
            },
            pad_token_id=special.eos,
        ),
        image_token_id=special.image,
        video_token_id=special.video,
        image_start_token_id=special.image_start,
        image_end_token_id=special.image_end,
        video_start_token_id=special.video_start,
        video_end_token_id=special.video_end,
    )


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase,
                zero3_config: dict | None = None) -> Glm4vForConditionalGeneration:
    """The model a stage trains: loaded (cfg.init; straight into ZeRO-3 shards given
    `zero3_config`), composed (cfg.vision_init) or random."""
    if cfg.init:
        model = load_model(cfg.init, cfg.dtype, cfg.attn_implementation, zero3_config)
    elif cfg.vision_init:
        model = compose_model(cfg.vision_init, cfg.language_init, cfg, tokenizer)
    else:
        model = _random_model(cfg, SpecialTokens.from_tokenizer(tokenizer), cfg.dtype)
    check_tokenizer_fits(model.config, tokenizer)
    return model


TEXT_ONLY = "Glm4ForCausalLM"  # a decoder-only GLM-4 checkpoint (trained on text, served by vLLM on CPU)


def load_model(
    path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa", zero3_config: dict | None = None
) -> Glm4vForConditionalGeneration:
    """An HF Glm4v checkpoint directory (safetensors weights only, no remote code), or a ponder
    checkpoint `.../checkpoints/step_N`, whose `hf/` is used (weights only). A text-only GLM-4
    checkpoint (`Glm4ForCausalLM`) loads as that class: pretraining and SFT then train the decoder
    alone on text (trainer/forward.py `TextForward`), with no vision tower to run or partition.
    With a DeepSpeed ZeRO-3 config the parameters are partitioned as they load (`partitioned_loading`)."""
    path = Path(path)
    if (path / "hf" / "config.json").exists():
        path = path / "hf"
    if not path.is_dir():
        raise FileNotFoundError(f"model checkpoint directory not found: {path}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} not in {sorted(DTYPES)}")
    config = path / "config.json"
    text_only = config.exists() and (json.loads(config.read_text()).get("architectures") or [""])[0] == TEXT_ONLY
    with partitioned_loading(zero3_config):
        return (Glm4ForCausalLM if text_only else Glm4vForConditionalGeneration).from_pretrained(
            str(path), dtype=DTYPES[dtype], attn_implementation=attn_implementation, use_safetensors=True
        )


@contextmanager
def partitioned_loading(zero3_config: dict | None) -> Iterator[None]:
    """`from_pretrained` inside builds the model under `deepspeed.zero.Init` and copies each loaded
    tensor into its shard (transformers' DeepSpeed integration), so no rank ever holds the whole
    model: on a node of 8 ranks, one model's worth of parameters instead of eight. None: a no-op."""
    if zero3_config is None:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    active = HfDeepSpeedConfig(zero3_config)  # transformers holds it weakly: keep it alive while loading
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del active


def check_tokenizer_fits(config: Glm4vConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise if the model's special token ids or vocabulary disagree with the tokenizer."""
    if not hasattr(config, "vision_config"):  # a text-only GLM-4 decoder: only the vocabulary matters
        if len(tokenizer) > config.vocab_size:
            raise ValueError(f"model and tokenizer disagree: tokenizer has {len(tokenizer)} tokens > "
                             f"vocab_size {config.vocab_size}")
        return
    special = SpecialTokens.from_tokenizer(tokenizer)
    expected = {
        "image_token_id": special.image, "video_token_id": special.video,
        "image_start_token_id": special.image_start, "image_end_token_id": special.image_end,
        "video_start_token_id": special.video_start, "video_end_token_id": special.video_end,
    }
    errors = [f"{k}={getattr(config, k)} but tokenizer has {v}" for k, v in expected.items()
              if getattr(config, k) != v]
    if len(tokenizer) > config.text_config.vocab_size:
        errors.append(f"tokenizer has {len(tokenizer)} tokens > vocab_size {config.text_config.vocab_size}")
    if errors:
        raise ValueError("model and tokenizer disagree: " + "; ".join(errors))


def _random_model(cfg: ModelConfig, special: SpecialTokens, dtype: str) -> Glm4vForConditionalGeneration:
    model = Glm4vForConditionalGeneration._from_config(
        glm4v_config(cfg, special), dtype=DTYPES[dtype], attn_implementation=cfg.attn_implementation
    )
    # GLM-4.1V stops at <|endoftext|>, or when it would start the next user/observation turn.
    model.generation_config.eos_token_id = list(special.turn_ends)
    model.generation_config.pad_token_id = special.eos
    return model


# ----------------------------------------------------------------------------------------------
# Compose: AIMv2 vision tower + GLM-4 decoder -> Glm4v


@dataclass
class WeightMap:
    """Glm4v state-dict entries built from the two source models."""

    tensors: dict[str, torch.Tensor]
    sources: dict[str, tuple[str, ...]]  # Glm4v key -> source keys ("vision/..", "language/..")
    dropped: list[str]  # source keys with no Glm4v counterpart


_AIM_BLOCK = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_AIM_BLOCK_RENAME = {
    "rms_norm1.weight": "norm1.weight",
    "rms_norm2.weight": "norm2.weight",
    "attention.out_proj.weight": "attn.proj.weight",
    "ffn.gate_proj.weight": "mlp.gate_proj.weight",
    "ffn.up_proj.weight": "mlp.up_proj.weight",
    "ffn.down_proj.weight": "mlp.down_proj.weight",
}
_AIM_QKV = ("attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight")
_AIM_TOP_RENAME = {
    "embeddings.patch_embed.bias": "patch_embed.proj.bias",
    # AIMv2 normalizes patch embeddings before adding positions, as Glm4v's post_conv_layernorm.
    "embeddings.rms_norm.weight": "post_conv_layernorm.weight",
    # Both tables are row-major (h * W + w) over image_size / patch_size squared.
    "embeddings.position_embedding.weight": "embeddings.position_embedding.weight",
    "rms_norm.weight": "post_layernorm.weight",
}


def inflate_patch_embed(weight_2d: torch.Tensor, temporal_patch_size: int) -> torch.Tensor:
    """Conv2d kernel (D, C, p, p) -> Conv3d kernel (D, C, T, p, p) that gives the 2D result on a
    still image, which the processor feeds as T identical frames."""
    return weight_2d.unsqueeze(2).repeat(1, 1, temporal_patch_size, 1, 1) / temporal_patch_size


def map_weights(vision: Aimv2VisionModel, language: Glm4ForCausalLM, temporal_patch_size: int) -> WeightMap:
    """Map every AIMv2 / GLM-4 tensor onto its Glm4v key; raise on any tensor without a rule."""
    tensors: dict[str, torch.Tensor] = {}
    sources: dict[str, tuple[str, ...]] = {}
    dropped: list[str] = []

    def put(target: str, tensor: torch.Tensor, *keys: str) -> None:
        tensors[target] = tensor
        sources[target] = keys

    vision_sd = vision.state_dict()
    qkv_parts: dict[int, dict[str, torch.Tensor]] = {}
    unmapped = []
    for key, tensor in vision_sd.items():
        block = _AIM_BLOCK.fullmatch(key)
        if key.startswith(AIMV2_DROPPED):
            dropped.append("vision/" + key)
        elif key == "embeddings.patch_embed.weight":
            inflated = inflate_patch_embed(tensor, temporal_patch_size)
            put(VISUAL + "patch_embed.proj.weight", inflated, "vision/" + key)
        elif key in _AIM_TOP_RENAME:
            put(VISUAL + _AIM_TOP_RENAME[key], tensor, "vision/" + key)
        elif block and block[2] in _AIM_BLOCK_RENAME:
            put(f"{VISUAL}blocks.{block[1]}.{_AIM_BLOCK_RENAME[block[2]]}", tensor, "vision/" + key)
        elif block and block[2] in _AIM_QKV:
            qkv_parts.setdefault(int(block[1]), {})[block[2]] = tensor
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"AIMv2 tensors without a Glm4v counterpart: {unmapped}")
    for i, parts in sorted(qkv_parts.items()):
        # Glm4v's fused qkv splits its output rows as [q; k; v].
        put(
            f"{VISUAL}blocks.{i}.attn.qkv.weight",
            torch.cat([parts[name] for name in _AIM_QKV]),
            *(f"vision/encoder.layers.{i}.{name}" for name in _AIM_QKV),
        )

    # Glm4v's text decoder has GLM-4's modules under the same names; only RoPE differs (3D M-RoPE,
    # which equals GLM-4's 1D RoPE when the three position rows are equal, as on text).
    for key, tensor in language.state_dict().items():
        target = "lm_head.weight" if key == "lm_head.weight" else LANGUAGE + key.removeprefix("model.")
        put(target, tensor, "language/" + key)
    return WeightMap(tensors, sources, dropped)


def check_compose_sources(vision: Aimv2VisionConfig, language: Glm4Config, cfg: ModelConfig) -> None:
    """Raise ValueError listing every way the source models do not fit cfg's Glm4v shape."""
    rope = language.rope_parameters or {}
    checks = {
        "vision hidden_size": (vision.hidden_size, cfg.vision_hidden_size),
        "vision depth": (vision.num_hidden_layers, cfg.vision_depth),
        "vision heads": (vision.num_attention_heads, cfg.vision_num_heads),
        # Glm4v's vision MLP width is out_hidden_size.
        "vision MLP width": (vision.intermediate_size, cfg.vision_out_hidden_size),
        "vision patch_size": (vision.patch_size, cfg.vision_patch_size),
        "vision image_size": (vision.image_size, cfg.vision_image_size),
        "vision channels": (vision.num_channels, 3),
        "vision act": (vision.hidden_act, "silu"),
        "vision rms_norm_eps": (vision.rms_norm_eps, cfg.vision_rms_norm_eps),
        "vision qkv_bias (Glm4v has none)": (vision.qkv_bias, False),
        "vision mlp_bias (Glm4v has none)": (vision.mlp_bias, False),
        "vision is_native (no learned position table)": (vision.is_native, False),
        "text hidden_size": (language.hidden_size, cfg.text_hidden_size),
        "text layers": (language.num_hidden_layers, cfg.text_num_hidden_layers),
        "text heads": (language.num_attention_heads, cfg.text_num_attention_heads),
        "text kv heads": (language.num_key_value_heads, cfg.text_num_key_value_heads),
        "text head_dim": (language.head_dim, cfg.text_head_dim),
        "text intermediate_size": (language.intermediate_size, cfg.text_intermediate_size),
        "text vocab_size": (language.vocab_size, cfg.vocab_size),
        "text act": (language.hidden_act, "silu"),
        "text rms_norm_eps": (language.rms_norm_eps, cfg.rms_norm_eps),
        "text attention_bias (Glm4v has q/k/v bias)": (language.attention_bias, True),
        "text tie_word_embeddings": (language.tie_word_embeddings, False),
        "rope_type": (rope.get("rope_type"), "default"),
        "rope_theta": (rope.get("rope_theta"), cfg.rope_theta),
        "partial_rotary_factor": (rope.get("partial_rotary_factor", 1.0), cfg.partial_rotary_factor),
    }
    errors = [f"{name}: source {got!r} != {want!r}" for name, (got, want) in checks.items() if got != want]
    if errors:
        raise ValueError("cannot compose into this Glm4v shape: " + "; ".join(errors))


def compose_model(
    vision: str | Path | Aimv2VisionModel,
    language: str | Path | Glm4ForCausalLM,
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
) -> Glm4vForConditionalGeneration:
    """A Glm4v whose vision tower comes from AIMv2 and whose decoder comes from GLM-4.

    Patch merger and 2x2 downsample have no source and stay at random init. Build it outside
    `deepspeed.zero.Init` (it copies whole tensors), or compose once and save it as `init`.
    """
    if not isinstance(vision, Aimv2VisionModel):
        vision = Aimv2VisionModel.from_pretrained(str(vision), dtype=torch.float32, use_safetensors=True)
    if not isinstance(language, Glm4ForCausalLM):
        language = Glm4ForCausalLM.from_pretrained(str(language), dtype=torch.float32, use_safetensors=True)
    check_compose_sources(vision.config, language.config, cfg)
    weights = map_weights(vision, language, cfg.vision_temporal_patch_size)

    model = _random_model(cfg, SpecialTokens.from_tokenizer(tokenizer), "float32")
    missing, unexpected = model.load_state_dict(weights.tensors, strict=False)
    surprising = [k for k in missing if not k.startswith(MERGER)]
    if unexpected or surprising:
        raise RuntimeError(f"compose mapping incomplete: unexpected {unexpected}, missing {surprising}")
    logger.info(
        "composed Glm4v: %d tensors copied, %d left at init (%s), dropped from sources: %s",
        len(weights.tensors), len(missing), ", ".join(MERGER), weights.dropped,
    )
    return model.to(DTYPES[cfg.dtype])


# ----------------------------------------------------------------------------------------------
# Save and count


def save_hf_checkpoint(
    model: Glm4vForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    processor_files_fn: Callable[[str | Path, PreTrainedTokenizerBase], None] = save_hf_processor_files,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A directory that `from_pretrained`, AutoProcessor and vLLM load: config, generation
    config, safetensors weights, tokenizer with chat template, and processor files.

    `state_dict` lets a ZeRO-3 engine pass the weights it gathered on rank 0.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(str(out_dir))
    processor_files_fn(out_dir, tokenizer)
    return out_dir


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts by part: vision tower, merger (downsample + patch merger), language, total."""
    counts = {"vision": 0, "merger": 0, "language": 0}
    for name, param in model.named_parameters():
        # Under ZeRO-3 a parameter is partitioned and numel() is 0; ds_numel is its full size.
        numel = getattr(param, "ds_numel", param.numel())
        if name.startswith(MERGER):
            counts["merger"] += numel
        elif name.startswith(VISUAL):
            counts["vision"] += numel
        else:
            counts["language"] += numel
    counts["total"] = sum(counts.values())
    return counts
