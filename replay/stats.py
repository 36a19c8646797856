"""The small statistics shared by compare, the live shadowing and the canary (pure, no I/O).

- ``percentile``: the one percentile definition, nearest-rank (a value that is in the samples:
  the p95 of 20 samples is the 19th, not the maximum).
- ``median``: the middle value, or the mean of the two middle ones.
- ``binomial_tail``: P(X >= k) for X ~ Binomial(n, p) (the canary's error test).
- ``binom_sf_half``: the same at p = 1/2, exact for up to 1000 trials: the one-sided exact
  McNemar p-value on discordant pairs (the three-way comparison's test).
- ``holm``: Holm-Bonferroni adjusted p-values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0-100) of an already sorted sequence (None when
    empty)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def median(v: Sequence[float]) -> float | None:
    """Median of ``v`` in any order (None when empty)."""
    if not v:
        return None
    s = sorted(v)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), in log space (n may be large)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0 or k > n:
        return 1.0 if p >= 1.0 else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    lc = math.lgamma(n + 1)
    return min(1.0, sum(math.exp(lc - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp
                                 + (n - i) * lq) for i in range(k, n + 1)))


def binom_sf_half(k: int, m: int) -> float:
    """P(X >= k) for X ~ Binomial(m, 1/2): the one-sided exact McNemar p-value with k of m
    discordant pairs going the candidate's way."""
    if k <= 0:
        return 1.0
    if k > m:
        return 0.0
    if m <= 1000:
        return min(1.0, sum(math.comb(m, i) for i in range(k, m + 1)) / 2**m)
    # log-space sum for large m
    lg = math.lgamma
    base = lg(m + 1) - m * math.log(2)
    terms = [base - lg(i + 1) - lg(m - i + 1) for i in range(k, m + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adj = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj
