"""Canary rollout: move real traffic to the canary step by step, roll back on errors, latency or
divergence.

What Flagger does with a service mesh, done by the gateway appliance itself: the gateway already
makes the split (``netconfig.routing``: nftables picks a backend per new connection and
conntrack remembers it), and the appliance already sees every exchange of both backends on its
mirror port. So the judge needs no mesh and no sidecar:

- **Which backend answered** an exchange is what the gateway decided for its connection: the
  ``ct mark`` of the conntrack entry (``ConntrackBackends``), or, where prod and canary have
  addresses of their own, the server address (``AddressBackends``).
- **Per step**, the canary's error rate (5xx, no answer) is compared with production's over the
  same seconds, and its latency (p95) with production's; a divergence source (the live shadow
  comparison of the canary's build, ``LiveShadowing``) can veto too. Errors and latency roll
  back as soon as enough canary requests show them; promotion waits for the step's time and
  its minimum of canary requests; a step that never gets enough traffic rolls back at its
  deadline (no evidence is not good evidence).
- **Rollback** puts the weight to 0: new connections go to production at once, established
  ones finish where they are (the split never moves a connection). An interrupted rollout
  (Ctrl-C, SIGTERM, a crash of the loop) rolls back too.

``CanaryJudge`` and ``Rollout`` are sans-I/O (fed exchanges and timestamps, return decisions);
``run_rollout`` is the I/O edge: capture, conntrack, nftables, the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from replay.stats import percentile

log = logging.getLogger("shadowtap.canary")

PROD, CANARY = "prod", "canary"


@dataclass
class CanaryPolicy:
    steps: list[float] = field(default_factory=lambda: [5.0, 25.0, 50.0, 100.0])
    step_seconds: float = 30.0
    min_requests: int = 50
    """Canary requests a step needs before it may be judged at all."""
    max_error_rate: float = 0.01
    """How much higher than production's the canary's error share may be (0.01 = 1 point)."""
    alpha: float = 0.01
    """An error excess must also be significant: P(canary errors this many | production's
    rate + the allowance) below ``alpha`` (a one-sided binomial test), so that 2 errors in 20
    requests are not read as a 10 % error rate."""
    max_latency_ratio: float = 1.5
    min_latency_ms: float = 10.0
    """A latency regression must also be at least this many ms at p95 (not just a ratio)."""
    step_deadline: float | None = None
    """Seconds after which a step without ``min_requests`` rolls back (default 4 x step)."""
    on_restart: str = "rollback"
    """A controller restarted mid-rollout (``appliance.canary.state``): ``resume`` the step at
    its recorded weight, or ``rollback``."""
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    """``appliance.canary.webhooks``: pre-rollout, step, confirm-promotion, rollback, promoted."""
    judge: Any = None
    """The judge's policy (``appliance.canary.judge``): None derives it from the keys above;
    a ``judge:`` mapping of the policy file (``appliance.canary.policy``) or a JudgePolicy."""
    image: Any = None
    """``appliance.canary.history.ImageTarget``: roll the canary's image back too."""

    def default_judge(self) -> Any:
        from appliance.canary.judge import default_judge_policy

        return default_judge_policy(
            max_error_rate=self.max_error_rate, alpha=self.alpha,
            max_latency_ratio=self.max_latency_ratio, min_latency_ms=self.min_latency_ms,
            min_requests=self.min_requests)

    def judge_policy(self) -> Any:
        if self.judge is None:
            return self.default_judge()
        if isinstance(self.judge, dict):
            from appliance.canary.policy import parse_judge

            return parse_judge(self.judge, self.default_judge())
        self.judge.validate()
        return self.judge

    def validate(self) -> None:
        if not self.steps or any(not 0 < s <= 100 for s in self.steps):
            raise ValueError("steps must be percentages in (0, 100], e.g. 5,25,50,100")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("steps must increase, e.g. 5,25,50,100")
        if self.step_seconds <= 0 or self.min_requests < 1:
            raise ValueError("step seconds must be > 0 and min requests >= 1")
        if not 0 <= self.max_error_rate < 1 or self.max_latency_ratio < 1:
            raise ValueError("max error rate must be in [0, 1) and max latency ratio >= 1")
        self.judge_policy()  # raises ValueError naming the judge's key
        if self.on_restart not in ("resume", "rollback"):
            raise ValueError(f"on_restart must be resume or rollback, not {self.on_restart!r}")

    @property
    def deadline(self) -> float:
        return self.step_deadline if self.step_deadline is not None else 4 * self.step_seconds


