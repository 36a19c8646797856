"""The JSON Lines exchange log: shadowtap's own lossless format (schema ``"v": 1``).

One JSON object per line per ``Exchange``. It is the format every other stage can rely on to give
back exactly what was captured, so nothing is normalised: header names keep their case, order and
duplicates; the request-target is kept as sent; bodies are kept byte for byte (UTF-8 text as-is
when the bytes are valid UTF-8, base64 otherwise, with an explicit ``body_encoding`` marker so a
reader never has to guess). Empty and absent fields are left out to keep lines short. The schema is
documented field by field in ``docs/formats.md``.

The record codec (``exchange_to_record`` / ``exchange_from_record``) is shared with the HAR and
mitmproxy formats, which keep what their own schema cannot express in the same shape.

It is a hot path (the default output of ``shadowtap extract``), hence orjson and plain dicts.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from replay._native import load_c
from replay.errors import FormatError
from replay.model import Completeness, ConnKey, Exchange, Headers, Request, Response

SCHEMA_VERSION = 1

_TS_FIELDS = ("ts_request_start", "ts_request_end", "ts_response_start", "ts_response_end")


class RecordError(ValueError):
    """A JSON value that is not a valid exchange record; the caller adds file and position."""


# --------------------------------------------------------------------------------------------
# Encoding helpers (shared with har.py and mitm.py)


def body_to_fields(body: bytes, out: dict[str, Any]) -> None:
    """Put ``body`` into ``out`` as ``body`` (+ ``body_encoding: base64`` when not UTF-8).

    Text bodies stay readable (and grep-able) in the log; only bytes that are not valid UTF-8 pay
    the base64 cost. An empty body is left out entirely.
    """
    if not body:
        return
    try:
        out["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        out["body"] = base64.b64encode(body).decode("ascii")
        out["body_encoding"] = "base64"


def body_from_fields(d: dict[str, Any]) -> bytes:
    """Inverse of ``body_to_fields``."""
    s = d.get("body")
    if s is None:
        return b""
    if type(s) is not str:
        raise RecordError("body is not a string")
    enc = d.get("body_encoding")
    if enc is None:
        return s.encode("utf-8")
    if enc == "base64":
        try:
            return base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError) as e:
            raise RecordError(f"body is not valid base64 ({e})") from None
    raise RecordError(f"unknown body_encoding {enc!r} (expected 'base64')")


def headers_from_json(v: Any, what: str = "headers") -> Headers:
    """``[[name, value], ...]`` back to the model's list of tuples, checking the shape."""
    if type(v) is not list:
        raise RecordError(f"{what} is not a list of [name, value] pairs")
    out: Headers = []
    for pair in v:
        if type(pair) is not list or len(pair) != 2:
            raise RecordError(f"{what} entry {pair!r} is not a [name, value] pair")
        k, val = pair
        if type(k) is not str or type(val) is not str:
            raise RecordError(f"{what} entry {pair!r} is not a pair of strings")
        out.append((k, val))
    return out


def request_to_record(r: Request) -> dict[str, Any]:
    d: dict[str, Any] = {
        "method": r.method,
        "target": r.target,
        "version": r.version,
        "headers": r.headers,
    }
    body_to_fields(r.body, d)
    if r.trailers:
        d["trailers"] = r.trailers
    return d


def response_to_record(r: Response) -> dict[str, Any]:
    d: dict[str, Any] = {
        "status": r.status,
        "reason": r.reason,
        "version": r.version,
        "headers": r.headers,
    }
    body_to_fields(r.body, d)
    if r.trailers:
        d["trailers"] = r.trailers
    return d


def _str(d: dict[str, Any], key: str, default: str | None = None) -> str:
    v = d.get(key, default)
    if type(v) is not str:
        if v is None:
            raise RecordError(f"missing {key!r}")
        raise RecordError(f"{key!r} is not a string")
    return v


def request_from_record(d: Any) -> Request:
    if type(d) is not dict:
        raise RecordError("'request' is not an object")
    tr = d.get("trailers")
    return Request(
        method=_str(d, "method"),
        target=_str(d, "target"),
        version=_str(d, "version", "HTTP/1.1"),
        headers=headers_from_json(d.get("headers", [])),
        body=body_from_fields(d),
        trailers=headers_from_json(tr, "trailers") if tr else [],
    )


