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

from replay import _native
from replay.sanitise.checksums import iban_mod97, luhn_ok
from replay.sanitise.keyscan import pair_name_finder, stem_finder

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
_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_HIGH = frozenset(range(128, 256))
"""Bytes of non-ASCII characters (UTF-8 sequences, latin-1 header text): e-mail addresses may
hold them in the local part and the domain (RFC 6531)."""
_LOCAL = _ALNUM | frozenset(b"._%+-") | _HIGH
_DOMAIN_START = _ALNUM | _HIGH
_LOCAL_MAX = 128
"""Bytes of local part looked at before an '@' (64 characters, up to two bytes each)."""

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
    """12-19 digits (optionally grouped), a real scheme prefix and length, and Luhn."""
    m = _CARD_ALT.fullmatch(v)
    if m is not None:
        v = v.replace(m.group(2), b"")
    d = v.replace(b" ", b"").replace(b"-", b"")
    return 12 <= len(d) <= 19 and d.isdigit() and card_network_ok(d) and luhn_ok(d)


def is_iban(v: bytes) -> bool:
    """Known country, that country's length, and ISO 13616 mod-97 checksum."""
    c = v.replace(b" ", b"").upper()
    if len(c) < 15 or not c[:2].isalpha() or not c[2:4].isdigit() or not c.isalnum():
        return False
    if IBAN_LENGTHS.get(c[:2]) != len(c):
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
    rb"[A-Za-z0-9._%+\-\x80-\xff]{1,128}@"
    rb"(?:[A-Za-z0-9\x80-\xff](?:[A-Za-z0-9\-\x80-\xff]{0,122}[A-Za-z0-9\x80-\xff])?\.)+"
    rb"(?:[A-Za-z]{2,24}|[\x80-\xff]{4,48})"
)
_EMAIL_PCT = re.compile(
    rb"[A-Za-z0-9._+\-]{1,128}%40(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
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
_SSN_C = re.compile(rb"\d{3}([\- ])\d{2}\1\d{4}")
_SSN = re.compile(rb"(?!000|666|9)\d{3}[\- ](?!00)\d{2}[\- ](?!0000)\d{4}")
_SSN_BARE = re.compile(rb"(?<![0-9.])(?!000|666|9)\d{3}(?!00)\d{2}(?!0000)\d{4}(?![0-9])")
_SSN_LABEL = re.compile(
    rb"ssns?|social[ _\-]?security|tax(?:payer)?[ _\-]?(?:id|identification|number|no)"
)
"""Labels (lower case) that make nine bare digits after them an SSN."""
_SSN_LABEL_START = (b"ssn", b"social", b"tax")
_NINE = re.compile(rb"(?<![0-9])[0-9]{9}(?![0-9A-Za-z])")
_SSN_WINDOW = 40
"""Bytes after a label in which its nine digits may stand ('SSN (on file): 123456789')."""
_SSN_AFTER = 12
"""Bytes after nine digits in which a label saying SSN may follow them ('123456789 (SSN)')."""
_DIGIT_OR_EOL = re.compile(rb"[0-9\r\n]")
_BARE_NUMBER = re.compile(rb"\d{3}[\- ]?\d{2}[\- ]?\d{4}(?!\d)|\d{4,8}(?![\d\-])")
_PHONE_INTL = re.compile(rb"\+[ ]?\(?[1-9](?:[ .\-]?\(?\d\)?){7,14}")
_INTL_NEXT = frozenset(b"123456789 (")
"""What ``_PHONE_INTL`` can have right after its '+'."""
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
_IBAN = re.compile(rb"[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){10,32}")
_IBAN_ANCHOR_ANY = re.compile(rb"(?:AA|aa|Aa|aA)00(?=[0Aa]{11})")  # the definition of iban_anchors
"""Texts up to this size are searched for IBANs in every case at once (see ``find_iban``)."""
_APIKEY_UNDERSCORE = [  # (bytes before the '_', the byte(s) just before it, the pattern)
    (back, before, re.compile(p))
    for back, before, p in (
        (3, b"pousr", rb"gh[pousr]_[A-Za-z0-9]{36,255}"),
        (6, b"b", rb"github_pat_[A-Za-z0-9_]{22,255}"),
        (2, b"k", rb"[spr]k_(?:live|test)_[A-Za-z0-9]{10,99}"),
        (5, b"c", rb"whsec_[A-Za-z0-9+/=]{20,99}"),
        (5, b"tas", rb"shp(?:at|ca|pa|ss)_[A-Fa-f0-9]{32}"),
        (3, b"m", rb"npm_[A-Za-z0-9]{36}"),
        (3, b"p", rb"dop_v1_[a-f0-9]{64}"),
        (2, b"f", rb"hf_[A-Za-z0-9]{30,40}"),
    )
]
_APIKEY_AWS = re.compile(  # AWS key ids (AKIA, ASIA ...) and Google API keys: one 'A' pass
    rb"A(?:(?:KIA|SIA|GPA|IDA|ROA|NPA|NVA|IPA)[0-9A-Z]{16}|Iza[0-9A-Za-z_\-]{35})"
)
_APIKEY_DASH = [
    (back, before, re.compile(p))
    for back, before, p in (
        (4, b"abposre", rb"xox[abposre]-[A-Za-z0-9\-]{10,250}"),
        (4, b"p", rb"xapp-[A-Za-z0-9\-]{10,250}"),
        (5, b"t", rb"glpat-[A-Za-z0-9_\-]{20,64}"),
        (2, b"k", rb"sk-(?:proj-|ant-|live-)?[A-Za-z0-9_\-]{20,200}"),
        (4, b"i", rb"pypi-[A-Za-z0-9_\-]{50,300}"),
        (6, b"X", rb"GOCSPX-[A-Za-z0-9_\-]{20,40}"),
        (6, b"p", rb"sq0(?:atp|csp)-[A-Za-z0-9_\-]{20,60}"),
        (3, b"y", rb"key-[0-9a-f]{32}"),
    )
]
_APIKEY_DOT = [
    (4, b"9", re.compile(rb"ya29\.[0-9A-Za-z_\-]{20,2048}")),
    (2, b"G", re.compile(rb"SG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{16,64}")),
    # Slack incoming webhooks: the path after the kind is the credential (group 1)
    (5, b"s", re.compile(
        rb"hooks\.slack\.com/(?:services|workflows|triggers)/([A-Za-z0-9_\-]+/[A-Za-z0-9_/\-]{8,200})")),
]
_APIKEY_TWILIO = re.compile(rb"SK[0-9a-fA-F]{32}(?![0-9A-Za-z])")
"""Twilio API key SIDs (the key's name, but paired with its secret in every request)."""
_GATE_BEFORE = {  # separator -> the bytes a key prefix ends with before it
    sep: bytes(sorted({c for _b, before, _rx in pats for c in before}))
    for sep, pats in ((95, _APIKEY_UNDERSCORE), (45, _APIKEY_DASH), (46, _APIKEY_DOT))
}


def _gate_table(chars: bytes) -> bytes:
    t = bytearray(256)
    for c in chars:
        t[c] = 1
    return bytes(t)


def _key_at() -> dict[tuple[int, int], list[tuple[int, re.Pattern[bytes]]]]:
    """(separator, byte before it) -> the key patterns whose prefix ends that way."""
    out: dict[tuple[int, int], list[tuple[int, re.Pattern[bytes]]]] = {}
    for sep, pats in ((95, _APIKEY_UNDERSCORE), (45, _APIKEY_DASH), (46, _APIKEY_DOT)):
        for back, before, rx in pats:
            for c in before:
                out.setdefault((sep, c), []).append((back, rx))
    return out


_GATE_TABLES = tuple(_gate_table(_GATE_BEFORE[c]) for c in (95, 45, 46))
_KEY_AT = _key_at()
_key_gates = _native.load_pyx("replay.sanitise._keyscan", "key_gates")
_ipv6_gate = _native.load_pyx("replay.sanitise._keyscan", "ipv6_gate")
_iban_anchors = _native.load_pyx("replay.sanitise._keyscan", "iban_anchors")
_nine_digit_runs = _native.load_pyx("replay.sanitise._keyscan", "nine_digit_runs")
_zero_runs = _native.load_pyx("replay.sanitise._keyscan", "zero_runs")
_dot_spans = _native.load_pyx("replay.sanitise._keyscan", "dot_spans")
_alt_card_starts = _native.load_pyx("replay.sanitise._keyscan", "alt_card_starts")


def zero_runs_py(t: bytes) -> list[Span]:
    """The pure-Python ``_keyscan.zero_runs`` (the definition): the runs of 11+ '0' on the
    class map. 'find' of the literal, then the run's end by an anchored match: a full regex pass
    costs ~8 instructions a byte, and most texts hold few runs or none."""
    runs = []
    i = t.find(_RUN_LIT)
    while i >= 0:
        e = _RUN.match(t, i).end()  # type: ignore[union-attr]
        runs.append((i, e))
        i = t.find(_RUN_LIT, e)
    return runs


def nine_digit_runs_py(text: bytes) -> list[int]:
    """The pure-Python ``_keyscan.nine_digit_runs`` (the definition): where runs of exactly
    nine digits not followed by a letter start, but for those that are the whole value of a
    JSON member."""
    return [m.start() for m in _NINE.finditer(text) if not _json_member_value(text, m.start())]
_IBAN_COUNTRIES = bytes(
    1 if bytes((65 + i // 26, 65 + i % 26)) in IBAN_LENGTHS else 0 for i in range(676))
"""Country codes with an IBAN, as ``iban_anchors`` looks them up."""
_IBAN_LENGTH_T = bytes(
    IBAN_LENGTHS.get(bytes((65 + i // 26, 65 + i % 26)), 0) for i in range(676))
"""Each country's IBAN length, in the same places (``iban_anchors`` leaves out a start that is
part of a longer token, as ``find_iban`` would)."""


def key_gates_py(text: bytes, us: bytes, dash: bytes, dot: bytes) -> tuple[list[Span], bool]:
    """The pure-Python ``_keyscan.key_gates`` (the definition; the C loop gives the same)."""
    out: list[Span] = []
    for sep, tbl in ((95, us), (45, dash), (46, dot)):
        ch = bytes((sep,))
        i = text.find(ch, 1)
        while i >= 0:
            if tbl[text[i - 1]]:
                out.append((i, sep))
            i = text.find(ch, i + 1)
    i = text.find(b"A")
    while 0 <= i <= len(text) - 4:
        w = text[i + 1 : i + 4]
        if (w[2] == 65 and 65 <= w[1] <= 90 and w[0] in b"KSGIRN") or w == b"Iza":
            out.append((i, 65))
        i = text.find(b"A", i + 1)
    i = text.find(b"SK")
    while 0 <= i <= len(text) - 34:
        if text[i + 2] in _HEXSET:
            out.append((i, 83))
        i = text.find(b"SK", i + 1)
    return out, b"-----BEGIN" in text


_PEM_BEGIN = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ ){0,3})PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = b"-----END "
_PEM_B64 = re.compile(rb"[A-Za-z0-9+/=]{8,}")
_PEM_MAX = 64 * 1024
_TOKEN_RUN = re.compile(rb"[A-Za-z0-9_\-]{20,}")
_UUID = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEXSET = frozenset(b"0123456789abcdefABCDEF")


class Prep:
    """One text prepared for scanning: the class map and the digit regions, made on demand and
    shared by every detector that scans this text."""

    __slots__ = ("_digit_runs", "_dots", "_gates", "_lo", "_pairs", "_runs", "_t", "text")

    def __init__(self, text: bytes) -> None:
        self.text = text
        self._pairs: list[tuple[int, int, int]] | None = None
        self._gates: tuple[list[Span], bool] | None = None
        self._t: bytes | None = None
        self._runs: list[Span] | None = None
        self._digit_runs: list[Span] | None = None
        self._dots: list[int] | None = None
        self._lo: bytes | None = None

    @property
    def lower(self) -> bytes:
        """The text in lower case (ASCII), shared by the finders that look for names."""
        if self._lo is None:
            self._lo = self.text.lower()
        return self._lo

    @property
    def t(self) -> bytes:
        if self._t is None:
            self._t = self.text.translate(CLASS_MAP)
        return self._t

    @property
    def runs(self) -> list[Span]:
        """Regions of 11+ digits/spaces/dashes: the only places a card, SSN or phone can be
        (and the digits of an IBAN written in lower case)."""
        if self._runs is None:
            self._runs = (_zero_runs or zero_runs_py)(self.t)
        return self._runs

    @property
    def digit_runs(self) -> list[Span]:
        """The ``runs`` holding at least nine digits: every card (12+ digits), SSN (9) and
        phone number (10+) the finders look for inside a run has that many, and a run of
        blanks or dashes alone (indentation, a rule line) holds none."""
        if self._digit_runs is None:
            text = self.text
            self._digit_runs = [
                (s, e) for s, e in self.runs if len(text[s:e].translate(None, b" -")) >= 9]
        return self._digit_runs

    @property
    def gates(self) -> tuple[list[Span], bool]:
        """(separators where a vendor key could start, whether a PEM block may be here)."""
        if self._gates is None:
            fn = _key_gates if _key_gates is not None else key_gates_py
            self._gates = fn(self.text, *_GATE_TABLES)
        return self._gates

    @property
    def dots(self) -> list[Span]:
        """``.d.``, ``.dd.``, ``.ddd.`` places (class map): where IPv4s and dotted phones are."""
        if self._dots is None:
            if b"." in self.text:
                if _dot_spans is not None:
                    self._dots = _dot_spans(self.t)
                else:
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


_LOCAL_T = _class_table(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-" + bytes(range(128, 256))
)
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
        if i == 0 or text[i - 1] not in _LOCAL or i + k >= n or text[i + k] not in _DOMAIN_START:
            i = text.find(sep, i + 1)
            continue
        lo = i - _LOCAL_MAX if i - _LOCAL_MAX > prev else prev
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


def _literal_matches(text: bytes, lit: bytes, rx: re.Pattern[bytes]) -> list[re.Match[bytes]]:
    """``list(rx.finditer(text))`` for a pattern that starts with ``lit`` and never matches
    empty: the literal found by ``find`` (memchr speed), the pattern matched only there."""
    out = []
    i = text.find(lit)
    while i >= 0:
        m = rx.match(text, i)
        if m is not None:
            out.append(m)
            i = text.find(lit, m.end())
        else:
            i = text.find(lit, i + 1)
    return out


def find_bearer(p: Prep) -> list[Span]:
    """The token after 'Bearer' (any case of B), if it looks like a token, not a word."""
    text = p.text
    if b"earer" not in text:
        return []
    out = []
    for m in _literal_matches(text, b"earer", _BEARER):
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
    for m in _literal_matches(text, b"asic", _BASIC):
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
    """Whether a digit string has a length a card scheme issues for its prefix (IIN).

    Random ids pass Luhn one time in ten; requiring a real scheme prefix and length cuts false
    positives on long numeric ids further (no scheme issues numbers starting with 0, 1 or 7,
    which rules out epoch timestamps in ms/us/ns). Schemes: Visa (4: 13, 16, 18, 19 digits, the
    18 of old UK Switch/Solo ranges), Mastercard (51-55, 2221-2720: 16), Maestro (50, 56-69:
    12-19), Mir (2200-2204: 16-19), American Express (34, 37: 15), Diners (300-305, 3095, 36,
    38, 39: 14-19), JCB (3528-3589: 16-19), Discover (6011, 644-649, 65: 16-19), UnionPay (62,
    81: 16-19), RuPay (60, 65, 81, 82, 508: 16), Elo, Hipercard, Verve, Dankort (inside the
    Visa/Maestro/6x ranges), Troy (9792: 16)."""
    n = len(d)
    if n < 12 or n > 19:
        return False
    c1 = d[0]
    if c1 == 52:  # '4' Visa
        return n in (13, 16, 18, 19)
    if c1 == 53:  # '5'
        two = d[1] - 48
        if 1 <= two <= 5:  # Mastercard
            return n == 16
        return True  # Maestro 50, 56-59 (12-19), RuPay 508, Dankort 5019, Elo 50x
    if c1 == 54:  # '6': Maestro 60-69 (12-19) covers Discover, UnionPay, RuPay, Verve, Elo
        return True
    if c1 == 50:  # '2'
        four = int(d[:4])
        if 2200 <= four <= 2204:  # Mir
            return n >= 16
        return 2221 <= four <= 2720 and n == 16  # Mastercard 2-series
    if c1 == 51:  # '3'
        two = int(d[:2])
        if two in (34, 37):  # Amex
            return n == 15
        if two in (36, 38, 39) or 300 <= int(d[:3]) <= 305 or d[:4] == b"3095":  # Diners
            return n >= 14
        if 3528 <= int(d[:4]) <= 3589:  # JCB
            return n >= 16
        return False
    if c1 == 56:  # '8': UnionPay 81, RuPay 81/82
        return d[1] in b"12" and n >= 16
    if c1 == 57:  # '9': Troy
        return d[:4] == b"9792" and n == 16
    return False


_DGROUPS = re.compile(rb"\d+(?:[ \-]\d+)*")
"""Digit groups joined by single spaces or dashes (a card printed in any grouping)."""
_CARD_BUDGET = 4096
"""Candidate numbers checked per text at most (keeps a text of many short digit groups, like
'1 2 3 4 ...', linear)."""


def _card_grouping(groups: list[Span], i: int, j: int) -> bool:
    """Whether digit groups i..j can be a card's printed grouping: a card's first group has
    four digits or more, unless the number is cut into equal chunks ('411 111 111 111 1111').
    Order numbers such as '123-4567890-1234567' are not cards."""
    k = groups[i][1] - groups[i][0]
    if i == j or k >= 4:
        return True
    if j - i < 3:
        return False
    for g in range(i + 1, j):
        if groups[g][1] - groups[g][0] != k:
            return False
    return groups[j][1] - groups[j][0] <= k


_ALT_START = re.compile(
    rb"(?<![0-9])[0-9]{4}(?=(?:[./]|\xc2\xa0|\xe2\x80\xaf|&(?i:nbsp);|&#160;)[0-9]{4})")


def alt_card_starts_py(text: bytes) -> list[int]:
    """The pure-Python ``_keyscan.alt_card_starts`` (the definition): where runs of exactly four
    digits are followed by a '.', '/', a UTF-8 no-break space (U+00A0, U+202F), ``&nbsp;`` or
    ``&#160;`` and four more digits: the places a card grouped so can start."""
    return [m.start() for m in _ALT_START.finditer(text)]


_CARD_ALT = re.compile(
    rb"(\d{4})(\.|/|\xc2\xa0|\xe2\x80\xaf|(?i:&nbsp;)|&#160;)"
    rb"(?:(\d{4})\2(\d{4})\2(\d{4})(?:\2(\d{1,3}))?|(\d{6})\2(\d{4,5}))"
    rb"(?![0-9A-Za-z])(?!\2[0-9])"
)
"""A card grouped by one of those separators, the same one throughout, in the groupings cards
are printed in: 4-4-4-4 with an optional last group of 1-3 (17-19 digits), 4-6-5 (Amex),
4-6-4 (Diners). Versions (1.2.3.4), dates (2024/05/01), IPs and prices have no such groups."""


def _find_card_alt(p: Prep) -> list[Span]:
    """Cards grouped by dots, slashes or no-break spaces (see ``_CARD_ALT``), with the scheme
    and Luhn checks of ``find_card``. Not after a letter, a '+' or a digit and the same kind of
    separator (one more group of a longer dotted or slashed number)."""
    text = p.text
    out: list[Span] = []
    last = 0
    for s in (_alt_card_starts or alt_card_starts_py)(text):
        if s < last:
            continue
        m = _CARD_ALT.match(text, s)
        if m is None:
            continue
        if s > 0:
            c = text[s - 1]
            if c in _LETTERS or c == 43 or c in _DIGITSET:
                continue
            sep = m.group(2)
            if s > len(sep) and text.startswith(sep, s - len(sep)) \
                    and text[s - len(sep) - 1] in _DIGITSET:
                continue
        d = m.group(1) + b"".join([x for x in m.groups()[2:] if x])
        if card_network_ok(d) and luhn_ok(d):
            out.append(m.span())
            last = m.end()
    return out


def find_card(p: Prep) -> list[Span]:
    """Card numbers: 12-19 digits bare or in any grouping by single spaces or dashes (inside
    the digit regions), or grouped by dots, slashes or no-break spaces (``_CARD_ALT``); a real
    scheme prefix and length, and Luhn.

    A chain of groups ('order 12 4111 1111 1111 1111 x') is tried from each group start, so a
    card written next to other numbers is still found; the longest valid number from the
    earliest start wins. A number glued to a '.' and more digits is a float, not a card."""
    alt = _find_card_alt(p)
    out = _find_card_runs(p)
    if alt:
        out = sorted(out + [x for x in alt if not any(a < x[1] and x[0] < b for a, b in out)])
    return out


def _find_card_runs(p: Prep) -> list[Span]:
    runs = p.digit_runs
    if not runs:
        return []
    text = p.text
    n = len(text)
    out: list[Span] = []
    budget = _CARD_BUDGET
    for rs, re_ in runs:
        for m in _DGROUPS.finditer(text, rs, re_):
            s, e = m.span()
            if e - s < 12:
                continue
            if s > 0 and (text[s - 1] in _LETTERS or text[s - 1] == 43):
                continue  # glued to letters (a hash, a token) or after '+' (a phone number)
            if e < n and text[e] in _LETTERS:
                continue
            chain = m.group()
            if b" " not in chain and b"-" not in chain:  # one bare number: the common case
                if e - s > 19:
                    continue
                if (s > 0 and text[s - 1] == 46) or (
                    e + 1 < n and text[e] == 46 and text[e + 1] in _DIGITSET
                ):
                    continue  # the decimals or the integer part of a float
                if card_network_ok(chain) and luhn_ok(chain):
                    out.append((s, e))
                budget -= 1
                continue
            # groups: (start, end) offsets in the text
            groups: list[Span] = []
            gs = s
            for j in range(s, e):
                if text[j] in b" -":
                    groups.append((gs, j))
                    gs = j + 1
            groups.append((gs, e))
            first_ok = not (s > 0 and text[s - 1] == 46)
            last_ok = not (e + 1 < n and text[e] == 46 and text[e + 1] in _DIGITSET)
            k = len(groups)
            i = 0 if first_ok else 1
            while i < k and budget > 0:
                g0 = groups[i][0]
                if text[g0] in b"017" or (i > 0 and text[g0 - 1] == 45):
                    # no scheme starts with these; and a dashed chain (an order or phone
                    # number) is one number: a card does not start after one of its dashes
                    i += 1
                    continue
                total = 0
                best = -1
                digits = b""
                for j in range(i, k):
                    a, b = groups[j]
                    total += b - a
                    if total > 19:
                        break
                    digits += text[a:b]
                    if total >= 12 and ((j < k - 1 and text[b] == 32) or (j == k - 1 and last_ok)):
                        budget -= 1
                        if (
                            card_network_ok(digits)
                            and luhn_ok(digits)
                            and _card_grouping(groups, i, j)
                        ):
                            best = j
                if best >= 0:
                    out.append((g0, groups[best][1]))
                    i = best + 1
                else:
                    i += 1
    return out


def find_ssn(p: Prep) -> list[Span]:
    """US SSNs, with the SSA's impossible values out (area 000, 666, 900-999; group 00;
    serial 0000).

    - '123-45-6789' and '123 45 6789' anywhere (inside the digit regions).
    - Nine bare digits only with a label saying what they are (``_SSN_LABEL``: 'SSN',
      'social security', 'tax id', 'taxpayer id', 'tax number') at most ``_SSN_WINDOW`` bytes
      before them ('SSN 123456789', 'SSN#: 123456789', 'my ssn is 123456789') or at most
      ``_SSN_AFTER`` bytes after them on the same line ('123456789 (SSN)'), in texts of any
      size: the runs of exactly nine digits are listed (a C loop that mostly hops nine bytes
      at a time) and only the bytes around each are searched for a label. The whole value of
      a JSON member (``"id": 123456789``) is left to the name rules: a field, parameter or
      element *named* like an SSN is theirs. A bare
      nine-digit number with neither is an order or account id far more often than an SSN,
      so it is left alone (docs/sanitise.md)."""
    text = p.text
    n = len(text)
    out: list[Span] = []
    for rs, re_ in p.digit_runs:
        for m in _SSN_C.finditer(text, rs, re_):
            s, e = m.span()
            if s > 0 and (text[s - 1] in _DIGITSET or text[s - 1] == 45):
                continue
            if e < n and (
                text[e] in _DIGITSET
                or (text[e] in b" -" and e + 1 < n and text[e + 1] in _DIGITSET)
            ):
                continue
            if _SSN.match(text, s, e):
                out.append((s, e))
    for a in (_nine_digit_runs or nine_digit_runs_py)(text):  # a bare SSN, with a label?
        if _SSN_BARE.match(text, a, a + 9) is not None and _ssn_labelled(text, a, a + 9):
            out.append((a, a + 9))
    if len(out) > 1:
        out = sorted(set(out))
    return out


def _json_member_value(text: bytes, i: int) -> bool:
    """Whether the nine digits at text[i:] are the whole value of a JSON member
    (``"id":123456789``, ``"ref": "123456789"``): its name says what it is, and the name rules
    decide."""
    k = i - 1
    quoted = k >= 0 and text[k] == 34
    if quoted:
        k -= 1
    while k >= 0 and text[k] == 32:
        k -= 1
    return k >= 1 and text[k] == 58 and text[k - 1] == 34 and (
        not quoted or text[i + 9 : i + 10] == b'"')


def _ssn_labelled(text: bytes, s: int, e: int) -> bool:
    """Whether the nine bare digits at text[s:e] have an SSN label at most ``_SSN_WINDOW``
    bytes before them ('SSN#: 123456789'), or at most ``_SSN_AFTER`` bytes after them on the
    same line with no digit between ('123456789 (SSN)', '123456789 is my SSN'). Labels are
    looked for with ``find`` in the window only (a regex pass over a window costs more)."""
    a0 = s - _SSN_WINDOW - 26
    if a0 < 0:
        a0 = 0
    win = text[a0:s].lower()
    for lit in _SSN_LABEL_START:
        k = win.find(lit)
        while k >= 0:
            m = _SSN_LABEL.match(win, k)
            if m is not None and s - a0 - m.end() <= _SSN_WINDOW and _ssn_label_word(
                    text, a0 + k, a0 + m.end()):
                return True
            k = win.find(lit, k + 1)
    tail = text[e : e + _SSN_AFTER + 26].lower()
    for lit in _SSN_LABEL_START:
        k = tail.find(lit)
        if 0 <= k <= _SSN_AFTER:
            m = _SSN_LABEL.match(tail, k)
            if (m is not None and _ssn_label_word(text, e + k, e + m.end())
                    and _DIGIT_OR_EOL.search(tail, 0, k) is None):
                return True
    return False


def _ssn_label_word(text: bytes, a: int, b: int) -> bool:
    """The label at text[a:b] stands as a word: not inside one ('classname', 'taxonomy'),
    though camelCase counts ('customerSsn')."""
    if a > 0 and (97 <= text[a - 1] <= 122 or 65 <= text[a - 1] <= 90) and not (
            65 <= text[a] <= 90):
        return False
    return not (b < len(text) and 97 <= text[b] <= 122)


def ssn_after_label(text: bytes, lo: bytes, a: int) -> Span | None:
    """The nine bare digits of an SSN after the label that starts at ``a`` (``lo``: the text
    in lower case), at most ``_SSN_WINDOW`` bytes after it, or None (no label there: 'ssn'
    inside a word such as 'classname' is none, camelCase 'customerSsn' is one)."""
    m = _SSN_LABEL.match(lo, a)
    if m is None:
        return None
    b = m.end()
    n = len(text)
    if a > 0 and 97 <= lo[a - 1] <= 122 and not (65 <= text[a] <= 90):
        return None
    if b < n and 97 <= text[b] <= 122:
        return None  # 'ssnake', 'taxonomy' ... are no labels
    d = _SSN_BARE.search(text, b, min(n, b + _SSN_WINDOW + 9))
    if d is None or d.start() - b > _SSN_WINDOW or (d.end() < n and text[d.end()] in _DIGITSET):
        return None
    return d.span()


def find_phone(p: Prep) -> list[Span]:
    """International (+CC) and NANP numbers; bare digit runs are not phones (ids)."""
    text = p.text
    n = len(text)
    out: list[Span] = []
    i = text.find(b"+")
    while i >= 0:
        if i + 1 < n and text[i + 1] not in _INTL_NEXT:
            i = text.find(b"+", i + 1)  # '++', '+=', '+x': no phone ('+' then digit, ' ' or '(')
            continue
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
    for rs, re_ in p.digit_runs:
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
    if _ipv6_gate is not None and not _ipv6_gate(text):
        return []  # no anchor anywhere (the C walk over the colons; the regex is the definition)
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
    """IBANs in any case and grouping ('DE89 3704...', 'de89 3704...', 'nl91abna0417164300',
    'Nl91AbNa...'): known country, that country's length, mod-97 checksum.

    Where one can start is found on the class map: two letters of either case, two digits and
    eleven more letters, digits, spaces or dashes (``_keyscan.iban_anchors``, a memchr hop from
    one digit-class byte to the next, in every text whatever its size: a lower-case IBAN in a
    long body is as much a leak as one in a query value). A random alphanumeric string of the
    right length passes the checksum one time in 97, and only when it also starts with a country
    code and two digits and has exactly that country's length."""
    t = p.t
    text = p.text
    n = len(text)
    if b"00" not in t:
        return []
    if _iban_anchors is not None:
        starts = _iban_anchors(t, text, _IBAN_COUNTRIES, _IBAN_LENGTH_T)
    else:
        starts = [a.start() for a in _IBAN_ANCHOR_ANY.finditer(t)]
    out: list[Span] = []
    end = 0
    for s in starts:
        if s < end or (s > 0 and text[s - 1] in _ALNUM):
            continue
        if not (48 <= text[s + 2] <= 57 and 48 <= text[s + 3] <= 57):
            continue  # a space or dash (class '0' too) is no check digit
        length = IBAN_LENGTHS.get(text[s : s + 2].upper())
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
        compact = text[s:j].replace(b" ", b"").upper()
        if iban_mod97(compact) == 1:
            out.append((s, j))
            end = j
    return out


def find_api_key(p: Prep) -> list[Span]:
    """Vendor key shapes (AWS, GitHub, GitLab, Stripe, Slack incl. webhook URLs, Google,
    OpenAI, SendGrid, Shopify, npm, PyPI, Hugging Face, DigitalOcean, Square, Mailgun, Twilio).

    Every key family but AWS/Google ('A...', one regex pass with a literal first byte) has a
    '_', '-' or '.' right after its prefix, and the prefix ends with one of a few letters. One
    walk over the text (``key_gates``, memchr per separator, in C) lists the separators after
    such a letter; each family's pattern is then tried only there, from where its key would
    start. A typical JSON body (dates and SKUs with dashes, prices with dots, snake_case keys)
    costs about a microsecond."""
    text = p.text
    out: list[Span] = []
    end = -1
    for i, sep in sorted(p.gates[0]):
        if i < end:
            continue
        if sep == 65 or sep == 83:
            if sep == 83 and i > 0 and text[i - 1] in _ALNUM:
                continue
            m = (_APIKEY_AWS if sep == 65 else _APIKEY_TWILIO).match(text, i)
            if m is not None:
                out.append(m.span())
                end = m.end()
            continue
        pats = _KEY_AT.get((sep, text[i - 1]), ())
        for back, rx in pats:
            if i >= back:
                m = rx.match(text, i - back)
                if m is not None:
                    out.append(m.span() if m.lastindex is None else m.span(1))
                    end = m.end()
                    break
    if len(out) > 1:
        out = _no_overlap(sorted(out))
    return out


def _no_overlap(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    end = -1
    for s, e in spans:
        if s >= end:
            out.append((s, e))
            end = e
    return out


def find_pem(p: Prep) -> list[Span]:
    """The base64 lines of a PEM private key block (RSA, EC, OpenSSH, PKCS#8, encrypted, PGP),
    each line a span of its own, so the armour lines and line breaks (also as JSON '\\n'
    escapes) stay as they were. A block without its END line runs to the end of the text."""
    text = p.text
    if not p.gates[1]:
        return []
    out: list[Span] = []
    n = len(text)
    for m in _PEM_BEGIN.finditer(text):
        start = m.end()
        if out and start < out[-1][1]:
            continue
        end = text.find(_PEM_END, start, start + _PEM_MAX)
        if end < 0:
            end = min(n, start + _PEM_MAX)
        for r in _PEM_B64.finditer(text, start, end):
            s, e = r.span()
            if text[s - 1] == 92:  # '\n' of a JSON string: the 'n' is not key material
                s += 5 if text[s] == 117 else 1
            if e - s >= 8:
                out.append((s, e))
    return out


def _is_random_token(tok: bytes) -> bool:
    """Whether a run of [A-Za-z0-9_-] (20+ long) looks like a generated secret, not a word,
    a slug or an id: 32+ hex digits, or letters and digits that alternate often (a slug such as
    'my-first-post-2024' changes class once or twice, a random token every few characters).
    Canonical UUIDs are ids and stay (24-hex object ids too: shorter than 32)."""
    n = len(tok)
    if n >= 32 and all(c in _HEXSET for c in tok):
        return True
    if n == 36 and _UUID.fullmatch(tok):
        return False
    digits = 0
    alt = 0  # digit <-> letter changes
    alt3 = 0  # digit / upper / lower changes
    prev = prev3 = -1
    upper = lower = False
    for c in tok:
        if 48 <= c <= 57:
            cls = 0
            c3 = 0
            digits += 1
        elif 65 <= c <= 90:
            cls = 1
            c3 = 1
            upper = True
        elif 97 <= c <= 122:
            cls = 1
            c3 = 2
            lower = True
        else:
            continue
        if prev >= 0 and cls != prev:
            alt += 1
        if prev3 >= 0 and c3 != prev3:
            alt3 += 1
        prev = cls
        prev3 = c3
    if digits == n:
        return False
    if upper and lower and alt3 * 3 >= n:
        return True  # mixed case changing every few characters (camelCase changes rarely)
    if digits < 2:
        return False
    return alt >= 6 or (alt >= 4 and upper and lower)


def find_high_entropy(p: Prep) -> list[Span]:
    """Generated tokens (20+ characters of base64url/hex that look random, see
    ``_is_random_token``): for URL path segments and fragments, where reset links, magic links
    and signed URLs put secrets without a name."""
    text = p.text
    if len(text) < 20:
        return []
    return [m.span() for m in _TOKEN_RUN.finditer(text) if _is_random_token(m.group())]


# -- secret names ---------------------------------------------------------------------------
# Which field/parameter/header/element names hold a secret, by the words in the name. Used by
# the by-name detectors ``password_name`` / ``secret_name`` (whole values of named items in
# every structure) and by the pair detectors that find ``name=value`` in text.

NAME_STEMS: tuple[bytes, ...] = (
    b"pass", b"pw", b"secret", b"token", b"key", b"auth", b"sig", b"sess", b"sid", b"pin",
    b"otp", b"cvv", b"cvc", b"cvn", b"csc", b"mfa", b"pan", b"ssn", b"cred", b"card", b"code",
    b"csrf", b"xsrf", b"app", b"cc", b"social", b"verifier", b"mnemonic", b"seed", b"jwt",
    b"bearer", b"hmac", b"priv", b"tax", b"tin", b"nino", b"vat", b"nation", b"driv", b"dl",
)  # fmt: skip
"""Substrings every secret name holds (lower case): the cheap pre-check, in C for JSON keys
(``_keyscan.pyx``), before ``name_class`` decides."""
_STEM_RX = re.compile("|".join(re.escape(x.decode()) for x in NAME_STEMS))
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_PW_STEMS = ("password", "passwd", "passwort", "passphrase", "passcode", "pwd", "securitycode",
             "pincode", "pinnumber", "cardpin", "cardcvv", "cardcvc")
_PW_WORDS = frozenset({"pw", "pass", "pin", "otp", "totp", "hotp", "cvv", "cvc", "cvv2", "cvc2",
                       "cvn", "cvn2", "csc", "cav2", "cid2", "mfa", "2fa", "passwd"})
_PW_PREFIX = ("new", "old", "cur", "current", "confirm", "user", "admin", "root", "db", "my",
              "login", "account", "card", "atm", "mail", "smtp", "ftp", "wifi", "repeat")
_SECRET_STEMS = ("secret", "token", "credential", "apikey", "privatekey", "secretkey", "accesskey",
                 "sessionid", "sessid", "csrf", "xsrf", "authorization", "signature",
                 "cardnumber", "creditcard", "ccnumber", "ccnum", "cardnum", "cardno",
                 "socialsecurity", "codeverifier", "clientsecret", "connectionstring",
                 "accountkey", "sharedaccesskey", "privkey", "mnemonic", "seedphrase",
                 "sessionkey", "authkey", "authcode", "bearer", "jwt", "hmac",
                 "taxid", "taxpayerid", "taxnumber", "taxidentification")
_SECRET_WORDS = frozenset({"session", "sid", "sig", "auth", "pan", "ssn", "appid", "apiid",
                           "appkey", "appsecret", "sess", "ccn", "pem", "dsn"})
_KEY_PREFIX = ("api", "app", "secret", "private", "access", "auth", "client", "master",
               "license", "licence", "signing", "encryption", "session", "server", "subscription",
               "account", "developer", "consumer", "shared", "webhook", "hmac", "storage",
               "service", "user", "crypto", "aes", "rsa", "ssh", "gpg", "pgp", "jwt", "sign",
               "decryption", "root", "admin", "integration", "partner", "merchant", "publishable",
               "live", "test", "prod", "x")
_KEY_NOT = frozenset({"sort", "primary", "foreign", "partition", "cache", "public", "group",
                      "order", "lookup", "map", "row", "dedup", "dedupe", "routing", "object",
                      "s3", "bucket", "index", "hash", "shard", "composite", "natural", "unique",
                      "surrogate", "range", "search", "i18n", "translation", "locale", "label",
                      "message", "item", "entity", "record", "field", "column", "table", "dict",
                      "react", "list", "music", "hot", "short", "cut", "keyboard", "press",
                      "turn", "mon", "don", "tur", "jockey", "hockey", "whis", "config",
                      "setting", "settings", "option", "options", "property", "attribute",
                      "meta", "metadata", "tag", "name", "display", "ui", "nav", "menu", "event",
                      "sequence", "version", "node", "query", "template", "image", "file", "asset"})
_CODE_PREFIX = ("auth", "authorization", "verification", "verify", "reset", "confirm",
                "confirmation", "mfa", "otp", "sms", "security", "recovery", "activation",
                "invite", "invitation", "access", "login", "2fa", "twofactor", "onetime",
                "backup", "pairing", "device", "user", "magic", "email", "phone", "pin",
                "unlock", "one", "secret", "passcode")
_META_SUFFIX = frozenset({"type", "types", "count", "counts", "used", "limit", "limits", "length",
                          "len", "size", "ttl", "expiry", "expires", "expiration", "expired",
                          "exp", "at", "in", "url", "uri", "endpoint", "hint", "hints", "policy",
                          "strength", "format", "enabled", "disabled", "required", "changed",
                          "updated", "created", "set", "version", "mode", "method", "provider",
                          "scheme", "strategy", "status", "valid", "present", "name", "names",
                          "label", "field", "location", "path", "timeout", "duration", "algorithm",
                          "alg", "input", "prompt", "rotation", "age", "min", "max", "rules",
                          "rule", "reset", "forgot", "page", "form", "flow", "id_type", "kind",
                          "style", "color", "colour", "icon", "text", "title", "description",
                          "help", "placeholder", "error", "errors", "message", "attempts",
                          "retries", "pattern", "regex", "complexity", "visible", "show", "hide",
                          "header", "param", "parameter", "issuer", "audience",
                          "brand", "network", "last4", "lastfour", "last", "first6",
                          "bin", "iin", "holder", "country", "currency", "fingerprint",
                          "dirty", "touched", "ok", "exists", "expected", "lifetime", "family"})
_META_PREFIX = frozenset({"max", "min", "total", "num", "prompt", "completion", "input",
                          "output", "cached", "reasoning", "is", "has", "use", "uses", "allow",
                          "enable", "enabled", "require", "requires", "show", "forgot",
                          "no", "needs", "need", "can", "should", "must", "with", "without"})
_SSN_NOT = frozenset({"verified", "verification", "check", "checked", "match", "matched",
                      "provided", "missing", "masked", "on", "off", "flag", "state"})
"""What follows 'ssn' in a name that is about an SSN, not one (``ssnVerified``)."""
_ID_NAME = re.compile(
    r"(?:customer|user|payer|payee|seller|buyer|vendor|supplier|merchant|company|business"
    r"|employee|employer|client|holder|account|person|owner|applicant|member|billing|my)?"
    r"(?:(?:tin|nino|taxid|taxpayerid|vatin|vatid|nationalid|driv(?:er|ers|ing)licen[cs]e)"
    r"(?:number|num|no|nr)?|dl(?:number|num|no|nr)"
    r"|(?:vat|vatreg|vatregistration|passport|taxpayer|nationalinsurance|nationalidentity"
    r"|nationalidentification|nationalidcard|idcard)(?:number|num|no|nr|id))")
"""Names of national and tax identifiers (``tin``, ``vat_number``, ``national_id``, ``nino``,
``passport_number``, ``driver_license``, ``dl_number``), matched against the whole name or its
last words joined (``billing.vat_number``, ``customer[tin]``): whole words, so ``tint``,
``tinyUrl``, ``destination``, ``vatican``, ``dlq``, ``vat`` (an amount) and ``passport``
(the library) are not. An owner word may come first (``customerTin``, ``userPassportNo``)."""
_NAME_NOT = ("access-control-", "sec-websocket-", "content-security-", "strict-transport-",
             "public-key-pins", "x-content-type-", "cross-origin-", "permissions-policy")
_NAME_CACHE: dict[str, int] = {}


def name_class(lname: str) -> int:
    """0: an ordinary name; 1: a password-like secret (mask it); 2: another secret (token,
    key, session id, card number...: pseudonymise it). ``lname`` is lower case.

    By the words in the name (split at anything but letters and digits, so ``user[password]``,
    ``credentials.secretkey``, ``x-auth-token``, ``api_key``), with concatenated spellings
    (``userpassword``, ``apisecret``, ``privatetoken``) found by stems; a name that only
    *describes* a secret (``token_type``, ``password_hint``, ``max_tokens``, ``has_password``)
    is not one."""
    hit = _NAME_CACHE.get(lname)
    if hit is not None:
        return hit
    cls = _name_class(lname)
    if len(_NAME_CACHE) > 8192:
        _NAME_CACHE.clear()
    _NAME_CACHE[lname] = cls
    return cls


def _stem_hit(w: str, stems: tuple[str, ...]) -> bool:
    for st in stems:
        i = w.find(st)
        while i >= 0:
            rest = w[i + len(st) :]
            pre = w[:i]
            if rest not in _META_SUFFIX and pre not in _META_PREFIX and not (
                st == "token" and rest.startswith("i")  # tokenize, tokenizer
            ) and not (st == "secret" and rest.startswith("ar")):  # secretary
                return True
            i = w.find(st, i + 1)
    return False


def _word_class(w: str) -> int:
    if w in _PW_WORDS:
        return 1
    if _stem_hit(w, _PW_STEMS):
        return 1
    for pre in _PW_PREFIX:
        if w.startswith(pre) and w[len(pre) :] in ("pw", "pass", "pin", "pwd"):
            return 1
    if w.startswith("pw") and (len(w) <= 3 or w[2:].isdigit()):
        return 1
    if w in _SECRET_WORDS or _stem_hit(w, _SECRET_STEMS):
        return 2
    if (w.startswith("ssn") and w[3:] not in _META_SUFFIX and w[3:] not in _SSN_NOT) or (
            w.endswith("ssn") and w[:-3] not in _META_PREFIX):
        return 2  # ssnNumber, ssnLast4, customerSsn (no English word starts or ends so)
    if w.endswith("key") and w[:-3] in _KEY_PREFIX:
        return 2
    if w.endswith("code") and w[:-4] in _CODE_PREFIX:
        return 2
    return 0


def _name_class(lname: str) -> int:
    if _STEM_RX.search(lname) is None:
        return 0
    if lname.startswith(_NAME_NOT):
        return 0
    words = [w for w in _WORD_SPLIT.split(lname) if w]
    if not words:
        return 0
    if len(words) > 1 and (words[-1] in _META_SUFFIX or words[0] in _META_PREFIX):
        return 0
    cls = 0
    for w in words:
        c = _word_class(w)
        if c == 1:
            return 1
        if c:
            cls = 2
    if cls:
        return cls
    for i in range(len(words)):
        if _ID_NAME.fullmatch("".join(words[i:])) is not None:
            return 2
    joined = "".join(words)
    if len(words) > 1:
        if _stem_hit(joined, _PW_STEMS):
            return 1
        if _stem_hit(joined, _SECRET_STEMS):
            return 2
        last, prev = words[-1], words[-2]
        if last in ("key", "keys") and prev not in _KEY_NOT:
            return 2
        if last in ("code", "codes") and (prev in _CODE_PREFIX
                                          or "".join(words[-3:-1]) in _CODE_PREFIX):
            return 2
        if last == "id" and prev in ("app", "api", "session", "sess"):
            return 2
        if last in ("number", "num", "no", "nr") and prev in ("card", "cc", "credit", "pan",
                                                            "security", "pin"):
            return 2
        if last == "verifier":
            return 2
    return 0


def is_password_name(lname: str) -> bool:
    return name_class(lname) == 1


def is_secret_name(lname: str) -> bool:
    return name_class(lname) == 2


# -- name = value pairs in text ---------------------------------------------------------------

_PAIR_STEMS = stem_finder(NAME_STEMS)
"""Where the stems are in a lower-cased text, ``[(start, end), ...]``: a C loop when built
(one table lookup a byte; ``re`` over the alternation costs ~30 ns a byte and was a third of
sanitising a large body), else that regex, with the same results."""
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-[]")
_NAME_MAX = 64
_VALUE_MAX = 4096
_STOP_EQ = frozenset(b" \t\r\n&;,\"'<>\\")
_STOP_COLON = frozenset(b"\r\n&;,\"'<>\\}]")
_NAMEISH = re.compile(rb"(?:[A-Z]*[a-z]{2,}|[A-Z]{2,}|[0-9]{1,2}|[_.\-\[\]]+)+")
"""A camelCase, snake_case or dotted name made of words (``SecretAccessKey``, ``AccessKeyId``),
which the random-token test would take for a token: its case changes every few characters."""
_PAIR_NAMES = pair_name_finder(NAME_STEMS, _NAME_CHARS, _NAME_MAX)
"""``(lo, text) -> [(stem start, name start, name end), ...]``: ``_PAIR_STEMS`` with the name
around each stem (one C loop when built)."""
_PAIR_NAME_CACHE: dict[bytes, int] = {}
"""What a name found around a stem is, by its bytes: -1 no name (a number, a token or a hash
holding a stem), else its ``name_class``."""
_TEXTAREA = re.compile(rb"(?i)<textarea\b")
_ATTR_VALUE = re.compile(rb"""(?i:\b(?:value|content)\s*=\s*)(?:"([^"<>]*)"|'([^'<>]*)'|([^\s"'<>]+))""")


def find_pairs(p: Prep) -> list[tuple[int, int, int]]:
    """(start, end, class) of the values of secret-named items in text: ``name=value`` and
    ``name: value`` (env files, YAML, logs, query strings in text, JSON quoted in text or in a
    JSON string, ``\"name\":\"value\"``), XML elements ``<Password>v</Password>`` (with
    a namespace prefix, CDATA) and attributes ``password="v"``, and HTML inputs and meta tags
    ``<input type="hidden" name="csrf_token" value="v">``. Cached on the Prep (two detectors,
    one per class, share the work)."""
    got = p._pairs
    if got is not None:
        return got
    text = p.text
    out: list[tuple[int, int, int]] = []
    p._pairs = out
    lo = p.lower
    last_name_end = -1
    cache = _PAIR_NAME_CACHE
    for k, a, b in _PAIR_NAMES(lo, text):
        if k < last_name_end:
            continue
        last_name_end = b
        if b - a >= _NAME_MAX or (a > 0 and text[a - 1] in b"+/"):
            continue  # not a name: base64
        name = text[a:b]
        cls = cache.get(name)
        if cls is None:
            cls = _pair_name_class(name)
            if len(cache) > 8192:
                cache.clear()
            cache[name] = cls
        if cls < 0:
            continue
        span = _pair_value(text, a, b) if cls else None
        if span is None and lo.startswith(_SSN_LABEL_START, k):
            span = ssn_after_label(text, lo, k)  # 'Social Security Number (on file): 123456789'
            cls = 2
        if span is not None and span[1] > span[0]:
            out.append((span[0], span[1], cls))
            if span[1] > last_name_end:
                last_name_end = span[1]
    return out


def _pair_name_class(name: bytes) -> int:
    """-1 when the bytes around a stem are no name (a number; a token or a hash that happens to
    hold 'pw', 'key'...), else the ``name_class`` of the name."""
    if name[0] in _DIGITSET and not name.lower().startswith(b"2fa"):
        return -1
    if len(name) >= 12 and _is_random_token(name) and _NAMEISH.fullmatch(name) is None:
        return -1
    return name_class(name.lower().decode("latin-1"))


def _pair_value(text: bytes, a: int, b: int) -> Span | None:
    """Where the value of the name at text[a:b] is, or None."""
    n = len(text)
    pc = text[a - 1] if a > 0 else 0
    # XML element, possibly with a namespace prefix: <Password>, <ns:ApiKey attr="x">
    lt = a - 1
    if pc == 58:  # ':' of a prefix
        j = a - 2
        while j >= 0 and a - j < 40 and text[j] in _NAME_CHARS:
            j -= 1
        lt = j if j >= 0 and text[j] == 60 else -1
    if lt >= 0 and text[lt] == 60:
        gt = text.find(b">", b, b + 512)
        if gt < 0 or text[gt - 1] == 47:  # no end, or self-closing
            return None
        s = gt + 1
        if text.startswith(b"<![CDATA[", s):
            s += 9
            e = text.find(b"]]>", s, s + _VALUE_MAX)
        else:
            e = text.find(b"<", s, s + _VALUE_MAX)
        if e < 0:
            e = min(n, s + _VALUE_MAX)
        while s < e and text[s] in b" \t\r\n":
            s += 1
        while e > s and text[e - 1] in b" \t\r\n":
            e -= 1
        return (s, e)
    # HTML: name="csrf_token" ... value="..." (or content="..." in a meta tag); also unquoted,
    # name=csrf_token value=... (HTML5, minified pages)
    if (pc in (34, 39) and a >= 2) or (pc == 61 and text[a - 5 : a - 1].lower() == b"name"):
        j = a - 2 if pc != 61 else a - 1
        while j >= 0 and text[j] in b" \t":
            j -= 1
        if j >= 0 and text[j] == 61:  # '='
            lt = text.rfind(b"<", max(0, a - 512), a)
            if lt < 0:
                return None
            gt = text.find(b">", b, b + 1024)
            if gt < 0:
                gt = min(n, b + 1024)
            m = _ATTR_VALUE.search(text, lt, gt)
            if m is None:
                if _TEXTAREA.match(text, lt) is None or gt >= n:
                    return None
                e = text.find(b"</", gt + 1, gt + 1 + _VALUE_MAX)  # <textarea name="pw">v</
                return (gt + 1, e if e >= 0 else min(n, gt + 1 + _VALUE_MAX))
            g = 1 if m.start(1) >= 0 else 2 if m.start(2) >= 0 else 3
            return m.span(g)
    # name = value / name: value, the name and the value optionally quoted (\" in JSON text)
    j = b
    if j < n and text[j] == 92:
        j += 1
    if j < n and text[j] in b"\"'":
        j += 1
    while j < n and text[j] in b" \t":
        j += 1
    if j >= n or text[j] not in b"=:":
        if j > b and j < n and text[j] in _DIGITSET:  # 'SSN 123456789', 'PIN 1234'
            m = _BARE_NUMBER.match(text, j)
            if m is not None:
                return m.span()
        return None
    sep = text[j]
    j += 1
    if sep == 61 and j < n and text[j] == 62:  # '=>'
        j += 1
    while j < n and text[j] in b" \t":
        j += 1
    if j < n and text[j] == 92:
        j += 1
    if j < n and text[j] in b"\"'":
        q = text[j]
        s = j + 1
        e = s
        lim = min(n, s + _VALUE_MAX)
        while e < lim and text[e] != q and text[e] != 92 and text[e] not in b"\r\n":
            e += 1
        return (s, e)
    stop = _STOP_EQ if sep == 61 else _STOP_COLON
    s = j
    e = s
    lim = min(n, s + _VALUE_MAX)
    while e < lim and text[e] not in stop:
        e += 1
    while e > s and text[e - 1] in b" \t":
        e -= 1
    return (s, e)


def find_password_pair(p: Prep) -> list[Span]:
    """Values of password-like names in text (see ``find_pairs``)."""
    return [(s, e) for s, e, c in find_pairs(p) if c == 1]


def find_secret_pair(p: Prep) -> list[Span]:
    """Values of other secret names in text (see ``find_pairs``)."""
    return [(s, e) for s, e, c in find_pairs(p) if c == 2]


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
            rb"gh[pousr]_|github_pat_|k_live_|k_test_|whsec_|shp|npm_|dop_v1_|hf_|A[A-Z][A-Za-z]A"
            rb"|AIza|xox[abposre]-|xapp-|glpat-|sk-|pypi-|GOCSPX-|sq0|key-|ya29\.|SG\.|SK[0-9a-fA-F]"
            rb"|hooks\.slack",
        ),
        Detector("pem", find_pem, "token", rb"-----BEGIN"),
        Detector("email", find_email, "email", rb"@"),
        Detector("iban", find_iban, "iban", rb"[A-Za-z]{2}\d\d"),
        Detector("card", find_card, "card", rb"\d[\d \-]{10,}\d|\d{4}(?:[./]|\xc2\xa0|\xe2|&)"),
        Detector("ssn", find_ssn, "ssn", rb"\d{3}[\- ]?\d\d[\- ]?\d{4}"),
        Detector("ipv6", find_ipv6, "ipv6", rb"::|[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:"),
        Detector("ipv4", find_ipv4, "ipv4", rb"\d\.\d{1,3}\.\d"),
        Detector("phone", find_phone, "phone", rb"\+ ?\(?\d|\d{3}\)?[ .\-]?\d{3}[ .\-]\d{4}"),
        Detector("high_entropy", find_high_entropy, "token", rb"[A-Za-z0-9_\-]{20}"),
        Detector("password_pair", find_password_pair, "token", rb"[=:>\"']"),
        Detector("secret_pair", find_secret_pair, "token", rb"[=:>\"']"),
    )
}
PAIR_DETECTORS = frozenset({"password_pair", "secret_pair", "bearer", "basic"})
"""Detectors of ``name=value`` and ``Scheme credentials`` text: a ``body`` rule with one of them
does not scan JSON documents (their names are the name rules' job, an Authorization value is a
named field) unless a document holds JSON, a form or a header line inside a string."""
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

NAME_CLASSES: dict[str, Callable[[str], bool]] = {
    "password_name": is_password_name,
    "secret_name": is_secret_name,
}
"""By-name detectors decided by ``name_class`` (the words in a name) instead of a regex: they
select password-like and other secret names in every structure (JSON keys at any depth, form
fields, multipart parts, query parameters, headers)."""


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
