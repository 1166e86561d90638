"""Rollout engines behind one interface (`base.RolloutEngine`): vLLM (the real engine) and
transformers `generate` (where vLLM cannot load the model)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch

from data_pipelines.tokenizer import SpecialTokens
from trainer.distributed import DistInfo
from trainer.model import TEXT_ONLY, ModelConfig

from .base import Completion, RolloutConfig, RolloutEngine, rollout

__all__ = ["Completion", "RolloutConfig", "RolloutEngine", "build_rollout_engine", "rollout", "vllm_unavailable"]

log = logging.getLogger(__name__)


def vllm_unavailable(hf_dir: str | Path) -> str | None:
    """Why vLLM cannot serve the checkpoint on this machine, or None. vLLM's CPU build serves the
    text-only GLM-4 only; its Glm4v needs CUDA (on CPU the engine stops in its model inspection)."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    architectures = json.loads((Path(hf_dir) / "config.json").read_text()).get("architectures") or [""]
    if not torch.cuda.is_available() and architectures[0] != TEXT_ONLY:  # load_model's rule
        return f"vLLM's CPU build cannot serve {architectures[0] or 'this model'} (it needs CUDA)"
    return None


def build_rollout_engine(cfg: RolloutConfig, hf_dir: str | Path, special: SpecialTokens, model: ModelConfig,
                         info: DistInfo, seed: int) -> RolloutEngine:
    """This rank's engine, holding its own copy of the policy from `hf_dir`: vLLM where it can
    serve the model, transformers `generate` otherwise (said once, on rank 0)."""
    reason = vllm_unavailable(hf_dir) if cfg.engine == "vllm" else None
    if reason and info.is_main:
        unused = [name for name, on in [("tensor_parallel_size", cfg.tensor_parallel_size > 1),
                                        ("sleep_between_steps", cfg.sleep_between_steps)] if on]
        log.warning("rollout.engine=vllm: %s; generating with the HF engine instead%s", reason,
                    f" (rollout.{' and rollout.'.join(unused)} apply to vLLM only)" if unused else "")
    if cfg.engine == "vllm" and not reason:
        from .vllm_engine import VLLMEngine

        return VLLMEngine(hf_dir, cfg, special, dtype=model.dtype, seed=seed)  # + its engine index
    from ..policy import load_policy
    from .hf_engine import HFEngine

    policy = load_policy(hf_dir, model.dtype, model.attn_implementation).to(info.device)
    return HFEngine(policy, special, cfg.hf_batch_size)
