"""Real vLLM (CPU) on a text-only Glm4 policy: it agrees with the HF engine, after a ZeRO-3
update + weight sync its greedy output and log-probs are the trainer's updated model's, and a policy
that prefers the vision tokens samples none of them (issue #12; one engine serves every test, as a
start costs ~35 s)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from data_pipelines.processor import VisionProcessor
from data_pipelines.chat import ChatRenderer
from data_pipelines.prompts import encode_prompt_record, parse_record, rollout_document
from data_pipelines.batch import collate_rows
from data_pipelines.tokenizer import SpecialTokens
from stages.rl.policy import load_policy
from stages.rl.rollout.base import GenerationRequest, RolloutConfig, SamplingSpec, rollout
from stages.rl.rollout.hf_engine import HFEngine
from stages.rl.sync import WeightSync, gathered_state_dict
from tests.rl.helpers import (assert_engine_logprobs_are_the_models, best_allowed_tokens, has_vision_token,
                              next_token_logprobs, prefer_tokens, save_policy, tiny_policy, vision_mass)
from trainer.config import OptimConfig, TrainerConfig
from trainer.distributed import init_distributed
from trainer.zero import wrap_deepspeed
from trainer.loss import token_logprobs

vllm = pytest.importorskip("vllm")

QUESTIONS = ["Largest number: 3 4 1", "Count a in: a b a", "Largest number: 9"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    model, tok = tiny_policy(text_only=True, seed=2)
    with torch.no_grad():  # distinctive weights, so sampled text is not degenerate
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = save_policy(model, tok, root / "policy")
    special = SpecialTokens.from_tokenizer(tok)
    from stages.rl.rollout.vllm_engine import VLLMEngine

    cfg = RolloutConfig(engine="vllm", max_model_len=256, gpu_memory_utilization=0.2, enforce_eager=True)
    engine = VLLMEngine(path, cfg, special, dtype="float32", seed=0)
    prompts = [encode_prompt_record(parse_record({"id": f"q{i}", "domain": "m", "question": q, "answer": 1}),
                                    ChatRenderer(tok, VisionProcessor())) for i, q in enumerate(QUESTIONS)]
    yield {"root": root, "path": path, "tok": tok, "special": special, "engine": engine, "prompts": prompts}
    engine.close()


def _teacher_forced(model, prompt, tokens):
    """(log-probs of `tokens`, greedy choices) of an HF model after `prompt`."""
    lp = next_token_logprobs(model, prompt, tokens)[: len(tokens)]
    return [lp[i, t].item() for i, t in enumerate(tokens)], lp.argmax(-1).tolist()


def test_vllm_and_hf_engines_return_the_same_greedy_tokens_and_logprobs(setup):
    hf = HFEngine(load_policy(setup["path"]), setup["special"])
    spec = SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=12)
    requests = [GenerationRequest(p, 1, seed=i) for i, p in enumerate(setup["prompts"])]
    got_vllm = setup["engine"].generate(requests, spec)
    got_hf = hf.generate(requests, spec)
    for [v], [h] in zip(got_vllm, got_hf):
        assert v.token_ids == h.token_ids and v.finish_reason == h.finish_reason
        assert len(v.logprobs) == len(v.token_ids)
        assert max(abs(a - b) for a, b in zip(v.logprobs, h.logprobs)) < 1e-4
    # Sampling: G responses per request, reproducible from the request's seed.
    sampled = [GenerationRequest(setup["prompts"][0], 4, seed=7)]
    spec = SamplingSpec(temperature=1.0, top_p=1.0, max_tokens=12)
    first, again = setup["engine"].generate(sampled, spec), setup["engine"].generate(sampled, spec)
    assert [c.token_ids for c in first[0]] == [c.token_ids for c in again[0]]
    assert len({tuple(c.token_ids) for c in first[0]}) > 1
    assert all(c.finish_reason in ("stop", "length") for c in first[0])


@pytest.fixture
def world_of_one():
    """A gloo group of one in this process, torn down after the test (and its env vars restored, so
    later launches in this session do not inherit RANK / MASTER_PORT)."""
    saved = dict(os.environ)
    info = init_distributed()
    yield info
    dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def test_weight_sync_after_a_zero3_update(setup, world_of_one):
    info = world_of_one
    model = load_policy(setup["path"])
    cfg = TrainerConfig(max_steps=1, zero_stage=3, optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0))
    trainer = wrap_deepspeed(model, cfg, 1, 1, info, managed_accumulation=False)
    special, prompt = setup["special"], setup["prompts"][0]
    # One policy-gradient-like step that makes tokens 100..102 likely after the prompt.
    docs = [rollout_document(prompt, [100, 101, 102], [True] * 3, "x")]
    batch = collate_rows([docs], len(docs[0]), special.eos)
    loss = -(token_logprobs(trainer(batch), batch.labels) * batch.label_weights).sum()
    trainer.backward(loss)
    trainer.step()

    updated = load_policy(setup["path"]).eval()
    updated.load_state_dict(gathered_state_dict(trainer.module.model, keep=True))
    spec = SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=16)
    request = [GenerationRequest(prompt, 1, seed=0)]
    [[stale]] = setup["engine"].generate(request, spec)
    stale_lp, _ = _teacher_forced(updated, prompt, stale.token_ids)
    assert max(abs(a - b) for a, b in zip(stale_lp, stale.logprobs)) > 1e-2  # the update changed the policy

    WeightSync(setup["root"] / "run", info, str(setup["root"]))(trainer.module.model, setup["engine"])
    [[fresh]] = setup["engine"].generate(request, spec)
    fresh_lp, greedy = _teacher_forced(updated, prompt, fresh.token_ids)
    assert fresh.token_ids == greedy and fresh.token_ids != stale.token_ids
    assert max(abs(a - b) for a, b in zip(fresh_lp, fresh.logprobs)) < 1e-4
    assert not list(setup["root"].glob("ponder-sync-*"))  # the handed-over weights are cleaned up


def test_vllm_rollout_and_greedy_sample_no_vision_token(setup):
    """Runs last: it loads a policy that prefers the vision tokens into the shared engine."""
    model = load_policy(setup["path"]).eval()
    special, prompt, engine = setup["special"], setup["prompts"][0], setup["engine"]
    prefer_tokens(model, special.vision_ids)
    engine.load_weights(path=save_policy(model, setup["tok"], setup["root"] / "prefers_vision"))
    assert vision_mass(model, prompt, special) > 0.9
    cfg = RolloutConfig(engine="vllm", group_size=4, max_new_tokens=6, forced_answer_tokens=4)
    [group] = rollout(engine, [prompt], cfg, special, seeds=[3])
    assert any(c.forced for c in group)
    for c in group:
        assert not has_vision_token(c.token_ids, special), c.token_ids
        assert_engine_logprobs_are_the_models(model, prompt, c)
    [[greedy]] = engine.generate([GenerationRequest(prompt, 1, seed=0)], SamplingSpec(0.0, 1.0, 6))
    assert greedy.token_ids == best_allowed_tokens(model, prompt, greedy.token_ids, special)
