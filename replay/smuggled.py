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
that header), obs-folded continuation lines add nothing, ``chunked`` counts when it is one of
the comma-separated codings of any ``Transfer-Encoding`` line and wins over ``Content-Length``;
a length is ``+?digits`` below 2**63, anything else (``-1``, ``0x5``, ``5, 5``, two different
fields) is no body; a head holding a bare CR is not read at all; chunk-size lines are hex digits
(surrounding blanks and extensions ignored, at most 16 digits) ending in CRLF. After a message,
the next bytes must be a request line with a registered method at once (no skipping), else
reading stops for good.

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
_LENGTH = re.compile(rb"\+?[0-9]+\Z")
_BARE_CR = re.compile(rb"\r(?!\n)")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")


def lenient_framing(head: bytes) -> tuple[str, int]:
    """``('chunked', 0)``, ``('length', n)`` or ``('stop', 0)`` for a request head (request
    line to the blank line), the lenient way (see the module docstring)."""
    if _BARE_CR.search(head.rstrip(b"\r\n") + b"\r\n"):
        return "stop", 0
    te: list[bytes] = []
    cl: list[bytes] = []
    for line in head.split(b"\r\n")[1:]:
        if not line or line[:1] in (b" ", b"\t"):
            continue  # the blank end, or an obs-folded continuation: adds nothing
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            continue
        low = name.lower()
        if low == b"transfer-encoding":
            te.append(value.strip(b" \t"))
        elif low == b"content-length":
            cl.append(value.strip(b" \t"))
    if any(c.strip(b" \t").lower() == b"chunked" for v in te for c in v.split(b",")):
        return "chunked", 0
    if len(set(cl)) != 1 or not _LENGTH.match(cl[0]):
        return "length", 0
    n = int(cl[0])
    return "length", n if n < 2**63 else 0


def chunked_end(buf: bytes, pos: int) -> int | None:
    """Where a chunked body starting at ``pos`` ends, the lenient way: the offset after its
    last chunk and trailers, -1 when ``buf`` ends first, None when it is malformed."""
    end = len(buf)
    while True:
        nl = buf.find(b"\r\n", pos, pos + 1024)
        if nl < 0:
            lf = buf.find(b"\n", pos, pos + 1024)
            if lf >= 0 or end - pos >= 1024:
                return None  # a bare LF, or no line end at all
            return -1
        size = buf[pos:nl].split(b";", 1)[0].strip(b" \t")
        if not _HEX.match(size):
            return None
        n = int(size, 16)
        pos = nl + 2
        if n == 0:
            while True:  # trailers up to the blank line
                nl = buf.find(b"\r\n", pos, pos + _MAX_HEAD)
                if nl < 0:
                    return -1 if end - pos < _MAX_HEAD else None
                if nl == pos:
                    return pos + 2
                pos = nl + 2
        if end < pos + n + 2:
            return -1
        if buf[pos + n : pos + n + 2] != b"\r\n":
            return None
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
    lenient framing is ``framing``), or ``'chunked'`` (at a chunk-size line the strict reader
    refused)."""

    __slots__ = ("buf", "done", "emit", "length", "methods", "mode", "pos", "reported", "taken")

    def __init__(self, emit: Callable[[Request], None], mode: str, length: int = 0, *,
                 methods: frozenset[str] = frozenset()) -> None:
        self.emit = emit
        self.methods = methods
        """Registered methods (``replay.http1.KNOWN_METHODS``): a smuggled request line must
        use one, so body bytes glued to a method (``helloGET /x``) are not read as one."""
        self.mode = mode
        """'length' (skip ``length`` body bytes), 'chunked', 'head', or 'stop'."""
        self.length = length
        self.buf = b""
        self.pos = 0
        self.taken = 0
        self.reported = 0
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
                continue
            if self.mode == "chunked":
                e = chunked_end(buf, self.pos)
                if e is None:
                    self.done = True
                    return
                if e < 0:
                    return
                self.pos = e
                self.mode = "head"
                continue
            # a request line must come at once: decided when its line is whole
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
