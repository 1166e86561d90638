"""hydra-submitit-launcher's Slurm and local launchers, with torchrun inside every job.

The stock launchers run the Hydra task function inside the job: one process per srun task, no
torchrun. These subclasses submit the same way (one array task per sweep point, submitit's folders,
resources and requeue), but compose each point's config here, in the submitting process, and submit
a `launch.job.SweepJob`: torchrun over the job's nodes and devices running the stage script with the
point's overrides and `hydra.run.dir=<the point's directory>`. On preemption every rank saves the step
it finished and the same job is requeued, resuming there (`resume=auto`; launch/job.py). A job over N
nodes is N submitit tasks; its outcome is that of all of them.

Configs: hydra/launcher=torchrun_slurm | torchrun_local, extended by recipes/hydra/launcher/*.yaml.
"""

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher, log
from omegaconf import OmegaConf, open_dict

# No `from __future__ import annotations` here: Hydra's plugin scan executes this module before it is
# in sys.modules, where dataclasses cannot resolve string annotations.

REPO_ROOT = Path(__file__).resolve().parents[2]
_TARGET = "hydra_plugins.ponder_launcher.torchrun_launcher."


@dataclass
class TorchrunSlurmConf(SlurmQueueConf):
    _target_: str = _TARGET + "TorchrunSlurmLauncher"
    # torchrun workers per node; None: gpus_per_node, or 1 on a node without GPUs
    nproc_per_node: Optional[int] = None
    # seconds the workers get to finish their step and save on preemption, then SIGTERM/SIGKILL;
    # keep it under signal_delay_s (USR2) or the cluster's grace time/KillWait (TERM, 30 s by default)
    stop_grace_s: int = 25
    # the signal the cluster preempts with: USR2 (submitit's warning, signal_delay_s before the end)
    # or TERM (SIGTERM, then SIGKILL after the partition's GraceTime/KillWait); both save a checkpoint
    preempt_signal: str = "USR2"
    # resubmissions after hitting the time limit (our runs resume, so more than the stock 0)
    max_num_timeout: int = 3
    # whole nodes: --exclusive, and --mem=0 (all of the node's memory) unless mem_gb is set
    exclusive: bool = False
    # environment for torchrun and the workers, e.g. {NCCL_SOCKET_IFNAME: ib0, NCCL_IB_HCA: mlx5}
    env: Dict[str, str] = field(default_factory=dict)
    # seconds node 0's rendezvous waits for the job's other nodes to start (multi-node jobs)
    rendezvous_timeout_s: int = 1800


@dataclass
class TorchrunLocalConf(LocalQueueConf):
    _target_: str = _TARGET + "TorchrunLocalLauncher"
    nproc_per_node: Optional[int] = None
    stop_grace_s: int = 60
    preempt_signal: str = "USR2"
    env: Dict[str, str] = field(default_factory=dict)
    rendezvous_timeout_s: int = 1800


ConfigStore.instance().store(group="hydra/launcher", name="torchrun_slurm", node=TorchrunSlurmConf,
                             provider="ponder")
ConfigStore.instance().store(group="hydra/launcher", name="torchrun_local", node=TorchrunLocalConf,
                             provider="ponder")