def response_from_record(d: Any) -> Response:
    if type(d) is not dict:
        raise RecordError("'response' is not an object")
    status = d.get("status")
    if type(status) is not int:
        raise RecordError("response 'status' is not an integer")
    tr = d.get("trailers")
    return Response(
        status=status,
        reason=_str(d, "reason", ""),
        version=_str(d, "version", "HTTP/1.1"),
        headers=headers_from_json(d.get("headers", [])),
        body=body_from_fields(d),
        trailers=headers_from_json(tr, "trailers") if tr else [],
    )


def conn_to_record(c: ConnKey) -> dict[str, Any]:
    return {
        "client_ip": c.client_ip,
        "client_port": c.client_port,
        "server_ip": c.server_ip,
        "server_port": c.server_port,
    }


def conn_from_record(d: Any) -> ConnKey:
    if type(d) is not dict:
        raise RecordError("'conn' is not an object")
    try:
        return ConnKey(
            str(d["client_ip"]), int(d["client_port"]), str(d["server_ip"]), int(d["server_port"])
        )
    except (KeyError, TypeError, ValueError) as e:
        raise RecordError(f"'conn' is incomplete or malformed ({e!r})") from None


def exchange_to_record(ex: Exchange) -> dict[str, Any]:
    """The JSONL record (a plain dict ready for orjson) for one Exchange."""
    d: dict[str, Any] = {"v": SCHEMA_VERSION, "id": ex.id}
    if ex.conn is not None:
        d["conn"] = conn_to_record(ex.conn)
    if ex.ts_request_start is not None:
        d["ts_request_start"] = ex.ts_request_start
    if ex.ts_request_end is not None:
        d["ts_request_end"] = ex.ts_request_end
    if ex.ts_response_start is not None:
        d["ts_response_start"] = ex.ts_response_start
    if ex.ts_response_end is not None:
        d["ts_response_end"] = ex.ts_response_end
    if ex.request is not None:
        d["request"] = request_to_record(ex.request)
    if ex.interim:
        d["interim"] = [response_to_record(r) for r in ex.interim]
    if ex.response is not None:
        d["response"] = response_to_record(ex.response)
    c = ex.completeness.to_dict()
    if c:
        d["completeness"] = c
    if ex.tunnel is not None:
        d["tunnel"] = ex.tunnel
    if ex.meta:
        d["meta"] = ex.meta
    return d


