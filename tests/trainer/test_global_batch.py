"""trainer.global_batch: the batch a recipe states holds on any GPU count, or the run stops at start."""

from __future__ import annotations

import pytest

from stages.rl.config import RLBatchConfig, RLConfig
from stages.rl.rollout.base import RolloutConfig
from trainer.config import TrainerConfig


@pytest.mark.parametrize(("rows", "world", "accum"), [(1, 64, 24), (1, 8, 192), (2, 48, 16), (1, 1536, 1)])
def test_accumulation_is_derived_from_the_global_batch(rows, world, accum):
    assert TrainerConfig(global_batch=1536).accumulation(rows, world) == accum


def test_a_global_batch_that_does_not_divide_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match=r"global_batch=1536 is not a multiple of .* \(1\) x world size \(10\)"):
        TrainerConfig(global_batch=1536).accumulation(1, 10)


def test_grad_accum_alone_and_a_contradiction():
    assert TrainerConfig().accumulation(2, 4) == 1
    assert TrainerConfig(grad_accum=3).accumulation(2, 4) == 3
    assert TrainerConfig(global_batch=24, grad_accum=3).accumulation(2, 4) == 3
    with pytest.raises(ValueError, match="contradicts"):
        TrainerConfig(global_batch=32, grad_accum=3).accumulation(2, 4)


def test_rl_global_batch_counts_responses_per_optimizer_step():
    batch, rollout = RLBatchConfig(prompts_per_step=128, mini_batches=4), RolloutConfig(group_size=8)
    RLConfig(batch=batch, rollout=rollout, trainer=TrainerConfig(global_batch=256))
    with pytest.raises(ValueError, match="responses per optimizer step"):
        RLConfig(batch=batch, rollout=rollout, trainer=TrainerConfig(global_batch=1024))
    with pytest.raises(ValueError, match="grad_accum does not apply"):
        RLConfig(trainer=TrainerConfig(grad_accum=2))
