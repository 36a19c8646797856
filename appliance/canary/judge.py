"""The canary judge: per metric, is the canary worse than production by more than allowed?
(pure, sans-I/O; the one Prometheus fetch at the bottom is the only I/O and is injected).

What Kayenta does, and where this goes further:

- **Per metric, a Mann-Whitney U test** (no distribution assumed; tie correction; normal
  approximation, exact for small samples without ties) and a **Hodges-Lehmann effect size**
  (the median of the pairwise differences canary - baseline; past ``MAX_PAIRS`` pairs a fixed-
  seed sample of them, so a judgement costs the same at any traffic).
- **An allowed increase / decrease** per metric, relative (to the baseline's median) and
  absolute (in the metric's unit: ms for latency, a share for errors); the allowance is the
  larger of the two. Kayenta compares its point estimate with the allowance; here the test is
  *against* the allowance: the canary fails only when it is significantly worse than the
  baseline **plus** the allowance (the canary's samples are shifted by the allowance before the
  one-sided U test). An A/A rollout then stays below ``alpha`` however often the step is looked
  at, and a real regression well beyond the allowance is found in a few hundred samples.
- **Error share** (5xx and unanswered): on 0/1 samples the U test is a two-proportion test and
  the Hodges-Lehmann median of pairwise differences is 0 for any share under 50 %, so the
  effect is the difference of the shares and the test is the exact binomial tail of the
  canary's errors at the baseline's share plus the allowance (2 errors in 20 requests is luck,
  32 in 130 is not).
- **Per endpoint** (``replay.compare.endpoint_of``): the same tests on every endpoint with enough
  samples on both sides, Bonferroni over the endpoints judged; so +80 ms on an endpoint that
  carries 6 % of the requests fails even though the whole distribution barely moves.
- **Divergence** (the live shadows' three-way regressions) and **Prometheus queries** are metrics
  too; **critical** metrics fail the judgement alone; **groups with weights** make a score
  0-100 with Pass / Marginal / Fail thresholds; a metric without enough data is
  **inconclusive**, a first-class outcome: the step holds and the policy says how long.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from replay.stats import binomial_tail, median, percentile

EARLY_ERRORS = 5
"""Errors a canary side needs before it may fail ahead of ``min_samples`` (see ``_errors``)."""
EARLY_ALPHA = 0.01
"""The early failure's significance is the metric's ``alpha`` times this (it is looked at on
every tick, so it must be far stricter than the test at the step's end)."""
MAX_PAIRS = 10_000
"""Hodges-Lehmann over at most this many pairwise differences (a seeded sample past it)."""
RESERVOIR = 2_000
"""Samples kept per side, per metric and endpoint (a seeded reservoir past it)."""
EXACT_MAX = 400
"""Exact U distribution when n1 * n2 is at most this and there are no ties."""

PASS, MARGINAL, FAIL, INCONCLUSIVE = "pass", "marginal", "fail", "inconclusive"
SKIPPED = "skipped"
"""A metric (or test) with nothing to compare against: no shadows, no production samples."""
KINDS = ("error_share", "latency", "divergence", "prometheus")


# ---------------------------------------------------------------------------------------------
# Statistics


def _ranks(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(sum of ranks of ``a`` in a + b, tie term sum(t^3 - t))."""
    allv = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    r1 = 0.0
    ties = 0.0
    i, n = 0, len(allv)
    while i < n:
        j = i
        while j + 1 < n and allv[j + 1][0] == allv[i][0]:
            j += 1
        r = (i + j) / 2 + 1
        for k in range(i, j + 1):
            if allv[k][1] == 0:
                r1 += r
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    return r1, ties


def _exact_upper(u: float, n1: int, n2: int) -> float:
    """P(U >= u) under H0, no ties: counts of rank arrangements by U (a small DP)."""
    # c[i][j][k]: arrangements of i a's and j b's with U = k; rolling over i.
    top = n1 * n2
    prev = [[0] * (top + 1) for _ in range(n2 + 1)]
    for j in range(n2 + 1):
        prev[j][0] = 1
    for _ in range(n1):
        cur = [[0] * (top + 1) for _ in range(n2 + 1)]
        cur[0][0] = 1
        for j in range(1, n2 + 1):
            # the largest value is an a (it beats j b's) or a b
            pa, cb = prev[j], cur[j - 1]
            row = cur[j]
            for k in range(top + 1):
                row[k] = (pa[k - j] if k >= j else 0) + cb[k]
        prev = cur
    counts = prev[n2]
    total = sum(counts)
    k0 = math.ceil(u - 1e-9)
    return sum(counts[k0:]) / total


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(U of ``a``, one-sided p that ``a`` tends to be larger, two-sided p).

    Normal approximation with tie correction and continuity correction; exact when
    ``len(a) * len(b) <= EXACT_MAX`` and no value is tied."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0, 1.0
    r1, ties = _ranks(a, b)
    u1 = r1 - n1 * (n1 + 1) / 2
    if ties == 0 and n1 * n2 <= EXACT_MAX:
        upper = _exact_upper(u1, n1, n2)
        lower = _exact_upper(n1 * n2 - u1, n1, n2)  # P(U <= u1) by symmetry
        return u1, upper, min(1.0, 2 * min(upper, lower))
    n = n1 + n2
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return u1, 1.0, 1.0
    sd = math.sqrt(var)
    upper = 0.5 * math.erfc(((u1 - mu - 0.5) / sd) / math.sqrt(2))
    two = math.erfc(max(0.0, abs(u1 - mu) - 0.5) / sd / math.sqrt(2))
    return u1, min(1.0, upper), min(1.0, two)


def hodges_lehmann(a: Sequence[float], b: Sequence[float], *, max_pairs: int = MAX_PAIRS,
                   seed: int = 17) -> float | None:
    """Median of the pairwise differences a_i - b_j (the shift of ``a`` against ``b``). Past
    ``max_pairs`` pairs, the median of ``max_pairs`` pairs drawn with a fixed seed."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return None
    if n1 * n2 <= max_pairs:
        d = [x - y for x in a for y in b]
    else:
        rng = random.Random(seed)
        d = [x - y for x, y in zip(rng.choices(a, k=max_pairs), rng.choices(b, k=max_pairs),
                                   strict=True)]
    d.sort()
    m = len(d) // 2
    return d[m] if len(d) % 2 else (d[m - 1] + d[m]) / 2


# ---------------------------------------------------------------------------------------------
# Policy (plain data; ``appliance.canary.policy`` reads it from YAML)


@dataclass
class Allowance:
    """How much worse the canary may be: the larger of ``relative`` x the baseline's median
    (share for errors) and ``absolute`` (in the metric's unit)."""

    relative: float = 0.0
    absolute: float = 0.0

    def of(self, baseline: float) -> float:
        return max(self.absolute, self.relative * abs(baseline))

    def text(self, unit: str) -> str:
        parts = []
        if self.relative:
            parts.append(f"{self.relative:.0%}")
        if self.absolute or not parts:
            parts.append(f"{_fmt(self.absolute, unit)}")
        return " or ".join(parts)


@dataclass
class MetricPolicy:
    name: str
    kind: str  # error_share | latency | divergence | prometheus
    group: str = "default"
    critical: bool = False
    per_endpoint: bool = False
    direction: str = "increase"  # which way is bad: increase | decrease | either
    allowed_increase: Allowance = field(default_factory=Allowance)
    allowed_decrease: Allowance = field(default_factory=Allowance)
    min_samples: int | None = None
    """Samples each side needs (default: the judge's ``min_samples``)."""
    url: str | None = None  # prometheus
    canary_query: str | None = None
    baseline_query: str | None = None

    @property
    def unit(self) -> str:
        return {"latency": "ms", "error_share": "share"}.get(self.kind, "")


@dataclass
class JudgePolicy:
    metrics: list[MetricPolicy]
    groups: dict[str, float] = field(default_factory=dict)
    """Weights of the metric groups (a group not named weighs 1)."""
    alpha: float = 0.01
    min_samples: int = 50
    endpoint_min_samples: int = 30
    """Samples each side needs on one endpoint before that endpoint is judged."""
    pass_score: float = 95.0
    marginal_score: float = 75.0
    marginal: str = "hold"
    """What a Marginal score does once the step's time is up: hold (like inconclusive),
    promote, or rollback."""
    max_wait: float | None = None
    """Seconds a step may stay inconclusive (or marginal and held) before ``on_timeout``
    (default: the rollout's step deadline, 4x the step's time)."""
    on_timeout: str = "rollback"  # or promote

    def weight(self, group: str) -> float:
        return float(self.groups.get(group, 1.0))

    def validate(self) -> None:
        names = [m.name for m in self.metrics]
        if not names:
            raise ValueError("judge.metrics: at least one metric")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"judge.metrics: metric name {sorted(dup)[0]!r} given twice")
        if not 0 < self.alpha < 0.5:
            raise ValueError("judge.alpha must be in (0, 0.5), e.g. 0.01")
        if not 0 <= self.marginal_score <= self.pass_score <= 100:
            raise ValueError("judge.thresholds: need 0 <= marginal <= pass <= 100")
        if self.marginal not in ("hold", "promote", "rollback"):
            raise ValueError("judge.marginal must be hold, promote or rollback")
        if self.on_timeout not in ("rollback", "promote"):
            raise ValueError("judge.inconclusive.action must be rollback or promote")
        if any(w < 0 for w in self.groups.values()):
            raise ValueError("judge.groups: weights must be >= 0")
        for i, m in enumerate(self.metrics):
            where = f"judge.metrics[{i}]"
            if m.kind not in KINDS:
                raise ValueError(f"{where}.kind: {m.kind!r}; one of {', '.join(KINDS)}")
            if m.direction not in ("increase", "decrease", "either"):
                raise ValueError(f"{where}.direction: increase, decrease or either")
            if m.kind == "prometheus" and not (m.url and m.canary_query and m.baseline_query):
                raise ValueError(f"{where}: a prometheus metric needs url, canary and baseline "
                                 "queries")
            if m.per_endpoint and m.kind not in ("error_share", "latency"):
                raise ValueError(f"{where}.per_endpoint: only error_share and latency have "
                                 "endpoints")


def default_judge_policy(*, max_error_rate: float = 0.01, alpha: float = 0.01,
                         max_latency_ratio: float = 1.5, min_latency_ms: float = 10.0,
                         min_requests: int = 50) -> JudgePolicy:
    """The judge ``canary run`` uses without a ``judge:`` section, from its flags: errors,
    latency and divergence, overall and per endpoint, all critical."""
    err = Allowance(absolute=max_error_rate)
    lat = Allowance(relative=max_latency_ratio - 1.0, absolute=min_latency_ms)
    ep_min = max(10, min(30, min_requests))
    return JudgePolicy(
        metrics=[
            MetricPolicy("errors", "error_share", group="errors", critical=True,
                         per_endpoint=True, allowed_increase=err),
            MetricPolicy("latency", "latency", group="latency", critical=True,
                         per_endpoint=True, allowed_increase=lat),
            MetricPolicy("divergence", "divergence", group="divergence", critical=True),
        ],
        groups={"errors": 50, "latency": 30, "divergence": 20},
        alpha=alpha, min_samples=min_requests, endpoint_min_samples=ep_min)


# ---------------------------------------------------------------------------------------------
# Evidence


class _Reservoir:
    """Up to ``RESERVOIR`` samples, uniformly chosen (seeded) once there are more."""

    __slots__ = ("n", "rng", "v")

    def __init__(self, seed: int) -> None:
        self.v: list[float] = []
        self.n = 0
        self.rng = random.Random(seed)

    def add(self, x: float) -> None:
        self.n += 1
        if len(self.v) < RESERVOIR:
            self.v.append(x)
        else:
            i = self.rng.randrange(self.n)
            if i < RESERVOIR:
                self.v[i] = x


@dataclass
class _Counts:
    requests: int = 0
    errors: int = 0


class Evidence:
    """One step's samples of both sides: error counts and latencies (ms), overall and per
    endpoint. ``add`` is the hot path: a few dict lookups."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str | None], _Counts] = {}
        self.lat: dict[tuple[str, str | None], _Reservoir] = {}

    def _c(self, side: str, ep: str | None) -> _Counts:
        c = self.counts.get((side, ep))
        if c is None:
            c = self.counts[(side, ep)] = _Counts()
        return c

    def _r(self, side: str, ep: str | None) -> _Reservoir:
        r = self.lat.get((side, ep))
        if r is None:
            # a seed from the key itself (str hashes change per process): the same samples
            # give the same verdict every time
            r = self.lat[(side, ep)] = _Reservoir(zlib.crc32(f"{side} {ep}".encode()))
        return r

    def add(self, side: str, status: int | None, latency_s: float | None,
            endpoint: str | None = None) -> None:
        err = status is None or status >= 500
        for ep in ((None, endpoint) if endpoint is not None else (None,)):
            c = self._c(side, ep)
            c.requests += 1
            if err:
                c.errors += 1
            elif latency_s is not None:
                self._r(side, ep).add(latency_s * 1000.0)

    def requests(self, side: str, ep: str | None = None) -> int:
        c = self.counts.get((side, ep))
        return c.requests if c else 0

    def endpoints(self) -> list[str]:
        return sorted({ep for (_, ep) in self.counts if ep is not None})

    def latencies(self, side: str, ep: str | None = None) -> list[float]:
        r = self.lat.get((side, ep))
        return r.v if r else []


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Test:
    """One comparison (a metric overall, or on one endpoint)."""

    metric: str
    endpoint: str | None
    n_canary: int
    n_baseline: int
    canary: float | None  # median (latency, prometheus) or share (errors)
    baseline: float | None
    effect: float | None  # Hodges-Lehmann shift, or difference of shares
    allowed: float | None
    p_value: float | None  # two-sided U test, unshifted (what Kayenta shows)
    p_beyond: float | None  # one-sided: worse than baseline + allowance
    result: str  # pass | fail | inconclusive
    unit: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None, d: int = 4) -> float | None:
            return None if x is None else round(x, d)

        return {"metric": self.metric, "endpoint": self.endpoint, "n_canary": self.n_canary,
                "n_baseline": self.n_baseline, "canary": r(self.canary),
                "baseline": r(self.baseline), "effect": r(self.effect),
                "allowed": r(self.allowed), "p_value": _rp(self.p_value),
                "p_beyond": _rp(self.p_beyond), "result": self.result, "unit": self.unit,
                "note": self.note,
                "p95": None if self.p95 is None else [round(x, 2) for x in self.p95]}

    def reason(self) -> str:
        where = f" {self.endpoint}:" if self.endpoint else ""
        if self.metric_kind == "error_share":
            return (f"errors:{where} {self.canary:.1%} of {self.n_canary} canary requests vs "
                    f"{self.baseline:.1%} of {self.n_baseline} in production (allowed "
                    f"+{self.allowed:.1%}; p={self.p_beyond:.1e})")
        if self.metric_kind == "latency":
            q = (f"p95 {self.p95[0]:.1f} ms vs {self.p95[1]:.1f} ms, " if self.p95 else "")
            return (f"latency:{where} {q}median {self.canary:.1f} vs {self.baseline:.1f} ms in "
                    f"production, shift {self.effect:+.1f} ms (Hodges-Lehmann; allowed "
                    f"{self.allowed:.1f} ms; p={self.p_beyond:.1e})")
        return (f"{self.metric}:{where} {_fmt(self.canary, self.unit)} vs "
                f"{_fmt(self.baseline, self.unit)}, shift {_fmt(self.effect, self.unit)} "
                f"(allowed {_fmt(self.allowed, self.unit)}; p={_rp(self.p_beyond)}){self.note}")

    metric_kind: str = ""
    p95: tuple[float, float] | None = None


def _rp(p: float | None) -> float | None:
    return None if p is None else float(f"{p:.3g}")


def _fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit == "share":
        return f"{x:.2%}"
    return f"{x:.3g}{' ' + unit if unit else ''}"


@dataclass
class MetricResult:
    name: str
    kind: str
    group: str
    critical: bool
    result: str  # pass | fail | inconclusive
    tests: list[Test]
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "group": self.group,
                "critical": self.critical, "result": self.result, "reasons": self.reasons,
                "tests": [t.to_dict() for t in self.tests]}


@dataclass
class Verdict:
    outcome: str  # pass | marginal | fail | inconclusive
    score: float | None
    metrics: list[MetricResult]
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome,
                "score": None if self.score is None else round(self.score, 1),
                "reasons": self.reasons, "metrics": [m.to_dict() for m in self.metrics]}


# ---------------------------------------------------------------------------------------------
# The judge


_ORDER = {"divergence": 0, "error_share": 1, "latency": 2, "prometheus": 3}


class Judge:
    """Judges ``Evidence`` (and divergence, and external samples) against a ``JudgePolicy``."""

    def __init__(self, policy: JudgePolicy, canary: str = "canary",
                 baseline: str = "prod") -> None:
        self.policy = policy
        self.canary = canary
        self.baseline = baseline

    def judge(self, ev: Evidence, divergence: list[str] | None = None,
              external: dict[str, tuple[list[float], list[float]]] | None = None,
              previous: Evidence | None = None) -> Verdict:
        """``divergence``: the live shadows' regressions (None: no shadows, the metric is not
        judged); ``external``: per prometheus metric name, (canary samples, baseline samples),
        fetched by the caller; ``previous``: the step before's evidence, whose production
        samples stand in where this step has too few (at 100 %, production gets no new
        connections)."""
        pol = self.policy
        results = []
        for m in sorted(pol.metrics, key=lambda m: _ORDER.get(m.kind, 9)):
            if m.kind == "divergence":
                results.append(self._divergence(m, divergence))
            elif m.kind == "prometheus":
                c, b = (external or {}).get(m.name, ([], []))
                results.append(self._distribution(m, [(None, c, b, False)]))
            elif m.kind == "latency":
                need = m.min_samples or pol.min_samples
                rows = [(None, ev.latencies(self.canary),
                         *self._blat(ev, previous, None, need))]
                if m.per_endpoint:
                    rows += [(ep, ev.latencies(self.canary, ep),
                              *self._blat(ev, previous, ep, pol.endpoint_min_samples))
                             for ep in ev.endpoints()]
                results.append(self._distribution(m, rows))
            else:
                results.append(self._errors(m, ev, previous))
        return self._verdict(results, ev)

    def _bcounts(self, ev: Evidence, prev: Evidence | None, ep: str | None, need: int
                 ) -> tuple[_Counts, bool]:
        """Production's counts, from the step before when this one has fewer than ``need``."""
        c = ev.counts.get((self.baseline, ep)) or _Counts()
        if c.requests < need and prev is not None:
            pc = prev.counts.get((self.baseline, ep))
            if pc is not None and pc.requests > c.requests:
                return pc, True
        return c, False

    def _blat(self, ev: Evidence, prev: Evidence | None, ep: str | None, need: int
              ) -> tuple[list[float], bool]:
        v = ev.latencies(self.baseline, ep)
        if len(v) < need and prev is not None:
            pv = prev.latencies(self.baseline, ep)
            if len(pv) > len(v):
                return pv, True
        return v, False

    # -- metrics --
    def _divergence(self, m: MetricPolicy, div: list[str] | None) -> MetricResult:
        if div is None:
            return MetricResult(m.name, m.kind, m.group, m.critical, SKIPPED, [],
                                ["no live shadows"])
        t = Test(m.name, None, len(div), 0, float(len(div)), 0.0, float(len(div)), 0.0, None,
                 None, FAIL if div else PASS, "regressions", metric_kind=m.kind)
        return MetricResult(m.name, m.kind, m.group, m.critical, t.result, [t],
                            [f"divergence: {d}" for d in div[:5]])

    def _errors(self, m: MetricPolicy, ev: Evidence, prev: Evidence | None) -> MetricResult:
        pol = self.policy
        need = m.min_samples or pol.min_samples
        keys: list[str | None] = [None]
        if m.per_endpoint:
            keys += ev.endpoints()
        base = {ep: self._bcounts(ev, prev, ep, need if ep is None else pol.endpoint_min_samples)
                for ep in keys}
        eps_judged = [ep for ep in keys[1:]
                      if ev.requests(self.canary, ep) >= pol.endpoint_min_samples
                      and base[ep][0].requests >= pol.endpoint_min_samples]
        alpha_ep = pol.alpha / max(1, len(eps_judged))
        tests = []
        for ep in keys:
            cc = ev.counts.get((self.canary, ep)) or _Counts()
            bc, carried = base[ep]
            enough = cc.requests >= need if ep is None else ep in eps_judged
            note = ("production: the step before's requests" if carried else
                    "no production requests: against the allowance alone"
                    if not bc.requests else "")
            cs = cc.errors / cc.requests if cc.requests else 0.0
            bs = bc.errors / bc.requests if bc.requests else 0.0
            allowed = min(1.0, m.allowed_increase.of(bs))
            if not enough:
                # Fail early, never pass early: errors far beyond the allowance are a verdict
                # before the sample minimum (a canary answering 500 to a third of one endpoint
                # need not wait for 30 requests there). The exact binomial tail is valid at
                # any n; a much smaller alpha pays for looking at it on every tick, and a
                # handful of errors is required so one stray reset never decides.
                p_early = binomial_tail(cc.errors, cc.requests, min(1.0, bs + allowed))
                a = pol.alpha * EARLY_ALPHA / (1 if ep is None else max(1, len(keys) - 1))
                if (cc.errors >= EARLY_ERRORS and bc.requests >= pol.endpoint_min_samples
                        and cs - bs > allowed and p_early < a):
                    tests.append(Test(m.name, ep, cc.requests, bc.requests, cs, bs, cs - bs,
                                      allowed, None, p_early, FAIL, "share",
                                      "early: beyond doubt before the sample minimum",
                                      metric_kind=m.kind))
                    continue
                if ep is None:
                    tests.append(Test(m.name, ep, cc.requests, bc.requests, cs, bs, cs - bs,
                                      allowed, None, None, INCONCLUSIVE, "share",
                                      f"need {need} canary requests", metric_kind=m.kind))
                continue
            # on 0/1 samples the U test is a two-proportion test (normal approximation)
            p_two = _two_proportions(cc.errors, cc.requests, bc.errors, bc.requests)
            p_beyond = binomial_tail(cc.errors, cc.requests, min(1.0, bs + allowed))
            a = pol.alpha if ep is None else alpha_ep
            bad = cs - bs > allowed and p_beyond < a
            tests.append(Test(m.name, ep, cc.requests, bc.requests, cs, bs, cs - bs, allowed,
                              p_two, p_beyond, FAIL if bad else PASS, "share", note,
                              metric_kind=m.kind))
        hint = None
        if len(keys) > 1:  # where the excess errors are, even on endpoints too thin to judge
            bs0 = base[None][0]
            rate = bs0.errors / bs0.requests if bs0.requests else 0.0
            excess = {ep: c.errors - c.requests * rate for ep in keys[1:]
                      if (c := ev.counts.get((self.canary, ep))) is not None and c.errors}
            if excess:
                top = max(excess, key=lambda e: excess[e])
                c = ev.counts[(self.canary, top)]
                hint = f"{top} ({c.errors} errors in {c.requests} canary requests)"
        return _metric(m, tests, hint)

    def _distribution(self, m: MetricPolicy,
                      rows: list[tuple[str | None, list[float], list[float], bool]]
                      ) -> MetricResult:
        pol = self.policy
        need = m.min_samples or pol.min_samples
        judged = [r for r in rows[1:] if len(r[1]) >= pol.endpoint_min_samples
                  and len(r[2]) >= pol.endpoint_min_samples]
        alpha_ep = pol.alpha / max(1, len(judged))
        tests = []
        for ep, c, b, carried in rows:
            if ep is None:
                enough = len(c) >= need and len(b) >= need
            else:
                enough = any(r[0] == ep for r in judged)
            cm, bm = median(c), median(b)
            if not enough:
                if ep is None:
                    short = len(c) < need
                    tests.append(Test(m.name, ep, len(c), len(b), cm, bm, None, None, None,
                                      None, INCONCLUSIVE if short else SKIPPED, m.unit,
                                      f"need {need} samples each side" if short else
                                      "too few production samples to compare with",
                                      metric_kind=m.kind))
                continue
            assert cm is not None and bm is not None
            effect = hodges_lehmann(c, b)
            _, _, p_two = mann_whitney(c, b)
            a = pol.alpha if ep is None else alpha_ep
            p_beyond = 1.0
            allowed = 0.0
            bad = False
            if m.direction in ("increase", "either"):
                allowed = m.allowed_increase.of(bm)
                shifted = [x - allowed for x in c]
                _, p_up, _ = mann_whitney(shifted, b)
                p_beyond = p_up
                bad = p_up < a and effect is not None and effect > allowed
            if not bad and m.direction in ("decrease", "either"):
                allowed_d = m.allowed_decrease.of(bm)
                shifted = [x + allowed_d for x in c]
                _, p_down, _ = mann_whitney(b, shifted)
                if m.direction == "decrease" or p_down < p_beyond:
                    p_beyond, allowed = p_down, -allowed_d
                bad = p_down < a and effect is not None and effect < -allowed_d
            tests.append(Test(m.name, ep, len(c), len(b), cm, bm, effect, allowed, p_two,
                              p_beyond, FAIL if bad else PASS, m.unit,
                              "production: the step before's samples" if carried else "",
                              metric_kind=m.kind,
                              p95=(percentile(sorted(c), 95) or 0.0,
                                   percentile(sorted(b), 95) or 0.0)))
        return _metric(m, tests)

    # -- the verdict --
    def _verdict(self, results: list[MetricResult], ev: Evidence) -> Verdict:
        pol = self.policy
        judged = [r for r in results if r.result in (PASS, FAIL)]
        reasons = [x for r in results if r.result == FAIL for x in r.reasons]
        critical_fail = any(r.critical and r.result == FAIL for r in results)
        score = None
        if judged:
            groups: dict[str, list[MetricResult]] = {}
            for r in judged:
                groups.setdefault(r.group, []).append(r)
            wsum = sum(pol.weight(g) for g in groups)
            if wsum > 0:
                score = 100.0 * sum(pol.weight(g) * sum(r.result == PASS for r in rs) / len(rs)
                                    for g, rs in groups.items()) / wsum
        if critical_fail:
            return Verdict(FAIL, 0.0 if score is None else score, results, reasons)
        inconclusive = [r for r in results if r.result == INCONCLUSIVE]
        if any(r.critical for r in inconclusive) or not judged:
            why = [f"inconclusive: {r.name}: {r.tests[0].note}" if r.tests else
                   f"inconclusive: {r.name}" for r in inconclusive]
            return Verdict(INCONCLUSIVE, score, results, why)
        assert score is not None
        if score >= pol.pass_score:
            return Verdict(PASS, score, results, [])
        if score >= pol.marginal_score:
            return Verdict(MARGINAL, score, results,
                           [f"marginal: score {score:.0f} (pass at {pol.pass_score:g})",
                            *reasons])
        return Verdict(FAIL, score, results,
                       [f"score {score:.0f} below {pol.marginal_score:g}", *reasons])


