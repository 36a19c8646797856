"""Issue #15's last known misses under the default policy: IBANs in any case and grouping,
SSNs without dashes (where a generator plants them), and multipart parts under a
Content-Transfer-Encoding (base64, quoted-printable) — decoded and sanitised, or dropped with
length and keyed hash, never passed on raw."""

from __future__ import annotations

import base64
import hashlib
import hmac
import quopri

import pytest

from replay.model import ConnKey, Exchange, Request, Response
from replay.sanitise import Policy, Sanitiser
from replay.sanitise.detectors import BUILTIN, Prep, name_class

KEY = b"values-test-key-0123456789abcdef"
CONN = ConnKey("198.51.100.9", 40000, "10.0.0.2", 443)


def _san(on_mismatch: str = "scan") -> Sanitiser:
    pol = Policy.default()
    pol.on_mismatch = on_mismatch
    return Sanitiser(pol, KEY)


def _run(target: str, body: bytes = b"", ctype: str | None = None,
         san: Sanitiser | None = None) -> Exchange | None:
    h = [("Host", "shop.example.net")]
    if ctype:
        h.append(("Content-Type", ctype))
    if body:
        h.append(("Content-Length", str(len(body))))
    ex = Exchange(id="v1", conn=CONN,
                  request=Request("POST" if body else "GET", target, headers=h, body=body),
                  response=Response(200, "OK", headers=[("Content-Length", "0")], body=b""))
    return (san or _san()).apply(ex)


def _out(target: str, body: bytes = b"", ctype: str | None = None) -> bytes:
    out = _run(target, body, ctype)
    assert out is not None and out.request is not None
    return out.request.target.encode() + b"\n" + out.request.body


def _hits(det: str, text: bytes) -> list[bytes]:
    return [text[s:e] for s, e in BUILTIN[det].find(Prep(text))]


# -- IBAN -------------------------------------------------------------------------------------

IBANS = ["nl91abna0417164300", "NL91ABNA0417164300", "Nl91AbNa0417164300", "nL91aBnA0417164300",
         "nl91 abna 0417 1643 00", "gb82west12345698765432", "Gb82 WeSt 1234 5698 7654 32",
         "de89370400440532013000", "no9386011117947", "mt84malt011000012345mtlcast001s"]


@pytest.mark.parametrize("iban", IBANS)
def test_iban_found_in_any_case_and_grouping(iban: str) -> None:
    text = f"pay to {iban}, thanks".encode()
    assert _hits("iban", text) == [iban.encode()]


@pytest.mark.parametrize("iban", ["nl91abna0417164300", "Nl91AbNa0417164300"])
@pytest.mark.parametrize("where", ["json", "form", "query", "text"])
def test_compact_lowercase_iban_never_leaks(iban: str, where: str) -> None:
    if where == "json":
        got = _out("/pay", b'{"note":"to ' + iban.encode() + b'"}', "application/json")
    elif where == "form":
        got = _out("/pay", b"account=" + iban.encode() + b"&x=1",
                   "application/x-www-form-urlencoded")
    elif where == "query":
        got = _out(f"/pay?account={iban}&page=2")
    else:
        got = _out("/pay", b"wire to " + iban.encode() + b" today\n", "text/plain")
    assert iban.encode() not in got and iban.encode().lower() not in got.lower()


@pytest.mark.parametrize("text", [
    "nl92abna0417164300",  # checksum off by one
    "ab12cdefghijklmnop",  # no such country
    "de89370400440532013",  # one digit short of a German IBAN
    "build de89370400440532013000x1",  # glued to more letters and digits
    "sku12345 order ab00 1234 5678 9012 3456",
])
def test_iban_lookalikes_are_not_hit(text: str) -> None:
    assert _hits("iban", text.encode()) == []


# -- SSN without dashes -----------------------------------------------------------------------

SSN = "123456789"


@pytest.mark.parametrize("name", ["ssn", "SSN", "customer_ssn", "socialSecurityNumber",
                                  "social_security_number", "taxId", "tax_id", "taxpayer_id"])
