"""Pretraining end to end on CPU: torchrun + ZeRO-3 on gloo, checkpoints, exact resume, failures."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from data_pipelines.processor import VisionProcessor
from data_pipelines.chat import encode_prompt
from data_pipelines.shards import write_shards
from data_pipelines.synthetic import make_interleaved_corpus
from data_pipelines.tokenizer import load_tokenizer
from tests.trainer.launching import check, launch, metrics

BASE = ["recipe=pretrain_tiny", "data.packing.seq_len=512", "data.packing.buffer_docs=16",
        "trainer.optim.warmup_steps=3", "logging.progress_bar=false"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_data")
    docs = make_interleaved_corpus(root, num_docs=120, seed=0, text_words=(20, 200))
    write_shards(docs, root, root / "shards", samples_per_shard=10)
    return root / "shards"


@pytest.fixture(scope="module")
def two_rank_run(shards, tmp_path_factory):
    """The issue's command: 2 ranks, 30 steps, a save every 10, wandb offline."""
    run = tmp_path_factory.mktemp("two_rank") / "run"
    check(launch("pretrain.py", BASE + [f"data.shards={shards}", "trainer.max_steps=30", "trainer.save_every=10",
                                        "data.num_workers=1", f"hydra.run.dir={run}"], nproc=2))
    return run


