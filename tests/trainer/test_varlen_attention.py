"""`attn_implementation="ponder_varlen"` (trainer/attention.py): packed rows attend within each
document, like the block-causal sdpa path, without a mask tensor.

torch's `varlen_attn` kernel is CUDA-only, so on CPU the tests check what it would be given (the
document boundaries from `position_ids`) and run the model through (a) the CPU reference path and
(b) stand-ins for the kernel with each torch release's signature, against sdpa. The kernel itself
is compared with sdpa in bf16 by bench/gpu_check.sh on a GPU.
"""

from __future__ import annotations

import contextlib
import inspect
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from transformers.masking_utils import find_packed_sequence_indices
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from data_pipelines.batch import IGNORE_INDEX, collate_rows
from data_pipelines.tokenizer import SpecialTokens
from tests.data_pipelines.docs_factory import mixed_docs
from trainer import attention
from trainer.attention import (
    NAME,
    document_starts,
    kernel_api,
    kernel_unusable_reason,
    kernel_varlen_attention,
    reference_varlen_attention,
    segments_from_positions,
)
from trainer.forward import UniformVisionForward
from trainer.model import build_model, load_preset

POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])


@pytest.fixture(scope="module")
def model_and_special(tokenizer):
    torch.manual_seed(0)
    model = build_model(load_preset("tiny"), tokenizer).eval()
    return model, SpecialTokens.from_tokenizer(tokenizer)


@contextlib.contextmanager
def attention_implementation(model, name: str):
    """Run `model` with another attention implementation, the same weights."""
    before = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


def per_document_loss(model, batch) -> dict[str, float]:
    with torch.no_grad():
        losses = UniformVisionForward(model)(batch, per_token_loss=True)
    out = {}
    for i, key in enumerate(batch.doc_keys):
        selected = (batch.doc_ids == i) & (batch.labels != IGNORE_INDEX)
        out[key] = losses[selected].mean().item()
    return out


def packed_and_solo(model, special) -> tuple[dict[str, float], dict[str, float]]:
    """Per-document losses: packed rows (several documents and images per row, padding at the
    ends) through ponder_varlen, and each document alone through sdpa."""
    a, b, c, v, d = mixed_docs(special)
    with attention_implementation(model, NAME):
        packed = per_document_loss(model, collate_rows([[a, b, d], [c, v]], seq_len=96, pad_id=special.eos))
    with attention_implementation(model, "sdpa"):
        solo = {}
        for doc in (a, b, c, v, d):
            solo.update(per_document_loss(model, collate_rows([[doc]], seq_len=len(doc), pad_id=special.eos)))
    return packed, solo


# ----------------------------------------------------------------------------------------------
# Document boundaries


def test_segments_are_the_documents_of_each_row_flattened():
    seg = segments_from_positions(POSITIONS, rows=2, length=9, device=torch.device("cpu"))
    assert seg.bounds == (0, 3, 5, 9, 15, 18)
    assert seg.cu_seqlens.dtype == torch.int32 and seg.cu_seqlens.tolist() == list(seg.bounds)
    assert seg.max_seqlen == 6


def test_documents_are_the_ones_the_sdpa_mask_and_flash_attention_see():
    # transformers' sdpa path: a new sequence wherever the position does not continue by +1
    ids = find_packed_sequence_indices(POSITIONS)
    assert torch.equal(document_starts(POSITIONS)[:, 1:], ids[:, 1:] != ids[:, :-1])
    # transformers' flash-attention helper, on one row (its packed path only handles one)
    (cu, _), (longest, _) = prepare_fa_kwargs_from_position_ids(POSITIONS[:1])
    seg = segments_from_positions(POSITIONS[:1], rows=1, length=9, device=torch.device("cpu"))
    assert seg.cu_seqlens.tolist() == cu.tolist() and seg.max_seqlen == int(longest)


