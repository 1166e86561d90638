"""Rollout engines behind one interface (`base.RolloutEngine`): vLLM (the real engine) and
transformers `generate` (where vLLM cannot load the model)."""

from __future__ import annotations

from pathlib import Path

from data_pipelines.tokenizer import SpecialTokens
from trainer.distributed import DistInfo
from trainer.model import ModelConfig

from .base import Completion, RolloutConfig, RolloutEngine, rollout

__all__ = ["Completion", "RolloutConfig", "RolloutEngine", "build_rollout_engine", "rollout"]


def build_rollout_engine(cfg: RolloutConfig, hf_dir: str | Path, special: SpecialTokens, model: ModelConfig,
                         info: DistInfo, seed: int) -> RolloutEngine:
    """This rank's engine, holding its own copy of the policy from `hf_dir`."""
    if cfg.engine == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(hf_dir, cfg, special, dtype=model.dtype, seed=seed)  # + its engine index
    from ..policy import load_policy
    from .hf_engine import HFEngine

    policy = load_policy(hf_dir, model.dtype, model.attn_implementation).to(info.device)
    return HFEngine(policy, special, cfg.hf_batch_size)
