"""The one data model that flows through the whole house: ``Exchange``.

Every stage (extract, sanitise, sinks, replayer, comparator) takes and returns Exchanges, and every
file format converts to and from them. The model keeps what is needed to rebuild the wire bytes
faithfully: header names in their original case and order, the raw request-target, bodies with
transfer coding removed (but content coding kept), trailers, and interim (1xx) responses apart from
the final one. It also keeps an honest record of what was *not* seen (``Completeness``): gaps,
retransmissions, truncation, timeouts, unpaired messages. Nothing is papered over.

Headers are ``list[tuple[str, str]]`` decoded as latin-1, which maps bytes 0-255 one-to-one, so a
round trip through text formats is lossless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Headers = list[tuple[str, str]]

NO_ANSWER = "no_response"
"""The one label for a shadow that did not answer at all (no response and no error kind saying
why): the comparison's finding kind, the live shadowing's failure kind and every report's."""
NO_RESPONSE_CAPTURED = "no response captured"
"""Why an exchange is not replayed when the capture holds its request but no response."""
NO_REQUEST_CAPTURED = "no request captured"
"""Why an exchange is not replayed when the capture holds a response but no request."""


def header_get(headers: Headers, name: str, default: str | None = None) -> str | None:
    """First value of header ``name`` (case-insensitive), or ``default``."""
    lname = name.lower()
    for k, v in headers:
        if k.lower() == lname:
            return v
    return default


def absolute_form(target: str) -> bool:
    """Whether a request target is absolute-form (``http://host/path``, RFC 9112 §3.2.2): a
    scheme first. An origin-form target starts with ``/``, whatever its query holds
    (``/login?next=http://example.com/a`` is a path with a query, not a URL)."""
    return not target.startswith("/") and "://" in target


@dataclass(slots=True)
class Request:
    method: str
    target: str
    """The request-target exactly as sent (origin, absolute, authority or asterisk form)."""
    version: str = "HTTP/1.1"
    """``HTTP/1.0``, ``HTTP/1.1``, ``HTTP/0.9`` (a bare request line with no version) or
    ``HTTP/2`` (``replay.h2``: ``:authority``, ``:scheme`` and ``:protocol`` lead the headers,
    as sent; ``:method`` and ``:path`` are ``method`` and ``target``)."""
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    """Body with transfer coding (chunked) removed; content coding (gzip, br) kept as sent."""
    trailers: Headers = field(default_factory=list)

    @property
    def host(self) -> str | None:
        h = header_get(self.headers, "host")
        if h is None and self.version == "HTTP/2":
            h = header_get(self.headers, ":authority")
        if h is None and absolute_form(self.target):
            rest = self.target.split("://", 1)[1]
            h = rest.split("/", 1)[0]
        return h

    @property
    def path(self) -> str:
        """The target as an origin-form path (absolute-form reduced to its path)."""
        t = self.target
        if absolute_form(t):
            rest = t.split("://", 1)[1]
            i = rest.find("/")
            return rest[i:] if i >= 0 else "/"
        return t


@dataclass(slots=True)
class Response:
    status: int
    reason: str = ""
    version: str = "HTTP/1.1"
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    trailers: Headers = field(default_factory=list)


@dataclass(slots=True, frozen=True)
class ConnKey:
    """Who talked to whom: client and server endpoints of the TCP connection."""

    client_ip: str
    client_port: int
    server_ip: str
    server_port: int

    def __str__(self) -> str:
        c = f"[{self.client_ip}]" if ":" in self.client_ip else self.client_ip
        s = f"[{self.server_ip}]" if ":" in self.server_ip else self.server_ip
        return f"{c}:{self.client_port}->{s}:{self.server_port}"


