"""Rollouts with transformers `generate`, for machines where vLLM cannot load the model (Glm4v on
CPU). The engine keeps its own unpartitioned copy of the policy in eval mode; weight sync copies
the gathered trainer weights into it.

Vision tokens (`SpecialTokens.vision_ids`) are suppressed while sampling (`suppress_tokens`: their
logits become -inf, so sampling renormalises over the other tokens); the draw itself is
`InverseCdfSampler`'s, a logits processor under greedy decoding (see there for why). The reported
log-probs stay the raw model distribution's (`output_logits` are the logits before any processor),
i.e. what the trainer's forward computes for the same tokens: the engine/trainer log-prob gap
measures weight and numerics drift only. The sampling distribution differs from that by
log(1 - P(vision)) per token, which is ~0 for a trained policy and not corrected for (as top-p is
not).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from data_pipelines.tokenizer import SpecialTokens

from .base import GenerationRequest, RawCompletion, RolloutEngine, SamplingSpec


class HFEngine(RolloutEngine):
    name = "hf"

    def __init__(self, model: PreTrainedModel, special: SpecialTokens, batch_size: int = 64):
        self.model = model.eval().requires_grad_(False)
        self.special = special
        self.stop_ids = special.stop_ids(model.generation_config.eos_token_id)
        self.suppressed = list(special.vision_ids)
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_weights(self, state_dict=None, path=None) -> None:
        if state_dict is None:
            state_dict = {}
            for file in sorted(Path(path).glob("*.safetensors")):
                state_dict.update(load_file(str(file)))
        own = dict(self.model.named_parameters())
        missing = sorted(set(own) - set(state_dict))
        if missing:
            raise KeyError(f"weight sync is missing {len(missing)} tensors, e.g. {missing[:3]}")
        with torch.no_grad():
            for name, tensor in state_dict.items():
                own[name].copy_(tensor)

    def generate(self, requests: list[GenerationRequest], spec: SamplingSpec) -> list[list[RawCompletion]]:
        rows = [(i, req) for i, req in enumerate(requests) for _ in range(req.n)]
        results: list[list[RawCompletion]] = [[] for _ in requests]
        for start in range(0, len(rows), self.batch_size):
            for chunk in _one_kind_of_media(rows[start : start + self.batch_size]):
                # One seed per generate call, from its first request: the same call replays exactly.
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(chunk[0][1].seed + start)
                    completions = self._generate_batch([req for _, req in chunk], spec)
                for (i, _), completion in zip(chunk, completions):
                    results[i].append(completion)
        return results

    @torch.no_grad()
    def _generate_batch(self, requests: list[GenerationRequest], spec: SamplingSpec) -> list[RawCompletion]:
        device = self.device
        seqs = [req.prompt.input_ids + req.prefix for req in requests]
        types = [req.prompt.mm_token_type_ids + [0] * len(req.prefix) for req in requests]
        width = max(map(len, seqs))
        pad = self.special.eos
        # Left padding: every row's next token is generated at the same position.
        input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
        inputs = {"input_ids": input_ids, "attention_mask": attention}
        visuals = [v for req in requests for v in req.prompt.visuals]
        if hasattr(self.model.config, "vision_config"):  # Glm4v: M-RoPE needs the token types
            inputs["mm_token_type_ids"] = torch.tensor([[0] * (width - len(t)) + t for t in types], device=device)
        if visuals:
            self.images_seen += len(visuals)
            inputs["pixel_values"] = torch.cat([v.pixel_values for v in visuals]).to(device, self.model.dtype)
            inputs["image_grid_thw"] = torch.stack([v.grid_thw for v in visuals]).to(device)
        videos = [v for req in requests for v in req.prompt.document.videos]
        if videos:  # frames in temporal pairs: one grid (t, h, w) per video
            self.images_seen += sum(int(v.grid_thw[0]) * 2 for v in videos)  # frames
            inputs["pixel_values_videos"] = torch.cat([v.pixel_values for v in videos]).to(device, self.model.dtype)
            inputs["video_grid_thw"] = torch.stack([v.grid_thw for v in videos]).to(device)
        config = GenerationConfig(  # greedy over the sampler's one-hot scores (or the logits at temperature 0)
            do_sample=False, max_new_tokens=spec.max_tokens, eos_token_id=self.stop_ids, pad_token_id=pad,
            suppress_tokens=self.suppressed, output_logits=True, return_dict_in_generate=True,
        )
        sampler = [InverseCdfSampler(spec.temperature, spec.top_p)] if spec.temperature > 0 else []
        out = self.model.generate(**inputs, generation_config=config, logits_processor=LogitsProcessorList(sampler))
        new = out.sequences[:, width:]
        # Raw model log-probs of the chosen tokens (the trainer's distribution at temperature 1), step
        # by step: no stacked copy of every step's full log-softmax.
        chosen = torch.stack([step.float().gather(-1, new[:, t, None]).squeeze(-1) - step.float().logsumexp(-1)
                              for t, step in enumerate(out.logits)], dim=1)
        completions = []
        for row in range(len(requests)):
            ids = new[row].tolist()
            stop = next((t for t, tok in enumerate(ids) if tok in self.stop_ids), None)
            end = len(ids) if stop is None else stop + 1
            reason = "stop" if stop is not None else "length"
            completions.append(RawCompletion(ids[:end], chosen[row, :end].tolist(), reason))
        return completions


class InverseCdfSampler(LogitsProcessor):
    """Samples the next token from softmax(scores / temperature), cut to the top-p nucleus, and
    returns scores that are 0 at the sampled token and -inf elsewhere, for greedy decoding to pick.

    Why not transformers' own sampling: it draws with `torch.multinomial`, which on CPU draws an
    exponential variate for every vocabulary entry of every row (8.7 ms for 64 rows x 2,048 tokens,
    one thread; 15% of a tiny policy's rollout). One uniform per row placed on the cumulative
    distribution draws from the same distribution in 0.4 ms. Tokens of probability 0 (suppressed
    vision tokens, outside the nucleus) are never drawn.
    """

    def __init__(self, temperature: float, top_p: float):
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.double() / self.temperature, dim=-1)
        if self.top_p < 1:
            ordered, order = probs.sort(dim=-1, descending=True)
            # Keep a token while the mass before it is under top_p: the smallest set reaching top_p.
            outside = ordered.cumsum(-1) - ordered >= self.top_p
            probs = probs.scatter(-1, order, ordered.masked_fill(outside, 0.0))
        cdf = probs.cumsum(-1)
        u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
        # The first token whose cumulative mass exceeds u: never one of probability 0, unless rounding
        # puts u at the total (odds ~1e-16), where the likeliest token stands in.
        token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
        token = torch.where(probs.gather(-1, token) > 0, token, probs.argmax(-1, keepdim=True))
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


def _one_kind_of_media(rows: list[tuple[int, GenerationRequest]]) -> list[list[tuple[int, GenerationRequest]]]:
    """The rows as they are, or split in two where they mix image and video prompts: transformers'
    Glm4v places image and video features on the same placeholder id, one kind per call."""
    videos = [row for row in rows if row[1].prompt.document.videos]
    if not videos or len(videos) == len(rows):
        return [rows]
    return [[row for row in rows if not row[1].prompt.document.videos], videos]
