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
the CLI with and without ``SHADOWTAP_PURE_PYTHON``. HTTP/2 over TLS 1.3 (the h2 library on both
ends) has its directions lent to a sink (``FastPath.sink``): the same comparisons, and the HTTP/2
reader fed the same bytes at the same times; ``meta`` is encoded in C as orjson writes it.
"""

from __future__ import annotations

import gc
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
from tlslab import MemoryTls, capture, curl, flight_frames, tls_lab

import replay.tls.records as records
from replay._native import load_c
from replay.extract import Extractor, Lines, Summary, extract_file
from replay.formats.jsonl import exchange_from_record, exchange_to_record
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
    keylog = tmp / f"keys-{version.name}-{pipelined}.log"
    m = MemoryTls(tmp, version, keylog)
    c, s, pump = m.c, m.s, m.pump

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
    return m.flights, keylog


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
    pcap = _write(tmp_path / "c.pcap", flight_frames(flights, sizes, random.Random(1)))
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
    pcap = _write(tmp_path / "p.pcap", flight_frames(flights, [1448, 300], random.Random(2)))
    recs = _same(pcap, keylog, monkeypatch)
    assert len(_targets(recs)) == N_EXCHANGES


def _data_frames(frames: list) -> list[int]:
    return [i for i, f in enumerate(frames) if len(f[2]) > 54]


def test_gap_mid_connection(conv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flights, keylog, _ = conv
    frames = flight_frames(flights, [700, 1448], random.Random(3))
    data = _data_frames(frames)
    for k, at in enumerate((len(data) // 3, len(data) // 2, 2 * len(data) // 3)):
        lossy = list(frames)
        del lossy[data[at]:data[at] + 1 + k]
        pcap = _write(tmp_path / f"gap{k}.pcap", lossy)
        recs = _same(pcap, keylog, monkeypatch)
        assert 0 < len(recs) < N_EXCHANGES + 2


def test_retransmits_and_reordering(conv, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection leaves C at a segment out of order, and comes back once the reassembler
    has nothing out of order (and the records stay in step); a retransmission is counted in C
    as the reassembler counts it (the connection stays there)."""
    flights, keylog, _ = conv
    frames = flight_frames(flights, [500, 1448], random.Random(4))
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
        if trial % 2:
            assert st["foreign_retransmits"] == 3 and st["foreign_adopted"] == 1, st
        else:
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
    pcap = _write(tmp_path / "w.pcap", flight_frames(flights, [1448], random.Random(6)))
    recs = _same(pcap, bad, monkeypatch)
    assert not _targets(recs)


