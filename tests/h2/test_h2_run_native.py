"""The C handling of the reader's usual events (``run`` in ``replay/h2/_hpack.c``, with the
objects it makes by recipe) against its definition, the Python ``H2Connection``: the same
exchanges (compared whole: every field, meta, completeness, timestamps), the same counters in the
same order and the same connection state afterwards, with ``run``, with ``scan`` alone (``RUN``
None) and in pure Python (``SCAN`` None, the Python decoder), on connections of every kind of
frame (split and interleaved anyhow, gapped, picked up mid-way, RST_STREAM, GOAWAY, trailers,
gRPC, CONTINUATION, padding, interim responses, pushes, big header lists, capped bodies). And a
seeded fuzz in a child process: mutated frames (the same results) and hostile connection state
(odd attribute types and values: never a crash)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hpack
import pytest

from replay.h2 import hpack_passive as hp
from replay.h2 import reader
from replay.h2.hpack_passive import PassiveDecoder

ROOT = Path(__file__).resolve().parents[2]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

pytestmark = pytest.mark.skipif(reader.RUN is None,
                                reason="replay/h2/_hpack.c is not built (or pure Python)")


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") \
        + payload


def _grpc_msg(rng: random.Random) -> bytes:
    m = rng.randbytes(rng.randrange(0, 200))
    return b"\x00" + len(m).to_bytes(4, "big") + m


def _block_frames(rng: random.Random, sid: int, block: bytes, end_stream: bool) -> list[bytes]:
    """A header block as HEADERS (+ CONTINUATION), padded or prioritised at times."""
    es = 0x01 if end_stream else 0
    r = rng.random()
    if r < 0.1:  # PADDED and PRIORITY
        pad = rng.randrange(0, 20)
        return [_frame(1, 0x04 | 0x08 | 0x20 | es, sid,
                       bytes([pad]) + b"\x00\x00\x00\x00\x10" + block + b"\x00" * pad)]
    if r < 0.2 and len(block) > 4:  # CONTINUATION
        cuts = sorted(rng.sample(range(1, len(block)), min(len(block) - 1, rng.randrange(1, 4))))
        pieces = [block[a:b] for a, b in zip([0, *cuts], [*cuts, len(block)], strict=True)]
        out = [_frame(1, es, sid, pieces[0])]
        out += [_frame(9, 0x04 if i == len(pieces) - 1 else 0, sid, p)
                for i, p in enumerate(pieces[1:], 1)]
        return out
    return [_frame(1, 0x04 | es, sid, block)]


def _body_frames(rng: random.Random, sid: int, body: bytes, end_stream: bool) -> list[bytes]:
    out = []
    cuts = sorted(rng.sample(range(len(body) + 1), min(len(body) + 1, rng.randrange(0, 3))))
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        if rng.random() < 0.1:
            pad = rng.randrange(0, 30)
            out.append(_frame(0, 0x08, sid, bytes([pad]) + body[a:b] + b"\x00" * pad))
        else:
            out.append(_frame(0, 0, sid, body[a:b]))
    if end_stream:
        if out and rng.random() < 0.8:  # END_STREAM on the last DATA frame
            last = out.pop()
            out.append(last[:4] + bytes([last[4] | 0x01]) + last[5:])
        else:
            out.append(_frame(0, 0x01, sid, b""))
    return out


def _rich(rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    """Both directions, frame by frame: requests and responses of every usual and unusual
    shape (see the module docstring)."""
    ce, se = hpack.Encoder(), hpack.Encoder()
    c = [PREFACE, _frame(4, 0, 0, b"")]
    s = [_frame(4, 0, 0, b""), _frame(4, 1, 0, b"")]
    for k in range(rng.randrange(30, 90)):
        sid = 1 + 2 * k
        if rng.random() < 0.03:
            sid = rng.choice([1, 3, 0])  # a closed stream again, or stream 0
        grpc = rng.random() < 0.15
        method = rng.choice(["GET", "GET", "GET", "POST", "CONNECT"])
        hs = [(":method", method), (":scheme", "https"), (":authority", "shop.test")]
        if method != "CONNECT" or rng.random() < 0.5:
            hs.append((":path", f"/p{k}?q={rng.randrange(99)}"))
        if grpc:
            hs += [("content-type", rng.choice(["application/grpc", "application/grpc+proto"])),
                   ("te", "trailers")]
        elif rng.random() < 0.2:
            hs.append(("content-type", rng.choice(["application/json", "Application/grpc"])))
        if rng.random() < 0.03:  # a big header list (some beyond MAX_HEADER_LIST / MAX_FIELDS)
            hs += [(f"x-big-{i}", "v" * rng.randrange(0, 60))
                   for i in range(rng.randrange(100, 4200))] if rng.random() < 0.5 else \
                [(f"x-big-{i}", "v" * 3000) for i in range(rng.randrange(10, 90))]
        hs += [(f"x-{rng.randrange(20)}", "v" * rng.randrange(0, 80))
               for _ in range(rng.randrange(4))]
        block = ce.encode(hs, huffman=rng.random() < 0.7)
        body = _grpc_msg(rng) if grpc else (
            rng.randbytes(rng.randrange(0, 6000)) if method == "POST" else b"")
        trailers = (grpc and rng.random() < 0.2) or rng.random() < 0.03
        if rng.random() < 0.02:
            block = block[:len(block) // 2]  # a damaged block
        c += _block_frames(rng, sid, block, not body and not trailers and rng.random() < 0.9)
        c += _body_frames(rng, sid, body, not trailers)
        if trailers:
            c += _block_frames(rng, sid, ce.encode([("x-checksum", str(k))]), True)
        if rng.random() < 0.03:
            c.append(_frame(3, 0, sid, (8).to_bytes(4, "big")))  # RST_STREAM by the client
        # the response
        if rng.random() < 0.05:
            s += _block_frames(rng, sid, se.encode([(":status", "100")]), False)
        status = rng.choice(["200"] * 8 + ["404", "500", "204", "599", "103", "600", "2x", ""])
        rh = [(":status", status)] if status else []
        rh += [("content-type", "application/grpc" if grpc else "text/html"),
               ("date", f"d{k % 5}"), *[(f"y-{rng.randrange(9)}", "w") for _ in range(2)]]
        if rng.random() < 0.03:
            rh += [(f"r-big-{i}", "v" * 300) for i in range(rng.randrange(10, 1200))]
        rbody = _grpc_msg(rng) if grpc else rng.randbytes(rng.choice([0, 5, 1000, 20000]))
        rtrail = grpc or rng.random() < 0.05
        if rng.random() < 0.06:
            s.append(_frame(3, 0, sid, rng.choice([0, 2, 8, 77]).to_bytes(4, "big")))
            continue
        s += _block_frames(rng, sid, se.encode(rh, huffman=rng.random() < 0.7),
                           not rbody and not rtrail and rng.random() < 0.5)
        s += _body_frames(rng, sid, rbody, not rtrail)
        if rtrail:
            s += _block_frames(rng, sid, se.encode([("grpc-status", "0"), ("grpc-message", "")]),
                               True)
        if rng.random() < 0.02:  # a push promise
            s.append(_frame(5, 0x04, sid, (1000 + 2 * k).to_bytes(4, "big")
                            + se.encode([(":method", "GET"), (":path", "/pushed")])))
        if rng.random() < 0.02:  # a response and data on a stream never opened
            s += _block_frames(rng, 4001 + 2 * k, se.encode([(":status", "200")]), False)
            s.append(_frame(0, 0x01, 4001 + 2 * k, b"orphan"))
        if rng.random() < 0.02:
            c.append(_frame(0, 0x01, 5001 + 2 * k, b"no head"))
        if rng.random() < 0.02:  # GOAWAY
            s.append(_frame(7, 0, 0, (max(1, sid - 10)).to_bytes(4, "big")
                            + rng.choice([0, 2, 11]).to_bytes(4, "big")))
        if rng.random() < 0.02:
            s.append(_frame(4, 0, 0, (5).to_bytes(2, "big") + (32768).to_bytes(4, "big")))
    return c, s


def _chunks(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    data = b"".join(frames)
    size = rng.choice([0, 7, 100, 1400, 16384, 100000])
    if len(data) > 200000:  # (a small size would make the test slow, not better)
        size = max(size, 1400)
    if size == 0:  # frame by frame, a few at a time
        out, i = [], 0
        while i < len(frames):
            n = rng.randrange(1, 6)
            out.append(b"".join(frames[i:i + n]))
            i += n
        return out
    return [data[i:i + size] for i in range(0, len(data), size)]


def _drive(c: list[bytes], s: list[bytes], order: list[tuple[bool, int]], gaps: set[int],
           mid: bool, max_body: int, with_meta: bool) -> tuple:
    """One connection fed its chunks in ``order`` (gaps for some): the exchanges (repr, whole),
    the counters in order and the connection's state afterwards."""
    from replay.model import ConnKey

    out: list = []
    stats: dict[str, int] = {}
    meta = (lambda: {"tls": {"version": "TLS 1.3"}}) if with_meta else None
    h = reader.H2Connection(ConnKey("10.0.0.1", 1, "10.0.0.2", 2), "c7", out.append, stats,
                            max_body=max_body, mid_stream=mid, via="tls", meta=meta)
    if with_meta:
        h.outer = SimpleNamespace(retransmits=3)
    chunks = {True: c, False: s}
    for i, (side, k) in enumerate(order):
        if i in gaps:
            h.gap(side, len(chunks[side][k]), float(i))
        else:
            h.feed(side, chunks[side][k], float(i) + 0.25)
    state = (h.held, h.n, sorted(h.streams), sorted(h.closed_streams), h.goaway)
    h.finish(1e6)
    return [repr(e) for e in out], list(stats.items()), state, h.held


