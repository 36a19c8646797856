"""The replay engine against real servers on loopback: every target gets the same request, the
wire request is rewritten as promised, misbehaving targets are counted per kind while the run
completes, the live-replay API (submit/offer) works, incomplete captures are skipped and said so.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from replay_helpers import run_cli, write_jsonl
from replay_servers import HttpServer, Seen, dead_url, self_signed_context

from replay.extract import extract_file
from replay.model import Completeness, Exchange, Request, Response
from replay.pacing import Pacing, Schedule
from replay.replayer import Replayer, ReplayError, run_async
from replay.rewrite import Rewrite
from replay.synth import generate_pcap


def fingerprint(s: Seen) -> tuple:
    """What must be identical at every target (Host differs by design)."""
    hdrs = tuple(sorted((k, v) for k, v in s.headers.items() if k != "host"))
    return (s.method, s.path, hdrs, s.body)


def test_same_request_reaches_every_target_from_a_capture(tmp_path: Path) -> None:
    cap = tmp_path / "synth.pcap"
    generate_pcap(cap, connections=60, concurrency=20, seed=5, loss=0.01)
    captured = list(extract_file(cap))
    complete = [e for e in captured if e.completeness.complete and e.request is not None
                and e.request.method != "CONNECT" and e.tunnel is None]
    assert 0 < len(complete) < len(captured), "the lossy capture should have incomplete ones"
    out = tmp_path / "responses.jsonl"
    with HttpServer() as a, HttpServer() as b:
        p = run_cli("replay", cap, "-t", a.url, "-t", b.url, "--speed", "max", "-o", out,
                    "--summary-json")
        assert p.returncode == 0, p.stderr.decode()
        summary = json.loads(p.stdout)
        assert summary["replayed"] == len(complete)
        assert summary["read"] == len(captured)
        assert sum(summary["skipped"].values()) == len(captured) - len(complete)
        assert Counter(map(fingerprint, a.seen)) == Counter(map(fingerprint, b.seen))
        assert len(a.seen) == len(complete)
        assert {s.headers["host"] for s in a.seen} == {a.url.split("//")[1]}
        assert {s.headers["host"] for s in b.seen} == {b.url.split("//")[1]}
        # Bodies arrive as captured (transfer coding removed, re-framed with Content-Length).
        by_path = Counter((e.request.method, e.request.target, e.request.body) for e in complete)
        assert Counter((s.method, s.path, s.body) for s in a.seen) == by_path
    records = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(records) == 2 * len(complete)
    assert {r["meta"]["original_id"] for r in records} == {e.id for e in complete}
    assert all(r["response"]["status"] == 200 for r in records)


def _ex(i: int, method: str = "GET", target: str = "/x", body: bytes = b"",
        headers: list | None = None) -> Exchange:
    h = headers if headers is not None else [("Host", "prod.example.com")]
    return Exchange(id=f"e{i}", request=Request(method, target, "HTTP/1.1", h, body))


def test_rewrites_on_the_wire() -> None:
    seen_ex = [
        _ex(0, "POST", "/api/v1/users/7?x=1", b'{"a":1}', [
            ("Host", "prod.example.com"), ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "h2c"), ("Expect", "100-continue"), ("Transfer-Encoding", "chunked"),
            ("X-Debug", "1"), ("Authorization", "Bearer prod-token"), ("Accept", "*/*")]),
        _ex(1, "HEAD", "http://prod.example.com/api/v1/ping"),
        _ex(2, "GET", "/api/v1/users/8"),
    ]
    rw = Rewrite.build(set_headers=["Authorization: Bearer shadow-token", "X-Shadow: yes"],
                       remove_headers=["x-debug"], path_subs=[r"^/api/v1/=>/api/v2/"])
    with HttpServer() as srv:
        async def go() -> list:
            async with Replayer([srv.url + "/base"], rewrite=rw) as rp:
                return [await rp.send(e) for e in seen_ex]

        results = run_async(go())
        post, head, get = srv.seen
    assert post.method == "POST" and post.path == "/base/api/v2/users/7?x=1"
    assert post.body == b'{"a":1}' and post.headers["content-length"] == "7"
    assert post.headers["host"] == srv.url.split("//")[1]
    assert post.headers["authorization"] == "Bearer shadow-token"
    assert post.headers["x-shadow"] == "yes" and "x-debug" not in post.headers
    for hop in ("upgrade", "expect", "transfer-encoding"):
        assert hop not in post.headers
    assert head.method == "HEAD" and head.path == "/base/api/v2/ping"
    assert get.path == "/base/api/v2/users/8"
    # HEAD answered with headers only: the connection stays usable for the next request.
    assert all(isinstance(r[srv.url + "/base"], Exchange) for r in results)
    rec = results[0][srv.url + "/base"]
    assert rec.meta["original_id"] == "e0" and rec.request.target == "/base/api/v2/users/7?x=1"
    assert rec.response.status == 200 and rec.response.body == b"ok"
    assert rec.completeness.complete and rec.tunnel is None and rec.interim == []
    assert rec.ts_request_start is not None and rec.ts_response_start is None
    assert rec.ts_response_end >= rec.ts_request_start
    assert rec.meta["target"] == srv.url + "/base" and rec.meta["latency_ms"] >= 0
    assert rec.conn is not None and rec.conn.server_port == int(srv.url.rsplit(":", 1)[1])


def test_misbehaving_targets_are_counted_by_kind_and_the_run_completes() -> None:
    items = [_ex(i, target=f"/k/{i}") for i in range(12)]
    with HttpServer() as good, HttpServer(behaviour="slow") as slow, \
            HttpServer(behaviour="reset") as reset, HttpServer(behaviour="garbage") as garbage, \
            HttpServer(behaviour="close") as close:
        dead = dead_url()
        urls = [good.url, dead, slow.url, reset.url, garbage.url, close.url]

        async def go() -> Replayer:
            rp = Replayer(urls, concurrency=4, timeout=0.3, connect_timeout=1)
            async with rp:
                await rp.run(items, Schedule(Pacing(), [None] * len(items)))
            return rp

        t0 = time.perf_counter()
        rp = run_async(go())
        elapsed = time.perf_counter() - t0
    st = rp.stats
    assert st.completed == 12
    assert elapsed < 5  # 3 rounds of 0.3 s timeouts, not a hang
    t = st.targets
    assert t[good.url].ok == 12 and not t[good.url].errors
    assert t[dead].errors == {"connect_refused": 12}
    assert t[slow.url].errors == {"timeout": 12}
    assert t[garbage.url].errors == {"bad_response": 12}
    assert set(t[reset.url].errors) <= {"reset", "closed"}
    assert sum(t[reset.url].errors.values()) == 12
    assert t[close.url].errors == {"closed": 12}
    assert "refused" in t[dead].error_examples["connect_refused"]


def test_keep_alive_pool_reuses_connections() -> None:
    items = [_ex(i, target=f"/ka/{i}") for i in range(300)]
    with HttpServer() as srv:
        async def go() -> None:
            async with Replayer([srv.url], concurrency=4) as rp:
                await rp.run(items, Schedule(Pacing(), [None] * 300))

        run_async(go())
        assert len(srv.seen) == 300
        assert srv.connections <= 4


def test_live_api_submit_and_offer() -> None:
    got: list[tuple[str, dict]] = []
    with HttpServer() as srv, HttpServer(behaviour="slow") as slow:
        async def go() -> tuple[dict, Replayer, list[bool]]:
            async with Replayer([srv.url], concurrency=2, queue_size=4,
                                on_result=lambda ex, r: got.append((ex.id, r))) as rp:
                res = await rp.submit(_ex(0, target="/live"))
                results = await asyncio.gather(*(rp.submit(_ex(i, target=f"/l/{i}"))
                                                 for i in range(1, 9)))
                assert all(isinstance(r[srv.url], Exchange) for r in results)
            async with Replayer([slow.url], concurrency=1, queue_size=2, timeout=0.2,
                                on_result=lambda ex, r: got.append((ex.id, r))) as rs:
                accepted = [rs.offer(_ex(100 + i)) for i in range(10)]
                await rs.drain()
            return res, rs, accepted

        res, rs, accepted = run_async(go())
    rec = res[srv.url]
    assert isinstance(rec, Exchange) and rec.response.status == 200
    assert rec.meta["original_id"] == "e0"
    assert accepted == [True, True] + [False] * 8
    assert rs.stats.dropped == 8
    slow_results = [r for i, r in got if i.startswith("e10")]
    assert len(slow_results) == 2
    assert all(isinstance(r[slow.url], ReplayError) and r[slow.url].kind == "timeout"
               for r in slow_results)
    assert len(got) == 9 + 2


def test_incomplete_exchanges_are_skipped_and_counted(tmp_path: Path) -> None:
    def ex(i: int, c: Completeness, response: bool = True, method: str = "GET") -> Exchange:
        return Exchange(id=f"i{i}", request=Request(method, f"/inc/{i}", "HTTP/1.1",
                                                    [("Host", "h")]),
                        response=Response(200) if response else None, completeness=c,
                        ts_request_start=1000.0 + i)

    exs = [ex(i, Completeness()) for i in range(5)]
    exs += [ex(10, Completeness(request_gaps=[(0, 100)])),
            ex(11, Completeness(request_truncated=True)),
            ex(12, Completeness(unpaired=True), response=False),
            ex(13, Completeness(response_truncated=True)),
            ex(14, Completeness(), method="CONNECT"),
            Exchange(id="i15", response=Response(200))]
    f = write_jsonl(tmp_path / "inc.jsonl", exs)
    with HttpServer() as srv:
        p = run_cli("replay", f, "-t", srv.url, "--speed", "max", "--summary-json")
        assert p.returncode == 0, p.stderr.decode()
        s = json.loads(p.stdout)
        assert s["replayed"] == 5 and s["read"] == 11
        assert s["skipped"] == {"request body has gaps": 1, "request truncated": 1,
                                "no response captured": 1, "response truncated": 1,
                                "tunnel (CONNECT/Upgrade)": 1, "no request captured": 1}
        # Requests that are intact can be replayed anyway; broken requests never.
        p = run_cli("replay", f, "-t", srv.url, "--speed", "max", "--summary-json",
                    "--include-incomplete")
        s = json.loads(p.stdout)
        assert s["replayed"] == 7
        assert "/inc/10" not in {x.path for x in srv.seen}
        # The table goes to stderr with the skip reasons.
        p = run_cli("replay", f, "-t", srv.url, "--speed", "max")
        assert b"skipped: request body has gaps" in p.stderr


def test_filters(tmp_path: Path) -> None:
    exs = [_ex(0, "GET", "/a/1"), _ex(1, "POST", "/a/2", b"x"), _ex(2, "GET", "/b/3"),
           _ex(3, "GET", "/a/4", headers=[("Host", "other.example.org")])]
    f = write_jsonl(tmp_path / "f.jsonl", exs)
    with HttpServer() as srv:
        p = run_cli("replay", f, "-t", srv.url, "--speed", "max", "--method", "GET",
                    "--path", "^/a/", "--host", r"prod\.example", "--summary-json")
        assert p.returncode == 0, p.stderr.decode()
        assert json.loads(p.stdout)["filtered"] == 3
        assert [s.path for s in srv.seen] == ["/a/1"]


@pytest.mark.parametrize("loops", [2])
def test_loop_replays_n_times(loops: int, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "l.jsonl", [_ex(i, target=f"/l/{i}") for i in range(5)])
    with HttpServer() as srv:
        p = run_cli("replay", f, "-t", srv.url, "--rate", "200", "--loop", loops,
                    "--summary-json")
        assert p.returncode == 0
        assert Counter(s.path for s in srv.seen) == {f"/l/{i}": loops for i in range(5)}


def test_dead_target_is_a_counted_failure_not_a_crash(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "d.jsonl", [_ex(i, target=f"/d/{i}") for i in range(20)])
    with HttpServer() as srv:
        dead = dead_url()
        p = run_cli("replay", f, "-t", srv.url, "-t", dead, "--speed", "max", "--summary-json")
    err = p.stderr.decode()
    assert p.returncode == 1 and "Traceback" not in err
    assert f"warning: {dead}: no answers (connect_refused × 20" in err
    s = json.loads(p.stdout)
    assert s["targets"][srv.url]["answered"] == 20
    assert s["targets"][dead]["errors"] == {"connect_refused": 20}


def test_https_target_verified_or_insecure(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    f = write_jsonl(tmp_path / "t.jsonl", [_ex(i, target=f"/tls/{i}") for i in range(5)])
    with HttpServer(ssl_context=self_signed_context(tmp_path)) as srv:
        assert srv.url.startswith("https://")
        # A self-signed certificate fails verification: counted, not a crash.
        p = run_cli("replay", f, "-t", srv.url, "--speed", "max", "--summary-json")
        assert p.returncode == 1 and b"Traceback" not in p.stderr
        s = json.loads(p.stdout)
        assert s["targets"][srv.url]["errors"] == {"connect_error": 5}
        assert "TLS" in s["targets"][srv.url]["error_examples"]["connect_error"]
        p = run_cli("replay", f, "-t", srv.url, "--speed", "max", "--summary-json",
                    "--insecure")
        assert p.returncode == 0, p.stderr.decode()
        assert json.loads(p.stdout)["targets"][srv.url]["answered"] == 5
        assert sorted(x.path for x in srv.seen) == [f"/tls/{i}" for i in range(5)]


def test_connections_closed_by_the_server_between_requests_are_not_failures() -> None:
    # The server promises keep-alive and then closes every connection once it has answered:
    # the pool must notice or resend once on a fresh connection, never report an error.
    items = [_ex(i, target=f"/idle/{i}") for i in range(100)]
    with HttpServer(behaviour="drop_idle") as srv:
        async def go() -> Replayer:
            async with Replayer([srv.url], concurrency=4) as rp:
                await rp.run(items, Schedule(Pacing(), [None] * 100))
            return rp

        rp = run_async(go())
    st = rp.stats.targets[srv.url]
    assert st.ok == 100 and not st.errors


def test_live_diff_judges_offered_exchanges(production: HttpServer, candidate: HttpServer,
                                            secondary: HttpServer) -> None:
    from replay_helpers import capture_requests, record_capture

    from replay.livediff import LiveDiff

    captured = record_capture(production.url, capture_requests(per_endpoint=12))
    incomplete = Exchange(id="broken", request=Request("GET", "/api/health"), response=None,
                          completeness=Completeness(unpaired=True))

    async def go() -> dict:
        async with LiveDiff(candidate.url, secondary=secondary.url) as live:
            assert not live.offer(incomplete)
            assert all(live.offer(ex) for ex in captured)
            await live.drain()
            return live.report(fail_on=0.01)

    doc = run_async(go())
    assert doc["summary"]["compared"] == len(captured)
    assert doc["summary"]["skipped"] == {"no response captured": 1}
    found = {(f["endpoint"], f["field"], f["kind"]) for f in doc["regressions"]}
    assert ("GET /api/users/{id}", "body:$.age", "changed_type") in found
    assert ("GET /api/orders/{id}", "body:$.currency", "missing") in found
    assert not any("generated_at" in f["field"] for f in doc["regressions"])
    assert doc["summary"]["verdict"] == "fail"


def test_interim_responses_are_kept_apart() -> None:
    with HttpServer(behaviour="early_hints") as srv:
        async def go() -> list:
            async with Replayer([srv.url]) as rp:
                return [(await rp.send(_ex(i)))[srv.url] for i in range(3)]

        got = run_async(go())
    for rec in got:
        assert isinstance(rec, Exchange)
        assert rec.response.status == 200 and rec.response.body == b"ok"
        assert [r.status for r in rec.interim] == [103]
        assert rec.interim[0].headers == [("Link", "</app.css>; rel=preload")]


def test_dispatch_counts_misbehaving_targets_like_send() -> None:
    """The live path's callback form (``dispatch``: no task per exchange) gives every exchange
    one result per target, errors by kind, as ``send`` does, and calls back once each."""
    items = [_ex(i, target=f"/d/{i}") for i in range(12)]
    with HttpServer() as good, HttpServer(behaviour="slow") as slow, \
            HttpServer(behaviour="garbage") as garbage, HttpServer(behaviour="close") as close:
        dead = dead_url()
        urls = [good.url, dead, slow.url, garbage.url, close.url]

        async def go() -> tuple[Replayer, list]:
            rp = Replayer(urls, concurrency=4, timeout=0.3, connect_timeout=1)
            got: list = []
            async with rp:
                done = asyncio.get_running_loop().create_future()

                def back(ex: Exchange, res: dict) -> None:
                    got.append((ex.id, res))
                    if len(got) == len(items):
                        done.set_result(None)

                for ex in items:
                    rp.dispatch(ex, lambda res, ex=ex: back(ex, res), skip=(1,) if
                                ex.id == "e0" else ())
                await asyncio.wait_for(done, 10)
            return rp, got

        rp, got = run_async(go())
    assert sorted(i for i, _ in got) == sorted(e.id for e in items)  # once each
    for i, res in got:
        assert set(res) == set(urls) - ({dead} if i == "e0" else set())
        assert isinstance(res[good.url], Exchange) and res[good.url].response.status == 200
        assert res[good.url].request.target == f"/d/{i[1:]}"
    t = rp.stats.targets
    assert rp.stats.completed == 12
    assert t[good.url].ok == 12
    assert t[dead].errors == {"connect_refused": 11}  # e0 skipped it
    assert t[slow.url].errors == {"timeout": 12}
    assert t[garbage.url].errors == {"bad_response": 12}
    assert t[close.url].errors == {"closed": 12}


@pytest.mark.parametrize("rw", [
    Rewrite(),
    Rewrite.build(set_headers=["X-Shadow: 1"], remove_headers=["User-Agent"]),
    Rewrite.build(path_subs=["^/api=>/v2"]),
    Rewrite(keep_host=True),
    Rewrite.build(set_headers=["Host: pinned.example"]),
])
def test_second_targets_request_is_the_first_ones_with_its_own_host(rw: Rewrite) -> None:
    """``prepare`` splices the Host line for targets that differ from the first only by
    authority: the bytes must be exactly what rewriting for that target gives."""
    from replay.rewrite import encode_request, rewrite_request

    items = [
        _ex(0, headers=[("Host", "prod"), ("User-Agent", "ü-agent"), ("Connection", "close")]),
        _ex(1, "POST", "/api/orders?x=1", b'{"a": 1}', [("Host", "prod"), ("Content-Length", "8")]),
        _ex(2, "HEAD", "/api", headers=[]),
        _ex(3, "OPTIONS", "*", headers=[("X-\u20ac", "\u20ac")]),
    ]
    rp = Replayer(["http://127.0.0.1:1", "http://10.1.2.3:8080", "http://h:9/base",
                   "http://[::1]:81"], rewrite=rw)
    for ex in items:
        for t, (req, data) in zip(rp.targets, rp.prepare(ex), strict=True):
            want = rewrite_request(ex, t, rw)
            assert req == want
            assert data == encode_request(want)
