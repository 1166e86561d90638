"""Atomic checkpoints and exact resume.

Layout of `<run_dir>/checkpoints/step_<N>/`:
    hf/                  safetensors + config + tokenizer + processor files (transformers/vLLM load it)
    state/               DeepSpeed checkpoint (ZeRO shards, optimizer states)
    rank_<r>.pt          per-rank RNG states (weights_only-loadable)
    rank_<r>.json        per-rank stage state: data reader position or RL sampler
    trainer_state.json   step, the stage's progress counters (tokens, samples), world size
    MANIFEST.json        every file above with its size and SHA-256 (manifest.py)
    COMPLETE             written last; a directory without it is never resumed from
`checkpoints/latest` names the newest complete step. Everything is written into `step_<N>.tmp/`
and renamed once all ranks are done, so a run killed mid-save resumes from the previous step, and
a save that fails (a full disk, an exception) stops the run with `latest` unchanged. At resume a
checkpoint whose files do not match its manifest is skipped for the newest intact one, with a
warning naming what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from transformers import PreTrainedTokenizerBase

from . import faults
from .distributed import DistInfo
from .logging import log
from .manifest import check_share, digest_share, list_files, write_manifest, write_text_atomic
from .model import ModelConfig, save_hf_checkpoint

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
    write_text_atomic(path, json.dumps(data, indent=1))


def complete_steps(root: Path) -> list[int]:
    """Steps of the complete checkpoints under a run's `checkpoints/`, ascending."""
    if not root.is_dir():
        return []
    steps = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / "COMPLETE").exists():
            steps.append(int(match.group(1)))
    return sorted(steps)


class CheckpointSaveError(RuntimeError):
    pass


def candidates(root: Path) -> list[Path]:
    """Complete checkpoints, newest first: the one `latest` names, then the others by step."""
    out = []
    pointer = root / "latest"
    if pointer.exists():
        named = root / pointer.read_text().strip()
        if (named / "COMPLETE").exists():
            out.append(named)
    out += [root / f"step_{s}" for s in reversed(complete_steps(root)) if root / f"step_{s}" not in out]
    return out


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run whose files are all there at their manifest's
    sizes (checksums are checked at resume). Reads files only: any process, no process group."""
    for candidate in candidates(Path(run_dir) / "checkpoints"):
        if not check_share(candidate, checksums=False):
            return candidate
    return None


def resolve_hf_dir(path: str | Path) -> Path:
    """The HF directory a `model.init` names, in any of its three forms (the same for every stage):
    a run directory (one holding `checkpoints/`) means its latest complete checkpoint; a ponder
    checkpoint `.../step_N` means its `hf/`; anything else is an HF directory."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"model.init={path}: the run has no complete checkpoint")
        path = latest
    if (path / "hf" / "config.json").exists():
        path = path / "hf"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model.init={path}: not an HF checkpoint directory (no config.json)")
    return path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def resolve_model_init(cfg: ModelConfig) -> ModelConfig:
    """cfg with `init` resolved to its HF directory (any of the three forms, as `resolve_hf_dir`)
    and, when `tokenizer` is unset or the built-in `tiny`, the tokenizer saved in that directory:
    a checkpoint's embeddings were trained against its own tokenizer, so the tiny presets'
    `tokenizer: tiny` must not pair a released checkpoint (GLM's ids) with ponder's built-in ids.
    A tokenizer directory given by name still wins."""
    init = str(resolve_hf_dir(cfg.init)) if cfg.init else cfg.init
    carries_tokenizer = bool(init) and any((Path(init) / name).is_file() for name in TOKENIZER_FILES)
    tokenizer = cfg.tokenizer
    if tokenizer is None or (tokenizer == "tiny" and carries_tokenizer):
        if not carries_tokenizer:
            raise FileNotFoundError(f"model.tokenizer is unset and model.init={cfg.init} carries no tokenizer "
                                    f"(no {' or '.join(TOKENIZER_FILES)}): set model.tokenizer=<directory>")
        tokenizer = init
    return dataclasses.replace(cfg, init=init, tokenizer=tokenizer)