class CanaryConfigError(ValueError):
    """A canary policy file is wrong; the message names the file and the key."""


POLICY_SCHEMA: dict[str, Any] = {
    "steps": ([float], str), "step_seconds": float, "min_requests": int,
    "max_error_rate": float, "alpha": float, "max_latency_ratio": float,
    "min_latency_ms": float, "step_deadline": float, "on_restart": str,
    "webhooks": [{"name": str, "type": str, "url": str, "secret_file": str, "secret": str,
                  "timeout": float, "retries": int, "backoff": float}],
}
"""The keys of a canary policy file (``canary run --config``), each a ``CanaryPolicy`` field::

    steps: [5, 25, 50, 100]      # or "5,25,50,100": percent of new connections per step
    step_seconds: 30
    min_requests: 50
    max_error_rate: 0.01
    max_latency_ratio: 1.5
    min_latency_ms: 10
"""


def load_policy(path: str | Any) -> CanaryPolicy:
    """Read and validate a canary policy file (strict: unknown keys are errors)."""
    import strictconf
    from appliance.canary import policy as sections

    d = strictconf.load(path, {**POLICY_SCHEMA, **sections.SECTIONS}, what="canary policy",
                        error=CanaryConfigError)
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise CanaryConfigError(f"{path}: expected a mapping of policy keys, e.g. "
                                "steps: [5, 25, 50, 100]")
    kw = sections.take_sections({k: v for k, v in d.items() if v is not None}, path)
    steps = kw.get("steps")
    if isinstance(steps, str):
        try:
            kw["steps"] = [float(x) for x in steps.split(",") if x.strip()]
        except ValueError:
            raise CanaryConfigError(f"{path}: steps: {steps!r}; give increasing percentages, "
                                    "e.g. [5, 25, 50, 100]") from None
    elif steps is not None:
        kw["steps"] = [float(x) for x in steps]
    policy = CanaryPolicy(**kw)
    try:
        policy.validate()
    except ValueError as e:
        raise CanaryConfigError(f"{path}: {e}") from None
    return policy


# ---------------------------------------------------------------------------------------------
# The judge (sans-I/O)


def _p95(v: list[float]) -> float | None:
    """Nearest-rank p95 (``replay.stats.percentile``: 19th of 20 samples, not the maximum)."""
    return percentile(sorted(v), 95) if v else None


@dataclass
class _Side:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        p = _p95(self.latencies)
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 4),
                "p95_ms": None if p is None else round(p * 1000, 2)}


@dataclass
class Judgement:
    decision: str  # "wait", "promote" or "rollback"
    reasons: list[str]
    stats: dict[str, Any]