def test_no_positions_means_one_causal_document_per_row():
    seg = segments_from_positions(None, rows=3, length=4, device=torch.device("cpu"))
    assert seg.bounds == (0, 4, 8, 12) and seg.max_seqlen == 4


def test_segments_are_derived_once_per_positions_tensor():
    cache = attention._SegmentsCache()
    positions = POSITIONS.clone()
    first = cache.get(positions, 2, 9, torch.device("cpu"))
    assert cache.get(positions, 2, 9, torch.device("cpu")) is first  # every layer of one forward
    positions[1, 3:6] = torch.tensor([0, 1, 2])  # modified in place: derived again
    assert cache.get(positions, 2, 9, torch.device("cpu")).bounds == (0, 3, 5, 9, 12, 15, 18)
    assert cache.get(POSITIONS.clone(), 2, 9, torch.device("cpu")).bounds == first.bounds


# ----------------------------------------------------------------------------------------------
# The model through ponder_varlen on CPU (reference path)


def test_presets_for_gpus_select_ponder_varlen():
    assert load_preset("glm41v_9b").attn_implementation == NAME
    assert load_preset("glm41v_1b").attn_implementation == NAME


def test_the_kernel_is_not_used_on_cpu_and_the_pinned_torch_api_is_recognised():
    assert kernel_unusable_reason(torch.zeros(4, 2, 32), 0.0) is not None
    # The pinned torch has varlen_attn with a causal switch we know: on CUDA it would be used.
    assert attention._API is not None, attention.describe_backend()
    assert attention.describe_backend().startswith("torch varlen_attn")


def test_a_torch_without_varlen_attn_degrades_to_per_document_sdpa(monkeypatch):
    monkeypatch.setattr(attention, "_VARLEN_ATTN", None)
    monkeypatch.setattr(attention, "_API", None)
    assert "no usable torch.nn.attention.varlen.varlen_attn" in kernel_unusable_reason(torch.zeros(4, 2, 32), 0.0)
    assert attention.describe_backend().startswith("per-document sdpa")


def test_the_mask_is_skipped_only_for_packed_training_calls():
    training = attention.ponder_varlen_mask(batch_size=2, q_length=6, kv_length=6)
    padded = attention.ponder_varlen_mask(batch_size=1, q_length=3, kv_length=3,
                                          attention_mask=torch.tensor([[0, 1, 1]], dtype=torch.bool))
    assert training is None  # no (row x row) mask: the documents come from position_ids
    assert padded is not None and not padded[0, 0, 1, 0] and padded[0, 0, 2, 1]  # sdpa's padding mask


def test_packed_rows_give_the_per_document_losses_of_solo_runs(model_and_special):
    model, special = model_and_special
    packed, solo = packed_and_solo(model, special)
    for key, loss in solo.items():
        assert abs(packed[key] - loss) < 1e-5, key


def test_packed_gradients_equal_the_block_causal_sdpa_path(model_and_special):
    model, special = model_and_special
    a, b, c, v, d = mixed_docs(special)
    batch = collate_rows([[a, b, d], [c, v]], seq_len=96, pad_id=special.eos)
    grads = {}
    for name in ("sdpa", NAME):
        model.zero_grad()
        with attention_implementation(model, name), torch.enable_grad():
            losses = UniformVisionForward(model)(batch, per_token_loss=True)
            (losses * batch.label_weights).sum().backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert grads["sdpa"].keys() == grads[NAME].keys()
    for n, g in grads["sdpa"].items():  # fp32 summation order differs: relative to the largest entry
        assert (grads[NAME][n] - g).abs().max() <= 1e-5 * g.abs().max() + 1e-8, n


