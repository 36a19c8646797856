"""mitmproxy flow files, written and read with mitmproxy's own ``FlowWriter``/``FlowReader``.

Using mitmproxy's classes (not a hand-rolled tnetstring) guarantees that ``mitmdump -nr FILE``,
mitmweb and mitmproxy addons read what we write, in the schema version of the mitmproxy we ship.
mitmproxy is imported here only (it costs ~370 ms), so other formats stay fast to start.

mitmproxy holds bytes exactly (headers, bodies, trailers, reason), so most of an Exchange maps
onto its fields directly. What it cannot hold goes into ``flow.metadata["shadowtap"]`` (see
``docs/formats.md``): our exchange id, the connection key, completeness, interim 1xx responses,
tunnel, meta, the raw request-target when mitmproxy's (scheme, authority, path) split would not
give it back exactly, and which messages or timestamps are placeholders (mitmproxy requires a
request and a request start time; a capture may have neither).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from replay.errors import FormatError
from replay.formats.jsonl import (
    GZIP_ERRORS,
    RecordError,
    conn_from_record,
    conn_to_record,
    open_input,
    response_from_record,
    response_to_record,
)
from replay.model import (
    Completeness,
    ConnKey,
    Exchange,
    Headers,
    Request,
    Response,
    absolute_form,
    header_get,
)

PLACEHOLDER_METHOD = "UNKNOWN"
"""Method of the stand-in request for a response whose request was not captured."""

META_KEY = "shadowtap"


def _hb(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def _hs(headers: Any) -> Headers:
    """mitmproxy Headers -> model headers (latin-1 keeps every byte)."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers.fields]


