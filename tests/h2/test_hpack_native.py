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
            m.setattr(reader, "RUN", None)
            m.setattr(reader, "SCAN", None)
            m.setattr(reader, "DECODE", PassiveDecoder.decode_py)
            pure = _run_reader(cc, ss, cuts, mid, gaps)
        assert native == pure, (seed, trial)
        assert native[0]


# -- hostile input and hostile state: a seeded fuzz, and one regression test per bug found ----
#
# Bugs found in _hpack.c (fixed there), each with its test below:
# - a decoder whose ``entries`` held anything but (str, str) tuples (``dec.entries`` is a plain
#   attribute) was read as tuples: a segfault (an int), a read past a 1-tuple, a str read from
#   bytes;
# - ``hp.STATIC`` (a module-level list) was kept, not copied, with its length at configure time:
#   a changed list was read out of bounds;
# - eviction kept the table's length across removals, which can run code (a ``__del__``) that
#   changes the list: a read out of bounds;
# - counters were read as C long long: ``2**63 - 1`` wrapped, a float raised (the Python code
#   adds whatever number is there); sizes near 2**63 overflowed (undefined behaviour);
# - an exception after the table changed (a counter that cannot be added to) left ``size``
#   behind ``entries``;
# - an HPACK integer's shift grew with every 0x80 continuation byte and overflowed (int) after
#   ~307 M of them: the value read was garbage instead of an error;
# - ``configure`` accepted Huffman codes shorter than 5 bits, for which the output buffer (8n/5
#   symbols) and the per-nibble table (one symbol per nibble) are too small; and any limits.

def _child(code: str, timeout: int = 120) -> str:
    """``code`` run in a child process (a crash fails the test instead of ending the run);
    its stdout."""
    paths = [str(ROOT), str(ROOT / "tests" / "h2")]
    prelude = (f"import sys\nsys.path[:0] = {paths!r}\nimport test_hpack_native as T\n"
               "from replay.h2 import hpack_passive as hp\n"
               "from replay.h2.hpack_passive import PassiveDecoder, UNKNOWN\n")
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", prelude + code],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    return r.stdout


def _hpint(v: int, prefix: int, first: int = 0) -> bytes:
    mask = (1 << prefix) - 1
    if v < mask:
        return bytes([first | v])
    return bytes([first | mask]) + _int(v - mask)


def _hostile_piece(rng: random.Random) -> bytes:
    r = rng.randrange(12)
    if r == 0:  # zero continuation bytes, then anything
        return bytes([rng.choice([0xFF, 0x3F, 0x7F, 0x0F])]) + b"\x80" * rng.randrange(1, 200) \
            + bytes([rng.randrange(256)])
    if r == 1:  # integers about MAX_INT
        v = rng.choice([hp.MAX_INT - 1, hp.MAX_INT, hp.MAX_INT + 1, 1 << 35, 1 << 62, 2**64 + 5])
        return _hpint(v, 7, 0x80)
    if r == 2:  # a string longer than the block
        return b"\x00" + _hpint(rng.choice([1 << 27, hp.MAX_INT, 300]), 7, rng.choice([0, 0x80]))
    if r == 3:  # Huffman: EOS, all ones, padding
        n = rng.randrange(8)
        return b"\x00\x81a" + _hpint(n, 7, 0x80) + b"\xff" * n
    if r == 4:  # the marker as a literal name, inserted
        return b"\x40" + bytes([len(UNKNOWN)]) + UNKNOWN.encode("latin-1") + b"\x01v"
    if r == 5:
        return _hpint(rng.choice([0, 32, 4096, hp.MAX_TABLE + 1, 1 << 29]), 5, 0x20)
    if r == 6:
        return rng.choice([b"\x80", _hpint(rng.randrange(62, 3000), 7, 0x80),
                           _hpint(rng.randrange(62, 3000), 6, 0x40) + b"\x01x"])
    if r == 7:  # large values inserted: evictions, larger than the table
        n = rng.choice([10, 4064, 4065, 70000])
        return b"\x40\x01x" + _hpint(n, 7) + b"z" * n
    if r == 8:  # random Huffman
        n = rng.randrange(40)
        return b"\x00\x01a" + _hpint(n, 7, 0x80) + rng.randbytes(n)
    if r == 9:  # bombs
        return bytes([rng.choice([0x82, 0xBE])]) * rng.randrange(1, 5000)
    if r == 10:  # pseudo-header look-alikes (NULs, latin-1)
        nm = rng.choice([b":method", b":path", b":status", b":", b"", b":method\x00\xe9"])
        v = rng.choice([b"CONNECT", b"CONNECT\x00", b"", b"200", UNKNOWN.encode("latin-1")])
        return b"\x00" + _hpint(len(nm), 7) + nm + _hpint(len(v), 7) + v
    return rng.randbytes(rng.randrange(1, 30))


