"""Decrypted HTTP/1 in the native fast path against the pure-Python path it stands in for.

With exchanges written as JSONL lines, a TLS connection stays in ``replay/_fastpath.c``: its TCP
reassembly there (the TLS reader fed in-order bytes, ``HttpConnection.export_foreign``), its
application data records decrypted in one C call per segment (``tls13_open``,
``Plain.records``), and its plaintext read and encoded by the C HTTP/1 reader (``Plain``), each
handing back to the Python code the moment anything is unusual. Nothing observable may change:
every test extracts the same capture with all of that and with none of it (``native=False`` and
the record loop in Python), and requires byte-identical JSONL records in the same order and the
same summary counters. The captures: a real OpenSSL conversation over memory BIOs cut into
segments of every awkward size, then made hostile (records split over segments, a gap
mid-connection, retransmissions and reordering, wrong keys, a truncated record, random damage,
HTTP the C reader does not read); and, as root with nginx and curl, a real capture, also through
the CLI with and without ``SHADOWTAP_PURE_PYTHON``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import dpkt
import orjson
import pytest
from netsim import Conv, segments
from tlslab import capture, curl, make_cert, tls_lab

import replay.tls.records as records
from replay._native import load_c
from replay.extract import Extractor, Lines, Summary, extract_file
from replay.formats.jsonl import exchange_to_record
from replay.formats.pcap import CaptureReader
from replay.tls import KeyLog

FAST = load_c("replay._fastpath", "FastPath")
pytestmark = pytest.mark.skipif(
    FAST is None, reason="replay._fastpath is not built, or SHADOWTAP_PURE_PYTHON is set")

REPO = Path(__file__).resolve().parents[2]
SHADOWTAP = Path(sys.executable).parent / "shadowtap"


def _plain_http(i: int) -> tuple[bytes, bytes]:
    """Exchange i: (request bytes, response bytes): mostly what the C reader reads, some not."""
    body = bytes(range(256)) * (i % 5) + b"x" * (i * 37 % 3000)
    kind = i % 9
    if kind == 7:  # chunked with a trailer: the C reader gives it back
        resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
                b"X-Sum: 1\r\n\r\n")
        return b"GET /chunked/%d HTTP/1.1\r\nHost: shop.test\r\n\r\n" % i, resp
    if kind == 8:  # a 100 Continue first, and a body with a non-ASCII byte
        req = (b"POST /up/%d HTTP/1.1\r\nHost: shop.test\r\nExpect: 100-continue\r\n"
               b"Content-Length: 3\r\n\r\n\xffab" % i)
        resp = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n"
                b"ok")
        return req, resp
    req = (b"POST /item/%d HTTP/1.1\r\nHost: shop.test\r\nContent-Length: %d\r\n\r\n"
           % (i, len(body)) + body)
    resp_body = body[::-1] + b"!"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(resp_body) + resp_body
    return req, resp


N_EXCHANGES = 24


def _conversation(tmp: Path, version: ssl.TLSVersion, *, pipelined: bool = False
                  ) -> tuple[list[tuple[bool, bytes]], Path]:
    """(from_client, bytes) flights of one TLS connection (real OpenSSL on both ends) carrying
    N_EXCHANGES keep-alive exchanges (two requests in one write when ``pipelined``), and the
    key log the client wrote."""
    cert, key = make_cert(tmp)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    sctx.set_alpn_protocols(["http/1.1"])
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    cctx.minimum_version = cctx.maximum_version = version
    cctx.set_alpn_protocols(["http/1.1"])
    keylog = tmp / f"keys-{version.name}-{pipelined}.log"
    cctx.keylog_filename = str(keylog)
    cin, cout, sin, sout = (ssl.MemoryBIO() for _ in range(4))
    c = cctx.wrap_bio(cin, cout, server_hostname="shop.test")
    s = sctx.wrap_bio(sin, sout, server_side=True)
    flights: list[tuple[bool, bytes]] = []

    def pump() -> None:
        for _ in range(50):
            for obj in (c, s):
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            moved = False
            for from_client, src, dst in ((True, cout, sin), (False, sout, cin)):
                b = src.read()
                if b:
                    flights.append((from_client, b))
                    dst.write(b)
                    moved = True
            if not moved:
                return

    def drain(obj: ssl.SSLObject) -> None:
        while True:
            try:
                if not obj.read(65536):
                    return
            except ssl.SSLWantReadError:
                return

    pump()
    i = 0
    while i < N_EXCHANGES:
        batch = [i, i + 1] if pipelined and i % 6 == 2 else [i]
        for j in batch:
            c.write(_plain_http(j)[0])
        pump()
        drain(s)
        for j in batch:
            s.write(_plain_http(j)[1])
        pump()
        drain(c)
        i += len(batch)
    return flights, keylog


def _frames(flights: list[tuple[bool, bytes]], sizes: list[int], rng: random.Random
            ) -> list[tuple[float, int, bytes]]:
    conv = Conv(server=("10.0.0.2", 443))
    frames = conv.handshake()
    for from_client, b in flights:
        for seg in segments(b, rng.choice(sizes)):
            frames.append(conv.c(seg) if from_client else conv.s(seg))
    return frames + [conv.fin_c(), conv.fin_s()]


def _write(path: Path, frames: list[tuple[float, int, bytes]]) -> Path:
    with path.open("wb") as f:
        w = dpkt.pcap.Writer(f, linktype=1)
        for ts, _lt, fr in frames:
            w.writepkt(fr, ts)
    return path


def _keys(path: Path) -> KeyLog:
    kl = KeyLog()
    kl.add_file(path)
    return kl


def _run(pcap: Path, keylog: Path, *, native: bool, lines: bool,
         monkeypatch: pytest.MonkeyPatch, **limits: object) -> tuple[list[bytes], dict]:
    """Every JSONL record, and the summary, of one extraction; ``native=False``: all Python
    (the record loop too)."""
    with monkeypatch.context() as m:
        if not native:
            m.setattr(records, "_tls13_open", None)
        s = Summary()
        recs: list[bytes] = []
        for x in extract_file(pcap, summary=s, native=native, lines=lines,
                              keylog=_keys(keylog), **limits):
            if isinstance(x, Lines):
                got = x.data.splitlines(keepends=True)
                assert len(got) == x.n
                recs += got
            else:
                recs.append(orjson.dumps(exchange_to_record(x),  # type: ignore[arg-type]
                                         option=orjson.OPT_APPEND_NEWLINE))
    d = s.to_dict()
    d.pop("seconds")
    d.pop("packets_per_second")
    return recs, d


def _native_stats(pcap: Path, keylog: Path) -> dict:
    """The fast path's counters for an extraction writing lines."""
    ex = Extractor(lambda e: None, emit_line=lambda b, n, t: None, keylog=_keys(keylog))
    with CaptureReader(pcap) as r:
        ex.run(iter(r))
    ex.finish()
    return ex.native.stats()


