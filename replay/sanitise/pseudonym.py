"""Keyed, format-preserving pseudonyms.

Why keyed: a plain hash of an e-mail address can be reversed by hashing a list of likely
addresses; an HMAC with a secret key cannot. Why format-preserving: the replayer and the
comparator (and the application behind a shadow) must still accept the value, so an e-mail stays
an e-mail, a card stays a Luhn-valid card of the same length, an IBAN keeps its country and a
valid checksum, a JWT stays three base64url parts. Why deterministic: the same user must stay the
same user across requests, sessions and the three diff targets, so the same input and key always
give the same output (and a different key gives a different one).

Everything works on ``bytes`` (bodies are bytes; headers are latin-1 text and are encoded 1:1), and
every pseudonym is plain ASCII, so it is safe to splice into JSON strings, URLs and headers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re

import orjson

from replay.sanitise import detectors
from replay.sanitise.checksums import iban_mod97, luhn_digit, luhn_ok

__all__ = ["FORMATS", "Pseudonymiser", "iban_mod97", "key_fingerprint", "luhn_digit", "luhn_ok"]

_DIGITS = b"0123456789"
_LOWER = b"abcdefghijklmnopqrstuvwxyz"
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

_EMAIL_FULL = re.compile(
    rb"[A-Za-z0-9._%+\-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
)
_JWT_FULL = re.compile(rb"eyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")

FORMATS = (
    "auto",
    "token",
    "digits",
    "email",
    "card",
    "iban",
    "ssn",
    "phone",
    "jwt",
    "ipv4",
    "ipv6",
    "ip",
    "basic",
    "bearer",
    "hex",
)
"""Pseudonym formats a rule may ask for (``format:``); ``auto`` picks one from the value's shape."""

_CLASS_ALPHABET: list[bytes | None] = [None] * 256
"""Per input byte: a 256-entry table from a random byte to a replacement of the same class
(digit, lower, upper), or None to keep the byte. One lookup per character."""
for _alpha, _range in ((_DIGITS, range(48, 58)), (_LOWER, range(97, 123)), (_UPPER, range(65, 91))):
    _table = bytes(_alpha[r % len(_alpha)] for r in range(256))
    for _c in _range:
        _CLASS_ALPHABET[_c] = _table

_CACHE_MAX = 1 << 16
_IPAD = bytes(c ^ 0x36 for c in range(256))
_OPAD = bytes(c ^ 0x5C for c in range(256))

# For class_replace: random byte -> a digit / lower / upper letter (the _CLASS_ALPHABET tables),
# and input byte -> 0xFF where it is of that class, else 0x00; _KEEP zeroes the class bytes.
_TO_DIGIT = bytes(_DIGITS[r % 10] for r in range(256))
_TO_LOWER = bytes(_LOWER[r % 26] for r in range(256))
_TO_UPPER = bytes(_UPPER[r % 26] for r in range(256))
_IS_DIGIT = bytes(255 if 48 <= c <= 57 else 0 for c in range(256))
_IS_LOWER = bytes(255 if 97 <= c <= 122 else 0 for c in range(256))
_IS_UPPER = bytes(255 if 65 <= c <= 90 else 0 for c in range(256))
_KEEP = bytes(0 if _CLASS_ALPHABET[c] else c for c in range(256))


def class_replace(value: bytes, rnd: bytes) -> bytes:
    """Each digit/lower/upper byte of ``value`` replaced by one of its class picked by the byte
    of ``rnd`` at the same place (``_CLASS_ALPHABET``), every other byte kept.

    Done as whole-string operations (translate, and a bitwise select on big integers) rather
    than a trip through the interpreter per character; the same output as that loop."""
    n = len(value)
    if n == 0:
        return value
    rnd = rnd[:n]
    f = int.from_bytes
    out = (
        (f(rnd.translate(_TO_DIGIT)) & f(value.translate(_IS_DIGIT)))
        | (f(rnd.translate(_TO_LOWER)) & f(value.translate(_IS_LOWER)))
        | (f(rnd.translate(_TO_UPPER)) & f(value.translate(_IS_UPPER)))
        | f(value.translate(_KEEP))
    )
    return out.to_bytes(n)


