"""The straightforward comparator: the plain recursive walk the fast one in ``replay.compare``
must agree with exactly (same differences, same kinds, same paths). Kept deliberately simple
and unoptimised: it is the specification the property tests hold the fast paths to."""

from __future__ import annotations

from typing import Any

import orjson

from replay.compare import Diff, Rules, decode_body
from replay.model import Response


def _jtype(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (int, float)):
        return "number"
    return "null"


def _seg(k: str) -> str:
    import re

    return f".{k}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", k) else \
        "[" + orjson.dumps(k).decode() + "]"


def _same_multiset(xs: list[Any], ys: list[Any]) -> bool:
    t = type(xs[0])
    if t in (str, int, float) and all(type(v) is t for v in xs + ys):
        return sorted(xs) == sorted(ys)
    canon = lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS)  # noqa: E731
    return sorted(map(canon, xs)) == sorted(map(canon, ys))


def ref_diff_json(a: Any, b: Any, path: str = "$") -> list[Diff]:
    """Equal (Python ``==``) same-typed subtrees are skipped; array elements share ``[*]``."""
    out: list[Diff] = []
    if type(a) is dict and type(b) is dict:
        for k, va in a.items():
            if k not in b:
                out.append((path + _seg(k), "missing", va, None))
                continue
            vb = b[k]
            if type(va) is type(vb) and va == vb:
                continue
            out += ref_diff_json(va, vb, path + _seg(k))
        for k, vb in b.items():
            if k not in a:
                out.append((path + _seg(k), "extra", None, vb))
        return out
    if type(a) is list and type(b) is list:
        if len(a) != len(b):
            return [(path, "array_length", len(a), len(b))]
        at = [i for i in range(len(a)) if a[i] != b[i]]
        if len(at) > 1 and _same_multiset([a[i] for i in at], [b[i] for i in at]):
            return [(path, "array_order", a, b)]
        for i in at:
            out += ref_diff_json(a[i], b[i], path + "[*]")
        return out
    if _jtype(a) != _jtype(b):
        return [(path, "changed_type", a, b)]
    if a != b:
        return [(path, "changed_value", a, b)]
    return []


def _prepare(r: Response) -> tuple[dict[str, list[str]], str, bytes, Any]:
    headers: dict[str, list[str]] = {}
    for k, v in r.headers:
        headers.setdefault(k.lower(), []).append(v)
    body = r.body
    if headers.get("content-encoding") and body:
        body, _ = decode_body(body, headers["content-encoding"])
    ct = headers.get("content-type", [""])[0].lower()
    if not body:
        return headers, "empty", body, None
    if "json" in ct or (not ct and body[:1] in (b"{", b"[")):
        try:
            return headers, "json", body, orjson.loads(body)
        except orjson.JSONDecodeError:
            return headers, "text", body, body.decode("utf-8", "replace")
    texty = ("text/", "xml", "javascript", "x-www-form-urlencoded", "csv", "yaml")
    if any(t in ct for t in texty) or not ct:
        try:
            return headers, "text", body, body.decode("utf-8")
        except UnicodeDecodeError:
            if ct:
                return headers, "text", body, body.decode("latin-1")
    return headers, "binary", body, None


def _cookie_names(values: list[str]) -> list[str]:
    return sorted(v.split("=", 1)[0].strip() for v in values)


def ref_compare(ra: Response, rb: Response, rules: Rules | None = None) -> list[Diff]:
    """Status alone when it differs; else headers by mode, then the body by kind."""
    rules = rules or Rules()
    if ra.status != rb.status:
        return [("status", "changed_value", ra.status, rb.status)]
    (ha, ka, ba, da), (hb, kb, bb, db) = _prepare(ra), _prepare(rb)
    out: list[Diff] = []
    for name, va in ha.items():
        mode = rules.headers.get(name, "exact")
        if mode == "ignore":
            continue
        vb = hb.get(name)
        if vb is None:
            out.append(("header:" + name, "missing", va, None))
        elif (mode == "exact" and va != vb) or \
                (mode == "names" and _cookie_names(va) != _cookie_names(vb)):
            out.append(("header:" + name, "changed_value", va, vb))
    for name, vb in hb.items():
        if name not in ha and rules.headers.get(name, "exact") != "ignore":
            out.append(("header:" + name, "extra", None, vb))
    if ba == bb:
        return out
    if ka != kb:
        return out + [("body", "changed_type", ka, kb)]
    if ka == "json":
        if not (da == db and type(da) is type(db)):
            out += [("body:" + p, k, x, y) for p, k, x, y in ref_diff_json(da, db)]
    elif ka == "text":
        if da != db:
            out.append(("body", "lines_changed", da, db))
    else:
        out.append(("body", "bytes_changed", ba, bb))
    return out