def _mutate(rng: random.Random, b: bytes, pool: list[bytes]) -> bytes:
    out = bytearray(b)
    for _ in range(rng.choice([1, 1, 2, 4])):
        r = rng.randrange(8)
        if r == 0 and out:
            i = rng.randrange(len(out) * 8)
            out[i >> 3] ^= 1 << (i & 7)
        elif r == 1 and out:
            out[rng.randrange(len(out))] = rng.choice([0, 0x0F, 0x1F, 0x3F, 0x40, 0x7F, 0x80,
                                                       0xBE, 0xFF])
        elif r == 2:
            del out[rng.randrange(len(out) + 1):]
        elif r == 3:
            o = rng.choice(pool)
            out[rng.randrange(len(out) + 1):] = o[rng.randrange(len(o) + 1):]
        elif r == 4:
            i = rng.randrange(len(out) + 1)
            out[i:i] = _hostile_piece(rng)
        elif r == 5:
            out = bytearray(rng.randbytes(rng.randrange(64)))
        else:
            out += _hostile_piece(rng)
    return bytes(out)


class _Tup(tuple):
    __slots__ = ()


class _Str(str):
    __slots__ = ()


def _weird_state(rng: random.Random, d: PassiveDecoder) -> bool:
    """Make ``d``'s state one a caller could leave (its attributes are plain); True when the C
    code may refuse it (TypeError, OverflowError) where Python would not."""
    r = rng.randrange(10)
    if r == 0 and d.entries:  # an entry of another type
        d.entries[rng.randrange(len(d.entries))] = rng.choice(
            [1, None, ("a",), ("a", "b", "c"), (b"a", b"b"), ["a", "b"], ("a", 5)])
        return True
    if r == 1:  # subclasses of tuple and str: read as they are
        d.entries.insert(0, _Tup((_Str("x-s"), "v")))
        d.size += 36
    elif r == 2:
        d.size = rng.choice([2**63 - 1, -(2**63), 2**70, 1 << 61])
        return True
    elif r == 3:  # sizes that do not add up (Python takes them as they are)
        d.size = rng.randrange(-10**6, 10**6)
    elif r == 4:
        d.max_size = rng.choice([-1, 0, 31, 10**9])
    elif r == 5:  # counters of any number type, or none
        k = rng.choice(["hpack_errors", "hpack_bad_index", "hpack_unknown_refs",
                        "header_list_too_large", "hpack_table_size_capped",
                        "hpack_unknown_insert"])
        d.stats[k] = rng.choice([2**63 - 1, 2**64, -5, 1.5, True, "x", None])
    elif r == 6:
        d.known_all = rng.choice([0, 2, "", [1], None])
    return False


