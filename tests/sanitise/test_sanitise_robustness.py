"""Whatever the capture holds, ``apply`` neither raises nor breaks the message framing.

Seeded random exchanges mix valid and broken bodies (random bytes under every Content-Type and
Content-Encoding, truncated compressed data, JSON with odd escapes, forms with stray '%'), odd
header values and request targets. The sanitiser must return an Exchange whose Content-Length
matches its body, and must count every body it could not read as declared.
"""

from __future__ import annotations

import gzip
import random

import brotli
import orjson
import pytest
from sanitise_corpus import GENERATORS, corpus_policy

from replay.model import Exchange, Request, Response, header_get
from replay.sanitise import Sanitiser, bodies

KEY = b"robustness-test-key-0123456789ab"
CTYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=XyZ",
    "text/plain",
    "application/octet-stream",
    None,
]
CODINGS = [None, "gzip", "br", "deflate", "gzip, br", "zstd"]


def _body(rng: random.Random) -> tuple[bytes, str | None]:
    """A body and the secret that must not survive in it (None: nothing checkable)."""
    secret = GENERATORS[rng.choice(list(GENERATORS))](rng)
    kind = rng.randrange(8)
    body = _make(kind, secret, rng)
    return body, (None if kind in (0, 5) else secret)


def _make(kind: int, secret: str, rng: random.Random) -> bytes:
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 400))
    if kind == 1:
        return orjson.dumps({"a": [secret, {"b": "\\u00e9\u00e9\n\t", "c": rng.random()}]})
    if kind == 2:
        return f"x=%zz&y=%4&{secret}=1&z={secret}".encode()
    if kind == 3:
        return (
            f'--XyZ\r\nContent-Disposition: form-data; name="f"\r\n\r\n{secret}\r\n--XyZ--\r\n'
        ).encode()
    if kind == 4:
        return b'{"unterminated": "' + secret.encode()
    if kind == 5:
        return gzip.compress(secret.encode())[: rng.randrange(1, 30)]
    if kind == 6:
        return secret.encode() + b"\xff\xfe\x00" + secret.encode()
    return b"\\u0040\\/" + secret.encode()


def _encode(body: bytes, coding: str | None, rng: random.Random) -> bytes:
    if coding is None or coding == "zstd" or rng.random() < 0.2:
        return body  # sometimes a lie: the header says gzip, the body is not
    for c in [x.strip() for x in coding.split(",")]:
        body = (
            gzip.compress(body)
            if c == "gzip"
            else brotli.compress(body)
            if c == "br"
            else (__import__("zlib").compress(body))
        )
    return body


def _decoded(body: bytes, coding: str | None) -> bytes:
    try:
        return bodies.decode(body, bodies.codings(coding)) if coding else body
    except bodies.BodyError:
        return body


@pytest.mark.parametrize("seed", range(12))
def test_random_exchanges_never_raise_and_keep_framing(seed: int) -> None:
    rng = random.Random(seed)
    san = Sanitiser(corpus_policy(), KEY)
    for i in range(500):
        headers = []
        ctype = rng.choice(CTYPES)
        coding = rng.choice(CODINGS)
        raw, secret = _body(rng)
        body = _encode(raw, coding, rng)
        if ctype:
            headers.append(("Content-Type", ctype))
        if coding:
            headers.append(("Content-Encoding", coding))
        headers.append(("Content-Length", str(len(body))))
        headers.append(("X-Odd", rng.choice(["", ";;;", "=", "a=b=c", "\u00e9t\u00e9", "%%%"])))
        headers.append(("Cookie", rng.choice(["", ";", "a", "=b", "a=1;;b=2", "s=" + "x" * 50])))
        target = rng.choice(
            [
                "/",
                "*",
                "example.com:443",
                "http://u:p@h/x?y#z",
                "/a?%zz=&&=",
                "/%E2%82%AC/%ff?q=" + GENERATORS["email"](rng),
            ]
        )
        ex = Exchange(
            id=str(i),
            request=Request("POST", target, headers=list(headers), body=body),
            response=Response(200, "OK", headers=list(headers), body=body),
        )
        out = san.apply(ex)
        assert out is not None
        for msg in (out.request, out.response):
            assert msg is not None
            assert header_get(msg.headers, "content-length") == str(len(msg.body))
            if secret is not None:
                assert secret.encode() not in _decoded(msg.body, coding), (i, secret)
    assert san.report.exchanges_out == 500
    assert sum(san.report.fallbacks.values()) > 0


