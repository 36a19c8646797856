"""What every location shares: applying a rule to a value, and scanning text for detector hits.

``Values`` holds the compiled policy, the caches, the report and the pseudonymiser, and does
the work that is the same wherever a value sits: pick the rules for a name (``select``),
replace a whole value (``whole_value``), replace detector hits in a text (``replace_hits``),
sanitise a list of named values (``items``: headers, cookies, query and form fields) and chase
originals already replaced through later text (``echo``). The per-location parts (``headers``,
``url``, ``form``, ``jsonbody``, ``multipart``, ``message``) call it through bound methods.

Also here: ``Ctx``, the per-exchange state, and the small helpers the parts share.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from replay import _native
from replay.sanitise import bodies
from replay.sanitise.cache import CLEAN_ENTRIES, CLEAN_MAX, SMALL, Caches, remember_clean
from replay.sanitise.compiled import CompiledPolicy
from replay.sanitise.detectors import PAIR_DETECTORS, Detector, scan
from replay.sanitise.policy import Rule
from replay.sanitise.pseudonym import Pseudonymiser
from replay.sanitise.report import SanitiseReport

ECHO_MIN = 6
"""Values shorter than this are not chased through the rest of the exchange (too many false
replacements of ordinary short strings)."""


class Ctx:
    """Per-exchange state: originals already replaced, to be chased through later text."""

    __slots__ = ("dropped", "echo", "produced")

    def __init__(self) -> None:
        self.dropped: list[dict[str, Any]] | None = None
        """Bodies removed because nothing could look inside them: length and keyed hash."""
        self.echo: dict[bytes, bytes] = {}
        self.produced: set[bytes] = set()
        """Replacements written so far: a second, safety-net scan of the same text must not
        pseudonymise a pseudonym (which passes the same validators by design)."""


class Drop(Exception):
    """Raised inside body handling when policy says a mismatching body drops the exchange."""


DROP = object()
"""An item's new value when the item goes (``Values.items``)."""


