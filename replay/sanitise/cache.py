"""``Caches``: every memo the sanitiser keeps between exchanges, in one explicit object.

Why caches at all: traffic repeats itself. The same header lines (a user agent, a session's
Authorization), cookie headers, request targets, content types and JSON member names come back
in nearly every exchange, and looking up what was done last time is far cheaper than scanning
again. Why one object: so that what is remembered, how much of it and for how long is in one
place. One ``Caches`` belongs to one ``Sanitiser`` (one stream, one key, one policy) and is not
thread-safe. Every cache is a plain dict or set cleared whole when it reaches its bound (cheap,
and the working set of a stream refills it within a few exchanges); each field says its bound.

What a cache may hold: only results that are a pure function of the key, the policy and the
cached input. Entries that would need more (what the current exchange wrote so far) are not
cached (see ``UrlPart.target``). Results that count something carry the recorded counts, which
are replayed into the report on a hit, so the report is the same with or without the cache.

The pseudonyms themselves are cached by ``Pseudonymiser`` (``(format, value) -> pseudonym``,
up to 65,536 entries): HMAC is the most expensive single step and users recur.
"""

from __future__ import annotations

from typing import Any

from replay.sanitise.policy import LOCATIONS

SMALL = 4096
"""Bound of the per-name caches (names are few; more means a stream of random names)."""
MEMO_ENTRIES = 1 << 13
"""Bound of the memoised results (header lines, cookie headers, connection keys)."""
CLEAN_ENTRIES = 1 << 14
"""Bound of each set of values known to be clean."""
CLEAN_MAX = 512
"""Only values up to this long are remembered as clean (longer ones rarely recur verbatim)."""
HEADER_VALUE_MAX = 4096
"""Header lines up to this long are remembered (a session's Authorization, a user agent)."""
CTYPE_ENTRIES = 1024
"""Bound of the Content-Type cache."""


class Caches:
    """The sanitiser's memos (see the module's doc); one per ``Sanitiser``."""

    __slots__ = (
        "clean",
        "clean_targets",
        "clean_whole",
        "conn",
        "conn_ip",
        "cookies",
        "ctype",
        "header_kind",
        "header_lines",
        "json_bname",
        "json_name",
        "select",
    )

    def __init__(self) -> None:
        self.select: dict[tuple[str, str], tuple[Any, list[Any]]] = {}
        """(location, lower-case name) -> (first whole-value rule selecting it or None, scoped
        detector rules for it). Bound ``SMALL``."""
        self.json_name: dict[str, tuple[Any, list[Any]]] = {}
        """JSON member name -> (whole-value rule, scoped detectors), for policies whose JSON
        rules select by name only (no JSON paths). Bound ``SMALL``."""
        self.json_bname: dict[bytes, tuple[Any, list[Any]]] = {}
        """The same, by the member name's bytes as the in-place JSON scan finds them (no decode
        per member). Bound ``SMALL``."""
        self.header_kind: dict[str, tuple[int, str]] = {}
        """Header name -> (what to do with it: value, skip, cookie, URL, Content-Type,
        Content-Encoding; lower-case name). Bound ``SMALL``."""
        self.header_lines: dict[tuple[str, str], tuple[Any, ...]] = {}
        """(name, value) of a header line -> its kind, or for a plain value (new value or None,
        recorded counts, echo entries, pseudonyms written). Lines up to ``HEADER_VALUE_MAX``.
        Bound ``MEMO_ENTRIES``."""
        self.cookies: dict[tuple[str, bool], tuple[Any, list[Any], dict[bytes, bytes]]] = {}
        """(Cookie or Set-Cookie value, is Set-Cookie) -> (new value or None, recorded counts,
        echo entries). Bound ``MEMO_ENTRIES``."""
        self.conn_ip: dict[str, tuple[Any, bytes]] = {}
        """Client address -> (IP rule or None, its pseudonym). Bound ``SMALL``."""
        self.conn: dict[Any, tuple[Any, bytes, Any]] = {}
        """Connection key -> (IP rule, address pseudonym, new connection key). Bound
        ``MEMO_ENTRIES``."""
        self.ctype: dict[str | None, tuple[str, dict[str, str]]] = {}
        """Content-Type value -> (body kind: json/form/multipart/text, parameters). Bound
        ``CTYPE_ENTRIES``."""
        self.clean_targets: set[str] = set()
        """Request targets that went through untouched (health checks, listings, assets). Up to
        ``CLEAN_MAX`` long; bound ``CLEAN_ENTRIES``."""
        self.clean: dict[str, set[bytes]] = {loc: set() for loc in LOCATIONS}
        """Per location: single values (a header value, a cookie, a path) no detector fires on.
        Up to ``CLEAN_MAX`` long; bound ``CLEAN_ENTRIES`` each."""
        self.clean_whole: dict[str, set[bytes]] = {"query": set(), "form": set()}
        """Whole query strings and form bodies that went through unchanged (never mixed with
        the single values of ``clean``). Up to ``CLEAN_MAX`` long; bound ``CLEAN_ENTRIES``."""


def remember_clean(clean: set[bytes], v: bytes) -> None:
    """Remember a short value no detector fires on: user agents, accept lists and the like
    recur in nearly every exchange, and a set lookup is far cheaper than a scan."""
    if len(v) <= CLEAN_MAX:
        if len(clean) >= CLEAN_ENTRIES:
            clean.clear()
        clean.add(v)