def _split_hostport(hp: str, default_port: int) -> tuple[str, int]:
    if hp.startswith("["):
        host, _, rest = hp[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif hp.count(":") == 1:
        host, _, port = hp.partition(":")
    else:
        host, port = hp, ""
    try:
        return host, int(port) if port else default_port
    except ValueError:
        return host, default_port


def _split_target(req: Request, conn: ConnKey | None) -> tuple[str, int, str, str, str]:
    """(host, port, scheme, authority, path) as mitmproxy's HTTP/1 reader would set them."""
    t = req.target
    default_host, default_port = (
        ("unknown.invalid", 80) if conn is None else (conn.server_ip, conn.server_port)
    )
    if req.method.upper() == "CONNECT" and "://" not in t and not t.startswith("/"):
        host, port = _split_hostport(t, default_port)
        return host, port, "", t, ""
    if absolute_form(t):
        scheme, rest = t.split("://", 1)
        authority, slash, path = rest.partition("/")
        host, port = _split_hostport(authority, 443 if scheme.lower() == "https" else 80)
        return host, port, scheme, authority, "/" + path if slash else "/"
    hh = header_get(req.headers, "host")
    if hh:
        host, port = _split_hostport(hh, 80)
    else:
        host, port = default_host, default_port
    return host, port, "http", "", t


def _split_h2(req: Request, conn: ConnKey | None) -> tuple[str, int, str, str, str]:
    """(host, port, scheme, authority, path) of an HTTP/2 request (``:authority``,
    ``:scheme``, the target as ``:path``)."""
    authority = header_get(req.headers, ":authority") or header_get(req.headers, "host") or ""
    scheme = header_get(req.headers, ":scheme") or "https"
    if authority:
        host, port = _split_hostport(authority, 443 if scheme == "https" else 80)
    elif conn is not None:
        host, port = conn.server_ip, conn.server_port
    else:
        host, port = "unknown.invalid", 443
    if req.method.upper() == "CONNECT":
        return host, port, "", authority or req.target, ""
    return host, port, scheme, authority, req.target


def _join_target(method: str, scheme: str, authority: str, path: str) -> str:
    """Inverse of ``_split_target`` (what a reader gets without our metadata)."""
    if method.upper() == "CONNECT" and authority and not path:
        return authority
    if authority:
        return f"{scheme or 'http'}://{authority}{path}"
    return path


def exchange_to_flow(ex: Exchange) -> Any:
    """A ``mitmproxy.http.HTTPFlow`` for an Exchange (see the module docstring)."""
    from mitmproxy import connection, http
    from mitmproxy import flow as mflow

    st: dict[str, Any] = {"v": 1, "id": ex.id}
    placeholders: list[str] = []
    conn = ex.conn
    if conn is not None:
        st["conn"] = conn_to_record(conn)
        client_addr = (conn.client_ip, conn.client_port)
        server_addr = (conn.server_ip, conn.server_port)
    else:
        client_addr = ("0.0.0.0", 0)
        server_addr = None

    t_start = ex.ts_request_start
    if t_start is None:
        placeholders.append("ts_request_start")
        t_start = ex.ts_response_start if ex.ts_response_start is not None else 0.0

    req = ex.request
    if req is None:
        st["no_request"] = True
        req = Request(PLACEHOLDER_METHOD, "/")
    h2 = req.version == "HTTP/2"
    req_headers = req.headers
    if h2:
        # mitmproxy's HTTP/2 flows: version "HTTP/2.0", pseudo-headers as fields of the
        # request, not headers (``replay.h2`` keeps :authority/:scheme leading the headers)
        host, port, scheme, authority, path = _split_h2(req, conn)
        req_headers = [(k, v) for k, v in req.headers if not k.startswith(":")]
        st["h2_pseudo"] = [[k, v] for k, v in req.headers if k.startswith(":")]
    else:
        host, port, scheme, authority, path = _split_target(req, conn)
    if (_join_target(req.method, scheme, authority, path) != req.target
            and not (h2 and path == req.target)):
        st["target"] = req.target
    try:
        authority_b = authority.encode("latin-1")
        path_b = path.encode("latin-1")
    except UnicodeEncodeError:  # not possible for latin-1-decoded targets, but be safe
        authority_b, path_b = b"", b"/"
        st["target"] = req.target
    mreq = http.Request(
        host=host,
        port=port,
        method=req.method.encode("latin-1"),
        scheme=scheme.encode("latin-1"),
        authority=authority_b,
        path=path_b,
        http_version=b"HTTP/2.0" if h2 else req.version.encode("latin-1"),
        headers=http.Headers(_hb(req_headers)),
        content=req.body,
        trailers=http.Headers(_hb(req.trailers)) if req.trailers else None,
        timestamp_start=float(t_start),
        timestamp_end=_f(ex.ts_request_end),
    )

    client = connection.Client(
        peername=client_addr,
        sockname=server_addr or ("0.0.0.0", 0),
        timestamp_start=float(t_start),
    )
    server = connection.Server(address=server_addr, peername=server_addr)
    flow = http.HTTPFlow(client, server)
    flow.request = mreq

    if ex.response is not None:
        r = ex.response
        r_start = ex.ts_response_start
        if r_start is None:
            placeholders.append("ts_response_start")
            r_start = ex.ts_request_end if ex.ts_request_end is not None else t_start
        flow.response = http.Response(
            http_version=b"HTTP/2.0" if r.version == "HTTP/2" else r.version.encode("latin-1"),
            status_code=r.status,
            reason=r.reason.encode("latin-1"),
            headers=http.Headers(_hb(r.headers)),
            content=r.body,
            trailers=http.Headers(_hb(r.trailers)) if r.trailers else None,
            timestamp_start=float(r_start),
            timestamp_end=_f(ex.ts_response_end),
        )
    else:
        # An error makes mitmdump list the flow (it prints flows at response or error) and tells
        # mitmproxy users why there is no response. Our reader ignores it for our own flows.
        flow.error = mflow.Error("no response captured")
        if ex.ts_response_start is not None or ex.ts_response_end is not None:
            # No response object to hang them on: keep them with us.
            st["ts_response_start"] = ex.ts_response_start
            st["ts_response_end"] = ex.ts_response_end

    if placeholders:
        st["placeholders"] = placeholders
    if ex.interim:
        st["interim"] = [response_to_record(x) for x in ex.interim]
    comp = ex.completeness.to_dict()
    if comp:
        st["completeness"] = comp
    if ex.tunnel is not None:
        st["tunnel"] = ex.tunnel
    if ex.meta:
        # As JSON text: tnetstring does not keep dict key order, and JSON is what meta must
        # already be (the JSONL log holds it), so this keeps it exactly.
        st["meta_json"] = orjson.dumps(ex.meta).decode("utf-8")
    flow.metadata[META_KEY] = _tnet_safe(st)
    return flow


def _f(v: float | None) -> float | None:
    """mitmproxy type-checks its fields: an int timestamp must become a float."""
    return None if v is None else float(v)


def _tnet_safe(v: Any) -> Any:
    """Lists for tuples (tnetstring has no tuple; keeps round trips type-stable)."""
    if isinstance(v, dict):
        return {k: _tnet_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_tnet_safe(x) for x in v]
    return v


def _peer(addr: Any) -> tuple[str, int] | None:
    if isinstance(addr, tuple | list) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    return None


def flow_to_exchange(flow: Any) -> Exchange:
    """An Exchange from an ``HTTPFlow``: ours (with metadata) exactly, others best effort."""
    st = flow.metadata.get(META_KEY)
    if st is not None and not isinstance(st, dict):
        raise RecordError(f"metadata[{META_KEY!r}] is not a dict")
    st = st or {}
    placeholders = set(st.get("placeholders") or ())
    mreq = flow.request
    resp = flow.response

    req: Request | None = None
    if not st.get("no_request"):
        d = mreq.data
        method = d.method.decode("latin-1")
        target = st.get("target")
        h2 = d.http_version == b"HTTP/2.0"
        if h2 and not isinstance(target, str):
            target = d.path.decode("latin-1") or (d.authority.decode("latin-1")
                                                  if method.upper() == "CONNECT" else "/")
        if not isinstance(target, str):
            target = _join_target(
                method,
                d.scheme.decode("latin-1"),
                d.authority.decode("latin-1"),
                d.path.decode("latin-1"),
            )
        headers = _hs(d.headers)
        if h2:
            pseudo = [(":authority", d.authority.decode("latin-1")),
                      (":scheme", d.scheme.decode("latin-1"))]
            kept = st.get("h2_pseudo")
            if isinstance(kept, list):  # ours: as they were, in their order
                pseudo = [(str(k), str(v)) for k, v in kept]
            headers = [(k, v) for k, v in pseudo if v] + headers
        req = Request(
            method=method,
            target=target,
            version="HTTP/2" if h2 else d.http_version.decode("latin-1"),
            headers=headers,
            body=d.content or b"",
            trailers=_hs(d.trailers) if d.trailers is not None else [],
        )

    response: Response | None = None
    if resp is not None:
        rd = resp.data
        response = Response(
            status=rd.status_code,
            reason=rd.reason.decode("latin-1"),
            version="HTTP/2" if rd.http_version == b"HTTP/2.0"
            else rd.http_version.decode("latin-1"),
            headers=_hs(rd.headers),
            body=rd.content or b"",
            trailers=_hs(rd.trailers) if rd.trailers is not None else [],
        )

    def ts(name: str, value: float | None) -> float | None:
        return None if name in placeholders or value is None else float(value)

    if resp is not None:
        ts_resp_start = ts("ts_response_start", resp.data.timestamp_start)
        ts_resp_end = ts("ts_response_end", resp.data.timestamp_end)
    else:
        ts_resp_start, ts_resp_end = st.get("ts_response_start"), st.get("ts_response_end")

    if "conn" in st:
        conn = conn_from_record(st["conn"])
    elif st:
        conn = None
    else:
        c = _peer(flow.client_conn.peername)
        s = _peer(flow.server_conn.peername) or _peer(flow.server_conn.address)
        conn = ConnKey(c[0], c[1], s[0], s[1]) if c and s else None

    comp = st.get("completeness")
    if comp is not None and not isinstance(comp, dict):
        raise RecordError("metadata completeness is not a dict")
    completeness = Completeness.from_dict(comp)
    if not st:
        if flow.error is not None:
            completeness.notes.append(f"mitmproxy-error: {flow.error.msg}")
        if resp is None:
            completeness.unpaired = True
    interim = st.get("interim") or []
    meta_json = st.get("meta_json")
    meta = orjson.loads(meta_json) if isinstance(meta_json, str | bytes) else {}
    if not isinstance(meta, dict):
        raise RecordError("metadata meta_json is not a JSON object")
    tunnel = st.get("tunnel")
    if not st and flow.websocket is not None:
        tunnel = "upgrade:websocket"
    return Exchange(
        id=str(st.get("id") or flow.id),
        conn=conn,
        request=req,
        response=response,
        interim=[response_from_record(x) for x in interim],
        ts_request_start=ts("ts_request_start", mreq.data.timestamp_start),
        ts_request_end=ts("ts_request_end", mreq.data.timestamp_end),
        ts_response_start=ts_resp_start,
        ts_response_end=ts_resp_end,
        completeness=completeness,
        tunnel=tunnel if isinstance(tunnel, str) else None,
        meta=dict(meta),
    )


class MitmWriter:
    """Writes Exchanges as mitmproxy HTTP flows. The caller owns ``fp``; ``close`` flushes."""

    def __init__(self, fp: BinaryIO) -> None:
        from mitmproxy.io import FlowWriter

        self._fp = fp
        self._w = FlowWriter(fp)
        self.count = 0

    def write(self, ex: Exchange) -> None:
        try:
            self._w.add(exchange_to_flow(ex))
        except (TypeError, ValueError) as e:
            raise TypeError(f"exchange {ex.id}: cannot encode as a mitmproxy flow ({e})") from None
        self.count += 1

    def close(self) -> None:
        self._fp.flush()

    def __enter__(self) -> MitmWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_mitm(path: str | Path) -> Iterator[Exchange]:
    """Exchanges from a mitmproxy flow file (optionally gzip-compressed).

    Non-HTTP flows (TCP, UDP, DNS) are skipped: they are not exchanges. A cut or corrupt file
    raises ``FormatError`` after yielding the flows before the damage.
    """
    from mitmproxy import exceptions, http
    from mitmproxy.io import FlowReader

    name = str(path)
    f = open_input(path)
    n = 0
    try:
        stream = iter(FlowReader(f).stream())
        while True:
            try:
                flow = next(stream)
            except StopIteration:
                break
            except exceptions.FlowReadException as e:
                cause = e.__cause__
                detail = f"{e}" + (f": {cause}" if cause else "")
                raise FormatError(
                    f"{name}: truncated or corrupt mitmproxy flow file after {n} flows ({detail})"
                ) from None
            except GZIP_ERRORS as e:
                raise FormatError(f"{name}: broken gzip data after {n} flows ({e})") from None
            except Exception as e:  # mitmproxy's migrations raise assorted errors on junk
                raise FormatError(
                    f"{name}: not a readable mitmproxy flow file after {n} flows "
                    f"({type(e).__name__}: {e})"
                ) from None
            n += 1
            if not isinstance(flow, http.HTTPFlow):
                continue
            try:
                ex = flow_to_exchange(flow)
            except (RecordError, KeyError, TypeError, ValueError) as e:  # JSONDecodeError too
                raise FormatError(f"{name}: flow {n}: {e}") from None
            yield ex
    finally:
        f.close()