class Values:
    """Rules applied to values, the same at every location (see the module's doc)."""

    __slots__ = (
        "_clean",
        "_dets",
        "_json_rules",
        "_mask",
        "_rules",
        "_scoped",
        "_select_cache",
        "_whole",
        "cache",
        "compiled",
        "embedded_json",
        "pseudo",
        "report",
    )

    def __init__(
        self, cp: CompiledPolicy, cache: Caches, report: SanitiseReport, pseudo: Pseudonymiser
    ) -> None:
        self.compiled = cp
        self.cache = cache
        self.report = report
        self.pseudo = pseudo
        # bound once: read on every value
        self._rules = cp.rules
        self._mask = cp.mask
        self._whole = cp.whole
        self._scoped = cp.scoped
        self._dets = cp.dets
        self._json_rules = cp.json_rules
        self._select_cache = cache.select
        self._clean = cache.clean
        self.embedded_json: Callable[[bytes, Ctx], bytes | None] = _not_wired
        """``JsonPart.embedded`` (a JSON document inside a header, query or form value); set
        when the parts are put together (``Sanitiser``)."""

    # -- selection -------------------------------------------------------------------------------

    def select(self, loc: str, lname: str) -> tuple[Rule | None, list[tuple[int, Detector]]]:
        """(first whole-value rule selecting this name, scoped detectors for it), cached."""
        ck = (loc, lname)
        hit = self._select_cache.get(ck)
        if hit is not None:
            return hit
        whole = None
        for r in self._whole[loc]:
            if not r.has_selector or r.selects_name(lname):
                whole = r
                break
        scoped = [
            (i, r.detector)
            for i, r in self._scoped[loc]
            if r.detector is not None and r.selects_name(lname)
        ]
        res = (whole, scoped)
        if len(self._select_cache) > SMALL:
            self._select_cache.clear()
        self._select_cache[ck] = res
        return res

    # -- actions ---------------------------------------------------------------------------------

    def whole_value(self, rule: Rule, loc: str, value: bytes, ctx: Ctx) -> bytes | None:
        """Apply a whole-value rule; None means drop the item."""
        if rule.action == "drop":
            self.report.count(rule.name, loc, None)
            new = None
        elif rule.action == "mask":
            new = self._mask
            self.report.count(rule.name, loc, new)
        else:
            if rule.fmt == "authorization":
                new = self.authorization(value)
            else:
                new = self.pseudo.pseudonym(rule.fmt, value)
            self.report.count(rule.name, loc, new)
        if len(value) >= ECHO_MIN:
            ctx.echo[value] = self._mask if new is None else new
        if new:
            ctx.produced.add(new)
        return new

    def authorization(self, value: bytes) -> bytes:
        """Scheme-aware: keep the scheme word, pseudonymise the credentials in their format."""
        scheme, sp, cred = value.partition(b" ")
        if not sp:
            return self.pseudo.pseudonym("token", value)
        ls = scheme.lower()
        cred = cred.strip()
        if ls == b"basic":
            new = self.pseudo.pseudonym("basic", cred)
        elif ls == b"bearer":
            new = self.pseudo.pseudonym("bearer", cred)
        else:
            new = self.pseudo.pseudonym("token", cred)
        return scheme + b" " + new

    def replace_hits(
        self,
        loc: str,
        text: bytes,
        dets: list[tuple[int, Detector]],
        ctx: Ctx,
        json_text: bool = False,
        skip: set[bytes] | None = None,
    ) -> bytes:
        """Scan ``text`` with ``dets`` and apply each hit's rule; returns ``text`` if no hit.

        With ``json_text`` the text is a JSON document: a hit outside any string (a card number
        written as a bare number) must stay valid JSON, so a mask becomes a quoted string, a drop
        becomes ``null`` and a pseudonym that is not a valid number is quoted."""
        if not dets or not text:
            return text
        hits = scan(text, dets)
        if not hits:
            return text
        out = []
        pos = 0
        rules = self._rules
        rep = self.report
        strings: list[tuple[int, int]] | None = None
        produced = ctx.produced
        has_bs = json_text and b"\\" in text
        for s, e, tag, det in hits:
            rule = rules[tag]
            if has_bs and s > 0:
                # the hit starts inside a JSON escape ('\njohn@x.com', '\u001fkey'): keep the
                # escape whole, or the replacement could write an invalid one
                s = after_escape(text, s)
                if s >= e or s < pos:
                    continue
            if json_text and (det.name in PAIR_DETECTORS or det.name in _IN_STRINGS):
                # a name=value found in a JSON text is edited only inside a string ('"q":
                # "pw=x"', JSON in a string); outside one it is the document's own structure
                if strings is None:
                    strings = [m.span() for m in _JSON_STRING.finditer(text)]
                if not any(a < s and e < b for a, b in strings):
                    continue
            if s < pos:
                continue  # inside a number token a previous hit already replaced
            orig = text[s:e]
            if skip is not None and already_done(orig, skip):
                continue
            if rule.action == "drop":
                new = b""
                rep.count(rule.name, loc, None)
            elif rule.action == "mask":
                new = self._mask
                rep.count(rule.name, loc, new)
            else:
                new = self.pseudo.pseudonym(det.fmt if rule.fmt == "auto" else rule.fmt, orig)
                rep.count(rule.name, loc, new)
            # Only a number-shaped hit can stand outside a string in valid JSON.
            if (
                json_text
                and orig[0] in NUM_START
                and JSON_NUM.fullmatch(orig)
                and (rule.action != "pseudonym" or not JSON_NUM.fullmatch(new))
            ):
                if strings is None:
                    strings = [m.span() for m in _JSON_STRING.finditer(text)]
                if not any(a < s and e < b for a, b in strings):
                    new = b"null" if rule.action == "drop" else b'"' + new + b'"'
                    # the whole number token goes: '-"0123"' or '"0123".5' is not JSON
                    while s > pos and text[s - 1] in _NUM_CHARS:
                        s -= 1
                    while e < len(text) and text[e] in _NUM_CHARS:
                        e += 1
            # (no echo entry: the same detector finds the same value wherever it recurs)
            if new:
                produced.add(new)
            out.append(text[pos:s])
            out.append(new)
            pos = e
        if not out:
            return text  # every hit was skipped
        out.append(text[pos:])
        return b"".join(out)

    def items(self, loc: str, items: list[tuple[str, bytes]], ctx: Ctx) -> dict[int, Any]:
        """Sanitise named values at ``loc``. Returns {index: new bytes or DROP} for changes.

        Values no rule selects by name are scanned as one joined blob; only a blob with a hit
        is rescanned value by value (most exchanges have no hit at all)."""
        out: dict[int, Any] = {}
        pending: list[int] = []
        for i, (lname, v) in enumerate(items):
            if not v:
                continue
            whole, scoped = self.select(loc, lname)
            if whole is not None:
                new = self.whole_value(whole, loc, v, ctx)
                out[i] = DROP if new is None else new
            elif scoped:
                new = self.replace_hits(loc, v, scoped + self._dets[loc], ctx)
                if new is not v:
                    out[i] = new
            elif v[0] in b"{[" and self._json_rules:
                new = self.embedded_json(v, ctx)
                if new is None:
                    pending.append(i)
                else:
                    new = self.replace_hits(loc, new, self._dets[loc], ctx, skip=ctx.produced)
                    if new != v:
                        out[i] = new
            else:
                pending.append(i)
        dets = self._dets[loc]
        if not dets or not pending:
            return out
        clean = self._clean[loc]
        pending = [i for i in pending if items[i][1] not in clean]
        if not pending:
            return out
        if len(pending) == 1:
            i = pending[0]
            v = items[i][1]
            new = self.replace_hits(loc, v, dets, ctx)
            if new is not v:
                out[i] = new
            else:
                remember_clean(clean, v)
            return out
        blob = b"\n".join(items[i][1] for i in pending)
        hits = scan(blob, dets)
        if not hits:
            for i in pending:
                remember_clean(clean, items[i][1])
            return out
        starts = [h[0] for h in hits]
        pos = 0
        k = 0
        for i in pending:
            end = pos + len(items[i][1])
            while k < len(starts) and starts[k] < pos:
                k += 1
            if k < len(starts) and starts[k] <= end:
                v = items[i][1]
                new = self.replace_hits(loc, v, dets, ctx)
                if new is not v:
                    out[i] = new
            pos = end + 1
        return out

    # -- echoes ----------------------------------------------------------------------------------

    def echo(self, data: bytes, ctx: Ctx, json_text: bool = False) -> bytes:
        """Replace originals seen earlier in this exchange (e.g. a cookie echoed in a body).

        In a JSON text an original holding a backslash or a quote is not replaced: it could
        match across an escape and break the document (its JSON form is found by name)."""
        if not ctx.echo:
            return data
        has = _contains
        for orig, new in ctx.echo.items():
            if has(data, orig):
                if json_text and (b"\\" in orig or b'"' in orig):
                    continue
                data = data.replace(orig, new)
                self.report.count("echo", "body", new)
        return data

    def echo_keep(self, data: bytes, ctx: Ctx) -> bytes:
        """``echo`` (in a JSON text) that returns the very same object when nothing changed."""
        if not ctx.echo:
            return data
        new = self.echo(data, ctx, True)
        return data if new == data else new


