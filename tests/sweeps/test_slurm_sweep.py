"""Hydra multirun sweeps on a real single-machine Slurm: a 3-schedule RLCS sweep (submitit array jobs,
torchrun in each job, per-job run directories, then `launch.compare`), and pretraining jobs that are
preempted (submitit's USR2) or requeued (scontrol) and resume exactly.

The daemons are started and stopped by the test itself (scripts/slurm_local.sh); the test is skipped,
with the reason printed, only where Slurm cannot be installed.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
import yaml

from data_pipelines.prompts import DifficultyEntry, sidecar_path, write_sidecar
from data_pipelines.shards import write_shards
from data_pipelines.synthetic import make_interleaved_corpus
from launch import compare
from launch.job import hydra_quote
from tests.rl.helpers import save_policy, task_data, tiny_policy
from tests.sweeps.slurm import array_job_id, completed_steps, finish_sweep, job_log, local_slurm, metrics, start_sweep, wait_for

SCHEDULES = ("easy_to_hard", "flat", "hard_first")  # the named schedules of stages/rl/curriculum.py
SWEEP = "curriculum.schedule=" + ",".join(SCHEDULES)


PRETRAIN = ["recipe=pretrain_tiny", "data.packing.seq_len=512", "data.packing.buffer_docs=16", "data.num_workers=0",
            "trainer.optim.warmup_steps=2", "logging.progress_bar=false", "logging.wandb_mode=disabled"]
TIMING = {"tokens_per_s", "step_time_s"}  # wall-clock fields: the only ones a resume may change


@pytest.fixture(scope="module")
def slurm():
    with local_slurm() as env:
        yield env


@pytest.fixture(scope="module")
def rl_base(tmp_path_factory) -> list[str]:
    """A tiny policy, the synthetic task, and offline grades that put prompts in every tier."""
    root = tmp_path_factory.mktemp("rl")
    train, held_out = task_data(root, n_train=64, n_eval=16)
    policy = save_policy(*tiny_policy(text_only=True), root / "policy")
    ids = [json.loads(line)["id"] for line in train.read_text().splitlines()]
    write_sidecar(sidecar_path(train), {i: DifficultyEntry(i, 8 - 2 * (n % 5), 8, "test") for n, i in enumerate(ids)})
    return ["recipe=rlcs_tiny", f"model.init={policy}", f"data.path={train}", f"eval.path={held_out}",
            "eval.max_prompts=16", "batch.prompts_per_step=8", "logging.progress_bar=false",
            "logging.wandb_mode=disabled"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_data")
    make_interleaved_corpus(root, num_docs=60, seed=0, text_words=(20, 120))
    write_shards(root / "docs.jsonl", root, root / "shards", samples_per_shard=10)
    return root / "shards"


def test_schedule_sweep_runs_every_job_to_the_end_and_compares(slurm, rl_base, tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    overrides = rl_base + ["trainer.max_steps=4", "trainer.save_every=2", "eval.every=2", SWEEP]
    finish_sweep(start_sweep(slurm, "rl.py", overrides, sweep_dir), sweep_dir, timeout=480)

    for num, name in enumerate(SCHEDULES):
        run_dir = sweep_dir / str(num)
        lines = metrics(run_dir)
        assert [m["step"] for m in lines if "reward_mean" in m] == [1, 2, 3, 4]
        assert [m["step"] for m in lines if "eval/accuracy" in m] == [0, 2, 4]
        assert (run_dir / "checkpoints" / "latest").read_text() == "step_4"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())  # the job ran its own point
        assert config["curriculum"]["schedule"] == name
        log = job_log(sweep_dir, num)
        assert "torch.distributed.run --standalone --nproc_per_node 1" in log
        assert shlex.quote(f"hydra.run.dir={hydra_quote(run_dir)}") in log and "Job completed successfully" in log
        # The first half of the run (>= 16 prompts, 13 per tier available) leans the schedule's way.
        early = [m for m in lines if m["step"] in (1, 2) and "reward_mean" in m]
        easy, hard = (sum(m[f"tier_count/{t}"] for m in early for t in side)
                      for side in (("very_easy", "easy"), ("hard", "very_hard")))
        assert easy + hard + sum(m["tier_count/medium"] for m in early) >= 16
        assert {"easy_to_hard": easy > hard, "flat": True, "hard_first": hard > easy}[name], (name, easy, hard)

    compare.main([str(sweep_dir)])
    table = capsys.readouterr().out.splitlines()
    assert "reward (reward_mean) final" in table[0] and "held-out accuracy (eval/accuracy) final" in table[0]
    assert "degenerate-group fraction" in table[0] and "tier_count share" in table[0]
    rows = [line for line in table if line.startswith("| curriculum.schedule=")]
    assert len(rows) == 3 and len({row.split(" | ")[-1] for row in rows}) == 3  # three different tier mixes
    for name in ("curves.png", "tiers.png"):
        assert (sweep_dir / "compare" / name).stat().st_size > 20_000


def test_preempted_and_requeued_jobs_save_and_resume_like_an_uninterrupted_one(slurm, shards, tmp_path):
    """Three identical pretraining points: #0 runs through, #1 gets the preemption warning (submitit's
    USR2), #2 is requeued by Slurm (SIGTERM, then SIGKILL after KillWait; preempt_signal=TERM). Both
    finish their step, save within the grace time and resume from that very step: no step is lost.
    Pretraining, because every step changes the weights and the data position."""
    sweep_dir = tmp_path / "sweep"
    steps = 12
    overrides = PRETRAIN + [f"data.shards={shards}", f"trainer.max_steps={steps}", "trainer.save_every=5",
                            "trainer.seed=0,0,0", "hydra.launcher.preempt_signal=TERM"]
    driver = start_sweep(slurm, "pretrain.py", overrides, sweep_dir)

    def past_step(num: int, step: int) -> bool:  # between two regular saves: only a preemption save helps
        return completed_steps(sweep_dir / str(num)) >= step

    try:
        wait_for(lambda: past_step(1, 1), 300, "job 1's first step")
        subprocess.run(["scancel", "--signal=USR2", array_job_id(sweep_dir, 1)], env=slurm, check=True)
        wait_for(lambda: past_step(2, 6), 300, "job 2's sixth step")
        subprocess.run(["scontrol", "requeue", array_job_id(sweep_dir, 2)], env=slurm, check=True)
    finally:
        finish_sweep(driver, sweep_dir, timeout=480)

    reference = [{k: v for k, v in m.items() if k not in TIMING} for m in metrics(sweep_dir / "0")]
    assert [m["step"] for m in reference] == list(range(1, steps + 1))
    assert len({m["loss"] for m in reference}) == steps  # every step trained
    for num, how in ((1, "ponder sweep job: preempted, saving and requeueing"),
                     (2, "ponder sweep job: SIGTERM from the scheduler, the workers save")):
        log = job_log(sweep_dir, num)
        assert how in log
        assert log.count("Starting with JobEnvironment") == 2  # the same job ran twice
        stopped = [int(s) for s in re.findall(r"step (\d+): preempted: checkpoint saved", log)]
        resumed = [int(s) for s in re.findall(r"resumed from \S+/step_\d+ at step (\d+)", log)]
        assert len(stopped) == len(resumed) == 1, log[-3000:]
        lost = stopped[0] - resumed[0]  # steps completed before the stop that the requeued job ran again
        print(f"job {num}: stopped after step {stopped[0]}, resumed at step {resumed[0]}: {lost} steps lost")
        assert lost == 0 and 1 <= resumed[0] < steps
        if num == 2:  # signalled after step 6: the regular save (step 5) is not where it resumed
            assert resumed[0] >= 6
        got = [{k: v for k, v in m.items() if k not in TIMING} for m in metrics(sweep_dir / str(num))]
        assert got == reference  # every step's loss, grad norm, LR, tokens, data counters: exact
