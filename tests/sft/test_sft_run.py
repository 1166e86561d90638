"""SFT end to end on CPU: 2 ranks under torchrun (ZeRO-3 on gloo) from a pretraining checkpoint,
held-out evaluation, and exact kill-and-resume."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from data_pipelines.chat import ChatConfig, ChatRenderer
from data_pipelines.packing import PackingConfig
from data_pipelines.processor import VisionProcessor
from data_pipelines.reader import PackedLoader, ShardStream
from data_pipelines.records import RecordShards
from data_pipelines.shards import write_shards
from data_pipelines.synthetic import make_interleaved_corpus, make_sft_records
from data_pipelines.tokenizer import load_tokenizer
from stages.sft import SFTConfig, SFTDataConfig
from stages.sft_eval import EvalConfig
from tests.trainer.launching import check, launch, metrics
from trainer.forward import UniformVisionForward
from trainer.loss import weighted_loss_sum
from trainer.model import load_model

STEPS = 6
DETERMINISTIC = ("step", "loss", "lr", "grad_norm", "tokens", "documents", "skipped", "eval_loss",
                 "eval_format_compliance", "eval_generations", "eval_response_tokens", "eval_format_failures")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A pretrain_tiny run of 2 steps: the SFT start point."""
    root = tmp_path_factory.mktemp("pretrain")
    docs = make_interleaved_corpus(root, num_docs=30, seed=0, text_words=(20, 120))
    write_shards(docs, root, root / "shards", samples_per_shard=5)
    run = root / "run"
    check(launch("pretrain.py", ["recipe=pretrain_tiny", f"data.shards={root / 'shards'}", "data.packing.seq_len=512",
                                 "trainer.max_steps=2", "trainer.save_every=2", "logging.wandb_mode=disabled",
                                 "logging.progress_bar=false", f"hydra.run.dir={run}"], nproc=1))
    return run


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_data")
    train = make_sft_records(root, n=120, seed=0, name="train.jsonl", image_side=(56, 112))
    held_out = make_sft_records(root, n=12, seed=1, name="eval.jsonl", image_side=(56, 112))
    return train, held_out


def sft_args(pretrained, sft_data, run) -> list[str]:
    train, held_out = sft_data
    # model.init is the pretraining run directory: its latest checkpoint (step_2), weights only.
    return ["recipe=sft_tiny", f"model.init={pretrained}", f"data.train={train}", f"data.eval={held_out}",
            "data.packing.seq_len=512", "data.records_per_shard=8", f"trainer.max_steps={STEPS}",
            "trainer.save_every=3", "trainer.optim.lr=2e-3", "trainer.optim.warmup_steps=2", "eval.every=3",
            "eval.max_records=12", "eval.generations=4", "eval.max_new_tokens=12", "logging.wandb_mode=disabled",
            "logging.progress_bar=false", f"hydra.run.dir={run}"]


@pytest.fixture(scope="module")
def reference(pretrained, sft_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("sft_ref") / "run"
    check(launch("sft.py", sft_args(pretrained, sft_data, run), nproc=2))
    return run


def first_step_loss(run, init_dir) -> float:
    """The global loss of step 1 recomputed here from the run's config and the initial weights."""
    cfg: SFTConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SFTConfig),
                                                         OmegaConf.load(run / "config.yaml")))
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    forward = UniformVisionForward(load_model(init_dir).eval())
    chat = ChatRenderer(tokenizer, VisionProcessor(cfg.processor), cfg.data.chat)
    d = cfg.data
    loss_sum, weight = 0.0, 0.0
    for rank in range(2):
        source = RecordShards(d.train, d.records_per_shard, d.shuffle_shards, d.seed, d.format, d.image_root)
        batch = next(iter(PackedLoader(ShardStream(d, chat, tokenizer.eos_token_id, rank, 2, source=source))))
        with torch.no_grad():
            loss_sum += weighted_loss_sum(forward, batch)[0].item()
        weight += batch.label_weights.sum().item()
    return loss_sum / weight


def test_sft_starts_from_the_pretrained_weights_with_a_fresh_optimizer_and_evaluates(reference, pretrained):
    lines = metrics(reference)
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    # A fresh schedule: step 1 is the first warmup step of lr 2e-3 over 2 steps (the pretraining
    # run's optimizer and step counter are not carried over).
    assert [m["lr"] for m in lines[:2]] == pytest.approx([1e-3, 2e-3])
    # Step 1's loss is the pretrained (step_2) weights' loss on the first SFT batches of both ranks.
    expected = first_step_loss(reference, pretrained / "checkpoints" / "step_2")
    assert lines[0]["loss"] == pytest.approx(expected, abs=1e-5)
    assert lines[-1]["loss"] < lines[0]["loss"]
    evals = [m for m in lines if "eval_loss" in m]
    assert [m["step"] for m in evals] == [3, 6]
    for m in evals:
        assert m["eval_generations"] == 4 and 0.0 <= m["eval_format_compliance"] <= 1.0
        assert m["eval_loss"] > 0 and 1 <= m["eval_response_tokens"] <= 12
    ckpt = reference / "checkpoints" / "step_6"
    assert (ckpt / "COMPLETE").exists() and (ckpt / "hf" / "model.safetensors").exists()
    assert (ckpt / "hf" / "chat_template.jinja").exists() and (ckpt / "hf" / "preprocessor_config.json").exists()


def test_kill_and_resume_logs_the_same_losses_as_an_uninterrupted_run(reference, pretrained, sft_data, tmp_path):
    run = tmp_path / "run"
    killed = launch("sft.py", sft_args(pretrained, sft_data, run), nproc=2, fault="kill_in_step:5")
    assert killed.returncode != 0
    assert (run / "checkpoints" / "latest").read_text() == "step_3"
    check(launch("sft.py", sft_args(pretrained, sft_data, run), nproc=2))  # resume=auto
    got, want = metrics(run), metrics(reference)
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))
    for a, b in zip(got, want):
        assert {k: a.get(k) for k in DETERMINISTIC} == {k: b.get(k) for k in DETERMINISTIC}


def test_bad_recipe_values_stop_before_any_work(tmp_path):
    proc = launch("sft.py", ["recipe=sft_tiny", "data.train=x.jsonl", "data.packing.split_documents=true",
                             f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode != 0 and "split_documents must be false" in proc.stderr
    with pytest.raises(ValueError, match="data.eval"):
        SFTConfig(data=SFTDataConfig(train="x.jsonl"), eval=EvalConfig(every=10))
    with pytest.raises(ValueError, match="data.train is empty"):
        SFTConfig()
    with pytest.raises(ValueError, match="data.shards"):
        SFTDataConfig(train="x.jsonl", shards="s")
    with pytest.raises(ValueError, match="train_turns"):
        ChatConfig(train_turns="first")
    with pytest.raises(ValueError, match="split_documents"):
        SFTDataConfig(train="x.jsonl", packing=PackingConfig(split_documents=True))
