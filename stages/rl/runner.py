"""RLCS: reinforcement learning with curriculum sampling (GLM-4.1V-Thinking §5; docs/rl.md).

One step (`RLStage.plan`, then the shared `Trainer` update, then `RLStage.finish`):
  1. the curriculum draws ceil(P x expansion EMA) prompts (tier-within-domain, scheduled weights);
  2. each rank rolls out its share, G responses per prompt (forced answer at the length cap), and
     scores them; results are all-gathered;
  3. online pass rates and the expansion EMA are updated; the P most balanced groups are kept;
  4. group advantages; responses are dealt to ranks by length and packed into micro-steps;
  5. π_old is recomputed by the trainer's model; the trainer runs `mini_batches` clipped-surrogate
     updates (clip-higher, no KL, no entropy);
  6. the new weights are synced into every rank's rollout engine.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_pipelines.chat import ChatRenderer
from data_pipelines.processor import VisionProcessor
from data_pipelines.prompts import EncodedPrompt, PromptRecord, encode_prompt_record, encode_records, sidecar_path
from data_pipelines.records import RecordsNotFound, is_pattern
from data_pipelines.tokenizer import SpecialTokens, load_tokenizer
from trainer.checkpoint import resolve_hf_dir
from trainer.distributed import DistInfo, all_reduce_sum
from trainer.loop import StepPlan, Trainer, UpdateResult
from trainer.loss import batch_losses
from trainer.zero import zero3_loading_config
from trainer.sequence_parallel import pretraining_only

from .batching import PolicyMicroBatch, fill_old_logprobs, plan_updates
from .config import RLConfig
from .curriculum import GroupOutcome, sampler_for
from .groups import GroupResult, GroupRoller, gather_groups
from .loss import clipped_surrogate
from .metrics import eval_metrics, rollout_metrics, update_metrics
from .policy import load_policy
from .prompt_sets import load_gradable_prompts
from .rollout import build_rollout_engine
from .rollout.base import request_seed
from .scorer import Scorer
from .sync import WeightSync


@dataclass
class LoadedPrompts:
    """The training and held-out prompt records, read and checked before anything else loads."""

    records: list[PromptRecord]
    skipped: Counter
    eval_records: list[PromptRecord]

    @classmethod
    def load(cls, cfg: RLConfig) -> LoadedPrompts:
        for key, path, hint in (("data.path", cfg.data.path, ""),
                                ("eval.path", cfg.eval.path, "; eval.path=null runs no held-out evaluation")):
            # name the recipe key (the recipe's default may be the demo's); a glob's files: at load
            if path and not Path(path).exists() and not is_pattern(path):
                raise RecordsNotFound(f"{key}={path} not found (relative to {Path.cwd()}){hint}")
        records, skipped = load_gradable_prompts(cfg.data.path, cfg.data, cfg.rewards)
        held_out = (load_gradable_prompts(cfg.eval.path, cfg.data, cfg.rewards, cfg.eval.max_prompts)[0]
                    if cfg.eval.path else [])
        return cls(records, skipped, held_out)


class RLStage:
    """RLCS as a stage of `Trainer.fit`: rollouts, rewards, the curriculum and the micro-step plan."""

    name = "rlcs"
    eval_at_start = True

    def __init__(self, cfg: RLConfig, run_dir: Path, info: DistInfo, trainer: Trainer, hf_dir: Path,
                 prompts: LoadedPrompts):
        self.cfg, self.info, self.trainer = cfg, info, trainer
        self.tokenizer = trainer.tokenizer
        self.special = SpecialTokens.from_tokenizer(self.tokenizer)
        self.renderer = ChatRenderer(self.tokenizer, VisionProcessor(cfg.processor))
        self.records, self.eval_records = prompts.records, prompts.eval_records
        self.skipped: Counter = Counter({f"data/{k}": v for k, v in prompts.skipped.items()})
        # None: each record's media resolve in its own file's folder (the held-out set's next to it,
        # not next to the training prompts)
        self.image_root, self.eval_image_root = cfg.data.image_root, cfg.eval.image_root
        self.sampler = sampler_for(self.records, cfg.curriculum, cfg.data.difficulty or sidecar_path(cfg.data.path),
                                   cfg.trainer.seed, cfg.trainer.max_steps)
        self.evaluate = self._evaluate if self.eval_records else None
        self.eval_every = cfg.eval.every
        engine = build_rollout_engine(cfg.rollout, hf_dir, self.special, cfg.model, info, cfg.trainer.seed)
        self.roll_out = GroupRoller(engine, Scorer(cfg.rewards), cfg.rollout, self.tokenizer, self.special)
        self.sync = WeightSync(run_dir, info, cfg.rollout.sync_dir)
        self.progress = {"samples_trained": 0}
        self.prompts: dict[int, EncodedPrompt] = {}  # this step's encoded prompts by slot: each encoded once

    def describe(self) -> str:
        return (f"{len(self.records)} prompts, P={self.cfg.batch.prompts_per_step}, "
                f"G={self.cfg.rollout.group_size}, rollouts by the {self.roll_out.engine.name} engine")

    # -- one step --------------------------------------------------------------------------------
    def plan(self, step: int) -> StepPlan:
        cfg, info = self.cfg, self.info
        self.step_started = time.perf_counter()
        # 1. draw
        drawn = self.sampler.sample(step, cfg.batch.prompts_per_step)
        records = [self.records[i] for i in drawn]
        tiers = [self.sampler.tier(i) for i in drawn]
        seeds = [request_seed(cfg.rollout.seed, step, i) for i in drawn]
        # 2. roll out this rank's share, score, gather
        self.prompts = {}
        local, failed, rollout_s, reward_s = self._roll_out_share(records, seeds, cfg.rollout.group_size,
                                                                  cfg.rollout.temperature, self.image_root)
        self.roll_out.engine.sleep()  # the update gets the engine's memory; the weight sync wakes it
        times = all_reduce_sum(torch.tensor([rollout_s, reward_s], device=info.device)) / info.world_size
        results, failures = gather_groups(local, failed, info.world_size)
        for slot, reason in failures:
            self.sampler.exclude(drawn[slot])
            self.skipped[f"prompt/{reason}"] += 1
        # 3. curriculum: online pass rates, expansion, the most balanced groups
        outcomes = [GroupOutcome(drawn[r.slot], r.rewards) for r in results]
        metrics: dict[str, Any] = self.sampler.stats([tiers[r.slot] for r in results], outcomes)
        metrics.update(self.sampler.update(outcomes))
        kept = self.sampler.select(outcomes, cfg.batch.prompts_per_step)
        metrics.update(rollout_metrics(results, outcomes, kept, cfg.curriculum.pass_threshold))
        metrics.update({"time/rollout_s": float(times[0]), "time/reward_s": float(times[1]),
                        "skipped": dict(self.skipped), "prompt_ids": [records[r.slot].id for r in results]})
        # 4-5. advantages, micro-steps, π_old
        self.train_started = time.perf_counter()
        if not kept:
            return StepPlan([], 0, metrics)
        trained = [results[k] for k in kept]
        updates = plan_updates(trained, cfg, info, lambda slot: self._prompt(records, slot), self.special.eos)
        micro = [b for u in updates for b in u.micro_batches]
        fill_old_logprobs(self.trainer.ds, [b for u in updates[1:] for b in u.micro_batches])
        metrics["micro_steps"] = len(micro)
        self.progress["samples_trained"] += sum(len(g.completions) for g in trained)
        real = [b for b in micro if b.advantages.any()]  # not the empty rows that keep ranks in step
        tokens = all_reduce_sum(torch.tensor([float(sum(b.batch.num_tokens for b in real))], device=info.device))
        return StepPlan(updates, int(tokens.item()), metrics)

    def loss(self, ds, micro: PolicyMicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ weight · clipped surrogate over the micro-step's trained tokens; stats: clipped tokens,
        Σ ratio, tokens, and Σ |log π_engine − log π_old| with its token count where π_old is this
        forward (the step's first update)."""
        pol = self.cfg.policy
        logp = -batch_losses(ds, micro.batch)
        own = micro.old_logprobs is None
        old = logp.detach() if own else micro.old_logprobs
        loss, stats = clipped_surrogate(logp, old, micro.advantages, micro.batch.label_weights,
                                        pol.eps_low, pol.eps_high)
        gap = torch.zeros(2, device=logp.device)
        if own:
            valid = ~torch.isnan(micro.engine_logprobs) & (micro.batch.label_weights > 0)
            gap = torch.stack([(micro.engine_logprobs - old).abs()[valid].sum(), valid.sum().float()])
        return loss, torch.cat([torch.stack([stats["clipped"], stats["ratio"], stats["tokens"]]), gap])

    def finish(self, record: dict[str, Any], results: list[UpdateResult]) -> None:
        """6. sync the updated weights into the rollout engine."""
        if results:
            record.update(update_metrics(results))
        record["time/train_s"] = time.perf_counter() - self.train_started
        started = time.perf_counter()
        self.sync(self.trainer.model, self.roll_out.engine)
        sync_s = time.perf_counter() - started
        record.update({"time/sync_s": sync_s, "sync_fraction": sync_s / (time.perf_counter() - self.step_started),
                       "samples_trained": self.progress["samples_trained"], **self._images_seen()})

    def _images_seen(self) -> dict[str, int]:
        """Images that reached the rollout engine and the trained model's vision tower, all ranks."""
        seen = torch.tensor([float(self.roll_out.engine.images_seen), float(self.trainer.ds.module.images_seen)],
                            device=self.info.device)
        rollout, train = all_reduce_sum(seen).tolist()
        return {"images/rollout": int(rollout), "images/train": int(train)}

    # -- prompts and rollouts --------------------------------------------------------------------
    def _prompt(self, records: list[PromptRecord], slot: int) -> EncodedPrompt:
        """The slot's prompt, encoded at most once per step (rollout or training, on any rank)."""
        if slot not in self.prompts:
            data = self.cfg.data
            self.prompts[slot] = encode_prompt_record(records[slot], self.renderer, self.image_root,
                                                      data.system_prompt, data.max_prompt_tokens)
        return self.prompts[slot]

    def _roll_out_share(self, records: list[PromptRecord], seeds: list[int], n: int, temperature: float,
                        image_root: str | None) -> tuple[list[GroupResult], list[tuple[int, str]], float, float]:
        """This rank's slots rolled out and scored: (groups, failed (slot, reason), rollout s, reward s)."""
        data = self.cfg.data
        mine, failed = encode_records(records, range(self.info.rank, len(records), self.info.world_size), self.renderer,
                                      image_root, data.system_prompt, data.max_prompt_tokens,
                                      self.roll_out.engine.takes_videos)
        self.prompts.update(mine)
        results, rollout_s, reward_s = self.roll_out(mine, records, seeds, n, temperature)
        return results, failed, rollout_s, reward_s

    # -- evaluation, state -----------------------------------------------------------------------
    def _evaluate(self) -> dict[str, float]:
        cfg, records = self.cfg, self.eval_records
        self.prompts = {}
        seeds = [request_seed(cfg.rollout.seed + 1, self.trainer.step, i) for i in range(len(records))]
        local, failed, _, _ = self._roll_out_share(records, seeds, cfg.eval.samples, cfg.eval.temperature,
                                                   self.eval_image_root)
        results, failed = gather_groups(local, failed, self.info.world_size)
        if not results:  # an accuracy of 0 over no prompt would read as a policy that learned nothing
            reasons = Counter(reason for _, reason in failed)
            raise ValueError(f"none of the {len(records)} held-out prompts of eval.path={cfg.eval.path} could be "
                             f"used ({dict(reasons)}); their images are looked up under "
                             f"{self.eval_image_root or 'the folder of its file'} (set eval.image_root)")
        return {**eval_metrics(results, records, cfg.curriculum.pass_threshold), "eval/prompts": len(results),
                "eval/prompts_skipped": len(failed)}

    def log_stats(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.sync(self.trainer.model, self.roll_out.engine)  # the engine started from model.init

    def close(self) -> None:
        self.roll_out.close()
        self.sync.close()


def run(cfg: RLConfig, run_dir: Path, info: DistInfo) -> None:
    pretraining_only(cfg.trainer.sequence_parallel_size, "RL")
    if not cfg.model.init:
        raise ValueError("RL starts from a trained policy: set model.init=<SFT checkpoint or HF directory>")
    if not cfg.data.path:
        raise ValueError("set data.path to the prompt records (JSONL or HF dataset)")
    prompts = LoadedPrompts.load(cfg)  # bad prompt sets stop here, before the policy loads
    torch.manual_seed(cfg.trainer.seed)
    hf_dir = resolve_hf_dir(cfg.model.init)
    policy = load_policy(hf_dir, cfg.model.dtype, cfg.model.attn_implementation,
                         zero3_loading_config(cfg.trainer, info))
    trainer = Trainer(cfg.trainer, cfg.logging, run_dir, info, policy, load_tokenizer(hf_dir), micro_rows=1, grad_accum=None,
                      run_config=cfg)
    stage = RLStage(cfg, run_dir, info, trainer, hf_dir, prompts)
    try:
        trainer.fit(stage, cfg.resume)
    finally:
        stage.close()
