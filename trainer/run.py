"""Run-level helpers every stage shares: the run directory, where to resume, HF export."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from .checkpoint import Checkpointer
from .engine import DistInfo
from .model import save_hf_checkpoint


def shared_run_dir(proposed: str | Path, info: DistInfo) -> Path:
    """Rank 0's run directory, on every rank (a `${now:}` in Hydra's default differs per rank)."""
    chosen = [str(Path(proposed).resolve())]
    dist.broadcast_object_list(chosen, src=0)
    run_dir = Path(chosen[0])
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    return run_dir


def resume_point(resume: str, checkpoints: Checkpointer) -> Path | None:
    """`auto`: the latest complete checkpoint if any; `never`: none; else a checkpoint dir."""
    if resume == "never":
        return None
    if resume == "auto":
        return checkpoints.latest()
    path = Path(resume)
    if not (path / "COMPLETE").exists():
        raise FileNotFoundError(f"resume={resume}: not a complete checkpoint directory")
    return path


def export_hf(engine, tokenizer: PreTrainedTokenizerBase, out_dir: Path, info: DistInfo) -> None:
    """Collective: gather the full weights (ZeRO-3 shards) on rank 0 and write an HF directory."""
    model = engine.module.model  # engine.module is the UniformVisionForward wrapper
    if engine.zero_optimization_partition_weights():
        state_dict = engine._zero3_consolidated_16bit_state_dict()
    else:
        state_dict = engine.module.state_dict() if info.is_main else None
    if info.is_main:
        state_dict = {k.removeprefix("model."): v.detach().to("cpu") for k, v in state_dict.items()}
        save_hf_checkpoint(model, tokenizer, out_dir, state_dict=state_dict)
    dist.barrier()
