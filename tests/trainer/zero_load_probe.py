"""`model.init` under ZeRO-3 loads straight into partitioned parameters (trainer.model.partitioned_loading).

Run under torchrun on gloo (tests/trainer/test_zero_load.py does):
    torchrun --nproc_per_node=2 tests/trainer/zero_load_probe.py <out_dir>
Rank 0 saves a tiny Glm4v; every rank loads it twice — as a stage does under ZeRO-3, and plainly as
a reference — and writes <out_dir>/rank_<r>.json: the elements each parameter holds on this rank
right after loading (before DeepSpeed ever saw the model), their full sizes, and the largest
logit difference between the partitioned model (inside DeepSpeed) and the plain one on a packed
row with an image. Then one training step with `trainer.optim.vision_lr_scale=0.25`: the largest
change of any vision-tower and language-model element (Adam's first step moves an element by about
its learning rate), and the learning rate of each of the ZeRO optimizer's groups.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from data_pipelines.batch import collate_rows  # noqa: E402
from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer  # noqa: E402
from tests.data_pipelines.docs_factory import make_doc  # noqa: E402
import deepspeed  # noqa: E402

from trainer.config import OptimConfig, TrainerConfig  # noqa: E402
from trainer.distributed import init_distributed, leave_distributed  # noqa: E402
from trainer.forward import wrap_forward  # noqa: E402
from trainer.lr_schedule import set_lr  # noqa: E402
from trainer.model import build_model, load_preset, save_hf_checkpoint  # noqa: E402
from trainer.model_shape import VISUAL  # noqa: E402
from trainer.zero import wrap_deepspeed, zero3_loading_config  # noqa: E402


def main(out_dir: str) -> None:
    info = init_distributed()
    tokenizer = build_tiny_tokenizer()
    special = SpecialTokens.from_tokenizer(tokenizer)
    path = Path(out_dir) / "init"
    if info.is_main:
        torch.manual_seed(0)
        save_hf_checkpoint(build_model(load_preset("tiny"), tokenizer), tokenizer, path)
    dist.barrier()
    cfg = TrainerConfig(max_steps=1, zero_stage=3, clip_grad_norm=0.0,  # Adam with eps ~ 0: a step moves by ~lr
                        optim=OptimConfig(warmup_steps=0, weight_decay=0.0, eps=1e-16, vision_lr_scale=0.25))
    model_cfg = dataclasses.replace(load_preset("tiny"), init=str(path))
    model = build_model(model_cfg, tokenizer, zero3_loading_config(cfg, info))
    params = list(model.parameters())
    record = {
        "partitioned": all(hasattr(p, "ds_id") for p in params),
        "local_elements": sum(p.ds_tensor.numel() for p in params) if all(hasattr(p, "ds_tensor") for p in params)
        else sum(p.numel() for p in params),
        "full_elements": sum(getattr(p, "ds_numel", p.numel()) for p in params),
    }
    batch = collate_rows([[make_doc("a", [20, (4, 4), 20], seed=1, vocab=2000, special=special)]], seq_len=64,
                         pad_id=special.eos)
    ds = wrap_deepspeed(model, cfg, 1, 1, info)
    plain = wrap_forward(build_model(model_cfg, tokenizer)).eval()
    ds.eval()
    with torch.no_grad():
        record["max_logit_diff"] = (ds(batch) - plain(batch)).abs().max().item()
    record.update(vision_lr_step(ds, batch))
    Path(out_dir, f"rank_{info.rank}.json").write_text(json.dumps(record))
    leave_distributed()  # a barrier, then the group torn down before interpreter exit


def full_copies(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    params = dict(module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {name: p.detach().clone() for name, p in params.items()}


def vision_lr_step(ds, batch) -> dict:
    """One step at lr 1e-3; the largest element change per part and the groups' learning rates."""
    model = ds.module.model
    before = full_copies(model)
    ds.train()
    set_lr(ds.optimizer, 1e-3, 0.25)
    ds.backward(ds(batch).float().logsumexp(-1).mean())
    ds.step()
    after = full_copies(model)
    change = {"vision": 0.0, "language": 0.0}
    for name, old in before.items():
        part = "vision" if name.startswith(VISUAL) else "language"
        change[part] = max(change[part], (after[name] - old).abs().max().item())
    return {"max_change": change, "group_lrs": sorted(g["lr"] for g in ds.optimizer.param_groups)}


if __name__ == "__main__":
    main(sys.argv[1])
    # Every result is on disk and the group is gone: skip interpreter teardown, where something the
    # DeepSpeed engines left behind aborted a rank now and then ("terminate called without an
    # active exception": twice in fresh-clone suites, both after every result was written).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
