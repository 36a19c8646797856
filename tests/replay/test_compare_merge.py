"""ThreeWay state merges: workers each judging a share of the exchanges, their ``state()``
shipped as JSON and merged, give the verdict one ThreeWay fed everything gives.

The traffic is synthetic but made of real JSON answers: production (primary), a secondary on
production's build and a candidate, both shadows with the usual noise (timestamps, request
ids, an array order that wobbles), the candidate with seeded regressions (one always, one on a
fraction of requests, one rare, one on an endpoint with too few requests to judge) and the odd
failed answer on either side.
"""

from __future__ import annotations

import itertools
import json
import pickle
import random
import zlib
from typing import Any

import orjson
import pytest

from replay.compare import FieldRule, Rules, ThreeWay, Verdict
from replay.model import Request, Response

N = 3000
MIN_SAMPLES = 10
Triple = tuple[str, Request, Response, Response | str, Response | str]


def _stamp(rng: random.Random) -> str:
    return f"2024-05-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}Z"


def _answer(doc: Any, rng: random.Random, noisy: bool, ctype: str = "application/json"
            ) -> Response:
    headers = [("Content-Type", ctype), ("Date", _stamp(rng)),
               ("X-Request-Id", str(rng.randrange(10**12)))]
    if noisy:  # a shadow: its own clock and ids
        headers.append(("X-Served-By", f"shadow-{rng.randrange(3)}"))
    return Response(200, "OK", headers=headers, body=orjson.dumps(doc))


def _shadow(doc: dict[str, Any], rng: random.Random, candidate: bool
           ) -> Response | str:
    """A shadow's answer to ``doc``: its noise, and the candidate's seeded changes."""
    if rng.random() < 0.01:
        return "timeout"
    d = orjson.loads(orjson.dumps(doc))
    if "generated_at" in d:
        d["generated_at"] = _stamp(rng)
    if "trace" in d:
        d["trace"] = f"t{rng.randrange(10**9)}"
    if "results" in d and rng.random() < 0.05:  # both shadows: order wobbles
        d["results"].reverse()
    if candidate:
        if "email" in d and rng.random() < 0.3:
            d["email"] = d["email"].upper()  # regression on 30 %
        if "total" in d:
            d["total"] = str(d["total"])  # regression: always a string now
        if "price" in d and rng.random() < 0.02:
            del d["price"]["currency"]  # rare: 2 %
        if "v" in d:
            d["v"] = 2  # always, but too few requests
        if "took_ms" in d and rng.random() < 0.5:
            d["took_ms"] = 4  # allowed by a rule
    return _answer(d, rng, noisy=True)


def _traffic(seed: int = 42) -> list[Triple]:
    rng = random.Random(seed)
    out: list[Triple] = []
    for i in range(N):
        rid = f"req-{i:05d}"
        r = rng.random()
        if r < 0.35:
            uid = rng.randrange(1, 10**6)
            target = f"/api/users/{uid}"
            doc: dict[str, Any] = {"id": uid, "name": f"user {uid}", "email": f"u{uid}@x.org",
                                   "roles": ["reader", "writer"][: 1 + uid % 2],
                                   "generated_at": "T0", "trace": "t0"}
        elif r < 0.60:
            oid = rng.randrange(1, 10**6)
            target = f"/api/orders/{oid}"
            doc = {"id": oid, "total": round(oid % 997 * 1.25, 2), "currency": "EUR",
                   "lines": [{"sku": f"s{j}", "qty": 1 + (oid + j) % 3} for j in range(3)],
                   "generated_at": "T0"}
        elif r < 0.85:
            target = f"/api/search?q=w{rng.randrange(50)}"
            doc = {"results": [{"id": j, "score": 1.0 / (j + 1)} for j in range(5)],
                   "took_ms": 3, "trace": "t0"}
        elif r < 0.998:
            target = f"/api/items/{rng.randrange(1000)}"
            doc = {"sku": "a", "stock": 3, "price": {"amount": 10, "currency": "EUR"}}
        else:  # a handful of requests: too few to judge
            target = f"/api/rare/{rng.randrange(100)}"
            doc = {"v": 1}
        req = Request("GET", target, headers=[("Host", "shop")])
        primary = _answer(doc, rng, noisy=False)
        candidate = _shadow(doc, rng, True)
        secondary = _shadow(doc, rng, False)
        out.append((rid, req, primary, candidate, secondary))
    return out


