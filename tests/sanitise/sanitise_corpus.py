"""Seeded corpora for the sanitiser tests: secrets everywhere, and clean traffic without any.

Why generated: the guarantee to check is "no original value survives anywhere", which needs
thousands of distinct, known originals spread over every location and content coding, plus a
clean corpus of the things real APIs are full of (ids, timestamps, prices, versions, hashes) to
measure how often each detector fires when it should not.
"""

from __future__ import annotations

import base64
import gzip
import hmac
import random
import string
import uuid
import zlib
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

import brotli
import orjson
import yaml

from replay.model import ConnKey, Exchange, Request, Response
from replay.sanitise import DEFAULT_POLICY_YAML, Policy
from replay.sanitise.pseudonym import iban_mod97, luhn_digit

KINDS = (
    "email",
    "phone",
    "card",
    "iban",
    "ssn",
    "ipv4",
    "ipv6",
    "jwt",
    "orderref",  # user-supplied pattern
    "bearer",  # opaque token in Authorization: Bearer
    "basic",  # Authorization: Basic user:password
    "apikey_header",  # X-Api-Key: <opaque>
    "apikey_shape",  # AKIA... / sk_live_... in a custom header or query
    "session_cookie",
    "password_field",
    "token_field",
)
VALUE_KINDS = ("email", "phone", "card", "iban", "ssn", "ipv4", "ipv6", "jwt", "orderref")
"""Kinds found by their shape, so they can sit anywhere."""
VALUE_LOCATIONS = (
    "header",
    "query",
    "path",
    "json",
    "form",
    "multipart",
    "multipart_json",
    "text",
    "cookie",
    "response_echo",
    "referer",
    "trailer",
    "location_header",
    "set_cookie",
)
ENCODINGS = ("identity", "gzip", "br", "deflate")

USER_DETECTOR_POLICY = {
    "detectors": [{"name": "orderref", "pattern": "ORDREF-[0-9A-F]{10}", "format": "token"}],
    "rules": [{"name": "orderref", "location": "any", "detector": "orderref"}],
}


def corpus_policy() -> Policy:
    """The default policy plus the corpus's user-supplied pattern detector (ORDREF-...)."""
    d = yaml.safe_load(DEFAULT_POLICY_YAML)
    d["detectors"] = USER_DETECTOR_POLICY["detectors"]
    d["rules"] += USER_DETECTOR_POLICY["rules"]
    return Policy.from_dict(d, "<corpus>")


def rand_email(rng: random.Random) -> str:
    first = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))
    last = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))
    dom = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 10)))
    tld = rng.choice(["com", "org", "de", "co.uk", "io"])
    sep = rng.choice([".", "_", "+", ""])
    return f"{first}{sep}{last}{rng.randint(0, 99)}@{dom}.{tld}"


def rand_phone(rng: random.Random) -> str:
    style = rng.randrange(6)
    d = [str(rng.randrange(10)) for _ in range(10)]
    if style == 4:
        return f"0{rng.randint(20, 79)} {''.join(d[:4])} {''.join(d[4:8])}"  # UK national
    if style == 5:
        return f"0049 {rng.randint(150, 179)} {''.join(d[:7])}"  # '00' international
    if style == 0:
        return f"+44 20 {''.join(d[:4])} {''.join(d[4:8])}"
    if style == 1:
        return f"+1-{rng.randint(201, 989)}-{''.join(d[:3])}-{''.join(d[3:7])}"
    if style == 2:
        return f"({rng.randint(201, 989)}) {''.join(d[:3])}-{''.join(d[3:7])}"
    return f"+49{rng.randint(150, 179)}{''.join(d[:8])}"


