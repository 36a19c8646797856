"""gRPC bodies: sanitised message by message, field by field, and framed again.

Why a module of its own: a gRPC body is a sequence of length-prefixed protobuf messages
(1 byte compressed flag, 4 bytes big-endian length; ``grpc-encoding`` gzip/deflate when the
flag is set), and inside a message every string is length-delimited too. Scanning such a body as
text would find an e-mail inside a string field, but a pseudonym of another length would break
both lengths: the log would hold a body no gRPC reader accepts, and the shadows a request their
servers reject. So the wire format is walked (no descriptors needed): every length-delimited
field is sanitised as text when it is UTF-8 text, else as a nested message when it parses as
one, else as bytes (the text scan still runs: secrets hide in bytes fields too); numbers are
copied. Lengths, the messages' prefixes and their compression are written anew.

Anything that does not walk (a bad frame, a truncated message, a group, an unknown
``grpc-encoding``) returns None: the caller drops the body and keeps its length and keyed hash
(``MessagePart.opaque``), as for any body nothing can look inside. Never passed on raw.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

from replay.h2.grpc import read_varint

MAX_DEPTH = 32
"""Nested messages deeper than this are scanned as bytes (a hostile body cannot recurse us)."""


def _put_varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _texty(b: bytes) -> bool:
    """UTF-8 text, mostly printable: a string field (not a nested message or raw bytes)."""
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in s)


def sanitise_message(msg: bytes, text: Callable[[bytes], bytes], depth: int = 0) -> bytes | None:
    """``msg`` (protobuf wire format) with every length-delimited field passed through
    ``text`` (or walked as a nested message), or None when it is not a valid message."""
    out = bytearray()
    pos = 0
    n = len(msg)
    changed = False
    while pos < n:
        start = pos
        tag, pos = read_varint(msg, pos)
        tag_end = pos
        field, wire = tag >> 3, tag & 7
        if field == 0:
            return None
        if wire == 0:
            _, pos = read_varint(msg, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, p = read_varint(msg, pos)
            if p + size > n:
                return None
            payload = msg[p : p + size]
            pos = p + size
            if not payload:
                new: bytes | None = payload
            elif _texty(payload):
                new = text(payload)
            else:
                new = sanitise_message(payload, text, depth + 1) if depth < MAX_DEPTH else None
                if new is None:
                    new = text(payload)
            if new is not payload and new != payload:
                changed = True
                out += msg[start:tag_end]
                _put_varint(out, len(new))
                out += new
                continue
        else:
            return None  # groups (3, 4) and wire types 6-7: not walked
        if pos > n:
            return None
        out += msg[start:pos]
    return bytes(out) if changed else msg


def sanitise_grpc(body: bytes, encoding: str | None,
                  text: Callable[[bytes], bytes]) -> bytes | None:
    """A gRPC body (length-prefixed messages) sanitised message by message (see the module
    docstring), or None when it cannot be walked."""
    enc = (encoding or "identity").strip().lower()
    out = bytearray()
    pos = 0
    n = len(body)
    changed = False
    try:
        while pos < n:
            if n - pos < 5:
                return None
            flag = body[pos]
            size = int.from_bytes(body[pos + 1 : pos + 5], "big")
            if flag > 1 or pos + 5 + size > n:
                return None
            raw = body[pos + 5 : pos + 5 + size]
            msg = raw
            if flag:
                if enc == "gzip":
                    msg = gzip.decompress(raw)
                elif enc == "deflate":
                    msg = zlib.decompress(raw)
                else:
                    return None
            new = sanitise_message(msg, text)
            if new is None:
                return None
            if new is not msg and new != msg:
                changed = True
                if flag:
                    new = gzip.compress(new, mtime=0) if enc == "gzip" else zlib.compress(new)
                out.append(flag)
                out += len(new).to_bytes(4, "big")
                out += new
            else:
                out += body[pos : pos + 5 + size]
            pos += 5 + size
    except (ValueError, OSError, EOFError, zlib.error):
        return None
    return bytes(out) if changed else body
