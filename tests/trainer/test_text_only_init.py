"""A text-only GLM-4 checkpoint as `model.init`: pretraining and SFT train the decoder alone."""

from __future__ import annotations

import pytest
import torch
from transformers import Glm4ForCausalLM

from data_pipelines.batch import collate_rows
from data_pipelines.document import Document
from data_pipelines.tokenizer import SpecialTokens
from stages.rl.policy import text_policy
from trainer.forward import TextForward, wrap_forward
from trainer.model import build_model, check_tokenizer_fits, load_preset, save_hf_checkpoint


def test_glm4_checkpoint_loads_as_glm4_and_trains_packed_rows(tmp_path, tokenizer):
    torch.manual_seed(0)
    source = text_policy(load_preset("tiny"), SpecialTokens.from_tokenizer(tokenizer))
    path = save_hf_checkpoint(source, tokenizer, tmp_path / "glm4")
    cfg = load_preset("tiny")
    cfg.init = str(path)
    model = build_model(cfg, tokenizer)
    assert type(model) is Glm4ForCausalLM
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    forward = wrap_forward(model)
    assert isinstance(forward, TextForward)
    # Two documents packed in one row give each one's own logits (the mask comes from position ids).
    docs = [Document(f"d{i}", torch.tensor(ids), torch.zeros(len(ids), dtype=torch.long),
                     torch.ones(len(ids), dtype=torch.bool)) for i, ids in enumerate([[5, 9, 11, 40], [7, 8, 300]])]
    packed = forward(collate_rows([docs], 8, 0))
    for doc, start in zip(docs, (0, 4)):
        alone = model(input_ids=doc.input_ids[None]).logits[0]
        assert (packed[0, start:start + len(doc)] - alone).abs().max() < 1e-5


def test_text_only_config_checks_only_the_vocabulary(tokenizer):
    small = text_policy(load_preset("tiny"), SpecialTokens.from_tokenizer(tokenizer)).config
    check_tokenizer_fits(small, tokenizer)
    small.vocab_size = len(tokenizer) - 1
    with pytest.raises(ValueError, match="vocab_size"):
        check_tokenizer_fits(small, tokenizer)