def rand_card(rng: random.Random) -> str:
    length, prefix = rng.choice(
        [(16, "4"), (16, "51"), (16, "55"), (15, "37"), (16, "6011"), (13, "4"), (19, "4")]
    )
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    num = body + str(luhn_digit(body.encode()))
    style = rng.randrange(3)
    if style == 0 or length not in (16, 15):
        return num
    sep = " " if style == 1 else "-"
    if length == 15:
        return sep.join([num[:4], num[4:10], num[10:]])
    return sep.join(num[i : i + 4] for i in range(0, 16, 4))


_IBAN_SPECS = {"DE": "18n", "GB": "4a14n", "FR": "23n", "NL": "4a10n", "ES": "20n", "IT": "1a22n"}


def rand_iban(rng: random.Random) -> str:
    cc, spec = rng.choice(list(_IBAN_SPECS.items()))
    bban = ""
    num = ""
    for ch in spec:
        if ch.isdigit():
            num += ch
            continue
        pool = string.digits if ch == "n" else string.ascii_uppercase
        bban += "".join(rng.choice(pool) for _ in range(int(num)))
        num = ""
    check = 98 - iban_mod97((cc + "00" + bban).encode())
    iban = f"{cc}{check:02d}{bban}"
    if rng.random() < 0.5:
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def rand_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def rand_ipv4(rng: random.Random) -> str:
    return (
        f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    )


def rand_ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randrange(1, 0x10000):x}" for _ in range(8)]
    if rng.random() < 0.2:
        return f"::ffff:{rand_ipv4(rng)}"
    if rng.random() < 0.5:
        return ":".join(groups)
    return ":".join(groups[:3]) + "::" + ":".join(groups[6:])


def _b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def rand_jwt(rng: random.Random) -> str:
    header = _b64u(b'{"alg":"HS256","typ":"JWT"}')
    claims = {"sub": rand_email(rng), "uid": rng.randrange(10**9), "exp": 1900000000}
    payload = _b64u(orjson.dumps(claims))
    sig = _b64u(hmac.digest(rng.randbytes(16), payload.encode(), "sha256"))
    return f"{header}.{payload}.{sig}"


def rand_token(rng: random.Random, n: int = 32) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


def rand_orderref(rng: random.Random) -> str:
    return "ORDREF-" + "".join(rng.choices("0123456789ABCDEF", k=10))


def rand_apikey_shape(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "AKIA" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=16))
    return "sk_live_" + rand_token(rng, 24)


GENERATORS = {
    "email": rand_email,
    "phone": rand_phone,
    "card": rand_card,
    "iban": rand_iban,
    "ssn": rand_ssn,
    "ipv4": rand_ipv4,
    "ipv6": rand_ipv6,
    "jwt": rand_jwt,
    "orderref": rand_orderref,
}


