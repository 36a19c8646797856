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
import bisect
import contextlib
import gc
import ipaddress
import logging
import math
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from replay.compare import endpoint_of

# The latency judge is pure and shared with ``shadowtap diff``: it lives in ``replay.latency``
# (``replay`` may not import ``appliance``); the names stay importable from here.
from replay.latency import judge_latency, mann_whitney_p  # noqa: F401
from replay.model import NO_ANSWER, NO_REQUEST_CAPTURED, NO_RESPONSE_CAPTURED, absolute_form

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
    max_lag: float = 0.5
    """Freshness budget (seconds): exchanges may wait this long for a replay slot. Beyond it new
    connections are shed (whole), so comparisons stay close behind the capture instead of
    working through a backlog of seconds."""
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


LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Compare lag (capture of an exchange's last packet -> its three-way comparison), seconds."""
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)


def _hist(buckets: tuple[float, ...]) -> list[int]:
    return [0] * (len(buckets) + 1)


def hist_quantile(counts: list[int], buckets: tuple[float, ...], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (None when empty; inf past the
    last bound): what a Prometheus histogram_quantile would say at its coarsest."""
    total = sum(counts)
    if not total:
        return None
    need = q * total
    acc = 0
    for bound, n in zip((*buckets, math.inf), counts, strict=True):
        acc += n
        if acc >= need:
            return bound
    return math.inf


_UNSET = object()

MAX_ENDPOINTS = 2000
"""Endpoints with latency reservoirs of their own; later ones share one."""


class Shadower:
    """Replay to the shadows and compare three ways, inside one event loop (a worker's).

    Sans threads: ``take(ex)`` is called from the loop for every sanitised exchange and never
    waits; what it keeps is replayed by tasks of the loop. Its whole state is plain data
    (``state()``) that merges with other shards' into one verdict (``live_report``), so N
    workers judge exactly as one process would.

    Overload is shed on purpose: beyond ``max_in_flight`` new *connections* are sampled out by
    a deterministic hash (``Shedder``), so the comparison stays unbiased and stateful sequences
    whole. A shadow that is down is not sent anything but one probe a second (its answers are
    counted as failures without a connection attempt), so a dead shadow costs almost nothing.
    """

    def __init__(self, cfg: ShadowingConfig, *, shard: int = 0, lossless: bool = False) -> None:
        from appliance.live.handoff import Shedder

        self.cfg = cfg
        self.shard = shard
        self.lossless = lossless
        """A capture file: the caller waits (``busy``) instead of shedding."""
        self.health = {t.name: Health(cfg.down_after) for t in cfg.targets}
        self.latency: dict[str, dict[str, deque[float]]] = {}
        names = ["production", *(t.name for t in cfg.targets)]
        self.lat_hist = {n: _hist(LATENCY_BUCKETS) for n in names}
        self.lat_sum = dict.fromkeys(names, 0.0)
        self.lag_hist = _hist(LAG_BUCKETS)
        self.lag_max = 0.0
        self.captured = 0
        self.replayed = 0
        self.skipped: dict[str, int] = {}
        self.refused: dict[str, str] = {}
        self.not_sent = {t.name: 0 for t in cfg.targets}
        self.in_flight = 0
        self.shedder = Shedder(high=0.5, low=0.2)
        self.queue_cap = cfg.max_in_flight
        """How many exchanges may wait for a slot: the measured replay rate times ``max_lag``
        (``adapt``; the concurrency until a rate is known); a new connection beyond it is
        shed. Without ``adapt`` calls, ``max_in_flight``."""
        self._rate = 0.0
        self._rate_at: float | None = None
        self._rate_mark = 0
        self.started = time.time()
        self.tw: Any = None
        self.rp: Any = None
        self._loop: Any = None
        self._active = 0
        self._index = {t.name: i for i, t in enumerate(cfg.targets)}
        self._examples_sent: dict[tuple[str, str, str], int] = {}
        self._targets = {t.name: _endpoint_addrs(t.url) for t in cfg.targets}
        self._chains: dict[Any, deque[Any]] = {}
        """Client connection -> its exchanges taken after the one out (kept in order)."""
        self._waiting: deque[tuple[Any, Any]] = deque()
        """Heads of connections waiting for one of the ``concurrency`` slots."""
        self._idle: asyncio.Future | None = None
        self._closed = False
        self._target_list = cfg.targets
        self._probe_at = {t.name: 0.0 for t in cfg.targets}
        self._last_fail = {t.name: NO_ANSWER for t in cfg.targets}
        self._prod_hist = self.lat_hist["production"]
        self._to_judge: list[tuple[Any, list[Any], list[int]]] = []
        """Landed, not judged yet (``_judge_pending``, at the end of the loop turn)."""
        self._per_target = [(t.name, t.role, self.health[t.name], self.lat_hist[t.name])
                            for t in cfg.targets]

    async def start(self) -> Shadower:
        from replay.compare import Rules, ThreeWay
        from replay.replayer import Replayer

        self._loop = asyncio.get_running_loop()
        rules = Rules()
        rules.allow_extra_fields = self.cfg.allow_extra_fields
        self.tw = ThreeWay(rules, min_samples=self.cfg.min_samples, shard=self.shard)
        self.rp = Replayer([t.url for t in self.cfg.targets], concurrency=self.cfg.concurrency,
                           timeout=self.cfg.timeout, connect_timeout=self.cfg.connect_timeout)
        await self.rp.start()
        self._loop = asyncio.get_running_loop()
        return self

    # -- per exchange ------------------------------------------------------------------------

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _guard(self, ex: Any) -> bool:
        """False (and the target refused from now on) if a shadow URL is production itself."""
        if ex.completeness.desync:
            # Request smuggling shape (RFC 9112 §11.2): what production made of these bytes is
            # unknown, so nothing of them goes to a shadow.
            return False
        if ex.conn is None:
            return not self.refused
        prod = (ex.conn.server_ip, ex.conn.server_port)
        for name, addrs in self._targets.items():
            if prod in addrs and name not in self.refused:
                self.refused[name] = (f"{prod[0]}:{prod[1]} is a production server in the "
                                      "capture; refusing to replay to it")
                log.error("shadow %s: %s", name, self.refused[name])
        return not self.refused

    def take(self, ex: Any) -> None:
        """One sanitised exchange (called from the loop; never waits)."""
        if ex.completeness.desync:
            self._skip("desync")  # never replayed, whatever else is true of it
            return
        if ex.request is None or ex.response is None:
            self._skip(NO_RESPONSE_CAPTURED if ex.request is not None else NO_REQUEST_CAPTURED)
            return
        if not ex.completeness.complete:
            self._skip("incomplete")
            return
        self.captured += 1
        if not self._guard(ex):
            self._skip("refused_production")
            return
        cid = ex.id.rpartition(".")[0].encode()
        if not self.lossless and not self.shedder.keep(
                cid, zlib.crc32(cid), self.in_flight - self._active < self.queue_cap):
            self._skip("shed_overload")
            return
        if self.in_flight >= self.cfg.max_in_flight and not self.lossless:
            self._skip("shadow_overflow")
            return
        self.in_flight += 1
        key = ((ex.conn.client_ip, ex.conn.client_port) if ex.conn is not None else ex.id)
        chain = self._chains.get(key)
        if chain is not None:  # one of this client connection's exchanges is out: after it
            chain.append(ex)
            return
        self._chains[key] = deque()
        if self._active < self.cfg.concurrency:
            self._active += 1
            self._start(ex, key)
        else:
            self._waiting.append((ex, key))

    def _start(self, ex: Any, key: Any) -> None:
        """Send ``ex`` to the shadows that are up (a down one gets a probe a second); its
        judgement runs when the last answer lands (``_landed``). Holds one of the
        ``concurrency`` slots until then."""
        mono = None
        skip: list[int] = []
        for i, (name, _, health, _) in enumerate(self._per_target):
            if not health.up:
                if mono is None:
                    mono = time.monotonic()
                if mono < self._probe_at[name]:
                    skip.append(i)  # down: not sent, counted as a failure below
                else:
                    self._probe_at[name] = mono + 1.0
        try:
            self.rp.dispatch_lean(ex, lambda outs: self._landed(ex, key, outs, skip), skip)
        except Exception as e:  # never expected; the exchange is counted, the slot freed
            log.error("shadowing: replaying %s failed: %r", ex.id, e)
            n = len(self._target_list)
            self._landed(ex, key, [None] * n, list(range(n)))

    def _landed(self, ex: Any, key: Any, outs: list[Any], skip: list[int]) -> None:
        """Every shadow answered (or failed) for ``ex``: free its slot, start the next of its
        connection or of the waiting line, then judge it."""
        if self._closed:
            return
        self.in_flight -= 1
        chain = self._chains.get(key)
        if chain:
            nxt = chain.popleft()  # same slot: this connection's next exchange
            self._start(nxt, key)
        else:
            self._chains.pop(key, None)
            self._active -= 1
            waiting = self._waiting
            while waiting and self._active < self.cfg.concurrency:
                self._active += 1
                self._start(*waiting.popleft())
        # Judged after every answer of this loop turn has started its connection's next
        # request: the writes to the shadows go out together while their servers are awake,
        # instead of one per judgement (~30 us apart), each waking an idle server (measured:
        # ~20 % of the CPU per comparison went to those wake-ups).
        todo = self._to_judge
        todo.append((ex, outs, skip))
        if self._loop is None:  # not started (a failed start): judged now
            self._judge_pending()
        elif len(todo) == 1:
            self._loop.call_soon(self._judge_pending)
        if self.in_flight == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _judge_pending(self) -> None:
        """Judge what landed (in landing order); called once per loop turn, and before
        anything reads the verdict state."""
        todo = self._to_judge
        if not todo:
            return
        self._to_judge = []
        for ex, outs, skip in todo:
            try:
                self._judge(ex, outs, skip)
            except Exception:  # one odd exchange must not stop the comparison
                self._skip("judge_error")
                log.exception("shadowing: judging %s failed", ex.id)

    @property
    def busy(self) -> bool:
        """Enough waiting for the shadows: a lossless caller stops reading for a while."""
        return self.in_flight >= self.cfg.max_in_flight // 2

    def adapt(self, lag: float = 0.0) -> None:
        """Move the shed level with the backlog (call a few times a second). ``lag``: how far
        (seconds) the caller is behind the capture; past ``max_lag``, shadowing sheds so that
        the worker's CPU goes to sanitising and logging first.

        The waiting line is held to what the shadows get through in ``max_lag`` (Little's law:
        wait = queued / rate), measured here as replays per second, so a comparison lags the
        capture by about ``max_lag`` plus the shadows' own latency, not by a backlog."""
        now = time.monotonic()
        if self._rate_at is None:  # the first call: no rate known yet
            self._rate_at = now
            self._rate_mark = self.replayed
            self.queue_cap = min(self.cfg.concurrency, self.cfg.max_in_flight)
        dt = now - self._rate_at
        if dt >= 0.25:
            r = (self.replayed - self._rate_mark) / dt
            self._rate = r if self._rate == 0.0 else 0.7 * self._rate + 0.3 * r
            self._rate_mark = self.replayed
            self._rate_at = now
            self.queue_cap = min(self.cfg.max_in_flight,
                                 max(self.cfg.concurrency, int(self._rate * self.cfg.max_lag)))
        queued = self.in_flight - self._active
        budget = max(1e-3, self.cfg.max_lag)
        self.shedder.adapt(max(self.in_flight / self.cfg.max_in_flight, lag / (2 * budget),
                               queued / self.queue_cap))

    def _samples(self, ep: str) -> dict[str, deque[float]]:
        s = self.latency.get(ep)
        if s is None:
            if len(self.latency) >= MAX_ENDPOINTS:  # scanners invent endpoints for weeks
                ep = "(other endpoints)"
                s = self.latency.get(ep)
                if s is not None:
                    return s
            n = self.cfg.latency_window
            s = self.latency[ep] = {"production": deque(maxlen=n), "secondary": deque(maxlen=n),
                                    "candidate": deque(maxlen=n)}
        return s

    def _judge(self, ex: Any, outs: list[Any], skip: list[int]) -> None:
        """Latency samples, shadow health and the three-way comparison of one exchange.
        ``outs``: per target (``Replayer.dispatch_lean``), ``(response, latency_ms)``, the
        ``ReplayError``, or None when not sent."""
        self.replayed += 1
        req = ex.request
        t = req.target
        if not absolute_form(t):
            # The query never counts in an endpoint; without it, ``endpoint_of``'s cache serves
            # every query string of a path (absolute-form targets are left to it whole).
            t = t.split("?", 1)[0].split("#", 1)[0]
        ep = endpoint_of(req.method, t)
        samples = self._samples(ep)
        lat_sum = self.lat_sum
        if ex.ts_response_end is not None and ex.ts_request_end is not None:
            lat = ex.ts_response_end - ex.ts_request_end
            samples["production"].append(lat)
            self._prod_hist[bisect.bisect_left(LATENCY_BUCKETS, lat)] += 1
            lat_sum["production"] += lat
        now = time.time()
        cand: Any = _UNSET
        sec: Any = None
        for i, (name, role, health, hist) in enumerate(self._per_target):
            r = outs[i]
            if r.__class__ is tuple:
                resp, ms = r
                if health.up and len(health.transitions) <= 200:  # Health.record(True), inline
                    health.answered += 1
                    health.fails_in_row = 0
                else:
                    health.record(True, now)
                if ms is not None:
                    v = ms / 1000
                    samples[role].append(v)
                    hist[bisect.bisect_left(LATENCY_BUCKETS, v)] += 1
                    lat_sum[name] += v
                out = resp
            else:
                if r is None and i in skip:
                    self.not_sent[name] += 1
                    kind = self._last_fail[name]
                else:
                    kind = getattr(r, "kind", NO_ANSWER)
                    self._last_fail[name] = kind
                health.record(False, now, kind)
                out = kind
            if role == "candidate":
                cand = out
            elif role == "secondary":
                sec = out
        if cand is _UNSET:
            raise KeyError("candidate")
        self.tw.add(ex.id, req, ex.response, cand, sec, ep)
        last = (ex.ts_response_end or ex.ts_response_start or ex.ts_request_end
                or ex.ts_request_start)
        if last is not None:
            lag = max(0.0, now - last)
            self.lag_hist[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
            if lag > self.lag_max:
                self.lag_max = lag

    async def settle(self) -> None:
        """Wait until everything taken so far has been replayed and compared."""
        while self.in_flight > 0:
            self._idle = self._loop.create_future()
            await self._idle
        self._judge_pending()

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for what was taken; what is still out or waiting is counted."""
        if self.in_flight > 0 and self._loop is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.settle(), timeout)
        self._judge_pending()
        left = self.in_flight
        if left:
            self._closed = True  # answers landing from now on are not judged
            self.skipped["not_replayed_at_stop"] = (
                self.skipped.get("not_replayed_at_stop", 0) + left)
            self.in_flight = 0
            self._waiting.clear()
            self._chains.clear()
            log.warning("%d exchanges were still waiting for the shadows at stop "
                        "(drain_timeout %.0fs)", left, timeout)

    async def close(self) -> None:
        if self.rp is not None:
            with contextlib.suppress(Exception):
                await self.rp.close()

    # -- state -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counters (cheap: no verdict), plain data."""
        return {
            "shard": self.shard,
            "started": self.started,
            "captured": self.captured,
            "replayed": self.replayed,
            "compared": self.tw.compared if self.tw is not None else 0,
            "in_flight": self.in_flight,
            "skipped": dict(self.skipped),
            "refused": dict(self.refused),
            "not_sent": dict(self.not_sent),
            "shed": {"kept": self.shedder.kept, "shed": self.shedder.shed,
                     "keep_level": self.shedder.level / 10_000},
            "health": {n: {"up": h.up, "answered": h.answered, "failed": h.failed,
                           "transitions": list(h.transitions)}
                       for n, h in self.health.items()},
            "lat_hist": {k: list(v) for k, v in self.lat_hist.items()},
            "lat_sum": dict(self.lat_sum),
            "lag_hist": list(self.lag_hist),
            "lag_max": self.lag_max,
        }

    def state(self, delta: bool = False) -> dict[str, Any]:
        """Everything the verdict and the report need, as plain data that merges
        (``live_report``): the status plus the comparison, latency samples, replay stats.

        ``delta``: a key's examples (pretty-printed bodies, the bulk of the state) are left out
        (``None``) when unchanged since the last delta state; the receiver keeps the previous
        ones (``fill_examples``). A worker sends its state every few seconds for weeks."""
        self._judge_pending()
        st = self.status()
        tws = self.tw.state() if self.tw is not None else None
        if delta and tws is not None:
            sent = self._examples_sent
            for k in tws["keys"]:
                key = (k["endpoint"], k["field"], k["kind"])
                n = len(k["examples"])
                if sent.get(key) == n:
                    k["examples"] = None
                else:
                    sent[key] = n
        st["three_way"] = tws
        st["latency"] = {ep: {k: list(v) for k, v in s.items()}
                         for ep, s in self.latency.items()}
        win = self.cfg.latency_window
        replay = {}
        rp = self.rp
        for t in self.cfg.targets:
            if rp is None:
                continue
            ts = rp.stats.targets[t.url]
            if len(ts.latencies) > 2 * win:  # bounded, like our own reservoirs
                del ts.latencies[:-win]
            replay[t.name] = {"sent": ts.sent, "ok": ts.ok,
                              "statuses": {str(k): v for k, v in ts.statuses.items()},
                              "errors": dict(ts.errors), "error_examples": dict(ts.error_examples),
                              "latencies": ts.latencies[-win:], "dropped": rp.stats.dropped,
                              "started": rp.stats.started}
        st["replay"] = replay
        return st


def fill_examples(new: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    """A delta ``state()`` made whole with the examples of the same worker's previous one."""
    tws = new.get("three_way")
    if not tws:
        return new
    old: dict[tuple[str, str, str], Any] = {}
    if prev is not None and prev.get("three_way"):
        old = {(k["endpoint"], k["field"], k["kind"]): k["examples"]
               for k in prev["three_way"]["keys"]}
    for k in tws["keys"]:
        if k["examples"] is None:
            k["examples"] = old.get((k["endpoint"], k["field"], k["kind"])) or []
    return new


def _add(dst: dict[str, int], src: dict[str, int]) -> None:
    for k, v in src.items():
        dst[k] = dst.get(k, 0) + v


def merge_status(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' ``status()`` (or ``state()``) as one: counts add, a shadow is up when
    every worker that tried it lately says so, histograms add."""
    out: dict[str, Any] = {"captured": 0, "replayed": 0, "compared": 0, "in_flight": 0,
                           "skipped": {}, "refused": {}, "not_sent": {}, "health": {},
                           "shed": {"kept": 0, "shed": 0, "keep_level": 1.0},
                           "lat_hist": {}, "lat_sum": {}, "lag_hist": _hist(LAG_BUCKETS),
                           "lag_max": 0.0, "started": min((p.get("started", 0.0) for p in parts),
                                                          default=time.time())}
    for p in parts:
        for k in ("captured", "replayed", "compared", "in_flight"):
            out[k] += p.get(k, 0)
        _add(out["skipped"], p.get("skipped", {}))
        _add(out["not_sent"], p.get("not_sent", {}))
        out["refused"].update(p.get("refused", {}))
        sh = p.get("shed", {})
        out["shed"]["kept"] += sh.get("kept", 0)
        out["shed"]["shed"] += sh.get("shed", 0)
        out["shed"]["keep_level"] = min(out["shed"]["keep_level"], sh.get("keep_level", 1.0))
        for n, h in p.get("health", {}).items():
            m = out["health"].setdefault(n, {"up": True, "answered": 0, "failed": 0,
                                             "transitions": []})
            m["up"] = m["up"] and h["up"]
            m["answered"] += h["answered"]
            m["failed"] += h["failed"]
            m["transitions"].extend(h["transitions"])
        for n, c in p.get("lat_hist", {}).items():
            acc = out["lat_hist"].setdefault(n, [0] * len(c))
            for i, v in enumerate(c):
                acc[i] += v
        _add(out["lat_sum"], p.get("lat_sum", {}))  # type: ignore[arg-type]
        for i, v in enumerate(p.get("lag_hist", [])):
            out["lag_hist"][i] += v
        out["lag_max"] = max(out["lag_max"], p.get("lag_max", 0.0))
    for h in out["health"].values():
        h["transitions"].sort(key=lambda x: x["t"])
        del h["transitions"][:-200]
    out["lag_p99"] = hist_quantile(out["lag_hist"], LAG_BUCKETS, 0.99)
    return out


def live_report(cfg: ShadowingConfig, states: list[dict[str, Any]], *, source: str,
                capture: dict[str, Any] | None = None,
                rules: Any = None) -> tuple[dict[str, Any], Any]:
    """One report (and its verdict) from every worker's ``state()``: the verdict is the one a
    single process would give on the same exchanges (``ThreeWay.merge``). ``rules``: field
    rules the merge applies (the console's noise marks; ``ThreeWay.merge`` folds what they
    cover into noise, for past and future comparisons alike)."""
    from collections import Counter

    from replay.compare import Rules, ThreeWay
    from replay.replayer import ReplayStats, TargetStats
    from replay.report import build_report

    if rules is None:
        rules = Rules()
    rules.allow_extra_fields = cfg.allow_extra_fields
    tw = ThreeWay(rules, min_samples=cfg.min_samples)
    for st in states:
        if st.get("three_way") is not None:
            tw.merge(st["three_way"])
    v = tw.verdict()
    m = merge_status(states)
    stats = ReplayStats(targets={t.url: TargetStats(t.url) for t in cfg.targets})
    win = cfg.latency_window
    starts = []
    for t in cfg.targets:
        ts = stats.targets[t.url]
        for st in states:
            r = st.get("replay", {}).get(t.name)
            if r is None:
                continue
            ts.sent += r["sent"]
            ts.ok += r["ok"]
            ts.statuses.update(Counter({int(k): v for k, v in r["statuses"].items()}))
            ts.errors.update(Counter(r["errors"]))
            for k, e in r["error_examples"].items():
                ts.error_examples.setdefault(k, e)
            ts.latencies.extend(r["latencies"])
            stats.dropped += r.get("dropped", 0)
            if r.get("started"):
                starts.append(r["started"])
        del ts.latencies[:-win]
    stats.completed = m["replayed"]
    stats.started = min(starts) if starts else 0.0
    samples: dict[str, dict[str, list[float]]] = {}
    for st in states:
        for ep, s in st.get("latency", {}).items():
            acc = samples.setdefault(ep, {"production": [], "secondary": [], "candidate": []})
            for k, vals in s.items():
                acc[k].extend(vals)
    for s in samples.values():
        for k in s:
            del s[k][:-win]
    sec = cfg.secondary
    doc = build_report(v, stats, input_path=source, candidate=cfg.candidate.url,
                       secondary=sec.url if sec else None, fail_on=0.0, skipped=m["skipped"],
                       weird=(capture or {}).get("http_weird"))
    doc["shadowtap"] = "live"
    doc["latency"] = judge_latency(samples)
    doc["latency_regressions"] = [r["endpoint"] for r in doc["latency"] if r["regression"]]
    doc["shadows"] = {t.name: {"role": t.label or t.role, "url": t.url,
                               "up": m["health"].get(t.name, {}).get("up", True),
                               "answered": m["health"].get(t.name, {}).get("answered", 0),
                               "failed": m["health"].get(t.name, {}).get("failed", 0),
                               "not_sent_while_down": m["not_sent"].get(t.name, 0),
                               "transitions": m["health"].get(t.name, {}).get("transitions", []),
                               "refused": m["refused"].get(t.name)}
                      for t in cfg.targets}
    doc["compare_lag"] = {"p99_s": m["lag_p99"], "max_s": round(m["lag_max"], 3)}
    doc["shed"] = m["shed"]
    doc["workers"] = len(states)
    if capture is not None:
        doc["capture"] = capture
    doc["captured_exchanges"] = m["captured"]
    return doc, v


NOISE_SERIES = 100
"""At most this many noise fields are exported as ``shadowtap_field_differences`` series."""


class ShadowMetrics:
    """The shadow and comparison series for /metrics, from merged worker state at scrape time
    (workers are processes: they keep plain counts, the parent shows them)."""

    def __init__(self, cfg: ShadowingConfig, status: Callable[[], dict[str, Any]],
                 verdict: Callable[[], Any]) -> None:
        self.cfg = cfg
        self.status = status
        self.verdict = verdict

    def collect(self) -> Any:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self.status()
        req = CounterMetricFamily("shadowtap_shadow_requests",
                                  "Requests replayed to a shadow, by result",
                                  labels=["shadow", "result"])
        up = GaugeMetricFamily("shadowtap_shadow_up", "1 while the shadow answers",
                               labels=["shadow"])
        for t in self.cfg.targets:
            h = m.get("health", {}).get(t.name, {"up": True, "answered": 0, "failed": 0})
            req.add_metric([t.name, "answered"], h["answered"])
            req.add_metric([t.name, "failed"], h["failed"])
            up.add_metric([t.name], 1.0 if h["up"] else 0.0)
        yield req
        yield up
        c = CounterMetricFamily("shadowtap_compared_requests",
                                "Requests compared three ways (production, secondary, "
                                "candidate)")
        c.add_metric([], m.get("compared", 0))
        yield c
        sk = CounterMetricFamily("shadowtap_shadowing_skipped",
                                 "Exchanges not replayed, by reason", labels=["reason"])
        for reason, n in sorted(m.get("skipped", {}).items()):
            sk.add_metric([reason], n)
        yield sk
        shed = GaugeMetricFamily("shadowtap_shadowing_keep_ratio",
                                 "Share of new connections the shadowing keeps (1 = all; "
                                 "lower while it sheds overload)")
        shed.add_metric([], m.get("shed", {}).get("keep_level", 1.0))
        yield shed
        lat = HistogramMetricFamily("shadowtap_http_latency_seconds",
                                    "Response latency: production (captured) and each shadow",
                                    labels=["target"])
        for name, counts in m.get("lat_hist", {}).items():
            acc = 0
            buckets = []
            for bound, n in zip((*LATENCY_BUCKETS, math.inf), counts, strict=True):
                acc += n
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)),
                                float(acc)))
            lat.add_metric([name], buckets, m.get("lat_sum", {}).get(name, 0.0))
        yield lat
        lag = HistogramMetricFamily("shadowtap_compare_lag_seconds",
                                    "From an exchange's last captured packet to its comparison")
        acc = 0
        buckets = []
        for bound, n in zip((*LAG_BUCKETS, math.inf), m.get("lag_hist", _hist(LAG_BUCKETS)),
                            strict=True):
            acc += n
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), float(acc)))
        lag.add_metric([], buckets, 0.0)
        yield lag
        v = self.verdict()
        fd = GaugeMetricFamily("shadowtap_field_differences",
                               "Requests whose answer differed from production's, per endpoint "
                               "and field (since start)", labels=["endpoint", "field", "shadow"])
        fr = GaugeMetricFamily("shadowtap_field_regression",
                               "1 while the candidate's difference is judged a regression",
                               labels=["endpoint", "field"])
        if v is not None:
            names = {t.role: t.name for t in self.cfg.targets}
            # Bounded cardinality: every regression and undecided field, and only the
            # noisiest noise (the report has the rest).
            noise = sorted(v.noise, key=lambda f: -(f.secondary_diffs or f.candidate_diffs))
            for f in [*v.regressions, *v.undecided, *noise[:NOISE_SERIES]]:
                for role, n in (("candidate", f.candidate_diffs),
                                ("secondary", f.secondary_diffs)):
                    if n is not None and role in names:
                        fd.add_metric([f.endpoint, f.field, names[role]], n)
            for f in v.regressions:
                fr.add_metric([f.endpoint, f.field], 1.0)
        yield fd
        yield fr


class LiveShadowing:
    """A ``Shadower`` in a thread of its own, fed from an in-process hand-off queue
    (``get(timeout) -> Exchange | None``): the canary's and the one-process mode's way in.

    >>> ls = LiveShadowing(cfg, app.handoff, registry=server.registry).start()
    >>> ls.status()            # counters for a progress view
    >>> ls.stop()              # drain what the capture still hands over, judge, write reports
    """

    def __init__(self, cfg: ShadowingConfig, handoff: Any, *, registry: Any = None,
                 source: str = "live capture",
                 capture_snapshot: Callable[[], dict[str, Any]] | None = None,
                 live: bool = False) -> None:
        self.cfg = cfg
        self.handoff = handoff
        self.source = source
        self.capture_snapshot = capture_snapshot
        self.live = live
        """Live traffic: the waiting line is held to ``max_lag`` (``Shadower.adapt``), new
        connections beyond it shed. Otherwise (a capture file, a test feeding everything at
        once) every exchange handed over is replayed."""
        self.shadower = Shadower(cfg)
        self._verdict: Any = None
        self.rules: Callable[[], Any] | None = None
        """Returns the ``Rules`` the verdict applies (the console's noise marks)."""
        if registry is not False:
            from prometheus_client import REGISTRY

            (registry if registry is not None else REGISTRY).register(
                ShadowMetrics(cfg, lambda: merge_status([self.shadower.status()]),
                              lambda: self._verdict))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._report: dict[str, Any] | None = None
        self.regressions = 0
        self.error: str | None = None

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
        # As in the live workers (``live/worker.py``): with the default gen-0 threshold (700)
        # the collector runs every few comparisons over everything the process holds (5-10 %
        # of this thread's time); what exists at start is frozen out of every collection.
        # Unlike a worker, this thread shares its process (the appliance, the canary CLI):
        # garbage is collected before the freeze (frozen, it would never be freed), and the
        # threshold is put back at stop.
        gc.collect()
        gc.freeze()
        old = gc.get_threshold()
        gc.set_threshold(max(old[0], 100_000), old[1], old[2])
        try:
            run_loop(self._run())
        except Exception as e:  # reported by status() and the log; capture goes on regardless
            self.error = repr(e)
            log.exception("live shadowing stopped")
        finally:
            gc.set_threshold(*old)

    async def _run(self) -> None:
        sh = await self.shadower.start()
        loop = asyncio.get_running_loop()
        limit = self.cfg.max_in_flight
        taken = [0]
        accepted = [0]
        inbox: asyncio.Queue = asyncio.Queue()

        def pump() -> None:
            # Takes from the hand-off only while there is room: beyond that the hand-off queue
            # fills and counts its overflow; the capture never waits. Exchanges cross to the
            # loop in batches: one wake-up of the loop per batch, not per exchange.
            while not self._stop.is_set():
                room = limit - (sh.in_flight + taken[0] - accepted[0])
                if room <= 0:
                    time.sleep(0.01)
                    continue
                batch = self.handoff.get_many(min(room, 256), timeout=0.2)
                if batch:
                    taken[0] += len(batch)
                    loop.call_soon_threadsafe(inbox.put_nowait, batch)
            while batch := self.handoff.get_many(256, timeout=0.05):  # what is left
                taken[0] += len(batch)
                loop.call_soon_threadsafe(inbox.put_nowait, batch)
            loop.call_soon_threadsafe(inbox.put_nowait, None)

        threading.Thread(target=pump, name="shadowing-pump", daemon=True).start()
        last = time.monotonic()
        while True:
            try:
                batch = await asyncio.wait_for(inbox.get(), 0.5)
            except TimeoutError:
                batch = False
            if batch is None:
                break
            if batch is not False:
                for ex in batch:
                    accepted[0] += 1
                    sh.take(ex)
            if self.live:
                sh.adapt()
            if time.monotonic() - last > self.cfg.verdict_every:
                last = time.monotonic()
                self._rolling()
        await sh.drain(self.cfg.drain_timeout)
        self._rolling(final=True)
        await sh.close()

    def _rolling(self, final: bool = False) -> None:
        """Judge what has been compared so far: the report file, the gauges, the live view."""
        try:
            cap = None
            if self.capture_snapshot is not None:
                with contextlib.suppress(Exception):
                    cap = self.capture_snapshot()
            doc, v = live_report(self.cfg, [self.shadower.state()], source=self.source,
                                 capture=cap, rules=self.rules() if self.rules else None)
            self._report, self._verdict = doc, v
            self.regressions = len(doc.get("regressions", []))
            if self.cfg.report:
                write_reports(Path(self.cfg.report), doc)
        except Exception:  # a live view must never stop the comparison
            log.exception("verdict failed%s", " (final)" if final else "")

    def status(self) -> dict[str, Any]:
        """Counters for a progress view (cheap: no verdict)."""
        return progress_view(merge_status([self.shadower.status()]), self.regressions,
                             self.error)

    @property
    def last_report(self) -> dict[str, Any] | None:
        """The report of the latest verdict (None before the first)."""
        return self._report

    def regression_names(self) -> list[str]:
        """The regressions of the latest verdict, one line each (the canary's divergence
        veto)."""
        return regression_names(self._report)


def regression_names(doc: dict[str, Any] | None) -> list[str]:
    return [f"{f['endpoint']} {f['field']} {f['kind']}" for f in (doc or {}).get("regressions", [])]


def progress_view(m: dict[str, Any], regressions: int, error: str | None) -> dict[str, Any]:
    """The progress view's counters from a merged status."""
    return {
        "ready": True,
        "elapsed": round(time.time() - m["started"], 1),
        "captured": m["captured"],
        "replayed": m["replayed"],
        "compared": m["compared"],
        "regressions": regressions,
        "in_flight": m["in_flight"],
        "skipped": dict(m["skipped"]),
        "refused": dict(m["refused"]),
        "shadows": {n: {"up": h["up"], "answered": h["answered"], "failed": h["failed"]}
                    for n, h in m["health"].items()},
        "shed": m["shed"],
        "compare_lag_p99": m["lag_p99"],
        "error": error,
    }


def run_loop(coro: Any) -> Any:
    """Run on uvloop when installed (a third faster for the replayer), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def write_reports(path: Path, doc: dict[str, Any]) -> None:
    """The JSON report (atomically: a reader never sees half a file) and the HTML beside it."""
    from replay.report import render_html

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # orjson: ten times json's speed on a report of thousands of fields, rewritten every few
    # seconds by a daemon; non-finite numbers become null (valid JSON, unlike json's).
    tmp.write_bytes(orjson.dumps(doc, default=str,
                                 option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    tmp.replace(path)
    with contextlib.suppress(Exception):
        html = path.with_suffix(".html")
        tmp = html.with_name(html.name + ".tmp")
        tmp.write_text(render_html(doc))
        tmp.replace(html)
