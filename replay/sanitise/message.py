"""Message bodies: content codings, dispatch by media type, gRPC, and bodies nothing can read.

``MessagePart.body`` undoes the content codings, hands the decoded body to its part by media
type (``jsonbody``, ``form``, ``multipart``; anything else gets the whole-body text scan, with
JSON and NDJSON recognised by content) and redoes the codings if something changed. Never an
unmasked write: a body that cannot be decoded or parsed as its headers claim falls back to a
whole-body scan (or, by policy, its removal) and is counted in the report.
"""

from __future__ import annotations

import hashlib
import hmac

from replay.model import Headers
from replay.sanitise import bodies
from replay.sanitise.cache import CTYPE_ENTRIES
from replay.sanitise.form import FormPart
from replay.sanitise.grpc import sanitise_grpc
from replay.sanitise.jsonbody import JsonPart
from replay.sanitise.media import sanitise_image
from replay.sanitise.multipart import MultipartPart
from replay.sanitise.values import Ctx, Drop, Values


class MessagePart:
    """Bodies of requests and responses (see the module's doc)."""

    __slots__ = (
        "_body_dets",
        "_ctype_cache",
        "_echo",
        "_form",
        "_hkind",
        "_json",
        "_json_any",
        "_key",
        "_multipart",
        "_on_mismatch",
        "_replace_hits",
        "_sniffed",
        "report",
    )

    def __init__(
        self, values: Values, json: JsonPart, form: FormPart, multipart: MultipartPart
    ) -> None:
        cp = values.compiled
        self._replace_hits = values.replace_hits
        self._echo = values.echo
        self._json = json.json
        self._sniffed = json.sniffed
        self._form = form.form
        self._multipart = multipart.multipart
        self._body_dets = cp.body_dets
        self._json_any = bool(cp.json_rules or cp.json_text_dets)
        self._on_mismatch = cp.on_mismatch
        self._key = cp.key
        self._ctype_cache = values.cache.ctype
        self._hkind = values.cache.header_kind
        self.report = values.report

    def message_body(
        self, headers: Headers, body: bytes, ctype: str | None, cenc: str | None, ctx: Ctx
    ) -> tuple[bytes, Headers]:
        """Sanitise a message body; returns (body, headers with Content-Length fixed)."""
        if not body:
            return body, headers
        if ctype is not None and ctype[:16].lower() == "application/grpc":
            new = self.grpc(headers, body, cenc, ctx)
        else:
            new = self.body(ctype, cenc, body, ctx)
        if new is body:
            return body, headers
        self.report.bodies_rewritten += 1
        out = []
        kinds = self._hkind  # (kind, lower-case name) of every name the header part has seen
        n = str(len(new))
        for h in headers:
            kk = kinds.get(h[0])
            lk = kk[1] if kk is not None else h[0].lower()
            out.append((h[0], n) if lk == "content-length" else h)
        return new, out

    def body(self, ctype: str | None, cenc: str | None, body: bytes, ctx: Ctx) -> bytes:
        """Undo content codings, sanitise by media type, redo the codings if changed."""
        codes = bodies.codings(cenc) if cenc else []
        ct = self._ctype_cache.get(ctype)
        if ct is None:
            mime, params = bodies.parse_content_type(ctype)
            ct = (bodies.body_kind(mime), params)
            if len(self._ctype_cache) > CTYPE_ENTRIES:
                self._ctype_cache.clear()
            self._ctype_cache[ctype] = ct
        kind, params = ct
        inner = body
        if codes:
            try:
                inner = bodies.decode(body, codes)
            except bodies.BodyError as e:
                self.report.fallback(f"undecodable content-encoding: {str(e).split(' (')[0]}")
                return self.opaque(body, ctx)
        new = self.content(kind, params, inner, ctx)
        if new is inner:
            return body
        if not codes:
            return new
        if new == inner:
            return body
        return bodies.encode(new, codes)

    def content(self, kind: str, params: dict[str, str], data: bytes, ctx: Ctx) -> bytes:
        """Dispatch a decoded body to its structured handler by media type."""
        if kind == "json":
            return self._json(data, ctx)
        if kind == "form":
            return self._form(data, ctx)
        if kind == "multipart":
            return self._multipart(data, params.get("boundary", ""), ctx)
        return self.text(data, ctx)

    def grpc(self, headers: Headers, body: bytes, cenc: str | None, ctx: Ctx) -> bytes:
        """A gRPC body: walked message by message, every string field through the text scan,
        lengths and prefixes written anew (``replay.sanitise.grpc``); a body that does not walk
        is dropped with its length and keyed hash."""
        if cenc:  # gRPC compresses per message (grpc-encoding), not the whole body
            return self.opaque(body, ctx)
        enc = None
        for k, v in headers:
            if k.lower() == "grpc-encoding":
                enc = v
        new = sanitise_grpc(body, enc, lambda b: self.text(b, ctx))
        if new is None:
            self.report.fallback("gRPC body that does not walk as length-prefixed protobuf")
            return self.opaque(body, ctx)
        return new

    def opaque(self, data: bytes, ctx: Ctx) -> bytes:
        """A body nothing can look inside (a content coding that does not decode, or one not
        supported): never passed on. Dropped (the exchange too under ``on_mismatch:
        drop_exchange``); its length and a keyed hash are kept in the exchange's meta
        (``sanitise_dropped_bodies``), so two captures can still be compared."""
        if self._on_mismatch == "drop_exchange":
            raise Drop()
        digest = hmac.new(self._key or b"\0", data, hashlib.sha256).hexdigest()
        if ctx.dropped is None:
            ctx.dropped = []
        ctx.dropped.append({"length": len(data), "hmac_sha256": digest})
        return b""

    def mismatch(self, data: bytes, ctx: Ctx) -> bytes:
        """A body that is not what its headers say: scan it as text, or drop it, per policy."""
        how = self._on_mismatch
        if how == "drop_exchange":
            raise Drop()
        if how == "drop_body":
            return b""
        return self.text(data, ctx)

    def text(self, data: bytes, ctx: Ctx) -> bytes:
        """A body whose media type names no structure we parse (text/plain, none, XML, HTML,
        octet-stream...): JSON and NDJSON are recognised by content; everything else gets the
        whole-body scan (value detectors and name=value pairs) and the echo pass."""
        if self._json_any:
            first = data[:1]
            if first in b" \t\r\n" and first:
                first = data.lstrip()[:1]
            if first and first in b'{["':
                new = self._sniffed(data, ctx)
                if new is not None:
                    return new
        if data[:3] in (b"\x89PN", b"\xff\xd8\xff"):  # PNG, JPEG: text parts, not pixels
            img = sanitise_image(data, lambda b: self._echo(
                self._replace_hits("body", b, self._body_dets, ctx), ctx))
            if img is not None:
                return img
        new = self._replace_hits("body", data, self._body_dets, ctx)
        return self._echo(new, ctx)
