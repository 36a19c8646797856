"""The fast comparator against the straightforward one (tests/replay/reference_compare.py):
random nested JSON documents and header lists, randomly mutated, must give exactly the same
differences (field, kind, values) whatever fast path the comparator takes."""

from __future__ import annotations

import copy
import gzip
import random
from typing import Any

import orjson
import pytest
from reference_compare import ref_compare, ref_diff_json

from replay.compare import Comparator, Rules, ThreeWay, diff_json, prepare
from replay.model import Request, Response

KEYS = ["id", "name", "price", "tags", "items", "meta", "odd key", "é", "a-b", "ts", "flag"]
SCALARS: list[Any] = [0, 1, 2, 1.0, 2.5, -3, True, False, None, "", "a", "b", "c", "1",
                      "2026-01-01T00:00:00Z", 2**62]


def rand_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth < 4 and r < 0.25:
        return {rng.choice(KEYS): rand_value(rng, depth + 1) for _ in range(rng.randrange(6))}
    if depth < 4 and r < 0.45:
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    return rng.choice(SCALARS)


SWAPS: list[tuple[Any, list[Any]]] = [
    (True, [1, 1.0, "true"]), (False, [0, 0.0, None]), (1, [True, 1.0, "1"]), (0, [False, 0.0]),
    (1.0, [1, True]), (None, [0, False, "", [], {}])]


def swap_type(v: Any, rng: random.Random) -> Any:
    """Values Python calls equal but JSON types differ (``true`` and ``1``), and near misses."""
    for key, opts in SWAPS:
        if type(key) is type(v) and key == v:
            return rng.choice(opts)
    return rng.choice(SCALARS)


