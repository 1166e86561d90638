"""The policy RL starts from: an HF checkpoint directory (usually the SFT stage's), either a Glm4v
or a text-only Glm4 (what vLLM serves on CPU)."""

from __future__ import annotations

from pathlib import Path

from transformers import Glm4Config, Glm4ForCausalLM, PreTrainedModel

from data_pipelines.tokenizer import SpecialTokens
from trainer.checkpoint import resolve_hf_dir
from trainer.model import DTYPES, ModelConfig, load_model


def load_policy(path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa",
                zero3_config: dict | None = None) -> PreTrainedModel:
    """The policy at `path` (any `model.init` form), Glm4v or text-only Glm4 (trainer.model.load_model);
    straight into ZeRO-3 shards given `zero3_config`."""
    return load_model(resolve_hf_dir(path), dtype, attn_implementation, zero3_config)


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
        eos_token_id=list(special.turn_ends),
    )
    model = Glm4ForCausalLM._from_config(config, dtype=DTYPES[cfg.dtype], attn_implementation=cfg.attn_implementation)
    model.generation_config.eos_token_id = list(special.turn_ends)
    model.generation_config.pad_token_id = special.eos
    return model
