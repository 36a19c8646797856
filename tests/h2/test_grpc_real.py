"""gRPC against real peers: a grpcio server and client (stubs compiled from shop.proto with
grpc_tools.protoc at test time) in a namespace of its own, captured by tcpdump. Every call comes
back as an Exchange with its grpc-status (and grpc-message), its messages decoded as protobuf,
by field name with the descriptors and by field number without; the calls agree with tshark.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("grpc")
grpc_tools = pytest.importorskip("grpc_tools.protoc")

from h2lab import capture, h2_lab, stop, wait_port  # noqa: E402

from replay.extract import Summary, extract_file  # noqa: E402
from replay.h2 import grpc as g  # noqa: E402
from replay.model import Exchange  # noqa: E402

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("nginx", "tcpdump")),
                       reason="needs nginx and tcpdump"),
]

HERE = Path(__file__).resolve().parent
PROTO = HERE / "shop.proto"
STATUS = {"OK": 0, "INVALID_ARGUMENT": 3, "NOT_FOUND": 5}


def compile_proto(out: Path) -> Path:
    out.mkdir(exist_ok=True)
    rc = grpc_tools.main(["protoc", f"-I{HERE}", f"--python_out={out}",
                          f"--grpc_python_out={out}", f"--descriptor_set_out={out}/shop.pb",
                          "--include_imports", str(PROTO)])
    assert rc == 0
    return out


@dataclass
class World:
    pcap: Path
    gen: Path
    calls: list[tuple[str, int]]


def grpc_server(lab, gen: Path, port: int, tag: str) -> subprocess.Popen:
    p = lab.popen(sys.executable, str(HERE / "grpc_peer.py"), str(gen), "server", str(port),
                  tag, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(lab, port, p, "grpc server")
    return p


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    d = tmp_path_factory.mktemp("grpc")
    gen = compile_proto(d / "gen")
    pcap = d / "grpc.pcap"
    with h2_lab(d) as lab:
        srv = grpc_server(lab, gen, 50051, "v1")
        try:
            with capture(lab, pcap, (50051,)):
                r = lab.run(sys.executable, str(HERE / "grpc_peer.py"), str(gen), "client",
                            "50051", capture_output=True, timeout=60)
                assert r.returncode == 0, r.stderr.decode(errors="replace")
        finally:
            stop(srv)
    calls = [(m, int(c)) for m, c in (ln.split() for ln in r.stdout.decode().splitlines())]
    return World(pcap, gen, calls)


def _calls(w: World, native: bool = True) -> tuple[list[Exchange], Summary]:
    s = Summary()
    exs = [e for e in extract_file(w.pcap, summary=s, **({} if native else {"native": False}))
           if isinstance(e, Exchange)]
    return exs, s


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_every_call_with_its_grpc_status(world: World, native: bool) -> None:
    exs, s = _calls(world, native)
    got = Counter((e.request.target.rsplit("/", 1)[1], e.meta["grpc"]["status"]) for e in exs)
    assert got == Counter(world.calls)
    assert s.h2["grpc_calls"] == len(world.calls) and s.h2["via_h2c"] == 1
    for e in exs:
        assert e.response.status == 200 and e.completeness.complete
        assert e.request.target.startswith("/shop.Shop/")
    fail = next(e for e in exs if e.request.target.endswith("/Fail"))
    assert fail.meta["grpc"]["message"] == "bad request: 100%"
    lst = next(e for e in exs if e.request.target.endswith("/ListItems"))
    assert lst.meta["grpc"]["response_messages"] == 3
    assert any(k == "grpc-encoding" and v == "gzip" for k, v in lst.response.headers)


def test_messages_decoded_raw_and_by_descriptor(world: World) -> None:
    exs, _ = _calls(world)
    one = next(e for e in exs if e.request.target.endswith("/GetItem")
               and e.meta["grpc"]["status"] == 0 and b"zipped" not in e.request.body)
    zipped = next(e for e in exs if e.request.target.endswith("/GetItem")
                  and e.meta["grpc"]["status"] == 0 and e is not one
                  and any(k == "grpc-encoding" for k, _ in e.request.headers))
    g._pool = None
    raw = g.document(one.response.headers, one.response.body, one.request.target)
    (m,) = raw["messages"]
    assert m["2"].startswith("item ") and m["4"] == ["a", "b"]
    assert m["5"] == {"1": "EUR", "2": 950} and m["6"] == 1
    zq = g.document(zipped.request.headers, zipped.request.body, zipped.request.target, True)
    assert zq["messages"] == [{"1": 5, "2": "zipped"}]
    assert g.load_descriptors([world.gen / "shop.pb"]) == 3
    try:
        named = g.document(one.response.headers, one.response.body, one.request.target)
        (m,) = named["messages"]
        assert m["name"].startswith("item ") and m["tags"] == ["a", "b"]
        assert m["cost"] == {"currency": "EUR", "cents": "950"} and m["in_stock"] is True
        lst = next(e for e in exs if e.request.target.endswith("/ListItems"))
        items = g.document(lst.response.headers, lst.response.body, lst.request.target)
        assert [x.get("id", "0") for x in items["messages"]] == ["0", "1", "2"]
        assert g.load_descriptors([PROTO]) == 3  # a .proto, compiled here
    finally:
        g._pool = None
        g._methods.clear()


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
def test_agrees_with_tshark(world: World) -> None:
    exs, _ = _calls(world)
    r = subprocess.run(["tshark", "-n", "-r", str(world.pcap), "-d", "tcp.port==50051,http2",
                        "-Y", "grpc && http2.headers.path", "-T", "fields", "-E",
                        "occurrence=a", "-E", "aggregator=|", "-e", "http2.headers.path"],
                       capture_output=True, timeout=120, check=True)
    theirs = Counter(p for line in r.stdout.decode().splitlines() for p in line.split("|")
                     if p)
    ours = Counter(e.request.target for e in exs)
    assert ours == theirs
    r = subprocess.run(["tshark", "-n", "-r", str(world.pcap), "-d", "tcp.port==50051,http2",
                        "-Y", "http2.header.name == \"grpc-status\"", "-T", "fields", "-E",
                        "occurrence=a", "-E", "aggregator=|", "-e", "http2.header.value",
                        "-e", "http2.header.name"],
                       capture_output=True, timeout=120, check=True)
    statuses = Counter()
    for line in r.stdout.decode().splitlines():
        values, names = line.split("\t")
        for n, v in zip(names.split("|"), values.split("|"), strict=False):
            if n == "grpc-status":
                statuses[int(v)] += 1
    assert statuses == Counter(e.meta["grpc"]["status"] for e in exs)


def test_capture_starting_mid_connection(world: World, tmp_path: Path) -> None:
    """The capture starts after the connection's first data segments: the reader finds a
    frame boundary, reads what it can (answers whose requests were before the capture,
    fields referencing HPACK entries it never saw marked), never raises."""
    import dpkt

    with world.pcap.open("rb") as f:
        frames = list(dpkt.pcap.Reader(f))
    data_seen = 0
    kept = []
    for ts, buf in frames:
        eth = dpkt.ethernet.Ethernet(buf) if buf[12:14] == b"\x08\x00" else None
        ip = eth.data if eth is not None else dpkt.ip.IP(buf[4:]) if buf[:4] else None
        tcp = getattr(ip, "data", None)
        if isinstance(tcp, dpkt.tcp.TCP) and tcp.data and data_seen < 4:
            data_seen += 1
            continue
        if data_seen >= 4 or not (isinstance(tcp, dpkt.tcp.TCP) and tcp.data):
            kept.append((ts, buf))
    out = tmp_path / "mid.pcap"
    with out.open("wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB if frames[0][1][12:14] ==
                             b"\x08\x00" else dpkt.pcap.DLT_NULL)
        for ts, buf in kept:
            w.writepkt(buf, ts)
    s = Summary()
    exs = [e for e in extract_file(out, summary=s) if isinstance(e, Exchange)]
    assert exs, s.h2
    statuses = [e.meta.get("grpc", {}).get("status") for e in exs]
    answered = [e for e in exs if e.response is not None]
    assert answered and all(isinstance(e.response.status, int) for e in answered)
    assert s.h2.get("mid_stream", 0) + s.h2.get("gaps", 0) >= 1 or statuses
