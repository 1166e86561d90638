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
from data_pipelines.reader import PackedLoader, ShardStream
from data_pipelines.sources import PretrainDataConfig, build_mixture
from data_pipelines.tokenizer import SpecialTokens, load_tokenizer
from trainer.config import LoggingConfig, TrainerConfig
from trainer.distributed import DistInfo
from trainer.loop import Trainer
from trainer.zero import zero3_loading_config
from trainer.model import ModelConfig, build_model
from trainer.supervised import PackedBatches


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    resume: str = "auto"  # auto: continue from checkpoints/latest if any; never; or a step dir


def run(cfg: PretrainConfig, run_dir: Path, info: DistInfo) -> None:
    # Stops here, before any work, when trainer.global_batch does not divide over this world.
    grad_accum = cfg.trainer.accumulation(cfg.data.batch_rows, info.world_size)
    torch.manual_seed(cfg.trainer.seed)  # the same initial weights on every rank
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg.model, tokenizer, zero3_loading_config(cfg.trainer, info))
    processor = VisionProcessor(cfg.processor)
    # data.sources: a weighted mixture of published layouts; else ponder's interleaved shards.
    mixture = (build_mixture(cfg.data.sources, tokenizer, processor, cfg.data.seed, cfg.data.shuffle_shards)
               if cfg.data.sources else None)
    documents = None if mixture else InterleavedDocuments(tokenizer, processor)
    stream = ShardStream(cfg.data, documents, SpecialTokens.from_tokenizer(tokenizer).eos,
                         info.rank, info.world_size, mixture=mixture)
    trainer = Trainer(cfg.trainer, cfg.logging, run_dir, info, model, tokenizer, cfg.data.batch_rows, grad_accum,
                      run_config=cfg)
    stage = PackedBatches("pretrain", PackedLoader(stream), info, trainer.grad_accum, cfg.data.batch_rows,
                          cfg.data.packing.seq_len)
    trainer.fit(stage, cfg.resume)