def _same(pcap: Path, keylog: Path, monkeypatch: pytest.MonkeyPatch,
          **limits: object) -> list[bytes]:
    py, py_sum = _run(pcap, keylog, native=False, lines=False, monkeypatch=monkeypatch,
                      **limits)
    for lines in (True, False):
        c, c_sum = _run(pcap, keylog, native=True, lines=lines, monkeypatch=monkeypatch,
                        **limits)
        for i, (a, b) in enumerate(zip(py, c, strict=False)):
            assert a == b, (f"{pcap.name} (lines={lines}): record {i} differs:\n"
                            f" python {a[:600]!r}\n native {b[:600]!r}")
        assert len(c) == len(py), f"{pcap.name} (lines={lines}): {len(c)} vs {len(py)}"
        assert c_sum == py_sum, pcap.name
    return py


@pytest.fixture(scope="module", params=[ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2],
                ids=["tls13", "tls12"])
def conv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[list[tuple[bool, bytes]], Path, ssl.TLSVersion]:
    flights, keylog = _conversation(tmp_path_factory.mktemp("conv"), request.param)
    return flights, keylog, request.param


def _targets(recs: list[bytes]) -> list[str]:
    return [json.loads(r)["request"]["target"] for r in recs if b'"request"' in r]


@pytest.mark.parametrize("sizes", [[1], [3, 4, 5, 7], [1448], [100, 5000], [60000]],
                         ids=["1", "odd", "mss", "mixed", "coalesced"])