class CanaryJudge:
    """One step's evidence: exchanges of both backends over the same seconds, judged by
    ``appliance.canary.judge`` (per metric and endpoint: Mann-Whitney U, Hodges-Lehmann effect
    against the allowance, critical metrics, weighted score, inconclusive)."""

    def __init__(self, policy: CanaryPolicy, previous: CanaryJudge | None = None) -> None:
        from appliance.canary.judge import Evidence, Judge, PrometheusFetcher

        self.policy = policy
        self.previous = previous.evidence if previous is not None else None
        """The step before's evidence: its production samples stand in where this step has
        too few (at 100 %, production gets no new connections)."""
        self.sides = {PROD: _Side(), CANARY: _Side()}
        self.jpolicy = policy.judge_policy()
        self.evidence = Evidence()
        self.judge_ = Judge(self.jpolicy, CANARY, PROD)
        self.external = (PrometheusFetcher(self.jpolicy)
                         if any(m.kind == "prometheus" for m in self.jpolicy.metrics) else None)
        self.verdict: Any = None

    def add(self, backend: str, status: int | None, latency: float | None,
            endpoint: str | None = None) -> None:
        s = self.sides.get(backend)
        if s is None:
            return
        s.requests += 1
        if status is None or status >= 500:
            s.errors += 1
        elif latency is not None:
            s.latencies.append(latency)
        self.evidence.add(backend, status, latency, endpoint)

    def judge(self, elapsed: float, divergence: list[str] | None = None) -> Judgement:
        """``elapsed``: seconds since the step began; ``divergence``: regressions the shadow
        comparison found for the canary's build (None: no shadows)."""
        from appliance.canary.judge import FAIL, INCONCLUSIVE, MARGINAL, PASS

        pol, jp = self.policy, self.jpolicy
        c = self.sides[CANARY]
        ext = self.external(elapsed) if self.external is not None else None
        v = self.verdict = self.judge_.judge(self.evidence, divergence, ext, self.previous)
        stats = {CANARY: c.to_dict(), PROD: self.sides[PROD].to_dict(),
                 "judgement": v.to_dict()}
        if v.outcome == FAIL:
            return Judgement("rollback", v.reasons, stats)
        enough = c.requests >= pol.min_requests
        if elapsed >= pol.step_seconds and enough:
            if v.outcome == PASS:
                return Judgement("promote", [], stats)
            if v.outcome == MARGINAL and jp.marginal != "hold":
                return Judgement("promote" if jp.marginal == "promote" else "rollback",
                                 v.reasons, stats)
        deadline = jp.max_wait if jp.max_wait is not None else pol.deadline
        if elapsed >= deadline and (v.outcome in (INCONCLUSIVE, MARGINAL) or not enough):
            why = ([f"too little traffic: {c.requests} canary requests in {elapsed:.0f} s "
                    f"(need {pol.min_requests})"] if not enough else
                   [f"{v.outcome} for {elapsed:.0f} s", *v.reasons])
            if jp.on_timeout == "promote":
                return Judgement("promote", why, stats)
            return Judgement("rollback", why, stats)
        return Judgement("wait", [], stats)


