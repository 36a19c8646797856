"""Replay over HTTP/2: the ``Replayer``'s path for exchanges captured as HTTP/2 (and gRPC).

An exchange is replayed as HTTP/2 when it was one (``Request.version`` ``HTTP/2``, or any
exchange ``replay.h2`` read: ``meta["h2"]``, which includes stream 1 of an ``Upgrade: h2c``
connection). Each target gets one multiplexed connection at a time (more when the server's
SETTINGS_MAX_CONCURRENT_STREAMS is reached): h2c with prior knowledge for ``http://`` targets,
TLS with ALPN ``h2`` for ``https://`` ones. The client side is the ``h2`` package's endpoint
(``h2.connection.H2Connection``) over an asyncio protocol; flow control is honoured both ways
(request bodies wait for WINDOW_UPDATE, received data is acknowledged at once).

The results are what the HTTP/1 path records (``Replayer._record``): the request as sent
(version ``HTTP/2``, ``:authority``/``:scheme`` at the front of its headers, as ``replay.h2``
records them), the response with its trailers (gRPC's grpc-status), interim responses, errors
as ``ReplayError`` kinds (``connect_*``, ``timeout``, ``reset`` for RST_STREAM, ``closed`` for
GOAWAY or a lost connection, ``bad_response`` for a protocol error or a server without h2).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Container
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from replay.model import ConnKey, Exchange, Request, Response
from replay.rewrite import Target, rewrite_request

CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection",
                                 "transfer-encoding", "upgrade", "http2-settings", "host"})


def h2_request(ex: Exchange, t: Target, rw: Any) -> Request:
    """``ex.request`` as it will be sent to ``t`` over HTTP/2: the HTTP/1 rewrite (path
    substitutions, base path, header rules), then pseudo-headers first, names lower-cased,
    connection-specific fields dropped (RFC 9113 §8.2.2; ``te: trailers`` kept, gRPC needs it)."""
    r = ex.request
    assert r is not None
    base = rewrite_request(ex, t, rw)
    authority = t.authority
    if rw.keep_host and r.host:
        authority = r.host
    hs: list[tuple[str, str]] = [(":authority", authority), (":scheme", t.scheme)]
    for k, v in base.headers:
        lk = k.lower()
        if lk in CONNECTION_SPECIFIC or lk.startswith(":"):
            if lk == "host" and any(n.lower() == "host" for n, _ in rw.set_headers):
                hs[0] = (":authority", v)
            continue
        hs.append((lk, v))
    for k, v in r.headers:
        if k.lower() == "te" and v.strip().lower() == "trailers":
            hs.append(("te", "trailers"))
            break
    return Request(r.method, base.target, "HTTP/2", hs, base.body, list(r.trailers))


class Fail(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Stream:
    __slots__ = (
        "body",
        "end_sent",
        "fut",
        "headers",
        "interim",
        "pending",
        "req_trailers",
        "status",
        "t_sent",
        "trailers",
        "wall_sent",
    )

    def __init__(self, fut: asyncio.Future, body: bytes, trailers: list[tuple[str, str]]
                 ) -> None:
        self.fut = fut
        self.pending = body
        self.req_trailers = trailers
        self.end_sent = False
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.interim: list[Response] = []
        self.body: list[bytes] = []
        self.trailers: list[tuple[str, str]] = []
        self.t_sent = 0.0
        self.wall_sent = 0.0


def _text(v: Any) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v


class _Conn(asyncio.Protocol):
    """One HTTP/2 connection to a target, multiplexing requests."""

    def __init__(self, pool: H2Pool) -> None:
        self.pool = pool
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=False))
        self.streams: dict[int, _Stream] = {}
        self.transport: Any = None
        self.closed = False
        self.key: ConnKey | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        try:
            lip, lport = sock.getsockname()[:2]
            rip, rport = sock.getpeername()[:2]
            self.key = ConnKey(lip, lport, rip, rport)
        except (OSError, AttributeError, ValueError):
            self.key = None
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.ENABLE_PUSH: 0,
                                         h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window((1 << 24) - 65535)
        self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    @property
    def capacity(self) -> int:
        if self.closed:
            return 0
        limit = self.h2.remote_settings.max_concurrent_streams or 100
        return limit - self.h2.open_outbound_streams

    def request(self, req: Request) -> asyncio.Future:
        fut = self.pool.loop.create_future()
        sid = self.h2.get_next_available_stream_id()
        headers = [(":method", req.method), *[(k, v) for k, v in req.headers
                                               if k in (":authority", ":scheme")],
                   (":path", req.target)]
        headers += [(k, v) for k, v in req.headers if not k.startswith(":")]
        st = _Stream(fut, req.body, req.trailers)
        self.streams[sid] = st
        st.t_sent = time.perf_counter()
        st.wall_sent = time.time()
        enc = [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers]
        end = not req.body and not req.trailers
        self.h2.send_headers(sid, enc, end_stream=end)
        st.end_sent = end
        self._pump(sid, st)
        self._flush()
        return fut

    def _pump(self, sid: int, st: _Stream) -> None:
        """Send as much of the request body as the flow-control windows allow."""
        while st.pending:
            window = min(self.h2.local_flow_control_window(sid),
                         self.h2.max_outbound_frame_size)
            if window <= 0:
                return
            chunk, st.pending = st.pending[:window], st.pending[window:]
            last = not st.pending and not st.req_trailers
            self.h2.send_data(sid, chunk, end_stream=last)
            st.end_sent = last
        if not st.end_sent:
            if st.req_trailers:
                self.h2.send_headers(sid, [(k.lower().encode("latin-1"),
                                            v.encode("latin-1", "replace"))
                                           for k, v in st.req_trailers], end_stream=True)
            else:
                self.h2.end_stream(sid)
            st.end_sent = True

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._fail_all("bad_response", f"HTTP/2 protocol error: {e}")
            return
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            st = self.streams.get(sid) if sid is not None else None
            if isinstance(ev, h2.events.ResponseReceived) and st is not None:
                hs = [(_text(k), _text(v)) for k, v in ev.headers]
                st.status = int(next((v for k, v in hs if k == ":status"), "0"))
                st.headers = [(k, v) for k, v in hs if not k.startswith(":")]
            elif isinstance(ev, h2.events.InformationalResponseReceived) and st is not None:
                hs = [(_text(k), _text(v)) for k, v in ev.headers]
                code = int(next((v for k, v in hs if k == ":status"), "100"))
                st.interim.append(Response(code, "", "HTTP/2",
                                           [(k, v) for k, v in hs if not k.startswith(":")]))
            elif isinstance(ev, h2.events.DataReceived):
                if st is not None:
                    st.body.append(ev.data)
                if ev.flow_controlled_length:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived) and st is not None:
                st.trailers = [(_text(k), _text(v)) for k, v in ev.headers]
            elif isinstance(ev, h2.events.StreamEnded) and st is not None:
                self._done(sid, st)
            elif isinstance(ev, h2.events.StreamReset) and st is not None:
                self.streams.pop(sid, None)
                if not st.fut.done():
                    st.fut.set_exception(Fail("reset", f"stream reset by the server "
                                                       f"({ev.error_code!r})"))
            elif isinstance(ev, h2.events.WindowUpdated):
                for s_id, s in list(self.streams.items()):
                    if s.pending or not s.end_sent:
                        try:
                            self._pump(s_id, s)
                        except h2.exceptions.StreamClosedError:
                            pass
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True
                last = ev.last_stream_id or 0
                for s_id in [s for s in self.streams if s > last]:
                    s = self.streams.pop(s_id)
                    if not s.fut.done():
                        s.fut.set_exception(Fail("closed", f"GOAWAY ({ev.error_code!r})"))
        self._flush()

    def _done(self, sid: int, st: _Stream) -> None:
        self.streams.pop(sid, None)
        if st.fut.done():
            return
        resp = Response(st.status, "", "HTTP/2", st.headers, b"".join(st.body), st.trailers)
        t_done = time.perf_counter()
        st.fut.set_result((resp, st.interim, st.t_sent, t_done, st.wall_sent, self.key))

    def _fail_all(self, kind: str, msg: str) -> None:
        self.closed = True
        for st in self.streams.values():
            if not st.fut.done():
                st.fut.set_exception(Fail(kind, msg))
        self.streams.clear()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.conns.discard(self)
        for st in self.streams.values():
            if not st.fut.done():
                st.fut.set_exception(Fail("reset" if exc else "closed",
                                          f"connection lost ({exc or 'closed by the server'})"))
        self.streams.clear()


class H2Pool:
    """The HTTP/2 connections to one target."""

    def __init__(self, target: Target, loop: asyncio.AbstractEventLoop, *,
                 connect_timeout: float, verify_tls: bool) -> None:
        self.target = target
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.ssl_ctx: ssl.SSLContext | None = None
        if target.scheme == "https":
            ctx = ssl.create_default_context()
            if not verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            self.ssl_ctx = ctx
        self.conns: set[_Conn] = set()
        self._connecting: asyncio.Future | None = None

    async def conn(self) -> _Conn:
        for c in self.conns:
            if c.capacity > 0:
                return c
        if self._connecting is not None:
            c = await asyncio.shield(self._connecting)
            if c.capacity > 0:
                return c
        fut = self._connecting = self.loop.create_future()
        try:
            c = await self._connect()
        except Fail as f:
            fut.set_exception(f)
            fut.exception()  # retrieved: others waiting get it through shield
            self._connecting = None
            raise
        fut.set_result(c)
        self._connecting = None
        return c

    async def _connect(self) -> _Conn:
        t = self.target
        try:
            transport, proto = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Conn(self), t.host, t.port,
                                            ssl=self.ssl_ctx,
                                            server_hostname=t.host if self.ssl_ctx else None),
                self.connect_timeout)
        except ConnectionRefusedError:
            raise Fail("connect_refused", f"{t.authority}: connection refused") from None
        except TimeoutError:
            raise Fail("connect_timeout", f"{t.authority}: no connection within "
                                          f"{self.connect_timeout:g} s") from None
        except ssl.SSLError as e:
            raise Fail("connect_error", f"{t.authority}: TLS handshake failed ({e})") from None
        except OSError as e:
            raise Fail("connect_error", f"{t.authority}: {e.strerror or e}") from None
        if self.ssl_ctx is not None:
            sslobj = transport.get_extra_info("ssl_object")
            alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
            if alpn != "h2":
                transport.close()
                raise Fail("bad_response", f"{t.authority}: the server does not speak HTTP/2 "
                                           f"(ALPN {alpn or 'none'})")
        self.conns.add(proto)  # type: ignore[arg-type]
        return proto  # type: ignore[return-value]

    async def send(self, req: Request, timeout: float | None) -> Any:
        c = await self.conn()
        fut = c.request(req)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise Fail("timeout", f"{self.target.authority}: no answer within {timeout:g} s"
                       ) from None

    def close(self) -> None:
        for c in list(self.conns):
            c.closed = True
            if c.transport is not None:
                c.transport.close()
        self.conns.clear()


def prepare(rp: Any, ex: Exchange) -> list[tuple[Request, bytes]]:
    """``Replayer.prepare`` for an HTTP/2 exchange: the request per target (no wire bytes:
    the HPACK encoding is the connection's)."""
    return [(h2_request(ex, t, rp.rewrite), b"") for t in rp.targets]


async def send(rp: Any, ex: Exchange, prepared: list[tuple[Request, bytes]], loop_no: int,
               skip: Container[int] = ()) -> dict[str, Any]:
    """``Replayer.send`` for an HTTP/2 exchange: every target at once."""
    from replay.replayer import ReplayError

    loop = asyncio.get_running_loop()
    pools: list[H2Pool] | None = rp._h2_pools
    if pools is None:
        pools = rp._h2_pools = [H2Pool(t, loop, connect_timeout=rp.connect_timeout,
                                       verify_tls=rp.verify_tls) for t in rp.targets]
    started = time.perf_counter()
    todo = [i for i in range(len(pools)) if i not in skip]
    outs = await asyncio.gather(*(pools[i].send(prepared[i][0], rp.timeout) for i in todo),
                                return_exceptions=True)
    results: dict[str, Any] = {}
    for i, got in zip(todo, outs, strict=True):
        url = rp.targets[i].url
        if isinstance(got, BaseException):
            kind = got.kind if isinstance(got, Fail) else "closed"
            err = ReplayError(kind, str(got), url, time.perf_counter() - started, loop_no)
            results[url] = err
            rp._count_error(url, err)
        else:
            results[url] = rp._record(ex, i, prepared[i][0], got, loop_no)
    rp.stats.completed += 1
    if rp.on_result is not None:
        rp.on_result(ex, results)
    return results


def close(rp: Any) -> None:
    for p in rp._h2_pools or ():
        p.close()
    rp._h2_pools = None
