"""Adversarial responses through the reward pool (bench/reward_stress.py, small): every item gets a
result within the pool's bound, none crashes a worker for good, and honest items scored in the same
batch keep their exact rewards."""

from __future__ import annotations

import time

from bench.reward_stress import adversarial_items, report, stress
from stages.rl.rewards import RewardConfig, RewardItem, RewardPool, score

from .helpers import respond

CONFIG = RewardConfig(time_limit_s=2.0, kill_grace_s=0.5, worker_memory_mb=1024)  # 2 s: room on a shared CPU
HONEST = [RewardItem("math", respond("\\frac{1}{2}"), "0.5"), RewardItem("counting", respond("7 apples"), 7),
          RewardItem("multiple_choice", respond("B. Paris"), "B", {"options": ["London", "Paris"]})]


def test_adversarial_items_cover_every_kind_and_domain():
    pairs = adversarial_items(70, seed=1)
    assert {k for k, _ in pairs} == {"control_chars", "huge_number", "megabyte", "near_limits", "nested_latex",
                                     "pathological_regex"}
    assert len({it.domain for _, it in pairs}) >= 6
    assert max(len(it.response) for _, it in pairs) >= 1 << 20


def test_adversarial_batch_ends_in_bound_and_honest_items_keep_their_rewards():
    pairs = adversarial_items(48, seed=0, config=CONFIG)
    items = [it for _, it in pairs] + HONEST
    with RewardPool(CONFIG, num_workers=2) as pool:
        start = time.perf_counter()
        results = pool.score_batch(items)
        elapsed = time.perf_counter() - start
        assert pool.num_workers == 2
    assert elapsed < (CONFIG.time_limit_s + CONFIG.kill_grace_s) * len(items) / 2 + 5
    assert all(r is not None and 0.0 <= r.reward <= 1.0 for r in results[:48])  # OCR may give partial credit
    assert [r.reward for r in results[48:]] == [1.0, 1.0, 1.0]
    reasons = {r.reason.split(":")[0] for r in results[:48]}
    assert "response_too_long" in reasons  # 1 MB strings never reach a worker
    assert not reasons & {"verifier_error", "bad_item"}  # no verifier raised on them


def test_the_benchmark_reports_rate_and_hangs():
    result = stress(24, workers=2, config=CONFIG, chunk=12)
    assert result["hangs"] == 0 and result["rate"] > 0
    assert sum(sum(r.values()) for r in result["per_kind"].values()) == 24
    assert "| kind | items | timeouts | reasons |" in report(result, 2)


def test_huge_and_deep_answers_are_wrong_answers_not_verifier_errors():
    click = {"action_type": "click", "box_2d": [[1, 2, 3, 4]]}
    cases = [("counting", "1" * 6000, 7, "wrong:number_too_long"),
             ("grounding", "1" * 6000, [[1, 2, 3, 4]], "wrong:malformed_boxes(number too long)"),
             ("gui", "[" * 9000 + "1", click, "wrong:malformed_action(nested too deeply)")]
    for domain, box, truth, reason in cases:
        assert score(domain, respond(box), truth, config=CONFIG).reason == reason
