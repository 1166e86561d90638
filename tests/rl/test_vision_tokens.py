"""Vision placeholder / marker tokens are never generated (issue #12): a policy that prefers
`<|image|>` & co. at every step samples other tokens in the HF engine (sampling and greedy, with
forced answering on an image prompt), in vLLM (tests/rl/test_vllm_engine.py, on that file's engine),
and in the SFT evaluator's greedy decoder; the engines' log-probs stay the raw model distribution's,
the trainer's."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from data_pipelines.chat import ChatRenderer
from data_pipelines.processor import VisionProcessor
from data_pipelines.prompts import encode_prompt_record, parse_record
from data_pipelines.tokenizer import VISION_TOKEN_FIELDS, SpecialTokens
from stages.rl.rollout.base import GenerationRequest, RolloutConfig, SamplingSpec, rollout
from stages.rl.rollout.hf_engine import HFEngine
from stages.sft_eval import greedy_decode
from tests.rl.helpers import (assert_engine_logprobs_are_the_models, best_allowed_tokens, has_vision_token,
                              prefer_tokens, tiny_policy, vision_mass)
from trainer.forward import UniformVisionForward


@pytest.fixture(scope="module")
def glm4v(tmp_path_factory):
    """A tiny Glm4v that prefers vision tokens; an image prompt and a text prompt."""
    root = tmp_path_factory.mktemp("vision_tokens")
    Image.new("RGB", (112, 112), (20, 200, 30)).save(root / "a.png")
    model, tok = tiny_policy(text_only=False, seed=3)
    with torch.no_grad():  # distinctive weights, so the allowed tokens are not uniform
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    special = SpecialTokens.from_tokenizer(tok)
    prefer_tokens(model, special.vision_ids)
    raw = [{"id": "img", "domain": "counting", "images": ["a.png"], "question": "How many squares?", "answer": 1},
           {"id": "txt", "domain": "counting", "question": "Largest number: 3 1 2", "answer": 3}]
    prompts = [encode_prompt_record(parse_record(r), ChatRenderer(tok, VisionProcessor()), image_root=root) for r in raw]
    return model.eval(), special, prompts


def test_vision_ids_are_the_six_vision_tokens_and_the_model_config_agrees(glm4v):
    model, special, _ = glm4v
    assert set(special.vision_ids) == {special.image, special.video, special.image_start, special.image_end,
                                       special.video_start, special.video_end}
    assert special.vision_ids == tuple(getattr(model.config, f"{f}_token_id") for f in VISION_TOKEN_FIELDS)


def test_hf_rollout_with_forced_answer_on_an_image_prompt_samples_no_vision_token(glm4v):
    model, special, prompts = glm4v
    assert all(vision_mass(model, p, special) > 0.9 for p in prompts)
    cfg = RolloutConfig(engine="hf", group_size=4, max_new_tokens=6, forced_answer_tokens=4, temperature=1.0,
                        top_p=1.0)
    # Before the fix the first pass sampled <|image|> and the forced pass, which sends the response
    # back as prompt, raised "Image features and image tokens do not match".
    groups = rollout(HFEngine(model, special), prompts, cfg, special, seeds=[0, 1])
    completions = [(p, c) for p, group in zip(prompts, groups) for c in group]
    assert any(c.forced for _, c in completions)  # the forced pass ran
    for prompt, c in completions:
        assert not has_vision_token(c.token_ids, special), c.token_ids
        assert_engine_logprobs_are_the_models(model, prompt, c)


def test_hf_greedy_picks_the_best_token_that_is_not_a_vision_token(glm4v):
    model, special, prompts = glm4v
    engine = HFEngine(model, special)
    results = engine.generate([GenerationRequest(p, 1, seed=0) for p in prompts], SamplingSpec(0.0, 1.0, 6))
    for prompt, [c] in zip(prompts, results):
        assert c.token_ids == best_allowed_tokens(model, prompt, c.token_ids, special)


def test_sft_greedy_decode_never_picks_a_vision_token(glm4v):
    model, special, prompts = glm4v
    docs = [p.document for p in prompts]
    results = greedy_decode(UniformVisionForward(model), docs, 6, {special.eos}, special.eos)
    for prompt, (tokens, _) in zip(prompts, results):
        assert tokens == best_allowed_tokens(model, prompt, tokens, special)
