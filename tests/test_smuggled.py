"""The lenient reading after a desync (replay/smuggled.py): which framing it takes, where a
chunked body ends, and that it is bounded whatever the bytes."""

from __future__ import annotations

import pytest

from replay.http1 import KNOWN_METHODS
from replay.smuggled import MAX_BYTES, MAX_REQUESTS, LenientReader, chunked_end, lenient_framing

SMUGGLED = b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n"


def _head(*fields: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: t\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


@pytest.mark.parametrize(("fields", "want"), [
    ((b"Content-Length: 5",), ("length", 5)),
    ((b"Content-Length: +5",), ("length", 5)),
    ((b"Content-Length: 005",), ("length", 5)),
    ((b"Content-Length: -1",), ("length", 0)),
    ((b"Content-Length: 0x5",), ("length", 0)),
    ((b"Content-Length: 5, 5",), ("length", 0)),
    ((b"Content-Length: 5", b"Content-Length: 40"), ("length", 0)),
    ((b"Content-Length: 18446744073709551615",), ("length", 0)),
    ((b"Transfer-Encoding: chunked", b"Content-Length: 5"), ("chunked", 0)),
    ((b"Transfer-Encoding: chunked, identity",), ("chunked", 0)),
    ((b"Transfer-Encoding: xchunked",), ("stop", 0)),  # a coding it does not know: until close
    ((b"Transfer-Encoding: xchunked", b"Content-Length: 5"), ("stop", 0)),
    ((b'Transfer-Encoding: "chunked"',), ("stop", 0)),
    ((b"Transfer-Encoding: chunked;q=1",), ("chunked", 0)),  # a "chunked" prefix, as tshark
    ((b"Transfer-Encoding: CHUNKED",), ("stop", 0)),  # ... case-sensitive
    ((b"Transfer-Encoding : chunked",), ("length", 0)),
    ((b"Transfer-Encoding:", b" chunked"), ("stop", 0)),  # obs-fold: the head is not read
    ((b"XA b", b"Content-Length: 5"), ("stop", 0)),  # not a field line
    ((b"Content-Length:\x0b5",), ("length", 5)),  # g_ascii_strtoll skips the blank
    ((b"X-A: a\rb", b"Content-Length: 5"), ("stop", 0)),
])
def test_lenient_framing(fields: tuple[bytes, ...], want: tuple[str, int]) -> None:
    assert lenient_framing(_head(*fields)) == want


def test_chunked_end() -> None:
    body = b"5;ext\r\nhello\r\n 3 \r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    assert chunked_end(body + SMUGGLED, 0) == len(body)
    assert chunked_end(body[:-3], 0) == -1  # more bytes needed
    # Wireshark's reading: LF ends a line, the two bytes after data are skipped unread, an
    # empty size line ends the body before it
    lf = b"5\nhello\n0\n\n"
    assert chunked_end(lf + SMUGGLED, 0) == len(b"5\nhello\n0")  # "\n0" skipped unread
    assert chunked_end(b"3\r\nhello\r\n0\r\n\r\n", 0) == 8  # at the empty line after "lo"
    assert chunked_end(b"10000000000000005\r\nhello\r\n", 0) == -1  # LONG_MAX: waits for more
    # strtol: blanks, a sign, 0x; 32 bits kept
    for size in (b"0x5", b"+5", b" 5", b"5 ", b"1000000000000005", b"05;x"):
        body = size + b"\r\nhello\r\n0\r\n\r\n"
        assert chunked_end(body + SMUGGLED, 0) == len(body), size
    assert chunked_end(b"0\r\nX: 1\n\n" + SMUGGLED, 0) == 9  # trailers end at an LF line too
    assert chunked_end(b"f" * 1100, 0) is None  # no line end at all


def _read(head: bytes, after: bytes, seg: int = 0) -> list:
    got: list = []
    r = LenientReader.after_head(got.append, head, methods=KNOWN_METHODS)
    for i in range(0, len(after), seg or len(after) or 1):
        r.feed(after[i:i + (seg or len(after))])
    return got


@pytest.mark.parametrize("seg", [0, 1, 7])
def test_smuggled_requests_are_read_whatever_the_segments(seg: int) -> None:
    head = _head(b"Transfer-Encoding: chunked", b"Content-Length: 40")
    post = b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    got = _read(head, b"0\r\n\r\n" + SMUGGLED + post, seg)
    assert [(r.method, r.target, r.body) for r in got] == [("GET", "/s", b""),
                                                          ("POST", "/p", b"abc")]
    assert got[0].headers == [("Host", "t")]


def test_nothing_is_read_unless_a_request_line_comes_at_once() -> None:
    head = _head(b"Content-Length: 0x5")  # no body, so 'hello' comes first
    assert _read(head, b"hello" + SMUGGLED) == []
    assert _read(_head(b"Content-Length: 5"), b"hellohelloGET /s HTTP/1.1\r\n\r\n") == []
    assert _read(_head(b"X-A: a\rb"), SMUGGLED) == []


def test_bounded_in_requests_and_time() -> None:
    many = SMUGGLED * (MAX_REQUESTS * 4)
    assert len(_read(_head(), many)) == MAX_REQUESTS
    r = LenientReader(lambda _: None, "chunked", methods=KNOWN_METHODS)
    for _ in range(2000):  # hostile: one endless chunk line, in 1 KiB pieces
        r.feed(b"f" * 1024)
    assert r.done and len(r.buf) <= MAX_BYTES  # gave up, holding a bounded buffer
    r = LenientReader(lambda _: None, "head", methods=KNOWN_METHODS)
    for _ in range(1000):  # a request line that never ends
        r.feed(b"GET /" + b"a" * 1019)
    assert r.done and r.taken <= MAX_BYTES
