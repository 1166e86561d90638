"""bench/chaos.py on one stage, one trial: reference, SIGKILL of the whole job, resume, table; and the
harness's own checks catch what they are there to catch."""

from __future__ import annotations

import json

from bench import chaos


def test_one_pretraining_trial_resumes_exactly_and_leaves_nothing(tmp_path, capsys):
    assert chaos.main(["--out", str(tmp_path), "--trials", "1", "--stages", "pretrain", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "| pretrain | 2 |" in out and "| 1 | 1/1 | 0 | 0 |" in out
    trial = json.loads((tmp_path / "results.json").read_text())["pretrain"][0]
    assert trial["passed"] and trial["resumed_ok"] and trial["mismatches"] == []
    assert trial["left_after_kill"] == trial["left_after_resume"] == 0 and trial["unreadable"] == []

    # The checks themselves: a changed loss, a missing step and a truncated shard are all caught.
    run = tmp_path / "pretrain" / "reference"
    want = chaos._metrics(run)
    changed = [dict(m) for m in want]
    changed[3]["loss"] += 1e-12
    assert chaos._compare(changed, want) == [f"step 4 loss: {changed[3]['loss']!r} != {want[3]['loss']!r}"]
    assert chaos._compare(want[:-1], want)[0].startswith("steps")
    assert chaos._compare([dict(m, step_time_s=0.0) for m in want], want) == []  # timing keys aside
    assert chaos._unreadable(run) == []
    shard = next((run / "checkpoints" / "step_8" / "state" / "zero").glob("*model_states.pt"))
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:100])
    assert chaos._unreadable(run) == [f"step_8: state/zero/{shard.name} has 100 bytes, {size} expected"]