def mutate(doc: Any, rng: random.Random, n: int) -> Any:
    """``n`` random edits somewhere in a deep copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for _ in range(n):
        doc = _mutate_once(doc, rng)
    return doc


def _mutate_once(v: Any, rng: random.Random) -> Any:
    t = type(v)
    if t is dict and v and rng.random() < 0.7:
        k = rng.choice(list(v))
        op = rng.random()
        if op < 0.5:
            v[k] = _mutate_once(v[k], rng)
        elif op < 0.65:
            del v[k]
        elif op < 0.8:
            v[rng.choice(KEYS) + "x"] = rand_value(rng, 3)
        else:  # same content, other key order
            items = list(v.items())
            rng.shuffle(items)
            v = dict(items)
        return v
    if t is list and v and rng.random() < 0.7:
        op = rng.random()
        if op < 0.5:
            i = rng.randrange(len(v))
            v[i] = _mutate_once(v[i], rng)
        elif op < 0.7:
            rng.shuffle(v)
        elif op < 0.85:
            v.append(rand_value(rng, 3))
        else:
            v.pop(rng.randrange(len(v)))
        return v
    if rng.random() < 0.5:
        return swap_type(v, rng)
    return rand_value(rng, 3)


def test_random_json_pairs_agree_with_the_plain_walk() -> None:
    rng = random.Random(20261126)
    for i in range(6000):
        a = rand_value(rng)
        if rng.random() < 0.8:
            a = {k: rand_value(rng, 1) for k in rng.sample(KEYS, rng.randrange(1, 9))}
        b = mutate(a, rng, rng.randrange(0, 4))
        assert diff_json(a, b) == ref_diff_json(a, b), (i, a, b)
        ra = Response(200, headers=[("Content-Type", "application/json")], body=orjson.dumps(a))
        rb = Response(200, headers=[("Content-Type", "application/json")], body=orjson.dumps(b))
        assert Comparator().compare(ra, rb) == ref_compare(ra, rb), (i, a, b)


HEADERS = [("Content-Type", "application/json"), ("Date", "Thu, 26 Nov 2026 13:18:21 GMT"),
           ("Server", "app/1.0"), ("X-Request-Id", "x"), ("Cache-Control", "no-store"),
           ("Set-Cookie", "sid=1; Path=/"), ("Set-Cookie", "lang=en"), ("ETag", '"a"'),
           ("Vary", "Accept"), ("Content-Encoding", "gzip")]


def mutate_headers(hs: list[tuple[str, str]], rng: random.Random) -> list[tuple[str, str]]:
    hs = list(hs)
    for _ in range(rng.randrange(4)):
        if not hs:
            break
        i = rng.randrange(len(hs))
        k, v = hs[i]
        op = rng.random()
        if op < 0.3:
            hs[i] = (k, v + "2")
        elif op < 0.45:
            hs[i] = (k.lower() if rng.random() < 0.5 else k.upper(), v)
        elif op < 0.55:
            hs[i] = (k, v.replace("1", "9", 1))
        elif op < 0.7:
            del hs[i]
        elif op < 0.8:
            hs.insert(i, ("Set-Cookie", f"n{rng.randrange(3)}=v"))
        elif op < 0.9:
            j = rng.randrange(len(hs))
            hs[i], hs[j] = hs[j], hs[i]
        else:
            hs.append(("X-New", "1"))
    return hs


@pytest.mark.parametrize("seed", range(3))
def test_random_responses_agree_with_the_plain_comparator(seed: int) -> None:
    rng = random.Random(seed)
    rules = Rules()
    rules.headers["vary"] = "presence"
    for i in range(1500):
        ha = rng.sample(HEADERS, rng.randrange(len(HEADERS) + 1))
        hb = ha if rng.random() < 0.3 else mutate_headers(ha, rng)
        a = {k: rand_value(rng, 1) for k in rng.sample(KEYS, rng.randrange(1, 9))}
        b = a if rng.random() < 0.2 else mutate(a, rng, rng.randrange(0, 3))

        def body(h: list[tuple[str, str]], d: Any) -> bytes:
            raw = orjson.dumps(d) if rng.random() < 0.9 else b"<p>not json</p>"
            gz = any(k.lower() == "content-encoding" for k, _ in h)
            return gzip.compress(raw) if gz else raw

        ra = Response(200, headers=ha, body=body(ha, a))
        rb = Response(200 if rng.random() < 0.95 else 500, headers=hb, body=body(hb, b))
        fast = Comparator(rules).compare(ra, rb)
        assert fast == ref_compare(ra, rb, rules), (i, ha, hb, a, b)
        # Preparing the other side against the first (reusing its parse when the bodies are
        # the same bytes) changes nothing either.
        pa = prepare(ra)
        assert Comparator(rules).diff(pa, prepare(rb, like=pa)) == fast


def test_three_way_reuse_of_the_primary_changes_no_verdict() -> None:
    """The secondary's answer being byte-identical to the primary (so its parse is shared)
    gives the same verdict as a separately built copy."""
    rng = random.Random(7)
    docs = [{k: rand_value(rng, 1) for k in rng.sample(KEYS, 5)} for _ in range(40)]
    tw1, tw2 = ThreeWay(min_samples=5), ThreeWay(min_samples=5)
    hs = [("Content-Type", "application/json")]
    for i, d in enumerate(docs):
        p = Response(200, headers=hs, body=orjson.dumps(d))
        c = Response(200, headers=hs, body=orjson.dumps(mutate(d, rng, 1)))
        req = Request("GET", f"/x/{i}")
        tw1.add(str(i), req, p, c, p)
        tw2.add(str(i), req, p, c, Response(200, headers=list(hs), body=bytes(p.body)))
    v1, v2 = tw1.verdict(), tw2.verdict()
    assert [f.to_dict() for f in v1.regressions + v1.noise + v1.undecided] == \
        [f.to_dict() for f in v2.regressions + v2.noise + v2.undecided]


def test_header_findings_come_in_order_of_first_appearance() -> None:
    """A repeated header whose later value changed still comes before names first seen after
    it, as the per-name dicts of the plain comparator give them."""
    ha = [("Set-Cookie", "a=1"), ("Server", "x"), ("Set-Cookie", "b=1")]
    hb = [("Set-Cookie", "a=1"), ("Server", "y"), ("Set-Cookie", "c=1")]
    ra, rb = Response(200, headers=ha), Response(200, headers=hb)
    got = Comparator().compare(ra, rb)
    assert [d[0] for d in got] == ["header:set-cookie", "header:server"]
    assert got == ref_compare(ra, rb)
