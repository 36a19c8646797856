"""The synthetic capture generator must produce captures that real tools read as we intend.

Why: every extractor test and the benchmark trust ``replay.synth``'s ground truth. If tshark
(an independent HTTP dissector) sees different requests than the truth list says, or tcpdump
complains, the generator is wrong and so would be every number built on it.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from replay.synth import GenStats, TruthRow, generate_pcap

needs_tshark = pytest.mark.skipif(
    shutil.which("tshark") is None, reason="tshark not installed (apt-get install tshark)"
)
needs_tcpdump = pytest.mark.skipif(
    shutil.which("tcpdump") is None, reason="tcpdump not installed (apt-get install tcpdump)"
)


def _make(tmp_path: Path, name: str, **kw: object) -> tuple[Path, GenStats, list[TruthRow]]:
    truth: list[TruthRow] = []
    path = tmp_path / name
    kw.setdefault("connections", 120)
    kw.setdefault("concurrency", 40)
    st = generate_pcap(path, truth=truth, **kw)  # type: ignore[arg-type]
    return path, st, truth


def _tshark(path: Path, display_filter: str, *fields: str) -> list[list[str]]:
    args = ["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    res = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120)
    return [line.split("\t") for line in res.stdout.splitlines()]


@needs_tshark
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"ipv6_share": 0.5, "vlan": 7, "seed": 3},
        {"mss": 536, "chunked_share": 0.6, "gzip_share": 0.5, "post_share": 0.6, "seed": 9},
    ],
    ids=["ipv4", "ipv6-vlan", "small-mss-chunked-gzip"],
)
def test_tshark_dissects_exactly_the_truth(tmp_path: Path, variant: dict[str, object]) -> None:
    """tshark's requests and final statuses equal the truth, exchange for exchange.

    These seeds avoid one tshark 4.0 weakness seen at scale (1 request in 178,780): a chunked
    request body whose closing CRLF arrives alone in the next segment is flagged malformed and
    the request is lost. The bytes are valid HTTP; that is tshark's error, not the generator's.
    """
    path, st, truth = _make(tmp_path, "t.pcap", **variant)
    assert st.requests == len(truth) > 200
    rows = _tshark(
        path, "http", "tcp.stream", "ip.src", "ipv6.src", "tcp.srcport",
        "http.request.method", "http.request.uri", "http.host", "http.response.code",
    )
    seen_req = Counter()
    seen_status = Counter()
    streams = set()
    for stream, ip4, ip6, sport, method, uri, host, code in rows:
        streams.add(stream)
        if method:
            seen_req[(ip4 or ip6, int(sport), method, uri, host)] += 1
        if code and code != "100":
            seen_status[int(code)] += 1
    want_req = Counter((k[0], k[1], m, t, h) for k, m, t, h, _ in truth)
    assert seen_req == want_req
    assert seen_status == Counter(s for *_, s in truth)
    assert len(streams) == st.connections  # every 4-tuple is a distinct stream


@needs_tshark
def test_tcp_is_consistent_and_nothing_is_malformed(tmp_path: Path) -> None:
    """No retransmission/lost/out-of-order/window findings and no malformed dissection."""
    path, _, _ = _make(tmp_path, "c.pcap", ipv6_share=0.2, seed=5)
    bad = _tshark(
        path,
        "(tcp.analysis.flags && !tcp.flags.reset) || _ws.malformed"
        " || (_ws.expert.severity >= warning && !tcp.flags.reset)",
        "frame.number", "_ws.expert.message",
    )
    assert bad == []


@needs_tshark
def test_impairments_are_visible_to_tshark(tmp_path: Path) -> None:
    path, st, _ = _make(tmp_path, "i.pcap", loss=0.02, reorder=0.02, retransmit=0.02)
    assert st.dropped_segments and st.reordered_segments and st.retransmitted_segments
    lost = _tshark(path, "tcp.analysis.lost_segment", "frame.number")
    retx = _tshark(path, "tcp.analysis.retransmission", "frame.number")
    assert lost and retx


@needs_tcpdump
@pytest.mark.parametrize("variant", [{}, {"ipv6_share": 0.5, "vlan": 100}])
def test_tcpdump_reads_without_warnings(tmp_path: Path, variant: dict[str, object]) -> None:
    path, st, _ = _make(tmp_path, "d.pcap", **variant)

    def read(p: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        r = subprocess.run(["tcpdump", "-n", "-r", str(p)], capture_output=True, text=True,
                           timeout=120)
        return r, r.stderr.replace(str(p), "FILE").splitlines()

    res, said = read(path)
    assert res.returncode == 0, res.stderr
    # Nothing more on stderr than for a capture with the same file header and no packets:
    # whatever tcpdump prints about any file (its wording, which updates may change) is the
    # baseline; a warning about our packets would be extra.
    empty = tmp_path / "header-only.pcap"
    empty.write_bytes(path.read_bytes()[:24])
    ref, baseline = read(empty)
    assert ref.returncode == 0 and ref.stdout == "", ref
    assert said == baseline, res.stderr
    assert len(res.stdout.splitlines()) == st.packets
    assert "[|" not in res.stdout  # tcpdump's mark for a header cut short


def test_deterministic_and_seed_sensitive() -> None:
    a, b, c = io.BytesIO(), io.BytesIO(), io.BytesIO()
    generate_pcap(a, connections=50, seed=1)
    generate_pcap(b, connections=50, seed=1)
    generate_pcap(c, connections=50, seed=2)
    assert a.getvalue() == b.getvalue() != c.getvalue()


def _frames(buf: bytes) -> list[bytes]:
    out = []
    off = 24
    while off < len(buf):
        _, _, incl, _ = struct.unpack_from("<IIII", buf, off)
        out.append(buf[off + 16: off + 16 + incl])
        off += 16 + incl
    return out


def test_ipv4_header_checksums_are_correct() -> None:
    """Checksums are cheap to get right for IPv4 headers, so readers that verify them work."""
    buf = io.BytesIO()
    st = generate_pcap(buf, connections=30, seed=4)
    frames = _frames(buf.getvalue())
    assert len(frames) == st.packets
    for f in frames:
        hdr = f[14:34]
        s = sum(struct.unpack("!10H", hdr))
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        assert s == 0xFFFF
        assert struct.unpack_from("!H", f, 16)[0] == len(f) - 14


def test_realism_features_are_present() -> None:
    """The capture must exercise what the extractor has to handle, not just simple GETs."""
    buf = io.BytesIO()
    truth: list[TruthRow] = []
    st = generate_pcap(buf, connections=400, seed=7, truth=truth)
    data = buf.getvalue()
    for needle in (b"Transfer-Encoding: chunked", b"Expect: 100-continue",
                   b"HTTP/1.1 100 Continue", b"Content-Encoding: gzip", b"Cookie: ",
                   b"Authorization: Bearer", b"Content-Type: application/x-www-form-urlencoded",
                   b"Connection: close", b"?"):
        assert needle in data, needle
    methods = Counter(m for _, m, *_ in truth)
    assert {"GET", "POST", "PUT", "HEAD", "DELETE"} <= set(methods)
    assert {200, 201, 204, 301, 304, 404, 500} <= {s for *_, s in truth}
    assert st.rst_closes > 0
    per_conn = Counter(k for k, *_ in truth)
    assert max(per_conn.values()) >= 6  # keep-alive with several exchanges


def test_fast_enough() -> None:
    """The benchmark builds 2M-packet captures; the generator must not be the bottleneck.

    CPU time, not wall time: CI machines are shared and a loaded host must not fail this.
    """
    t0 = time.process_time()
    st = generate_pcap(io.BytesIO(), connections=2000, concurrency=500, seed=11)
    dt = time.process_time() - t0
    assert st.packets > 80_000
    assert st.packets / dt > 40_000, f"{st.packets / dt:.0f} packets/s"
