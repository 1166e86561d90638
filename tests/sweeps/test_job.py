"""The sweep job wrapper (torchrun per node, stop, requeue) and the launcher configs, without Slurm."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import launch.pretrain  # noqa: F401  registers the pretrain schema the primary config names
from launch.job import Placement, SweepJob, TorchrunFailed, _own_group_deaf_to_preemption, torchrun_command

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_command_single_and_multi_node(tmp_path):
    one = torchrun_command("/r/launch/rl.py", ["recipe=rlcs_tiny", "curriculum.schedule=flat"], tmp_path / "0", 8,
                           Placement(1, 0, "node-a", "41_2"))
    assert one == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "8",
                   "/r/launch/rl.py", "recipe=rlcs_tiny", "curriculum.schedule=flat", f"hydra.run.dir='{tmp_path / '0'}'"]
    # A sweep folder with a comma, a quote or `${x}` reaches Hydra as one string (it was a list of choices,
    # a token error, an interpolation): quoted as the demo quotes its paths.
    odd = tmp_path / "sweep, it's ${x}" / "0"
    override = torchrun_command("/r/launch/rl.py", [], odd, 1, Placement(1, 0, "a", "1"))[-1]
    value = OverridesParser.create().parse_override(override).value()
    assert OmegaConf.create({"k": value}).k == str(odd)
    place = Placement(4, 3, "node-a", "41_2")
    assert place.master_port == 15000 + 412  # the same on every node: derived from the job id
    many = torchrun_command("/r/launch/rl.py", ["recipe=rlcs_tiny"], tmp_path / "1", 8, place, 1200)
    assert many[3:17] == ["--nnodes", "4", "--node_rank", "3", "--master_addr", "node-a", "--master_port", "15412",
                          "--rdzv_conf", "timeout=1200", "--nproc_per_node", "8", "/r/launch/rl.py", "recipe=rlcs_tiny"]
    # below the ephemeral range (32768-60999) for every job id
    assert all(15000 <= Placement(2, 0, "a", str(j)).master_port < 30000 for j in range(0, 10**6, 997))


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z")


def test_worker_tree_ignores_preemption_signal_and_stop_ends_all_of_it(tmp_path):
    pids = tmp_path / "pids"
    tree = subprocess.Popen(["sh", "-c", f"sleep 60 & echo $$ $! > {pids}; wait"],
                            preexec_fn=_own_group_deaf_to_preemption)
    job = SweepJob("x.py", [], tmp_path, stop_grace_s=5.0, process=tree)
    deadline = time.monotonic() + 10
    while not (pids.exists() and len(pids.read_text().split()) == 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    shell, child = map(int, pids.read_text().split())
    os.killpg(tree.pid, signal.SIGUSR2)  # what Slurm sends every process of the step on preemption
    time.sleep(0.5)
    assert _alive(shell) and _alive(child)
    job.stop()
    assert tree.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_requeued_job_is_the_same_job_without_its_process(tmp_path):
    job = SweepJob("/r/launch/pretrain.py", ["trainer.optim.lr=0.001"], tmp_path / "3", 2, 7.0,
                   process=subprocess.Popen(["true"]))
    delayed = job.checkpoint()
    assert delayed.function == job and delayed.args == ()
    again = pickle.loads(pickle.dumps(delayed.function))
    assert again == job and again.process is None


def _fake_submitit_env(monkeypatch):
    for key, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "123", "SUBMITIT_LOCAL_NTASKS": "1",
                       "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                       "SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_LOCALID": "0"}.items():
        monkeypatch.setenv(key, value)


def test_job_runs_the_stage_under_torchrun_and_reports_failure(tmp_path, monkeypatch):
    _fake_submitit_env(monkeypatch)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    stage = tmp_path / "stage.py"
    stage.write_text(
        "import json, os, sys\n"
        "out = [a.split('=', 1)[1].strip(\"'\") for a in sys.argv if a.startswith('hydra.run.dir=')][0]\n"
        "os.makedirs(out, exist_ok=True)\n"
        "keys = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'OMP_NUM_THREADS')\n"
        "json.dump({'argv': sys.argv[1:], 'env': {k: os.environ[k] for k in keys}},"
        " open(os.path.join(out, 'rank%s.json' % os.environ['RANK']), 'w'))\n"
        "sys.exit(3 if 'fail=1' in sys.argv else 0)\n")
    run_dir = tmp_path / "sweep" / "0"
    assert SweepJob(str(stage), ["a.b=1"], run_dir, nproc_per_node=2)() == str(run_dir)
    seen = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["env"] for s in seen] == [{"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r),
                                         "OMP_NUM_THREADS": "2"} for r in (0, 1)]
    assert seen[0]["argv"] == ["a.b=1", f"hydra.run.dir='{run_dir}'"]
    with pytest.raises(TorchrunFailed, match="torchrun exited with 1"):
        SweepJob(str(stage), ["fail=1"], tmp_path / "sweep" / "1", nproc_per_node=1)()


def _launcher(tmp_path, name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base="1.3"):
        cfg = compose("pretrain", overrides=["recipe=pretrain_tiny", f"hydra/launcher={name}",
                                             f"hydra.launcher.submitit_folder={tmp_path}/%j",
                                             "hydra.launcher.name=sweep", *overrides], return_hydra_config=True)
    return instantiate(cfg.hydra.launcher)


def test_gpu_launcher_config_reaches_sbatch(tmp_path, monkeypatch):
    import submitit.slurm.slurm as submitit_slurm

    monkeypatch.setattr(submitit_slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun needed
    launcher = _launcher(tmp_path, "slurm_gpu", "hydra.launcher.nodes=4", "hydra.launcher.partition=h100",
                         "hydra.launcher.account=vlm", "hydra.launcher.timeout_min=720")
    assert launcher.nproc_per_node == 8  # one worker per GPU
    sbatch = launcher._executor()._executor._make_submission_file_text("CMD", "uid")
    for line in ("--nodes=4", "--gpus-per-node=8", "--ntasks-per-node=1", "--cpus-per-task=64",
                 "--partition=h100", "--account=vlm", "--time=720", "--signal=USR2@300", "--open-mode=append",
                 "--exclusive", "--mem=0"):
        assert f"#SBATCH {line}\n" in sbatch
    srun = [line for line in sbatch.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and "--cpus-per-task=64" in srun[0].split()  # srun does not inherit it (22.05-23.02)
    assert launcher.env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert (launcher.stop_grace_s, launcher.preempt_signal, launcher.rendezvous_timeout_s) == (240, "USR2", 1800)
    # module/environment setup and fabric settings are recipe fields; an explicit memory wins over --mem=0
    custom = _launcher(tmp_path, "slurm_gpu", "hydra.launcher.mem_gb=900", "+hydra.launcher.env.NCCL_SOCKET_IFNAME=ib0",
                       "hydra.launcher.setup=[module load cuda/12.4,source /shared/venv/bin/activate]")
    sbatch = custom._executor()._executor._make_submission_file_text("CMD", "uid")
    assert "#SBATCH --mem=900GB\n" in sbatch and "--mem=0" not in sbatch
    assert "# setup\nmodule load cuda/12.4\nsource /shared/venv/bin/activate\n" in sbatch
    assert custom.env["NCCL_SOCKET_IFNAME"] == "ib0"
    with pytest.raises(InstantiationException, match="stop_grace_s=300 must be under signal_delay_s=300"):
        _launcher(tmp_path, "slurm_gpu", "hydra.launcher.stop_grace_s=300")


def test_cpu_and_local_launchers_run_one_worker_per_job(tmp_path):
    cpu = _launcher(tmp_path, "slurm_cpu")
    assert (cpu.nproc_per_node, cpu.params["partition"], cpu.params["cpus_per_task"]) == (1, "debug", 1)
    local = _launcher(tmp_path, "local", "hydra.launcher.nproc_per_node=2")
    assert local.nproc_per_node == 2 and local._executor().cluster == "local"
    with pytest.raises(InstantiationException, match="tasks_per_node must be 1"):
        _launcher(tmp_path, "slurm_cpu", "hydra.launcher.tasks_per_node=2")


@pytest.mark.parametrize("nodes", [1, 4])
def test_launcher_reports_a_multi_node_jobs_real_outcome(tmp_path, nodes):
    """A job over N nodes is a submitit job of N tasks (what `SlurmExecutor.submit` returns with
    nodes=N, tasks_per_node=1); each task writes its own result pickle, as submitit's job process does."""
    from hydra.core.utils import JobStatus
    from submitit.core.utils import cloudpickle_dump
    from submitit.slurm.slurm import SlurmJob

    from hydra_plugins.ponder_launcher.torchrun_launcher import _TorchrunLauncher

    sweep = SweepJob("/r/launch/pretrain.py", ["trainer.seed=1"], tmp_path / "0", 8)
    for outcome in ("success", "error"):
        folder = tmp_path / outcome
        handle = SlurmJob(folder, "4242", tasks=tuple(range(nodes)))
        handle._results_timeout_s = 0
        assert handle.num_tasks == nodes
        for task in range(nodes):
            paths = SlurmJob(folder, "4242", tasks=(task,)).paths
            paths.folder.mkdir(parents=True, exist_ok=True)
            failed = outcome == "error" and task == nodes - 1  # the last node's torchrun failed
            cloudpickle_dump(("error", "TorchrunFailed: exit 1") if failed else ("success", str(sweep.run_dir)),
                             paths.result_pickle)
        ret = _TorchrunLauncher._wait(sweep, handle)
        if outcome == "success":
            assert (ret.status, ret.return_value) == (JobStatus.COMPLETED, str(sweep.run_dir))
        else:
            assert ret.status == JobStatus.FAILED and "TorchrunFailed" in str(ret._return_value)  # raised by Hydra
        assert ret.working_dir == str(sweep.run_dir) and ret.overrides == ["trainer.seed=1"]
