"""Hostile and random HTTP byte streams: the reader never raises and never stops making progress.

Found by this harness (each now a regression case below): a resynchronisation that matched a
line the head parser then rejected, looping forever on one byte; and a Content-Length of
Unicode digits (latin-1 '³') that str.isdigit() accepts and int() refuses.
"""

from __future__ import annotations

import random
import signal

import pytest

from replay.http1 import MAX_HEAD, HttpConnection
from replay.model import ConnKey

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching\r\nUpgrade: ws\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nbody",
    b"GET /\r\n",
    b"HEAD / HTTP/1.1\r\n\r\n",
    b"HTTP/1.1 304 NM\r\nContent-Length: 9\r\n\r\n",
    b"GET / HTTP/1.1\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    b"\xff\xfe\x00garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"ffffffff\r\n",
]


class _Hang(Exception):
    pass


def _conn(resync: bool = False) -> tuple[HttpConnection, list]:
    out: list = []
    return HttpConnection(ConnKey("10.0.0.1", 1, "10.0.0.2", 80), "c", out.append, {},
                          max_body=4096, resync=resync), out


def random_steps(rng: random.Random, c: HttpConnection, ts: float) -> None:
    """1 to 12 hostile steps on one connection: mutated seed bytes, gaps and closes, either
    side (the fuzz tests' driver, shared with the state-table test)."""
    for _ in range(rng.randint(1, 12)):
        side = rng.random() < 0.5
        act = rng.random()
        if act < 0.8:
            c.data(side, _mutate(rng, rng.choice(SEEDS)), ts)
        elif act < 0.9:
            c.gap(side, rng.randint(1, 5000), ts)
        else:
            c.close(side, ts)


def _mutate(rng: random.Random, b: bytes) -> bytes:
    buf = bytearray(b)
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        if op < 0.3 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op < 0.5 and buf:
            del buf[rng.randrange(len(buf))]
        elif op < 0.7:
            buf.insert(rng.randrange(len(buf) + 1), rng.choice(b"\r\n :0123456789abcdefHTTP/"))
        else:
            buf += rng.choice(SEEDS)
    return bytes(buf)


@pytest.mark.parametrize("seed", range(4))
def test_random_streams_never_raise_or_hang(seed: int) -> None:
    rng = random.Random(seed)

    def alarm(*_: object) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, alarm)
    try:
        for it in range(2500):
            c, out = _conn(resync=rng.random() < 0.3)
            signal.alarm(2)
            random_steps(rng, c, float(it))
            c.finish(float(it), timed_out=rng.random() < 0.5)
            signal.alarm(0)
            assert all(x.request is not None or x.response is not None for x in out)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_resync_onto_a_line_the_head_parser_rejects_moves_on() -> None:
    c, out = _conn()
    c.data(True, b"GET /a HTTP/1.1\r\n\r\n", 1.0)
    c.data(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1.1)
    c.gap(True, 100, 1.2)  # lost where a head could be: the client reader resynchronises
    c.data(True, b"0HEAD / HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 1.3)
    c.data(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1.4)
    c.finish(2.0)
    assert [x.request.target for x in out if x.request] == ["/a", "/b"]


def test_head_too_long_after_resync_moves_on() -> None:
    c, out = _conn(resync=True)
    c.data(False, b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD + 10), 1.0)
    c.data(False, b"\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 1.1)
    c.finish(2.0)
    assert [x.response.status for x in out] == [204]


def test_unicode_digits_are_not_a_content_length() -> None:
    c, out = _conn()
    c.data(True, b"POST / HTTP/1.1\r\nContent-Length: \xb39\r\n\r\n", 1.0)
    c.finish(2.0)
    assert "bad-content-length" in out[0].completeness.notes
