"""The demo's shortened variant (`launch/demo.py --quick`): every stage runs as a real command on the
visual tasks, REPORT.md has a row per stage with numbers and the plots exist; a killed run goes on
where it stopped, a second run skips every finished step, and a step that runs again makes the
steps that read its output run again."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from launch.demo import evaluated, graded
from launch.job import hydra_quote
from tests.trainer.launching import REPO, launch_env, tagged_processes


def test_quick_demo_runs_every_stage_resumes_after_a_kill_and_reruns_what_a_rerun_step_feeds(tmp_path):
    # A comma made Hydra read the paths as lists ("Ambiguous value"); `${x}` was an interpolation.
    out = tmp_path / "my demo, v2 (old) ${x}"
    cmd = [sys.executable, str(REPO / "launch" / "demo.py"), "--quick", "--out", str(out)]
    env = launch_env(PONDER_TEST_TAG=str(tmp_path))
    # SIGTERM to the demo alone (a `kill`, a scheduler) during pretraining: the child gets it handed
    # on, stops, and the demo says how to go on. Before, it died with its children left running.
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("[demo 2/8] pretrain:"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again" in err, err[-2000:]
    assert tagged_processes(str(tmp_path)) == []
    first = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.count("done already, skipped") == 1  # the data
    report = (out / "REPORT.md").read_text()
    for stage in ("pretrain", "sft", "rlcs"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {stage} |"))
        assert "not evaluated" not in row and row.count("|") == 9
    for plot in ("loss.png", "rl.png"):
        assert (out / "plots" / plot).stat().st_size > 10_000
    # The RL run saw images: its prompts carry them and the image tokens reached the forward.
    assert (out / "rlcs" / "metrics.jsonl").read_text().count('"prompts_rolled_out"') == 3
    again = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done already, skipped") == 8
    # SFT's output gone: SFT runs again, and so does everything made from it (before, only SFT
    # ran and the report mixed the new SFT with evaluations, grades and RL of the old one).
    shutil.rmtree(out / "sft")
    graded_before = (out / "grade" / "grade.json").stat().st_mtime_ns
    third = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert third.stdout.count("done already, skipped") == 3  # data, pretrain, its evaluation
    [removing] = [line for line in third.stdout.splitlines() if "sft runs again, so the steps made from it" in line]
    for made_from_sft in ("eval_sft", "grade", "rlcs", "eval_rlcs", "data/rl/train.difficulty.jsonl"):
        assert str(out / made_from_sft) in removing
    assert (out / "grade" / "grade.json").stat().st_mtime_ns > graded_before


def test_a_step_is_done_only_when_its_output_is_whole(tmp_path):
    """A grading killed between chunks, an empty or torn eval.json, and the report of an evaluation
    that failed (nothing evaluated) are not finished steps (each was skipped on rerun before)."""
    sidecar, grading = tmp_path / "train.difficulty.jsonl", tmp_path / "grade"
    sidecar.write_text(json.dumps({"id": "p0", "passes": 1, "samples": 4, "pass_rate": 0.25}) + "\n")
    grading.mkdir()
    assert not graded(grading, sidecar)  # a chunk graded, then killed: grade.py writes grade.json last
    (grading / "grade.json").write_text('{"graded": 3}\n')
    assert graded(grading, sidecar) and not graded(grading, tmp_path / "other.difficulty.jsonl")
    run = tmp_path / "eval"
    run.mkdir()
    assert not evaluated(run)
    for torn in ("", '{"sets": {"a": {"evaluated": 3}'):
        (run / "eval.json").write_text(torn)
        assert not evaluated(run)
    (run / "eval.json").write_text(json.dumps({"sets": {"a": {"evaluated": 3}, "b": {"evaluated": 0}}}))
    assert not evaluated(run)
    (run / "eval.json").write_text(json.dumps({"sets": {"a": {"evaluated": 3}, "b": {"evaluated": 1}}}))
    assert evaluated(run)


def test_uniform_run_matches_rlcs_rollouts_and_evaluation_count(tmp_path):
    """Uniform sampling rolls out as many prompts as RLCS did, in steps of 16, and evaluates as many
    times (not every 10 of its more numerous steps)."""
    from launch.demo import FULL, plan

    (tmp_path / "rlcs").mkdir()
    rolled = [16, 20, 60] + [42] * 76 + [3]  # 3,291 prompts in RLCS's 80 steps, as in the fresh-clone demo
    (tmp_path / "rlcs" / "metrics.jsonl").write_text(
        "".join(f'{{"step": {i + 1}, "prompts_rolled_out": {n}}}\n' for i, n in enumerate(rolled)))
    steps = {s.name: s for s in plan(tmp_path, FULL)}
    rlcs, = steps["rlcs"].commands()
    uniform, = steps["rl_uniform"].commands()
    assert "trainer.max_steps=80" in rlcs and "eval.every=16" in rlcs
    assert "trainer.max_steps=206" in uniform and "eval.every=41" in uniform  # 3,291 / 16; 206 / 5
    assert uniform[-2:] == ["curriculum.enabled=false", "trainer.optim.lr=2e-4"]


def test_paths_reach_hydra_as_one_string_each():
    parser = OverridesParser.create()
    for path in ["/runs/my demo, v2 (old)", "/r/it's", "/r/a\\", "/r/x\\'y", "/r/[a]{b}=c:d*?~", "/r/${x}/$HOME",
                 "/r/a\\${b}", "/r/${"]:
        # OmegaConf reads the value last: it resolves `${x}`, and `\${x}` is its escape for the text
        one = OmegaConf.create({"k": parser.parse_override(f"k={hydra_quote(path)}").value()})
        both = OmegaConf.create({"k": parser.parse_override(f"k=[{hydra_quote(path)},{hydra_quote(path)}]").value()})
        assert one.k == path and list(both.k) == [path, path]


def test_a_resumed_step_counts_the_time_of_every_run_and_a_rerun_one_starts_over(tmp_path, monkeypatch):
    """REPORT.md's wall time of a training step interrupted and resumed is the sum of its runs (before,
    only the last run counted); an evaluation run again starts over, and so does a step whose output
    was removed."""
    import launch.demo as demo

    clock = [0.0]
    monkeypatch.setattr(demo.time, "perf_counter", lambda: clock[0])
    interrupt_in = {"train", "eval"}
    durations = {"train": 30.0, "eval": 5.0}

    def run_step(step: demo.Step, index: int, total: int, log_dir) -> None:
        step.outputs[0].mkdir(exist_ok=True)
        clock[0] += durations[step.name]
        if step.name in interrupt_in:
            interrupt_in.discard(step.name)
            raise KeyboardInterrupt
        (step.outputs[0] / "done").touch()

    def steps(out, budget) -> list[demo.Step]:
        def step(name: str, resumes: bool) -> demo.Step:
            return demo.Step(name, lambda: (out / name / "done").exists(), lambda: [], outputs=(out / name,),
                             resumes=resumes)
        return [step("train", True), step("eval", False)]

    reported = []

    def write_report(out, rl_steps: int, timings: dict[str, float]):
        reported.append(dict(timings))
        (out / "REPORT.md").write_text("report")
        return out / "REPORT.md"

    monkeypatch.setattr(demo, "run_step", run_step)
    monkeypatch.setattr(demo, "plan", steps)
    monkeypatch.setattr(demo, "write_report", write_report)
    out = ["--out", str(tmp_path)]
    assert demo.main(out) == 130 and demo.main(out) == 130 and not reported  # killed in train, then in eval
    assert demo.main(out) == 0 and reported[-1] == {"train": 60.0, "eval": 5.0}  # 30 s killed + 30 s resumed
    assert demo.main(out) == 0 and reported[-1] == {"train": 60.0, "eval": 5.0}  # all skipped
    shutil.rmtree(tmp_path / "train")
    assert demo.main(out) == 0 and reported[-1] == {"train": 30.0, "eval": 5.0}


def test_the_demo_refuses_a_folder_whose_steps_are_not_its_own(tmp_path, capsys):
    """A folder of a demo of other sizes (levels, steps) would pass its finished steps as this run's: a
    run of 100 RL steps has a COMPLETE step_80 checkpoint. And a folder named with an unclosed `${`
    cannot reach Hydra as text."""
    from dataclasses import asdict

    from launch.demo import FULL, QUICK, main, sizes_differ

    assert sizes_differ(tmp_path, FULL) == ""  # nothing there yet
    (tmp_path / "budget.json").write_text(json.dumps(asdict(FULL)))
    assert sizes_differ(tmp_path, FULL) == ""
    (tmp_path / "budget.json").write_text(json.dumps({**asdict(FULL), "levels": "1-3", "rl_steps": 100}))
    assert sizes_differ(tmp_path, FULL) == "levels '1-3' here, '1-2' now, rl_steps 100 here, 80 now"
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path)])
    assert "holds a demo run of other sizes" in capsys.readouterr().err
    assert "rl_steps 100 here, 3 now" in sizes_differ(tmp_path, QUICK)
    older = tmp_path / "older"
    (older / "sft").mkdir(parents=True)  # output of a ponder that did not record its sizes
    assert sizes_differ(older, FULL) == "sizes not recorded"
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "runs ${x")])
    assert "does not close" in capsys.readouterr().err and not (tmp_path / "runs ${x").exists()
