"""The released GLM-4.1V-9B-Thinking folder, as the hub publishes it (tiny in size,
tests/public_layouts.py): every stage takes it as `model.init`, with its own tokenizer, template
and stop tokens (tried as a new user would: `launch/sft.py recipe=sft_tiny model.init=<folder>`
stopped with "model and tokenizer disagree", and rollouts ran past the `</answer>` its
generation_config stops at, which then scored 0 as text outside the tags)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from data_pipelines.chat import ChatRenderer
from data_pipelines.processor import VisionProcessor
from data_pipelines.prompts import encode_prompt_record, parse_record
from data_pipelines.synthetic import make_sft_records
from data_pipelines.tokenizer import SpecialTokens, load_tokenizer
from stages.rl import rollout as rollout_engines
from stages.rl.policy import load_policy
from stages.rl.rollout.base import GenerationRequest, SamplingSpec, completion_text
from stages.rl.rollout.hf_engine import HFEngine
from tests.public_layouts import write_released_glm41v
from tests.rl.helpers import prefer_tokens
from tests.trainer.launching import check, launch, metrics
from trainer.checkpoint import resolve_model_init
from trainer.model import build_model, load_preset


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    Image.new("RGB", (56, 84), (200, 30, 30)).save(root / "a.png")
    return write_released_glm41v(root / "GLM-4.1V-9B-Thinking")


@pytest.fixture(scope="module")
def tokenizer(released):
    return load_tokenizer(released)


def test_the_tiny_recipe_trains_the_released_folder_with_its_own_tokenizer(released, tokenizer):
    assert sorted(p.name for p in released.glob("model-*.safetensors")) == [
        f"model-0000{k}-of-0000{n}.safetensors" for n in [len(list(released.glob("model-*")))]
        for k in range(1, n + 1)]
    cfg = resolve_model_init(dataclasses.replace(load_preset("tiny"), init=str(released)))
    assert cfg.tokenizer == str(released)  # not the preset's `tiny`, whose ids the weights never saw
    model = build_model(cfg, load_tokenizer(cfg.tokenizer))  # checks that model and tokenizer agree
    special = SpecialTokens.from_tokenizer(tokenizer)
    assert model.config.image_token_id == special.image > 1500  # the released order, not ponder's
    assert model.dtype == torch.float32  # the preset's dtype, from bf16 shards


def test_prompts_render_as_the_published_template_does(released, tokenizer):
    assert tokenizer.chat_template == (released / "chat_template.jinja").read_text()
    renderer = ChatRenderer(tokenizer, VisionProcessor())
    record = parse_record({"id": "a", "domain": "counting", "images": ["a.png"], "answer": "1",
                           "question": "How many red shapes are there?"})
    for system in (None, "Answer briefly."):
        prompt = encode_prompt_record(record, renderer, image_root=released.parent, system_prompt=system)
        messages = [{"role": "system", "content": system}] * bool(system) + record.messages
        published = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(prompt.raw_ids, skip_special_tokens=False) == published
        assert prompt.raw_ids == tokenizer.encode(published, add_special_tokens=False)


def test_generation_stops_at_every_eos_the_checkpoint_declares(released, tokenizer):
    special = SpecialTokens.from_tokenizer(tokenizer)
    declared = json.loads((released / "generation_config.json").read_text())["eos_token_id"]
    assert special.stop_ids(declared) == [*special.turn_ends, special.answer_end]
    assert special.stop_ids(None) == special.stop_ids(special.eos) == list(special.turn_ends)
    policy = load_policy(released).eval()
    prefer_tokens(policy, (special.answer_end,))  # the policy ends its answer at once
    record = parse_record({"id": "t", "domain": "counting", "question": "Largest: 3 1 2", "answer": "3"})
    prompt = encode_prompt_record(record, ChatRenderer(tokenizer, VisionProcessor()))
    [[completion]] = HFEngine(policy, special).generate([GenerationRequest(prompt, 1, seed=0)],
                                                        SamplingSpec(0.0, 1.0, 8))
    # Before: HF generate stopped at the turn ends only and ran 8 tokens of `</answer>`.
    assert (completion.token_ids, completion.finish_reason) == ([special.answer_end], "stop")
    assert completion_text(completion.token_ids, tokenizer, special) == "</answer>"  # a reward still sees it


def answer_end_first(released, out):
    """A copy of the folder whose weights end every answer at once (tests/rl/helpers.py
    `prefer_tokens`, written into the published shards in place)."""
    shutil.copytree(released, out)
    answer_end = SpecialTokens.from_tokenizer(load_tokenizer(out)).answer_end
    for shard in out.glob("model-*.safetensors"):
        tensors = load_file(shard)
        if (embed := tensors.get("model.language_model.embed_tokens.weight")) is not None:
            embed[:, 0] = 100.0
        if (head := tensors.get("lm_head.weight")) is not None:
            head[:, 0] = 0.0
            head[answer_end, 0] = 10.0 / math.sqrt(head.shape[1])
        save_file(tensors, shard, metadata={"format": "pt"})
    return out


def test_sft_from_the_released_folder_keeps_its_tokens_and_stops_where_it_declares(released, tmp_path):
    init = answer_end_first(released, tmp_path / "GLM-4.1V-9B-Thinking")
    records = make_sft_records(tmp_path, n=24, seed=0, name="train.jsonl", image_side=(56, 112))
    run = tmp_path / "run"
    check(launch("sft.py", ["recipe=sft_tiny", f"model.init={init}", f"data.train={records}",
                            f"data.eval={records}", "data.packing.seq_len=512", "data.records_per_shard=8",
                            "trainer.max_steps=2", "trainer.save_every=2", "trainer.optim.lr=1e-5", "eval.every=2",
                            "eval.max_records=8", "eval.generations=4", "eval.max_new_tokens=12",
                            "logging.wandb_mode=disabled", "logging.progress_bar=false", f"hydra.run.dir={run}"]))
    [evaluated] = [m for m in metrics(run) if "eval_loss" in m]
    # The held-out answers stop at the declared `</answer>`: one token each, none unfinished.
    assert evaluated["eval_response_tokens"] == 1 and evaluated["eval_truncated"] == 0
    saved = run / "checkpoints" / "step_2" / "hf"
    assert (saved / "chat_template.jinja").read_text() == (released / "chat_template.jinja").read_text()
    original, trained = load_tokenizer(released), load_tokenizer(saved)
    assert trained.get_vocab() == original.get_vocab()
    declared = json.loads((released / "generation_config.json").read_text())["eos_token_id"]
    assert json.loads((saved / "generation_config.json").read_text())["eos_token_id"] == declared


def test_the_papers_eval_recipe_runs_the_released_folder_where_vllm_cannot_serve_it(released, tmp_path,
                                                                                  monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("vLLM's CUDA build serves Glm4v")
    # eval_9b asks for vLLM; its CPU build stopped in model inspection with a pydantic traceback
    assert rollout_engines.vllm_unavailable(released)  # a CPU build, or no vllm at all
    Image.new("RGB", (56, 84), (200, 30, 30)).save(tmp_path / "a.png")
    prompts = tmp_path / "counting.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "domain": "counting", "images": ["a.png"],
                                           "question": "How many red shapes are there?", "answer": "1"}) + "\n"
                               for i in range(3)))
    run = tmp_path / "eval"
    proc = check(launch("eval.py", ["recipe=eval_9b", f"model.init={released}", f"data.paths=[{prompts}]",
                                    "rollout.max_new_tokens=8", "samples=2", "ks=[1,2]", f"hydra.run.dir={run}"],
                        nproc=2))
    assert (proc.stdout + proc.stderr).count("generating with the HF engine instead") == 1  # rank 0 says it
    results = json.loads((run / "eval.json").read_text())
    assert results["engine"] == "hf" and "engine `hf`" in (run / "eval.md").read_text()
    assert results["decodings"]["greedy"]["max_new_tokens"] == 8
    [counted] = results["sets"].values()
    assert counted["evaluated"] == 3
    monkeypatch.setattr(rollout_engines.importlib.util, "find_spec", lambda name: None)
    assert rollout_engines.vllm_unavailable(released) == "vllm is not installed"


def test_every_engine_reads_the_same_declared_eos_with_or_without_generation_config(released, tmp_path):
    from stages.rl.rollout.vllm_engine import declared_eos

    bare = shutil.copytree(released, tmp_path / "no_generation_config")
    (bare / "generation_config.json").unlink()
    for folder in (released, bare):  # the file, else config.json's (the published text_config has four)
        assert declared_eos(folder) == load_policy(folder).generation_config.eos_token_id
        assert len(declared_eos(folder)) == 4
