"""The native fast path (``replay/_fastpath.c``) against the Python extractor it stands in for.

The C code handles only the common case and gives a connection back to the Python reassembler
(set to its last checkpoint, the segments since replayed) the moment anything is unusual. The
contract is that nothing observable changes: every test here extracts the same capture twice,
once with the fast path and once without, and requires byte-identical exchange records (ids,
timestamps, headers, bodies, completeness) in the same order, and the same summary counters.
The captures cover the common case (where the fast path must actually engage) and everything
that makes it hand back: loss, reordering, retransmissions, idle timeouts, evictions, tiny
buffers, a port filter, IPv6 and VLANs, random byte damage, and the public corpora.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import orjson
import pytest
from corpus_paths import CORPUS

from replay._native import load_c
from replay.extract import Extractor, Lines, Summary, extract_file
from replay.formats.jsonl import exchange_to_record
from replay.formats.pcap import CaptureReader
from replay.model import Exchange
from replay.synth import generate_pcap

FAST = load_c("replay._fastpath", "FastPath")
pytestmark = pytest.mark.skipif(
    FAST is None, reason="replay._fastpath is not built (bash scripts/setup.sh builds it), or "
                         "SHADOWTAP_PURE_PYTHON is set")


def _lines(x: Exchange | bytes) -> list[bytes]:
    if isinstance(x, Lines):
        lines = x.data.splitlines(keepends=True)
        assert len(lines) == x.n
        return lines
    return [orjson.dumps(exchange_to_record(x), option=orjson.OPT_APPEND_NEWLINE)]  # type: ignore[arg-type]


def _run(path: Path, native: bool, lines: bool = False,
         **limits: object) -> tuple[list[bytes], dict]:
    s = Summary()
    recs = [line
            for x in extract_file(path, summary=s, native=native, lines=lines, **limits)
            for line in _lines(x)]
    d = s.to_dict()
    d.pop("seconds")
    d.pop("packets_per_second")
    return recs, d


def _same(path: Path, **limits: object) -> list[bytes]:
    py_recs, py_sum = _run(path, False, **limits)
    for lines in (False, True):
        # Exchanges built from C, and (lines) JSONL lines encoded in C.
        c_recs, c_sum = _run(path, True, lines, **limits)
        for i, (a, b) in enumerate(zip(py_recs, c_recs, strict=False)):
            assert a == b, (f"{path.name} (lines={lines}): exchange {i} differs:\n"
                            f" python {a[:400]!r}\n native {b[:400]!r}")
        assert len(c_recs) == len(py_recs), f"{path.name}: {len(c_recs)} vs {len(py_recs)}"
        assert c_sum == py_sum
    return c_recs


def _fast_stats(path: Path, **limits: object) -> dict:
    ex = Extractor(lambda e: None, **limits)  # type: ignore[arg-type]
    with CaptureReader(path) as r:
        ex.run(iter(r))
    ex.finish()
    return ex.native.stats()


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("fast") / "clean.pcap"
    generate_pcap(p, connections=300, concurrency=60, seed=3)
    return p


def test_clean_traffic_is_identical_and_runs_native(clean: Path) -> None:
    recs = _same(clean)
    assert len(recs) > 500
    st = _fast_stats(clean)
    # Every connection starts with a SYN here, so each is adopted; the ones given back are
    # those with something the C code leaves to Python (a 100-continue is read natively, a
    # reset mid-exchange is not). Most exchanges must come from the fast path, or it does
    # nothing.
    assert st["adopted"] == 300
    assert st["exchanges"] > 0.8 * len(recs)


@pytest.mark.parametrize("opts", [
    {"loss": 0.01},
    {"reorder": 0.03},
    {"retransmit": 0.03},
    {"loss": 0.005, "reorder": 0.01, "retransmit": 0.01, "ipv6_share": 0.5},
    {"vlan": 42, "ipv6_share": 0.3, "chunked_share": 0.6},
    {"post_share": 0.9, "chunked_share": 0.5, "mss": 200},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("seed", [1, 2])
def test_damaged_traffic_is_identical(tmp_path: Path, opts: dict, seed: int) -> None:
    p = tmp_path / "d.pcap"
    generate_pcap(p, connections=120, concurrency=40, seed=seed, **opts)  # type: ignore[arg-type]
    _same(p)


@pytest.mark.parametrize("limits", [
    {"idle_timeout": 0.002},
    {"max_connections": 7},
    {"max_buffer": 3000},
    {"port": 80},
    {"port": 8081},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_limits_are_identical(clean: Path, limits: dict) -> None:
    _same(clean, **limits)
    st = _fast_stats(clean, **limits)
    # connections Python ended (idle, evicted, the end of the input) are not kept in C
    assert st["tracked"] == 0 and st["dormant"] == 0, st


def _records(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each record's frame in a little-endian classic pcap."""
    out = []
    pos = 24
    while pos + 16 <= len(data):
        n = struct.unpack_from("<I", data, pos + 8)[0]
        out.append((pos + 16, n))
        pos += 16 + n
    return out


