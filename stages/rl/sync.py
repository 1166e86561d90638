"""Weight sync: the trainer's (ZeRO-3 partitioned) parameters -> every rank's rollout engine.

Parameters are gathered a bucket at a time (`GatheredParameters`, a collective: every rank takes
part), so no rank ever holds more than one bucket beyond its shard. For an engine that takes a
state dict (HF) every rank keeps a CPU copy; for an engine that loads files (vLLM) the first rank
of each node writes one safetensors file into a node-local directory, every engine on the node
reloads it, and the file is removed.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from trainer.distributed import DistInfo

from .rollout.base import RolloutEngine

BUCKET_ELEMENTS = 256 * 2**20  # parameters gathered at once (512 MiB in bf16)


def _buckets(named: list[tuple[str, torch.nn.Parameter]]) -> Iterator[list[tuple[str, torch.nn.Parameter]]]:
    bucket, size = [], 0
    for name, param in named:
        numel = getattr(param, "ds_numel", param.numel())
        if bucket and size + numel > BUCKET_ELEMENTS:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, param))
        size += numel
    if bucket:
        yield bucket


def gathered_state_dict(model: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """Full-size CPU copies of every parameter (HF names) where `keep`; collective under ZeRO-3."""
    out: dict[str, torch.Tensor] = {}
    named = list(model.named_parameters())
    partitioned = any(hasattr(p, "ds_id") for _, p in named)
    for bucket in _buckets(named):
        params = [p for _, p in bucket]
        if partitioned:
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                if keep:
                    out.update({n: p.detach().to("cpu", copy=True) for n, p in bucket})
        elif keep:
            out.update({n: p.detach().to("cpu", copy=True) for n, p in bucket})
    return out


def _node_group_leader(info: DistInfo) -> bool:
    return info.local_rank == 0


class WeightSync:
    def __init__(self, run_dir: Path, info: DistInfo, sync_root: str):
        self.info = info
        tag = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
        self.dir = Path(sync_root) / f"ponder-sync-{tag}"

    def __call__(self, model: torch.nn.Module, engine: RolloutEngine) -> None:
        """Collective: every rank calls it after each update."""
        if not engine.loads_from_files:
            engine.load_weights(state_dict=gathered_state_dict(model, keep=True))
            return
        leader = _node_group_leader(self.info)
        state = gathered_state_dict(model, keep=leader)
        if leader:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in state.items()}, str(self.dir / "model.safetensors"),
                      metadata={"format": "pt"})
            del state
        dist.barrier()
        engine.load_weights(path=self.dir)
        dist.barrier()
        if leader:
            shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        if _node_group_leader(self.info) and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

