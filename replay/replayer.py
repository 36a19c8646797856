"""The replay engine: send captured requests to one or more HTTP targets, record their answers.

Why it is built on raw asyncio protocols and httptools rather than aiohttp or httpx: on this kind
of machine an asyncio protocol on uvloop parsing with httptools reaches ~100k requests/s on one
core, aiohttp ~14-19k and httpx ~1k (docs/benchmarks.md). A replayer that is slower than the
service it tests measures itself.

Shape:

* ``Replayer``: keep-alive connection pools, one per target; each exchange goes to every target at
  once (all requests are written before any answer is awaited, so targets see it concurrently).
  ``send(ex)`` replays one now; ``submit(ex)`` goes through a bounded queue served by
  ``concurrency`` workers and waits for the result (backpressure); ``offer(ex)`` never waits (the
  live pipeline must not block capture) and counts what a full queue drops. ``run(items, schedule)``
  replays a whole capture paced by ``replay.pacing.Schedule``.
* Results: for each target, an ``Exchange`` (request = what was sent, response = what the target
  answered, ``meta['original_id']`` = the captured exchange's id) or a ``ReplayError`` with a
  ``kind`` (connect_refused, connect_timeout, dns, connect_error, timeout, reset, closed,
  bad_response, write_error).
* No retries by default. One exception, which every HTTP client makes: a request written on a
  *reused* keep-alive connection that the server had already closed (nothing came back at all) is
  sent again once on a fresh connection; that is a stale pooled socket, not a failed request.

Pacing and rewriting are sans-I/O (``replay.pacing``, ``replay.rewrite``); this module only does
sockets and clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Container, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import httptools

from replay.model import Completeness, ConnKey, Exchange, Request, Response
from replay.pacing import Schedule
from replay.rewrite import Rewrite, Target, WireBuilder, encode_request, rewrite_request
from replay.stats import percentile

ERROR_KINDS = (
    "connect_refused",
    "connect_timeout",
    "dns",
    "connect_error",
    "timeout",
    "reset",
    "closed",
    "bad_response",
    "write_error",
)


@dataclass(slots=True)
class ReplayError:
    """A request that got no usable answer from a target: what kind of failure, and how long it
    took to fail. Counted per kind so a dead target reads as 'connect_refused × 500'."""

    kind: str
    message: str
    target: str = ""
    elapsed: float = 0.0
    loop: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "elapsed": round(self.elapsed, 6)}


Outcome = Exchange | ReplayError
Results = dict[str, Outcome]
"""Per target URL (``Target.url``, as given), the recorded exchange or the error."""


_VERSIONS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
_REASONS: dict[bytes, str] = {}


def _reason(raw: bytes) -> str:
    """Reason phrases repeat ('OK' a million times): decode each distinct one once."""
    r = _REASONS.get(raw)
    if r is None:
        r = raw.decode("latin-1")
        if len(_REASONS) < 1000:
            _REASONS[raw] = r
    return r


class _Fail(Exception):
    """Internal: a request failed; ``stale`` = nothing came back on a reused connection."""

    def __init__(self, kind: str, message: str, stale: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.stale = stale


# ---------------------------------------------------------------------------------------------
# One connection


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time (no pipelining: a
    pipelined replay would let one slow answer delay the next and blur latencies)."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.fut: asyncio.Future | None = None
        self.deadline = 0.0
        self.closed = False
        self.reused = False
        self.uses = 0
        self.is_head = False
        self.head_done = False
        self._reset_message()
        self.key: ConnKey | None = None

    def _reset_message(self) -> None:
        self.got_bytes = False
        self.headers_done = False
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.keep_alive = True
        self.version = "HTTP/1.1"
        self.interim: list[Response] | None = None  # made on the rare 1xx

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sn = transport.get_extra_info("sockname")
        pn = transport.get_extra_info("peername")
        if sn and pn and isinstance(sn, tuple):
            # One key per connection, shared by every exchange recorded on it.
            self.key = ConnKey(sn[0], sn[1], pn[0], pn[1])

    def data_received(self, data: bytes) -> None:
        if self.fut is None:
            # Bytes nobody asked for: the connection's framing cannot be trusted any more.
            self._close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.keep_alive = False
            self._finish()
            return
        except httptools.HttpParserError as e:
            self._fail("bad_response", f"unparseable response: {e}")
            self._close(abort=True)
            return
        if self.head_done:
            # A HEAD answer has headers only, but llhttp would wait for Content-Length bytes:
            # end the message here and start a fresh parser for the next one.
            self.head_done = False
            self.parser = httptools.HttpResponseParser(self)
            self._finish()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.open -= 1
        self.pool.conns.discard(self)
        fut = self.fut
        if fut is None or fut.done():
            return
        if self.headers_done:
            # Read-until-close body (no Content-Length, not chunked): EOF ends the message.
            self.keep_alive = False
            self._finish()
            return
        stale = self.reused and not self.got_bytes
        if isinstance(exc, ConnectionResetError):
            self._fail("reset", "connection reset by the target", stale)
        elif self.got_bytes:
            self._fail("closed", "target closed the connection mid-response")
        else:
            self._fail("closed", "target closed the connection without answering", stale)

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        # Read status and keep-alive now: after on_message_complete llhttp has reset its flags.
        p = self.parser
        self.status = p.get_status_code()
        self.keep_alive = p.should_keep_alive()
        v = p.get_http_version()
        self.version = _VERSIONS.get(v) or "HTTP/" + v
        self.headers_done = True
        if self.is_head and self.status >= 200:
            self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200 and self.status != 101:
            interim = self.interim or []
            interim.append(Response(self.status, self.reason.decode("latin-1"), self.version,
                                    self.headers))
            self._reset_message()
            self.interim = interim
            self.got_bytes = True
            return
        if not self.head_done:
            self._finish()

    # request side
    def send(self, data: bytes, is_head: bool, timeout: float | None) -> asyncio.Future:
        fut = self.loop.create_future()
        self.fut = fut
        self.is_head = is_head
        self.head_done = False
        # _reset_message(), inline (once per request)
        self.got_bytes = False
        self.headers_done = False
        self.status = 0
        self.reason = b""
        self.headers = []
        self.body = []
        self.keep_alive = True
        self.version = "HTTP/1.1"
        self.interim = None
        self.reused = self.uses > 0
        self.uses += 1
        self.t_sent = t = time.perf_counter()
        self.wall_sent = time.time()
        # Checked by the replayer's sweeper (one timer for all connections, not one per request).
        self.deadline = t + timeout if timeout is not None else float("inf")
        tr = self.transport
        if tr is None or tr.is_closing():
            # Closed (or reset) by the target before we could write; connection_lost is queued.
            self._fail("closed", "target closed the connection before the request was sent",
                       self.reused)
            return fut
        try:
            tr.write(data)
        except Exception as e:
            self._fail("write_error", f"write failed: {e}", self.reused)
        return fut

    def on_timeout(self, timeout: float) -> None:
        self._fail("timeout", f"no complete answer within {timeout:g} s")
        self._close(abort=True)

    def _finish(self) -> None:
        fut = self.fut
        self.fut = None
        if fut is None or fut.done():
            return
        body = self.body
        resp = Response(
            self.status,
            _reason(self.reason),
            self.version,
            self.headers,
            (body[0] if len(body) == 1 else b"".join(body)) if body else b"",
        )
        interim = self.interim or []
        t_done = time.perf_counter()
        keep = self.keep_alive and not self.closed
        # Give the connection back before the waiter runs, so the next request can use it.
        if keep:
            self.pool.idle.append(self)
        else:
            self._close()
        fut.set_result((resp, interim, self.t_sent, t_done, self.wall_sent, self.key))

    def _fail(self, kind: str, message: str, stale: bool = False) -> None:
        fut = self.fut
        self.fut = None
        if fut is not None and not fut.done():
            fut.set_exception(_Fail(kind, message, stale))

    def _close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.closed:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
            self.closed = True


# ---------------------------------------------------------------------------------------------
# A pool per target


class _Pool:
    """Idle keep-alive connections to one target. Its size is bounded by the replayer's
    concurrency cap (at most that many requests are in flight), so it needs no cap of its own."""

    def __init__(self, target: Target, loop: asyncio.AbstractEventLoop, *, timeout: float | None,
                 connect_timeout: float, ssl_ctx: ssl.SSLContext | None) -> None:
        self.target = target
        self.loop = loop
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.ssl_ctx = ssl_ctx
        self.idle: deque[_Conn] = deque()
        self.conns: set[_Conn] = set()
        self.open = 0

    def get_idle(self) -> _Conn | None:
        idle = self.idle
        while idle:
            c = idle.pop()
            if not c.closed:
                return c
        return None

    def start(self, data: bytes, is_head: bool) -> Awaitable[Any]:
        """Begin a request: a future at once when an idle connection is there, else a coroutine
        that connects first."""
        c = self.get_idle()
        if c is not None:
            return c.send(data, is_head, self.timeout)
        return self.connect_and_send(data, is_head)

    async def connect(self) -> _Conn:
        t = self.target
        try:
            _, proto = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Conn(self), t.host, t.port, ssl=self.ssl_ctx,
                    server_hostname=t.host if self.ssl_ctx else None,
                ),
                self.connect_timeout,
            )
        except ConnectionRefusedError:
            raise _Fail("connect_refused", f"{t.authority}: connection refused") from None
        except TimeoutError:
            raise _Fail("connect_timeout",
                        f"{t.authority}: no connection within {self.connect_timeout:g} s") from None
        except socket.gaierror as e:
            raise _Fail("dns", f"{t.host}: cannot resolve ({e.strerror or e})") from None
        except ssl.SSLError as e:
            raise _Fail("connect_error", f"{t.authority}: TLS handshake failed ({e})") from None
        except OSError as e:
            raise _Fail("connect_error", f"{t.authority}: {e.strerror or e}") from None
        self.open += 1
        self.conns.add(proto)  # type: ignore[arg-type]
        return proto  # type: ignore[return-value]

    async def connect_and_send(self, data: bytes, is_head: bool) -> Any:
        c = await self.connect()
        return await c.send(data, is_head, self.timeout)

    def sweep(self, now: float) -> None:
        """Fail requests past their deadline (and drop their connections)."""
        if self.timeout is None:
            return
        for c in [c for c in self.conns if c.fut is not None and c.deadline < now]:
            c.on_timeout(self.timeout)

    def close(self) -> None:
        while self.idle:
            c = self.idle.pop()
            if c.transport is not None and not c.closed:
                c.transport.close()
                c.closed = True


# ---------------------------------------------------------------------------------------------
# Statistics


@dataclass(slots=True)
class TargetStats:
    """Per target: requests, answers by status, errors by kind, latencies (seconds)."""

    url: str
    sent: int = 0
    ok: int = 0
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    error_examples: dict[str, str] = field(default_factory=dict)

    def latency_summary(self) -> dict[str, float | None]:
        s = sorted(self.latencies)
        out: dict[str, float | None] = {}
        for q in (50, 90, 95, 99):
            v = percentile(s, q)
            out[f"p{q}"] = None if v is None else round(v * 1000, 3)
        out["max"] = round(s[-1] * 1000, 3) if s else None
        out["mean"] = round(sum(s) / len(s) * 1000, 3) if s else None
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "sent": self.sent,
            "answered": self.ok,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(sorted(self.errors.items())),
            "error_examples": dict(self.error_examples),
            "latency_ms": self.latency_summary(),
        }


@dataclass(slots=True)
class ReplayStats:
    """What a replay did: exchanges in, skipped (by reason), filtered, dropped (queue full),
    completed, wall time, target versus achieved rate, and per-target statistics."""

    targets: dict[str, TargetStats] = field(default_factory=dict)
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    filtered: int = 0
    dropped: int = 0
    completed: int = 0
    started: float = 0.0
    finished: float = 0.0
    target_rate: float | None = None
    pacing: str = "max"
    lateness: list[float] = field(default_factory=list)
    """Seconds each paced request left after its due time (only in paced runs)."""

    @property
    def seconds(self) -> float:
        end = self.finished or time.perf_counter()
        return max(end - self.started, 1e-9) if self.started else 0.0

    @property
    def achieved_rate(self) -> float | None:
        """Exchanges replayed per second of wall time."""
        s = self.seconds
        return self.completed / s if s > 0 and self.completed else None

    def to_dict(self) -> dict[str, Any]:
        late = sorted(self.lateness)
        return {
            "read": self.read,
            "skipped": dict(self.skipped),
            "filtered": self.filtered,
            "dropped": self.dropped,
            "replayed": self.completed,
            "seconds": round(self.seconds, 4),
            "pacing": self.pacing,
            "target_rate": None if self.target_rate is None else round(self.target_rate, 2),
            "achieved_rate": None if self.achieved_rate is None else round(self.achieved_rate, 2),
            "lateness_p95_ms": None if not late else round(percentile(late, 95) * 1000, 3),
            "targets": {u: t.to_dict() for u, t in self.targets.items()},
        }


# ---------------------------------------------------------------------------------------------
# The replayer


def _ssl_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


Prepared = list[tuple[Request, bytes]]


def _answer_of(fut: asyncio.Future) -> Any:
    """A connection's future, done: its answer tuple or the ``_Fail`` in its place."""
    if fut.cancelled():
        return _Fail("closed", "cancelled at stop")
    f = fut.exception()
    if f is None:
        return fut.result()
    return f if isinstance(f, _Fail) else _Fail("closed", str(f))


