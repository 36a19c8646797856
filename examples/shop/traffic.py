#!/usr/bin/env python3
"""Realistic client traffic for the shop demo service (standard library only).

Why it is shaped this way:

* **Virtual users own shop users.** Each virtual user (a thread with one keep-alive connection)
  drives a fixed share of the shop's customers (ids 2-40, dealt round-robin), so every
  customer's requests are strictly ordered. That is what lets a shadow that replays the traffic
  hand out the same order ids as production (the shop counts order ids per customer).
* **Deterministic.** Every choice (customer, action, page, product, items) comes from a
  ``random.Random`` seeded by ``seed`` and the virtual user's index: the same seed and
  ``requests`` produce the same requests in the same per-customer order, run after run.
* **A mix like a shop's.** Browsing dominates (product pages, pagination, tag filters, product
  details), logged-in customers check their account, buyers create, view, change, cancel and
  delete orders and look at their history, and the customers who never ordered (ids 31-40)
  sometimes open their empty history: the shop's rare path (v2 answers it with a 500).
* **Client-side truth.** Latency is measured around each request on the client; every answer is
  checked against the status this action expects, so a 500, a 401 or a transport error is
  counted by kind, not silently folded into "requests".

From Python::

    report = run_traffic("http://10.0.0.1:8080", users=8, duration=10, seed=1)
    print(report.format()); json.dumps(report.to_dict())

    drv = TrafficDriver(TrafficConfig("http://10.0.0.1:8080", users=8, duration=60))
    drv.start(); ...; drv.snapshot()  # live counts for a progress bar
    drv.stop(); report = drv.wait()

From a shell (e.g. inside the client namespace with ``ip netns exec``)::

    python3 traffic.py http://10.0.0.1:8080 --users 8 --duration 10 --seed 1 [--rate 200] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

FIRST_CUSTOMER, LAST_CUSTOMER = 2, 40
LAST_BUYER = 30  # customers 31-40 never order: their history is empty (the rare path)
N_PRODUCTS = 60
TAGS = ["new", "sale", "eco", "gift", "bestseller", "limited", "outdoor", "kitchen", "office",
        "audio"]

# (action, weight). A buyer draws from all; a customer who never orders from those marked False.
ACTIONS: list[tuple[str, float, bool]] = [
    ("browse", 30, False),
    ("browse_tag", 8, False),
    ("product", 25, False),
    ("me", 5, False),
    ("rename", 1, False),
    ("history", 6, True),
    ("history_empty", 10, False),  # only customers 31-40 draw it (1 in 4 customers)
    ("create_order", 6, True),
    ("view_order", 8, True),
    ("update_order", 3, True),
    ("cancel_order", 1, True),
    ("delete_order", 2, True),
]


@dataclass
class TrafficConfig:
    """What to drive and for how long. ``duration`` and ``requests``: whichever comes first."""

    base_url: str
    users: int = 8
    """Concurrent virtual users (threads, one keep-alive connection each); at most 39."""
    duration: float | None = 10.0
    """Seconds; None: until ``requests`` are sent."""
    requests: int | None = None
    """Total requests, split evenly over the virtual users (deterministic); None: no limit."""
    seed: int = 1
    rate: float | None = None
    """Target requests per second over all users (paced per user); None: as fast as answered."""
    timeout: float = 10.0
    gzip_share: float = 0.75
    """Share of virtual users whose client accepts gzip."""
    record: Callable[[Recorded], None] | None = None
    """Called (from the virtual users' threads) with every request and its answer: the
    client's own record of the traffic, e.g. the 'production' side of a comparison without a
    capture. Must be quick and thread-safe (``list.append`` is)."""


@dataclass
class Recorded:
    """One request as sent and its answer as received (body still content-coded)."""

    vu: int
    seq: int
    """Per virtual user, from 0: (vu, seq) orders each customer's requests."""
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    status: int | None
    """None: the request failed (``failure`` says how)."""
    response_headers: list[tuple[str, str]]
    response_body: bytes
    t_start: float
    """time.time() when the request was sent; ``t_end`` when the answer was read."""
    t_end: float
    failure: str | None = None


@dataclass
class EndpointStats:
    """Client-side view of one endpoint (method + path template)."""

    count: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


@dataclass
class TrafficReport:
    """What the clients saw. ``errors`` = transport failures + 5xx + other unexpected statuses."""

    base_url: str
    users: int
    seed: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    transport_errors: dict[str, int]
    unexpected: dict[str, int]
    """``"GET /users/{id}/orders -> 500"``: count, for every answer that was not the expected."""
    endpoints: dict[str, EndpointStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """A plain-text table (the demo can render its own from ``to_dict()``)."""
        lat = self.latency_ms
        lines = [f"{self.requests} requests in {self.duration_s:.1f}s ({self.rps:.0f}/s) by "
                 f"{self.users} users to {self.base_url}, {self.errors} errors; latency p50 "
                 f"{lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms",
                 f"{'endpoint':<26}{'count':>7}{'errors':>7}{'p50 ms':>9}{'p90 ms':>9}"
                 f"{'p99 ms':>9}{'max ms':>9}"]
        for name, e in sorted(self.endpoints.items(), key=lambda kv: -kv[1].count):
            lines.append(f"{name:<26}{e.count:>7}{e.errors:>7}{e.p50_ms:>9.1f}{e.p90_ms:>9.1f}"
                         f"{e.p99_ms:>9.1f}{e.max_ms:>9.1f}")
        for what, n in sorted({**self.transport_errors, **self.unexpected}.items()):
            lines.append(f"  error: {what}: {n}")
        return "\n".join(lines)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


class _Recorder:
    """Thread-safe tallies, shared by the virtual users."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {}
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.transport: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.count = 0
        self.n_errors = 0

    def add(self, endpoint: str, ms: float, status: int | None, expected: tuple[int, ...],
            failure: str | None) -> None:
        with self.lock:
            self.count += 1
            self.latencies.setdefault(endpoint, []).append(ms)
            if failure is not None:
                self.transport[f"{endpoint}: {failure}"] += 1
            else:
                self.statuses[str(status)] += 1
                if status not in expected:
                    self.unexpected[f"{endpoint} -> {status}"] += 1
            if failure is not None or status not in expected:
                self.errors[endpoint] += 1
                self.n_errors += 1


@dataclass
class _Customer:
    uid: int
    token: str | None = None
    pending: list[int] = field(default_factory=list)  # orders this run created, still pending
    closed: list[int] = field(default_factory=list)  # created, then cancelled


class _VirtualUser:
    """One client: a keep-alive connection, a seeded random stream, its own customers."""

    def __init__(self, driver: TrafficDriver, index: int, customers: list[int],
                 quota: int | None, interval: float | None) -> None:
        cfg = driver.cfg
        self.d = driver
        self.index = index
        self.rng = random.Random(cfg.seed * 1_000_003 + index)
        self.customers = [_Customer(uid) for uid in customers]
        self.quota = quota
        self.interval = interval
        self.gzip = index < round(cfg.gzip_share * cfg.users)
        self.conn: http.client.HTTPConnection | None = None
        self.sent = 0

    # -- transport --
    def _connect(self) -> http.client.HTTPConnection:
        d = self.d
        cls = http.client.HTTPSConnection if d.scheme == "https" else http.client.HTTPConnection
        return cls(d.host, d.port, timeout=d.cfg.timeout)

    def request(self, method: str, path: str, endpoint: str, expected: tuple[int, ...],
                body: Any = None, token: str | None = None) -> tuple[int | None, Any]:
        """Send one request on the kept-alive connection; (status, parsed JSON data) or None."""
        headers = {"Accept": "application/json", "User-Agent": "shop-traffic/1"}
        # explicit either way: http.client would add "identity" itself, unrecorded
        headers["Accept-Encoding"] = "gzip" if self.gzip else "identity"
        raw = None
        if body is not None:
            raw = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.interval:
            self._pace()
        self.sent += 1
        t0 = time.perf_counter()
        wall0 = time.time()
        status: int | None = None
        failure = None
        data: Any = None
        wire = b""
        resp_headers: list[tuple[str, str]] = []
        target = self.d.prefix + path
        try:
            if self.conn is None:
                self.conn = self._connect()
            self.conn.request(method, target, body=raw, headers=headers)
            resp = self.conn.getresponse()
            payload = wire = resp.read()
            status = resp.status
            resp_headers = resp.getheaders()
            if resp.getheader("Content-Encoding", "").lower() == "gzip":
                payload = gzip.decompress(payload)
            if resp.will_close:
                self._drop()
            try:
                data = json.loads(payload).get("data") if payload else None
            except (ValueError, AttributeError):
                failure = "answer is not JSON"
        except (OSError, http.client.HTTPException) as e:
            failure = type(e).__name__
            self._drop()
        ms = (time.perf_counter() - t0) * 1000
        self.d.rec.add(endpoint, ms, status, expected, failure)
        if self.d.cfg.record is not None:
            sent = [("Host", self.d.host_header), *headers.items()]
            if raw is not None:
                sent.append(("Content-Length", str(len(raw))))
            self.d.cfg.record(Recorded(self.index, self.sent - 1, method, target, sent,
                                       raw or b"", status, resp_headers, wire, wall0,
                                       wall0 + ms / 1000, failure))
        return (status if failure is None else None), data

    def _pace(self) -> None:
        assert self.interval is not None
        due = self.d.t_start + self.sent * self.interval
        delay = due - time.perf_counter()
        if delay > 0:
            self.d.stop_event.wait(delay)

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    # -- behaviour --
    def done(self) -> bool:
        if self.d.stop_event.is_set():
            return True
        if self.quota is not None and self.sent >= self.quota:
            return True
        return self.d.deadline is not None and time.perf_counter() >= self.d.deadline

    def run(self) -> None:
        try:
            while not self.done():
                c = self.rng.choice(self.customers)
                if c.token is None:
                    self.login(c)
                    continue
                self.act(c, self._pick(c))
        finally:
            self._drop()

    def _pick(self, c: _Customer) -> str:
        buyer = c.uid <= LAST_BUYER
        names, weights = [], []
        for name, w, buyers_only in ACTIONS:
            if buyers_only and not buyer:
                continue
            if name == "history_empty" and buyer:
                continue
            if name in ("update_order", "cancel_order") and not c.pending:
                continue
            if name == "delete_order" and not (c.pending or c.closed):
                continue
            names.append(name)
            weights.append(w)
        return self.rng.choices(names, weights)[0]

    def login(self, c: _Customer) -> None:
        name = _USERNAMES[c.uid]
        status, data = self.request("POST", "/login", "POST /login", (200,),
                                    {"username": name, "password": f"{name}-pw"})
        if status == 200 and isinstance(data, dict):
            c.token = data.get("token")

    def act(self, c: _Customer, action: str) -> None:
        r = self.rng
        tok = c.token
        if action == "browse":
            page = r.choices([1, 2, 3, 4, 5, 6], [40, 25, 15, 10, 6, 4])[0]
            self.request("GET", f"/products?page={page}&per_page=10", "GET /products", (200,))
        elif action == "browse_tag":
            self.request("GET", f"/products?tag={r.choice(TAGS)}&page={r.randint(1, 2)}"
                         f"&per_page=5", "GET /products", (200,))
        elif action == "product":
            self.request("GET", f"/products/{r.randint(1, N_PRODUCTS)}", "GET /products/{id}",
                         (200,))
        elif action == "me":
            self.request("GET", "/users/me", "GET /users/me", (200,), token=tok)
        elif action == "rename":
            self.request("PUT", "/users/me", "PUT /users/me", (200,),
                         {"display_name": f"{_USERNAMES[c.uid].capitalize()} {r.randint(1, 99)}"},
                         token=tok)
        elif action in ("history", "history_empty"):
            self.request("GET", f"/users/{c.uid}/orders", "GET /users/{id}/orders", (200,),
                         token=tok)
        elif action == "create_order":
            items = [{"product_id": r.randint(1, N_PRODUCTS), "quantity": r.randint(1, 3)}
                     for _ in range(r.randint(1, 3))]
            status, data = self.request("POST", "/orders", "POST /orders", (201,),
                                        {"items": items, "note": r.choice(["", "gift wrap"])},
                                        token=tok)
            if status == 201 and isinstance(data, dict):
                c.pending.append(int(data["id"]))
        elif action == "view_order":
            # a seeded order (ids uid*100000+1 always exist for buyers) or one of this run's
            mine = c.pending + c.closed
            oid = r.choice(mine) if mine and r.random() < 0.7 else c.uid * 100000 + 1
            self.request("GET", f"/orders/{oid}", "GET /orders/{id}", (200,), token=tok)
        elif action == "update_order":
            oid = r.choice(c.pending)
            items = [{"product_id": r.randint(1, N_PRODUCTS), "quantity": r.randint(1, 3)}]
            self.request("PUT", f"/orders/{oid}", "PUT /orders/{id}", (200,),
                         {"items": items, "note": "changed"}, token=tok)
        elif action == "cancel_order":
            oid = c.pending.pop(r.randrange(len(c.pending)))
            c.closed.append(oid)
            self.request("PUT", f"/orders/{oid}", "PUT /orders/{id}", (200,),
                         {"status": "cancelled"}, token=tok)
        elif action == "delete_order":
            pool = c.pending if c.pending and (not c.closed or r.random() < 0.5) else c.closed
            oid = pool.pop(r.randrange(len(pool)))
            self.request("DELETE", f"/orders/{oid}", "DELETE /orders/{id}", (200,), token=tok)
        else:  # pragma: no cover - ACTIONS and act() are edited together
            raise ValueError(action)


# The shop's seeded customers by id (ids 2-40), as in app.py's seed.
_USERNAMES = dict(enumerate(
    ["admin", "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
     "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "uma", "victor", "walter",
     "xena", "yusuf", "zoe", "amir", "bea", "chen", "dara", "emil", "fatima", "goran", "hana",
     "ines", "jonas", "kofi", "lena", "mateo", "noor", "oskar", "priya"], start=1))


class TrafficDriver:
    """Virtual users in threads against one base URL; start/stop/wait, or run() to the end."""

    def __init__(self, cfg: TrafficConfig) -> None:
        u = urlsplit(cfg.base_url if "://" in cfg.base_url else f"http://{cfg.base_url}")
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"base URL {cfg.base_url!r}: use http://HOST[:PORT][/prefix]")
        n_customers = LAST_CUSTOMER - FIRST_CUSTOMER + 1
        if not 1 <= cfg.users <= n_customers:
            raise ValueError(f"users must be 1..{n_customers} (each owns some of the shop's "
                             f"{n_customers} customers)")
        if cfg.duration is None and cfg.requests is None:
            raise ValueError("give a duration, a request count, or both")
        self.cfg = cfg
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path.rstrip("/")
        default_port = 443 if u.scheme == "https" else 80
        self.host_header = u.hostname if self.port == default_port else f"{u.hostname}:{self.port}"
        self.rec = _Recorder()
        self.stop_event = threading.Event()
        self.t_start = 0.0
        self.t_end: float | None = None
        self.deadline: float | None = None
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        cfg = self.cfg
        customers = list(range(FIRST_CUSTOMER, LAST_CUSTOMER + 1))
        per = [customers[i::cfg.users] for i in range(cfg.users)]
        quotas: list[int | None] = [None] * cfg.users
        if cfg.requests is not None:
            base, extra = divmod(cfg.requests, cfg.users)
            quotas = [base + (1 if i < extra else 0) for i in range(cfg.users)]
        interval = cfg.users / cfg.rate if cfg.rate else None
        self.t_start = time.perf_counter()
        self.deadline = self.t_start + cfg.duration if cfg.duration is not None else None
        vus = [_VirtualUser(self, i, per[i], quotas[i], interval) for i in range(cfg.users)]
        self.threads = [threading.Thread(target=vu.run, name=f"vu-{i}", daemon=True)
                        for i, vu in enumerate(vus)]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        """Ask every virtual user to finish its current request and stop."""
        self.stop_event.set()

    def wait(self, timeout: float | None = None) -> TrafficReport:
        end = None if timeout is None else time.perf_counter() + timeout
        for t in self.threads:
            t.join(None if end is None else max(0.0, end - time.perf_counter()))
        self.t_end = time.perf_counter()
        return self.report()

    def run(self) -> TrafficReport:
        self.start()
        return self.wait()

    def snapshot(self) -> dict[str, Any]:
        """Live numbers for a progress display: requests, errors, elapsed, rate so far."""
        with self.rec.lock:
            n, errors = self.rec.count, self.rec.n_errors
        elapsed = (self.t_end or time.perf_counter()) - self.t_start if self.t_start else 0.0
        return {"requests": n, "errors": errors, "elapsed_s": elapsed,
                "rps": n / elapsed if elapsed > 0 else 0.0}

    def report(self) -> TrafficReport:
        rec = self.rec
        with rec.lock:
            lat = {k: sorted(v) for k, v in rec.latencies.items()}
            endpoints = {
                k: EndpointStats(len(v), rec.errors[k], percentile(v, 50), percentile(v, 90),
                                 percentile(v, 99), v[-1], sum(v) / len(v))
                for k, v in lat.items()}
            every = sorted(x for v in lat.values() for x in v)
            elapsed = (self.t_end or time.perf_counter()) - self.t_start
            return TrafficReport(
                base_url=self.cfg.base_url, users=self.cfg.users, seed=self.cfg.seed,
                duration_s=elapsed, requests=rec.count, errors=rec.n_errors,
                rps=rec.count / elapsed if elapsed > 0 else 0.0,
                latency_ms={"p50": percentile(every, 50), "p90": percentile(every, 90),
                            "p99": percentile(every, 99), "max": every[-1] if every else 0.0,
                            "mean": sum(every) / len(every) if every else 0.0},
                statuses=dict(rec.statuses), transport_errors=dict(rec.transport),
                unexpected=dict(rec.unexpected), endpoints=endpoints)


def run_traffic(base_url: str, **kw: Any) -> TrafficReport:
    """Drive traffic to ``base_url`` until done; keyword arguments are TrafficConfig's."""
    return TrafficDriver(TrafficConfig(base_url, **kw)).run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Drive realistic shop traffic at a base URL.")
    ap.add_argument("base_url", help="e.g. http://127.0.0.1:8080")
    ap.add_argument("--users", type=int, default=8, help="concurrent virtual users (1-39)")
    ap.add_argument("--duration", type=float, default=None, help="seconds (default 10)")
    ap.add_argument("--requests", type=int, default=None, help="total requests")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=None, help="target requests/s over all users")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    a = ap.parse_args(argv)
    duration = a.duration if a.duration is not None or a.requests is not None else 10.0
    try:
        drv = TrafficDriver(TrafficConfig(a.base_url, users=a.users, duration=duration,
                                          requests=a.requests, seed=a.seed, rate=a.rate,
                                          timeout=a.timeout))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    drv.start()
    try:
        report = drv.wait()
    except KeyboardInterrupt:
        drv.stop()
        report = drv.wait(timeout=a.timeout + 1)
    print(json.dumps(report.to_dict(), indent=2) if a.json else report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
