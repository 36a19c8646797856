"""HTTP/1.x over reassembled TCP byte streams, sans-I/O: bytes and timestamps in, Exchanges out.

Why framing is done here and not by feeding whole streams to llhttp: a passive observer must know
*where each message ends* even when the capture has holes, when a response answers a HEAD or a
CONNECT (which only the other direction tells us), and when the stream turns into a tunnel.
llhttp (through httptools) does not report byte offsets on errors and cannot be told "this
response has no body", and one lost segment would derail it for the rest of the connection.
So message *heads* are parsed by httptools/llhttp (strict, the same parser uvicorn uses; a head it
rejects is re-read leniently and the anomaly noted), while body framing follows RFC 9112 §6 here,
which lets a gap inside a Content-Length body be recorded and skipped without losing sync.

One ``HttpConnection`` per TCP connection pairs each final response with the oldest request still
waiting (pipelining), keeps 1xx interim responses apart, and emits an ``Exchange`` once both sides
of it are done (or the connection ends and it never will be).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import httptools

from replay.model import ConnKey, Exchange, Request, Response
from replay.smuggled import LenientReader

MAX_HEAD = 64 * 1024
"""A head longer than this without a blank line is not HTTP (or is hostile)."""
DEFAULT_MAX_BODY = 64 * 1024 * 1024
"""Bodies beyond this are kept as a prefix (noted 'body-capped'), to bound memory."""


# -- reader states -------------------------------------------------------------------------------
# Each direction is read by a ``_Reader``, a state machine over these states, written down in
# the manner of h11's ``_state.py``: the states by name, and every change between them in a
# table (``TRANSITIONS``) that tests/test_http1_states.py holds the code to.


class ReaderState(IntEnum):
    """The states of one direction's reader (``_Reader.state``).

    The numbers are part of the hand-back contract with the native fast path (see
    ``HttpConnection.export_state``): replay/_fastpath.c reads them from this class once, at its
    import, and has none of its own. The reader compares plain ints (the module constants
    ``HEAD``... below), which keeps its per-segment code on the interpreter's int fast paths."""

    HEAD = 0
    """Between messages: the next bytes start a head (stray CRLFs before it are skipped)."""
    BODY_CL = 1
    """In a Content-Length body (``_Reader.remaining`` bytes left)."""
    CHUNK_SIZE = 2
    """Before a chunk-size line of a chunked body."""
    CHUNK_DATA = 3
    """In a chunk's data (``_Reader.remaining`` bytes left)."""
    CHUNK_CRLF = 4
    """After a chunk's data: the CRLF ending it."""
    TRAILERS = 5
    """After the last (zero-size) chunk: the trailer section, up to its blank line."""
    BODY_CLOSE = 6
    """In a body that the end of the stream delimits (a response; an HTTP/0.9 answer)."""
    WAIT = 7
    """(client) A CONNECT or Upgrade request is done: what follows waits for its answer."""
    TUNNEL = 8
    """Past a 101 or a 2xx to CONNECT: bytes are counted, not read."""
    RESYNC = 9
    """After a gap or garbage: looking for the next line that starts a message."""
    DEAD = 10
    """Not HTTP/1, or closed while waiting: bytes are counted, not read."""
    DESYNC = 11
    """After a message whose framing cannot be trusted: nothing more is read as messages (the
    client's bytes go to the lenient reader, ``replay.smuggled``)."""
    FOREIGN = 12
    """Another reader owns the stream (TLS or HTTP/2 by ``HttpConnection.sniff``, HTTP/2 after
    an h2c upgrade): bytes, gaps and closes go to ``HttpConnection.foreign``."""


HEAD, BODY_CL, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILERS, BODY_CLOSE = (
    ReaderState.HEAD.value, ReaderState.BODY_CL.value, ReaderState.CHUNK_SIZE.value,
    ReaderState.CHUNK_DATA.value, ReaderState.CHUNK_CRLF.value, ReaderState.TRAILERS.value,
    ReaderState.BODY_CLOSE.value)
WAIT, TUNNEL, RESYNC, DEAD, DESYNC, FOREIGN = (
    ReaderState.WAIT.value, ReaderState.TUNNEL.value, ReaderState.RESYNC.value,
    ReaderState.DEAD.value, ReaderState.DESYNC.value, ReaderState.FOREIGN.value)

_DONE = ("the message ended (complete, or truncated by a gap, a close or a framing error); "
         "a gap or garbage then goes on to RESYNC, a poisoned direction to DESYNC")
_TUNNEL = "the server's 101 or 2xx to CONNECT answers an earlier request (start_tunnel)"
TRANSITIONS: dict[ReaderState, dict[ReaderState, str]] = {
    ReaderState.HEAD: {
        ReaderState.BODY_CL: "a head with Content-Length > 0",
        ReaderState.CHUNK_SIZE: "a head with a chunked body",
        ReaderState.BODY_CLOSE: "a response head without length (or an HTTP/0.9 answer)",
        ReaderState.WAIT: "(client) a CONNECT or Upgrade request ended",
        ReaderState.RESYNC: "garbage where a head should start, or a gap",
        ReaderState.DESYNC: "a message of a poisoned direction ended, a gap when poisoned, or "
                            "(server) a response when the client is poisoned and nothing waits",
        ReaderState.TUNNEL: "a 101, or a 2xx to CONNECT (start_tunnel)",
        ReaderState.DEAD: "the connection's first bytes are not HTTP/1 (mark_non_http)",
        ReaderState.FOREIGN: "another reader took the stream (sniff, h2c upgrade)",
    },
    ReaderState.BODY_CL: {ReaderState.HEAD: _DONE, ReaderState.TUNNEL: _TUNNEL},
    ReaderState.CHUNK_SIZE: {ReaderState.CHUNK_DATA: "a chunk-size > 0",
                             ReaderState.TRAILERS: "the chunk-size 0",
                             ReaderState.HEAD: _DONE, ReaderState.TUNNEL: _TUNNEL},
    ReaderState.CHUNK_DATA: {ReaderState.CHUNK_CRLF: "the chunk's data read (or lost in a gap)",
                             ReaderState.HEAD: _DONE, ReaderState.TUNNEL: _TUNNEL},
    ReaderState.CHUNK_CRLF: {ReaderState.CHUNK_SIZE: "the CRLF",
                             ReaderState.HEAD: _DONE, ReaderState.TUNNEL: _TUNNEL},
    ReaderState.TRAILERS: {ReaderState.HEAD: _DONE, ReaderState.TUNNEL: _TUNNEL},
    ReaderState.BODY_CLOSE: {ReaderState.HEAD: "the stream closed: the body ends"},
    ReaderState.WAIT: {ReaderState.HEAD: "the CONNECT or Upgrade was refused (refuse_tunnel)",
                       ReaderState.TUNNEL: "it was accepted (start_tunnel)",
                       ReaderState.DEAD: "the stream closed while waiting",
                       ReaderState.FOREIGN: "an h2c upgrade was accepted"},
    ReaderState.RESYNC: {ReaderState.HEAD: "a line that starts a message",
                         ReaderState.TUNNEL: _TUNNEL,
                         ReaderState.DEAD: "too much garbage from the connection's start "
                                           "(mark_non_http)",
                         ReaderState.FOREIGN: "another reader took the stream (sniff)"},
    ReaderState.DESYNC: {ReaderState.TUNNEL: _TUNNEL},
    ReaderState.DEAD: {ReaderState.TUNNEL: "(client, closed while waiting) the CONNECT or "
                                           "Upgrade was accepted"},
    ReaderState.TUNNEL: {},
    ReaderState.FOREIGN: {},
}
"""Every change of ``_Reader.state``: ``{state: {next state: when}}``. A change not listed
here does not happen; TUNNEL and FOREIGN are final. (A message ending goes through HEAD even
when the direction goes on to WAIT, DESYNC or TUNNEL: ``_finish_message`` resets it first.)"""
del _DONE, _TUNNEL

