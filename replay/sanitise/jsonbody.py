"""JSON bodies (and JSON found elsewhere: NDJSON, a JSON text in a header, a form field).

Name and path rules apply only when a cheap literal pre-check on the lower-cased body says they
may: in place on the text when the policy allows (``splice``), else by parsing and walking the
document. Then the detectors run over the document text, which is safe because no detector
matches a quote or a backslash, so a replacement can never break the document.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson

from replay.sanitise.cache import SMALL
from replay.sanitise.detectors import Detector
from replay.sanitise.policy import Rule, json_path_matches
from replay.sanitise.values import DROP, ECHO_MIN, JSON_NUM, NUM_START, Ctx, Values

_JSON_START = frozenset(b'{["-0123456789tfn')


class JsonPart:
    """JSON documents."""

    __slots__ = (
        "_always_parse",
        "_bname_cache",
        "_by_path",
        "_echo",
        "_echo_keep",
        "_key_rx",
        "_kv",
        "_mask",
        "_name_cache",
        "_pair_dets",
        "_replace_hits",
        "_rules",
        "_scoped",
        "_splice_ok",
        "_stems",
        "_text_dets",
        "_whole",
        "mismatch",
        "pseudo",
        "report",
    )

    def __init__(self, values: Values) -> None:
        cp = values.compiled
        self.report = values.report
        self.pseudo = values.pseudo
        self._replace_hits = values.replace_hits
        self._echo = values.echo
        self._echo_keep = values.echo_keep
        self._mask = cp.mask
        self._rules = cp.json_rules
        self._whole = cp.whole["json"]
        self._scoped = cp.scoped["json"]
        self._always_parse = cp.json_always_parse
        self._splice_ok = cp.json_splice_ok
        self._by_path = cp.json_by_path
        self._key_rx = cp.json_key_rx
        self._stems = cp.json_stems
        self._text_dets = cp.json_text_dets
        self._pair_dets = cp.json_pair_dets
        self._kv = cp.json_kv
        self._name_cache = values.cache.json_name
        self._bname_cache = values.cache.json_bname
        self.mismatch: Callable[[bytes, Ctx], bytes] = _not_wired
        """``MessagePart.mismatch``; set when the parts are put together."""

    def json(self, data: bytes, ctx: Ctx) -> bytes:
        """A JSON body: name/path rules only when the pre-check says they may apply, then the
        detectors over the document text (safe: no detector matches a quote or backslash)."""
        if not data:
            return data  # e.g. a compressed empty body
        first = data[0]
        if first not in _JSON_START:
            stripped = data.lstrip()
            first = stripped[0] if stripped else 0
        if first not in _JSON_START:
            self.report.fallback("body is not JSON as Content-Type says")
            return self.mismatch(data, ctx)
        backslash = b"\\" in data
        escaped = backslash and (b"\\u" in data or b"\\/" in data)
        text = data
        skip = None
        need_walk = False
        if self._rules:
            if self._always_parse or escaped:
                # name_regex rules need every key; escapes could hide a key from the pattern
                need_walk = True
            elif self._splice_ok and not backslash:
                spliced = self.splice(data, data.lower(), ctx)
                if spliced is None:
                    need_walk = True
                elif spliced is not data:
                    text = spliced
                    skip = ctx.produced  # never pseudonymise what a name rule just wrote
            elif self._key_rx is not None or self._stems:
                lo = data.lower()
                kv = self._kv
                need_walk = (
                    self._key_rx is not None and self._key_rx.search(lo) is not None
                ) or (kv is not None and bool(kv.find(lo)))
        if need_walk or escaped:
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                self.report.fallback("body is not JSON as Content-Type says")
                return self.mismatch(data, ctx)
            changed = False
            if need_walk:
                doc, changed = self.walk(doc, (), ctx)
                skip = ctx.produced  # the detectors must not redo what a name rule wrote
            if changed or escaped:
                text = orjson.dumps(doc)
            if escaped and not changed:
                # Normalising escapes rewrites the document; only keep that if a detector hits.
                new = self._replace_hits(
                    "json", text, self._text_dets, ctx, json_text=True, skip=skip
                )
                if self._pair_dets and (b'\\"' in new or b"=" in new):
                    new = self._replace_hits(
                        "body", new, self._pair_dets, ctx, json_text=True, skip=ctx.produced
                    )
                if new is text:
                    return self._echo_keep(data, ctx)
                return self._echo(new, ctx, True)
        new = self._replace_hits("json", text, self._text_dets, ctx, json_text=True, skip=skip)
        if self._pair_dets and (b'\\"' in new or b"=" in new):
            # JSON or a form inside a string ('{"data": "{\\"password\\": \\"x\\"}"}',
            # '"q": "user=a&pw=x"'): the name=value detectors over the document text
            new = self._replace_hits(
                "body", new, self._pair_dets, ctx, json_text=True, skip=ctx.produced
            )
        if new is data:
            return self._echo_keep(data, ctx)
        return self._echo(new, ctx, True)

    def splice(self, data: bytes, lo: bytes, ctx: Ctx) -> bytes | None:
        """Name rules without parsing: find ``"name":`` with the key pattern and replace the
        string or number after it in place, keeping the document's formatting. Returns None
        (parse and walk instead) for anything less simple: a container, a float, a drop.

        Only used for documents without backslashes, so every quote is a real delimiter and a
        match is a real key (or, at worst, a key that merely ends in the name: masked too).
        Everything is planned first, so a fallback leaves no counts behind."""
        kv = self._kv
        if kv is None:
            return data
        plan: list[tuple[int, int, Rule | None, list[tuple[int, Detector]], bytes, bool]] = []
        cache = self._bname_cache  # by the matched bytes: no decode per member
        n = len(data)
        for bname, vs in kv.find(lo):
            hit = cache.get(bname)
            if hit is None:
                hit = self.rule((), bname.decode("utf-8", "replace"))
                if len(cache) > SMALL:
                    cache.clear()
                cache[bname] = hit
            whole, scoped = hit
            if whole is None and not scoped:
                continue
            if vs >= n:
                return None
            c = data[vs]
            if c == 34:  # '"'
                ve = data.find(b'"', vs + 1) + 1
                if ve == 0:
                    return None
                plan.append((vs, ve, whole, scoped, data[vs + 1 : ve - 1], True))
            elif c in NUM_START:
                nm = JSON_NUM.match(data, vs)
                if nm is None:
                    return None
                raw = nm.group()
                if whole is not None and not raw.lstrip(b"-").isdigit():
                    return None  # a float or exponent: the walk keeps its type
                plan.append((vs, nm.end(), whole, scoped, raw, False))
            elif c in b"tfn":
                continue  # true/false/null: nothing personal
            else:
                return None  # an object or array: the walk handles containers
            if whole is not None and whole.action == "drop":
                return None  # removing a member (and its comma) is the walk's job
        if not plan:
            return data
        out: list[bytes] = []
        pos = 0
        rep = self.report
        for vs, ve, whole, scoped, raw, is_str in plan:
            if whole is not None:
                if whole.action == "mask":
                    new = b'"' + self._mask + b'"'
                    rep.count(whole.name, "json", self._mask)
                    if len(raw) >= ECHO_MIN:
                        ctx.echo[raw] = self._mask
                    ctx.produced.add(self._mask)
                elif not raw:
                    continue
                elif is_str:
                    ps = self.pseudo.pseudonym(whole.fmt, raw)
                    rep.count(whole.name, "json", ps)
                    if len(raw) >= ECHO_MIN:
                        ctx.echo[raw] = ps
                    ctx.produced.add(ps)
                    new = b'"' + ps + b'"'
                else:
                    digits = raw.lstrip(b"-")
                    ps = self.pseudo.pseudonym("digits", digits)
                    if len(ps) > 1 and ps[:1] == b"0":
                        ps = b"1" + ps[1:]
                    rep.count(whole.name, "json", ps)
                    ctx.produced.add(ps)
                    new = raw[: len(raw) - len(digits)] + ps
            else:
                if not is_str:
                    continue
                nb = self._replace_hits("json", raw, scoped, ctx)
                if nb is raw:
                    continue
                new = b'"' + nb + b'"'
            out.append(data[pos:vs])
            out.append(new)
            pos = ve
        if not out:
            return data
        out.append(data[pos:])
        return b"".join(out)

    def rule(self, path: tuple[Any, ...], key: Any) -> tuple[Rule | None, list[Any]]:
        """(first whole-value rule, scoped detector rules) for one JSON member or element."""
        lname = key.lower() if isinstance(key, str) else None
        whole = None
        for r in self._whole:
            if _selects(r, path, lname):
                whole = r
                break
        scoped = [
            (i, r.detector)
            for i, r in self._scoped
            if r.detector is not None and _selects(r, path, lname)
        ]
        return whole, scoped

    def walk(self, node: Any, path: tuple[Any, ...], ctx: Ctx) -> tuple[Any, bool]:
        """Apply JSON name/path rules in one pass. Returns (node, changed)."""
        if isinstance(node, dict):
            out: dict[str, Any] | None = None  # made at the first change: most dicts have none
            by_path = self._by_path
            cache = self._name_cache
            p = path
            for idx, (k, v) in enumerate(node.items()):
                if by_path:
                    p = (*path, k)
                    whole, scoped = self.rule(p, k)
                else:
                    # selection depends on the key alone: cached (documents repeat their keys)
                    hit = cache.get(k)
                    if hit is None:
                        hit = self.rule((), k)
                        if len(cache) > SMALL:
                            cache.clear()
                        cache[k] = hit
                    whole, scoped = hit
                nv: Any = v
                if whole is not None:
                    nv = self.whole(whole, v, ctx)
                elif scoped and isinstance(v, str):
                    b = v.encode("utf-8")
                    nb = self._replace_hits("json", b, scoped, ctx)
                    if nb is not b:
                        nv = nb.decode("utf-8", "replace")
                elif isinstance(v, (dict, list)):
                    nv, c = self.walk(v, p, ctx)
                    if not c:
                        nv = v
                if out is None:
                    if nv is v:
                        continue
                    out = dict(itertools.islice(node.items(), idx))
                if nv is not DROP:
                    out[k] = nv
            return (node, False) if out is None else (out, True)
        if isinstance(node, list):
            changed = False
            items: list[Any] = []
            by_path = self._by_path
            for i, v in enumerate(node):
                p = (*path, i)
                whole, scoped = self.rule(p, None) if by_path else (None, [])
                if whole is not None:
                    nv = self.whole(whole, v, ctx)
                    changed = True
                    if nv is not DROP:
                        items.append(nv)
                    continue
                if scoped and isinstance(v, str):
                    b = v.encode("utf-8")
                    nb = self._replace_hits("json", b, scoped, ctx)
                    if nb is not b:
                        items.append(nb.decode("utf-8", "replace"))
                        changed = True
                        continue
                if isinstance(v, (dict, list)):
                    nv, c = self.walk(v, p, ctx)
                    changed |= c
                    items.append(nv)
                else:
                    items.append(v)
            return (items if changed else node), changed
        return node, False

    def whole(self, rule: Rule, v: Any, ctx: Ctx) -> Any:
        """A whole JSON value under a rule: keeps the JSON type where the action allows."""
        if rule.action == "drop":
            self.report.count(rule.name, "json", None)
            return DROP
        if rule.action == "mask":
            if v is None or isinstance(v, bool):
                return v  # nothing personal in null/true/false (and the splice path agrees)
            self.report.count(rule.name, "json", self._mask)
            if isinstance(v, str) and len(v) >= ECHO_MIN:
                ctx.echo[v.encode("utf-8")] = self._mask
            return self._mask.decode("latin-1")
        return self.pseudonym(rule, v, ctx)

    def pseudonym(self, rule: Rule, v: Any, ctx: Ctx) -> Any:
        """A pseudonym that keeps the JSON type: strings stay strings, ints keep digit count."""
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, str):
            b = v.encode("utf-8")
            if not b:
                return v
            nb = self.pseudo.pseudonym(rule.fmt, b)
            self.report.count(rule.name, "json", nb)
            if len(b) >= ECHO_MIN:
                ctx.echo[b] = nb
            ctx.produced.add(nb)
            return nb.decode("utf-8", "replace")
        if isinstance(v, int):
            s = str(abs(v)).encode()
            ns = self.pseudo.pseudonym("digits", s)
            if len(ns) > 1 and ns[:1] == b"0":
                ns = b"1" + ns[1:]
            self.report.count(rule.name, "json", ns)
            ctx.produced.add(ns)
            out = -int(ns) if v < 0 else int(ns)
            if not -(2**63) <= out < 2**64:
                return ns.decode()  # as many digits, but past what JSON encoders take as int
            return out
        if isinstance(v, float):
            s = repr(v).encode()
            ns = self.pseudo.pseudonym("digits", s)
            self.report.count(rule.name, "json", ns)
            ctx.produced.add(ns)
            try:
                return float(ns)
            except ValueError:
                return 0.0
        if isinstance(v, dict):
            return {k: self.pseudonym(rule, x, ctx) for k, x in v.items()}
        if isinstance(v, list):
            return [self.pseudonym(rule, x, ctx) for x in v]
        return v

    def sniffed(self, data: bytes, ctx: Ctx) -> bytes | None:
        """JSON or NDJSON (one document per line) whatever the Content-Type said, or None."""
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            return self.json(data, ctx)
        if b"\n" not in data:
            return None
        lines = data.split(b"\n")
        out = []
        docs = 0
        for line in lines:
            st = line.strip()
            if st[:1] in (b"{", b"["):
                try:
                    orjson.loads(st)
                except orjson.JSONDecodeError:
                    return None  # not NDJSON: the text scan takes it
                docs += 1
                out.append(line)
            elif st:
                return None
            else:
                out.append(line)
        if docs < 1:
            return None
        new = [self.json(x, ctx) if x.strip() else x for x in out]
        if all(a is b for a, b in zip(new, out, strict=True)):
            return data
        return b"\n".join(new)

    def embedded(self, value: bytes, ctx: Ctx) -> bytes | None:
        """A JSON document inside a form field, a query parameter or a header value: the JSON
        treatment (names, detectors), or None if it is not JSON."""
        try:
            orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        return self.json(value, ctx)


def _selects(r: Rule, path: tuple[Any, ...], lname: str | None) -> bool:
    if lname is not None and r.selects_name(lname):
        return True
    if r.json_paths is not None:
        return any(json_path_matches(steps, path) for steps in r.json_paths)
    return False


def _not_wired(data: bytes, ctx: Ctx) -> bytes:
    raise RuntimeError("JsonPart.mismatch is set when the sanitiser's parts are put together")
