"""Random TCP segment streams (any sequence numbers, flags, truncations, tiny limits) through
the whole extractor: it never raises, never hangs, and its hole accounting returns to zero."""

from __future__ import annotations

import random
import signal

import pytest
from netsim import frame

from replay.extract import Extractor

PAYLOADS = [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"x" * 1400, b"", b"0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
FLAGS = [0x10, 0x18, 0x02, 0x12, 0x11, 0x04, 0x19, 0x14, 0x00, 0x3F]


class _Hang(Exception):
    pass


@pytest.mark.parametrize("seed", range(3))
def test_random_segments_never_raise_and_holes_balance(seed: int) -> None:
    rng = random.Random(seed)

    def alarm(*_: object) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, alarm)
    try:
        for _ in range(600):
            ex = Extractor(lambda e: None, max_connections=rng.choice([2, 100]),
                           max_buffer=rng.choice([500, 1 << 20]),
                           idle_timeout=rng.choice([1.0, 100.0]))
            base = [rng.randrange(1 << 32), rng.randrange(1 << 32)]
            ts = 1000.0
            signal.alarm(3)
            for _ in range(rng.randint(1, 40)):
                cport = rng.choice([1000, 1001, 1002])
                side = rng.random() < 0.5
                p = rng.choice(PAYLOADS)
                jump = rng.choice([0, 1, 10, 100, 1400, 5000, 1 << 31, rng.randrange(1 << 32)])
                seq = (base[side] + jump) & 0xFFFFFFFF
                ack = (base[not side] + rng.randrange(6000)) & 0xFFFFFFFF
                ts += rng.choice([0.0, 0.001, 2.0])
                if side:
                    f = frame("10.0.0.1", cport, "10.0.0.2", 80, seq, ack, rng.choice(FLAGS), p)
                else:
                    f = frame("10.0.0.2", 80, "10.0.0.1", cport, seq, ack, rng.choice(FLAGS), p)
                if rng.random() < 0.05:
                    f = f[: rng.randrange(len(f))]
                ex.feed(ts, 1, f)
                if rng.random() < 0.3:
                    base[side] = (base[side] + len(p)) & 0xFFFFFFFF
            ex.finish()
            signal.alarm(0)
            assert ex.reasm.hole_count == 0 and ex.reasm.tracked == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
