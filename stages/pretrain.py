"""Interleaved image-text pretraining: webdataset shards -> packed rows -> ZeRO-3 steps.

Paper recipe (9B): 8,192-token packed rows, global batch 1,536 rows (`trainer.global_batch`), 120k steps, all modalities but
video; recipes/recipe/pretrain_9b.yaml. Documents are split at text (never inside an image) to
fill rows; loss is the token mean over the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_pipelines.interleaved import InterleavedDocuments
from data_pipelines.processor import ProcessorConfig, VisionProcessor
from data_pipelines.reader import PackedLoader, ReaderConfig, ShardStream
from data_pipelines.tokenizer import SpecialTokens, load_tokenizer
from trainer.checkpoint import resolve_model_init
from trainer.config import LoggingConfig, TrainerConfig
from trainer.distributed import DistInfo
from trainer.loop import Trainer
from trainer.model import ModelConfig, build_model
from trainer.supervised import PackedBatches


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: ReaderConfig = field(default_factory=ReaderConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    resume: str = "auto"  # auto: continue from checkpoints/latest if any; never; or a step dir

    def __post_init__(self) -> None:
        self.model.require_tokenizer()


def run(cfg: PretrainConfig, run_dir: Path, info: DistInfo) -> None:
    # Stops here, before any work, when trainer.global_batch does not divide over this world.
    grad_accum = cfg.trainer.accumulation(cfg.data.batch_rows, info.world_size)
    torch.manual_seed(cfg.trainer.seed)  # the same initial weights on every rank
    # model.init in any form (run dir, step_N, HF dir); the tokenizer given or the one init carries
    model_cfg = resolve_model_init(cfg.model)
    tokenizer = load_tokenizer(model_cfg.tokenizer)
    model = build_model(model_cfg, tokenizer)
    documents = InterleavedDocuments(tokenizer, VisionProcessor(cfg.processor))
    stream = ShardStream(cfg.data, documents, SpecialTokens.from_tokenizer(tokenizer).eos,
                         info.rank, info.world_size)
    trainer = Trainer(cfg.trainer, cfg.logging, run_dir, info, model, tokenizer, cfg.data.batch_rows, grad_accum,
                      run_config=cfg)
    stage = PackedBatches("pretrain", PackedLoader(stream), info, trainer.grad_accum, cfg.data.batch_rows,
                          cfg.data.packing.seq_len)
    trainer.fit(stage, cfg.resume)
