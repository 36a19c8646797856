"""The comparator and the three-way judgement, sans-I/O: exact differences by kind, decoding,
header rules, endpoint templates, the statistical test's behaviour, and rules files."""

from __future__ import annotations

import gzip
import random
import zlib
from pathlib import Path

import brotli
import orjson
import pytest

from replay.compare import (
    Comparator,
    FieldRule,
    Rules,
    ThreeWay,
    decode_body,
    diff_json,
    endpoint_of,
    prepare,
)
from replay.errors import InputError
from replay.model import Request, Response
from replay.stats import binom_sf_half, holm


def kinds(a: object, b: object) -> set[tuple[str, str]]:
    return {(p, k) for p, k, _, _ in diff_json(a, b)}


def test_json_differences_by_path_and_kind() -> None:
    a = {"id": 1, "name": "x", "age": 30, "tags": ["a", "b", "c"], "items": [{"p": 1}, {"p": 2}],
         "gone": True, "nested": {"deep": {"v": 1.5}}, "odd key": 1, "n": None}
    b = {"id": 1, "name": "y", "age": "30", "tags": ["c", "a", "b"], "items": [{"p": 1}, {"p": 3}],
         "nested": {"deep": {"v": 2.5}}, "new": 1, "odd key": 2, "n": None}
    assert kinds(a, b) == {
        ("$.name", "changed_value"),
        ("$.age", "changed_type"),
        ("$.tags", "array_order"),
        ("$.items[*].p", "changed_value"),
        ("$.gone", "missing"),
        ("$.nested.deep.v", "changed_value"),
        ("$.new", "extra"),
        ('$["odd key"]', "changed_value"),
    }
    assert kinds([1, 2, 3], [1, 2, 3, 4]) == {("$", "array_length")}
    assert kinds({"a": 1}, {"a": 1.0}) == set()  # JSON has one number type
    assert kinds({"a": True}, {"a": 2}) == {("$.a", "changed_type")}
    assert kinds({"a": None}, {"a": 0}) == {("$.a", "changed_type")}
    assert kinds({"a": [1, {"b": 1}]}, {"a": [1, {"b": 1}]}) == set()


def test_content_encodings_are_decoded_first() -> None:
    doc = b'{"a": 1}'
    assert decode_body(gzip.compress(doc), ["gzip"]) == (doc, None)
    assert decode_body(zlib.compress(doc), ["deflate"]) == (doc, None)
    raw = zlib.compressobj(wbits=-15)
    assert decode_body(raw.compress(doc) + raw.flush(), ["deflate"]) == (doc, None)
    assert decode_body(brotli.compress(doc), ["br"]) == (doc, None)
    assert decode_body(brotli.compress(gzip.compress(doc)), ["gzip, br"]) == (doc, None)
    body, err = decode_body(b"not gzip", ["gzip"])
    assert body == b"not gzip" and "broken gzip" in err
    # Same JSON, one gzip-encoded and one brotli-encoded: no body difference.
    r1 = Response(200, headers=[("Content-Type", "application/json"),
                                ("Content-Encoding", "gzip")], body=gzip.compress(doc))
    r2 = Response(200, headers=[("Content-Type", "application/json"),
                                ("Content-Encoding", "br")], body=brotli.compress(doc))
    diffs = Comparator().compare(r1, r2)
    assert [d[:2] for d in diffs] == [("header:content-encoding", "changed_value")]


def test_prepare_kinds() -> None:
    assert prepare(Response(200, headers=[("Content-Type", "application/problem+json")],
                            body=b"[1]")).kind == "json"
    assert prepare(Response(200, body=b'{"sniffed": 1}')).kind == "json"
    assert prepare(Response(200, headers=[("Content-Type", "text/html")], body=b"<p>")).kind \
        == "text"
    assert prepare(Response(200, headers=[("Content-Type", "image/png")],
                            body=b"\x89PNG")).kind == "binary"
    assert prepare(Response(204)).kind == "empty"
    # Says JSON, is not: compared as text.
    assert prepare(Response(200, headers=[("Content-Type", "application/json")],
                            body=b"oops")).kind == "text"


