"""The three-way comparison's shortcuts against their definitions: the C split of a JSON body
(``replay/_compare.c`` ``split``) against msgspec's, the cut form of a long array from its
first elements (``head``) against the whole one written, and ``ThreeWay.add`` (responses left
unprepared when no answer has production's status; text decoded only when shown; shown bodies
kept) against the plain bookkeeping it replaced, over many generated exchanges: kinds,
encodings, invalid JSON deep inside, big ints, UTF-8 errors, failed answers."""

from __future__ import annotations

import gzip
import hashlib
import random
from typing import Any

import msgspec
import orjson
import pytest
from test_replay_compare_fast import (
    KEYS,
    corrupt,
    odd_value,
    rand_value,
    write_json,
)

import replay.compare as rc
from replay.compare import Rules, ThreeWay, describe_values, endpoint_of, prepare
from replay.model import NO_ANSWER, Request, Response

needs_c = pytest.mark.skipif(rc._csplit is None, reason="replay._compare not built (or pure)")


def _simd_ok(body: bytes) -> bool:
    try:
        rc._simd.parse(body)
        return True
    except Exception:
        return False


def _items(top: Any) -> list[Any]:
    if type(top) is dict:
        return [(k, bytes(v)) for k, v in top.items()]
    return [bytes(v) for v in top]


@needs_c
def test_split_is_msgspecs_on_every_body_simdjson_accepts() -> None:
    rng = random.Random(14)
    seen = 0
    for i in range(6000):
        v = odd_value(rng) if rng.random() < 0.3 else \
            {k: odd_value(rng, 1) for k in rng.sample(KEYS, rng.randrange(0, 9))}
        if rng.random() < 0.2:
            v = [odd_value(rng, 1) for _ in range(rng.randrange(0, 9))]
        body = write_json(v, rng, rng.choice([0.0, 0.2, 0.6]))
        if rng.random() < 0.2:
            body = corrupt(body, rng)
        if body[:1] not in (b"{", b"[") or not _simd_ok(body):
            continue
        seen += 1
        want = rc._split(body)
        got = rc._csplit(body, rc._Raw, orjson.loads)
        assert got is not None, (i, body)
        assert type(got) is type(want) and _items(got) == _items(want), (i, body)
        assert all(type(r) is msgspec.Raw for r in (got.values() if type(got) is dict else got))
    assert seen > 1500


@needs_c
def test_split_of_long_members_and_odd_strings() -> None:
    long = "x" * 3000
    cases = [
        b"{}", b"[]", b"{ }", b"[ ]", b'{"a":1}', b'[1]', b'{"a" : [ 1 , 2 ] , "b":{"x":1}}',
        b'{"a":"q\\"\\\\","b":"\\\\","c":"]}[{"}',
        b'{"\\u00e9":1,"\xc3\xa9":2,"a\\"b":3}',
        ('{"a":' + orjson.dumps([long, {"k": long}, [long]]).decode() + ',"a":2,"b":"'
         + long + '"}').encode(),
        ("[" + ",".join(['"' + "\\\\" * 40 + '"', '"' + "\\\"" * 70 + '"'] * 20) + "]").encode(),
        ("[" + ",".join(["[" * 100 + "]" * 100] * 5) + "]").encode(),
        ('{"a":[' + ",".join(['{"s":"\\"]}","t":[1,2,{"u":"\\\\"}]}'] * 200) + '],"b":1}').encode(),
    ]
    for body in cases:
        assert _simd_ok(body), body
        got = rc._csplit(body, rc._Raw, orjson.loads)
        assert _items(got) == _items(rc._split(body)), body


@needs_c
def test_head_gives_the_cut_form_of_the_whole_array() -> None:
    rng = random.Random(15)
    used = 0
    for i in range(3000):
        n = rng.randrange(0, 60)
        v = [odd_value(rng, 2) for _ in range(n)]
        if rng.random() < 0.1:  # deep somewhere, late: written whole it may be refused
            d: Any = 1
            for _ in range(rng.choice([150, 199, 210, 300])):
                d = [d]
            v.append(d)
        body = write_json(v, rng, rng.choice([0.0, 0.3]))
        if not _simd_ok(body):
            continue
        for limit in (10, 50, 400):
            later = rc._Later(rc._Raw(body))
            fast = rc._show_head(later, limit)
            if fast is not None:
                used += 1
                whole = later.value()
                try:
                    s = orjson.dumps(whole).decode()
                except TypeError:
                    s = repr(whole)
                assert len(s) > limit and fast == s[: limit - 1] + "…", (i, body, limit)
            for kind in ("missing", "extra"):
                args = (later, None) if kind == "missing" else (None, later)
                got = describe_values(kind, *args, limit=limit)
                saved = rc._chead
                rc._chead = None
                try:
                    assert got == describe_values(kind, *args, limit=limit), (i, body)
                finally:
                    rc._chead = saved
    assert used > 200


