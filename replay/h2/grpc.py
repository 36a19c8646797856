"""gRPC over HTTP/2: length-prefixed messages, status from trailers, protobuf decoding.

A gRPC call is one HTTP/2 stream (``content-type: application/grpc``): each body is a run of
messages, each a 1-byte compressed flag, a 4-byte big-endian length and the message
(compressed with the call's ``grpc-encoding``, gzip here, when the flag is set). The status is
``grpc-status``/``grpc-message`` in the response trailers, or in the response headers of a
trailers-only answer.

Messages are decoded as protobuf: with descriptors (``load_descriptors``: a serialized
``FileDescriptorSet``, or ``.proto`` files compiled with ``grpc_tools.protoc``) into their
field names, else raw: field numbers as keys, varints as integers, fixed32/64 as integers,
length-delimited fields as a nested message when they parse as one, else UTF-8 text, else hex
(the ``blackboxprotobuf`` idea, with a decoder of its own). Either way the result is a
JSON-like document, which is what the comparator diffs field by field.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

from replay.model import Exchange, Headers, Response, header_get

MAX_MESSAGES = 10_000
MAX_DECOMPRESSED = 16 * 1024 * 1024
MAX_DEPTH = 32

_pool: Any = None
_methods: dict[str, tuple[str, str]] = {}
"""``/pkg.Service/Method`` → (input type, output type) full names, from the descriptors."""


def split_messages(body: bytes, encoding: str = "") -> tuple[list[bytes], str]:
    """The messages of a gRPC body (decompressed), and what went wrong ("" if nothing)."""
    out: list[bytes] = []
    pos = 0
    end = len(body)
    err = ""
    while pos < end:
        if end - pos < 5:
            err = "truncated-prefix"
            break
        flag = body[pos]
        n = int.from_bytes(body[pos + 1:pos + 5], "big")
        if pos + 5 + n > end:
            err = "truncated-message"
            break
        msg = body[pos + 5:pos + 5 + n]
        pos += 5 + n
        if flag & 1:
            try:
                msg = _decompress(msg, encoding)
            except (OSError, EOFError, zlib.error, ValueError) as e:
                err = f"bad-compression: {e}"
                continue
        if len(out) >= MAX_MESSAGES:
            err = "too-many-messages"
            break
        out.append(msg)
    return out, err


def _decompress(msg: bytes, encoding: str) -> bytes:
    enc = encoding.lower()
    if enc in ("gzip", ""):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == "deflate":
        d = zlib.decompressobj()
    else:
        raise ValueError(f"encoding {encoding!r}")
    out = d.decompress(msg, MAX_DECOMPRESSED)
    if d.unconsumed_tail:
        raise ValueError("too large")
    return out


def compress(msg: bytes) -> bytes:
    return gzip.compress(msg)


def frame_messages(msgs: list[bytes], compressed: bool = False) -> bytes:
    """The gRPC body for these messages (the inverse of ``split_messages``)."""
    parts = []
    for m in msgs:
        if compressed:
            m = compress(m)
        parts.append(bytes([1 if compressed else 0]) + len(m).to_bytes(4, "big") + m)
    return b"".join(parts)


def status_of(resp: Response | None) -> tuple[int | None, str]:
    """(grpc-status, grpc-message) of a response: trailers first, then a trailers-only head."""
    if resp is None:
        return None, ""
    for hs in (resp.trailers, resp.headers):
        v = header_get(hs, "grpc-status")
        if v is not None:
            try:
                code: int | None = int(v)
            except ValueError:
                code = None
            return code, _unpercent(header_get(hs, "grpc-message") or "")
    return None, ""


def _unpercent(s: str) -> str:
    if "%" not in s:
        return s
    from urllib.parse import unquote

    return unquote(s)


def annotate(ex: Exchange, stats: dict[str, int]) -> None:
    """Mark a gRPC call: ``meta["grpc"]`` = {method, status, message, messages counts}."""
    req, resp = ex.request, ex.response
    assert req is not None
    stats["grpc_calls"] = stats.get("grpc_calls", 0) + 1
    code, message = status_of(resp)
    enc_q = header_get(req.headers, "grpc-encoding") or ""
    nq, errq = split_messages(req.body, enc_q)
    d: dict[str, Any] = {"method": req.target, "status": code, "request_messages": len(nq)}
    if message:
        d["message"] = message
    if resp is not None:
        enc_r = header_get(resp.headers, "grpc-encoding") or ""
        nr, errr = split_messages(resp.body, enc_r)
        d["response_messages"] = len(nr)
        if errr:
            d["response_error"] = errr
    if errq:
        d["request_error"] = errq
    if code is None:
        stats["grpc_without_status"] = stats.get("grpc_without_status", 0) + 1
    elif code:
        stats["grpc_errors"] = stats.get("grpc_errors", 0) + 1
    ex.meta["grpc"] = d


# -- protobuf ------------------------------------------------------------------------------------
def decode_raw(data: bytes, depth: int = 0) -> dict[str, Any]:
    """A protobuf message without its schema: {field number: value or [values]}. Raises
    ValueError if ``data`` is not a well-formed message."""
    out: dict[str, Any] = {}
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = read_varint(data, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ValueError("field 0")
        v: Any
        if wt == 0:
            v, pos = read_varint(data, pos)
        elif wt == 1:
            if pos + 8 > end:
                raise ValueError("truncated fixed64")
            v = int.from_bytes(data[pos:pos + 8], "little")
            pos += 8
        elif wt == 5:
            if pos + 4 > end:
                raise ValueError("truncated fixed32")
            v = int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        elif wt == 2:
            n, pos = read_varint(data, pos)
            if pos + n > end:
                raise ValueError("truncated bytes")
            v = _bytes_value(data[pos:pos + n], depth)
            pos += n
        else:
            raise ValueError(f"wire type {wt}")
        k = str(num)
        if k in out:
            prev = out[k]
            if isinstance(prev, list) and getattr(prev, "_rep", False):
                prev.append(v)
            else:
                lst = _Rep([prev, v])
                out[k] = lst
        else:
            out[k] = v
    return {k: list(v) if isinstance(v, _Rep) else v for k, v in out.items()}


class _Rep(list):
    _rep = True


def _bytes_value(b: bytes, depth: int) -> Any:
    if b and depth < MAX_DEPTH:
        try:
            text = b.decode("utf-8")
            if text.isprintable():
                return text
        except UnicodeDecodeError:
            pass
        try:
            return decode_raw(b, depth + 1)
        except ValueError:
            pass
    elif not b:
        return ""
    return b.hex()


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A protobuf varint at ``pos``: (value, position after it); ValueError if bad."""
    v = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end or shift > 63:
            raise ValueError("bad varint")
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, pos
        shift += 7