def test_segmentation_identical_and_native(conv, sizes: list[int], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Records split over segments (a header cut anywhere), many records in one segment."""
    flights, keylog, version = conv
    pcap = _write(tmp_path / "c.pcap", _frames(flights, sizes, random.Random(1)))
    recs = _same(pcap, keylog, monkeypatch)
    assert _targets(recs) == [
        _plain_http(i)[0].split(b" ")[1].decode() for i in range(N_EXCHANGES)]
    meta = json.loads(recs[0])["meta"]["tls"]
    assert meta["version"] == ("TLS 1.3" if version == ssl.TLSVersion.TLSv1_3 else "TLS 1.2")
    st = _native_stats(pcap, keylog)
    assert st["foreign_adopted"] >= 1, st  # the TCP of the TLS connection stayed in C
    assert st["tracked"] == 0 and st["dormant"] == 0, st  # nothing left holding it
    # the exchanges before the first chunked one (which it gives back) were read in C
    assert st["lines"] == 7, st
    if version == ssl.TLSVersion.TLSv1_3 and sizes != [60000]:
        assert st["tls_lent_segments"] > 0, st  # records read in C, no Python call


def test_pipelined_requests_hand_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two requests in one record: the C reader gives the plaintext back mid-connection."""
    flights, keylog = _conversation(tmp_path, ssl.TLSVersion.TLSv1_3, pipelined=True)
    pcap = _write(tmp_path / "p.pcap", _frames(flights, [1448, 300], random.Random(2)))
    recs = _same(pcap, keylog, monkeypatch)
    assert len(_targets(recs)) == N_EXCHANGES


def _data_frames(frames: list) -> list[int]:
    return [i for i, f in enumerate(frames) if len(f[2]) > 54]


def test_gap_mid_connection(conv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flights, keylog, _ = conv
    frames = _frames(flights, [700, 1448], random.Random(3))
    data = _data_frames(frames)
    for k, at in enumerate((len(data) // 3, len(data) // 2, 2 * len(data) // 3)):
        lossy = list(frames)
        del lossy[data[at]:data[at] + 1 + k]
        pcap = _write(tmp_path / f"gap{k}.pcap", lossy)
        recs = _same(pcap, keylog, monkeypatch)
        assert 0 < len(recs) < N_EXCHANGES + 2


def test_retransmits_and_reordering(conv, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection leaves C at a retransmission or a segment out of order, and comes back
    once the reassembler has nothing out of order (and the records stay in step)."""
    flights, keylog, _ = conv
    frames = _frames(flights, [500, 1448], random.Random(4))
    data = _data_frames(frames)
    rng = random.Random(5)
    for trial in range(4):
        f = list(frames)
        for i in sorted(rng.sample(data[4:-2], 3), reverse=True):
            if trial % 2:
                f.insert(i + 1, f[i])  # a retransmission
            else:
                f[i], f[i + 1] = f[i + 1], f[i]  # two segments swapped
        pcap = _write(tmp_path / f"rt{trial}.pcap", f)
        recs = _same(pcap, keylog, monkeypatch)
        assert len(_targets(recs)) == N_EXCHANGES
        st = _native_stats(pcap, keylog)
        assert st["foreign_adopted"] >= 2 and st["foreign_given_back"] >= 2, st
        assert st["tracked"] == 0 and st["dormant"] == 0, st


def test_wrong_keys(conv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flights, keylog, _ = conv
    bad = tmp_path / "bad.log"
    lines = []
    for line in keylog.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            parts[2] = parts[2][:-2] + ("00" if parts[2][-2:] != "00" else "11")
        lines.append(" ".join(parts))
    bad.write_text("\n".join(lines) + "\n")
    pcap = _write(tmp_path / "w.pcap", _frames(flights, [1448], random.Random(6)))
    recs = _same(pcap, bad, monkeypatch)
    assert not _targets(recs)


def test_truncated_record(conv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The capture ends inside a record (and, another time, inside a record header)."""
    flights, keylog, _ = conv
    frames = _frames(flights, [1000, 3000], random.Random(7))[:-2]
    data = _data_frames(frames)
    for cut in (len(data) // 2, len(data) - 3):
        f = frames[:data[cut]]
        ts, lt, fr = frames[data[cut]]
        f.append((ts, lt, fr[:54 + 3]))  # a record header cut: 3 bytes of it
        for tail in (f, frames[:data[cut] + 1]):
            # (the cut frame's IP length still says the whole segment: a truncated capture)
            pcap = _write(tmp_path / f"t{cut}.pcap", tail)
            _same(pcap, keylog, monkeypatch)


def test_random_damage(conv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flights, keylog, _ = conv
    rng = random.Random(8)
    for trial in range(6):
        frames = _frames(flights, [37, 100, 1448, 5000], rng)
        data = _data_frames(frames)
        kind = trial % 3
        if kind == 0:  # flipped bits (a record that does not verify)
            for i in rng.sample(data, 3):
                ts, lt, f = frames[i]
                b = bytearray(f)
                b[rng.randrange(54, len(b))] ^= 1 << rng.randrange(8)
                frames[i] = (ts, lt, bytes(b))
        elif kind == 1:  # the capture starts anywhere
            frames = frames[rng.randrange(3, len(frames) - 2):]
        else:  # a window of segments lost
            i = rng.choice(data)
            del frames[i:i + rng.randint(1, 4)]
        _same(_write(tmp_path / f"d{trial}.pcap", frames), keylog, monkeypatch)


@pytest.mark.parametrize("limits", [{}, {"max_connections": 1}, {"idle_timeout": 0.5},
                                    {"max_buffer": 3000}], ids=str)
def test_interleaved_connections_and_limits(conv, limits: dict, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Three TLS connections at once (one with a segment retransmitted), a pause of seconds
    in the middle: evictions, idle timeouts and small buffers take connections from C while
    their records are read there."""
    flights, keylog, _ = conv
    rng = random.Random(9)
    convs = []
    for k in range(3):
        c = Conv(client=("10.0.0.1", 40000 + k), server=("10.0.0.2", 443), ts=1000.0)
        frames = c.handshake()
        for from_client, b in flights:
            for seg in segments(b, rng.choice([300, 1448, 4000])):
                frames.append(c.c(seg) if from_client else c.s(seg))
        frames += [c.fin_c(), c.fin_s()]
        if k == 1:
            i = _data_frames(frames)[len(frames) // 2]
            frames.insert(i + 1, frames[i])
        convs.append(frames)
    merged = []
    for i in range(max(map(len, convs))):
        for frames in convs:
            if i < len(frames):
                merged.append(frames[i])
    half = len(merged) // 2
    merged = [(ts + (0 if j < half else 3.0), lt, f) for j, (ts, lt, f)
              in enumerate(sorted(merged, key=lambda x: x[0]))]
    recs = _same(_write(tmp_path / "m.pcap", merged), keylog, monkeypatch, **limits)
    if not limits:
        assert len(_targets(recs)) == 3 * N_EXCHANGES


@pytest.mark.root
@pytest.mark.skipif(any(shutil.which(t) is None for t in ("nginx", "curl", "tcpdump")),
                    reason="needs nginx, curl and tcpdump")
def test_real_capture_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nginx and curl over TLS 1.3 and 1.2: the same records with and without the C path (in
    process, and through the CLI with ``SHADOWTAP_PURE_PYTHON``), also with segments lost."""
    pcap, keylog = tmp_path / "cap.pcap", tmp_path / "keys.log"
    paths = ["/small", "/mid", "/big", "/empty"] * 3
    with tls_lab(tmp_path) as lab, capture(lab, pcap):
        for tls in ("1.3", "1.2"):
            curl(lab, keylog, paths, tls=tls, post="item=42&qty=3")
    recs = _same(pcap, keylog, monkeypatch)
    assert len(recs) == 2 * (len(paths) + 1)
    assert _native_stats(pcap, keylog)["foreign_adopted"] >= 2

    outs = []
    for pure in (False, True):
        env = dict(os.environ)
        env.pop("SHADOWTAP_PURE_PYTHON", None)
        if pure:
            env["SHADOWTAP_PURE_PYTHON"] = "1"
        out = tmp_path / f"out{pure}.jsonl"
        r = subprocess.run([str(SHADOWTAP), "extract", str(pcap),
                            "--keylog", str(keylog), "-o", str(out), "--summary-json"],
                           cwd=REPO, env=env, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        summary = json.loads(r.stderr.splitlines()[-1])
        summary.pop("seconds")
        summary.pop("packets_per_second")
        outs.append((out.read_bytes(), summary))
    assert outs[0] == outs[1]
    assert outs[0][0].splitlines(keepends=True) == recs

    with CaptureReader(pcap) as r:
        frames = [(ts, lt, bytes(f)) for ts, lt, f in r]
    data = _data_frames(frames)
    lossy = [f for i, f in enumerate(frames) if i not in (data[len(data) // 3],
                                                          data[2 * len(data) // 3])]
    _same(_write(tmp_path / "lossy.pcap", lossy), keylog, monkeypatch)
