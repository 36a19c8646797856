"""``shadowtap extract`` end to end: the real console script in a subprocess.

Sample captures come from ``replay.synth.generate_pcap`` with its ground truth (one row per
exchange), so every count below is checked against what was actually sent.
"""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from replay.synth import generate_pcap

SHADOWTAP = Path(sys.executable).parent / "shadowtap"
SUMMARY_KEYS = {
    "files", "packets", "bytes", "connections", "http_connections", "non_http_streams",
    "exchanges", "incomplete_exchanges", "gaps", "gap_bytes", "bytes_skipped", "retransmits",
    "skipped_packets", "errors", "warnings", "seconds",
}


def run(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess:
    if not SHADOWTAP.exists():
        pytest.skip(f"console script not installed at {SHADOWTAP}")
    return subprocess.run([str(SHADOWTAP), "extract", *map(str, args)], capture_output=True,
                          timeout=timeout, check=False)


def error_lines(stderr: bytes) -> list[str]:
    return [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.startswith("error:")]


def assert_one_clean_error(p: subprocess.CompletedProcess, path: Path, *words: str) -> str:
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert p.returncode != 0
    lines = error_lines(p.stderr)
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"error: {path}: "), line
    for w in words:
        assert w in line, (w, line)
    return line


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, list, object]:
    d = tmp_path_factory.mktemp("cli")
    truth: list = []
    path = d / "sample.pcap"
    stats = generate_pcap(path, connections=20, concurrency=6, seed=11, truth=truth)
    assert len(truth) == stats.requests > 20
    return path, truth, stats


def record_offsets(data: bytes) -> list[int]:
    """File offsets of the record headers of a little-endian µs pcap."""
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    out, o = [], 24
    while o + 16 <= len(data):
        out.append(o)
        o += 16 + struct.unpack_from("<I", data, o + 8)[0]
    assert o == len(data)
    return out


def jsonl_requests(stdout: bytes) -> list[tuple[str, str]]:
    recs = [json.loads(ln) for ln in stdout.splitlines() if ln.strip()]
    return [(r["request"]["method"], r["request"]["target"]) for r in recs if r.get("request")]


def truth_requests(truth) -> list[tuple[str, str]]:
    return [(m, t) for _, m, t, _, _ in truth]


# -- good input ------------------------------------------------------------------------------------

def test_jsonl_to_stdout_matches_ground_truth(sample):
    path, truth, _ = sample
    p = run(path, "-q")
    assert p.returncode == 0, p.stderr
    assert b"Traceback" not in p.stderr
    assert Counter(jsonl_requests(p.stdout)) == Counter(truth_requests(truth))


def test_summary_json(sample):
    path, truth, stats = sample
    p = run(path, "--summary-json")
    assert p.returncode == 0, p.stderr
    js = [ln for ln in p.stderr.splitlines() if ln.startswith(b"{")]
    assert len(js) == 1
    s = json.loads(js[0])
    assert s.keys() >= SUMMARY_KEYS
    assert s["files"] == [str(path)]
    assert s["packets"] == stats.packets
    assert s["connections"] == stats.connections == 20
    assert s["exchanges"] == len(truth)
    assert s["incomplete_exchanges"] == 0
    assert s["gaps"] == 0 and s["errors"] == []


def test_port_narrows(sample):
    path, truth, _ = sample
    conn = truth[0][0]
    client_port = conn[1]
    want = Counter((m, t) for c, m, t, _, _ in truth if client_port in (c[1], c[3]))
    p = run(path, "-q", "--port", str(client_port))
    assert p.returncode == 0, p.stderr
    assert Counter(jsonl_requests(p.stdout)) == want
    assert 0 < sum(want.values()) < len(truth)
    p = run(path, "-q", "--port", "8081")
    assert p.returncode == 0 and p.stdout.strip() == b""


def test_har_to_stdout_loads_in_haralyzer(sample):
    from haralyzer import HarParser

    path, truth, _ = sample
    p = run(path, "-q", "--format", "har")
    assert p.returncode == 0, p.stderr
    har = json.loads(p.stdout)
    assert har["log"]["version"] == "1.2"
    parser = HarParser(har)
    entries = [e for page in parser.pages for e in page.entries] or har["log"]["entries"]
    assert len(har["log"]["entries"]) == len(truth)
    assert len(entries) == len(truth)
    methods = Counter(e["request"]["method"] for e in har["log"]["entries"])
    assert methods == Counter(m for _, m, _, _, _ in truth)


