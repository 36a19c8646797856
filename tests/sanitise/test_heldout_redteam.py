"""Red-team held-out generator: secrets in the shapes real shop, login and API traffic carries,
planted where the first held-out generator (``test_sanitise_heldout.py``) does not put them.

Written apart from the detectors, seeded and deterministic. What differs from the first one:
cards of every scheme and length as JSON *numbers* under any name and inside arrays, in path
segments, query values under unrelated names, XML text and attributes, visible HTML inputs
(value before name, ``<textarea>``), cookies and custom headers; names in camelCase, snake,
kebab, dotted and bracketed spellings (``payment_method[card][number]``, ``user.password``,
``j_password``); vendor keys by family (GitHub ``gho_``/``ghu_``/``ghs_``/``ghr_``, AWS STS
responses and credential files, Stripe ``whsec_``, Slack ``xoxa-`` and webhook URLs, Twilio
``SK``, OpenAI/Anthropic ``sk-``, PEM incl. ``Proc-Type`` encrypted RSA, DSA and PGP blocks)
outside any name; IBANs of 20 countries compact/grouped in every case; SSNs dashed, spaced and
bare under SSN-ish names or labels (also a label *after* the number); e-mails with non-ASCII
local parts and IDN domains; E.164 phone numbers; bodies under stacked codings (``gzip, br``)
and multipart parts in base64.

Each exchange is checked against its own sanitised record (JSONL) and wire view (content and
transfer codings undone), raw and in its usual encodings. Run as a script for more seeds:
``python tests/sanitise/test_heldout_redteam.py 20`` prints leaks per (kind, structure).
"""

from __future__ import annotations

import base64
import io
import json
import random
import string
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import quote, quote_plus

import orjson
import pytest
from test_sanitise_heldout import _enc, _forms, _wire

from replay.formats.jsonl import JsonlWriter
from replay.model import ConnKey, Exchange, Request, Response
from replay.sanitise import Policy, Sanitiser
from replay.sanitise.pseudonym import iban_mod97, luhn_digit

KEY = b"redteam-test-key-0123456789abcdef"
SEEDS = (3031001, 3031002, 3031003)
PER_SEED = 600

A = string.ascii_letters + string.digits
HEX = "0123456789abcdef"

# -- secrets ----------------------------------------------------------------------------------

CARD_SCHEMES = [  # (scheme, prefixes, lengths)
    ("visa", ["4"], [13, 16, 18, 19]),
    ("mastercard", ["51", "52", "53", "54", "55", "2221", "2300", "2720", "2599"], [16]),
    ("maestro", ["50", "56", "57", "58", "6304", "6759", "676770", "639", "67"], [12, 13, 15, 16, 18, 19]),
    ("mir", ["2200", "2201", "2202", "2203", "2204"], [16, 17, 18, 19]),
    ("amex", ["34", "37"], [15]),
    ("diners", ["300", "303", "305", "3095", "36", "38", "39"], [14, 16, 17, 19]),
    ("jcb", ["3528", "3540", "3589"], [16, 17, 18, 19]),
    ("discover", ["6011", "644", "647", "649", "65", "622126"], [16, 19]),
    ("unionpay", ["62", "81"], [16, 17, 18, 19]),
    ("rupay", ["60", "65", "81", "82", "508", "353", "356"], [16]),
    ("troy", ["9792"], [16]),
    ("elo", ["4011", "4389", "5041", "6362", "6504", "6516"], [16]),
    ("hipercard", ["606282", "3841"], [16, 19]),
    ("verve", ["506099", "650002"], [16, 18, 19]),
    ("dankort", ["5019"], [16]),
]


def card_digits(r: random.Random) -> tuple[str, str]:
    scheme, prefixes, lengths = r.choice(CARD_SCHEMES)
    pre, n = r.choice(prefixes), r.choice(lengths)
    body = pre + "".join(r.choice(string.digits) for _ in range(n - len(pre) - 1))
    return scheme, body + str(luhn_digit(body.encode()))


def card_grouped(r: random.Random, num: str) -> str:
    n = len(num)
    style = r.randrange(6)
    sep = r.choice([" ", "-"])
    if style <= 1:
        return num
    if style == 2 or n not in (14, 15):
        return sep.join(num[i : i + 4] for i in range(0, n, 4))
    if style == 3 and n == 15:
        return sep.join([num[:4], num[4:10], num[10:]])  # Amex 4-6-5
    if n == 14:
        return sep.join([num[:4], num[4:10], num[10:]])  # Diners 4-6-4
    return sep.join([num[:5], num[5:10], num[10:]])  # 5-5-5


IBAN_SPECS = [("DE", "18n"), ("GB", "4a14n"), ("FR", "10n11c2n"), ("NL", "4a10n"), ("ES", "20n"),
              ("IT", "1a10n12c"), ("CH", "5n12c"), ("AT", "16n"), ("BE", "12n"), ("PL", "24n"),
              ("SE", "20n"), ("DK", "14n"), ("NO", "11n"), ("FI", "14n"), ("IE", "4a14n"),
              ("PT", "21n"), ("LU", "3n13c"), ("MT", "4a5n18c"), ("AE", "19n"), ("BR", "23n1a1c"),
              ("TR", "5n1n16c"), ("SA", "2n18c"), ("CZ", "20n"), ("RO", "4a16c")]


