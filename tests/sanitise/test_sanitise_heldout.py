"""Held-out style leak check: payment, login and API traffic with secrets of every shape in
every structure, default policy, zero leaks.

The generator here was written apart from the detectors and is run on seeds (2024xxx) that were
never used while tuning them. Each seeded secret is checked against the whole JSONL record the
writer produces (what reaches disk) and against every message with its content codings undone
(what a shadow receives), raw and in its usual encodings (percent, form, JSON escapes).

Run as a script to print the leak count per (kind, structure) for a larger number of seeds.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import quopri
import random
import re
import string
import sys
import zlib
from collections import Counter
from pathlib import Path
from urllib.parse import quote, quote_plus

import brotli
import orjson
import pytest

from replay.formats.jsonl import JsonlWriter
from replay.model import ConnKey, Exchange, Request, Response, header_get
from replay.sanitise import Policy, Sanitiser, bodies
from replay.sanitise.pseudonym import iban_mod97, luhn_digit

KEY = b"heldout-test-key-0123456789abcdef"
SEEDS = (2024001, 2024002, 2024003)
PER_SEED = 700

# -- secrets ----------------------------------------------------------------------------------

_CARD_SCHEMES = [  # (prefixes, lengths)
    (["4"], [13, 16, 19]),  # Visa
    ([str(x) for x in range(51, 56)] + [str(x) for x in range(2221, 2721, 37)], [16]),  # MC
    (["50"] + [str(x) for x in range(56, 70)], list(range(12, 20))),  # Maestro
    (["2200", "2201", "2202", "2203", "2204"], [16, 17, 18, 19]),  # Mir
    (["34", "37"], [15]),  # Amex
    (["300", "301", "305", "36", "38", "39"], [14, 16, 19]),  # Diners
    (["3528", "3550", "3589"], [16, 19]),  # JCB
    (["6011", "644", "649", "65"], [16, 19]),  # Discover
    (["62", "81"], [16, 17, 18, 19]),  # UnionPay
    (["60", "6521", "508", "82"], [16]),  # RuPay
]


def card(rng: random.Random) -> str:
    prefixes, lengths = rng.choice(_CARD_SCHEMES)
    pre, n = rng.choice(prefixes), rng.choice(lengths)
    body = pre + "".join(rng.choice(string.digits) for _ in range(n - len(pre) - 1))
    num = body + str(luhn_digit(body.encode()))
    style = rng.randrange(5)
    if style == 0:
        return num
    sep = rng.choice([" ", "-"])
    if style == 1:  # by fours
        return sep.join(num[i : i + 4] for i in range(0, n, 4))
    if style == 2 and n == 15:
        return sep.join([num[:4], num[4:10], num[10:]])
    if style == 3:  # by a random chunk size of 3-6
        k = rng.randint(3, 6)
        return sep.join(num[i : i + k] for i in range(0, n, k))
    # first group 4-6, then random groups of 3-5
    out = [num[: rng.randint(4, 6)]]
    i = len(out[0])
    while i < n:
        k = rng.randint(3, 5)
        out.append(num[i : i + k])
        i += k
    return sep.join(out)


def iban(rng: random.Random) -> str:
    cc, spec = rng.choice([("DE", "18n"), ("GB", "4a14n"), ("FR", "23n"), ("ES", "20n"),
                           ("IT", "1a22n"), ("NL", "4a10n"), ("BE", "12n"), ("PL", "24n")])
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
    v = f"{cc}{check:02d}{bban}"
    if rng.random() < 0.5:
        v = " ".join(v[i : i + 4] for i in range(0, len(v), 4))
    case = rng.randrange(3)  # as written, lower case ('nl91abna0417164300'), mixed case
    if case == 1:
        return v.lower()
    if case == 2:
        return "".join(c.lower() if rng.random() < 0.5 else c for c in v)
    return v


def ssn(rng: random.Random, sep: str | None = None) -> str:
    a = rng.choice([x for x in range(1, 900) if x != 666])
    sep = rng.choice(["-", " "]) if sep is None else sep
    return f"{a:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}"


SSN_NAMES = ["ssn", "SSN", "customer_ssn", "socialSecurityNumber", "social_security_number",
             "taxId", "tax_id", "ssn_number"]
SSN_LABELS = ["SSN", "SSN:", "SSN#", "ssn is", "SSN (on file):", "Social Security Number",
              "social security no.", "Tax ID:", "taxpayer id"]
"""How a generator plants an SSN without dashes: under a name saying so (a JSON field, form
field, query parameter, XML element...), or in text after a label saying so. A bare nine-digit
number with neither is an id (docs/sanitise.md), so it is not planted that way."""


def email(rng: random.Random) -> str:
    local = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8)))
    if rng.random() < 0.35:
        local = rng.choice(["jörg", "müller", "renée", "zoë", "ñandú", "иван", "用户"]) + local
    return f"{local}.{rng.randint(1, 99)}@{rng.choice(['example', 'mail', 'corp'])}.{rng.choice(['com', 'de', 'io'])}"


def _tok(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choices(alphabet, k=n))


def vendor_key(rng: random.Random) -> str:
    k = rng.randrange(10)
    if k == 0:
        return "ghp_" + _tok(rng, 36)
    if k == 1:
        return "AKIA" + _tok(rng, 16, string.ascii_uppercase + string.digits)
    if k == 2:
        return rng.choice(["sk_live_", "rk_live_", "pk_test_"]) + _tok(rng, 24)
    if k == 3:
        return "AIza" + _tok(rng, 35, string.ascii_letters + string.digits + "_-")
    if k == 4:
        return rng.choice(["xoxb-", "xoxp-"]) + f"{rng.randrange(10**12)}-{_tok(rng, 24)}"
    if k == 5:
        return "glpat-" + _tok(rng, 20)
    if k == 6:
        return "github_pat_" + _tok(rng, 22) + "_" + _tok(rng, 59)
    if k == 7:
        return "sk-proj-" + _tok(rng, 48)
    if k == 8:
        return "SG." + _tok(rng, 22) + "." + _tok(rng, 43)
    return "npm_" + _tok(rng, 36)


def jwt(rng: random.Random) -> str:
    def b64(d: bytes) -> str:
        return base64.urlsafe_b64encode(d).rstrip(b"=").decode()

    return ".".join([b64(b'{"alg":"HS256"}'), b64(orjson.dumps({"sub": _tok(rng, 10)})),
                     b64(rng.randbytes(32))])


def pem(rng: random.Random) -> tuple[str, str]:
    """(the PEM text, a line of key material to look for)."""
    lines = [base64.b64encode(rng.randbytes(48)).decode() for _ in range(4)]
    kind = rng.choice(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "])
    return (f"-----BEGIN {kind}PRIVATE KEY-----\n" + "\n".join(lines)
            + f"\n-----END {kind}PRIVATE KEY-----\n"), lines[1]


PASSWORD_NAMES = ["password", "pw", "pwd", "passwd", "pass", "userPassword", "passwordHash",
                  "new_password", "Password", "user[password]", "login_pw", "PIN", "cvv", "cvc",
                  "passphrase", "adminPass", "confirmPassword", "security_code", "db_password"]
SECRET_NAMES = ["api_token", "apiSecret", "secretKey", "private_token", "auth", "appid",
                "access_token", "client_secret", "csrf_token", "x_api_key", "sessionId",
                "refresh_token", "card_number", "pan", "authToken", "signing_key", "api_key",
                "webhookSecret", "ssn", "aws_secret_access_key", "stripe_key", "otp_code",
                "authenticity_token", "resetToken", "bearer_token", "license_key"]


def name(rng: random.Random) -> str:
    return rng.choice(PASSWORD_NAMES + SECRET_NAMES)


def named_value(rng: random.Random) -> str:
    return rng.choice(["", "x", "p@", "Tr0ub4dor&3-", "s3cr3t!"]) + _tok(rng, rng.randint(8, 20))


# -- structures -------------------------------------------------------------------------------


def _enc(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(body)
    if coding == "deflate":
        return zlib.compress(body)
    if coding == "br":
        return brotli.compress(body)
    return body


class Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.secrets: list[tuple[str, str, str]] = []  # (kind, structure, value)
        self.exchanges: list[Exchange] = []

    def secret(self, structure: str, by_name: bool) -> tuple[str, str, str]:
        """(kind, name to put it under, value)."""
        r = self.rng
        if by_name:
            return "named", name(r), named_value(r)
        kind = r.choice(["card", "card", "card", "iban", "ssn", "ssn_bare", "email", "key",
                         "key", "jwt"])
        if kind == "ssn_bare":  # nine digits, under an SSN name (the label is for text)
            return kind, r.choice(SSN_NAMES), ssn(r, "")
        v = {"card": card, "iban": iban, "ssn": ssn, "email": email, "key": vendor_key,
             "jwt": jwt}[kind](r)
        return kind, r.choice(["note", "value", "data", "comment", "ref", "q"]), v

    def add(self, kind: str, structure: str, value: str) -> None:
        self.secrets.append((kind, structure, value))

    def build(self, i: int) -> Exchange:
        r = self.rng
        structure = r.choice(STRUCTURES)
        by_name = r.random() < 0.45
        kind, nm, v = self.secret(structure, by_name)
        if structure == "path" or structure == "fragment" or structure == "header":
            by_name = False
        # what stands in free text: the value, or for a bare SSN the value after its label
        shown = f"{r.choice(SSN_LABELS)} {v}" if kind == "ssn_bare" else v
        target = f"/api/v2/{r.choice(['orders', 'login', 'pay', 'users'])}/{r.randrange(10**6)}"
        req_h: list[tuple[str, str]] = [("Host", "shop.example.net"), ("User-Agent", "gen/1.0")]
        resp_h: list[tuple[str, str]] = [("Content-Type", "application/json")]
        req_b = b""
        resp_b = b'{"ok":true}'
        ctype: str | None = None
        filler = {"id": r.randrange(10**9), "price": round(r.uniform(1, 900), 2),
                  "created": "2025-03-04T05:06:07Z", "sku": f"SKU-{r.randrange(10**5):05d}"}
        if structure == "json":
            doc = {"order": filler, "payment": {nm: v}} if by_name else {
                "order": filler, "payment": {nm: f"paid with {shown} ok"}}
            req_b, ctype = orjson.dumps(doc), "application/json"
        elif structure == "json_number" and kind == "card" and v.isdigit():
            req_b, ctype = b'{"card": ' + v.encode() + b', "amount": 12.5}', "application/json"
        elif structure in ("json_text_plain", "json_no_ctype", "json_number"):
            doc = {"user": {"id": 7, nm: v}}
            req_b = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if r.random() < 0.5 else 0)
            ctype = "text/plain" if structure == "json_text_plain" else None
        elif structure == "ndjson":
            lines = [orjson.dumps({"ev": "a", "n": k}) for k in range(3)]
            lines.insert(r.randrange(4), orjson.dumps({"ev": "login", nm: v}))
            req_b, ctype = b"\n".join(lines) + b"\n", r.choice(["application/x-ndjson", None])
        elif structure == "form":
            req_b = f"user=jo&{quote_plus(nm)}={quote_plus(v)}&remember=1".encode()
            ctype = "application/x-www-form-urlencoded"
        elif structure == "form_json":
            inner = json.dumps({nm: v, "x": 1})
            req_b = f"payload={quote_plus(inner)}&a=b".encode()
            ctype = "application/x-www-form-urlencoded"
        elif structure == "json_in_string":
            req_b = orjson.dumps({"event": "x", "data": json.dumps({"u": 1, nm: v})})
            ctype = "application/json"
        elif structure == "multipart":
            bnd = "----gen" + _tok(r, 10)
            req_b = (f'--{bnd}\r\nContent-Disposition: form-data; name="title"\r\n\r\nhi\r\n'
                     f'--{bnd}\r\nContent-Disposition: form-data; name="{nm}"\r\n\r\n{v}\r\n'
                     f"--{bnd}--\r\n").encode()
            ctype = f"multipart/form-data; boundary={bnd}"
        elif structure == "multipart_b64":
            # a part under Content-Transfer-Encoding (mail-style clients, SOAP-with-attachments)
            bnd = "----gen" + _tok(r, 10)
            pick = r.randrange(3)
            if pick == 0:  # the value itself, under its name
                pname, ptype, content = nm, "text/plain", v.encode()
            elif pick == 1:  # a JSON attachment
                pname, ptype = "payload", "application/json"
                content = orjson.dumps({nm: v, "n": 1} if by_name else {"note": f"x {shown}"})
            else:  # a text file
                pname, ptype = "upload", "text/plain; charset=utf-8"
                content = (f"{nm}={v}\n" if by_name else f"log: paid with {shown}\n").encode()
            if r.random() < 0.8:
                cte = r.choice(["base64", "BASE64", "Base64"])
                enc = base64.encodebytes(content).replace(b"\n", b"\r\n").rstrip(b"\r\n")
                if r.random() < 0.3:
                    enc = base64.b64encode(content)
            else:
                cte = "quoted-printable"
                enc = quopri.encodestring(content).replace(b"\n", b"\r\n").rstrip(b"\r\n")
            req_b = (f'--{bnd}\r\nContent-Disposition: form-data; name="title"\r\n\r\nhi\r\n'
                     f'--{bnd}\r\nContent-Disposition: form-data; name="{pname}"; '
                     f'filename="{pname}.txt"\r\nContent-Type: {ptype}\r\n'
                     f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + enc + (
                     f"\r\n--{bnd}--\r\n").encode()
            ctype = f"multipart/form-data; boundary={bnd}"
        elif structure == "xml":
            tag = nm.replace("[", "_").replace("]", "")
            if r.random() < 0.5:
                req_b = (f'<?xml version="1.0"?><Req><User>jo</User><{tag}>{v}</{tag}>'
                         f"</Req>").encode()
            else:
                req_b = f'<Req><Auth user="jo" {tag}="{v}"/></Req>'.encode()
            if not by_name:
                req_b = f"<Req><Note>customer {shown} ok</Note></Req>".encode()
            ctype = r.choice(["application/xml", "text/xml", "application/soap+xml"])
        elif structure == "html":
            req_b = (f'<html><form method="post"><input type="hidden" name="{nm}" '
                     f'value="{v}"><input name="q"></form></html>').encode()
            if not by_name:
                req_b = f"<html><p>Card on file: {shown}</p></html>".encode()
            ctype = "text/html; charset=utf-8"
            resp_h, resp_b, req_b = [("Content-Type", ctype)], req_b, b""
            ctype = None
        elif structure == "text":
            if by_name:
                sep = r.choice(["=", ": ", " = ", ":"])
                req_b = f"# config\n{nm}{sep}{v}\nregion=eu-west-1\n".encode()
            else:
                req_b = f"log: user paid with {shown} at 12:00\n".encode()
            ctype = r.choice(["text/plain", None, "application/octet-stream"])
        elif structure == "pem":
            text, line = pem(r)
            self.add("pem", structure, line)
            kind, v = "pem", line
            if r.random() < 0.5:
                req_b, ctype = orjson.dumps({"cert": text, "x": 1}), "application/json"
            else:
                req_b, ctype = text.encode(), "text/plain"
            by_name = True  # already recorded
        elif structure == "query":
            target += f"?{quote_plus(nm)}={quote_plus(v)}&page=2"
        elif structure == "fragment":
            if kind in ("key", "jwt") or r.random() < 0.5:
                target += f"#access_token={quote_plus(v)}&state=xyz"
            else:
                v = _tok(r, 32, "0123456789abcdef")
                kind = "token"
                target += f"#/confirm/{v}"
        elif structure == "path":
            v = _tok(r, 32, "0123456789abcdef") if r.random() < 0.6 else _tok(r, 40)
            kind = "token"
            target = f"/{r.choice(['reset-password', 'verify', 'magic-link', 'p'])}/{v}/confirm"
        elif structure == "cookie":
            req_h.append(("Cookie", f"theme=dark; {quote(nm)}={quote(v)}"))
        elif structure == "header":
            if kind == "named":
                hn = r.choice(["X-Api-Key", "X-Auth-Token", "X-Secret", "X-Private-Token",
                               "X-Session-Id", "X-Password", "X-Client-Secret", "X-Debug"])
                req_h.append((hn, v if hn != "X-Debug" else f"{nm}={v}"))
            else:
                req_h.append((r.choice(["X-Note", "X-Customer"]), f"paid with {shown}"))
        if structure != "pem":
            self.add(kind, structure, v)
        if req_b:
            coding = r.choice(["identity", "identity", "gzip", "deflate", "br"])
            enc = _enc(req_b, coding)
            if ctype:
                req_h.append(("Content-Type", ctype))
            if coding != "identity":
                req_h.append(("Content-Encoding", coding))
            req_h.append(("Content-Length", str(len(enc))))
            req_b = enc
        resp_h.append(("Content-Length", str(len(resp_b))))
        return Exchange(
            id=f"h{i}",
            conn=ConnKey("198.51.100.9", 40000 + i % 20000, "10.0.0.2", 443),
            request=Request("POST" if req_b else "GET", target, headers=req_h, body=req_b),
            response=Response(200, "OK", headers=resp_h, body=resp_b),
        )


STRUCTURES = ["json", "json_number", "json_text_plain", "json_no_ctype", "ndjson", "form",
              "form_json", "json_in_string", "multipart", "multipart_b64", "xml", "html", "text",
              "pem", "query", "fragment", "path", "cookie", "header"]


def _forms(v: str) -> list[bytes]:
    out = {v, quote(v, safe=""), quote_plus(v), quote(v, safe="@:/"), json.dumps(v)[1:-1],
           json.dumps(v, ensure_ascii=False)[1:-1]}
    return [x.encode("utf-8") for x in out if len(x) >= 4]


def _wire(ex: Exchange) -> bytes:
    out = []
    for msg in (ex.request, ex.response):
        if msg is None:
            continue
        if isinstance(msg, Request):
            out.append(msg.target.encode("utf-8", "replace"))
        out += [f"{k}: {v}".encode("utf-8", "replace") for k, v in msg.headers]
        codes = bodies.codings(header_get(msg.headers, "content-encoding"))
        body = msg.body
        if codes and body:
            body = bodies.decode(body, codes)
        out.append(body)
        out += _transfer_decoded(body)
    return b"\n".join(out)


_CTE_PART = re.compile(
    rb"(?is)content-transfer-encoding:[ \t]*(base64|quoted-printable)\r\n(?:[^\r\n]+\r\n)*"
    rb"\r\n(.*?)\r\n--"
)


def _transfer_decoded(body: bytes) -> list[bytes]:
    """The content of every multipart part under a Content-Transfer-Encoding, decoded (written
    apart from the sanitiser's multipart code): a secret passed on inside base64 is a leak."""
    out = []
    for m in _CTE_PART.finditer(body):
        data = m.group(2)
        if m.group(1).lower() == b"base64":
            try:
                out.append(base64.b64decode(b"".join(data.split())))
            except ValueError:
                out.append(data)
        else:
            out.append(quopri.decodestring(data))
    return out


def leaks(seed: int, n: int = PER_SEED) -> tuple[list[tuple[str, str, str]], int]:
    g = Gen(seed)
    exs = [g.build(i) for i in range(n)]
    san = Sanitiser(Policy.default(), KEY)
    buf = io.BytesIO()
    w = JsonlWriter(buf)
    wire = []
    for ex in exs:
        out = san.apply(ex)
        assert out is not None
        w.write(out)
        wire.append(_wire(out))
    w.close()
    blob = buf.getvalue() + b"\n".join(wire)
    found = [s for s in g.secrets if any(f in blob for f in _forms(s[2]))]
    return found, len(g.secrets)


@pytest.mark.parametrize("seed", SEEDS)
def test_heldout_generator_leaks_nothing(seed: int) -> None:
    found, total = leaks(seed)
    assert total >= PER_SEED
    assert not found, f"{len(found)} of {total} leaked: {found[:8]}"


def test_generator_covers_every_structure_and_kind() -> None:
    g = Gen(SEEDS[0])
    for i in range(PER_SEED):
        g.build(i)
    assert {s for _k, s, _v in g.secrets} == set(STRUCTURES)
    kinds = Counter(k for k, _s, _v in g.secrets)
    assert {"card", "iban", "ssn", "ssn_bare", "email", "key", "jwt", "named", "pem",
            "token"} <= set(kinds)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    n_seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    tot = 0
    bad: Counter[tuple[str, str]] = Counter()
    for s in range(n_seeds):
        found, total = leaks(9_000_000 + s)
        tot += total
        bad.update((k, st) for k, st, _v in found)
        for x in found[:40]:
            if x[0] == "named" or len(sys.argv) > 2:
                print("leak:", x)
    print(f"{sum(bad.values())} of {tot} leaked", dict(bad))