def _metric(m: MetricPolicy, tests: list[Test], hint: str | None = None) -> MetricResult:
    fails = [t for t in tests if t.result == FAIL]
    overall = tests[0] if tests and tests[0].endpoint is None else None
    if fails:
        res = FAIL
    elif overall is not None and overall.result == INCONCLUSIVE:
        res = INCONCLUSIVE
    elif not any(t.result == PASS for t in tests):
        res = SKIPPED  # nothing to compare with
    else:
        res = PASS
    # the worst first: the smallest p beyond the allowance
    fails.sort(key=lambda t: (t.p_beyond if t.p_beyond is not None else 1.0,
                              t.endpoint is None))  # on a tie the endpoint says more
    reasons = [t.reason() for t in fails[:5]]
    if fails and fails[0] is overall and not any(t.endpoint for t in fails):
        # Only the sum is significant: name the endpoint that moved it most, so a rollback
        # always says where to look.
        eps = [t for t in tests if t.endpoint is not None and t.effect is not None
               and t.n_canary > 0]
        if hint is not None:  # the metric's own account (errors: where the excess is)
            reasons[0] += f"; most of it on {hint}"
        elif eps:
            top = max(eps, key=lambda t: (t.effect or 0.0) * (1 if m.direction != "decrease"
                                                               else -1) * t.n_canary)
            reasons[0] += f"; most of it on {top.endpoint} ({top.reason().split(': ', 2)[-1]})"
    return MetricResult(m.name, m.kind, m.group, m.critical, res, tests, reasons)


