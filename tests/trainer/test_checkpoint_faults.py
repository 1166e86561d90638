"""Saves that fail and checkpoints that are damaged: `latest` survives a failed save, the run stops
with a clear message, and resume skips a damaged checkpoint for the newest intact one, exactly."""

from __future__ import annotations

import json
import os

import pytest

from data_pipelines.shards import write_shards
from data_pipelines.synthetic import make_interleaved_corpus
from tests.trainer.launching import check, launch, metrics
from trainer.checkpoint import latest_checkpoint
from trainer.manifest import MANIFEST, check_share, digest_share, list_files, write_manifest


def _checkpoint(root, step: int, files: dict[str, bytes]):
    path = root / "checkpoints" / f"step_{step}"
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    names = list_files(path)
    write_manifest(path, {**digest_share(path, names, 0, 2), **digest_share(path, names, 1, 2)})
    (path / "COMPLETE").write_text("ok\n")
    (root / "checkpoints" / "latest").write_text(path.name)
    return path


def test_the_manifest_finds_truncated_missing_and_altered_files(tmp_path):
    files = {"state/zero/shard.pt": os.urandom(5000), "hf/model.safetensors": os.urandom(3000), "rank_0.json": b"{}"}
    old = _checkpoint(tmp_path, 3, files)
    new = _checkpoint(tmp_path, 6, files)
    assert json.loads((new / MANIFEST).read_text())["files"].keys() == files.keys()
    assert check_share(new) == [] and latest_checkpoint(tmp_path) == new

    shard = new / "state/zero/shard.pt"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated copy
    assert check_share(new) == ["state/zero/shard.pt has 1000 bytes, 5000 expected"]
    assert latest_checkpoint(tmp_path) == old  # model.init=<run dir> takes the intact one
    (new / "rank_0.json").unlink()
    assert "rank_0.json missing" in check_share(new)

    data = bytearray((old / "hf/model.safetensors").read_bytes())
    data[100] ^= 0xFF  # same size, one byte flipped: only the checksum sees it
    (old / "hf/model.safetensors").write_bytes(bytes(data))
    assert check_share(old, checksums=False) == []
    assert check_share(old, rank=0, world=2) + check_share(old, rank=1, world=2) == [
        "hf/model.safetensors checksum mismatch"]  # hashed by exactly one of two ranks


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_fault_data")
    docs = make_interleaved_corpus(root, num_docs=40, seed=0, text_words=(20, 120))
    write_shards(docs, root, root / "shards", samples_per_shard=10)
    return root / "shards"


def test_failed_saves_keep_latest_and_a_damaged_checkpoint_falls_back_exactly(shards, tmp_path):
    args = ["recipe=pretrain_tiny", "data.packing.seq_len=256", f"data.shards={shards}", "trainer.max_steps=9",
            "trainer.save_every=3", "trainer.keep_last=3", "logging.wandb_mode=disabled", "logging.progress_bar=false"]
    reference = tmp_path / "reference"
    check(launch("pretrain.py", args + [f"hydra.run.dir={reference}"]))
    run = tmp_path / "run"
    ckpts = run / "checkpoints"

    full = launch("pretrain.py", args + [f"hydra.run.dir={run}"], fault="enospc_in_save:6")
    assert full.returncode != 0
    assert "saving the checkpoint of step 6 failed on rank 0: [Errno 28] No space left on device" in full.stderr
    assert "step_3 stays the latest" in full.stderr
    assert (ckpts / "latest").read_text() == "step_3" and not (ckpts / "step_6").exists()

    failed = launch("pretrain.py", args + [f"hydra.run.dir={run}"], fault="error_in_save:9")  # resumes at 3
    assert failed.returncode != 0
    assert "saving the checkpoint of step 9 failed on rank 0: injected failure" in failed.stderr
    assert (ckpts / "latest").read_text() == "step_6" and not (ckpts / "step_9").exists()

    shard = next((ckpts / "step_6" / "state" / "zero").glob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a truncated copy
    resumed = check(launch("pretrain.py", args + [f"hydra.run.dir={run}"]))
    assert f"step_6 is damaged (state/zero/{shard.name} has" in resumed.stderr
    assert "resuming from step_3, the newest intact checkpoint (skipped: step_6)" in resumed.stderr
    assert [m["loss"] for m in metrics(run)] == [m["loss"] for m in metrics(reference)]  # bitwise
    assert [m["step"] for m in metrics(run)] == list(range(1, 10))
    assert (ckpts / "latest").read_text() == "step_9" and check_share(ckpts / "step_6") == []


def test_a_checkpoint_of_other_optimizer_groups_stops_the_resume_with_the_reason(tmp_path):
    """trainer.optim.vision_lr_scale other than 1 splits the optimizer's groups: resuming across that
    change stops before DeepSpeed reads a shard, saying which setting to use (not DeepSpeed's bare
    group-count error)."""
    from types import SimpleNamespace

    import torch

    from trainer.checkpoint import Checkpointer
    from trainer.distributed import DistInfo

    step = tmp_path / "checkpoints" / "step_4"
    step.mkdir(parents=True)
    (step / "COMPLETE").write_text("ok\n")
    (step / "trainer_state.json").write_text(json.dumps({"step": 4, "world_size": 1, "optimizer_groups": 2}))
    ds = SimpleNamespace(optimizer=SimpleNamespace(param_groups=[{}] * 4),
                         load_checkpoint=lambda *a, **k: pytest.fail("read the shards"))
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="vision_lr_scale"):
        Checkpointer(tmp_path, info, keep_last=2).load(step, ds)
