"""pass@k from n samples per prompt: the unbiased estimator of Chen et al. 2021 ("Evaluating Large
Language Models Trained on Code", §2.1).

With c of n sampled responses correct, the chance that k responses drawn without replacement
from those n include at least one correct one is 1 − C(n−c, k) / C(n, k). The binomials overflow
floats for long runs (n in the hundreds), so the ratio is computed as the product
Π_{i=n−c+1..n} (1 − k / i), which is exact algebra and stays in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with `c` correct among `n` samples (needs 0 <= c <= n, 1 <= k <= n)."""
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass@k needs n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float | None:
    """Mean pass@k over prompts given as (n, c) pairs; None without prompts. Prompts may have
    different n (each must have n >= k)."""
    if not counts:
        return None
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
