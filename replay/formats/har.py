"""HAR 1.2 (HTTP Archive): the format browsers' dev tools, proxies and HAR viewers understand.

The standard fields are filled the way HAR consumers expect (``content.text`` is the body with its
content coding removed, ``url`` is absolute, ``time`` and ``timings`` are milliseconds), so the
file is useful on its own. HAR cannot say everything an Exchange holds (the raw request-target, the
exact timestamps, the connection 4-tuple, completeness, interim 1xx responses, trailers, bodies
that are not text), so each entry carries an ``_shadowtap`` object (custom fields start with an
underscore per the spec) holding exactly that; ``read_har`` prefers it, which makes our own HAR
files round-trip losslessly. HAR files from elsewhere (browsers, mitmproxy) are read best-effort
from the standard fields.

``HarWriter`` streams: entries are written as they come, and ``close`` finishes the document, so
memory stays flat however many exchanges pass through.
"""

from __future__ import annotations

import binascii
import re
import warnings
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl

import orjson

from replay.errors import FormatError
from replay.formats.jsonl import (
    GZIP_ERRORS,
    RecordError,
    body_from_fields,
    body_to_fields,
    conn_from_record,
    conn_to_record,
    headers_from_json,
    open_input,
    response_from_record,
    response_to_record,
)
from replay.model import (
    Completeness,
    Exchange,
    Headers,
    Request,
    Response,
    absolute_form,
    header_get,
)

CREATOR = {"name": "shadowtap", "version": "0.1.0"}
PLACEHOLDER_METHOD = "UNKNOWN"
"""Method written for a response whose request was not captured (HAR requires a request)."""

_TS_FIELDS = ("ts_request_start", "ts_request_end", "ts_response_start", "ts_response_end")


# --------------------------------------------------------------------------------------------
# Writing


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or 0.0, UTC).isoformat(timespec="microseconds")


def _ms(a: float | None, b: float | None) -> float:
    if a is None or b is None or b < a:
        return 0.0
    return round((b - a) * 1000.0, 3)


def _nv(headers: Headers) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in headers]


def _headers_size(first_line: str, headers: Headers) -> int:
    """Bytes of the start line + header block + blank line, as sent (latin-1 is 1 byte/char)."""
    n = len(first_line) + 2 + 2
    for k, v in headers:
        n += len(k) + len(v) + 4
    return n


def request_url(req: Request, ex: Exchange) -> str:
    """An absolute URL for HAR's ``request.url``: from Host + target; absolute-form kept as is."""
    t = req.target
    if absolute_form(t):
        return t
    if req.method.upper() == "CONNECT" or not (t.startswith("/") or t == "*"):
        return f"http://{t}/"  # authority-form (CONNECT host:port)
    host = header_get(req.headers, "host")
    scheme = "http"
    if req.version == "HTTP/2":  # replay.h2: :authority and :scheme lead the headers
        host = host or header_get(req.headers, ":authority")
        scheme = header_get(req.headers, ":scheme") or "https"
    if not host:
        if ex.conn is not None:
            ip = ex.conn.server_ip
            ip = f"[{ip}]" if ":" in ip else ip
            host = ip if ex.conn.server_port == 80 else f"{ip}:{ex.conn.server_port}"
        else:
            host = "unknown.invalid"
    if t == "*":
        return f"{scheme}://{host}"
    return f"{scheme}://{host}{t}"


def _cookies(headers: Headers) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, v in headers:
        if k.lower() != "cookie":
            continue
        for part in v.split(";"):
            name, eq, value = part.strip().partition("=")
            if name and eq:
                out.append({"name": name, "value": value})
    return out


def _set_cookies(headers: Headers) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, v in headers:
        if k.lower() != "set-cookie":
            continue
        first, *attrs = v.split(";")
        name, eq, value = first.strip().partition("=")
        if not (name and eq):
            continue
        c: dict[str, Any] = {"name": name, "value": value}
        for a in attrs:
            an, _, av = a.strip().partition("=")
            al = an.lower()
            if al in ("path", "domain", "expires"):
                c[al] = av
            elif al == "httponly":
                c["httpOnly"] = True
            elif al == "secure":
                c["secure"] = True
        out.append(c)
    return out


