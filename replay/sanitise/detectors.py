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
for _c in list(b"0123456789 -"):  # list: compiled (Cython), a bytes literal yields bytes
    _T[_c] = 48
for _c in range(65, 91):
    _T[_c] = 65
for _c in range(97, 123):
    _T[_c] = 97
CLASS_MAP = bytes(_T)
"""``bytes.translate`` table: digits, space and '-' -> '0'; A-Z -> 'A'; a-z -> 'a'; rest kept.

Digits and the two usual group separators share a class so that one literal search for eleven
``0`` finds every region that could hold a card number, an SSN or a phone number."""

_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_DIGITSET = frozenset(b"0123456789")
_LOCAL = _ALNUM | frozenset(b"._%+-")

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
    """13-19 digits (optionally grouped), a real network prefix and length, and Luhn."""
    d = v.replace(b" ", b"").replace(b"-", b"")
    return 13 <= len(d) <= 19 and d.isdigit() and card_network_ok(d) and luhn_ok(d)


def is_iban(v: bytes) -> bool:
    """Known country, that country's length, and ISO 13616 mod-97 checksum."""
    c = v.replace(b" ", b"")
    if len(c) < 15 or not c[:2].isalpha() or not c[2:4].isdigit() or not c.isalnum():
        return False
    if not c[:2].isupper() or IBAN_LENGTHS.get(c[:2]) != len(c):
        return False
    return iban_mod97(c.upper()) == 1


def is_ipv4(v: bytes) -> bool:
    """Whether the whole value is a dotted quad with octets up to 255."""
    m = _IPV4.fullmatch(v)
    return m is not None