def _fuzz_decode(seed: int, n: int) -> str:
    """Mutated blocks (and from time to time odd decoder states) through both decoders: the
    same results, exceptions and states. Decoding afresh is the definition (the Python
    decoder's block cache must not change a result: see ``test_python_block_cache_...``)."""
    rng = random.Random(seed)
    pool = [bytes.fromhex(h) for h in (
        "400a637573746f6d2d6b65790d637573746f6d2d686561646572", "040c2f73616d706c652f70617468",
        "100870617373776f726406736563726574", "828684410f7777772e6578616d706c652e636f6d",
        "828684418cf1e3c2e5f23a6ba0ab90f4ff", "4883640effc1c0bf")]
    calls = weird = 0
    while calls < n:
        py, c = _pair(known_all=rng.random() < 0.6)
        enc = hpack.Encoder()
        for _ in range(rng.randrange(1, 40)):
            calls += 1
            block = enc.encode(_headers(rng), huffman=rng.random() < 0.7) \
                if rng.random() < 0.7 else rng.choice(pool)
            pool.append(block)
            if rng.random() < 0.5:
                block = _mutate(rng, block, pool)
            refusable = False
            if rng.random() < 0.03:
                weird += 1
                refusable = _weird_state(rng, py)  # and the same in c:
                c.entries, c.size, c.max_size, c.known_all = (list(py.entries), py.size,
                                                              py.max_size, py.known_all)
                c.stats.clear()
                c.stats.update(py.stats)
            pre = (list(py.entries), py.size, py.max_size, py.known_all, dict(py.stats))
            try:
                want: object = py.decode_py(block)
            except Exception as e:  # an odd state: Python's own exception
                want = e
            try:
                got: object = hp.C_DECODE(c, block)  # type: ignore[misc]
            except (TypeError, OverflowError) as e:
                got = e
            where = (seed, calls, block.hex(), pre)
            if isinstance(got, Exception) and not isinstance(want, Exception):
                assert refusable, where  # refused only an odd state
                py, c = _pair()
                continue
            if not isinstance(want, Exception) and got != want:
                fresh = PassiveDecoder(dict(pre[4]))
                fresh.entries, fresh.size, fresh.max_size, fresh.known_all = (
                    list(pre[0]), pre[1], pre[2], pre[3])
                saved = dict(hp._BLOCKS)
                hp._BLOCKS.clear()
                want = fresh.decode_py(block)
                hp._BLOCKS.update(saved)
                py.entries, py.size, py.max_size, py.known_all = (
                    fresh.entries, fresh.size, fresh.max_size, fresh.known_all)
                py.stats.clear()
                py.stats.update(fresh.stats)
            if isinstance(want, Exception):
                assert isinstance(got, Exception) or refusable, where
                if type(got) is type(want):
                    assert _state(c) == _state(py), where
                py, c = _pair()
                continue
            assert got == want, where
            assert _state(c) == _state(py), where
            if any(type(x) is not tuple for x in py.entries):
                py, c = _pair()
    return f"ok {calls} {weird}"


def _scan_py(dec: PassiveDecoder, stats: dict, client: bool, data: bytes, pos: int,
             max_frame: int) -> tuple[list, int]:
    """``scan`` in Python: its docstring, with ``_frame``'s reading of each frame."""
    from replay.h2.reader import _request_parts, _response_parts

    events: list = []
    end = len(data)
    pos = end if pos < 0 else pos
    while end - pos >= 9:
        length = int.from_bytes(data[pos:pos + 3], "big")
        ftype, flags = data[pos + 3], data[pos + 4]
        sid = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        if (length > max_frame and length >= 16384) or end - pos < 9 + length:
            break
        if ftype > 1 or not sid or (ftype == 1 and (not flags & 0x04 or events)):
            break
        body = data[pos + 9:pos + 9 + length]
        if flags & 0x08:
            if not body or body[0] >= len(body):
                break
            body = body[1:len(body) - body[0]]
        if ftype == 1 and flags & 0x20:
            if len(body) < 5:
                break
            body = body[5:]
        stats["frames"] = stats.get("frames", 0) + 1
        if ftype == 0:
            events.append((0, sid, body, bool(flags & 1)))
        else:
            fields, unknown, whole = dec.decode_py(body)
            parts = _request_parts(fields) if client else _response_parts(fields)
            events.append((1, sid, bool(flags & 1), fields, unknown, whole, parts))
        pos += 9 + length
    return events, pos