def iban(r: random.Random) -> str:
    cc, spec = r.choice(IBAN_SPECS)
    bban, num = "", ""
    for ch in spec:
        if ch.isdigit():
            num += ch
            continue
        pool = {"n": string.digits, "a": string.ascii_uppercase,
                "c": string.ascii_uppercase + string.digits}[ch]
        bban += "".join(r.choice(pool) for _ in range(int(num)))
        num = ""
    check = 98 - iban_mod97((cc + "00" + bban).encode())
    v = f"{cc}{check:02d}{bban}"
    if r.random() < 0.5:
        v = " ".join(v[i : i + 4] for i in range(0, len(v), 4))
    c = r.randrange(4)
    if c == 1:
        return v.lower()
    if c == 2:
        return "".join(x.lower() if r.random() < 0.5 else x for x in v)
    if c == 3:
        return v[:2].upper() + v[2:].lower()
    return v


def ssn(r: random.Random, sep: str) -> str:
    a = r.choice([x for x in range(1, 900) if x != 666])
    return f"{a:03d}{sep}{r.randint(1, 99):02d}{sep}{r.randint(1, 9999):04d}"


def email(r: random.Random) -> str:
    local = r.choice(["jörg.müller", "renée", "zoë.ng", "ñandú", "иван.петров", "用户", "θεός",
                      "françois+shop", "o'brien", "jo.doe+orders", "x_y-z", "ali"])
    dom = r.choice(["bücher.de", "münchen.example", "例子.广告", "пример.рф", "xn--bcher-kva.de",
                    "mail.example.com", "corp.co.uk", "ex.io"])
    return f"{local}{r.randrange(100)}@{dom}"


def phone(r: random.Random) -> str:
    k = r.randrange(4)
    if k == 0:
        return f"+49 30 {r.randint(1000000, 9999999)}"
    if k == 1:
        return f"+1 (415) 555-{r.randint(1000, 9999)}"
    if k == 2:
        return f"+447700{r.randint(100000, 999999)}"
    return f"+33 6 {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)}"


def vendor_key(r: random.Random) -> tuple[str, str]:
    """(family, key)."""
    t = lambda n, a=A: "".join(r.choices(a, k=n))  # noqa: E731
    up = string.ascii_uppercase + string.digits
    """(family, key) of a key found by its shape. AWS secret keys and Twilio auth tokens have no
    shape of their own (40 base64 / 32 hex characters): they are planted under a name only."""
    fam, make = r.choice([
        ("github", lambda: r.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + t(36)),
        ("github", lambda: "github_pat_11" + t(20, up) + "_" + t(59)),
        ("aws_id", lambda: r.choice(["AKIA", "ASIA"]) + t(16, string.ascii_uppercase + "234567")),
        ("stripe", lambda: r.choice(["sk_live_", "rk_live_", "sk_test_", "whsec_"])
         + t(r.choice([24, 32, 99]))),
        ("google", lambda: "AIza" + t(35, A + "_-")),
        ("slack", lambda: r.choice(["xoxb-", "xoxp-", "xoxa-2-", "xoxe.xoxp-1-"])
         + f"{r.randrange(10**12)}-{r.randrange(10**12)}-" + t(24)),
        ("slack_hook", lambda: f"https://hooks.slack.com/services/T{t(8, up)}/B{t(10, up)}/{t(24)}"),
        ("twilio", lambda: "SK" + t(32, HEX)),
        ("sendgrid", lambda: "SG." + t(22, A + "_-") + "." + t(43, A + "_-")),
        ("openai", lambda: "sk-" + t(48)),
        ("openai", lambda: "sk-proj-" + t(64, A + "_-")),
        ("anthropic", lambda: "sk-ant-api03-" + t(93, A + "_-") + "AA"),
        ("jwt", lambda: _jwt(r)),
        ("gitlab", lambda: "glpat-" + t(20, A + "_-")),
        ("mailgun", lambda: "key-" + t(32, HEX)),
        ("npm", lambda: "npm_" + t(36)),
    ])
    return fam, make()


def _jwt(r: random.Random) -> str:
    def b64(d: bytes) -> str:
        return base64.urlsafe_b64encode(d).rstrip(b"=").decode()

    return ".".join([b64(b'{"alg":"RS256","typ":"JWT"}'),
                     b64(orjson.dumps({"sub": str(r.randrange(10**9)), "scope": "pay"})),
                     b64(r.randbytes(64))])


def pem(r: random.Random) -> tuple[str, str]:
    kind = r.choice(["OPENSSH ", "EC ", "ENCRYPTED ", "RSA ", "DSA ", "", "PGP "])
    lines = [base64.b64encode(r.randbytes(48)).decode() for _ in range(5)]
    head = ""
    if kind == "RSA " and r.random() < 0.5:
        head = f"Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,{''.join(r.choices(HEX.upper(), k=32))}\n\n"
    if kind == "PGP ":
        return ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n" + "\n".join(lines)
                + "\n-----END PGP PRIVATE KEY BLOCK-----\n"), lines[2]
    return (f"-----BEGIN {kind}PRIVATE KEY-----\n{head}" + "\n".join(lines)
            + f"\n-----END {kind}PRIVATE KEY-----\n"), lines[2]


