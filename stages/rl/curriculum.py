"""Curriculum sampling (RLCS, docs/rl.md): difficulty tiers, per-iteration tier weights, domain
mixing, ratio-EMA expansion and balanced group selection.

Every rank holds an identical sampler (same data, same seed, same updates from all-gathered
results), so every rank draws the same prompts without communication. Its state (online pass
counts, expansion EMA, RNG) goes into checkpoints.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from data_pipelines.prompts import PromptRecord, read_sidecar
from trainer.logging import log

TIERS = ("very_easy", "easy", "medium", "hard", "very_hard")


@dataclass
class ScheduleKnot:
    step: int
    weights: dict[str, float]


# Named tier-weight schedules, what users sweep (`curriculum.schedule=easy_to_hard,flat,hard_first`).
# Knots sit at fractions of the run (0: the first step, 1: trainer.max_steps); weights are linear in
# between. Both ends keep medium the largest tier, as rlcs.md asks: the schedule only moves the
# down-weighted mass from the easy side to the hard side or back.
EASY_LEANING = {"very_easy": 0.1, "easy": 0.35, "medium": 0.4, "hard": 0.1, "very_hard": 0.05}
HARD_LEANING = {"very_easy": 0.05, "easy": 0.1, "medium": 0.4, "hard": 0.35, "very_hard": 0.1}
NAMED_SCHEDULES: dict[str, list[tuple[float, dict[str, float]]]] = {
    "flat": [],  # `tier_weights` throughout
    "easy_to_hard": [(0.0, EASY_LEANING), (1.0, HARD_LEANING)],
    "hard_first": [(0.0, HARD_LEANING), (1.0, EASY_LEANING)],  # the anti-curriculum control
}


@dataclass
class CurriculumConfig:
    enabled: bool = True  # False: uniform over prompts, no expansion, no selection (the baseline)
    tiers: list[str] = field(default_factory=lambda: list(TIERS))
    # Lower pass-rate bound of every tier but the last, easiest first: a prompt falls in the first
    # tier whose bound it reaches (p >= bound; a bound of 0 means p > 0: solved at least once).
    tier_bounds: list[float] = field(default_factory=lambda: [0.9, 0.65, 0.35, 0.0])
    tier_weights: dict[str, float] = field(default_factory=lambda: {
        "very_easy": 0.05, "easy": 0.2, "medium": 0.5, "hard": 0.2, "very_hard": 0.05})
    # How tier weights move over training: a name from NAMED_SCHEDULES, or "knots" for
    # `tier_weight_schedule` (piecewise linear in steps).
    schedule: str = "flat"
    tier_weight_schedule: list[ScheduleKnot] = field(default_factory=list)
    unknown_tier: str = "medium"  # prompts with no offline grade and no rollout yet
    domain_weights: dict[str, float] = field(default_factory=dict)  # empty: proportional to prompt counts
    pass_threshold: float = 1.0  # a response passes when its reward reaches this
    use_offline: bool = True  # start from the difficulty sidecar (+ human labels)
    use_online: bool = True  # update pass rates from every rollout group
    # Each time a prompt is rolled out, its earlier counts (offline and online) are multiplied by
    # this before the new group is added: 1 is rlcs.md's count-weighted mean of every outcome; < 1
    # makes tiers follow a policy that is changing (0.5: about the last two groups decide).
    pass_rate_decay: float = 1.0
    human_label_weight: float = 8.0  # a human label counts as this many graded samples
    human_tier_pass_rates: dict[str, float] = field(default_factory=lambda: {
        "very_easy": 0.95, "easy": 0.775, "medium": 0.5, "hard": 0.175, "very_hard": 0.0})
    expansion: bool = True
    expansion_ema_decay: float = 0.9
    expansion_min: float = 1.0
    expansion_max: float = 4.0
    balanced_selection: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in (*NAMED_SCHEDULES, "knots"):
            raise ValueError(f"curriculum.schedule={self.schedule!r}: one of {[*NAMED_SCHEDULES, 'knots']}")
        if (self.schedule == "knots") != bool(self.tier_weight_schedule):
            raise ValueError("curriculum.tier_weight_schedule is used with, and only with, curriculum.schedule=knots")
        if self.schedule in ("easy_to_hard", "hard_first") and list(self.tiers) != list(TIERS):
            raise ValueError(f"curriculum.schedule={self.schedule} is defined over the tiers {list(TIERS)}; "
                             "with other tiers use schedule=knots")
        if len(self.tier_bounds) != len(self.tiers) - 1 or list(self.tier_bounds) != sorted(self.tier_bounds, reverse=True):
            raise ValueError("curriculum.tier_bounds: one decreasing bound per tier but the last")
        for weights in [self.tier_weights, *(k.weights for k in self.tier_weight_schedule)]:
            unknown = set(weights) - set(self.tiers)
            if unknown or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError(f"curriculum tier weights {dict(weights)}: tiers {self.tiers}, >= 0, not all 0")
        steps = [k.step for k in self.tier_weight_schedule]
        if steps != sorted(set(steps)):
            raise ValueError("curriculum.tier_weight_schedule: knots need increasing steps")
        if self.unknown_tier not in self.tiers:
            raise ValueError(f"curriculum.unknown_tier {self.unknown_tier!r} not in {self.tiers}")
        if any(w < 0 for w in self.domain_weights.values()):
            raise ValueError("curriculum.domain_weights must be >= 0")
        if not 0 <= self.pass_rate_decay <= 1:
            raise ValueError("curriculum.pass_rate_decay must be in [0, 1]")
        if not 0 <= self.expansion_ema_decay < 1 or not 1 <= self.expansion_min <= self.expansion_max:
            raise ValueError("curriculum: need 0 <= expansion_ema_decay < 1 and 1 <= expansion_min <= expansion_max")


@dataclass(frozen=True)
class PromptMeta:
    """What the sampler knows of a prompt: id, domain, human label (pass rate or tier name)."""

    id: str
    domain: str
    label: float | str | None = None


@dataclass
class GroupOutcome:
    """One rolled-out group: its prompt's index (into the sampler's prompts) and rewards."""

    index: int
    rewards: list[float]

    @property
    def mean(self) -> float:
        return sum(self.rewards) / len(self.rewards)

    @property
    def std(self) -> float:
        m = self.mean
        return math.sqrt(sum((r - m) ** 2 for r in self.rewards) / len(self.rewards))

    @property
    def degenerate(self) -> bool:
        """All rewards equal (all right / all wrong): zero advantage, no gradient."""
        return max(self.rewards) - min(self.rewards) < 1e-9


def tier_of(pass_rate: float | None, cfg: CurriculumConfig) -> str:
    if pass_rate is None:
        return cfg.unknown_tier
    for name, bound in zip(cfg.tiers, cfg.tier_bounds):
        if (pass_rate >= bound) if bound > 0 else (pass_rate > 0):
            return name
    return cfg.tiers[-1]


def schedule_knots(cfg: CurriculumConfig, total_steps: int) -> list[ScheduleKnot]:
    """The schedule as step knots: a named one placed over `total_steps` (0 .. total_steps - 1)."""
    if cfg.schedule == "knots":
        return cfg.tier_weight_schedule
    last = max(1, total_steps - 1)
    return [ScheduleKnot(round(at * last), weights) for at, weights in NAMED_SCHEDULES[cfg.schedule]]


def tier_weights_at(step: int, cfg: CurriculumConfig, total_steps: int = 1) -> dict[str, float]:
    """The schedule's weights at 0-based `step` of `total_steps` (linear between knots, flat
    outside), normalised."""
    knots = schedule_knots(cfg, total_steps)
    if not knots:
        raw = dict(cfg.tier_weights)
    elif step <= knots[0].step:
        raw = dict(knots[0].weights)
    elif step >= knots[-1].step:
        raw = dict(knots[-1].weights)
    else:
        hi = next(i for i, k in enumerate(knots) if k.step > step)
        a, b = knots[hi - 1], knots[hi]
        t = (step - a.step) / (b.step - a.step)
        raw = {n: (1 - t) * a.weights.get(n, 0.0) + t * b.weights.get(n, 0.0) for n in cfg.tiers}
    full = {n: float(raw.get(n, 0.0)) for n in cfg.tiers}
    total = sum(full.values())
    return {n: w / total for n, w in full.items()}


def offline_counts(prompt: PromptMeta, graded: tuple[int, int] | None, cfg: CurriculumConfig) -> tuple[float, float]:
    """(passes, samples) known before training: the offline grades plus the human label, which
    counts as `human_label_weight` samples at its pass rate (a tier name: that tier's rate)."""
    passes, samples = (float(graded[0]), float(graded[1])) if graded else (0.0, 0.0)
    label = prompt.label
    if label is None:
        return passes, samples
    if isinstance(label, str):
        if label not in cfg.human_tier_pass_rates:
            raise ValueError(f"prompt {prompt.id}: difficulty label {label!r} is not a known tier")
        rate = cfg.human_tier_pass_rates[label]
    else:
        rate = float(label)
        if not 0 <= rate <= 1:
            raise ValueError(f"prompt {prompt.id}: difficulty {rate} is not a pass rate in [0, 1]")
    return passes + rate * cfg.human_label_weight, samples + cfg.human_label_weight


def select_balanced(groups: Sequence[GroupOutcome], keep: int) -> list[int]:
    """Positions of the `keep` most balanced groups (highest reward std; ties: mean closer to
    0.5, then earlier), in their original order."""
    order = sorted(range(len(groups)), key=lambda i: (-groups[i].std, abs(groups[i].mean - 0.5), i))
    return sorted(order[:keep])


def expansion_factor(degenerate_fraction: float, cfg: CurriculumConfig) -> float:
    """1 / (1 - r), clipped to [expansion_min, expansion_max] (r = 1 gives the max)."""
    raw = cfg.expansion_max if degenerate_fraction >= 1 else 1.0 / (1.0 - degenerate_fraction)
    return min(cfg.expansion_max, max(cfg.expansion_min, raw))


def _weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    names = sorted(n for n, w in weights.items() if w > 0)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def _quotas(total: int, weights: dict[str, float], rng: random.Random) -> dict[str, int]:
    """Split `total` slots by weight: floors, then the remainder by random draws on the fractions."""
    norm = sum(weights.values())
    exact = {k: total * w / norm for k, w in weights.items()}
    counts = {k: int(math.floor(v)) for k, v in exact.items()}
    fractions = {k: exact[k] - counts[k] for k in exact if exact[k] - counts[k] > 1e-12}
    for _ in range(total - sum(counts.values())):
        pick = _weighted_choice(rng, fractions)
        counts[pick] += 1
        fractions.pop(pick)
    return counts


class CurriculumSampler:
    def __init__(self, prompts: Sequence[PromptMeta], cfg: CurriculumConfig, seed: int,
                 offline: dict[str, tuple[int, int]] | None = None, total_steps: int = 1):
        """`offline`: id -> (passes, samples) from the difficulty sidecar; `total_steps`: the run's
        length, over which a named schedule is laid out."""
        if not prompts:
            raise ValueError("the curriculum needs at least one prompt")
        self.prompts, self.cfg, self.total_steps = list(prompts), cfg, total_steps
        self.rng = random.Random(seed)
        self.domains = sorted({p.domain for p in self.prompts})
        if cfg.domain_weights:
            missing = set(cfg.domain_weights) - set(self.domains)
            if missing:
                raise ValueError(f"curriculum.domain_weights names domains without prompts: {sorted(missing)}")
        self.offline = [offline_counts(p, (offline or {}).get(p.id), cfg) if cfg.use_offline else (0.0, 0.0)
                        for p in self.prompts]
        # index -> [passes, samples, groups]: online counts (decayed by pass_rate_decay per group)
        # and how many groups were rolled out, which is how often the offline counts were decayed.
        self.online: dict[int, list[float]] = {}
        self.excluded: set[int] = set()  # prompts that failed to encode (bad image, too long)
        self.expansion_ema = 1.0

    # -- pass rates and tiers ------------------------------------------------------------------
    def pass_rate(self, index: int) -> float | None:
        """Count-weighted mean of offline and online outcomes (older ones decayed by
        `pass_rate_decay`); None when nothing is known."""
        passes, samples = self.offline[index]
        on = self.online.get(index)
        if on is not None:
            scale = self.cfg.pass_rate_decay ** on[2]
            passes, samples = scale * passes + on[0], scale * samples + on[1]
        return passes / samples if samples > 0 else None

    def tier(self, index: int) -> str:
        return tier_of(self.pass_rate(index), self.cfg)

    def num_to_sample(self, prompts_per_step: int) -> int:
        wanted = prompts_per_step
        if self.cfg.enabled and self.cfg.expansion:
            wanted = math.ceil(prompts_per_step * self.expansion_ema - 1e-9)
        return min(wanted, len(self.prompts) - len(self.excluded))

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, step: int, prompts_per_step: int) -> list[int]:
        """Indices of the prompts to roll out at `step` (distinct within the step, shuffled)."""
        total = self.num_to_sample(prompts_per_step)
        if total <= 0:
            raise RuntimeError("no usable prompts left (every prompt failed to encode)")
        available = [i for i in range(len(self.prompts)) if i not in self.excluded]
        if not self.cfg.enabled:
            return self.rng.sample(available, total)
        buckets: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i in available:
            buckets[self.prompts[i].domain][self.tier(i)].append(i)
        if self.cfg.domain_weights:
            dw = {d: self.cfg.domain_weights.get(d, 0.0) for d in buckets}
        else:
            dw = {d: float(sum(len(v) for v in tiers.values())) for d, tiers in buckets.items()}
        dw = {d: w for d, w in dw.items() if w > 0}
        tw = tier_weights_at(step, self.cfg, self.total_steps)
        chosen: list[int] = []
        left = total
        while left > 0 and dw:
            quotas = _quotas(left, dw, self.rng)
            for domain in sorted(quotas):
                for _ in range(quotas[domain]):
                    tiers = buckets[domain]
                    weights = {t: tw[t] for t, members in tiers.items() if members and tw[t] > 0}
                    if not weights:  # only zero-weight tiers are left: take those uniformly
                        weights = {t: 1.0 for t, members in tiers.items() if members}
                    if not weights:
                        dw.pop(domain, None)  # domain exhausted: its slots go to the others
                        break
                    members = tiers[_weighted_choice(self.rng, weights)]
                    chosen.append(members.pop(self.rng.randrange(len(members))))
                    left -= 1
        self.rng.shuffle(chosen)
        return chosen

    # -- after rollout -------------------------------------------------------------------------
    def exclude(self, index: int) -> None:
        self.excluded.add(index)

    def update(self, groups: Sequence[GroupOutcome]) -> dict[str, float]:
        """Online pass rates and the expansion EMA from this iteration's rolled-out groups."""
        if self.cfg.use_online:
            decay = self.cfg.pass_rate_decay
            for g in groups:
                passes, samples, rolled = self.online.get(g.index, [0, 0, 0])
                self.online[g.index] = [decay * passes + sum(r >= self.cfg.pass_threshold for r in g.rewards),
                                        decay * samples + len(g.rewards), rolled + 1]
        frac = sum(g.degenerate for g in groups) / len(groups) if groups else 0.0
        raw = expansion_factor(frac, self.cfg)
        if self.cfg.enabled and self.cfg.expansion:
            decay = self.cfg.expansion_ema_decay
            self.expansion_ema = decay * self.expansion_ema + (1 - decay) * raw
        return {"expansion_raw": raw, "expansion_ema": self.expansion_ema, "degenerate_fraction_rollout": frac}

    def select(self, groups: Sequence[GroupOutcome], keep: int) -> list[int]:
        """Positions of the groups to train on: the `keep` most balanced, or all when the
        curriculum is off."""
        if not (self.cfg.enabled and self.cfg.balanced_selection) or len(groups) <= keep:
            return list(range(len(groups)))
        return select_balanced(groups, keep)

    def stats(self, sampled_tiers: Sequence[str], groups: Sequence[GroupOutcome]) -> dict[str, float]:
        """Tier histogram of the sampled prompts, pass rate per tier and mean reward per domain."""
        out: dict[str, float] = {}
        hist = Counter(sampled_tiers)
        for name in self.cfg.tiers:
            out[f"tier_count/{name}"] = hist.get(name, 0)
        by_tier, by_domain = defaultdict(list), defaultdict(list)
        for tier, g in zip(sampled_tiers, groups):
            by_tier[tier] += [r >= self.cfg.pass_threshold for r in g.rewards]
            by_domain[self.prompts[g.index].domain] += g.rewards
        for name, passes in by_tier.items():
            out[f"pass_rate/{name}"] = sum(passes) / len(passes)
        for domain, rewards in by_domain.items():
            out[f"reward/{domain}"] = sum(rewards) / len(rewards)
        return out

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {
            "rng": [version, list(internal), gauss],
            "online": {self.prompts[i].id: c for i, c in sorted(self.online.items())},
            "excluded": sorted(self.prompts[i].id for i in self.excluded),
            "expansion_ema": self.expansion_ema,
        }

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        index = {p.id: i for i, p in enumerate(self.prompts)}
        # Prompts gone from the data since the save are dropped; their counts cannot apply.
        self.online = {index[k]: list(v) for k, v in state["online"].items() if k in index}
        self.excluded = {index[k] for k in state["excluded"] if k in index}
        self.expansion_ema = float(state["expansion_ema"])


def sampler_for(records: Sequence[PromptRecord], cfg: CurriculumConfig, sidecar: str | Path, seed: int,
                total_steps: int) -> CurriculumSampler:
    """The run's sampler over `records`, with the offline grades of the difficulty sidecar."""
    graded = read_sidecar(sidecar)
    # The human label: the record's, else the one grading carried into the sidecar.
    meta = [PromptMeta(r.id, r.domain, r.difficulty if r.difficulty is not None
                       else getattr(graded.get(r.id), "human", None)) for r in records]
    offline = {k: (e.passes, e.samples) for k, e in graded.items()}
    log.info("%d prompts, %d with offline grades (%s)", len(records), len(offline.keys() & {m.id for m in meta}),
             sidecar)
    return CurriculumSampler(meta, cfg, seed, offline, total_steps)
