"""Cases where the bytes prove tshark wrong, built from exact frames (tests/netsim.py)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from netsim import Conv

from replay.extract import extract_file


def _write_pcap(path: Path, frames: list[tuple[float, int, bytes]]) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, _lt, fr in frames:
            sec = int(ts)
            f.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(fr), len(fr)))
            f.write(fr)


def test_chunked_terminator_alone_in_its_segment(tmp_path: Path) -> None:
    """A chunked request whose final CRLF is split across two segments (``...0\r\n\r`` then
    ``\n``) is complete and valid (RFC 9112 7.1: last-chunk, trailer section, CRLF; segment
    boundaries mean nothing). tshark 4.0 flags the first segment malformed and loses the
    request (seen first in a generated 2M-packet capture); shadowtap pairs it."""
    conv = Conv()
    head = b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    frames = [*conv.handshake(), conv.c(head + b"5\r\nhello\r\n0\r\n\r"), conv.c(b"\n"),
              conv.s(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
              conv.c(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"),
              conv.s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), conv.fin_c(), conv.fin_s()]
    cap = tmp_path / "split.pcap"
    _write_pcap(cap, frames)
    exs = list(extract_file(cap))
    assert [(x.request.method, x.request.body, x.response.status) for x in exs] == [
        ("POST", b"hello", 201), ("GET", b"", 200)]
    assert all(x.completeness.complete for x in exs)
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed: the comparison half of this test needs it")
    out = subprocess.run(["tshark", "-r", str(cap), "-Y", "http.request", "-T", "fields", "-e",
                          "http.request.method"], capture_output=True, text=True).stdout
    # tshark 4.0 misses the POST the bytes carry; a fixed tshark agrees with us. Anything else
    # (tshark seeing other requests) means our frames are not what this test says they are.
    assert out.split() in (["GET"], ["POST", "GET"]), out
