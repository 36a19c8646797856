"""Fuzzing the sanitiser with hypothesis: no crash, no hang, output always valid, bounded size.

Short in CI (a few hundred examples per property, well under 15 s together). For a long run:

    SHADOWTAP_FUZZ_EXAMPLES=200000 .venv/bin/python -m pytest tests/sanitise/test_sanitise_fuzz.py

(docs/sanitise.md records the count of the last long run and what it found).
"""

from __future__ import annotations

import gzip
import os
import time
import zlib

import brotli
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay.model import Exchange, Request, Response, header_get
from replay.sanitise import Policy, Sanitiser, bodies

KEY = b"fuzz-test-key-0123456789abcdef00"
EXAMPLES = int(os.environ.get("SHADOWTAP_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # timing is checked by hand below (a shared CI core is noisy)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=EXAMPLES <= 1000,  # CI: the same examples every run
)
SAN = Sanitiser(Policy.default(), KEY)

_PIECES = [
    "password", "pw", "token", "api_key", "user[password]", "=", ":", "&", '"', "'", "<", ">",
    "</", "{", "}", "[", "]", ",", "\\", "\\n", "\\u0040", "\n", " ", "-", ".", "@", "%40", "+",
    "4111 1111 1111 1111", "5018123456789012", "de89 3704 0044 0532 0130 00", "123-45-6789",
    "ghp_" + "a" * 36, "AKIA" + "B" * 16, "sk_live_" + "c" * 24, "xoxb-1234567890-abcdefghij",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig", "-----BEGIN PRIVATE KEY-----", "MIIEvQIBADAN",
    "-----END PRIVATE KEY-----", "jörg@example.de", "+44 20 7946 0958", "10.0.0.1", "::1",
    "Bearer abcdefghijkl123", "<Password>", "</Password>", '<input name="csrf_token" value="',
    "ssn", "SSN 123456789", "reset", "/", "?", "#", "0", "9", "é", "\x00", "\xff",
]  # fmt: skip

text = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=8)), max_size=40).map(
    "".join
)
raw = st.one_of(text.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=300))


def _json_value(depth: int = 3) -> st.SearchStrategy:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), text)
    if depth == 0:
        return leaf
    sub = _json_value(depth - 1)
    return st.one_of(leaf, st.lists(sub, max_size=4),
                     st.dictionaries(st.one_of(text, st.sampled_from(_PIECES)), sub, max_size=4))


CTYPES = [None, "application/json", "application/x-www-form-urlencoded", "text/plain",
          "multipart/form-data; boundary=B", "application/xml", "text/html",
          "application/x-ndjson", "application/octet-stream", "text/plain; charset=utf-8"]
CODINGS = [None, "gzip", "deflate", "br", "gzip, br", "zstd"]


def _encode(body: bytes, coding: str | None, lie: bool) -> bytes:
    if coding is None or lie or coding == "zstd":
        return body
    for c in [x.strip() for x in coding.split(",")]:
        body = (gzip.compress(body) if c == "gzip" else brotli.compress(body) if c == "br"
                else zlib.compress(body))
    return body


def _check(ex: Exchange) -> None:
    size_in = sum(len(m.body) + len(str(m.headers)) + len(getattr(m, "target", ""))
                  for m in (ex.request, ex.response) if m is not None)
    t0 = time.process_time()
    out = SAN.apply(ex)
    assert time.process_time() - t0 < 2.0  # no hang: linear detectors on small inputs
    assert out is not None
    size_out = 0
    for msg, orig in ((out.request, ex.request), (out.response, ex.response)):
        assert msg is not None and orig is not None
        size_out += len(msg.body) + len(str(msg.headers)) + len(getattr(msg, "target", ""))
        cl = header_get(msg.headers, "content-length")
        if cl is not None:
            assert cl == str(len(msg.body))
        codes = bodies.codings(header_get(msg.headers, "content-encoding"))
        try:
            inner = bodies.decode(orig.body, codes) if codes else orig.body
        except bodies.BodyError:
            assert msg.body == b""  # could not look inside: dropped, never passed on
            continue
        new = bodies.decode(msg.body, codes) if codes and msg.body else msg.body
        ctype = header_get(orig.headers, "content-type") or ""
        if "json" in ctype and "ndjson" not in ctype:
            try:
                orjson.loads(inner)
            except orjson.JSONDecodeError:
                continue
            orjson.loads(new)  # a valid JSON document stays one
    # bounded: a pseudonym keeps length (compression of a changed body aside)
    assert size_out <= 2 * size_in + 4096


@SETTINGS
@given(body=raw, ctype=st.sampled_from(CTYPES), coding=st.sampled_from(CODINGS),
       lie=st.booleans(), target=text, hname=st.sampled_from(_PIECES), hval=text)
def test_fuzz_any_exchange(body: bytes, ctype: str | None, coding: str | None, lie: bool,
                           target: str, hname: str, hval: str) -> None:
    enc = _encode(body, coding, lie)
    h = [("Host", "x"), ("X-" + "".join(c for c in hname if c.isalnum()) or "X-A", hval),
         ("Cookie", hval)]
    if ctype:
        h.append(("Content-Type", ctype))
    if coding:
        h.append(("Content-Encoding", coding))
    h.append(("Content-Length", str(len(enc))))
    ex = Exchange(id="f", request=Request("POST", "/" + target, headers=list(h), body=enc),
                  response=Response(200, "OK", headers=list(h), body=enc))
    _check(ex)


@SETTINGS
@given(doc=_json_value(), ctype=st.sampled_from(["application/json", "text/plain", None]),
       indent=st.booleans(), coding=st.sampled_from([None, "gzip", "br"]))
def test_fuzz_json_documents_stay_valid(doc: object, ctype: str | None, indent: bool,
                                        coding: str | None) -> None:
    body = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if indent else 0)
    enc = _encode(body, coding, False)
    h = [("Content-Type", ctype)] if ctype else []
    if coding:
        h.append(("Content-Encoding", coding))
    h.append(("Content-Length", str(len(enc))))
    ex = Exchange(id="j", request=Request("POST", "/", headers=list(h), body=enc),
                  response=Response(200, "OK", headers=list(h), body=enc))
    out = SAN.apply(ex)
    assert out is not None and out.request is not None
    new = bodies.decode(out.request.body, bodies.codings(coding)) if coding else out.request.body
    orjson.loads(new)  # recognised as JSON whatever the Content-Type, and still JSON


@SETTINGS
@given(pairs=st.lists(st.tuples(st.one_of(st.sampled_from(_PIECES), text), text), max_size=8),
       frag=text)
def test_fuzz_urls_and_forms(pairs: list[tuple[str, str]], frag: str) -> None:
    from urllib.parse import quote_plus

    q = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs)
    body = q.encode()
    ex = Exchange(id="u", request=Request(
        "POST", f"/a/{quote_plus(frag)}?{q}#{frag}",
        headers=[("Content-Type", "application/x-www-form-urlencoded"),
                 ("Content-Length", str(len(body))), ("Referer", f"http://h/x?{q}#{frag}")],
        body=body))
    _check_simple(ex)


def _check_simple(ex: Exchange) -> None:
    out = SAN.apply(ex)
    assert out is not None and out.request is not None
    assert header_get(out.request.headers, "content-length") == str(len(out.request.body))
    assert len(out.request.target) <= 3 * len(ex.request.target) + 64
