"""Curriculum sampling: tiers, merged pass rates, tier weights and schedules, domain mixing,
expansion EMA, balanced selection, and exact state restore."""

from __future__ import annotations

from collections import Counter

import pytest

from stages.rl.curriculum import (
    CurriculumConfig,
    CurriculumSampler,
    GroupOutcome,
    PromptMeta,
    ScheduleKnot,
    expansion_factor,
    select_balanced,
    tier_of,
    tier_weights_at,
)


def test_tiers_from_pass_rate():
    cfg = CurriculumConfig()
    got = {p: tier_of(p, cfg) for p in (1.0, 0.9, 0.89, 0.65, 0.64, 0.35, 0.34, 0.01, 0.0, None)}
    assert got == {1.0: "very_easy", 0.9: "very_easy", 0.89: "easy", 0.65: "easy", 0.64: "medium",
                   0.35: "medium", 0.34: "hard", 0.01: "hard", 0.0: "very_hard", None: "medium"}


def test_offline_online_and_human_labels_merge_by_count():
    prompts = [PromptMeta("a", "math"), PromptMeta("b", "math", "hard"), PromptMeta("c", "math", "very_hard"),
               PromptMeta("d", "math", 0.5)]
    s = CurriculumSampler(prompts, CurriculumConfig(), seed=0, offline={"a": (4, 8), "c": (8, 8)})
    assert s.pass_rate(0) == 0.5 and s.tier(0) == "medium"
    assert s.pass_rate(1) == pytest.approx(0.175) and s.tier(1) == "hard"  # a label counts as 8 samples
    assert s.pass_rate(2) == 0.5  # 8/8 graded + "very_hard" label (0 of 8)
    assert s.pass_rate(3) == 0.5
    s.update([GroupOutcome(0, [1.0] * 8)])  # online: 8 more passes
    assert s.pass_rate(0) == pytest.approx(12 / 16) and s.tier(0) == "easy"
    s.update([GroupOutcome(0, [0.9] * 8)])  # below pass_threshold 1.0: 8 failures
    assert s.pass_rate(0) == pytest.approx(12 / 24)
    # Decay 0.5: before each new group, earlier counts (offline too) are halved.
    d = CurriculumSampler(prompts, CurriculumConfig(pass_rate_decay=0.5), seed=0, offline={"a": (4, 8)})
    d.update([GroupOutcome(0, [1.0] * 8)])
    assert d.pass_rate(0) == pytest.approx((2 + 8) / (4 + 8))
    d.update([GroupOutcome(0, [0.0] * 8)])
    assert d.pass_rate(0) == pytest.approx((1 + 4 + 0) / (2 + 4 + 8)) and d.tier(0) == "medium"
    assert d.state_dict()["online"]["a"] == [4.0, 12.0, 2]
    latest = CurriculumSampler(prompts, CurriculumConfig(pass_rate_decay=0.0), seed=0, offline={"a": (8, 8)})
    latest.update([GroupOutcome(0, [1.0, 0.0, 0.0, 0.0])])
    assert latest.pass_rate(0) == 0.25 and latest.tier(0) == "hard"  # only the newest group counts
    with pytest.raises(ValueError, match="not a known tier"):
        CurriculumSampler([PromptMeta("x", "math", "impossible")], CurriculumConfig(), seed=0)


