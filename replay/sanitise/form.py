"""URL-encoded pairs: query strings and ``application/x-www-form-urlencoded`` bodies.

Both are ``k=v&k=v``: the rules apply to the decoded names and values (``Values.items``), then
a safety-net scan of the raw text catches what decoding hides or creates. Only changed pairs
are re-encoded; the rest stay byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable

from replay.sanitise import bodies
from replay.sanitise.cache import remember_clean
from replay.sanitise.detectors import Detector
from replay.sanitise.values import DROP, Ctx, Values

_QSAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~@:,/*")


class FormPart:
    """Query strings and form bodies."""

    __slots__ = (
        "_clean_whole",
        "_dets",
        "_echo",
        "_form_extra",
        "_items",
        "_replace_hits",
        "mismatch",
        "report",
    )

    def __init__(self, values: Values) -> None:
        self._items = values.items
        self._replace_hits = values.replace_hits
        self._echo = values.echo
        self._dets = values.compiled.dets
        self._form_extra = values.compiled.form_extra
        self._clean_whole = values.cache.clean_whole
        self.report = values.report
        self.mismatch: Callable[[bytes, Ctx], bytes] = _not_wired
        """``MessagePart.mismatch``; set when the parts are put together."""

    def form(self, data: bytes, ctx: Ctx) -> bytes:
        """A urlencoded form body: the query-string treatment, then body-only patterns."""
        if b"\0" in data:
            self.report.fallback("body is not a form as Content-Type says")
            return self.mismatch(data, ctx)
        # '@' and ':' stay unencoded (valid in forms) so a pseudonymised address reads the same
        # as everywhere else, and the raw safety-net scan recognises it as already done
        out = self.pairs("form", data, ctx, b"@:,/")
        if self._form_extra:
            out = self._replace_hits("body", out, self._form_extra, ctx, skip=ctx.produced)
        new = self._echo(out, ctx)
        return data if new == data else new

    def decoded_hits(
        self, loc: str, raw: bytes, dets: list[tuple[int, Detector]], ctx: Ctx, safe: bytes
    ) -> bytes | None:
        """Detector hits in an encoded name, with '+' read as a space and as a literal; the
        re-encoded name, or None if neither reading has a hit."""
        for plus in (True, False):
            dec = bodies.unquote(raw, plus=plus)
            new = self._replace_hits(loc, dec, dets, ctx)
            if new is not dec:
                return bodies.quote(new, plus=plus, safe=safe if plus else safe + b"+")
        return None

    def pairs(self, loc: str, data: bytes, ctx: Ctx, safe: bytes) -> bytes:
        """``k=v&k=v`` (query strings, form bodies): rules on the decoded names and values,
        then a safety-net scan of the raw text for what decoding hides or creates (a key
        without a value, '+' that decodes to a space in front of a phone number).

        Only changed pairs are re-encoded; the rest stay byte for byte."""
        clean = self._clean_whole[loc]  # whole strings: never mixed with single values
        if data in clean:
            return data  # this exact string went through unchanged before
        pairs = data.split(b"&")
        items = []
        encoded = []
        for p in pairs:
            k, _eq, v = p.partition(b"=")
            enc = b"%" in v or b"+" in v
            encoded.append(enc)
            name = bodies.unquote(k).decode("utf-8", "replace").lower() if k else ""
            items.append((name, bodies.unquote(v) if enc else v))
        changes = self._items(loc, items, ctx)
        dets = self._dets[loc]
        # Names written encoded ('%', '+') get their own look (the raw scan cannot see them),
        # and a '+' is tried both ways: clients write spaces as '+' but also a literal '+'
        # unencoded ('+44 20...' as '+44%2020...').
        if dets:
            for j, p in enumerate(pairs):
                if changes.get(j) is DROP:
                    continue
                k, eq, v = p.partition(b"=")
                if b"%" in k or b"+" in k:
                    nk = self.decoded_hits(loc, k, dets, ctx, safe)
                    if nk is not None:
                        k = nk
                        pairs[j] = p = k + eq + v
                        changes.setdefault(j, None)
                if b"+" in v and changes.get(j) is None:  # value not already replaced
                    lit = bodies.unquote(v, plus=False)
                    nv = self._replace_hits(loc, lit, dets, ctx)
                    if nv is not lit:
                        pairs[j] = k + eq + bodies.quote(nv, plus=False, safe=safe + b"+")
                        changes[j] = None
        out = data
        if changes:
            parts = []
            for j, p in enumerate(pairs):
                c = changes.get(j, p) if j in changes else p
                if c is p or c is None:
                    parts.append(p)
                elif c is not DROP:
                    k, _eq, _v = p.partition(b"=")
                    if encoded[j] or any(ch not in _QSAFE for ch in c):
                        c = bodies.quote(c, plus=True, safe=safe)
                    parts.append(k + b"=" + c)
            out = b"&".join(parts)
        if dets:
            out = self._replace_hits(loc, out, dets, ctx, skip=ctx.produced)
        if out == data:
            remember_clean(clean, data)
            return data
        return out


def _not_wired(data: bytes, ctx: Ctx) -> bytes:
    raise RuntimeError("FormPart.mismatch is set when the sanitiser's parts are put together")
