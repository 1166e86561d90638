"""Packed-row attention without flash-attn: `attn_implementation="ponder_varlen"`.

Why it exists. Packed rows keep attention inside each document through `position_ids` row 0,
which restarts at 0 per document (data_pipelines/batch.py). With sdpa, transformers turns that
into a (row x row) block-causal mask: exact, but O(L^2) memory per row and no flash kernel. The
flash-attn package that transformers' `flash_attention_2` needs has no wheel for our torch, and
its packed path only runs for one row per micro-batch. torch itself ships FlashAttention-2's
varlen kernel as `torch.nn.attention.varlen.varlen_attn`; this module feeds it the documents of
every packed row (all rows of a micro-batch flattened into one token stream, one segment per
document) so no mask tensor is ever built.

Where it applies. transformers calls the registered function for every attention of a model
built with this name. Only the text decoder's training calls (causal, no padding mask, query
length == key length) take the packed path; everything else is handed to transformers' sdpa
function unchanged: the vision tower (transformers 5.17-5.19 give `cu_seqlens` only to
implementations whose name contains "flash", so the tower splits per image and calls us with
`is_causal=False`, exactly as with "sdpa"), and generation (padding masks, KV-cache decoding),
for which the registered mask function builds sdpa's mask.

Sequence parallelism. A training forward whose rows are split over ranks
(trainer/sequence_parallel.py) passes `sequence_parallel=<SequenceShard>` through transformers'
attention kwargs: the query/key/value of the local slice are exchanged (Ulysses all-to-all) into
the whole row for this rank's heads, attended with the whole row's documents, and exchanged back.

Backends. On CUDA with fp16/bf16 and a torch that has `varlen_attn`, the kernel runs. Otherwise
(CPU, fp32, dropout, or a torch without `varlen_attn`) a reference path runs sdpa once per
document on the same segments: exact, memory-light, slower. On CUDA that fallback logs a warning
once, naming the reason, so a slow run explains itself; `describe_backend()` names the path.
The `varlen_attn` signature changed across torch releases (first `is_causal=`; then
`window_size=(-1, 0)` and `scale=`; our pinned 2.13 adds `enable_gqa=`): the call adapts to the
installed one, and repeats the key/value heads itself when the kernel has no grouped-query switch.
"""

from __future__ import annotations

import inspect
import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

try:  # recent torch only; CUDA-only in practice (on CPU the kernel raises NotImplementedError)
    from torch.nn.attention.varlen import varlen_attn as _VARLEN_ATTN
except ImportError:  # pragma: no cover - depends on the installed torch
    _VARLEN_ATTN = None

logger = logging.getLogger(__name__)

NAME = "ponder_varlen"
KERNEL_DTYPES = (torch.float16, torch.bfloat16)
MAX_KERNEL_HEAD_DIM = 256


# ----------------------------------------------------------------------------------------------
# Documents of packed rows -> cumulative sequence lengths


@dataclass(frozen=True)
class Segments:
    """The documents of a micro-batch's rows, flattened row after row into one token stream."""

    cu_seqlens: torch.Tensor  # (N + 1,) int32 on the tokens' device: document starts, then the total
    bounds: tuple[int, ...]  # the same numbers on the host (the reference path slices with them)
    max_seqlen: int  # the longest document (the kernel sizes its grid with it)


def document_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: where a document begins. A row's first token always begins one; after that a
    document begins wherever the position does not continue the previous one by +1 — the rule
    transformers' sdpa path uses (`masking_utils.find_packed_sequence_indices`), so both paths
    see the same documents."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def segments_from_positions(position_ids: torch.Tensor | None, rows: int, length: int,
                            device: torch.device) -> Segments:
    """Segments of `rows` packed rows of `length` tokens. `position_ids` (B, L) or (1, L) per-document
    positions; None means one document per row. One host sync (the kernel needs the maximum)."""
    if position_ids is None:
        bounds = tuple(range(0, rows * length + 1, length))
        cu = torch.tensor(bounds, dtype=torch.int32, device=device)
        return Segments(cu, bounds, length)
    if position_ids.shape[0] != rows:
        position_ids = position_ids.expand(rows, -1)
    starts = document_starts(position_ids).flatten().nonzero().flatten()
    total = torch.tensor([rows * length], device=starts.device, dtype=starts.dtype)
    cu = torch.cat([starts, total]).to(device=device, dtype=torch.int32)
    bounds = tuple(cu.cpu().tolist())
    max_seqlen = max(b - a for a, b in pairwise(bounds))
    return Segments(cu, bounds, max_seqlen)


