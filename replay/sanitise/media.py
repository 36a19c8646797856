"""Images: scan the parts of a PNG or JPEG that can hold text, not the pixels.

Why: an image body used to get the whole-body text scan, byte by byte over compressed pixel
data. That cost as much as a JSON document of the same size, could "find" an e-mail or a phone
number in random pixel bytes (and then corrupt the image by replacing it), and still missed
text stored compressed (PNG ``zTXt``, compressed ``iTXt``). Here the container is walked:

- **PNG**: every chunk but the pixel data (``IDAT``, ``fdAT``) is scanned as text; ``zTXt`` and
  compressed ``iTXt`` are inflated (bounded) and scanned; bytes after ``IEND`` too. A chunk that
  changes is written anew with its length and CRC, so the image stays valid.
- **JPEG**: the ``APPn`` segments (EXIF, XMP, ICC) and comments (``COM``) are scanned; the
  entropy-coded data after ``SOS`` and the tables are not; bytes after ``EOI`` are. A segment
  that changes is written anew with its length.

A file whose structure does not walk (truncated, lying lengths, a polyglot) returns ``None``:
the caller then scans the whole body as before, so nothing is skipped that was scanned.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable

PNG_SIG = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
_PIXELS = (b"IDAT", b"fdAT")
_MAX_TEXT = 16 * 1024 * 1024
"""Inflated size allowed for all the compressed text of one image (a zip bomb is dropped,
not read)."""
_MAX_PARTS = 1000
"""Text-bearing chunks or segments walked one by one; beyond, the whole-body scan (one pass)
is cheaper than a scan call per tiny chunk."""
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")

Scan = Callable[[bytes], bytes]
_Edit = tuple[int, int, bytes]


def sanitise_image(data: bytes, scan: Scan) -> bytes | None:
    """``data`` with its text-bearing parts scanned (``data`` itself when nothing changed), or
    None when it is not a PNG or JPEG whose structure walks."""
    if data.startswith(PNG_SIG):
        edits = _png(data, scan)
    elif data.startswith(JPEG_SOI):
        edits = _jpeg(data, scan)
    else:
        return None
    if edits is None:
        return None
    if not edits:
        return data
    out = []
    at = 0
    for start, end, new in edits:
        out.append(data[at:start])
        out.append(new)
        at = end
    out.append(data[at:])
    return b"".join(out)


def _inflate(raw: bytes, budget: list[int]) -> bytes | None:
    """``raw`` inflated, within what is left of the image's ``budget`` (one-element list)."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(raw, max(1, budget[0]))
    except zlib.error:
        return None
    if d.unconsumed_tail or not d.eof:
        budget[0] = 0
        return None
    budget[0] -= len(out)
    return out


def _png_chunk(typ: bytes, raw: bytes, scan: Scan, budget: list[int]) -> bytes | None:
    """The chunk's data after the scan (``raw`` itself if unchanged); None: drop the chunk
    (compressed text that does not inflate cannot be checked)."""
    if typ == b"zTXt":
        kw, sep, rest = raw.partition(b"\0")
        if not sep or not rest:
            return scan(raw)
        text = _inflate(rest[1:], budget)
        if text is None:
            return None
        kw2, text2 = scan(kw), scan(text)
        if kw2 == kw and text2 == text:
            return raw
        return kw2 + b"\0" + rest[:1] + zlib.compress(text2)
    if typ == b"iTXt":
        kw, sep, rest = raw.partition(b"\0")
        if sep and len(rest) >= 2 and rest[0] == 1:  # compressed text
            lang, s1, rest2 = rest[2:].partition(b"\0")
            tkw, s2, packed = rest2.partition(b"\0")
            if not (s1 and s2):
                return None
            text = _inflate(packed, budget)
            if text is None:
                return None
            head = kw + b"\0" + rest[:2] + lang + b"\0" + tkw + b"\0"
            head2, text2 = scan(head), scan(text)
            if head2 == head and text2 == text:
                return raw
            return head2 + zlib.compress(text2)
    return scan(raw)


def _png(data: bytes, scan: Scan) -> list[_Edit] | None:
    edits: list[_Edit] = []
    pos, n = len(PNG_SIG), len(data)
    budget = [_MAX_TEXT]
    parts = 0
    while True:
        if pos + 12 > n:
            return None  # cut short before IEND
        ln = int.from_bytes(data[pos:pos + 4], "big")
        typ = data[pos + 4:pos + 8]
        end = pos + 8 + ln
        if ln > 0x7FFFFFFF or end + 4 > n:
            return None
        if typ not in _PIXELS and ln:
            parts += 1
            if parts > _MAX_PARTS:
                return None
            raw = data[pos + 8:end]
            new = _png_chunk(typ, raw, scan, budget)
            if new is None:
                edits.append((pos, end + 4, b""))
            elif new is not raw and new != raw:
                crc = zlib.crc32(typ + new).to_bytes(4, "big")
                edits.append((pos, end + 4, len(new).to_bytes(4, "big") + typ + new + crc))
        pos = end + 4
        if typ == b"IEND":
            break
    if pos < n:  # bytes after the image: anything may hide there
        tail = data[pos:]
        new = scan(tail)
        if new is not tail and new != tail:
            edits.append((pos, n, new))
    return edits


def _jpeg(data: bytes, scan: Scan) -> list[_Edit] | None:
    edits: list[_Edit] = []
    pos, n = 2, len(data)
    parts = 0
    while pos < n:
        if data[pos] != 0xFF:
            return None
        start = pos
        while pos < n and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= n:
            return None
        code = data[pos]
        pos += 1
        if code == 0xD9:  # EOI
            if pos < n:
                tail = data[pos:]
                new = scan(tail)
                if new is not tail and new != tail:
                    edits.append((pos, n, new))
            return edits
        if 0xD0 <= code <= 0xD7 or code == 0x01:  # no length
            continue
        if pos + 2 > n:
            return None
        ln = int.from_bytes(data[pos:pos + 2], "big")
        end = pos + ln
        if ln < 2 or end > n:
            return None
        if 0xE0 <= code <= 0xEF or code == 0xFE:  # APPn (EXIF, XMP, ICC), COM
            parts += 1
            if parts > _MAX_PARTS:
                return None
            raw = data[pos + 2:end]
            new = scan(raw)
            if new is not raw and new != raw:
                seg = (b"\xff" + bytes((code,)) + (len(new) + 2).to_bytes(2, "big") + new
                       if len(new) + 2 <= 0xFFFF else b"")
                edits.append((start, end, seg))
        pos = end
        if code == 0xDA:  # SOS: entropy-coded data up to the next marker
            m = _NEXT_MARKER.search(data, pos)
            if m is None:
                return None
            pos = m.start()
    return None  # no EOI
