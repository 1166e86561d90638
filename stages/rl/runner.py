"""RLCS: reinforcement learning with curriculum sampling (GLM-4.1V-Thinking §5; docs/rl.md).

One step:
  1. the curriculum draws ceil(P x expansion EMA) prompts (tier-within-domain, scheduled weights);
  2. each rank rolls out its share, G responses per prompt (forced answer at the length cap), and
     scores them; results are all-gathered;
  3. online pass rates and the expansion EMA are updated; the P most balanced groups are kept;
  4. group advantages; responses are dealt to ranks by length and packed into micro-steps;
  5. π_old is recomputed by the trainer; clipped-surrogate updates (clip-higher, no KL, no
     entropy), `mini_batches` optimizer steps;
  6. the new weights are synced into every rank's rollout engine.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data_pipelines.processor import BadSample, VisionProcessor
from data_pipelines.prompts import (
    EncodedPrompt,
    PromptRecord,
    PromptRecordError,
    encode_prompt_record,
    load_prompt_records,
    read_sidecar,
    sidecar_path,
)
from data_pipelines.tokenizer import SpecialTokens, load_tokenizer
from stages.rl.rewards import RewardItem
from trainer import faults
from trainer.checkpoint import Checkpointer
from trainer.engine import DistInfo, all_reduce_sum, build_engine, lr_at, set_lr
from trainer.logging import MetricsLogger, log
from trainer.loop import NonFiniteLossError
from trainer.loss import token_logprobs
from trainer.model import count_parameters
from trainer.run import export_hf, resume_point

from .advantages import group_advantages
from .batching import (
    PolicyMicroBatch,
    TrainSample,
    balance_ranks,
    dummy_micro_batch,
    first_fit_decreasing,
    micro_batch,
)
from .config import RLConfig
from .curriculum import CurriculumSampler, GroupOutcome, PromptMeta
from .loss import clipped_surrogate, sample_normaliser
from .policy import load_policy, resolve_hf_dir
from .rollout import build_rollout_engine
from .rollout.base import Completion, RolloutEngine, completion_text, request_seed, rollout
from .scorer import Scorer
from .sync import WeightSync


@dataclass
class GroupResult:
    """One rolled-out prompt, as all-gathered: enough to train on it from any rank."""

    position: int
    prompt_len: int
    completions: list[Completion]
    rewards: list[float]
    format_ok: list[bool]
    penalties: list[tuple[str, ...]]


def _p95(values: list[int]) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]) if ordered else 0.0


class RLRunner:
    def __init__(self, cfg: RLConfig, run_dir: Path, info: DistInfo):
        if not cfg.model.init:
            raise ValueError("RL starts from a trained policy: set model.init=<SFT checkpoint or HF directory>")
        if not cfg.data.path:
            raise ValueError("set data.path to the prompt records (JSONL or HF dataset)")
        self.cfg, self.run_dir, self.info = cfg, run_dir, info
        torch.manual_seed(cfg.trainer.seed)
        self.hf_dir = resolve_hf_dir(cfg.model.init)
        self.tokenizer = load_tokenizer(self.hf_dir)
        self.special = SpecialTokens.from_tokenizer(self.tokenizer)
        self.processor = VisionProcessor(cfg.processor)
        self.records, skipped = load_prompt_records(cfg.data.path)
        self.skipped: Counter = Counter({f"data/{k}": v for k, v in skipped.items()})
        self.image_root = cfg.data.image_root or str(Path(cfg.data.path).resolve().parent)
        self.sampler = self._sampler(self.records)
        self.eval_records = load_prompt_records(cfg.eval.path)[0][: cfg.eval.max_prompts] if cfg.eval.path else []

        policy = load_policy(self.hf_dir, cfg.model.dtype, cfg.model.attn_implementation)
        self.params = count_parameters(policy)
        self.engine = build_engine(policy, cfg.trainer, 1, info, managed_accumulation=False)
        self.rollout_engine: RolloutEngine = build_rollout_engine(cfg.rollout, self.hf_dir, self.special, cfg.model,
                                                                  info, cfg.trainer.seed)
        self.sync = WeightSync(run_dir, info, cfg.rollout.sync_dir)
        self.scorer = Scorer(cfg.rewards)
        self.checkpoints = Checkpointer(run_dir, info, cfg.trainer.keep_last)
        self.step = 0
        self.samples_trained = 0

    def _sampler(self, records: list[PromptRecord]) -> CurriculumSampler:
        sidecar = self.cfg.data.difficulty or sidecar_path(self.cfg.data.path)
        graded = read_sidecar(sidecar)
        # The human label: the record's, else the one grading carried into the sidecar.
        meta = [PromptMeta(r.id, r.domain, r.difficulty if r.difficulty is not None
                           else getattr(graded.get(r.id), "human", None)) for r in records]
        offline = {k: (e.passes, e.samples) for k, e in graded.items()}
        if self.info.is_main:
            log.info("%d prompts, %d with offline grades (%s)", len(records), len(offline.keys() & {m.id for m in meta}),
                     sidecar)
        return CurriculumSampler(meta, self.cfg.curriculum, self.cfg.trainer.seed, offline, self.cfg.trainer.max_steps)

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.module.model

    # -- checkpoints -----------------------------------------------------------------------------
    def resume(self) -> None:
        start = resume_point(self.cfg.resume, self.checkpoints)
        if start is None:
            return
        state, client = self.checkpoints.load(start, self.engine)
        self.step, self.samples_trained = state["step"], state["samples_trained"]
        self.sampler.load_state_dict(client["sampler"])
        self.sync(self.model, self.rollout_engine)  # the engine started from model.init
        log.info("resumed from %s at step %d", start, self.step)

    def save(self) -> None:
        path = self.checkpoints.save(
            self.step, self.engine, {"step": self.step, "samples_trained": self.samples_trained},
            {"sampler": self.sampler.state_dict()},
            lambda engine, out: export_hf(engine, self.tokenizer, out, self.info),
        )
        log.info("saved %s (step %d)", path, self.step)

    # -- rollout ---------------------------------------------------------------------------------
    def _encode(self, record: PromptRecord) -> EncodedPrompt:
        prompt = encode_prompt_record(record, self.tokenizer, self.processor, self.image_root, self.cfg.data.system_prompt)
        if len(prompt) > self.cfg.data.max_prompt_tokens:
            raise PromptRecordError("prompt_too_long", f"{record.id}: {len(prompt)} tokens")
        return prompt

    def _rollout_share(self, records: list[PromptRecord], positions: list[int], seeds: list[int], n: int,
                       temperature: float) -> tuple[list[GroupResult], list[tuple[int, str]], float, float]:
        """Roll out and score this rank's prompts: (results, failures, rollout s, reward s)."""
        prompts, kept, failed = [], [], []
        for pos in positions:
            try:
                prompts.append(self._encode(records[pos]))
                kept.append(pos)
            except (BadSample, PromptRecordError) as err:
                failed.append((pos, getattr(err, "reason", "bad_sample")))
        started = time.perf_counter()
        groups = rollout(self.rollout_engine, prompts, self.cfg.rollout, self.special,
                         [seeds[p] for p in kept], n=n, temperature=temperature) if prompts else []
        rollout_s = time.perf_counter() - started
        started = time.perf_counter()
        items = [RewardItem(records[pos].domain, completion_text(c.token_ids, self.tokenizer, self.special),
                            records[pos].answer, records[pos].info)
                 for pos, group in zip(kept, groups) for c in group]
        scores = iter(self.scorer(items)) if items else iter(())
        results = []
        for pos, prompt, group in zip(kept, prompts, groups):
            got = [next(scores) for _ in group]
            results.append(GroupResult(pos, len(prompt), group, [r.reward for r in got], [r.format_ok for r in got],
                                       [r.penalties for r in got]))
        return results, failed, rollout_s, time.perf_counter() - started

    def _gather(self, results: list[GroupResult], failed: list[tuple[int, str]]):
        everyone: list = [None] * self.info.world_size
        dist.all_gather_object(everyone, (results, failed))
        all_results = sorted((r for rs, _ in everyone for r in rs), key=lambda r: r.position)
        all_failed = sorted(f for _, fs in everyone for f in fs)
        return all_results, all_failed

    # -- training ----------------------------------------------------------------------------------
    def _plan(self, samples: list[TrainSample]) -> list[list[TrainSample]]:
        """This rank's micro-steps: samples balanced over ranks by length, packed into rows."""
        owner = balance_ranks([len(s) for s in samples], self.info.world_size)
        mine = [s for s, rank in zip(samples, owner) if rank == self.info.rank]
        rows = first_fit_decreasing([len(s) for s in mine], self.cfg.batch.micro_tokens)
        return [[mine[i] for i in sorted(row)] for row in rows]

    def _micro_batches(self, plan: list[list[TrainSample]], prompts: dict[int, EncodedPrompt]) -> list[PolicyMicroBatch]:
        local = torch.tensor([len(plan)], device=self.info.device)
        dist.all_reduce(local, op=dist.ReduceOp.MAX)
        batches = [micro_batch(row, prompts, self.cfg.policy.averaging, self.special.eos,
                               self.cfg.processor.merge_size) for row in plan]
        batches += [dummy_micro_batch(self.special.eos) for _ in range(int(local.item()) - len(plan))]
        return [b.to(self.info.device) for b in batches]

    @torch.no_grad()
    def _old_logprobs(self, batches: list[PolicyMicroBatch]) -> None:
        for b in batches:
            b.old_logprobs = token_logprobs(self.engine(b.batch), b.batch.labels).detach()

    def _update(self, batches: list[PolicyMicroBatch], normaliser: float, last: bool) -> dict[str, float]:
        """Accumulate the micro-steps' gradients (each its share of the global objective), step."""
        pol, world = self.cfg.policy, self.info.world_size
        if not batches:  # every response of this mini-batch has zero advantage on every rank
            return {"loss": 0.0, "clipped": 0.0, "ratio": 0.0, "tokens": 0.0, "grad_norm": 0.0}
        sums = torch.zeros(4, device=self.info.device)  # loss, clipped tokens, ratio sum, tokens
        for i, b in enumerate(batches):
            logp = token_logprobs(self.engine(b.batch), b.batch.labels)
            loss, stats = clipped_surrogate(logp, b.old_logprobs, b.advantages, b.batch.label_weights,
                                            pol.eps_low, pol.eps_high)
            if faults.nan_loss(self.step + 1):
                loss = loss * float("nan")
            # DeepSpeed averages gradients over ranks; the objective is a global sum / normaliser.
            self.engine.backward(loss / max(normaliser, 1e-12) * world)
            sums += torch.stack([loss.detach(), stats["clipped"], stats["ratio"], stats["tokens"]])
        if last:
            faults.maybe_kill("step", self.step + 1)
        self.engine.step()
        loss, clipped, ratio, tokens = all_reduce_sum(sums).tolist()
        grad_norm = self.engine.get_global_grad_norm()
        return {"loss": loss / max(normaliser, 1e-12), "clipped": clipped, "ratio": ratio, "tokens": tokens,
                "grad_norm": float("nan") if grad_norm is None else float(grad_norm)}

    def _train(self, results: list[GroupResult], kept: list[int], records: list[PromptRecord]) -> dict[str, Any]:
        cfg = self.cfg
        groups = [results[k] for k in kept]
        rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float64)
        adv = group_advantages(rewards, cfg.policy.advantage_scale, cfg.policy.advantage_eps).tolist()
        prompts: dict[int, EncodedPrompt] = {}
        chunks = [groups[i :: cfg.batch.mini_batches] for i in range(cfg.batch.mini_batches)]
        adv_of = {g.position: a for g, a in zip(groups, adv)}
        plans, normalisers = [], []
        for chunk in chunks:
            samples = [TrainSample(g.position, j, adv_of[g.position][j], g.prompt_len, c)
                       for g in chunk for j, c in enumerate(g.completions)]
            normalisers.append(sample_normaliser(len(samples), sum(s.trained_tokens for s in samples),
                                                 cfg.policy.averaging))
            # Zero-advantage responses add nothing to the gradient (no KL, no entropy): count them
            # in the normaliser, skip their compute.
            plan = self._plan([s for s in samples if s.advantage != 0.0])
            for row in plan:
                for s in row:
                    if s.group not in prompts:
                        prompts[s.group] = self._encode(records[s.group])
            plans.append(plan)
        mini = [self._micro_batches(plan, prompts) for plan in plans]
        for batches in mini:
            self._old_logprobs(batches)
        gap = torch.zeros(2, device=self.info.device)
        for batches in mini:
            for b in batches:
                valid = ~torch.isnan(b.engine_logprobs) & (b.batch.label_weights > 0)
                gap += torch.stack([(b.engine_logprobs - b.old_logprobs).abs()[valid].sum(), valid.sum().float()])
        gap_sum, gap_n = all_reduce_sum(gap).tolist()
        set_lr(self.engine, lr_at(self.step, cfg.trainer.max_steps, cfg.trainer.optim))
        updates = [self._update(batches, norm, last=i == len(mini) - 1)
                   for i, (batches, norm) in enumerate(zip(mini, normalisers))]
        tokens = sum(u["tokens"] for u in updates)
        self.samples_trained += sum(len(g.completions) for g in groups)
        return {
            "loss": sum(u["loss"] for u in updates) / len(updates),
            "grad_norm": updates[-1]["grad_norm"],
            "clip_fraction": sum(u["clipped"] for u in updates) / max(tokens, 1.0),
            "ratio_mean": sum(u["ratio"] for u in updates) / max(tokens, 1.0),
            "logprob_gap": gap_sum / max(gap_n, 1.0),
            "tokens_trained": int(tokens),
            "micro_steps": sum(len(b) for b in mini),
        }

    # -- one step ----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        started = time.perf_counter()
        indices = self.sampler.sample(self.step, cfg.batch.prompts_per_step)
        tiers = [self.sampler.tier(i) for i in indices]
        records = [self.records[i] for i in indices]
        seeds = [request_seed(cfg.rollout.seed, self.step, i) for i in indices]
        positions = list(range(info.rank, len(indices), info.world_size))
        local, failed, rollout_s, reward_s = self._rollout_share(records, positions, seeds, cfg.rollout.group_size,
                                                                 cfg.rollout.temperature)
        times = all_reduce_sum(torch.tensor([rollout_s, reward_s], device=info.device)) / info.world_size
        results, failures = self._gather(local, failed)
        for pos, reason in failures:
            self.sampler.exclude(indices[pos])
            self.skipped[f"prompt/{reason}"] += 1
        outcomes = [GroupOutcome(indices[r.position], r.rewards) for r in results]
        record: dict[str, Any] = {"step": self.step + 1, "lr": lr_at(self.step, cfg.trainer.max_steps, cfg.trainer.optim)}
        record.update(self.sampler.stats([tiers[r.position] for r in results], outcomes))
        record.update(self.sampler.update(outcomes))
        kept = self.sampler.select(outcomes, cfg.batch.prompts_per_step)
        record.update(self._rollout_metrics(results, outcomes, kept))
        train_started = time.perf_counter()
        record.update(self._train(results, kept, records) if kept else {"loss": 0.0, "grad_norm": 0.0})
        train_s = time.perf_counter() - train_started
        sync_started = time.perf_counter()
        self.sync(self.model, self.rollout_engine)
        sync_s = time.perf_counter() - sync_started
        self.step += 1
        step_s = time.perf_counter() - started
        record.update({
            "time/rollout_s": float(times[0]), "time/reward_s": float(times[1]), "time/train_s": train_s,
            "time/sync_s": sync_s, "step_time_s": step_s, "sync_fraction": sync_s / step_s,
            "samples_trained": self.samples_trained, "skipped": dict(self.skipped),
            "prompt_ids": [self.records[indices[r.position]].id for r in results],
        })
        return record

    def _rollout_metrics(self, results: list[GroupResult], outcomes: list[GroupOutcome], kept: list[int]) -> dict:
        completions = [c for r in results for c in r.completions]
        lengths = [len(c) for c in completions]
        rewards = [x for r in results for x in r.rewards]
        n = max(1, len(completions))
        threshold = self.cfg.curriculum.pass_threshold
        return {
            "prompts_rolled_out": len(results), "groups_kept": len(kept),
            "degenerate_fraction_trained": sum(outcomes[k].degenerate for k in kept) / max(1, len(kept)),
            "reward_mean": sum(rewards) / n, "pass_rate": sum(x >= threshold for x in rewards) / n,
            "format_ok_rate": sum(ok for r in results for ok in r.format_ok) / n,
            "repetition_rate": sum("repetition" in p for r in results for p in r.penalties) / n,
            "response_length_mean": sum(lengths) / n, "response_length_p95": _p95(lengths),
            "truncation_rate": sum(c.truncated for c in completions) / n,
            "forced_answer_rate": sum(c.forced for c in completions) / n,
        }

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Held-out mean reward and pass rate (greedy by default), per domain too."""
        cfg, info = self.cfg.eval, self.info
        records = self.eval_records
        seeds = [request_seed(self.cfg.rollout.seed + 1, self.step, i) for i in range(len(records))]
        positions = list(range(info.rank, len(records), info.world_size))
        local, _, _, _ = self._rollout_share(records, positions, seeds, cfg.samples, cfg.temperature)
        results, _ = self._gather(local, [])
        rewards = [x for r in results for x in r.rewards]
        threshold = self.cfg.curriculum.pass_threshold
        out = {"eval/reward": sum(rewards) / max(1, len(rewards)),
               "eval/accuracy": sum(x >= threshold for x in rewards) / max(1, len(rewards))}
        by_domain: dict[str, list[float]] = {}
        for r in results:
            by_domain.setdefault(records[r.position].domain, []).extend(r.rewards)
        out.update({f"eval/reward/{d}": sum(v) / len(v) for d, v in by_domain.items()})
        return out

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> None:
        cfg = self.cfg
        log.info("rlcs: world %d, params %s, %d prompts, P=%d, G=%d, steps %d -> %d", self.info.world_size,
                 {k: f"{v / 1e6:.2f}M" for k, v in self.params.items()}, len(self.records),
                 cfg.batch.prompts_per_step, cfg.rollout.group_size, self.step, cfg.trainer.max_steps)
        metrics = MetricsLogger(self.run_dir, cfg.logging, self.info.is_main, cfg, self.step, cfg.trainer.max_steps)
        nonfinite = 0
        try:
            if self.step == 0 and self.eval_records:
                metrics.log({"step": 0, **self.evaluate()})
            while self.step < cfg.trainer.max_steps:
                record = self.train_step()
                last = self.step == cfg.trainer.max_steps
                if self.eval_records and (last or (cfg.eval.every and self.step % cfg.eval.every == 0)):
                    record.update(self.evaluate())
                finite = math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
                nonfinite = 0 if finite else nonfinite + 1
                if self.step % cfg.trainer.log_every == 0 or last or not finite:
                    metrics.log(record)
                if nonfinite >= cfg.trainer.max_consecutive_nonfinite:
                    self.save()
                    raise NonFiniteLossError(f"{nonfinite} non-finite RL steps in a row (last at step {self.step})")
                if self.step % cfg.trainer.save_every == 0 or last:
                    self.save()
        finally:
            metrics.close()

    def close(self) -> None:
        self.scorer.close()
        self.sync.close()
        self.rollout_engine.close()


def run(cfg: RLConfig, run_dir: Path, info: DistInfo) -> None:
    runner = RLRunner(cfg, run_dir, info)
    try:
        runner.resume()
        runner.fit()
    finally:
        runner.close()
