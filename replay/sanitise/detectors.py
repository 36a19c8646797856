"""Value detectors: find secrets and personal data inside text, fast.

Why it is built this way: Python's ``re`` costs roughly 15-30 ns per character for a pattern that
starts with a character class, so ten detectors scanning a 2 KB body would take ~500 us, far over
the 50 us budget per exchange. So each detector first looks for a cheap *anchor*: a literal
(``@``, ``eyJ``, ``Bearer``) found with ``bytes.find``, or a literal-prefixed pattern run over a
*class map* of the text (every digit turned into ``0``, every upper-case letter into ``A``, every
lower-case letter into ``a``; one ``bytes.translate``). ``re`` finds literal prefixes at memchr
speed, so ``0000-0000`` on the class map finds card-like digit groups in ~1 us. Only around an
anchor does the exact pattern and the checksum (Luhn, mod 97) run.

All detectors work on ``bytes``; headers (latin-1 text) are encoded 1:1 before scanning.
A detector returns ``(start, end)`` spans of the secret itself (for ``Bearer x`` only ``x``).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable

from replay.sanitise.pseudonym import iban_mod97, luhn_ok

Span = tuple[int, int]

_T = bytearray(range(256))
for _c in range(48, 58):
    _T[_c] = 48
for _c in range(65, 91):
    _T[_c] = 65
for _c in range(97, 123):
    _T[_c] = 97
CLASS_MAP = bytes(_T)
"""``bytes.translate`` table: digits -> '0', A-Z -> 'A', a-z -> 'a', everything else kept."""

_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_DIGITSET = frozenset(b"0123456789")

# -- validators (also used by tests and by ``format: auto``) ---------------------------------

IBAN_LENGTHS: dict[bytes, int] = {
    k.encode(): v
    for k, v in {
        "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
        "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
        "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
        "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
        "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
        "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
        "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
        "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
        "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    }.items()
}  # fmt: skip


def is_card(v: bytes) -> bool:
    """13-19 digits (optionally grouped by one kind of separator), network digit 2-6, Luhn."""
    d = v.replace(b" ", b"").replace(b"-", b"")
    return 13 <= len(d) <= 19 and d.isdigit() and d[:1] in b"23456" and luhn_ok(d)


def is_iban(v: bytes) -> bool:
    """Known country, that country's length, and ISO 13616 mod-97 checksum."""
    c = v.replace(b" ", b"")
    if len(c) < 15 or not c[:2].isalpha() or not c[2:4].isdigit() or not c.isalnum():
        return False
    if not c[:2].isupper() or IBAN_LENGTHS.get(c[:2]) != len(c):
        return False
    return iban_mod97(c.upper()) == 1


def is_ipv4(v: bytes) -> bool:
    m = _IPV4.fullmatch(v)
    return m is not None


