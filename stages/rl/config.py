"""The RLCS stage's configuration: every default of rlcs.md is a field here or in the configs of
curriculum.py, loss.py and rollout/base.py (docs/rl.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from data_pipelines.processor import ProcessorConfig
from data_pipelines.prompt_columns import PromptLayout
from stages.rl.rewards import RewardConfig
from trainer.config import LoggingConfig, TrainerConfig
from trainer.model import ModelConfig

from .curriculum import CurriculumConfig
from .loss import PolicyLossConfig
from .rollout.base import RolloutConfig


@dataclass
class PromptDataConfig(PromptLayout):
    """Prompt records, and (PromptLayout) where their fields are: columns, domain, mc_to_blank."""

    path: str = ""  # JSONL or HF dataset of prompt records (docs/rl.md)
    image_root: Optional[str] = None  # image paths are relative to this; default: each record's file's folder
    difficulty: Optional[str] = None  # offline pass-rate sidecar; default: next to the data
    system_prompt: Optional[str] = None
    max_prompt_tokens: int = 4096  # longer prompts are skipped (counted)


@dataclass
class RLBatchConfig:
    prompts_per_step: int = 64  # P: groups trained on per step
    mini_batches: int = 1  # optimizer steps per rollout batch, each on a slice of the kept groups
    micro_tokens: int = 32768  # a micro-step is one packed row of at most this many tokens

    def __post_init__(self) -> None:
        if self.prompts_per_step < 1 or self.mini_batches < 1 or self.mini_batches > self.prompts_per_step:
            raise ValueError("batch: need prompts_per_step >= 1 and 1 <= mini_batches <= prompts_per_step")


@dataclass
class RLEvalConfig:
    path: Optional[str] = None  # held-out prompt records; None: no evaluation
    image_root: Optional[str] = None  # their image paths are relative to this; default: each record's file's folder
    every: int = 0  # evaluate after every N steps and the last (0: only the last, if path is set)
    samples: int = 1  # responses per prompt
    temperature: float = 0.0  # 0: greedy
    max_prompts: int = 512


@dataclass
class RLConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # model.init: the SFT checkpoint
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    policy: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    batch: RLBatchConfig = field(default_factory=RLBatchConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    resume: str = "auto"

    def __post_init__(self) -> None:
        responses = self.batch.prompts_per_step * self.rollout.group_size
        if self.trainer.global_batch is not None and self.trainer.global_batch * self.batch.mini_batches != responses:
            raise ValueError(f"trainer.global_batch={self.trainer.global_batch} responses per optimizer step, but "
                             f"batch.prompts_per_step x rollout.group_size / batch.mini_batches = {responses} / "
                             f"{self.batch.mini_batches}")
        if self.trainer.grad_accum not in (None, 1):
            raise ValueError("trainer.grad_accum does not apply to RL (micro-steps are packed per update): "
                             "use batch.mini_batches and batch.micro_tokens")
        longest = self.data.max_prompt_tokens + self.rollout.max_new_tokens + self.rollout.forced_answer_tokens + 2
        if self.batch.micro_tokens < longest:
            raise ValueError(f"batch.micro_tokens={self.batch.micro_tokens} cannot hold the longest sample "
                             f"(max_prompt_tokens + max_new_tokens + forced answer = {longest})")
        if self.rollout.engine == "vllm" and self.rollout.max_model_len < longest:
            raise ValueError(f"rollout.max_model_len={self.rollout.max_model_len} < longest sample {longest}")
