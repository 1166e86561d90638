"""A real 2-node Slurm on this machine (scripts/slurm_local.sh start2: two slurmd, each with its own
hostname in its own namespace, at 127.0.0.2 and 127.0.0.3): a pretraining job of 2 nodes × 1 rank
(gloo) through the Hydra launcher, preempted once, ends with every step's metrics equal to those of
the same run as 1 node × 2 ranks, and the sweep driver reports it as completed."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from data_pipelines.shards import write_shards
from data_pipelines.synthetic import make_interleaved_corpus
from tests.sweeps.slurm import REPO, completed_steps, finish_sweep, local_slurm, metrics, start_sweep, wait_for
from tests.sweeps.test_slurm_sweep import PRETRAIN, TIMING

STEPS = 8


def job_id(sweep_dir) -> str:
    """A one-point sweep is one plain job (no array): submitit's folder is its id."""
    (folder,) = [p for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()]
    return folder.name


@pytest.fixture(scope="module")
def slurm2():
    with local_slurm(nodes=2) as env:
        yield env


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_node_data")
    make_interleaved_corpus(root, num_docs=60, seed=0, text_words=(20, 120))
    write_shards(root / "docs.jsonl", root, root / "shards", samples_per_shard=10)
    return root / "shards"


def test_two_node_job_equals_one_node_two_ranks_and_survives_preemption(slurm2, shards, tmp_path):
    overrides = PRETRAIN + [f"data.shards={shards}", f"trainer.max_steps={STEPS}", "trainer.save_every=5"]
    sweep_dir = tmp_path / "sweep"
    driver = start_sweep(slurm2, "pretrain.py", [*overrides, "hydra.launcher.nodes=2"], sweep_dir)
    try:
        wait_for(lambda: completed_steps(sweep_dir / "0") >= 1, 300, "the 2-node job's first step")
        # the preemption warning reaches the job's tasks on both nodes
        subprocess.run(["scancel", "--signal=USR2", job_id(sweep_dir)], env=slurm2, check=True)
    finally:
        finish_sweep(driver, sweep_dir, timeout=420)  # the driver exits 0: the 2-task job reported COMPLETED

    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(REPO / "launch" / "pretrain.py"), *overrides, f"hydra.run.dir={reference}"],
                   env=slurm2, cwd=tmp_path, check=True, capture_output=True, timeout=300)

    folder = sweep_dir / ".submitit" / job_id(sweep_dir)
    node0, node1 = ("".join((folder / f"{folder.name}_{task}_log.{kind}").read_text() for kind in ("out", "err"))
                    for task in (0, 1))
    assert "--nnodes 2 --node_rank 0 --master_addr ponder-n1" in node0
    assert "--nnodes 2 --node_rank 1 --master_addr ponder-n1" in node1
    for log in (node0, node1):  # both nodes were told, both ran twice
        assert "SIGUSR2: the workers finish their step and save" in log
        assert log.count("Starting with JobEnvironment") == 2
    stopped = [int(s) for s in re.findall(r"step (\d+): preempted: checkpoint saved", node0)]
    resumed = [int(s) for s in re.findall(r"resumed from \S+/step_\d+ at step (\d+)", node0)]
    assert len(stopped) == len(resumed) == 1 and stopped == resumed, node0[-3000:]
    print(f"2-node job: stopped after step {stopped[0]}, resumed at step {resumed[0]}: "
          f"{stopped[0] - resumed[0]} steps lost")

    got = [{k: v for k, v in m.items() if k not in TIMING} for m in metrics(sweep_dir / "0")]
    want = [{k: v for k, v in m.items() if k not in TIMING} for m in metrics(reference)]
    assert [m["step"] for m in want] == list(range(1, STEPS + 1))
    assert got == want  # losses, grad norms, tokens, data counters: exactly the 1-node x 2-rank run's
    assert json.loads((sweep_dir / "0" / "checkpoints" / f"step_{STEPS}" / "trainer_state.json").read_text()
                      )["world_size"] == 2