ReaderSnapshot = tuple[int, bytes, bool, float, bool]
"""``_Reader.export_state()``: ``(state, buf, first_message, last_ts, resyncing)``."""

HANDBACK_STATES = frozenset((HEAD,))
"""The states in which a reader is handed over between the native fast path and this module
(``_Reader.export_state``, ``_Reader.import_state``): between messages, nothing in progress
but the bytes in ``buf``."""

WEIRD_REASONS = {
    # a message whose framing cannot be trusted: marked desync (RFC 9112 §6.3, §11.2)
    "bad_content_length": "Content-Length not a plain decimal (negative, '+', letters, "
                          "spaces inside, empty, 2^63 or more)",
    "conflicting_content_length": "several Content-Length values that differ (list or fields)",
    "duplicate_content_length": "the same Content-Length given more than once",
    "content_length_leading_zeros": "Content-Length with leading zeros (read as octal or "
                                    "overflowed by some parsers)",
    "te_with_content_length": "Transfer-Encoding and Content-Length together (CL.TE / TE.CL)",
    "te_not_chunked_last": "a request whose Transfer-Encoding does not end in chunked "
                           "(xchunked, 'chunked, identity', vertical tab, empty...)",
    "te_chunked_twice": "chunked applied more than once (a list or duplicate fields)",
    "te_obs_fold": "Transfer-Encoding or Content-Length continued on an obs-folded line",
    "te_in_http10": "Transfer-Encoding in an HTTP/1.0 message",
    "expect_without_body": "Expect: 100-continue on a request with no body (0.CL shape)",
    "bare_cr": "a CR not followed by LF in a head (RFC 9112 §2.2)",
    "space_before_colon": "whitespace between a field name and its colon (RFC 9112 §5.1)",
    "bad_framing_field_name": "a field name some parsers read as Transfer-Encoding or "
                              "Content-Length: '_' for '-', a NUL or other non-token bytes",
    "field_line_without_colon": "a header section line with no colon (some parsers end the "
                                "head there, others skip the line)",
    "bad_trailer": "a trailer section line that is not a field line (a request read as "
                   "trailers when the last CRLF is missing)",
    "chunk_size_overflow": "a chunk size of more than 15 hex digits",
    "bad_chunk_size": "a chunk-size line that is not hex digits and extensions",
    "chunk_bare_lf": "a chunk line ended by a bare LF",
    "bad_chunk_end": "chunk data not followed by CRLF",
    "trailers_too_long": "a trailer section longer than a head may be",
    "request_in_body": "a GET, HEAD, OPTIONS, TRACE or DELETE request whose body starts with a "
                       "request line (CL.0: a server ignoring the body reads it as the next "
                       "request)",
    # a request read after a desync by the lenient framing (replay.smuggled): reported, desync
    "smuggled_request": "a request the lenient reading (Wireshark's) finds after a desync",
    # oddities counted, the message itself still framed as usual
    "obs_fold": "a header field continued on an obs-folded line (not a framing field)",
    "garbage_between_messages": "bytes between messages that do not start a message",
}
"""Zeek-style "weird" reasons, counted per reason in the extraction stats (``weird:<reason>``).
All but the last two make the message *desync*."""
NOT_DESYNC = frozenset(("obs_fold", "garbage_between_messages"))

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_REQUEST_START = re.compile(rb"[A-Za-z][!#$%&'*+.^_`|~0-9A-Za-z-]{0,23} +(?:[^\s]|\r?\n)")
KNOWN_METHODS = frozenset(
    "GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH QUERY PROPFIND PROPPATCH MKCOL COPY "
    "MOVE LOCK UNLOCK SEARCH REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE "
    "UNSUBSCRIBE PURGE LINK UNLINK BIND REBIND UNBIND ACL MKCALENDAR ORDERPATCH PRI".split()
)
"""Registered methods (IANA). Any token is accepted as a method in a full HTTP/1 request line;
a bare method line or an HTTP/0.9 request must use one of these, or SMTP, FTP and friends
("EHLO mail.example") would pass for HTTP."""
_BARE_METHOD = re.compile(rb"([A-Z-]{3,12})\r?\n")
_HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+[ \t]*:")
_RESPONSE_START = re.compile(rb"HTTP/\d\.\d \d")
_REQUEST_LINE = rb"([A-Za-z]" + _TOKEN + rb"{0,23} [^\s]+ HTTP/[01]\.\d\r?\n)"
_RESPONSE_LINE = rb"(HTTP/[01]\.\d \d\d\d[ \r\n])"
_RESYNC = {
    True: (re.compile(_REQUEST_LINE), re.compile(rb"\n" + _REQUEST_LINE)),
    False: (re.compile(_RESPONSE_LINE), re.compile(rb"\n" + _RESPONSE_LINE)),
}
_BODYLESS_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "DELETE"))
"""Methods with no defined body semantics (RFC 9110 §9.3), whose body some servers ignore; a
DELETE body is legitimate in some APIs, so it too is flagged only when it holds a request."""
_REQUEST_IN_BODY = re.compile(rb"(?:\r?\n)?" + _TOKEN + rb"+ [^\s]+ HTTP/1\.\d")
"""A body starting with a request line (after at most one line end): the CL.0 shape."""
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)(?:[ \t]*;[^\r\n]*)?(\r?)\n")
"""chunk-size [ BWS ; chunk-ext ] CRLF (RFC 9112 §7.1); a bare LF end is read, and noted."""
_KNOWN_BYTES = frozenset(m.encode() for m in KNOWN_METHODS)
_GLUE_SUFFIXES = tuple(m.encode() for m in KNOWN_METHODS if len(m) >= 3)


def looks_like_request(data: bytes) -> bool:
    """Does this stream start like an HTTP/1 request (method token, space, target)?"""
    if data[:3] == b"PRI" and data.startswith(b"PRI * HTTP/2"):
        return False
    if _REQUEST_START.match(data) is not None:
        return True
    m = _BARE_METHOD.match(data)
    return m is not None and m.group(1).decode() in KNOWN_METHODS


def looks_like_response(data: bytes) -> bool:
    return _RESPONSE_START.match(data) is not None


class _UrlCollector:
    """httptools callback target. Only the URL is collected through a callback: header lines are
    split in Python once llhttp has validated the head, which is ~3x cheaper than a Python
    callback per header."""

    __slots__ = ("done", "reason", "url")

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_headers_complete(self) -> None:
        self.done = True


_FRAMING_NAME_LENGTHS = frozenset((6, 7, 10, 14, 17))
"""len() of expect, upgrade, connection, content-length, transfer-encoding: a cheap
pre-filter."""


