"""gRPC bodies under the sanitiser: secrets in string fields (nested, compressed) masked, and
the body still a valid gRPC body (lengths and prefixes written anew); one that does not walk is
dropped with its length and keyed hash, never passed on."""

from __future__ import annotations

import gzip

from replay.h2.grpc import decode_raw, frame_messages, split_messages
from replay.model import Exchange, Request, Response
from replay.sanitise import Policy, Sanitiser

KEY = b"k" * 32
EMAIL = b"alice.martin@example.com"
CARD = b"4111 1111 1111 1111"
TOKEN = b"ghp_" + b"A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _message() -> bytes:
    inner = _len(3, b"card " + CARD) + _varint(4 << 3) + _varint(300)
    return (_len(1, EMAIL) + _len(2, inner) + _varint(5 << 3) + _varint(42)
            + _len(6, b"\x00\x01token=" + TOKEN) + _len(7, b"plain words"))


def _exchange(body: bytes, encoding: str | None = None) -> Exchange:
    hs = [("content-type", "application/grpc"), ("te", "trailers")]
    if encoding:
        hs.append(("grpc-encoding", encoding))
    req = Request("POST", "/shop.Orders/Create", "HTTP/2", hs, body)
    resp = Response(200, "", "HTTP/2", [("content-type", "application/grpc")],
                    frame_messages([_len(1, b"ok")]))
    return Exchange(id="c.1", request=req, response=resp)


def _strings(doc: object) -> list[bytes]:
    out: list[bytes] = []
    if isinstance(doc, dict):
        for v in doc.values():
            out += _strings(v)
    elif isinstance(doc, list):
        for v in doc:
            out += _strings(v)
    elif isinstance(doc, str):
        out.append(doc.encode())
    elif isinstance(doc, bytes):
        out.append(doc)
    return out


def test_secrets_in_string_fields_are_masked_and_the_body_still_walks() -> None:
    body = frame_messages([_message(), _len(1, b"second " + EMAIL)])
    ex = Sanitiser(Policy.default(), KEY).apply(_exchange(body))
    assert ex is not None
    new = ex.request.body
    for secret in (EMAIL, CARD, TOKEN):
        assert secret not in new
    msgs, err = split_messages(new)
    assert not err and len(msgs) == 2  # still two well-framed messages
    doc = decode_raw(msgs[0])
    assert b"plain words" in _strings(doc)  # what is not secret is kept
    assert "42" in str(doc) and "300" in str(doc)  # numbers copied
    assert ex.request.headers == _exchange(body).request.headers  # no Content-Length invented


def test_compressed_messages_are_decompressed_masked_and_compressed_again() -> None:
    msg = _message()
    raw = gzip.compress(msg)
    body = b"\x01" + len(raw).to_bytes(4, "big") + raw
    ex = Sanitiser(Policy.default(), KEY).apply(_exchange(body, "gzip"))
    assert ex is not None
    new = ex.request.body
    assert new[0] == 1
    (plain,) = [gzip.decompress(new[5:])]
    assert EMAIL not in plain and CARD not in plain and b"plain words" in plain


def test_a_body_that_does_not_walk_is_dropped_not_passed_on() -> None:
    for bad in (b"\x00\x00\x00\x00\x09" + EMAIL,  # length beyond the body
                b"\x02\x00\x00\x00\x01x",  # an unknown flag
                frame_messages([b"\x0b" + EMAIL])):  # a group: not walked
        ex = Sanitiser(Policy.default(), KEY).apply(_exchange(bad))
        assert ex is not None and EMAIL not in ex.request.body
        assert ex.request.body == b""
        (d,) = ex.meta["sanitise_dropped_bodies"]
        assert d["length"] == len(bad)
