"""HTTP/2 against real peers: nginx serving HTTP/2 over TLS 1.2 and 1.3 (ALPN h2) and h2c
with prior knowledge, a server of the ``h2`` package answering ``Upgrade: h2c``, curl making
several multiplexed requests per connection (``-Z --parallel``), tcpdump capturing, all in a
namespace of its own. Every request curl made comes back as an Exchange with its status, and
the requests agree with tshark's dissection (with the key log for TLS).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from h2lab import HOST, capture, curl, h2_lab, stop, tshark_h2, wait_port

from replay.extract import Summary, extract_file
from replay.model import Exchange
from replay.tls import KeyLog

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("nginx", "curl", "tcpdump")),
                       reason="needs nginx, curl and tcpdump"),
]

PATHS = ["/small", "/mid", "/big", "/empty", "/nope", "/small"]


@dataclass
class World:
    pcap: Path
    keylog: Path
    fetched: list[tuple[str, int]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    d = tmp_path_factory.mktemp("h2")
    pcap, keylog = d / "h2.pcap", d / "keys.log"
    fetched: list[tuple[str, int]] = []
    with h2_lab(d) as lab:
        up = lab.popen(sys.executable, str(Path(__file__).with_name("h2server.py")), "8081",
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(lab, 8081, up, "h2server")
            with capture(lab, pcap):
                for tls in ("1.2", "1.3"):
                    fetched += curl(lab, [f"https://{HOST}{p}" for p in PATHS], "--http2",
                                    "-Z", "--parallel",
                                    f"--tlsv{tls}", "--tls-max", tls, keylog=keylog)
                fetched += curl(lab, [f"https://{HOST}/post"], "--http2", "-d", "x" * 3000,
                                keylog=keylog)
                for p in PATHS:  # curl 7.88 fails a second stream on an h2c connection
                    fetched += curl(lab, [f"http://127.0.0.1:8080{p}"],
                                    "--http2-prior-knowledge")
                # (nginx's "return" answers an h2 POST before reading it, then resets it)
                fetched += curl(lab, ["http://127.0.0.1:8081/post"], "--http2-prior-knowledge",
                                "-d", "y" * 70000)
                fetched += curl(lab, [f"http://127.0.0.1:8081{p}" for p in
                                      ("/first", "/second", "/status/404")], "--http2")
        finally:
            stop(up)
    return World(pcap, keylog, fetched)


def _extract(w: World, native: bool = True, keylog: bool = True) -> tuple[list[Exchange],
                                                                             Summary]:
    s = Summary()
    kl = None
    if keylog:
        kl = KeyLog()
        kl.add_file(w.keylog)
    exs = [e for e in extract_file(w.pcap, summary=s, keylog=kl,
                                   **({} if native else {"native": False}))
           if isinstance(e, Exchange)]
    return exs, s


def _got(exs: list[Exchange]) -> Counter:
    return Counter((e.request.path if e.request else "?",
                    e.response.status if e.response else 0) for e in exs)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_every_request_with_its_status(world: World, native: bool) -> None:
    exs, s = _extract(world, native)
    want = Counter(world.fetched)
    assert _got(exs) == want
    for e in exs:
        if e.request.path == "/post" and e.conn.server_port == 443 and "rst" in e.meta["h2"]:
            # nginx's "return" answers before reading the body, then resets the stream
            # (NO_ERROR, RFC 9113 §8.1): the request body was cut, and says so
            assert e.meta["h2"]["rst"] == {"by": "server", "code": "NO_ERROR"}
            assert not e.completeness.response_truncated
            continue
        assert e.completeness.complete, (e.id, e.completeness)
        assert e.response is not None and e.response.version == "HTTP/2"
    by_port = Counter(e.conn.server_port for e in exs if e.conn)
    assert by_port == {443: 13, 8080: 6, 8081: 4}
    assert s.h2["connections"] == 11
    assert s.h2["via_tls"] == 3 and s.h2["via_h2c"] == 7 and s.h2["via_upgrade"] == 1
    assert s.h2["streams"] == s.h2["exchanges"] == len(exs)
    assert s.tls["h2"] == 3
    # bodies: nginx's files, byte for byte
    for e in exs:
        if e.request and e.request.path == "/big" and e.response.status == 200:
            assert len(e.response.body) == 70000
        if e.request and e.request.path == "/post" and e.conn.server_port == 8081:
            assert len(e.request.body) == 70000 and e.response.status == 200
    tls = [e for e in exs if e.conn.server_port == 443]
    assert {e.meta["tls"]["version"] for e in tls} == {"TLS 1.2", "TLS 1.3"}
    assert all(e.meta["tls"]["alpn"] == "h2" for e in tls)
    up = sorted((e for e in exs if e.conn.server_port == 8081 and e.request.path != "/post"),
                key=lambda e: e.meta["h2"]["stream"])
    assert up[0].meta["h2"]["stream"] == 1 and up[0].interim[0].status == 101
    assert up[0].request.version == "HTTP/1.1" and up[1].request.version == "HTTP/2"


def test_streams_interleave(world: World) -> None:
    """Several streams were open at once on the parallel connections."""
    exs, _ = _extract(world)
    by_conn: dict[str, list[Exchange]] = {}
    for e in exs:
        by_conn.setdefault(e.id.rsplit(".", 1)[0], []).append(e)
    overlapped = 0
    for es in by_conn.values():
        es.sort(key=lambda e: e.ts_request_start)
        for i, b in enumerate(es):
            # a stream that began while an earlier one (nginx's slow /big) was still answering
            if any(a.ts_response_end > b.ts_request_start for a in es[:i]):
                overlapped += 1
    assert overlapped >= 4


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
def test_agrees_with_tshark(world: World) -> None:
    exs, _ = _extract(world)
    ours = Counter((e.request.method, e.request.path) for e in exs
                   if e.request and e.request.version == "HTTP/2")
    theirs = Counter(tshark_h2(world.pcap, world.keylog, "-d", "tcp.port==8080,http2",
                               "-d", "tcp.port==8081,http"))
    assert ours == theirs


def test_without_keys_counted(world: World) -> None:
    exs, s = _extract(world, keylog=False)
    assert {e.conn.server_port for e in exs} == {8080, 8081}
    assert s.tls["no_key"] == 3


def test_appliance_source_keylog(world: World, tmp_path: Path) -> None:
    """The appliance's ``source.keylog`` (here with a file source): every request of the TLS
    connections, HTTP/2 included, decrypted with the key log named in the configuration."""
    from appliance.live import config as cfgmod
    from appliance.live.daemon import Appliance
    from replay.formats.jsonl import read_jsonl

    keys = tmp_path / "keys.log"
    keys.write_text(world.keylog.read_text())
    cfg = cfgmod.parse({"source": {"file": str(world.pcap), "keylog": str(keys)},
                        "metrics": {"listen": None},
                        "pipeline": {"sanitise": {"enabled": False},
                                     "sinks": [{"type": "jsonl",
                                                "path": str(tmp_path / "out/ex.jsonl")}]}})
    assert cfg.source.keylog == [str(keys)]
    app = Appliance(cfg).start()
    app.wait()
    got = Counter((e.request.path, e.response.status) for e in read_jsonl(tmp_path /
                                                                         "out/ex.jsonl"))
    assert got == Counter(world.fetched)


def test_keylog_tail_mid_capture(world: World, tmp_path: Path) -> None:
    """Secrets appended after the worker started with an empty key log: its poll (every
    20 ms in the capture loop) picks them up, and the connections decrypt."""
    from appliance.live import config as cfgmod
    from appliance.live.daemon import Worker
    from replay.formats.pcap import CaptureReader

    keys = tmp_path / "keys.log"
    keys.write_text("")
    cfg = cfgmod.parse({"source": {"file": str(world.pcap), "keylog": str(keys)},
                        "metrics": {"listen": None},
                        "pipeline": {"sanitise": {"enabled": False},
                                     "sinks": [{"type": "handoff", "size": 1000}]}})
    w = Worker(cfg)
    with CaptureReader(world.pcap) as r:
        frames = list(r)
    keys.write_text(world.keylog.read_text())  # the servers wrote their lines
    w._poll_keylog(1.0)
    w.extractor.run(frames)
    w.extractor.finish()
    assert w.extractor.tls_stats.get("h2") == 3
    assert len(w.keylog) >= 3