def _split_headers(head: bytes) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Header fields of a head that llhttp accepted (so: CRLF lines, ``name: value``), and the
    framing-relevant ones (lower-cased name) picked out on the way."""
    lines = head.decode("latin-1").split("\r\n")
    out = []
    special = []
    lens = _FRAMING_NAME_LENGTHS
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            v = v.strip(" \t")
            out.append((k, v))
            if len(k) in lens:
                special.append((k.lower(), v))
    return out, special


def _special(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    lens = _FRAMING_NAME_LENGTHS
    return [(k.lower(), v) for k, v in headers if len(k) in lens]


def _parse_headers_lenient(lines: list[bytes]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and headers:  # obsolete line folding
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip(b" \t").decode("latin-1"))
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        # Only OWS (SP, HTAB) is trimmed: "Transfer-Encoding:\x0bchunked" is not chunked.
        headers.append((name.strip(b" \t").decode("latin-1"),
                        value.strip(b" \t").decode("latin-1")))
    return headers


def head_weirds(head: bytes) -> list[str]:
    """Weird reasons in a head llhttp refused (a head it accepts has none of these): bare CR,
    whitespace before a colon, obs-folded lines (of a framing field: a desync)."""
    out = []
    if head.count(b"\r") != head.count(b"\r\n"):
        out.append("bare_cr")
    prev = b""
    for line in head.replace(b"\r\n", b"\n").split(b"\n")[1:]:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            # A continuation of a framing field, or a line that reads as a framing field to a
            # parser that trims the leading whitespace (" Transfer-Encoding: chunked", also
            # right after the start line, RFC 9112 §2.2): a desync.
            if prev in _FRAMING_NAMES or _framing_lookalike(line.partition(b":")[0]):
                out.append("te_obs_fold")
            else:
                out.append("obs_fold")
            continue
        name, sep, _ = line.partition(b":")
        if not sep:
            out.append("field_line_without_colon")
        elif name != name.rstrip(b" \t\x0b\x0c"):
            out.append("space_before_colon")
        elif not _TOKEN_NAME.fullmatch(name) and _framing_lookalike(name):
            out.append("bad_framing_field_name")
        prev = name.strip(b" \t").lower()
    return out


_FRAMING_NAMES = (b"transfer-encoding", b"content-length")
_TOKEN_NAME = re.compile(_TOKEN + rb"+")
_NOT_TOKEN = re.compile(rb"[^!#$%&'*+.^`|~0-9A-Za-z-]+")


def _framing_lookalike(name: bytes) -> bool:
    """Does a field name read as Transfer-Encoding or Content-Length once stripped of
    whitespace, of bytes no token holds (NUL, brackets...) and with '_' for '-'?"""
    return _NOT_TOKEN.sub(b"", name.replace(b"_", b"-")).lower() in _FRAMING_NAMES


def parse_request_head(head: bytes) -> tuple[Request, str | None]:
    """Parse a request head: (Request, None) or, if read leniently, (Request, why)."""
    req, err, _ = _parse_request(head)
    return req, err


def parse_response_head(head: bytes) -> tuple[Response, str | None]:
    """Parse a response head: (Response, None) or, if read leniently, (Response, why)."""
    resp, err, _ = _parse_response(head)
    return resp, err


def _strict(parser_cls: Any, head: bytes) -> tuple[Any, _UrlCollector, str | None]:
    """Run llhttp over a whole head: (parser, collected url/reason, None or why it refused)."""
    c = _UrlCollector()
    p = parser_cls(c)
    try:
        p.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        return p, c, str(e) or type(e).__name__
    return p, c, None if c.done else "incomplete head"


def _parse_request(head: bytes) -> tuple[Request, str | None, list[tuple[str, str]]]:
    """Parse a request head (request line + headers + blank line).

    llhttp (httptools) validates it strictly; a head it rejects (LF-only line ends, unknown
    methods, bytes not allowed in headers, odd versions) is read leniently, and the reason is
    returned so the anomaly can be noted on the exchange.
    """
    p, c, err = _strict(httptools.HttpRequestParser, head)
    if err is None:
        headers, special = _split_headers(head)
        return (
            Request(
                method=p.get_method().decode("latin-1"),
                target=c.url.decode("latin-1"),
                version="HTTP/" + p.get_http_version(),
                headers=headers,
            ),
            None,
            special,
        )
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    first = lines[0].rstrip(b"\r")
    parts = first.split(b" ")
    parts = [x for x in parts if x] or [b""]
    method = parts[0]
    version = b"HTTP/0.9"
    if len(parts) >= 3 and parts[-1].upper().startswith(b"HTTP/"):
        version = parts[-1]
        target = b" ".join(parts[1:-1])
    elif len(parts) == 2 and parts[1].upper().startswith(b"HTTP/") and parts[1][5:6].isdigit():
        version = parts[1]
        target = b""
    else:
        target = b" ".join(parts[1:])
    headers = _parse_headers_lenient(lines[1:])
    return (
        Request(
            method=method.decode("latin-1"),
            target=target.decode("latin-1"),
            version=version.decode("latin-1").upper(),
            headers=headers,
        ),
        err or "incomplete head",
        _special(headers),
    )


def _parse_response(head: bytes) -> tuple[Response, str | None, list[tuple[str, str]]]:
    """Parse a response head; like ``_parse_request``, strict first, then lenient."""
    p, c, err = _strict(httptools.HttpResponseParser, head)
    if err is None:
        headers, special = _split_headers(head)
        return (
            Response(
                status=p.get_status_code(),
                reason=c.reason.decode("latin-1"),
                version="HTTP/" + p.get_http_version(),
                headers=headers,
            ),
            None,
            special,
        )
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    first = lines[0].strip(b"\r")
    version, _, rest = first.partition(b" ")
    code, _, reason = rest.lstrip().partition(b" ")
    try:
        status = int(code[:3])
    except ValueError:
        status = 0
    headers = _parse_headers_lenient(lines[1:])
    return (
        Response(
            status=status,
            reason=reason.decode("latin-1"),
            version=version.decode("latin-1").upper(),
            headers=headers,
        ),
        err or "incomplete head",
        _special(headers),
    )


def _find_head_end(data: bytes, pos: int) -> int:
    """Index just past the blank line ending a head at ``pos``, or -1. Accepts CRLF and bare LF."""
    a = data.find(b"\r\n\r\n", pos)
    b = data.find(b"\n\n", pos)
    if a < 0:
        return b + 2 if b >= 0 else -1
    if b < 0 or a + 1 < b:
        return a + 4
    return b + 2


def _body_framing(special: list[tuple[str, str]], notes: list[str], request: bool,
                  version: str) -> tuple[str, int, str | None]:
    """``_body_framing_rfc``, and a request with ``Transfer_Encoding`` or ``Content_Length``
    (the same field as with '-' to CGI/WSGI-style servers) is a desync too."""
    framing, length, bad = _body_framing_rfc(special, notes, request, version)
    if bad is None and request and any(k in _UNDERSCORED for k, _ in special):
        bad = "bad_framing_field_name"
    return framing, length, bad


_UNDERSCORED = frozenset(("transfer_encoding", "content_length"))


def _body_framing_rfc(special: list[tuple[str, str]], notes: list[str], request: bool,
                      version: str) -> tuple[str, int, str | None]:
    """('chunked'|'length'|'none'|'close', length, desync reason or None) from
    Transfer-Encoding / Content-Length (RFC 9112 §6.1-6.3).

    ``special`` holds the framing-relevant fields with lower-cased names (``_split_headers``).
    The framing returned for a desync is the RFC's preferred reading (chunked when it ends the
    codings), used only for responses: a desync request ends at its head.
    """
    te: list[str] | None = None
    cl: list[str] = []
    expect = False
    for lk, v in special:
        if lk == "transfer-encoding":
            if te is None:
                te = []
            te.extend(x.strip(" \t").lower() for x in v.split(","))
        elif lk == "content-length":
            cl.extend(x.strip(" \t") for x in v.split(","))
        elif lk == "expect":
            # also an obfuscated expectation ("y 100-continue", "100-continue, x", "\x0b..."),
            # which some servers still answer with 100 (the 0.CL shape)
            expect = expect or "100-continue" in v.lower()
    if te is not None:
        bad = None
        te = [x for x in te if x]
        if cl:
            notes.append("te+cl")  # request smuggling shape: TE wins (RFC 9112 §6.3)
            bad = "te_with_content_length"
        if version == "HTTP/1.0":
            bad = bad or "te_in_http10"
        if te and te[-1] == "chunked":
            if te.count("chunked") > 1:
                notes.append("te-chunked-twice")
                bad = bad or "te_chunked_twice"
            return "chunked", 0, bad
        notes.append("te-not-chunked")
        if request:
            bad = bad or "te_not_chunked_last"
        return "close", 0, bad
    if cl:
        if len(set(cl)) > 1:
            notes.append("conflicting-content-length")
            return "close", 0, "conflicting_content_length"
        v = cl[0]
        if not (v.isascii() and v.isdigit()) or int(v) >= 1 << 63:
            notes.append("bad-content-length")
            return "close", 0, "bad_content_length"
        n = int(v)
        if len(cl) > 1:
            return "length", n, "duplicate_content_length"
        if len(v) > 1 and v[0] == "0":
            notes.append("content-length-leading-zeros")
            return "length", n, "content_length_leading_zeros"
        if expect and n == 0 and request:
            return "length", 0, "expect_without_body"
        return "length", n, None
    if expect and request:
        return "none", 0, "expect_without_body"
    return "none", 0, None


def _request_in_body(msg: _Message) -> bool:
    """A request of a bodyless method whose (first stored) body bytes start a request line."""
    if msg.head.method.upper() not in _BODYLESS_METHODS:  # type: ignore[union-attr]
        return False
    if msg.gaps and msg.gaps[0][0] == 0:
        return False  # its first bytes were never captured
    start = b""
    for piece in msg.body:
        start += piece[: 256 - len(start)]
        if len(start) >= 256:
            break
    return _REQUEST_IN_BODY.match(start) is not None


class _Message:
    """A message being read: head, body pieces, gaps, timestamps."""

    __slots__ = ("body", "body_len", "capped", "gaps", "head", "trailers", "truncated", "ts_end",
                 "ts_start", "upgrade")

    def __init__(self, head: Request | Response, ts: float) -> None:
        self.head = head
        self.body: list[bytes] = []
        self.body_len = 0
        self.gaps: list[tuple[int, int]] = []
        self.trailers: list[tuple[str, str]] = []
        self.ts_start = ts
        self.ts_end = ts
        self.truncated = False
        self.capped = False
        self.upgrade = False


class HttpConnection:
    """Pairs the two directions of one TCP connection into Exchanges.

    Feed it with ``data(from_client, bytes, ts)``, ``gap(from_client, nbytes, ts)``,
    ``close(from_client, ts)`` and finally ``finish(ts, timed_out)``. Completed Exchanges go to
    ``emit``. ``stats`` is a shared dict of counters (by reason) that the caller reports.
    """

    def __init__(
        self,
        conn: ConnKey,
        conn_id: str,
        emit: Callable[[Exchange], None],
        stats: dict[str, int],
        *,
        max_body: int = DEFAULT_MAX_BODY,
        resync: bool = False,
    ) -> None:
        self.conn = conn
        self.conn_id = conn_id
        self.emit = emit
        self.stats = stats
        self.max_body = max_body
        self.n = 0
        self.order: deque[Exchange] = deque()
        self.awaiting: deque[Exchange] = deque()
        self.done_req: set[int] = set()
        self.done_resp: set[int] = set()
        self.retransmits = 0
        self.tunnel: str | None = None
        self.wait_for: Exchange | None = None
        self.client_gap_ts: float | None = None
        """When the client stream last lost data where a request head could have been."""
        """The CONNECT/Upgrade request whose answer decides if the stream becomes a tunnel."""
        self.non_http = False
        self.sniff: Callable[[HttpConnection, bool, bytes, float], bool] | None = None
        """Asked with a direction's first bytes when they are not HTTP/1 (``(conn,
        from_client, data, ts)``): True means another reader took the stream (it set
        ``foreign`` and put both readers in state FOREIGN). ``replay.extract`` sets it."""
        self.foreign: Any = None
        """That reader (``replay.tls.records.TlsConnection``, ``replay.h2.H2Connection``):
        fed like the readers."""
        self.h2c: Callable[[HttpConnection, Exchange, bytes, float], None] | None = None
        """Called when a request's ``Upgrade: h2c`` is answered 101 (``(conn, exchange, the
        server bytes after the 101, ts)``): it takes the connection over as HTTP/2, and the
        exchange (the 101 as its interim response) with it. ``replay.extract`` sets it."""
        self.client = _Reader(self, True, RESYNC if resync else HEAD)
        self.server = _Reader(self, False, RESYNC if resync else HEAD)

    # -- input ----------------------------------------------------------------------------
    def feeder(self, from_client: bool) -> Callable[[bytes, float], None]:
        return self.client.feed if from_client else self.server.feed

    def data(self, from_client: bool, data: bytes, ts: float) -> None:
        (self.client if from_client else self.server).feed(data, ts)

    def gap(self, from_client: bool, nbytes: int, ts: float) -> None:
        (self.client if from_client else self.server).gap(nbytes, ts)

    def close(self, from_client: bool, ts: float) -> None:
        (self.client if from_client else self.server).close(ts)
        self._flush()

    def finish(self, ts: float, timed_out: bool = False) -> None:
        """The connection is over (both closed, reset, idle, evicted, or end of capture)."""
        self.client.close(ts)
        self.server.close(ts)
        if self.foreign is not None:
            self.foreign.finish(ts, timed_out)
        for ex in self.order:
            c = ex.completeness
            if timed_out:
                c.timed_out = True
            if ex.request is not None and ex.response is None and c.desync_reason != "smuggled":
                c.unpaired = True
                self.stats["requests_without_response"] = (
                    self.stats.get("requests_without_response", 0) + 1
                )
            self._emit(ex)
        self.order.clear()
        self.awaiting.clear()

    # -- the hand-back contract with the native fast path --------------------------------------
    # replay/_fastpath.c takes a connection over at its client SYN (reading ``export_state``),
    # reads it in C, and may give it back at a point where no exchange is pending
    # (``import_state``), or end it there (``detach``). It calls these methods and reads or
    # writes no attribute of this class or of ``_Reader``.

    def export_state(self) -> tuple[int, ReaderSnapshot, ReaderSnapshot, int, bool, int]:
        """What the native fast path reads when it takes this connection over:
        ``(n, client, server, retransmits, non_http, max_body)``.

        - ``n``: exchanges numbered so far (the next one is ``n + 1``: its id ``conn_id.n+1``);
        - ``client``, ``server``: each reader's ``_Reader.export_state()``;
        - ``retransmits``: segments the reassembler saw twice (stamped on every exchange);
        - ``non_http``: the stream was found not to be HTTP/1;
        - ``max_body``: bytes of a body kept (beyond them it is capped).

        The first three are what ``import_state`` takes back; the last three are read only (the
        native path adopts only a connection with ``n == 0``, no retransmission, HTTP/1, and
        readers in ``HANDBACK_STATES`` with nothing buffered and not resynchronising)."""
        return (self.n, self.client.export_state(), self.server.export_state(),
                self.retransmits, self.non_http, self.max_body)

    def import_state(self, n: int, client: tuple[int, bytes, bool, float],
                     server: tuple[int, bytes, bool, float]) -> None:
        """The native fast path gives the connection back, at its last checkpoint (no exchange
        pending): ``n`` exchanges numbered (all emitted), and each reader's ``(state, buf,
        first_message, last_ts)`` (see ``_Reader.import_state``). The segments since the
        checkpoint are then replayed through the reassembler."""
        self.client.import_state(*client)
        self.server.import_state(*server)
        self.n = n

    def export_foreign(self) -> Callable[[bool, bytes, float], None] | None:
        """When another reader took both directions over (``foreign``: TLS, HTTP/2; both
        readers in state FOREIGN with nothing buffered), its ``feed``: what each reader passes
        its bytes to. The native fast path then keeps the connection's TCP reassembly and calls
        it with the in-order bytes (``(from_client, data, ts)``) as the readers would; else
        None."""
        c, s = self.client, self.server
        if (self.foreign is None or c.state != FOREIGN or s.state != FOREIGN or c.buf
                or s.buf):
            return None
        return self.foreign.feed

    def import_foreign(self, client_last_ts: float, server_last_ts: float) -> None:
        """The native fast path gives back a connection it fed through ``export_foreign``'s
        reader: each reader's ``last_ts`` (the time of the last bytes fed) as the readers
        would have kept it."""
        self.client.last_ts = client_last_ts
        self.server.last_ts = server_last_ts

    def detach(self) -> None:
        """The connection ended in the native fast path with nothing pending: its readers let go
        of it, so that the reader/connection cycle is gone at once rather than at the next
        garbage collection (which a tuned threshold makes rare)."""
        self.client.conn = self.server.conn = None  # type: ignore[assignment]

    # -- callbacks from readers --------------------------------------------------------------
    def _new_exchange(self) -> Exchange:
        self.n += 1
        return Exchange(id=f"{self.conn_id}.{self.n}", conn=self.conn)

    def on_request_head(self, msg: _Message) -> Exchange:
        ex = self._new_exchange()
        ex.request = msg.head  # type: ignore[assignment]
        ex.ts_request_start = msg.ts_start
        self.order.append(ex)
        self.awaiting.append(ex)
        return ex

    def on_smuggled(self, req: Request, ts: float) -> None:
        """A request the lenient reading found after a desync (``replay.smuggled``): reported
        as an exchange of its own, marked desync (never replayed), paired with no response."""
        ex = self._new_exchange()
        ex.request = req
        ex.ts_request_start = ex.ts_request_end = ts
        c = ex.completeness
        c.desync = True
        c.desync_reason = "smuggled"
        c.weird.append("smuggled_request")
        c.notes.append("smuggled: read after a desync by the lenient framing; never replayed")
        st = self.stats
        st["smuggled_requests"] = st.get("smuggled_requests", 0) + 1
        st["weird:smuggled_request"] = st.get("weird:smuggled_request", 0) + 1
        self.order.append(ex)
        self.done_req.add(id(ex))
        self.done_resp.add(id(ex))
        self._flush()

    def on_request_done(self, ex: Exchange, msg: _Message) -> None:
        ex.ts_request_end = msg.ts_end
        c = ex.completeness
        c.request_gaps, c.request_truncated = msg.gaps, msg.truncated
        self._complete(ex, msg, "request", self.done_req)

    def _complete(self, ex: Exchange, msg: _Message, side: str, done: set[int]) -> None:
        """A message is over: its body and trailers go onto the model, then flush in order."""
        head = msg.head
        head.body = b"".join(msg.body) if len(msg.body) != 1 else msg.body[0]
        head.trailers = msg.trailers
        if msg.capped:
            ex.completeness.notes.append(f"{side}-body-capped")
        done.add(id(ex))
        self._flush()

    def on_interim(self, msg: _Message) -> None:
        if self.awaiting:
            self.awaiting[0].interim.append(msg.head)  # type: ignore[arg-type]
        else:
            self.stats["interim_without_request"] = self.stats.get("interim_without_request", 0) + 1

    def after_server_gap(self, ts: float) -> None:
        """The server stream lost data since its last response; a response starts at ``ts``.

        Keep-alive clients send a request after the answer to the previous one. So if the
        client stream also lost data after the newest waiting request, that lost data held the
        request this response answers, and every waiting request had its answer in the server's
        gap. Otherwise the response answers the latest request started before it."""
        awaiting = self.awaiting
        if not awaiting:
            return
        newest = awaiting[-1].ts_request_start
        if self.client_gap_ts is not None and newest is not None and self.client_gap_ts > newest:
            self.skip_lost_responses(ts, keep=0)
            return
        if len(awaiting) > 1:
            self.skip_lost_responses(ts)

    def skip_lost_responses(self, ts: float, keep: int = 1) -> None:
        """The server stream lost data where responses were, so how many is unknown. Keep-alive
        clients send the next request after the previous answer: the response starting at
        ``ts`` belongs to the latest request started before it, and the earlier ones waiting
        lost their responses (marked, never paired with someone else's answer)."""
        awaiting = self.awaiting
        i = len(awaiting)
        if keep:
            i = 0
            for j, cand in enumerate(awaiting):
                if cand.ts_request_start is not None and cand.ts_request_start <= ts:
                    i = j
        for _ in range(i):
            lost = awaiting.popleft()
            lost.completeness.unpaired = True
            lost.completeness.notes.append("response-lost-in-gap")
            self.stats["responses_lost_in_gap"] = self.stats.get("responses_lost_in_gap", 0) + 1
            self.done_resp.add(id(lost))
        if i and awaiting:
            awaiting[0].completeness.notes.append("paired-after-gap")
        if i:
            self._flush()

    def on_response_head(self, msg: _Message) -> Exchange:
        awaiting = self.awaiting
        if awaiting:
            ex = awaiting.popleft()
        else:
            ex = self._new_exchange()
            ex.completeness.unpaired = True
            ex.completeness.notes.append("request-missing")
            self.stats["responses_without_request"] = (
                self.stats.get("responses_without_request", 0) + 1
            )
            self.order.append(ex)
            self.done_req.add(id(ex))
        ex.response = msg.head  # type: ignore[assignment]
        ex.ts_response_start = msg.ts_start
        return ex

    def on_response_done(self, ex: Exchange, msg: _Message) -> None:
        ex.ts_response_end = msg.ts_end
        c = ex.completeness
        c.response_gaps, c.response_truncated = msg.gaps, msg.truncated
        self._complete(ex, msg, "response", self.done_resp)

    def start_tunnel(self, kind: str) -> None:
        """The response switched protocols (101) or accepted a CONNECT (2xx)."""
        self.tunnel = kind
        self.client.enter_tunnel()
        self.server.enter_tunnel()
        self.stats["tunnels"] = self.stats.get("tunnels", 0) + 1

    def mark_non_http(self) -> None:
        """Not HTTP/1 (TLS, SSH, HTTP/2...): stop parsing both directions; bytes are counted."""
        self.non_http = True
        self.client.state = DEAD
        self.server.state = DEAD
        self.client.buf = self.server.buf = b""

    def refuse_tunnel(self) -> None:
        """The upgrade/CONNECT was refused: the client's side goes on as HTTP."""
        self.wait_for = None
        self.client.resume()

    def _emit(self, ex: Exchange) -> None:
        ex.completeness.retransmits = self.retransmits
        self.done_req.discard(id(ex))
        self.done_resp.discard(id(ex))
        self.emit(ex)

    def _flush(self) -> None:
        order = self.order
        while order:
            ex = order[0]
            k = id(ex)
            if k in self.done_req and k in self.done_resp:
                order.popleft()
                self._emit(ex)
            else:
                break


class _Reader:
    """Reads one direction's messages: head, body framing, tunnel, resynchronisation."""

    __slots__ = ("after_gap", "buf", "client", "conn", "ex", "first_message", "last_ts", "lenient",
                 "midline", "msg", "poisoned", "remaining", "resyncing", "skipped", "state")

    def __init__(self, conn: HttpConnection, client: bool, state: int) -> None:
        self.conn = conn
        self.client = client
        self.state = state
        self.buf = b""
        self.msg: _Message | None = None
        self.ex: Exchange | None = None
        self.remaining = 0
        self.skipped = 0
        self.last_ts = 0.0
        self.first_message = True
        self.resyncing = state == RESYNC
        self.after_gap = False
        """Data was lost where a head could have been: the next response pairs by time."""
        self.poisoned = False
        """A message of this direction was a desync: after it, nothing is read as messages."""
        self.midline = False
        """Resynchronising from inside a line (after garbage): a message starts only after LF."""
        self.lenient: LenientReader | None = None
        """After a desync (client side): the bytes read once more the lenient way, to report
        the smuggled requests (``replay.smuggled``; never replayed)."""

    # -- the hand-back contract (see HttpConnection.export_state) -------------------------------
    def export_state(self) -> ReaderSnapshot:
        """``(state, buf, first_message, last_ts, resyncing)``:

        - ``state``: a ``ReaderState`` value (an int);
        - ``buf``: bytes received and not read yet (an incomplete head);
        - ``first_message``: no message of this direction has ended yet;
        - ``last_ts``: the capture time of the last bytes fed;
        - ``resyncing``: the direction started (or went on) by resynchronising: read only.
        """
        return self.state, self.buf, self.first_message, self.last_ts, self.resyncing

    def import_state(self, state: int, buf: bytes, first_message: bool, last_ts: float) -> None:
        """Take back the fields ``export_state`` gave (all but ``resyncing``), between messages:
        ``state`` must be one of ``HANDBACK_STATES`` and no message may be in progress here,
        or ValueError (the native path broke the contract; nothing is changed)."""
        if state not in HANDBACK_STATES or self.msg is not None or self.ex is not None:
            raise ValueError(f"hand-back in reader state {state!r} (message in progress: "
                             f"{self.msg is not None}): only between messages")
        self.state = state
        self.buf = buf
        self.first_message = first_message
        self.last_ts = last_ts

    def _count(self, key: str, n: int = 1) -> None:
        st = self.conn.stats
        st[key] = st.get(key, 0) + n

    def _weird(self, reason: str, ex: Exchange | None = None) -> None:
        """Count a weird; on an exchange, note it there too, and unless it is a mere oddity,
        mark the exchange desync and poison this direction (read no more messages)."""
        self._count("weird:" + reason)
        if ex is None:
            return
        c = ex.completeness
        c.weird.append(reason)
        if reason in NOT_DESYNC:
            return
        if not c.desync:
            c.desync = True
            c.desync_reason = reason
            self._count("desync_messages")
        self.poisoned = True

    def _smuggled(self, req: Request) -> None:
        self.conn.on_smuggled(req, self.last_ts)

    def _skip_desync(self, n: int) -> None:
        self._count("bytes_skipped", n)
        self._count("desync_bytes_skipped", n)

    def enter_tunnel(self) -> None:
        if self.buf:
            self._count("tunnel_bytes", len(self.buf))
            self.buf = b""
        self.state = TUNNEL

    def resume(self) -> None:
        if self.state == WAIT:
            self.state = HEAD
            data, self.buf = self.buf, b""
            if data:
                self.feed(data, self.last_ts)

    # -- body helpers -------------------------------------------------------------------------
    def _body(self, chunk: bytes) -> None:
        msg = self.msg
        assert msg is not None
        if msg.capped:
            msg.body_len += len(chunk)
            return
        room = self.conn.max_body - msg.body_len
        if len(chunk) > room:
            chunk = chunk[:room]
            msg.capped = True
        msg.body.append(chunk)
        msg.body_len += len(chunk)

    def _finish_message(self, ts: float) -> None:
        msg, ex = self.msg, self.ex
        assert msg is not None and ex is not None
        msg.ts_end = ts
        self.first_message = False
        self.msg = None
        self.ex = None
        self.state = HEAD
        if self.client and not self.poisoned and msg.body_len and _request_in_body(msg):
            # CL.0 (a body a server may ignore holds a request): this request is a desync, and
            # what follows is read the lenient way (the body itself is a body, as tshark reads it)
            self._weird("request_in_body", ex)
            ex.completeness.notes.append("request-in-body")
            if not msg.truncated and self.lenient is None:
                self.lenient = LenientReader(self._smuggled, "head", methods=KNOWN_METHODS)
        if self.poisoned:
            self.state = DESYNC
            if self.buf:
                if self.lenient is not None:
                    self.lenient.feed(self.buf)
                self._skip_desync(len(self.buf))
                self.buf = b""
        if self.client:
            self.conn.on_request_done(ex, msg)
            req = ex.request
            assert req is not None
            if self.poisoned:
                pass
            elif msg.upgrade or req.method.upper() == "CONNECT":
                self.state = WAIT  # wait for the response: tunnel or not
                self.conn.wait_for = ex
        else:
            self.conn.on_response_done(ex, msg)

    # -- the state machine --------------------------------------------------------------------
    def feed(self, data: bytes, ts: float) -> None:
        self.last_ts = ts
        if self.state == BODY_CL and len(data) < self.remaining:
            # Hot path: a segment in the middle of a Content-Length body.
            msg = self.msg
            n = len(data)
            if not msg.capped and msg.body_len + n <= self.conn.max_body:  # type: ignore[union-attr]
                msg.body.append(data)  # type: ignore[union-attr]
                msg.body_len += n  # type: ignore[union-attr]
                self.remaining -= n
                return
        if self.buf:
            data = self.buf + data
            self.buf = b""
        pos = 0
        end = len(data)
        while pos < end:
            state = self.state
            if state in (BODY_CL, CHUNK_DATA):
                take = min(self.remaining, end - pos)
                self._body(data[pos : pos + take] if (pos or take != end) else data)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    if state == BODY_CL:
                        self._finish_message(ts)
                    else:
                        self.state = CHUNK_CRLF
                continue
            if state == HEAD:
                pos = self._head(data, pos, ts)
                if pos < 0:
                    return
                continue
            if state == CHUNK_SIZE:
                m = _CHUNK_SIZE.match(data, pos)
                if m is None:
                    nl = data.find(b"\n", pos)
                    if nl < 0 and end - pos < 1024:
                        self.buf = data[pos:]
                        return
                    self._protocol_error("bad_chunk_size", ts)
                    continue
                digits = m.group(1)
                if len(digits) > 15 and len(digits.lstrip(b"0")) > 15:
                    self._protocol_error("chunk_size_overflow", ts)
                    continue
                if not m.group(2):
                    self._protocol_error("chunk_bare_lf", ts)
                    continue
                size = int(digits, 16)
                pos = m.end()
                if size == 0:
                    self.state = TRAILERS
                else:
                    self.remaining = size
                    self.state = CHUNK_DATA
                continue
            if state == CHUNK_CRLF:
                if data.startswith(b"\r\n", pos):
                    pos += 2
                elif end - pos < 2 and data[pos:pos + 1] == b"\r":
                    self.buf = data[pos:]
                    return
                else:
                    self._protocol_error("chunk_bare_lf" if data[pos] == 10 else "bad_chunk_end",
                                         ts)
                    continue
                self.state = CHUNK_SIZE
                continue
            if state == TRAILERS:
                if data.startswith(b"\r\n", pos):
                    pos += 2
                    self._finish_message(ts)
                    continue
                if data[pos] == 10:
                    self._protocol_error("chunk_bare_lf", ts)
                    continue
                if end - pos < 2 and data[pos] == 13:
                    self.buf = data[pos:]
                    return
                he = _find_head_end(data, pos)
                if he < 0:
                    if end - pos > MAX_HEAD:
                        self._protocol_error("trailers_too_long", ts)
                        continue
                    self.buf = data[pos:]
                    return
                assert self.msg is not None
                trailers = data[pos:he]
                bad = _bad_trailers(trailers)
                if bad is not None:
                    self._protocol_error(bad, ts)
                    continue
                self.msg.trailers = _parse_headers_lenient(
                    trailers.replace(b"\r\n", b"\n").split(b"\n")
                )
                pos = he
                self._finish_message(ts)
                continue
            if state == BODY_CLOSE:
                self._body(data[pos:] if pos else data)
                assert self.msg is not None
                self.msg.ts_end = ts
                return
            if state == TUNNEL:
                self._count("tunnel_bytes", end - pos)
                return
            if state == WAIT:
                self.buf = data[pos:]
                if len(self.buf) > MAX_HEAD * 16:  # the other side never answered: give up
                    self._count("bytes_skipped", len(self.buf))
                    self.buf = b""
                return
            if state == RESYNC:
                pos = self._resync(data, pos)
                if pos < 0:
                    return
                continue
            if state == DESYNC:
                if self.lenient is not None:
                    self.lenient.feed(data[pos:] if pos else data)
                self._skip_desync(end - pos)
                return
            if state == FOREIGN:
                self.conn.foreign.feed(self.client, data[pos:] if pos else data, ts)
                return
            # DEAD
            self._count("bytes_skipped", end - pos)
            return

    def _head(self, data: bytes, pos: int, ts: float) -> int:
        """Parse a head at ``pos``. Returns the new position, or -1 if more data is needed."""
        end = len(data)
        # Tolerate stray CRLFs between messages (RFC 9112 §2.2).
        while pos < end and data[pos] in (13, 10):
            pos += 1
        if pos >= end:
            return -1
        conn = self.conn
        client = self.client
        if client:
            if not looks_like_request(data[pos : pos + 40]):
                if end - pos < 40 and _could_be_request_prefix(data[pos:]):
                    self.buf = data[pos:]
                    return -1
                return self._not_http(data, pos, ts)
            if not self.first_message and _glued(data, pos):
                return self._not_http(data, pos, ts)  # stray bytes stuck to a request line
            nl = data.find(b"\n", pos)
            if nl < 0:
                if end - pos > MAX_HEAD:
                    return self._not_http(data, pos, ts)
                self.buf = data[pos:]
                return -1
            if data.find(b" HTTP/", pos, nl) < 0:
                r = self._versionless(data, pos, nl, ts)
                if r is not None:
                    return r
        elif conn.client.poisoned and not conn.awaiting:
            # Every request the client's framing lets us trust has its answer: what the server
            # says next answers requests we did not read.
            self.state = DESYNC
            self._skip_desync(end - pos)
            return end
        elif not data.startswith(b"HTTP/", pos) and data[pos : pos + 5].upper() != b"HTTP/":
            if end - pos < 5 and b"HTTP/".startswith(data[pos:].upper()):
                self.buf = data[pos:]
                return -1
            if conn.awaiting and (
                conn.awaiting[0].request.version == "HTTP/0.9"  # type: ignore[union-attr]
                or (self.first_message and not self.resyncing)
            ):
                # An HTTP/0.9 answer (no status line), also to an HTTP/1 request.
                return self._http09_response(data, pos, ts)
            return self._not_http(data, pos, ts)
        # The blank line ending the head: CRLFCRLF, or (lenient) LFLF before it.
        he = data.find(b"\r\n\r\n", pos)
        if he >= 0:
            lf = data.find(b"\n\n", pos, he + 2)
            he = he + 4 if lf < 0 else lf + 2
        else:
            he = data.find(b"\n\n", pos)
            if he >= 0:
                he += 2
        if he < 0:
            if end - pos > MAX_HEAD:
                self._count("heads_too_long")
                return self._not_http(data, pos, ts)
            self.buf = data[pos:]
            return -1
        head = data[pos:he]
        if client:
            req, err, special = _parse_request(head)
            msg = _Message(req, ts)
            ex = conn.on_request_head(msg)
            self.after_gap = False
            notes = ex.completeness.notes
            if err:
                notes.append(f"lenient-head: {err}")
                self._count("lenient_heads")
                for w in head_weirds(head):
                    self._weird(w, ex)
            if special:
                framing, length, bad = _body_framing(special, notes, True, req.version)
                if bad is not None:
                    self._weird(bad, ex)
            else:
                framing, length = "none", 0
            if framing == "close":
                # A request cannot be close-delimited; it has no body we can frame.
                notes.append("request-framing-invalid")
                framing = "none"
            if self.poisoned:
                # Where this request ends is anyone's guess (RFC 9112 §11.2): it ends at its
                # head, and what follows is not read as requests (only reported, below).
                framing = "none"
                if self.lenient is None:
                    self.lenient = LenientReader.after_head(self._smuggled, head,
                                                             methods=KNOWN_METHODS)
            elif special and req.version != "HTTP/1.0" and _has_upgrade(special):
                msg.upgrade = True
            self._start_body(msg, ex, framing, length, ts)
            return he
        resp, err, special = _parse_response(head)
        msg = _Message(resp, ts)
        status = resp.status
        if 100 <= status < 200 and status != 101:
            conn.on_interim(msg)
            return he
        if (status == 101 and conn.h2c is not None and conn.awaiting
                and conn.client.state == WAIT and conn.wait_for is conn.awaiting[0]
                and (_header(resp.headers, "upgrade") or "").strip().lower() == "h2c"):
            # HTTP/2 from here on (RFC 7540 §3.2): the exchange goes with the connection
            ex = conn.awaiting.popleft()
            conn.order.remove(ex)
            conn.done_req.discard(id(ex))
            conn.wait_for = None
            ex.interim.append(resp)
            ex.ts_response_start = ts
            self.state = FOREIGN
            conn.h2c(conn, ex, data[he:], ts)
            return end
        if self.after_gap:
            self.after_gap = False
            conn.after_server_gap(ts)
        method = conn.awaiting[0].request.method if conn.awaiting else ""  # type: ignore[union-attr]
        ex = conn.on_response_head(msg)
        notes = ex.completeness.notes
        if err:
            notes.append(f"lenient-head: {err}")
            self._count("lenient_heads")
            for w in head_weirds(head):
                self._weird(w, ex)
        kind = None
        if status == 101:
            kind = "upgrade:" + (_header(resp.headers, "upgrade") or "unknown").lower()
        elif 200 <= status < 300 and method.upper() == "CONNECT":
            kind = "connect"
        if kind is not None:
            ex.tunnel = kind
            self.msg, self.ex = msg, ex
            self._finish_message(ts)
            conn.start_tunnel(kind)
            self._count("tunnel_bytes", end - he)
            return end
        if conn.wait_for is ex:
            conn.refuse_tunnel()
        if method == "HEAD" or status in (204, 304) or status < 200:
            framing, length = "none", 0
        else:
            if special:
                framing, length, bad = _body_framing(special, notes, False, resp.version)
                if bad is not None:
                    self._weird(bad, ex)
            else:
                framing, length = "none", 0
            if framing == "none":
                framing = "close"
        self._start_body(msg, ex, framing, length, ts)
        return he

    def _versionless(self, data: bytes, pos: int, nl: int, ts: float) -> int | None:
        """A request line without a version: HTTP/0.9, garbage, or (if header lines follow) a
        versionless HTTP/1 head, which servers read as one. None means: parse it as a head."""
        line = data[pos:nl].rstrip(b"\r")
        if line.count(b" ") > 1:
            return None
        after = data[nl + 1 : nl + 64]
        if after and (_HEADER_LINE.match(after) or after[:1] in b"\r\n"):
            return None
        method, _, target = line.partition(b" ")
        if method.decode("latin-1") in KNOWN_METHODS and (
            not target.strip() or target.startswith((b"/", b"http"))
        ):
            return self._http09_request(line, nl + 1, ts)
        return self._not_http(data, pos, ts)

    def _start_body(self, msg: _Message, ex: Exchange, framing: str, length: int,
                    ts: float) -> None:
        self.msg, self.ex = msg, ex
        if framing == "length" and length > 0:
            self.remaining = length
            self.state = BODY_CL
        elif framing == "chunked":
            self.state = CHUNK_SIZE
        elif framing == "close":
            self.state = BODY_CLOSE
        else:
            self._finish_message(ts)

    def _http09_request(self, line: bytes, nxt: int, ts: float) -> int:
        method, _, target = line.partition(b" ")
        req = Request(method=method.decode("latin-1"), target=target.strip().decode("latin-1"),
                      version="HTTP/0.9")
        msg = _Message(req, ts)
        ex = self.conn.on_request_head(msg)
        self._count("http09_requests")
        self.msg, self.ex = msg, ex
        self._finish_message(ts)
        return nxt

    def _http09_response(self, data: bytes, pos: int, ts: float) -> int:
        msg = _Message(Response(status=200, reason="", version="HTTP/0.9"), ts)
        ex = self.conn.on_response_head(msg)
        ex.completeness.notes.append("http/0.9 response (no status line)")
        self.msg, self.ex = msg, ex
        self.state = BODY_CLOSE
        return pos

    def _not_http(self, data: bytes, pos: int, ts: float) -> int:
        """Bytes where a head should start are not HTTP: resynchronise, or give up the stream."""
        if self._sniffed(data, pos, ts):
            return -1
        if self.conn.n == 0 and self.client:
            # The very first bytes of the connection are not HTTP: a non-HTTP stream.
            self.conn.mark_non_http()
            self._count("bytes_skipped", len(data) - pos)
            return -1
        if not self.after_gap and not self.first_message:
            self._weird("garbage_between_messages")
        self._count("resyncs")
        self.state = RESYNC
        self.resyncing = True
        self.after_gap = True
        # Skip to the end of the line that failed: a message starts at a line start, never in
        # the middle of garbage (or "xGET /" would give a request "T /"), and resynchronisation
        # must find a *later* start, or a start the head parser then rejects (a head too long,
        # say) would loop forever.
        nl = data.find(b"\n", pos + 1)
        if nl < 0:
            self.midline = True
            nl = len(data)
        self._count("bytes_skipped", nl - pos)
        return nl

    def _sniffed(self, data: bytes, pos: int, ts: float) -> bool:
        """At the start of a stream that is not HTTP/1: does another reader take it?"""
        conn = self.conn
        return (conn.sniff is not None and conn.n == 0 and not self.skipped
                and conn.sniff(conn, self.client, data[pos:] if pos else data, ts))

    def _resync(self, data: bytes, pos: int) -> int:
        """Skip to the next thing that looks like a message start; -1 if none yet."""
        if self.conn.n == 0 and not self.skipped and self._sniffed(data, pos, self.last_ts):
            return -1
        anchored, anywhere = _RESYNC[self.client]
        m = None if self.midline else anchored.match(data, pos)
        if m is None:
            m = anywhere.search(data, pos)
        if m is None:
            keep = min(len(data) - pos, 256)  # a start may straddle the segment boundary
            k = len(data) - keep
            if k > pos:
                self.midline = data[k - 1] != 10  # do the kept bytes start a line?
            skipped = len(data) - pos - keep
            self.skipped += skipped
            self._count("bytes_skipped", skipped)
            self.buf = data[len(data) - keep:]
            if self.skipped > 8 * MAX_HEAD and self.conn.n == 0:
                self._count("bytes_skipped", len(self.buf))
                self.buf = b""
                self.conn.mark_non_http()
            return -1
        start = m.start(1)
        self._count("bytes_skipped", start - pos)
        self.skipped += start - pos
        self.state = HEAD
        self.midline = False
        return start

    def _protocol_error(self, what: str, ts: float) -> None:
        """Framing broke mid-message (a chunked body not as RFC 9112 §7.1 writes it): where the
        message ends is unknown, so it is a desync: ended as truncated, nothing after it read."""
        if self.client and self.state in (CHUNK_SIZE, TRAILERS) and self.lenient is None:
            # a chunk-size line or trailers the strict reading refuses: the lenient one may
            # read on
            self.lenient = LenientReader(self._smuggled, "chunked" if self.state == CHUNK_SIZE
                                         else "trailers", methods=KNOWN_METHODS)
        if self.msg is not None and self.ex is not None:
            self.msg.truncated = True
            self.ex.completeness.notes.append(what)
            self._weird(what, self.ex)
            self._finish_message(ts)
        else:
            self._weird(what)
            self.poisoned = True
            self.state = DESYNC
        self.after_gap = True

    def gap(self, n: int, ts: float) -> None:
        """``n`` bytes of this direction were never captured."""
        state = self.state
        msg = self.msg
        if state in (BODY_CL, CHUNK_DATA) and n <= self.remaining and msg is not None:
            msg.gaps.append((msg.body_len, n))
            self.remaining -= n
            if self.remaining == 0:
                if state == BODY_CL:
                    self._finish_message(ts)
                else:
                    self.state = CHUNK_CRLF
            return
        if state == BODY_CLOSE and msg is not None:
            msg.gaps.append((msg.body_len, n))
            return
        if state in (TUNNEL, DEAD, DESYNC):
            return
        if state == FOREIGN:
            self.conn.foreign.gap(self.client, n, ts)
            return
        if state == WAIT:
            self.buf = b""
            return
        if msg is not None and self.ex is not None:
            msg.gaps.append((msg.body_len, n))
            msg.truncated = True
            self._finish_message(ts)
        self.buf = b""
        self.state = DESYNC if self.poisoned else RESYNC
        self.midline = False
        self.after_gap = True
        if self.client:
            self.conn.client_gap_ts = ts

    def close(self, ts: float) -> None:
        """This direction ended (FIN, RST or end of capture)."""
        if self.state == FOREIGN:
            self.conn.foreign.close(self.client, ts)
            return
        if self.state == BODY_CLOSE and self.msg is not None:
            self._finish_message(ts)
        elif self.msg is not None and self.ex is not None:
            self.msg.truncated = True
            self._finish_message(ts)
        elif self.buf and self.state in (HEAD, RESYNC):
            self._count("bytes_skipped", len(self.buf))
            if self.state == HEAD:
                self._count("incomplete_heads")
        elif self.buf and self.state == DESYNC:
            self._skip_desync(len(self.buf))
        self.buf = b""
        if self.state not in (TUNNEL, DEAD):
            self.state = DEAD if self.state == WAIT else self.state


_TRAILER_LINE = re.compile(_TOKEN + rb"+:[^\r\n]*")


def _bad_trailers(block: bytes) -> str | None:
    """Why a trailer section (its lines and the empty line ending it) is not one, or None: a
    bare LF, or a line that is not ``field-name ":" value`` (RFC 9112 §7.1.2) -- a request
    line there is a request smuggled behind a last chunk with its final CRLF left out."""
    if block.count(b"\n") != block.count(b"\r\n"):
        return "chunk_bare_lf"
    lines = block.split(b"\r\n")[:-2]
    if block.count(b"\r") != block.count(b"\r\n") or not all(
            _TRAILER_LINE.fullmatch(x) for x in lines):
        return "bad_trailer"
    return None


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _has_upgrade(special: list[tuple[str, str]]) -> bool:
    up = False
    conn_upgrade = False
    for lk, v in special:
        if lk == "upgrade":
            up = True
        elif lk == "connection" and "upgrade" in v.lower():
            conn_upgrade = True
    return up and conn_upgrade


def _glued(data: bytes, pos: int) -> bool:
    """Is the method at ``pos`` a registered one with stray bytes stuck before it ("xyzGET /")?
    Only asked between messages, where a client's next request follows its previous one."""
    sp = data.find(b" ", pos, pos + 25)
    method = data[pos:sp]
    return method not in _KNOWN_BYTES and method.endswith(_GLUE_SUFFIXES) and sp > 0


def _could_be_request_prefix(data: bytes) -> bool:
    """Could these few bytes be the start of a request line that is still arriving?"""
    for i, ch in enumerate(data):
        if ch == 32:
            return i > 0
        if not (65 <= ch <= 90 or 97 <= ch <= 122 or ch == 45 or ch == 95):
            return False
    return True

