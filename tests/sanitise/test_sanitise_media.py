"""Images (``replay.sanitise.media``): the text-bearing parts of PNG and JPEG bodies are scanned
(plain and compressed), the pixels are not, and the file stays valid; a file that does not
walk gets the whole-body scan as before."""

from __future__ import annotations

import zlib

import pytest

from replay.model import ConnKey, Exchange, Request, Response
from replay.sanitise import Policy, Sanitiser
from replay.sanitise.media import PNG_SIG

EMAIL = b"jane.roe@example.com"
CARD = b"4111 1111 1111 1111"
JWT = (b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
       b"dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")
AWS = b"AKIAIOSFODNN7EXAMPLE"
# pixel bytes that happen to look like an address: not text, must stay as they are
PIXELS = b"\x00\x01" * 50 + b"pix@example.com" + bytes(range(256)) * 4


def _chunk(typ: bytes, data: bytes) -> bytes:
    return (len(data).to_bytes(4, "big") + typ + data
            + zlib.crc32(typ + data).to_bytes(4, "big"))


def _png(tail: bytes = b"") -> bytes:
    ihdr = (16).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    itxt = b"Description\0\x01\x00en\0\0" + zlib.compress(b"call " + AWS)
    return (PNG_SIG + _chunk(b"IHDR", ihdr)
            + _chunk(b"tEXt", b"Author\0" + EMAIL)
            + _chunk(b"zTXt", b"Comment\0\x00" + zlib.compress(b"paid with " + CARD))
            + _chunk(b"iTXt", itxt)
            + _chunk(b"IDAT", PIXELS) + _chunk(b"IEND", b"") + tail)


def _seg(code: int, data: bytes) -> bytes:
    return b"\xff" + bytes((code,)) + (len(data) + 2).to_bytes(2, "big") + data


def _jpeg(tail: bytes = b"") -> bytes:
    return (b"\xff\xd8" + _seg(0xE1, b"Exif\0\0owner " + EMAIL)
            + _seg(0xFE, b"token " + JWT) + _seg(0xDB, bytes(65))
            + _seg(0xDA, b"\x01\x01\x00\x00\x3f\x00") + PIXELS.replace(b"\xff", b"\xff\x00")
            + b"\xff\xd0" + PIXELS[:40] + b"\xff\xd9" + tail)


def _walk_png(data: bytes) -> dict[bytes, bytes]:
    """Chunk type -> data, checking every length and CRC."""
    assert data.startswith(PNG_SIG)
    pos, out = 8, {}
    while pos < len(data):
        ln = int.from_bytes(data[pos:pos + 4], "big")
        typ, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + ln]
        assert len(body) == ln
        assert data[pos + 8 + ln:pos + 12 + ln] == zlib.crc32(typ + body).to_bytes(4, "big")
        out[typ] = body
        pos += 12 + ln
        if typ == b"IEND":
            break
    return out


def _sanitise(body: bytes, ctype: str = "image/png") -> bytes:
    ex = Exchange("c1.1", ConnKey("10.0.0.1", 1234, "10.0.0.2", 80),
                  Request("GET", "/img", "HTTP/1.1", [("Host", "h")], b""),
                  Response(200, "OK", "HTTP/1.1", [("Content-Type", ctype)], body))
    out = Sanitiser(Policy.default(), b"k" * 32).apply(ex)
    assert out is not None and out.response is not None
    return out.response.body


def test_png_text_chunks_are_masked_plain_and_compressed_and_pixels_kept() -> None:
    new = _sanitise(_png())
    chunks = _walk_png(new)  # still a valid PNG: every length and CRC right
    assert chunks[b"IDAT"] == PIXELS  # pixel bytes are not text: untouched
    assert EMAIL not in chunks[b"tEXt"]
    kw, _, rest = chunks[b"zTXt"].partition(b"\0")
    assert kw == b"Comment" and CARD not in zlib.decompress(rest[1:])
    assert AWS not in zlib.decompress(chunks[b"iTXt"].split(b"\0", 4)[-1])


def test_jpeg_metadata_is_masked_and_the_scan_data_kept() -> None:
    src = _jpeg(tail=b" trailer " + CARD)
    new = _sanitise(src, "image/jpeg")
    assert EMAIL not in new and JWT not in new and CARD not in new
    assert PIXELS.replace(b"\xff", b"\xff\x00") in new  # entropy-coded data as it was
    assert b"pix@example.com" in new
    # the segments still chain: each length leads to the next marker
    pos = 2
    while new[pos + 1] != 0xDA:
        assert new[pos] == 0xFF
        pos += 2 + int.from_bytes(new[pos + 2:pos + 4], "big")


@pytest.mark.parametrize("cut", [20, 60, 150])
def test_a_file_that_does_not_walk_gets_the_whole_body_scan(cut: int) -> None:
    """Truncated (or lying) structure: scanned byte by byte as before, nothing skipped."""
    png = _png()
    broken = png[:cut] + b" reach me at " + EMAIL
    assert EMAIL not in _sanitise(broken)


def test_a_clean_image_is_passed_on_as_it_is() -> None:
    ihdr = (16).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    png = PNG_SIG + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", PIXELS) + _chunk(b"IEND", b"")
    assert _sanitise(png) == png
    jpg = b"\xff\xd8" + _seg(0xE0, b"JFIF\0\1\1") + _seg(0xDA, b"\0" * 6) + b"\x12\x34\xff\xd9"
    assert _sanitise(jpg, "image/jpeg") == jpg


def test_a_compressed_text_that_does_not_inflate_is_dropped() -> None:
    ihdr = (16).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    png = (PNG_SIG + _chunk(b"IHDR", ihdr) + _chunk(b"zTXt", b"Comment\0\x00not zlib")
           + _chunk(b"IDAT", PIXELS) + _chunk(b"IEND", b""))
    chunks = _walk_png(_sanitise(png))
    assert b"zTXt" not in chunks and chunks[b"IDAT"] == PIXELS


def test_compressed_text_is_bounded_per_image() -> None:
    """A zip bomb spread over many zTXt chunks inflates 16 MiB in all, then the rest of the
    compressed text is dropped (not inflated); the pixels stay."""
    bomb = zlib.compress(b"\0" * (4 << 20), 9)  # 4 MiB of text each, ~4 KB compressed
    ihdr = (16).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    png = (PNG_SIG + _chunk(b"IHDR", ihdr)
           + b"".join(_chunk(b"zTXt", b"C%d\0\x00" % i + bomb) for i in range(12))
           + _chunk(b"IDAT", PIXELS) + _chunk(b"IEND", b""))
    new = _sanitise(png)
    assert _walk_png(new)[b"IDAT"] == PIXELS
    assert new.count(b"zTXt") <= 4  # what fits in the budget is kept, the rest dropped


def test_many_tiny_chunks_get_one_whole_body_scan() -> None:
    ihdr = (16).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    png = (PNG_SIG + _chunk(b"IHDR", ihdr) + _chunk(b"tEXt", b"Author\0" + EMAIL)
           + b"".join(_chunk(b"tIME", b"\x07\xe8\x01\x01\x00\x00\x00") for _ in range(1500))
           + _chunk(b"IDAT", PIXELS) + _chunk(b"IEND", b""))
    assert EMAIL not in _sanitise(png)