class Rollout:
    """The step machine: weights, judges, history. ``set_weight`` is the only side effect."""

    def __init__(self, policy: CanaryPolicy, set_weight: Callable[[float], None],
                 divergence: Callable[[], list[str]] | None = None) -> None:
        policy.validate()
        self.policy = policy
        self.set_weight = set_weight
        self.divergence = divergence
        self.state = "pending"  # -> running -> promoted | rolled_back
        self.step = -1
        self.weight = 0.0
        self.step_started = 0.0
        self.step_wall = 0.0
        """Wall-clock time (the capture's clock) the current step's weight was applied."""
        self.before_start = 0
        """Exchanges the capture handed over while the rollout was held before its start."""
        self.stale = 0
        """Exchanges not judged because they began before their step's weight was set."""
        self.judge = CanaryJudge(policy)
        self.history: list[dict[str, Any]] = []
        self.reasons: list[str] = []
        self.unattributed = 0
        self.holes = 0
        """Exchanges not judged because the capture lost part of them."""
        self.totals = {PROD: [0, 0], CANARY: [0, 0]}
        """Requests and errors per backend over the whole rollout (for metrics)."""

    @property
    def done(self) -> bool:
        return self.state in ("promoted", "rolled_back")

    def start(self, now: float) -> None:
        self.state = "running"
        self._enter(0, now)

    def _enter(self, i: int, now: float) -> None:
        self.step = i
        self.weight = self.policy.steps[i]
        self.set_weight(self.weight)
        self.step_started = now
        self.step_wall = time.time()
        self.judge = CanaryJudge(self.policy, self.judge if i > 0 else None)
        log.info("canary step %d: %g %% of new connections", i + 1, self.weight)

    def add(self, backend: str | None, status: int | None, latency: float | None,
            endpoint: str | None = None, ts: float | None = None) -> None:
        """One exchange production or the canary served; ``ts`` is when its request began
        (capture time). An exchange that began before the current step's weight was set was
        balanced under the step before (or before the start: a backlog the capture handed over
        late), so it is counted in the totals but is not this step's evidence."""
        if backend is None:
            self.unattributed += 1
            return
        t = self.totals.get(backend)
        if t is not None:
            t[0] += 1
            t[1] += status is None or status >= 500
        if self.state == "running":
            if ts is not None and ts < self.step_wall:
                self.stale += 1
                return
            self.judge.add(backend, status, latency, endpoint)

    def tick(self, now: float) -> Judgement | None:
        """Judge the current step; act on the decision. Returns it (None when not running)."""
        if self.state != "running":
            return None
        div = self.divergence() if self.divergence is not None else None
        j = self.judge.judge(now - self.step_started, div)
        if j.decision == "wait":
            return j
        self.history.append({"step": self.step + 1, "weight": self.weight,
                             "seconds": round(now - self.step_started, 1),
                             "decision": j.decision, "reasons": j.reasons, **j.stats})
        if j.decision == "rollback":
            self.rollback(j.reasons)
        elif self.step + 1 < len(self.policy.steps):
            self._enter(self.step + 1, now)
        else:
            self.state = "promoted"
            log.info("canary promoted: 100 %% of new connections")
        return j

    def rollback(self, reasons: list[str]) -> None:
        """Weight 0 (new connections to production at once); idempotent."""
        if self.state == "rolled_back":
            return
        self.reasons = list(reasons)
        self.state = "rolled_back"
        self.weight = 0.0
        self.set_weight(0.0)
        log.warning("canary rolled back: %s", "; ".join(reasons))

    def report(self) -> dict[str, Any]:
        return {"shadowtap": "canary", "state": self.state, "weight": self.weight,
                "steps": self.policy.steps, "history": self.history, "reasons": self.reasons,
                "current": {"step": self.step + 1, **{k: v.to_dict()
                                                      for k, v in self.judge.sides.items()}},
                "unattributed_exchanges": self.unattributed,
                "exchanges_with_capture_holes": self.holes,
                "exchanges_from_before_their_step": self.stale,
                "exchanges_before_the_start": self.before_start}


# ---------------------------------------------------------------------------------------------
# Which backend answered (I/O)


class AddressBackends:
    """Prod and canary have addresses of their own (behind a load balancer, after DNAT)."""

    def __init__(self, canary: Iterable[str], prod: Iterable[str] | None = None) -> None:
        self.canary = set(canary)
        self.prod = set(prod) if prod is not None else None

    def __call__(self, ex: Any) -> str | None:
        if ex.conn is None:
            return None
        if ex.conn.server_ip in self.canary:
            return CANARY
        if self.prod is None or ex.conn.server_ip in self.prod:
            return PROD
        return None


