"""``multipart/form-data`` bodies: each part by its name and media type.

A part under ``Content-Transfer-Encoding: base64`` or ``quoted-printable`` is decoded,
sanitised like any other part and encoded again; one that does not decode (or names an encoding
we do not know) is never passed on: its body is dropped and its length and keyed hash kept
(``MessagePart.opaque``; the whole exchange under ``on_mismatch: drop_exchange``).
"""

from __future__ import annotations

from collections.abc import Callable

from replay.sanitise import bodies
from replay.sanitise.jsonbody import JsonPart
from replay.sanitise.values import Ctx, Values


class MultipartPart:
    """Multipart bodies, rebuilt with the original boundary when a part changed."""

    __slots__ = (
        "_dets",
        "_echo",
        "_extra",
        "_replace_hits",
        "_select",
        "_sniffed",
        "_whole_value",
        "content",
        "mismatch",
        "opaque",
        "report",
    )

    def __init__(self, values: Values, json: JsonPart) -> None:
        self._replace_hits = values.replace_hits
        self._select = values.select
        self._whole_value = values.whole_value
        self._echo = values.echo
        self._sniffed = json.sniffed
        self._dets = values.compiled.dets["multipart"]
        self._extra = values.compiled.mp_extra
        self.report = values.report
        # set when the parts are put together (``MessagePart``'s)
        self.content: Callable[[str, dict[str, str], bytes, Ctx], bytes] = _not_wired
        self.opaque: Callable[[bytes, Ctx], bytes] = _not_wired
        self.mismatch: Callable[[bytes, Ctx], bytes] = _not_wired

    def multipart(self, data: bytes, boundary: str, ctx: Ctx) -> bytes:
        """Each part by name and media type; rebuilt with the original boundary if changed."""
        try:
            mp = bodies.parse_multipart(data, boundary)
        except bodies.BodyError as e:
            self.report.fallback(f"multipart: {e}")
            return self.mismatch(data, ctx)
        changed = False
        keep = []
        for part in mp.parts:
            hdr = self._replace_hits("multipart", part.headers, self._dets, ctx)
            if hdr is not part.headers:
                part.headers = hdr
                changed = True
            cte = bodies.transfer_encoding(part)
            if cte is None:
                nb = self.part_body(part, part.body, ctx)
            else:
                try:
                    inner = bodies.decode_transfer(part.body, cte)
                except bodies.BodyError as e:
                    self.report.fallback(str(e))
                    part.body = self.opaque(part.body, ctx)
                    changed = True
                    keep.append(part)
                    continue
                nb = self.part_body(part, inner, ctx)
                if nb is not None:
                    nb = part.body if nb == inner else bodies.encode_transfer(nb, cte, part.body)
            if nb is None:
                changed = True
                continue
            if nb is not part.body and nb != part.body:
                part.body = nb
                changed = True
            keep.append(part)
        if not changed:
            return data
        mp.parts = keep
        return bodies.build_multipart(mp)

    def part_body(self, part: bodies.Part, body: bytes, ctx: Ctx) -> bytes | None:
        """The sanitised (decoded) body of one multipart part, or None to leave the part out."""
        whole, scoped = self._select("multipart", part.name.lower())
        if whole is not None:
            return self._whole_value(whole, "multipart", body, ctx)
        ptype, pparams = bodies.parse_content_type(
            (part.header(b"content-type") or b"").decode("latin-1")
        )
        kind = bodies.body_kind(ptype)
        if kind in ("json", "form", "multipart"):
            return self.content(kind, pparams, body, ctx)
        if body[:1] in (b"{", b"[") and (sn := self._sniffed(body, ctx)) is not None:
            return sn
        nb = self._replace_hits("multipart", body, scoped + self._dets, ctx)
        if self._extra:
            nb = self._replace_hits("body", nb, self._extra, ctx, skip=ctx.produced)
        return self._echo(nb, ctx)


def _not_wired(*args: object) -> bytes:
    raise RuntimeError("MultipartPart's callbacks are set when the sanitiser's parts are put "
                       "together")
