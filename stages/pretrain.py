"""Interleaved image-text(-video) pretraining: webdataset shards -> packed rows -> ZeRO-3 steps.

Paper recipe (9B): 8,192-token packed rows, global batch 1,536 rows (`trainer.global_batch`), 120k steps, all modalities but
video; recipes/recipe/pretrain_9b.yaml. The long-context stage runs here too (pretrain_long_9b:
32,768-token rows with video, each row split over `trainer.sequence_parallel_size` ranks,
trainer/sequence_parallel.py). Documents are split at text (never inside an image or a video) to
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
from trainer.checkpoint import resolve_model_init
from trainer.config import LoggingConfig, TrainerConfig
from trainer.distributed import DistInfo
from trainer.loop import Trainer
from trainer.zero import zero3_loading_config
from trainer.model import ModelConfig, build_model
from trainer.sequence_parallel import check_model, init_sequence_parallel
from trainer.supervised import PackedBatches


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    resume: str = "auto"  # auto: continue from checkpoints/latest if any; never; or a step dir

    def __post_init__(self) -> None:
        self.model.require_tokenizer()


def run(cfg: PretrainConfig, run_dir: Path, info: DistInfo) -> None:
    # Stops here, before any work, on a split this world or model cannot serve, or when
    # trainer.global_batch does not divide over the data-parallel replicas.
    sp_size = cfg.trainer.sequence_parallel_size
    check_model(sp_size, cfg.model.attn_implementation, cfg.model.text_num_attention_heads, cfg.data.packing.seq_len)
    sp = init_sequence_parallel(info, sp_size)
    grad_accum = cfg.trainer.accumulation(cfg.data.batch_rows, sp.data_world)
    torch.manual_seed(cfg.trainer.seed)  # the same initial weights on every rank
    # model.init in any form (run dir, step_N, HF dir); the tokenizer given or the one init carries
    model_cfg = resolve_model_init(cfg.model)
    tokenizer = load_tokenizer(model_cfg.tokenizer)
    model = build_model(model_cfg, tokenizer, zero3_loading_config(cfg.trainer, info))
    processor = VisionProcessor(cfg.processor)
    # data.sources: a weighted mixture of published layouts; else ponder's interleaved shards.
    mixture = (build_mixture(cfg.data.sources, tokenizer, processor, cfg.data.seed, cfg.data.shuffle_shards)
               if cfg.data.sources else None)
    documents = None if mixture else InterleavedDocuments(tokenizer, processor)
    stream = ShardStream(cfg.data, documents, SpecialTokens.from_tokenizer(tokenizer).eos,
                         sp.data_rank, sp.data_world, mixture=mixture)
    trainer = Trainer(cfg.trainer, cfg.logging, run_dir, info, model, tokenizer, cfg.data.batch_rows, grad_accum,
                      run_config=cfg)
    stage = PackedBatches("pretrain", PackedLoader(stream), info, trainer.grad_accum, cfg.data.batch_rows,
                          cfg.data.packing.seq_len, sp=sp)
    trainer.fit(stage, cfg.resume)