def test_ssn_names_are_secret_names(name: str) -> None:
    assert name_class(name.lower()) == 2


@pytest.mark.parametrize(("target", "body", "ctype"), [
    ("/u", b'{"ssn":"123456789"}', "application/json"),
    ("/u", b'{"ssn":123456789}', "application/json"),
    ("/u", b'{"applicant":{"socialSecurityNumber":"123456789"}}', "application/json"),
    ("/u", b'{"taxId":"123456789"}', "application/json"),
    ("/u", b'{"note":"SSN 123456789 on file"}', "application/json"),
    ("/u", b'{"note":"my ssn is 123456789"}', "text/plain"),
    ("/u", b"ssn=123456789&next=1", "application/x-www-form-urlencoded"),
    ("/u", b"tax_id=123456789&next=1", "application/x-www-form-urlencoded"),
    ("/u?ssn=123456789&page=2", b"", None),
    ("/u?q=ssn+123456789", b"", None),
    ("/u", b"SSN#: 123456789\n", "text/plain"),
    ("/u", b"Social Security Number (on file): 123456789\n", None),
    ("/u", b"<Applicant><SSN>123456789</SSN></Applicant>", "application/xml"),
    ("/u", b"<p>Tax ID: 123456789</p>", "text/html"),
])
def test_ssn_without_dashes_caught_where_generators_plant_it(target: str, body: bytes,
                                                             ctype: str | None) -> None:
    assert SSN.encode() not in _out(target, body, ctype)


@pytest.mark.parametrize("text", [
    b'{"order_id":123456789,"ref":"123456789"}',  # a bare nine-digit number is an id
    b"order 123456789 shipped",
    b"classname 123456789",  # 'ssn' inside a word is no label
    b"taxonomy 123456789",
    b"SSN 666123456 and SSN 900123456 and SSN 123006789",  # impossible area / group
    b"SSN 1234567890",  # ten digits
    b"SSN field " + b"x" * 60 + b" 123456789",  # too far from its label
])
def test_ssn_without_dashes_needs_a_label(text: bytes) -> None:
    assert _hits("ssn", text) == []


def test_ssn_dashed_and_spaced_still_found_anywhere() -> None:
    assert _hits("ssn", b"x 123-45-6789 y 123 45 6789") == [b"123-45-6789", b"123 45 6789"]


# -- multipart parts under a Content-Transfer-Encoding ------------------------------------------

CARD = b"4111 1111 1111 1111"
GH = b"ghp_" + b"Ab3dEf6hIj9lMn2pQr5tUv8xYz1bCd4fGh7j"


def _mp(*parts: tuple[bytes, bytes, bytes]) -> bytes:
    out = b""
    for name, cte, body in parts:
        out += (b'--BND\r\nContent-Disposition: form-data; name="' + name + b'"; filename="f"\r\n'
                b"Content-Type: text/plain\r\n")
        if cte:
            out += b"Content-Transfer-Encoding: " + cte + b"\r\n"
        out += b"\r\n" + body + b"\r\n"
    return out + b"--BND--\r\n"


def _parts(body: bytes) -> list[bytes]:
    return [p for p in body.split(b"--BND")[1:-1]]


def _request_body(body: bytes, san: Sanitiser | None = None) -> Exchange | None:
    return _run("/upload", body, "multipart/form-data; boundary=BND", san)


@pytest.mark.parametrize("wrap", [True, False])
def test_base64_part_is_decoded_sanitised_and_encoded_again(wrap: bool) -> None:
    secret = b"paid with " + CARD + b" using key " + GH + b"\napi_token=Zq8s7d6f5g4h3j2k\n"
    enc = base64.encodebytes(secret * 3).replace(b"\n", b"\r\n").rstrip() if wrap else (
        base64.b64encode(secret))
    out = _request_body(_mp((b"note", b"", b"hello"), (b"file", b"base64", enc)))
    assert out is not None and out.request is not None
    part = _parts(out.request.body)[1]
    head, _, b64 = part.partition(b"\r\n\r\n")
    assert b"Content-Transfer-Encoding: base64" in head
    decoded = base64.b64decode(b"".join(b64.split()), validate=True)
    for s in (CARD, GH, b"Zq8s7d6f5g4h3j2k"):
        assert s not in decoded
    assert decoded.startswith(b"paid with ") and b"api_token=" in decoded
    if wrap:  # wrapped as it came: 76 characters a line, CRLF
        assert max(len(x) for x in b64.strip().split(b"\r\n")) == 76
    assert int(dict(out.request.headers)["Content-Length"]) == len(out.request.body)


