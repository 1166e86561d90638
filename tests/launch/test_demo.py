"""The demo's shortened variant (`launch/demo.py --quick`): every stage runs as a real command on the
visual tasks, REPORT.md has a row per stage with numbers and the plots exist, and a second run
skips every finished step."""

from __future__ import annotations

import subprocess
import sys

from tests.trainer.launching import REPO, launch_env


def test_quick_demo_runs_every_stage_and_reruns_as_skips(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, str(REPO / "launch" / "demo.py"), "--quick", "--out", str(out)]
    first = subprocess.run(cmd, env=launch_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = (out / "REPORT.md").read_text()
    for stage in ("pretrain", "sft", "rlcs"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {stage} |"))
        assert "not evaluated" not in row and row.count("|") == 9
    for plot in ("loss.png", "rl.png"):
        assert (out / "plots" / plot).stat().st_size > 10_000
    # The RL run saw images: its prompts carry them and the image tokens reached the forward.
    assert (out / "rlcs" / "metrics.jsonl").read_text().count('"prompts_rolled_out"') == 3
    again = subprocess.run(cmd, env=launch_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done already, skipped") == 8


def test_uniform_run_matches_rlcs_rollouts_and_evaluation_count(tmp_path):
    """Uniform sampling rolls out as many prompts as RLCS did, in steps of 16, and evaluates as many
    times (not every 10 of its more numerous steps)."""
    from launch.demo import FULL, plan

    (tmp_path / "rlcs").mkdir()
    rolled = [16, 20, 60] + [42] * 96 + [49]  # 4,177 prompts in RLCS's 100 steps (the fresh-clone demo's)
    (tmp_path / "rlcs" / "metrics.jsonl").write_text(
        "".join(f'{{"step": {i + 1}, "prompts_rolled_out": {n}}}\n' for i, n in enumerate(rolled)))
    steps = {s.name: s for s in plan(tmp_path, FULL)}
    rlcs, = steps["rlcs"].commands()
    uniform, = steps["rl_uniform"].commands()
    assert "trainer.max_steps=100" in rlcs and "eval.every=20" in rlcs
    assert "trainer.max_steps=261" in uniform and "eval.every=52" in uniform  # 4,177 / 16; 261 / 5
    assert uniform[-2:] == ["curriculum.enabled=false", "trainer.optim.lr=2e-4"]