class _TorchrunLauncher(BaseSubmititLauncher):
    def __init__(self, nproc_per_node: Optional[int] = None, stop_grace_s: int = 60, preempt_signal: str = "USR2",
                 env: Optional[Dict[str, str]] = None, rendezvous_timeout_s: int = 1800, exclusive: bool = False,
                 **params: Any) -> None:
        super().__init__(**params)
        if self.params.get("tasks_per_node", 1) != 1:
            raise ValueError("hydra.launcher.tasks_per_node must be 1: one torchrun agent per node "
                             "starts the workers (set nproc_per_node or gpus_per_node instead)")
        if preempt_signal not in ("USR2", "TERM"):
            raise ValueError(f"hydra.launcher.preempt_signal={preempt_signal!r}: USR2 or TERM")
        delay = self.params.get("signal_delay_s")
        if delay is not None and stop_grace_s >= delay:
            raise ValueError(f"hydra.launcher.stop_grace_s={stop_grace_s} must be under signal_delay_s={delay}: "
                             "the workers save between the warning and the kill")
        self.nproc_per_node = nproc_per_node or self.params.get("gpus_per_node") or 1
        self.stop_grace_s = stop_grace_s
        self.preempt_signal = preempt_signal
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.rendezvous_timeout_s = rendezvous_timeout_s
        self.exclusive = exclusive

    def _executor(self) -> Any:
        """The submitit executor, configured as the stock launcher does, plus whole-node and srun settings."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]} \
            if "max_num_timeout" in self.params else {}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"], **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k not in init_keys}
        if self._EXECUTOR == "slurm":
            params.update(self._slurm_extras())
        executor.update_parameters(**params)
        return executor

    def _slurm_extras(self) -> Dict[str, Any]:
        extras: Dict[str, Any] = {}
        additional = dict(self.params.get("additional_parameters") or {})
        if self.exclusive:
            extras["slurm_exclusive"] = True
            asked = [self.params.get(k) for k in ("mem_gb", "mem_per_cpu", "mem_per_gpu")]
            if not any(asked) and not {"mem", "mem_per_cpu", "mem_per_gpu"} & set(additional):
                additional["mem"] = 0  # all of the node's memory
        if additional:
            extras["slurm_additional_parameters"] = additional
        # Slurm 22.05-23.02: srun no longer inherits sbatch's --cpus-per-task; without it the whole
        # torchrun tree (workers, data loaders) is pinned to one CPU.
        cpus = self.params.get("cpus_per_task")
        if cpus:
            extras["slurm_srun_args"] = [f"--cpus-per-task={cpus}"]
        return extras

    def _sweep_job(self, script: str, overrides: List[str], job_num: int) -> Any:
        """Compose one point's config (as Hydra would in the job) to find its run directory."""
        from launch.job import SweepJob

        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.num = job_num
        HydraConfig.instance().set_config(config)  # `${hydra:...}` in the sweep dir resolves per point
        run_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        return SweepJob(script, list(config.hydra.overrides.task), run_dir.resolve(), self.nproc_per_node,
                        float(self.stop_grace_s), self.preempt_signal, self.env, self.rendezvous_timeout_s)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        script = str(Path(sys.argv[0]).resolve())  # the stage entry point the sweep was started with
        if not script.endswith(".py") or not Path(script).is_file():
            raise ValueError(f"a ponder sweep starts from a launch script (python launch/<stage>.py -m ...), "
                             f"not {sys.argv[0]!r}")
        # The jobs import launch.job from this checkout (they inherit this environment, under Slurm too).
        paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"ponder: '{self._EXECUTOR}' sweep of {len(job_overrides)} jobs in {sweep_dir}")
        jobs = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            jobs.append(self._sweep_job(script, list(overrides), num))
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))} -> {jobs[-1].run_dir}")
        HydraConfig.instance().set_config(self.config)

        executor = self._executor()
        with executor.batch():  # one array job
            submitted = [executor.submit(job) for job in jobs]
        return [self._wait(job, handle) for job, handle in zip(jobs, submitted)]

    @staticmethod
    def _wait(job: Any, handle: Any) -> JobReturn:
        ret = JobReturn(overrides=job.overrides, working_dir=str(job.run_dir), task_name=Path(job.script).stem)
        try:
            # A job over N nodes is N submitit tasks (one torchrun agent each): `result()` asserts a
            # single task, `results()` waits for all and raises the first failure. Task 0's value is
            # the job's, as in hydra-submitit-launcher.
            ret.return_value = handle.results()[0]
            ret.status = JobStatus.COMPLETED
        except Exception as exc:  # reported by Hydra's sweeper once every job is over
            ret.return_value = exc
            ret.status = JobStatus.FAILED
        return ret


class TorchrunSlurmLauncher(_TorchrunLauncher):
    _EXECUTOR = "slurm"


class TorchrunLocalLauncher(_TorchrunLauncher):
    _EXECUTOR = "local"
