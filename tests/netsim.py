"""A tiny TCP conversation builder for tests: real Ethernet/IPv4/TCP frames, exact sequence numbers.

Tests drive the extractor with frames built here, so they can place every segment (reordered,
repeated, overlapping, missing) exactly where a case needs it.
"""

from __future__ import annotations

import socket
import struct

from replay.extract import Extractor
from replay.model import Exchange

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def frame(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int,
          payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                      flags, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return eth + ip + tcp + payload


class Conv:
    """One TCP connection. ``c(...)``/``s(...)`` make client/server segments and advance seq."""

    def __init__(self, client: tuple[str, int] = ("10.0.0.1", 40000),
                 server: tuple[str, int] = ("10.0.0.2", 80), isn_c: int = 1000,
                 isn_s: int = 5000, ts: float = 1000.0) -> None:
        self.client, self.server = client, server
        self.cseq, self.sseq = isn_c, isn_s
        self.ts = ts

    def _t(self) -> float:
        self.ts += 0.001
        return self.ts

    def handshake(self) -> list[tuple[float, int, bytes]]:
        out = [
            (self._t(), 1, frame(*self.client, *self.server, self.cseq, 0, SYN)),
            (self._t(), 1, frame(*self.server, *self.client, self.sseq, self.cseq + 1,
                                 SYN | ACK)),
        ]
        self.cseq += 1
        self.sseq += 1
        out.append((self._t(), 1, frame(*self.client, *self.server, self.cseq, self.sseq, ACK)))
        return out

    def c(self, data: bytes, *, seq: int | None = None, advance: bool = True,
          flags: int = PSH | ACK) -> tuple[float, int, bytes]:
        s = self.cseq if seq is None else seq
        f = frame(*self.client, *self.server, s, self.sseq, flags, data)
        if advance and seq is None:
            self.cseq += len(data)
        return self._t(), 1, f

    def s(self, data: bytes, *, seq: int | None = None, advance: bool = True,
          flags: int = PSH | ACK) -> tuple[float, int, bytes]:
        s = self.sseq if seq is None else seq
        f = frame(*self.server, *self.client, s, self.cseq, flags, data)
        if advance and seq is None:
            self.sseq += len(data)
        return self._t(), 1, f

    def fin_c(self) -> tuple[float, int, bytes]:
        f = frame(*self.client, *self.server, self.cseq, self.sseq, FIN | ACK)
        self.cseq += 1
        return self._t(), 1, f

    def fin_s(self) -> tuple[float, int, bytes]:
        f = frame(*self.server, *self.client, self.sseq, self.cseq, FIN | ACK)
        self.sseq += 1
        return self._t(), 1, f

    def rst_c(self) -> tuple[float, int, bytes]:
        return self._t(), 1, frame(*self.client, *self.server, self.cseq, 0, RST)


def run(frames: list[tuple[float, int, bytes]], **kw: object) -> tuple[list[Exchange], Extractor]:
    """Feed frames to a fresh Extractor, finish it, return (exchanges, extractor)."""
    out: list[Exchange] = []
    ex = Extractor(out.append, **kw)  # type: ignore[arg-type]
    for ts, lt, f in frames:
        ex.feed(ts, lt, f)
    ex.finish()
    return out, ex


def segments(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]
