"""Pseudonyms keep the format (they pass the same validators as the originals), are deterministic
per key across exchanges and between requests and responses, and change with the key."""

from __future__ import annotations

import base64
import json
import random
import re

import orjson
import pytest
from sanitise_corpus import GENERATORS, rand_token

from replay.model import Exchange, Request, Response
from replay.sanitise import (
    Policy,
    Pseudonymiser,
    Sanitiser,
    is_card,
    is_email,
    is_iban,
    is_ipv4,
    is_ipv6,
    is_jwt,
    is_ssn,
    luhn_ok,
)
from replay.sanitise.detectors import BUILTIN, Prep

KEY = b"pseudonym-test-key-0123456789abc"
OTHER = b"another-key-entirely-9876543210x"

VALIDATORS = {
    "email": is_email,
    "card": is_card,
    "iban": is_iban,
    "ssn": is_ssn,
    "ipv4": is_ipv4,
    "ipv6": is_ipv6,
    "jwt": is_jwt,
}


def _digits(b: bytes) -> bytes:
    return bytes(c for c in b if 48 <= c <= 57)


@pytest.mark.parametrize("kind", ["email", "card", "iban", "ssn", "ipv4", "ipv6", "jwt", "phone"])
def test_pseudonyms_pass_the_validators_of_the_originals(kind: str) -> None:
    rng = random.Random(kind)
    ps = Pseudonymiser(KEY)
    det = BUILTIN[kind]
    for _ in range(300):
        orig = GENERATORS[kind](rng).encode()
        # the detector finds the original whole ...
        assert det.find(Prep(orig)) == [(0, len(orig))], orig
        new = ps.pseudonym(det.fmt, orig)
        assert new != orig
        # ... and finds the pseudonym whole too: same shape
        assert det.find(Prep(new)) == [(0, len(new))], (orig, new)
        if kind in VALIDATORS:
            assert VALIDATORS[kind](new), (orig, new)
        if kind in ("card", "phone", "ssn"):
            assert len(new) == len(orig)
            assert [c for c in new if not 48 <= c <= 57] == [c for c in orig if not 48 <= c <= 57]
        if kind == "card":
            assert luhn_ok(_digits(new)) and new[:4] == orig[:4]
        if kind == "iban":
            assert new[:2] == orig[:2] and len(new) == len(orig)
        if kind == "email":
            assert new.rsplit(b".", 1)[1] == orig.rsplit(b".", 1)[1]  # TLD kept
        if kind == "ipv6":
            assert new.startswith(b"2001:db8:")


def test_jwt_pseudonym_is_three_base64url_json_parts() -> None:
    rng = random.Random(1)
    ps = Pseudonymiser(KEY)
    for _ in range(50):
        orig = GENERATORS["jwt"](rng).encode()
        new = ps.pseudonym("jwt", orig)
        parts = new.split(b".")
        assert len(parts) == 3
        assert all(re.fullmatch(rb"[A-Za-z0-9_-]*", p) for p in parts)
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)))
        old = json.loads(base64.urlsafe_b64decode(orig.split(b".")[1] + b"==="))
        assert set(claims) == set(old)
        assert claims["exp"] == old["exp"]  # numbers (expiry) kept
        assert claims["sub"] != old["sub"] and is_email(claims["sub"].encode())
        assert parts[0] == orig.split(b".")[0]  # algorithm header kept
        assert len(parts[2]) == len(orig.split(b".")[2])


def test_token_and_digits_keep_character_classes() -> None:
    ps = Pseudonymiser(KEY)
    for v in [b"abcDEF123-_x", b"000123456789", b"Zz9.Zz9"]:
        new = ps.pseudonym("token", v)
        assert len(new) == len(v)
        for a, b in zip(v, new, strict=True):
            for cls in (
                b"0123456789",
                b"abcdefghijklmnopqrstuvwxyz",
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            ):
                assert (a in cls) == (b in cls)
            if not chr(a).isalnum():
                assert a == b


def test_basic_credentials_keep_their_shape() -> None:
    ps = Pseudonymiser(KEY)
    cred = base64.b64encode(b"alice@example.com:correct horse")
    new = ps.pseudonym("basic", cred)
    user, _, pw = base64.b64decode(new).partition(b":")
    assert is_email(user) and user != b"alice@example.com"
    assert len(pw) == len(b"correct horse") and pw != b"correct horse"


