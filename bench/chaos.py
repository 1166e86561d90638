"""Chaos: SIGKILL a tiny run at a random moment, resume it, and demand the uninterrupted run's metrics.

    python bench/chaos.py --out /tmp/chaos --trials 20                     # every stage
    python bench/chaos.py --out /tmp/chaos --trials 3 --stages pretrain,sft

Per stage (pretraining 2 ranks, SFT 2 ranks, RLCS with the HF engine 2 ranks, RLCS with vLLM 1 rank
on a text-only Glm4 policy): one uninterrupted reference run, then `--trials` runs that are each
SIGKILLed at a moment drawn uniformly over the reference's wall time — the launcher and every
worker at once, as a Slurm cgroup kill does — and rerun with resume=auto. A trial passes when the
resumed run exits 0 and every step's logged metrics equal the reference's (losses bitwise; timing
keys aside), no process of the killed run is left `--grace` seconds after the kill (the run's
children: vLLM engine, DataLoader and reward workers), none of the resumed run is left after it
exits, and every complete checkpoint the kill left passes its manifest. Prints a markdown table.
The data and policies are made here (synthetic, seeded); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.same_metrics import TIMING  # noqa: E402
from tests.trainer.launching import descendants, launch_command, launch_env, tagged_processes  # noqa: E402
from trainer.checkpoint import complete_steps  # noqa: E402
from trainer.manifest import check_share  # noqa: E402

STAGES = ("pretrain", "sft", "rl_hf", "rl_vllm")
COMMON = ["trainer.save_every=2", "trainer.keep_last=2", "logging.progress_bar=false", "logging.wandb_mode=disabled"]


@dataclass
class Stage:
    name: str
    script: str
    nproc: int
    overrides: list[str]


@dataclass
class Trial:
    kill_at_s: float
    steps_before_kill: int = 0  # metrics lines the killed run had logged
    finished_before_kill: bool = False
    left_after_kill: int = 0
    left_after_resume: int = 0
    left_names: list[str] = field(default_factory=list)  # command names of what was left, for diagnosis
    unreadable: list[str] = field(default_factory=list)
    resumed_ok: bool = False
    mismatches: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.resumed_ok and not self.mismatches and not self.left_after_kill
                and not self.left_after_resume and not self.unreadable)


def make_data(out: Path, stages: list[str]) -> dict[str, Path]:
    """Synthetic, seeded inputs of the stages asked for (made once per --out)."""
    from data_pipelines.shards import write_shards
    from data_pipelines.synthetic import make_interleaved_corpus, make_sft_records
    from tests.rl.helpers import save_policy, task_data, tiny_policy, warm_start

    data, d = out / "data", {}
    if "pretrain" in stages:
        d["shards"] = data / "pt" / "shards"
        if not (d["shards"] / "index.json").exists():
            docs = make_interleaved_corpus(data / "pt", num_docs=60, seed=0, text_words=(20, 120))
            write_shards(docs, data / "pt", d["shards"], samples_per_shard=10)
    if "sft" in stages:
        d["sft_train"], d["sft_eval"] = data / "sft" / "train.jsonl", data / "sft" / "eval.jsonl"
        if not d["sft_eval"].exists():
            make_sft_records(data / "sft", 96, seed=0, name="train.jsonl")
            make_sft_records(data / "sft", 8, seed=1, name="eval.jsonl")
    for name, text_only in (("rl_hf", False), ("rl_vllm", True)):
        if name in stages:
            d[f"{name}_train"] = data / "rl" / "train.jsonl"
            d[f"{name}_policy"] = data / f"policy_{name}"
            if not (d[f"{name}_policy"] / "config.json").exists():
                train, _ = task_data(data / "rl", n_train=48, n_eval=8)
                model, tok = tiny_policy(text_only=text_only)
                warm_start(model, tok, train, steps=60)  # right on some prompts: non-zero advantages
                save_policy(model, tok, d[f"{name}_policy"])
    return d


def stage_specs(d: dict[str, Path], out: Path) -> dict[str, Stage]:
    verifiers = [f"rewards.domain_verifiers.{k}=counting" for k in ("max", "min", "count")]
    rl = ["recipe=rlcs_tiny", "eval.path=null", "batch.prompts_per_step=6", "rollout.group_size=4",
          "rollout.max_new_tokens=16", "trainer.max_steps=6", *verifiers]
    specs = {
        "pretrain": Stage("pretrain", "pretrain.py", 2, [
            "recipe=pretrain_tiny", f"data.shards={d.get('shards')}", "data.packing.seq_len=256",
            "trainer.max_steps=8"]),
        "sft": Stage("sft", "sft.py", 2, [
            "recipe=sft_tiny", f"data.train={d.get('sft_train')}", f"data.eval={d.get('sft_eval')}",
            "data.records_per_shard=8", "data.packing.seq_len=512", "eval.every=4", "eval.generations=2",
            "eval.max_records=4", "eval.max_new_tokens=8", "trainer.max_steps=8"]),
        "rl_hf": Stage("rl_hf", "rl.py", 2, rl + [f"model.init={d.get('rl_hf_policy')}",
                                                  f"data.path={d.get('rl_hf_train')}"]),
        "rl_vllm": Stage("rl_vllm", "rl.py", 1, rl + [f"model.init={d.get('rl_vllm_policy')}",
                                                      f"data.path={d.get('rl_vllm_train')}", "rollout.engine=vllm",
                                                      f"rollout.sync_dir={out / 'sync'}"]),
    }
    for spec in specs.values():
        spec.overrides += COMMON
    return specs


def _start(spec: Stage, run: Path, tag: str, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        return subprocess.Popen(launch_command(spec.script, spec.overrides + [f"hydra.run.dir={run}"], spec.nproc),
                                env=launch_env(PONDER_CHAOS_TAG=tag), cwd=REPO, stdout=f, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, tag: str, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in tagged_processes(tag, "PONDER_CHAOS_TAG"):
            os.kill(pid, signal.SIGKILL)
        proc.wait()
        return -1


def _kill_job(proc: subprocess.Popen, nproc: int) -> None:
    """SIGKILL the launcher and its workers (torchrun's children; with one rank the launcher is the
    worker) at once, as a job kill reaches the processes a job script knows. Their own children
    (vLLM engine, DataLoader and reward workers) are left for the run's own lifetime rules."""
    targets = [proc.pid] + (descendants(proc.pid, recursive=False) if nproc > 1 else [])
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _strip(line: dict) -> dict:
    return {k: v for k, v in line.items() if not k.startswith(TIMING)}