def _mutate_frames(rng: random.Random, data: bytes, blocks: list[bytes]) -> bytes:
    out = bytearray(data)
    offs = []
    p = len(PREFACE_BYTES) if data.startswith(PREFACE_BYTES) else 0
    while p + 9 <= len(out):
        offs.append(p)
        p += 9 + int.from_bytes(out[p:p + 3], "big")
    for _ in range(rng.choice([1, 2, 3])):
        r = rng.randrange(6)
        o = rng.choice(offs) if offs else 0
        if r == 0 and o + 9 <= len(out):  # a header's length, type, flags or stream
            f = rng.randrange(4)
            if f == 0:
                v = rng.choice([0, 1, 5, 16383, 16384, 0xFFFFFF,
                                int.from_bytes(out[o:o + 3], "big") + rng.randrange(-6, 7)])
                out[o:o + 3] = (v & 0xFFFFFF).to_bytes(3, "big")
            elif f == 1:
                out[o + 3] = rng.choice([0, 1, 1, 9, 0xFF])
            elif f == 2:
                out[o + 4] = rng.choice([0, 1, 4, 5, 8, 0x0C, 0x24, 0x2C, 0x2D, 0xFF])
            else:
                out[o + 5:o + 9] = rng.choice([0, 1, 0x80000000, 0xFFFFFFFF]).to_bytes(4, "big")
        elif r == 1 and o + 9 < len(out):  # the pad length / priority bytes
            out[o + 9] = rng.choice([0, 1, 4, 5, 0xFF, rng.randrange(256)])
        elif r == 2 and out:
            i = rng.randrange(len(out) * 8)
            out[i >> 3] ^= 1 << (i & 7)
        elif r == 3:
            del out[rng.randrange(len(out) + 1):]
        else:  # a crafted HEADERS or DATA frame with a mutated block, padding, priority
            fl = rng.choice([0x04, 0x05, 0x0C, 0x24, 0x2D, 0x08, 0x01, 0])
            body = _mutate(rng, rng.choice(blocks), blocks)
            if fl & 0x20:
                body = rng.randbytes(rng.choice([0, 3, 5])) + body
            if fl & 0x08:
                pad = rng.randrange(300)
                body = bytes([pad & 0xFF]) + body + b"\0" * rng.choice([0, pad])
            i = rng.choice([*offs, len(out)])
            out[i:i] = _frame(rng.choice([0, 1, 1]), fl, rng.choice([0, 1, 3]), body)
    return bytes(out)


def _fuzz_scan(seed: int, n: int) -> str:
    """Mutated frame sequences through ``scan`` and its Python model, as the reader calls it
    (each frame it leaves is stepped over): the same events, positions, counters (in the same
    order) and decoder states."""
    from replay.h2.reader import SCAN

    assert SCAN is not None
    rng = random.Random(seed)
    calls = 0
    blocks = [b"\x82\x86\x84", b"\x88", b""]
    while calls < n:
        c, s = _connection_bytes(rng)
        for _ in range(10):
            client = rng.random() < 0.5
            data = _mutate_frames(rng, c if client else s, blocks)
            max_frame = rng.choice([16384, 16383, 0, 1 << 24])
            sp: dict[str, int] = {}
            sc: dict[str, int] = {}
            dp, dc = PassiveDecoder(sp), PassiveDecoder(sc)
            pos = len(PREFACE_BYTES) if data.startswith(PREFACE_BYTES) else 0
            while pos <= len(data) - 9:
                calls += 1
                saved = dict(hp._BLOCKS)
                hp._BLOCKS.clear()  # decoding afresh is the definition (see _fuzz_decode)
                want = _scan_py(dp, sp, client, data, pos, max_frame)
                hp._BLOCKS.update(saved)
                got = SCAN(dc, sc, client, data, pos, max_frame)
                where = (seed, calls, pos, max_frame, client, data.hex())
                assert got == want, where
                assert list(sc.items()) == list(sp.items()) and _state(dc) == _state(dp), where
                for ev in got[0]:
                    if ev[0] == 1:
                        blocks.append(data[pos:pos + 64])
                pos = got[1]
                if not got[0]:  # left to _frame: step over it
                    pos += 9 + int.from_bytes(data[pos:pos + 3], "big")
    return f"ok {calls}"


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_seeded_quick(seed: int) -> None:
    """A seeded fuzz of ``decode`` (mutated blocks, hostile instructions, odd decoder states)
    and ``scan`` (mutated frame sequences), in a child process (a crash is a failure here, with
    the case on stderr through faulthandler): the same results and states as Python."""
    out = _child(f"print(T._fuzz_decode({seed}, 4000))\nprint(T._fuzz_scan({seed}, 1500))")
    assert out.count("ok") == 2, out


