"""Rank-0 logging: metrics.jsonl (one line per optimizer step), wandb, a progress bar, log lines."""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import LoggingConfig
from .manifest import write_text_atomic

log = logging.getLogger("ponder")


def setup_log_lines(is_main: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format="%(asctime)s [ponder] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def _parse(line: str) -> dict[str, Any] | None:
    """A logged record, or None for a blank line or the torn last line of a killed run."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


class MetricsLogger:
    """Appends to <run_dir>/metrics.jsonl; mirrors to wandb; drives a tqdm bar with ETA."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, is_main: bool, run_config: Any,
                 start_step: int, total_steps: int):
        self.is_main = is_main
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb_run = None
        self.bar = None
        if not is_main:
            return
        if start_step == 0 and self.path.exists():
            self.path.unlink()  # a fresh run in a reused directory starts a fresh log
        else:
            self._truncate_after(start_step)
        if cfg.wandb_mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=cfg.wandb_project,
                name=cfg.wandb_name or Path(run_dir).name,
                dir=str(run_dir),
                mode=cfg.wandb_mode,
                config=asdict(run_config) if run_config is not None else None,
                resume="allow",
                id=_wandb_id(run_dir),
            )
        if cfg.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)

    def _truncate_after(self, step: int) -> None:
        """After a resume, drop lines of steps the killed run logged past its checkpoint."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text(errors="replace").splitlines()
                if (record := _parse(line)) is not None and record["step"] <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))  # a kill leaves the old log

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.is_main:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=metrics["step"])
        if self.bar is not None:
            # Follow the step, not the records: a run's step-0 evaluation is a record of its own.
            self.bar.update(max(0, metrics["step"] - self.bar.n))
            if "loss" in metrics:
                self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _wandb_id(run_dir: Path) -> str:
    """A stable id per run directory, so a resumed run appends to the same wandb run."""
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