# ---------------------------------------------------------------------------------------------
# ThreeWay.add against the plain bookkeeping (what it did before its shortcuts)


def _pretty_ref(p: Any, err: str | None = None) -> dict[str, Any]:
    if p is None:
        return {"error": err or NO_ANSWER}
    if p.kind == "json":
        body = orjson.dumps(p.doc, option=orjson.OPT_INDENT_2).decode()
    elif p.kind == "binary":
        body = f"({len(p.body)} bytes, sha256 {hashlib.sha256(p.body).hexdigest()[:16]})"
    else:
        body = p.body.decode("utf-8", "replace")
    d = {"status": p.status, "headers": [[k, v] for k, vs in p.headers.items() for v in vs],
         "body": rc._short(body)}
    if p.grpc is not None:
        d["grpc_status"] = p.grpc
    return d


def _describe_ref(kind: str, va: Any, vb: Any) -> tuple[str, str]:
    if type(va) is rc._Later:
        va = va.value()
    if type(vb) is rc._Later:
        vb = vb.value()
    saved = rc._chead
    rc._chead = None
    try:
        return describe_values(kind, va, vb)
    finally:
        rc._chead = saved


def _add_ref(self: ThreeWay, rid: str, request: Request, primary: Response,
             candidate: Response | str, secondary: Response | str | None = None) -> None:
    ep = endpoint_of(request.method, request.target)
    e = self._ep(ep)
    if self.three_way and not isinstance(secondary, Response):
        e.not_compared += 1
        return
    self.compared += 1
    e.compared += 1
    P = prepare(primary, path=request.path)
    diff = self.comparator.diff
    cd: dict[tuple[str, str], Any] = {}
    C = None
    if isinstance(candidate, Response):
        C = prepare(candidate, like=P, path=request.path)
        for d in diff(P, C):
            cd.setdefault((d[0], d[1]), d)
    else:
        e.candidate_errors += 1
        cd[("response", NO_ANSWER)] = ("response", NO_ANSWER, primary.status, candidate)
    sd: dict[tuple[str, str], Any] = {}
    S = None
    if isinstance(secondary, Response):
        if (C is not None and secondary.status == candidate.status  # type: ignore[union-attr]
                and secondary.body == candidate.body  # type: ignore[union-attr]
                and secondary.trailers == candidate.trailers  # type: ignore[union-attr]
                and rc._alike_headers(candidate.headers, secondary.headers,  # type: ignore
                                      self.rules.headers)):
            S = C
            sd = cd
        else:
            S = prepare(secondary, like=P, path=request.path)
            for d in diff(P, S):
                sd.setdefault((d[0], d[1]), d)
    hit: list[int] = []
    shown = None
    for fk in cd.keys() | sd.keys():
        key = (ep, fk[0], fk[1])
        k = self.keys.get(key)
        if k is None:
            k = self.keys[key] = rc._Key(ep, fk[0], fk[1], ix=len(self.keys))
            k.rule = self.rules.match(ep, fk[0], fk[1])
        if k.rule is not None:
            k.ruled += 1
            continue
        in_c, in_s = fk in cd, fk in sd
        if in_c:
            k.cand += 1
            hit.append(k.ix)
            if not in_s:
                k.cand_only += 1
            if len(k.examples) < self.max_examples:
                d = cd[fk]
                pa, pb = _describe_ref(fk[1], d[2], d[3])
                if shown is None:
                    shown = (f"{request.method} {request.target}", _pretty_ref(P),
                             _pretty_ref(C, candidate if isinstance(candidate, str) else None),
                             _pretty_ref(S) if S is not None else None)
                k.examples.append({"id": rid, "request": shown[0], "primary_value": pa,
                                   "candidate_value": pb, "primary": shown[1],
                                   "candidate": shown[2], "secondary": shown[3]})
        if in_s:
            k.sec += 1
            if not in_c:
                k.sec_only += 1
    if hit:
        sig = tuple(sorted(hit))
        self.patterns[sig] = self.patterns.get(sig, 0) + 1


def _essence(tw: ThreeWay) -> Any:
    st = tw.state()
    names = [(k["endpoint"], k["field"], k["kind"]) for k in st["keys"]]
    keys = sorted(orjson.dumps(k, option=orjson.OPT_SORT_KEYS) for k in st["keys"])
    patterns = sorted((sorted(names[i] for i in sig), n) for sig, n in st["patterns"])
    v = tw.verdict()
    found = [f.to_dict() for f in v.regressions + v.noise + v.undecided]
    return st["compared"], st["endpoints"], keys, patterns, found, v.regression_requests