def test_headers_by_rules_not_silence() -> None:
    base = [("Content-Type", "application/json"), ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("ETag", '"abc"'), ("Set-Cookie", "sid=1; Path=/"), ("Server", "app/1.0"),
            ("Connection", "keep-alive")]
    other = [("content-type", "application/json"), ("Date", "Tue, 02 Jan 2024 00:00:00 GMT"),
             ("ETag", '"def"'), ("Set-Cookie", "sid=2; Path=/"), ("Server", "app/1.1")]
    c = Comparator()
    d = {x[:2] for x in c.compare(Response(200, headers=base), Response(200, headers=other))}
    assert d == {("header:server", "changed_value")}
    # Rules are data: make Date exact and the ETag vanish, and they are reported.
    rules = Rules()
    rules.headers["date"] = "exact"
    d = {x[:2] for x in Comparator(rules).compare(
        Response(200, headers=base),
        Response(200, headers=[h for h in other if h[0] != "ETag"] + [("Set-Cookie", "x=1")]))}
    assert d == {("header:date", "changed_value"), ("header:server", "changed_value"),
                 ("header:etag", "missing"), ("header:set-cookie", "changed_value")}


def test_bodies_by_type_and_status_first() -> None:
    c = Comparator()
    html = [("Content-Type", "text/html")]
    d = c.compare(Response(200, headers=html, body=b"<p>a</p>\n<p>b</p>\n"),
                  Response(200, headers=html, body=b"<p>a</p>\n<p>c</p>\n"))
    assert [x[:2] for x in d] == [("body", "lines_changed")]
    png = [("Content-Type", "image/png")]
    d = c.compare(Response(200, headers=png, body=b"\x89PNG1"),
                  Response(200, headers=png, body=b"\x89PNG2"))
    assert [x[:2] for x in d] == [("body", "bytes_changed")]
    d = c.compare(Response(200, headers=[("Content-Type", "application/json")], body=b"{}"),
                  Response(200, headers=html, body=b"<p>"))
    assert ("body", "changed_type") in {x[:2] for x in d}
    # A different status is the one finding; the error page's body is its consequence.
    d = c.compare(Response(200, body=b'{"a": 1}'), Response(500, body=b'{"error": "x"}'))
    assert [x[:2] for x in d] == [("status", "changed_value")]


def test_endpoint_templates() -> None:
    assert endpoint_of("get", "/users/123/orders?page=2") == "GET /users/{id}/orders"
    assert endpoint_of("GET", "/o/8b0d3c4e-1f2a-4b5c-9d8e-7f6a5b4c3d2e") == "GET /o/{uuid}"
    assert endpoint_of("GET", "/blob/9f86d081884c7d659a2feaa0c55ad015") == "GET /blob/{hash}"
    assert endpoint_of("GET", "/day/2024-05-01") == "GET /day/{date}"
    assert endpoint_of("GET", "http://h.example/users/7") == "GET /users/{id}"
    assert endpoint_of("GET", "/api/v2/health") == "GET /api/v2/health"
    assert endpoint_of("GET", "/feed/deadbeef") == "GET /feed/deadbeef"  # a word, not a hash
    # ids inside a segment: product slugs and fingerprinted assets group together
    assert endpoint_of("GET", "/products/red-shoe-966070") == "GET /products/{slug}"
    assert endpoint_of("GET", "/products/blue-coat-12") == "GET /products/blue-coat-12"
    assert endpoint_of("GET", "/static/app.5c91361f.css") == "GET /static/app.{hash}.css"
    assert endpoint_of("GET", "/img/301120_640.png") == "GET /img/{id}_{id}.png"
    assert endpoint_of("GET", "/files/report_2024.pdf") == "GET /files/report_{id}.pdf"
    assert endpoint_of("GET", "/api/v1.2/items") == "GET /api/v1.2/items"  # short numbers stay
    assert endpoint_of("GET", "/p/caf%C3%A9-966070") == "GET /p/{slug}"  # an encoded word
    assert endpoint_of("GET", "/p/%41!!-966070") == "GET /p/%41!!-{id}"  # not a word


