"""The latency judge: is the candidate slower than its baseline on an endpoint? (pure, sans-I/O)

Used by ``shadowtap diff`` (per endpoint of a replayed capture) and by the appliance's live
shadowing (``appliance.live.shadowing`` imports it from here: ``replay`` never imports
``appliance``). The baseline is the secondary (production's build on a shadow host, answering
the same request at the same moment: the only difference is the build); without a secondary,
``diff`` falls back to production's answer times in the capture.
"""

from __future__ import annotations

import math
from typing import Any

from replay.stats import median, percentile


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """One-sided p-value that ``a`` tends to be larger than ``b`` (Mann-Whitney U, normal
    approximation with tie correction). Used for latency: no distribution assumed."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 1.0
    allv = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(allv)
    i = 0
    ties = 0.0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1][0] == allv[i][0]:
            j += 1
        r = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[k] = r
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    r1 = sum(r for r, (_, g) in zip(ranks, allv, strict=True) if g == 0)
    u1 = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 1.0
    z = (u1 - mu - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


def judge_latency(samples: dict[str, dict[str, Any]], *, alpha: float = 0.01,
                  min_samples: int = 10, min_ms: float = 20.0,
                  min_ratio: float = 1.3, baseline: str = "secondary") -> list[dict[str, Any]]:
    """Per endpoint, is the candidate slower than ``baseline`` (``"secondary"``: same host, same
    moment, so the only difference is the build; or ``"production"``)? ``samples`` maps an
    endpoint to ``{"production"|"secondary"|"candidate": [seconds, ...]}``.

    A regression needs a significant Mann-Whitney test (Bonferroni over endpoints) AND a
    difference that matters (>= ``min_ms`` and >= ``min_ratio`` in medians): significance alone
    flags harmless microseconds. Rows carry n, p50 and p90 (ms) of every side, ``baseline``,
    ``p_value`` and ``regression``."""
    eps = [e for e, s in samples.items()
           if len(s.get("candidate", ())) >= min_samples
           and len(s.get(baseline, ())) >= min_samples]
    out = []
    for ep, s in sorted(samples.items()):
        row: dict[str, Any] = {"endpoint": ep}
        for k in ("production", "secondary", "candidate"):
            v = s.get(k, ())
            row[f"{k}_n"] = len(v)
            m = median(v)
            row[f"{k}_p50_ms"] = None if m is None else round(m * 1000, 2)
            q = percentile(sorted(v), 90)
            row[f"{k}_p90_ms"] = None if q is None else round(q * 1000, 2)
        row["baseline"] = baseline
        if ep in eps:
            p = mann_whitney_p(list(s["candidate"]), list(s[baseline]))
            mc, mb = median(s["candidate"]) or 0.0, median(s[baseline]) or 0.0
            row["p_value"] = p
            row["regression"] = bool(p < alpha / max(1, len(eps))
                                     and (mc - mb) * 1000 >= min_ms
                                     and mc >= mb * min_ratio)
        else:
            row["p_value"] = None
            row["regression"] = False
        out.append(row)
    return out