def test_base64_part_named_like_a_secret_is_pseudonymised_decoded() -> None:
    enc = base64.b64encode(b"Zq8s7d6f5g4h3j2kXX")
    out = _request_body(_mp((b"api_token", b"BASE64", enc)))
    assert out is not None and out.request is not None
    b64 = _parts(out.request.body)[0].partition(b"\r\n\r\n")[2].strip()
    got = base64.b64decode(b64, validate=True)
    assert got != b"Zq8s7d6f5g4h3j2kXX" and len(got) == len(b"Zq8s7d6f5g4h3j2kXX")


def test_clean_base64_part_passes_byte_exact() -> None:
    body = _mp((b"file", b"base64", base64.encodebytes(b"nothing to see here\n" * 10)
                .replace(b"\n", b"\r\n").rstrip()))
    out = _request_body(body)
    assert out is not None and out.request is not None and out.request.body == body


def test_quoted_printable_part_is_sanitised() -> None:
    enc = quopri.encodestring(b"card=" + CARD + b" caf\xc3\xa9\n").replace(b"\n", b"\r\n").rstrip()
    out = _request_body(_mp((b"file", b"quoted-printable", enc)))
    assert out is not None and out.request is not None
    qp = _parts(out.request.body)[0].partition(b"\r\n\r\n")[2]
    assert CARD not in quopri.decodestring(qp) and CARD not in out.request.body


@pytest.mark.parametrize("cte", [b"base64", b"x-uuencode"])
def test_undecodable_part_is_dropped_with_length_and_keyed_hash(cte: bytes) -> None:
    raw = b"not base64 at all! " + CARD
    out = _request_body(_mp((b"note", b"", b"hello"), (b"file", cte, raw)))
    assert out is not None and out.request is not None
    assert CARD not in out.request.body and b"not base64" not in out.request.body
    assert b"hello" in out.request.body  # the other parts stay
    want = hmac.new(KEY, raw, hashlib.sha256).hexdigest()
    assert out.meta["sanitise_dropped_bodies"] == [{"length": len(raw), "hmac_sha256": want}]


def test_undecodable_part_drops_the_exchange_under_drop_exchange() -> None:
    body = _mp((b"file", b"base64", b"not base64 at all! " + CARD))
    assert _request_body(body, _san("drop_exchange")) is None


# -- the same in long texts (other code paths: see find_iban, find_ssn) -------------------------

FILLER = "".join(f"line {i}: order SKU-{i:05d} shipped 2024-05-0{i % 9 + 1}T12:00:00Z\n"
                 for i in range(40))


@pytest.mark.parametrize("label", ["SSN#", "my ssn is", "Social Security Number (on file):",
                                   "Tax ID:", "SSN"])
def test_labelled_ssn_in_a_long_text_body(label: str) -> None:
    body = (FILLER + f"note: {label} {SSN} thanks\n" + FILLER).encode()
    assert len(body) > 2048
    assert SSN.encode() not in _out("/u", body, "text/plain")


@pytest.mark.parametrize("iban", ["DE89370400440532013000", "de89 3704 0044 0532 0130 00",
                                  "NL91ABNA0417164300", "gb82west12345698765432"])
def test_iban_in_a_long_text_body(iban: str) -> None:
    body = (FILLER + f"pay to {iban} today\n" + FILLER).encode()
    assert len(body) > 2048
    assert _hits("iban", body) == [iban.encode()]