def test_exact_binomial_and_holm() -> None:
    assert binom_sf_half(0, 10) == 1.0
    assert binom_sf_half(10, 10) == pytest.approx(1 / 1024)
    assert binom_sf_half(8, 10) == pytest.approx((45 + 10 + 1) / 1024)
    assert binom_sf_half(2000, 3000) < 1e-60
    assert binom_sf_half(1500, 3000) == pytest.approx(0.5, abs=0.01)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


JSON = [("Content-Type", "application/json")]


def _resp(doc: dict, status: int = 200) -> Response:
    return Response(status, headers=JSON, body=orjson.dumps(doc))


def _feed(tw: ThreeWay, n: int, cand_diff, sec_diff, path: str = "/thing/1") -> None:
    """n requests; cand_diff(i)/sec_diff(i) say whether field 'f' differs from primary."""
    for i in range(n):
        primary = {"f": 0, "same": i}
        tw.add(f"r{i}", Request("GET", path), _resp(primary),
               _resp({"f": 1 if cand_diff(i) else 0, "same": i}),
               _resp({"f": 1 if sec_diff(i) else 0, "same": i}))


def _verdicts(tw: ThreeWay) -> dict[str, list[tuple[str, str]]]:
    v = tw.verdict()
    return {name: [(f.field, f.kind) for f in getattr(v, name)]
            for name in ("regressions", "noise", "undecided")}


def test_deterministic_regression_needs_the_minimum_sample() -> None:
    tw = ThreeWay()
    _feed(tw, 20, lambda i: True, lambda i: False)
    assert _verdicts(tw)["regressions"] == [("body:$.f", "changed_value")]
    tw = ThreeWay()
    _feed(tw, 5, lambda i: True, lambda i: False)
    v = _verdicts(tw)
    assert v["regressions"] == [] and v["undecided"] == [("body:$.f", "changed_value")]


def test_shared_difference_is_noise_even_in_a_small_sample() -> None:
    # Below the minimum sample the test gives no verdict, but a difference the secondary shows
    # on every request where the candidate does is not the candidate's doing at all.
    tw = ThreeWay()
    _feed(tw, 3, lambda i: True, lambda i: True)
    assert _verdicts(tw) == {"regressions": [], "noise": [("body:$.f", "changed_value")],
                             "undecided": []}


def test_noise_in_every_build_is_noise() -> None:
    rng = random.Random(3)
    flips = [(rng.random() < 0.5, rng.random() < 0.5) for _ in range(400)]
    tw = ThreeWay()
    _feed(tw, 400, lambda i: flips[i][0], lambda i: flips[i][1])
    v = _verdicts(tw)
    assert v["regressions"] == [] and v["noise"] == [("body:$.f", "changed_value")]
    # Equally noisy but not on the same requests: still no regression.
    tw = ThreeWay()
    _feed(tw, 100, lambda i: 0 <= i < 35, lambda i: 10 <= i < 45)
    assert _verdicts(tw)["regressions"] == []


def test_intermittent_regression_is_found_without_a_fixed_cutoff() -> None:
    # The candidate breaks 1 request in 8; the secondary never differs: significant.
    tw = ThreeWay()
    _feed(tw, 200, lambda i: i % 8 == 0, lambda i: False)
    v = tw.verdict()
    assert [(f.field, f.kind) for f in v.regressions] == [("body:$.f", "changed_value")]
    assert v.regressions[0].candidate_diffs == 25 and v.regression_requests == 25
    # Noise at 50 % plus 10 points of real breakage on top is found too.
    rng = random.Random(5)
    noise = [rng.random() < 0.5 for _ in range(600)]
    broken = [rng.random() < 0.1 for _ in range(600)]
    tw = ThreeWay()
    _feed(tw, 600, lambda i: noise[i] or broken[i], lambda i: rng.random() < 0.5)
    assert _verdicts(tw)["regressions"] == [("body:$.f", "changed_value")]


