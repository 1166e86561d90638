"""Rewards for decoded responses, as the RL stage and offline grading call them."""

from __future__ import annotations

from stages.rl.rewards import RewardConfig, RewardItem, RewardPool, RewardResult, score_batch


class Scorer:
    """Rewards for decoded responses: a pool of workers per rank, or inline (num_workers=0)."""

    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        self.pool = RewardPool(cfg) if cfg.num_workers != 0 else None

    def __call__(self, items: list[RewardItem]) -> list[RewardResult]:
        if self.pool is not None:
            return self.pool.score_batch(items)
        return score_batch(items, self.cfg, num_workers=0)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
