"""What every entry point does before its stage runs: validate, join the group, pick the run dir."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

# `torchrun launch/x.py` puts launch/ on sys.path, not the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hydra.core.config_store import ConfigStore  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

import torch.distributed as dist  # noqa: E402

from data_pipelines.records import DataSourceError  # noqa: E402
from trainer import lifetime  # noqa: E402
from trainer.distributed import DistInfo, init_distributed, shared_run_dir  # noqa: E402
from trainer.logging import log, setup_log_lines  # noqa: E402
from trainer.run_lock import RunDirLocked, RunLock  # noqa: E402

# A child a trainer spawned (vLLM's engine core on GPU) imports this module again as its main
# module's import: it dies with its parent from here on.
lifetime.follow_parent()


# DeepSpeed still calls torch.distributed's renamed collectives; one warning per call drowns the log.
warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")


def plain_data_errors(main: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """Data that cannot be read as given (a folder of several splits, no records found) stops the
    run with its one-line reason, as a bad recipe value does, not with a traceback."""

    @functools.wraps(main)
    def run(raw: DictConfig) -> None:
        try:
            main(raw)
        except DataSourceError as exc:
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise  # Hydra reports it after the sweep's other jobs; an exit would end the sweep here
            sys.exit(f"ponder: {exc}")

    return run


def hydra_output_dir() -> Path:
    """This job's output directory, as Hydra made it. Read unresolved: Hydra resolved `hydra.run.dir`
    once already, so a folder named with an escaped `\\${x}` holds a literal `${x}` here."""
    return Path(OmegaConf.to_container(HydraConfig.get().runtime, resolve=False)["output_dir"])


def register(name: str, schema: type) -> None:
    ConfigStore.instance().store(name=name, node=schema)


def exit_after_last_job() -> None:
    """Every job's results are on disk and every rank is past its last collective: run Python's exit
    handlers (the run lock, wandb), then leave without the interpreter's teardown. There, C++
    threads of the gloo groups and DeepSpeed engines left behind aborted a rank now and then
    ("terminate called without an active exception": in eval, and in the quick demo's RL under load)."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def exit_on_sigterm() -> None:
    """torchrun and Slurm stop workers with SIGTERM. Exiting through Python runs the stages' cleanup
    (vLLM engine processes, reward workers), which the default action would leave running."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def start(raw: DictConfig) -> tuple[Any, Path, DistInfo]:
    """Typed config (bad values stop here, before any work), process group, shared run dir."""
    exit_on_sigterm()
    lifetime.adopt()  # die with torchrun; this process's children die with it
    try:
        cfg = OmegaConf.to_object(raw)  # runs the dataclasses' validation
    except (ValueError, TypeError) as exc:
        sys.exit(f"ponder: bad recipe value: {exc}")
    info = init_distributed()
    setup_log_lines(info.is_main)
    run_dir = shared_run_dir(hydra_output_dir(), info)
    lock_run_dir(run_dir, info)
    if info.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(raw, resolve=True))
    return cfg, run_dir, info


def lock_run_dir(run_dir: Path, info: DistInfo) -> None:
    """Rank 0 takes the run directory's lock; every rank stops when a live run holds it."""
    refusal = [None]
    if info.is_main:
        try:
            lock = RunLock(run_dir).acquire()
            if lock.previous:
                log.info("took over %s from a run that is gone (host %s, pid %s)", lock.path,
                         lock.previous.get("host"), lock.previous.get("pid"))
        except RunDirLocked as err:
            refusal = [str(err)]
    dist.broadcast_object_list(refusal, src=0)
    if refusal[0]:
        sys.exit(f"ponder: {refusal[0]}")
