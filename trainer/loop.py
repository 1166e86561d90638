"""The optimizer-step loop of the supervised stages (pretraining, SFT).

One step: take `grad_accum` packed micro-batches on every rank, count the global loss weight,
forward/backward each (scaled so the update is the global weighted mean), step, log, save.
Stages hand it a model, a stateful loader and, optionally, an evaluation callback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from data_pipelines.batch import Batch

from . import faults
from .checkpoint import Checkpointer
from .config import LoggingConfig, TrainerConfig
from .engine import DistInfo, all_reduce_sum, build_engine, lr_at, set_lr
from .logging import MetricsLogger, log
from .loss import weighted_loss_sum
from .model import count_parameters
from .run import export_hf, resume_point


class StatefulLoader(Protocol):
    def __iter__(self): ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def stats(self) -> dict: ...


class NonFiniteLossError(RuntimeError):
    pass


class TrainLoop:
    def __init__(
        self,
        cfg: TrainerConfig,
        logging_cfg: LoggingConfig,
        run_dir: Path,
        info: DistInfo,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        loader: StatefulLoader,
        rows_per_micro_batch: int,
        seq_len: int,
        run_config: Any = None,
        stage: str = "train",
    ):
        self.cfg, self.info, self.run_dir = cfg, info, run_dir
        self.tokenizer, self.loader, self.stage = tokenizer, loader, stage
        self.params = count_parameters(model)
        self.engine = build_engine(model, cfg, rows_per_micro_batch, info)
        self.checkpoints = Checkpointer(run_dir, info, cfg.keep_last)
        self.rows_per_step = rows_per_micro_batch * cfg.grad_accum * info.world_size
        self.seq_len = seq_len
        self.logging_cfg, self.run_config = logging_cfg, run_config
        self.step, self.tokens_seen = 0, 0

    @property
    def model(self) -> torch.nn.Module:
        """The Glm4vForConditionalGeneration being trained (ZeRO-3 partitioned)."""
        return self.engine.module.model

    def resume(self, resume: str) -> None:
        start = resume_point(resume, self.checkpoints)
        if start is None:
            return
        state, client = self.checkpoints.load(start, self.engine)
        self.step, self.tokens_seen = state["step"], state["tokens"]
        self.loader.load_state_dict(client["data"])
        log.info("resumed from %s at step %d", start, self.step)

    def save(self) -> None:
        trainer_state = {"step": self.step, "tokens": self.tokens_seen}
        path = self.checkpoints.save(
            self.step, self.engine, trainer_state, {"data": self.loader.state_dict()},
            lambda engine, out: export_hf(engine, self.tokenizer, out, self.info),
        )
        log.info("saved %s (step %d, %.3g tokens)", path, self.step, self.tokens_seen)

    def fit(self, evaluate: Callable[[], dict[str, Any]] | None = None, eval_every: int = 0) -> None:
        """Train to max_steps; `evaluate()` runs on every rank after every `eval_every`-th step and
        the last one, and its metrics join that step's line (it must leave no state behind)."""
        cfg = self.cfg
        log.info(
            "%s: world %d, params %s, %d rows x %d tokens = %d token slots per step, steps %d -> %d",
            self.stage, self.info.world_size, {k: f"{v / 1e6:.2f}M" for k, v in self.params.items()},
            self.rows_per_step, self.seq_len, self.rows_per_step * self.seq_len, self.step, cfg.max_steps,
        )
        metrics = MetricsLogger(self.run_dir, self.logging_cfg, self.info.is_main, self.run_config,
                                self.step, cfg.max_steps)
        batches = iter(self.loader)
        nonfinite_in_a_row = 0
        try:
            while self.step < cfg.max_steps:
                record = self._train_step([next(batches).to(self.info.device) for _ in range(cfg.grad_accum)])
                finite = not record["nonfinite_skipped_step"]
                if eval_every and evaluate is not None and (self.step % eval_every == 0 or self.step == cfg.max_steps):
                    record.update(evaluate())
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps or not finite or "eval_loss" in record:
                    record.update(self._data_stats())
                    metrics.log(record)
                nonfinite_in_a_row = 0 if finite else nonfinite_in_a_row + 1
                if not finite:
                    log.warning("step %d: non-finite loss or grad norm (%s, %s): update skipped",
                                self.step, record["loss"], record["grad_norm"])
                if nonfinite_in_a_row >= cfg.max_consecutive_nonfinite:
                    self.save()
                    raise NonFiniteLossError(
                        f"{nonfinite_in_a_row} non-finite steps in a row (last at step {self.step}); "
                        f"checkpoint saved under {self.checkpoints.root}. Lower the LR or inspect the data."
                    )
                if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                    self.save()
        finally:
            metrics.close()

    def _train_step(self, micro: list[Batch]) -> dict[str, Any]:
        cfg, engine, world = self.cfg, self.engine, self.info.world_size
        started = time.perf_counter()
        # Global loss weight of this step, so each micro-batch's gradient is its share of the mean.
        local = torch.tensor([float(sum(b.label_weights.sum() for b in micro)),
                              float(sum(b.num_tokens for b in micro))], device=self.info.device)
        weight_total, step_tokens = all_reduce_sum(local).tolist()
        lr = lr_at(self.step, cfg.max_steps, cfg.optim)
        set_lr(engine, lr)
        loss_sum = torch.zeros((), device=self.info.device)
        for i, batch in enumerate(micro):
            weighted, _ = weighted_loss_sum(engine, batch)
            if faults.nan_loss(self.step + 1):
                weighted = weighted * float("nan")
            # DeepSpeed divides by grad_accum and averages over ranks; undo both.
            engine.backward(weighted / max(weight_total, 1e-12) * cfg.grad_accum * world)
            if i == len(micro) - 1:
                faults.maybe_kill("step", self.step + 1)
            engine.step()  # updates only at the accumulation boundary
            loss_sum += weighted.detach()
        self.step += 1
        self.tokens_seen += int(step_tokens)
        loss = all_reduce_sum(loss_sum).item() / max(weight_total, 1e-12)
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float("nan") if grad_norm is None else float(grad_norm)
        elapsed = time.perf_counter() - started
        return {
            "step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": self.tokens_seen, "tokens_per_s": step_tokens / elapsed, "step_time_s": elapsed,
            "packing_efficiency": step_tokens / (self.rows_per_step * self.seq_len),
            "nonfinite_skipped_step": not (math.isfinite(loss) and math.isfinite(grad_norm)),
        }

    def _data_stats(self) -> dict[str, Any]:
        """Data counters summed over ranks (each rank reads its own streams)."""
        everyone: list = [None] * self.info.world_size
        dist.all_gather_object(everyone, self.loader.stats())
        skipped: dict[str, int] = {}
        for stats in everyone:
            for reason, n in stats["skipped"].items():
                skipped[reason] = skipped.get(reason, 0) + n
        return {"skipped": skipped, "documents": sum(s.get("documents", 0) for s in everyone)}