@pytest.mark.parametrize("seed", range(3))
def test_random_json_documents_stay_valid_and_leak_nothing(seed: int) -> None:
    """Random nesting, secrets as values, inside sentences and as keys, compact or indented,
    ASCII-escaped or not: the output parses and no secret survives, raw or decoded."""
    import json

    rng = random.Random(1000 + seed)
    san = Sanitiser(corpus_policy(), KEY)
    names = ["password", "accessToken", "note", "data", "x", "Session-Id", "pin", "list"]
    for i in range(400):
        secrets: list[str] = []

        def secret(found: list[str] = secrets) -> str:
            v = GENERATORS[rng.choice(list(GENERATORS))](rng)
            found.append(v)
            return v

        def key() -> str:
            return secret() if rng.random() < 0.15 else rng.choice(names)

        def val(depth: int) -> object:
            r = rng.random()
            if depth > 3 or r < 0.4:
                if rng.random() < 0.5:
                    v = secret()
                    return rng.choice([v, f"see {v}.", f"{v}\n{rng.random()}", f"\u00e9{v}"])
                return rng.choice([1, 2.5, None, True, "plain text", "12:30:00"])
            if r < 0.7:
                return [val(depth + 1) for _ in range(rng.randint(0, 4))]
            return {key(): val(depth + 1) for _ in range(rng.randint(0, 4))}

        doc = {"root": val(0)}
        body = json.dumps(doc, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5)
        raw = body.encode()
        ex = Exchange(
            id=str(i),
            request=Request(
                "POST",
                "/",
                body=raw,
                headers=[("Content-Type", "application/json"), ("Content-Length", str(len(raw)))],
            ),
        )
        out = san.apply(ex)
        assert out is not None and out.request is not None
        got = out.request.body
        decoded = json.dumps(json.loads(got), ensure_ascii=False).encode()
        for s in secrets:
            assert s.encode() not in got and s.encode() not in decoded, (i, s)


@pytest.mark.parametrize("seed", range(2))
def test_random_urls_forms_and_cookies_leak_nothing(seed: int) -> None:
    """Secrets as query/form names and values, in paths and cookies, encoded every way
    clients do it ('%20', '+' for space, a literal '+' left unencoded), echoed in Referer,
    Location and Set-Cookie: nothing survives, raw or decoded."""
    from urllib.parse import quote, quote_plus

    rng = random.Random(2000 + seed)
    san = Sanitiser(corpus_policy(), KEY)
    encoders = [quote, quote_plus, lambda x: x, lambda x: quote(x, safe="@:+")]
    for i in range(500):
        secrets: list[str] = []

        def sec(found: list[str] = secrets) -> str:
            v = GENERATORS[rng.choice(list(GENERATORS))](rng)
            found.append(v)
            return v

        enc = rng.choice(encoders)
        pairs = []
        for _ in range(rng.randint(1, 5)):
            k = enc(sec()) if rng.random() < 0.2 else rng.choice(["a", "q", "password", "Token"])
            v = enc(sec()) if rng.random() < 0.6 else rng.choice(["1", "", "abc", "%zz", "a+b"])
            pairs.append(k if rng.random() < 0.1 else f"{k}={v}")
        qs = "&".join(pairs)
        target = rng.choice(["/p?", f"/u/{enc(sec())}/x?", "http://h/p?"]) + qs
        form = qs.encode()
        req_h = [
            ("X-Note", f"hi {sec()} there"),
            ("Referer", "http://r/?" + qs),
            ("Cookie", f"a={enc(sec())}; b=2"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", str(len(form))),
        ]
        resp_h = [("Location", "/x?" + qs), ("Set-Cookie", f"s={enc(secrets[0])}; Path=/")]
        ex = Exchange(
            id=str(i),
            request=Request("POST", target, headers=req_h, body=form),
            response=Response(302, headers=resp_h),
        )
        out = san.apply(ex)
        assert out is not None and out.request is not None and out.response is not None
        hdrs = out.request.headers + out.response.headers
        view = (out.request.target + "\n" + "\n".join(f"{k}: {v}" for k, v in hdrs)).encode()
        view += b"\n" + out.request.body
        decoded = bodies.unquote(view)
        for s in secrets:
            forms = {s, quote(s), quote_plus(s), quote(s, safe="@:+")}
            assert not any(f.encode() in view for f in forms), (i, s, target)
            assert s.encode() not in decoded, (i, s, target)
