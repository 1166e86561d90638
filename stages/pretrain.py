"""Interleaved image-text pretraining: shards -> packed batches -> ZeRO-3 steps -> checkpoints.

The whole loop is here; each line calls one floor down (data_pipelines for batches, trainer for
the engine, loss, checkpoints and logs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from data_pipelines.interleaved import InterleavedDocuments
from data_pipelines.processor import VisionProcessor
from data_pipelines.reader import PackedLoader, ReaderConfig, ShardStream
from data_pipelines.tokenizer import SpecialTokens, load_tokenizer
from trainer import faults
from trainer.checkpoint import Checkpointer
from trainer.config import LoggingConfig, TrainerConfig
from trainer.engine import DistInfo, all_reduce_sum, build_engine, lr_at, set_lr
from trainer.logging import MetricsLogger, log
from trainer.loss import weighted_loss_sum
from trainer.model import ModelConfig, build_model, count_parameters
from trainer.run import export_hf, resume_point


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: ReaderConfig = field(default_factory=ReaderConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    resume: str = "auto"  # auto: continue from checkpoints/latest if any; never; or a step dir


def run(cfg: PretrainConfig, run_dir: Path, info: DistInfo) -> None:
    tc = cfg.trainer
    torch.manual_seed(tc.seed)  # same initial weights on every rank
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg.model, tokenizer)
    params = count_parameters(model)
    engine = build_engine(model, tc, cfg.data.batch_rows, info)

    documents = InterleavedDocuments(tokenizer, VisionProcessor())
    pad_id = SpecialTokens.from_tokenizer(tokenizer).eos
    loader = PackedLoader(ShardStream(cfg.data, documents, pad_id, info.rank, info.world_size))

    checkpoints = Checkpointer(run_dir, info, tc.keep_last)
    step, tokens_seen = 0, 0
    start = resume_point(cfg.resume, checkpoints)
    if start is not None:
        state, client = checkpoints.load(start, engine)
        step, tokens_seen = state["step"], state["tokens"]
        loader.load_state_dict(client["data"])
        log.info("resumed from %s at step %d", start, step)

    rows_per_step = cfg.data.batch_rows * tc.grad_accum * info.world_size
    log.info(
        "pretrain: world %d, params %s, %d rows x %d tokens = %d token slots per step, %d steps",
        info.world_size, {k: f"{v / 1e6:.2f}M" for k, v in params.items()}, rows_per_step,
        cfg.data.packing.seq_len, rows_per_step * cfg.data.packing.seq_len, tc.max_steps,
    )
    metrics = MetricsLogger(run_dir, cfg.logging, info.is_main, cfg, step, tc.max_steps)

    def save() -> None:
        trainer_state = {"step": step, "tokens": tokens_seen}
        path = checkpoints.save(step, engine, trainer_state, {"data": loader.state_dict()},
                                lambda eng, out: export_hf(eng, tokenizer, out, info))
        log.info("saved %s (step %d, %.3g tokens)", path, step, tokens_seen)

    batches = iter(loader)
    nonfinite_in_a_row = 0
    while step < tc.max_steps:
        started = time.perf_counter()
        micro = [next(batches).to(info.device) for _ in range(tc.grad_accum)]
        # The global target weight, so every micro-batch's gradient is its share of the global mean.
        local = torch.stack([sum(b.label_weights.sum() for b in micro), torch.tensor(sum(b.num_tokens for b in micro), dtype=torch.float32)])
        weight_total, step_tokens = all_reduce_sum(local.to(info.device)).tolist()
        set_lr(engine, lr_at(step, tc.max_steps, tc.optim))
        loss_sum = torch.zeros((), device=info.device)
        for i, batch in enumerate(micro):
            weighted, _ = weighted_loss_sum(engine, batch)
            if faults.nan_loss(step + 1):
                weighted = weighted * float("nan")
            # DeepSpeed divides by grad_accum and averages over ranks; undo both.
            engine.backward(weighted / weight_total * tc.grad_accum * info.world_size)
            if i == len(micro) - 1:
                faults.maybe_kill("step", step + 1)
            engine.step()  # applies the update only at the accumulation boundary
            loss_sum += weighted.detach()
        step += 1
        loss = all_reduce_sum(loss_sum).item() / max(weight_total, 1e-12)
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        tokens_seen += int(step_tokens)
        elapsed = time.perf_counter() - started
        if step % tc.log_every == 0 or step == tc.max_steps or not finite:
            data_stats = _gather_data_stats(loader)
            metrics.log({
                "step": step, "loss": loss, "lr": lr_at(step - 1, tc.max_steps, tc.optim),
                "grad_norm": grad_norm, "tokens": tokens_seen, "tokens_per_s": step_tokens / elapsed,
                "step_time_s": elapsed,
                "packing_efficiency": step_tokens / (rows_per_step * cfg.data.packing.seq_len),
                "skipped": data_stats["skipped"], "documents": data_stats["documents"],
                "nonfinite_skipped_step": not finite,
            })

        if finite:
            nonfinite_in_a_row = 0
        else:
            nonfinite_in_a_row += 1
            log.warning("step %d: non-finite loss/grad norm (%s, %s): update skipped", step, loss, grad_norm)
            if nonfinite_in_a_row >= tc.max_consecutive_nonfinite:
                save()
                metrics.close()
                raise RuntimeError(
                    f"{nonfinite_in_a_row} non-finite steps in a row (last at step {step}); "
                    f"checkpoint saved in {checkpoints.root}. Lower the LR or inspect the data."
                )
        if step % tc.save_every == 0 or step == tc.max_steps:
            save()
    metrics.close()


def _gather_data_stats(loader: PackedLoader) -> dict:
    """Data counters summed over ranks (each rank has its own streams)."""
    mine = loader.stats()
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    skipped: dict[str, int] = {}
    for stats in everyone:
        for reason, n in stats["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    return {"skipped": skipped, "documents": sum(s.get("documents", 0) for s in everyone)}
