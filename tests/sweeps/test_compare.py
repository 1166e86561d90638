"""`python -m launch.compare`: job labels, the table's numbers, the plots, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from launch.compare import SweepError, compare, main

SCHEDULES = ("easy_to_hard", "flat", "hard_first")
TIERS = ("easy", "medium", "hard")


def _job(root: Path, num: int, config: dict, records: list[dict], junk: str = "") -> None:
    run = root / str(num)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + junk)


def _rl_record(step: int, job: int) -> dict:
    record = {"step": step, "loss": 0.1, "reward_mean": 0.1 * job + 0.01 * step,
              "degenerate_fraction_trained": 0.5 - 0.1 * job, "skipped": {}, "prompt_ids": ["a", "b"]}
    counts = {"easy": [4, 2, 1][job], "medium": 2, "hard": [0, 2, 5][job]}
    record.update({f"tier_count/{t}": counts[t] for t in TIERS})
    if step % 2 == 0:
        record["eval/accuracy"] = 0.2 * job + 0.05 * step
    return record


@pytest.fixture
def rl_sweep(tmp_path):
    for job, schedule in enumerate(SCHEDULES):
        config = {"curriculum": {"schedule": schedule, "enabled": True}, "trainer": {"max_steps": 4}}
        _job(tmp_path, job, config, [_rl_record(s, job) for s in range(1, 5)],
             junk='{"step": 5, "loss": 0.' if job == 1 else "")  # a line cut short by a kill
    (tmp_path / ".submitit" / "7_0").mkdir(parents=True)
    (tmp_path / ".submitit" / "7_0" / "metrics.jsonl").write_text("not a job\n")  # ignored
    return tmp_path


def test_rl_sweep_table_and_plots(rl_sweep, capsys):
    main([str(rl_sweep)])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == ("| job | steps | reward (reward_mean) final | held-out accuracy (eval/accuracy) final | "
                        "degenerate-group fraction (degenerate_fraction_trained) final | reward (reward_mean) mean | "
                        "held-out accuracy (eval/accuracy) mean | degenerate-group fraction "
                        "(degenerate_fraction_trained) mean | tier_count share, all steps |")
    # job 1: reward 0.1 + 0.01 step (final 0.14, mean 0.125); accuracy 0.2 + 0.05 step on steps 2, 4.
    assert lines[3] == ("| curriculum.schedule=flat | 4 | 0.14 | 0.4 | 0.4 | 0.125 | 0.35 | 0.4 | "
                        "easy 33% medium 33% hard 33% |")
    assert lines[2].startswith("| curriculum.schedule=easy_to_hard | 4 | 0.04 |")
    assert lines[2].endswith("| easy 67% medium 33% hard 0% |")
    assert lines[4].startswith("| curriculum.schedule=hard_first |")
    assert "Unreadable metrics lines skipped: {'1': 1}" in out
    with Image.open(rl_sweep / "compare" / "curves.png") as curves, Image.open(rl_sweep / "compare" / "tiers.png") as tiers:
        assert 1500 < curves.width < 1800 and curves.height > 440  # three 550 px panels, the legend below
        assert 1400 < tiers.width < 1700  # one tier histogram per schedule, side by side


def test_loss_only_sweep_and_explicit_metrics(tmp_path):
    for job, lr in enumerate((0.001, 0.002)):
        _job(tmp_path, job, {"trainer": {"optim": {"lr": lr}}},
             [{"step": s, "loss": 2.0 - lr * 100 * s, "grad_norm": 1.0} for s in (1, 2)])
    out = compare(tmp_path, tmp_path / "cmp")
    assert (out / "compare.md").read_text().splitlines()[2:] == [
        "| trainer.optim.lr=0.001 | 2 | 1.8 | 1.85 |", "| trainer.optim.lr=0.002 | 2 | 1.6 | 1.7 |"]
    assert sorted(p.name for p in out.iterdir()) == ["compare.md", "curves.png"]  # no tier histogram logged
    with Image.open(out / "curves.png") as curves:
        assert 500 < curves.width < 700  # one panel
    compare(tmp_path, tmp_path / "cmp2", metrics=["grad_norm", "loss"])
    assert (tmp_path / "cmp2" / "compare.md").read_text().startswith("| job | steps | grad_norm final | loss final |")
    with pytest.raises(SweepError, match=r"metrics \['reward'\] are not logged"):
        compare(tmp_path, metrics=["reward"])


def test_identical_points_are_named_by_job_and_empty_sweeps_fail(tmp_path, capsys):
    for job in (0, 1):
        _job(tmp_path / "sweep", job, {"trainer": {"seed": 0}}, [{"step": 1, "loss": 1.0}])
    compare(tmp_path / "sweep")
    rows = (tmp_path / "sweep" / "compare" / "compare.md").read_text().splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| job 0", "| job 1"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no job under .* wrote a metrics.jsonl"):
        main([str(tmp_path / "empty")])