TRAFFIC = _traffic()


def _rules() -> Rules:
    rules = Rules()
    rules.add(FieldRule("GET /api/search", "body:$.took_ms", (), "timing"))
    rules.headers["x-served-by"] = "exact"
    return rules


def _one(triples: list[Triple], *, shard: int | str = 0, rules: Rules | None = None
         ) -> ThreeWay:
    tw = ThreeWay(rules or _rules(), min_samples=MIN_SAMPLES, shard=shard)
    for t in triples:
        tw.add(*t)
    return tw


def _split(n: int) -> list[list[Triple]]:
    parts: list[list[Triple]] = [[] for _ in range(n)]
    for t in TRAFFIC:
        parts[zlib.crc32(t[0].encode()) % n].append(t)
    return parts


def _ship(state: dict[str, Any], how: int) -> dict[str, Any]:
    """Through a wire format, as a worker would send it."""
    if how % 3 == 0:
        return orjson.loads(orjson.dumps(state))
    if how % 3 == 1:
        return json.loads(json.dumps(state))
    return pickle.loads(pickle.dumps(state))


def _summary(v: Verdict) -> Any:
    def strip(f: Any) -> dict[str, Any]:
        d = f.to_dict()
        n = len(d.pop("examples"))
        assert len(d.pop("example_ids")) == n
        return {**d, "n_examples": n}

    return ({name: [strip(f) for f in getattr(v, name)]
             for name in ("regressions", "noise", "undecided")},
            v.endpoints, v.compared, v.regression_requests, v.three_way, v.test)


@pytest.fixture(scope="module")
def whole() -> ThreeWay:
    return _one(TRAFFIC)