def _ts(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if type(v) is float or type(v) is int:
        return float(v)
    raise RecordError(f"{key!r} is not a number")


def exchange_from_record(d: Any) -> Exchange:
    """Inverse of ``exchange_to_record``; raises ``RecordError`` on a malformed record."""
    if type(d) is not dict:
        raise RecordError("not a JSON object")
    v = d.get("v")
    if v != SCHEMA_VERSION:
        if v is None:
            raise RecordError("no schema version 'v' (not a shadowtap exchange log?)")
        raise RecordError(f"schema version {v!r} is not supported (this shadowtap reads v1)")
    ex_id = d.get("id")
    if type(ex_id) is not str:
        raise RecordError("'id' is missing or not a string")
    conn = d.get("conn")
    req = d.get("request")
    resp = d.get("response")
    interim = d.get("interim")
    comp = d.get("completeness")
    if comp is not None and type(comp) is not dict:
        raise RecordError("'completeness' is not an object")
    try:
        completeness = Completeness.from_dict(comp)
    except (TypeError, ValueError) as e:
        raise RecordError(f"'completeness' is malformed ({e})") from None
    tunnel = d.get("tunnel")
    if tunnel is not None and type(tunnel) is not str:
        raise RecordError("'tunnel' is not a string")
    meta = d.get("meta")
    if meta is not None and type(meta) is not dict:
        raise RecordError("'meta' is not an object")
    if interim is not None and type(interim) is not list:
        raise RecordError("'interim' is not a list")
    return Exchange(
        id=ex_id,
        conn=None if conn is None else conn_from_record(conn),
        request=None if req is None else request_from_record(req),
        response=None if resp is None else response_from_record(resp),
        interim=[response_from_record(r) for r in interim] if interim else [],
        ts_request_start=_ts(d, "ts_request_start"),
        ts_request_end=_ts(d, "ts_request_end"),
        ts_response_start=_ts(d, "ts_response_start"),
        ts_response_end=_ts(d, "ts_response_end"),
        completeness=completeness,
        tunnel=tunnel,
        meta=meta if meta is not None else {},
    )


_encode_line = load_c("replay._fastpath", "encode_line")


def exchange_line(ex: Exchange) -> bytes:
    """One Exchange's line in the log: ``orjson.dumps(exchange_to_record(ex))`` plus a newline.

    The native encoder (``replay/_fastpath.c``) writes the same bytes for exchanges of the usual
    shape without building the record (escaping bodies itself instead of decoding them to
    ``str`` for orjson to encode back; ``meta`` too when it holds only dicts of strings, ints,
    bools and None, as HTTP/2 and TLS exchanges' do); it declines anything unusual (floats or
    lists in ``meta``, a number orjson would print in another notation), which is then
    encoded here.
    """
    if _encode_line is not None:
        line = _encode_line(ex)
        if line is not None:
            return line
    try:
        return orjson.dumps(exchange_to_record(ex), option=orjson.OPT_APPEND_NEWLINE)
    except TypeError as e:  # orjson.JSONEncodeError: an un-serialisable value in meta
        raise TypeError(f"exchange {ex.id}: cannot encode as JSON ({e})") from None


# --------------------------------------------------------------------------------------------
# Files


def open_input(path: str | Path) -> BinaryIO:
    """Open an exchange file for reading, transparently gunzipping it.

    ``detect_format`` looks inside gzip files, so every reader must accept ``x.jsonl.gz`` etc.
    OS errors become ``FormatError`` so the CLI prints one line instead of a traceback.
    """
    p = Path(path)
    try:
        f: BinaryIO = p.open("rb")
    except FileNotFoundError:
        raise FormatError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{p}: is a directory, not an exchange file") from None
    except PermissionError:
        raise FormatError(f"{p}: permission denied") from None
    except OSError as e:
        raise FormatError(f"{p}: cannot open ({e.strerror or e})") from None
    if f.peek(2)[:2] == b"\x1f\x8b":  # type: ignore[attr-defined]
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    return f


GZIP_ERRORS = (OSError, EOFError, zlib.error)
"""What reading a broken or cut gzip stream raises (BadGzipFile is an OSError)."""


class JsonlWriter:
    """Writes Exchanges to a binary file object, one JSON line each.

    The caller owns ``fp`` (it may be stdout): ``close`` flushes but does not close it.
    """

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self.count = 0

    def write(self, ex: Exchange) -> None:
        self._fp.write(exchange_line(ex))
        self.count += 1

    def write_lines(self, lines: bytes, n: int | None = None) -> None:
        """Whole lines already encoded as ``write`` encodes them (the native extractor's, see
        ``replay.extract.extract_file(lines=True)``); ``n`` lines, counted if not given."""
        self._fp.write(lines)
        self.count += lines.count(b"\n") if n is None else n

    def close(self) -> None:
        self._fp.flush()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | Path) -> Iterator[Exchange]:
    """Exchanges from a JSONL exchange log (optionally gzip-compressed).

    Blank lines are skipped. A bad line raises ``FormatError("FILE:LINE: problem")`` after the
    exchanges before it have been yielded, so a cut file still gives what it holds.
    """
    name = str(path)
    f = open_input(path)
    lineno = 0
    loads = orjson.loads
    try:
        it = iter(f)
        while True:
            try:
                line = next(it)
            except StopIteration:
                break
            except GZIP_ERRORS as e:
                raise FormatError(
                    f"{name}:{lineno + 1}: broken gzip data ({e or type(e).__name__})"
                ) from None
            lineno += 1
            if not line.strip():
                continue
            try:
                rec = loads(line)
            except orjson.JSONDecodeError as e:
                raise FormatError(f"{name}:{lineno}: not valid JSON ({e})") from None
            try:
                ex = exchange_from_record(rec)
            except RecordError as e:
                raise FormatError(f"{name}:{lineno}: not an exchange record: {e}") from None
            yield ex
    finally:
        f.close()