@pytest.mark.parametrize("seed", range(6))
def test_random_damage_is_identical(tmp_path: Path, clean: Path, seed: int) -> None:
    """Bytes flipped anywhere in the frames (headers, heads, chunk sizes, bodies): both paths
    must read the same damaged traffic the same way."""
    rng = random.Random(seed)
    src = tmp_path / "src.pcap"
    generate_pcap(src, connections=80, concurrency=30, seed=10 + seed, chunked_share=0.5,
                  retransmit=0.01)
    data = bytearray(src.read_bytes())
    recs = _records(bytes(data))
    for _ in range(400):
        off, n = rng.choice(recs)
        if n:
            i = off + rng.randrange(n)
            data[i] = rng.choice([0, 10, 13, 32, 48, 58, 255, rng.randrange(256)])
    p = tmp_path / "damaged.pcap"
    p.write_bytes(bytes(data))
    _same(p)


def test_pcap_walk_in_c_matches_the_reader(tmp_path: Path, clean: Path) -> None:
    """A capture cut mid-record: the C record walk stops where the Python reader stops, with
    the same error, and the exchanges before the cut are identical."""
    data = clean.read_bytes()
    p = tmp_path / "cut.pcap"
    p.write_bytes(data[: len(data) * 2 // 3])
    _same(p)
    s = Summary()
    list(extract_file(p, summary=s))
    assert s.errors and "truncated at byte" in s.errors[0]


CORPUS_FILES = sorted(
    f for d in ("zeek-http", "tcpdump") if (CORPUS / d).is_dir()
    for f in (CORPUS / d).iterdir() if ".pcap" in f.name
)


@pytest.mark.corpus
def test_corpus_is_identical() -> None:
    if not CORPUS_FILES:
        pytest.skip(f"capture corpus not found at {CORPUS}")
    from replay.errors import FormatError
    checked = 0
    for f in CORPUS_FILES:
        try:
            _same(f)
        except FormatError:
            continue
        checked += 1
    assert checked > 100


# -- scripted conversations with every HTTP/1 feature, perturbed at random ------------------

_HEADS_REQ = [
    b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"get /lower HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /lf HTTP/1.1\nHost: h\n\n",
    b"GET /fold HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /sp  HTTP/1.1\r\nX-Tab:\tv\t\r\nX-Q: \"q\" \\ e\r\nX-Empty:\r\n\r\n",
    b"BREW /pot HTTP/1.1\r\n\r\n",
    b"GET /09\r\n",
    b"GET /utf8-\xc3\xa9 HTTP/1.1\r\nX-L: caf\xe9\r\n\r\n",
]


_CLEAN_REQ = [h for h in _HEADS_REQ if h.startswith((b"GET /a", b"HEAD", b"GET / HTTP/1.0",
                                                       b"OPTIONS", b"GET /sp"))]


def _req_with_body(rng: random.Random, clean: bool = False) -> bytes:
    body = rng.choice([b"", b"{\"a\": \"b\\n\"}", bytes(rng.randrange(256) for _ in range(40)),
                       b"x" * rng.choice([1, 1500, 5000])])
    kind = rng.choice(["cl", "chunked", "cl0", "expect"] if clean else
                      ["cl", "chunked", "te+cl", "cl0", "cl-lead0", "cl-dup", "expect"])
    if kind == "cl":
        return b"POST /p HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    if kind == "cl0":
        return b"POST /p HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    if kind == "cl-lead0":
        return b"POST /p HTTP/1.1\r\nContent-Length: 0%d\r\n\r\n" % len(body) + body
    if kind == "cl-dup":
        n = b"%d" % len(body)
        return b"POST /p HTTP/1.1\r\nContent-Length: " + n + b"\r\nContent-Length: " + n + \
            b"\r\n\r\n" + body
    if kind == "expect":
        return (b"PUT /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                % len(body) + body)
    chunks = b"".join(b"%x%s\r\n" % (len(c), rng.choice([b"", b";ext=1"])) + c + b"\r\n"
                      for c in (body[:7], body[7:]) if c)
    tail = b"0\r\n\r\n" if clean else rng.choice(
        [b"0\r\n\r\n", b"0\r\nX-Trailer: t\r\n\r\n", b"0\n\n"])
    te = b"Transfer-Encoding: chunked\r\n"
    if kind == "te+cl":
        te += b"Content-Length: 3\r\n"
    return b"POST /c HTTP/1.1\r\n" + te + b"\r\n" + chunks + tail


def _response(rng: random.Random, head_req: bool, clean: bool = False) -> bytes:
    body = rng.choice([b"", b"ok", b"\x1f\x8b\x08\x00gz", "é€😀".encode(), b"\xed\xa0\x80",
                       b"y" * rng.choice([10, 3000])])
    kind = rng.choice(["cl", "cl", "chunked", "204", "304", "100", "http10", "noreason"] if clean
                      else ["cl", "cl", "chunked", "close", "204", "304", "100", "101", "bad",
                            "http10", "noreason"])
    if kind == "100":
        return b"HTTP/1.1 100 Continue\r\n\r\n" + _response(rng, head_req, clean)
    if kind == "101":
        return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00"
    if kind == "204":
        return b"HTTP/1.1 204 No Content\r\n\r\n"
    if kind == "304":
        return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"
    if kind == "close":
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    if kind == "bad":
        return b"HTTP/1.1 2OO OK\r\n\r\n"
    if kind == "noreason":
        return b"HTTP/1.1 200 \r\nContent-Length: %d\r\n\r\n" % len(body) + body
    if kind == "chunked":
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n")
    ver = b"HTTP/1.0" if kind == "http10" else b"HTTP/1.1"
    if head_req:
        return ver + b" 200 OK\r\nContent-Length: 1234\r\n\r\n"
    return ver + b" 200 OK \r\nContent-Length: %d\r\nX-J: \"v\"\r\n\r\n" % len(body) + body


def _conversation(rng: random.Random, cport: int, ts: float,
                  exotic: float = 0.5) -> list[tuple[float, int, bytes]]:
    from netsim import Conv

    cv = Conv(client=("10.0.0.1", cport), isn_c=rng.randrange(1 << 32),
              isn_s=rng.randrange(1 << 32), ts=ts)
    out = cv.handshake() if rng.random() < 0.9 else []
    for _ in range(rng.randint(1, 5)):
        clean = rng.random() >= exotic
        if rng.random() < 0.5:
            req = rng.choice(_CLEAN_REQ if clean else _HEADS_REQ)
        else:
            req = _req_with_body(rng, clean)
        head_req = req.startswith(b"HEAD")
        resp = _response(rng, head_req, clean)
        pipelined = rng.random() < 0.15
        for data, side in ((req, "c"), (resp, "s")) if not pipelined else ((req + req, "c"),
                                                                          (resp + resp, "s")):
            cut = rng.choice([1, 3, 17, 1448, 100000])
            for i in range(0, len(data), cut):
                out.append(getattr(cv, side)(data[i : i + cut]))
    end = rng.random()
    if end < 0.6:
        out += [cv.fin_c(), cv.fin_s()] if rng.random() < 0.5 else [cv.fin_s(), cv.fin_c()]
    elif end < 0.75:
        out.append(cv.rst_c())
    return out


def _perturb(rng: random.Random, frames: list, rate: float) -> list:
    out = []
    for f in frames:
        r = rng.random()
        if r < rate:
            continue  # lost
        out.append(f)
        if r < 2 * rate:
            out.append(f)  # duplicated
    for _ in range(int(len(out) * rate)):
        i = rng.randrange(max(1, len(out) - 1))
        out[i : i + 2] = out[i : i + 2][::-1]  # reordered
    return out


def _feed_both(frames: list, **kw: object) -> None:
    got = []
    for native in (False, True):
        recs: list[bytes] = []
        ex = Extractor(lambda e, recs=recs: recs.append(  # type: ignore[misc]
            orjson.dumps(exchange_to_record(e))), native=native, **kw)  # type: ignore[arg-type]
        ex.run(frames)
        ex.finish()
        s = Summary()
        ex.fill(s)
        d = s.to_dict()
        d.pop("seconds")
        d.pop("packets_per_second")
        got.append((recs, d, ex.reasm.tracked, ex.reasm.hole_count))
    assert got[1][0] == got[0][0]
    assert got[1][1:] == got[0][1:]


@pytest.mark.parametrize("seed", range(60))
def test_scripted_conversations_are_identical(seed: int) -> None:
    """Conversations using every HTTP/1 feature (most of them, with few oddities, read by the
    C code; the rest handed back), pipelined, cut at any byte, then lost, duplicated and
    reordered at random, under tight limits."""
    rng = random.Random(seed)
    frames: list = []
    exotic = rng.choice([0.02, 0.5])
    for k in range(rng.randint(1, 12)):
        frames += _conversation(rng, 40000 + k % 5, 1000.0 + rng.random(), exotic)
    frames.sort(key=lambda f: f[0])  # interleaved by time
    frames = _perturb(rng, frames, rng.choice([0.0, 0.0, 0.02, 0.1]))
    kw = rng.choice([{}, {}, {"idle_timeout": 0.01}, {"max_connections": 2},
                     {"max_buffer": 2000}])
    _feed_both(frames, **kw)


# -- the native JSONL encoder for any Exchange ---------------------------------------------

def _rand_text(rng: random.Random) -> str:
    pool = ["", "a", "GET", "/p?q=1&r=\"x\"", "tab\there", "nl\n\r", "\\", "caf\xe9", "\u20ac",
            "\U0001f600", "\x00\x1f\x7f", "é" * 3, "x" * 300, "\u2028"]
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, 3)))


