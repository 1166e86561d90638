"""The policy RL starts from: an HF checkpoint directory (usually the SFT stage's), either a Glm4v
or a text-only Glm4 (what vLLM serves on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import Glm4Config, Glm4ForCausalLM, PreTrainedModel

from data_pipelines.tokenizer import SpecialTokens
from trainer.checkpoint import resolve_hf_dir
from trainer.model import DTYPES, ModelConfig, load_model, partitioned_loading

TEXT_ONLY = "Glm4ForCausalLM"


def architecture(hf_dir: Path) -> str:
    architectures = json.loads((hf_dir / "config.json").read_text()).get("architectures") or []
    return architectures[0] if architectures else ""


def load_policy(path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa",
                zero3_config: dict | None = None) -> PreTrainedModel:
    """The policy at `path` (any `model.init` form); straight into ZeRO-3 shards given `zero3_config`."""
    hf_dir = resolve_hf_dir(path)
    if architecture(hf_dir) == TEXT_ONLY:
        with partitioned_loading(zero3_config):
            return Glm4ForCausalLM.from_pretrained(str(hf_dir), dtype=DTYPES[dtype],
                                                   attn_implementation=attn_implementation, use_safetensors=True)
    return load_model(hf_dir, dtype, attn_implementation, zero3_config)


def text_policy(cfg: ModelConfig, special: SpecialTokens) -> Glm4ForCausalLM:
    """A randomly initialised text-only Glm4 with the decoder shape of `cfg` (a preset): the policy
    vLLM serves on CPU, for tests and benchmarks."""
    config = Glm4Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.text_hidden_size, intermediate_size=cfg.text_intermediate_size,
        num_hidden_layers=cfg.text_num_hidden_layers, num_attention_heads=cfg.text_num_attention_heads,
        num_key_value_heads=cfg.text_num_key_value_heads, head_dim=cfg.text_head_dim,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                         "partial_rotary_factor": cfg.partial_rotary_factor},
        attention_bias=True, tie_word_embeddings=False, pad_token_id=special.eos,
        eos_token_id=[special.eos, special.user, special.observation],
    )
    model = Glm4ForCausalLM._from_config(config, dtype=DTYPES[cfg.dtype], attn_implementation=cfg.attn_implementation)
    model.generation_config.eos_token_id = [special.eos, special.user, special.observation]
    model.generation_config.pad_token_id = special.eos
    return model
