"""The process group: who this rank is, on which device, and the one collective every stage uses."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_own_extension_cache() -> None:
    """DeepSpeed JIT-builds its CPU comm op into torch's extension cache on first use. One cache per
    virtualenv: environments sharing ~/.cache rebuild it over each other's build, and a process
    killed mid-build leaves the cache's lock behind, on which every later start waits forever."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))


def prebuild_ops() -> None:
    """Build DeepSpeed's CPU comm op now (`make setup`), so no run compiles at start."""
    use_own_extension_cache()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


def init_distributed() -> DistInfo:
    """Join the torchrun group (NCCL on GPU, gloo on CPU), or make a group of one."""
    use_own_extension_cache()
    if "RANK" not in os.environ:  # plain `python launch/...`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def leave_distributed() -> None:
    """Wait for every rank, then tear the group down. Left to interpreter exit, a rank that finished
    first destroyed its gloo group while another rank still wrote its report, and aborted
    ("terminate called without an active exception", seen in the demo's eval)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def shared_run_dir(proposed: str | Path, info: DistInfo) -> Path:
    """Rank 0's run directory, on every rank (a `${now:}` in Hydra's default differs per rank)."""
    chosen = [str(Path(proposed).resolve())]
    dist.broadcast_object_list(chosen, src=0)
    run_dir = Path(chosen[0])
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    return run_dir
