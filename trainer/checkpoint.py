"""Atomic checkpoints and exact resume.

Layout of `<run_dir>/checkpoints/step_<N>/`:
    hf/                  safetensors + config + tokenizer + processor files (transformers/vLLM load it)
    state/               DeepSpeed engine checkpoint (ZeRO shards, optimizer states)
    rank_<r>.pt          per-rank RNG states (weights_only-loadable)
    rank_<r>.json        per-rank client state: data reader position, stage extras
    trainer_state.json   step, tokens seen, world size, ...
    COMPLETE             written last; a directory without it is never resumed from
`checkpoints/latest` names the newest complete step. Everything is written into `step_<N>.tmp/`
and renamed once all ranks are done, so a run killed mid-save resumes from the previous step.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import faults
from .engine import DistInfo

STEP_DIR = re.compile(r"^step_(\d+)$")


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class Checkpointer:
    def __init__(self, run_dir: str | Path, info: DistInfo, keep_last: int):
        self.root = Path(run_dir) / "checkpoints"
        self.info = info
        self.keep_last = keep_last

    # -- finding -------------------------------------------------------------------------------
    def complete_steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        steps = []
        for child in self.root.iterdir():
            match = STEP_DIR.match(child.name)
            if match and (child / "COMPLETE").exists():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def latest(self) -> Path | None:
        """The newest complete checkpoint (the `latest` pointer, checked; else a scan)."""
        pointer = self.root / "latest"
        if pointer.exists():
            candidate = self.root / pointer.read_text().strip()
            if (candidate / "COMPLETE").exists():
                return candidate
        steps = self.complete_steps()
        return self.root / f"step_{steps[-1]}" if steps else None

    # -- saving --------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        engine,
        trainer_state: dict[str, Any],
        client_state: dict[str, Any],
        export_hf: Callable[[Any, Path], None],
    ) -> Path:
        """Collective: every rank calls it. Returns the final directory."""
        final = self.root / f"step_{step}"
        tmp = self.root / f"step_{step}.tmp"
        if self.info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # debris of a save that was killed
            tmp.mkdir(parents=True)
        dist.barrier()
        engine.save_checkpoint(str(tmp / "state"), tag="zero", save_latest=False)
        export_hf(engine, tmp / "hf")
        torch.save(_rng_state(), tmp / f"rank_{self.info.rank}.pt")
        _write_json(tmp / f"rank_{self.info.rank}.json", client_state)
        faults.maybe_kill("save", step)
        dist.barrier()
        if self.info.is_main:
            _write_json(tmp / "trainer_state.json", {**trainer_state, "world_size": self.info.world_size})
            (tmp / "COMPLETE").write_text("ok\n")
            if final.exists():  # a complete save of this step already exists: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            pointer = self.root / "latest.tmp"
            pointer.write_text(final.name)
            os.replace(pointer, self.root / "latest")
            for old in self.complete_steps()[: -self.keep_last]:
                shutil.rmtree(self.root / f"step_{old}", ignore_errors=True)
        dist.barrier()
        return final

    # -- loading -------------------------------------------------------------------------------
    def load(self, path: Path, engine) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore engine, RNG; return (trainer_state, this rank's client state)."""
        if not (path / "COMPLETE").exists():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no COMPLETE marker)")
        trainer_state = json.loads((path / "trainer_state.json").read_text())
        saved_world = trainer_state["world_size"]
        if saved_world != self.info.world_size:
            raise RuntimeError(
                f"{path} was written by {saved_world} ranks, this run has {self.info.world_size}. "
                "Exact resume needs the same world size (data streams and ZeRO shards are per rank). "
                "To continue with another size, start a new run from its weights: "
                f"model.init={path / 'hf'} (fresh optimizer), see docs/training.md."
            )
        engine.load_checkpoint(
            str(path / "state"), tag="zero", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        _set_rng_state(torch.load(path / f"rank_{self.info.rank}.pt", weights_only=True))
        client_state = json.loads((path / f"rank_{self.info.rank}.json").read_text())
        return trainer_state, client_state