def _task_outcome(t: asyncio.Future) -> Any:
    """A slow-path task (connect, retry), done: its answer or the last ``_Fail``."""
    if t.cancelled():
        return _Fail("closed", "cancelled at stop")
    e = t.exception()
    if e is None:
        return t.result()
    return e if isinstance(e, _Fail) else _Fail("connect_error", str(e))


class Replayer:
    """Replays exchanges to every target concurrently over keep-alive pools.

    Use inside a running event loop::

        async with Replayer(["http://shadow-a:8080", "http://shadow-b:8080"]) as rp:
            results = await rp.submit(exchange)   # {url: Exchange | ReplayError}

    ``concurrency`` caps exchanges in flight (each one is a request to every target);
    ``queue_size`` bounds ``submit``/``offer``; ``on_result(ex, results)`` is called for every
    replayed exchange whichever way it came in (sinks, the comparator, metrics).
    """

    def __init__(
        self,
        targets: Sequence[str | Target],
        *,
        concurrency: int = 64,
        timeout: float | None = 10.0,
        connect_timeout: float = 5.0,
        rewrite: Rewrite | None = None,
        retries: int = 0,
        queue_size: int = 1024,
        verify_tls: bool = True,
        on_result: Callable[[Exchange, Results], Any] | None = None,
    ) -> None:
        if not targets:
            raise ValueError("at least one target")
        self.targets = [t if isinstance(t, Target) else Target.parse(t) for t in targets]
        urls = [t.url for t in self.targets]
        if len(set(urls)) != len(urls):
            raise ValueError("the same target twice")
        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.rewrite = rewrite or Rewrite()
        self.retries = max(0, int(retries))
        self.queue_size = max(1, int(queue_size))
        self.verify_tls = verify_tls
        self.on_result = on_result
        rw = self.rewrite
        self._host_first = not rw.keep_host and all(n.lower() != "host"
                                                      for n, _ in rw.set_headers)
        """Every request's first header is the target's Host (see ``prepare``)."""
        self._wire = WireBuilder(self.targets, rw)
        self.stats = ReplayStats(targets={u: TargetStats(u) for u in urls})
        self._pools: list[_Pool] = []
        self._queue: asyncio.Queue | None = None
        self._workers: list[asyncio.Task] = []
        self._sweeper: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._h2_pools: Any = None
        """The HTTP/2 connections (``replay.replayer_h2``), made at the first HTTP/2 exchange."""

    # lifecycle
    async def start(self) -> None:
        """Create the pools and the queue workers (called by ``async with``)."""
        if self._loop is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._pools = [
            _Pool(t, loop, timeout=self.timeout, connect_timeout=self.connect_timeout,
                  ssl_ctx=_ssl_context(self.verify_tls) if t.scheme == "https" else None)
            for t in self.targets
        ]
        self._queue = asyncio.Queue(self.queue_size)
        if self.timeout is not None:
            self._sweeper = asyncio.ensure_future(self._sweep(self.timeout))
        if not self.stats.started:
            self.stats.started = time.perf_counter()

    async def _sweep(self, timeout: float) -> None:
        # Timeouts fire within ~10 % of their value: one wake-up per interval for the whole
        # replayer is far cheaper than a timer armed and cancelled for every request.
        interval = min(max(timeout / 10, 0.005), 0.25)
        while True:
            await asyncio.sleep(interval)
            now = time.perf_counter()
            for p in self._pools:
                p.sweep(now)

    async def close(self) -> None:
        """Stop the queue workers (after the queue drains) and close every connection."""
        if self._queue is not None and self._workers:
            await self._queue.join()
            for w in self._workers:
                w.cancel()
            for w in self._workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await w
            self._workers = []
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for p in self._pools:
            p.close()
        if self._h2_pools is not None:
            from replay import replayer_h2

            replayer_h2.close(self)
        if not self.stats.finished:
            self.stats.finished = time.perf_counter()

    async def __aenter__(self) -> Replayer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # preparing
    def prepare(self, ex: Exchange) -> Prepared:
        """The request for each target (model + wire bytes); reusable across loops. An
        exchange that was HTTP/2 is replayed as HTTP/2 (``replay.replayer_h2``): its requests
        have version ``HTTP/2`` and no bytes."""
        r = ex.request
        if r is not None and (r.version == "HTTP/2" or "h2" in ex.meta):
            from replay import replayer_h2

            return replayer_h2.prepare(self, ex)
        out: list[tuple[Request, bytes]] = []
        first: Target | None = None
        for t in self.targets:
            if first is not None and t.base_path == first.base_path and self._host_first:
                # Only the Host line differs from the first target's (the usual shadows):
                # the request is the first one's with another first header, the bytes
                # spliced, not rebuilt.
                req0, data0 = out[0]
                hs = list(req0.headers)
                hs[0] = ("Host", t.authority)
                line = data0.index(b"\r\n") + 2
                rest = line + 8 + len(req0.headers[0][1].encode("latin-1", "replace"))
                data = (data0[:line] + b"Host: " + t.authority.encode("latin-1", "replace")
                        + b"\r\n" + data0[rest:])
                out.append((Request(req0.method, req0.target, req0.version, hs, req0.body),
                            data))
                continue
            req = rewrite_request(ex, t, self.rewrite)
            out.append((req, encode_request(req)))
            first = first or t
        return out

    # replaying
    async def send(self, ex: Exchange, prepared: Prepared | None = None, loop_no: int = 0,
                   skip: Container[int] = ()) -> Results:
        """Replay ``ex`` to every target now (no queue, no concurrency cap) and return the
        per-target results. The building block of everything else. ``skip``: indexes of
        targets not to send to this time (they are absent from the results)."""
        if self._loop is None:
            await self.start()
        if prepared is None:
            prepared = self.prepare(ex)
        if prepared[0][0].version == "HTTP/2":
            from replay import replayer_h2

            return await replayer_h2.send(self, ex, prepared, loop_no, skip)
        is_head = prepared[0][0].method == "HEAD"
        pools = self._pools
        started = time.perf_counter()
        if len(pools) == 1 and not skip:
            # The common case, kept short: one target, an idle connection, an answer.
            pool = pools[0]
            req, data = prepared[0]
            try:
                got = await pool.start(data, is_head)
            except _Fail as f:
                got = await self._after_fail(pool, data, is_head, f)
            return self._single(ex, pool, req, got, loop_no, started)
        pending: list[tuple[int, Awaitable[Any]]] = []
        for i, (pool, (_, data)) in enumerate(zip(pools, prepared, strict=True)):
            if i in skip:
                continue
            a = pool.start(data, is_head)
            # A coroutine (connect first) must run as a task, or it would only start when
            # awaited, after the earlier targets have answered.
            pending.append((i, asyncio.ensure_future(a) if isinstance(a, Coroutine) else a))
        results = {}
        for i, a in pending:
            pool = pools[i]
            url = pool.target.url
            try:
                got = await a
            except _Fail as f:
                got = await self._after_fail(pool, prepared[i][1], is_head, f)
            if isinstance(got, _Fail):
                err = ReplayError(got.kind, str(got), url, time.perf_counter() - started,
                                  loop_no)
                results[url] = err
                self._count_error(url, err)
            else:
                results[url] = self._record(ex, i, prepared[i][0], got, loop_no)
        self.stats.completed += 1
        if self.on_result is not None:
            self.on_result(ex, results)
        return results

    def dispatch(self, ex: Exchange, done: Callable[[Results], Any],
                 skip: Container[int] = ()) -> None:
        """``send`` in callback form, for the live path: the requests leave now and
        ``done(results)`` is called from the loop once every target has answered or failed.

        Why: a task and its coroutine frames per exchange cost the live shadowing more than
        the sockets do. Here an exchange whose targets have idle connections costs one future
        per target and no task; only connecting (a pool growing) and the rare retry of a
        stale connection run as tasks. Call from the loop's thread after ``start()``."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("Replayer.dispatch before start()")
        prepared = self.prepare(ex)
        if prepared[0][0].version == "HTTP/2":  # a task: HTTP/2 is not the common case
            t = loop.create_task(self.send(ex, prepared, 0, skip))
            t.add_done_callback(lambda t: done(t.result() if not t.cancelled()
                                               and t.exception() is None else {}))
            return
        is_head = prepared[0][0].method == "HEAD"
        started = time.perf_counter()
        results: Results = {}
        pools = self._pools
        todo = [i for i in range(len(pools)) if i not in skip]
        left = [len(todo)]
        if not todo:
            done(results)
            return

        def landed(i: int, got: Any) -> None:
            pool = pools[i]
            url = pool.target.url
            if isinstance(got, _Fail):
                err = ReplayError(got.kind, str(got), url, time.perf_counter() - started)
                results[url] = err
                self._count_error(url, err)
            else:
                results[url] = self._record(ex, i, prepared[i][0], got, 0)
            left[0] -= 1
            if left[0] == 0:
                self.stats.completed += 1
                if self.on_result is not None:
                    self.on_result(ex, results)
                done(results)

        def answered(i: int, fut: asyncio.Future) -> None:
            got = _answer_of(fut)
            if isinstance(got, _Fail) and (got.stale or self.retries):
                t = loop.create_task(self._after_fail(pools[i], prepared[i][1], is_head, got))
                t.add_done_callback(lambda t, i=i: landed(i, _task_outcome(t)))
            else:
                landed(i, got)

        for i in todo:
            pool = pools[i]
            data = prepared[i][1]
            c = pool.get_idle()
            if c is not None:
                c.send(data, is_head, self.timeout).add_done_callback(
                    lambda f, i=i: answered(i, f))
            else:
                t = loop.create_task(self._connect_send(pool, data, is_head))
                t.add_done_callback(lambda t, i=i: landed(i, _task_outcome(t)))

    def wire(self, ex: Exchange) -> list[bytes] | None:
        """The bytes ``prepare`` would give for each target, without the request models; None
        when ``prepare`` must be used (HTTP/2, a Host kept or set by the rewrite, no request)."""
        r = ex.request
        if r is None or not self._wire.ok or r.version == "HTTP/2" or "h2" in ex.meta:
            return None
        return self._wire.build(r)

    def dispatch_lean(self, ex: Exchange, done: Callable[[list[Any]], Any],
                      skip: Container[int] = ()) -> None:
        """``dispatch`` for a caller that needs each target's answer and latency only (the live
        shadowing): ``done(outs)`` with, per target index, ``(response, latency_ms)`` (the
        ``meta['latency_ms']`` of the ``Exchange`` that ``dispatch`` would record), the
        ``ReplayError``, or None for a skipped target. Same requests, retries, errors and
        statistics as ``dispatch``; what it saves is the recorded ``Exchange`` (id, meta,
        completeness) and the request models of every answer. With an ``on_result`` (which
        gets the full results) or when ``wire`` declines, it is ``dispatch`` underneath."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("Replayer.dispatch before start()")
        datas = self.wire(ex) if self.on_result is None else None
        if datas is None:
            self.dispatch(ex, lambda res: done(self.lean_outs(res)), skip)
            return
        is_head = ex.request.method == "HEAD"  # type: ignore[union-attr]
        started = time.perf_counter()
        pools = self._pools
        n = len(pools)
        outs: list[Any] = [None] * n
        todo = [i for i in range(n) if i not in skip] if skip else range(n)
        left = [len(todo)]
        if not todo:
            done(outs)
            return

        def landed(i: int, got: Any) -> None:
            url = pools[i].target.url
            if isinstance(got, _Fail):
                err = ReplayError(got.kind, str(got), url, time.perf_counter() - started)
                outs[i] = err
                self._count_error(url, err)
            else:  # ``_record``'s statistics, without the record
                resp = got[0]
                outs[i] = (resp, round(self._count_answer(url, resp, got[3] - got[2]) * 1000, 3))
            left[0] -= 1
            if left[0] == 0:
                self.stats.completed += 1
                done(outs)

        def answered(i: int, fut: asyncio.Future) -> None:
            got = _answer_of(fut)
            if isinstance(got, _Fail) and (got.stale or self.retries):
                t = loop.create_task(self._after_fail(pools[i], datas[i], is_head, got))
                t.add_done_callback(lambda t, i=i: landed(i, _task_outcome(t)))
            else:
                landed(i, got)

        timeout = self.timeout
        for i in todo:
            pool = pools[i]
            c = pool.get_idle()
            if c is not None:
                c.send(datas[i], is_head, timeout).add_done_callback(
                    lambda f, i=i: answered(i, f))
            else:
                t = loop.create_task(self._connect_send(pool, datas[i], is_head))
                t.add_done_callback(lambda t, i=i: landed(i, _task_outcome(t)))

    def lean_outs(self, results: Results) -> list[Any]:
        """``dispatch``'s results in ``dispatch_lean``'s form (per target index)."""
        out: list[Any] = []
        for t in self.targets:
            r = results.get(t.url)
            if isinstance(r, Exchange) and r.response is not None:
                out.append((r.response, r.meta.get("latency_ms")))
            else:
                out.append(r)
        return out

    async def _connect_send(self, pool: _Pool, data: bytes, is_head: bool) -> Any:
        """A fresh connection, the request, and the retries a failure earns; the answer or
        the last ``_Fail`` (never raised)."""
        try:
            return await pool.connect_and_send(data, is_head)
        except _Fail as f:
            return await self._retry(pool, data, is_head, f)

    def _single(self, ex: Exchange, pool: _Pool, req: Request, got: Any, loop_no: int,
                started: float) -> Results:
        """Results of a one-target replay (shared by ``send`` and ``run``'s fast loop)."""
        url = pool.target.url
        if isinstance(got, _Fail):
            out: Outcome = ReplayError(got.kind, str(got), url, time.perf_counter() - started,
                                       loop_no)
            self._count_error(url, out)
        else:
            out = self._record(ex, 0, req, got, loop_no)
        results: Results = {url: out}
        self.stats.completed += 1
        if self.on_result is not None:
            self.on_result(ex, results)
        return results

    async def _after_fail(self, pool: _Pool, data: bytes, is_head: bool, f: _Fail) -> Any:
        """A stale pooled connection gets one fresh try; anything else the configured retries.
        Returns the answer, or the last ``_Fail``."""
        if f.stale:
            try:
                return await pool.connect_and_send(data, is_head)
            except _Fail as e:
                f = e
        return await self._retry(pool, data, is_head, f)

    async def _retry(self, pool: _Pool, data: bytes, is_head: bool, f: _Fail) -> Any:
        last: _Fail = f
        for _ in range(self.retries):
            try:
                return await pool.connect_and_send(data, is_head)
            except _Fail as e:
                last = e
        return last

    def _count_error(self, url: str, err: ReplayError) -> None:
        ts = self.stats.targets[url]
        ts.sent += 1
        ts.errors[err.kind] += 1
        ts.error_examples.setdefault(err.kind, err.message)

    def _count_answer(self, url: str, resp: Response, lat: float) -> float:
        """One answer in the target's statistics; returns ``lat`` (seconds)."""
        ts = self.stats.targets[url]
        ts.sent += 1
        ts.ok += 1
        ts.statuses[resp.status] += 1
        ts.latencies.append(lat)
        return lat

    def _record(self, ex: Exchange, i: int, req: Request, got: Any, loop_no: int) -> Exchange:
        resp, interim, t_sent, t_done, wall_sent, key = got
        url = self.targets[i].url
        lat = self._count_answer(url, resp, t_done - t_sent)
        rid = f"{ex.id}@{i}" if loop_no == 0 else f"{ex.id}@{i}.{loop_no}"
        # Positional: this runs once per answer, and keyword passing costs a third of it.
        # Order: id, conn, request, response, interim, ts_request_start, ts_request_end,
        # ts_response_start, ts_response_end, completeness, tunnel, meta.
        return Exchange(rid, key, req, resp, interim, wall_sent, wall_sent, None, wall_sent + lat,
                        Completeness(), None,
                        {"original_id": ex.id, "target": url, "loop": loop_no,
                         "latency_ms": round(lat * 1000, 3)})

    # queue (live replay)
    def _ensure_workers(self) -> None:
        if not self._workers:
            assert self._queue is not None
            self._workers = [asyncio.ensure_future(self._worker())
                             for _ in range(self.concurrency)]

    async def _worker(self) -> None:
        q = self._queue
        assert q is not None
        while True:
            ex, fut = await q.get()
            try:
                res = await self.send(ex)
                if fut is not None and not fut.done():
                    fut.set_result(res)
            except Exception as e:  # never let one exchange kill a worker
                if fut is not None and not fut.done():
                    fut.set_exception(e)
            finally:
                q.task_done()

    async def submit(self, ex: Exchange) -> Results:
        """Queue ``ex`` (waiting while the queue is full) and return its results when done."""
        if self._loop is None:
            await self.start()
        self._ensure_workers()
        assert self._queue is not None and self._loop is not None
        fut = self._loop.create_future()
        await self._queue.put((ex, fut))
        return await fut

    def offer(self, ex: Exchange) -> bool:
        """Queue ``ex`` without waiting; False (and counted as dropped) when the queue is full.
        Results reach ``on_result``. Call from the event loop's thread."""
        if self._queue is None:
            raise RuntimeError("Replayer.offer before start(): use 'async with Replayer(...)'")
        self._ensure_workers()
        try:
            self._queue.put_nowait((ex, None))
        except asyncio.QueueFull:
            self.stats.dropped += 1
            return False
        return True

    async def drain(self) -> None:
        """Wait until everything queued so far has been replayed."""
        if self._queue is not None:
            await self._queue.join()

    # batch (files)
    async def run(self, items: Sequence[Exchange], schedule: Schedule,
                  sink: Callable[[Exchange, Results], Any] | None = None) -> ReplayStats:
        """Replay ``items`` (``schedule.loops`` times) paced by ``schedule``; ``sink`` gets each
        exchange's results as they arrive. ``concurrency`` workers each take the next item, wait
        until it is due, send it and wait for every target: when all workers are busy, requests
        leave late, which ``stats.lateness`` shows."""
        await self.start()
        loop = asyncio.get_running_loop()
        st = self.stats
        st.pacing = schedule.pacing.describe()
        st.target_rate = schedule.target_rate
        prepared = [self.prepare(ex) for ex in items]
        n = len(items)
        total = schedule.total if n else 0
        counter = iter(range(total))
        paced = not schedule.pacing.is_max
        t0 = loop.time()
        st.started = time.perf_counter()
        lateness = st.lateness
        send = self.send

        if len(self._pools) == 1 and not any(p[0][0].version == "HTTP/2" for p in prepared):
            # One target: the same steps as ``send``, without a coroutine per request.
            pool = self._pools[0]
            start, single, after_fail = pool.start, self._single, self._after_fail
            heads = [p[0][0].method == "HEAD" for p in prepared]

            async def worker() -> None:
                for i in counter:
                    j = i % n
                    if paced:
                        due = t0 + schedule.due(i)  # type: ignore[operator]
                        delay = due - loop.time()
                        if delay > 0.0005:
                            await asyncio.sleep(delay)
                        lateness.append(max(0.0, loop.time() - due))
                    ex = items[j]
                    req, data = prepared[j][0]
                    started = time.perf_counter()
                    try:
                        got = await start(data, heads[j])
                    except _Fail as f:
                        got = await after_fail(pool, data, heads[j], f)
                    res = single(ex, pool, req, got, i // n, started)
                    if sink is not None:
                        sink(ex, res)

            await asyncio.gather(*(worker() for _ in range(min(self.concurrency,
                                                                 max(total, 1)))))
            st.finished = time.perf_counter()
            return st

        async def worker() -> None:
            for i in counter:
                j = i % n
                if paced:
                    due = t0 + schedule.due(i)  # type: ignore[operator]
                    delay = due - loop.time()
                    if delay > 0.0005:
                        await asyncio.sleep(delay)
                    lateness.append(max(0.0, loop.time() - due))
                ex = items[j]
                res = await send(ex, prepared[j], i // n)
                if sink is not None:
                    sink(ex, res)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, max(total, 1)))))
        st.finished = time.perf_counter()
        return st


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on uvloop when it is installed (2.5× the default loop here), else
    asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep working without
        return asyncio.run(coro)
    return uvloop.run(coro)