def _rand_body(rng: random.Random) -> bytes:
    return rng.choice([b"", b"plain", "é€😀\"\\\n".encode(), bytes(rng.randrange(256)
                       for _ in range(rng.randint(1, 64))), b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                       b"\xc0\xaf", b"ab\xe2\x82", b"{\"k\": [1, 2.5, null]}" * 50])


def _rand_exchange(rng: random.Random) -> Exchange:
    from replay.model import Completeness, ConnKey, Request, Response

    def headers() -> list:
        return [(_rand_text(rng), _rand_text(rng)) for _ in range(rng.randint(0, 4))]

    def resp() -> Response:
        return Response(rng.choice([200, 404, 100, 0, 999, 2**40]), _rand_text(rng),
                        rng.choice(["HTTP/1.1", "HTTP/1.0", "HTTP/0.9"]), headers(),
                        _rand_body(rng), headers() if rng.random() < 0.2 else [])

    odd = [0.0, 1e-5, 1e16, -2.5, float("nan"), float("inf")]
    ts = [rng.choice([None, 1.7e9 + rng.random(), 123456789.125] * 8 + odd) for _ in range(4)]
    c = Completeness()
    if rng.random() < 0.3:
        c = Completeness([(1, 2)] if rng.random() < 0.5 else [], [(3, 4), (5, 6)],
                         rng.choice([0, 3]), rng.random() < 0.5, rng.random() < 0.5,
                         rng.random() < 0.5, rng.random() < 0.5,
                         [_rand_text(rng)] if rng.random() < 0.5 else [])
    return Exchange(
        id=_rand_text(rng) or "c1.1",
        conn=rng.choice([None, ConnKey("10.0.0.1", 1234, "::1", 80)]),
        request=None if rng.random() < 0.1 else Request(_rand_text(rng), _rand_text(rng),
                                                        "HTTP/1.1", headers(), _rand_body(rng),
                                                        headers() if rng.random() < 0.2 else []),
        response=None if rng.random() < 0.1 else resp(),
        interim=[resp() for _ in range(rng.choice([0, 0, 1, 2]))],
        ts_request_start=ts[0], ts_request_end=ts[1], ts_response_start=ts[2],
        ts_response_end=ts[3], completeness=c,
        tunnel=rng.choice([None, None, "upgrade:websocket"]),
        meta=rng.choice([{}, {}, {}, {"a": 1}]))