@dataclass(slots=True)
class Completeness:
    """What the capture did not show us about this exchange. Empty means complete."""

    request_gaps: list[tuple[int, int]] = field(default_factory=list)
    """(offset in body, bytes missing) for holes in the request body."""
    response_gaps: list[tuple[int, int]] = field(default_factory=list)
    retransmits: int = 0
    """Segments of this connection seen more than once (harmless, but a sign of loss)."""
    request_truncated: bool = False
    """The request ended before its framing said it should (capture cut, gap, close)."""
    response_truncated: bool = False
    timed_out: bool = False
    """The connection went idle past the timeout before this exchange finished."""
    unpaired: bool = False
    """A request without a response, or a response without a request, in the capture."""
    notes: list[str] = field(default_factory=list)
    """Free-form anomalies (e.g. 'te+cl', 'lenient-head', 'request-missing')."""
    desync: bool = False
    """The message framing could not be trusted (RFC 9112 §6.3, §11.2: an invalid
    Content-Length, a Transfer-Encoding that servers read differently, a bare CR...): where this
    message ends, and so what follows it, depends on who parses it. Never replayed; the bytes of
    the connection after it are not read as messages."""
    desync_reason: str = ""
    """The first weird reason that made it a desync (one of ``replay.http1.WEIRD_REASONS``)."""
    weird: list[str] = field(default_factory=list)
    """Every framing oddity ("weird", as Zeek calls them) seen on this exchange, by reason."""

    @property
    def complete(self) -> bool:
        return not (
            self.request_gaps
            or self.response_gaps
            or self.request_truncated
            or self.response_truncated
            or self.timed_out
            or self.unpaired
            or self.desync
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.request_gaps:
            d["request_gaps"] = [list(g) for g in self.request_gaps]
        if self.response_gaps:
            d["response_gaps"] = [list(g) for g in self.response_gaps]
        for name in ("retransmits",):
            v = getattr(self, name)
            if v:
                d[name] = v
        for name in ("request_truncated", "response_truncated", "timed_out", "unpaired"):
            if getattr(self, name):
                d[name] = True
        if self.notes:
            d["notes"] = list(self.notes)
        if self.desync:
            d["desync"] = True
            d["desync_reason"] = self.desync_reason
        if self.weird:
            d["weird"] = list(self.weird)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Completeness:
        d = d or {}
        return cls(
            request_gaps=[(int(a), int(b)) for a, b in d.get("request_gaps", [])],
            response_gaps=[(int(a), int(b)) for a, b in d.get("response_gaps", [])],
            retransmits=int(d.get("retransmits", 0)),
            request_truncated=bool(d.get("request_truncated", False)),
            response_truncated=bool(d.get("response_truncated", False)),
            timed_out=bool(d.get("timed_out", False)),
            unpaired=bool(d.get("unpaired", False)),
            notes=list(d.get("notes", [])),
            desync=bool(d.get("desync", False)),
            desync_reason=str(d.get("desync_reason", "")),
            weird=[str(w) for w in d.get("weird", [])],
        )


@dataclass(slots=True)
class Exchange:
    """One HTTP request and the response it got, as seen on the wire.

    ``request`` is None for a response whose request was not captured; ``response`` is None when
    no response was seen. Timestamps are seconds since the epoch (float) from the capture.
    """

    id: str
    conn: ConnKey | None = None
    request: Request | None = None
    response: Response | None = None
    interim: list[Response] = field(default_factory=list)
    """1xx responses (e.g. 100 Continue) received before the final response."""
    ts_request_start: float | None = None
    ts_request_end: float | None = None
    ts_response_start: float | None = None
    ts_response_end: float | None = None
    completeness: Completeness = field(default_factory=Completeness)
    tunnel: str | None = None
    """Set when the connection stopped being HTTP after this exchange ('upgrade:websocket',
    'connect'): the bytes that followed are tunnel data, not HTTP messages."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Extension point for pipeline stages (sanitise report ids, replay targets...)."""

    @property
    def latency(self) -> float | None:
        """Time from the end of the request to the start of the response, if both were seen."""
        if self.ts_response_start is None:
            return None
        start = self.ts_request_end if self.ts_request_end is not None else self.ts_request_start
        if start is None:
            return None
        return self.ts_response_start - start