def _modes(*args: Any) -> dict[str, tuple]:
    res = {"run": _drive(*args)}
    saved = (reader.RUN, reader.SCAN, reader.DECODE)
    try:
        reader.RUN = None
        res["scan"] = _drive(*args)
        reader.SCAN = None
        reader.DECODE = PassiveDecoder.decode_py
        res["pure"] = _drive(*args)
    finally:
        reader.RUN, reader.SCAN, reader.DECODE = saved
    return res


def _case(rng: random.Random) -> tuple:
    c_frames, s_frames = _rich(rng)
    mid = rng.random() < 0.2
    if mid:
        c_frames = c_frames[rng.randrange(2, 12):]
        s_frames = s_frames[rng.randrange(2, 12):]
        if rng.random() < 0.5 and c_frames:  # inside a frame
            c_frames[0] = c_frames[0][rng.randrange(len(c_frames[0])):]
    c, s = _chunks(rng, c_frames), _chunks(rng, s_frames)
    order = [(True, i) for i in range(len(c))] + [(False, i) for i in range(len(s))]
    r = rng.random()
    if r < 0.6:  # interleaved: requests ahead of their responses, mostly
        order.sort(key=lambda o: (o[1] / max(1, len(c if o[0] else s))) + (0 if o[0] else 0.02))
    elif r < 0.8:
        rng.shuffle(order)
        order = ([o for o in order if o[0]] if rng.random() < 0.5 else order)
        order = sorted(order, key=lambda o: (o[0], o[1])) if rng.random() < 0.5 else \
            [o for o in order if o[0]] + [o for o in order if not o[0]]
    gaps = {rng.randrange(len(order))} if rng.random() < 0.25 and order else set()
    max_body = rng.choice([64 << 20, 64 << 20, 3000, 50000])
    return c, s, order, gaps, mid, max_body, rng.random() < 0.5


