"""Long chain-of-thought SFT: chat records -> whole samples packed into rows -> ZeRO-3 steps.

Paper recipe (9B): 32,768-token rows, global batch 32, full-parameter, long-CoT data only
(recipes/recipe/sft_9b.yaml). Every response is `<think>…</think><answer>…</answer>` with one box;
records that break it are counted and skipped. Samples are never cut; each weighs the same in the
loss however it was packed (docs/training.md). Start from a pretraining checkpoint
(`model.init=<run>/checkpoints/step_N`, or the run directory for its latest: weights only, fresh
optimizer); `resume=auto` continues this run exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_pipelines.chat import ChatConfig, ChatRenderer
from data_pipelines.packing import PackingConfig
from data_pipelines.processor import ProcessorConfig, VisionProcessor
from data_pipelines.reader import PackedLoader, ReaderConfig, ShardStream, check_usable
from data_pipelines.records import FORMATS, RecordShards
from data_pipelines.tokenizer import load_tokenizer
from trainer.config import LoggingConfig, TrainerConfig
from trainer.checkpoint import resolve_model_init
from trainer.distributed import DistInfo
from trainer.loop import Trainer
from trainer.zero import zero3_loading_config
from trainer.model import ModelConfig, build_model
from trainer.supervised import PackedBatches
from trainer.sequence_parallel import pretraining_only

from .sft_eval import EvalConfig, SFTEvaluator


@dataclass
class SFTDataConfig(ReaderConfig):
    """The reader's settings (workers, rows, packing, seed, ...) over chat records, not tar shards."""

    train: str = ""  # chat records: .jsonl / .parquet / .json file, directory or glob; save_to_disk dir
    eval: str | None = None  # held-out records in the same forms
    format: str = "auto"  # auto | jsonl | parquet | json | disk
    image_root: str | None = None  # relative image paths resolve here (default: the data file's dir)
    records_per_shard: int = 64  # records per virtual shard (the unit dealt to ranks and workers)
    chat: ChatConfig = field(default_factory=ChatConfig)
    packing: PackingConfig = field(default_factory=lambda: PackingConfig(split_documents=False))

    def __post_init__(self) -> None:
        if self.shards:
            raise ValueError("SFT reads chat records from data.train, not data.shards")
        if self.packing.split_documents:
            raise ValueError("data.packing.split_documents must be false for SFT: samples are never cut")
        if self.format not in FORMATS:
            raise ValueError(f"data.format must be one of {FORMATS}, got {self.format!r}")
        if self.records_per_shard < 1:
            raise ValueError("data.records_per_shard must be >= 1")


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resume: str = "auto"  # auto: continue from this run's checkpoints/latest if any; never; or a step dir

    def __post_init__(self) -> None:
        self.model.require_tokenizer()
        if not self.data.train:
            raise ValueError("data.train is empty: give chat records (.jsonl, parquet/json directory, ...)")
        if self.eval.every and not self.data.eval:
            raise ValueError("eval.every > 0 needs held-out records in data.eval")


def run(cfg: SFTConfig, run_dir: Path, info: DistInfo) -> None:
    # Stops here, before any work, when trainer.global_batch does not divide over this world.
    pretraining_only(cfg.trainer.sequence_parallel_size, "SFT")
    grad_accum = cfg.trainer.accumulation(cfg.data.batch_rows, info.world_size)
    torch.manual_seed(cfg.trainer.seed)  # the same initial weights on every rank (random init)
    # model.init in any form (run dir, step_N, HF dir); the tokenizer given or the one init carries
    model_cfg = resolve_model_init(cfg.model)
    tokenizer = load_tokenizer(model_cfg.tokenizer)
    model = build_model(model_cfg, tokenizer, zero3_loading_config(cfg.trainer, info))
    data = cfg.data
    chat = ChatRenderer(tokenizer, VisionProcessor(cfg.processor), data.chat)
    train = RecordShards(data.train, data.records_per_shard, data.shuffle_shards, data.seed, data.format,
                         data.image_root)
    check_usable("data.train", train, chat)  # a file in no layout the renderer reads stops here
    stream = ShardStream(data, chat, chat.special.eos, info.rank, info.world_size, source=train)
    trainer = Trainer(cfg.trainer, cfg.logging, run_dir, info, model, tokenizer, data.batch_rows, grad_accum,
                      run_config=cfg)
    evaluate = None
    if cfg.eval.every:
        held_out = RecordShards(data.eval, data.records_per_shard, shuffle=False, fmt=data.format,
                                image_root=data.image_root, limit=cfg.eval.max_records)
        evaluate = SFTEvaluator(cfg.eval, held_out, data.packing, data.batch_rows, chat, trainer.ds, info)
    stage = PackedBatches("sft", PackedLoader(stream), info, trainer.grad_accum, data.batch_rows, data.packing.seq_len,
                          evaluate, cfg.eval.every)
    trainer.fit(stage, cfg.resume)