def _compare(got: list[dict], want: list[dict]) -> list[str]:
    if [m["step"] for m in got] != [m["step"] for m in want]:
        return [f"steps {[m['step'] for m in got]} != {[m['step'] for m in want]}"]
    out = []
    for g, w in zip(got, want):
        g, w = _strip(g), _strip(w)
        out += [f"step {w['step']} {k}: {g.get(k)!r} != {w[k]!r}" for k in sorted(w.keys() | g.keys())
                if g.get(k) != w.get(k)]
    return out


def _unreadable(run: Path) -> list[str]:
    """Complete checkpoints whose files do not match their manifest, or without one."""
    root, bad = run / "checkpoints", []
    for step in complete_steps(root):
        path = root / f"step_{step}"
        problems = check_share(path) or ([] if (path / "MANIFEST.json").exists() else ["no manifest"])
        bad += [f"step_{step}: {p}" for p in problems]
    return bad


def _left(tag: str, grace_s: float, names: list[str] | None = None) -> int:
    deadline = time.monotonic() + grace_s
    while (left := tagged_processes(tag, "PONDER_CHAOS_TAG")) and time.monotonic() < deadline:
        time.sleep(0.25)
    for pid in left:  # count them, then clean up for the next trial
        if names is not None:
            try:
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
            except OSError:
                pass
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


def reference(spec: Stage, out: Path, timeout: float) -> tuple[list[dict], float]:
    run = out / spec.name / "reference"
    tag = uuid.uuid4().hex
    started = time.monotonic()
    rc = _finish(_start(spec, run, tag, out / spec.name / "reference.log"), tag, timeout)
    wall = time.monotonic() - started
    if rc != 0:
        raise SystemExit(f"{spec.name}: the reference run failed (exit {rc}); see {out / spec.name / 'reference.log'}")
    _left(tag, 5.0)
    return _metrics(run), wall


def trial(spec: Stage, out: Path, index: int, kill_at_s: float, want: list[dict], grace_s: float,
          timeout: float) -> Trial:
    run, log = out / spec.name / f"trial_{index}", out / spec.name / f"trial_{index}.log"
    result, tag = Trial(kill_at_s), uuid.uuid4().hex
    proc = _start(spec, run, tag, log)
    deadline = time.monotonic() + kill_at_s
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    result.finished_before_kill = proc.poll() is not None
    _kill_job(proc, spec.nproc)
    result.left_after_kill = _left(tag, grace_s, result.left_names)
    result.steps_before_kill = len(_metrics(run))
    result.unreadable = _unreadable(run)
    tag = uuid.uuid4().hex
    with log.open("a") as f:
        f.write(f"\n===== chaos: killed at {kill_at_s:.1f} s; resuming =====\n")
    result.resumed_ok = _finish(_start(spec, run, tag, log), tag, timeout) == 0
    result.left_after_resume = _left(tag, grace_s, result.left_names)
    result.mismatches = _compare(_metrics(run), want) if result.resumed_ok else ["resume failed"]
    return result


def table(results: dict[str, list[Trial]], walls: dict[str, float], specs: dict[str, Stage]) -> str:
    rows = ["| stage | ranks | reference wall (s) | trials | exact resume | left behind | unreadable checkpoints | "
            "kill moments (s) / steps logged before the kill |",
            "|---|---|---|---|---|---|---|---|"]
    for name, trials in results.items():
        moments = ", ".join(f"{t.kill_at_s:.0f}/{t.steps_before_kill}" for t in trials)
        exact = sum(t.resumed_ok and not t.mismatches for t in trials)
        left = sum(t.left_after_kill + t.left_after_resume for t in trials)
        rows.append(f"| {name} | {specs[name].nproc} | {walls[name]:.0f} | {len(trials)} | {exact}/{len(trials)} | "
                    f"{left} | {sum(len(t.unreadable) for t in trials)} | {moments} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds for a killed run's children to go")
    parser.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    specs = stage_specs(make_data(args.out, stages), args.out)
    rng = random.Random(args.seed)
    results: dict[str, list[Trial]] = {}
    walls: dict[str, float] = {}
    for name in stages:
        want, walls[name] = reference(specs[name], args.out, args.timeout)
        results[name] = []
        for i in range(args.trials):
            t = trial(specs[name], args.out, i, rng.uniform(0, walls[name]), want, args.grace, args.timeout)
            results[name].append(t)
            print(f"{name} trial {i}: kill at {t.kill_at_s:.1f} s after {t.steps_before_kill} steps -> "
                  f"{'PASS' if t.passed else 'FAIL'}" + ("" if t.passed else f" {t}"), flush=True)
    print(table(results, walls, specs))
    (args.out / "results.json").write_text(json.dumps(
        {n: [dict(vars(t), passed=t.passed) for t in ts] for n, ts in results.items()}, indent=1))
    return 0 if all(t.passed for ts in results.values() for t in ts) else 1


if __name__ == "__main__":
    sys.exit(main())
