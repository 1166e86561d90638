"""Reward verifiers under stress: adversarial responses through the RewardPool, rate and hangs.

    python bench/reward_stress.py [--items 10000] [--workers 2] [--time-limit 5]

Every domain's verifier gets responses built to hurt it: huge numbers (10^{10^{10^{10}}}, 5,000
digits, 1e999999), deeply nested LaTeX (\\frac and \\sqrt 400 deep, 10,000 braces), 1 MB strings
(rejected before any parsing), responses and answers just under the size limits, control
characters and lone surrogates, and inputs that make backtracking regexes go quadratic or worse
(runs of digits and separators, thousands of box markers, unclosed tags). Per kind it reports the
count, the rate, the reasons scored and the timeouts (the verifier interrupted at
`time_limit_s`, or its worker killed); a hang is an item with no result or a batch that overruns
the bound the pool guarantees ((time_limit_s + kill_grace_s) per item per worker): 0 is the target.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.rl.rewards import RewardConfig, RewardItem, RewardPool  # noqa: E402

BOX_OPEN, BOX_CLOSE = "<|begin_of_box|>", "<|end_of_box|>"


def _wrap(answer: str, think: str = "Let me check the figure carefully.") -> str:
    return f"<think>{think}</think><answer>The answer is {BOX_OPEN}{answer}{BOX_CLOSE}</answer>"


def _nested(depth: int, op: str) -> str:
    s = "1"
    for _ in range(depth):
        s = op.format(s)
    return s


def _kinds(rng: random.Random, config: RewardConfig) -> dict[str, list[str]]:
    """Kind -> candidate responses (each drawn at random when items are made)."""
    digits = "".join(rng.choice("0123456789") for _ in range(5000))
    near = config.max_response_chars - 2_000
    return {
        "huge_number": [_wrap(a) for a in (
            "10^{10^{10^{10}}}", "9^{9^{9^{9}}}", digits, f"{digits}.{digits[:2000]}", "1e999999", "-1e-999999",
            "2^{2^{64}}", "100000!", "\\binom{10^{9}}{5\\cdot 10^{8}}", "(10^{100})!", "10**10**10**10",
            "\\underbrace{9^{9^{9}}}_{x}", "\\infty^{\\infty}", "0^{0}", "1/0", "\\frac{1}{0}")],
        "nested_latex": [_wrap(a) for a in (
            _nested(400, "\\frac{{{}}}{{2}}"), _nested(400, "\\sqrt{{{}}}"), "{" * 10_000 + "1" + "}" * 10_000,
            "\\left(" * 2000 + "1" + "\\right)" * 2000, _nested(200, "\\frac{{1}}{{1+{}}}"), "(" * 5000 + "1",
            "\\begin{pmatrix}" * 300 + "1" + "\\end{pmatrix}" * 300, _nested(150, "e^{{{}}}"),
            "\\frac{" * 3000, "\\sqrt[" * 3000 + "2")],
        "megabyte": [
            "x" * (1 << 20), _wrap("7" * (1 << 20)), "<think>" + "a" * (1 << 20) + "</think>" + _wrap("3"),
            "\U0001F600" * (1 << 18)],
        "near_limits": [
            _wrap("1" * (config.max_answer_chars - 10)), _wrap("1, " * ((config.max_answer_chars - 10) // 3)),
            _wrap("3", think="step " * (near // 5)), _wrap("[[1,2,3,4]]" * (config.max_answer_chars // 12)),
            _wrap("x", think=("the answer is 5. " * 200 + "\n") * (near // 3400))],
        "control_chars": [_wrap(a) for a in (
            "\x00" * 1000 + "7", "7\x00", "\x1b[31m7\x1b[0m", "\u202e7\u202c", "\ufeff7", "\ud800" + "7",
            "".join(chr(c) for c in range(32)) * 100, "7\r\n\x0b\x0c", "\u200b" * 5000 + "7", "\x7f" * 500,
            "B\x00. Paris", '{"action_type": "cl\x00ick"}')] + [
            "<think>\x00\x00</think><answer>\x00" + BOX_OPEN + "7" + BOX_CLOSE + "</answer>",
            "\ud83d" * 1000],
        "pathological_regex": [
            _wrap("1" * 50_000 + "a"), _wrap("1," * 9_000 + "x"), _wrap("1." * 9_000), _wrap("-" * 18_000 + "1"),
            _wrap("1e" * 9_000), _wrap("[" * 9_000 + "1"), _wrap("[[" + "1," * 9_000),
            _wrap("a " * 9_000 + "!"), _wrap('{"a":' * 3_000 + "1"), _wrap("\\\\" * 9_000),
            (BOX_OPEN * 20_000) + "7" + (BOX_CLOSE * 20_000), "<think>" * 30_000 + _wrap("7"),
            "<answer>" * 30_000 + "7", _wrap("7") * 5_000, _wrap(" " * 19_000 + "7"),
            _wrap("$" * 19_000 + "7"), _wrap("1 2 3 4 5 6 7 8 9 0 " * 900),
            "<think>" + ("a" * 49 + " ") * 3_000 + "</think>" + _wrap("2"),  # the repetition detector
            "<think>" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz一二三四五六") for _ in range(150_000))
            + "</think>" + _wrap("3")],
    }


# Each domain with a ground truth it accepts (a bad ground truth is not what is stressed here).
DOMAINS = [
    ("math", "\\frac{1}{2}", {}), ("counting", 7, {}), ("chart", 45.5, {}), ("ocr", "Total: $1,234.56", {}),
    ("multiple_choice", "B", {"options": ["London", "Paris", "Rome", "Madrid"]}),
    ("grounding", [[100, 200, 300, 400]], {}),
    ("gui", {"action_type": "click", "box_2d": [[100, 200, 300, 400]]}, {}),
]


def adversarial_items(n: int, seed: int = 0, config: RewardConfig | None = None) -> list[tuple[str, RewardItem]]:
    """n (kind, item) pairs: kinds in turn, each a random candidate for a random domain."""
    rng = random.Random(seed)
    kinds = _kinds(rng, config or RewardConfig())
    names = sorted(kinds)
    out = []
    for i in range(n):
        kind = names[i % len(names)]
        domain, truth, info = rng.choice(DOMAINS)
        out.append((kind, RewardItem(domain, rng.choice(kinds[kind]), truth, info)))
    return out


def stress(n: int, workers: int, config: RewardConfig, seed: int = 0, chunk: int = 500) -> dict:
    """Score n adversarial items in chunks through one pool; per kind: count, seconds, reasons."""
    pairs = adversarial_items(n, seed, config)
    bound_per_item = config.time_limit_s + config.kill_grace_s
    per_kind: dict[str, Counter] = defaultdict(Counter)
    hangs = overruns = 0
    started = time.perf_counter()
    with RewardPool(config, workers) as pool:
        for at in range(0, n, chunk):
            part = pairs[at:at + chunk]
            t0 = time.perf_counter()
            results = pool.score_batch([item for _, item in part])
            elapsed = time.perf_counter() - t0
            # The pool's promise: no item costs more than the hard limit, so a batch ends in time.
            if elapsed > bound_per_item * len(part) / workers + 10.0:
                overruns += 1
            hangs += sum(r is None for r in results)
            for (kind, _), result in zip(part, results):
                per_kind[kind][result.reason.split(":")[0]] += 1
        restarts = pool.restarts
    total_s = time.perf_counter() - started
    return {"items": n, "seconds": total_s, "rate": n / total_s, "hangs": hangs + overruns,
            "restarts": restarts, "per_kind": {k: dict(v) for k, v in sorted(per_kind.items())}}


def report(result: dict, workers: int) -> str:
    lines = [f"{result['items']} adversarial responses, {workers} workers: {result['seconds']:.1f} s, "
             f"{result['rate']:.1f} responses/s, hangs {result['hangs']}, workers replaced {result['restarts']}",
             "", "| kind | items | timeouts | reasons |", "|---|---|---|---|"]
    for kind, reasons in result["per_kind"].items():
        timeouts = reasons.get("timeout", 0)
        top = ", ".join(f"{r} {c}" for r, c in sorted(reasons.items(), key=lambda x: -x[1]))
        lines.append(f"| {kind} | {sum(reasons.values())} | {timeouts} | {top} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--time-limit", type=float, default=RewardConfig.time_limit_s, help="seconds per item")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = RewardConfig(time_limit_s=args.time_limit)
    result = stress(args.items, args.workers, config, args.seed)
    print(report(result, args.workers))
    return 0 if result["hangs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
