"""Reward throughput: rewards scored per second per core on a mixed-domain batch.

    .venv/bin/python bench/rewards.py [--items 2000] [--workers N]

Scores the same batch inline (one process, one core) and in a RewardPool of N workers, and prints
per-domain inline rates. Responses carry ~2k characters of reasoning, half of them right; math answers are drawn at random
so the verifier's cache of repeated answers does not flatter the math rate.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import defaultdict

from stages.rl.rewards import RewardConfig, RewardItem, RewardPool, score, score_batch


def _response(rng: random.Random, box: str) -> str:
    steps = " ".join(f"Step {i}: from the figure we read {rng.randint(1, 99)} and add {rng.randint(1, 99)}."
                     for i in range(40))
    return f"<think>{steps}</think><answer>The answer is <|begin_of_box|>{box}<|end_of_box|></answer>"


def mixed_batch(n: int, seed: int = 0) -> list[RewardItem]:
    rng = random.Random(seed)

    def fraction(ok: bool) -> RewardItem:
        a, b = rng.randint(1, 200), rng.randint(2, 200)
        box = f"\\frac{{{a}}}{{{b}}}" if ok else f"\\frac{{{a + 1}}}{{{b}}}"
        return RewardItem("math", _response(rng, box), f"{a / b:.6f}" if rng.random() < 0.5 else f"{a}/{b}")

    def radical(ok: bool) -> RewardItem:
        k, m = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7])
        box = f"{k}\\sqrt{{{m}}}" if ok else f"{k + 1}\\sqrt{{{m}}}"
        return RewardItem("math", _response(rng, box), f"\\sqrt{{{k * k * m}}}")

    makers = [
        fraction,
        radical,
        lambda ok: RewardItem("multiple_choice", _response(rng, "B. Paris" if ok else "C"), "B",
                              {"options": ["London", "Paris", "Rome", "Madrid"]}),
        lambda ok: RewardItem("counting", _response(rng, "7 apples" if ok else "about 8"), 7),
        lambda ok: RewardItem("ocr", _response(rng, "Total amount due: $1,234.56" if ok else "Total due: 1234"),
                              "Total amount due: $1,234.56"),
        lambda ok: RewardItem("chart", _response(rng, "45.5" if ok else "2018"), 45),
        lambda ok: RewardItem("grounding", _response(rng, "[[110,210,310,410]]" if ok else "[[0,0,50,50]]"),
                              [[100, 200, 300, 400]]),
        lambda ok: RewardItem("gui", _response(rng, '{"action_type": "click", "box_2d": [[105, 200, 300, 400]]}'
                                                if ok else '{"action_type": "scroll", "direction": "down"}'),
                              {"action_type": "click", "box_2d": [[100, 200, 300, 400]]}),
    ]
    return [makers[i % len(makers)](rng.random() < 0.5) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    config = RewardConfig()
    items = mixed_batch(args.items)

    score_batch(items[:16], config, num_workers=0)  # warm the sympy and regex caches
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    inline = []
    for item in items:  # inline, one process: timed per item so each domain gets its own rate
        start = time.perf_counter()
        inline.append(score(item.domain, item.response, item.ground_truth, config=config, **item.info))
        seconds[item.domain] += time.perf_counter() - start
        counts[item.domain] += 1
    inline_s = sum(seconds.values())
    print(f"inline (1 process): {len(items) / inline_s:8.1f} rewards/s/core  ({len(items)} items, {inline_s:.2f} s)")
    for domain in sorted(seconds):
        print(f"  {domain:16s} {counts[domain] / seconds[domain]:8.1f} rewards/s")

    with RewardPool(config, args.workers) as pool:
        pool.score_batch(items[:64])  # workers started and warm
        start = time.perf_counter()
        pooled = pool.score_batch(items)
        pool_s = time.perf_counter() - start
    rate = len(items) / pool_s
    print(f"pool ({args.workers} workers):  {rate:8.1f} rewards/s, {rate / args.workers:8.1f} rewards/s/core")
    assert pooled == inline, "pool and inline scores differ"
    print(f"mean reward {sum(r.reward for r in inline) / len(inline):.3f}")


if __name__ == "__main__":
    main()
