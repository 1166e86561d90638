"""The GPU checks of one lent GPU machine, as one table: `bash bench/gpu_check.sh` runs this.

Rows (each check runs in its own subprocess with a timeout, so one failure cannot stop the table):
- varlen: packed rows through `ponder_varlen` (trainer/attention.py, torch's varlen kernel) vs the
  block-causal sdpa path on Glm4v (glm41v_1b shape, small vocabulary) in bf16: per-document
  losses against each document run alone, and the kernel's output and gradients against an
  fp32 reference (the flash-attention test rule: error <= 2x sdpa's own bf16 error);
- train: bf16 training of glm41v_1b on 8k packed rows (DeepSpeed ZeRO-3 as the stages run it, or,
  if the carried DeepSpeed does not run, plain torch AdamW with the same forward and loss):
  tokens/s and MFU (PaLM convention, bench/train_speed.py) against the H200's dense bf16 peak
  of 989 TFLOP/s (datasheet) and against a bf16 matmul measured in the same process;
- loss_memory: peak GPU memory (`torch.cuda.max_memory_allocated`) of the per-token loss at 32k
  tokens with the 9B vocabulary, chunked vs whole row (trainer/loss.py `chunked_token_losses`;
  bench/loss_memory.py predicts 55.50 -> 4.88 GiB);
- rl: one RLCS step of the tiny Glm4v with image prompts on the HF engine (`launch/rl.py`), its
  time split into rollout / reward / train / sync from metrics.jsonl;
- and one row per check that cannot run on such a machine, with the reason.

Without CUDA every row is "skipped" and the exit status is 0. `--cpu-dry-run` runs each check on
CPU at toy sizes: it exercises the script where no GPU is lent (its numbers mean nothing).
Runs on torch >= 2.11 / transformers >= 5.17 (the GPU machine's image) as well as our pins.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

H200_DENSE_BF16 = 989e12  # datasheet, dense bf16 (the MFU denominator, as bench/train_speed.py)
GIB = 2**30
# What launch/rl.py imports beyond the GPU image (carried as bench/gpu_wheels).
RL_MODULES = ("hydra", "omegaconf", "antlr4", "deepspeed", "pydantic", "hjson", "webdataset", "braceexpand",
              "math_verify", "latex2sympy2_extended")


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    timeout_s: int  # on the GPU; a CPU dry run allows 4x
    needs: tuple[str, ...] = ()  # importable modules without which the check is skipped


@dataclass
class Row:
    check: str
    status: str  # ok | FAILED | skipped
    result: str = "-"
    notes: str = ""


CHECKS = (
    Check("varlen", "packed rows: ponder_varlen vs sdpa, Glm4v bf16", 90),
    Check("train", "glm41v_1b bf16 training, 8k packed rows", 150),
    Check("loss_memory", "chunked loss peak memory at 32k tokens", 60),
    Check("rl", "one RLCS step, tiny Glm4v, image prompts, HF engine", 150, RL_MODULES),
)
NOT_ON_THIS_MACHINE = (
    Row("vLLM rollouts on CUDA", "skipped", notes="CUDA vLLM cannot travel: its wheel and CUDA libraries are "
        "hundreds of MB, the device tool carries 64 MiB, and the machine is offline"),
    Row("multi-GPU ZeRO-3 (NCCL, >1 rank)", "skipped", notes="needs more than the one GPU lent"),
)


# ----------------------------------------------------------------------------------------------
# Shared helpers (run inside a check's subprocess)


def tiny_tokenizer_and_special():
    from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    return tokenizer, SpecialTokens.from_tokenizer(tokenizer)


def build_on(device: str, cfg, tokenizer):
    """The model built directly on `device` (fast random init on a GPU); on CPU and moved if the
    device context is not honoured by this transformers."""
    import torch

    from trainer.model import build_model

    try:
        with torch.device(device):
            model = build_model(cfg, tokenizer)
    except (RuntimeError, NotImplementedError, TypeError):
        model = build_model(cfg, tokenizer)
    return model.to(device)


def synthetic_docs(special, n: int, seed: int, text: tuple[int, int], images: tuple[tuple[int, int], ...],
                   vocab: int) -> list:
    """Documents of random text runs around 0-2 images of the given patch grids (tests' factory)."""
    from tests.data_pipelines.docs_factory import make_doc

    rng = random.Random(seed)
    docs = []
    for i in range(n):
        pieces: list = [rng.randint(*text)]
        for _ in range(rng.randint(0, 2)):
            pieces += [rng.choice(images), rng.randint(*text)]
        docs.append(make_doc(f"doc{i}", pieces, seed=seed * 10_000 + i, vocab=vocab, special=special))
    return docs


def pack_rows(docs: list, rows: int, seq_len: int) -> list[list]:
    """First-fit packing of `docs` into `rows` rows of `seq_len` tokens; what does not fit is left out."""
    packed: list[list] = [[] for _ in range(rows)]
    free = [seq_len] * rows
    for doc in docs:
        for r in range(rows):
            if len(doc) <= free[r]:
                packed[r].append(doc)
                free[r] -= len(doc)
                break
    return packed


def per_document_losses(model, batch) -> dict[str, float]:
    import torch

    from data_pipelines.batch import IGNORE_INDEX
    from trainer.forward import UniformVisionForward

    with torch.no_grad():
        losses = UniformVisionForward(model)(batch, per_token_loss=True).float()
    out = {}
    for i, key in enumerate(batch.doc_keys):
        selected = (batch.doc_ids == i) & (batch.labels != IGNORE_INDEX)
        if selected.any():
            out[key] = losses[selected].mean().item()
    return out


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# varlen: ponder_varlen vs sdpa


def kernel_errors(device: str, small: bool) -> dict[str, float]:
    """Max |error| vs an fp32 per-document reference, of the varlen kernel and of bf16 sdpa, for the
    output and the q/k/v gradients (GQA 12/2 heads, head_dim 128, documents of random lengths)."""
    import torch

    from trainer import attention

    torch.manual_seed(0)
    total = 1024 if small else 8192
    cuts = sorted(random.Random(0).sample(range(1, total), 12))
    bounds = (0, *cuts, total)
    seg = attention.Segments(torch.tensor(bounds, dtype=torch.int32, device=device), bounds,
                             max(b - a for a, b in pairwise(bounds)))
    dtype = torch.bfloat16
    q = torch.randn(total, 12, 128, device=device, dtype=dtype)
    k = torch.randn(total, 2, 128, device=device, dtype=dtype)
    v = torch.randn(total, 2, 128, device=device, dtype=dtype)
    grad_out = torch.randn(total, 12, 128, device=device, dtype=dtype)
    scale = 128**-0.5

    def run(fn: Callable, cast: torch.dtype) -> list[torch.Tensor]:
        leaves = [x.detach().to(cast).requires_grad_() for x in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad_out.to(cast))
        return [out.detach().float()] + [x.grad.float() for x in leaves]

    reference = run(lambda a, b, c: attention.reference_varlen_attention(a, b, c, bounds, scale), torch.float32)
    sdpa = run(lambda a, b, c: attention.reference_varlen_attention(a, b, c, bounds, scale), dtype)
    if attention.kernel_unusable_reason(q, 0.0) is None:
        kernel = run(lambda a, b, c: attention.kernel_varlen_attention(
            attention._VARLEN_ATTN, attention._API, a, b, c, seg, scale), dtype)
    else:
        kernel = sdpa  # the dry run on CPU: the reference path stands in
    names = ("out", "dq", "dk", "dv")
    errors = {}
    for name, ref, s, kern in zip(names, reference, sdpa, kernel):
        errors[f"kernel_{name}"] = (kern - ref).abs().max().item()
        errors[f"sdpa_{name}"] = (s - ref).abs().max().item()
    return errors


def _without_boundaries(batch):
    """The same rows with row-0 positions running on across documents: the block-causal mask then
    lets every token see the whole row before it (what the check must be able to tell apart)."""
    import torch

    rows, length = batch.input_ids.shape
    positions = batch.position_ids.clone()
    positions[0] = torch.arange(length, device=positions.device).expand(rows, length)
    return dataclasses.replace(batch, position_ids=positions)


def check_varlen(device: str, small: bool) -> dict:
    import torch

    from data_pipelines.batch import collate_rows
    from trainer import attention
    from trainer.model import load_preset

    errors = kernel_errors(device, small)
    kernel_ok = all(errors[f"kernel_{n}"] <= 2 * errors[f"sdpa_{n}"] + 1e-5 for n in ("out", "dq", "dk", "dv"))

    tokenizer, special = tiny_tokenizer_and_special()
    cfg = dataclasses.replace(load_preset("tiny" if small else "glm41v_1b"), tokenizer="tiny", vocab_size=2048,
                              dtype="bfloat16", attn_implementation="sdpa")
    torch.manual_seed(0)
    model = build_on(device, cfg, tokenizer).eval()
    seq_len, rows = (512, 2) if small else (4096, 2)
    docs = synthetic_docs(special, 40, seed=1, text=(20, 120) if small else (150, 900),
                          images=((4, 4), (8, 6)) if small else ((16, 16), (28, 20), (12, 32)), vocab=2048)
    packed = [row for row in pack_rows(docs, rows, seq_len) if row]
    batch = collate_rows(packed, seq_len=seq_len, pad_id=special.eos).to(device)
    in_rows = [d for row in packed for d in row]

    solo = {}
    for doc in in_rows:
        solo.update(per_document_losses(model, collate_rows([[doc]], len(doc), special.eos).to(device)))
    sdpa_packed = per_document_losses(model, batch)
    calls = [0]
    kernel = attention._VARLEN_ATTN

    def counted(*args, **kwargs):
        calls[0] += 1
        return kernel(*args, **kwargs)

    attention._VARLEN_ATTN = counted
    model.set_attn_implementation(attention.NAME)
    try:
        varlen_packed = per_document_losses(model, batch)
    finally:
        attention._VARLEN_ATTN = kernel
        model.set_attn_implementation("sdpa")
    leak = per_document_losses(model, _without_boundaries(batch))  # sdpa with attention across documents
    d_varlen = max(abs(varlen_packed[k] - solo[k]) for k in solo)
    d_sdpa = max(abs(sdpa_packed[k] - solo[k]) for k in solo)
    d_between = max(abs(varlen_packed[k] - sdpa_packed[k]) for k in solo)
    d_leak = max(abs(leak[k] - solo[k]) for k in solo)
    layers = model.config.text_config.num_hidden_layers
    used_kernel = calls[0] == layers
    losses_ok = d_varlen <= 2 * d_sdpa + 5e-3
    status = "ok" if kernel_ok and losses_ok and (used_kernel or device == "cpu") else "FAILED"
    return {
        "status": status,
        "result": (f"per-doc loss, max abs Δ vs each doc alone: varlen {d_varlen:.1e}, sdpa {d_sdpa:.1e} "
                   f"(varlen vs sdpa packed {d_between:.1e}; attending across docs would give {d_leak:.1e})"),
        "notes": (f"{len(solo)} docs in {len(packed)} rows x {seq_len}; {attention.describe_backend()}; kernel "
                  f"calls {calls[0]}/{layers} layers; kernel vs fp32 ref out {errors['kernel_out']:.1e} "
                  f"dq {errors['kernel_dq']:.1e} dk {errors['kernel_dk']:.1e} dv {errors['kernel_dv']:.1e} "
                  f"(bf16 sdpa: {errors['sdpa_out']:.1e} / {errors['sdpa_dq']:.1e} / {errors['sdpa_dk']:.1e} / "
                  f"{errors['sdpa_dv']:.1e}; rule: <= 2x sdpa); losses: varlen <= 2x sdpa + 5e-3"),
        "data": {"errors": errors, "d_varlen": d_varlen, "d_sdpa": d_sdpa, "d_leak": d_leak, "kernel_calls": calls[0]},
    }


# ----------------------------------------------------------------------------------------------
# train: tokens/s and MFU


def matmul_tflops(device: str, n: int = 8192, repeats: int = 10) -> float:
    """Measured dense bf16 matmul rate (TFLOP/s): the practical ceiling next to the datasheet's."""
    import torch

    if device != "cuda":
        return float("nan")
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e12


def deepspeed_step_fn(model, chunk: int, zero_stage: int = 3):
    """The stages' DeepSpeed engine (trainer/zero.py; ZeRO-3 by default) in a world of one."""
    from trainer.config import TrainerConfig
    from trainer.distributed import init_distributed
    from trainer.zero import wrap_deepspeed

    info = init_distributed()
    cfg = TrainerConfig(max_steps=1000, precision="bf16", activation_checkpointing=True, loss_chunk_tokens=chunk,
                        zero_stage=zero_stage)
    ds = wrap_deepspeed(model, cfg, micro_batch_rows=1, grad_accum=1, info=info)

    def step(batch) -> None:
        losses = ds(batch, per_token_loss=True)
        ds.backward((losses * batch.label_weights).sum() / batch.label_weights.sum())
        ds.step()

    return step


def plain_step_fn(model, chunk: int):
    """The same forward and loss with plain torch AdamW (bf16 weights, no ZeRO)."""
    import torch

    from trainer.forward import wrap_forward

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward = wrap_forward(model, chunk).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=next(model.parameters()).is_cuda)

    def step(batch) -> None:
        losses = forward(batch, per_token_loss=True)
        ((losses * batch.label_weights).sum() / batch.label_weights.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_inputs(device: str, small: bool) -> tuple:
    """(preset, seq_len, loss chunk, model config, tokenizer, batch): glm41v_1b (tiny on a dry run)
    in bf16 and one packed row of synthetic documents with images."""
    from data_pipelines.batch import collate_rows
    from trainer.model import load_preset

    preset, seq_len, chunk = ("tiny", 512, 128) if small else ("glm41v_1b", 8192, 2048)
    tokenizer, special = tiny_tokenizer_and_special()
    cfg = dataclasses.replace(load_preset(preset), tokenizer="tiny", dtype="bfloat16")
    docs = synthetic_docs(special, 200, seed=2, text=(30, 200) if small else (200, 1400),
                          images=((4, 4), (8, 6)) if small else ((16, 16), (28, 28), (20, 36)), vocab=2048)
    batch = collate_rows(pack_rows(docs, 1, seq_len), seq_len=seq_len, pad_id=special.eos).to(device)
    return preset, seq_len, chunk, cfg, tokenizer, batch


def check_train(device: str, small: bool) -> dict:
    import torch

    from bench.train_speed import flops_per_token

    preset, seq_len, chunk, cfg, tokenizer, batch = train_inputs(device, small)
    peak_measured = matmul_tflops(device)
    torch.manual_seed(0)
    model = build_on(device, cfg, tokenizer)
    how = "DeepSpeed ZeRO-3 (1 rank), bf16, torch AdamW, activation checkpointing"
    try:
        step = deepspeed_step_fn(model, chunk)
        step(batch)  # a DeepSpeed that starts but cannot step counts as not running
    except Exception as exc:  # noqa: BLE001 - any DeepSpeed failure: say so and measure without it
        how = f"plain torch AdamW, bf16 weights (DeepSpeed did not run: {type(exc).__name__}: {str(exc)[:120]})"
        del model
        torch.manual_seed(0)
        model = build_on(device, cfg, tokenizer)
        step = plain_step_fn(model, chunk)
        step(batch)
    warmup, timed = (1, 2) if small else (3, 8)
    for _ in range(warmup - 1):
        step(batch)
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(timed):
        step(batch)
    synchronize(device)
    elapsed = (time.perf_counter() - started) / timed
    tokens = batch.num_tokens
    tokens_per_s = tokens / elapsed
    per_token, params = flops_per_token(preset, seq_len)
    achieved = per_token * tokens_per_s
    memory = torch.cuda.max_memory_allocated() / GIB if device == "cuda" else float("nan")
    return {
        "status": "ok",
        "result": (f"{tokens_per_s:,.0f} tokens/s, MFU {achieved / H200_DENSE_BF16:.1%} of 989 TFLOP/s "
                   f"({achieved / (peak_measured * 1e12):.1%} of the measured matmul {peak_measured:.0f})"),
        "notes": (f"{preset} {params / 1e9:.2f}B, 1 row x {seq_len} ({tokens} real tokens, "
                  f"{int((batch.mm_token_type_ids == 1).sum())} image tokens), step {elapsed:.3f} s, "
                  f"peak {memory:.1f} GiB; {how}; MFU = model FLOPs/token (6N + 12·L·H·S, "
                  f"bench/train_speed.py) x tokens/s"),
        "data": {"tokens_per_s": tokens_per_s, "step_s": elapsed, "mfu_datasheet": achieved / H200_DENSE_BF16,
                 "matmul_tflops": peak_measured, "peak_gib": memory},
    }


# ----------------------------------------------------------------------------------------------
# loss_memory: chunked vs whole row at 32k


def loss_peak(device: str, tokens: int, vocab: int, hidden: int, chunk: int) -> float:
    """Peak GiB allocated by the loss's forward + backward, above the inputs and the head weight."""
    import torch
    import torch.nn.functional as F

    from trainer.loss import chunked_token_losses

    torch.cuda.empty_cache()
    weight = torch.randn(vocab, hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
    x = torch.randn(1, tokens, hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randint(0, vocab, (1, tokens), device=device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    head = functools.partial(F.linear, weight=weight)
    losses = chunked_token_losses(x, y, head, chunk)
    losses.sum().backward()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / GIB
    del head, weight, x, y, losses
    torch.cuda.empty_cache()
    return peak


def check_loss_memory(device: str, small: bool) -> dict:
    if device != "cuda":
        return {"status": "skipped", "result": "-", "notes": "CPU dry run: CUDA memory statistics only"}
    tokens, vocab, hidden, chunk = 32_768, 151_552, 4096, 2048
    whole = loss_peak(device, tokens, vocab, hidden, 0)
    chunked = loss_peak(device, tokens, vocab, hidden, chunk)
    return {
        "status": "ok",
        "result": f"whole row {whole:.2f} GiB, chunked {chunked:.2f} GiB ({whole / chunked:.1f}x)",
        "notes": (f"{tokens:,} tokens, vocab {vocab:,}, hidden {hidden}, bf16, trainer.loss_chunk_tokens={chunk}; "
                  f"torch.cuda.max_memory_allocated above inputs and weight; bench/loss_memory.py predicts "
                  f"55.50 / 4.88 GiB (fake tensors)"),
        "data": {"whole_gib": whole, "chunked_gib": chunked},
    }


# ----------------------------------------------------------------------------------------------
# rl: one RLCS step with image prompts


def check_rl(device: str, small: bool) -> dict:
    from data_pipelines.visual_tasks import DOMAIN_VERIFIERS, FamilyConfig, correct_response, write_stage
    from tests.rl.helpers import save_policy, tiny_policy, warm_start

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = write_stage(tmp / "data", "rl", FamilyConfig(num=48, seed=0))
        model, tokenizer = tiny_policy(text_only=False)
        warm_start(model, tokenizer, train, steps=3 if small else 100, respond=correct_response, device=device)
        policy = save_policy(model, tokenizer, tmp / "policy")
        del model
        run = tmp / "run"
        overrides = [
            "recipe=rlcs_tiny", f"model.init={policy}", f"data.path={train}", "eval.path=null",
            "trainer.max_steps=1", "trainer.save_every=1", "logging.wandb_mode=disabled",
            "logging.progress_bar=false", "data.max_prompt_tokens=64", "rollout.max_new_tokens=96",
            "rollout.forced_answer_tokens=16", "rollout.max_model_len=192", f"hydra.run.dir={run}",
            *(f"++rewards.domain_verifiers.{d}={v}" for d, v in DOMAIN_VERIFIERS.items()),
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(REPO / "launch" / "rl.py"), *overrides], cwd=REPO, env=env,
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            return {"status": "FAILED", "result": f"launch/rl.py exit {proc.returncode}", "notes": tail[-400:]}
        m = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    parts = {k: m.get(f"time/{k}_s", float("nan")) for k in ("rollout", "reward", "train", "sync")}
    step = m.get("step_time_s", float("nan"))
    trained = m.get("tokens_trained", m.get("tokens", 0)) or 0
    images = f"images rollout {m.get('images/rollout', '?')} / train {m.get('images/train', '?')}"
    return {
        "status": "ok",
        "result": (f"step {step:.2f} s: rollout {parts['rollout']:.2f} / reward {parts['reward']:.2f} / "
                   f"train {parts['train']:.2f} / sync {parts['sync']:.3f} s"),
        "notes": (f"rlcs_tiny (warm-started), 16 prompts x 8 samples, <= 96 new tokens; reward mean "
                  f"{m.get('reward_mean', float('nan')):.2f}, {trained} tokens trained"
                  f"{' (all groups degenerate: train time is empty)' if not trained else ''}, {images}; "
                  f"launch/rl.py wall {wall:.0f} s (imports, DeepSpeed, checkpoint)"),
        "data": {"metrics": {k: v for k, v in m.items() if k.startswith(("time/", "images/"))
                             or k in ("step_time_s", "tokens_trained", "reward_mean")}},
    }


CHILDREN: dict[str, Callable[[str, bool], dict]] = {
    "varlen": check_varlen, "train": check_train, "loss_memory": check_loss_memory, "rl": check_rl,
}


# ----------------------------------------------------------------------------------------------
# The parent: environment, subprocesses, the table


def environment() -> dict:
    """What the table is about: Python, torch, CUDA, the GPU, transformers, DeepSpeed."""
    env = {"python": platform.python_version()}
    try:
        import torch
    except ImportError as exc:
        return {**env, "torch": f"not importable ({exc})", "cuda": False}
    env.update(torch=torch.__version__, cuda=torch.cuda.is_available())
    if env["cuda"]:
        env["gpu"] = torch.cuda.get_device_name(0)
    for name in ("transformers", "deepspeed"):
        try:
            env[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - a broken install is a finding, not a crash
            env[name] = f"missing ({type(exc).__name__})"
    return env


def missing_modules(names: tuple[str, ...]) -> list[str]:
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def run_child(check: Check, dry_run: bool, out_dir: Path | None) -> Row:
    """The check in its own process, bounded by its timeout; its failure becomes a row."""
    missing = missing_modules(check.needs)
    if missing:
        return Row(check.title, "skipped", notes=f"not importable here: {', '.join(missing)} (carry bench/gpu_wheels: "
                                                  "bash bench/gpu_check.sh --prepare)")
    timeout = check.timeout_s * (4 if dry_run else 1)
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", check.name, "--result", str(result)]
        command += ["--cpu-dry-run"] if dry_run else []
        started = time.perf_counter()
        try:
            proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            _save_log(out_dir, check.name, exc.stdout, exc.stderr)
            return Row(check.title, "FAILED", "timeout", f"no result within {timeout} s")
        _save_log(out_dir, check.name, proc.stdout, proc.stderr)
        if proc.returncode != 0 or not result.exists():
            tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
            return Row(check.title, "FAILED", f"exit {proc.returncode}", tail[-400:])
        data = json.loads(result.read_text())
    notes = f"{data['notes']}; {time.perf_counter() - started:.0f} s"
    return Row(check.title, data["status"], data["result"], notes)


def _save_log(out_dir: Path | None, name: str, stdout, stderr) -> None:
    if out_dir is None:
        return

    def text(x) -> str:
        return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")

    (out_dir / f"gpu_check_{name}.log").write_text(text(stdout) + "\n--- stderr ---\n" + text(stderr))


def render(env: dict, rows: list[Row]) -> str:
    machine = ", ".join(f"{k} {v}" for k, v in env.items())
    lines = [f"GPU check ({machine})", "", "| check | status | result | notes |", "|---|---|---|---|"]
    for row in rows:
        cells = [row.check, row.status, row.result, row.notes]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def parent(dry_run: bool, only: list[str] | None, out_dir: Path | None) -> int:
    env = environment()
    checks = [c for c in CHECKS if not only or c.name in only]
    if env.get("cuda") or dry_run:
        rows = [run_child(c, dry_run, out_dir) for c in checks]
    else:
        reason = f"no CUDA device (torch {env.get('torch')})"
        rows = [Row(c.title, "skipped", notes=reason) for c in checks]
    rows += list(NOT_ON_THIS_MACHINE)
    table = render(env, rows)
    print(table, flush=True)
    if out_dir is not None:
        (out_dir / "gpu_check.md").write_text(table + "\n")
        (out_dir / "gpu_check.json").write_text(json.dumps({"env": env, "rows": [dataclasses.asdict(r) for r in rows]},
                                                           indent=1))
    return 1 if any(r.status == "FAILED" for r in rows) else 0


def child(name: str, result: Path, dry_run: bool) -> int:
    device = "cpu" if dry_run else "cuda"
    if dry_run:
        os.environ.setdefault("OMP_NUM_THREADS", "2")
    data = CHILDREN[name](device, dry_run)
    result.write_text(json.dumps(data))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="run every check on CPU at toy sizes")
    parser.add_argument("--only", nargs="*", choices=[c.name for c in CHECKS], help="run these checks only")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for the table, json and logs "
                        "(default: $OUT, the device tool's output folder)")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.result, args.cpu_dry_run)
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    return parent(args.cpu_dry_run, args.only, out_dir)


if __name__ == "__main__":
    sys.exit(main())
