"""The passive HTTP/2 reader on crafted frames: HPACK bombs and oversized header lists
(bounded, counted), CONTINUATION floods, interleaved streams, a capture that starts mid-way
(unknown HPACK entries marked, never an exception), missing segments, garbage; h2c found by
content through the Extractor (prior knowledge, a server speaking first, Upgrade: h2c)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import hpack
import hyperframe.frame as F
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netsim import Conv, run, segments

from replay.h2.hpack_passive import MAX_HEADER_LIST, PassiveDecoder
from replay.h2.reader import PREFACE, H2Connection
from replay.model import ConnKey, Exchange

KEY = ConnKey("10.0.0.1", 40000, "10.0.0.2", 80)


def headers(sid: int, block: bytes, end_stream: bool = False, end_headers: bool = True
            ) -> bytes:
    f = F.HeadersFrame(sid)
    f.data = block
    if end_headers:
        f.flags.add("END_HEADERS")
    if end_stream:
        f.flags.add("END_STREAM")
    return f.serialize()


def data(sid: int, b: bytes, end_stream: bool = False) -> bytes:
    f = F.DataFrame(sid)
    f.data = b
    if end_stream:
        f.flags.add("END_STREAM")
    return f.serialize()


def cont(sid: int, b: bytes, end: bool = False) -> bytes:
    f = F.ContinuationFrame(sid)
    f.data = b
    if end:
        f.flags.add("END_HEADERS")
    return f.serialize()


def req(enc: hpack.Encoder, path: str, method: str = "GET", extra: tuple = ()) -> bytes:
    return enc.encode([(":method", method), (":scheme", "http"), (":authority", "shop.test"),
                       (":path", path), *extra])


def resp(enc: hpack.Encoder, status: int, extra: tuple = ()) -> bytes:
    return enc.encode([(":status", str(status)), *extra])


class Pair:
    """A client and a server encoder and the bytes each side sent, in order."""

    def __init__(self) -> None:
        self.ce, self.se = hpack.Encoder(), hpack.Encoder()
        self.c = PREFACE + F.SettingsFrame(0).serialize()
        self.s = F.SettingsFrame(0).serialize()

    def stream(self, sid: int, path: str, status: int = 200, body: bytes = b"") -> None:
        self.c += headers(sid, req(self.ce, path, extra=(("x-token", f"t{sid}"),)), True)
        self.s += headers(sid, resp(self.se, status, (("x-id", f"id{sid}"),)))
        self.s += data(sid, body, True)


def reader(mid: bool = False) -> tuple[H2Connection, list[Exchange], dict[str, int]]:
    out: list[Exchange] = []
    st: dict[str, int] = {}
    return H2Connection(KEY, "c1", out.append, st, mid_stream=mid), out, st


def test_hpack_bomb_bounded() -> None:
    """One large entry in the dynamic table, then a block referencing it thousands of times:
    the decoded list stops at the cap (counted); the table stays in step for what follows."""
    h, out, st = reader()
    ce, se = hpack.Encoder(), hpack.Encoder()
    h.feed(True, PREFACE, 0)
    big = ("x-big", "A" * 4000)
    first = ce.encode([(":method", "GET"), (":path", "/a"), big])  # indexes x-big
    h.feed(True, headers(1, first, True), 1)
    bomb = req(ce, "/bomb") + b"\xbe" * 20000  # index 62 = the big entry, 20000 times
    h.feed(True, headers(3, bomb, True), 2)
    h.feed(True, headers(5, req(ce, "/after", extra=(big,)), True), 3)
    for sid in (1, 3, 5):
        h.feed(False, headers(sid, resp(se, 200), True), 4)
    h.finish(5)
    by = {e.request.target: e for e in out}
    assert set(by) == {"/a", "/bomb", "/after"}
    decoded = sum(len(k) + len(v) + 32 for k, v in by["/bomb"].request.headers)
    assert decoded <= MAX_HEADER_LIST
    assert "h2-header-list-cut" in by["/bomb"].completeness.notes
    assert st["header_list_too_large"] == 1
    assert ("x-big", "A" * 4000) in by["/after"].request.headers


def test_oversized_literal_header_list() -> None:
    dec = PassiveDecoder({})
    enc = hpack.Encoder()
    block = enc.encode([(f"x-h{i}", "v" * 1000) for i in range(600)])
    fields, unknown, whole = dec.decode(block)
    assert not whole and unknown == 0
    assert sum(len(k) + len(v) + 32 for k, v in fields) <= MAX_HEADER_LIST
    assert dec.stats["header_list_too_large"] == 1


def test_table_size_update_capped_and_integer_overflow() -> None:
    st: dict[str, int] = {}
    dec = PassiveDecoder(st)
    dec.decode(b"\x3f\xff\xff\xff\xff\x0f")  # a table size update of ~2^34
    assert dec.max_size <= 64 * 1024 or st.get("hpack_errors")
    _, _, whole = dec.decode(b"\xff" + b"\xff" * 20)  # an index that never ends
    assert not whole and st["hpack_errors"] >= 1


def test_continuation_flood_bounded() -> None:
    h, out, st = reader()
    ce, se = hpack.Encoder(), hpack.Encoder()
    h.feed(True, PREFACE, 0)
    h.feed(True, headers(1, req(ce, "/flood"), end_stream=True, end_headers=False), 1)
    flood = b"".join(cont(1, b"\x00" * 8) for _ in range(5000))
    for seg in segments(flood, 1448):
        h.feed(True, seg, 2)
    # the client goes on (its HPACK state now unknown to us: static-only fields still decode)
    h.feed(True, headers(3, b"\x82\x86\x84\x41\x8a\xa0\xe4\x1d\x13\x9d\x09\xb8\xf0\x1e\x07",
                         True), 3)
    h.feed(False, headers(3, resp(se, 204), True), 4)
    h.finish(5)
    assert st["continuation_flood"] == 1
    assert st["frames"] <= 5100
    ok = [e for e in out if e.request and e.request.target == "/"]
    assert ok and ok[0].response.status == 204
    assert len(st) < 50


def test_interleaved_streams() -> None:
    """Forty streams whose frames are shuffled across each other (request and response
    bodies in many DATA frames): each body comes back whole and in order."""
    rng = random.Random(7)
    ce, se = hpack.Encoder(), hpack.Encoder()
    cframes: dict[int, list[bytes]] = {}
    sframes: dict[int, list[bytes]] = {}
    bodies = {}
    for k in range(40):
        sid = 1 + 2 * k
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 5000)))
        bodies[sid] = body
        cframes[sid] = [headers(sid, req(ce, f"/s{sid}", "POST"))]
        parts = segments(body, 700) or [b""]
        cframes[sid] += [data(sid, p, i == len(parts) - 1) for i, p in enumerate(parts)]
        sframes[sid] = [headers(sid, resp(se, 200 + k % 5))]
        sframes[sid] += [data(sid, p[::-1], i == len(parts) - 1) for i, p in enumerate(parts)]

    def shuffle(frames: dict[int, list[bytes]]) -> bytes:
        # interleave while keeping each stream's own order (and HPACK order: headers first)
        order = []
        queues = {s: list(f) for s, f in frames.items()}
        heads = [s for s in queues]  # header blocks in creation order (HPACK state)
        for s in heads:
            order.append(queues[s].pop(0))
        live = [s for s in queues if queues[s]]
        while live:
            s = rng.choice(live)
            order.append(queues[s].pop(0))
            if not queues[s]:
                live.remove(s)
        return b"".join(order)

    h, out, st = reader()
    cb = PREFACE + shuffle(cframes)
    sb = shuffle(sframes)
    for a, b in zip(segments(cb, 1000), segments(sb, 1000), strict=False):
        h.feed(True, a, 1)
        h.feed(False, b, 2)
    for rest in segments(cb, 1000)[len(segments(sb, 1000)):]:
        h.feed(True, rest, 3)
    for rest in segments(sb, 1000)[len(segments(cb, 1000)):]:
        h.feed(False, rest, 3)
    h.finish(9)
    assert len(out) == 40 and st["streams"] == 40
    for e in out:
        sid = e.meta["h2"]["stream"]
        assert e.request.target == f"/s{sid}"
        assert e.request.body == bodies[sid]
        assert e.response.body == b"".join(p[::-1] for p in segments(bodies[sid], 700))
        assert e.completeness.complete


def test_mid_stream_start_marks_unknown_entries() -> None:
    """The capture starts after a dozen streams, at an arbitrary byte: the reader finds a
    frame boundary, decodes what it can, marks fields that reference entries it never saw."""
    p = Pair()
    for k in range(12):
        p.stream(1 + 2 * k, f"/old{k}", body=b"x" * 100)
    cut_c, cut_s = len(p.c) + 3, len(p.s) + 5
    for k in range(12, 20):
        p.stream(1 + 2 * k, f"/new{k}", body=b"y" * 100)
    h, out, st = reader(mid=True)
    for a in segments(p.c[cut_c:], 512):
        h.feed(True, a, 1)
    for b in segments(p.s[cut_s:], 512):
        h.feed(False, b, 2)
    h.finish(3)
    got = {e.request.target: e for e in out if e.request is not None}
    assert {f"/new{k}" for k in range(13, 20)} <= set(got)
    # x-token values were indexed before the capture started: their names are unknown
    # references only if the encoder reused an old entry; statuses always decode
    assert all(e.response.status == 200 for e in got.values())
    assert st["mid_stream"] == 1 and st["resyncs"] >= 1


def test_mid_stream_unknown_reference_marked() -> None:
    enc = hpack.Encoder()
    enc.encode([("x-secret", "abc")])  # inserted before the capture: unknown to the reader
    block = enc.encode([(":method", "GET"), (":path", "/p"), ("x-secret", "abc")])
    h, out, _ = reader(mid=True)
    h.feed(True, headers(7, block, True), 1)
    h.feed(False, headers(7, resp(hpack.Encoder(), 200), True), 2)
    h.finish(3)
    (e,) = out
    assert e.request.target == "/p"
    assert ("?", "?") in e.request.headers
    assert "hpack-unknown:1" in e.completeness.notes and e.meta["h2"]["hpack_unknown"] == 1


def test_gap_inside_data_frame_and_elsewhere() -> None:
    p = Pair()
    p.c += headers(1, req(p.ce, "/up", "POST"))
    body = bytes(range(256)) * 40
    p.c += data(1, body, True)
    p.s += headers(1, resp(p.se, 200), True)
    h, out, st = reader()
    start = len(p.c) - len(body) - 9
    h.feed(True, p.c[:start + 9 + 1000], 1)   # the DATA frame's header and 1000 bytes
    h.gap(True, 500, 2)                        # 500 bytes of it lost
    h.feed(True, p.c[start + 9 + 1500:], 3)
    h.feed(False, p.s, 4)
    h.finish(5)
    (e,) = out
    assert e.completeness.request_gaps == [(1000, 500)]
    assert e.request.body == body[:1000] + body[1500:]
    # a gap between frames: resynchronised on the next frame, no exception
    p2 = Pair()
    for k in range(6):
        p2.stream(1 + 2 * k, f"/g{k}")
    h, out, st = reader()
    h.feed(True, p2.c[:60], 1)
    h.gap(True, 40, 2)
    h.feed(True, p2.c[100:], 3)
    h.feed(False, p2.s, 4)
    h.finish(5)
    assert st["gaps"] == 1 and len(out) >= 5


@pytest.mark.parametrize("seed", range(30))
def test_random_damage_never_raises(seed: int) -> None:
    rng = random.Random(seed)
    p = Pair()
    for k in range(10):
        p.stream(1 + 2 * k, f"/r{k}", status=200 + k, body=bytes(rng.randrange(256)
                                                               for _ in range(300)))
    cb, sb = bytearray(p.c), bytearray(p.s)
    for buf in (cb, sb):
        for _ in range(rng.randrange(1, 20)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    h, out, _ = reader(mid=rng.random() < 0.3)
    for a in segments(bytes(cb), rng.randrange(1, 600)):
        if rng.random() < 0.05:
            h.gap(True, len(a), 1)
        else:
            h.feed(True, a, 1)
    for b in segments(bytes(sb), rng.randrange(1, 600)):
        if rng.random() < 0.05:
            h.gap(False, len(b), 2)
        else:
            h.feed(False, b, 2)
    h.finish(3)
    assert all(isinstance(e, Exchange) for e in out)


def _extract(client_first: bool = True, upgrade: bool = False, mid: bool = False) -> tuple:
    p = Pair()
    for k in range(3):
        p.stream(1 + 2 * k, f"/e{k}", body=b"hello" * k)
    conv = Conv()
    frames = [] if mid else conv.handshake()
    cb, sb = p.c, p.s
    if upgrade:
        cb = (b"GET /e0 HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
              b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
              + PREFACE + F.SettingsFrame(0).serialize() + cb[len(PREFACE) + 9:])
        sb = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
              + sb)
        # stream 1 is the upgraded request: drop its HEADERS from the client's h2 bytes
        skip = headers(1, req(hpack.Encoder(), "/e0", extra=(("x-token", "t1"),)), True)
        assert skip in cb
        cb = cb.replace(skip, b"", 1)
    if mid:
        cb, sb = cb[len(PREFACE) + 9:], sb[9:]
    if client_first:
        frames += [conv.c(s) for s in segments(cb, 400)] + [conv.s(s) for s in segments(sb, 400)]
    else:
        frames += [conv.s(sb[:9])] + [conv.c(s) for s in segments(cb, 400)] + \
            [conv.s(s) for s in segments(sb[9:], 400)]
    frames += [conv.fin_c(), conv.fin_s()]
    return run(frames)


@pytest.mark.parametrize("how", ["client_first", "server_first", "mid"])
def test_h2c_found_by_content(how: str) -> None:
    out, ex = _extract(client_first=how != "server_first", mid=how == "mid")
    got = sorted((e.request.target, e.response.status, e.response.body) for e in out
                 if e.request is not None)
    want = sorted((f"/e{k}", 200, b"hello" * k) for k in range(3))
    if how == "mid":
        assert ex.h2_stats["mid_stream"] == 1
        # the first request's block referenced entries the reader knows from the start of
        # the capture: everything is there except what was indexed before it
        assert [g[0] for g in got] == [w[0] for w in want]
    else:
        assert got == want
    assert ex.h2_stats["via_h2c"] == 1


def test_upgrade_h2c_through_extractor() -> None:
    out, ex = _extract(upgrade=True)
    by = {e.request.target: e for e in out}
    assert set(by) == {"/e0", "/e1", "/e2"}
    e0 = by["/e0"]
    assert e0.request.version == "HTTP/1.1" and e0.interim[0].status == 101
    assert e0.response.status == 200 and e0.response.version == "HTTP/2"
    assert by["/e2"].response.body == b"hellohello"
    assert ex.h2_stats["via_upgrade"] == 1 and ex.http_stats.get("tunnels", 0) == 0


def test_large_frames_stream_through() -> None:
    """SETTINGS_MAX_FRAME_SIZE raised to 1 MiB and 1 MiB DATA frames fed in 1448-byte
    segments: the payload goes to the stream as it comes (no quadratic re-buffering), a gap
    inside one is recorded where it was; a header block fragment over the cap is skipped."""
    import time

    p = Pair()
    s = F.SettingsFrame(0)
    s.settings = {5: 1 << 20}
    p.c = PREFACE + s.serialize()  # the client accepts 1 MiB frames from the server
    p.c += headers(1, req(p.ce, "/big"), True)
    body = bytes(range(256)) * (3 * 4096)  # 3 MiB
    p.s += headers(1, resp(p.se, 200))
    for k in range(3):
        p.s += data(1, body[k << 20:(k + 1) << 20], k == 2)
    h, out, st = reader()
    h.feed(True, p.c, 1)
    t0 = time.perf_counter()
    segs = segments(p.s, 1448)
    lost = len(segs) // 2
    for i, seg in enumerate(segs):
        if i == lost:
            h.gap(False, len(seg), 2)
        else:
            h.feed(False, seg, 2)
    assert time.perf_counter() - t0 < 5
    h.finish(3)
    (e,) = out
    (off, n), = e.completeness.response_gaps
    assert n == 1448 and e.response.body == body[:off] + body[off + n:]
    # a HEADERS frame of 2 MiB (over the block cap): skipped, counted, the next stream read
    h, out, st = reader()
    big = F.HeadersFrame(1)
    big.data = b"\x00" * (2 << 20)
    big.flags.add("END_HEADERS")
    ce = hpack.Encoder()
    stream = PREFACE + s.serialize()
    h.feed(False, s.serialize(), 0)  # the server accepts 1 MiB frames... the client ignores it
    for seg in segments(stream + big.serialize() + headers(3, b"\x82\x84\x86", True), 1448):
        h.feed(True, seg, 1)
    h.feed(False, headers(3, resp(ce, 204), True), 2)
    h.finish(3)
    assert st["header_block_too_large"] == 1
    assert [e.response.status for e in out if e.request and e.request.target == "/"] == [204]


def test_unknown_fields_are_not_replayed() -> None:
    from replay.rewrite import skip_reason

    enc = hpack.Encoder()
    enc.encode([("x-secret", "abc")])
    block = enc.encode([(":method", "GET"), (":path", "/p"), ("x-secret", "abc")])
    h, out, _ = reader(mid=True)
    h.feed(True, headers(7, block, True), 1)
    h.feed(False, headers(7, resp(hpack.Encoder(), 200), True), 2)
    h.finish(3)
    (e,) = out
    assert skip_reason(e) == "HTTP/2 header fields unknown"


def test_bodies_held_per_connection_bounded() -> None:
    """Many streams that never end, each sending body bytes: what the connection holds stays
    under max_body (capped, counted), and the exchanges still come out at the end."""
    out: list[Exchange] = []
    st: dict[str, int] = {}
    h = H2Connection(KEY, "c1", out.append, st, max_body=100_000)
    ce = hpack.Encoder()
    h.feed(True, PREFACE, 0)
    for k in range(200):
        h.feed(True, headers(1 + 2 * k, req(ce, f"/u{k}", "POST")), 1)
        h.feed(True, data(1 + 2 * k, b"z" * 5000), 1)
    assert h.held <= 100_000 and st["bodies_capped"] >= 100
    h.finish(2)
    assert len(out) == 200 and h.held == 0
    assert sum(len(e.request.body) for e in out) <= 100_000
    assert all(e.completeness.request_truncated for e in out)


@pytest.mark.parametrize("seed", range(5))
def test_passive_hpack_agrees_with_hpack_decoder(seed: int) -> None:
    """On well-formed blocks (dynamic table in use, evictions, size updates, Huffman and
    plain strings, never-indexed fields) the passive decoder reads what the ``hpack``
    package's own decoder reads."""
    rng = random.Random(seed)
    enc, ref = hpack.Encoder(), hpack.Decoder()
    mine = PassiveDecoder({})
    names = [":method", ":path", "user-agent", "x-a", "cookie", "x-long", "accept"]
    for _ in range(300):
        if rng.random() < 0.05:
            enc.header_table_size = rng.choice([0, 256, 4096])
        hs = []
        for _ in range(rng.randrange(1, 12)):
            n = rng.choice(names)
            v = "".join(rng.choice("abc/?=&%0129 \u00e9") for _ in range(rng.randrange(0, 40)))
            hs.append(hpack.NeverIndexedHeaderTuple(n, v) if rng.random() < 0.1 else (n, v))
        block = enc.encode(hs, huffman=rng.random() < 0.7)
        want = list(ref.decode(block, raw=True))
        got, unknown, whole = mine.decode(block)
        assert whole and not unknown
        assert got == [(a.decode("latin-1"), b.decode("latin-1")) for a, b in want]


