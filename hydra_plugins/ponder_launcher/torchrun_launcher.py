"""hydra-submitit-launcher's Slurm and local launchers, with torchrun inside every job.

The stock launchers run the Hydra task function inside the job: one process per srun task, no
torchrun. These subclasses submit the same way (one array task per sweep point, submitit's folders,
resources and requeue), but compose each point's config here, in the submitting process, and submit
a `launch.job.SweepJob`: torchrun over the job's nodes and devices running the stage script with the
point's overrides and `hydra.run.dir=<the point's directory>`. Preemption stops torchrun and requeues
the same job, which resumes from its newest complete checkpoint (`resume=auto`).

Configs: hydra/launcher=torchrun_slurm | torchrun_local, extended by recipes/hydra/launcher/*.yaml.
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

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
    # seconds torchrun gets to stop on preemption before SIGKILL
    stop_grace_s: int = 60
    # resubmissions after hitting the time limit (our runs resume, so more than the stock 0)
    max_num_timeout: int = 3


@dataclass
class TorchrunLocalConf(LocalQueueConf):
    _target_: str = _TARGET + "TorchrunLocalLauncher"
    nproc_per_node: Optional[int] = None
    stop_grace_s: int = 60


ConfigStore.instance().store(group="hydra/launcher", name="torchrun_slurm", node=TorchrunSlurmConf,
                             provider="ponder")
ConfigStore.instance().store(group="hydra/launcher", name="torchrun_local", node=TorchrunLocalConf,
                             provider="ponder")


class _TorchrunLauncher(BaseSubmititLauncher):
    def __init__(self, nproc_per_node: Optional[int] = None, stop_grace_s: int = 60, **params: Any) -> None:
        super().__init__(**params)
        if self.params.get("tasks_per_node", 1) != 1:
            raise ValueError("hydra.launcher.tasks_per_node must be 1: one torchrun agent per node "
                             "starts the workers (set nproc_per_node or gpus_per_node instead)")
        self.nproc_per_node = nproc_per_node or self.params.get("gpus_per_node") or 1
        self.stop_grace_s = stop_grace_s

    def _executor(self) -> Any:
        """The submitit executor, configured exactly as the stock launcher does."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]} \
            if "max_num_timeout" in self.params else {}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"], **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        return executor

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
                        float(self.stop_grace_s))

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