def test_truncated_record(conv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The capture ends inside a record (and, another time, inside a record header)."""
    flights, keylog, _ = conv
    frames = flight_frames(flights, [1000, 3000], random.Random(7))[:-2]
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
        frames = flight_frames(flights, [37, 100, 1448, 5000], rng)
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
    merged = _three_at_once(flights, random.Random(9), 40000)
    recs = _same(_write(tmp_path / "m.pcap", merged), keylog, monkeypatch, **limits)
    if not limits:
        assert len(_targets(recs)) == 3 * N_EXCHANGES


def _three_at_once(flights: list[tuple[bool, bytes]], rng: random.Random, port: int
                   ) -> list[tuple[float, int, bytes]]:
    """Three connections carrying ``flights``, interleaved frame by frame, the second with a
    data segment retransmitted, and a pause of 3 s half-way through the capture."""
    convs = []
    for k in range(3):
        c = Conv(client=("10.0.0.1", port + k), server=("10.0.0.2", 443), ts=1000.0)
        frames = flight_frames(flights, [300, 1448, 4000], rng, c)
        if k == 1:
            i = _data_frames(frames)[len(frames) // 2]
            frames.insert(i + 1, frames[i])
        convs.append(frames)
    merged = [fr[i] for i in range(max(map(len, convs))) for fr in convs if i < len(fr)]
    half = len(merged) // 2
    return [(ts + (0 if j < half else 3.0), lt, f) for j, (ts, lt, f)
            in enumerate(sorted(merged, key=lambda x: x[0]))]


def _cut_conversations(flights: list[tuple[bool, bytes]], n: int, gap: float
                       ) -> list[tuple[float, int, bytes]]:
    """``n`` TLS connections one after another, ``gap`` seconds apart, each cut before its end
    (no FIN: a capture cut, a peer gone): Python ends them (idle timeout, eviction, finish)."""
    frames: list[tuple[float, int, bytes]] = []
    rng = random.Random(20)
    for k in range(n):
        c = Conv(client=("10.0.0.1", 42000 + k), server=("10.0.0.2", 443),
                 ts=1000.0 + k * gap)
        frames += c.handshake()
        for from_client, b in flights[:rng.randrange(len(flights) // 3, len(flights))]:
            for seg in segments(b, rng.choice([300, 1448])):
                frames.append(c.c(seg) if from_client else c.s(seg))
    return frames


def _tls_objects() -> int:
    gc.collect()
    return sum(isinstance(o, records.TlsConnection) for o in gc.get_objects())


@pytest.mark.parametrize("limits", [{"idle_timeout": 5.0}, {"max_connections": 2}, {}],
                         ids=["idle", "evicted", "finish"])
def test_ended_connections_leave_c(conv, limits: dict, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections Python ends (an idle timeout, an eviction, the end of the input) while the
    C path holds them or keeps them given back are forgotten there at once: nothing stays in
    its table holding their objects (the _Conn, the HttpConnection, the TlsConnection and its
    C reader), during the capture or after finish(); and the records are Python's."""
    flights, keylog, _ = conv
    frames = _cut_conversations(flights, 12, 10.0)
    pcap = _write(tmp_path / "cut.pcap", frames)
    recs = _same(pcap, keylog, monkeypatch, **limits)
    assert recs
    before = _tls_objects()
    ex = Extractor(lambda e: None, emit_line=lambda b, n, t: None, keylog=_keys(keylog),
                   **limits)
    with CaptureReader(pcap) as r:
        ex.run(iter(r))
    st = ex.native.stats()
    assert st["foreign_adopted"] >= 12, st
    if limits:
        # each connection ended by the later ones' segments: only those Python still tracks
        # (the last one or two) are here
        assert st["tracked"] <= ex.reasm.tracked <= 2, st
    ex.finish()
    st = ex.native.stats()
    assert st["tracked"] == 0 and st["dormant"] == 0, st
    ex.native.flush()
    assert _tls_objects() == before  # (ex is still alive: nothing of theirs is held)


def _with_duplicates(frames: list[tuple[float, int, bytes]], older: bool
                     ) -> tuple[list[tuple[float, int, bytes]], int]:
    """Every data segment sent twice: at once, or (``older``) after the next one (a
    retransmission of something already delivered, the other direction in between)."""
    out: list[tuple[float, int, bytes]] = []
    prev = None
    n = 0
    for f in frames:
        out.append(f)
        if len(f[2]) > 54 and f[2][47] & 0x07 == 0:  # data, no SYN/FIN/RST
            dup = prev if older and prev is not None else f
            out.append((f[0], dup[1], dup[2]))
            n += 1
            prev = f
    return out, n


@pytest.mark.parametrize("older", [False, True], ids=["at_once", "older"])
def test_steady_duplicates_read_in_c(conv, older: bool, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A retransmission storm (every data segment twice): each duplicate is counted in C as the
    reassembler counts it (its counter, and the handler's, which every later exchange carries:
    the C reader's lines included), without giving the connection back, so the records are
    still decrypted there (lent directions); the records and counters are Python's."""
    flights, keylog, version = conv
    frames, n = _with_duplicates(flight_frames(flights, [400, 1448], random.Random(21)), older)
    pcap = _write(tmp_path / "dup.pcap", frames)
    recs = _same(pcap, keylog, monkeypatch)
    assert len(_targets(recs)) == N_EXCHANGES
    rts = [json.loads(r).get("completeness", {}).get("retransmits", 0) for r in recs]
    assert rts == sorted(rts) and rts[-1] > 0, rts
    st = _native_stats(pcap, keylog)
    assert st["foreign_retransmits"] == n, st
    assert st["foreign_adopted"] == 1 and st["foreign_given_back"] <= 1, st  # (the FIN)
    assert st["tracked"] == 0 and st["dormant"] == 0, st
    assert st["lines"] == 7, st
    if version == ssl.TLSVersion.TLSv1_3:
        assert st["tls_lent_segments"] > 0, st


def test_syn_and_port_reuse_on_a_connection_in_c(conv, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray SYN in the middle of a TLS connection held in C, and the same ports used again
    by a new connection after it (a new SYN, once or twice), also without its FINs: the entries
    are replaced, never two for one key, and the records are Python's."""
    flights, keylog, _ = conv
    rng = random.Random(22)
    frames: list[tuple[float, int, bytes]] = []
    for k, (isn, fins) in enumerate([(1000, True), (900_000, False), (7_000_000, True)]):
        c = Conv(client=("10.0.0.1", 43000), server=("10.0.0.2", 443), isn_c=isn,
                 isn_s=isn * 3, ts=1000.0 + 20 * k)
        frames += c.handshake()
        for j, (from_client, b) in enumerate(flights):
            for seg in segments(b, rng.choice([500, 1448])):
                frames.append(c.c(seg) if from_client else c.s(seg))
            if j == len(flights) // 2 and k == 0:
                stray = Conv(client=("10.0.0.1", 43000), server=("10.0.0.2", 443),
                             isn_c=123_456, ts=frames[-1][0])
                frames.append(stray.handshake()[0])  # a SYN, another ISN
        if fins:
            frames += [c.fin_c(), c.fin_s()]
    pcap = _write(tmp_path / "reuse.pcap", frames)
    _same(pcap, keylog, monkeypatch)
    st = _native_stats(pcap, keylog)
    assert st["tracked"] == 0 and st["dormant"] == 0, st


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


# -- HTTP/2 over TLS -------------------------------------------------------------------------
# Its directions are lent to a sink in C (``FastPath.sink``, ``TlsConnection._lend_h2``): the
# records of each segment decrypted there and their plaintext handed to the HTTP/2 reader's
# feed in one call, as the Python record loop hands it on.

N_H2 = 30


def _h2_body(i: int, response: bool) -> bytes:
    n = (i * 1237 % 40000) if response else (i * 997 % 30000 if i % 3 == 0 else 0)
    if response and i % 7 == 3:
        n = 0
    return bytes((i * 7 + k) % 256 for k in range(n))


def _h2_conversation(tmp: Path, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
                     ) -> tuple[list[tuple[bool, bytes]], Path]:
    """(from_client, bytes) flights of one TLS connection (OpenSSL on both ends, ALPN h2)
    carrying N_H2 HTTP/2 exchanges (the h2 library on both ends): bodies of every size up to
    several DATA frames, some streams at once; and the key log."""
    import h2.config
    import h2.connection
    import h2.events

    keylog = tmp / f"h2keys-{version.name}.log"
    m = MemoryTls(tmp, version, keylog, alpn="h2")
    c, s = m.c, m.s
    hc = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    hs = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    pending: dict[int, int] = {}  # server: stream -> exchange

    def read_all(obj: ssl.SSLObject) -> bytes:
        out = b""
        while True:
            try:
                b = obj.read(65536)
            except ssl.SSLWantReadError:
                return out
            if not b:
                return out
            out += b

    queue: list[list] = []  # [conn, stream, body left]: sent as flow control allows

    def send_data(conn: h2.connection.H2Connection, sid: int, body: bytes) -> None:
        queue.append([conn, sid, body])

    def send_queued() -> None:
        for q in list(queue):
            conn, sid, body = q
            while body:
                n = min(16384, len(body), conn.local_flow_control_window(sid))
                if n <= 0:
                    break
                conn.send_data(sid, body[:n], end_stream=n == len(body))
                body = body[n:]
            q[2] = body
            if not body:
                queue.remove(q)

    def move() -> None:
        for _ in range(2000):
            send_queued()
            moved = False
            for obj, conn in ((c, hc), (s, hs)):
                out = conn.data_to_send()
                if out:
                    obj.write(out)
                    moved = True
            if m.step():
                moved = True
            for obj, conn in ((s, hs), (c, hc)):
                try:
                    data = read_all(obj)
                except ssl.SSLError:
                    data = b""
                if not data:
                    continue
                moved = True
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length,
                                                       ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded) and conn is hs:
                        i = pending.pop(ev.stream_id)
                        body = _h2_body(i, True)
                        hs.send_headers(ev.stream_id, [
                            (":status", "200"), ("content-type", "application/x-test"),
                            ("content-length", str(len(body))), ("x-i", str(i))],
                            end_stream=not body)
                        if body:
                            send_data(hs, ev.stream_id, body)
            if not moved:
                return

    move()  # the handshake
    hc.initiate_connection()
    hs.initiate_connection()
    move()
    i = 0
    while i < N_H2:
        batch = [i, i + 1, i + 2] if i % 10 == 4 else [i]
        for j in batch:
            sid = hc.get_next_available_stream_id()
            pending[sid] = j
            body = _h2_body(j, False)
            hc.send_headers(sid, [(":method", "POST" if body else "GET"),
                                  (":scheme", "https"), (":authority", "shop.test"),
                                  (":path", f"/h2/{j}")], end_stream=not body)
            if body:
                send_data(hc, sid, body)
        move()
        i += len(batch)
    return m.flights, keylog


@pytest.fixture(scope="module")
def conv_h2(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[bool, bytes]], Path]:
    return _h2_conversation(tmp_path_factory.mktemp("h2conv"))


def _h2_targets(recs: list[bytes]) -> list[str]:
    return [json.loads(r)["request"]["target"] for r in recs if b'"request"' in r]


@pytest.mark.parametrize("sizes", [[1], [3, 4, 5, 7], [1448], [100, 5000], [60000]],
                         ids=["1", "odd", "mss", "mixed", "coalesced"])
def test_h2_segmentation_identical_and_lent(conv_h2, sizes: list[int], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP/2 over TLS 1.3: records split over segments, many records in one segment; the
    records read in C (lent to the sink), the same records and counters as all in Python."""
    flights, keylog = conv_h2
    pcap = _write(tmp_path / "h2.pcap", flight_frames(flights, sizes, random.Random(11)))
    recs = _same(pcap, keylog, monkeypatch)
    assert sorted(_h2_targets(recs)) == sorted(f"/h2/{i}" for i in range(N_H2))
    for r in recs:
        d = json.loads(r)
        i = int(d["request"]["target"].rsplit("/", 1)[1])
        body = _h2_body(i, True)
        assert len(body) == int(dict(d["response"]["headers"])["content-length"])
        assert d["meta"]["tls"]["alpn"] == "h2"
    _, summ = _run(pcap, keylog, native=True, lines=True, monkeypatch=monkeypatch)
    assert summ == _run(pcap, keylog, native=False, lines=False, monkeypatch=monkeypatch)[1]
    st = _native_stats(pcap, keylog)
    assert st["foreign_adopted"] >= 1, st
    assert st["tracked"] == 0 and st["dormant"] == 0, st
    if sizes != [60000]:
        assert st["tls_lent_segments"] > 0, st  # records read in C, no Python call


def test_h2_lent_counts_and_feeds(conv_h2, tmp_path: Path) -> None:
    """The sink counts what the Python loop counts (records_decrypted, h2_bytes) and feeds
    the reader exactly the bytes it would, segment by segment (the same reads and times)."""
    flights, keylog = conv_h2
    pcap = _write(tmp_path / "h2f.pcap", flight_frames(flights, [700, 1448], random.Random(12)))
    seen: dict[bool, list] = {}
    for native in (True, False):
        from replay.h2.reader import H2Connection

        calls: list[tuple[bool, bytes, float]] = []
        orig = H2Connection.feed

        def spy(self, from_client, data, ts, orig=orig, calls=calls):
            calls.append((from_client, bytes(data), ts))
            return orig(self, from_client, data, ts)

        mp = pytest.MonkeyPatch()
        mp.setattr(H2Connection, "feed", spy)
        if not native:
            mp.setattr(records, "_tls13_open", None)
        try:
            ex = Extractor(lambda e: None, native=native, keylog=_keys(keylog))
            with CaptureReader(pcap) as r:
                ex.run(iter(r))
            ex.finish()
        finally:
            mp.undo()
        seen[native] = [calls, dict(ex.tls_stats), dict(ex.h2_stats)]
        if native:
            assert ex.native.stats()["tls_lent_segments"] > 0
    assert seen[True][1] == seen[False][1]
    assert seen[True][2] == seen[False][2]
    assert seen[True][0] == seen[False][0]
    assert seen[True][1]["h2_bytes"] == sum(len(d) for _, d, _ in seen[True][0])


def test_h2_gap_retransmits_damage(conv_h2, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A gap, retransmissions and reordering, flipped bits, a capture starting anywhere, a
    truncated record: every one returns the direction to Python at the right record."""
    flights, keylog = conv_h2
    rng = random.Random(13)
    for trial in range(9):
        frames = flight_frames(flights, [37, 500, 1448, 5000], rng)
        data = _data_frames(frames)
        kind = trial % 5
        if kind == 0:  # segments lost
            i = data[len(data) // (2 + trial % 3)]
            del frames[i:i + 1 + trial % 3]
        elif kind == 1:  # retransmissions and two segments swapped
            for i in sorted(rng.sample(data[4:-2], 3), reverse=True):
                if rng.random() < 0.5:
                    frames.insert(i + 1, frames[i])
                else:
                    frames[i], frames[i + 1] = frames[i + 1], frames[i]
        elif kind == 2:  # flipped bits: a record that does not verify
            for i in rng.sample(data[4:], 3):
                ts, lt, f = frames[i]
                b = bytearray(f)
                b[rng.randrange(54, len(b))] ^= 1 << rng.randrange(8)
                frames[i] = (ts, lt, bytes(b))
        elif kind == 3:  # the capture starts anywhere
            frames = frames[rng.randrange(3, len(frames) - 2):]
        else:  # ends inside a record header
            i = data[rng.randrange(len(data) // 2, len(data) - 1)]
            ts, lt, fr = frames[i]
            frames = frames[:i] + [(ts, lt, fr[:54 + 3])]
        _same(_write(tmp_path / f"h2d{trial}.pcap", frames), keylog, monkeypatch)


@pytest.mark.parametrize("limits", [{}, {"max_connections": 1}, {"idle_timeout": 0.5},
                                    {"max_buffer": 3000}], ids=str)
def test_h2_interleaved_connections_and_limits(conv_h2, limits: dict, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Three HTTP/2 TLS connections at once, one with a retransmission, a pause mid-way:
    connections taken from C while their records are lent."""
    flights, keylog = conv_h2
    merged = _three_at_once(flights, random.Random(14), 41000)
    recs = _same(_write(tmp_path / "h2m.pcap", merged), keylog, monkeypatch, **limits)
    if not limits:
        assert len(_h2_targets(recs)) == 3 * N_H2


@pytest.mark.parametrize("older", [False, True], ids=["at_once", "older"])
def test_h2_steady_duplicates_lent(conv_h2, older: bool, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP/2 over TLS with every data segment twice: the duplicates counted in C, the
    directions still lent to the sink, the records and counters Python's."""
    flights, keylog = conv_h2
    frames, n = _with_duplicates(flight_frames(flights, [400, 1448], random.Random(23)), older)
    pcap = _write(tmp_path / "h2dup.pcap", frames)
    recs = _same(pcap, keylog, monkeypatch)
    assert sorted(_h2_targets(recs)) == sorted(f"/h2/{i}" for i in range(N_H2))
    st = _native_stats(pcap, keylog)
    assert st["foreign_retransmits"] == n and st["foreign_adopted"] == 1, st
    assert st["tls_lent_segments"] > 0, st
    assert st["tracked"] == 0 and st["dormant"] == 0, st


@pytest.mark.parametrize("limits", [{"idle_timeout": 5.0}, {"max_connections": 2}, {}],
                         ids=["idle", "evicted", "finish"])
def test_h2_ended_connections_leave_c(conv_h2, limits: dict, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP/2 TLS connections cut before their end: forgotten by the C path when Python ends
    them (their sinks too), the records Python's."""
    flights, keylog = conv_h2
    pcap = _write(tmp_path / "h2cut.pcap", _cut_conversations(flights, 8, 10.0))
    _same(pcap, keylog, monkeypatch, **limits)
    before = _tls_objects()
    ex = Extractor(lambda e: None, emit_line=lambda b, n, t: None, keylog=_keys(keylog),
                   **limits)
    with CaptureReader(pcap) as r:
        ex.run(iter(r))
    if limits:
        st = ex.native.stats()
        assert st["tracked"] <= ex.reasm.tracked <= 2, st
    ex.finish()
    st = ex.native.stats()
    assert st["tracked"] == 0 and st["dormant"] == 0, st
    assert _tls_objects() == before


def test_meta_encoded_in_c_as_orjson() -> None:
    """``encode_line`` writes ``meta`` (dicts of str, int, bool, None: the TLS and HTTP/2
    markers) byte for byte as orjson does, and declines what it does not write."""
    encode_line = load_c("replay._fastpath", "encode_line")
    base = json.loads(
        b'{"v":1,"id":"c1.1","conn":{"client_ip":"10.0.0.1","client_port":1,"server_ip":'
        b'"10.0.0.2","server_port":443},"ts_request_start":1.5,"request":{"method":"GET",'
        b'"target":"/","version":"HTTP/2","headers":[[":authority","a"]]}}')
    ok = [{"tls": {"version": "TLS 1.3", "cipher": "TLS_AES_256_GCM_SHA384", "sni": "shop.test",
                   "alpn": "h2"}},
          {"h2": {"stream": 2**31 - 1}, "tls": {"alpn": "h2,http/1.1"}},
          {"k": True, "f": False, "n": None, "i": -7, "e": {}, "u": "caf\u00e9 \u2603 \U0001f600",
           "q": "a\"b\\c\n\u0001\u007f", "d": {"x": {"y": {"z": 1}}}},
          {"\u00e9\n": "v"}]
    declined = [{"f": 1.5}, {"l": [1, 2]}, {"b": {"x": b"y"}}, {"big": 2**70}, {1: "x"},
                {"s": "\ud800"}]
    for meta in ok + declined:
        ex = exchange_from_record(dict(base))
        ex.meta = meta
        line = encode_line(ex)
        if meta in ok:
            want = orjson.dumps(exchange_to_record(ex), option=orjson.OPT_APPEND_NEWLINE)
            assert line == want, meta
        else:
            assert line is None, meta
