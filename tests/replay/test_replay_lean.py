"""The live shadowing's lean replay path (``Replayer.wire`` / ``dispatch_lean``) pinned to the
definition (``prepare`` / ``dispatch``): the same bytes on the wire, the same answers, errors,
retries and statistics, for every way an answer can be framed or fail."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import threading
from typing import Any

import pytest
from replay_servers import dead_url

from replay.model import Exchange, Request
from replay.replayer import Replayer, ReplayError, run_async
from replay.rewrite import Rewrite, Target, WireBuilder, encode_request, rewrite_request


def _ex(i: int, method: str = "GET", target: str = "/x", body: bytes = b"",
        headers: list | None = None) -> Exchange:
    h = headers if headers is not None else [("Host", "prod.example.com"), ("Accept", "*/*")]
    return Exchange(id=f"c{i}.1", request=Request(method, target, "HTTP/1.1", h, body))


REWRITES = [
    Rewrite(),
    Rewrite.build(set_headers=["X-Shadow: 1", "Accept: text/plain"],
                  remove_headers=["User-Agent"]),
    Rewrite.build(path_subs=["^/api=>/v2", "x$=>"]),
    Rewrite(keep_host=True),
    Rewrite.build(set_headers=["Host: pinned.example"]),
]
TARGETS = [
    ["http://127.0.0.1:1", "http://10.1.2.3:8080"],
    ["http://127.0.0.1:1", "http://h:9/base", "https://[::1]:8443/b/"],
    ["http://h:9/base", "http://g:8/base"],
    ["https://shadow.example"],
]


def _requests(n: int) -> list[Exchange]:
    rnd = random.Random(7)
    names = ["Host", "HOST", "User-Agent", "Accept", "Connection", "Keep-Alive", "TE",
             "Transfer-Encoding", "Upgrade", "Content-Length", "Expect", "Trailer", "X-\u20ac",
             "Cookie", "Proxy-Connection", "x-shadow", "accept"]
    values = ["a", "", "\u20ac uro", "ü-agent", "keep-alive, Upgrade", "100-continue", "1 2  3"]
    targets = ["/x", "/api/v1/u?q=1", "*", "http://prod.example.com/api/p", "http://h", "",
               "/x%20y#f", "/api"]
    methods = ["GET", "POST", "put", "PATCH", "HEAD", "OPTIONS", "DELETE"]
    out = []
    for i in range(n):
        hs = [(rnd.choice(names), rnd.choice(values)) for _ in range(rnd.randint(0, 7))]
        body = rnd.choice([b"", b"", b'{"a": 1}', bytes(range(256))])
        out.append(_ex(i, rnd.choice(methods), rnd.choice(targets), body, hs))
    return out


@pytest.mark.parametrize("rw", REWRITES)
@pytest.mark.parametrize("urls", TARGETS)
def test_wire_is_prepare_byte_for_byte(rw: Rewrite, urls: list[str]) -> None:
    rp = Replayer(urls, rewrite=rw)
    targets = [Target.parse(u) for u in urls]
    wb = WireBuilder(targets, rw)
    for ex in _requests(300):
        want = [d for _, d in rp.prepare(ex)]
        assert want == [encode_request(rewrite_request(ex, t, rw)) for t in targets]
        got = rp.wire(ex)
        if rw.keep_host or any(n.lower() == "host" for n, _ in rw.set_headers):
            assert got is None and not wb.ok  # prepare is used for these
        else:
            assert got == want, ex.request
    h2 = _ex(0)
    h2.request.version = "HTTP/2"  # type: ignore[union-attr]
    assert rp.wire(h2) is None
    assert rp.wire(Exchange(id="n")) is None


# ---------------------------------------------------------------------------------------------
# A raw server: every framing an answer can have, and the bytes each request arrived as


class RawServer:
    """Answers by path: ``/ok`` (Content-Length), ``/chunked``, ``/close`` (read until close),
    ``/early`` (a 103, then the answer), ``/slow`` (never), ``/garbage``; a HEAD gets headers
    only. ``stale``: the second request on every connection is met by a close (a pooled
    connection the server had timed out)."""

    def __init__(self, stale: bool = False) -> None:
        self.stale = stale
        self.raw: list[bytes] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.raw.append(head + body)
                n += 1
                if self.stale and n == 2:
                    break
                method, path = head.split(b" ", 2)[:2]
                path = path.split(b"?")[0]
                if path == b"/slow":
                    await asyncio.sleep(30)
                    break
                if path == b"/garbage":
                    writer.write(b"SSH-2.0-OpenSSH_9.2 not http\r\n\r\n")
                    break
                if path == b"/close":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                                 b"until the end")
                    break
                if path == b"/chunked":
                    writer.write(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
                                 b"X-A: 1\r\n\r\n" + (b"" if method == b"HEAD" else
                                                      b"2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n"))
                    await writer.drain()
                    continue
                if path == b"/early":
                    writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
                body = b'{"ok": true}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                             + (b"" if method == b"HEAD" else body))
                await writer.drain()
        writer.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        server.close()
        loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RawServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _items() -> list[Exchange]:
    paths = ["/ok", "/ok?a=1", "/chunked", "/early", "/ok", "/close", "/ok", "/slow", "/garbage",
             "/ok", "/chunked"]
    items = [_ex(i, target=p) for i, p in enumerate(paths)]
    items += [_ex(20, "HEAD", "/ok"), _ex(21, "HEAD", "/chunked"), _ex(22, "POST", "/ok", b"xy"),
              _ex(23, "GET", "/ok")]
    return items


def _replay(urls: list[str], lean: bool, items: list[Exchange], skips: dict[str, tuple]
            ) -> tuple[list[Any], dict[str, Any]]:
    async def go() -> tuple[list[Any], dict[str, Any]]:
        got: list[Any] = []
        async with Replayer(urls, timeout=0.3, connect_timeout=1.0) as rp:
            for ex in items:  # one at a time: the same connection reuse both ways
                fut = asyncio.get_running_loop().create_future()
                skip = skips.get(ex.id, ())
                if lean:
                    rp.dispatch_lean(ex, fut.set_result, skip)
                    got.append(await fut)
                else:
                    rp.dispatch(ex, fut.set_result, skip)
                    got.append(rp.lean_outs(await fut))
            st = rp.stats
        stats = {u: (t.sent, t.ok, dict(t.statuses), dict(t.errors), dict(t.error_examples),
                     len(t.latencies)) for u, t in st.targets.items()}
        return got, {"completed": st.completed, "targets": stats}

    return run_async(go())


def _plain(outs: list[Any]) -> list[Any]:
    """Latencies and error timings vary from run to run: everything else must not."""
    out = []
    for o in outs:
        if isinstance(o, tuple):
            assert isinstance(o[1], float) and o[1] >= 0
            out.append(("answer", o[0]))
        elif isinstance(o, ReplayError):
            out.append(("error", o.kind, o.message, o.target, o.loop))
        else:
            out.append(o)
    return out


def test_dispatch_lean_is_dispatch_on_the_wire_and_in_the_results() -> None:
    """Keep-alive reuse, chunked, 1xx, close-delimited, HEAD (with a Content-Length and with
    chunked), a timeout, garbage, a stale pooled connection retried, a dead target, a skipped
    target: what each target received and what each side reports, identical."""
    items = _items()
    skips = {"c4.1": (1,), "c9.1": (0, 1, 2, 3)}
    runs = []
    for lean in (False, True):
        with RawServer() as a, RawServer(stale=True) as b:
            dead = dead_url()
            urls = [a.url, b.url, dead, a.url + "/"]
            outs, stats = _replay(urls, lean, items, skips)
            runs.append((outs, stats, list(a.raw), list(b.raw), urls))
    (o0, s0, a0, b0, u0), (o1, s1, a1, b1, u1) = runs
    port = {u0[0]: "A", u0[1]: "B", u0[2]: "D", u0[3]: "A/"}
    port1 = {u1[0]: "A", u1[1]: "B", u1[2]: "D", u1[3]: "A/"}

    def norm(raw: list[bytes], urls: list[str]) -> list[bytes]:
        out = []
        for r in raw:
            for u in urls:
                r = r.replace(u.split("//")[1].rstrip("/").encode(), b"HOST")
            out.append(r)
        return out

    assert norm(a0, u0) == norm(a1, u1) and norm(b0, u0) == norm(b1, u1)
    assert len(b0) > len([i for i in items if i.id not in skips])  # stale retries happened

    def plain(outs: list[list[Any]], urls: list[str], names: dict[str, str]) -> list[Any]:
        res = []
        for o in outs:
            p = _plain(o)
            res.append([(x[0], x[1], x[2].replace(urls[2].split("//")[1], "DEAD"),
                         names[x[3]], x[4]) if isinstance(x, tuple) and x[0] == "error" else x
                        for x in p])
        return res

    assert plain(o0, u0, port) == plain(o1, u1, port1)
    kinds = {x[1] for o in plain(o1, u1, port1) for x in o
             if isinstance(x, tuple) and x[0] == "error"}
    assert {"timeout", "bad_response", "connect_refused"} <= kinds
    answers = [x[0] for o in o1 for x in o if isinstance(x, tuple)]
    assert any(r.body == b"ok!!!" for r in answers)  # chunked
    assert any(r.body == b"until the end" for r in answers)  # read until close
    assert all(o[0] is None and o[3] is None for o, ex in zip(o1, items, strict=True)
               if ex.id == "c9.1")

    def st(s: dict[str, Any], urls: list[str], names: dict[str, str]) -> Any:
        return (s["completed"], {names[u]: (*v[:4], {k: e.replace(urls[2].split("//")[1], "DEAD")
                                                      for k, e in v[4].items()}, v[5])
                                 for u, v in s["targets"].items()})

    assert st(s0, u0, port) == st(s1, u1, port1)


def test_dispatch_lean_with_on_result_or_http2_is_dispatch() -> None:
    """``on_result`` wants the full results: the lean path then runs ``dispatch`` underneath
    and still hands over the lean form."""
    with RawServer() as a:
        seen: list[Any] = []

        async def go() -> list[Any]:
            async with Replayer([a.url], on_result=lambda ex, res: seen.append(res)) as rp:
                fut = asyncio.get_running_loop().create_future()
                rp.dispatch_lean(_ex(1, target="/ok"), fut.set_result)
                return await fut

        outs = run_async(go())
    assert len(seen) == 1 and isinstance(seen[0][a.url], Exchange)
    resp, ms = outs[0]
    assert resp == seen[0][a.url].response and ms == seen[0][a.url].meta["latency_ms"]


def test_the_shadowers_endpoint_is_endpoint_of_the_whole_target() -> None:
    """``Shadower._judge`` hands ``endpoint_of`` the target without its query (a cache hit
    for every query string of a path): the endpoint must be the one of the whole target."""
    from replay.compare import endpoint_of

    rnd = random.Random(3)
    parts = ["", "a", "12", "x?y", "#f", "?", "users", "7f3a9c2e", "http:", "/", "a#b?c",
             "q=http://h/p", "2024-01-02"]
    for _ in range(3000):
        t = "/" + "/".join(rnd.choice(parts) for _ in range(rnd.randint(0, 5)))
        if rnd.random() < 0.5:
            t += "?" + "&".join(rnd.choice(parts) for _ in range(rnd.randint(0, 3)))
        if "://" not in t:
            assert endpoint_of("GET", t.split("?", 1)[0].split("#", 1)[0]) == \
                endpoint_of("GET", t), t


def test_the_shadower_judges_the_same_through_the_lean_path() -> None:
    """A ``Shadower`` whose replayer has an ``on_result`` goes through ``dispatch`` (the
    definition); without, through ``dispatch_lean``: health, failures by kind, what was not
    sent to a down shadow, replay statistics, the comparison and the latency counts agree."""
    from appliance.live.shadowing import Shadower, ShadowingConfig, ShadowTarget, run_loop
    from replay.model import ConnKey, Response

    paths = ["/ok", "/chunked", "/early", "/close", "/ok?b=2", "/garbage", "/ok", "/slow"]
    items = []
    for i in range(40):
        p = paths[i % len(paths)]
        items.append(Exchange(
            f"c{i % 7}.{i}", ConnKey("10.0.0.1", 1000 + i % 7, "10.0.0.2", 80),
            Request("GET", p, "HTTP/1.1", [("Host", "prod")], b""),
            Response(200, "OK", "HTTP/1.1", [("Content-Type", "application/json")],
                     b'{"ok": true}'), ts_request_end=1.0, ts_response_end=1.002))

    def run(full: bool) -> dict[str, Any]:
        with RawServer() as a, RawServer(stale=True) as b:
            dead = dead_url()

            async def main() -> dict[str, Any]:
                cfg = ShadowingConfig(candidate=ShadowTarget("c", a.url, "candidate"),
                                      secondary=ShadowTarget("s", b.url, "secondary"),
                                      concurrency=4, timeout=0.3, down_after=2)
                sh = Shadower(cfg, lossless=True)
                await sh.start()
                if full:
                    sh.rp.on_result = lambda ex, res: None
                for ex in items:
                    sh.take(ex)
                    await sh.settle()  # one at a time: the same connection reuse both ways
                # then a dead candidate: marked down, later exchanges not sent to it
                t = sh.rp._pools[1].target  # same URL (the statistics' key), nobody there
                sh.rp._pools[1].target = dataclasses.replace(t, port=Target.parse(dead).port)
                sh.rp._pools[1].idle.clear()
                for ex in items[:10]:
                    sh.take(ex)
                    await sh.settle()
                st = sh.state()
                await sh.close()
                return st

            st = run_loop(main())
        for h in st["health"].values():
            h["transitions"] = [t["state"] for t in h["transitions"]]
        for r in st["replay"].values():
            r["latencies"] = len(r["latencies"])
            r["error_examples"] = sorted(r["error_examples"])
            del r["started"]
        st["latency"] = {ep: {k: len(v) for k, v in s.items()} for ep, s in
                         st["latency"].items()}
        for k in ("started", "lat_sum", "lag_max", "lag_hist"):
            del st[k]
        st["lat_hist"] = {k: sum(v) for k, v in st["lat_hist"].items()}
        return st

    lean, full = run(False), run(True)
    assert lean == full
    assert lean["not_sent"]["c"] > 0 and lean["health"]["c"]["transitions"] == ["down"]
    assert lean["replay"]["s"]["errors"] and lean["replay"]["c"]["errors"]