def _body(rng: random.Random) -> tuple[list[tuple[str, str]], bytes]:
    r = rng.random()
    if r < 0.45:
        v = {k: odd_value(rng, 1) for k in rng.sample(KEYS, rng.randrange(1, 9))} \
            if rng.random() < 0.8 else [rand_value(rng, 1) for _ in range(rng.randrange(12))]
        if rng.random() < 0.3:
            v = {"data": [{k: odd_value(rng, 2) for k in rng.sample(KEYS, 4)}
                          for _ in range(rng.randrange(5, 40))], "page": 1}
        body = write_json(v, rng, rng.choice([0.0, 0.2]))
        if rng.random() < 0.15:
            body = corrupt(body, rng)
        ct = rng.choice(["application/json", "application/problem+json", ""])
    elif r < 0.65:
        body = rng.choice([b"<html><p>caf\xc3\xa9</p></html>", b"<p>caf\xe9</p>", b"plain\n",
                           b"line 1\nline 2\n" * rng.randrange(1, 30), b"\xff\xfe"])
        ct = rng.choice(["text/html; charset=utf-8", "application/javascript", "text/plain", ""])
    elif r < 0.75:
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        ct = rng.choice(["image/png", "application/octet-stream", ""])
    else:
        body, ct = b"", rng.choice(["", "application/json", "text/html"])
    hs = [("Content-Type", ct)] if ct else []
    if body and rng.random() < 0.15:
        body = gzip.compress(body)
        if rng.random() < 0.3:
            body = body[: len(body) // 2]  # broken: the raw bytes are compared
        hs.append(("Content-Encoding", "gzip"))
    hs += [("Date", f"d{rng.randrange(3)}"), ("Server", rng.choice(["a", "b"]))]
    return hs, body


def _answer(rng: random.Random, like: Response) -> Response | str:
    r = rng.random()
    if r < 0.07:
        return rng.choice(["timeout", "connect", "reset"])
    if r < 0.35:  # as production answered (a changed Date aside, at times)
        hs = [(k, v + "x") if k == "Date" and rng.random() < 0.5 else (k, v)
              for k, v in like.headers]
        return Response(like.status, headers=hs, body=bytes(like.body))
    hs, body = _body(rng)
    return Response(rng.choice([200, 200, 200, 404, 500, 201, like.status]), headers=hs,
                    body=body)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("three_way", [True, False])
def test_add_keeps_what_the_plain_bookkeeping_kept(seed: int, three_way: bool) -> None:
    rng = random.Random(100 + seed)
    rules = Rules()
    rules.add(rc.FieldRule("GET /r*", "body:$.page", ()))
    fast = ThreeWay(rules, min_samples=3, examples=rng.choice([1, 3]), three_way=three_way)
    plain = ThreeWay(rules, min_samples=3, examples=fast.max_examples, three_way=three_way)
    rc._SHOWN.clear()
    for i in range(700):
        hs, body = _body(rng)
        prim = Response(rng.choice([200, 200, 200, 404, 500, 204]), headers=hs, body=body)
        cand = _answer(rng, prim)
        r = rng.random()
        if r < 0.3 and isinstance(cand, Response):  # the two shadows alike
            sec: Response | str | None = Response(
                cand.status, headers=[(k, v + "y") if k == "Date" else (k, v)
                                      for k, v in cand.headers], body=bytes(cand.body))
        elif r < 0.4:
            sec = None if rng.random() < 0.5 else "timeout"
        else:
            sec = _answer(rng, prim)
        req = Request("GET", f"/r{rng.randrange(60)}/{i}")
        fast.add(str(i), req, prim, cand, sec)
        _add_ref(plain, str(i), req, prim, cand, sec)
    assert _essence(fast) == _essence(plain)


def test_text_is_decoded_only_when_asked_for_and_as_before() -> None:
    for ct, body, want in [("text/html", b"caf\xc3\xa9", "café"), ("text/html", b"caf\xe9", "café"),
                           ("application/json", b"{not json\xff", "{not json\ufffd"),
                           ("", b"caf\xc3\xa9", "café")]:
        p = prepare(Response(200, headers=[("Content-Type", ct)] if ct else [], body=body))
        assert p.kind == "text" and p.doc == want and p.doc is p.doc
    p = prepare(Response(200, headers=[], body=b"caf\xe9"))
    assert p.kind == "binary" and p.doc is None
