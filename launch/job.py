"""What one sweep job runs inside its allocation: torchrun over the nodes and devices it was given.

The Hydra launchers of hydra_plugins/ponder_launcher submit one `SweepJob` per sweep point; submitit
calls it on every node of the job (one task per node). It runs `torchrun <stage script> <the point's
overrides> hydra.run.dir=<the point's directory>` there and waits. The stage resumes from its newest
complete checkpoint (`resume=auto`), so a requeued job simply runs the same command again.

Preemption saves (trainer/preemption.py): the workers are told which signal means "save and stop"
(`PONDER_PREEMPT_SIGNAL`); on it every rank of every node finishes its step, all write one checkpoint,
and the workers exit. This process forwards the signal to its node's workers (the scheduler may signal
only the job's tasks) and waits up to `stop_grace_s` for them, then:
- USR2 (submitit's time-out/preemption warning, `--signal=USR2@signal_delay_s`): on node 0 submitit
  calls `checkpoint()`, which hands it this same job to requeue; the other nodes wait to be requeued;
- SIGTERM (Slurm requeues, preempts or cancels the job itself; `preempt_signal=TERM` makes the workers
  save on it too): exit without a result, Slurm decides what comes next.
The job process imports only this module and submitit; the heavy imports happen in the workers.
"""

from __future__ import annotations

import os
import re
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
# Rendezvous ports: below Linux's ephemeral range (32768-60999), where outgoing connections take
# theirs, and above the registered services most nodes run.
PORT_BASE, PORT_SPAN = 15000, 15000
PREEMPT_SIGNALS = ("USR2", "TERM")


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
        """The same on every node without talking; distinct for neighbouring job ids; never in the
        ephemeral range, where a node's own outgoing connection may already hold it."""
        digits = "".join(c for c in self.job_id if c.isdigit()) or "0"
        return PORT_BASE + int(digits) % PORT_SPAN


def hydra_quote(text: Path | str) -> str:
    """A path as a quoted Hydra override value: a folder such as `my demo, v2` or `runs (old)` is read
    as one string, not a list, a sweep or a grammar error, and a complete `${x}` in it stays text."""
    # A backslash escapes only before a quote, the closing one, or `${` (OmegaConf): double those.
    escaped = re.sub(r"(\\*)('|\$\{)", lambda m: m.group(1) * 2 + "\\" + m.group(2), str(text))
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"


def torchrun_command(script: str, overrides: list[str], run_dir: Path, nproc_per_node: int,
                     place: Placement, rendezvous_timeout_s: int = 1800) -> list[str]:
    if place.num_nodes == 1:
        # A free port on this node: several single-node jobs of a sweep may share a machine.
        rendezvous = ["--standalone"]
    else:
        # Static rendezvous on node 0's store; the other nodes retry connecting for the whole timeout,
        # so a node that starts late (slow image pull, busy shared filesystem) still joins.
        rendezvous = ["--nnodes", str(place.num_nodes), "--node_rank", str(place.node_rank),
                      "--master_addr", place.master_addr, "--master_port", str(place.master_port),
                      "--rdzv_conf", f"timeout={rendezvous_timeout_s}"]
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous,
            "--nproc_per_node", str(nproc_per_node), script, *overrides, f"hydra.run.dir={hydra_quote(run_dir)}"]


