"""Request-smuggling and framing cases built from RFC 9112 (§2.2, §5.1, §6.1-6.3, §7.1, §11.2)
and from public research (CL.TE, TE.CL, TE.TE obfuscations, 0.CL / Expect, chunk tricks).

Each case is a client byte stream, the desync reason shadowtap must report (None: a valid
stream, nothing desync), the request targets shadowtap reads from it (after a desync, nothing
more as requests of its own), and the smuggled ones it reports after that desync: what the
lenient reading of ``replay.smuggled`` (Wireshark's) finds there, each an exchange marked desync
(reason ``smuggled``), never replayed. Shared by the framing unit tests, the fuzz seeds and the
tshark comparison.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

from netsim import Conv

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"


def _post(fields: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST / " + version + b"\r\nHost: t\r\n" + fields + b"\r\n" + body


class Case(NamedTuple):
    stream: bytes
    desync: str | None
    targets: tuple[str, ...]
    smuggled: tuple[str, ...] = ()


CASES: dict[str, Case] = {
    # Content-Length (RFC 9112 §6.2, §6.3 item 5)
    "cl_negative": Case(_post(b"Content-Length: -1\r\n") + SMUGGLED, "bad_content_length", ("/",), ("/smuggled",)),
    "cl_plus": Case(_post(b"Content-Length: +5\r\n", b"hello") + SMUGGLED, "bad_content_length",
                    ("/",), ("/smuggled",)),
    "cl_alpha": Case(_post(b"Content-Length: abc\r\n") + SMUGGLED, "bad_content_length", ("/",), ("/smuggled",)),
    "cl_hex": Case(_post(b"Content-Length: 0x5\r\n", b"hello") + SMUGGLED, "bad_content_length",
                   ("/",)),
    "cl_empty": Case(_post(b"Content-Length: \r\n") + SMUGGLED, "bad_content_length", ("/",), ("/smuggled",)),
    "cl_inner_space": Case(_post(b"Content-Length: 1 0\r\n", b"helloworld") + SMUGGLED,
                           "bad_content_length", ("/",)),
    "cl_overflow": Case(_post(b"Content-Length: 18446744073709551621\r\n", b"hello") + SMUGGLED,
                        "bad_content_length", ("/",)),
    "cl_list_differ": Case(_post(b"Content-Length: 5, 40\r\n", b"hello") + SMUGGLED,
                           "conflicting_content_length", ("/",)),
    "cl_fields_differ": Case(_post(b"Content-Length: 5\r\nContent-Length: 40\r\n", b"hello")
                             + SMUGGLED, "conflicting_content_length", ("/",)),
    "cl_list_same": Case(_post(b"Content-Length: 5, 5\r\n", b"hello") + SMUGGLED,
                         "duplicate_content_length", ("/",)),
    "cl_leading_zeros": Case(_post(b"Content-Length: 005\r\n", b"hello") + SMUGGLED,
                             "content_length_leading_zeros", ("/",), ("/smuggled",)),
    # Transfer-Encoding (§6.1, §6.3 items 3-4)
    "te_cl": Case(_post(b"Content-Length: 40\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")
                  + SMUGGLED, "te_with_content_length", ("/",), ("/smuggled",)),
    "cl_te": Case(_post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n")
                  + SMUGGLED, "te_with_content_length", ("/",), ("/smuggled",)),
    "te_xchunked": Case(_post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n") + SMUGGLED,
                        "te_not_chunked_last", ("/",)),
    "te_chunked_identity": Case(_post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n")
                                + SMUGGLED, "te_not_chunked_last", ("/",), ("/smuggled",)),
    "te_dup_identity": Case(_post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                                  b"0\r\n\r\n") + SMUGGLED, "te_not_chunked_last", ("/",), ("/smuggled",)),
    "te_dup_chunked": Case(_post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                                 b"0\r\n\r\n") + SMUGGLED, "te_chunked_twice", ("/",), ("/smuggled",)),
    "te_empty": Case(_post(b"Transfer-Encoding: \r\n", b"0\r\n\r\n") + SMUGGLED,
                     "te_not_chunked_last", ("/",)),
    "te_vtab": Case(_post(b"Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n") + SMUGGLED,
                    "te_not_chunked_last", ("/",)),
    "te_quoted": Case(_post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n") + SMUGGLED,
                      "te_not_chunked_last", ("/",)),
    "te_space_before_colon": Case(_post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n")
                                  + SMUGGLED, "space_before_colon", ("/",)),
    "te_tab_before_colon": Case(_post(b"Transfer-Encoding\t: chunked\r\n", b"0\r\n\r\n")
                                + SMUGGLED, "space_before_colon", ("/",)),
    "te_obs_fold": Case(_post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n") + SMUGGLED,
                        "te_obs_fold", ("/",)),
    "te_http10": Case(_post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"HTTP/1.0")
                      + SMUGGLED, "te_in_http10", ("/",), ("/smuggled",)),
    # chunked coding (§7.1)
    "chunk_overflow": Case(_post(b"Transfer-Encoding: chunked\r\n",
                                 b"10000000000000005\r\nhello\r\n0\r\n\r\n") + SMUGGLED,
                           "chunk_size_overflow", ("/",)),
    "chunk_size_space": Case(_post(b"Transfer-Encoding: chunked\r\n",
                                   b" 5\r\nhello\r\n0\r\n\r\n") + SMUGGLED, "bad_chunk_size",
                             ("/",), ("/smuggled",)),
    "chunk_bare_lf": Case(_post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n") + SMUGGLED,
                          "chunk_bare_lf", ("/",)),
    "chunk_data_too_long": Case(_post(b"Transfer-Encoding: chunked\r\n",
                                      b"3\r\nhello\r\n0\r\n\r\n") + SMUGGLED, "bad_chunk_end",
                                ("/",)),
    "chunk_ext_bare_cr": Case(_post(b"Transfer-Encoding: chunked\r\n",
                                    b"5;a\rb\r\nhello\r\n0\r\n\r\n") + SMUGGLED,
                              "bad_chunk_size", ("/",), ("/smuggled",)),
    # heads (§2.2, §5.1)
    "bare_cr": Case(_post(b"X-A: a\rb\r\nContent-Length: 5\r\n", b"hello") + SMUGGLED, "bare_cr",
                    ("/",)),
    "space_before_colon": Case(b"POST / HTTP/1.1\r\nHost : t\r\nContent-Length: 5\r\n\r\nhello"
                               + SMUGGLED, "space_before_colon", ("/",), ("/smuggled",)),
    # 0.CL: Expect: 100-continue with no body, a request behind it
    "expect_cl0": Case(_post(b"Expect: 100-continue\r\nContent-Length: 0\r\n") + SMUGGLED,
                       "expect_without_body", ("/",), ("/smuggled",)),
    # valid streams: no desync
    "chunk_ext": Case(_post(b"Transfer-Encoding: chunked\r\n",
                            b"5;a=b ;c\r\nhello\r\n0\r\n\r\n") + SMUGGLED, None, ("/", "/smuggled")),
    "te_gzip_chunked": Case(_post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n")
                            + SMUGGLED, None, ("/", "/smuggled")),
    "te_tab_value": Case(_post(b"Transfer-Encoding:\tchunked\t\r\n", b"0\r\n\r\n") + SMUGGLED,
                         None, ("/", "/smuggled")),
    "cl_exact": Case(_post(b"Content-Length: 5\r\n", b"hello") + SMUGGLED, None,
                     ("/", "/smuggled")),
    "expect_with_body": Case(_post(b"Expect: 100-continue\r\nContent-Length: 5\r\n", b"hello")
                             + SMUGGLED, None, ("/", "/smuggled")),
    "pipelined": Case(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
                      None, ("/a", "/b")),
    "stray_crlf": Case(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: t"
                       b"\r\n\r\n", None, ("/a", "/b")),
    # garbage between messages: skipped to the next request line, never a request
    "garbage_glued": Case(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nxyzGET /b HTTP/1.1\r\nHost: t"
                          b"\r\n\r\n", None, ("/a",)),
    "garbage_binary": Case(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n\x00\x01GET /b HTTP/1.1\r\nHost: t"
                           b"\r\n\r\n", None, ("/a",)),
    "garbage_line": Case(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n\x00junk\r\nGET /b HTTP/1.1\r\n"
                         b"Host: t\r\n\r\n", None, ("/a", "/b")),
}
GARBAGE = {"garbage_glued", "garbage_binary", "garbage_line"}


def frames_for(stream: bytes, response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
               seg: int = 0, port: int = 40000) -> list:
    """A whole connection: handshake, the client stream (in ``seg``-byte segments), one
    response, both FINs."""
    conv = Conv(client=("10.0.0.1", port))
    frames = conv.handshake()
    pieces = [stream[i:i + seg] for i in range(0, len(stream), seg)] if seg else [stream]
    frames += [conv.c(p) for p in pieces]
    frames += [conv.s(response), conv.fin_c(), conv.fin_s()]
    return frames


def write_pcap(path: Path, frames: list) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, _lt, fr in frames:
            sec = int(ts)
            f.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(fr), len(fr)))
            f.write(fr)