class Pseudonymiser:
    """Deterministic keyed pseudonyms, one method per format, with a bounded cache.

    The key is held only in memory. The cache is a plain dict cleared when full: the point is that
    the same user shows up thousands of times in a capture and HMAC is the most expensive step.
    """

    __slots__ = ("_cache", "_inner", "_key", "_outer")

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("pseudonym key must not be empty")
        self._key = bytes(key)
        self._cache: dict[tuple[str, bytes], bytes] = {}
        # HMAC-SHA256 with the key's inner and outer pads hashed once (RFC 2104): each stream
        # then costs two hash copies instead of a full HMAC set-up with the key.
        k = self._key if len(self._key) <= 64 else hashlib.sha256(self._key).digest()
        k = k.ljust(64, b"\0")
        self._inner = hashlib.sha256(k.translate(_IPAD))
        self._outer = hashlib.sha256(k.translate(_OPAD))

    # -- raw material -------------------------------------------------------------------------

    def _mac(self, msg: bytes) -> bytes:
        """HMAC-SHA256(key, msg), the same bytes as ``hmac.digest(key, msg, 'sha256')``."""
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def _stream(self, kind: str, value: bytes, n: int, salt: int = 0) -> bytes:
        """``n`` pseudo-random bytes derived from (key, kind, value, salt)."""
        base = kind.encode() + b"\0" + value + b"\0" + str(salt).encode()
        out = self._mac(base)
        i = 1
        while len(out) < n:
            out += self._mac(base + b"\0" + str(i).encode())
            i += 1
        return out[:n]

    # -- public entry ---------------------------------------------------------------------------

    def pseudonym(self, fmt: str, value: bytes) -> bytes:
        """The pseudonym of ``value`` in format ``fmt`` (see FORMATS). Never equal to ``value``
        unless the value has nothing to replace (e.g. only punctuation)."""
        ck = (fmt, value)
        hit = self._cache.get(ck)
        if hit is not None:
            return hit
        fn = getattr(self, "_fmt_" + fmt, None)
        if fn is None:
            fn = self._fmt_token
        out = value
        for salt in range(8):
            out = fn(value, salt)
            if out != value:
                break
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[ck] = out
        return out

    def classify(self, value: bytes) -> str:
        """The format a whole value looks like (used by ``format: auto``)."""
        v = value.strip()
        if not v:
            return "token"
        # cheap necessary conditions first: most values are plain tokens
        if b"@" in v and _EMAIL_FULL.fullmatch(v):
            return "email"
        if v.startswith(b"eyJ") and _JWT_FULL.fullmatch(v):
            return "jwt"
        c = v[0]
        if 50 <= c <= 54 and detectors.is_card(v):  # cards start with 2-6
            return "card"
        if 65 <= c <= 90 and detectors.is_iban(v):
            return "iban"
        if 48 <= c <= 57 and b"." in v and detectors.is_ipv4(v):
            return "ipv4"
        if b":" in v and detectors.is_ipv6(v):
            return "ipv6"
        return "token"

    # -- formats (each takes value and salt, returns bytes) --------------------------------------

    def _fmt_auto(self, value: bytes, salt: int) -> bytes:
        fmt = self.classify(value)
        if fmt == "token":
            return self._fmt_token(value, salt)
        return getattr(self, "_fmt_" + fmt)(value, salt)

    def _fmt_token(self, value: bytes, salt: int, kind: str = "token") -> bytes:
        """Character-class preserving: digit->digit, lower->lower, upper->upper, rest kept."""
        rnd = self._stream(kind, value, len(value), salt)
        return class_replace(value, rnd)

    _fmt_hex = _fmt_token

    def _fmt_digits(self, value: bytes, salt: int) -> bytes:
        return self._fmt_token(value, salt, "digits")

    def _fmt_phone(self, value: bytes, salt: int) -> bytes:
        """Digits replaced; separators kept, and the digits up to the first non-zero one (the
        trunk '0' or international '00' and the first digit of the country or area code), so
        the pseudonym is dialled the same way as the original."""
        out = bytearray(self._fmt_token(value, salt, "phone"))
        for i, c in enumerate(value):
            if 48 <= c <= 57:
                out[i] = c
                if c != 48:
                    break
        return bytes(out)

    def _fmt_email(self, value: bytes, salt: int) -> bytes:
        """Local part and domain labels replaced class-preservingly; the TLD is kept so the
        address still has a plausible shape (and ``.com`` vs ``.de`` survives for diffs)."""
        at = b"@" if b"@" in value else b"%40"
        local, _, domain = value.rpartition(at)
        if not local:
            return self._fmt_token(value, salt)
        labels = domain.split(b".")
        new_local = self._ascii(self._fmt_token(local, salt, "email-local"), local, salt)
        new_labels = [
            self._ascii(self._fmt_token(lb, salt, "email-domain"), lb, salt)
            for lb in labels[:-1]
        ]
        new_labels.append(self._ascii(labels[-1], labels[-1], salt))
        return new_local + at + b".".join(new_labels)

    def _ascii(self, new: bytes, orig: bytes, salt: int) -> bytes:
        """Non-ASCII bytes (UTF-8 of 'ö', '用') replaced by pseudo-random lower-case letters,
        so no character of the original survives (ASCII values come back unchanged)."""
        if new.isascii():
            return new
        rnd = self._stream("email-utf8", orig, len(new), salt)
        return bytes(c if c < 128 else _LOWER[r % 26] for c, r in zip(new, rnd, strict=True))

    def _fmt_card(self, value: bytes, salt: int) -> bytes:
        """Same length and separators, the first four digits (the card network's prefix, which
        PCI DSS allows to show) kept so the number still validates for its network, the rest
        pseudo-random with a new Luhn check digit."""
        digits = bytes(c for c in value if 48 <= c <= 57)
        if len(digits) < 8:
            return self._fmt_token(value, salt)
        rnd = self._stream("card", digits, len(digits), salt)
        body = bytearray(digits[:4])
        for i in range(4, len(digits) - 1):
            body.append(_DIGITS[rnd[i] % 10])
        body.append(48 + luhn_digit(bytes(body)))
        return _respread(value, bytes(body))

    def _fmt_ssn(self, value: bytes, salt: int) -> bytes:
        """A structurally valid SSN (area 001-899 but not 666, group 01-99, serial 0001-9999)."""
        digits = bytes(c for c in value if 48 <= c <= 57)
        if len(digits) != 9:
            return self._fmt_digits(value, salt)
        r = int.from_bytes(self._stream("ssn", digits, 8, salt), "big")
        area = 1 + r % 899
        if area == 666:
            area = 667
        group = 1 + (r // 899) % 99
        serial = 1 + (r // (899 * 99)) % 9999
        return _respread(value, f"{area:03d}{group:02d}{serial:04d}".encode())

    def _fmt_iban(self, value: bytes, salt: int) -> bytes:
        """Country kept, BBAN replaced class-preservingly, check digits recomputed (mod 97)."""
        compact = bytes(c for c in value if c != 32).upper()
        if len(compact) < 5:
            return self._fmt_token(value, salt)
        bban = self._fmt_token(compact[4:], salt, "iban").upper()
        country = compact[:2]
        check = 98 - iban_mod97(country + b"00" + bban)
        new = country + f"{check:02d}".encode() + bban
        return _respread(value, new, skip=b" ")

    def _fmt_ipv4(self, value: bytes, salt: int) -> bytes:
        """Another unicast IPv4 address (first octet 1-223, never 127)."""
        r = self._stream("ipv4", value, 4, salt)
        first = 1 + r[0] % 223
        if first == 127:
            first = 128
        last = 1 + r[3] % 254
        return f"{first}.{r[1]}.{r[2]}.{last}".encode()

    def _fmt_ipv6(self, value: bytes, salt: int) -> bytes:
        """An address in 2001:db8::/32 (documentation range), so it is visibly not real."""
        r = self._stream("ipv6", value, 12, salt)
        addr = ipaddress.IPv6Address(b"\x20\x01\x0d\xb8" + r)
        return str(addr).encode()

    def _fmt_ip(self, value: bytes, salt: int) -> bytes:
        if b":" in value:
            return self._fmt_ipv6(value, salt)
        return self._fmt_ipv4(value, salt)

    def _fmt_jwt(self, value: bytes, salt: int) -> bytes:
        """Three base64url parts: the header kept (algorithm metadata, not personal), the claims
        re-encoded with every string claim pseudonymised (numbers such as exp/iat kept, so
        expiry logic still works), and a pseudo-random signature of the same length."""
        parts = value.split(b".")
        if len(parts) < 3:
            return self._fmt_token(value, salt)
        header, payload, sig = parts[0], parts[1], parts[-1]
        new_payload = b""
        try:
            claims = orjson.loads(_b64url_decode(payload))
        except (ValueError, binascii.Error):
            claims = None
        if isinstance(claims, dict):
            new_claims = self._pseudo_json(claims, salt)
            new_payload = base64.urlsafe_b64encode(orjson.dumps(new_claims)).rstrip(b"=")
        if not new_payload:
            new_payload = self._b64_like(payload, "jwt-payload", salt)
        new_sig = self._b64_like(sig, "jwt-sig", salt) if sig else b""
        return header + b"." + new_payload + b"." + new_sig

    def _pseudo_json(self, node: object, salt: int) -> object:
        if isinstance(node, dict):
            return {k: self._pseudo_json(v, salt) for k, v in node.items()}
        if isinstance(node, list):
            return [self._pseudo_json(v, salt) for v in node]
        if isinstance(node, str):
            b = node.encode("utf-8")
            fmt = "email" if _EMAIL_FULL.fullmatch(b) else "token"
            return getattr(self, "_fmt_" + fmt)(b, salt).decode("utf-8", "replace")
        return node

    def _b64_like(self, part: bytes, kind: str, salt: int) -> bytes:
        """Pseudo-random base64url text of the same length as ``part``."""
        rnd = self._stream(kind, part, len(part), salt)
        return bytes(_B64URL[b % 64] for b in rnd)

    def _fmt_basic(self, value: bytes, salt: int) -> bytes:
        """HTTP Basic credentials: decode user:password, pseudonymise both, re-encode."""
        try:
            raw = base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            return self._fmt_token(value, salt)
        user, sep, pw = raw.partition(b":")
        fmt = "email" if _EMAIL_FULL.fullmatch(user) else "token"
        new_user = getattr(self, "_fmt_" + fmt)(user, salt) if user else user
        new_pw = self._fmt_token(pw, salt, "password") if pw else pw
        return base64.b64encode(new_user + sep + new_pw)

    def _fmt_bearer(self, value: bytes, salt: int) -> bytes:
        if value.startswith(b"eyJ") and value.count(b".") == 2:
            return self._fmt_jwt(value, salt)
        return self._fmt_token(value, salt)


def _respread(template: bytes, digits: bytes, skip: bytes | None = None) -> bytes:
    """Put ``digits`` back into ``template``'s layout (separators stay where they were).

    With ``skip`` given, only those bytes count as separators; otherwise every non-digit does."""
    out = bytearray()
    it = iter(digits)
    for c in template:
        if (skip is not None and c not in skip) or (skip is None and 48 <= c <= 57):
            out.append(next(it, 48))
        else:
            out.append(c)
    return bytes(out)


def _b64url_decode(s: bytes) -> bytes:
    return base64.urlsafe_b64decode(s + b"=" * (-len(s) % 4))


def key_fingerprint(key: bytes) -> str:
    """A short, non-reversible id of the key for reports (which key made these pseudonyms)."""
    return hashlib.sha256(b"shadowtap-key-id\0" + key).hexdigest()[:12]
