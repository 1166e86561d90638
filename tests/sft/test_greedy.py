"""The eval decoder: batched, left-padded greedy decoding with a KV cache equals HF generate."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from data_pipelines.chat import ChatRenderer
from data_pipelines.processor import ProcessorConfig, VisionProcessor
from data_pipelines.chat import encode_prompt
from stages.sft_eval import greedy_decode
from trainer.forward import UniformVisionForward
from trainer.model import build_model, load_preset

RESPONSE = "<think>t</think><answer><|begin_of_box|>1<|end_of_box|></answer>"


@pytest.fixture(scope="module")
def setup(tokenizer):
    torch.manual_seed(3)
    model = build_model(load_preset("tiny"), tokenizer).eval()
    processor = VisionProcessor(ProcessorConfig(max_pixels=112 * 112 * 2))
    return model, tokenizer, processor, ChatRenderer(tokenizer, processor)


def user_contents():
    """(user content, its images in order): one image, text only, two images of other sizes."""
    red, blue = Image.new("RGB", (84, 56), (200, 0, 0)), Image.new("RGB", (56, 112), (0, 0, 200))
    return [
        ([{"type": "image", "image": red}, {"type": "text", "text": "What colour is the square?"}], [red]),
        ("What is 2 plus 2?", []),
        ([{"type": "image", "image": blue}, {"type": "image", "image": red}, {"type": "text", "text": "Same?"}],
         [blue, red]),
    ]


def test_batched_greedy_decoding_equals_hf_generate(setup):
    model, tokenizer, processor, chat = setup
    stop = {tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")}
    prompts, expected = [], []
    for content, images in user_contents():
        record = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": RESPONSE}]}
        prompts.append(chat.prompt(record))
        inputs = encode_prompt(record["messages"][:1], tokenizer, processor, images=images)
        with torch.no_grad():
            out = model.generate(**inputs.as_kwargs(), max_new_tokens=12, do_sample=False)
        expected.append(out[0, inputs.input_ids.shape[1]:].tolist())
    # Prompts of 31, 16 and 35 tokens: the batch is left-padded.
    results = greedy_decode(UniformVisionForward(model), prompts, 12, stop, tokenizer.eos_token_id)
    assert [tokens for tokens, _ in results] == expected
    assert [stopped for _, stopped in results] == [tokens[-1] in stop for tokens in expected]
    for prompt, (tokens, _) in zip(prompts, results):  # one at a time (no padding) gives the same
        assert greedy_decode(UniformVisionForward(model), [prompt], 12, stop, tokenizer.eos_token_id)[0][0] == tokens