class Checkpointer:
    def __init__(self, run_dir: str | Path, info: DistInfo, keep_last: int):
        self.root = Path(run_dir) / "checkpoints"
        self.info = info
        self.keep_last = keep_last

    # -- finding -------------------------------------------------------------------------------
    def complete_steps(self) -> list[int]:
        return complete_steps(self.root)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root.parent)

    def verify(self, path: Path) -> list[str]:
        """Collective: what is wrong with a checkpoint's files (each rank hashes its share)."""
        found: list[list[str]] = [[] for _ in range(self.info.world_size)]
        dist.all_gather_object(found, check_share(path, self.info.rank, self.info.world_size))
        return sorted(set(sum(found, [])))

    def resume_point(self, resume: str) -> Path | None:
        """Collective. `auto`: the newest intact checkpoint if any (a damaged newer one is skipped,
        saying so); `never`: none; else that checkpoint dir, which must be intact."""
        if resume == "never":
            return None
        if resume == "auto":
            damaged = []
            for candidate in candidates(self.root):
                problems = self.verify(candidate)
                if not problems:
                    if damaged and self.info.is_main:
                        log.warning("resuming from %s, the newest intact checkpoint (skipped: %s)",
                                    candidate.name, ", ".join(damaged))
                    return candidate
                damaged.append(candidate.name)
                if self.info.is_main:
                    log.warning("checkpoint %s is damaged (%s): falling back to an older one",
                                candidate, "; ".join(problems[:5]))
            if damaged:
                raise RuntimeError(f"no intact checkpoint under {self.root} (damaged: {', '.join(damaged)}); "
                                   "restore one, or start over with resume=never")
            return None
        path = Path(resume)
        if not (path / "COMPLETE").exists():
            raise FileNotFoundError(f"resume={resume}: not a complete checkpoint directory")
        problems = self.verify(path)
        if problems:
            raise RuntimeError(f"resume={resume}: the checkpoint is damaged ({'; '.join(problems[:5])})")
        return path

    # -- saving --------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        ds,
        trainer_state: dict[str, Any],
        client_state: dict[str, Any],
        tokenizer: PreTrainedTokenizerBase,
    ) -> Path:
        """Collective: every rank calls it. Returns the final directory. A failure on any rank
        raises CheckpointSaveError there (the other ranks fail in their next collective, and torchrun
        stops the job); `latest` still names the previous checkpoint."""
        final = self.root / f"step_{step}"
        tmp = self.root / f"step_{step}.tmp"
        try:
            self._write(step, tmp, final, ds, trainer_state, client_state, tokenizer)
        except Exception as err:
            previous = self.latest()
            raise CheckpointSaveError(
                f"saving the checkpoint of step {step} failed on rank {self.info.rank}: {err}. "
                f"Nothing is lost: {previous.name if previous else 'no checkpoint'} stays the latest "
                f"({self.root}), and the partial {tmp.name} is removed by the next save. Fix the cause "
                "(free disk space) and rerun with resume=auto.") from err
        return final

    def _write(self, step: int, tmp: Path, final: Path, ds, trainer_state: dict[str, Any],
               client_state: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> None:
        if self.info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # debris of a save that was killed
            tmp.mkdir(parents=True)
        dist.barrier()
        with faults.disk_full(step):
            ds.save_checkpoint(str(tmp / "state"), tag="zero", save_latest=False)
        export_hf(ds, tokenizer, tmp / "hf", self.info)
        torch.save(_rng_state(), tmp / f"rank_{self.info.rank}.pt")
        _write_json(tmp / f"rank_{self.info.rank}.json", client_state)
        faults.maybe_kill("save", step)
        if self.info.is_main:
            _write_json(tmp / "trainer_state.json", {**trainer_state, "world_size": self.info.world_size,
                                                     "optimizer_groups": len(ds.optimizer.param_groups)})
        dist.barrier()
        # Every file is written: the manifest, each rank hashing its share of them.
        files = [list_files(tmp) if self.info.is_main else None]
        dist.broadcast_object_list(files, src=0)
        shares: list[dict[str, Any]] = [{} for _ in range(self.info.world_size)]
        dist.all_gather_object(shares, digest_share(tmp, files[0], self.info.rank, self.info.world_size))
        if self.info.is_main:
            faults.maybe_raise("save", step)
            write_manifest(tmp, {k: v for share in shares for k, v in share.items()})
            (tmp / "COMPLETE").write_text("ok\n")
            old = final.with_name(final.name + ".old")
            if final.exists():  # a complete save of this step already exists: replace it
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            write_text_atomic(self.root / "latest", final.name)
            for old_step in self.complete_steps()[: -self.keep_last]:
                shutil.rmtree(self.root / f"step_{old_step}", ignore_errors=True)
        dist.barrier()

    # -- loading -------------------------------------------------------------------------------
    def load(self, path: Path, ds) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the DeepSpeed model and optimizer, RNG; return (trainer_state, this rank's client state)."""
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
        saved_groups, groups = trainer_state.get("optimizer_groups"), len(ds.optimizer.param_groups)
        if saved_groups is not None and saved_groups != groups:
            raise RuntimeError(
                f"{path} holds an optimizer of {saved_groups} parameter groups, this run's has {groups}: "
                "trainer.optim.vision_lr_scale other than 1 gives the vision tower groups of its own. Resume "
                "with the run's setting (any value other than 1 keeps the groups), or start a new run from "
                f"its weights: model.init={path / 'hf'} (fresh optimizer).")
        ds.load_checkpoint(
            str(path / "state"), tag="zero", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        _set_rng_state(torch.load(path / f"rank_{self.info.rank}.pt", weights_only=True))
        client_state = json.loads((path / f"rank_{self.info.rank}.json").read_text())
        return trainer_state, client_state


def export_hf(ds, tokenizer: PreTrainedTokenizerBase, out_dir: Path, info: DistInfo) -> None:
    """Collective: gather the full weights (ZeRO-3 shards) on rank 0 and write an HF directory."""
    model = ds.module.model  # ds.module is the training-forward wrapper
    if ds.zero_optimization_partition_weights():
        state_dict = ds._zero3_consolidated_16bit_state_dict()
    else:
        state_dict = ds.module.state_dict() if info.is_main else None
    if info.is_main:
        state_dict = {k.removeprefix("model."): v.detach().to("cpu") for k, v in state_dict.items()}
        save_hf_checkpoint(model, tokenizer, out_dir, state_dict=state_dict)
    dist.barrier()