@pytest.mark.parametrize("seed", range(24))
def test_run_agrees_with_scan_and_python(seed: int) -> None:
    rng = random.Random(9000 + seed)
    emitted = 0
    for trial in range(3):
        res = _modes(*_case(rng))
        assert res["run"] == res["pure"], (seed, trial)
        assert res["scan"] == res["pure"], (seed, trial)
        emitted += len(res["run"][0])
        assert res["run"][3] == 0  # no body bytes held once finished
    assert emitted


def test_run_takes_the_usual_case_and_the_rest_goes_to_python(monkeypatch: Any) -> None:
    """A plain request and response are handled in C (no Python event handling), an interim
    response, trailers, a gRPC exchange and a capped body go through the Python methods."""
    calls: list[str] = []
    for name in ("_events", "_done", "_emit"):
        orig = getattr(reader.H2Connection, name)

        def spy(self: Any, *a: Any, _o: Any = orig, _n: str = name) -> Any:
            calls.append(_n)
            return _o(self, *a)
        monkeypatch.setattr(reader.H2Connection, name, spy)
    ce, se = hpack.Encoder(), hpack.Encoder()

    def one(extra_req: list, resp_frames: list[bytes], sid: int = 1) -> list[str]:
        calls.clear()
        out: list = []
        from replay.model import ConnKey
        h = reader.H2Connection(ConnKey("a", 1, "b", 2), "c", out.append, {}, max_body=100)
        h.feed(True, PREFACE + _frame(4, 0, 0, b"") + _frame(1, 0x05, sid, ce.encode(
            [(":method", "GET"), (":scheme", "https"), (":path", "/"), *extra_req])), 1.0)
        h.feed(False, b"".join(resp_frames), 2.0)
        assert len(out) == 1
        return list(calls)

    ok = se.encode([(":status", "200")])
    assert one([], [_frame(1, 0x04, 1, ok), _frame(0, 0x01, 1, b"hello")]) == []
    assert one([], [_frame(1, 0x05, 1, ok)]) == []
    assert "_events" in one([], [_frame(1, 0x04, 1, se.encode([(":status", "103")])),
                                 _frame(1, 0x05, 1, ok)])
    assert "_events" in one([], [_frame(1, 0x04, 1, ok), _frame(1, 0x05, 1, se.encode(
        [("grpc-status", "0")]))])
    assert one([("content-type", "application/grpc")],
               [_frame(1, 0x05, 1, ok)]) == ["_emit"]
    assert "_events" in one([], [_frame(1, 0x04, 1, ok), _frame(0, 0x01, 1, b"x" * 200)])


