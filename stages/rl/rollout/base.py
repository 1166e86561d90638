"""The rollout engine interface and what every engine shares: sampling settings, completions,
and forced answering.

An engine turns prompts into sampled responses with the engine's own per-token log-probs and a
finish reason. Forced answering is engine-independent: a response that hit the length cap while
still thinking gets `</think><answer>` appended (not the policy's tokens: masked from the loss)
and a short continuation is sampled from there.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from data_pipelines.prompts import EncodedPrompt
from data_pipelines.tokenizer import SpecialTokens

ENGINES = ("hf", "vllm")


@dataclass
class RolloutConfig:
    engine: str = "vllm"  # vllm (colocated, one engine per rank) or hf (transformers generate)
    group_size: int = 8  # G responses per prompt
    temperature: float = 1.0
    top_p: float = 1.0  # the paper: 0.9 produced garbled text
    max_new_tokens: int = 8192
    forced_answer: bool = True
    forced_answer_tokens: int = 64
    seed: int = 0
    # vLLM
    tensor_parallel_size: int = 1  # ranks one engine spans (within a node); 1: one engine per rank
    sleep_between_steps: Optional[bool] = None  # free the engine's weights + KV cache during updates; None: on with CUDA
    gpu_memory_utilization: float = 0.5  # on CPU it sizes the KV cache in RAM: use ~0.2
    max_model_len: int = 32768
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    sync_dir: str = "/dev/shm"  # node-local directory for the weights handed to vLLM
    # transformers generate
    hf_batch_size: int = 64  # sequences per generate call

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"rollout.engine must be one of {ENGINES}, got {self.engine!r}")
        if self.group_size < 2:
            raise ValueError("rollout.group_size must be >= 2 (group advantages need a group)")
        if self.tensor_parallel_size < 1:
            raise ValueError("rollout.tensor_parallel_size must be >= 1")
        if self.engine != "vllm" and (self.tensor_parallel_size > 1 or self.sleep_between_steps):
            raise ValueError("rollout.tensor_parallel_size and rollout.sleep_between_steps apply to rollout.engine=vllm")
        if self.max_new_tokens < 1 or self.forced_answer_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("rollout: need max_new_tokens, forced_answer_tokens >= 1, temperature >= 0, top_p in (0, 1]")


@dataclass(frozen=True)
class SamplingSpec:
    temperature: float
    top_p: float
    max_tokens: int


@dataclass
class GenerationRequest:
    prompt: EncodedPrompt
    n: int
    seed: int
    prefix: list[int] = field(default_factory=list)  # response tokens already fixed (forced answering)


@dataclass
class RawCompletion:
    token_ids: list[int]
    logprobs: list[float]  # the engine's log-prob of each sampled token (raw model distribution)
    finish_reason: str  # "stop" (an end token, included in token_ids) or "length"


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # NaN on inserted tokens
    train_mask: list[bool]  # False on inserted tokens
    finish_reason: str  # of the final generation: "stop" or "length"
    forced: bool = False  # `</think><answer>` was inserted at the cap

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    def __len__(self) -> int:
        return len(self.token_ids)


class RolloutEngine(ABC):
    """Generates from its own copy of the policy; `load_weights` replaces that copy's weights."""

    name = ""  # the rollout.engine value that builds it
    #: True: weights arrive as a directory of safetensors (vLLM); False: as a state dict.
    loads_from_files = False
    #: Images handed to the model with the prompts so far (one per image per sequence): metrics.
    images_seen = 0
    #: Whether prompts may hold videos (others are skipped as `video_unsupported` before rollout).
    takes_videos = True

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], spec: SamplingSpec) -> list[list[RawCompletion]]:
        """`requests[i].n` completions of each request, continuing after prompt + prefix."""

    @abstractmethod
    def load_weights(self, state_dict: dict[str, torch.Tensor] | None = None, path: str | Path | None = None) -> None:
        """New policy weights (HF parameter names); clears prefix / multimodal caches."""

    def sleep(self) -> None:
        """Free what generation holds (weights, KV cache) until the next `load_weights`: called
        after a step's rollouts, before the update. A no-op for engines that cannot."""

    def close(self) -> None:
        """Release the engine's resources."""


def completion_text(token_ids: list[int], tokenizer, special: SpecialTokens) -> str:
    """The response as the reward system reads it: special tokens kept, the final stop token dropped."""
    if token_ids and token_ids[-1] in special.turn_ends:  # a declared eos such as `</answer>` stays
        token_ids = token_ids[:-1]
    return tokenizer.decode(token_ids, skip_special_tokens=False)


def request_seed(base: int, step: int, index: int) -> int:
    """A per-(step, prompt) seed, so rollouts replay exactly after a resume."""
    return (base * 1_000_003 + step * 10_007 + index) % (2**31 - 1)


def _inside_think(tokens: list[int], special: SpecialTokens) -> bool:
    """Still thinking: no `</think>` yet (the response opens with `<think>`)."""
    return special.think_end not in tokens


def rollout(
    engine: RolloutEngine,
    prompts: list[EncodedPrompt],
    cfg: RolloutConfig,
    special: SpecialTokens,
    seeds: list[int],
    n: int | None = None,
    temperature: float | None = None,
) -> list[list[Completion]]:
    """n (default G) completions per prompt, with forced answering at the length cap.

    Both `generate` calls are made even with nothing to generate: an engine spanning several ranks
    (tensor parallel) needs every rank of its group in each call."""
    n = cfg.group_size if n is None else n
    temp = cfg.temperature if temperature is None else temperature
    spec = SamplingSpec(temp, cfg.top_p, cfg.max_new_tokens)
    raw = engine.generate([GenerationRequest(p, n, s) for p, s in zip(prompts, seeds)], spec)
    out = [[Completion(c.token_ids, c.logprobs, [True] * len(c.token_ids), c.finish_reason) for c in group]
           for group in raw]
    if not cfg.forced_answer:
        return out
    inserted = [special.think_end, special.answer_start]
    todo = [(g, j) for g, group in enumerate(out) for j, c in enumerate(group)
            if c.truncated and _inside_think(c.token_ids, special)]
    requests = [GenerationRequest(prompts[g], 1, seeds[g] + 7919 * (j + 1), out[g][j].token_ids + inserted)
                for g, j in todo]
    answers = engine.generate(requests, SamplingSpec(temp, cfg.top_p, cfg.forced_answer_tokens))
    for (g, j), [answer] in zip(todo, answers):
        c = out[g][j]
        out[g][j] = Completion(
            token_ids=c.token_ids + inserted + answer.token_ids,
            logprobs=c.logprobs + [math.nan] * len(inserted) + answer.logprobs,
            train_mask=c.train_mask + [False] * len(inserted) + [True] * len(answer.token_ids),
            finish_reason=answer.finish_reason,
            forced=True,
        )
    return out
