"""The transformers engine on the multimodal tiny Glm4v: batched, left-padded generation with images
equals one-by-one generation; log-probs are the model's; weight sync replaces the weights."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from PIL import Image

from data_pipelines.processor import VisionProcessor
from data_pipelines.chat import ChatRenderer
from data_pipelines.prompts import encode_prompt_record, parse_record
from data_pipelines.tokenizer import SpecialTokens
from stages.rl.rollout.base import GenerationRequest, SamplingSpec
from stages.rl.rollout.hf_engine import HFEngine
from tests.rl.helpers import tiny_policy


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_engine")
    Image.new("RGB", (112, 112), (20, 200, 30)).save(root / "a.png")
    Image.new("RGB", (168, 112), (20, 20, 230)).save(root / "b.png")
    model, tok = tiny_policy(text_only=False, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    raw = [{"id": "a", "domain": "counting", "images": ["a.png"], "question": "How many squares?", "answer": 1},
           {"id": "b", "domain": "counting", "images": ["b.png", "a.png"], "question": "Which is blue?", "answer": 1},
           {"id": "c", "domain": "counting", "question": "Largest number: 3 1 2 and some more words", "answer": 3}]
    prompts = [encode_prompt_record(parse_record(r), ChatRenderer(tok, VisionProcessor()), image_root=root) for r in raw]
    return model, tok, prompts


def test_batched_generation_with_images_equals_one_by_one(setup):
    model, tok, prompts = setup
    special = SpecialTokens.from_tokenizer(tok)
    engine = HFEngine(model, special)
    spec = SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=8)
    batched = engine.generate([GenerationRequest(p, 2, seed=0) for p in prompts], spec)
    for prompt, group in zip(prompts, batched):
        [[alone]] = engine.generate([GenerationRequest(prompt, 1, seed=0)], spec)
        assert [c.token_ids for c in group] == [alone.token_ids] * 2
        assert alone.finish_reason == ("stop" if alone.token_ids[-1] in engine.stop_ids else "length")
        # The returned log-probs are the model's own (teacher-forced full forward).
        ids = torch.tensor([prompt.input_ids + alone.token_ids])
        kwargs = {"pixel_values": prompt.pixel_values, "image_grid_thw": prompt.image_grid_thw,
                  "mm_token_type_ids": torch.tensor([prompt.mm_token_type_ids + [0] * len(alone.token_ids)])}
        with torch.no_grad():
            logits = model(input_ids=ids, **{k: v for k, v in kwargs.items() if v is not None}).logits[0]
        lp = torch.log_softmax(logits.float(), -1)
        want = [lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(alone.token_ids)]
        assert alone.logprobs == pytest.approx(want, abs=1e-4)


def test_sampling_is_seeded_and_weight_sync_changes_the_policy(setup):
    model, tok, prompts = setup
    special = SpecialTokens.from_tokenizer(tok)
    engine = HFEngine(copy.deepcopy(model), special)  # load_weights writes into the engine's model
    spec = SamplingSpec(temperature=1.0, top_p=1.0, max_tokens=8)
    request = [GenerationRequest(prompts[2], 4, seed=5)]
    first, again = engine.generate(request, spec), engine.generate(request, spec)
    assert [c.token_ids for c in first[0]] == [c.token_ids for c in again[0]]
    other, _ = tiny_policy(text_only=False, seed=4)
    engine.load_weights(state_dict=dict(other.named_parameters()))
    assert torch.equal(engine.model.lm_head.weight, other.lm_head.weight)
    with pytest.raises(KeyError, match="missing"):
        engine.load_weights(state_dict={"lm_head.weight": other.lm_head.weight})


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8), (1.3, 0.5)])
def test_inverse_cdf_sampler_draws_from_the_distribution_transformers_samples(temperature, top_p):
    """The engine's sampler against transformers' temperature and top-p warpers (the distribution
    `generate(do_sample=True)` draws from): frequencies of 100,000 draws per row agree within 5
    standard errors, and tokens of probability 0 (suppressed: -inf; outside the nucleus) never come."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from stages.rl.rollout.hf_engine import InverseCdfSampler

    torch.manual_seed(0)
    logits = torch.randn(3, 12) * 2
    logits[:, [0, 5, 11]] = -math.inf  # suppressed, at both ends and inside
    reference = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
    want = torch.softmax(reference, -1).double()
    draws = 100_000
    rows = logits.repeat_interleave(draws, 0)
    scores = InverseCdfSampler(temperature, top_p)(None, rows)
    assert ((scores == 0).sum(-1) == 1).all() and (scores.isinf().sum(-1) == 11).all()
    tokens = scores.argmax(-1).view(3, draws)
    got = torch.stack([torch.bincount(row, minlength=12) for row in tokens]).double() / draws
    assert (got[want == 0] == 0).all()
    error = (want * (1 - want) / draws).sqrt()
    assert ((got - want).abs() <= 5 * error + 1e-12).all(), (got, want)