class _SegmentsCache:
    """Every decoder layer of one forward gets the same `position_ids` tensor: derive its segments
    once per forward (one host sync) instead of once per layer. Keyed by the tensor's identity and
    version counter, held weakly, so a new or modified tensor is derived afresh."""

    def __init__(self) -> None:
        self._key: tuple[weakref.ref, int, tuple[int, ...], int, int] | None = None
        self._value: Segments | None = None

    def get(self, position_ids: torch.Tensor | None, rows: int, length: int, device: torch.device) -> Segments:
        if position_ids is None:
            return segments_from_positions(None, rows, length, device)
        key = self._key
        if (key is not None and key[0]() is position_ids and key[1] == position_ids._version
                and key[2] == tuple(position_ids.shape) and key[3:] == (rows, length)
                and self._value.cu_seqlens.device == device):
            return self._value
        value = segments_from_positions(position_ids, rows, length, device)
        self._key = (weakref.ref(position_ids), position_ids._version, tuple(position_ids.shape), rows, length)
        self._value = value
        return value


_SEGMENTS = _SegmentsCache()


# ----------------------------------------------------------------------------------------------
# The two backends over the flattened tokens (T, heads, head_dim)


def repeat_kv_heads(x: torch.Tensor, query_heads: int) -> torch.Tensor:
    """(T, Hkv, D) -> (T, Hq, D): query head h reads key/value head h // (Hq / Hkv), as transformers'
    `repeat_kv` lays them out."""
    return x if x.shape[1] == query_heads else x.repeat_interleave(query_heads // x.shape[1], dim=1)


def reference_varlen_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               bounds: tuple[int, ...], scale: float | None, dropout: float = 0.0) -> torch.Tensor:
    """What the varlen kernel computes, one causal sdpa per document: the fallback on CPU, in fp32,
    with dropout or without `varlen_attn`, and the reference the tests compare the kernel's
    plumbing against. No (row x row) mask is built."""
    key, value = repeat_kv_heads(key, query.shape[1]), repeat_kv_heads(value, query.shape[1])
    pieces = []
    for start, end in pairwise(bounds):
        # 4-D (1, H, n, D): on CPU only 4-D inputs reach sdpa's flash kernel, O(n) memory; 3-D ones
        # take the math path, which builds the n x n scores (6 GB for one 16k-token document).
        q, k, v = (x[start:end].transpose(0, 1)[None] for x in (query, key, value))
        pieces.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scale)[0])
    return torch.cat(pieces, dim=1).transpose(0, 1)


@dataclass(frozen=True)
class KernelApi:
    """How the installed `varlen_attn` is called (its keyword arguments changed across releases)."""

    causal: str  # "window_size" (newer releases: window (-1, 0)) or "is_causal" (the first ones)
    scale: bool  # accepts `scale=`; without it the kernel scales by head_dim ** -0.5
    gqa: bool  # accepts `enable_gqa=`; without it key/value heads are repeated here


def kernel_api(fn: Callable | None) -> KernelApi | None:
    """Read `fn`'s signature; None when there is no kernel or it takes no causal switch we know."""
    if fn is None:
        return None
    params = inspect.signature(fn).parameters
    if "window_size" in params:
        causal = "window_size"
    elif "is_causal" in params:
        causal = "is_causal"
    else:
        return None
    return KernelApi(causal=causal, scale="scale" in params, gqa="enable_gqa" in params)


def kernel_varlen_attention(fn: Callable, api: KernelApi, query: torch.Tensor, key: torch.Tensor,
                            value: torch.Tensor, segments: Segments, scale: float | None) -> torch.Tensor:
    """Causal attention within each segment through torch's varlen kernel."""
    kwargs: dict = {"window_size": (-1, 0)} if api.causal == "window_size" else {"is_causal": True}
    head_dim = query.shape[-1]
    if api.scale:
        kwargs["scale"] = scale
    elif scale is not None and not math.isclose(scale, head_dim**-0.5, rel_tol=1e-6):
        raise ValueError(f"this torch's varlen_attn has no scale argument and scales by head_dim ** -0.5, "
                         f"but the model asks for {scale}")
    if key.shape[1] != query.shape[1]:
        if api.gqa:
            kwargs["enable_gqa"] = True
        else:
            key, value = repeat_kv_heads(key, query.shape[1]), repeat_kv_heads(value, query.shape[1])
    cu, longest = segments.cu_seqlens, segments.max_seqlen
    return fn(query, key, value, cu, cu, longest, longest, **kwargs)