def test_har_output_file(sample, tmp_path):
    path, truth, _ = sample
    out = tmp_path / "x.har"
    p = run(path, "-q", "-o", out)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b""
    har = json.loads(out.read_bytes())
    statuses = Counter(e["response"]["status"] for e in har["log"]["entries"])
    assert statuses == Counter(s for *_, s in truth)


def test_mitm_output_file_reads_back(sample, tmp_path):
    from replay.formats.mitm import read_mitm

    path, truth, _ = sample
    out = tmp_path / "x.mitm"
    p = run(path, "-q", "-o", out)
    assert p.returncode == 0, p.stderr
    exs = list(read_mitm(out))
    assert Counter((e.request.method, e.request.target) for e in exs) == Counter(
        truth_requests(truth))
    assert Counter(e.response.status for e in exs) == Counter(s for *_, s in truth)


def test_gzip_capture(sample, tmp_path):
    path, truth, _ = sample
    gz = tmp_path / "sample.pcap.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    p = run(gz, "-q")
    assert p.returncode == 0, p.stderr
    assert Counter(jsonl_requests(p.stdout)) == Counter(truth_requests(truth))


# -- damaged input ---------------------------------------------------------------------------------

def test_truncated_capture_keeps_exchanges_before_the_cut(sample, tmp_path):
    path, truth, _ = sample
    data = path.read_bytes()
    offs = record_offsets(data)
    k = len(offs) // 2
    cut_at = offs[k] + 16 + 5  # five bytes into record k's frame
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:cut_at])
    p = run(cut, "--summary-json")
    assert p.returncode == 1, p.stderr
    line = assert_one_clean_error(p, cut, f"byte {offs[k]}")
    assert "truncated" in line
    got = jsonl_requests(p.stdout)
    # The exchanges before the cut were written, and all of them are real ones.
    assert 0 < len(got) < len(truth)
    assert not Counter(got) - Counter(truth_requests(truth))
    s = json.loads(next(ln for ln in p.stderr.splitlines() if ln.startswith(b"{")))
    assert s["packets"] == k
    assert s["errors"] == [line.removeprefix("error: ")]


def test_truncated_in_record_header(sample, tmp_path):
    path, _, _ = sample
    data = path.read_bytes()
    offs = record_offsets(data)
    cut = tmp_path / "hdrcut.pcap"
    cut.write_bytes(data[: offs[40] + 7])
    p = run(cut, "-q")
    assert p.returncode == 1
    assert_one_clean_error(p, cut, f"byte {offs[40]}")


def test_corrupt_gzip_capture(sample, tmp_path):
    # Second gzip member with an invalid deflate block type: zlib.error in the middle.
    path, truth, _ = sample
    data = path.read_bytes()
    offs = record_offsets(data)
    split = offs[len(offs) // 2]
    second = bytearray(gzip.compress(data[split:]))
    second[10] = 0xFF
    bad = tmp_path / "bad.pcap.gz"
    bad.write_bytes(gzip.compress(data[:split]) + bytes(second))
    p = run(bad, "-q")
    assert p.returncode == 1
    assert_one_clean_error(p, bad)
    got = jsonl_requests(p.stdout)
    assert 0 < len(got) < len(truth)


def _with_linktype(data: bytes, lt: int) -> bytes:
    return data[:20] + struct.pack("<I", lt) + data[24:]


@pytest.mark.parametrize(
    "name,make,words",
    [
        ("empty.pcap", lambda d: b"", ["empty"]),
        ("notes.txt", lambda d: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 5, []),
        ("magic.pcap", lambda d: b"\x0b\xad\xf0\x0d" + d[4:], []),
        ("linktype.pcap", lambda d: _with_linktype(d, 147), ["link type 147"]),
        ("header.pcap", lambda d: d[:10], ["truncated"]),
        ("text.pcap.gz", lambda d: gzip.compress(b"just some words\n" * 10), []),
    ],
    ids=["empty", "text", "magic", "linktype", "short-header", "gzipped-text"],
)
def test_bad_input_one_line_error(sample, tmp_path, name, make, words):
    path, _, _ = sample
    f = tmp_path / name
    f.write_bytes(make(path.read_bytes()))
    p = run(f)
    assert_one_clean_error(p, f, *words)
    assert p.returncode == 2
    assert p.stdout == b""


def test_missing_file(tmp_path):
    f = tmp_path / "missing.pcap"
    p = run(f)
    assert_one_clean_error(p, f, "no such file")
    assert p.returncode == 2


def test_directory(tmp_path):
    p = run(tmp_path)
    assert_one_clean_error(p, tmp_path, "directory")
    assert p.returncode == 2


def test_bad_second_file_writes_nothing(sample, tmp_path):
    path, _, _ = sample
    f = tmp_path / "empty.pcap"
    f.write_bytes(b"")
    out = tmp_path / "out.jsonl"
    p = run(path, f, "-q", "-o", out)
    assert_one_clean_error(p, f, "empty")
    assert not out.exists() or out.read_bytes() == b""


# -- other encapsulations of the same traffic ------------------------------------------------------

def rewrap(data: bytes, linktype: int, wrap) -> bytes:
    """Re-encapsulate every Ethernet frame of a little-endian pcap with ``wrap(i, frame)``."""
    out = [data[:20] + struct.pack("<I", linktype)]
    for i, o in enumerate(record_offsets(data)):
        sec, frac, caplen, _ = struct.unpack_from("<IIII", data, o)
        fr = wrap(i, data[o + 16 : o + 16 + caplen])
        out.append(struct.pack("<IIII", sec, frac, len(fr), len(fr)) + fr)
    return b"".join(out)


def vxlan(i: int, frame: bytes) -> bytes:
    vx = struct.pack("!BBHI", 0x08, 0, 0, 42 << 8)
    udp = struct.pack("!HHHH", 49152 + i % 1000, 4789, 8 + len(vx) + len(frame), 0) + vx + frame
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                     bytes([172, 16, 0, 1]), bytes([172, 16, 0, 2])) + udp
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip


