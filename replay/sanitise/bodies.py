"""Body plumbing for the sanitiser: content codings, content types, forms and multipart.

Why a separate module: these are pure byte transformations with their own failure modes (a gzip
stream cut short, a multipart body without its boundary), and each failure must become a counted
fallback rather than an exception, so the sanitiser can always fall back to a whole-body scan and
never write a value it could not look at.
"""

from __future__ import annotations

import binascii
import gzip
import zlib
from dataclasses import dataclass

import brotli

MAX_DECODED = 64 * 1024 * 1024
"""Refuse to inflate beyond this (a compression bomb); the raw bytes are then scanned instead."""


class BodyError(Exception):
    """A body could not be decoded as its headers claim; the message is a short reason."""


def parse_content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``('application/json', {'charset': 'utf-8'})`` from a Content-Type value."""
    if not value:
        return "", {}
    parts = value.split(";")
    mime = parts[0].strip().lower()
    params: dict[str, str] = {}
    for p in parts[1:]:
        k, sep, v = p.partition("=")
        if sep:
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            params[k.strip().lower()] = v
    return mime, params


def body_kind(mime: str) -> str:
    """Which structured handler a media type gets: json, form, multipart or text."""
    if mime == "application/json" or mime.endswith("+json") or mime in ("text/json",):
        return "json"
    if mime == "application/x-www-form-urlencoded":
        return "form"
    if mime.startswith("multipart/"):
        return "multipart"
    return "text"


def codings(value: str | None) -> list[str]:
    """Content codings in the order they were applied (``gzip, br`` means gzip first)."""
    if not value:
        return []
    return [c.strip().lower() for c in value.split(",") if c.strip() and c.strip() != "identity"]


def decode(body: bytes, codes: list[str]) -> bytes:
    """Undo content codings (last applied first). Raises BodyError on anything unexpected."""
    data = body
    for c in reversed(codes):
        try:
            if c in ("gzip", "x-gzip"):
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out = d.decompress(data, MAX_DECODED)
                if d.unconsumed_tail:
                    raise BodyError("gzip body inflates beyond the size limit")
                if not d.eof:
                    raise BodyError("gzip body is cut short")
                data = out
            elif c == "deflate":
                # RFC 9110 'deflate' is zlib-wrapped; some servers send raw deflate.
                try:
                    d = zlib.decompressobj(zlib.MAX_WBITS)
                    out = d.decompress(data, MAX_DECODED)
                except zlib.error:
                    d = zlib.decompressobj(-zlib.MAX_WBITS)
                    out = d.decompress(data, MAX_DECODED)
                if d.unconsumed_tail:
                    raise BodyError("deflate body inflates beyond the size limit")
                if not d.eof:
                    raise BodyError("deflate body is cut short")
                data = out
            elif c == "br":
                out = brotli.decompress(data)
                if len(out) > MAX_DECODED:
                    raise BodyError("br body inflates beyond the size limit")
                data = out
            else:
                raise BodyError(f"unsupported content coding {c!r}")
        except (zlib.error, brotli.error, EOFError, OSError) as e:
            raise BodyError(f"{c} body does not decode ({e})") from None
    return data


def encode(body: bytes, codes: list[str]) -> bytes:
    """Apply content codings in order (the inverse of ``decode``)."""
    data = body
    for c in codes:
        if c in ("gzip", "x-gzip"):
            data = gzip.compress(data, compresslevel=6, mtime=0)
        elif c == "deflate":
            data = zlib.compress(data, 6)
        elif c == "br":
            data = brotli.compress(data, quality=5)
        else:  # pragma: no cover - decode() refused it already
            raise BodyError(f"unsupported content coding {c!r}")
    return data


# -- application/x-www-form-urlencoded and query strings ------------------------------------

_HEX = b"0123456789ABCDEF"
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def unquote(b: bytes, plus: bool = True) -> bytes:
    """Percent-decode (and '+' to space for forms); malformed escapes are left as they are."""
    if plus and b"+" in b:
        b = b.replace(b"+", b" ")
    if b"%" not in b:
        return b
    out = bytearray()
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c == 37 and i + 3 <= n:
            try:
                out.append(int(b[i + 1 : i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(c)
        i += 1
    return bytes(out)


def quote(b: bytes, plus: bool = True, safe: bytes = b"") -> bytes:
    """Percent-encode everything but unreserved characters (and ``safe``)."""
    out = bytearray()
    for c in b:
        if c in _SAFE or c in safe:
            out.append(c)
        elif c == 32 and plus:
            out.append(43)
        else:
            out += b"%" + bytes((_HEX[c >> 4], _HEX[c & 15]))
    return bytes(out)


# -- multipart ------------------------------------------------------------------------------


@dataclass(slots=True)
class Part:
    """One multipart part: raw header block (without the blank line) and body."""

    headers: bytes
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        lname = name.lower()
        for line in self.headers.split(b"\r\n"):
            k, sep, v = line.partition(b":")
            if sep and k.strip().lower() == lname:
                return v.strip()
        return None

    @property
    def name(self) -> str:
        return _disposition_param(self.header(b"content-disposition"), b"name") or ""

    @property
    def filename(self) -> str | None:
        return _disposition_param(self.header(b"content-disposition"), b"filename")


def _disposition_param(cd: bytes | None, key: bytes) -> str | None:
    if not cd:
        return None
    for p in cd.split(b";")[1:]:
        k, sep, v = p.partition(b"=")
        if sep and k.strip().lower() == key:
            v = v.strip()
            if len(v) >= 2 and v[:1] == v[-1:] == b'"':
                v = v[1:-1]
            return v.decode("utf-8", "replace")
    return None


@dataclass(slots=True)
class Multipart:
    preamble: bytes
    parts: list[Part]
    epilogue: bytes
    boundary: bytes


def parse_multipart(body: bytes, boundary: str) -> Multipart:
    """Split a multipart body into parts, keeping everything needed to rebuild it byte-exact."""
    if not boundary:
        raise BodyError("multipart body without a boundary parameter")
    b = boundary.encode("latin-1")
    delim = b"--" + b
    first = body.find(delim)
    if first < 0 or (first > 0 and body[first - 2 : first] != b"\r\n"):
        raise BodyError("multipart boundary not found in body")
    preamble = body[:first]
    pos = first + len(delim)
    parts: list[Part] = []
    sep = b"\r\n" + delim
    while True:
        if body[pos : pos + 2] == b"--":
            return Multipart(preamble, parts, body[pos + 2 :], b)
        # skip transport padding and the CRLF after the delimiter
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise BodyError("multipart part has no header block")
        start = eol + 2
        nxt = body.find(sep, start)
        if nxt < 0:
            raise BodyError("multipart body ends without its closing boundary")
        raw = body[start:nxt]
        hdr_end = raw.find(b"\r\n\r\n")
        if raw.startswith(b"\r\n"):
            headers, pbody = b"", raw[2:]
        elif hdr_end < 0:
            raise BodyError("multipart part header block not terminated")
        else:
            headers, pbody = raw[:hdr_end], raw[hdr_end + 4 :]
        parts.append(Part(headers, pbody))
        pos = nxt + len(sep)


_IDENTITY_CTE = frozenset({b"", b"7bit", b"8bit", b"binary"})


def transfer_encoding(part: Part) -> bytes | None:
    """A part's ``Content-Transfer-Encoding`` in lower case, or None when it is an identity
    (none, 7bit, 8bit, binary): the body bytes are then the content."""
    cte = part.header(b"content-transfer-encoding")
    if cte is None:
        return None
    cte = cte.strip().lower()
    return None if cte in _IDENTITY_CTE else cte


def decode_transfer(body: bytes, cte: bytes) -> bytes:
    """Undo a part's Content-Transfer-Encoding (base64, quoted-printable). Raises BodyError
    when it does not decode or is one we do not know."""
    if cte == b"base64":
        compact = b"".join(body.split())  # line breaks every 76 characters, any whitespace
        try:
            return binascii.a2b_base64(compact, strict_mode=True)
        except (binascii.Error, ValueError):
            # unpadded base64 is common enough; anything else is not base64
            pad = b"=" * (-len(compact) % 4)
            try:
                return binascii.a2b_base64(compact.rstrip(b"=") + pad, strict_mode=True)
            except (binascii.Error, ValueError):
                raise BodyError("multipart part is not the base64 it says") from None
    if cte == b"quoted-printable":
        return binascii.a2b_qp(body)
    raise BodyError(f"unsupported Content-Transfer-Encoding {cte.decode('latin-1')!r}")


def encode_transfer(data: bytes, cte: bytes, like: bytes) -> bytes:
    """Apply a part's Content-Transfer-Encoding again (the inverse of ``decode_transfer``),
    base64 wrapped as ``like`` (the original body) was: at its first line's width, or not."""
    if cte == b"quoted-printable":
        return binascii.b2a_qp(data).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    out = binascii.b2a_base64(data, newline=False)
    nl = like.find(b"\n")
    if nl <= 0:
        return out
    width = nl - 1 if like[nl - 1] == 13 else nl
    eol = b"\r\n" if like[nl - 1] == 13 else b"\n"
    if width <= 0:
        return out
    return eol.join(out[i : i + width] for i in range(0, len(out), width))


def build_multipart(mp: Multipart) -> bytes:
    """Reassemble parts (possibly changed or removed) with the original boundary."""
    delim = b"--" + mp.boundary
    out = [mp.preamble]
    for p in mp.parts:
        out.append(delim + b"\r\n")
        if p.headers:
            out.append(p.headers + b"\r\n\r\n")
        else:
            out.append(b"\r\n")
        out.append(p.body + b"\r\n")
    out.append(delim + b"--" + mp.epilogue)
    return b"".join(out)