def test_regression_entries_of_other_types_refused() -> None:
    """An entry that is not a (str, str) tuple, referenced (indexed, as a name) or evicted: a
    TypeError, the table left as it was (it was a segfault, or a read past a 1-tuple)."""
    out = _child("""
cases = [1, None, ("a",), ("a", "b", "c"), (b"a", b"b"), ["a", "b"], ("a", 5), (5, "a")]
for bad in cases:
    for block in (b"\\xbe", b"\\x7e\\x01v", b"\\x20", b"\\x3f\\x01", b"\\x40\\x01a\\x01b"):
        d = PassiveDecoder({})
        d.entries = [bad]
        d.size = 10**5 if block[0] == 0x40 else 40
        d.max_size = 64
        try:
            hp.C_DECODE(d, block)
        except TypeError:
            pass
        else:
            raise AssertionError((bad, block))
        assert d.entries[-1] is bad, (bad, block, d.entries)
print("ok")
""")
    assert out.strip() == "ok"


def test_regression_static_table_copied_at_configure() -> None:
    """``hp.STATIC`` changed after ``configure`` (it is a plain list) cannot move what the C
    code reads (it was read out of bounds, by the length it had)."""
    out = _child("""
hp.STATIC.clear()
print(hp.C_DECODE(PassiveDecoder({}), b"\\x82"))
""")
    assert out.strip() == "([(':method', 'GET')], 0, True)"


class _ClearsOnDel(tuple):
    """An entry whose removal empties the table it was in (a __del__ runs during eviction)."""

    __slots__ = ()
    dec: PassiveDecoder | None = None

    def __del__(self) -> None:
        if _ClearsOnDel.dec is not None:
            _ClearsOnDel.dec.entries.clear()


def test_regression_eviction_rereads_the_table() -> None:
    """Eviction reads the table's length again after each removal (it kept it, and read past
    the end of a list a ``__del__`` had emptied)."""
    out = _child("""
results = []
for decode in (PassiveDecoder.decode_py, hp.C_DECODE):
    d = PassiveDecoder({})
    T._ClearsOnDel.dec = d
    d.entries = [("e", "f"), T._ClearsOnDel(("c", "d")), ("a", "b")]
    d.size = 3 * 34
    results.append((decode(d, b"\\x20"), d.entries, d.size, d.max_size))
T._ClearsOnDel.dec = None
assert results[0] == results[1], results
print("ok", results[1])
""")
    assert out.startswith("ok (([], 0, True), [], 34, 0)"), out


@pytest.mark.parametrize("value", [2**63 - 1, 2**64, -5, 1.5, True, "x", None])
def test_regression_counters_added_as_python_adds(value: object) -> None:
    """A counter is ``stats.get(key, 0) + n`` whatever number is there (2**63 - 1 wrapped to
    -2**63, and a float raised, when it was read as a C long long); a counter that cannot be
    added to raises the same exception, with the table kept in step (``size`` was left
    behind the entries)."""
    block = b"\x40\x01a\x01b" + b"\x80"  # an insert, then index 0: hpack_errors
    states, outcomes = [], []
    for decode in (PassiveDecoder.decode_py, hp.C_DECODE):
        d = PassiveDecoder({"hpack_errors": value})  # type: ignore[dict-item]
        try:
            outcomes.append(decode(d, block))  # type: ignore[operator]
        except TypeError as e:
            outcomes.append(type(e))
        states.append(_state(d))
    assert outcomes[0] == outcomes[1]
    assert states[0] == states[1]
    if outcomes[1] is TypeError:  # raised counting hpack_errors, after the insert
        assert states[1][:2] == ([("a", "b")], 34)
    else:
        assert states[1][:2] == ([], 0)
        assert states[1][4]["hpack_errors"] == value + 1  # type: ignore[operator]
    stats: dict = {"frames": value}
    from replay.h2.reader import SCAN

    assert SCAN is not None
    try:
        got = SCAN(PassiveDecoder(stats), stats, True, _frame(0, 1, 1, b"x"), 0, 16384)
    except TypeError:
        got = TypeError
    try:
        want = value + 1  # type: ignore[operator]
    except TypeError:
        want = TypeError
    assert (stats["frames"] if got is not TypeError else TypeError) == want


