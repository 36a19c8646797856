"""The main guarantee: after sanitising, no seeded original appears anywhere in the output.

The check is done twice: on the raw bytes the JSONL writer produces (what goes to disk), and on a
"wire view" of every message with content codings undone (what a shadow would receive), because a
compressed body stored as base64 in JSONL would hide an unmasked value from a naive byte search.
The output must also still be valid HTTP: Content-Length matches the body, codings decode, JSON
parses, forms and multipart bodies split.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from urllib.parse import parse_qsl, quote, quote_plus

import pytest
from sanitise_corpus import KINDS, VALUE_KINDS, VALUE_LOCATIONS, build_seeded, corpus_policy

from replay.formats.jsonl import JsonlWriter, read_jsonl
from replay.model import Exchange, header_get
from replay.sanitise import Policy, Sanitiser, bodies

KEY = b"corpus-test-key-0123456789abcdef"


def wire_view(ex: Exchange) -> bytes:
    """Everything of an exchange a shadow or a file would see, with content codings undone."""
    out = [str(ex.conn).encode()]
    for msg in (ex.request, ex.response):
        if msg is None:
            continue
        if hasattr(msg, "target"):
            out.append(msg.target.encode("latin-1"))
        out += [f"{k}: {v}".encode("latin-1") for k, v in msg.headers + msg.trailers]
        codes = bodies.codings(header_get(msg.headers, "content-encoding"))
        out.append(bodies.decode(msg.body, codes) if codes else msg.body)
    return b"\n".join(out)


@pytest.fixture(scope="module")
def sanitised(tmp_path_factory: pytest.TempPathFactory):
    sd = build_seeded()
    san = Sanitiser(corpus_policy(), KEY)
    out = [san.apply(ex) for ex in sd.exchanges]
    path = tmp_path_factory.mktemp("san") / "out.jsonl"
    with path.open("wb") as fp:
        w = JsonlWriter(fp)
        for ex in out:
            if ex is not None:
                w.write(ex)
        w.close()
    return sd, out, path, san


def test_corpus_is_big_and_covers_everything(sanitised) -> None:
    sd, _out, _path, _san = sanitised
    assert len(sd.secrets) >= 1000
    kinds = Counter(k for k, *_ in sd.secrets)
    assert set(kinds) == set(KINDS)
    combos = {(k, loc) for k, loc, _e, _v in sd.secrets if k in VALUE_KINDS}
    assert combos == {(k, loc) for k in VALUE_KINDS for loc in VALUE_LOCATIONS}
    encs = {(loc, e) for k, loc, e, _v in sd.secrets if loc in ("json", "form", "multipart")}
    assert {e for _l, e in encs} == {"identity", "gzip", "br", "deflate"}


def _forms(v: str) -> set[str]:
    return {v, quote(v, safe=""), quote(v, safe="@:"), quote_plus(v), json.dumps(v)[1:-1]}


def test_no_original_in_raw_output_bytes(sanitised) -> None:
    sd, _out, path, _san = sanitised
    raw = path.read_bytes()
    leaks = [
        (k, loc, enc, v)
        for k, loc, enc, v in sd.secrets
        if any(f.encode() in raw for f in _forms(v))
    ]
    assert not leaks, f"{len(leaks)} originals in output, e.g. {leaks[:5]}"


def test_no_original_in_decoded_wire_view(sanitised) -> None:
    sd, out, _path, _san = sanitised
    wire = b"\n".join(wire_view(ex) for ex in out if ex is not None)
    leaks = [
        (k, loc, enc, v)
        for k, loc, enc, v in sd.secrets
        if any(f.encode() in wire for f in _forms(v))
    ]
    assert not leaks, f"{len(leaks)} originals in decoded output, e.g. {leaks[:5]}"


def test_client_addresses_pseudonymised(sanitised) -> None:
    sd, out, _path, _san = sanitised
    for a, b in zip(sd.exchanges, out, strict=True):
        assert b is not None and a.conn is not None and b.conn is not None
        assert a.conn.client_ip != b.conn.client_ip
        assert b.conn.server_ip == a.conn.server_ip


def test_output_is_still_valid_http(sanitised) -> None:
    _sd, out, path, _san = sanitised
    back = list(read_jsonl(path))
    assert len(back) == len(out)
    for ex in back:
        for msg in (ex.request, ex.response):
            assert msg is not None
            cl = header_get(msg.headers, "content-length")
            te = header_get(msg.headers, "transfer-encoding")
            if cl is not None:
                assert int(cl) == len(msg.body), ex.id
            else:
                assert te == "chunked" or not msg.body
            codes = bodies.codings(header_get(msg.headers, "content-encoding"))
            body = bodies.decode(msg.body, codes) if codes else msg.body
            mime, params = bodies.parse_content_type(header_get(msg.headers, "content-type"))
            kind = bodies.body_kind(mime)
            if kind == "json":
                json.loads(body)
            elif kind == "form":
                parse_qsl(body.decode(), strict_parsing=True, keep_blank_values=True)
            elif kind == "multipart":
                mp = bodies.parse_multipart(body, params["boundary"])
                assert len(mp.parts) == 2
                for p in mp.parts:
                    if b"application/json" in p.headers:
                        json.loads(p.body)


def test_report_counts_and_never_originals(sanitised) -> None:
    sd, _out, _path, san = sanitised
    rep = san.report
    assert rep.exchanges_in == rep.exchanges_out == len(sd.exchanges)
    by_rule = rep.by_rule()
    for rule in (
        "email",
        "phone",
        "card",
        "iban",
        "ssn",
        "ipv4",
        "ipv6",
        "jwt",
        "orderref",
        "authorization",
        "api-key-headers",
        "api-key",
        "cookies",
        "password-fields",
        "token-fields",
    ):
        assert by_rule.get(rule, 0) > 0, rule
    locs = {loc for (_r, loc) in rep.counts}
    assert {
        "header",
        "cookie",
        "query",
        "path",
        "json",
        "form",
        "multipart",
        "body",
        "conn",
    } <= locs
    dumped = json.dumps(rep.to_dict())
    originals = {v for *_x, v in sd.secrets}
    assert not [v for v in originals if v in dumped]
    assert not rep.fallbacks


def test_unchanged_exchange_is_returned_as_is() -> None:
    from replay.model import Request, Response

    ex = Exchange(
        id="clean",
        request=Request("GET", "/health", headers=[("Host", "x"), ("Accept", "*/*")]),
        response=Response(
            200, "OK", headers=[("Content-Type", "text/plain"), ("Content-Length", "2")], body=b"ok"
        ),
    )
    san = Sanitiser(Policy.default(), KEY)
    assert san.apply(ex) is ex


def test_input_exchange_not_modified() -> None:
    sd = build_seeded(seed=9, n=60)
    before = [io.BytesIO() for _ in sd.exchanges]
    for b, ex in zip(before, sd.exchanges, strict=True):
        JsonlWriter(b).write(ex)
    san = Sanitiser(corpus_policy(), KEY)
    for ex in sd.exchanges:
        san.apply(ex)
    for b, ex in zip(before, sd.exchanges, strict=True):
        again = io.BytesIO()
        JsonlWriter(again).write(ex)
        assert again.getvalue() == b.getvalue()
