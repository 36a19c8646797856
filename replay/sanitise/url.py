"""URLs: the request-target and URL headers (userinfo, path segments, query, fragment)."""

from __future__ import annotations

import re

from replay.sanitise import bodies
from replay.sanitise.cache import remember_clean
from replay.sanitise.detectors import scan
from replay.sanitise.form import FormPart
from replay.sanitise.values import ECHO_MIN, Ctx, Values, dec, enc, remember_clean_target

_SECRET_SEG = re.compile(
    rb"reset|token|verif|confirm|activat|invite|invitation|magic|unsubscribe|password|passwd"
    rb"|secret|apikey|api-key|api_key|signin|sign-in|login|session|otp|recover|share"
)
"""A path segment naming a secret: the segment after it is one."""
_TOKEN_SEG = re.compile(rb"[A-Za-z0-9_\-.~=]{16,512}")


class UrlPart:
    """Request-targets and URLs."""

    __slots__ = (
        "_clean_path",
        "_clean_targets",
        "_frag_dets",
        "_pairs",
        "_path_dets",
        "_path_whole",
        "_replace_hits",
        "_url_token_rule",
        "_whole_value",
        "pseudo",
        "report",
    )

    def __init__(self, values: Values, form: FormPart) -> None:
        cp = values.compiled
        self._replace_hits = values.replace_hits
        self._whole_value = values.whole_value
        self._pairs = form.pairs
        self._path_whole = cp.whole["path"]
        self._path_dets = cp.dets["path"]
        self._frag_dets = cp.frag_dets
        self._url_token_rule = cp.url_token_rule
        self._clean_targets = values.cache.clean_targets
        self._clean_path = values.cache.clean["path"]
        self.report = values.report
        self.pseudo = values.pseudo

    def target(self, target: str, ctx: Ctx) -> str:
        """The request-target: userinfo, path segments, query, fragment.

        Targets that went through untouched (no count, nothing written) are remembered: health
        checks, listings and asset URLs recur. Only while nothing was written in this exchange
        yet, since a safety-net scan skips what was (the request target comes first)."""
        if ctx.produced or ctx.echo:
            return self.url(target, ctx)
        clean = self._clean_targets
        if target in clean:
            return target
        rep = self.report
        rec: list[tuple[str, str, bytes | None]] = []
        rep._rec = rec
        try:
            new = self.url(target, ctx)
        finally:
            rep._rec = None
        if new is target and not rec and not ctx.produced and not ctx.echo:
            remember_clean_target(clean, target)
        return new

    def url(self, url: str, ctx: Ctx) -> str:
        """Sanitise userinfo, path segments and query parameters of a URL or request-target."""
        raw = enc(url)
        prefix = b""
        rest = raw
        if b"://" in raw[:16] and not raw.startswith(b"/"):  # absolute-form, not a query
            scheme, _, after = raw.partition(b"://")
            slash = after.find(b"/")
            q = after.find(b"?")
            cut = min(x for x in (slash, q, len(after)) if x >= 0)
            authority = after[:cut]
            if b"@" in authority:
                userinfo, _, hostport = authority.rpartition(b"@")
                new_ui = self.pseudo.pseudonym("token", userinfo)
                self.report.count("userinfo", "path", new_ui)
                if len(userinfo) >= ECHO_MIN:
                    ctx.echo[userinfo] = new_ui
                authority = new_ui + b"@" + hostport
            prefix = scheme + b"://" + authority
            rest = after[cut:]
        path, qm, query = rest.partition(b"?")
        frag = b""
        if b"#" in query:
            query, _, f = query.partition(b"#")
            frag = b"#" + f
        elif not qm and b"#" in path:
            path, _, f = path.partition(b"#")
            frag = b"#" + f
        new_path = self.path(path, ctx)
        new_query = self.query(query, ctx) if qm else query
        new_frag = self.fragment(frag, ctx) if frag else frag
        if (
            new_path is path
            and new_query is query
            and new_frag is frag
            and (not prefix or prefix == raw[: len(prefix)])
        ):
            return url
        return dec(prefix + new_path + qm + new_query + new_frag, url)

    def fragment(self, frag: bytes, ctx: Ctx) -> bytes:
        """'#access_token=...&state=x' (OAuth implicit flow) is a query string: the query rules;
        '#/reset/<token>' is a path: the query and path detectors over the whole text."""
        body = frag[1:]
        new = body
        if b"=" in body:
            new = self._pairs("query", body, ctx, b"@:,/")
        dets = self._frag_dets
        if dets:
            new = self._replace_hits("path", new, dets, ctx, skip=ctx.produced)
        return frag if new is body else b"#" + new

    def path(self, path: bytes, ctx: Ctx) -> bytes:
        """Path segments: segment rules by position or value, then detectors."""
        whole = self._path_whole
        dets = self._path_dets
        if not whole and not dets:
            return path
        clean = self._clean_path
        if path in clean:
            return path  # this exact path went through unchanged before
        token_rule = self._url_token_rule
        if (
            not whole
            and not scan(bodies.unquote(path, plus=False), dets)
            and (b"+" not in path or not scan(bodies.unquote(path, plus=True), dets))
            and (token_rule is None or _SECRET_SEG.search(path.lower()) is None)
        ):
            remember_clean(clean, path)
            return path
        segs = path.split(b"/")
        changed = False
        for i, seg in enumerate(segs):
            if not seg:
                continue
            dseg = bodies.unquote(seg, plus=False) if b"%" in seg else seg
            new = dseg
            done = False
            for r in whole:
                if (
                    r.segments is not None
                    and i - 1 not in r.segments
                    and (i - len(segs) not in r.segments)
                ):
                    continue
                if r.segment_rx is not None and not r.segment_rx.fullmatch(
                    dseg.decode("latin-1")
                ):
                    continue
                v = self._whole_value(r, "path", dseg, ctx)
                new = b"" if v is None else v
                done = True
                break
            if not done and i > 1 and token_rule is not None and _SECRET_SEG.search(
                segs[i - 1].lower()
            ) and _TOKEN_SEG.fullmatch(dseg):
                # '/reset-password/<token>', '/verify/<uuid>': the segment after one naming a
                # secret is one, whatever its shape
                v = self._whole_value(token_rule, "path", dseg, ctx)
                new = b"" if v is None else v
                done = True
            if not done:
                new = self._replace_hits("path", dseg, dets, ctx)
                if new is dseg and b"+" in seg:
                    # '+' is a literal in a path, but some clients write spaces that way
                    dplus = bodies.unquote(seg, plus=True)
                    np = self._replace_hits("path", dplus, dets, ctx)
                    if np is not dplus:
                        segs[i] = bodies.quote(np, plus=True, safe=b"@:!$&'()*,;=")
                        changed = True
                        continue
            if new is not dseg:
                segs[i] = (
                    new if dseg is seg else bodies.quote(new, plus=False, safe=b"@:!$&'()*+,;=")
                )
                changed = True
        if not changed:
            remember_clean(clean, path)
            return path
        return b"/".join(segs)

    def query(self, query: bytes, ctx: Ctx) -> bytes:
        """Query parameters (see ``FormPart.pairs``)."""
        if not query:
            return query
        return self._pairs("query", query, ctx, b"@:,/")