def _decode_content(body: bytes, coding: str | None) -> bytes | None:
    """The body with its Content-Encoding removed, or None if not known or not decodable.

    HAR's ``content.text`` is the decoded body; the bytes as sent are kept in ``_shadowtap``.
    """
    if not body or not coding:
        return None
    c = coding.strip().lower()
    try:
        if c in ("gzip", "x-gzip"):
            d = zlib.decompressobj(wbits=31)
            out = d.decompress(body)
            return out if d.eof else None
        if c == "deflate":
            try:
                d = zlib.decompressobj()
                out = d.decompress(body)
            except zlib.error:
                d = zlib.decompressobj(wbits=-15)
                out = d.decompress(body)
            return out if d.eof else None
        if c == "br":
            import brotli

            return brotli.decompress(body)
    except Exception:  # any codec failure: keep the body as sent
        return None
    return None


def _request_to_har(req: Request, ex: Exchange, st: dict[str, Any]) -> dict[str, Any]:
    url = request_url(req, ex)
    query = ""
    if "?" in req.target:
        query = req.target.split("?", 1)[1].split("#", 1)[0]
    h: dict[str, Any] = {
        "method": req.method,
        "url": url,
        "httpVersion": req.version,
        "cookies": _cookies(req.headers),
        "headers": _nv(req.headers),
        "queryString": [
            {"name": k, "value": v} for k, v in parse_qsl(query, keep_blank_values=True)
        ],
        "headersSize": _headers_size(f"{req.method} {req.target} {req.version}", req.headers),
        "bodySize": len(req.body),
    }
    if req.body:
        mime = header_get(req.headers, "content-type", "") or ""
        pd: dict[str, Any] = {"mimeType": mime}
        body_fields: dict[str, Any] = {}
        body_to_fields(req.body, body_fields)
        pd["text"] = body_fields["body"]
        if "body_encoding" in body_fields:
            pd["_encoding"] = "base64"
            pd["comment"] = "body is not UTF-8 text; text is base64"
            pd["params"] = []
        elif mime.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
            pd["params"] = [
                {"name": k, "value": v} for k, v in parse_qsl(pd["text"], keep_blank_values=True)
            ]
        else:
            pd["params"] = []
        h["postData"] = pd
    sreq: dict[str, Any] = {"target": req.target}
    if req.trailers:
        sreq["trailers"] = req.trailers
    st["request"] = sreq
    return h


def _response_to_har(resp: Response, st: dict[str, Any]) -> dict[str, Any]:
    body = resp.body
    decoded = _decode_content(body, header_get(resp.headers, "content-encoding"))
    shown = body if decoded is None else decoded
    content: dict[str, Any] = {
        "size": len(shown),
        "mimeType": header_get(resp.headers, "content-type", "") or "",
    }
    if decoded is not None:
        content["compression"] = len(decoded) - len(body)
    if shown:
        fields: dict[str, Any] = {}
        body_to_fields(shown, fields)
        content["text"] = fields["body"]
        if "body_encoding" in fields:
            content["encoding"] = "base64"
    h: dict[str, Any] = {
        "status": resp.status,
        "statusText": resp.reason,
        "httpVersion": resp.version,
        "cookies": _set_cookies(resp.headers),
        "headers": _nv(resp.headers),
        "content": content,
        "redirectURL": header_get(resp.headers, "location", "") or "",
        "headersSize": _headers_size(f"{resp.version} {resp.status} {resp.reason}", resp.headers),
        "bodySize": len(body),
    }
    sresp: dict[str, Any] = {}
    if decoded is not None:
        sresp["raw"] = {}
        body_to_fields(body, sresp["raw"])  # the bytes as sent (still content-coded)
    if resp.trailers:
        sresp["trailers"] = resp.trailers
    if sresp:
        st["response"] = sresp
    return h


_NO_RESPONSE: dict[str, Any] = {
    "status": 0,
    "statusText": "",
    "httpVersion": "",
    "cookies": [],
    "headers": [],
    "content": {"size": 0, "mimeType": ""},
    "redirectURL": "",
    "headersSize": -1,
    "bodySize": -1,
    "comment": "no response captured",
}


