"""Vision placeholder / marker tokens are never generated (issue #12): a policy that prefers
`<|image|>` & co. at every step samples other tokens in the HF engine (sampling and greedy, with
forced answering on an image prompt), in vLLM, and in the SFT evaluator's greedy decoder; the
engines' log-probs stay the raw model distribution's, the trainer's."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from data_pipelines.chat import ChatRenderer
from data_pipelines.processor import VisionProcessor
from data_pipelines.prompts import EncodedPrompt, encode_prompt_record, parse_record
from data_pipelines.tokenizer import VISION_TOKEN_FIELDS, SpecialTokens
from stages.rl.rollout.base import Completion, GenerationRequest, RolloutConfig, SamplingSpec, rollout
from stages.rl.rollout.hf_engine import HFEngine
from stages.sft_eval import greedy_decode
from tests.rl.helpers import save_policy, tiny_policy
from trainer.forward import UniformVisionForward


def prefer_tokens(model: torch.nn.Module, ids: tuple[int, ...], boost: float = 10.0) -> None:
    """Make `ids` the policy's most likely next tokens after anything (each ~`boost` logits above
    the rest). A large constant in dimension 0 of every token embedding dominates the residual
    stream, so after the final RMSNorm that dimension is ~sqrt(hidden) at every position; only the
    output-head rows of `ids` read it."""
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embed.data_ptr() != head.data_ptr(), "needs untied embeddings"
    with torch.no_grad():
        embed[:, 0] = 100.0
        head[:, 0] = 0.0
        head[list(ids), 0] = boost / math.sqrt(embed.shape[1])


def next_token_logprobs(model: torch.nn.Module, prompt: EncodedPrompt, tokens: list[int]) -> torch.Tensor:
    """Teacher-forced log-softmax over the whole vocabulary at the positions predicting `tokens`
    and the one after: (len(tokens) + 1, vocab)."""
    ids = torch.tensor([prompt.input_ids + tokens])
    kwargs = {}
    if hasattr(model.config, "vision_config"):
        kwargs["mm_token_type_ids"] = torch.tensor([prompt.mm_token_type_ids + [0] * len(tokens)])
        if prompt.visuals:
            kwargs.update(pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw)
    with torch.no_grad():
        logits = model(input_ids=ids, **kwargs).logits[0, len(prompt) - 1:]
    return torch.log_softmax(logits.float(), dim=-1)


def vision_mass(model: torch.nn.Module, prompt: EncodedPrompt, special: SpecialTokens) -> float:
    """The policy's probability of a vision token right after the prompt (the test's premise)."""
    return next_token_logprobs(model, prompt, [])[0, list(special.vision_ids)].exp().sum().item()


def has_vision_token(tokens: list[int], special: SpecialTokens) -> bool:
    return bool(set(tokens) & set(special.vision_ids))


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


def assert_engine_logprobs_are_the_models(model: torch.nn.Module, prompt: EncodedPrompt, c: Completion) -> None:
    """The reported log-probs are the unsuppressed, unrenormalised model distribution's, as the
    trainer computes them (renormalising over the allowed tokens would add ~log(1/(1-0.9)))."""
    lp = next_token_logprobs(model, prompt, c.token_ids)
    for t, (token, trained) in enumerate(zip(c.token_ids, c.train_mask)):
        if trained:
            assert c.logprobs[t] == pytest.approx(lp[t, token].item(), abs=1e-4)


def test_hf_greedy_picks_the_best_token_that_is_not_a_vision_token(glm4v):
    model, special, prompts = glm4v
    engine = HFEngine(model, special)
    results = engine.generate([GenerationRequest(p, 1, seed=0) for p in prompts], SamplingSpec(0.0, 1.0, 6))
    for prompt, [c] in zip(prompts, results):
        lp = next_token_logprobs(model, prompt, c.token_ids)
        lp[:, list(special.vision_ids)] = -math.inf
        assert c.token_ids == lp[: len(c.token_ids)].argmax(-1).tolist()


def test_sft_greedy_decode_never_picks_a_vision_token(glm4v):
    model, special, prompts = glm4v
    docs = [p.document for p in prompts]
    results = greedy_decode(UniformVisionForward(model), docs, 6, {special.eos}, special.eos)
    for prompt, (tokens, _) in zip(prompts, results):
        lp = next_token_logprobs(model, prompt, tokens)
        lp[:, list(special.vision_ids)] = -math.inf
        assert tokens == lp[: len(tokens)].argmax(-1).tolist()


# ---- vLLM (CPU: the text-only Glm4 policy) -----------------------------------------------------
@pytest.fixture(scope="module")
def vllm_setup(tmp_path_factory):
    pytest.importorskip("vllm")
    from stages.rl.rollout.vllm_engine import VLLMEngine

    root = tmp_path_factory.mktemp("vision_tokens_vllm")
    model, tok = tiny_policy(text_only=True, seed=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    special = SpecialTokens.from_tokenizer(tok)
    prefer_tokens(model, special.vision_ids)
    path = save_policy(model, tok, root / "policy")
    cfg = RolloutConfig(engine="vllm", max_model_len=256, gpu_memory_utilization=0.2, enforce_eager=True,
                        group_size=4, max_new_tokens=6, forced_answer_tokens=4)
    engine = VLLMEngine(path, cfg, special, dtype="float32", seed=0)
    prompt = encode_prompt_record(parse_record({"id": "q", "domain": "m", "question": "Largest number: 3 4 1",
                                                "answer": 4}), ChatRenderer(tok, VisionProcessor()))
    yield model.eval(), special, prompt, cfg, engine
    engine.close()


def test_vllm_rollout_and_greedy_sample_no_vision_token(vllm_setup):
    model, special, prompt, cfg, engine = vllm_setup
    assert vision_mass(model, prompt, special) > 0.9
    [group] = rollout(engine, [prompt], cfg, special, seeds=[3])
    assert any(c.forced for c in group)
    for c in group:
        assert not has_vision_token(c.token_ids, special), c.token_ids
        assert_engine_logprobs_are_the_models(model, prompt, c)
    [[greedy]] = engine.generate([GenerationRequest(prompt, 1, seed=0)], SamplingSpec(0.0, 1.0, 6))
    lp = next_token_logprobs(model, prompt, greedy.token_ids)
    lp[:, list(special.vision_ids)] = -math.inf
    assert greedy.token_ids == lp[: len(greedy.token_ids)].argmax(-1).tolist()
