"""The C HPACK decoder (``replay/h2/_hpack.c``) decodes exactly as its definition, the Python
``PassiveDecoder.decode_py``, and as the ``hpack`` package on well-formed blocks: the same
fields (unknown entries marked alike), the same dynamic table, limits and counters afterwards,
on random, real-looking, truncated, mutated and hostile blocks, and from mid-connection starts.
And HTTP/2 extraction writes the same JSONL with it as in pure Python (a child process with
``SHADOWTAP_PURE_PYTHON=1``)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import hpack
import pytest

from replay.h2 import hpack_passive as hp
from replay.h2.hpack_passive import UNKNOWN, PassiveDecoder

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(hp.C_DECODE is None,
                                reason="replay/h2/_hpack.c is not built (or pure Python)")

NAMES = [":method", ":path", ":authority", ":scheme", ":status", "user-agent", "accept",
         "cookie", "set-cookie", "content-type", "content-length", "date", "etag", "server",
         "x-a", "x-long", "grpc-status", "grpc-message", "te", "accept-encoding"]
ALPHABET = "abcXYZ0129/?=&%;:,.- \"'\t~\u00e9\u00ff\x00\x7f"


def _state(d: PassiveDecoder) -> tuple:
    return (list(d.entries), d.size, d.max_size, d.known_all, dict(d.stats))


def _pair(known_all: bool = True) -> tuple[PassiveDecoder, PassiveDecoder]:
    return PassiveDecoder({}, known_all=known_all), PassiveDecoder({}, known_all=known_all)


def _both(py: PassiveDecoder, c: PassiveDecoder, block: bytes, where: object = None) -> tuple:
    want = py.decode_py(block)
    got = hp.C_DECODE(c, block)  # type: ignore[misc]
    assert got == want, where
    assert type(got[0]) is list and all(type(f) is tuple for f in got[0])
    assert _state(c) == _state(py), where
    return got


def _headers(rng: random.Random) -> list:
    hs = []
    for _ in range(rng.randrange(1, 14)):
        n = rng.choice(NAMES) if rng.random() < 0.9 else "x-" + str(rng.randrange(1000))
        v = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 60)))
        if rng.random() < 0.03:
            v = "v" * rng.randrange(200, 5000)  # evicts much of the table
        hs.append(hpack.NeverIndexedHeaderTuple(n, v) if rng.random() < 0.1 else (n, v))
    return hs


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_python_and_hpack_on_wellformed_blocks(seed: int) -> None:
    rng = random.Random(seed)
    enc, ref = hpack.Encoder(), hpack.Decoder()
    py, c = _pair()
    for i in range(400):
        if rng.random() < 0.05:
            enc.header_table_size = rng.choice([0, 256, 1024, 4096])
        block = enc.encode(_headers(rng), huffman=rng.random() < 0.7)
        want = [(a.decode("latin-1"), b.decode("latin-1")) for a, b in ref.decode(block, raw=True)]
        fields, unknown, whole = _both(py, c, block, i)
        assert whole and not unknown
        assert fields == want, i
        assert len(c.entries) == len(ref.header_table.dynamic_entries)


def test_real_blocks() -> None:
    """curl's requests and nginx's responses, as they repeat on a connection; RFC 7541's own
    examples (C.3-C.6: with and without Huffman, evictions)."""
    enc_req, enc_resp = hpack.Encoder(), hpack.Encoder()
    py_req, c_req = _pair()
    py_resp, c_resp = _pair()
    for i in range(200):
        path = f"/{('small', 'mid')[i % 2]}?c=1&i={i}"
        block = enc_req.encode([(":method", "GET"), (":scheme", "https"),
                                (":authority", "shop.test"), (":path", path),
                                ("user-agent", "curl/7.88.1"), ("accept", "*/*")])
        fields, _, _ = _both(py_req, c_req, block, i)
        assert fields[3] == (":path", path)
        block = enc_resp.encode([(":status", "200"), ("server", "nginx/1.22.1"),
                                 ("date", f"Mon, 07 Dec 2026 04:{i % 60:02d}:00 GMT"),
                                 ("content-type", "application/octet-stream"),
                                 ("content-length", ("120", "5000")[i % 2]),
                                 ("last-modified", "Mon, 07 Dec 2026 04:12:00 GMT"),
                                 ("etag", f'"6b1610f6-{i % 2}"'), ("accept-ranges", "bytes")])
        _both(py_resp, c_resp, block, i)
    rfc = [  # RFC 7541 C.4 (requests, Huffman) and C.6 (responses, Huffman, 256-byte table)
        ("828684418cf1e3c2e5f23a6ba0ab90f4ff", "828684be5886a8eb10649cbf",
         "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"),
        ("3f e1 01 4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0"
         " 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
         "4883 640e ff c1 c0 bf", "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d"
         " 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1"
         " ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07"),
    ]
    firsts = []
    for blocks in rfc:
        py, c = _pair()
        for b in blocks:  # C.6 with a size update to 256 first
            firsts.append(_both(py, c, bytes.fromhex(b.replace(" ", "")))[0][0])
    assert firsts[0] == (":method", "GET") and firsts[3] == (":status", "302")
    assert firsts[5] == (":status", "200") and c.size <= 256


@pytest.mark.parametrize("seed", range(4))
def test_mid_connection_unknown_entries_marked_alike(seed: int) -> None:
    rng = random.Random(100 + seed)
    enc = hpack.Encoder()
    blocks = [enc.encode(_headers(rng), huffman=rng.random() < 0.7) for _ in range(300)]
    for start in (1, 7, 50, 150):
        py, c = _pair(known_all=False)
        marked = 0
        for i, b in enumerate(blocks[start:]):
            fields, unknown, _ = _both(py, c, b, (start, i))
            marked += unknown
            assert sum(UNKNOWN in f for f in fields) >= (1 if unknown else 0)
        assert marked or start == 1  # picked up late: some references are unknown


@pytest.mark.parametrize("seed", range(8))
def test_damaged_and_random_blocks(seed: int) -> None:
    """Truncated, bit-flipped, spliced and random blocks; bad indices on a fully known table;
    forget() between blocks: never an exception, and always the same result and state."""
    rng = random.Random(200 + seed)
    enc = hpack.Encoder()
    py, c = _pair(known_all=seed % 2 == 0)
    for i in range(600):
        block = bytearray(enc.encode(_headers(rng), huffman=rng.random() < 0.7))
        r = rng.random()
        if r < 0.2 and block:
            del block[rng.randrange(len(block)):]
        elif r < 0.4 and block:
            for _ in range(rng.randrange(1, 4)):
                block[rng.randrange(len(block))] ^= 1 << rng.randrange(8)
        elif r < 0.5:
            block = bytearray(rng.randbytes(rng.randrange(0, 80)))
        elif r < 0.55:
            block += bytes([0xFF] + [0x80] * rng.randrange(1, 12) + [rng.randrange(128)])
        elif r < 0.6:
            block = bytearray([0x3F] + [0xFF] * rng.randrange(1, 6) + [0x0F])  # size updates
        elif r < 0.62:
            py.forget()
            c.forget()
        elif r < 0.64:  # a literal name equal to the unknown marker, inserted
            block = bytearray(b"\x40" + bytes([len(UNKNOWN)]) + UNKNOWN.encode("latin-1")
                              + b"\x01v") + block
        elif r < 0.66:  # Huffman strings of EOS, of all ones, of long padding
            block = bytearray(b"\x00\x81\xff\x84\xff\xff\xff\xff")
        _both(py, c, bytes(block), i)


def test_bombs_and_limits_bounded_alike() -> None:
    big = "z" * 4000
    one = b"\x40" + bytes([0x01]) + b"x" + b"\x7f" + _int(len(big) - 127) + big.encode()
    py, c = _pair()
    _both(py, c, one)
    fields, _, whole = _both(py, c, b"\xbe" * 10000)  # 10,000 references to it
    assert not whole and len(fields) * (4000 + 33) <= hp.MAX_HEADER_LIST
    assert c.stats["header_list_too_large"] == 1
    fields, _, whole = _both(py, c, b"\x82" * (hp.MAX_FIELDS + 10))
    assert not whole and len(fields) == hp.MAX_FIELDS
    _both(py, c, b"\x3f\xff\xff\x0f")  # a huge table size: capped
    assert c.max_size == hp.MAX_TABLE and c.stats["hpack_table_size_capped"] == 1
    _both(py, c, b"\x3f\xff\xff\xff\xff\xff\xff\x7f")  # an integer too large
    assert c.stats["hpack_errors"] == 1 and not c.known_all
    _both(py, c, b"\x80")  # index 0
    _both(py, c, b"\x00" + b"\x80" * 3)
    assert c.stats["hpack_errors"] == 3


def _int(v: int) -> bytes:
    out = bytearray()
    while v >= 128:
        out.append(0x80 | (v & 0x7F))
        v >>= 7
    out.append(v)
    return bytes(out)


_PROBE = r"""
import hashlib, random, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests", sys.argv[1] + "/tests/h2"]
import hpack
import hyperframe.frame as F
from netsim import Conv, run, segments
from test_h2_hostile import PREFACE, _extract, data, headers
from replay.formats.jsonl import exchange_line
import replay.h2.hpack_passive as hp
h = hashlib.sha256()

