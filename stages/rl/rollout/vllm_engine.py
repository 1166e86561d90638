"""Rollouts with vLLM, colocated with training, in the trainer's processes.

Placement: inside a torchrun group the engine joins it through vLLM's `external_launcher`
executor (as TRL's colocate mode and verl do): no engine process of its own, the device is the
rank's own (LOCAL_RANK), and `rollout.tensor_parallel_size` = t makes each t consecutive ranks of a
node one engine, sharded over their devices. The ranks of such a group generate together: each
call all-gathers the group's requests, every rank runs them all (vLLM's scheduling is
deterministic, so they agree) and keeps its own. With t = 1 each rank's engine serves only that
rank's share. Outside a process group (tests, scripts) the engine uses vLLM's own uniprocess
executor.

Memory hand-off (`rollout.sleep_between_steps`, on by default with CUDA): after a step's rollouts
the engine sleeps at level 2 (weights and KV cache freed), so the update has the whole card; the
weight sync wakes the weight memory, reloads it, and only then re-allocates the KV cache.

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

import os
from pathlib import Path

import torch
import torch.distributed as dist
from PIL import Image
from transformers import AutoConfig, GenerationConfig

from data_pipelines.prompts import open_image
from data_pipelines.tokenizer import SpecialTokens

from .base import GenerationRequest, RawCompletion, RolloutConfig, RolloutEngine, SamplingSpec


def declared_eos(model_dir: str | Path) -> int | list[int] | None:
    """The eos ids the checkpoint declares, as transformers' `model.generation_config` (HF engine,
    SFT evaluator) holds them: generation_config.json, else derived from config.json."""
    if (Path(model_dir) / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    return GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(model_dir))).eos_token_id


class VLLMEngine(RolloutEngine):
    name = "vllm"
    loads_from_files = True
    takes_videos = False  # vLLM's Glm4v video input (frames + sampling metadata) is not wired yet

    def __init__(self, model_dir: str | Path, cfg: RolloutConfig, special: SpecialTokens, dtype: str = "auto",
                 seed: int = 0):
        from vllm import LLM  # heavy import; only where this engine is used

        self.stop_ids = special.stop_ids(declared_eos(model_dir))
        self.suppress = {token: float("-inf") for token in special.vision_ids}
        tp = cfg.tensor_parallel_size
        self.joined = joined = dist.is_available() and dist.is_initialized()
        self.group = tensor_parallel_group(tp) if joined else None
        if not joined and tp > 1:
            raise ValueError("rollout.tensor_parallel_size > 1 needs the engine's ranks: launch with torchrun")
        self.sleeps = torch.cuda.is_available() if cfg.sleep_between_steps is None else cfg.sleep_between_steps
        self.asleep = False
        # vLLM on CPU fails seeded sampling when a prefill is split across steps (it rewinds the
        # request's generator offset, which CPU generators lack): schedule whole prefills there.
        whole_prefills = {} if torch.cuda.is_available() else {
            "enable_chunked_prefill": False, "max_num_batched_tokens": max(cfg.max_model_len, 8192)}
        placement = {"distributed_executor_backend": "external_launcher", "tensor_parallel_size": tp} if joined else {}
        engine_index = dist.get_rank() // tp if joined else 0
        self.llm = LLM(
            model=str(model_dir), dtype=dtype, seed=seed + engine_index, max_model_len=cfg.max_model_len,
            gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
            enable_prefix_caching=cfg.enable_prefix_caching, enable_sleep_mode=self.sleeps,
            **placement, **whole_prefills,
        )

    def generate(self, requests: list[GenerationRequest], spec: SamplingSpec) -> list[list[RawCompletion]]:
        """Collective over the engine's tensor-parallel group (when it spans several ranks)."""
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep (weights freed): load_weights before generating")
        self.images_seen += sum(len(r.prompt.image_sources) * r.n for r in requests)  # this rank's own
        if self.group is None:
            return self._generate(requests, spec)
        shares: list = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(shares, requests, group=self.group)
        results = self._generate([r for share in shares for r in share], spec)
        start = sum(len(share) for share in shares[: dist.get_rank(self.group)])
        return results[start : start + len(requests)]

    def _generate(self, requests: list[GenerationRequest], spec: SamplingSpec) -> list[list[RawCompletion]]:
        from vllm import SamplingParams

        if not requests:
            return []
        prompts, params = [], []
        for req in requests:
            prompt = {"prompt_token_ids": req.prompt.raw_ids + req.prefix}
            if req.prompt.image_sources:
                prompt["multi_modal_data"] = {"image": [_pil(s) for s in req.prompt.image_sources]}
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
        if self.asleep:  # weight memory first, the KV cache only once the old weights are gone
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()
        self.llm.reset_mm_cache()

    def sleep(self) -> None:
        if self.sleeps:
            self.llm.sleep(level=2)  # level 2: the weights are not kept; the next sync reloads them
            self.asleep = True

    def close(self) -> None:
        # Joined to the trainer's group, the engine lives in this process and there is no engine
        # process to stop; freeing it now would run vLLM's distributed cleanup, which destroys the
        # trainer's process group as well. It goes with the process.
        if self.joined:
            return
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()
        del self.llm
        gc.collect()


def tensor_parallel_group(size: int) -> dist.ProcessGroup | None:
    """This rank's group of `size` consecutive ranks (vLLM's tensor-parallel grouping), or None
    for one engine per rank. Collective: every rank calls it."""
    world = dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if local_world % size or world % size:
        raise ValueError(f"rollout.tensor_parallel_size={size} must divide the ranks per node ({local_world})")
    if size == 1:
        return None
    group, _ = dist.new_subgroups_by_enumeration([list(range(i, i + size)) for i in range(0, world, size)])
    return group


def _pil(source) -> Image.Image:
    return source if isinstance(source, Image.Image) else open_image(source)