def is_ipv6(v: bytes) -> bool:
    if v == b"::" or len(v) > 45:
        return False
    try:
        ipaddress.IPv6Address(v.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def is_ssn(v: bytes) -> bool:
    return _SSN.fullmatch(v) is not None


def is_jwt(v: bytes) -> bool:
    return _JWT.fullmatch(v) is not None


def is_email(v: bytes) -> bool:
    return _EMAIL.fullmatch(v) is not None


# -- patterns -------------------------------------------------------------------------------

_EMAIL = re.compile(
    rb"[A-Za-z0-9._%+\-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
)
_JWT = re.compile(rb"eyJ[A-Za-z0-9_\-]{2,}\.eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*")
_BEARER = re.compile(rb"earer[ \t]+([A-Za-z0-9\-._~+/]{8,}=*)")
_BASIC = re.compile(rb"asic[ \t]+([A-Za-z0-9+/]{4,}={0,2})")
_CARD_ANCHOR = re.compile(rb"0000(?:0{9}|[ \-]0000[ \-]0000|[ \-]000000[ \-]0000)")
_CARD = re.compile(rb"\d(?:[ \-]?\d){12,18}")
_SSN_ANCHOR = re.compile(rb"000-00-0000")
_SSN = re.compile(rb"(?!000|666|9)\d{3}-(?!00)\d{2}-(?!0000)\d{4}")
_PHONE_INTL_ANCHOR = re.compile(rb"\+[ (]?0")
_PHONE_INTL = re.compile(rb"\+[ ]?\(?[1-9](?:[ .\-]?\(?\d\)?){7,14}")
_PHONE_NANP_ANCHOR = re.compile(rb"\(000\)|000[\-. ]000[\-. ]0000")
_PHONE_NANP = re.compile(rb"\(\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}|\d{3}[\-. ]\d{3}[\-. ]\d{4}")
_OCT = rb"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(_OCT + rb"(?:\." + _OCT + rb"){3}")
_IPV4_ANCHOR = re.compile(rb"\.0{1,3}\.0{1,3}\.")
_IPV6_ANCHOR = re.compile(rb"::|:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:")
_IPV6_CAND = re.compile(
    rb"(?:[0-9A-Fa-f]{1,4}|:)?(?::[0-9A-Fa-f]{0,4}){1,7}(?:\d{1,3}(?:\.\d{1,3}){3})?"
)
_IBAN_ANCHOR = re.compile(rb"AA00")
_IBAN = re.compile(rb"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){10,32}")
_APIKEY_PATTERNS = [
    re.compile(p)
    for p in (
        rb"AKIA[0-9A-Z]{16}",
        rb"ASIA[0-9A-Z]{16}",
        rb"gh[pousr]_[A-Za-z0-9]{36,255}",
        rb"github_pat_[A-Za-z0-9_]{22,255}",
        rb"_live_[A-Za-z0-9]{10,99}",
        rb"_test_[A-Za-z0-9]{10,99}",
        rb"xox[abposr]-[A-Za-z0-9\-]{10,250}",
        rb"AIza[0-9A-Za-z_\-]{35}",
    )
]


# -- finders --------------------------------------------------------------------------------
# Each finder takes (text, class map) and returns spans. The class map is computed once per text
# by the scanner and shared.


def find_email(text: bytes, cls: bytes) -> list[Span]:
    i = text.find(b"@")
    if i < 0:
        return []
    out: list[Span] = []
    n = len(text)
    prev = 0
    while i >= 0:
        end = min(n, i + 256)
        m = _EMAIL.search(text, max(prev, i - 64), end)
        while m is not None and m.end() <= i:
            m = _EMAIL.search(text, m.end(), end)
        if m is not None and m.start() <= i:
            out.append(m.span())
            prev = m.end()
            i = text.find(b"@", prev)
        else:
            i = text.find(b"@", i + 1)
    return out


def find_jwt(text: bytes, cls: bytes) -> list[Span]:
    if b"eyJ" not in text:
        return []
    return [m.span() for m in _JWT.finditer(text)]


def find_bearer(text: bytes, cls: bytes) -> list[Span]:
    if b"earer" not in text:
        return []
    out = []
    for m in _BEARER.finditer(text):
        s = m.start()
        if s > 0 and text[s - 1] in b"Bb":
            out.append(m.span(1))
    return out


def find_basic(text: bytes, cls: bytes) -> list[Span]:
    if b"asic" not in text:
        return []
    out = []
    for m in _BASIC.finditer(text):
        s = m.start()
        if s == 0 or text[s - 1] not in b"Bb":
            continue
        try:
            raw = base64.b64decode(m.group(1), validate=True)
        except (ValueError, binascii.Error):
            continue
        if b":" in raw:
            out.append(m.span(1))
    return out


def find_card(text: bytes, cls: bytes) -> list[Span]:
    out: list[Span] = []
    last = 0
    for a in _CARD_ANCHOR.finditer(cls):
        s = a.start()
        if s < last or (s > 0 and cls[s - 1] == 48):
            continue
        m = _CARD.match(text, s)
        if m is None:
            continue
        e = m.end()
        if e < len(text) and text[e] in _DIGITSET:
            continue  # a longer number: an id, not a card
        cand = m.group()
        seps = set(cand) - _DIGITSET
        if len(seps) > 1:
            continue
        digits = cand.replace(b" ", b"").replace(b"-", b"")
        if digits[:1] not in b"23456":
            continue
        # Try the full run, then shorter prefixes (a card followed by more grouped digits).
        n = len(digits)
        for k in range(n, 12, -1):
            if luhn_ok(digits[:k]):
                # map k digits back to a span in text
                cnt = 0
                j = s
                while cnt < k:
                    if text[j] in _DIGITSET:
                        cnt += 1
                    j += 1
                out.append((s, j))
                last = j
                break
    return out


def find_ssn(text: bytes, cls: bytes) -> list[Span]:
    if b"-" not in text:
        return []
    out = []
    n = len(text)
    for a in _SSN_ANCHOR.finditer(cls):
        s, e = a.span()
        if s > 0 and (cls[s - 1] == 48 or text[s - 1] == 45):
            continue
        if e < n and (cls[e] == 48 or (text[e] == 45 and e + 1 < n and cls[e + 1] == 48)):
            continue
        if _SSN.match(text, s, e):
            out.append((s, e))
    return out


def find_phone(text: bytes, cls: bytes) -> list[Span]:
    out: list[Span] = []
    n = len(text)
    if b"+" in text:
        for a in _PHONE_INTL_ANCHOR.finditer(cls):
            s = a.start()
            m = _PHONE_INTL.match(text, s)
            if m is None:
                continue
            e = m.end()
            if e < n and cls[e] == 48:
                continue
            if s > 0 and cls[s - 1] in (48, 65, 97):
                continue  # '1+49...' or 'x+1...' is arithmetic or an id, not a phone
            out.append((s, e))
    for a in _PHONE_NANP_ANCHOR.finditer(cls):
        s = a.start()
        m = _PHONE_NANP.match(text, s)
        if m is None:
            continue
        e = m.end()
        if (s > 0 and cls[s - 1] == 48) or (e < n and cls[e] == 48):
            continue
        if s > 0 and text[s - 1] == 45:
            continue
        out.append((s, e))
    return out


def find_ipv4(text: bytes, cls: bytes) -> list[Span]:
    if b"." not in text:
        return []
    out: list[Span] = []
    last = -1
    n = len(text)
    for a in _IPV4_ANCHOR.finditer(cls):
        s = a.start()
        k = 0
        while k < 3 and s > 0 and cls[s - 1] == 48:
            s -= 1
            k += 1
        if s < last or k == 0:
            continue
        if s > 0 and (cls[s - 1] == 48 or text[s - 1] == 46):
            continue  # part of a longer dotted number (OID, version 1.2.3.4.5)
        m = _IPV4.match(text, s)
        if m is None:
            continue
        e = m.end()
        if e < n and (cls[e] == 48 or (text[e] == 46 and e + 1 < n and cls[e + 1] == 48)):
            continue
        out.append((s, e))
        last = e
    return out


def find_ipv6(text: bytes, cls: bytes) -> list[Span]:
    if b":" not in text:
        return []
    out: list[Span] = []
    last = 0
    n = len(text)
    for a in _IPV6_ANCHOR.finditer(text):
        p = a.start()
        if p < last:
            continue
        # Find the candidate covering the anchor: start at most 40 bytes to the left.
        ws = max(last, p - 40)
        found = None
        for m in _IPV6_CAND.finditer(text, ws, min(n, p + 46)):
            if m.start() <= p < m.end():
                found = m
                break
            if m.start() > p:
                break
        if found is None:
            continue
        s, e = found.span()
        # Boundaries: not glued to identifiers (std::vector) or to more hex/colons.
        if s > 0 and (text[s - 1] in _ALNUM or text[s - 1] in b":._"):
            continue
        if e < n and (text[e] in _ALNUM or text[e] in b":_"):
            continue
        cand = text[s:e]
        if cand.count(b":") < 2 or not is_ipv6(cand):
            continue
        out.append((s, e))
        last = e
    return out


def find_iban(text: bytes, cls: bytes) -> list[Span]:
    out: list[Span] = []
    n = len(text)
    for a in _IBAN_ANCHOR.finditer(cls):
        s = a.start()
        if s > 0 and text[s - 1] in _ALNUM:
            continue
        length = IBAN_LENGTHS.get(text[s : s + 2])
        if length is None:
            continue
        m = _IBAN.match(text, s)
        if m is None:
            continue
        # take exactly `length` alphanumerics (spaces allowed between them)
        cnt = 0
        j = s
        e = m.end()
        while j < e and cnt < length:
            if text[j] != 32:
                cnt += 1
            j += 1
        if cnt != length or (j < n and text[j] in _ALNUM):
            continue
        compact = text[s:j].replace(b" ", b"")
        if iban_mod97(compact) == 1:
            out.append((s, j))
    return out


def find_api_key(text: bytes, cls: bytes) -> list[Span]:
    out: list[Span] = []
    if b"_" in text:
        for rx in _APIKEY_PATTERNS[2:6]:
            for m in rx.finditer(text):
                s = m.start()
                if rx.pattern.startswith(b"_"):
                    # sk_live_..., pk_test_...: include the two-letter prefix
                    if s >= 2 and text[s - 2 : s] in (b"sk", b"pk", b"rk"):
                        out.append((s - 2, m.end()))
                else:
                    out.append(m.span())
    for rx in (_APIKEY_PATTERNS[0], _APIKEY_PATTERNS[1], _APIKEY_PATTERNS[6], _APIKEY_PATTERNS[7]):
        for m in rx.finditer(text):
            out.append(m.span())
    return out


class Detector:
    """A named value detector: a finder function plus the pseudonym format its hits keep."""

    __slots__ = ("find", "fmt", "name", "needs_cls")

    def __init__(
        self, name: str, find: Callable[[bytes, bytes], list[Span]], fmt: str, needs_cls: bool
    ) -> None:
        self.name = name
        self.find = find
        self.fmt = fmt
        self.needs_cls = needs_cls

    def __repr__(self) -> str:
        return f"Detector({self.name!r})"


def regex_detector(name: str, pattern: str, fmt: str = "token", group: int = 0) -> Detector:
    """A user-supplied pattern as a detector (compiled once; ``group`` selects the secret)."""
    rx = re.compile(pattern.encode("utf-8"))

    def find(text: bytes, cls: bytes) -> list[Span]:
        return [m.span(group) for m in rx.finditer(text) if m.end(group) > m.start(group)]

    return Detector(name, find, fmt, False)


BUILTIN: dict[str, Detector] = {
    d.name: d
    for d in (
        Detector("jwt", find_jwt, "jwt", False),
        Detector("bearer", find_bearer, "bearer", False),
        Detector("basic", find_basic, "basic", False),
        Detector("api_key", find_api_key, "token", False),
        Detector("email", find_email, "email", False),
        Detector("iban", find_iban, "iban", True),
        Detector("card", find_card, "card", True),
        Detector("ssn", find_ssn, "ssn", True),
        Detector("ipv6", find_ipv6, "ipv6", False),
        Detector("ipv4", find_ipv4, "ipv4", True),
        Detector("phone", find_phone, "phone", True),
    )
}
"""Built-in value detectors, in priority order (an earlier one wins an overlap at equal start)."""

NAME_DETECTORS: dict[str, str] = {
    "authorization": r"(?i)^(proxy-)?authorization$",
    "api_key_header": (
        r"(?i)^(x-)?(api[-_]?key|api[-_]?token|auth[-_]?token|access[-_]?token|secret[-_]?key"
        r"|client[-_]?secret|x-amz-security-token|x-goog-api-key|x-csrf-token|x-xsrf-token"
        r"|private[-_]?token|x-vault-token|x-functions-key|ocp-apim-subscription-key)$"
    ),
    "session_cookie": (
        r"(?i)(sess|sid$|^sid|token|auth|jwt|csrf|xsrf|remember|login|^_?user|"
        r"jsessionid|phpsessid|asp\.net_sessionid|connect\.sid|laravel_session)"
    ),
}
"""Detectors that pick items by *name* (header or cookie name) rather than by value: the whole
value is then replaced (scheme-aware for Authorization)."""


def scan(text: bytes, dets: list[tuple[int, Detector]]) -> list[tuple[int, int, int, Detector]]:
    """All non-overlapping hits of ``dets`` (``(tag, detector)`` pairs) in ``text``, in order.

    Overlaps are resolved by earliest start, then longest span, then list order (so a JWT wins over
    the e-mail inside its claims, an IBAN over the digits inside it)."""
    cls = b""
    hits: list[tuple[int, int, int, int, Detector]] = []
    for order, (tag, det) in enumerate(dets):
        if det.needs_cls and not cls:
            cls = text.translate(CLASS_MAP)
        for s, e in det.find(text, cls):
            hits.append((s, -e, order, tag, det))
    if not hits:
        return []
    if len(hits) > 1:
        hits.sort()
    out = []
    end = -1
    for s, neg_e, _order, tag, det in hits:
        if s >= end:
            out.append((s, -neg_e, tag, det))
            end = -neg_e
    return out
