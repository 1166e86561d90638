"""REPORT.md and plots of a demo run (launch/demo.py): one table of the held-out numbers after each
stage, and PNG plots of the training curves (loss per stage; RL reward, held-out accuracy, tier
counts and degenerate fraction over steps; held-out accuracy against prompts rolled out for
curriculum and uniform sampling)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGES = (("pretrain", "eval_pretrain"), ("sft", "eval_sft"), ("rlcs", "eval_rlcs"))
# Rows shown when their evaluation ran: uniform sampling from the same SFT checkpoint, as many prompts
# rolled out as RLCS (the demo's `--quick` variant skips it).
OPTIONAL_STAGES = (("uniform RL (from SFT, RLCS's rollouts)", "eval_rl_uniform"),)
TIERS = ("very_easy", "easy", "medium", "hard", "very_hard")
RL_RUNS = (("RLCS", "rlcs"), ("uniform", "rl_uniform"))  # label, run directory under the demo's output


def _metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _eval(out: Path, name: str, prompt_set: str = "eval") -> dict[str, Any] | None:
    """One prompt set's numbers of an eval step: the held-out set, or `eval_other_image`, the same
    prompts each shown another prompt's image (data_pipelines.visual_tasks.other_image_set)."""
    path = out / name / "eval.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["sets"].get(prompt_set)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def stages(out: Path) -> tuple[tuple[str, str], ...]:
    """(row name, eval step) of the report's rows: every stage, and the optional ones that ran."""
    return STAGES + tuple(row for row in OPTIONAL_STAGES if (out / row[1] / "eval.json").exists())


def table(out: Path) -> list[str]:
    lines = ["| after stage | greedy accuracy | sampled accuracy | pass@1 | pass@4 | pass@8 | format ok (sampled) "
             "| sampled accuracy, another prompt's image |",
             "|---|---|---|---|---|---|---|---|"]
    for stage, eval_name in stages(out):
        s, control = _eval(out, eval_name), _eval(out, eval_name, "eval_other_image")
        if s is None:
            lines.append(f"| {stage} | not evaluated |  |  |  |  |  |  |")
            continue
        greedy, sampled = s["greedy"]["all"], s["sampled"]["all"]
        lines.append(f"| {stage} | {_pct(greedy['accuracy'])} | {_pct(sampled['accuracy'])} | "
                     f"{_pct(sampled.get('pass@1'))} | {_pct(sampled.get('pass@4'))} | {_pct(sampled.get('pass@8'))} | "
                     f"{_pct(sampled['format_ok_rate'])} | {_pct(control['sampled']['all']['accuracy'] if control else None)} |")
    return lines


def domain_table(out: Path) -> list[str]:
    evals = {stage: _eval(out, name) for stage, name in stages(out)}
    domains = sorted({d for s in evals.values() if s for d in s["sampled"]["domains"]})
    lines = ["| domain | " + " | ".join(f"{stage} (sampled acc)" for stage in evals) + " |",
             "|---|" + "---|" * len(evals)]
    for d in domains:
        cells = [_pct(s["sampled"]["domains"].get(d, {}).get("accuracy")) if s else "—" for s in evals.values()]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return lines


def _series(lines: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(m["step"], m[key]) for m in lines if m.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_losses(out: Path, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, stage in zip(axes, ("pretrain", "sft", "rlcs")):
        steps, values = _series(_metrics(out / stage), "loss")
        ax.plot(steps, values)
        ax.set_title(f"{stage} loss")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_rl(out: Path, path: Path) -> None:
    rl = _metrics(out / "rlcs")
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.5))
    for ax, key, title in ((axes[0], "reward_mean", "rollout reward"), (axes[1], "eval/accuracy", "held-out accuracy"),
                           (axes[3], "degenerate_fraction_trained", "degenerate fraction (trained)")):
        ax.plot(*_series(rl, key), marker="." if key == "eval/accuracy" else None)
        ax.set_title(title)
        ax.set_xlabel("step")
    for tier in TIERS:
        axes[2].plot(*_series(rl, f"tier_count/{tier}"), label=tier)
    axes[2].set_title("sampled tier counts")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def accuracy_per_rollout(lines: list[dict]) -> tuple[list[int], list[float]]:
    """(prompts rolled out so far, held-out accuracy) at each evaluation, step 0 included."""
    rolled, xs, ys = 0, [], []
    for m in lines:
        rolled += m.get("prompts_rolled_out", 0)
        if m.get("eval/accuracy") is not None:
            xs.append(rolled)
            ys.append(m["eval/accuracy"])
    return xs, ys


def _learning_rate(run: Path) -> float | None:
    """The peak learning rate a run was configured with (<run>/config.yaml), if it wrote one."""
    path = run / "config.yaml"
    return yaml.safe_load(path.read_text())["trainer"]["optim"]["lr"] if path.exists() else None


def plot_curriculum(out: Path, path: Path) -> dict[str, float] | None:
    """Held-out accuracy against prompts rolled out, RLCS vs uniform; the gain per 1k prompts each."""
    runs = {label: _metrics(out / run) for label, run in RL_RUNS}
    if not runs["uniform"]:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    gains = {}
    for name, lines in runs.items():
        xs, ys = accuracy_per_rollout(lines)
        ax.plot(xs, ys, marker=".", label=name)
        gains[name] = (ys[-1] - ys[0]) / max(xs[-1], 1) * 1000 if len(xs) > 1 else 0.0
    ax.set_xlabel("prompts rolled out")
    ax.set_ylabel("held-out accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return gains


def write_report(out: Path, rl_steps: int, timings: dict[str, float]) -> Path:
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    plot_losses(out, plots / "loss.png")
    plot_rl(out, plots / "rl.png")
    gains = plot_curriculum(out, plots / "curriculum_vs_uniform.png")
    lines = ["# ponder demo: pretraining → SFT → RLCS on visual verifiable tasks", "",
             "Held-out set: the visual tasks' eval split (images), graded by the reward system. Accuracy in %; "
             "sampled = 8 responses per prompt at temperature 1; pass@k by the unbiased estimator. The last "
             "column asks the same questions with another prompt's image: a model that reads its images drops "
             "there, one that answers from the question alone does not.", "",
             *table(out), "", "Per domain:", "", *domain_table(out), "",
             "![losses](plots/loss.png)", "", f"RLCS over {rl_steps} steps (2 ranks, HF engine, image prompts):", "",
             "![rl](plots/rl.png)", ""]
    if gains:
        lines += ["Curriculum vs uniform sampling at the same rollout budget "
                  "(held-out accuracy gained per 1,000 prompts rolled out): "
                  + ", ".join(f"{k} {100 * v:+.2f} pts" for k, v in gains.items())
                  + (f" (ratio {gains['RLCS'] / gains['uniform']:.2f})" if gains["uniform"] > 0 else "")
                  + "; peak learning rates: " + ", ".join(f"{k} {_learning_rate(out / run)}" for k, run in RL_RUNS),
                  "",
                  "![curriculum](plots/curriculum_vs_uniform.png)", ""]
    lines += ["Wall time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
              + f"; total {sum(timings.values()):.0f}", ""]
    report = out / "REPORT.md"
    report.write_text("\n".join(lines))
    return report