def test_objects_made_by_recipe_equal_the_classes() -> None:
    """``make`` builds each class's objects as its ``__init__`` does: equal, same types, fresh
    mutable defaults (not shared), the recipes checked for every class."""
    from replay.h2 import _hpack  # type: ignore[attr-defined]
    from replay.model import Completeness, ConnKey, Exchange, Request, Response

    made = {r[0]: r for r in reader._recipes()}
    assert sorted(made) == [0, 1, 2, 3, 4, 5]
    k = ConnKey("a", 1, "b", 2)
    cases = [(0, Completeness, ()), (1, Exchange, ("x.1", k)),
             (2, Request, ("GET", "/", "HTTP/2", [("a", "b")])),
             (3, Response, (200, "", "HTTP/2", [])), (4, reader._Msg, ()),
             (5, reader._Stream, (3, Exchange("e", k)))]
    for i, cls, args in cases:
        a, b = _hpack.make(i, *args), cls(*args)
        assert type(a) is cls and a == b and repr(a) == repr(b)
        for name in cls.__slots__:
            va, vb = getattr(a, name), getattr(b, name)
            assert type(va) is type(vb), (cls, name)
            if isinstance(va, (list, dict)) and not args:
                assert va is not getattr(_hpack.make(i, *args), name)
    with pytest.raises(RuntimeError):
        _hpack.make(7)
    with pytest.raises(RuntimeError):
        _hpack.make(1, "too few")


@pytest.mark.parametrize("recipe", [
    [("nope", 1, None)],                    # not a slot of the class
    [("sid", 9, None)],                     # no such kind
    [("sid", 2, set)],                      # a factory other than list/dict
    [("sid", 3, 5)],                        # a later recipe
    [("sid", 1, None), ("ex", 0, None)],    # an argument after a default
    [("__module__", 1, None)],              # not a member descriptor
    ["sid"],
])
def test_configure_make_refuses_odd_recipes(recipe: list) -> None:
    from replay.h2 import _hpack  # type: ignore[attr-defined]

    with pytest.raises((TypeError, ValueError)):
        _hpack.configure_make(6, reader._Stream, sum(1 for r in recipe
                                                     if isinstance(r, tuple) and r[1] == 0),
                              recipe)
    with pytest.raises((TypeError, ValueError)):
        _hpack.configure_make(6, dict, 0, [])  # not made by object.__new__
    with pytest.raises((TypeError, ValueError)):
        _hpack.configure_make(99, reader._Msg, 0, [])


# -- seeded fuzz, in a child process ------------------------------------------------------------

