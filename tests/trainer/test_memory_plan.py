"""The memory planner against measurements: ZeRO-3 states of a real 2-rank DeepSpeed run on gloo,
saved-tensor bytes and tensor-memory peaks (the profiler's allocation trace) of a real CPU
forward + backward of `tiny`, and the KV-cache size of a real transformers cache. Numbers are
measured here, never re-derived from the planner's formulas."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from transformers import Glm4vForConditionalGeneration

from data_pipelines.batch import collate_rows
from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer
from launch.plan import PlanOptions, compose_recipe, settings, stage_of, typed_sections
from tests.data_pipelines.docs_factory import make_doc
from tests.trainer.launching import REPO, _free_port, launch_env
from tests.trainer.memory_measure import TensorMemoryTrace, saved_bytes
from trainer.forward import UniformVisionForward
from trainer.loss import batch_losses
from trainer.memory_plan import Cluster, TrainSettings, activations, logits, plan
from trainer.model import count_parameters, glm4v_config, load_preset
from trainer.model_shape import model_shape

MIB = 2**20


def recipe_plan(overrides: list[str], nodes: int = 1, gpus_per_node: int = 2, device: str = "cpu"):
    """Shape, settings and plan of a recipe, exactly as `python -m launch.plan` derives them."""
    options = PlanOptions(nodes=nodes, gpus_per_node=gpus_per_node, device=device)
    stage = stage_of(overrides, None)
    sections, _ = typed_sections(compose_recipe(stage, overrides))
    train, rollout, _ = settings(stage, sections, options)
    trainer = sections["trainer"]
    shape = model_shape(sections["model"], trainer.freeze_vision, trainer.freeze_language)
    return shape, train, plan(shape, Cluster(nodes, gpus_per_node, 80.0), train, rollout)


# ----------------------------------------------------------------------------------------------
# Parameters and ZeRO-3 states


def test_meta_counts_equal_a_real_model():
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    real = Glm4vForConditionalGeneration._from_config(
        glm4v_config(load_preset("tiny"), SpecialTokens.from_tokenizer(tokenizer)))
    shape = model_shape(load_preset("tiny"))
    assert shape.counts == count_parameters(real)
    assert sorted(shape.numels) == sorted(p.numel() for p in real.parameters())


def closed_form_counts(c) -> dict[str, int]:
    """Glm4v's parameters written out by hand from the architecture (transformers 5.19)."""
    h, layers, vocab, f = c.text_hidden_size, c.text_num_hidden_layers, c.vocab_size, c.text_intermediate_size
    kv = c.text_num_key_value_heads * (h // c.text_num_attention_heads)
    # embed + lm_head + final norm; per layer q/k/v with bias, o, gate_up, down, four norms
    language = 2 * vocab * h + h + layers * (h * h + h + 2 * (h * kv + kv) + h * h + 3 * h * f + 4 * h)
    hv, mlp, ci = c.vision_hidden_size, c.vision_out_hidden_size, c.vision_intermediate_size
    d = c.vision_out_hidden_size  # the merger's width
    patch = 3 * c.vision_temporal_patch_size * c.vision_patch_size**2
    positions = (c.vision_image_size // c.vision_patch_size) ** 2
    # 3D patch conv (+bias), post-conv norm, position table, blocks (2 norms, qkv, proj, 3 MLP), post norm
    vision = hv * patch + hv + hv + positions * hv + c.vision_depth * (2 * hv + 4 * hv * hv + 3 * hv * mlp) + hv
    m = c.vision_spatial_merge_size
    # 2x2 downsample conv (+bias); merger: proj, LayerNorm (weight, bias), gate, up, down
    merger = d * hv * m * m + d + d * d + 2 * d + 3 * d * ci
    return {"vision": vision, "merger": merger, "language": language, "total": vision + merger + language}


@pytest.mark.parametrize("preset", ["tiny", "glm41v_1b", "glm41v_9b"])
def test_meta_counts_equal_the_architecture_by_hand(preset):
    counts = model_shape(load_preset(preset)).counts
    assert counts == closed_form_counts(load_preset(preset))
    if preset == "glm41v_9b":  # GLM-4.1V-9B-Thinking is published as a 10.3B-parameter model
        assert counts["total"] == pytest.approx(10.3e9, rel=0.01)


ZERO_CASES = {
    "fp32": ["recipe=pretrain_tiny"],  # trainer.precision=auto is fp32 on CPU
    "bf16-frozen": ["recipe=pretrain_tiny", "trainer.precision=bf16", "trainer.freeze_vision=true"],
}


@pytest.fixture(scope="module")
def zero_probe_dir(tmp_path_factory):
    """One real 2-rank ZeRO-3 launch (torchrun, gloo) measuring every case: what each rank holds."""
    out = tmp_path_factory.mktemp("zero_probe")
    cases = []
    for name, overrides in ZERO_CASES.items():
        shape, train, _ = recipe_plan(overrides)
        cases.append(f"{name}:{train.precision}" + ("" if shape.vision_trainable else ":freeze_vision"))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         str(REPO / "tests" / "trainer" / "zero_probe.py"), str(out), *cases],
        env=launch_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    (out / "probe.log").write_text(proc.stdout + proc.stderr)  # where its time went (zero_probe.py: phase)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module", params=list(ZERO_CASES))
def zero_run(request, zero_probe_dir):
    """The recipe's plan, and what each rank of the real run held."""
    _, _, result = recipe_plan(ZERO_CASES[request.param])
    ranks = [json.loads((zero_probe_dir / f"rank_{r}_{request.param}.json").read_text()) for r in range(2)]
    return result, ranks


def test_zero3_states_equal_what_deepspeed_holds_per_rank(zero_run):
    result, ranks = zero_run
    for measured in ranks:
        assert measured["world"] == result.cluster.world == 2
        assert measured["params"] == result.states.params
        assert measured["grads"] == result.states.grads
        assert measured["master"] == result.states.master
        assert measured["adam"] == result.states.adam
        assert measured["distinct_state_bytes"] == result.states.total  # nothing shared between them


def test_zero3_buffers_equal_what_deepspeed_allocates(zero_run):
    result, ranks = zero_run
    element = 2 if result.train.precision == "bf16" else 4
    for measured in ranks:
        assert measured["reduce_bucket"] == result.buffers.reduce_bucket
        assert measured["persistent_elements"] * element == result.buffers.persistent


# ----------------------------------------------------------------------------------------------
# Activations and logits of a real CPU forward + backward at the recipe's row length


def tiny_rows(special: SpecialTokens, rows: int, seq_len: int, vocab: int):
    """Packed rows like the reader's: three documents each, a quarter of the tokens in images."""
    text = seq_len - 4 * (64 + 2)  # four 16 x 16-patch images (64 tokens + begin/end each)
    per = text // 8
    docs = [[make_doc(f"r{r}d{i}", [per, (16, 16), per, (16, 16)], seed=10 * r + i, vocab=vocab, special=special)
             for i in range(2)] + [make_doc(f"r{r}t", [text - 4 * per], seed=r, vocab=vocab, special=special)]
            for r in range(rows)]
    return collate_rows(docs, seq_len=seq_len, pad_id=special.eos)


def measure(overrides: list[str], vocab_size: int | None = None) -> dict:
    """Build the recipe's model for real and measure one training forward + backward (per-token
    loss, chunked as trainer.loss_chunk_tokens says) of a micro-batch of the recipe's shape
    (rows x seq_len) on CPU."""
    shape, train, _ = recipe_plan(overrides)
    tokenizer = build_tiny_tokenizer()
    special = SpecialTokens.from_tokenizer(tokenizer)
    cfg = load_preset("tiny")
    if vocab_size:  # a small vocabulary, so the layers' backward and not the loss sets the peak
        cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
        shape = dataclasses.replace(shape, vocab=vocab_size)
    dtype = torch.bfloat16 if train.precision == "bf16" else torch.float32
    torch.manual_seed(0)
    model = Glm4vForConditionalGeneration._from_config(glm4v_config(cfg, special), dtype=dtype,
                                                        attn_implementation=shape.attn_implementation).train()
    if train.activation_checkpointing:  # as trainer/zero.py enables it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward = UniformVisionForward(model, train.loss_chunk_tokens)
    batch = tiny_rows(special, train.micro_rows, train.row_tokens, vocab=min(2000, cfg.vocab_size))
    image_fraction = float((batch.mm_token_type_ids == 1).float().mean())
    params = list(model.parameters())

    def step() -> int:
        saved, losses = saved_bytes(lambda: batch_losses(forward, batch), params)
        loss = (losses * batch.label_weights).sum()
        del losses
        TensorMemoryTrace.mark()
        loss.backward()
        return saved

    step()  # warm-up: lazily built buffers and caches are not activations; gradients now exist
    for p in params:
        p.grad.zero_()  # backward adds into them: the trace sees activations and working memory only
    with TensorMemoryTrace() as trace:
        measured = {"saved": step()}
    measured["peak"], measured["held_after_forward"] = trace.peak, trace.at_mark
    settings_ = dataclasses.replace(train, image_fraction=image_fraction)
    return {"measured": measured, "acts": activations(shape, settings_), "logits": logits(shape, settings_)}


def within(measured: float, planned: float, tolerance: float = 0.30) -> bool:
    return abs(planned - measured) <= tolerance * measured


RECIPE = ["recipe=pretrain_tiny"]  # 2 rows x 1,024 tokens, fp32 on CPU, no checkpointing, sdpa
RECIPE_AND_PATHS = [
    pytest.param([], id="recipe"),
    pytest.param(["model.attn_implementation=ponder_varlen"], id="ponder_varlen"),
    pytest.param(["trainer.loss_chunk_tokens=256"], id="chunked-loss"),
]
CHECKPOINTING = [
    pytest.param(["trainer.activation_checkpointing=true"], id="checkpointing"),
    pytest.param(["trainer.precision=bf16", "trainer.activation_checkpointing=true"], id="bf16-checkpointing"),
]


@pytest.mark.parametrize("extra", RECIPE_AND_PATHS)
def test_saved_tensors_match_autograd_at_the_recipes_row_length(extra):
    """Without activation checkpointing every byte kept for backward passes through autograd's
    saved-tensor hooks (checkpointed layers keep their inputs outside them: the peak test covers
    those): activations plus, for a whole-row loss, the log-probabilities."""
    m = measure(RECIPE + extra)
    got, planned = m["measured"]["saved"], m["acts"].saved + m["logits"].held
    print(f"{extra}: saved for backward: measured {got / MIB:.2f} MiB, planned {planned / MIB:.2f} MiB")
    assert within(got, planned)


@pytest.mark.parametrize("extra, vocab_size", [
    *[pytest.param(p.values[0], None, id=p.id) for p in RECIPE_AND_PATHS + CHECKPOINTING],
    # a 256-token vocabulary: the layers' backward, not the loss, sets the peak
    *[pytest.param(p.values[0], 256, id=p.id + "-vocab256") for p in [RECIPE_AND_PATHS[0]] + CHECKPOINTING],
])
def test_forward_backward_peak_within_30_percent(extra, vocab_size):
    m = measure(RECIPE + extra, vocab_size)
    got, acts, lg = m["measured"], m["acts"], m["logits"]
    planned_peak = acts.saved + max(lg.peak, acts.backward_working)
    planned_held = acts.saved + lg.held
    print(f"{extra} vocab {vocab_size}: peak measured {got['peak'] / MIB:.2f} MiB, planned {planned_peak / MIB:.2f}; "
          f"after forward measured {got['held_after_forward'] / MIB:.2f}, planned {planned_held / MIB:.2f}")
    assert within(got["peak"], planned_peak)
    assert within(got["held_after_forward"], planned_held)


def test_kv_bytes_per_token_equal_a_real_cache():
    tokenizer = build_tiny_tokenizer()
    model = Glm4vForConditionalGeneration._from_config(
        glm4v_config(load_preset("tiny"), SpecialTokens.from_tokenizer(tokenizer)), dtype=torch.bfloat16).eval()
    tokens = 37
    with torch.no_grad():
        cache = model(input_ids=torch.randint(30, 1000, (1, tokens)), use_cache=True).past_key_values
    layers = cache.layers
    measured = sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values))
    assert measured == tokens * model_shape(load_preset("tiny")).kv_bytes_per_token_bf16


# ----------------------------------------------------------------------------------------------
# Planner behaviour the report relies on


def test_sequence_parallel_splits_a_row_like_a_shorter_row():
    shape = model_shape(load_preset("glm41v_9b"))
    cluster = Cluster(8, 8, 80.0)
    base = TrainSettings("bf16", True, 1, 8192)
    split = dataclasses.replace(base, row_tokens=32768, sequence_parallel=4)
    assert plan(shape, cluster, split).peak == plan(shape, cluster, base).peak