def exchange_to_entry(ex: Exchange) -> dict[str, Any]:
    """One HAR 1.2 entry (with its ``_shadowtap`` extension) for an Exchange."""
    st: dict[str, Any] = {"v": 1, "id": ex.id}
    if ex.conn is not None:
        st["conn"] = conn_to_record(ex.conn)
    for name in _TS_FIELDS:
        v = getattr(ex, name)
        if v is not None:
            st[name] = v
    if ex.request is not None:
        req_h = _request_to_har(ex.request, ex, st)
    else:
        st["no_request"] = True
        placeholder = Request(PLACEHOLDER_METHOD, "/")
        req_h = _request_to_har(placeholder, ex, {})
        req_h["comment"] = "request not captured"
        req_h["headersSize"] = -1
        req_h["bodySize"] = -1
    if ex.response is not None:
        resp_h = _response_to_har(ex.response, st)
    else:
        st["no_response"] = True
        resp_h = dict(_NO_RESPONSE)
    if ex.interim:
        st["interim"] = [response_to_record(r) for r in ex.interim]
    comp = ex.completeness.to_dict()
    if comp:
        st["completeness"] = comp
    if ex.tunnel is not None:
        st["tunnel"] = ex.tunnel
    if ex.meta:
        st["meta"] = ex.meta

    start = ex.ts_request_start if ex.ts_request_start is not None else ex.ts_response_start
    req_end = ex.ts_request_end
    send = _ms(ex.ts_request_start, req_end)
    wait = _ms(req_end if req_end is not None else ex.ts_request_start, ex.ts_response_start)
    receive = _ms(ex.ts_response_start, ex.ts_response_end)
    timings = {
        "blocked": -1,
        "dns": -1,
        "connect": -1,
        "send": send,
        "wait": wait,
        "receive": receive,
        "ssl": -1,
    }
    entry: dict[str, Any] = {
        "startedDateTime": _iso(start),
        "time": round(send + wait + receive, 3),
        "request": req_h,
        "response": resp_h,
        "cache": {},
        "timings": timings,
    }
    if ex.conn is not None:
        entry["serverIPAddress"] = ex.conn.server_ip
        entry["connection"] = str(ex.conn.client_port)
    entry["_shadowtap"] = st
    return entry


class HarWriter:
    """Streams HAR entries to ``fp``; ``close`` writes the end of the document.

    The output is one valid HAR 1.2 JSON document (one entry per line, for diff-ability). The
    caller owns ``fp``: ``close`` flushes but does not close it.
    """

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self._started = False
        self._closed = False
        self.count = 0

    def _start(self) -> None:
        head = {"version": "1.2", "creator": CREATOR}
        self._fp.write(b'{"log":' + orjson.dumps(head)[:-1] + b',"entries":[')
        self._started = True

    def write(self, ex: Exchange) -> None:
        if self._closed:
            raise ValueError("HarWriter is closed")
        if not self._started:
            self._start()
        try:
            data = orjson.dumps(exchange_to_entry(ex))
        except TypeError as e:
            raise TypeError(f"exchange {ex.id}: cannot encode as JSON ({e})") from None
        self._fp.write((b"\n" if self.count == 0 else b",\n") + data)
        self.count += 1

    def close(self) -> None:
        if self._closed:
            return
        if not self._started:
            self._start()
        self._fp.write(b"\n]}}\n")
        self._fp.flush()
        self._closed = True

    def __enter__(self) -> HarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Reading


def _parse_iso(s: Any) -> float | None:
    if not isinstance(s, str) or not s:
        return None
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None


def _har_headers(v: Any, what: str) -> Headers:
    if v is None:
        return []
    if not isinstance(v, list):
        raise RecordError(f"{what} is not a list")
    out: Headers = []
    for h in v:
        if not isinstance(h, dict) or not isinstance(h.get("name"), str):
            raise RecordError(f"{what} entry {h!r} has no name")
        val = h.get("value", "")
        out.append((h["name"], val if isinstance(val, str) else str(val)))
    return out


def _target_from_url(url: str) -> str:
    """Origin-form target from an absolute URL, keeping the path and query exactly as written."""
    rest = url.split("://", 1)[1] if "://" in url else url
    i = rest.find("/")
    if i < 0:
        q = rest.find("?")
        return "/" + rest[q:] if q >= 0 else "/"
    return rest[i:].split("#", 1)[0]


def _authority(url: str) -> str:
    rest = url.split("://", 1)[1] if "://" in url else url
    for sep in "/?#":
        rest = rest.split(sep, 1)[0]
    return rest.rsplit("@", 1)[-1]