def test_two_rank_run_trains_logs_and_saves_loadable_checkpoints(two_rank_run):
    lines = metrics(two_rank_run)
    assert [m["step"] for m in lines] == list(range(1, 31))
    losses = [m["loss"] for m in lines]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0  # the loss falls
    for key in ("lr", "grad_norm", "tokens", "tokens_per_s", "packing_efficiency", "skipped", "videos/train"):
        assert key in lines[-1]
    assert sum(m["images/train"] for m in lines) > 0  # the images that reached the update, every step's
    tokens = [m["tokens"] for m in lines]
    assert tokens == sorted(tokens) and tokens[0] > 0.9 * 4 * 512  # 4 rows of 512 per step, ~full
    ckpts = two_rank_run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_20", "step_30"]  # keep_last 2
    assert (ckpts / "latest").read_text() == "step_30"
    assert sorted(p.name for p in (ckpts / "step_30").glob("rank_*")) == ["rank_0.json", "rank_0.pt", "rank_1.json", "rank_1.pt"]
    assert list((two_rank_run / "wandb").glob("offline-run-*/run-*.wandb"))  # a real offline wandb run

    hf = ckpts / "step_30" / "hf"
    from transformers import Glm4vForConditionalGeneration

    model = Glm4vForConditionalGeneration.from_pretrained(hf).eval()
    tokenizer = load_tokenizer(hf)
    prompt = encode_prompt(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}],
        tokenizer, VisionProcessor(), images=[Image.new("RGB", (96, 64), (220, 20, 20))],
    )
    out = model.generate(**prompt.as_kwargs(), max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt.input_ids.shape[1]


def test_one_rank_with_accumulation_matches_two_ranks(two_rank_run, shards, tmp_path):
    # Same global batches: 2 streams either as 2 ranks x 1 worker or 1 rank x 2 workers (grad_accum 2).
    run = tmp_path / "one_rank"
    check(launch("pretrain.py", BASE + [f"data.shards={shards}", "trainer.max_steps=30", "trainer.save_every=100",
                                        "data.num_workers=2", "trainer.grad_accum=2", "logging.wandb_mode=disabled",
                                        f"hydra.run.dir={run}"]))
    one, two = metrics(run), metrics(two_rank_run)
    assert [m["tokens"] for m in one] == [m["tokens"] for m in two]  # identical data
    # Different reduction order only (gloo all-reduce vs local accumulation): tiny float drift.
    assert [m["loss"] for m in one] == pytest.approx([m["loss"] for m in two], rel=1e-4, abs=1e-4)


def test_kill_mid_save_on_two_ranks_resumes_to_the_same_losses(two_rank_run, shards, tmp_path):
    run = tmp_path / "killed"
    args = BASE + [f"data.shards={shards}", "trainer.max_steps=30", "trainer.save_every=10", "data.num_workers=1",
                   "logging.wandb_mode=disabled", f"hydra.run.dir={run}"]
    killed = launch("pretrain.py", args, nproc=2, fault="kill_in_save:20")
    assert killed.returncode != 0
    assert (run / "checkpoints" / "step_20.tmp").exists()  # the save was interrupted
    assert (run / "checkpoints" / "latest").read_text() == "step_10"
    check(launch("pretrain.py", args, nproc=2))  # resume=auto
    assert [m["loss"] for m in metrics(run)] == [m["loss"] for m in metrics(two_rank_run)]
    assert not (run / "checkpoints" / "step_20.tmp").exists()


@pytest.mark.parametrize("zero_stage", [3, 0])  # 0: the demo's stage (DeepSpeed's plain data parallel)
def test_kill_mid_step_resumes_exactly(shards, tmp_path, zero_stage):
    args = BASE + [f"data.shards={shards}", "trainer.max_steps=12", "trainer.save_every=4", "data.num_workers=2",
                   "logging.wandb_mode=disabled", f"trainer.zero_stage={zero_stage}"]
    reference = tmp_path / "reference"
    check(launch("pretrain.py", args + [f"hydra.run.dir={reference}"]))
    run = tmp_path / "killed"
    killed = launch("pretrain.py", args + [f"hydra.run.dir={run}"], fault="kill_in_step:7")
    assert killed.returncode == -9
    assert [m["step"] for m in metrics(run)] == list(range(1, 7))
    check(launch("pretrain.py", args + [f"hydra.run.dir={run}"]))
    resumed, expected = metrics(run), metrics(reference)
    assert [m["loss"] for m in resumed] == [m["loss"] for m in expected]  # exact on CPU
    assert [m["documents"] for m in resumed] == [m["documents"] for m in expected]  # no document repeated or skipped
    final_a = load_file(run / "checkpoints" / "step_12" / "hf" / "model.safetensors")
    final_b = load_file(reference / "checkpoints" / "step_12" / "hf" / "model.safetensors")
    assert final_a.keys() == final_b.keys() and all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    if zero_stage == 3:  # and ZeRO-3's fp32 master weights
        a = torch.load(run / "checkpoints" / "step_12" / "state" / "zero" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False)
        b = torch.load(reference / "checkpoints" / "step_12" / "state" / "zero" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False)
        flat_a = a["optimizer_state_dict"]["fp32_flat_groups"]
        flat_b = b["optimizer_state_dict"]["fp32_flat_groups"]
        assert all(torch.equal(x, y) for x, y in zip(flat_a, flat_b))


def test_non_finite_steps_are_skipped_then_stop_with_a_checkpoint(shards, tmp_path):
    run = tmp_path / "nan"
    proc = launch("pretrain.py", BASE + [f"data.shards={shards}", "trainer.max_steps=10", "trainer.save_every=100",
                                         "trainer.max_consecutive_nonfinite=2", "logging.wandb_mode=disabled",
                                         f"hydra.run.dir={run}"], fault="nan_loss:3,5,6")
    assert proc.returncode != 0 and "2 non-finite steps in a row" in proc.stderr
    lines = metrics(run)
    assert [m["nonfinite_skipped_step"] for m in lines] == [False, False, True, False, True, True]
    assert lines[3]["loss"] < lines[1]["loss"] + 0.5  # training went on normally after step 3
    assert (run / "checkpoints" / "step_6" / "COMPLETE").exists()


BAD_VALUES = [
    ("trainer.zero_stage=7", "trainer.zero_stage must be 0..3"),
    ("trainer.bogus=1", "Key 'bogus' not in 'TrainerConfig'"),
    ("trainer.max_steps=abc", "could not be converted to Integer"),
    ("data.packing.seq_len=4", "packing.seq_len must be >= 16"),
    ("model=glm41v_1b", "model.tokenizer is required"),  # never the tiny tokenizer under a real vocabulary
]


@pytest.mark.parametrize("override, message", BAD_VALUES)
def test_bad_recipe_values_are_refused_by_the_composed_config(override, message):
    """What launch/common.py's `start` runs first: Hydra's composition against the schema, then the
    dataclasses' validation (`OmegaConf.to_object`)."""
    from omegaconf import OmegaConf

    from launch.plan import compose_recipe, stage_of

    overrides = ["recipe=pretrain_tiny", override]
    with pytest.raises(Exception) as refused:
        OmegaConf.to_object(compose_recipe(stage_of(overrides, None), overrides))
    assert message in f"{refused.value} {refused.value.__cause__}"


@pytest.mark.parametrize("override, message", [BAD_VALUES[0], BAD_VALUES[1]])  # validation; composition
def test_bad_recipe_values_stop_the_launcher_before_any_work(override, message, tmp_path):
    proc = launch("pretrain.py", ["recipe=pretrain_tiny", override, f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_recompute_and_zero_stages_train_alike_and_freezing_keeps_the_vision_tower(shards, tmp_path):
    from data_pipelines.tokenizer import build_tiny_tokenizer
    from trainer.model import build_model, load_preset

    args = BASE + [f"data.shards={shards}", "trainer.max_steps=3", "trainer.save_every=3", "logging.wandb_mode=disabled"]
    runs, logs = {}, {}
    for name, extra in [("plain", []), ("recompute", ["trainer.activation_checkpointing=true"]),
                        ("frozen", ["trainer.freeze_vision=true"]), ("zero0", ["trainer.zero_stage=0"]),
                        ("zero2", ["trainer.zero_stage=2"])]:
        runs[name] = tmp_path / name
        proc = check(launch("pretrain.py", args + extra + [f"hydra.run.dir={runs[name]}"]))
        logs[name] = proc.stdout + proc.stderr
    # ZeRO-3 (the default) on one rank shards nothing: the user is pointed at trainer.zero_stage=0.
    hint = "trainer.zero_stage=3 on a single rank shards nothing"
    assert hint in logs["plain"] and hint not in logs["zero0"] and hint not in logs["zero2"]
    plain = [m["loss"] for m in metrics(runs["plain"])]
    assert [m["loss"] for m in metrics(runs["recompute"])] == pytest.approx(plain, rel=1e-6)
    # Without ZeRO, DeepSpeed's fp32 engine keeps no gradient norm: it used to read as a non-finite
    # step, and the run stopped after five. Every stage now reports ZeRO-3's norms and losses.
    norms = [m["grad_norm"] for m in metrics(runs["plain"])]
    for stage in ("zero0", "zero2"):
        lines = metrics(runs[stage])
        assert not any(m["nonfinite_skipped_step"] for m in lines)
        assert [m["loss"] for m in lines] == pytest.approx(plain, rel=1e-5)
        assert [m["grad_norm"] for m in lines] == pytest.approx(norms, rel=1e-4)

    torch.manual_seed(0)  # the stage seeds trainer.seed (0) before building the model
    initial = build_model(load_preset("tiny"), build_tiny_tokenizer()).state_dict()
    trained = load_file(runs["frozen"] / "checkpoints" / "step_3" / "hf" / "model.safetensors")
    vision = [k for k in trained if k.startswith("model.visual.")]
    language = [k for k in trained if k.startswith("model.language_model.layers.")]
    assert vision and all(torch.equal(trained[k], initial[k]) for k in vision)
    assert any(not torch.equal(trained[k], initial[k]) for k in language)
