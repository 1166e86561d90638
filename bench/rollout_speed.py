"""Rollout throughput of the vLLM engine vs the transformers engine on the same text-only Glm4 (CPU),
and weight-sync time as a fraction of the RL step time.

    python bench/rollout_speed.py [--prompts 32] [--group 8] [--tokens 64] [--rl-steps 8]
                                  [--hidden 128 --layers 2]   # the policy's decoder shape

Throughput: both engines sample G responses for each prompt of the synthetic task from one
random-init policy (length-capped responses, so both produce the same token count), after one
warm-up call; tokens/s counts generated tokens. The default shape is the tiny preset's decoder
(1M parameters); `--hidden 512 --layers 8` gives a 19M one. Weight sync: `launch/rl.py` runs a few
RLCS steps (tiny policy) with each engine and the script reads `time/sync_s` and `step_time_s` from
metrics.jsonl (`--rl-steps 0` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _throughput(engine, prompts, group: int, tokens: int) -> tuple[float, int]:
    from stages.rl.rollout.base import GenerationRequest, SamplingSpec

    spec = SamplingSpec(temperature=1.0, top_p=1.0, max_tokens=tokens)
    engine.generate([GenerationRequest(prompts[0], group, seed=0)], spec)  # warm-up
    requests = [GenerationRequest(p, group, seed=i + 1) for i, p in enumerate(prompts)]
    started = time.perf_counter()
    out = engine.generate(requests, spec)
    elapsed = time.perf_counter() - started
    generated = sum(len(c.token_ids) for g in out for c in g)
    return generated / elapsed, generated


def _rl_run(root: Path, policy: Path, train: Path, engine: str, steps: int) -> dict[str, float]:
    from tests.rl.helpers import TASK_VERIFIERS

    run = root / f"rl_{engine}"
    cmd = [sys.executable, str(REPO / "launch" / "rl.py"), "recipe=rlcs_tiny", f"model.init={policy}",
           f"data.path={train}", "eval.path=null", f"rollout.engine={engine}", f"trainer.max_steps={steps}",
           f"trainer.save_every={steps}", "logging.progress_bar=false", "logging.wandb_mode=disabled",
           f"rollout.sync_dir={root}", f"hydra.run.dir={run}", *TASK_VERIFIERS]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"rl run ({engine}) failed:\n{proc.stderr[-3000:]}")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]  # skip step 1 (warm-up)
    mean = lambda key: sum(m[key] for m in lines) / len(lines)
    return {"sync_s": mean("time/sync_s"), "step_s": mean("step_time_s"), "rollout_s": mean("time/rollout_s"),
            "sync_fraction": mean("time/sync_s") / mean("step_time_s")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rl-steps", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128, help="decoder width (heads of 32 dims)")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()

    import torch

    from data_pipelines.processor import VisionProcessor
    from data_pipelines.chat import ChatRenderer
    from data_pipelines.prompts import encode_prompt_record, load_prompt_records
    from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer
    from stages.rl.policy import load_policy, text_policy
    from stages.rl.rollout.base import RolloutConfig
    from stages.rl.rollout.hf_engine import HFEngine
    from stages.rl.rollout.vllm_engine import VLLMEngine
    from tests.rl.helpers import save_policy, task_data, tiny_policy, warm_start
    from trainer.model import load_preset

    root = Path(tempfile.mkdtemp(prefix="rollout_speed_"))
    train, _ = task_data(root / "data", n_train=256, n_eval=8)
    tok = build_tiny_tokenizer()
    # Heads of 32 dims as in the tiny preset, so its M-RoPE sections still fit.
    shape = replace(load_preset("tiny"), text_hidden_size=args.hidden, text_num_hidden_layers=args.layers,
                    text_intermediate_size=2 * args.hidden, text_num_attention_heads=args.hidden // 32,
                    vision_out_hidden_size=args.hidden)
    torch.manual_seed(0)
    model = text_policy(shape, SpecialTokens.from_tokenizer(tok))
    with torch.no_grad():  # random weights rarely stop: every response runs to the cap in both engines
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    policy = save_policy(model, tok, root / "random_policy")
    special = SpecialTokens.from_tokenizer(tok)
    records, _ = load_prompt_records(train)
    prompts = [encode_prompt_record(r, ChatRenderer(tok, VisionProcessor())) for r in records[: args.prompts]]
    cfg = RolloutConfig(engine="vllm", max_model_len=256, gpu_memory_utilization=0.2, enforce_eager=True)

    started = time.perf_counter()
    vllm = VLLMEngine(policy, cfg, special, dtype="float32")
    vllm_start = time.perf_counter() - started
    vllm_tps, vllm_tokens = _throughput(vllm, prompts, args.group, args.tokens)
    vllm.close()
    hf = HFEngine(load_policy(policy), special, batch_size=args.prompts * args.group)
    hf_tps, hf_tokens = _throughput(hf, prompts, args.group, args.tokens)
    params = sum(p.numel() for p in model.parameters())
    print(f"rollout ({params / 1e6:.1f}M-parameter policy, {args.prompts} prompts x G={args.group}, "
          f"<= {args.tokens} new tokens, threads {torch.get_num_threads()}):")
    print(f"  vllm : {vllm_tps:8.0f} tokens/s ({vllm_tokens} tokens; engine start {vllm_start:.0f} s)")
    print(f"  hf   : {hf_tps:8.0f} tokens/s ({hf_tokens} tokens)")
    print(f"  vllm / hf = {vllm_tps / hf_tps:.1f}x")

    if args.rl_steps == 0:
        return
    model, tok = tiny_policy(text_only=True)
    warm_start(model, tok, train, steps=80)
    sft = save_policy(model, tok, root / "sft")
    for engine in ("vllm", "hf"):
        r = _rl_run(root, sft, train, engine, args.rl_steps)
        print(f"RL step with {engine}: {r['step_s']:.2f} s (rollout {r['rollout_s']:.2f} s), weight sync "
              f"{r['sync_s'] * 1000:.1f} ms = {100 * r['sync_fraction']:.2f}% of the step")


if __name__ == "__main__":
    main()