def _hint(v: int, prefix: int, first: int) -> bytes:
    """An HPACK integer with ``first``'s flag bits in its first byte."""
    mask = (1 << prefix) - 1
    if v < mask:
        return bytes([first | v])
    out = bytearray([first | mask])
    v -= mask
    while v >= 128:
        out.append(0x80 | (v & 0x7F))
        v >>= 7
    out.append(v)
    return bytes(out)


def _hstr(s: str) -> bytes:
    b = s.encode("latin-1")
    return _hint(len(b), 7, 0) + b


@pytest.mark.parametrize("seed", range(4))
def test_repeated_blocks_keep_the_dynamic_table_exact(seed: int) -> None:
    """Blocks that reference no dynamic entry are decoded once and then taken from a cache (a
    server's responses repeat): their inserts must still be made every time, evictions
    included, so that later references to dynamic entries read what ``hpack`` reads."""
    rng = random.Random(seed)
    inserting = [  # static names or literal names, inserted; no dynamic reference
        b"\x88" + _hint(33, 6, 0x40) + _hstr("Mon, 07 Dec 2026 01:50:47 GMT"),
        b"\x88" + _hint(28, 6, 0x40) + _hstr("5000") + _hint(0, 6, 0x40) + _hstr("etag")
        + _hstr('"6b1610f6-1388"'),
        _hint(0, 6, 0x40) + _hstr("x-big") + _hstr("z" * 1500),  # evicts much of the table
        b"\x82" + _hint(4, 4, 0) + _hstr("/only/static"),  # inserts nothing
    ]
    ref = hpack.Decoder()
    mine = PassiveDecoder({})
    for i in range(400):
        if i > 4 and rng.random() < 0.3:
            block = b"".join(bytes([0x80 | rng.randrange(62, 62 + len(mine.entries))])
                             for _ in range(rng.randrange(1, 4)))  # dynamic references
        else:
            block = rng.choice(inserting)
        want = [(a.decode("latin-1"), b.decode("latin-1")) for a, b in ref.decode(block, raw=True)]
        got, unknown, whole = mine.decode(block)
        assert whole and not unknown and got == want, i
        assert len(mine.entries) == len(ref.header_table.dynamic_entries), i