def test_native_jsonl_encoder_writes_what_orjson_writes() -> None:
    from replay._native import load_c
    from replay.formats.jsonl import exchange_line

    encode = load_c("replay._fastpath", "encode_line")
    rng = random.Random(7)
    native = 0
    for _ in range(4000):
        ex = _rand_exchange(rng)
        try:
            want = orjson.dumps(exchange_to_record(ex), option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # lone surrogates: the Python path refuses, so must the native one
            assert encode(ex) is None
            with pytest.raises(TypeError):
                exchange_line(ex)
            continue
        got = encode(ex)
        if got is not None:
            native += 1
            assert got == want, ex
        assert exchange_line(ex) == want
    assert native > 1000  # the usual shapes are encoded natively


def test_switching_from_lines_to_exchanges_mid_capture_loses_nothing(clean: Path) -> None:
    """The appliance switches its extractor between JSONL lines and Exchanges when a reload
    changes the pipeline: connections adopted before the switch still finish as lines, which
    are turned back into Exchanges; nothing is lost or reordered."""
    frames = list(CaptureReader(clean))
    want = [orjson.dumps(exchange_to_record(e)) for e in extract_file(clean, native=False)]
    got: list[bytes] = []
    ex = Extractor(lambda e: got.append(orjson.dumps(exchange_to_record(e))),
                   emit_line=lambda b, n, ts: got.extend(bytes(b).splitlines()))
    half = len(frames) // 2
    ex.run(frames[:half])
    ex.set_emit_line(None)
    ex.run(frames[half:])
    ex.finish()
    assert got == want


@pytest.mark.parametrize("cut", [None, 0.6])
def test_gzip_pcap_walk_matches_the_reader(tmp_path: Path, clean: Path, cut: float | None) -> None:
    """A gzip capture is walked in chunks (not mapped): the same exchanges and the same error
    for a cut stream as the Python reader."""
    import gzip

    data = gzip.compress(clean.read_bytes(), mtime=0)
    if cut:
        data = data[: int(len(data) * cut)]
    p = tmp_path / "c.pcap.gz"
    p.write_bytes(data)
    _same(p)
    if cut:
        s = Summary()
        list(extract_file(p, summary=s))
        assert s.errors and "read failed" in s.errors[0]


def test_hand_back_goes_through_the_contract_methods(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C code takes connections over, gives them back and ends them only through the named
    methods of the hand-back contract (docs/architecture.md), once per event: each adopted
    connection is either given back (two import_state calls and one replay) or ended in C."""
    from replay import http1, tcp

    calls: dict[str, int] = {}

    def spy(cls: type, name: str) -> None:
        real = getattr(cls, name)

        def wrapper(*a: object, **k: object) -> object:
            key = f"{cls.__name__}.{name}" + (f"({a[1]})" if name == "set_fast" else "")
            calls[key] = calls.get(key, 0) + 1
            return real(*a, **k)

        monkeypatch.setattr(cls, name, wrapper)

    for cls, name in [(tcp._Conn, "export_state"), (tcp._Conn, "import_state"),
                      (tcp._Conn, "set_fast"), (http1.HttpConnection, "export_state"),
                      (http1.HttpConnection, "import_state"),
                      (tcp.Reassembler, "replay_native"), (tcp.Reassembler, "end_native")]:
        spy(cls, name)
    p = tmp_path / "d.pcap"
    generate_pcap(p, connections=120, concurrency=40, seed=5, loss=0.01, reorder=0.02)
    st = _fast_stats(p)
    assert st["adopted"] == calls["_Conn.set_fast(True)"] == 120
    assert calls["HttpConnection.export_state"] >= 120
    assert 0 < st["given_back"] < st["adopted"]
    for name in ("_Conn.import_state", "HttpConnection.import_state",
                 "Reassembler.replay_native"):
        assert calls[name] == st["given_back"], name
    assert calls["Reassembler.end_native"] == st["adopted"] - st["given_back"]
