"""Group advantages, the clipped surrogate with clip-higher, averaging, and that packed micro-steps
weighted by sample count give the full-batch gradient."""

from __future__ import annotations

import math

import pytest
import torch

from data_pipelines.processor import VisionProcessor
from data_pipelines.chat import ChatRenderer
from data_pipelines.prompts import PromptRecord, encode_prompt_record
from stages.rl.advantages import group_advantages
from stages.rl.batching import TrainSample, balance_ranks, first_fit_decreasing, micro_batch
from stages.rl.loss import clipped_surrogate, sample_normaliser, token_weight
from stages.rl.rollout.base import Completion
from tests.rl.helpers import tiny_policy
from trainer.forward import wrap_forward
from trainer.loss import token_logprobs


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = group_advantages(rewards, "std", eps=0.0 + 1e-6)
    s = math.sqrt(0.75 * 0.25)  # population std of [1, 1, 1, 0]
    assert adv[0].tolist() == pytest.approx([0.25 / s, 0.25 / s, 0.25 / s, -0.75 / s], rel=1e-5)
    assert adv[1].tolist() == pytest.approx([1, -1, -1, 1], rel=1e-5)  # std 0.5
    assert adv[2].tolist() == [0.0, 0.0, 0.0, 0.0]  # a degenerate group carries no signal
    assert group_advantages(rewards, "none")[0].tolist() == pytest.approx([0.25, 0.25, 0.25, -0.75])
    with pytest.raises(ValueError):
        group_advantages(rewards, "max")


def test_clipped_surrogate_clip_higher_by_hand():
    # (advantage, ratio) -> loss with eps_low 0.2, eps_high 0.28
    cases = [(1.0, 1.5, -1.28, True),   # good token pushed up: clipped at 1 + eps_high
             (1.0, 1.25, -1.25, False),  # inside [0.8, 1.28]: a symmetric 0.2 clip would give -1.2
             (1.0, 0.5, -0.5, False),   # good token that fell: never clipped (min keeps the lower)
             (-1.0, 0.5, 0.8, True),    # bad token pushed down: clipped at 1 - eps_low
             (-1.0, 1.5, 1.5, False)]   # bad token that rose: never clipped
    adv = torch.tensor([c[0] for c in cases])
    old = torch.zeros(len(cases))
    logp = torch.log(torch.tensor([c[1] for c in cases])).requires_grad_()
    weights = torch.ones(len(cases))
    total, stats = clipped_surrogate(logp, old, adv, weights, eps_low=0.2, eps_high=0.28)
    assert total.item() == pytest.approx(sum(c[2] for c in cases), rel=1e-6)
    assert stats["clipped"].item() == 2 and stats["tokens"].item() == 5
    total.backward()
    # Clipped tokens get no gradient; the others d(-A*rho)/dlogp = -A*rho.
    expected = [0.0 if c[3] else -c[0] * c[1] for c in cases]
    assert logp.grad.tolist() == pytest.approx(expected, rel=1e-6)
    symmetric, _ = clipped_surrogate(logp.detach(), old, adv, weights, eps_low=0.2, eps_high=0.2)
    assert symmetric.item() == pytest.approx(sum(c[2] for c in cases) + 1.28 - 1.2 + 1.25 - 1.2, rel=1e-6)


def test_per_sample_versus_per_token_averaging():
    # Response 1: 3 tokens of loss 2 (ratio 1, advantage -2); response 2: 1 token of loss 6.
    adv = torch.tensor([-2.0, -2.0, -2.0, -6.0])
    logp = torch.zeros(4)
    lengths = [3, 1]
    for averaging, expected in (("per_sample", (2 + 6) / 2), ("per_token", (2 * 3 + 6) / 4)):
        weights = torch.tensor([token_weight(3, averaging)] * 3 + [token_weight(1, averaging)])
        total, _ = clipped_surrogate(logp, logp, adv, weights, 0.2, 0.28)
        norm = sample_normaliser(len(lengths), sum(lengths), averaging)
        assert total.item() / norm == pytest.approx(expected)


def test_balance_and_first_fit_decreasing():
    assert balance_ranks([10, 9, 8, 7, 1], 2) == [0, 1, 1, 0, 0]  # loads 18 / 17
    assert first_fit_decreasing([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]
    with pytest.raises(ValueError):
        first_fit_decreasing([11], 10)


@pytest.mark.parametrize("text_only", [True, False])
@pytest.mark.parametrize("averaging", ["per_sample", "per_token"])
def test_packed_micro_steps_equal_the_full_batch_gradient(text_only, averaging):
    model, tok = tiny_policy(text_only, seed=1)
    forward = wrap_forward(model)
    processor = VisionProcessor()
    g = torch.Generator().manual_seed(0)
    samples, prompts = [], {}
    for i, (q, n) in enumerate([("Largest number: 3 1", 5), ("Count a in: a b a", 9), ("Largest number: 7", 3),
                                ("Count c in: c", 12), ("Largest number: 9 9 2", 7)]):
        prompts[i] = encode_prompt_record(PromptRecord(f"p{i}", "max", [{"role": "user", "content": q}], "1"),
                                          ChatRenderer(tok, processor))
        ids = torch.randint(30, 1500, (n,), generator=g).tolist()
        mask = [True] * n
        mask[1] = False  # an inserted token (forced answer) in every response
        c = Completion(ids, [0.0] * n, mask, "stop")
        samples.append(TrainSample(i, 0, float(torch.randn((), generator=g)), len(prompts[i]), c))
    eps = (0.2, 0.28)
    old_shift = 0.3  # pi_old differs from pi_theta, so some tokens are clipped

    # Reference: every response alone (no packing), the objective written out directly.
    per_sample, all_tokens = [], []
    for s in samples:
        b = micro_batch([s], prompts, averaging, tok.eos_token_id).batch
        logp = token_logprobs(forward(b), b.labels)
        mask = b.labels != -100
        lp = logp[mask]
        ratio = torch.exp(lp - (lp.detach() - old_shift))
        a = torch.tensor(s.advantage)
        loss = -torch.minimum(ratio * a, ratio.clamp(1 - eps[0], 1 + eps[1]) * a)
        per_sample.append(loss.mean())
        all_tokens.append(loss)
    reference = torch.stack(per_sample).mean() if averaging == "per_sample" else torch.cat(all_tokens).mean()
    model.zero_grad()
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # Packed: rows of at most 64 tokens, each micro-step's sum divided by the global normaliser.
    rows = first_fit_decreasing([len(s) for s in samples], 64)
    assert 1 < len(rows) < len(samples)  # really packed, really several micro-steps
    norm = sample_normaliser(len(samples), sum(s.trained_tokens for s in samples), averaging)
    model.zero_grad()
    for row in rows:
        mb = micro_batch([samples[i] for i in row], prompts, averaging, tok.eos_token_id)
        logp = token_logprobs(forward(mb.batch), mb.batch.labels)
        total, _ = clipped_surrogate(logp, logp.detach() - old_shift, mb.advantages, mb.batch.label_weights, *eps)
        (total / norm).backward()
    for name, grad in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-7, msg=name)