def _child(code: str, timeout: int = 300) -> str:
    paths = [str(ROOT), str(ROOT / "tests" / "h2")]
    prelude = f"import sys\nsys.path[:0] = {paths!r}\nimport test_h2_run_native as R\n"
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", prelude + code],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    return r.stdout


def _fuzz_frames(seed: int, n: int) -> str:
    """Connections with mutated frames (headers' lengths, types, flags, streams; bit flips;
    crafted HEADERS/DATA with mutated blocks): the same results with ``run`` and in Python."""
    import test_hpack_native as T

    rng = random.Random(seed)
    blocks = [b"\x82\x86\x84", b"\x88", b"", b"\x88\x40\x01a\x01b"]
    for i in range(n):
        c, s, order, gaps, mid, max_body, with_meta = _case(rng)
        c = [T._mutate_frames(rng, x, blocks) if rng.random() < 0.2 else x for x in c]
        s = [T._mutate_frames(rng, x, blocks) if rng.random() < 0.2 else x for x in s]
        saved = dict(hp._BLOCKS)
        res = _modes(c, s, order, gaps, mid, max_body, with_meta)
        hp._BLOCKS.clear()
        hp._BLOCKS.update(saved)
        assert res["run"] == res["pure"], (seed, i)
    return f"ok {n}"


class _Weird(int):
    pass


def _hostile_state(seed: int, n: int) -> str:
    """A connection whose attributes are set to odd types and values between segments (what a
    bug elsewhere could leave): whatever the Python code does with them (an exception, or
    not), ``run`` never crashes."""
    from replay.model import ConnKey

    rng = random.Random(seed)
    odd: list[Any] = [None, "x", 1.5, -1, 2**70, -(2**70), _Weird(3), [], {}, (), b"", set(),
                      object(), True, 0]
    raised = 0
    for _ in range(n):
        c_frames, s_frames = _rich(rng)
        c, s = _chunks(rng, c_frames), _chunks(rng, s_frames)
        h = reader.H2Connection(ConnKey("a", 1, "b", 2), rng.choice(["c", "\u00e9", "x" * 5000]),
                                lambda ex: None, {}, max_body=rng.choice([100, 64 << 20]))
        order = [(True, k) for k in range(len(c))] + [(False, k) for k in range(len(s))]
        order.sort(key=lambda o: o[1] / max(1, len(c if o[0] else s)))
        for j, (side, k) in enumerate(order):
            if rng.random() < 0.05:
                target: Any = h
                names = ["held", "max_body", "n", "conn_id", "streams", "closed_streams",
                         "stats", "meta", "outer", "emit", "conn"]
                r = rng.random()
                sts = [x for x in h.streams.values() if isinstance(x, reader._Stream)] \
                    if isinstance(h.streams, dict) else []
                if sts and r < 0.5:
                    st = rng.choice(sts)
                    target = rng.choice([st, st.req, st.resp, st.ex,
                                         getattr(st.ex, "completeness", st)])
                    names = [x for x in getattr(type(target), "__slots__", ())]
                elif r < 0.6:
                    target = h.sides[rng.random() < 0.5]
                    names = ["max_frame", "client", "hpack", "block_sid"]
                elif r < 0.7 and isinstance(h.streams, dict) and h.streams:
                    h.streams[rng.choice(list(h.streams))] = rng.choice(odd)
                    names = []
                if names:
                    try:
                        setattr(target, rng.choice(names), rng.choice(odd))
                    except (TypeError, AttributeError):
                        pass
            try:
                h.feed(side, (c if side else s)[k], float(j))
            except Exception:  # the Python code raises on odd state too
                raised += 1  # and the connection goes on, in whatever state that left
    return f"ok {n} {raised}"


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_seeded_quick(seed: int) -> None:
    """A few seeded cases in every run (~7 s each on the CI machine); a longer fuzz run with
    ``SHADOWTAP_FUZZ_SCALE=N`` (N times the cases), e.g. before touching ``_hpack.c``."""
    k = max(1, int(os.environ.get("SHADOWTAP_FUZZ_SCALE", "1") or 1))
    out = _child(f"print(R._fuzz_frames({seed}, {3 * k}))\n"
                 f"print(R._hostile_state({seed}, {15 * k}))")
    assert out.count("ok") == 2, out