def test_deterministic_per_key_and_different_with_another_key() -> None:
    rng = random.Random(3)
    a1, a2, b = Pseudonymiser(KEY), Pseudonymiser(KEY), Pseudonymiser(OTHER)
    for kind in ("email", "card", "iban", "ssn", "ipv4", "ipv6", "jwt", "phone"):
        fmt = BUILTIN[kind].fmt
        for _ in range(20):
            v = GENERATORS[kind](rng).encode()
            assert a1.pseudonym(fmt, v) == a2.pseudonym(fmt, v)
            assert a1.pseudonym(fmt, v) != b.pseudonym(fmt, v)


def _ex(i: int, email: str, cookie: str) -> Exchange:
    body = orjson.dumps({"user": {"email": email, "id": i}})
    return Exchange(
        id=str(i),
        request=Request(
            "POST",
            f"/login?who={email}",
            headers=[
                ("Cookie", f"session={cookie}"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
            ],
            body=body,
        ),
        response=Response(
            200,
            "OK",
            headers=[
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body) + 9)),
            ],
            body=orjson.dumps({"hello": email, "sid": cookie}),
        ),
    )


def test_same_user_same_pseudonym_across_exchanges_and_directions() -> None:
    san = Sanitiser(Policy.default(), KEY)
    email, cookie = "jane.doe@example.org", rand_token(random.Random(5), 24)
    outs = [san.apply(_ex(i, email, cookie)) for i in range(3)]
    seen = set()
    for out in outs:
        assert out is not None and out.request is not None and out.response is not None
        req_email = orjson.loads(out.request.body)["user"]["email"]
        resp = orjson.loads(out.response.body)
        assert resp["hello"] == req_email  # the echo carries the same pseudonym
        assert resp["sid"] == out.request.headers[0][1].split("=", 1)[1]
        assert out.request.target == f"/login?who={req_email}"
        seen.add(req_email)
    assert len(seen) == 1 and email not in seen
    # a second sanitiser with the same key (another process, another day) agrees
    again = Sanitiser(Policy.default(), KEY).apply(_ex(9, email, cookie))
    assert again is not None and again.request is not None
    assert orjson.loads(again.request.body)["user"]["email"] in seen
    other = Sanitiser(Policy.default(), OTHER).apply(_ex(9, email, cookie))
    assert other is not None and other.request is not None
    assert orjson.loads(other.request.body)["user"]["email"] not in seen


def test_authorization_scheme_kept() -> None:
    rng = random.Random(8)
    jwt = GENERATORS["jwt"](rng)
    san = Sanitiser(Policy.default(), KEY)
    ex = Exchange(
        id="a",
        request=Request("GET", "/", headers=[("Authorization", f"Bearer {jwt}")]),
    )
    out = san.apply(ex)
    assert out is not None and out.request is not None
    scheme, tok = out.request.headers[0][1].split(" ")
    assert scheme == "Bearer" and is_jwt(tok.encode()) and tok != jwt


def test_same_value_same_pseudonym_in_every_location() -> None:
    import gzip

    san = Sanitiser(Policy.default(), KEY)
    email = "alice.smith@example.com"
    form = b"email=alice.smith%40example.com&n=1"
    body = gzip.compress(orjson.dumps({"e": email}))
    ex = Exchange(
        id="c",
        request=Request(
            "POST",
            "/u/alice.smith@example.com?e=alice.smith%40example.com",
            headers=[
                ("X-Contact", f"mail {email} now"),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Content-Length", str(len(form))),
            ],
            body=form,
        ),
        response=Response(
            200,
            headers=[
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
                ("Content-Length", str(len(body))),
            ],
            body=body,
        ),
    )
    out = san.apply(ex)
    assert out is not None and out.request is not None and out.response is not None
    p = orjson.loads(gzip.decompress(out.response.body))["e"]
    assert p != email
    assert out.request.target == f"/u/{p}?e={p}"
    assert out.request.headers[0][1] == f"mail {p} now"
    assert out.request.body == f"email={p}&n=1".encode()


