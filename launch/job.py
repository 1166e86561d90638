"""What one sweep job runs inside its allocation: torchrun over the nodes and devices it was given.

The Hydra launchers of hydra_plugins/ponder_launcher submit one `SweepJob` per sweep point; submitit
calls it on every node of the job. It runs `torchrun <stage script> <the point's overrides>
hydra.run.dir=<the point's directory>` there and waits. The stage resumes from its newest complete
checkpoint (`resume=auto`), so a requeued job simply runs the same command again:
- preemption or time-out signal (submitit's, USR2): `checkpoint()` stops torchrun and hands submitit
  this same job to requeue;
- SIGTERM (Slurm requeues, cancels or kills the job itself): stop torchrun, exit without a result.
The job process imports only this module and submitit; the heavy imports happen in the workers.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import submitit

# The signal submitit's handler turns into checkpoint-and-requeue (SUBMITIT_PREEMPT_SIGNAL, else USR2).
PREEMPT_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class TorchrunFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Placement:
    """Where this node's torchrun agent sits in the job."""

    num_nodes: int
    node_rank: int
    master_addr: str
    job_id: str

    @classmethod
    def from_submitit(cls) -> Placement:
        import submitit

        env = submitit.JobEnvironment()
        return cls(env.num_nodes, env.node, env.hostnames[0], str(env.job_id))

    @property
    def master_port(self) -> int:
        """The same on every node without talking; distinct for neighbouring job ids."""
        digits = "".join(c for c in self.job_id if c.isdigit()) or "0"
        return 20000 + int(digits) % 20000


def torchrun_command(script: str, overrides: list[str], run_dir: Path, nproc_per_node: int,
                     place: Placement) -> list[str]:
    if place.num_nodes == 1:
        # A free port on this node: several single-node jobs of a sweep may share a machine.
        rendezvous = ["--standalone"]
    else:
        rendezvous = ["--nnodes", str(place.num_nodes), "--node_rank", str(place.node_rank),
                      "--master_addr", place.master_addr, "--master_port", str(place.master_port)]
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous,
            "--nproc_per_node", str(nproc_per_node), script, *overrides, f"hydra.run.dir={run_dir}"]


def torchrun_env(nproc_per_node: int) -> dict[str, str]:
    env = dict(os.environ)
    cpus = env.get("SLURM_CPUS_PER_TASK")
    if cpus and "OMP_NUM_THREADS" not in env:  # the allocation's CPUs, shared by the node's workers
        env["OMP_NUM_THREADS"] = str(max(1, int(cpus) // nproc_per_node))
    return env


def _own_group_deaf_to_preemption() -> None:
    # Slurm signals every process of the step; only the submitit task may act on the preemption
    # signal (checkpoint, requeue). The workers are stopped by `stop()`, never killed mid-step by it.
    os.setpgid(0, 0)
    signal.signal(PREEMPT_SIGNAL, signal.SIG_IGN)


@dataclass
class SweepJob:
    """One sweep point: the callable submitit runs in the job, on every node."""

    script: str  # the stage entry point, e.g. /repo/launch/rl.py
    overrides: list[str]  # the point's task overrides, as on the sweep's command line
    run_dir: Path
    nproc_per_node: int = 1
    stop_grace_s: float = 60.0
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:  # submitit pickles the job again to requeue it
        return {**self.__dict__, "process": None}

    def command(self, place: Placement) -> list[str]:
        return torchrun_command(self.script, self.overrides, self.run_dir, self.nproc_per_node, place)

    def __call__(self) -> str:
        command = self.command(Placement.from_submitit())
        print("ponder sweep job:", shlex.join(command), flush=True)
        signal.signal(signal.SIGTERM, self._ended_by_scheduler)
        self.process = subprocess.Popen(command, env=torchrun_env(self.nproc_per_node),
                                        preexec_fn=_own_group_deaf_to_preemption)
        # Poll rather than block in wait(): the signal handlers call stop() meanwhile.
        while (code := self.process.poll()) is None:
            time.sleep(0.5)
        if code != 0:
            raise TorchrunFailed(f"torchrun exited with {code} for {self.run_dir}; its output is in this job's log")
        return str(self.run_dir)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """submitit's preemption/time-out hook (global rank 0): stop torchrun, requeue this same job.

        Stopping first means no worker still writes into the run directory when the job starts again.
        """
        import submitit

        print("ponder sweep job: preempted, stopping torchrun and requeueing", flush=True)
        self.stop()
        return submitit.helpers.DelayedSubmission(self)

    def stop(self) -> None:
        """SIGTERM the whole tree (torchrun passes it on to the workers), SIGKILL after the grace time."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        while self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _ended_by_scheduler(self, signum: int, frame: object) -> None:
        # A result file would tell the sweep driver the job is over even when Slurm requeues it (it then
        # runs again and resumes); a cancelled job is told by Slurm's own state.
        print("ponder sweep job: SIGTERM from the scheduler, stopping torchrun", flush=True)
        self.stop()
        os._exit(128 + signal.SIGTERM)
