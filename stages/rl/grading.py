"""Offline difficulty grading: pass@k of a model on every prompt of a dataset, written to the
difficulty sidecar the curriculum reads (docs/rl.md).

Same rollout engine, sampling and rewards as RL. Results are appended to the sidecar after every
chunk, so a killed run resumes where it stopped (prompts already graded with k samples by the same
grader are skipped); at the end the sidecar is rewritten with one line per id. A record's human
`difficulty` label is merged into the written pass rate (it counts as `human_label_weight` samples).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_pipelines.chat import ChatRenderer
from data_pipelines.processor import ProcessorConfig, VisionProcessor
from data_pipelines.prompts import (
    DifficultyEntry,
    PromptRecord,
    append_sidecar,
    encode_records,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from data_pipelines.tokenizer import SpecialTokens, load_tokenizer
from stages.rl.prompt_sets import load_gradable_prompts
from stages.rl.rewards import RewardConfig
from trainer.checkpoint import resolve_hf_dir
from trainer.distributed import DistInfo
from trainer.logging import log
from trainer.model import ModelConfig

from .config import PromptDataConfig
from .curriculum import CurriculumConfig, PromptMeta, offline_counts, tier_of
from .groups import GroupRoller
from .rollout import RolloutConfig, build_rollout_engine
from .rollout.base import request_seed
from .scorer import Scorer


@dataclass
class GradeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # model.init: the grader
    data: PromptDataConfig = field(default_factory=PromptDataConfig)  # data.difficulty: output sidecar
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)  # pass threshold, tiers, label weight
    k: int = 8  # samples per prompt
    chunk_prompts: int = 256  # prompts per rollout call; the sidecar is appended after each
    grader: str = ""  # name stored with the grades; default: model.init

    def __post_init__(self) -> None:
        if self.k < 1 or self.chunk_prompts < 1:
            raise ValueError("grade: need k >= 1 and chunk_prompts >= 1")


def grade(cfg: GradeConfig, info: DistInfo) -> dict[str, int]:
    """Grade every ungraded prompt; returns counts (graded, skipped by reason, tier histogram)."""
    if not cfg.model.init or not cfg.data.path:
        raise ValueError("grade needs model.init (the grader) and data.path (the prompts)")
    hf_dir = resolve_hf_dir(cfg.model.init)
    grader = cfg.grader or str(cfg.model.init)
    out = Path(cfg.data.difficulty or sidecar_path(cfg.data.path))
    records, skipped = load_gradable_prompts(cfg.data.path, cfg.data, cfg.rewards)
    done = {k for k, e in read_sidecar(out).items() if e.samples >= cfg.k and e.grader == grader}
    todo = [(i, r) for i, r in enumerate(records) if r.id not in done]
    log.info("grading %d of %d prompts (k=%d) with %s -> %s", len(todo), len(records), cfg.k, grader, out)
    tokenizer = load_tokenizer(hf_dir)
    special = SpecialTokens.from_tokenizer(tokenizer)
    renderer = ChatRenderer(tokenizer, VisionProcessor(cfg.processor))
    image_root = cfg.data.image_root  # None: each record's own folder
    engine = build_rollout_engine(cfg.rollout, hf_dir, special, cfg.model, info, cfg.rollout.seed)
    roll_out = GroupRoller(engine, Scorer(cfg.rewards), cfg.rollout, tokenizer, special)
    counts: Counter = Counter({f"skipped/{k}": v for k, v in skipped.items()})
    started = time.perf_counter()
    try:
        for start in range(0, len(todo), cfg.chunk_prompts):
            chunk = todo[start : start + cfg.chunk_prompts]
            chunk_records = [r for _, r in chunk]
            prompts, failed = encode_records(chunk_records, range(len(chunk_records)), renderer, image_root,
                                             cfg.data.system_prompt, cfg.data.max_prompt_tokens, engine.takes_videos)
            counts.update(f"skipped/{reason}" for _, reason in failed)
            seeds = [request_seed(cfg.rollout.seed, 0, i) for i, _ in chunk]
            groups, _, _ = roll_out(prompts, chunk_records, seeds, cfg.k, cfg.rollout.temperature)
            entries = [_entry(chunk_records[g.slot], g.rewards, grader, cfg.curriculum) for g in groups]
            counts.update(f"tier/{tier_of(e.pass_rate, cfg.curriculum)}" for e in entries)
            append_sidecar(out, entries)
            counts["graded"] += len(entries)
            log.info("graded %d / %d (%.1f prompts/s)", counts["graded"], len(todo),
                     counts["graded"] / (time.perf_counter() - started))
    finally:
        roll_out.close()
    write_sidecar(out, read_sidecar(out))
    return dict(counts)


def _entry(record: PromptRecord, rewards: list[float], grader: str, cfg: CurriculumConfig) -> DifficultyEntry:
    """The sidecar line of one graded prompt: its passes, and the pass rate merged with its human label."""
    passes = sum(r >= cfg.pass_threshold for r in rewards)
    merged = offline_counts(PromptMeta(record.id, record.domain, record.difficulty), (passes, len(rewards)), cfg)
    return DifficultyEntry(record.id, passes, len(rewards), grader, record.difficulty, merged[0] / merged[1])


def local_info() -> DistInfo:
    """Grading runs in one process (on GPU 0 if there is one)."""
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return DistInfo(0, 1, 0, device)
