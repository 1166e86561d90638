"""Packing is exact: per-document losses of packed rows equal each document run alone, and the
data-side 3D positions equal transformers' get_rope_index."""

import pytest
import torch

from data_pipelines.batch import IGNORE_INDEX, collate_rows
from data_pipelines.tokenizer import SpecialTokens
from tests.data_pipelines.docs_factory import mixed_docs
from trainer.forward import UniformVisionForward
from trainer.loss import token_losses
from trainer.model import build_model, load_preset


@pytest.fixture(scope="module")
def model_and_special(tokenizer):
    torch.manual_seed(0)
    model = build_model(load_preset("tiny"), tokenizer).eval()
    return model, SpecialTokens.from_tokenizer(tokenizer)


def per_document_loss(forward, batch):
    with torch.no_grad():
        losses = token_losses(forward(batch), batch.labels)
    out = {}
    for i, key in enumerate(batch.doc_keys):
        selected = (batch.doc_ids == i) & (batch.labels != IGNORE_INDEX)
        out[key] = losses[selected].mean().item()
    return out


def test_positions_equal_get_rope_index(model_and_special):
    model, special = model_and_special
    for doc in mixed_docs(special):
        images = torch.stack([v.grid_thw for v in doc.images]) if doc.images else None
        videos = torch.stack([v.grid_thw for v in doc.videos]) if doc.videos else None
        reference, _ = model.model.get_rope_index(doc.input_ids[None], doc.mm_token_type_ids[None], images, videos)
        assert torch.equal(doc.positions(), reference[:, 0]), doc.key


def test_packed_rows_give_the_same_per_document_losses(model_and_special):
    model, special = model_and_special
    forward = UniformVisionForward(model)
    a, b, c, v, d = mixed_docs(special)
    # Images in several documents of a row, an image-and-video row, padding at the ends.
    packed = per_document_loss(forward, collate_rows([[a, b, d], [c, v]], seq_len=96, pad_id=special.eos))
    for doc in (a, b, c, v, d):
        alone = per_document_loss(forward, collate_rows([[doc]], seq_len=len(doc), pad_id=special.eos))
        assert abs(packed[doc.key] - alone[doc.key]) < 1e-5, doc.key


def test_uniform_forward_equals_transformers_forward(model_and_special):
    model, special = model_and_special
    a, b, *_ = mixed_docs(special)
    batch = collate_rows([[a, b]], seq_len=64, pad_id=special.eos)
    with torch.no_grad():
        ours = UniformVisionForward(model)(batch)
        theirs = model(**batch.model_inputs(), use_cache=False).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