def _two_proportions(k1: int, n1: int, k2: int, n2: int) -> float | None:
    """Two-sided p of a difference in shares (what the U test gives on 0/1 samples)."""
    if not n1 or not n2:
        return None
    p = (k1 + k2) / (n1 + n2)
    var = p * (1 - p) * (1 / n1 + 1 / n2)
    if var <= 0:
        return 1.0
    return math.erfc(abs(k1 / n1 - k2 / n2) / math.sqrt(var) / math.sqrt(2))


# ---------------------------------------------------------------------------------------------
# Prometheus (the I/O edge: the caller fetches, the judge compares)


def prometheus_samples(url: str, query: str, *, timeout: float = 3.0,
                       opener: Callable[..., Any] | None = None) -> list[float]:
    """Every value an instant query returns (``/api/v1/query``): a vector gives one sample per
    series, a matrix (``metric[1m]``) one per point. NaN and Inf are dropped."""
    import json
    import urllib.parse
    import urllib.request

    full = url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with (opener or urllib.request.urlopen)(full, timeout=timeout) as r:
        doc = json.loads(r.read())
    if doc.get("status") != "success":
        raise ValueError(f"prometheus {url}: {doc.get('error') or doc.get('status')}")
    data = doc.get("data") or {}
    out: list[float] = []
    kind = data.get("resultType")
    res = data.get("result") or []
    if kind == "scalar":
        res = [{"value": res}]
    for s in res if isinstance(res, list) else []:
        for _, v in ([s["value"]] if "value" in s else s.get("values", [])):
            x = float(v)
            if math.isfinite(x):
                out.append(x)
    return out