def test_regression_sizes_out_of_range_refused() -> None:
    """A decoder ``size`` or ``max_size`` near 2**63 (set by hand) is refused (OverflowError),
    not added to past overflow (undefined behaviour; it wrapped to a negative size); large
    sizes in range are taken as Python takes them."""
    for attr, v in (("size", 2**63 - 1), ("size", -(2**63)), ("max_size", 2**63 - 1),
                    ("size", 2**70)):
        d = PassiveDecoder({})
        setattr(d, attr, v)
        with pytest.raises(OverflowError):
            hp.C_DECODE(d, b"\x40\x01a\x01b")  # type: ignore[misc]
        assert getattr(d, attr) == v and d.entries == []
    for v in (2**40, -(2**40)):
        py, c = _pair()
        py.size = c.size = v
        _both(py, c, b"\x40\x01a\x01b\x20")


def test_regression_integer_with_many_empty_continuations() -> None:
    """An HPACK integer with ~307 M continuation bytes that add nothing, then one that adds:
    an error (integer too large), as in Python (the shift overflowed an int and the value read
    was garbage, index 159 here). Runs of a few thousand, through both."""
    for k in (1, 4, 5, 200, 5000):
        for last in (0x00, 0x01, 0x7F):
            py, c = _pair()
            _both(py, c, b"\xff" + b"\x80" * k + bytes([last]) + b"\x82", (k, last))
    d = PassiveDecoder({})
    block = b"\xff" + b"\x80" * ((2**31) // 7 + 1) + b"\x01"
    assert hp.C_DECODE(d, block) == ([], 0, False)  # type: ignore[misc]
    assert d.stats == {"hpack_errors": 1}
    del block


def test_regression_configure_refuses_short_codes_and_odd_limits() -> None:
    """``configure`` refuses a Huffman code shorter than 5 bits (the decoder's buffer and its
    4-bit table hold one symbol per 5 bits) and limits out of range, changing nothing."""
    out = _child("""
from replay.h2 import _hpack
from hpack.huffman_constants import REQUEST_CODES as RC, REQUEST_CODES_LENGTH as RL
args = [hp.STATIC, UNKNOWN, hp.MAX_TABLE, hp.MAX_HEADER_LIST, hp.MAX_FIELDS, hp.MAX_INT,
        list(RC[:256]), list(RL[:256])]
short = list(args)
short[6] = [i for i in range(256)]  # 0..255 in 8 bits, but "a" in 1 bit:
short[7] = [8] * 256
short[6][97], short[7][97] = 1, 1
for bad in [short] + [args[:k] + [v] + args[k + 1:] for k, v in
                      ((2, -1), (3, -1), (4, -1), (5, -1), (5, 2**60))]:
    try:
        _hpack.configure(*bad)
    except ValueError:
        pass
    else:
        raise AssertionError(bad[2:6])
d = PassiveDecoder({})
print(hp.C_DECODE(d, bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")))
""")
    assert "www.example.com" in out


def test_python_block_cache_matches_decoding_afresh() -> None:
    """The Python decoder's block cache only saves work, so a block decoded twice does what
    decoding it afresh does. A block that inserts a field whose literal name is the UNKNOWN
    marker makes the table unknown (forget) and is counted, every time: such a block is not
    cached (it was, and its second decoding did neither; found by fuzzing against the C
    decoder, which does both every time)."""
    block = b"\x40" + bytes([len(UNKNOWN)]) + UNKNOWN.encode("latin-1") + b"\x01v" \
        + b"\x40\x01a\x01b"
    py, c = _pair()
    _both(py, c, block)
    _both(py, c, block)
