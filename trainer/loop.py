"""The one training loop of every stage: pretraining, SFT and RL.

    Trainer.fit(stage)
      resume (DeepSpeed state, RNG, the stage's state)     -> checkpoint.py
      each step:
        plan = stage.plan(step)       this rank's micro-batches, grouped into optimizer updates,
                                      each with the global normaliser of its objective
        for each update:              forward -> loss sum -> / global normaliser -> backward,
                                      then clip + optimizer step (DeepSpeed)
        stage.finish(record, ...)     what follows an update (RL: weight sync into the rollout engine)
        evaluate / log / save         at their cadence; N non-finite steps in a row: save and stop

A stage owns only what is its own: where micro-batches come from (a packed loader, RL rollouts),
its loss, its state in the checkpoint, its evaluation. The update is the same for all: every
micro-batch returns a *weighted sum* and is divided by the global normaliser, so the gradient does
not depend on how the batch was split into micro-batches and ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from . import faults
from .checkpoint import Checkpointer
from .config import LoggingConfig, TrainerConfig
from .distributed import DistInfo, all_reduce_sum
from .logging import MetricsLogger, log
from .lr_schedule import lr_at, set_lr
from .model import count_parameters
from .preemption import PREEMPTED_EXIT, PreemptionWatch
from .zero import wrap_deepspeed


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Update:
    """One optimizer step: this rank's micro-batches and the global normaliser of their objective.
    Every rank holds the same number of micro-batches (ZeRO-3 runs collectives in each forward)."""

    micro_batches: list[Any]
    normaliser: float


@dataclass
class StepPlan:
    updates: list[Update]  # empty: nothing to train this step (e.g. every RL group degenerate)
    tokens: int  # real tokens trained on, over all ranks
    metrics: dict[str, Any] = field(default_factory=dict)  # the stage's own, logged with the step


@dataclass
class UpdateResult:
    loss: float  # the update's objective: global loss sum / normaliser
    stats: list[float]  # the stage's extra sums (see Stage.loss), over all ranks
    grad_norm: float


class Stage(Protocol):
    name: str
    progress: dict[str, int]  # counters saved in trainer_state.json (tokens seen, samples trained)
    evaluate: Callable[[], dict[str, Any]] | None  # every rank calls it; leaves no state behind
    eval_every: int  # evaluate after every N steps and the last (0: only the last)
    eval_at_start: bool  # also before the first step

    def describe(self) -> str: ...
    def plan(self, step: int) -> StepPlan: ...
    def loss(self, ds, micro_batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted loss sum, 1-D tensor of extra sums to all-reduce, possibly empty)."""
    def finish(self, record: dict[str, Any], results: list[UpdateResult]) -> None: ...
    def log_stats(self) -> dict[str, Any]: ...  # collective: called on every rank at log time
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Trainer:
    """The model under DeepSpeed, its checkpoints, and the loop."""

    def __init__(self, cfg: TrainerConfig, logging_cfg: LoggingConfig, run_dir: Path, info: DistInfo,
                 model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, micro_rows: int,
                 grad_accum: int | None, run_config: Any = None):
        """`grad_accum`: micro-batches per rank in every update, counted by DeepSpeed (supervised
        stages: `TrainerConfig.accumulation`); None: the number varies per update and the trainer
        marks the boundary itself (RL)."""
        self.cfg, self.logging_cfg, self.run_dir, self.info = cfg, logging_cfg, run_dir, info
        self.tokenizer, self.run_config = tokenizer, run_config
        self.params = count_parameters(model)
        self.managed = grad_accum is not None
        self.grad_accum = grad_accum or 1
        self.ds = wrap_deepspeed(model, cfg, micro_rows, self.grad_accum, info, self.managed)
        self.checkpoints = Checkpointer(run_dir, info, cfg.keep_last)
        self.preemption = PreemptionWatch.from_env()  # inside a sweep job: save on its signal
        self.step = 0

    @property
    def model(self) -> torch.nn.Module:
        """The HF model being trained (ZeRO-3 partitioned)."""
        return self.ds.module.model

    # -- checkpoints ---------------------------------------------------------------------------
    def resume(self, stage: Stage, resume: str) -> None:
        start = self.checkpoints.resume_point(resume)
        if start is None:
            return
        state, stage_state = self.checkpoints.load(start, self.ds)
        self.step = state["step"]
        stage.progress.update({k: state[k] for k in stage.progress})
        stage.load_state_dict(stage_state)
        log.info("resumed from %s at step %d", start, self.step)

    def save(self, stage: Stage) -> None:
        path = self.checkpoints.save(self.step, self.ds, {"step": self.step, **stage.progress},
                                     stage.state_dict(), self.tokenizer)
        log.info("saved %s (step %d, %s)", path, self.step, stage.progress)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, stage: Stage, resume: str = "auto") -> None:
        cfg = self.cfg
        self.resume(stage, resume)
        log.info("%s: world %d, params %s, %s, steps %d -> %d", stage.name, self.info.world_size,
                 {k: f"{v / 1e6:.2f}M" for k, v in self.params.items()}, stage.describe(), self.step, cfg.max_steps)
        metrics = MetricsLogger(self.run_dir, self.logging_cfg, self.info.is_main, self.run_config, self.step,
                                cfg.max_steps)
        nonfinite_in_a_row = 0
        try:
            if stage.evaluate is not None and stage.eval_at_start and self.step == 0:
                metrics.log({"step": 0, **stage.evaluate()})
            while self.step < cfg.max_steps:
                record = self.train_step(stage)
                last = self.step == cfg.max_steps
                evaluated = stage.evaluate is not None and (
                    last or (stage.eval_every > 0 and self.step % stage.eval_every == 0))
                if evaluated:
                    record.update(stage.evaluate())
                finite = not record["nonfinite_skipped_step"]
                if self.step % cfg.log_every == 0 or last or not finite or evaluated:
                    record.update(stage.log_stats())
                    metrics.log(record)
                nonfinite_in_a_row = 0 if finite else nonfinite_in_a_row + 1
                if not finite:
                    log.warning("step %d: non-finite loss or grad norm (%s, %s): update skipped",
                                self.step, record["loss"], record["grad_norm"])
                if nonfinite_in_a_row >= cfg.max_consecutive_nonfinite:
                    self.save(stage)
                    raise NonFiniteLossError(
                        f"{nonfinite_in_a_row} non-finite steps in a row (last at step {self.step}); "
                        f"checkpoint saved under {self.checkpoints.root}. Lower the LR or inspect the data."
                    )
                saved = self.step % cfg.save_every == 0 or last
                if saved:
                    self.save(stage)
                if not last and self.preemption.agreed():
                    if not saved:
                        self.save(stage)
                    log.warning("step %d: preempted: checkpoint saved, stopping (the requeued job resumes here)",
                                self.step)
                    raise SystemExit(PREEMPTED_EXIT)
        finally:
            metrics.close()

    def train_step(self, stage: Stage) -> dict[str, Any]:
        started = time.perf_counter()
        lr = lr_at(self.step, self.cfg.max_steps, self.cfg.optim)
        plan = stage.plan(self.step)
        set_lr(self.ds.optimizer, lr, self.cfg.optim.vision_lr_scale)
        results = [self._update(stage, update, last=i == len(plan.updates) - 1)
                   for i, update in enumerate(plan.updates)]
        if not plan.updates:
            faults.maybe_kill("step", self.step + 1)
        self.step += 1
        record: dict[str, Any] = {"step": self.step, "lr": lr, **plan.metrics}
        record["loss"] = sum(r.loss for r in results) / len(results) if results else 0.0
        record["grad_norm"] = results[-1].grad_norm if results else 0.0
        stage.finish(record, results)
        elapsed = time.perf_counter() - started
        record.update(step_time_s=elapsed, tokens_per_s=plan.tokens / elapsed,
                      nonfinite_skipped_step=not (math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])))
        return record

    def _update(self, stage: Stage, update: Update, last: bool) -> UpdateResult:
        """Accumulate the micro-batches' gradients, each its share of the global objective; step."""
        if not update.micro_batches:  # nothing to learn from on any rank (e.g. zero advantages)
            if last:
                faults.maybe_kill("step", self.step + 1)
            return UpdateResult(0.0, [], 0.0)
        # DeepSpeed divides each backward by its accumulation steps and averages over ranks:
        # undo both, so the update follows the global loss sum / normaliser.
        sums = None
        for i, micro in enumerate(update.micro_batches):
            loss, stats = stage.loss(self.ds, micro)
            if faults.nan_loss(self.step + 1):
                loss = loss * float("nan")
            self.ds.backward(loss / max(update.normaliser, 1e-12) * self.grad_accum * self.info.world_size)
            part = torch.cat([loss.detach().reshape(1), stats])
            sums = (torch.zeros_like(part) if sums is None else sums) + part
            if self.managed:  # DeepSpeed counts micro-batches and steps only at its boundary
                if last and i == len(update.micro_batches) - 1:
                    faults.maybe_kill("step", self.step + 1)
                self.ds.step()
        if not self.managed:
            if last:
                faults.maybe_kill("step", self.step + 1)
            self.ds.step()
        loss_sum, *stats = all_reduce_sum(sums).tolist()
        grad_norm = self.ds.get_global_grad_norm()
        return UpdateResult(loss_sum / max(update.normaliser, 1e-12), stats,
                            float("nan") if grad_norm is None else float(grad_norm))