# ----------------------------------------------------------------------------------------------
# Backend choice


_API = kernel_api(_VARLEN_ATTN)
_warned: set[str] = set()


def kernel_unusable_reason(query: torch.Tensor, dropout: float) -> str | None:
    """Why the varlen kernel cannot take this call (None: it can)."""
    if _VARLEN_ATTN is None or _API is None:
        return f"torch {torch.__version__} has no usable torch.nn.attention.varlen.varlen_attn"
    if not query.is_cuda:
        return "tensors are not on CUDA"
    if query.dtype not in KERNEL_DTYPES:
        return f"dtype {query.dtype} (the kernel takes fp16/bf16)"
    if dropout > 0:
        return "attention dropout > 0 (the kernel has none)"
    if query.shape[-1] > MAX_KERNEL_HEAD_DIM or query.shape[-1] % 8:
        return f"head_dim {query.shape[-1]} (the kernel takes multiples of 8 up to {MAX_KERNEL_HEAD_DIM})"
    return None


def _warn_fallback_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("%s: packed attention on CUDA falls back to one sdpa per document (exact, slower) "
                       "because %s", NAME, reason)


def describe_backend() -> str:
    """One line for reports: which path a bf16 packed training call on CUDA takes with this torch."""
    if _API is None:
        return f"per-document sdpa (torch {torch.__version__} has no usable varlen_attn)"
    gqa = "native GQA" if _API.gqa else "k/v heads repeated"
    return f"torch varlen_attn (causal via {_API.causal}, {gqa}, torch {torch.__version__})"


# ----------------------------------------------------------------------------------------------
# The transformers attention and mask functions


def _is_training_call(attention_mask: torch.Tensor | None, is_causal: bool, query: torch.Tensor,
                      key: torch.Tensor) -> bool:
    """A packed training forward: causal, no padding mask, no cached keys before the queries."""
    return attention_mask is None and is_causal and query.shape[2] == key.shape[2]


def ponder_varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query (B, Hq, L, D), key/value (B, Hkv, S, D) ->
    ((B, L, Hq, D), None). Packed training calls attend within each document of each row;
    every other call is transformers' sdpa."""
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    shard = kwargs.pop("sequence_parallel", None)  # a trainer.sequence_parallel.SequenceShard
    if not _is_training_call(attention_mask, is_causal, query, key):
        if shard is not None:
            raise ValueError("a sequence-parallel forward must be a packed training call (no mask, no cache)")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    if shard is not None:  # Ulysses: the whole row for this rank's share of the heads
        query, key, value = shard.split_heads(query, key, value)
        position_ids = shard.text_positions
    rows, query_heads, length, head_dim = query.shape
    segments = _SEGMENTS.get(position_ids, rows, length, query.device)
    q = query.transpose(1, 2).reshape(rows * length, query_heads, head_dim)
    k = key.transpose(1, 2).reshape(rows * length, key.shape[1], head_dim)
    v = value.transpose(1, 2).reshape(rows * length, value.shape[1], value.shape[-1])
    reason = kernel_unusable_reason(q, dropout)
    if reason is None:
        out = kernel_varlen_attention(_VARLEN_ATTN, _API, q, k, v, segments, scaling)
    else:
        if q.is_cuda:
            _warn_fallback_once(reason)
        out = reference_varlen_attention(q, k, v, segments.bounds, scaling, dropout)
    out = out.reshape(rows, length, query_heads, out.shape[-1])
    return (out if shard is None else shard.sequence_to_heads(out)), None


def ponder_varlen_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                       attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """The mask transformers builds for this implementation: none for a packed training forward
    (the attention function reads the documents from `position_ids`, so the O(L^2) mask of
    sdpa is never made), sdpa's mask otherwise (padding, KV cache). Assumes a causal decoder
    without extra mask overlays, as Glm4v's and Glm4's text models are."""
    fresh = isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset == kv_offset == 0
    if attention_mask is None and fresh and q_length == kv_length:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make `attn_implementation="ponder_varlen"` valid for `from_pretrained` / `_from_config`."""
    AttentionInterface.register(NAME, ponder_varlen_attention)
    AttentionMaskInterface.register(NAME, ponder_varlen_mask)


register()
