"""replay.formats.pcap.CaptureReader: pcap (µs/ns, both byte orders), pcapng, gzip, damage.

Captures are written by hand with ``struct`` so that every header field is known exactly.
"""

from __future__ import annotations

import gzip
import random
import re
import struct
from pathlib import Path

import pytest

from replay.errors import FormatError
from replay.formats import pcap as pcapmod
from replay.formats.pcap import CaptureReader

RNG = random.Random(7)
FRAMES = [RNG.randbytes(n) for n in (60, 1514, 1, 0, 333, 4096, 61, 62, 63)]
# (seconds, fraction in µs or ns)
STAMPS = [(1_700_000_000 + i * 3, (i * 123_457) % 1_000_000) for i in range(len(FRAMES))]


# -- writers -------------------------------------------------------------------------------------

def pcap_bytes(frames, stamps, *, order="<", nano=False, linktype=1, snaplen=65535,
               wire_extra=0) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for f, (sec, frac) in zip(frames, stamps, strict=True):
        out.append(struct.pack(order + "IIII", sec, frac, len(f), len(f) + wire_extra) + f)
    return b"".join(out)


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _block(order: str, btype: int, body: bytes) -> bytes:
    body = _pad4(body)
    n = 12 + len(body)
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def shb(order="<") -> bytes:
    return _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(linktype: int, *, order="<", tsresol: int | None = None, tsoffset: int | None = None,
        snaplen=0) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += struct.pack(order + "HH", 9, 1) + _pad4(bytes([tsresol]))
    if tsoffset is not None:
        opts += struct.pack(order + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(order + "HH", 0, 0)
    return _block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def epb(iface: int, ticks: int, frame: bytes, *, order="<", wire: int | None = None) -> bytes:
    wire = len(frame) if wire is None else wire
    return _block(order, 6, struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF,
                                        len(frame), wire) + frame)


def spb(frame: bytes, *, order="<") -> bytes:
    return _block(order, 3, struct.pack(order + "I", len(frame)) + frame)


def read_all(path: Path):
    with CaptureReader(path) as r:
        got = list(r)
        return got, r


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# -- pcap ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("compressed", [False, True])
def test_pcap_variants_read_back_exactly(tmp_path, order, nano, compressed):
    stamps = [(s, f * 1000 + 999 if nano else f) for s, f in STAMPS]
    data = pcap_bytes(FRAMES, stamps, order=order, nano=nano, linktype=113)
    if compressed:
        data = gzip.compress(data)
    got, r = read_all(write(tmp_path, "x.pcap", data))
    assert r.error is None
    assert r.kind == "pcap" and r.linktype == 113
    assert [f for _, _, f in got] == FRAMES
    assert {lt for _, lt, _ in got} == {113}
    scale = 1e-9 if nano else 1e-6
    for (ts, _, _), (sec, frac) in zip(got, stamps, strict=True):
        assert ts == pytest.approx(sec + frac * scale, abs=1e-6)
        assert int(ts) == sec
    if nano:  # sub-microsecond digits survive (to float precision at 1.7e9 s: ~0.24 µs)
        assert got[1][0] - got[0][0] == pytest.approx(3 + (123_457_999 - 999) * 1e-9, abs=1e-6)


def test_pcap_header_byte_order_is_detected_not_assumed(tmp_path):
    # Big-endian file: the same fields read as little-endian would be nonsense.
    data = pcap_bytes(FRAMES[:2], STAMPS[:2], order=">", linktype=101)
    assert data[:4] == b"\xa1\xb2\xc3\xd4"
    got, r = read_all(write(tmp_path, "be.pcap", data))
    assert r.linktype == 101 and [f for *_, f in got] == FRAMES[:2]


def test_pcap_snaplen_shorter_than_wire_is_fine(tmp_path):
    got, r = read_all(write(tmp_path, "s.pcap", pcap_bytes(FRAMES, STAMPS, wire_extra=100)))
    assert r.error is None and [f for *_, f in got] == FRAMES


def test_pcap_empty_capture_header_only(tmp_path):
    got, r = read_all(write(tmp_path, "h.pcap", pcap_bytes([], [])))
    assert got == [] and r.error is None


@pytest.mark.parametrize("chunk", [1, 7, 16, 17, 100, 5000])
@pytest.mark.parametrize("compressed", [False, True])
def test_pcap_records_across_chunk_boundaries(tmp_path, monkeypatch, chunk, compressed):
    monkeypatch.setattr(pcapmod, "CHUNK", chunk)
    data = pcap_bytes(FRAMES, STAMPS)
    if compressed:
        data = gzip.compress(data)
    got, r = read_all(write(tmp_path, "c.pcap", data))
    assert r.error is None
    assert [f for *_, f in got] == FRAMES


