"""`make demo` / `python launch/demo.py [--out runs/demo] [--quick]`: the three stages on one story.

On a 2-core CPU, with the tiny Glm4v and the visual verifiable tasks (data_pipelines/visual_tasks.py):
make the data, pretrain (2 ranks), evaluate, SFT, evaluate, grade difficulty, RLCS with image
prompts (2 ranks, HF engine), evaluate; then RL with uniform sampling at RLCS's rollout budget, and
its evaluation; then write <out>/REPORT.md with a table (stage x held-out accuracy, pass@k, format
compliance) and PNG plots. Every step is a real command of the README
(printed before it runs); each one's output lands in <out>/<step>/. Run it again and finished steps
are skipped, an interrupted training step resumes from its last checkpoint (resume=auto, a fifth
of its steps apart), and a step that runs again (its output deleted, or never finished) makes every
later step that reads it run again too.
`--quick` is the test suite's shortened variant: fewer records and steps, same path.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import GrammarParseError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launch.demo_report import write_report  # noqa: E402
from launch.job import hydra_quote as q  # noqa: E402
from trainer import lifetime  # noqa: E402
from trainer.manifest import write_text_atomic  # noqa: E402


@dataclass(frozen=True)
class Budget:
    """Sizes of one demo run: records per split and steps per stage."""

    # The tasks and levels the ~1M-parameter model can learn on CPU in minutes (OCR and grounding
    # stay at 0 at this size, also after the vision fix: bench/RESULTS.md); every stage uses the same ones.
    # Levels 1-2 (2-5 shapes of 2-3 colours): RLCS gained +11.6 to +19.2 over five seeds (mean
    # +16.4); at levels 1-3, +9.7 to +12.3 (mean +11.3). The 2-layer model does not count at any
    # level (its count answers score about the same with another prompt's image); RL gains most by
    # sharpening the majority colour, which it reads better among fewer shapes (bench/RESULTS.md).
    tasks: str = "visual_count,visual_majority"
    levels: str = "1-2"
    train_records: int = 1000  # pretraining documents and SFT records
    rl_records: int = 400  # RL prompts (graded with k samples each)
    eval_records: int = 96  # held-out prompts
    grade_k: int = 4
    pretrain_steps: int = 150
    sft_steps: int = 300
    rl_steps: int = 80
    rl_eval_every: int = 16
    # SFT's in-run evaluation, for its log (the report's rows come from the eval steps): held-out
    # loss on this many records, and format compliance of this many greedy answers
    sft_eval_records: int = 32
    sft_eval_generations: int = 16
    uniform: bool = True  # also RL with uniform sampling at the same rollout budget
    saves: int = 5  # checkpoints per training stage: where a rerun after a kill resumes
    # The demo's tasks answer in at most 35 tokens (SFT records, end token included); a batch of
    # sampled responses runs until its longest stops, so a tighter cut makes rollouts faster. The
    # quick variant's barely trained policies never stop early: it cuts them at 32.
    max_new_tokens: int = 48

    @property
    def lengths(self) -> list[str]:
        return ["data.max_prompt_tokens=64", f"rollout.max_new_tokens={self.max_new_tokens}",
                "rollout.forced_answer_tokens=16", "rollout.max_model_len=192"]


FULL = Budget()
QUICK = Budget(train_records=100, rl_records=40, eval_records=16, grade_k=2, pretrain_steps=4, sft_steps=6,
               rl_steps=3, rl_eval_every=3, sft_eval_records=8, sft_eval_generations=4, uniform=False,
               saves=1, max_new_tokens=32)

PROMPTS_PER_STEP = 16  # P: groups trained per RL step
# Every training step of the demo: the ~1M-parameter model's states fit on each rank many times
# over, and without ZeRO-3's parameter gathers an RL update takes half the time (0.73 against
# 1.40 s per step, bench/RESULTS.md). The 9B recipes keep ZeRO-3; tests/rl/test_rl_images.py
# runs this RL path under it.
TINY_MODEL = ["trainer.zero_stage=0"]
# Both RL runs (bench/RESULTS.md, "RL settings tried"; uniform's lr below): the vision tower
# frozen, Dr. GRPO advantages (not divided by the group std), 20 warmup steps (without warmup,
# 5e-4 collapsed; after 10, one RL seed of ten broke right after the warmup) to lr 4e-4, cosine
# decay to 4e-5 over `Budget.rl_steps` (60 steps at 6e-4 gained 4.6 to 13.8 points over seeds and
# hosts, and lowered greedy accuracy; 100 at 4e-4 held it; at levels 1-2, 80 steps gained more
# than 100 on average, +16.4 against +15.0 over five seeds: the last 20 of 100 lowered held-out
# accuracy in three). RLCS draws 70% of its prompts from the medium tier (the default 50%; at
# levels 1-3 it gained +9.7 to +12.3 over five seeds, mean +11.3, where the default weights gave
# +4.6 to +14.7, mean +10.5; at levels 1-2 and 100 steps, seed 0: +14.1 against +6.1).
RL_SETTINGS = ["trainer.freeze_vision=true", "policy.advantage_scale=none", "trainer.optim.lr=4e-4",
               "trainer.optim.warmup_steps=20", "trainer.optim.schedule=cosine", "trainer.optim.min_lr_ratio=0.1",
               *(f"curriculum.tier_weights.{tier}={weight}" for tier, weight in
                 {"very_easy": 0.05, "easy": 0.15, "medium": 0.7, "hard": 0.1, "very_hard": 0.0}.items())]
# Uniform sampling's own learning rate: at 6e-4 it collapsed by step 20 (its batches hold few groups
# that carry a gradient); at 2e-4 it gained 12.6 points.
UNIFORM_LR = "trainer.optim.lr=2e-4"


@dataclass
class Step:
    name: str
    done: Callable[[], bool]
    commands: Callable[[], list[list[str]]]  # built when the step runs (it may read earlier steps' output)
    outputs: tuple[Path, ...] = ()  # removed when an earlier step it reads from runs again
    feeds_later: bool = True  # later steps read its output (an evaluation's only the report does)
    resumes: bool = False  # run again after a kill, it goes on from its output (training, grading)


def python() -> list[str]:
    return [sys.executable]


def torchrun(script: str, overrides: list[str], nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(REPO / "launch" / script), *overrides]


def finished(run_dir: Path, steps: int) -> bool:
    return (run_dir / "checkpoints" / f"step_{steps}" / "COMPLETE").exists()


def save_every(steps: int, b: Budget) -> str:
    return f"trainer.save_every={max(1, -(-steps // b.saves))}"


def graded(run: Path, sidecar: Path) -> bool:
    """A grading that finished: grade.py writes its counts (grade.json) last. A killed one holds the
    chunks graded so far in the sidecar (appended 64 prompts at a time), and no grade.json."""
    return sidecar.exists() and (run / "grade.json").exists()


def evaluated(run: Path) -> bool:
    """An evaluation that wrote its report and evaluated a prompt of every set (eval.py writes the
    report of a run with an empty set too, then fails)."""
    try:
        return all(s["evaluated"] for s in json.loads((run / "eval.json").read_text())["sets"].values())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def plan(out: Path, b: Budget) -> list[Step]:
    data = out / "data"
    vis = [sys.executable, "-m", "data_pipelines.visual_tasks", "--tasks", b.tasks, "--difficulty", b.levels]
    rl_train, rl_eval = data / "rl" / "train.jsonl", data / "rl" / "eval.jsonl"
    control = data / "rl" / "eval_other_image.jsonl"  # the held-out prompts, each with another one's image
    pretrain, sft, rl, uniform = out / "pretrain", out / "sft", out / "rlcs", out / "rl_uniform"
    sidecar, sft_final = rl_train.with_name("train.difficulty.jsonl"), sft / "checkpoints" / f"step_{b.sft_steps}"
    steps = [
        Step("data", lambda: (data / "shards" / "index.json").exists(), outputs=(data,), commands=lambda: [
            vis + ["--out", str(data), "--num", str(b.train_records), "--seed", "0", "--stage", "pretrain"],
            vis + ["--out", str(data), "--num", str(b.train_records), "--seed", "0", "--stage", "sft"],
            vis + ["--out", str(data), "--num", str(b.rl_records), "--seed", "0", "--stage", "rl"],
            vis + ["--out", str(data), "--num", str(b.eval_records), "--seed", "1", "--split", "eval", "--stage", "all",
                   "--other-image-control"],
            [sys.executable, "-m", "data_pipelines.shards", "write", "--input", str(data / "pretrain" / "train.jsonl"),
             "--image-root", str(data / "pretrain"), "--out", str(data / "shards"), "--samples-per-shard", "50",
             "--overwrite"]]),
        Step("pretrain", lambda: finished(pretrain, b.pretrain_steps), outputs=(pretrain,), resumes=True,
             commands=lambda: [torchrun("pretrain.py", [
                "recipe=pretrain_tiny", f"data.shards={q(data / 'shards')}", "data.packing.seq_len=512",
                f"trainer.max_steps={b.pretrain_steps}", save_every(b.pretrain_steps, b),
                "trainer.optim.warmup_steps=5", *TINY_MODEL, f"hydra.run.dir={q(pretrain)}"])]),
        eval_step(out, b, "eval_pretrain", pretrain / "checkpoints" / f"step_{b.pretrain_steps}", rl_eval, control),
        Step("sft", lambda: finished(sft, b.sft_steps), outputs=(sft,), resumes=True, commands=lambda: [
            torchrun("sft.py", [
                "recipe=sft_tiny", f"model.init={q(pretrain)}", f"data.train={q(data / 'sft' / 'train.jsonl')}",
                f"data.eval={q(data / 'sft' / 'eval.jsonl')}", "data.records_per_shard=16", "data.packing.seq_len=512",
                f"trainer.max_steps={b.sft_steps}", save_every(b.sft_steps, b),
                f"eval.every={b.sft_steps}", f"eval.max_records={b.sft_eval_records}",
                f"eval.generations={b.sft_eval_generations}",
                f"eval.max_new_tokens={b.max_new_tokens}", *TINY_MODEL,
                f"hydra.run.dir={q(sft)}"])]),
        eval_step(out, b, "eval_sft", sft_final, rl_eval, control),
        Step("grade", lambda: graded(out / "grade", sidecar), outputs=(sidecar, out / "grade"), resumes=True,
             commands=lambda: [python() + [
                 str(REPO / "launch" / "grade.py"), "recipe=grade_tiny", f"model.init={q(sft_final)}",
                 f"data.path={q(rl_train)}", f"k={b.grade_k}", *b.lengths, f"hydra.run.dir={q(out / 'grade')}"]]),
        rl_step("rlcs", rl, sft_final, rl_train, rl_eval, b, lambda: b.rl_steps, []),
        eval_step(out, b, "eval_rlcs", rl / "checkpoints" / f"step_{b.rl_steps}", rl_eval, control),
    ]
    if b.uniform:
        # The same rollout budget: as many prompts rolled out as RLCS (whose expansion draws more per step).
        steps.append(rl_step("rl_uniform", uniform, sft_final, rl_train, rl_eval,
                             b, lambda: steps_for_prompts(rl, PROMPTS_PER_STEP),
                             ["curriculum.enabled=false", UNIFORM_LR]))
        steps.append(eval_step(out, b, "eval_rl_uniform", uniform, rl_eval, control))  # the run dir: its latest
    return steps


def steps_for_prompts(rl_run: Path, prompts_per_step: int) -> int:
    """Steps in which a run drawing `prompts_per_step` prompts rolls out as many as `rl_run` did."""
    rolled = sum(json.loads(line).get("prompts_rolled_out", 0)
                 for line in (rl_run / "metrics.jsonl").read_text().splitlines() if line.strip())
    return max(1, round(rolled / prompts_per_step))


def rl_step(name: str, run: Path, init: Path, train: Path, held_out: Path, b: Budget, steps: Callable[[], int],
            extra: list[str]) -> Step:
    # Every RL run evaluates as often as RLCS does (uniform sampling takes more, smaller steps for
    # the same rollouts; an evaluation costs about one step of rollouts).
    evaluations = max(1, b.rl_steps // b.rl_eval_every)

    def commands() -> list[list[str]]:
        n = steps()  # uniform's count reads RLCS's metrics: once per command
        return [torchrun("rl.py", [
            "recipe=rlcs_tiny", f"model.init={q(init)}", f"data.path={q(train)}", f"eval.path={q(held_out)}",
            f"eval.every={max(1, round(n / evaluations))}", "eval.samples=4", "eval.temperature=1.0",
            f"trainer.max_steps={n}", save_every(n, b), f"batch.prompts_per_step={PROMPTS_PER_STEP}",
            *RL_SETTINGS, *TINY_MODEL, "batch.micro_tokens=1024", *b.lengths, f"hydra.run.dir={q(run)}", *extra])]

    return Step(name, lambda: finished(run, steps()), commands, outputs=(run,), resumes=True)


def eval_step(out: Path, b: Budget, name: str, init: Path, held_out: Path, control: Path) -> Step:
    """Evaluate `init` (a checkpoint, or a run directory: its latest) on the held-out set and its control."""
    run = out / name
    return Step(name, lambda: evaluated(run), lambda: [torchrun("eval.py", [
        "recipe=eval_tiny", f"model.init={q(init)}", f"data.paths=[{q(held_out)},{q(control)}]", "samples=8", "ks=[1,4,8]",
        *b.lengths, f"hydra.run.dir={q(run)}"])], outputs=(run,), feeds_later=False)


class Interrupted(Exception):
    """SIGTERM (a scheduler's preemption, `kill`), turned into an exception like Ctrl-C's."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def tee(command: list[str], log_path: Path) -> int:
    """Run `command`, its output shown as it comes (progress bars included) and kept in `log_path`.
    The child has a session of its own, so exactly one signal reaches it: the one this process hands
    on when interrupted (a second one inside torchrun's shutdown re-signals workers still cleaning
    up); it dies with this process all the same (PDEATHSIG). Its last lines are kept."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=lambda: lifetime.die_with_parent(signal.SIGTERM))

        def show(chunk: bytes) -> None:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            log.write(chunk)

        try:
            while chunk := os.read(proc.stdout.fileno(), 4096):
                show(chunk)
            return proc.wait()
        except (KeyboardInterrupt, Interrupted) as exc:
            stop_child(proc, getattr(exc, "signum", signal.SIGINT))
            os.set_blocking(proc.stdout.fileno(), False)  # what is left in the pipe; workers may hold it open
            try:
                while chunk := os.read(proc.stdout.fileno(), 4096):
                    show(chunk)
            except BlockingIOError:
                pass
            raise


def stop_child(proc: subprocess.Popen, signum: int) -> None:
    """Hand the signal on and wait past torchrun's own 30 s close; then SIGKILL. Another Ctrl-C or
    SIGTERM meanwhile moves on to SIGKILL: the child is never left behind."""
    for send, wait_s in ((signum, 40), (signal.SIGKILL, 10)):
        try:
            proc.send_signal(send)
            proc.wait(timeout=wait_s)
            return
        except (subprocess.TimeoutExpired, KeyboardInterrupt, Interrupted):
            continue


def run_step(step: Step, index: int, total: int, log_dir: Path) -> None:
    for command in step.commands():
        print(f"\n[demo {index}/{total}] {step.name}: {shlex.join(command)}", flush=True)  # pastes into a shell
        returncode = tee(command, log_dir / f"{step.name}.log")
        if returncode != 0:
            tail = (log_dir / f"{step.name}.log").read_text(errors="replace").splitlines()[-30:]
            sys.exit(f"demo step {step.name} failed (exit {returncode}); last lines of "
                     f"{log_dir / (step.name + '.log')}:\n" + "\n".join(tail))


def sizes_differ(out: Path, budget: Budget) -> str:
    """How the run in `out` was sized otherwise ('' when it was not, or there is none): a folder of
    other levels or step counts holds finished steps that are not this run's (`finished` checks a
    step number, `evaluated` a report). A folder of a ponder that did not record its sizes counts as
    sized otherwise when it holds output."""
    try:
        made = json.loads((out / "budget.json").read_text())
    except FileNotFoundError:
        held = [p for step in plan(out, budget) for p in step.outputs if p.exists()]
        return "sizes not recorded" if held else ""
    except ValueError:
        return "budget.json unreadable"
    return ", ".join(f"{k} {made.get(k)!r} here, {v!r} now" for k, v in asdict(budget).items() if made.get(k) != v)


def read_timings(path: Path) -> dict[str, float]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or torn by a kill before writes were atomic
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--quick", action="store_true", help="the test suite's shortened variant")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    out = args.out.resolve()
    try:
        OmegaConf.create({"out": str(out)})
    except GrammarParseError:
        parser.error(f"--out {out}: Hydra would read its '${{' as an interpolation that does not close; "
                     "name the folder without it")
    if mismatch := sizes_differ(out, budget):
        parser.error(f"{out} holds a demo run of other sizes ({mismatch}): its finished steps would pass as "
                     "this run's. Use another --out, or delete it")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "budget.json", json.dumps(asdict(budget), indent=1))
    steps = plan(out, budget)
    timings = read_timings(out / "timings.json")
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, _interrupted)
    runs_again = False  # a step whose output later steps read runs here: they all run again
    step = steps[0]
    try:
        for i, step in enumerate(steps, 1):
            if not runs_again and step.done():
                print(f"[demo {i}/{len(steps)}] {step.name}: done already, skipped", flush=True)
                continue
            if not runs_again and step.feeds_later:
                # Before it runs: a kill from here on brings the next run back to this step, which
                # removes again; after it ran, the old later outputs would pass as done.
                runs_again = True
                if stale := [p for later in steps[i:] for p in later.outputs if p.exists()]:
                    print(f"[demo {i}/{len(steps)}] {step.name} runs again, so the steps made from it do too; "
                          "removing " + ", ".join(str(p) for p in stale), flush=True)
                for path in stale:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                for later in steps[i:]:
                    timings.pop(later.name, None)
            # A resumed step's time counts every run since its output was last removed.
            spent = timings.get(step.name, 0.0) if step.resumes and any(p.exists() for p in step.outputs) else 0.0
            step_started = time.perf_counter()
            try:
                run_step(step, i, len(steps), out / "logs")
            finally:
                timings[step.name] = spent + time.perf_counter() - step_started
                write_text_atomic(out / "timings.json", json.dumps(timings, indent=1))
            print(f"[demo {i}/{len(steps)}] {step.name}: {timings[step.name]:.0f} s "
                  f"(demo so far {time.perf_counter() - started:.0f} s)", flush=True)
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\n[demo] interrupted ({str(exc) or 'SIGINT'}) in step {step.name}: run the same command again to "
              "go on (finished steps are skipped, training resumes from its last checkpoint)", file=sys.stderr)
        return 130
    report = write_report(out, budget.rl_steps, timings)
    print(f"\n{report.read_text()}\nreport: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
