"""One vLLM engine per rank inside torchrun (vLLM's external_launcher), text-only Glm4 on CPU.

Run under torchrun on gloo (tests/rl/test_vllm_ranks.py does):
    torchrun --nproc_per_node=2 tests/rl/vllm_ranks_probe.py <out_dir> <tensor_parallel_size>
Each rank generates greedily for its own share of the prompts, takes part in one ZeRO-3 update
(each rank pushing up different tokens), syncs the new weights into its engine and generates
again. It writes <out_dir>/rank_<r>.json: for each phase the engine's tokens and log-probs, and
the trainer's (HF, teacher-forced) log-probs and greedy choices for the same tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from data_pipelines.batch import collate_rows  # noqa: E402
from data_pipelines.chat import ChatRenderer  # noqa: E402
from data_pipelines.processor import VisionProcessor  # noqa: E402
from data_pipelines.prompts import encode_prompt_record, parse_record, rollout_document  # noqa: E402
from data_pipelines.tokenizer import SpecialTokens, load_tokenizer  # noqa: E402
from stages.rl.policy import load_policy  # noqa: E402
from stages.rl.rollout.base import GenerationRequest, RolloutConfig, SamplingSpec  # noqa: E402
from stages.rl.sync import WeightSync, gathered_state_dict  # noqa: E402
from tests.rl.helpers import save_policy, tiny_policy  # noqa: E402
from trainer.config import OptimConfig, TrainerConfig  # noqa: E402
from trainer.distributed import init_distributed, leave_distributed  # noqa: E402
from trainer.loss import token_logprobs  # noqa: E402
from trainer.zero import wrap_deepspeed  # noqa: E402

QUESTIONS = ["Largest number: 3 4 1", "Count a in: a b a", "Largest number: 9", "Smallest number: 5 2 8"]


def teacher_forced(model, prompt, tokens: list[int]) -> tuple[list[float], list[int]]:
    ids = torch.tensor([prompt.input_ids + tokens])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    at = range(len(prompt) - 1, len(prompt) - 1 + len(tokens))
    return [lp[p, t].item() for p, t in zip(at, tokens)], [int(lp[p].argmax()) for p in at]


def phase(engine, model, prompts) -> list[dict]:
    spec = SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=12)
    got = engine.generate([GenerationRequest(p, 1, seed=i) for i, p in enumerate(prompts)], spec)
    out = []
    for prompt, [c] in zip(prompts, got):
        logprobs, greedy = teacher_forced(model, prompt, c.token_ids)
        out.append({"tokens": c.token_ids, "engine_logprobs": c.logprobs, "trainer_logprobs": logprobs,
                    "trainer_greedy": greedy})
    return out


def main(out_dir: str, tp: int) -> None:
    info = init_distributed()
    root = Path(out_dir)
    if info.is_main:
        model, tok = tiny_policy(text_only=True, seed=2)
        with torch.no_grad():  # distinctive weights, so greedy text is not degenerate
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        save_policy(model, tok, root / "policy")
    dist.barrier()
    path = root / "policy"
    tok = load_tokenizer(path)
    special = SpecialTokens.from_tokenizer(tok)
    renderer = ChatRenderer(tok, VisionProcessor())
    prompts = [encode_prompt_record(parse_record({"id": f"q{i}", "domain": "m", "question": q, "answer": 1}), renderer)
               for i, q in enumerate(QUESTIONS)]
    mine = prompts[info.rank :: info.world_size]

    from stages.rl.rollout.vllm_engine import VLLMEngine

    cfg = RolloutConfig(engine="vllm", max_model_len=256, gpu_memory_utilization=0.1, enforce_eager=True,
                        tensor_parallel_size=tp)
    engine = VLLMEngine(path, cfg, special, dtype="float32", seed=0)
    before = phase(engine, load_policy(path).eval(), mine)

    # One ZeRO-3 update; each rank pushes its own tokens up after its own prompt.
    trainer_cfg = TrainerConfig(max_steps=1, zero_stage=3, optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0))
    ds = wrap_deepspeed(load_policy(path), trainer_cfg, 1, 1, info, managed_accumulation=False)
    docs = [rollout_document(mine[0], [100 + info.rank, 101, 102], [True] * 3, "x")]
    batch = collate_rows([docs], len(docs[0]), special.eos)
    ds.backward(-(token_logprobs(ds(batch), batch.labels) * batch.label_weights).sum())
    ds.step()
    engine.sleep()  # a no-op on CPU: sleep mode needs CUDA
    WeightSync(root / "run", info, str(root))(ds.module.model, engine)
    updated = load_policy(path).eval()
    updated.load_state_dict(gathered_state_dict(ds.module.model, keep=True))
    after = phase(engine, updated, mine)
    stale = [teacher_forced(updated, p, b["tokens"])[0] for p, b in zip(mine, before)]
    (root / f"rank_{info.rank}.json").write_text(json.dumps({
        "questions": QUESTIONS[info.rank :: info.world_size], "before": before, "after": after,
        "stale_under_updated": stale, "sync_dir_left": [str(p) for p in root.glob("ponder-sync-*")]}))
    engine.close()
    leave_distributed()  # a barrier, then the group torn down before interpreter exit


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