ENCAPS = {
    "vxlan": (1, vxlan),
    "sll": (113, lambda i, f: struct.pack("!HHH8s", 0, 1, 6, f[6:12]) + f[12:]),
    "sll2": (276, lambda i, f: f[12:14] + struct.pack("!HIHBB8s", 0, 2, 1, 0, 6, f[6:12])
             + f[14:]),
    "raw": (101, lambda i, f: f[14:]),
    "null-le": (0, lambda i, f: struct.pack("<I", 2 if f[12:14] == b"\x08\x00" else 30) + f[14:]),
    "loop": (108, lambda i, f: struct.pack(">I", 2 if f[12:14] == b"\x08\x00" else 24) + f[14:]),
}


@pytest.fixture(scope="module")
def mixed_sample(tmp_path_factory) -> tuple[Path, list]:
    d = tmp_path_factory.mktemp("mixed")
    truth: list = []
    path = d / "mixed.pcap"
    generate_pcap(path, connections=15, concurrency=5, seed=5, ipv6_share=0.4, truth=truth)
    assert any(":" in row[0][0] for row in truth)
    return path, truth


@pytest.mark.parametrize("encap", sorted(ENCAPS))
def test_same_exchanges_under_every_encapsulation(mixed_sample, tmp_path, encap):
    from replay.extract import Summary, extract_file

    path, truth = mixed_sample
    lt, wrap = ENCAPS[encap]
    f = tmp_path / f"{encap}.pcap"
    f.write_bytes(rewrap(path.read_bytes(), lt, wrap))
    s = Summary()
    got = [(e.conn.client_ip, e.request.method, e.request.target, e.response.status)
           for e in extract_file(f, summary=s)]
    want = [(c[0], m, t, st) for c, m, t, _, st in truth]
    assert Counter(got) == Counter(want)
    assert s.errors == [] and s.incomplete_exchanges == 0
    if encap == "vxlan":
        assert s.vxlan_packets == s.packets


def test_vxlan_capture_through_cli(sample, tmp_path):
    path, truth, stats = sample
    f = tmp_path / "mirror.pcap"
    f.write_bytes(rewrap(path.read_bytes(), 1, vxlan))
    p = run(f, "--summary-json")
    assert p.returncode == 0, p.stderr
    assert Counter(jsonl_requests(p.stdout)) == Counter(truth_requests(truth))
    s = json.loads(next(ln for ln in p.stderr.splitlines() if ln.startswith(b"{")))
    assert s["vxlan_packets"] == stats.packets


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_is_one_error_line(sample):
    """Writing fails with ENOSPC (/dev/full): one error line, no traceback (the close that
    follows fails the same way and must not add one)."""
    path, _, _ = sample
    p = run(path, "-o", "/dev/full", "-q")
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert p.returncode != 0
    lines = error_lines(p.stderr)
    assert len(lines) == 1 and "write failed" in lines[0], err