@dataclass
class Seeded:
    """The corpus: exchanges plus every original secret with where it was put."""

    exchanges: list[Exchange] = field(default_factory=list)
    secrets: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(kind, location, encoding, original value)."""

    def add(self, kind: str, loc: str, enc: str, value: str) -> str:
        self.secrets.append((kind, loc, enc, value))
        return value


def _encode(body: bytes, enc: str) -> bytes:
    if enc == "gzip":
        return gzip.compress(body)
    if enc == "br":
        return brotli.compress(body)
    if enc == "deflate":
        return zlib.compress(body)
    return body


def _body_headers(ctype: str, body: bytes, enc: str, chunked: bool) -> list[tuple[str, str]]:
    h = [("Content-Type", ctype)]
    if enc != "identity":
        h.append(("Content-Encoding", enc))
    if chunked:
        h.append(("Transfer-Encoding", "chunked"))
    else:
        h.append(("Content-Length", str(len(body))))
    return h


def _filler(rng: random.Random) -> dict:
    return {
        "id": rng.randrange(10**9),
        "created": "2024-05-01T12:30:00Z",
        "price": round(rng.uniform(1, 999), 2),
        "tags": ["a", "b"],
    }


def build_seeded(seed: int = 6, n: int = 1100) -> Seeded:
    """A corpus where every kind sits in every location it can, in every content coding."""
    rng = random.Random(seed)
    sd = Seeded()
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        enc = ENCODINGS[(i // len(KINDS)) % len(ENCODINGS)]
        chunked = (i // 7) % 5 == 0
        req_headers: list[tuple[str, str]] = [("Host", "api.example.net"), ("Accept", "*/*")]
        target = f"/api/v1/items/{rng.randrange(10**6)}"
        req_body = b""
        req_trailers: list[tuple[str, str]] = []
        resp_headers: list[tuple[str, str]] = []
        resp_body = b""
        if kind in VALUE_KINDS:
            loc = VALUE_LOCATIONS[(i // len(KINDS)) % len(VALUE_LOCATIONS)]
            v = sd.add(kind, loc, enc, GENERATORS[kind](rng))
            if loc == "header":
                req_headers.append(("X-Note", f"customer {v} called"))
            elif loc == "cookie":
                req_headers.append(("Cookie", f"theme=dark; note={quote(v, safe='@')}"))
            elif loc == "query":
                target += f"?q={quote_plus(v)}&page=2"
            elif loc == "path":
                target = f"/api/v1/users/{quote(v, safe='@:')}/profile"
            elif loc == "json":
                doc = {
                    "data": {"items": [_filler(rng), {"note": f"contact: {v}", "n": 1}]},
                    "meta": _filler(rng),
                }
                req_body = orjson.dumps(doc)
                req_headers += _body_headers(
                    "application/json", _encode(req_body, enc), enc, chunked
                )
                req_body = _encode(req_body, enc)
            elif loc == "form":
                req_body = f"name=Jo+Bloggs&note={quote_plus(v)}&x=1".encode()
                req_headers += _body_headers(
                    "application/x-www-form-urlencoded", _encode(req_body, enc), enc, chunked
                )
                req_body = _encode(req_body, enc)
            elif loc in ("multipart", "multipart_json"):
                b = "----shadowtapBoundary" + rand_token(rng, 12)
                if loc == "multipart":
                    part = (
                        f'Content-Disposition: form-data; name="comment"\r\n\r\n'
                        f"please call {v} today"
                    )
                else:
                    part = (
                        'Content-Disposition: form-data; name="meta"; filename="m.json"\r\n'
                        "Content-Type: application/json\r\n\r\n"
                        + orjson.dumps({"owner": {"contact": v}, "x": [1, 2]}).decode()
                    )
                raw = (
                    f'--{b}\r\nContent-Disposition: form-data; name="title"\r\n\r\nhello\r\n'
                    f"--{b}\r\n{part}\r\n--{b}--\r\n"
                ).encode()
                req_headers += _body_headers(
                    f"multipart/form-data; boundary={b}", _encode(raw, enc), enc, chunked
                )
                req_body = _encode(raw, enc)
            elif loc == "text":
                raw = f"log line 1\nuser {v} logged in from somewhere\nend\n".encode()
                resp_headers += _body_headers(
                    "text/plain; charset=utf-8", _encode(raw, enc), enc, chunked
                )
                resp_body = _encode(raw, enc)
            elif loc == "referer":
                req_headers.append(("Referer", f"https://shop.example.net/s?q={quote_plus(v)}"))
            elif loc == "trailer":
                req_trailers.append(("X-Audit", f"approved by {v}"))
            elif loc == "location_header":
                resp_headers.append(("Location", f"/welcome?contact={quote_plus(v)}&x=1"))
            elif loc == "set_cookie":
                resp_headers.append(("Set-Cookie", f"pref={quote(v, safe='@')}; Path=/; Secure"))
            elif loc == "response_echo":
                target += f"?contact={quote_plus(v)}"
                raw = orjson.dumps({"echo": {"contact": v}, "ok": True})
                resp_headers += _body_headers("application/json", _encode(raw, enc), enc, chunked)
                resp_body = _encode(raw, enc)
        elif kind == "bearer":
            v = sd.add(kind, "header", "identity", rand_token(rng, 40))
            req_headers.append(("Authorization", f"Bearer {v}"))
        elif kind == "basic":
            user = "user" + rand_token(rng, 8)
            pw = "pw" + rand_token(rng, 14)
            cred = base64.b64encode(f"{user}:{pw}".encode()).decode()
            sd.add(kind, "header", "identity", cred)
            sd.add(kind, "header", "identity", pw)
            req_headers.append(("Authorization", f"Basic {cred}"))
        elif kind == "apikey_header":
            v = sd.add(kind, "header", "identity", rand_token(rng, 32))
            req_headers.append((rng.choice(["X-Api-Key", "Api-Key", "X-Auth-Token"]), v))
        elif kind == "apikey_shape":
            v = sd.add(kind, "header", "identity", rand_apikey_shape(rng))
            if i % 2:
                req_headers.append(("X-Debug", f"key={v}"))
            else:
                target += f"?k={v}"
        elif kind == "session_cookie":
            v = sd.add(kind, "cookie", "identity", rand_token(rng, 26))
            req_headers.append(("Cookie", f"JSESSIONID={v}; lang=en"))
            resp_headers.append(("Set-Cookie", f"JSESSIONID={v}; Path=/; HttpOnly; Secure"))
        elif kind == "password_field":
            v = sd.add(kind, ["json", "form", "query"][i % 3], enc, "pw-" + rand_token(rng, 12))
            if i % 3 == 0:
                raw = orjson.dumps({"login": {"user": "jo", "Password": v}})
                req_headers += _body_headers("application/json", _encode(raw, enc), enc, chunked)
                req_body = _encode(raw, enc)
            elif i % 3 == 1:
                raw = f"user=jo&password={quote_plus(v)}".encode()
                req_headers += _body_headers(
                    "application/x-www-form-urlencoded", _encode(raw, enc), enc, chunked
                )
                req_body = _encode(raw, enc)
            else:
                target += f"?user=jo&pwd={quote_plus(v)}"
        elif kind == "token_field":
            v = sd.add(kind, "json", enc, rand_token(rng, 30))
            raw = orjson.dumps({"access_token": v, "token_type": "bearer", "expires_in": 3600})
            resp_headers += _body_headers("application/json", _encode(raw, enc), enc, chunked)
            resp_body = _encode(raw, enc)
        if not resp_headers or all(k != "Content-Type" for k, _ in resp_headers):
            resp_headers += [("Content-Type", "text/plain"), ("Content-Length", "2")]
            resp_body = b"ok"
        method = "POST" if req_body else "GET"
        sd.exchanges.append(
            Exchange(
                id=f"ex{i}",
                conn=ConnKey(rand_ipv4(rng), 40000 + i, "10.0.0.2", 80),
                request=Request(
                    method, target, headers=req_headers, body=req_body, trailers=req_trailers
                ),
                response=Response(200, "OK", headers=resp_headers, body=resp_body),
                ts_request_start=1700000000.0 + i,
            )
        )
    return sd


# -- clean corpus ----------------------------------------------------------------------------

CLEAN_TYPES = (
    "int_id",
    "big_id",
    "epoch_ms",
    "epoch_s",
    "iso_ts",
    "date",
    "time",
    "price",
    "float",
    "latlon",
    "version",
    "version4",
    "uuid",
    "sha1",
    "sha256",
    "base64",
    "sku",
    "words",
    "url",
    "user_agent",
    "mac",
    "cpp",
    "css",
    "order_no",
    "tracking",
)


def clean_value(kind: str, rng: random.Random) -> str:
    """A realistic non-secret value of the given type."""
    r = rng
    if kind == "int_id":
        return str(r.randrange(1, 10**7))
    if kind == "big_id":
        return str(r.randrange(10**15, 10**19))  # snowflake-style ids
    if kind == "epoch_ms":
        return str(r.randrange(1_600_000_000_000, 1_800_000_000_000))
    if kind == "epoch_s":
        return str(r.randrange(1_600_000_000, 1_800_000_000))
    if kind == "iso_ts":
        return (
            f"20{r.randint(10, 30)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T"
            f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"
            f"{r.choice(['Z', '+02:00', '.123Z', '-05:00'])}"
        )
    if kind == "date":
        return r.choice(
            [
                f"{r.randint(1, 28):02d}.{r.randint(1, 12):02d}.20{r.randint(10, 30)}",
                f"20{r.randint(10, 30)}/{r.randint(1, 12):02d}/{r.randint(1, 28):02d}",
                f"{r.randint(1, 12)}/{r.randint(1, 28)}/20{r.randint(10, 30)}",
            ]
        )
    if kind == "time":
        return f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"
    if kind == "price":
        return f"{r.uniform(0, 10000):.2f}"
    if kind == "float":
        return repr(r.uniform(-1000, 1000))
    if kind == "latlon":
        return f"{r.uniform(-90, 90):.6f},{r.uniform(-180, 180):.6f}"
    if kind == "version":
        return f"{r.randint(0, 20)}.{r.randint(0, 40)}.{r.randint(0, 200)}"
    if kind == "version4":
        return f"{r.randint(1, 20)}.{r.randint(0, 9)}.{r.randint(0, 9999)}.{r.randint(0, 999)}"
    if kind == "uuid":
        return str(uuid.UUID(int=r.getrandbits(128), version=4))
    if kind == "sha1":
        return f"{r.getrandbits(160):040x}"
    if kind == "sha256":
        return f"{r.getrandbits(256):064x}"
    if kind == "base64":
        return base64.b64encode(r.randbytes(r.randint(12, 48))).decode()
    if kind == "sku":
        return f"{r.choice(['SKU', 'AB', 'XK', 'DE'])}-{r.randint(0, 99999):05d}-{r.randint(0, 99)}"
    if kind == "words":
        return " ".join(r.choice(_WORDS) for _ in range(r.randint(3, 12)))
    if kind == "url":
        return (
            f"https://cdn.example.net/assets/{r.randint(1, 9999)}/img_{r.randint(1, 999)}.png"
            f"?w={r.randint(10, 2000)}&v={r.randint(1, 99)}"
        )
    if kind == "user_agent":
        return r.choice(_UAS)
    if kind == "mac":
        return ":".join(f"{r.randrange(256):02x}" for _ in range(6))
    if kind == "cpp":
        return r.choice(["std::vector<int>", "Foo::bar()", "a::b::c", "ns::Type::method"])
    if kind == "css":
        return f"#{r.getrandbits(24):06x}"
    if kind == "order_no":
        return f"{r.randint(100, 999)}-{r.randint(1000000, 9999999)}-{r.randint(1000000, 9999999)}"
    if kind == "tracking":
        return f"1Z{r.getrandbits(64):016X}"[:18]
    raise ValueError(kind)


_WORDS = (
    "the quick brown fox jumps over lazy dog order shipped item widget price total "
    "customer service delivery tomorrow basic plan premium bearer of good news"
).split()
_UAS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "curl/8.4.0",
    "okhttp/4.12.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1",
)


def clean_values(seed: int = 7, per_type: int = 800) -> list[tuple[str, str]]:
    """(type, value) pairs, ``per_type`` of each CLEAN_TYPES."""
    rng = random.Random(seed)
    return [(k, clean_value(k, rng)) for k in CLEAN_TYPES for _ in range(per_type)]


def clean_json_body(rng: random.Random, size: int = 2048) -> bytes:
    """A ~2 KB JSON document made only of clean values."""
    doc: dict = {"items": []}
    while len(orjson.dumps(doc)) < size:
        doc["items"].append({k: clean_value(k, rng) for k in rng.sample(CLEAN_TYPES, 6)})
    return orjson.dumps(doc)