def test_expansion_ema_and_sample_count():
    cfg = CurriculumConfig()
    assert [expansion_factor(r, cfg) for r in (0.0, 0.5, 0.75, 0.8, 1.0)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    prompts = [PromptMeta(f"p{i}", "math") for i in range(100)]
    s = CurriculumSampler(prompts, cfg, seed=0)
    assert s.num_to_sample(16) == 16
    # Half the groups degenerate: raw 2, EMA 0.9 * 1 + 0.1 * 2 = 1.1, next draw ceil(16 * 1.1) = 18.
    stats = s.update([GroupOutcome(i, [1.0, 1.0] if i % 2 else [0.0, 1.0]) for i in range(16)])
    assert stats == {"expansion_raw": 2.0, "expansion_ema": pytest.approx(1.1), "degenerate_fraction_rollout": 0.5}
    assert s.num_to_sample(16) == 18 and len(s.sample(1, 16)) == 18
    s.update([GroupOutcome(i, [0.0, 0.0]) for i in range(16)])  # all degenerate: raw clipped to 4
    assert s.expansion_ema == pytest.approx(0.9 * 1.1 + 0.1 * 4)
    uniform = CurriculumSampler(prompts, CurriculumConfig(enabled=False), seed=0)
    uniform.update([GroupOutcome(i, [0.0, 0.0]) for i in range(16)])
    assert uniform.num_to_sample(16) == 16  # the baseline never expands


def test_balanced_selection_by_std_then_mean_then_order():
    groups = [GroupOutcome(0, [1, 1, 1, 1]), GroupOutcome(1, [1, 0, 1, 0]), GroupOutcome(2, [1, 1, 1, 0]),
              GroupOutcome(3, [0, 0, 0, 0]), GroupOutcome(4, [1, 0, 0, 0]), GroupOutcome(5, [1, 1, 0, 0])]
    # std: 0, .5, .433, 0, .433, .5; ties on std broken by |mean - 0.5| (both .25), then position.
    assert select_balanced(groups, 2) == [1, 5]
    assert select_balanced(groups, 3) == [1, 2, 5]
    assert select_balanced(groups, 4) == [1, 2, 4, 5]
    s = CurriculumSampler([PromptMeta(f"p{i}", "m") for i in range(6)], CurriculumConfig(), seed=0)
    assert s.select(groups, 3) == [1, 2, 5]
    off = CurriculumSampler([PromptMeta(f"p{i}", "m") for i in range(6)], CurriculumConfig(enabled=False), seed=0)
    assert off.select(groups, 3) == list(range(6))


def test_named_schedules_move_weight_between_the_easy_and_hard_sides_over_the_run():
    flat = CurriculumConfig()
    assert tier_weights_at(0, flat, 100) == tier_weights_at(99, flat, 100) == pytest.approx(
        {"very_easy": 0.05, "easy": 0.2, "medium": 0.5, "hard": 0.2, "very_hard": 0.05})
    up, down = CurriculumConfig(schedule="easy_to_hard"), CurriculumConfig(schedule="hard_first")
    # 101 steps: step 0 is the first knot, step 100 the last, step 50 halfway (weights sum to 1).
    assert tier_weights_at(0, up, 101) == pytest.approx(
        {"very_easy": 0.1, "easy": 0.35, "medium": 0.4, "hard": 0.1, "very_hard": 0.05})
    assert tier_weights_at(50, up, 101) == pytest.approx(
        {"very_easy": 0.075, "easy": 0.225, "medium": 0.4, "hard": 0.225, "very_hard": 0.075})
    assert tier_weights_at(100, up, 101) == tier_weights_at(0, down, 101)
    assert tier_weights_at(100, down, 101)["easy"] == pytest.approx(0.35)
    # The sampler lays the schedule over the run it is given.
    prompts = [PromptMeta(f"p{i}", "m") for i in range(500)]
    offline = {f"p{i}": ((8, 6, 4, 2, 0)[i % 5], 8) for i in range(500)}  # 100 per tier
    s = CurriculumSampler(prompts, CurriculumConfig(schedule="easy_to_hard", expansion=False), 0, offline, 10)
    first = Counter(s.tier(i) for _ in range(50) for i in s.sample(0, 8))
    last = Counter(s.tier(i) for _ in range(50) for i in s.sample(9, 8))
    assert first["easy"] / 400 == pytest.approx(0.35, abs=0.05) and first["hard"] / 400 == pytest.approx(0.1, abs=0.04)
    assert last["hard"] / 400 == pytest.approx(0.35, abs=0.05) and last["easy"] / 400 == pytest.approx(0.1, abs=0.04)
    for bad in ({"schedule": "steep"}, {"schedule": "knots"},
                {"tier_weight_schedule": [ScheduleKnot(0, {"easy": 1.0})]},
                {"schedule": "easy_to_hard", "tiers": ["a", "b"], "tier_bounds": [0.5], "tier_weights": {"a": 1},
                 "unknown_tier": "a"}):
        with pytest.raises(ValueError, match="schedule"):
            CurriculumConfig(**bad)


def test_tier_weights_schedule_and_renormalisation():
    cfg = CurriculumConfig(schedule="knots", tier_weight_schedule=[
        ScheduleKnot(0, {"easy": 1.0}), ScheduleKnot(10, {"hard": 3.0, "easy": 1.0})])
    assert tier_weights_at(0, cfg)["easy"] == 1.0
    mid = tier_weights_at(5, cfg)  # (1 - t) * {easy 1} + t * {easy 1, hard 3} at t = .5, normalised
    assert mid["easy"] == pytest.approx(1 / 2.5) and mid["hard"] == pytest.approx(1.5 / 2.5)
    assert tier_weights_at(99, cfg)["hard"] == pytest.approx(0.75)
    # Only easy (weight .2) and medium (.5) prompts exist: easy is drawn with probability 2/7.
    prompts = [PromptMeta(f"e{i}", "m") for i in range(50)] + [PromptMeta(f"m{i}", "m") for i in range(50)]
    offline = {**{f"e{i}": (7, 8) for i in range(50)}, **{f"m{i}": (4, 8) for i in range(50)}}
    s = CurriculumSampler(prompts, CurriculumConfig(expansion=False), seed=0, offline=offline)
    drawn = Counter(s.tier(i) for step in range(400) for i in s.sample(step, 4))
    assert drawn["easy"] / 1600 == pytest.approx(2 / 7, abs=0.03)
    # A tier that runs out within a step leaves its share to the others.
    few = CurriculumSampler(prompts[:2] + prompts[50:], CurriculumConfig(expansion=False), seed=0, offline=offline)
    assert len(set(few.sample(0, 40))) == 40


def test_domain_quotas_and_tier_within_domain():
    prompts = [PromptMeta(f"a{i}", "a") for i in range(40)] + [PromptMeta(f"b{i}", "b") for i in range(40)]
    cfg = CurriculumConfig(domain_weights={"a": 3.0, "b": 1.0}, expansion=False)
    s = CurriculumSampler(prompts, cfg, seed=0)
    for step in range(5):
        picked = s.sample(step, 8)
        assert Counter(prompts[i].domain for i in picked) == {"a": 6, "b": 2}
        assert len(set(picked)) == 8
    with pytest.raises(ValueError, match="without prompts"):
        CurriculumSampler(prompts, CurriculumConfig(domain_weights={"c": 1.0}), seed=0)


def test_state_round_trip_gives_the_same_future():
    prompts = [PromptMeta(f"p{i}", "ab"[i % 2]) for i in range(60)]
    a = CurriculumSampler(prompts, CurriculumConfig(), seed=3)
    for step in range(3):
        picked = a.sample(step, 8)
        a.update([GroupOutcome(i, [float((i + j) % 3 == 0) for j in range(4)]) for i in picked])
    a.exclude(5)
    b = CurriculumSampler(prompts, CurriculumConfig(), seed=99)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert [b.sample(s, 8) for s in range(3, 6)] == [a.sample(s, 8) for s in range(3, 6)]
    assert 5 not in {i for s in range(6, 20) for i in a.sample(s, 8)}