# -- truncation and corruption (pcap) --------------------------------------------------------------

def _offsets(frames) -> list[int]:
    """File offset of each record header in a pcap written by pcap_bytes."""
    out, o = [], 24
    for f in frames:
        out.append(o)
        o += 16 + len(f)
    return out


@pytest.mark.parametrize("chunk", [1 << 20, 13])
@pytest.mark.parametrize("where", ["record_header", "record_body"])
def test_pcap_truncated(tmp_path, monkeypatch, chunk, where):
    monkeypatch.setattr(pcapmod, "CHUNK", chunk)
    data = pcap_bytes(FRAMES, STAMPS)
    k = 5  # records 0..4 whole, record 5 cut
    rec5 = _offsets(FRAMES)[k]
    cut = rec5 + (9 if where == "record_header" else 16 + len(FRAMES[k]) // 2)
    got, r = read_all(write(tmp_path, "cut.pcap", data[:cut]))
    assert [f for *_, f in got] == FRAMES[:k]
    assert r.error is not None
    assert "cut.pcap" in r.error
    assert f"byte {rec5}" in r.error
    assert "truncated" in r.error


def test_pcap_truncated_gzip_keeps_packets_before_the_cut(tmp_path):
    rng = random.Random(3)
    frames = [rng.randbytes(100) for _ in range(5000)]
    stamps = [(i, 0) for i in range(5000)]
    data = gzip.compress(pcap_bytes(frames, stamps))
    got, r = read_all(write(tmp_path, "cut.pcap.gz", data[: len(data) // 2]))
    assert r.error is not None and "cut.pcap.gz" in r.error
    assert re.search(r"byte \d+", r.error)
    # Roughly half of the packets precede the cut (the data is incompressible).
    assert 2000 < len(got) < 2500
    assert [f for *_, f in got] == frames[: len(got)]


def test_pcap_corrupt_gzip_stream_is_an_error_not_a_crash(tmp_path):
    # Two gzip members (valid gzip); the second's first deflate block has the invalid block
    # type 3, which zlib reports as zlib.error -- not an OSError.
    rng = random.Random(5)
    frames = [rng.randbytes(60) for _ in range(200)]
    data = pcap_bytes(frames, [(1, 2)] * 200)
    split = _offsets(frames)[100]
    second = bytearray(gzip.compress(data[split:]))
    second[10] = 0xFF
    p = write(tmp_path, "bad.pcap.gz", gzip.compress(data[:split]) + bytes(second))
    got, r = read_all(p)
    assert [f for *_, f in got] == frames[:100]
    assert r.error is not None and "bad.pcap.gz" in r.error
    assert f"byte {split}" in r.error


def test_corrupt_gzip_at_the_start_is_a_format_error(tmp_path):
    bad = bytearray(gzip.compress(pcap_bytes(FRAMES, STAMPS)))
    bad[10] = 0xFF
    p = write(tmp_path, "start.pcap.gz", bytes(bad))
    with pytest.raises(FormatError) as ei:
        CaptureReader(p)
    assert str(p) in str(ei.value) and "gzip" in str(ei.value)


def test_pcap_corrupt_length_field(tmp_path):
    data = bytearray(pcap_bytes(FRAMES, STAMPS))
    o = _offsets(FRAMES)[3]
    struct.pack_into("<I", data, o + 8, 0x7FFFFFF0)  # caplen of record 3
    got, r = read_all(write(tmp_path, "len.pcap", bytes(data)))
    assert [f for *_, f in got] == FRAMES[:3]
    assert r.error is not None and "len.pcap" in r.error
    assert f"byte {o}" in r.error and "corrupt" in r.error


# -- bad files -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name,data,words",
    [
        ("empty.pcap", b"", ["empty"]),
        ("notes.txt", b"these are not the packets you are looking for\n" * 3, ["magic"]),
        ("magic.pcap", b"\xde\xad\xbe\xef" + bytes(40), ["magic", "deadbeef"]),
        ("short.pcap", b"\xd4\xc3\xb2\xa1" + bytes(6), ["truncated"]),
        ("lt.pcap", pcap_bytes(FRAMES[:1], STAMPS[:1], linktype=147), ["link type 147"]),
        ("empty.pcap.gz", gzip.compress(b""), ["empty"]),
        ("text.gz", gzip.compress(b"hello world, this is text"), ["magic"]),
        ("cutgz.pcap.gz", gzip.compress(pcap_bytes([], []))[:18], ["gzip"]),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_files_raise_format_error_naming_the_file(tmp_path, name, data, words):
    p = write(tmp_path, name, data)
    with pytest.raises(FormatError) as ei:
        CaptureReader(p)
    msg = str(ei.value)
    assert str(p) in msg
    for w in words:
        assert w in msg
    assert "\n" not in msg


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        CaptureReader(tmp_path / "nope.pcap")
    with pytest.raises(FormatError, match="directory") as ei:
        CaptureReader(tmp_path)
    assert str(tmp_path) in str(ei.value)


def test_unsupported_linktype_allowed_when_not_strict(tmp_path):
    p = write(tmp_path, "lt.pcap", pcap_bytes(FRAMES[:2], STAMPS[:2], linktype=147))
    with CaptureReader(p, strict_linktype=False) as r:
        assert r.linktype == 147
        assert [lt for _, lt, _ in r] == [147, 147]


# -- pcapng ----------------------------------------------------------------------------------------

def _ng_two_ifaces(order: str) -> tuple[bytes, list[tuple[float, int, bytes]]]:
    """Ethernet (µs, default resolution) + raw IP (ns) + Linux SLL (2^-10 s), EPBs and an SPB."""
    f = FRAMES
    blocks = [
        shb(order),
        idb(1, order=order),  # no if_tsresol: 10^-6
        idb(101, order=order, tsresol=9),
        idb(113, order=order, tsresol=0x80 | 10, tsoffset=1000),
        epb(0, 1_700_000_000_123_456, f[0], order=order),
        epb(1, 1_700_000_001_987_654_321, f[1], order=order),
        spb(f[2], order=order),  # SPB: interface 0, no timestamp
        epb(2, 5 * 1024 + 512, f[3], order=order),
        epb(0, 1_700_000_002_000_001, f[4], order=order, wire=len(f[4]) + 10),
    ]
    want = [
        (1_700_000_000.123456, 1, f[0]),
        (1_700_000_001.987654321, 101, f[1]),
        (0.0, 1, f[2]),
        (1000 + 5.5, 113, f[3]),
        (1_700_000_002.000001, 1, f[4]),
    ]
    return b"".join(blocks), want


def _check(got, want):
    assert [(lt, fr) for _, lt, fr in got] == [(lt, fr) for _, lt, fr in want]
    for (ts, _, _), (wts, _, _) in zip(got, want, strict=True):
        assert ts == pytest.approx(wts, abs=1e-6)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("compressed", [False, True])
def test_pcapng_interfaces_resolutions_epb_spb(tmp_path, order, compressed):
    data, want = _ng_two_ifaces(order)
    if compressed:
        data = gzip.compress(data)
    got, r = read_all(write(tmp_path, "x.pcapng", data))
    assert r.kind == "pcapng"
    assert r.error is None
    _check(got, want)
    assert r.skipped_blocks == 0 and r.unsupported_linktypes == set()


def test_pcapng_second_section_other_byte_order(tmp_path):
    a, wa = _ng_two_ifaces("<")
    b, wb = _ng_two_ifaces(">")
    got, r = read_all(write(tmp_path, "two.pcapng", a + b))
    assert r.error is None
    _check(got, wa + wb)


@pytest.mark.parametrize("chunk", [1, 5, 12, 13, 64])
def test_pcapng_blocks_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(pcapmod, "CHUNK", chunk)
    data, want = _ng_two_ifaces(">")
    got, r = read_all(write(tmp_path, "c.pcapng", data))
    assert r.error is None
    _check(got, want)


def test_pcapng_unknown_blocks_and_options_are_skipped(tmp_path):
    data = b"".join([
        shb(),
        _block("<", 0x0BAD, b"custom block body"),
        idb(1),
        _block("<", 5, b"\0" * 20),  # Interface Statistics Block
        epb(0, 10, FRAMES[0]),
        _block("<", 4, b"\0" * 8),  # Name Resolution Block
        epb(0, 20, FRAMES[1]),
    ])
    got, r = read_all(write(tmp_path, "u.pcapng", data))
    assert r.error is None
    assert [fr for *_, fr in got] == FRAMES[:2]


def test_pcapng_unsupported_interface_is_skipped_and_recorded(tmp_path):
    data = shb() + idb(147) + idb(1) + epb(0, 1, FRAMES[0]) + epb(1, 2, FRAMES[1]) \
        + epb(0, 3, FRAMES[2])
    got, r = read_all(write(tmp_path, "m.pcapng", data))
    assert [(lt, fr) for _, lt, fr in got] == [(1, FRAMES[1])]
    assert r.unsupported_linktypes == {147}
    assert r.skipped_blocks == 2
    assert r.error is None


def test_pcapng_epb_for_undeclared_interface_is_skipped(tmp_path):
    data = shb() + idb(1) + epb(3, 1, FRAMES[0]) + epb(0, 2, FRAMES[1])
    got, r = read_all(write(tmp_path, "i.pcapng", data))
    assert [fr for *_, fr in got] == [FRAMES[1]]
    assert r.skipped_blocks == 1


@pytest.mark.parametrize("chunk", [1 << 20, 11])
@pytest.mark.parametrize("into", [3, 20, -5])
def test_pcapng_truncated_block(tmp_path, monkeypatch, chunk, into):
    monkeypatch.setattr(pcapmod, "CHUNK", chunk)
    head = shb() + idb(1) + epb(0, 1, FRAMES[0]) + epb(0, 2, FRAMES[1])
    last = epb(0, 3, FRAMES[5])
    cut = into if into > 0 else len(last) + into
    got, r = read_all(write(tmp_path, "cut.pcapng", head + last[:cut]))
    assert [fr for *_, fr in got] == FRAMES[:2]
    assert r.error is not None and "cut.pcapng" in r.error
    assert f"byte {len(head)}" in r.error


def test_pcapng_corrupt_block_length(tmp_path):
    head = shb() + idb(1) + epb(0, 1, FRAMES[0])
    bad = bytearray(epb(0, 2, FRAMES[1]))
    struct.pack_into("<I", bad, 4, 0x01000002)  # not a multiple of 4, and huge
    got, r = read_all(write(tmp_path, "bad.pcapng", head + bytes(bad) + epb(0, 3, FRAMES[2])))
    assert [fr for *_, fr in got] == [FRAMES[0]]
    assert r.error is not None and "bad.pcapng" in r.error
    assert f"byte {len(head)}" in r.error and "corrupt" in r.error


def test_pcapng_bad_byte_order_magic(tmp_path):
    data = bytearray(shb() + idb(1) + epb(0, 1, FRAMES[0]))
    data[8:12] = b"\x01\x02\x03\x04"
    got, r = read_all(write(tmp_path, "bom.pcapng", bytes(data)))
    assert got == []
    assert r.error is not None and "bom.pcapng" in r.error and "byte 0" in r.error


def test_scapy_written_pcap_and_pcapng_agree(tmp_path):
    """Cross-check against an independent writer (scapy's), not only our own struct code."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapNgWriter, PcapWriter

    pkts = []
    for i in range(5):
        p = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP() / TCP(seq=i) / (
            b"x" * i)
        p.time = 1_700_000_000 + i + 0.25
        pkts.append(p)
    a, b = tmp_path / "s.pcap", tmp_path / "s.pcapng"
    with PcapWriter(str(a), linktype=1, nano=True) as w:
        for p in pkts:
            w.write(p)
    with PcapNgWriter(str(b)) as w:
        for p in pkts:
            w.write(p)
    for path in (a, b):
        got, r = read_all(path)
        assert r.error is None, path
        assert [fr for *_, fr in got] == [bytes(p) for p in pkts], path
        assert [lt for _, lt, _ in got] == [1] * 5
        assert [ts for ts, _, _ in got] == pytest.approx([float(p.time) for p in pkts],
                                                          abs=1e-6)


def test_pcapng_epb_caplen_reaching_into_the_trailer_is_skipped(tmp_path):
    # An EPB whose captured length claims 4 bytes more than the block holds: the extra bytes
    # would be the block's trailing length field, not packet data.
    good = epb(0, 1, FRAMES[0])
    bad = bytearray(epb(0, 2, FRAMES[6]))  # 61-byte frame, 3 bytes padding
    struct.pack_into("<I", bad, 20, len(FRAMES[6]) + 3 + 4)  # caplen up to the block's end
    data = shb() + idb(1) + good + bytes(bad) + epb(0, 3, FRAMES[2])
    got, r = read_all(write(tmp_path, "trail.pcapng", data))
    assert [fr for *_, fr in got] == [FRAMES[0], FRAMES[2]]
    assert r.skipped_blocks == 1
    # The largest honest caplen (up to the padding) is still accepted.
    ok = bytearray(epb(0, 2, FRAMES[6]))
    struct.pack_into("<I", ok, 20, len(FRAMES[6]) + 3)
    got, r = read_all(write(tmp_path, "pad.pcapng", shb() + idb(1) + bytes(ok)))
    assert [fr for *_, fr in got] == [FRAMES[6] + b"\0\0\0"]
