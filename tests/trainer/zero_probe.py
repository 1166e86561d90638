"""Measure what DeepSpeed ZeRO-3 really holds per rank for the tiny Glm4v after one step.

Run under torchrun on gloo (tests/trainer/test_memory_plan.py does), one or more cases per launch:
    torchrun --nproc_per_node=2 tests/trainer/zero_probe.py <out_dir> <name>:<fp32|bf16>[:freeze_vision] ...
For each case every rank writes <out_dir>/rank_<r>_<name>.json with bytes read off DeepSpeed's own tensors:
parameter shards (`p.ds_tensor`), the flat gradient-partition buffer, the fp32 master partitions,
Adam's state tensors, the reduce bucket, and the elements of persistent (kept-gathered) params.
The DeepSpeed config mirrors the trainer's (trainer/zero.py deepspeed_config): ZeRO-3,
contiguous gradients, bf16 on or off, AdamW with decay / no-decay groups.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()  # before the heavy imports: the phases below are printed from here

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from data_pipelines.batch import collate_rows  # noqa: E402
from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer  # noqa: E402
from tests.data_pipelines.docs_factory import make_doc  # noqa: E402
from trainer.distributed import leave_distributed, use_own_extension_cache  # noqa: E402
from trainer.forward import wrap_forward  # noqa: E402
from trainer.loss import token_losses  # noqa: E402
from trainer.model import build_model, load_preset  # noqa: E402


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one buffer count once)."""
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def measure(out_dir: str, name: str, precision: str, freeze_vision: bool) -> None:
    tokenizer = build_tiny_tokenizer()
    special = SpecialTokens.from_tokenizer(tokenizer)
    torch.manual_seed(0)
    model = build_model(load_preset("tiny"), tokenizer)
    if freeze_vision:
        model.model.visual.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}], lr=1e-3)
    world = dist.get_world_size()
    config = {
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": world,
        "gradient_clipping": 1.0, "bf16": {"enabled": precision == "bf16"},
        "zero_optimization": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True},
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=wrap_forward(model), optimizer=optimizer, config=config)
    batch = collate_rows([[make_doc("a", [20, (4, 4), 20], seed=1, vocab=2000, special=special)]], seq_len=64,
                         pad_id=special.eos)
    engine.backward(token_losses(engine(batch), batch.labels).mean())
    engine.step()  # Adam's m and v exist from the first step on

    zero = engine.optimizer
    params = list(model.parameters())
    adam = [v for state in zero.optimizer.state.values() for v in state.values()
            if torch.is_tensor(v) and v.numel() > 1]  # "step" is a scalar
    buckets = [b.buffer for b in zero.ipg_buckets.values() if getattr(b, "buffer", None) is not None]
    record = {
        "world": world,
        "params": sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in params),
        "grads": storage_bytes([zero.grad_partitions_flat_buffer]),
        "master": storage_bytes(zero.fp32_partitioned_groups_flat),
        "adam": sum(v.numel() * v.element_size() for v in adam),
        "reduce_bucket": sum(b.numel() * b.element_size() for b in buckets),
        "persistent_elements": sum(p.ds_numel for p in params if getattr(p, "ds_persist", False)),
        # every distinct storage of the above, so shared buffers cannot be double counted
        "distinct_state_bytes": storage_bytes([p.ds_tensor for p in params] + [zero.grad_partitions_flat_buffer]
                                              + list(zero.fp32_partitioned_groups_flat) + adam),
    }
    Path(out_dir, f"rank_{dist.get_rank()}_{name}.json").write_text(json.dumps(record))
    dist.barrier()


def main(out_dir: str, cases: list[str]) -> None:
    # The virtualenv's extension cache, which `make setup` filled: without it DeepSpeed compiled
    # its CPU comm op into ~/.cache on every fresh machine (93 s of a suite). gloo even where a
    # GPU is visible: the probe measures CPU tensors.
    use_own_extension_cache()
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    phase("imports and process group")
    for case in cases:  # each builds its own model and engine: nothing carries over but the group
        name, precision, *flags = case.split(":")
        measure(out_dir, name, precision, "freeze_vision" in flags)
        phase(f"case {name}")
    leave_distributed()  # as every stage: a group left to interpreter exit aborted a rank (SIGABRT) now and then


def phase(what: str) -> None:
    # Where a launch's time goes, kept beside the results by the fixture (docs/design.md).
    sys.stdout.write(f"rank {dist.get_rank()}: {what} done at {time.perf_counter() - STARTED:.1f} s\n")  # one write
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
    # Every result is on disk and the group is gone: skip interpreter teardown, where something the
    # DeepSpeed engines left behind aborted a rank now and then ("terminate called without an
    # active exception": twice in fresh-clone suites, both after every result was written).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