def test_two_way_uses_rules() -> None:
    rules = Rules.from_dict({"fields": [{"endpoint": "GET /thing/*", "field": "body:$.f",
                                         "kinds": ["changed_value"], "reason": "volatile"}]})
    tw = ThreeWay(rules, three_way=False)
    for i in range(3):
        tw.add(f"r{i}", Request("GET", "/thing/1"), _resp({"f": 0, "g": 1}),
               _resp({"f": i + 1, "g": "1"}))
    v = tw.verdict()
    assert [(f.field, f.kind) for f in v.regressions] == [("body:$.g", "changed_type")]
    assert [(f.field, f.source) for f in v.noise] == [("body:$.f", "rules")]
    assert v.test["name"].startswith("none")
    # A candidate error counts as a difference of its own kind.
    tw.add("r9", Request("GET", "/thing/1"), _resp({"f": 0}), "connect_refused")
    assert ("response", "no_response") in {(f.field, f.kind) for f in tw.verdict().regressions}


def test_rules_files_round_trip_and_errors(tmp_path: Path) -> None:
    r = Rules.from_dict({"headers": {"Server": "ignore"}, "allow_extra_fields": True,
                         "fields": [{"field": "body:$.items[*].price", "kinds": "changed_value"}]})
    assert r.header_mode("server") == "ignore" and r.header_mode("date") == "ignore"
    assert r.match("GET /x", "body:$.items[*].price", "changed_value") is not None
    assert r.match("GET /x", "body:$.items[*].qty", "changed_value") is None
    r.add(FieldRule("GET /x/*", "body:$.meta*"))
    assert r.match("GET /x/{id}", "body:$.meta.trace[*].id", "missing") is not None
    assert r.match("GET /y/{id}", "body:$.meta.trace[*].id", "missing") is None
    assert r.match("GET /x", "body:$.new", "extra") is not None  # allow_extra_fields
    for name in ("rules.yaml", "rules.json"):
        p = tmp_path / name
        r.save(p)
        back = Rules.load(p)
        assert back.to_dict() == r.to_dict()
    bad = tmp_path / "bad.yaml"
    for text, words in [("headers: {date: sometimes}\n", "mode 'sometimes'"),
                        ("colour: blue\n", "unknown key"),
                        ("fields: [{endpoint: x}]\n", "needs at least a 'field'"),
                        ("headers: [\n", "not valid YAML")]:
        bad.write_text(text)
        with pytest.raises(InputError, match=words):
            Rules.load(bad)
    with pytest.raises(InputError, match="no such rules file"):
        Rules.load(tmp_path / "absent.yaml")


def test_learned_rules_hold_only_secondary_noise() -> None:
    tw = ThreeWay()
    rng = random.Random(1)
    for i in range(30):
        tw.add(f"r{i}", Request("GET", f"/u/{i}"), _resp({"ts": 0, "v": 1}),
               _resp({"ts": rng.random(), "v": "1"}), _resp({"ts": rng.random(), "v": 1}))
    v = tw.verdict()
    learned = tw.learned_rules(v)
    fields = [(r.endpoint, r.field, r.kinds) for r in learned.fields]
    assert fields == [("GET /u/{id}", "body:$.ts", ("changed_value",))]
    assert [(f.field, f.kind) for f in v.regressions] == [("body:$.v", "changed_type")]


def test_requests_without_a_secondary_answer_are_not_compared() -> None:
    tw = ThreeWay()
    _feed(tw, 12, lambda i: True, lambda i: False)
    tw.add("lost", Request("GET", "/thing/1"), _resp({"f": 0}), _resp({"f": 1}), "timeout")
    v = tw.verdict()
    (ep,) = v.endpoints
    assert ep["compared"] == 12 and ep["not_compared"] == 1
    assert v.regressions[0].candidate_diffs == 12
