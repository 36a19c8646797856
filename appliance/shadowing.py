"""Live shadowing: the pipeline's hand-off queue -> replay to the shadows -> continuous comparison.

What the appliance daemon runs when its config has a ``shadowing`` section, and what the demo's
engine runs: every sanitised exchange the capture produces is replayed to the candidate shadow
(the build under test) and, when given, to a secondary shadow running production's own build;
``replay.compare.ThreeWay`` weighs the candidate's differences from production against the
secondary's, so a field that differs as often on production's own build (timestamps, ids) is
noise and only what the candidate alone changes is a regression. A latency judge compares the
candidate's answer times with the secondary's (same host, same moment).

Why a thread with its own event loop: the capture worker must never wait for a shadow. The
hand-off queue between them is bounded and counts its overflow; this side only takes from it
while fewer than ``max_in_flight`` exchanges are being replayed, so a slow or dead shadow costs
comparisons (counted), never capture, never production.

Safety: a shadow URL that points at a server the capture shows production traffic going to is
refused (``refused_production``), so a typo in the config cannot replay writes into production.

Memory stays bounded for a daemon that runs for weeks: latency samples are kept in per-endpoint
reservoirs of the most recent ``latency_window`` values, and the verdict state is per
(endpoint, field) counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("shadowtap.shadowing")


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ShadowTarget:
    name: str
    url: str
    role: str  # "candidate" or "secondary"
    label: str = ""  # shown in reports, e.g. "candidate (v2)"


@dataclass
class ShadowingConfig:
    candidate: ShadowTarget
    secondary: ShadowTarget | None = None
    concurrency: int = 32
    timeout: float = 5.0
    connect_timeout: float = 1.0
    verdict_every: float = 5.0
    min_samples: int = 8
    allow_extra_fields: bool = True
    down_after: int = 3
    max_in_flight: int = 2048
    drain_timeout: float = 30.0
    """At stop, how long exchanges already taken may still wait for the shadows."""
    latency_window: int = 5000
    report: str | None = None
    """JSON report path, rewritten at every verdict and at stop (the HTML next to it)."""

    @property
    def targets(self) -> list[ShadowTarget]:
        """Secondary first, then the candidate: the order of ``Replayer`` targets."""
        return [t for t in (self.secondary, self.candidate) if t is not None]


# ---------------------------------------------------------------------------------------------
# Latency judge and shadow health (sans-I/O)


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


def _median(v: Any) -> float | None:
    if not v:
        return None
    s = sorted(v)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def judge_latency(samples: dict[str, dict[str, Any]], *, alpha: float = 0.01,
                  min_samples: int = 10, min_ms: float = 20.0,
                  min_ratio: float = 1.3) -> list[dict[str, Any]]:
    """Per endpoint, is the candidate slower than the secondary (same host, same moment, so the
    only difference is the build)? A regression needs a significant Mann-Whitney test
    (Bonferroni over endpoints) AND a difference that matters (>= ``min_ms`` and
    >= ``min_ratio`` in medians): significance alone flags harmless microseconds."""
    eps = [e for e, s in samples.items()
           if len(s.get("candidate", ())) >= min_samples
           and len(s.get("secondary", ())) >= min_samples]
    out = []
    for ep, s in sorted(samples.items()):
        row: dict[str, Any] = {"endpoint": ep}
        for k in ("production", "secondary", "candidate"):
            v = s.get(k, ())
            row[f"{k}_n"] = len(v)
            m = _median(v)
            row[f"{k}_p50_ms"] = None if m is None else round(m * 1000, 2)
        if ep in eps:
            p = mann_whitney_p(list(s["candidate"]), list(s["secondary"]))
            mc, ms = _median(s["candidate"]) or 0.0, _median(s["secondary"]) or 0.0
            row["p_value"] = p
            row["regression"] = bool(p < alpha / max(1, len(eps))
                                     and (mc - ms) * 1000 >= min_ms
                                     and mc >= ms * min_ratio)
        else:
            row["p_value"] = None
            row["regression"] = False
        out.append(row)
    return out


@dataclass
class Health:
    """A shadow is down after ``down_after`` failures in a row, up again at its first answer."""

    down_after: int = 3
    up: bool = True
    fails_in_row: int = 0
    answered: int = 0
    failed: int = 0
    transitions: list[dict[str, Any]] = field(default_factory=list)

    def record(self, ok: bool, now: float, why: str = "") -> None:
        if ok:
            self.answered += 1
            self.fails_in_row = 0
            if not self.up:
                self.up = True
                self.transitions.append({"t": now, "state": "up"})
        else:
            self.failed += 1
            self.fails_in_row += 1
            if self.up and self.fails_in_row >= self.down_after:
                self.up = False
                self.transitions.append({"t": now, "state": "down", "why": why})
        if len(self.transitions) > 200:  # a flapping shadow over weeks: keep the recent story
            del self.transitions[:100]


# ---------------------------------------------------------------------------------------------
# Metrics


def make_metrics(registry: Any = None) -> dict[str, Any]:
    """The shadow and comparison series, in ``registry`` (the appliance's, so one /metrics
    shows capture, pipeline, shadows and differences together)."""
    from prometheus_client import REGISTRY, Counter, Gauge, Histogram

    reg = registry if registry is not None else REGISTRY
    return {
        "requests": Counter("shadowtap_shadow_requests_total",
                            "Requests replayed to a shadow, by result", ["shadow", "result"],
                            registry=reg),
        "up": Gauge("shadowtap_shadow_up", "1 while the shadow answers", ["shadow"],
                    registry=reg),
        "compared": Counter("shadowtap_compared_requests_total",
                            "Requests compared three ways (production, secondary, candidate)",
                            registry=reg),
        "skipped": Counter("shadowtap_shadowing_skipped_total",
                           "Exchanges not replayed, by reason", ["reason"], registry=reg),
        "field_diffs": Gauge("shadowtap_field_differences",
                             "Requests whose answer differed from production's, per endpoint "
                             "and field (since start)", ["endpoint", "field", "shadow"],
                             registry=reg),
        "field_regression": Gauge("shadowtap_field_regression",
                                  "1 while the candidate's difference is judged a regression",
                                  ["endpoint", "field"], registry=reg),
        "latency": Histogram("shadowtap_http_latency_seconds",
                             "Response latency: production (captured) and each shadow",
                             ["target"], registry=reg,
                             buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)),
    }


# ---------------------------------------------------------------------------------------------
# The live loop


def _endpoint_addrs(url: str) -> set[tuple[str, int]]:
    """Every (ip, port) a target URL resolves to (for the production guard)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    host = u.hostname or ""
    try:
        return {(str(ipaddress.ip_address(host)), port)}
    except ValueError:
        pass
    with contextlib.suppress(OSError):
        return {(str(ipaddress.ip_address(ai[4][0])), port)
                for ai in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    return set()


class LiveShadowing:
    """Consumes a hand-off queue (``get(timeout) -> Exchange | None``) in a thread of its own.

    >>> ls = LiveShadowing(cfg, app.handoff, registry=server.registry).start()
    >>> ls.status()            # counters for a progress view
    >>> ls.stop()              # drain what the capture still hands over, judge, write reports
    """

    def __init__(self, cfg: ShadowingConfig, handoff: Any, *, registry: Any = None,
                 source: str = "live capture",
                 capture_snapshot: Callable[[], dict[str, Any]] | None = None) -> None:
        self.cfg = cfg
        self.handoff = handoff
        self.source = source
        self.capture_snapshot = capture_snapshot
        self.metrics = make_metrics(registry) if registry is not False else None
        self.health = {t.name: Health(cfg.down_after) for t in cfg.targets}
        self.latency: dict[str, dict[str, deque[float]]] = {}
        self.captured = 0
        self.replayed = 0
        self.regressions = 0
        self.skipped: dict[str, int] = {}
        self.refused: dict[str, str] = {}
        self.started = time.time()
        self._targets = {t.name: _endpoint_addrs(t.url) for t in cfg.targets}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._tw: Any = None
        self._rp: Any = None
        self._report: dict[str, Any] | None = None
        self.error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LiveShadowing:
        self._thread = threading.Thread(target=self._main, name="shadowing", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> dict[str, Any] | None:
        """Call after the capture has stopped: what it handed over is still replayed, then the
        final verdict and reports are written. Returns the report."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self._report

    def _main(self) -> None:
        try:
            try:
                import uvloop

                uvloop.run(self._run())
            except ImportError:
                asyncio.run(self._run())
        except Exception as e:  # reported by status() and the log; capture goes on regardless
            self.error = repr(e)
            log.exception("live shadowing stopped")

    # -- per exchange ------------------------------------------------------------------------

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if self.metrics:
            self.metrics["skipped"].labels(reason).inc()

    def _guard(self, ex: Any) -> bool:
        """False (and the target refused from now on) if a shadow URL is production itself."""
        if ex.conn is None:
            return True
        prod = (ex.conn.server_ip, ex.conn.server_port)
        for name, addrs in self._targets.items():
            if prod in addrs and name not in self.refused:
                self.refused[name] = (f"{prod[0]}:{prod[1]} is a production server in the "
                                      "capture; refusing to replay to it")
                log.error("shadow %s: %s", name, self.refused[name])
        return not self.refused

    def _samples(self, ep: str) -> dict[str, deque[float]]:
        s = self.latency.get(ep)
        if s is None:
            n = self.cfg.latency_window
            s = self.latency[ep] = {"production": deque(maxlen=n), "secondary": deque(maxlen=n),
                                    "candidate": deque(maxlen=n)}
        return s

    async def _one(self, ex: Any, rp: Any, tw: Any, chains: dict[Any, asyncio.Future]) -> None:
        from replay.compare import endpoint_of
        from replay.model import Exchange as Ex

        key = (ex.conn.client_ip, ex.conn.client_port) if ex.conn else None
        prev = chains.get(key)
        done = asyncio.get_running_loop().create_future()
        chains[key] = done
        try:
            if prev is not None:  # keep each client connection's requests in order
                await prev
            results = await rp.submit(ex)
        finally:
            done.set_result(None)
            if chains.get(key) is done:
                del chains[key]
            self._in_flight -= 1
        self.replayed += 1
        ep = endpoint_of(ex.request.method, ex.request.target)
        samples = self._samples(ep)
        lat = (ex.ts_response_end - ex.ts_request_end
               if ex.ts_response_end is not None and ex.ts_request_end is not None else None)
        if lat is not None:
            samples["production"].append(lat)
            if self.metrics:
                self.metrics["latency"].labels("production").observe(lat)
        now = time.time()
        outs: dict[str, Any] = {}
        for t, tgt in zip(self.cfg.targets, rp.targets, strict=True):
            r = results.get(tgt.url)
            ok = isinstance(r, Ex) and r.response is not None
            self.health[t.name].record(ok, now, "" if ok else getattr(r, "kind", "no response"))
            if self.metrics:
                self.metrics["requests"].labels(t.name, "answered" if ok else "failed").inc()
                self.metrics["up"].labels(t.name).set(1 if self.health[t.name].up else 0)
            if ok:
                ms = r.meta.get("latency_ms")
                if ms is not None:
                    samples[t.role].append(ms / 1000)
                    if self.metrics:
                        self.metrics["latency"].labels(t.name).observe(ms / 1000)
                outs[t.role] = r.response
            else:
                outs[t.role] = getattr(r, "kind", "no response")
        tw.add(ex.id, ex.request, ex.response, outs["candidate"], outs.get("secondary"))
        if self.metrics:
            self.metrics["compared"].inc()

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        from replay.compare import Rules, ThreeWay
        from replay.replayer import Replayer

        rules = Rules()
        rules.allow_extra_fields = self.cfg.allow_extra_fields
        tw = self._tw = ThreeWay(rules, min_samples=self.cfg.min_samples)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        limit = self.cfg.max_in_flight
        # Handed to the loop but not yet taken: ``taken`` is written by the pump thread only,
        # ``accepted`` by the loop only, so neither needs a lock.
        taken = [0]
        accepted = [0]

        def pump() -> None:
            # Takes from the hand-off only while there is room: beyond that the hand-off queue
            # fills and counts its overflow; the capture never waits.
            while not self._stop.is_set():
                if self._in_flight + taken[0] - accepted[0] >= limit:
                    time.sleep(0.01)
                    continue
                ex = self.handoff.get(timeout=0.2)
                if ex is not None:
                    taken[0] += 1
                    loop.call_soon_threadsafe(inbox.put_nowait, ex)
            while (ex := self.handoff.get(timeout=0.05)) is not None:  # what is left
                taken[0] += 1
                loop.call_soon_threadsafe(inbox.put_nowait, ex)
            loop.call_soon_threadsafe(inbox.put_nowait, None)

        threading.Thread(target=pump, name="shadowing-pump", daemon=True).start()
        tasks: set[asyncio.Task] = set()
        chains: dict[Any, asyncio.Future] = {}
        urls = [t.url for t in self.cfg.targets]
        last_verdict = time.monotonic()
        async with Replayer(urls, concurrency=self.cfg.concurrency, timeout=self.cfg.timeout,
                            connect_timeout=self.cfg.connect_timeout) as rp:
            self._rp = rp
            while True:
                try:
                    ex = await asyncio.wait_for(inbox.get(), 0.5)
                except TimeoutError:
                    ex = False
                if ex is None:
                    break
                if ex is not False:
                    accepted[0] += 1
                    self._take(ex, rp, tw, tasks, chains)
                if time.monotonic() - last_verdict > self.cfg.verdict_every:
                    last_verdict = time.monotonic()
                    self._rolling()
            if tasks:
                await asyncio.wait(tasks, timeout=self.cfg.drain_timeout)
            if tasks:  # still queued for the shadows when time ran out: say so, then stop
                left = [t for t in tasks if not t.done()]
                for _ in left:
                    self._skip("not_replayed_at_stop")
                for t in left:
                    t.cancel()
                await asyncio.gather(*left, return_exceptions=True)
                log.warning("%d exchanges were still waiting for the shadows at stop "
                            "(drain_timeout %.0fs)", len(left), self.cfg.drain_timeout)
            self._rolling(final=True)

    def _take(self, ex: Any, rp: Any, tw: Any, tasks: set[asyncio.Task],
              chains: dict[Any, asyncio.Future]) -> None:
        if ex.request is None or ex.response is None:
            self._skip("no_response" if ex.request is not None else "no_request")
            return
        if not ex.completeness.complete:
            self._skip("incomplete")
            return
        self.captured += 1
        if not self._guard(ex):
            self._skip("refused_production")
            return
        self._in_flight += 1
        t = asyncio.create_task(self._one(ex, rp, tw, chains))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    def _rolling(self, final: bool = False) -> None:
        """Judge what has been compared so far: gauges, the report file, the live view."""
        try:
            if self._tw is None:
                return
            v = self._tw.verdict()  # once per tick: the report and the gauges share it
            doc = self.build_report(v)
            self._report = doc
            self.regressions = len(doc.get("regressions", []))
            if self.metrics:
                self._gauges(v)
            if self.cfg.report:
                write_reports(Path(self.cfg.report), doc)
        except Exception:  # a live view must never stop the comparison
            log.exception("verdict failed%s", " (final)" if final else "")

    def _gauges(self, v: Any) -> None:
        names = {t.role: t.name for t in self.cfg.targets}
        for f in [*v.regressions, *v.noise, *v.undecided]:
            for role, n in (("candidate", f.candidate_diffs), ("secondary", f.secondary_diffs)):
                if n is not None and role in names:
                    self.metrics["field_diffs"].labels(f.endpoint, f.field, names[role]).set(n)
        for f in v.regressions:
            self.metrics["field_regression"].labels(f.endpoint, f.field).set(1)

    # -- views -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counters for a progress view (cheap: no verdict)."""
        return {
            "ready": True,
            "elapsed": round(time.time() - self.started, 1),
            "captured": self.captured,
            "replayed": self.replayed,
            "compared": self._tw.compared if self._tw is not None else 0,
            "regressions": self.regressions,
            "in_flight": self._in_flight,
            "skipped": dict(self.skipped),
            "refused": dict(self.refused),
            "shadows": {n: {"up": h.up, "answered": h.answered, "failed": h.failed}
                        for n, h in self.health.items()},
            "dropped": self._rp.stats.dropped if self._rp is not None else 0,
            "error": self.error,
        }

    @property
    def last_report(self) -> dict[str, Any] | None:
        """The report of the latest verdict (None before the first)."""
        return self._report

    def regression_names(self) -> list[str]:
        """The regressions of the latest verdict, one line each (the canary's divergence
        veto)."""
        doc = self._report or {}
        return [f"{f['endpoint']} {f['field']} {f['kind']}" for f in doc.get("regressions", [])]

    def build_report(self, verdict: Any = None) -> dict[str, Any]:
        """The report of what was compared so far (``verdict``: one already computed)."""
        from replay.report import build_report

        if self._tw is None or self._rp is None:
            return {}
        for ts in self._rp.stats.targets.values():  # bounded, like our own reservoirs
            if len(ts.latencies) > 2 * self.cfg.latency_window:
                del ts.latencies[: -self.cfg.latency_window]
        sec = self.cfg.secondary
        v = verdict if verdict is not None else self._tw.verdict()
        doc = build_report(v, self._rp.stats, input_path=self.source,
                           candidate=self.cfg.candidate.url,
                           secondary=sec.url if sec else None, fail_on=0.0,
                           skipped=dict(self.skipped))
        doc["shadowtap"] = "live"
        doc["latency"] = judge_latency(self.latency)
        doc["latency_regressions"] = [r["endpoint"] for r in doc["latency"] if r["regression"]]
        doc["shadows"] = {t.name: {"role": t.label or t.role, "url": t.url,
                                   "up": self.health[t.name].up,
                                   "answered": self.health[t.name].answered,
                                   "failed": self.health[t.name].failed,
                                   "transitions": list(self.health[t.name].transitions),
                                   "refused": self.refused.get(t.name)}
                          for t in self.cfg.targets}
        if self.capture_snapshot is not None:
            with contextlib.suppress(Exception):
                doc["capture"] = self.capture_snapshot()
        doc["captured_exchanges"] = self.captured
        return doc


def write_reports(path: Path, doc: dict[str, Any]) -> None:
    """The JSON report (atomically: a reader never sees half a file) and the HTML beside it."""
    from replay.report import render_html

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(path)
    with contextlib.suppress(Exception):
        html = path.with_suffix(".html")
        tmp = html.with_name(html.name + ".tmp")
        tmp.write_text(render_html(doc))
        tmp.replace(html)
