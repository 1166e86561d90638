"""Shared by the RL tests and benchmarks: tiny policies, the synthetic task, a supervised warm start."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from data_pipelines.batch import collate_rows
from data_pipelines.processor import VisionProcessor
from data_pipelines.chat import ChatRenderer
from data_pipelines.prompts import encode_prompt_record, load_prompt_records, rollout_document
from data_pipelines.synthetic import make_rl_task_records, rl_task_response
from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer
from stages.rl.policy import text_policy
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
