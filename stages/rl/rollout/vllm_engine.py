"""Rollouts with vLLM, colocated with training: one engine per rank, in the trainer's process.

Weight sync: the trainer writes the gathered weights as safetensors into a node-local directory
and every engine reloads them in place (`collective_rpc("reload_weights")`, which runs the
model's `load_weights` layer by layer and resets the encoder and multimodal caches); the prefix
cache is reset too, since cached KV belongs to the old weights. Prompts go in as token ids with
one `<|image|>` per image and the images as `multi_modal_data`: vLLM's Glm4v processor expands
them (GPU; vLLM on CPU serves the text-only Glm4 models).

Vision tokens (`SpecialTokens.vision_ids`) are never sampled: a -inf `logit_bias` on each (set on
SamplingParams directly; only `from_optional` clamps biases to ±100). vLLM's default
`logprobs_mode="raw_logprobs"` computes the returned log-probs before logits processors, so they
stay the raw model distribution's, as the HF engine's and the trainer's (see hf_engine.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from data_pipelines.prompts import open_image
from data_pipelines.tokenizer import SpecialTokens

from .base import GenerationRequest, RawCompletion, RolloutConfig, RolloutEngine, SamplingSpec


class VLLMEngine(RolloutEngine):
    loads_from_files = True

    def __init__(self, model_dir: str | Path, cfg: RolloutConfig, special: SpecialTokens, dtype: str = "auto",
                 seed: int = 0):
        from vllm import LLM  # heavy import; only where this engine is used

        self.stop_ids = [special.eos, special.user, special.observation]
        self.suppress = {token: float("-inf") for token in special.vision_ids}
        # vLLM on CPU fails seeded sampling when a prefill is split across steps (it rewinds the
        # request's generator offset, which CPU generators lack): schedule whole prefills there.
        whole_prefills = {} if torch.cuda.is_available() else {
            "enable_chunked_prefill": False, "max_num_batched_tokens": max(cfg.max_model_len, 8192)}
        self.llm = LLM(
            model=str(model_dir), dtype=dtype, seed=seed, max_model_len=cfg.max_model_len,
            gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
            enable_prefix_caching=cfg.enable_prefix_caching, **whole_prefills,
        )

    def generate(self, requests: list[GenerationRequest], spec: SamplingSpec) -> list[list[RawCompletion]]:
        from vllm import SamplingParams

        prompts, params = [], []
        for req in requests:
            prompt = {"prompt_token_ids": req.prompt.raw_ids + req.prefix}
            if req.prompt.image_sources:
                prompt["multi_modal_data"] = {"image": [_pil(s) for s in req.prompt.image_sources]}
                self.images_seen += len(req.prompt.image_sources) * req.n
            prompts.append(prompt)
            params.append(SamplingParams(
                n=req.n, temperature=spec.temperature, top_p=spec.top_p, top_k=0, max_tokens=spec.max_tokens,
                logprobs=0, seed=req.seed, stop_token_ids=self.stop_ids, detokenize=False,
                logit_bias=dict(self.suppress),
            ))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for out in outputs:
            group = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                logprobs = [entry[token].logprob for token, entry in zip(c.token_ids, c.logprobs)]
                reason = "length" if c.finish_reason == "length" else "stop"
                group.append(RawCompletion(list(c.token_ids), logprobs, reason))
            results.append(group)
        return results

    def load_weights(self, state_dict=None, path=None) -> None:
        if path is None:
            raise ValueError("the vLLM engine loads weights from a directory of safetensors")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        self.llm.reset_prefix_cache()
        self.llm.reset_mm_cache()

    def close(self) -> None:
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()
        del self.llm
        gc.collect()


def _pil(source) -> Image.Image:
    return source if isinstance(source, Image.Image) else open_image(source)