def digest(res):
    out, ex = res
    for e in out:
        h.update(exchange_line(e))
    h.update(repr(sorted(ex.h2_stats.items())).encode())

for kw in ({}, {"client_first": False}, {"upgrade": True}, {"mid": True}):
    digest(_extract(**kw))
# many streams, random headers (dynamic table in use, evictions, Huffman), bodies, trailers;
# whole, picked up mid-way, and with segments lost
rng = random.Random(7)
ce, se = hpack.Encoder(), hpack.Encoder()
c = PREFACE + F.SettingsFrame(0).serialize()
s = F.SettingsFrame(0).serialize()
for k in range(400):
    sid = 1 + 2 * k
    extra = [(f"x-{rng.randrange(30)}", "v" * rng.randrange(0, 300)) for _ in range(rng.randrange(4))]
    c += headers(sid, ce.encode([(":method", "GET"), (":scheme", "https"),
                                 (":authority", "shop.test"), (":path", f"/p?i={k}"), *extra],
                                huffman=rng.random() < 0.8), True)
    s += headers(sid, se.encode([(":status", "200"), ("date", f"d{k % 7}"), *extra]))
    s += data(sid, rng.randbytes(rng.randrange(0, 3000)), k % 5 != 0)
    if k % 5 == 0:
        s += headers(sid, se.encode([("grpc-status", "0"), ("x-t", str(k))]), True)