def torchrun_env(nproc_per_node: int, extra: dict[str, str] | None = None, preempt_signal: str = "USR2",
                 stop_grace_s: float = 60.0) -> dict[str, str]:
    """The job's environment for torchrun: the recipe's `env` (NCCL/socket settings), the preemption
    signal the workers save on, the CPU share of each worker."""
    env = {**os.environ, **{k: str(v) for k, v in (extra or {}).items()}}
    env["PONDER_PREEMPT_SIGNAL"] = preempt_signal
    # torchrun's own SIGTERM (a scheduler's, under preempt_signal=TERM) gives the workers this long to
    # save before it kills them (its default is 30 s).
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(int(stop_grace_s)))
    cpus = env.get("SLURM_CPUS_PER_TASK")
    if cpus and "OMP_NUM_THREADS" not in env:  # the allocation's CPUs, shared by the node's workers
        env["OMP_NUM_THREADS"] = str(max(1, int(cpus) // nproc_per_node))
    return env


def _own_group_deaf_to_preemption() -> None:
    # torchrun (the agent) must outlive the preemption signal: its workers handle it (save, then exit)
    # and it reports their exit. They install their own handler over this inherited SIG_IGN.
    os.setpgid(0, 0)
    signal.signal(PREEMPT_SIGNAL, signal.SIG_IGN)


@dataclass
class SweepJob:
    """One sweep point: the callable submitit runs in the job, on every node."""

    script: str  # the stage entry point, e.g. /repo/launch/rl.py
    overrides: list[str]  # the point's task overrides, as on the sweep's command line
    run_dir: Path
    nproc_per_node: int = 1
    stop_grace_s: float = 60.0  # seconds the workers get to finish their step and save, then SIGTERM/KILL
    preempt_signal: str = "USR2"  # the signal the workers save on besides USR2's warning: USR2 or TERM
    env: dict[str, str] = field(default_factory=dict)  # extra environment for torchrun (NCCL_*, ...)
    rendezvous_timeout_s: int = 1800  # how long node 0 waits for late nodes (multi-node only)
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    preempted: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.preempt_signal not in PREEMPT_SIGNALS:
            raise ValueError(f"preempt_signal={self.preempt_signal!r}: expected one of {PREEMPT_SIGNALS}")

    def __getstate__(self) -> dict:  # submitit pickles the job again to requeue it
        return {**self.__dict__, "process": None, "preempted": False}

    def command(self, place: Placement) -> list[str]:
        return torchrun_command(self.script, self.overrides, self.run_dir, self.nproc_per_node, place,
                                self.rendezvous_timeout_s)

    def __call__(self) -> str:
        place = Placement.from_submitit()
        command = self.command(place)
        print("ponder sweep job:", shlex.join(command), flush=True)
        signal.signal(signal.SIGTERM, self._ended_by_scheduler)
        self._watch_preemption_signal()
        self.process = subprocess.Popen(
            command, env=torchrun_env(self.nproc_per_node, self.env, self.preempt_signal, self.stop_grace_s),
            preexec_fn=_own_group_deaf_to_preemption)
        # Poll rather than block in wait(): the signal handlers call stop() meanwhile.
        while (code := self.process.poll()) is None:
            time.sleep(0.5)
        if self.preempted:
            # The workers saved and stopped; node 0's submitit requeues the whole job, which ends this
            # process. Returning a result here would tell the sweep driver this node is done.
            print("ponder sweep job: saved on preemption, waiting to be requeued", flush=True)
            time.sleep(self.stop_grace_s + 300)
            raise TorchrunFailed("preempted and saved, but the job was not requeued")
        if code != 0:
            raise TorchrunFailed(f"torchrun exited with {code} for {self.run_dir}; its output is in this job's log")
        return str(self.run_dir)

    def _watch_preemption_signal(self) -> None:
        """Chain our handler before submitit's for the preemption signal (USR2): forward it to this
        node's workers, then let submitit act (on node 0 it calls `checkpoint()`)."""
        submitits = signal.getsignal(PREEMPT_SIGNAL)

        def on_preemption(signum: int, frame: object) -> None:
            self._ask_workers_to_save(signum)
            if callable(submitits):
                submitits(signum, frame)

        signal.signal(PREEMPT_SIGNAL, on_preemption)

    def _ask_workers_to_save(self, signum: int) -> None:
        self.preempted = True
        if self.process is not None and self.process.poll() is None:
            print(f"ponder sweep job: {signal.Signals(signum).name}: the workers finish their step and save",
                  flush=True)
            os.killpg(self.process.pid, signum)  # the agent ignores it (or, for TERM, passes it on)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """submitit's preemption/time-out hook (global rank 0): let the workers save, requeue this job.

        Waiting for them first means no worker still writes into the run directory when the job starts
        again, and the requeued job resumes from the step the signal interrupted.
        """
        import submitit

        print("ponder sweep job: preempted, saving and requeueing", flush=True)
        self._wait_for_workers()
        return submitit.helpers.DelayedSubmission(self)

    def _wait_for_workers(self) -> None:
        """Up to stop_grace_s for the workers to save and exit by themselves, then stop them."""
        if self.process is None:
            return
        deadline = time.monotonic() + self.stop_grace_s
        while self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.process.poll() is None:
            print(f"ponder sweep job: the workers did not stop within {self.stop_grace_s:.0f} s, stopping them",
                  flush=True)
        self.stop(grace_s=10.0)

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM the whole tree (torchrun passes it on to the workers), SIGKILL after the grace time."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + (self.stop_grace_s if grace_s is None else grace_s)
        while self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _ended_by_scheduler(self, signum: int, frame: object) -> None:
        # A result file would tell the sweep driver the job is over even when Slurm requeues it (it then
        # runs again and resumes); a cancelled job is told by Slurm's own state.
        if self.preempt_signal == "TERM":
            print("ponder sweep job: SIGTERM from the scheduler, the workers save", flush=True)
            self._ask_workers_to_save(signum)
            self._wait_for_workers()
        else:
            print("ponder sweep job: SIGTERM from the scheduler, stopping torchrun", flush=True)
            self.stop()
        os._exit(128 + signal.SIGTERM)
