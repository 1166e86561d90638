"""Compare the jobs of a sweep: `python -m launch.compare <sweep dir> [--out DIR] [--metrics a,b]`.

Reads every job's metrics.jsonl (one JSON object per logged step) and config.yaml, names each job
by the config values that differ between the jobs (e.g. `trainer.optim.lr=0.002`), and writes
into <out> (default <sweep dir>/compare):
    compare.md   one row per job: final and mean value of each compared metric, tier mix
    curves.png   one panel per metric over steps, one line per job
    tiers.png    per job, side by side: the sampled tier histogram over steps (when logged)
Metrics compared by default, when present: reward, held-out accuracy, degenerate-group fraction;
otherwise loss (and eval loss).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# (panel title, key patterns in order of preference); the first key matching any pattern is used.
RL_PANELS = (
    ("reward", (r"^reward_mean$", r"^reward$", r"^(train/)?reward[^/]*$")),
    ("held-out accuracy", (r"^eval/accuracy$", r"^(eval|heldout|held_out)[/_]\w*acc")),
    ("degenerate-group fraction", (r"^degenerate_fraction$", r"^degenerate_fraction_rollout$", r"degenerate")),
)
FALLBACK_PANELS = (("loss", (r"^loss$",)), ("eval loss", (r"^eval_loss$", r"^eval/loss$")))
HISTOGRAM_PREFIXES = ("tier_count", "tier_hist", "tiers")


class SweepError(ValueError):
    pass


@dataclass
class Job:
    name: str  # the job's directory, relative to the sweep directory
    records: list[dict[str, Any]]
    config: dict[str, Any]
    bad_lines: int = 0
    label: str = ""
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}/"))
        return out
    return {prefix.rstrip("/"): tree}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_job(sweep_dir: Path, metrics_path: Path) -> Job:
    records, bad = [], 0
    for line in metrics_path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # e.g. a line cut short by a kill
            bad += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            bad += 1
            continue
        records.append(record)
    config_path = metrics_path.parent / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    job = Job(str(metrics_path.parent.relative_to(sweep_dir)), records, config or {}, bad)
    by_step: dict[str, dict[int, float]] = {}
    for record in records:  # a later line for the same step (after a resume) wins
        for key, value in _flatten(record).items():
            number = _number(value)
            if number is not None and key != "step":
                by_step.setdefault(key, {})[record["step"]] = number
    job.series = {key: sorted(points.items()) for key, points in by_step.items()}
    return job


def find_jobs(sweep_dir: Path) -> list[Job]:
    paths = sorted(p for p in sweep_dir.rglob("metrics.jsonl") if ".submitit" not in p.parts)
    if not paths:
        raise SweepError(f"no job under {sweep_dir} wrote a metrics.jsonl")
    jobs = [read_job(sweep_dir, p) for p in paths]
    jobs.sort(key=lambda j: (len(j.name), j.name))  # 0, 1, ..., 10 rather than 0, 1, 10, 2
    _label(jobs)
    return jobs


def _label(jobs: list[Job]) -> None:
    """Name each job by the config values that differ between the jobs."""
    flat = [_flatten(j.config) for j in jobs]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    for job, values in zip(jobs, flat):
        parts = [f"{k.replace('/', '.')}={values.get(k)}" for k in differing]
        job.label = ", ".join(parts) if parts else f"job {job.name}"
    seen: dict[str, int] = {}
    for job in jobs:
        seen[job.label] = seen.get(job.label, 0) + 1
    for job in jobs:
        if seen[job.label] > 1 and not job.label.startswith("job "):
            job.label = f"{job.label} (job {job.name})"


def choose_panels(jobs: list[Job], explicit: list[str] | None) -> list[tuple[str, str]]:
    """(title, metric key) of each panel."""
    keys = sorted({k for j in jobs for k in j.series})
    if explicit:
        missing = [k for k in explicit if k not in keys]
        if missing:
            raise SweepError(f"metrics {missing} are not logged by any job; logged: {keys}")
        return [(k, k) for k in explicit]

    def pick(panels):
        chosen = []
        for title, patterns in panels:
            for pattern in patterns:
                match = next((k for k in keys if re.search(pattern, k)), None)
                if match is not None:
                    chosen.append((title, match))
                    break
        return chosen

    return pick(RL_PANELS) or pick(FALLBACK_PANELS)


def histogram_prefix(jobs: list[Job]) -> str | None:
    for prefix in HISTOGRAM_PREFIXES:
        if any(k.startswith(prefix + "/") for j in jobs for k in j.series):
            return prefix
    return None


def _buckets(jobs: list[Job], prefix: str) -> list[str]:
    names: list[str] = []
    for job in jobs:  # in logged order (the tiers are logged easiest first)
        for record in job.records:
            for key in _flatten(record):
                if key.startswith(prefix + "/") and key[len(prefix) + 1:] not in names:
                    names.append(key[len(prefix) + 1:])
    return names


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def table(jobs: list[Job], panels: list[tuple[str, str]], hist: str | None) -> str:
    names = [t if t == k else f"{t} ({k})" for t, k in panels]
    header = ["job", "steps"] + [f"{n} final" for n in names] + [f"{n} mean" for n in names]
    if hist:
        header.append(f"{hist} share, all steps")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    buckets = _buckets(jobs, hist) if hist else []
    for job in jobs:
        last_step = max((r["step"] for r in job.records), default=0)
        finals = [job.series[k][-1][1] if job.series.get(k) else None for _, k in panels]
        means = [sum(v for _, v in job.series[k]) / len(job.series[k]) if job.series.get(k) else None
                 for _, k in panels]
        row = [job.label, str(last_step)] + [_fmt(v) for v in finals] + [_fmt(v) for v in means]
        if hist:
            totals = {b: sum(v for _, v in job.series.get(f"{hist}/{b}", [])) for b in buckets}
            grand = sum(totals.values()) or 1.0
            row.append(" ".join(f"{b} {100 * totals[b] / grand:.0f}%" for b in buckets))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(jobs: list[Job], panels: list[tuple[str, str]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, key) in zip(axes[0], panels):
        for job in jobs:
            points = job.series.get(key, [])
            steps, values = zip(*points) if points else ((), ())
            # every job gets a line (the same colour in every panel), even where it never logged the key
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3,
                    label=textwrap.fill(job.label, 90))
        ax.set_title(f"{title}\n({key})" if title != key else key)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    # Below the panels: schedule names can be long; bbox_inches="tight" makes room for it.
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8, frameon=False)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_histograms(jobs: list[Job], prefix: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    buckets = _buckets(jobs, prefix)
    ramp = matplotlib.colormaps["viridis"].resampled(max(2, len(buckets)))
    fig, axes = plt.subplots(1, len(jobs), figsize=(4.5 * len(jobs), 3.8), squeeze=False, sharey=True)
    for ax, job in zip(axes[0], jobs):
        steps = sorted({s for b in buckets for s, _ in job.series.get(f"{prefix}/{b}", [])})
        counts = [[dict(job.series.get(f"{prefix}/{b}", [])).get(s, 0.0) for s in steps] for b in buckets]
        totals = [sum(col) or 1.0 for col in zip(*counts)] if steps else []
        shares = [[c / t for c, t in zip(row, totals)] for row in counts]
        if steps:  # easiest to hardest as a colour ramp
            ax.stackplot(steps, shares, labels=buckets, colors=ramp(range(len(buckets))))
        ax.set_title(textwrap.fill(job.label, 50), fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel(f"{prefix} share")
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def compare(sweep_dir: Path, out: Path | None = None, metrics: list[str] | None = None) -> Path:
    """Write compare.md, curves.png and (when logged) tiers.png; returns the output directory."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SweepError(f"{sweep_dir} is not a directory")
    jobs = find_jobs(sweep_dir)
    panels = choose_panels(jobs, metrics)
    if not panels:
        raise SweepError(f"nothing to compare: no reward/accuracy/degenerate/loss metric in {sweep_dir}")
    hist = histogram_prefix(jobs)
    out = Path(out) if out is not None else sweep_dir / "compare"
    out.mkdir(parents=True, exist_ok=True)
    text = table(jobs, panels, hist)
    bad = {j.name: j.bad_lines for j in jobs if j.bad_lines}
    if bad:
        text += f"\nUnreadable metrics lines skipped: {bad}\n"
    (out / "compare.md").write_text(text)
    plot_curves(jobs, panels, out / "curves.png")
    if hist:
        plot_histograms(jobs, hist, out / "tiers.png")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <sweep dir>/compare)")
    parser.add_argument("--metrics", default=None, help="comma-separated metric keys (default: see module doc)")
    args = parser.parse_args(argv)
    try:
        out = compare(args.sweep_dir, args.out, args.metrics.split(",") if args.metrics else None)
    except SweepError as err:
        sys.exit(f"launch.compare: {err}")
    print((out / "compare.md").read_text(), end="")
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")


if __name__ == "__main__":
    main()