for cut, drop in ((0, 0.0), (5000, 0.0), (0, 0.02)):
    conv = Conv()
    frames = conv.handshake() if not cut else []
    segs = [conv.c(x) for x in segments(c[cut:], 700)] + [conv.s(x) for x in segments(s[cut:], 700)]
    frames += [f for f in segs if rng.random() >= drop]
    frames += [conv.fin_c(), conv.fin_s()]
    digest(run(frames))
print(hp.C_DECODE is not None, h.hexdigest())
"""


def test_extraction_identical_native_and_pure() -> None:
    """The same h2c captures (prior knowledge, server first, Upgrade, mid-connection) through
    the Extractor: the same JSONL lines and summaries with the C decoder and without."""
    outs = []
    for pure in ("", "1"):
        env = dict(os.environ, SHADOWTAP_PURE_PYTHON=pure)
        if not pure:
            env.pop("SHADOWTAP_PURE_PYTHON")
        r = subprocess.run([sys.executable, "-c", _PROBE, str(ROOT)], env=env,
                           capture_output=True, text=True, timeout=300, check=True)
        outs.append(r.stdout.split())
    assert outs[0][0] == "True" and outs[1][0] == "False"
    assert outs[0][1] == outs[1][1]


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") \
        + payload


def _connection_bytes(rng: random.Random) -> tuple[bytes, bytes]:
    """Both directions of a connection: many streams, well-formed mostly, with padded and
    prioritised frames (some malformed), split header blocks, trailers, stream 0, oversized
    frames, RST_STREAM, unknown types."""
    ce, se = hpack.Encoder(), hpack.Encoder()
    c = [PREFACE_BYTES, _frame(4, 0, 0, b"")]
    s = [_frame(4, 0, 0, b"")]
    for k in range(rng.randrange(20, 60)):
        sid = 1 + 2 * k
        block = ce.encode([(":method", rng.choice(["GET", "POST", "CONNECT"])),
                           (":scheme", "https"), (":authority", "shop.test"),
                           *([] if rng.random() < 0.1 else [(":path", f"/p{k}")]),
                           *_headers(rng)[:4]], huffman=rng.random() < 0.7)
        r = rng.random()
        if r < 0.1:  # PADDED and PRIORITY
            pad = rng.randrange(0, 20)
            body = bytes([pad]) + b"\x00\x00\x00\x00\x10" + block + b"\x00" * pad
            c.append(_frame(1, 0x04 | 0x08 | 0x20 | 0x01, sid, body))
        elif r < 0.15:  # malformed padding / priority
            c.append(_frame(1, 0x04 | rng.choice([0x08, 0x20]), sid, block[:rng.randrange(3)]))
        elif r < 0.25 and len(block) > 4:  # split into CONTINUATION
            c.append(_frame(1, 0x01, sid, block[:3]))
            c.append(_frame(9, 0x04, sid, block[3:]))
        elif r < 0.28:
            c.append(_frame(1, 0x05, 0, block))  # stream 0
        else:
            c.append(_frame(1, 0x05 if rng.random() < 0.8 else 0x04, sid, block))
        if rng.random() < 0.2:
            c.append(_frame(0, 0x01, sid, b"body"))
        resp = se.encode([(":status", rng.choice(["200", "404", "103", "2x", " 200"])),
                          *_headers(rng)[:5]], huffman=rng.random() < 0.7)
        s.append(_frame(1, 0x04, sid, resp))
        if rng.random() < 0.1:
            s.append(_frame(3, 0, sid, (8).to_bytes(4, "big")))  # RST_STREAM
            continue
        if rng.random() < 0.1:  # padded DATA, sometimes malformed
            pad = rng.randrange(0, 30)
            s.append(_frame(0, 0x08, sid, bytes([pad if rng.random() < 0.8 else 200])
                            + b"d" * 40 + b"\x00" * pad))
        if rng.random() < 0.05:
            s.append(_frame(0, 0, sid, b"x" * 20000))  # larger than allowed
        if rng.random() < 0.05:
            s.append(_frame(0xA, 0, sid, b"?"))  # an unknown type
        s.append(_frame(0, 0x01, sid, rng.randbytes(rng.randrange(0, 3000))))
        if rng.random() < 0.1:
            s.append(_frame(1, 0x05, sid, se.encode([("grpc-status", "0")])))
    return b"".join(c), b"".join(s)


PREFACE_BYTES = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _run_reader(c: bytes, s: bytes, cuts: list[int], mid: bool, gaps: set[int]) -> tuple:
    from replay.formats.jsonl import exchange_line
    from replay.h2.reader import H2Connection
    from replay.model import ConnKey

    out: list = []
    stats: dict[str, int] = {}
    h = H2Connection(ConnKey("10.0.0.1", 1, "10.0.0.2", 2), "c", out.append, stats,
                     mid_stream=mid)
    for side, data in ((True, c), (False, s)):
        prev = 0
        for i, cut in enumerate([*cuts, len(data)]):
            cut = min(cut, len(data))
            if cut <= prev:
                continue
            if i in gaps:
                h.gap(side, cut - prev, i)
            else:
                h.feed(side, data[prev:cut], i)
            prev = cut
    h.finish(99)
    return [exchange_line(e) for e in out], list(stats.items())


@pytest.mark.parametrize("seed", range(12))
def test_reader_scan_agrees_with_python(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``H2Connection`` with the C frame scan and decoder and without (``SCAN`` None, the
    Python decoder): the same exchanges, and the same counters in the same order, on
    connections of usual and unusual frames, cut anywhere, with gaps, picked up mid-way."""
    from replay.h2 import reader

    assert reader.SCAN is not None
    rng = random.Random(300 + seed)
    c, s = _connection_bytes(rng)
    for trial in range(4):
        size = rng.choice([7, 100, 1400, 16384, 100000])
        cuts = list(range(size, max(len(c), len(s)) + size, size))
        gaps = {rng.randrange(len(cuts) + 1)} if trial == 3 else set()
        mid = trial == 2
        cc, ss = (c[len(PREFACE_BYTES) + 9:], s[9:]) if mid else (c, s)
        native = _run_reader(cc, ss, cuts, mid, gaps)
        with monkeypatch.context() as m:
            m.setattr(reader, "SCAN", None)
            m.setattr(reader, "DECODE", PassiveDecoder.decode_py)
            pure = _run_reader(cc, ss, cuts, mid, gaps)
        assert native == pure, (seed, trial)
        assert native[0]
