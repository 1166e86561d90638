"""Per-rank GPU memory of a ponder run, computed before any hardware is rented.

Pure arithmetic over a `ModelShape` (trainer/model_shape.py) and a few run settings; every
quantity is bytes per rank unless its name says otherwise. No process group, no device.

What is counted, and where the rules come from:

- **Model states under ZeRO-3** (DeepSpeed 0.19 `stage3.py`, checked against a 2-rank CPU run in
  tests/trainer/test_memory_plan.py): every parameter is cut into `ceil(numel / world)` elements per
  rank; per rank DeepSpeed holds the parameter shard in the run's precision (bf16 2 B / fp32 4 B),
  a gradient shard of the same dtype for trainable parameters, an fp32 master copy of the
  trainable shard (also in fp32 runs: DeepSpeed compares `tensor.device == "cpu"`, which is False,
  so it never reuses the fp32 shard) and Adam's m and v in fp32. bf16: 2 + 2 + 4 + 8 = 16 B per
  trainable parameter / world; fp32: 20.
- **ZeRO-3 buffers** (DeepSpeed defaults, which ponder's deepspeed_config leaves as they are): the
  contiguous-gradient reduce bucket (`reduce_bucket_size` 5e8 elements, allocated at init), the
  full copy of the largest module while it runs plus its full gradient before reduce-scatter
  (DeepSpeed's own estimator counts 4 B x largest layer in bf16), the prefetch bucket, the
  "persistent" parameters (<= 1e5 elements) that stay gathered, and at the optimizer step an
  fp32 copy of one sub-group's gradient.
- **Activations**: bytes autograd saves for backward, per token, of each decoder layer and vision
  block, written out from transformers' Glm4v modules (RMSNorm upcasts to fp32 and saves that copy,
  the reciprocal RMS and the normalised value; linear layers save their input; SiLU and the gate
  product save theirs; attention saves q, k, v, output and the log-sum-exp). How attention saves
  depends on the path (`attention_paths`): sdpa on packed rows gets a (row x row) mask, which torch
  converts to the compute dtype and saves in every layer, repeats k and v to all heads and copies
  its output; ponder_varlen's per-document reference path (CPU, fp32) runs sdpa on 3-D tensors,
  which torch sends to its math kernel: no mask, but heads x n^2 probabilities per document of n
  tokens; a varlen flash kernel (ponder_varlen with bf16 on GPU, flash_attention_2) saves q, k,
  v, output and log-sum-exp only.
  With activation checkpointing (non-reentrant, one checkpoint per decoder layer and vision
  block) only each layer's input is kept, and the backward re-runs one layer at a time.
  Checked against saved-tensor bytes and a sampled CPU forward+backward peak of `tiny`.
- **Loss logits**: trainer/loss.py runs cross-entropy in fp32 over full-vocabulary logits,
  `trainer.loss_chunk_tokens` positions at a time (each chunk activation-checkpointed, so nothing
  of it is kept between forward and backward), or over the whole row (0, or a row no longer than a
  chunk): then 4 B x tokens x vocab are kept for backward (the log-softmax output). Either way the
  loss's backward holds 12 B x tokens x vocab of one chunk (or row) at once: saved log-probs, their
  gradient and the logits' gradient.
- **vLLM (RL)**: bf16 weights (full copy per rank, / tensor parallel), the KV cache its share of a
  step's rollouts needs, the `gpu_memory_utilization` share it reserves, and what sleep mode
  (level 1: weights offloaded to CPU, KV cache discarded) would free during training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .model_shape import ModelShape

GIB = 2**30
PRECISION_BYTES = {"bf16": 2, "fp32": 4}
FLASH = ("flash_attention_2", "flash_attention_3")
VARLEN = "ponder_varlen"  # trainer/attention.py
ATTENTION = FLASH + ("sdpa", VARLEN)
DEVICES = ("gpu", "cpu")
KERNEL_MAX_HEAD_DIM = 256  # trainer/attention.py: the varlen kernel takes multiples of 8 up to this


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu_memory_gib: float  # memory of one GPU, GiB

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1 or self.gpu_memory_gib <= 0:
            raise ValueError("need nodes >= 1, gpus_per_node >= 1, gpu_memory_gib > 0")

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class ZeroSettings:
    """DeepSpeed ZeRO-3 sizes in elements (DeepSpeed's defaults; ponder sets none of them)."""

    reduce_bucket_size: int = 500_000_000
    prefetch_bucket_size: int = 50_000_000
    param_persistence_threshold: int = 100_000
    sub_group_size: int = 1_000_000_000


@dataclass(frozen=True)
class TrainSettings:
    """One micro-batch of the trainer: `micro_rows` packed rows of `row_tokens` tokens."""

    precision: str  # "bf16" or "fp32", as trainer.precision resolves on the target
    activation_checkpointing: bool
    micro_rows: int
    row_tokens: int
    loss_chunk_tokens: int = 2048  # trainer.loss_chunk_tokens: positions per loss chunk, 0 = whole row
    image_fraction: float = 0.25  # share of a row's tokens that are image tokens (assumed)
    sequence_parallel: int = 1  # ranks sharing one row (trainer.sequence_parallel_size, Ulysses)
    device: str = "gpu"  # the target: picks the attention path (trainer/attention.py)
    reserve_gib: float = 2.0  # CUDA context, NCCL buffers, allocator fragmentation (assumed)

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_BYTES:
            raise ValueError(f"precision must be one of {sorted(PRECISION_BYTES)}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.micro_rows < 1 or self.row_tokens < 1 or self.sequence_parallel < 1:
            raise ValueError("need micro_rows, row_tokens, sequence_parallel >= 1")
        if self.loss_chunk_tokens < 0:
            raise ValueError("need loss_chunk_tokens >= 0")
        if not 0 <= self.image_fraction <= 1:
            raise ValueError("image_fraction must be in [0, 1]")

    @property
    def tokens_per_rank(self) -> int:
        """Tokens of one row this rank holds activations for."""
        return math.ceil(self.row_tokens / self.sequence_parallel)


@dataclass(frozen=True)
class RolloutSettings:
    """The colocated vLLM engine of an RL run (one per rank, or per tensor-parallel group)."""

    prompts_per_step: int
    group_size: int
    max_prompt_tokens: int
    max_new_tokens: int
    forced_answer_tokens: int
    gpu_memory_utilization: float
    tensor_parallel: int = 1
    sleep: bool = False  # vLLM sleep mode during training (not used by ponder yet)

    def __post_init__(self) -> None:
        if self.tensor_parallel < 1 or not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("need rollout tensor_parallel >= 1 and 0 < gpu_memory_utilization <= 1")

    @property
    def sequence_tokens(self) -> int:
        return self.max_prompt_tokens + self.max_new_tokens + self.forced_answer_tokens


# ---------------------------------------------------------------------------------------------
# Model states


@dataclass(frozen=True)
class ZeroStates:
    """Bytes per rank that ZeRO-3 keeps for the whole run."""

    params: int  # parameter shards, run precision (all parameters, frozen ones too)
    grads: int  # gradient shards, run precision (trainable parameters)
    master: int  # fp32 master shards (trainable)
    adam: int  # Adam m and v, fp32 (trainable)

    @property
    def total(self) -> int:
        return self.params + self.grads + self.master + self.adam


def shard_elements(numels: tuple[int, ...], world: int) -> int:
    """Elements one rank holds: DeepSpeed pads each parameter to a multiple of `world` and gives
    every rank `ceil(numel / world)`."""
    return sum(-(-n // world) for n in numels)


def zero3_states(shape: ModelShape, world: int, precision: str) -> ZeroStates:
    p = PRECISION_BYTES[precision]
    everything = shard_elements(shape.numels, world)
    trainable = shard_elements(tuple(n for n, t in zip(shape.numels, shape.trainable) if t), world)
    return ZeroStates(params=p * everything, grads=p * trainable, master=4 * trainable, adam=8 * trainable)


@dataclass(frozen=True)
class ZeroBuffers:
    """ZeRO-3 working memory per rank beyond the shards."""

    reduce_bucket: int  # contiguous gradient bucket, allocated at init
    gathered: int  # largest module gathered + its full gradient, plus the prefetch bucket
    persistent: int  # small parameters kept gathered (full size) after first use
    step_transient: int  # optimizer step: one sub-group's gradient flattened and cast to fp32

    @property
    def resident(self) -> int:
        """Held through forward and backward."""
        return self.reduce_bucket + self.gathered + self.persistent


def zero3_buffers(shape: ModelShape, world: int, precision: str, zero: ZeroSettings = ZeroSettings()) -> ZeroBuffers:
    p = PRECISION_BYTES[precision]
    largest = shape.largest_module[1]
    persistent = sum(n for n in shape.numels if n <= zero.param_persistence_threshold)
    # DeepSpeed splits each optimizer parameter group's shard into sub-groups of sub_group_size.
    groups = _param_group_shards(shape, world)
    largest_sub_group = max((min(g, zero.sub_group_size) for g in groups), default=0)
    flatten = p if p != 4 else 0  # fp32 grads: .to(fp32) of the flat copy is the copy itself
    return ZeroBuffers(
        reduce_bucket=p * zero.reduce_bucket_size,
        gathered=2 * p * largest + p * zero.prefetch_bucket_size,
        persistent=p * persistent,
        step_transient=(4 + flatten) * largest_sub_group,
    )


def _param_group_shards(shape: ModelShape, world: int) -> list[int]:
    """Shard elements per AdamW parameter group of the trainer (trainer/zero.py param_groups:
    weight-decayed tensors of rank >= 2, the rest without decay), trainable parameters only. A
    `vision_lr_scale` != 1 splits each group in two (tower, rest): smaller groups, so this can only
    overstate the largest sub-group."""
    groups: list[list[int]] = [[], []]
    for n, ndim, trainable in zip(shape.numels, shape.ndims, shape.trainable):
        if trainable:
            groups[ndim < 2].append(n)
    return [shard_elements(tuple(g), world) for g in groups]


# ---------------------------------------------------------------------------------------------
# Activations


def rmsnorm_saved(width: int, act_bytes: int) -> int:
    """Bytes per token saved by one Glm4vRMSNorm: the fp32 upcast (the input itself in fp32),
    the reciprocal RMS (fp32) and the normalised value in the compute dtype."""
    return 4 * width + 4 + act_bytes * width


@dataclass(frozen=True)
class AttentionPaths:
    """How the text decoder's and the vision tower's attention run, as far as memory goes.

    text: "kernel" (a varlen flash kernel: q, k, v, output, log-sum-exp), "sdpa_mask" (sdpa on
    packed rows: a (row x row) mask, k and v repeated to all heads, output copied) or
    "per_document" (ponder_varlen's reference path: sdpa per document with 4-D inputs, whose CPU
    flash kernel keeps O(n) memory; what sdpa_mask saves, without the mask). vision: "kernel"
    (flash varlen over cu_seqlens) or "per_image" (sdpa per image, outputs concatenated).
    """

    text: str
    vision: str


def attention_paths(shape: ModelShape, train: TrainSettings) -> AttentionPaths:
    impl = shape.attn_implementation
    if impl in FLASH:
        return AttentionPaths("kernel", "kernel")
    if impl == "sdpa":
        return AttentionPaths("sdpa_mask", "per_image")
    # ponder_varlen: torch's varlen kernel for bf16 on CUDA with a head_dim it takes; the vision
    # tower is handed to sdpa (transformers gives cu_seqlens only to "flash" implementations).
    kernel = (train.device == "gpu" and train.precision == "bf16" and shape.head_dim % 8 == 0
              and shape.head_dim <= KERNEL_MAX_HEAD_DIM)
    return AttentionPaths("kernel" if kernel else "per_document", "per_image")


def text_layer_saved(shape: ModelShape, act_bytes: int, path: str) -> int:
    """Bytes per token one decoder layer saves for backward (no checkpointing), sdpa's mask aside."""
    e, h, f = act_bytes, shape.hidden, shape.intermediate
    q = shape.heads * shape.head_dim
    k = shape.kv_heads * shape.head_dim
    norms = 4 * rmsnorm_saved(h, e)  # input, post-self-attn, post-attention, post-mlp
    mlp = e * (h + 4 * f)  # gate_up input, gate_up output (2f), SiLU output, product (down input)
    lse = 4 * shape.heads
    if path == "kernel":
        attention = e * (h + 2 * q + 2 * k) + lse  # qkv input, q, k, v, output (= o_proj input)
    else:  # sdpa on the row or per document: q, k, v repeated to all heads, output, its copy for o_proj
        attention = e * (h + 5 * q) + lse
    return norms + mlp + attention


def vision_block_saved(shape: ModelShape, act_bytes: int, path: str) -> int:
    """Bytes per patch one vision block saves for backward (no checkpointing)."""
    e, h, f = act_bytes, shape.vision_hidden, shape.vision_mlp
    norms = 2 * rmsnorm_saved(h, e)
    # qkv input, qkv output (v is a view of it), rotated q and k, attention output (+ the
    # concatenation of per-image outputs outside a varlen kernel), log-sum-exp
    attention = e * (h + 3 * h + 2 * h + h) + 4 * shape.vision_heads
    if path != "kernel":
        attention += e * h
    mlp = e * (h + 4 * f)  # gate/up input, gate output, up output, SiLU output, product
    return norms + attention + mlp


def vision_stem_saved(shape: ModelShape, act_bytes: int) -> int:
    """Bytes per patch outside the blocks: patch embedding input, the two norms around the
    blocks, the 2x2 downsample input, and the rotary cos/sin (fp32)."""
    e, h = act_bytes, shape.vision_hidden
    head_dim = h // shape.vision_heads
    return e * shape.patch_elements + 2 * rmsnorm_saved(h, e) + e * h + 2 * 4 * head_dim


def merger_saved(shape: ModelShape, act_bytes: int) -> int:
    """Bytes per merged (LLM) image token in the patch merger: projection input, LayerNorm input
    and statistics, GELU input, gate/up input, gate and up outputs, SiLU output, product."""
    e, d, c = act_bytes, shape.merger_dim, shape.merger_intermediate
    return e * (4 * d + 4 * c) + 8


def text_fixed_saved(shape: ModelShape, act_bytes: int) -> int:
    """Bytes per token outside the decoder layers: token ids (int64) for the embedding, the
    final norm, the lm_head input, and the rotary cos/sin shared by all layers."""
    e, h = act_bytes, shape.hidden
    return 8 + rmsnorm_saved(h, e) + e * h + 2 * e * shape.rotary_dim


@dataclass(frozen=True)
class Activations:
    """Bytes per rank for one micro-batch (excluding the loss's logits)."""

    saved: int  # held from the end of forward into backward
    backward_working: int  # on top of `saved` during a layer's backward (recompute + gradients)
    mask: int  # sdpa's packed-row attention masks (part of `saved`)
    patches: int  # vision patches in the micro-batch (per rank)

    @property
    def peak(self) -> int:
        return self.saved + self.backward_working


def activations(shape: ModelShape, train: TrainSettings) -> Activations:
    e = PRECISION_BYTES[train.precision]
    rows = train.micro_rows
    tokens = rows * train.tokens_per_rank
    image_tokens = round(tokens * train.image_fraction)
    patches = image_tokens * shape.spatial_merge**2
    vision_on = shape.vision_trainable  # a frozen tower with pixel inputs saves nothing

    paths = attention_paths(shape, train)
    text_layer = text_layer_saved(shape, e, paths.text) * tokens
    vision_block = vision_block_saved(shape, e, paths.vision) * patches if vision_on else 0
    # sdpa on packed rows: transformers builds one boolean (row x row) mask per row; torch's sdpa
    # turns it into an additive mask in the compute dtype inside every layer and saves that copy.
    # Under sequence parallelism attention still spans the whole row (heads are split instead).
    bool_mask = rows * train.row_tokens**2 if paths.text == "sdpa_mask" else 0
    layer_mask = e * bool_mask
    fixed = text_fixed_saved(shape, e) * tokens
    if vision_on:
        fixed += vision_stem_saved(shape, e) * patches + merger_saved(shape, e) * image_tokens
    if train.activation_checkpointing:
        # Each checkpointed layer keeps its input (and the boolean mask it is called with).
        layers = shape.text_layers * e * shape.hidden * tokens
        layers += shape.vision_depth * e * shape.vision_hidden * patches if vision_on else 0
        mask = bool_mask
        recompute = max(text_layer + layer_mask, vision_block)  # one layer re-run in backward
    else:
        layers = shape.text_layers * (text_layer + layer_mask) + shape.vision_depth * vision_block
        mask = shape.text_layers * layer_mask
        recompute = 0
    # Gradient tensors alive in a decoder layer's backward: the residual stream's gradient and
    # the MLP intermediate's (gate_up output, 2 x intermediate) gradient.
    gradients = e * tokens * (2 * shape.hidden + 2 * shape.intermediate)
    return Activations(saved=layers + fixed, backward_working=recompute + gradients, mask=mask, patches=patches)


@dataclass(frozen=True)
class Logits:
    """Bytes per rank of the loss's full-vocabulary logits for one micro-batch."""

    chunk_tokens: int  # positions x rows whose logits exist at once (a chunk, or the whole row)
    held: int  # kept from forward into backward (whole row only; chunks are recomputed)
    peak: int  # in the loss's backward (includes `held`)
    whole_row_peak: int  # the same without chunking (trainer.loss_chunk_tokens=0), for comparison


def logits(shape: ModelShape, train: TrainSettings) -> Logits:
    rows, length = train.micro_rows, train.tokens_per_rank
    whole = rows * length
    chunked = 0 < train.loss_chunk_tokens < length  # trainer/loss.py chunks only a longer row
    tokens = rows * train.loss_chunk_tokens if chunked else whole
    return Logits(chunk_tokens=tokens, held=0 if chunked else 4 * whole * shape.vocab,
                  peak=12 * tokens * shape.vocab, whole_row_peak=12 * whole * shape.vocab)


# ---------------------------------------------------------------------------------------------
# vLLM


@dataclass(frozen=True)
class VLLMMemory:
    """Bytes per rank of the colocated vLLM engine."""

    weights: int  # bf16, / tensor parallel
    kv_needed: int  # all of this rank's rollout sequences at full length at once
    sequences: int  # rollout sequences per engine per step
    reserved: int  # gpu_memory_utilization x GPU memory: what vLLM takes while awake
    kv_room: int  # the part of `reserved` left for KV cache after the weights
    sleep: bool

    @property
    def during_training(self) -> int:
        """What vLLM holds while the trainer runs: all of it, or (sleep level 1) nothing."""
        return 0 if self.sleep else self.reserved

    @property
    def sleep_frees(self) -> int:
        return self.reserved


def vllm_memory(shape: ModelShape, rollout: RolloutSettings, cluster: Cluster) -> VLLMMemory:
    tp = rollout.tensor_parallel
    engines = max(1, cluster.world // tp)
    sequences = -(-rollout.prompts_per_step // engines) * rollout.group_size
    weights = 2 * shape.total_params // tp
    kv_needed = sequences * rollout.sequence_tokens * shape.kv_bytes_per_token_bf16 // tp
    reserved = int(rollout.gpu_memory_utilization * cluster.gpu_memory_gib * GIB)
    return VLLMMemory(weights=weights, kv_needed=kv_needed, sequences=sequences, reserved=reserved,
                      kv_room=max(0, reserved - weights), sleep=rollout.sleep)


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Phases:
    """Bytes per rank at the worst moment of each phase of a step."""

    loss_backward: int  # all activations saved + the loss's logits and their gradients
    layer_backward: int  # activations saved + one layer re-run and its gradients
    optimizer_step: int
    rollout: int | None  # RL: vLLM awake, trainer idle

    @property
    def peak(self) -> int:
        return max(v for v in (self.loss_backward, self.layer_backward, self.optimizer_step, self.rollout)
                   if v is not None)


@dataclass(frozen=True)
class MemoryPlan:
    cluster: Cluster
    train: TrainSettings
    rollout: RolloutSettings | None
    states: ZeroStates
    buffers: ZeroBuffers
    activations: Activations
    logits: Logits
    vllm: VLLMMemory | None
    reserve: int
    phases: Phases

    @property
    def peak(self) -> int:
        return self.phases.peak

    @property
    def capacity(self) -> int:
        return int(self.cluster.gpu_memory_gib * GIB)

    @property
    def fits(self) -> bool:
        return self.peak <= self.capacity


def plan(shape: ModelShape, cluster: Cluster, train: TrainSettings, rollout: RolloutSettings | None = None,
         zero: ZeroSettings = ZeroSettings()) -> MemoryPlan:
    if shape.attn_implementation not in ATTENTION:
        raise ValueError(f"attention {shape.attn_implementation!r} is not modelled (one of {ATTENTION})")
    if cluster.world % train.sequence_parallel:
        raise ValueError(f"sequence_parallel={train.sequence_parallel} must divide the {cluster.world} ranks")
    states = zero3_states(shape, cluster.world, train.precision)
    buffers = zero3_buffers(shape, cluster.world, train.precision, zero)
    acts = activations(shape, train)
    loss = logits(shape, train)
    vllm = vllm_memory(shape, rollout, cluster) if rollout else None
    reserve = int(train.reserve_gib * GIB)
    base = states.total + buffers.resident + reserve + (vllm.during_training if vllm else 0)
    phases = Phases(
        loss_backward=base + acts.saved + loss.peak,
        layer_backward=base + acts.peak,
        optimizer_step=states.total + buffers.reduce_bucket + buffers.persistent + buffers.step_transient + reserve
        + (vllm.during_training if vllm else 0),
        rollout=(states.total + buffers.reduce_bucket + buffers.persistent + reserve + vllm.reserved) if vllm else None,
    )
    return MemoryPlan(cluster, train, rollout, states, buffers, acts, loss, vllm, reserve, phases)


# ---------------------------------------------------------------------------------------------
# Knobs


@dataclass(frozen=True)
class Knob:
    """One change to the run and the plan it gives."""

    name: str  # what to set, in recipe / planner terms
    result: MemoryPlan
    saves: int  # bytes per rank off the peak
    note: str = ""


@dataclass
class Verdict:
    fits: bool
    headroom: int  # capacity - peak (negative: short by that much)
    knobs: list[Knob] = field(default_factory=list)  # most help first


SP_CHOICES = (2, 4, 8)
NODE_FACTORS = (2, 4, 8)
CHUNK_CHOICES = (2048, 1024, 512, 256)  # trainer.loss_chunk_tokens, largest first


def _smallest_that_fits(variants: list[tuple[str, MemoryPlan]]) -> list[tuple[str, MemoryPlan]]:
    """The first variant that fits, else the last (the most of that knob tried)."""
    for name, result in variants:
        if result.fits:
            return [(name, result)]
    return variants[-1:]


def verdict(shape: ModelShape, current: MemoryPlan, zero: ZeroSettings = ZeroSettings()) -> Verdict:
    """Fits or not, and each knob that lowers the peak (one setting per knob: the smallest that
    fits, else the most tried), ordered by bytes saved."""
    train, rollout, cluster = current.train, current.rollout, current.cluster

    def again(train_: TrainSettings = train, rollout_: RolloutSettings | None = rollout,
              cluster_: Cluster = cluster) -> MemoryPlan:
        return plan(shape, cluster_, train_, rollout_, zero)

    planned = "planned feature, not in ponder yet"
    candidates: list[tuple[str, MemoryPlan, str]] = []
    if not train.activation_checkpointing:
        candidates.append(("trainer.activation_checkpointing=true",
                           again(dataclasses.replace(train, activation_checkpointing=True)), ""))
    if train.micro_rows > 1:
        candidates.append(("data.batch_rows=1", again(dataclasses.replace(train, micro_rows=1)),
                           f"raise trainer.grad_accum x{train.micro_rows} to keep the batch"))
    sp = [(f"sequence_parallel={n}", again(dataclasses.replace(train, sequence_parallel=n)))
          for n in SP_CHOICES if n > train.sequence_parallel and cluster.world % n == 0]
    candidates += [(name, result, planned) for name, result in _smallest_that_fits(sp)]
    nodes = [(f"nodes={cluster.nodes * f}", again(cluster_=dataclasses.replace(cluster, nodes=cluster.nodes * f)))
             for f in NODE_FACTORS]
    candidates += [(name, result, "") for name, result in _smallest_that_fits(nodes)]
    in_flight = current.logits.chunk_tokens // train.micro_rows  # positions whose logits exist at once
    chunks = [(f"trainer.loss_chunk_tokens={c}", again(dataclasses.replace(train, loss_chunk_tokens=c)))
              for c in CHUNK_CHOICES if c < in_flight]
    candidates += [(name, result, "") for name, result in _smallest_that_fits(chunks)]
    if shape.attn_implementation == "sdpa" and train.device == "gpu":
        varlen = dataclasses.replace(shape, attn_implementation=VARLEN)
        candidates.append((f"model.attn_implementation={VARLEN}", plan(varlen, cluster, train, rollout, zero),
                           "no (row x row) mask"))
    if rollout is not None and current.vllm is not None:
        if not rollout.sleep:
            candidates.append(("rollout_sleep=true", again(rollout_=dataclasses.replace(rollout, sleep=True)),
                               planned + ": vLLM sleep mode while training"))
        needed = current.vllm.weights + current.vllm.kv_needed
        utilization = math.ceil(needed / current.capacity * 100) / 100
        if utilization < rollout.gpu_memory_utilization:
            candidates.append((f"rollout.gpu_memory_utilization={utilization:.2f}",
                               again(rollout_=dataclasses.replace(rollout, gpu_memory_utilization=utilization)),
                               "weights + this step's KV cache"))
    knobs = [Knob(name, result, current.peak - result.peak, note) for name, result, note in candidates
             if result.peak < current.peak]
    knobs.sort(key=lambda k: -k.saves)
    return Verdict(fits=current.fits, headroom=current.capacity - current.peak, knobs=knobs)