PW_NAMES = ["userPassword", "user[password]", "user.password", "j_password", "passwordConfirmation",
            "password_confirmation", "current-password", "login[pass]", "Passwort", "pwd1", "otp",
            "pin", "cvv2", "securityCode", "card[cvc]", "cardCvc", "cvn", "totp_code", "mfaCode",
            "smsCode", "one_time_code", "verification_code", "2fa_code", "PIN", "Password"]
SECRET_NAMES = ["client-secret", "x-api-key", "accessToken", "refresh_token", "sessionid",
                "cardNumber", "card_number", "payment_method[card][number]", "cc_number", "ccnum",
                "creditCardNumber", "card.number", "iban", "IBAN", "billing[iban]", "ssn",
                "taxId", "tax_id", "socialSecurityNumber", "id_token", "idToken", "clientSecret",
                "apiKey", "api-key", "private_key", "webhook_secret", "X-Amz-Security-Token",
                "SessionToken", "SecretAccessKey", "authorization", "bearerToken", "oauth_token",
                "oauth_token_secret", "consumer_secret", "account_number", "accountNumber",
                "bank_account", "encryptionKey", "hmacKey", "masterKey",
                "license_key", "state_token", "magic_token", "reset_token",
                "invite_code", "promo_secret", "jsessionid", "PHPSESSID", "connect.sid"]


def named_value(r: random.Random, nm: str) -> str:
    low = nm.lower()
    if any(x in low for x in ("otp", "pin", "code", "cvv", "cvc", "cvn")):
        return "".join(r.choices(string.digits, k=r.choice([6, 7, 8])))
    if any(x in low for x in ("card", "cc")):
        return card_digits(r)[1]
    if "iban" in low:
        return iban(r)
    if "ssn" in low or "tax" in low or "social" in low:
        return ssn(r, r.choice(["", "-"]))
    if "account" in low or "routing" in low:
        return "".join(r.choices(string.digits, k=r.randint(9, 12)))
    return r.choice(["", "Tr0ub4dor&3", "p@ss-", "hunter2_"]) + "".join(r.choices(A, k=r.randint(10, 24)))


# -- structures -------------------------------------------------------------------------------

STRUCTURES = ["json_number", "json_array", "json_named", "json_deep", "json_text", "query",
              "query_raw", "path", "xml_text", "xml_attr", "html_form", "multipart",
              "multipart_b64", "form_json", "form", "stacked_coding", "cookie", "auth_header",
              "custom_header", "fragment", "text_log", "aws_sts", "env_file", "soap", "graphql",
              "stripe_form", "json_escaped_key", "ssn_context", "resp_location", "resp_set_cookie",
              "resp_json", "resp_html", "email_url"]


class Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def value(self) -> tuple[str, str]:
        """(kind, value) of a secret found by shape."""
        r = self.r
        k = r.choice(["card", "card", "card", "card_g", "iban", "iban", "ssn", "ssn_sp", "email",
                      "key", "key", "key", "phone"])
        if k in ("card", "card_g"):
            scheme, num = card_digits(r)
            return f"card:{scheme}", (num if k == "card" else card_grouped(r, num))
        if k == "iban":
            return "iban", iban(r)
        if k in ("ssn", "ssn_sp"):
            return "ssn", ssn(r, "-" if k == "ssn" else " ")
        if k == "email":
            return "email", email(r)
        if k == "phone":
            return "phone", phone(r)
        fam, v = vendor_key(r)
        return f"key:{fam}", v

    def build(self, i: int) -> tuple[Exchange, list[tuple[str, str, str]]]:
        r = self.r
        st = r.choice(STRUCTURES)
        secrets: list[tuple[str, str, str]] = []
        target = f"/shop/{r.choice(['checkout', 'login', 'account', 'api/v3/payments'])}"
        req_h = [("Host", "shop.example.org"), ("User-Agent", "Mozilla/5.0 redteam")]
        body = b""
        ctype: str | None = None
        coding = r.choice(["identity", "identity", "identity", "gzip", "deflate", "br"])
        resp_extra: list[tuple[str, str]] = []
        resp_body = b'{"ok":true}'
        resp_ct = "application/json"
        filler = {"orderId": r.randrange(10**6), "total": round(r.uniform(1, 999), 2),
                  "currency": "EUR", "items": [{"sku": f"A-{r.randrange(999)}", "qty": 1}]}

        def plant(kind: str, v: str) -> str:
            secrets.append((kind, st, v))
            return v

        if st == "json_number":
            scheme, num = card_digits(r)
            nm = r.choice(["number", "pan", "cardNumber", "value", "n", "acct", "data", "x"])
            doc = orjson.dumps({**filler, "payment": {"method": "card", nm: int(num)}})
            plant(f"card:{scheme}", num)
            body, ctype = doc, r.choice(["application/json", "text/plain", None])
        elif st == "json_array":
            scheme, num = card_digits(r)
            plant(f"card:{scheme}", num)
            arr = [r.randrange(10**5), int(num), r.randrange(10**3)]
            body = orjson.dumps({"cards": arr} if r.random() < 0.5 else arr)
            ctype = "application/json"
        elif st == "json_named":
            nm = r.choice(PW_NAMES + SECRET_NAMES)
            v = plant(f"named:{nm}", named_value(r, nm))
            doc = {**filler, nm: v} if r.random() < 0.5 else {**filler, "form": {nm: v}}
            body, ctype = orjson.dumps(doc), r.choice(["application/json", "application/vnd.api+json", "text/plain"])
        elif st == "json_deep":
            kind, v = self.value()
            plant(kind, v)
            doc = {"data": [{"attributes": {"billing": {"note": f"use {v} please", "id": 3}}}]}
            body, ctype = orjson.dumps(doc), "application/json"
        elif st == "json_text":
            kind, v = self.value()
            plant(kind, v)
            body = orjson.dumps({"comment": v, "ua": "x"})
            ctype = r.choice(["application/json", None, "application/octet-stream"])
        elif st == "query":
            if r.random() < 0.5:
                nm = r.choice(PW_NAMES + SECRET_NAMES)
                v = plant(f"named:{nm}", named_value(r, nm))
            else:
                nm = r.choice(["q", "ref", "data", "x", "v", "filter"])
                kind, v = self.value()
                plant(kind, v)
            target += f"?lang=en&{quote_plus(nm)}={quote_plus(v)}&page=1"
        elif st == "query_raw":
            kind, v = self.value()
            plant(kind, v)
            target += f"?search={quote(v, safe='@+')}"
        elif st == "path":
            kind, v = self.value()
            if kind.startswith("key:slack_hook") or "/" in v:
                kind, v = "card:visa", card_digits(r)[1]
            plant(kind, v)
            target = f"/api/{r.choice(['cards', 'users', 'iban', 'keys', 'lookup'])}/{quote(v, safe='@+')}/details"
        elif st == "xml_text":
            if r.random() < 0.5:
                nm = r.choice(["Password", "CardNumber", "Pan", "Cvv2", "SecurityCode", "ApiKey",
                               "SessionToken", "Iban", "SSN", "TaxId", "ns1:Password", "wsse:Password"])
                v = plant(f"named:{nm}", named_value(r, nm))
            else:
                nm = r.choice(["Note", "Value", "Data", "Memo"])
                kind, v = self.value()
                plant(kind, v)
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Payment xmlns:ns1="urn:x" xmlns:wsse="urn:w">'
                    f"<Amount>10.00</Amount><{nm}>{v}</{nm}></Payment>").encode()
            ctype = r.choice(["application/xml", "text/xml", None])
        elif st == "xml_attr":
            if r.random() < 0.5:
                nm = r.choice(["password", "cardNumber", "cvv", "token", "apiKey", "iban", "ssn", "pin"])
                v = plant(f"named:{nm}", named_value(r, nm))
            else:
                nm = r.choice(["value", "ref", "data"])
                kind, v = self.value()
                plant(kind, v)
            q = r.choice(['"', "'"])
            body = f"<Auth user={q}jo{q} {nm}={q}{v}{q} />".encode()
            ctype = "application/xml"
        elif st == "html_form":
            nm = r.choice(PW_NAMES + SECRET_NAMES)
            v = plant(f"named:{nm}", named_value(r, nm))
            k = r.randrange(3)
            if k == 0:
                inp = f'<input value="{v}" type="text" name="{nm}" autocomplete="cc-number">'
            elif k == 1:
                inp = f"<input type='password' name='{nm}' value='{v}'>"
            else:
                inp = f'<textarea name="{nm}">{v}</textarea>'
            body = f'<!doctype html><html><body><form action="/pay" method="post">{inp}</form></body></html>'.encode()
            ctype = "text/html"
        elif st in ("multipart", "multipart_b64"):
            bnd = "WebKitFormBoundary" + "".join(r.choices(A, k=16))
            if r.random() < 0.5:
                nm = r.choice(PW_NAMES + SECRET_NAMES)
                v = plant(f"named:{nm}", named_value(r, nm))
            else:
                nm = r.choice(["comment", "file", "notes"])
                kind, v = self.value()
                plant(kind, v)
            content = v.encode()
            hdr = f'Content-Disposition: form-data; name="{nm}"\r\n'
            if st == "multipart_b64":
                hdr += "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n"
                content = base64.b64encode(content)
            body = (f'--{bnd}\r\nContent-Disposition: form-data; name="email_opt_in"\r\n\r\n1\r\n'
                    f"--{bnd}\r\n{hdr}\r\n").encode() + content + f"\r\n--{bnd}--\r\n".encode()
            ctype = f"multipart/form-data; boundary={bnd}"
        elif st == "form_json":
            if r.random() < 0.5:
                nm = r.choice(PW_NAMES + SECRET_NAMES)
                v = plant(f"named:{nm}", named_value(r, nm))
                inner = json.dumps({"login": {nm: v}})
            else:
                kind, v = self.value()
                plant(kind, v)
                inner = json.dumps({"memo": v, "n": 1}, ensure_ascii=r.random() < 0.5)
            body = f"state=xyz&payload={quote_plus(inner)}".encode()
            ctype = "application/x-www-form-urlencoded"
        elif st == "form":
            nm = r.choice(PW_NAMES + SECRET_NAMES)
            v = plant(f"named:{nm}", named_value(r, nm))
            body = f"utf8=%E2%9C%93&{quote(nm, safe='')}={quote_plus(v)}&commit=Pay".encode()
            ctype = "application/x-www-form-urlencoded; charset=UTF-8"
        elif st == "stacked_coding":
            kind, v = self.value()
            plant(kind, v)
            body = orjson.dumps({"msg": f"customer data {v}"})
            ctype = "application/json"
            coding = "gzip, br"
        elif st == "cookie":
            if r.random() < 0.5:
                kind, v = self.value()
                plant(kind, v)
                req_h.append(("Cookie", f"_ga=GA1.2.3.4; last={quote(v, safe='@')}"))
            else:
                v = plant("named", "".join(r.choices(A, k=26)))
                req_h.append(("Cookie", f"{r.choice(['sessionid', 'PHPSESSID', 'remember_me', 'cart'])}={v}"))
        elif st == "auth_header":
            fam, v = vendor_key(r)
            plant(f"key:{fam}", v)
            scheme = r.choice(["Bearer ", "token ", "Token ", "Bot ", "", "SSWS ", "Key "])
            req_h.append(("Authorization", scheme + v))
        elif st == "custom_header":
            hn = r.choice(["X-Api-Key", "x-api-key", "Client-Secret", "X-Refresh-Token", "X-Otp",
                           "X-Card-Number", "X-Session-Id", "X-Note", "X-Forwarded-Client-Cert",
                           "X-Shopify-Access-Token", "X-Goog-Api-Key", "Api-Token", "X-Auth"])
            if hn in ("X-Note", "X-Forwarded-Client-Cert"):
                kind, v = self.value()
                plant(kind, v)
            else:
                v = plant(f"named:{hn}", named_value(r, hn))
            req_h.append((hn, v))
        elif st == "fragment":
            if r.random() < 0.5:
                fam, v = vendor_key(r)
                if "/" in v:
                    fam, v = "jwt", _jwt(r)
                plant(f"key:{fam}", v)
                target += f"#{r.choice(['access_token', 'id_token', 'token', 'code'])}={v}&token_type=bearer"
            else:
                v = plant("token", "".join(r.choices(A, k=40)))
                target += f"#!/reset/{v}"
        elif st == "text_log":
            kind, v = self.value()
            plant(kind, v)
            body = f"2025-01-01T00:00:00Z INFO payment accepted value={v!s} for order 12\n".encode()
            if r.random() < 0.5:
                body = f"customer wrote: {v}\n".encode()
            ctype = r.choice(["text/plain", None, "application/x-log"])
        elif st == "aws_sts":
            ak = plant("key:aws_id", "ASIA" + "".join(r.choices(string.ascii_uppercase + "234567", k=16)))
            sk = plant("key:aws_secret", "".join(r.choices(A + "/+", k=40)))
            tok = plant("key:aws_session", "".join(r.choices(A + "/+", k=300)))
            if r.random() < 0.5:
                body = orjson.dumps({"Credentials": {"AccessKeyId": ak, "SecretAccessKey": sk,
                                                     "SessionToken": tok, "Expiration": "2025-01-01T00:00:00Z"}})
                ctype = "application/json"
            else:
                body = (f"<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>{ak}</AccessKeyId>"
                        f"<SecretAccessKey>{sk}</SecretAccessKey><SessionToken>{tok}</SessionToken>"
                        f"</Credentials></AssumeRoleResult></AssumeRoleResponse>").encode()
                ctype = "text/xml"
        elif st == "env_file":
            text, line = pem(r)
            kind = "pem"
            plant(kind, line)
            sk = plant("key:aws_secret", "".join(r.choices(A + "/+", k=40)))
            fam, v = vendor_key(r)
            plant(f"key:{fam}", v)
            tw = plant("named:TWILIO_AUTH_TOKEN", "".join(r.choices(HEX, k=32)))
            sep = r.choice(["=", ": ", " = "])
            body = (f"[default]\naws_access_key_id = AKIA{'X' * 16}\naws_secret_access_key{sep}{sk}\n"
                    f"OTHER={v}\nTWILIO_AUTH_TOKEN{sep}{tw}\nKEY=\"{text}\"\n").encode()
            ctype = r.choice(["text/plain", None])
            if r.random() < 0.5:
                body, ctype = orjson.dumps({"files": {"id_key": text, "env": body.decode()}}), "application/json"
        elif st == "graphql":
            pw = plant("named:password", named_value(r, "password"))
            kind, w = self.value()
            plant(kind, w)
            q = f'mutation {{ login(email: "jo@x.io", password: "{pw}") {{ token }} }}'
            body = orjson.dumps({"query": q, "variables": {"note": w}, "operationName": "Login"})
            ctype = "application/json"
        elif st == "stripe_form":
            scheme, num = card_digits(r)
            plant(f"card:{scheme}", num)
            cvc = "".join(r.choices(string.digits, k=4))
            plant("named:card[cvc]", f"card[cvc]={cvc}&")  # 4 digits alone could be anywhere
            body = (f"type=card&card[number]={num}&card[cvc]={cvc}&card[exp_month]=12"
                    f"&card[exp_year]=2031&billing_details[email]=x%40y.io").encode()
            ctype = "application/x-www-form-urlencoded"
        elif st == "json_escaped_key":
            nm = r.choice(["pass\\u0077ord", "\\u0070assword", "api\\u005fkey", "tok\\u0065n"])
            v = plant(f"named:{nm}", named_value(r, "password"))
            body = ('{"user":"jo","' + nm + '":"' + v + '","n":1}').encode()
            ctype = "application/json"
        elif st == "ssn_context":
            v = plant("ssn_bare", ssn(r, ""))
            k = r.randrange(7)
            if k == 5:  # the label after the number
                body = f"applicant {r.choice(['Jo', 'Ann'])}: {v} {r.choice(['(SSN)', '- ssn', 'is my SSN'])}\n".encode()
                ctype = r.choice(["text/plain", None])
            elif k == 6:  # a label inside a string of a large JSON document without '='
                doc = {"orders": [{**filler, "n": x} for x in range(8)],
                       "note": f"customer {r.choice(['SSN', 'ssn:', 'Social Security No.'])} {v} verified"}
                body, ctype = orjson.dumps(doc), "application/json"
            elif k == 0:
                body = orjson.dumps({r.choice(["ssn", "SSN", "ssnNumber", "social_security_no",
                                                "SocialSecurityNumber", "taxpayerId"]): v})
                ctype = "application/json"
            elif k == 1:
                body = f"{r.choice(['ssn', 'customer[ssn]', 'applicant.ssn', 'taxId'])}={v}&x=1".encode()
                ctype = "application/x-www-form-urlencoded"
            elif k == 2:
                body = f"<Applicant><SSN>{v}</SSN><Name>Jo</Name></Applicant>".encode()
                ctype = "application/xml"
            elif k == 3:
                body = f"Applicant SSN: {v}\nIncome: 52000\n".encode()
                ctype = "text/plain"
            else:
                target += f"?ssn={v}"
        elif st == "resp_location":
            fam, v = "jwt", _jwt(r)
            plant(f"key:{fam}", v)
            code = plant("named:code", "".join(r.choices(A, k=30)))
            resp_extra.append(("Location", f"https://app.example.org/cb?code={code}#id_token={v}&state=s"))
        elif st == "resp_set_cookie":
            v = plant("named:session", "".join(r.choices(A, k=32)))
            resp_extra.append(("Set-Cookie", f"__Host-session={v}; Path=/; Secure; HttpOnly"))
        elif st == "resp_json":
            nm = r.choice(["access_token", "refresh_token", "id_token", "client_secret", "apiKey",
                           "sessionToken", "password", "card_number", "iban"])
            v = plant(f"named:{nm}", named_value(r, nm))
            kind, w = self.value()
            plant(kind, w)
            resp_body = orjson.dumps({"data": {nm: v, "profile": {"bio": w}}, "expires_in": 3600})
        elif st == "resp_html":
            nm = r.choice(["authenticity_token", "csrfmiddlewaretoken", "__RequestVerificationToken",
                           "_token", "csrf"])
            v = plant(f"named:{nm}", "".join(r.choices(A + "+/", k=40)))
            kind, w = self.value()
            plant(kind, w)
            resp_body = (f'<html><head><meta name="csrf-token" content="x"></head><body>'
                         f'<form><input type=hidden name={nm} value={v}></form>'
                         f"<p>Your card {w} was saved.</p></body></html>").encode()
            resp_ct = "text/html; charset=utf-8"
        elif st == "email_url":
            e = plant("email", email(r))
            k = r.randrange(3)
            if k == 0:
                target = f"/api/users/{quote(e, safe='')}/orders"
            elif k == 1:
                req_h.append(("From", e))
            else:
                body = f'<a href="mailto:{e}?subject=hi">mail</a>'.encode()
                ctype = "text/html"
        else:  # soap
            v = plant("named", named_value(r, "password"))
            kind, w = self.value()
            plant(kind, w)
            body = (f'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Header>'
                    f"<wsse:Security><wsse:UsernameToken><wsse:Username>jo</wsse:Username>"
                    f'<wsse:Password Type="PasswordText">{v}</wsse:Password></wsse:UsernameToken>'
                    f"</wsse:Security></soap:Header><soap:Body><Pay><Ref><![CDATA[{w}]]></Ref></Pay>"
                    f"</soap:Body></soap:Envelope>").encode()
            ctype = "application/soap+xml"
        if body:
            enc = _enc(body, coding) if coding != "gzip, br" else _enc(_enc(body, "gzip"), "br")
            if ctype:
                req_h.append(("Content-Type", ctype))
            if coding != "identity":
                req_h.append(("Content-Encoding", coding))
            req_h.append(("Content-Length", str(len(enc))))
            body = enc
        resp_h = [("Content-Type", resp_ct), *resp_extra]
        if resp_body != b'{"ok":true}' and r.random() < 0.5:
            resp_body = _enc(resp_body, "gzip")
            resp_h.append(("Content-Encoding", "gzip"))
        resp_h.append(("Content-Length", str(len(resp_body))))
        ex = Exchange(id=f"rt{i}", conn=ConnKey("203.0.113.7", 50000 + i % 10000, "10.0.0.9", 443),
                      request=Request("POST" if body else "GET", target, headers=req_h, body=body),
                      response=Response(302 if resp_extra else 200, "OK", headers=resp_h,
                                        body=resp_body))
        return ex, secrets