def test_padded_and_cached_generation_is_sdpa(model_and_special, tokenizer):
    model, special = model_and_special
    prompts = [tokenizer.encode("count the red dots"), tokenizer.encode("max of 3 7")]
    width = max(map(len, prompts))
    ids = torch.tensor([[special.eos] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = {}
    for name in ("sdpa", NAME):
        with attention_implementation(model, name), torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=torch.zeros_like(ids),
                                 max_new_tokens=5, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=special.eos)
        out[name] = (gen.sequences, torch.stack(gen.logits))
    assert torch.equal(out[NAME][0], out["sdpa"][0])
    torch.testing.assert_close(out[NAME][1], out["sdpa"][1], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The kernel call, with stand-ins for each torch release's varlen_attn


class FakeKernel:
    """Checks the arguments the real kernel needs and computes what it would, on CPU."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal, scale, gqa):
        self.calls += 1
        assert query.dim() == key.dim() == value.dim() == 3 and query.is_contiguous()
        assert cu_seq_q.dtype == torch.int32 and cu_seq_q is cu_seq_k and max_q == max_k
        bounds = tuple(cu_seq_q.tolist())
        assert max_q == max(b - a for a, b in pairwise(bounds))
        assert causal, "the decoder's attention must be causal"
        assert gqa or key.shape[1] == query.shape[1], "this torch's kernel has no GQA switch"
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        return reference_varlen_attention(query, key, value, bounds, scale)


def signature_is_causal(fake):
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        return fake.run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal, None, False)
    return varlen_attn


def signature_window(fake):
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1)):
        return fake.run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, tuple(window_size) == (-1, 0),
                        scale, False)
    return varlen_attn


def signature_window_gqa(fake):
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
        return fake.run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, tuple(window_size) == (-1, 0),
                        scale, enable_gqa)
    return varlen_attn


@pytest.mark.parametrize("make_signature", [signature_is_causal, signature_window, signature_window_gqa])
def test_each_kernel_signature_gives_the_solo_losses(model_and_special, monkeypatch, make_signature):
    model, special = model_and_special
    fake = FakeKernel()
    fn = make_signature(fake)
    monkeypatch.setattr(attention, "_VARLEN_ATTN", fn)
    monkeypatch.setattr(attention, "_API", kernel_api(fn))
    monkeypatch.setattr(attention, "kernel_unusable_reason", lambda query, dropout: None)
    packed, solo = packed_and_solo(model, special)
    assert fake.calls == model.config.text_config.num_hidden_layers  # the decoder only, once per layer
    for key, loss in solo.items():
        assert abs(packed[key] - loss) < 1e-5, key


def test_the_installed_kernel_signature_is_the_newest_stand_in():
    if attention._VARLEN_ATTN is None:
        pytest.skip("this torch has no varlen_attn")
    ours = set(inspect.signature(attention._VARLEN_ATTN).parameters)
    assert {"window_size", "scale", "enable_gqa"} <= ours
    assert kernel_api(attention._VARLEN_ATTN) == kernel_api(signature_window_gqa(FakeKernel()))


def test_a_kernel_without_scale_refuses_another_scale():
    fake = FakeKernel()
    fn = signature_is_causal(fake)
    q = torch.randn(6, 2, 8)
    seg = segments_from_positions(torch.tensor([[0, 1, 2, 0, 1, 2]]), 1, 6, torch.device("cpu"))
    default = kernel_varlen_attention(fn, kernel_api(fn), q, q, q, seg, 8**-0.5)
    torch.testing.assert_close(default, reference_varlen_attention(q, q, q, seg.bounds, 8**-0.5))
    with pytest.raises(ValueError, match="no scale argument"):
        kernel_varlen_attention(fn, kernel_api(fn), q, q, q, seg, 0.5)


def test_reference_path_is_causal_attention_per_document():
    torch.manual_seed(0)
    q, k, v = torch.randn(7, 4, 8), torch.randn(7, 2, 8), torch.randn(7, 2, 8)
    out = reference_varlen_attention(q, k, v, (0, 3, 7), scale=None)
    for start, end in ((0, 3), (3, 7)):
        qs = q[start:end].transpose(0, 1)
        ks, vs = (x[start:end].repeat_interleave(2, dim=1).transpose(0, 1) for x in (k, v))
        alone = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1)
        torch.testing.assert_close(out[start:end], alone)