@pytest.mark.parametrize("seed", range(2))
def test_every_kind_gets_one_pseudonym_across_locations(seed: int) -> None:
    """Path, query ('+' and '%20' spellings), header, form, JSON value and JSON text: one value,
    one pseudonym (a safety-net scan must never pseudonymise a pseudonym again)."""
    import json
    import re
    from urllib.parse import quote, quote_plus, unquote, unquote_plus

    from sanitise_corpus import corpus_policy

    rng = random.Random(300 + seed)
    san = Sanitiser(corpus_policy(), KEY)
    for i in range(400):
        v = GENERATORS[rng.choice(list(GENERATORS))](rng)
        form = f"a=1&v={quote_plus(v)}&z=2".encode()
        ex = Exchange(
            id=str(i),
            request=Request(
                "POST",
                f"/p/{quote(v, safe='@:')}/x?v={quote_plus(v)}&w={quote(v)}",
                headers=[
                    ("X-V", f"[{v}]"),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Content-Length", str(len(form))),
                ],
                body=form,
            ),
            response=Response(
                200,
                headers=[("Content-Type", "application/json")],
                body=json.dumps({"v": v, "t": f"<{v}>"}).encode(),
            ),
        )
        out = san.apply(ex)
        assert out is not None and out.request is not None and out.response is not None
        t = out.request.target
        doc = json.loads(out.response.body)
        got = {
            unquote(t.split("?")[0].split("/")[2]),
            unquote_plus(re.search(r"[?&]v=([^&]*)", t).group(1)),  # type: ignore[union-attr]
            unquote_plus(re.search(r"[?&]w=([^&]*)", t).group(1)),  # type: ignore[union-attr]
            out.request.headers[0][1][1:-1],
            unquote_plus(re.search(r"v=([^&]*)", out.request.body.decode()).group(1)),  # type: ignore[union-attr]
            doc["v"],
            doc["t"][1:-1],
        }
        assert len(got) == 1 and v not in got, (v, got)


def test_one_pseudonym_in_url_headers_multipart_trailers_and_text() -> None:
    import gzip
    import re
    from urllib.parse import quote, quote_plus, unquote_plus

    from sanitise_corpus import corpus_policy

    rng = random.Random(77)
    san = Sanitiser(corpus_policy(), KEY)
    for i in range(300):
        v = GENERATORS[rng.choice(list(GENERATORS))](rng)
        mp = f'--BB\r\nContent-Disposition: form-data; name="c"\r\n\r\n[{v}]\r\n--BB--\r\n'.encode()
        txt = gzip.compress(f"line [{v}] end".encode())
        ex = Exchange(
            id=str(i),
            request=Request(
                "POST",
                "/",
                headers=[
                    ("Referer", f"http://r/x?q={quote_plus(v)}"),
                    ("Content-Type", "multipart/form-data; boundary=BB"),
                    ("Content-Length", str(len(mp))),
                ],
                body=mp,
                trailers=[("X-T", f"[{v}]")],
            ),
            response=Response(
                302,
                headers=[
                    ("Location", f"/y?q={quote(v)}"),
                    ("Content-Type", "text/plain"),
                    ("Content-Encoding", "gzip"),
                    ("Content-Length", str(len(txt))),
                ],
                body=txt,
            ),
        )
        out = san.apply(ex)
        assert out is not None and out.request is not None and out.response is not None
        h, rh = dict(out.request.headers), dict(out.response.headers)
        got = {
            unquote_plus(re.search(r"q=([^&]*)", h["Referer"]).group(1)),  # type: ignore[union-attr]
            unquote_plus(re.search(r"q=([^&]*)", rh["Location"]).group(1)),  # type: ignore[union-attr]
            re.search(rb"\[(.*)\]", out.request.body).group(1).decode(),  # type: ignore[union-attr]
            out.request.trailers[0][1][1:-1],
            re.search(rb"\[(.*)\]", gzip.decompress(out.response.body)).group(1).decode(),  # type: ignore[union-attr]
        }
        assert len(got) == 1 and v not in got, (v, got)


def test_named_field_and_detector_agree_when_the_document_is_walked() -> None:
    san = Sanitiser(Policy.default(), KEY)
    for body in (
        b'{"token": "alice@example.com", "y": {"token": [1]}, "e": "alice@example.com"}',
        b'{"a\\u0040": 1, "token": "alice@example.com", "e": "alice@example.com"}',
        b'{"token": "alice@example.com", "e": "alice@example.com"}',
    ):
        out = san.apply(
            Exchange(
                id="w",
                request=Request(
                    "POST", "/", headers=[("Content-Type", "application/json")], body=body
                ),
            )
        )
        assert out is not None and out.request is not None
        doc = orjson.loads(out.request.body)
        assert doc["token"] == doc["e"] != "alice@example.com"
