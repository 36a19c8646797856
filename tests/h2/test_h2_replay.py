"""Replay over HTTP/2 to real servers (no root needed: they listen on loopback): the ``h2``
package server of h2server.py over h2c and over TLS (ALPN h2), and two grpcio servers (v1 and
a v2 whose answers differ in one field). Exchanges captured as HTTP/2 go out as HTTP/2,
multiplexed on one connection per target; gRPC answers are compared message by message and
grpc-status like a status; the ``replay`` command replays an HTTP/2 JSONL log."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tls"))

from helpers import free_port
from tlslab import make_cert

from replay.compare import Comparator, ThreeWay, prepare
from replay.formats.jsonl import JsonlWriter
from replay.h2 import grpc as g
from replay.model import Exchange, Request, Response
from replay.replayer import Replayer, ReplayError, run_async

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "") from None
            time.sleep(0.05)


def spawn(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("h2replay")
    cert, key = make_cert(d)
    procs: list[subprocess.Popen] = []
    out: dict[str, object] = {}
    try:
        for name, args in (("h2c", ()), ("tls", ("tls", str(cert), str(key)))):
            port = free_port()
            p = spawn(str(HERE / "h2server.py"), str(port), *(args or ("h2c",)))
            procs.append(p)
            wait_port(port, p)
            out[name] = port
        grpc_tools = pytest.importorskip("grpc_tools.protoc")
        gen = d / "gen"
        gen.mkdir()
        assert grpc_tools.main(["protoc", f"-I{HERE}", f"--python_out={gen}",
                                f"--grpc_python_out={gen}", str(HERE / "shop.proto")]) == 0
        out["gen"] = gen
        for tag in ("v1", "v2"):
            port = free_port()
            p = spawn(str(HERE / "grpc_peer.py"), str(gen), "server", str(port), tag)
            procs.append(p)
            wait_port(port, p)
            out[tag] = port
        yield out
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)


def h2_exchange(i: int, path: str, body: bytes = b"", method: str = "GET",
                headers: tuple = ()) -> Exchange:
    req = Request(method, path, "HTTP/2", [(":scheme", "https"), (":authority", "shop.test"),
                                           *headers], body)
    return Exchange(f"c1.{i}", request=req, response=Response(200, "", "HTTP/2"),
                    ts_request_start=1000.0 + i / 100, meta={"h2": {"stream": 2 * i + 1}})


def test_h2c_multiplexed(servers: dict) -> None:
    exs = [h2_exchange(i, f"/item/{i}", b"x" * (i * 10000), "POST") for i in range(20)]

    async def go() -> tuple[list, int]:
        async with Replayer([f"http://127.0.0.1:{servers['h2c']}"]) as rp:
            res = await asyncio.gather(*(rp.send(e) for e in exs))
            return res, len(rp._h2_pools[0].conns)

    results, nconns = run_async(go())
    assert nconns == 1
    for e, r in zip(exs, results, strict=True):
        (got,) = r.values()
        assert not isinstance(got, ReplayError), got
        doc = json.loads(got.response.body)
        assert doc["path"] == e.request.target and doc["len"] == len(e.request.body)
        assert got.response.version == "HTTP/2" and got.request.version == "HTTP/2"
    streams = {json.loads(next(iter(r.values())).response.body)["path"] for r in results}
    assert len(streams) == 20


def test_tls_alpn_and_two_targets(servers: dict) -> None:
    e = h2_exchange(1, "/status/404")

    async def go() -> dict:
        async with Replayer([f"https://127.0.0.1:{servers['tls']}",
                             f"http://127.0.0.1:{servers['h2c']}"], verify_tls=False) as rp:
            return await rp.send(e)

    res = run_async(go())
    tags = sorted(json.loads(r.response.body)["server"] for r in res.values())
    assert tags == ["h2c", "tls"]
    assert {r.response.status for r in res.values()} == {404}


def test_refused_and_not_h2(servers: dict) -> None:
    async def go() -> dict:
        async with Replayer([f"http://127.0.0.1:{free_port()}"]) as rp:
            return await rp.send(h2_exchange(1, "/"))

    (err,) = run_async(go()).values()
    assert isinstance(err, ReplayError) and err.kind == "connect_refused"


def _grpc_call(gen: Path, i: int, item: int) -> Exchange:
    sys.path.insert(0, str(gen))
    import shop_pb2

    body = g.frame_messages([shop_pb2.ItemRequest(id=item, name=f"n{item}")
                             .SerializeToString()])
    return h2_exchange(i, "/shop.Shop/GetItem", body, "POST",
                       (("content-type", "application/grpc"), ("te", "trailers")))


def test_grpc_replay_and_compare(servers: dict) -> None:
    calls = [_grpc_call(servers["gen"], i, item) for i, item in enumerate((1, 2, 404))]
    v1, v2 = f"http://127.0.0.1:{servers['v1']}", f"http://127.0.0.1:{servers['v2']}"

    async def go() -> list[dict]:
        async with Replayer([v1, v2]) as rp:
            return [await rp.send(e) for e in calls]

    results = run_async(go())
    cmp = Comparator()
    for e, res in zip(calls, results, strict=True):
        a, b = res[v1].response, res[v2].response
        assert g.status_of(a)[0] == g.status_of(b)[0] == (5 if b"404" in e.request.body
                                                         or e.id.endswith(".2") else 0)
        diffs = cmp.diff(prepare(a, path=e.request.target), prepare(b, path=e.request.target))
        if g.status_of(a)[0] == 0:
            # v2 prices differently: field 3 (price) of the one message, nothing else
            assert [(d[0], d[1]) for d in diffs] == [('body:$.messages[*]["3"]', "changed_value")]
        else:
            assert diffs == []
    # grpc-status is compared like a status
    ok, nf = results[0][v1].response, results[2][v1].response
    d = cmp.diff(prepare(ok), prepare(nf))
    assert d == [("grpc-status", "changed_value", 0, 5)]
    # with descriptors, the field has its name
    g.load_descriptors([HERE / "shop.proto"])
    try:
        a, b = results[0][v1].response, results[0][v2].response
        diffs = cmp.diff(prepare(a, path="/shop.Shop/GetItem"),
                         prepare(b, path="/shop.Shop/GetItem"))
        assert [d[0] for d in diffs] == ["body:$.messages[*].price"]
        tw = ThreeWay()
        for e, res in zip(calls, results, strict=True):
            tw.add(e.id, e.request, res[v1].response, res[v2].response, res[v1].response)
        v = tw.verdict()
        fields = {(f.field, f.kind) for f in v.regressions + v.noise + v.undecided}
        assert ("body:$.messages[*].price", "changed_value") in fields
    finally:
        g._pool = None
        g._methods.clear()


def test_replay_command_on_h2_jsonl(servers: dict, tmp_path: Path) -> None:
    log = tmp_path / "h2.jsonl"
    with log.open("wb") as f:
        w = JsonlWriter(f)
        for i in range(5):
            w.write(h2_exchange(i, f"/cli/{i}"))
        w.write(_grpc_call(servers["gen"], 9, 1))
    out = tmp_path / "out.jsonl"
    r = subprocess.run([str(REPO / ".venv/bin/shadowtap"), "replay", str(log), "-t",
                        f"http://127.0.0.1:{servers['h2c']}", "--speed", "max", "-o", str(out)],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 6
    assert all(x["response"]["version"] == "HTTP/2" for x in recs)
    assert sorted(json.loads(__import__("base64").b64decode(x["response"]["body"])
                             if x["response"].get("body_encoding") == "base64"
                             else x["response"]["body"])["path"] for x in recs)[:5] == \
        [f"/cli/{i}" for i in range(5)]


def test_dispatch_live_path(servers: dict) -> None:
    """``Replayer.dispatch`` (the live shadowing's callback form) takes the HTTP/2 path too."""
    exs = [h2_exchange(i, f"/live/{i}") for i in range(5)]

    async def go() -> list[dict]:
        async with Replayer([f"http://127.0.0.1:{servers['h2c']}"]) as rp:
            loop = asyncio.get_running_loop()
            futs = []
            for e in exs:
                f = loop.create_future()
                rp.dispatch(e, f.set_result)
                futs.append(f)
            return await asyncio.gather(*futs)

    for e, res in zip(exs, run_async(go()), strict=True):
        (got,) = res.values()
        assert json.loads(got.response.body)["path"] == e.request.target


def test_diff_command_grpc(servers: dict, tmp_path: Path) -> None:
    """``shadowtap diff`` on gRPC calls whose production answers are v1's: against v2 (the
    candidate) and v1 (the secondary), the price field is the regression, by name with
    ``--proto``."""
    v1 = f"http://127.0.0.1:{servers['v1']}"
    calls = [_grpc_call(servers["gen"], i, 1 + i % 7) for i in range(30)]

    async def go() -> list[dict]:
        async with Replayer([v1]) as rp:
            return [await rp.send(e) for e in calls]

    log = tmp_path / "prod.jsonl"
    with log.open("wb") as f:
        w = JsonlWriter(f)
        for e, res in zip(calls, run_async(go()), strict=True):
            e.response = res[v1].response
            w.write(e)
    report = tmp_path / "r.json"
    r = subprocess.run([str(REPO / ".venv/bin/shadowtap"), "diff", str(log), "--candidate",
                        f"http://127.0.0.1:{servers['v2']}", "--secondary", v1, "--proto",
                        str(HERE / "shop.proto"), "--report", str(report), "--min-samples", "5"],
                       capture_output=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr.decode()
    doc = json.loads(report.read_text())
    text = json.dumps(doc)
    assert "body:$.messages[*].price" in text
    assert "grpc-status" not in text
    assert [f["field"] for f in doc["regressions"]] == ["body:$.messages[*].price"]
    assert doc["summary"]["compared"] == 30