class ConntrackBackends:
    """The backend the gateway chose for a connection: its conntrack ``ct mark``.

    The split marks each new connection to the VIP (``netconfig.routing``); conntrack keeps the
    entry for the connection's life and TIME_WAIT after it, so an exchange extracted from the
    mirror finds its connection's entry. The table is read (``/proc/thread-self/net/
    nf_conntrack`` in the gateway's namespace: one read and a split per line, ~20x cheaper than
    decoding netlink attributes in Python; netlink where procfs is not built in) when an unknown
    connection shows up, at most every ``min_interval`` seconds; the caller retries what was
    not found yet at its next tick (``refresh``)."""

    def __init__(self, netns: str | None, vip: str, min_interval: float = 0.2) -> None:
        self.netns = netns
        self.vip = vip
        self.min_interval = min_interval
        self.marks: dict[tuple[str, int], int] = {}
        self.last = 0.0
        self.dumps = 0
        self._procfs = True

    def _read_proc(self) -> dict[tuple[str, int], int]:
        from netconfig import netns as nsmod

        ctx = nsmod.netns_context(self.netns) if self.netns else contextlib.nullcontext()
        with ctx, open("/proc/thread-self/net/nf_conntrack", "rb") as f:  # the netns first
            data = f.read()
        dst = f" dst={self.vip} ".encode()
        marks: dict[tuple[str, int], int] = {}
        for line in data.split(b"\n"):
            i = line.find(dst)
            if i < 0 or b" tcp " not in line:
                continue
            m = line.find(b" mark=")
            if m < 0:
                continue
            src = line.rfind(b" src=", 0, i)
            sp = line.find(b" sport=", i)
            if src < 0 or sp < 0:
                continue
            ip = line[src + 5 : i].decode()
            port = int(line[sp + 7 : line.index(b" ", sp + 7)])
            marks[(ip, port)] = int(line[m + 6 : line.index(b" ", m + 6)])
        return marks

    def _read_netlink(self) -> dict[tuple[str, int], int]:
        from pyroute2 import NFCTSocket

        # pyroute2 0.9 opens its socket lazily, so a setns() context around the constructor
        # is not enough: it must be told the namespace.
        s = NFCTSocket(netns=self.netns) if self.netns else NFCTSocket()
        marks: dict[tuple[str, int], int] = {}
        try:
            for e in s.dump():
                orig = e.get_attr("CTA_TUPLE_ORIG")
                mark = e.get_attr("CTA_MARK")
                if orig is None or mark is None:
                    continue
                ip = orig.get_attr("CTA_TUPLE_IP")
                proto = orig.get_attr("CTA_TUPLE_PROTO")
                if ip is None or proto is None or ip.get_attr("CTA_IP_V4_DST") != self.vip:
                    continue
                marks[(ip.get_attr("CTA_IP_V4_SRC"), proto.get_attr("CTA_PROTO_SRC_PORT"))] = mark
        finally:
            s.close()
        return marks

    def refresh(self) -> None:
        self.last = time.monotonic()
        if self._procfs:
            try:
                marks = self._read_proc()
            except FileNotFoundError:
                self._procfs = False
        if not self._procfs:
            marks = self._read_netlink()
        # Keep what the kernel already forgot (an exchange may arrive after its entry expired).
        if len(self.marks) > 200_000:
            self.marks = {}
        self.marks.update(marks)
        self.dumps += 1

    def __call__(self, ex: Any) -> str | None:
        from netconfig.routing import MARK_CANARY, MARK_MASK, MARK_PROD

        if ex.conn is None:
            return None
        key = (ex.conn.client_ip, ex.conn.client_port)
        m = self.marks.get(key)
        if m is None and time.monotonic() - self.last >= self.min_interval:
            self.refresh()
            m = self.marks.get(key)
        if m is None:
            return None
        m &= MARK_MASK
        return CANARY if m == MARK_CANARY else PROD if m == MARK_PROD else None


# ---------------------------------------------------------------------------------------------
# The rollout as a command (I/O edge)


def captured_with_holes(ex: Any) -> bool:
    """The capture lost part of this exchange (a mirror copy dropped): what the server did is
    unknown, so it is neither an answer nor an error."""
    c = ex.completeness
    return bool(c.request_gaps or c.response_gaps)


