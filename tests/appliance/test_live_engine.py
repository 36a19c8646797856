"""The live engine: the hand-off from capture to worker processes (sharding, deliberate shedding
of whole connections, overflow), and one verdict from N workers equal to one process's.

The engine tests read a synthetic capture file through the real daemon code (capture process,
forked workers, pipes) and replay to real HTTP servers on loopback: no root needed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.live import config
from appliance.live.engine import LiveEngine, needs_workers
from appliance.live.handoff import (
    Dispatcher,
    LineSplitter,
    Shedder,
    conn_hash,
    conn_of_line,
    make_pipe,
)
from replay.formats.jsonl import exchange_line
from replay.synth import generate_pcap

# ---------------------------------------------------------------------------------------------
# The hand-off, alone


def test_shedder_keeps_whole_connections_whatever_the_level_does() -> None:
    sh = Shedder()
    ids = [f"c{i}".encode() for i in range(2000)]
    first = {c: sh.keep(c, conn_hash(c)) for c in ids}
    assert all(first.values())  # idle: everything is kept
    for _ in range(8):  # overloaded: the level falls (ten steps a second at most)
        sh._at = 0.0
        sh.adapt(5.0)
    assert sh.level < 1000
    # connections already decided stay as they were; new ones are mostly shed
    assert all(sh.keep(c, conn_hash(c)) for c in ids)
    new = [f"n{i}".encode() for i in range(2000)]
    kept = [c for c in new if sh.keep(c, conn_hash(c))]
    assert 0 < len(kept) < 200
    # the decision is a hash, not luck: a second shedder at the same level agrees
    other = Shedder()
    other.level = sh.level
    assert [c for c in new if other.keep(c, conn_hash(c))] == kept
    assert sh.shed == 2000 - len(kept)
    for _ in range(50):  # never below the floor: some connections are always compared
        sh._at = 0.0
        sh.adapt(5.0)
    assert sh.level == 100
    for _ in range(40):
        sh._at = 0.0
        sh.adapt(0.0)
    assert sh.level == 10_000


def test_shedder_sheds_a_new_connection_when_there_is_no_room() -> None:
    sh = Shedder()
    kept = b"c1"
    assert sh.keep(kept, conn_hash(kept))
    assert not sh.keep(b"c2", conn_hash(b"c2"), room=False)  # new, no room: shed
    assert sh.keep(kept, conn_hash(kept), room=False)  # kept before: its sequence goes on
    assert not sh.keep(b"c2", conn_hash(b"c2"))  # shed once: shed whole
    assert sh.kept == 2 and sh.shed == 2


def test_shadowing_holds_its_waiting_line_to_max_lag_and_sheds_whole_connections() -> None:
    """Shadows slower than the traffic (one slot, 50 ms an answer; 300 exchanges offered at
    several hundred a second): the exchanges waiting for a slot are held to what the shadow
    answers in ``max_lag`` (measured), new connections beyond are shed, and a connection is
    replayed whole or not at all."""
    import asyncio

    from appliance.live.shadowing import Shadower, ShadowingConfig, ShadowTarget, run_loop
    from replay.model import ConnKey, Exchange, Request, Response

    got: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while head := await reader.readuntil(b"\r\n\r\n"):
                got.append(head.split(b" ", 2)[1].decode())
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    async def main() -> tuple[Shadower, list[tuple[int, int]]]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = ShadowingConfig(candidate=ShadowTarget("c", f"http://127.0.0.1:{port}",
                                                     "candidate"),
                              concurrency=1, max_lag=0.2, drain_timeout=30.0)
        sh = Shadower(cfg)
        await sh.start()
        lines: list[tuple[int, int]] = []
        t0 = time.monotonic()
        for c in range(150):
            for n in (1, 2):
                ex = Exchange(f"c{c}.{n}", ConnKey("10.0.0.1", 1000 + c, "10.0.0.2", 80),
                              Request("GET", f"/c{c}/{n}", "HTTP/1.1", [("Host", "h")], b""),
                              Response(200, "OK", "HTTP/1.1", [], b"ok"), ts_request_end=1.0,
                              ts_response_end=1.0)
                sh.take(ex)
            sh.adapt()
            if time.monotonic() - t0 > 0.3:  # the replay rate is known from here on
                lines.append((sh.in_flight - sh._active, sh.queue_cap))
            await asyncio.sleep(0.005)
        await sh.settle()
        await sh.close()
        server.close()
        return sh, lines

    sh, lines = run_loop(main())
    shed = sh.skipped.get("shed_overload", 0)
    assert shed > 0 and sh.replayed + shed == 300
    assert lines and all(queued <= cap + 1 for queued, cap in lines)
    assert max(cap for _, cap in lines) < 150  # what one slot answers in 0.2 s, not 2048
    for c in range(150):  # whole connections: both exchanges replayed, or neither
        assert (f"/c{c}/1" in got) == (f"/c{c}/2" in got), c


def test_in_process_live_shadowing_holds_its_line_too() -> None:
    """The one-process mode and the canary (``LiveShadowing(live=True)``): the same waiting
    line bound as the workers' shadower, so a slow shadow sheds whole connections instead of
    building a backlog of seconds."""
    import http.server
    import threading

    from appliance.live.pipeline import Handoff, Stats
    from appliance.live.shadowing import LiveShadowing, ShadowingConfig, ShadowTarget
    from replay.model import ConnKey, Exchange, Request, Response

    got: list[str] = []

    class Slow(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            got.append(self.path)
            time.sleep(0.05)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cfg = ShadowingConfig(candidate=ShadowTarget(
        "c", f"http://127.0.0.1:{srv.server_address[1]}", "candidate"), concurrency=1,
        max_lag=0.2, drain_timeout=30.0, verdict_every=60.0)
    h = Handoff(1000, Stats())
    ls = LiveShadowing(cfg, h, registry=False, live=True).start()
    try:
        for c in range(100):
            for n in (1, 2):
                h.process(Exchange(
                    f"c{c}.{n}", ConnKey("10.0.0.1", 1000 + c, "10.0.0.2", 80),
                    Request("GET", f"/c{c}/{n}", "HTTP/1.1", [("Host", "h")], b""),
                    Response(200, "OK", "HTTP/1.1", [], b"ok"), ts_request_end=1.0,
                    ts_response_end=1.0))
            time.sleep(0.005)
    finally:
        ls.stop(60)
        srv.shutdown()
    st = ls.status()
    shed = st["skipped"].get("shed_overload", 0)
    assert shed > 0 and st["replayed"] + shed == 200
    for c in range(100):  # whole connections
        assert (f"/c{c}/1" in got) == (f"/c{c}/2" in got), c


def test_shedder_memory_is_bounded() -> None:
    sh = Shedder(max_decided=1000)
    for i in range(10_000):
        c = f"c{i}".encode()
        sh.keep(c, conn_hash(c))
    assert len(sh.decided) <= 1000


def _lines(n_conns: int, per_conn: int) -> list[bytes]:
    from replay.model import ConnKey, Exchange, Request, Response

    out = []
    for n in range(per_conn):
        for c in range(n_conns):
            ex = Exchange(f"b1w0-c{c}.{n + 1}", ConnKey("10.0.0.1", 1000 + c, "10.0.0.2", 80),
                          Request("GET", f"/x/{c}/{n}", "HTTP/1.1", [("Host", "h")], b""),
                          Response(200, "OK", "HTTP/1.1", [], b"x" * 300))
            out.append(exchange_line(ex))
    return out


def test_lines_go_to_one_worker_per_connection_in_order() -> None:
    pipes = [make_pipe() for _ in range(3)]
    d = Dispatcher([w for _, w in pipes])
    lines = _lines(30, 5)
    d.lines(b"".join(lines[:70]), 70, b"")
    for line in lines[70:]:
        d.exchange(next(read_jsonl_bytes(line)))
    d.close()
    seen: dict[bytes, int] = {}
    total = 0
    for i, (r, _) in enumerate(pipes):
        sp = LineSplitter()
        data = b""
        while chunk := os.read(r, 1 << 16):
            data += chunk
        os.close(r)
        got = []
        for k in range(0, len(data), 777):  # arbitrary reads: lines span them
            got.extend(sp.feed(data[k:k + 777]))
        assert sp.rest == b""
        for line in got:
            cid = conn_of_line(line)
            assert seen.setdefault(cid, i) == i  # one worker per connection
        ns = [(conn_of_line(x), int(json.loads(x)["id"].rsplit(".", 1)[1])) for x in got]
        for cid in {c for c, _ in ns}:
            order = [n for c, n in ns if c == cid]
            assert order == sorted(order)  # in order within a connection
        total += len(got)
    assert total == len(lines) and d.shedder.shed == 0 and d.overflow == 0
    assert len(set(seen.values())) == 3  # and all workers get some


def test_a_slow_reader_gets_every_kept_byte_once_in_order() -> None:
    """A pipe that takes a page at a time: flushes write part of a line, then the rest; what
    the worker reads is exactly the lines handed over, in order (nothing repeated or lost at
    the cuts), and the waiting bytes are counted down to zero."""
    r, w = make_pipe(4096)
    d = Dispatcher([w], shed_above=1 << 30, budget=1 << 30)
    lines = _lines(40, 6)
    d.lines(b"".join(lines), len(lines), b"")
    want = b"".join(lines)
    assert d.pending_bytes[0] == len(want)
    os.set_blocking(r, False)
    got = b""
    for _ in range(100_000):
        d.flush()
        with contextlib.suppress(BlockingIOError):
            got += os.read(r, 1000)  # less than a page, so the pipe stays nearly full
        if len(got) == len(want):
            break
    assert got == want
    assert d.pending_bytes[0] == 0 and not d.pending[0] and d.sent[0] == len(want)
    d.close()
    os.close(r)


def read_jsonl_bytes(line: bytes) -> Iterator[Any]:
    from replay.formats.jsonl import exchange_from_record

    yield exchange_from_record(json.loads(line))


def test_a_worker_that_does_not_read_costs_whole_connections_counted_not_capture() -> None:
    """Nobody reads the pipe: the pipe fills, the backlog passes the shed mark and new
    connections are shed; beyond the budget what is left overflows; all counted, nothing
    blocks (the test would hang if a write blocked)."""
    r, w = make_pipe()
    drops: dict[str, int] = {}
    d = Dispatcher([w], budget=4 << 20, shed_above=256 << 10,
                   drop=lambda k, n: drops.__setitem__(k, drops.get(k, 0) + n))
    total = 0
    t0 = time.monotonic()
    for round_ in range(60):
        batch = [line.replace(b"b1w0-c", f"r{round_}c".encode())
                 for line in _lines(50, 2)]
        total += len(batch)
        d.lines(b"".join(batch), len(batch), b"")
        d.flush()
        d.shedder._at = 0.0  # as if 0.1 s had passed
    assert time.monotonic() - t0 < 10
    c = d.counters()
    assert c["shed"] > 0 and c["keep_level"] < 1.0
    assert c["kept"] + c["shed"] == total
    # what was kept either waits, is in the pipe, or overflowed: nothing vanished
    assert c["pending_bytes"] <= 4 << 20
    assert drops.get("handoff_overflow", 0) == d.overflow
    os.close(r)
    d.flush()  # the reader is gone: counted as lost, not raised
    d.close()


# ---------------------------------------------------------------------------------------------
# The engine on a capture file, with real shadows


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    d = tmp_path_factory.mktemp("livecap")
    truth: list[Any] = []
    generate_pcap(d / "t.pcap", connections=150, concurrency=20, seed=5, truth=truth)
    (d / "key").write_bytes(os.urandom(32))
    os.chmod(d / "key", 0o600)
    return d, len(truth)


def _cfg(d: Path, out: Path, workers: int, ports: tuple[int, int] | None) -> Any:
    doc: dict[str, Any] = {
        "source": {"file": str(d / "t.pcap")},
        "pipeline": {"workers": workers,
                     "sanitise": {"enabled": True, "key_file": str(d / "key")},
                     "sinks": [{"type": "jsonl", "path": str(out / "ex.jsonl")}]},
        "metrics": {"listen": None},
    }
    if ports is not None:
        doc["shadowing"] = {"secondary": f"http://127.0.0.1:{ports[0]}",
                            "candidate": f"http://127.0.0.1:{ports[1]}", "min_samples": 5,
                            "verdict_every": "1s", "report": str(out / "report.json")}
    return config.parse(doc)


def _run(cfg: Any) -> tuple[LiveEngine, dict[str, Any] | None]:
    eng = LiveEngine(cfg, source="test").start()
    deadline = time.monotonic() + 60
    while not eng.app.finished and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.05)
    return eng, eng.stop()


def _records(out: Path) -> list[dict[str, Any]]:
    recs = []
    for p in sorted(out.glob("ex*.jsonl")):
        for line in p.read_text().splitlines():
            r = json.loads(line)
            r["id"] = r["id"].split("-", 1)[1]  # the boot prefix differs between runs
            recs.append(r)
    return sorted(recs, key=lambda r: r["id"])


def test_workers_log_what_one_process_logs(capture: tuple[Path, int], tmp_path: Path) -> None:
    d, n = capture
    logs = {}
    for w in (0, 1, 3):
        out = tmp_path / f"w{w}"
        cfg = _cfg(d, out, w, None)
        assert needs_workers(cfg) == (w > 0)
        eng, _ = _run(cfg)
        assert eng.n == w
        logs[w] = _records(out)
        if w == 3:
            assert len(list(out.glob("ex-w*.jsonl"))) == 3  # one log per worker
    assert len(logs[0]) == n
    assert logs[1] == logs[0] and logs[3] == logs[0]
    # sanitised in the workers: the synthetic capture's bearer tokens never reach the log
    text = json.dumps(logs[3])
    assert "Bearer eyJ" not in text


def _essence(doc: dict[str, Any]) -> dict[str, Any]:
    strip = ("examples", "example_ids")
    return {
        "summary": {k: v for k, v in doc["summary"].items()},
        "regressions": [{k: v for k, v in f.items() if k not in strip}
                        for f in doc["regressions"]],
        "noise": sorted(json.dumps({k: v for k, v in f.items() if k not in strip},
                                   sort_keys=True) for f in doc["noise"]),
        "endpoints": doc["endpoints"],
        "answered": {k: (s["answered"], s["failed"]) for k, s in doc["shadows"].items()},
    }


def test_three_workers_judge_exactly_as_one_process(capture: tuple[Path, int],
                                                   shadow_pair: tuple[int, int],
                                                   tmp_path: Path) -> None:
    d, n = capture
    docs = {}
    for w in (0, 1, 3):
        out = tmp_path / f"s{w}"
        eng, doc = _run(_cfg(d, out, w, shadow_pair))
        assert doc is not None and eng.error is None
        assert doc["summary"]["compared"] > 0.8 * n
        docs[w] = _essence(doc)
        written = json.loads((out / "report.json").read_text())
        assert written["summary"] == doc["summary"]
    assert docs[1] == docs[0]
    assert docs[3] == docs[0]
    regs = docs[3]["regressions"]
    assert regs and all(f["field"] == "status" for f in regs), regs
    assert all(f["field"] != "body:$.rid" for f in regs)  # noise


def test_a_killed_worker_is_restarted_and_the_engine_carries_on(
        capture: tuple[Path, int], shadow_pair: tuple[int, int], tmp_path: Path) -> None:
    """kill -9 of a worker: the engine restarts it on a new pipe (sent to the running capture
    process), the verdict keeps what the dead worker had reported, and stop still ends
    cleanly."""
    d, _ = capture
    out = tmp_path / "k"
    cfg = _cfg(d, out, 2, shadow_pair)
    eng = LiveEngine(cfg, source="test").start()
    try:
        # the capture comes first: scheduled above the workers (root here)
        captures = [p.pid for p in eng.app._procs.values()]  # type: ignore[union-attr]
        assert captures

        def above() -> bool:  # each process sets its own priority as it starts
            return all(os.getpriority(os.PRIO_PROCESS, c) < os.getpriority(os.PRIO_PROCESS, w.pid)
                       for c in captures for w in eng._procs.values())

        if os.geteuid() == 0:  # raising a priority needs root
            deadline = time.monotonic() + 10
            while not above() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert above()
        victim = eng._procs[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        eng.supervise()
        assert eng.restarts == 1 and eng._procs[0].pid != victim.pid
        deadline = time.monotonic() + 20
        while eng.healthy()[0] is False and time.monotonic() < deadline:
            time.sleep(0.1)
        while not eng.app.finished and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
    finally:
        doc = eng.stop()
    assert doc is not None and doc["workers"] >= 2
    assert not any(p.is_alive() for p in eng._procs.values())