def _har_request(h: Any, st: dict[str, Any] | None, notes: list[str]) -> Request:
    if not isinstance(h, dict):
        raise RecordError("'request' is not an object")
    method = h.get("method")
    url = h.get("url")
    if not isinstance(method, str) or not isinstance(url, str):
        raise RecordError("request has no method or url")
    headers = _har_headers(h.get("headers"), "request headers")
    sreq = (st or {}).get("request") or {}
    if st is not None and "target" in sreq:
        target = sreq["target"]
        if not isinstance(target, str):
            raise RecordError("_shadowtap.request.target is not a string")
    else:
        # Not ours: HTTP/2 pseudo-headers are no HTTP/1 headers; Host carries :authority.
        auth = next((v for k, v in headers if k == ":authority"), None) or _authority(url)
        if any(k.startswith(":") for k, _ in headers):
            headers = [(k, v) for k, v in headers if not k.startswith(":")]
        if method.upper() == "CONNECT":
            target = auth
        else:
            target = _target_from_url(url)
            if header_get(headers, "host") is None and auth:
                headers.insert(0, ("Host", auth))
    body = b""
    pd = h.get("postData")
    if isinstance(pd, dict) and isinstance(pd.get("text"), str) and pd["text"]:
        if pd.get("_encoding") == "base64" or pd.get("encoding") == "base64":
            body = body_from_fields({"body": pd["text"], "body_encoding": "base64"})
        else:
            body = pd["text"].encode("utf-8")
    version = h.get("httpVersion") or "HTTP/1.1"
    return Request(
        method=method,
        target=target,
        version=str(version),
        headers=headers,
        body=body,
        trailers=headers_from_json(sreq["trailers"], "trailers") if "trailers" in sreq else [],
    )


def _har_response(h: Any, st: dict[str, Any] | None, notes: list[str]) -> Response | None:
    if not isinstance(h, dict):
        raise RecordError("'response' is not an object")
    status = h.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        raise RecordError("response status is not an integer")
    if st is None and status == 0:
        return None  # browsers write status 0 for requests that got no response
    sresp = (st or {}).get("response") or {}
    headers = _har_headers(h.get("headers"), "response headers")
    content = h.get("content") or {}
    if not isinstance(content, dict):
        raise RecordError("response content is not an object")
    if "raw" in sresp:
        body = body_from_fields(sresp["raw"])
    else:
        text = content.get("text")
        if isinstance(text, str) and text:
            if content.get("encoding") == "base64":
                body = body_from_fields({"body": text, "body_encoding": "base64"})
            else:
                body = text.encode("utf-8")
            if st is None and header_get(headers, "content-encoding") not in (None, "identity"):
                notes.append("har-body-decoded")  # HAR text had its content coding removed
        else:
            body = b""
    return Response(
        status=status,
        reason=str(h.get("statusText") or ""),
        version=str(h.get("httpVersion") or "HTTP/1.1"),
        headers=headers,
        body=body,
        trailers=headers_from_json(sresp["trailers"], "trailers") if "trailers" in sresp else [],
    )