def test_the_synthetic_run_has_every_kind_of_finding(whole: ThreeWay) -> None:
    v = whole.verdict()
    regs = {(f.endpoint, f.field, f.kind) for f in v.regressions}
    assert ("GET /api/users/{id}", "body:$.email", "changed_value") in regs
    assert ("GET /api/orders/{id}", "body:$.total", "changed_type") in regs
    noise = {(f.endpoint, f.field, f.source) for f in v.noise}
    assert ("GET /api/orders/{id}", "body:$.generated_at", "secondary") in noise
    assert ("GET /api/search", "body:$.took_ms", "rules") in noise
    assert ("GET /api/search", "header:x-served-by", "secondary") in noise
    assert {f.endpoint for f in v.undecided} >= {"GET /api/rare/{id}"}
    assert any(f.field == "response" for f in v.regressions + v.noise + v.undecided)
    assert 0 < v.regression_requests < v.compared < N
    assert any(e["not_compared"] for e in v.endpoints)
    assert any(e["candidate_errors"] for e in v.endpoints)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_merged_shards_give_the_single_verdict(whole: ThreeWay, n: int) -> None:
    parts = _split(n)
    assert all(len(p) > N // (2 * n) for p in parts)
    states = [_ship(_one(p, shard=f"w{i}").state(), i + n) for i, p in enumerate(parts)]
    merged = ThreeWay.merged(states, rules=_rules(), min_samples=MIN_SAMPLES)
    assert _summary(merged.verdict()) == _summary(whole.verdict())
    for k in merged.keys.values():
        assert len(k.examples) <= merged.max_examples
    # Merging into an existing (empty) instance is the same thing.
    tw = ThreeWay(_rules(), min_samples=MIN_SAMPLES)
    for st in states:
        tw.merge(st)
    assert _summary(tw.verdict()) == _summary(whole.verdict())


def test_merge_order_and_grouping_do_not_matter(whole: ThreeWay) -> None:
    states = [_ship(_one(p, shard=i).state(), i) for i, p in enumerate(_split(3))]
    want = _summary(whole.verdict())
    for order in itertools.permutations(states):
        got = ThreeWay.merged(order, rules=_rules(), min_samples=MIN_SAMPLES)
        assert _summary(got.verdict()) == want
    # (a + b) + c and a + (b + c): a merged state merges again.
    a, b, c = states
    ab = _ship(ThreeWay.merged([a, b], rules=_rules()).state(), 0)
    bc = _ship(ThreeWay.merged([b, c], rules=_rules()).state(), 1)
    for grouped in ([ab, c], [a, bc], [c, ab]):
        got = ThreeWay.merged(grouped, rules=_rules(), min_samples=MIN_SAMPLES)
        assert _summary(got.verdict()) == want


def test_an_empty_state_is_the_identity(whole: ThreeWay) -> None:
    st = _ship(whole.state(), 0)
    assert ThreeWay.merged([st], rules=_rules()).state() == st
    tw = ThreeWay.merged([st], rules=_rules(), min_samples=MIN_SAMPLES)
    before = tw.state()
    tw.merge(ThreeWay(_rules()).state())
    tw.merge(_ship(ThreeWay().state(), 1))
    tw.merge({})
    assert tw.state() == before
    assert _summary(tw.verdict()) == _summary(whole.verdict())
    empty = ThreeWay.merged([ThreeWay().state(), None, {}], rules=_rules())
    assert empty.state() == ThreeWay().state()
    v = empty.verdict()
    assert (v.regressions, v.noise, v.undecided, v.compared, v.regression_requests) == \
        ([], [], [], 0, 0)


def test_state_is_plain_data(whole: ThreeWay) -> None:
    st = whole.state()

    def plain(x: Any) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(map(plain, x))
        return x is None or isinstance(x, (str, int, float))

    assert plain(st)
    assert orjson.loads(orjson.dumps(st)) == st == json.loads(json.dumps(st))
    assert st["compared"] == whole.compared
    # Every compared request with a candidate difference is in one pattern, and the patterns
    # are what recurs (a handful per endpoint), not one per request.
    assert sum(n for _, n in st["patterns"]) <= whole.compared
    assert len(st["patterns"]) < 50


def test_rules_are_the_receivers(whole: ThreeWay) -> None:
    """Workers without the rule, merged by a parent with it, count what the parent's own
    single run would (the candidate's and secondary's counts folded into ``ruled``); a key only
    a worker's rules covered stays covered."""
    states = [_ship(_one(p, rules=Rules()).state(), i) for i, p in enumerate(_split(2))]
    merged = ThreeWay.merged(states, rules=_rules(), min_samples=MIN_SAMPLES)
    assert _summary(merged.verdict()) == _summary(whole.verdict())

    worker_rules = _rules()
    worker_rules.add(FieldRule("GET /api/orders/{id}", "body:$.total", (), "worker's"))
    parts = _split(2)
    states = [_ship(_one(p, rules=worker_rules).state(), i) for i, p in enumerate(parts)]
    merged = ThreeWay.merged(states, rules=_rules(), min_samples=MIN_SAMPLES)
    v = merged.verdict()
    single = _one(TRAFFIC, rules=worker_rules).verdict()
    assert _summary(v)[1:] == _summary(single)[1:]
    (f,) = [f for f in v.noise if f.field == "body:$.total"]
    assert f.source == "rules" and f.candidate_diffs == sum(
        1 for t in TRAFFIC if t[1].target.startswith("/api/orders/") and
        isinstance(t[3], Response) and isinstance(t[4], Response))
    assert not any(f.field == "body:$.total" for f in v.regressions)


def test_two_way_and_three_way_states_do_not_mix() -> None:
    with pytest.raises(ValueError, match="two-way"):
        ThreeWay().merge(ThreeWay(three_way=False).state())
    with pytest.raises(ValueError, match="version"):
        ThreeWay().merge({**ThreeWay().state(), "version": 99})