def is_ipv6(v: bytes) -> bool:
    """Whether the whole value parses as an IPv6 address (not just '::')."""
    if v == b"::" or len(v) > 45:
        return False
    try:
        ipaddress.IPv6Address(v.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def is_ssn(v: bytes) -> bool:
    """Whether the whole value is a structurally valid dashed US SSN."""
    return _SSN.fullmatch(v) is not None


def is_jwt(v: bytes) -> bool:
    """Whether the whole value has the JWT shape this module detects."""
    return _JWT.fullmatch(v) is not None


def is_email(v: bytes) -> bool:
    """Whether the whole value is an address the e-mail detector would find."""
    return _EMAIL.fullmatch(v) is not None


# -- patterns -------------------------------------------------------------------------------

_EMAIL = re.compile(
    rb"[A-Za-z0-9._%+\-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
)
_EMAIL_PCT = re.compile(
    rb"[A-Za-z0-9._+\-]{1,64}%40(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
)
_JWT = re.compile(rb"eyJ[A-Za-z0-9_\-]{2,}\.eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*")
_B64URL_RUN = re.compile(rb"[A-Za-z0-9_\-]*")
_BEARER = re.compile(rb"earer[ \t]+([A-Za-z0-9\-._~+/]{8,}=*)")
_BASIC = re.compile(rb"asic[ \t]+([A-Za-z0-9+/]{4,}={0,2})")
_RUN = re.compile(rb"00000000000+")  # on the class map: 11+ digits/separators in a row
_RUN_LIT = b"00000000000"
_CARD = re.compile(  # bare, or grouped the ways cards are printed: 4-4-4-4(-3), 4-6-5, 4-6-4
    rb"\d{4}([ \-])\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?|\d{4}([ \-])\d{6}\2\d{4,5}|\d{13,19}"
)
_SSN_C = re.compile(rb"\d{3}-\d{2}-\d{4}")
_SSN = re.compile(rb"(?!000|666|9)\d{3}-(?!00)\d{2}-(?!0000)\d{4}")
_PHONE_INTL = re.compile(rb"\+[ ]?\(?[1-9](?:[ .\-]?\(?\d\)?){7,14}")
_PHONE_NANP = re.compile(rb"\d{3}[\- ]\d{3}[\- ]\d{4}")
_PHONE_NAT = re.compile(rb"0\d{1,4}(?:[ \-]\d{2,8}){1,4}")
_PHONE_DOT = re.compile(rb"\d{3}\.\d{3}\.\d{4}")
_PHONE_PAREN = re.compile(rb"\(\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}")
_OCT = rb"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(_OCT + rb"(?:\." + _OCT + rb"){3}")
_DOT = re.compile(rb"\.0{1,3}\.")
_IPV6_ANCHOR = re.compile(rb":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:)")
_IPV6_CAND = re.compile(  # the embedded-IPv4 form first, or '::ffff:10' would win
    rb"(?:[0-9A-Fa-f]{1,4}|:)?(?::[0-9A-Fa-f]{0,4}){1,6}:\d{1,3}(?:\.\d{1,3}){3}"
    rb"|(?:[0-9A-Fa-f]{1,4}|:)?(?::[0-9A-Fa-f]{0,4}){1,7}"
)
_IBAN_ANCHOR = re.compile(rb"AA00[0A]{11}")  # shortest IBAN (Norway) is 15 long
_IBAN = re.compile(rb"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){10,32}")
_APIKEY_UNDERSCORE = [
    (lit, re.compile(p))
    for lit, p in (
        (b"gh", rb"gh[pousr]_[A-Za-z0-9]{36,255}"),
        (b"_pat_", rb"github_pat_[A-Za-z0-9_]{22,255}"),
        (b"k_live_", rb"k_live_[A-Za-z0-9]{10,99}"),
        (b"k_test_", rb"k_test_[A-Za-z0-9]{10,99}"),
    )
]
_APIKEY_AWS = re.compile(rb"AKIA[0-9A-Z]{16}")
_APIKEY_AWS_STS = re.compile(rb"ASIA[0-9A-Z]{16}")
_APIKEY_GOOGLE = re.compile(rb"AIza[0-9A-Za-z_\-]{35}")
_APIKEY_SLACK = re.compile(rb"xox[abposr]-[A-Za-z0-9\-]{10,250}")
_APIKEY_UNDERSCORE_GATE = re.compile(
    rb"_(?:(?<=gh[pousr]_)|(?<=github_)pat_|(?<=k_)(?:live|test)_)"
)
"""Passes a text holding one of ``_APIKEY_UNDERSCORE``'s prefixes (``ghp_``, ``github_pat_``,
``k_live_``, ``k_test_``): tried only at each '_'."""
_APIKEY_SLACK_GATE = re.compile(rb"-(?<=xox[abposr]-)")
"""Passes a text holding ``_APIKEY_SLACK``'s prefix: tried only at each '-'."""


class Prep:
    """One text prepared for scanning: the class map and the digit regions, made on demand and
    shared by every detector that scans this text."""

    __slots__ = ("_dots", "_runs", "_t", "text")

    def __init__(self, text: bytes) -> None:
        self.text = text
        self._t: bytes | None = None
        self._runs: list[Span] | None = None
        self._dots: list[int] | None = None

    @property
    def t(self) -> bytes:
        if self._t is None:
            self._t = self.text.translate(CLASS_MAP)
        return self._t

    @property
    def runs(self) -> list[Span]:
        """Regions of 11+ digits/spaces/dashes: the only places a card, SSN or phone can be."""
        if self._runs is None:
            # 'find' of the literal, then the run's end by an anchored match: a full regex pass
            # costs ~8 instructions a byte, and most texts hold few runs or none
            t = self.t
            runs = []
            i = t.find(_RUN_LIT)
            while i >= 0:
                e = _RUN.match(t, i).end()  # type: ignore[union-attr]
                runs.append((i, e))
                i = t.find(_RUN_LIT, e)
            self._runs = runs
        return self._runs

    @property
    def dots(self) -> list[Span]:
        """``.d.``, ``.dd.``, ``.ddd.`` places (class map): where IPv4s and dotted phones are."""
        if self._dots is None:
            if b"." in self.text:
                self._dots = [m.span() for m in _DOT.finditer(self.t)]
            else:
                self._dots = []
        return self._dots


# -- finders --------------------------------------------------------------------------------
# Each finder takes a Prep and returns spans in ascending order.


def _class_table(chars: bytes) -> bytes:
    """``bytes.translate`` table: ``chars`` -> 'L', every other byte -> ' '."""
    t = bytearray(b" " * 256)
    for c in chars:
        t[c] = 76
    return bytes(t)


_LOCAL_T = _class_table(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
"""Local-part characters of ``_EMAIL`` (a translated window's last ' ' bounds the local part)."""
_LOCAL_PCT_T = _class_table(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")
"""The same for ``_EMAIL_PCT`` (no '%' in a local part written before '%40')."""


def _find_around(text: bytes, sep: bytes, rx: re.Pattern[bytes], local: bytes) -> list[Span]:
    """Matches of ``rx`` (``[local]{1,64}`` + ``sep`` + domain) around each occurrence of ``sep``
    (found at memchr speed).

    ``rx`` starts with a character class, so searching for it costs a regex attempt per byte; but
    only one start can matter: the local part is the run of ``local`` characters right before
    ``sep`` (at most 64, and not before the previous hit), and every start inside that run
    reaches the same ``sep`` and the same domain, so the leftmost one is the match. That start
    is found with one ``translate`` + ``rfind`` over the 64 bytes before ``sep``."""
    i = text.find(sep)
    out: list[Span] = []
    n = len(text)
    prev = 0
    k = len(sep)
    while i >= 0:
        # an address needs a local-part character before and a domain character after
        if i == 0 or text[i - 1] not in _LOCAL or i + k >= n or text[i + k] not in _ALNUM:
            i = text.find(sep, i + 1)
            continue
        lo = i - 64 if i - 64 > prev else prev
        s = lo + text[lo:i].translate(local).rfind(b" ") + 1
        m = rx.match(text, s, min(n, i + 256)) if s < i else None
        if m is not None:
            out.append(m.span())
            prev = m.end()
            i = text.find(sep, prev)
        else:
            i = text.find(sep, i + 1)
    return out


def find_email(p: Prep) -> list[Span]:
    """E-mail addresses, plain and percent-encoded (``%40``), found around each '@'."""
    text = p.text
    out = _find_around(text, b"@", _EMAIL, _LOCAL_T) if b"@" in text else []
    if b"%" in text and b"%40" in text:
        # 'alice%40example.com' in a URL inside a body: the same address, percent-encoded
        out.extend(_find_around(text, b"%40", _EMAIL_PCT, _LOCAL_PCT_T))
        out.sort()
    return out


def find_jwt(p: Prep) -> list[Span]:
    """JWTs: 'eyJ' header and payload (base64 of '{"'), found from each 'J' by memchr."""
    text = p.text
    j = text.find(b"J")  # memchr: far cheaper than searching for 'eyJ'
    out: list[Span] = []
    end = 0
    while j >= 0:
        if j >= 2 and j - 2 >= end and text[j - 2 : j] == b"ey":
            m = _JWT.match(text, j - 2)
            if m is not None:
                out.append(m.span())
                end = m.end()
                j = text.find(b"J", end)
                continue
            # Every later start inside this base64url run fails the same way (same dots after
            # it), so skip the run: keeps 'eyJeyJeyJ...' from costing quadratic time.
            r = _B64URL_RUN.match(text, j)
            if r is not None:
                j = text.find(b"J", r.end())
                continue
        j = text.find(b"J", j + 1)
    return out


def find_bearer(p: Prep) -> list[Span]:
    """The token after 'Bearer' (any case of B), if it looks like a token, not a word."""
    text = p.text
    if b"earer" not in text:
        return []
    out = []
    for m in _BEARER.finditer(text):
        s = m.start()
        if s > 0 and text[s - 1] in b"Bb":
            tok = m.group(1)
            # 'bearer of good news': a token has a digit, punctuation, or mixed case
            if len(tok) >= 12 and (
                not tok.isalpha() or (tok.lower() != tok and tok.upper() != tok)
            ):
                out.append(m.span(1))
    return out


def find_basic(p: Prep) -> list[Span]:
    """The credentials after 'Basic', only if they decode to ``user:password``."""
    text = p.text
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


def card_network_ok(d: bytes) -> bool:
    """Whether a digit string has the length a card network issues for its prefix (IIN).

    Random ids pass Luhn one time in ten; requiring a real network prefix and length cuts
    false positives on long numeric ids by a further factor of about five."""
    n = len(d)
    c1 = d[0]
    if c1 == 52:  # '4' Visa
        return n in (13, 16, 19)
    two = int(d[:2])
    if 51 <= two <= 55 or 2221 <= int(d[:4]) <= 2720:  # Mastercard
        return n == 16
    if two in (34, 37):  # Amex
        return n == 15
    if two in (36, 38, 39) or 300 <= int(d[:3]) <= 305:  # Diners
        return 14 <= n <= 19
    if two == 35:  # JCB
        return 16 <= n <= 19
    if d[:4] == b"6011" or two in (62, 65) or 644 <= int(d[:3]) <= 649:  # Discover, UnionPay
        return 16 <= n <= 19
    return False


def find_card(p: Prep) -> list[Span]:
    """Card numbers inside the digit regions: printed groupings, network prefix, Luhn."""
    runs = p.runs
    if not runs:
        return []
    text = p.text
    n = len(text)
    out: list[Span] = []
    for rs, re_ in runs:
        for m in _CARD.finditer(text, rs, re_):
            s, e = m.span()
            if s > 0 and (text[s - 1] in _DIGITSET or text[s - 1] == 46):
                continue  # part of a longer number or the decimals of a float
            if e < n and (
                text[e] in _DIGITSET
                or (text[e] in b".-" and e + 1 < n and text[e + 1] in _DIGITSET)
            ):
                continue  # an id, a float, or an order number with more groups
            cand = m.group()
            digits = cand if m.start(1) < 0 and m.start(2) < 0 else cand.translate(None, b" -")
            if card_network_ok(digits) and luhn_ok(digits):
                out.append((s, e))
    return out


def find_ssn(p: Prep) -> list[Span]:
    """US SSNs (dashed) inside the digit regions, with the SSA's impossible values out."""
    runs = p.runs
    if not runs:
        return []
    text = p.text
    n = len(text)
    out = []
    for rs, re_ in runs:
        if text.find(b"-", rs, re_) < 0:
            continue
        for m in _SSN_C.finditer(text, rs, re_):
            s, e = m.span()
            if s > 0 and (text[s - 1] in _DIGITSET or text[s - 1] == 45):
                continue
            if e < n and (
                text[e] in _DIGITSET or (text[e] == 45 and e + 1 < n and text[e + 1] in _DIGITSET)
            ):
                continue
            if _SSN.match(text, s, e):
                out.append((s, e))
    return out


def find_phone(p: Prep) -> list[Span]:
    """International (+CC) and NANP numbers; bare digit runs are not phones (ids)."""
    text = p.text
    n = len(text)
    out: list[Span] = []
    i = text.find(b"+")
    while i >= 0:
        m = _PHONE_INTL.match(text, i)
        if m is not None:
            e = m.end()
            prev = text[i - 1] if i > 0 else 32
            if not (e < n and text[e] in _DIGITSET) and prev not in _ALNUM:
                # '1+49...' or 'x+1...' is arithmetic or an id, not a phone
                out.append((i, e))
                i = text.find(b"+", e)
                continue
        i = text.find(b"+", i + 1)
    cands: list[tuple[int, int]] = []
    for rs, re_ in p.runs:
        cands.extend([m.span() for m in _PHONE_NANP.finditer(text, rs, re_)])
        # national ('020 7946 0958', '07700 900123') and '00'-international numbers
        for m in _PHONE_NAT.finditer(text, rs, re_):
            g = m.group()
            d = len(g) - g.count(b" ") - g.count(b"-")
            if 10 <= d <= (15 if g.startswith(b"00") else 12):
                cands.append(m.span())
    if b"(" in text:
        cands.extend(m.span() for m in _PHONE_PAREN.finditer(text))
    for ds, de in p.dots:
        if de - ds == 5:
            m = _PHONE_DOT.match(text, max(0, ds - 3))
            if m is not None:
                cands.append(m.span())
    intl = list(out)
    for s, e in sorted(set(cands)):
        if (s > 0 and text[s - 1] in _ALNUM) or (e < n and text[e] in _ALNUM):
            continue  # glued to an identifier (a UUID, a hash): not a phone number
        if any(a < e and s < b for a, b in intl):
            continue  # the tail of an international number already found
        if s > 0 and text[s - 1] in b"-.":
            continue
        if e < n and text[e] in b"-." and e + 1 < n and text[e + 1] in _DIGITSET:
            continue
        out.append((s, e))
    if len(out) > 1:
        out.sort()
    return out


def find_ipv4(p: Prep) -> list[Span]:
    """Dotted quads from the '.d.' places of the class map, not parts of longer numbers."""
    dots = p.dots
    if not dots:
        return []
    text = p.text
    out: list[Span] = []
    last = -1
    n = len(text)
    for s, _e in dots:
        k = 0
        while k < 3 and s > 0 and text[s - 1] in _DIGITSET:
            s -= 1
            k += 1
        if s < last or k == 0:
            continue
        if s > 0:
            pc = text[s - 1]
            if pc in _DIGITSET or pc == 46:
                continue  # part of a longer dotted number (OID, version 1.2.3.4.5)
        m = _IPV4.match(text, s)
        if m is None:
            continue
        e = m.end()
        if text[e - 2 : e] == b".0" and s > 1 and text[s - 1] == 47 and text[s - 2] in _ALNUM:
            continue  # 'Chrome/120.0.0.0': a product version, not a host address
        if e < n and (
            text[e] in _DIGITSET or (text[e] == 46 and e + 1 < n and text[e + 1] in _DIGITSET)
        ):
            continue
        out.append((s, e))
        last = e
    return out


def find_ipv6(p: Prep) -> list[Span]:
    """IPv6 around '::' or three ':hex' groups, confirmed by ``ipaddress``."""
    text = p.text
    out: list[Span] = []
    last = 0
    n = len(text)
    for a in _IPV6_ANCHOR.finditer(text):
        q = a.start()
        if q < last:
            continue
        # Find the candidate covering the anchor: start at most 40 bytes to the left.
        ws = max(last, q - 40)
        found = None
        for m in _IPV6_CAND.finditer(text, ws, min(n, q + 46)):
            if m.start() <= q < m.end():
                found = m
                break
            if m.start() > q:
                break
        if found is None:
            continue
        s, e = found.span()
        last = e  # the anchors inside this candidate lead to it again: look at it once
        # Boundaries: not glued to identifiers (std::vector) or to more hex/colons.
        if s > 0 and (text[s - 1] in _ALNUM or text[s - 1] in b":._"):
            continue
        if e < n and (text[e] in _ALNUM or text[e] in b":_"):
            continue
        cand = text[s:e]
        if cand.count(b":") < 2 or not is_ipv6(cand):
            continue
        out.append((s, e))
    return out


def find_iban(p: Prep) -> list[Span]:
    """IBANs: known country, that country's length, mod-97 checksum."""
    t = p.t
    text = p.text
    out: list[Span] = []
    n = len(text)
    if b"AA00" not in t:
        return out  # 'find' skips ahead; a regex pass tries every 'A'
    for a in _IBAN_ANCHOR.finditer(t):
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


def find_api_key(p: Prep) -> list[Span]:
    """Vendor key shapes (AWS, GitHub, Stripe, Slack, Google), each behind a literal.

    Each literal check is a substring search over the whole text (~1 µs per 2 KB each, far
    more where the text repeats a letter of the literal), and most texts hold none of them.
    So each family is gated first by one pass that only a text holding one of its literals
    passes: a single-byte search (memchr speed), or a regex whose literal first byte ('_', '-')
    makes ``re`` try only those positions and look behind from there."""
    text = p.text
    out: list[Span] = []
    if b"_" in text and _APIKEY_UNDERSCORE_GATE.search(text) is not None:
        for lit, rx in _APIKEY_UNDERSCORE:
            if lit not in text:
                continue
            for m in rx.finditer(text):
                s, e = m.span()
                if text[s] == 107:  # 'k_live_...': include the s/p/r before it (sk_live_)
                    if s == 0 or text[s - 1] not in b"spr":
                        continue
                    s -= 1
                out.append((s, e))
    if b"A" in text:
        for lit, rx in ((b"AKIA", _APIKEY_AWS), (b"ASIA", _APIKEY_AWS_STS),
                        (b"AIza", _APIKEY_GOOGLE)):
            if lit in text:
                out.extend(m.span() for m in rx.finditer(text))
    if b"-" in text and _APIKEY_SLACK_GATE.search(text) is not None:
        out.extend(m.span() for m in _APIKEY_SLACK.finditer(text))
    if len(out) > 1:
        out.sort()
    return out


class Detector:
    """A named value detector: a finder function plus the pseudonym format its hits keep."""

    __slots__ = ("find", "fmt", "gate", "name")

    def __init__(
        self, name: str, find: Callable[[Prep], list[Span]], fmt: str, gate: bytes | None = None
    ) -> None:
        self.name = name
        self.find = find
        self.fmt = fmt
        self.gate = gate
        """A pattern every hit must contain, for the one-pass pre-check on short texts (None:
        no pre-check, always run the finder)."""

    def __repr__(self) -> str:
        return f"Detector({self.name!r})"


def regex_detector(name: str, pattern: str, fmt: str = "token", group: int = 0) -> Detector:
    """A user-supplied pattern as a detector (compiled once; ``group`` selects the secret)."""
    rx = re.compile(pattern.encode("utf-8"))

    def find(p: Prep) -> list[Span]:
        return [m.span(group) for m in rx.finditer(p.text) if m.end(group) > m.start(group)]

    return Detector(name, find, fmt)


BUILTIN: dict[str, Detector] = {
    d.name: d
    for d in (
        Detector("jwt", find_jwt, "jwt", rb"eyJ"),
        Detector("bearer", find_bearer, "bearer", rb"earer"),
        Detector("basic", find_basic, "basic", rb"asic"),
        Detector(
            "api_key",
            find_api_key,
            "token",
            rb"gh[pousr]_|github_pat_|k_live_|k_test_|AKIA|ASIA|AIza|xox[abposr]-",
        ),
        Detector("email", find_email, "email", rb"@"),
        Detector("iban", find_iban, "iban", rb"[A-Z]{2}\d\d"),
        Detector("card", find_card, "card", rb"\d[\d \-]{11,}\d"),
        Detector("ssn", find_ssn, "ssn", rb"\d{3}-\d\d-\d{4}"),
        Detector("ipv6", find_ipv6, "ipv6", rb"::|[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:"),
        Detector("ipv4", find_ipv4, "ipv4", rb"\d\.\d{1,3}\.\d"),
        Detector("phone", find_phone, "phone", rb"\+ ?\(?\d|\d{3}\)?[ .\-]?\d{3}[ .\-]\d{4}"),
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


_GATE_MAX = 24
"""Texts up to this size (query values, short header values) first get one combined regex
pre-check. Python's ``re`` costs ~100 ns per character for an alternation without a literal prefix,
so beyond a few dozen bytes the finders' own memchr-style checks are cheaper."""
_GATES: dict[tuple[str, ...], re.Pattern[bytes] | None] = {}


def _gate_for(dets: list[tuple[int, Detector]]) -> re.Pattern[bytes] | None:
    if type(dets) is DetSet:
        return dets.gate
    key = tuple(d.name for _t, d in dets)
    if key not in _GATES:
        _GATES[key] = _make_gate(dets)
    return _GATES[key]


def _make_gate(dets: list[tuple[int, Detector]]) -> re.Pattern[bytes] | None:
    parts = [d.gate for _t, d in dets]
    if not parts or any(g is None for g in parts):
        return None
    return re.compile(b"|".join(parts))  # type: ignore[arg-type]


class DetSet(list):  # type: ignore[type-arg]
    """A fixed list of ``(tag, detector)`` pairs with its short-text pre-check compiled once
    (the sanitiser builds one per location at start-up)."""

    __slots__ = ("gate",)

    def __init__(self, items: list[tuple[int, Detector]]) -> None:
        super().__init__(items)
        self.gate = _make_gate(items)


def scan(text: bytes, dets: list[tuple[int, Detector]]) -> list[tuple[int, int, int, Detector]]:
    """All non-overlapping hits of ``dets`` (``(tag, detector)`` pairs) in ``text``, in order.

    Overlaps are resolved by earliest start, then longest span, then list order (so a JWT wins over
    the e-mail inside its claims, an IBAN over the digits inside it)."""
    if len(text) <= _GATE_MAX:
        gate = _gate_for(dets)
        if gate is not None and gate.search(text) is None:
            return []
    p = Prep(text)
    hits: list[tuple[int, int, int, int, Detector]] = []
    for order, (tag, det) in enumerate(dets):
        for s, e in det.find(p):
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