def entry_to_exchange(entry: Any, index: int) -> Exchange:
    """An Exchange from one HAR entry; ``_shadowtap`` fields win over the standard ones."""
    if not isinstance(entry, dict):
        raise RecordError("entry is not an object")
    st = entry.get("_shadowtap")
    if st is not None and not isinstance(st, dict):
        raise RecordError("_shadowtap is not an object")
    notes: list[str] = []
    req = None if st and st.get("no_request") else _har_request(entry.get("request"), st, notes)
    if st and st.get("no_response"):
        resp = None
    else:
        resp = _har_response(entry.get("response"), st, notes)
    if st is not None:
        comp = st.get("completeness")
        if comp is not None and not isinstance(comp, dict):
            raise RecordError("_shadowtap.completeness is not an object")
        try:
            completeness = Completeness.from_dict(comp)
        except (TypeError, ValueError) as e:
            raise RecordError(f"_shadowtap.completeness is malformed ({e})") from None
        ts = {}
        for name in _TS_FIELDS:
            v = st.get(name)
            ts[name] = float(v) if isinstance(v, int | float) else None
        interim = st.get("interim") or []
        if not isinstance(interim, list):
            raise RecordError("_shadowtap.interim is not a list")
        meta = st.get("meta") or {}
        if not isinstance(meta, dict):
            raise RecordError("_shadowtap.meta is not an object")
        tunnel = st.get("tunnel")
        return Exchange(
            id=str(st.get("id", f"har-{index}")),
            conn=conn_from_record(st["conn"]) if st.get("conn") is not None else None,
            request=req,
            response=resp,
            interim=[response_from_record(r) for r in interim],
            completeness=completeness,
            tunnel=tunnel if isinstance(tunnel, str) else None,
            meta=meta,
            **ts,
        )
    # A foreign HAR: derive what we can from the standard fields.
    start = _parse_iso(entry.get("startedDateTime"))
    timings = entry.get("timings") if isinstance(entry.get("timings"), dict) else {}

    def t(name: str) -> float:
        v = timings.get(name)
        return float(v) / 1000.0 if isinstance(v, int | float) and v > 0 else 0.0

    pre = sum(t(n) for n in ("blocked", "dns", "connect"))
    ts_req_start = None if start is None else start + pre
    ts_req_end = None if ts_req_start is None else ts_req_start + t("send")
    ts_resp_start = ts_resp_end = None
    if resp is not None and ts_req_end is not None:
        ts_resp_start = ts_req_end + t("wait")
        ts_resp_end = ts_resp_start + t("receive")
    completeness = Completeness(unpaired=resp is None, notes=notes)
    return Exchange(
        id=f"har-{index}",
        request=req,
        response=resp,
        ts_request_start=ts_req_start,
        ts_request_end=ts_req_end,
        ts_response_start=ts_resp_start,
        ts_response_end=ts_resp_end,
        completeness=completeness,
    )


class TruncatedHarWarning(UserWarning):
    """A HAR file ended early (a copy or a download cut short): its complete entries are read."""


_ENTRIES = re.compile(rb'"entries"\s*:\s*\[')


def _complete_entries(data: bytes) -> list[Any]:
    """The entries a HAR document cut short holds whole (each a complete JSON object).

    The entries array is found by its key and decoded one object at a time; the first
    incomplete object ends the list. Empty when there is no entries array."""
    import json

    m = _ENTRIES.search(data)
    if m is None:
        return []
    text = data[m.end():].decode("utf-8", errors="ignore")  # a cut may split a character
    dec = json.JSONDecoder()
    out: list[Any] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return out
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return out
        out.append(obj)


def read_har(path: str | Path) -> Iterator[Exchange]:
    """Exchanges from a HAR file (optionally gzip-compressed).

    The whole document is parsed first (HAR is one JSON value), so a file that is not HAR fails
    before anything is yielded; a bad entry fails with its index after the ones before it. A
    file cut short (the JSON ends early) gives the complete entries it holds, with a
    ``TruncatedHarWarning`` saying how many (as the other readers give what comes before the
    damage).
    """
    name = str(path)
    f = open_input(path)
    try:
        data = f.read()
    except GZIP_ERRORS as e:
        raise FormatError(f"{name}: broken gzip data ({e or type(e).__name__})") from None
    finally:
        f.close()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # BOM, as written by Fiddler and some Windows tools
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        # orjson counts characters, not bytes: the end of the text is the end of the data
        cut_short = (e.msg.startswith("unexpected end")
                     or e.pos >= len(data.decode("utf-8", "ignore").rstrip()))
        entries = _complete_entries(data) if cut_short else None
        if not entries:
            raise FormatError(f"{name}: not a HAR file: not valid JSON ({e})") from None
        warnings.warn(TruncatedHarWarning(
            f"{name}: the HAR file is cut short ({e.msg} at byte {e.pos}); read the "
            f"{len(entries)} complete entries it holds"), stacklevel=2)
        doc = {"log": {"entries": entries}}
    log = doc.get("log") if isinstance(doc, dict) else None
    entries = log.get("entries") if isinstance(log, dict) else None
    if not isinstance(entries, list):
        raise FormatError(f"{name}: not a HAR file (no log.entries list)")
    for i, entry in enumerate(entries):
        try:
            ex = entry_to_exchange(entry, i)
        except (RecordError, KeyError, TypeError, ValueError, binascii.Error) as e:
            raise FormatError(f"{name}: HAR entry {i}: {e}") from None
        yield ex