def load_descriptors(paths: list[str | Path]) -> int:
    """Load message and service types from FileDescriptorSet files (``protoc
    --descriptor_set_out --include_imports``) or ``.proto`` files (compiled here with
    ``grpc_tools.protoc``). Returns how many methods are known."""
    global _pool
    from google.protobuf import descriptor_pb2, descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    fds = descriptor_pb2.FileDescriptorSet()
    for p in paths:
        p = Path(p)
        if p.suffix == ".proto":
            data = _compile_proto(p)
        else:
            data = p.read_bytes()
        part = descriptor_pb2.FileDescriptorSet()
        part.ParseFromString(data)
        fds.file.extend(part.file)
    seen = set()
    for f in fds.file:
        if f.name in seen:
            continue
        seen.add(f.name)
        pool.Add(f)
    for f in fds.file:
        pkg = f.package
        for svc in f.service:
            full = f"{pkg}.{svc.name}" if pkg else svc.name
            for m in svc.method:
                _methods[f"/{full}/{m.name}"] = (m.input_type.lstrip("."),
                                                 m.output_type.lstrip("."))
    _pool = pool
    return len(_methods)


def _compile_proto(p: Path) -> bytes:
    import tempfile

    try:
        from grpc_tools import protoc
    except ImportError as e:
        raise RuntimeError(f"{p}: compiling .proto files needs grpcio-tools; give a "
                           "FileDescriptorSet (protoc --descriptor_set_out) instead") from e
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "set.pb"
        rc = protoc.main(["protoc", f"-I{p.parent}", "--include_imports",
                          f"--descriptor_set_out={out}", str(p)])
        if rc != 0:
            raise RuntimeError(f"{p}: protoc failed")
        return out.read_bytes()


def decode_message(data: bytes, path: str, request: bool) -> Any:
    """One message as a JSON-like document: by its type when the descriptors know the method
    (field names), else raw (field numbers); undecodable bytes as {"bytes": hex}."""
    if _pool is not None and path in _methods:
        from google.protobuf import json_format, message_factory

        name = _methods[path][0 if request else 1]
        try:
            cls = message_factory.GetMessageClass(_pool.FindMessageTypeByName(name))
            m = cls()
            m.ParseFromString(data)
            return json_format.MessageToDict(m, preserving_proto_field_name=True)
        except Exception:
            pass
    try:
        return decode_raw(data)
    except ValueError:
        return {"bytes": data.hex()}


def document(headers: Headers, body: bytes, path: str = "", request: bool = False
             ) -> dict[str, Any]:
    """A gRPC body as the document the comparator diffs: {"messages": [...]} (and the
    framing error, if any)."""
    msgs, err = split_messages(body, header_get(headers, "grpc-encoding") or "")
    d: dict[str, Any] = {"messages": [decode_message(m, path, request) for m in msgs]}
    if err:
        d["error"] = err
    return d