def exchange_outcome(ex: Any) -> tuple[int | None, float | None]:
    """(status or None when unanswered, seconds from the request's end to the response's)."""
    if ex.response is None:
        return None, None
    lat = (ex.ts_response_end - ex.ts_request_end
           if ex.ts_response_end is not None and ex.ts_request_end is not None else None)
    return ex.response.status, lat


def exchange_endpoint(ex: Any) -> str | None:
    """``GET /orders/{id}`` (``replay.compare.endpoint_of``): the judge's per-endpoint key."""
    from replay.compare import endpoint_of

    req = ex.request
    return endpoint_of(req.method, req.target) if req is not None else None


def run_rollout(rollout: Rollout, handoff: Any, backend_of: Callable[[Any], str | None], *,
                stop: threading.Event | None = None,
                on_tick: Callable[[Rollout, Judgement | None], None] | None = None,
                tick_every: float = 0.5,
                tee: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Feed exchanges from ``handoff`` to ``rollout`` until it is promoted or rolled back.

    ``tee`` also gets every exchange production served (the live shadow comparison behind the
    divergence veto: production's recorded answer is the reference the shadows are weighed
    against, so the canary's own answers must not be it).
    Anything that ends the loop early (``stop`` set, an exception) rolls back first."""
    stop = stop or threading.Event()
    rollout.start(time.monotonic())
    nxt = time.monotonic() + tick_every
    pending: list[tuple[Any, int | None, float | None]] = []
    refresh = getattr(backend_of, "refresh", None)

    def judge(ex: Any, b: str | None, status: int | None, lat: float | None) -> None:
        rollout.add(b, status, lat, exchange_endpoint(ex), ex.ts_request_start)
        if tee is not None and b == PROD:
            tee(ex)
    try:
        while not rollout.done:
            if stop.is_set():
                rollout.rollback(["interrupted: traffic back to production"])
                break
            ex = handoff.get(timeout=0.05)
            if ex is not None and ex.request is not None and captured_with_holes(ex):
                rollout.holes += 1
            elif ex is not None and ex.request is not None:
                status, lat = exchange_outcome(ex)
                b = backend_of(ex)
                if b is None and refresh is not None and len(pending) < 100_000:
                    pending.append((ex, status, lat))  # retried after the next table read
                else:
                    judge(ex, b, status, lat)
            now = time.monotonic()
            if now >= nxt:
                nxt = now + tick_every
                if pending:
                    refresh()
                    for pex, status, lat in pending:
                        judge(pex, backend_of(pex), status, lat)
                    pending.clear()
                j = rollout.tick(now)
                if on_tick is not None:
                    on_tick(rollout, j)
    except BaseException as e:
        rollout.rollback([f"the rollout loop failed ({e!r}): traffic back to production"])
        raise
    return rollout.report()


class RolloutCollector:
    """Prometheus view of a rollout, read at scrape time (no locks on the judging path)."""

    STATES = ("pending", "running", "promoted", "rolled_back")

    def __init__(self, rollout: Rollout) -> None:
        self.rollout = rollout

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        r = self.rollout
        yield GaugeMetricFamily("shadowtap_canary_weight_percent",
                                "Share of new connections the split gives the canary", r.weight)
        yield GaugeMetricFamily("shadowtap_canary_step", "Current step (1-based; 0 before)",
                                r.step + 1)
        st = GaugeMetricFamily("shadowtap_canary_state", "1 for the rollout's state",
                               labels=["state"])
        for s in self.STATES:
            st.add_metric([s], 1.0 if r.state == s else 0.0)
        yield st
        req = CounterMetricFamily("shadowtap_canary_requests",
                                  "Exchanges judged, by backend and result",
                                  labels=["backend", "result"])
        for b, (n, e) in r.totals.items():
            req.add_metric([b, "ok"], n - e)
            req.add_metric([b, "error"], e)
        yield req
        yield CounterMetricFamily("shadowtap_canary_unattributed",
                                  "Exchanges whose backend could not be told", r.unattributed)
