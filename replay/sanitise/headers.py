"""Header lines and cookies (request and response headers, trailers).

Most header lines recur verbatim (user agents, accept lists, a session's Authorization), so what
a line needs is remembered per (name, value) in ``Caches.header_lines``: skipped, clean, or its
replacement with the counts, echo entries and pseudonyms it produced (replayed on a hit). URL
headers depend on what this exchange already wrote and are done each time; Cookie and
Set-Cookie values are memoised by value (``Caches.cookies``).
"""

from __future__ import annotations

from typing import Any

from replay.model import Headers
from replay.sanitise.cache import HEADER_VALUE_MAX, MEMO_ENTRIES, SMALL
from replay.sanitise.url import UrlPart
from replay.sanitise.values import DROP, Ctx, Values, dec, enc

H_VALUE, H_SKIP, H_COOKIE, H_URL, H_CTYPE, H_CENC = range(6)
"""What to do with a header line, by its name (``HeaderPart.classify``)."""
_URL_HEADERS = frozenset({"referer", "location", "content-location", "origin", "refresh"})


class HeaderPart:
    """Header lines, cookies and URL headers."""

    __slots__ = (
        "_cookies",
        "_header_dets",
        "_hkind",
        "_hmemo",
        "_items",
        "_replace_hits",
        "_select",
        "_skip",
        "_url",
        "report",
    )

    def __init__(self, values: Values, url: UrlPart) -> None:
        self._items = values.items
        self._select = values.select
        self._replace_hits = values.replace_hits
        self._url = url.url
        self._skip = values.compiled.skip
        self._header_dets = values.compiled.dets["header"]
        cache = values.cache
        self._hkind = cache.header_kind
        self._hmemo = cache.header_lines
        self._cookies = cache.cookies
        self.report = values.report

    def headers(self, headers: Headers, ctx: Ctx) -> tuple[Headers, str | None, str | None]:
        """Sanitise header values; also returns Content-Type and Content-Encoding (framing
        headers, never rewritten), found in the same pass (see the module's doc)."""
        memo = self._hmemo
        ctype = cenc = None
        new: list[tuple[str, str] | None] | None = None  # a dropped line is None
        later: list[tuple[int, int]] | None = None  # URL and cookie lines, after the values
        rep = self.report
        for i, kv in enumerate(headers):
            rec = memo.get(kv)
            fresh = rec is None
            if fresh:
                rec = self.line(kv)  # counted while it was worked out
            kind = rec[0]
            if kind == H_SKIP:
                continue
            if kind == H_VALUE:
                nv, counts, echo, produced = rec[1], rec[2], rec[3], rec[4]
                if counts and not fresh:
                    rep.replay(counts)
                if echo:
                    ctx.echo.update(echo)
                if produced:
                    ctx.produced.update(produced)
                if nv is not kv[1]:
                    if new is None:
                        new = list(headers)
                    new[i] = None if nv is None else (kv[0], nv)
            elif kind == H_CTYPE:
                if ctype is None:
                    ctype = kv[1]
            elif kind == H_CENC:
                if cenc is None:
                    cenc = kv[1]
            elif later is None:
                later = [(i, kind)]
            else:
                later.append((i, kind))
        if later is not None:
            for i, kind in later:
                if kind == H_URL:
                    new = self.url_header(headers, new, i, ctx)
            for i, kind in later:
                k, v = headers[i]
                if kind == H_COOKIE:
                    nv = self.cookie_memo(v, k.lower() == "set-cookie", ctx)
                    if nv is v:
                        continue
                    if new is None:
                        new = list(headers)
                    new[i] = None if nv is None else (k, nv)
        if new is None:
            return headers, ctype, cenc
        if None in new:
            new = [h for h in new if h is not None]
        if new == headers:
            return headers, ctype, cenc
        return new, ctype, cenc

    def url_header(
        self, headers: Headers, new: list[tuple[str, str] | None] | None, i: int, ctx: Ctx
    ) -> list[tuple[str, str] | None] | None:
        """A URL header (Referer, Location...): sanitised as a URL, then the header detectors
        over the whole URL (host, fragment...), skipping what the URL pass already wrote."""
        cur = headers[i][1]
        nv = self._url(cur, ctx)
        raw = enc(nv)
        checked = self._replace_hits("header", raw, self._header_dets, ctx, skip=ctx.produced)
        if checked is not raw:
            nv = dec(checked, cur)
        if nv is cur:
            return new
        if new is None:
            new = list(headers)
        new[i] = (headers[i][0], nv)
        return new

    def line(self, kv: tuple[str, str]) -> tuple[Any, ...]:
        """What a header line needs (see ``headers``), computed once and remembered.

        (kind,) for skipped, URL, cookie, Content-Type and Content-Encoding lines; for plain
        values (H_VALUE, new value or the same str or None to drop, recorded counts, echo
        entries, pseudonyms written). A value is done on its own, like a value that a joined
        scan found a hit in; a clean one is remembered like ``remember_clean`` does."""
        k, v = kv
        kk = self._hkind.get(k)
        kind, lk = kk if kk is not None else self.classify(k)
        if kind != H_VALUE:
            rec: tuple[Any, ...] = (kind,)
        else:
            vb = enc(v)
            sub = Ctx()
            counts: list[tuple[str, str, bytes | None]] = []
            rep = self.report
            rep._rec = counts
            try:
                changes = self._items("header", [(lk, vb)], sub)
            finally:
                rep._rec = None
            if not changes:
                nv: str | None = v
            elif changes[0] is DROP:
                nv = None
            else:
                nv = dec(changes[0], v)
            rec = (H_VALUE, nv, tuple(counts), dict(sub.echo), frozenset(sub.produced))
        if len(kv[1]) <= HEADER_VALUE_MAX:
            if len(self._hmemo) >= MEMO_ENTRIES:
                self._hmemo.clear()
            self._hmemo[kv] = rec
        return rec

    def classify(self, name: str) -> tuple[int, str]:
        """What to do with a header of this name (cached: names repeat in every message)."""
        lk = name.lower()
        if lk == "content-type":
            kind = H_CTYPE
        elif lk == "content-encoding":
            kind = H_CENC
        elif lk in self._skip:
            kind = H_SKIP
        elif lk in ("cookie", "set-cookie"):
            kind = H_COOKIE
        elif lk in _URL_HEADERS:
            whole, scoped = self._select("header", lk)
            # a rule that picks this header by name treats it as a plain value
            kind = H_URL if whole is None and not scoped else H_VALUE
        else:
            kind = H_VALUE
        if len(self._hkind) > SMALL:
            self._hkind.clear()
        self._hkind[name] = (kind, lk)
        return kind, lk

    def cookie_memo(self, value: str, is_set: bool, ctx: Ctx) -> str | None:
        """``cookie_header`` memoised: a session sends the same Cookie header with every
        request. The result is a pure function of the value (and key), so a hit replays the
        recorded counts and echo entries and returns the same output."""
        key = (value, is_set)
        hit = self._cookies.get(key)
        rep = self.report
        if hit is None:
            sub = Ctx()
            rec: list[tuple[str, str, bytes | None]] = []
            rep._rec = rec
            try:
                new = self.cookie_header(value, is_set, sub)
            finally:
                rep._rec = None
            hit = (new, rec, sub.echo)
            if len(self._cookies) >= MEMO_ENTRIES:
                self._cookies.clear()
            self._cookies[key] = hit
        else:
            for r, loc, smp in hit[1]:
                rep.count(r, loc, smp)
        if hit[2]:
            ctx.echo.update(hit[2])
        return hit[0]

    def cookie_header(self, value: str, is_set: bool, ctx: Ctx) -> str | None:
        """Cookie: every pair; Set-Cookie: the first pair (attributes are not personal)."""
        raw = enc(value)
        if is_set:
            pair, sep, attrs = raw.partition(b";")
            pairs = [pair]
        else:
            pairs = raw.split(b";")
        items = []
        for p in pairs:
            name, eq, val = p.partition(b"=")
            if not eq:
                name, val = b"", p
            items.append((name.strip().decode("latin-1").lower(), val.strip()))
        changes = self._items("cookie", items, ctx)
        if not changes:
            return value
        kept = []
        for j, p in enumerate(pairs):
            if j in changes:
                if changes[j] is DROP:
                    continue
                name, eq, val = p.partition(b"=")
                lead = len(val) - len(val.lstrip())
                trail = len(val) - len(val.rstrip())
                val2 = val[:lead] + changes[j] + (val[len(val) - trail :] if trail else b"")
                kept.append(name + eq + val2 if eq else val2)
            else:
                kept.append(p)
        if not kept:
            return None
        if is_set:
            out = kept[0] + (b";" + attrs if sep else b"")
        else:
            out = b";".join(kept).lstrip()
        return dec(out, value)
