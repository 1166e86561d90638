from data_pipelines.tokenizer import SPECIAL_TOKENS, SpecialTokens, build_tiny_tokenizer, load_tokenizer


def test_tiny_tokenizer_is_deterministic_and_carries_every_glm_special_token():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    for token in SPECIAL_TOKENS:
        ids = a.encode(f"x{token}y", add_special_tokens=False)
        assert a.convert_tokens_to_ids(token) in ids  # never split into pieces
    special = SpecialTokens.from_tokenizer(a)
    assert a.eos_token_id == a.pad_token_id == special.eos
    assert len({*special.__dict__.values()}) == len(special.__dict__)


def test_chat_template_renders_glm_format_and_strips_earlier_thinking():
    tok = build_tiny_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": "<think>count them</think><answer><|begin_of_box|>3<|end_of_box|></answer>"},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "<think>recount</think><answer>yes</answer>"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "[gMASK]<sop><|system|>\nBe brief.<|user|>\n<|begin_of_image|><|image|><|end_of_image|>How many?"
        "<|assistant|>\n<answer><|begin_of_box|>3<|end_of_box|></answer><|user|>\nSure?"
        "<|assistant|>\n<think>recount</think><answer>yes</answer>"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("How many?<|assistant|>\n")


def test_saved_tokenizer_round_trips(tmp_path):
    tok = build_tiny_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "<think>12 + 30 = 42</think><answer><|begin_of_box|>42<|end_of_box|></answer>"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.chat_template == tok.chat_template