def _not_wired(value: bytes, ctx: Ctx) -> bytes | None:
    raise RuntimeError("Values.embedded_json is set when the sanitiser's parts are put together")


def remember_clean_target(clean: set[str], target: str) -> None:
    """``remember_clean`` for request targets (str)."""
    if len(target) <= CLEAN_MAX:
        if len(clean) >= CLEAN_ENTRIES:
            clean.clear()
        clean.add(target)


_contains: Callable[[Any, Any], bool] = (
    _native.load_pyx("replay.sanitise._keyscan", "contains") or operator.contains)
"""``contains(data, orig)``: ``orig in data`` (memmem when compiled: CPython's search skips
poorly for a token of many distinct bytes in a JSON body, ~1 ns a byte)."""

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
NUM_START = frozenset(b"-0123456789")
_NUM_CHARS = frozenset(b"-+.eE0123456789")
_IN_STRINGS = frozenset({"pem", "high_entropy"})
"""Detectors whose hits in a JSON text count only inside strings (key material, tokens: never
the document's own numbers and literals)."""
JSON_NUM = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def after_escape(text: bytes, s: int) -> int:
    """``s`` moved past a JSON escape it sits inside (the letter after a backslash, or the
    hex digits of a backslash-u escape); ``s`` itself if it is not inside one."""
    j = text.rfind(b"\\", max(0, s - 5), s)
    if j < 0:
        return s
    k = j
    while k > 0 and text[k - 1] == 92:
        k -= 1
    if (j - k) % 2 == 1:
        return s  # that backslash is itself escaped
    end = j + 6 if j + 1 < len(text) and text[j + 1] == 117 else j + 2
    return end if end > s else s


def already_done(hit: bytes, produced: set[bytes]) -> bool:
    """Whether a hit of a second (safety-net) scan is something this exchange already wrote:
    a replacement itself, part of one (a phone pseudonym's digits can look like a card), or
    one in its URL-encoded form ('a%2Bb@x.com' for 'a+b@x.com')."""
    if hit in produced:
        return True
    forms = [hit]
    if b"%" in hit or b"+" in hit:
        forms += [bodies.unquote(hit, plus=True), bodies.unquote(hit, plus=False)]
    for p in produced:
        lp = len(p)
        if lp < 6:
            continue
        for f in forms:
            if len(f) <= lp:
                if f in p:
                    return True  # part of a pseudonym: the text is the pseudonym's either way
                continue
            i = f.find(p)
            if (
                i >= 0
                and (i == 0 or f[i - 1] == 32)
                and (i + len(p) == len(f) or f[i + len(p)] == 32)
            ):
                return True  # the pseudonym as a whole word ('call+x%2By@z.com' decoded)
    return False


def enc(s: str) -> bytes:
    """A header or URL str as bytes: latin-1 (1:1), or UTF-8 when it does not fit."""
    try:
        return s.encode("latin-1")
    except UnicodeEncodeError:
        return s.encode("utf-8")


def dec(b: bytes, like: str) -> str:
    """Back to str the way ``enc`` went (latin-1 unless the original needed UTF-8)."""
    try:
        like.encode("latin-1")
    except UnicodeEncodeError:
        return b.decode("utf-8", "replace")
    return b.decode("latin-1")
