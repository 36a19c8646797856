"""What a lenient parser reads after a desync: the smuggled requests, reported, never replayed.

Why: when a request's framing cannot be trusted (RFC 9112 §6.3, §11.2: ``Transfer-Encoding``
with ``Content-Length``, a negative or listed length, TE not ending in ``chunked`` ...), the
strict reader in ``replay.http1`` ends that request at its head and reads nothing after it as
requests of its own. But *someone* on the path may have read on: a back end or a proxy that
takes the lenient reading (chunked whenever ``chunked`` is among the codings, a length that
``strtoll`` accepts, no body otherwise) sees a second, smuggled request there. That request is
the attack, and the one thing a security reader of the mirror wants to see. So the bytes after
a desync are read once more, the lenient way, and every request found is reported as an
Exchange marked ``desync`` (reason ``smuggled``, weird ``smuggled_request``): in the logs, the
report and the weird counters, with no response paired (production's answers cannot be
attributed), and never replayed to a shadow (every replay path skips ``desync``).

The lenient reading is Wireshark's (tshark 4.0's HTTP dissector), which the tests compare
against: header names must be tokens right before the colon (``Transfer-Encoding :`` is not
that header); a head with an obs-folded continuation or a line with no colon is not read on;
``chunked`` counts when a comma-separated coding of any ``Transfer-Encoding`` line *starts* with
it (case-sensitive) and wins over ``Content-Length``, other codings mean no reading on (until
close); a length is what ``g_ascii_strtoll`` takes (blanks, ``+``, digits) below 2**63, anything
else (``-1``, ``0x5``, ``5, 5``, two different fields) is no body; a head holding a bare CR is
not read at all; a chunk size is ``(guint32)strtol(line, 16)`` (blanks, sign, ``0x``; LONG_MAX
on overflow), lines end in LF or CRLF, the two bytes after chunk data are skipped unread and an
empty size line ends the body. After a message, the next bytes must be a request line with a
registered method, past at most one CRLF, else reading stops for good.

Sans-I/O: ``LenientReader`` is fed the bytes after the desync and calls ``emit`` with each
request it completes. Bounded: at most ``MAX_BYTES`` read and ``MAX_REQUESTS`` reported per
connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from replay.model import Request

MAX_BYTES = 256 * 1024
MAX_REQUESTS = 16
_MAX_HEAD = 64 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^ \r\n]+) HTTP/(\d)\.(\d)\r\n")
_C_SPACE = b" \t\n\x0b\x0c\r"
_LENGTH = re.compile(rb"[ \t\n\x0b\x0c\r]*\+?([0-9]+)(?:[ \t\n\x0b\x0c\r][\s\S]*)?\Z")
"""A length ``g_ascii_strtoll`` takes: blanks, '+', digits, then nothing or a blank."""
_BARE_CR = re.compile(rb"\r(?!\n)")
_STRTOL_HEX = re.compile(rb"[ \t\n\x0b\x0c\r]*([+-]?)(?:0[xX](?=[0-9A-Fa-f]))?([0-9A-Fa-f]*)")
_LONG_MAX = 2**63 - 1


def _codings_chunked(value: bytes) -> bool:
    """Wireshark's reading of a Transfer-Encoding value: members split at ',' (blanks
    skipped), ``chunked`` when a member *starts* with ``chunked`` (case-sensitive:
    ``chunked;q=1`` and ``chunked\x0b`` count, ``CHUNKED`` does not)."""
    return any(m.lstrip(b" \t").startswith(b"chunked") for m in value.split(b","))


def lenient_framing(head: bytes) -> tuple[str, int]:
    """``('chunked', 0)``, ``('length', n)`` or ``('stop', 0)`` for a request head (request
    line to the blank line), the lenient way (see the module docstring)."""
    if _BARE_CR.search(head.rstrip(b"\r\n") + b"\r\n"):
        return "stop", 0
    te: list[bytes] = []
    cl: list[bytes] = []
    for line in head.split(b"\r\n")[1:]:
        if not line:
            continue  # the blank end
        if line[:1] in (b" ", b"\t"):
            return "stop", 0  # an obs-folded continuation: where the head ends is unclear
        name, sep, value = line.partition(b":")
        if not sep:
            return "stop", 0  # not a field line
        if not _TOKEN.match(name):
            continue
        low = name.lower()
        if low == b"transfer-encoding":
            te.append(value.strip(b" \t"))
        elif low == b"content-length":
            cl.append(value.strip(b" \t"))
    if any(_codings_chunked(v) for v in te):
        return "chunked", 0
    if te:
        return "stop", 0  # codings it does not know: read until the connection closes
    m = _LENGTH.match(cl[0]) if len(set(cl)) == 1 else None
    if m is None:
        return "length", 0
    n = int(m.group(1))
    return "length", n if n < 2**63 else 0


def _strtol_hex(line: bytes) -> int:
    """``(guint32)strtol(line, NULL, 16)``, as Wireshark reads a chunk size: blanks, a sign,
    ``0x``, hex digits up to the first other byte; LONG_MAX on overflow; 32 bits kept (so
    ``1000000000000005`` is 5 and ``-5`` is 4294967291)."""
    m = _STRTOL_HEX.match(line)
    assert m is not None
    n = int(m.group(2), 16) if m.group(2) else 0
    if n > _LONG_MAX:
        n = _LONG_MAX if m.group(1) != b"-" else _LONG_MAX + 1
    if m.group(1) == b"-":
        n = -n
    return n & 0xFFFFFFFF


def _line(buf: bytes, pos: int, limit: int) -> tuple[int, int] | None:
    """(end of the line at ``pos``, start of the next) with an LF or CRLF end, or None when no
    LF comes within ``limit`` bytes."""
    lf = buf.find(b"\n", pos, pos + limit)
    if lf < 0:
        return None
    return (lf - 1 if lf > pos and buf[lf - 1] == 13 else lf), lf + 1


def trailers_end(buf: bytes, pos: int) -> int | None:
    """Where a trailer section starting at ``pos`` ends, the lenient way: after the first
    empty line (LF or CRLF), -1 when ``buf`` ends first, None when it is too long."""
    end = len(buf)
    while True:
        ln = _line(buf, pos, _MAX_HEAD)
        if ln is None:
            return -1 if end - pos < _MAX_HEAD else None
        if ln[0] == pos:
            return ln[1]
        pos = ln[1]


def chunked_end(buf: bytes, pos: int) -> int | None:
    """Where a chunked body starting at ``pos`` ends, the lenient way (Wireshark's): the
    offset after its last chunk and trailers, -1 when ``buf`` ends first, None when no line
    end comes. Lines end in LF or CRLF; a size is read like ``strtol`` (``_strtol_hex``);
    the two bytes after chunk data are skipped unread; an empty size line ends the body
    there."""
    end = len(buf)
    while True:
        ln = _line(buf, pos, 1024)
        if ln is None:
            return None if end - pos >= 1024 else -1
        eol, nxt = ln
        if eol == pos:
            return pos  # an empty size line: the body ends before it
        n = _strtol_hex(buf[pos:eol].split(b";", 1)[0])
        pos = nxt
        if n == 0:
            return trailers_end(buf, pos)
        if end < pos + n + 2:
            return -1
        pos += n + 2


def _headers(head: bytes) -> list[tuple[str, str]]:
    out = []
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name and line[:1] not in (b" ", b"\t"):
            out.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return out


class LenientReader:
    """Reads the client bytes after a desync the lenient way; ``emit(request)`` per request.

    ``mode`` is where the bytes start: ``'head'`` (right after the desync message's head, whose
    lenient framing is ``framing``), ``'chunked'`` (at a chunk-size line the strict reader
    refused) or ``'trailers'`` (at a trailer section it refused)."""

    __slots__ = ("buf", "crlf_skipped", "done", "emit", "length", "methods", "mode", "pos",
                 "reported", "taken")

    def __init__(self, emit: Callable[[Request], None], mode: str, length: int = 0, *,
                 methods: frozenset[str] = frozenset()) -> None:
        self.emit = emit
        self.methods = methods
        """Registered methods (``replay.http1.KNOWN_METHODS``): a smuggled request line must
        use one, so body bytes glued to a method (``helloGET /x``) are not read as one."""
        self.mode = mode
        """'length' (skip ``length`` body bytes), 'chunked', 'trailers', 'head', or 'stop'."""
        self.length = length
        self.buf = b""
        self.pos = 0
        self.taken = 0
        self.reported = 0
        self.crlf_skipped = False
        self.done = mode == "stop"

    @classmethod
    def after_head(cls, emit: Callable[[Request], None], head: bytes, *,
                   methods: frozenset[str] = frozenset()) -> LenientReader:
        """For the bytes after the head of a request marked desync."""
        mode, n = lenient_framing(head)
        return cls(emit, mode, n, methods=methods)

    def feed(self, data: bytes) -> None:
        if self.done or not data:
            return
        room = MAX_BYTES - self.taken
        if len(data) > room:
            data = data[:room]
        self.taken += len(data)
        self.buf = self.buf[self.pos :] + data if self.pos else self.buf + data
        self.pos = 0
        self._run()
        if self.taken >= MAX_BYTES and not self.done:
            self.done = True

    def _run(self) -> None:
        buf = self.buf
        while not self.done:
            if self.mode == "length":
                if len(buf) - self.pos < self.length:
                    self.length -= len(buf) - self.pos
                    self.pos = len(buf)
                    return
                self.pos += self.length
                self.length = 0
                self.mode = "head"
                self.crlf_skipped = False
                continue
            if self.mode in ("chunked", "trailers"):
                e = (chunked_end if self.mode == "chunked" else trailers_end)(buf, self.pos)
                if e is None:
                    self.done = True
                    return
                if e < 0:
                    return
                self.pos = e
                self.mode = "head"
                self.crlf_skipped = False
                continue
            # a request line must come at once (after at most one CRLF, which Wireshark
            # skips): decided when its line is whole
            if buf.startswith(b"\r\n", self.pos) and not self.crlf_skipped:
                self.pos += 2
                self.crlf_skipped = True
                continue
            if buf.find(b"\n", self.pos, self.pos + _MAX_HEAD) < 0:
                if len(buf) - self.pos >= _MAX_HEAD:
                    self.done = True
                return
            m = _REQUEST_LINE.match(buf, self.pos)
            if m is None or m.group(1).decode("latin-1") not in self.methods:
                self.done = True
                return
            he = buf.find(b"\r\n\r\n", m.start())
            if he < 0:
                if len(buf) - self.pos > _MAX_HEAD:
                    self.done = True
                return
            head = buf[m.start() : he + 4]
            mode, n = lenient_framing(head)
            body_start = he + 4
            if mode == "length" and len(buf) - body_start < n:
                return  # the whole smuggled message first (bounded by MAX_BYTES)
            if mode == "chunked":
                e = chunked_end(buf, body_start)
                if e is not None and e < 0:
                    return
                body = b"" if e is None else buf[body_start:e]
                nxt = e
            elif mode == "length":
                body = buf[body_start : body_start + n]
                nxt = body_start + n
            else:
                body, nxt = b"", None
            req = Request(m.group(1).decode("latin-1"), m.group(2).decode("latin-1"),
                          f"HTTP/{m.group(3).decode()}.{m.group(4).decode()}", _headers(head),
                          body)
            self.reported += 1
            self.emit(req)
            if nxt is None or self.reported >= MAX_REQUESTS:
                self.done = True
                return
            self.pos = nxt
            self.mode = "head"
            self.crlf_skipped = False