class PrometheusFetcher:
    """Samples of every prometheus metric of a policy, fetched at most every ``every`` seconds
    (the judge runs twice a second; Prometheus need not). A failed query keeps the last
    samples and records why (the metric is inconclusive until it answers).

    ``background`` (the default): the queries run in a thread and a call returns the samples
    fetched so far at once, so a slow or hung Prometheus never delays a rollback."""

    def __init__(self, policy: JudgePolicy, every: float = 5.0,
                 fetch: Callable[[str, str], list[float]] | None = None,
                 background: bool = True) -> None:
        self.metrics = [m for m in policy.metrics if m.kind == "prometheus"]
        self.every = every
        self.fetch = fetch or (lambda u, q: prometheus_samples(u, q))
        self.background = background
        self.last = -math.inf
        self.samples: dict[str, tuple[list[float], list[float]]] = {}
        self.errors: dict[str, str] = {}
        self._busy: Any = None

    def _refresh(self) -> None:
        for m in self.metrics:
            try:
                assert m.url and m.canary_query and m.baseline_query
                got = (self.fetch(m.url, m.canary_query), self.fetch(m.url, m.baseline_query))
                self.samples = {**self.samples, m.name: got}  # replaced whole: no torn reads
                self.errors.pop(m.name, None)
            except Exception as e:  # any failure: no evidence, and say why
                self.errors[m.name] = str(e)

    def __call__(self, now: float) -> dict[str, tuple[list[float], list[float]]]:
        if self.metrics and now - self.last >= self.every:
            if not self.background:
                self.last = now
                self._refresh()
            elif self._busy is None or not self._busy.is_alive():
                import threading

                self.last = now
                self._busy = threading.Thread(target=self._refresh, daemon=True,
                                              name="canary-prometheus")
                self._busy.start()
        return self.samples