def _leaked(san: Sanitiser, ex: Exchange,
            secrets: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The planted secrets found in any form in the sanitised exchange: its JSONL record and
    its decoded wire view."""
    out = san.apply(ex)
    assert out is not None
    buf = io.BytesIO()
    w = JsonlWriter(buf)
    w.write(out)
    w.close()
    blob = buf.getvalue() + b"\n" + _wire(out)
    return [s for s in secrets if any(f in blob for f in _forms(s[2]))]


def leaks(seed: int, n: int = PER_SEED) -> tuple[list[tuple[str, str, str]], int]:
    g = Gen(seed)
    san = Sanitiser(Policy.default(), KEY)
    found: list[tuple[str, str, str]] = []
    total = 0
    for i in range(n):
        ex, secrets = g.build(i)
        total += len(secrets)
        found += _leaked(san, ex, secrets)
    return found, total


@pytest.mark.parametrize("seed", SEEDS)
def test_redteam_generator_leaks_nothing(seed: int) -> None:
    found, total = leaks(seed)
    assert total >= PER_SEED
    assert not found, f"{len(found)} of {total} leaked: {found[:8]}"


def test_redteam_covers_every_structure() -> None:
    g = Gen(SEEDS[0])
    seen = {s for i in range(PER_SEED) for _k, s, _v in g.build(i)[1]}
    assert seen == set(STRUCTURES)


# -- tax and national ids by name; cards grouped by dots, slashes and no-break spaces ---------
# A generator of its own (own seeds), so the cases above stay what they were.

ID_NAMES = ["tin", "TIN", "taxId", "tax_id", "taxpayer_id", "TaxpayerId", "vat_number", "vatId",
            "VATIN", "vat_no", "national_id", "nationalId", "nino", "NINO", "passport_number",
            "passportNo", "passport-number", "driver_license", "driversLicense",
            "driving_licence_number", "dl_number", "dlNo", "customer[tin]", "billing.vat_number",
            "customerTin", "user_passport_no", "applicant.national_id"]
ID_STRUCTURES = ["json", "json_deep", "query", "form", "xml", "html_input", "text_log", "header",
                 "multipart"]
ALT_STRUCTURES = ["json_text", "json_value", "html_text", "xml_text", "text_log", "query_value",
                  "form_value", "multipart"]
ALT_SEPS = [".", "/", "\u00a0", "\u202f", "&nbsp;", "&#160;"]
ID_SEEDS = (3032001, 3032002)
ID_PER_SEED = 300


def id_value(r: random.Random) -> str:
    k = r.randrange(5)
    if k == 0:  # a VAT number
        return r.choice(["DE", "FR", "IT", "NL", "GB"]) + "".join(r.choices(string.digits, k=9))
    if k == 1:  # a UK national insurance number
        return (r.choice("ABCEGHJKLMNOPRSTWXYZ") + r.choice("ABCEGHJKLMNPRSTWXYZ")
                + "".join(r.choices(string.digits, k=6)) + r.choice("ABCD"))
    if k == 2:  # a passport / licence number
        return r.choice(string.ascii_uppercase) + "".join(r.choices(string.digits, k=r.randint(7, 9)))
    if k == 3:  # a TIN / EIN
        return f"{r.randint(10, 99)}-{r.randint(1000000, 9999999)}"
    return "".join(r.choices(string.digits, k=r.randint(9, 12)))


def alt_card(r: random.Random, sep: str) -> tuple[str, str]:
    """(scheme, card printed with ``sep`` between its groups: 4-4-4-4[-1..3], 4-6-5, 4-6-4)."""
    while True:
        scheme, num = card_digits(r)
        n = len(num)
        if n in (14, 15):
            return scheme, sep.join([num[:4], num[4:10], num[10:]])
        if n >= 16:
            return scheme, sep.join(num[i : i + 4] for i in range(0, n, 4))


def _exchange(i: int, target: str, req_h: list[tuple[str, str]], body: bytes,
              ctype: str | None, resp_body: bytes = b'{"ok":true}',
              resp_ct: str = "application/json") -> Exchange:
    if body:
        if ctype:
            req_h.append(("Content-Type", ctype))
        req_h.append(("Content-Length", str(len(body))))
    return Exchange(id=f"id{i}", conn=ConnKey("203.0.113.8", 40000 + i % 10000, "10.0.0.9", 443),
                    request=Request("POST" if body else "GET", target, headers=req_h, body=body),
                    response=Response(200, "OK", headers=[("Content-Type", resp_ct),
                                                          ("Content-Length", str(len(resp_body)))],
                                      body=resp_body))


def _multipart(nm: str, v: str) -> tuple[bytes, str]:
    b = "----rtb0undary"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="{nm}"\r\n\r\n{v}\r\n--{b}--\r\n')
    return body.encode(), f"multipart/form-data; boundary={b}"


def build_id_case(r: random.Random, i: int) -> tuple[Exchange, list[tuple[str, str, str]]]:
    """A tax/national id under its name, or a card grouped by an unusual separator, in one of
    the structures, next to look-alikes that must stay (dates, versions, IPs, prices)."""
    req_h = [("Host", "shop.example.org"), ("User-Agent", "Mozilla/5.0 redteam")]
    body, ctype, target = b"", None, "/api/v2/customers"
    resp_body, resp_ct = b'{"ok":true}', "application/json"
    if r.random() < 0.5:
        nm, v = r.choice(ID_NAMES), id_value(r)
        st = r.choice(ID_STRUCTURES)
        kind = f"id:{nm}"
        if st == "json":
            body, ctype = orjson.dumps({"name": "Jo", nm: v, "country": "DE"}), "application/json"
        elif st == "json_deep":
            body = orjson.dumps({"customer": {"billing": {nm: v, "zip": "10115"}}, "n": 2})
            ctype = "application/json"
        elif st == "query":
            target += f"?lang=en&{quote(nm, safe='[]')}={quote_plus(v)}"
        elif st == "form":
            body = f"first=Jo&{quote(nm, safe='[]')}={quote_plus(v)}&ok=1".encode()
            ctype = "application/x-www-form-urlencoded"
        elif st == "xml":
            tag = nm.replace("[", "_").replace("]", "").replace(".", "_")
            body = f"<Customer><Name>Jo</Name><{tag}>{v}</{tag}></Customer>".encode()
            ctype = "application/xml"
        elif st == "html_input":
            resp_body = (f'<form><input type="text" name="{nm}" value="{v}">'
                         f'<input name="city" value="Berlin"></form>').encode()
            resp_ct = "text/html"
        elif st == "text_log":
            body = f"2024-05-01T12:00:00Z INFO saved customer {nm}={v} ok\n".encode()
            ctype = "text/plain"
        elif st == "header":
            req_h.append((f"X-Customer-{nm.replace('[', '-').replace(']', '').replace('.', '-')}", v))
        else:
            body, ctype = _multipart(nm, v)
    else:
        st = r.choice(ALT_STRUCTURES)
        html = st == "html_text" or (st == "xml_text" and r.random() < 0.3)
        sep = r.choice(ALT_SEPS if html else ALT_SEPS[:4])
        scheme, v = alt_card(r, sep)
        kind = f"card_alt:{scheme}"
        decoy = r.choice(["v1.2.3.4", "2024/05/01", "10.0.0.12", "EUR 1234.56", "build 2024.05.17"])
        if st == "json_text":
            body = json.dumps({"memo": f"paid with {v} on {decoy}", "n": 1},
                              ensure_ascii=r.random() < 0.5).encode()
            ctype = "application/json"
        elif st == "json_value":
            body = json.dumps({"ref": v, "at": "2024/05/01"}, ensure_ascii=r.random() < 0.5).encode()
            ctype = "application/json"
        elif st == "html_text":
            resp_body = f"<table><tr><td>Card</td><td>{v}</td><td>{decoy}</td></tr></table>".encode()
            resp_ct = "text/html"
        elif st == "xml_text":
            body = f"<Payment><Ref>{v}</Ref><Date>{decoy}</Date></Payment>".encode()
            ctype = "application/xml"
        elif st == "text_log":
            body = f"charge ok card {v} amount 12.50 ({decoy})\n".encode()
            ctype = "text/plain"
        elif st == "query_value":
            target += f"?q={quote_plus(v)}&d={quote(decoy)}"
        elif st == "form_value":
            body = f"memo={quote_plus('card ' + v)}&d={quote_plus(decoy)}".encode()
            ctype = "application/x-www-form-urlencoded"
        else:
            body, ctype = _multipart("note", f"card {v}")
    ex = _exchange(i, target, req_h, body, ctype, resp_body, resp_ct)
    return ex, [(kind, st, v)]


def id_leaks(seed: int, n: int = ID_PER_SEED) -> tuple[list[tuple[str, str, str]], int]:
    r = random.Random(seed)
    san = Sanitiser(Policy.default(), KEY)
    found: list[tuple[str, str, str]] = []
    for i in range(n):
        ex, secrets = build_id_case(r, i)
        found += _leaked(san, ex, secrets)
    return found, n


@pytest.mark.parametrize("seed", ID_SEEDS)
def test_tax_ids_and_unusually_grouped_cards_leak_nothing(seed: int) -> None:
    found, total = id_leaks(seed)
    assert not found, f"{len(found)} of {total} leaked: {found[:8]}"


def test_id_generator_covers_every_structure_and_separator() -> None:
    r = random.Random(ID_SEEDS[0])
    got = [build_id_case(r, i)[1][0] for i in range(ID_PER_SEED)]
    assert {st for _k, st, _v in got} == set(ID_STRUCTURES) | set(ALT_STRUCTURES)
    seps = {sep for k, _st, v in got if k.startswith("card_alt") for sep in ALT_SEPS if sep in v}
    assert seps == set(ALT_SEPS)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    n_seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    tot = 0
    bad: Counter[tuple[str, str]] = Counter()
    for s in range(n_seeds):
        found, total = leaks(7_000_000 + s)
        tot += total
        bad.update((k, st) for k, st, _v in found)
        for x in found[:60]:
            print("leak:", x)
    print(f"{sum(bad.values())} of {tot} leaked", dict(bad))
