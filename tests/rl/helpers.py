"""Shared by the RL tests and benchmarks: tiny policies, the synthetic task, a supervised warm start."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from data_pipelines.batch import collate_rows
from data_pipelines.processor import VisionProcessor
from data_pipelines.chat import ChatRenderer
from data_pipelines.prompts import EncodedPrompt, encode_prompt_record, load_prompt_records, rollout_document
from data_pipelines.synthetic import make_rl_task_records, rl_task_response
from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer
from stages.rl.policy import text_policy
from stages.rl.rollout.base import Completion
from trainer.forward import wrap_forward
from trainer.loss import token_losses
from trainer.model import build_model, load_preset, save_hf_checkpoint

TASK_VERIFIERS = [f"rewards.domain_verifiers.{d}=counting" for d in ("max", "min", "count")]


def tiny_policy(text_only: bool, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    preset = load_preset("tiny")
    model = text_policy(preset, SpecialTokens.from_tokenizer(tokenizer)) if text_only else build_model(preset, tokenizer)
    return model, tokenizer


def task_data(root: Path, n_train: int = 256, n_eval: int = 64, sizes: tuple[int, int] = (1, 7)) -> tuple[Path, Path]:
    return (make_rl_task_records(root / "train.jsonl", n_train, 0, sizes),
            make_rl_task_records(root / "eval.jsonl", n_eval, 1, sizes))


def warm_start(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: Path, steps: int,
               lr: float = 3e-3, batch: int = 32, seed: int = 0,
               respond: Callable[[str, Any], str] = rl_task_response, device: str = "cpu") -> None:
    """Supervised steps on the task's well-formed responses (`respond(domain, answer)`; plain AdamW,
    packed rows) on `device`. Image paths of the records are relative to the data file."""
    special = SpecialTokens.from_tokenizer(tokenizer)
    renderer = ChatRenderer(tokenizer, VisionProcessor())
    records, _ = load_prompt_records(data)
    docs = []
    for r in records:
        prompt = encode_prompt_record(r, renderer, image_root=Path(data).parent)
        response = tokenizer.encode(respond(r.domain, r.answer), add_special_tokens=False) + [special.eos]
        docs.append(rollout_document(prompt, response, [True] * len(response), r.id))
    forward = wrap_forward(model.to(device)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    for _ in range(steps):
        chosen = rng.sample(docs, min(batch, len(docs)))
        length = sum(len(d) for d in chosen)
        b = collate_rows([chosen], length, special.eos).to(device)
        loss = (token_losses(forward(b), b.labels) * b.label_weights).sum() / b.label_weights.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    return save_hf_checkpoint(model, tokenizer, out)


# ---- a policy that prefers the vision tokens (tests/rl/test_vision_tokens.py, test_vllm_engine.py) ----
def prefer_tokens(model: torch.nn.Module, ids: tuple[int, ...], boost: float = 10.0) -> None:
    """Make `ids` the policy's most likely next tokens after anything (each ~`boost` logits above
    the rest). A large constant in dimension 0 of every token embedding dominates the residual
    stream, so after the final RMSNorm that dimension is ~sqrt(hidden) at every position; only the
    output-head rows of `ids` read it."""
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embed.data_ptr() != head.data_ptr(), "needs untied embeddings"
    with torch.no_grad():
        embed[:, 0] = 100.0
        head[:, 0] = 0.0
        head[list(ids), 0] = boost / math.sqrt(embed.shape[1])


def next_token_logprobs(model: torch.nn.Module, prompt: EncodedPrompt, tokens: list[int]) -> torch.Tensor:
    """Teacher-forced log-softmax over the whole vocabulary at the positions predicting `tokens`
    and the one after: (len(tokens) + 1, vocab)."""
    ids = torch.tensor([prompt.input_ids + tokens])
    kwargs = {}
    if hasattr(model.config, "vision_config"):
        kwargs["mm_token_type_ids"] = torch.tensor([prompt.mm_token_type_ids + [0] * len(tokens)])
        if prompt.visuals:
            kwargs.update(pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw)
    with torch.no_grad():
        logits = model(input_ids=ids, **kwargs).logits[0, len(prompt) - 1:]
    return torch.log_softmax(logits.float(), dim=-1)


def vision_mass(model: torch.nn.Module, prompt: EncodedPrompt, special: SpecialTokens) -> float:
    """The policy's probability of a vision token right after the prompt (the test's premise)."""
    return next_token_logprobs(model, prompt, [])[0, list(special.vision_ids)].exp().sum().item()


def has_vision_token(tokens: list[int], special: SpecialTokens) -> bool:
    return bool(set(tokens) & set(special.vision_ids))


def best_allowed_tokens(model: torch.nn.Module, prompt: EncodedPrompt, tokens: list[int],
                        special: SpecialTokens) -> list[int]:
    """The teacher-forced argmax at each position of `tokens` over every token but the vision ones:
    what a greedy decoder that never picks a vision token must have produced."""
    lp = next_token_logprobs(model, prompt, tokens)
    lp[:, list(special.vision_ids)] = -math.inf
    return lp[: len(tokens)].argmax(-1).tolist()


def assert_engine_logprobs_are_the_models(model: torch.nn.Module, prompt: EncodedPrompt, c: Completion) -> None:
    """The reported log-probs are the unsuppressed, unrenormalised model distribution's, as the
    trainer computes them (renormalising over the allowed tokens would add ~log(1/(1-0.9)))."""
    lp = next_token_logprobs(model, prompt, c.token_ids)
    for t, (token, trained) in enumerate(zip(c.token_ids, c.train_mask)):
        if trained:
            assert abs(c.logprobs[t] - lp[t, token].item()) <= 1e-4, (t, c.logprobs[t], lp[t, token].item())
