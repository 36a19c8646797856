"""Which exchanges to replay, and the exact bytes to send for each target (sans-I/O).

Everything here is pure: an ``Exchange`` in, a verdict or a ``bytes`` request out. The replayer
builds each request once per target and writes it as one buffer, so the hot path is a dict
lookup and a socket write.

What is rewritten and why:

* ``Host`` (and an absolute-form request-target) is pointed at the target by default: shadows
  usually route by Host, and a production host name sent to a shadow is at best a 404. Use
  ``keep_host`` to send the captured Host unchanged (virtual-hosted shadows).
* Hop-by-hop headers (Connection, Keep-Alive, TE, Transfer-Encoding, Upgrade, Proxy-*) describe
  the *captured* connection, not ours; they are dropped and the body is framed afresh with
  Content-Length (the model keeps bodies with transfer coding removed). ``Expect: 100-continue``
  is dropped because we always send the body at once.
* Requests go out as HTTP/1.1 so the pool can keep connections alive, whatever the capture used.
* User rewrites: header set (replace or add) and remove, and regex substitution on the path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from replay.errors import InputError
from replay.model import NO_REQUEST_CAPTURED, NO_RESPONSE_CAPTURED, Exchange, Request

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "content-length",
        "expect",
    }
)
"""Dropped from replayed requests (content-length is recomputed, expect is not needed)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to replay to: ``http[s]://host[:port][/base-path]``."""

    url: str
    scheme: str
    host: str
    port: int
    base_path: str = ""

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        h = f"[{self.host}]" if ":" in self.host else self.host
        return h if self.port == default else f"{h}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> Target:
        """Parse a target URL; a user mistake is an ``InputError`` naming it."""
        raw = url.strip()
        if "://" not in raw:
            raw = "http://" + raw
        try:
            u = urlsplit(raw)
            port = u.port
        except ValueError as e:
            raise InputError(f"--target {url!r}: not a valid URL ({e})") from None
        if u.scheme not in ("http", "https"):
            raise InputError(f"--target {url!r}: only http:// and https:// targets are supported")
        if not u.hostname:
            raise InputError(f"--target {url!r}: no host name")
        if u.query or u.fragment:
            raise InputError(f"--target {url!r}: a target has no query or fragment")
        base = u.path.rstrip("/")
        return cls(
            url=url,
            scheme=u.scheme,
            host=u.hostname,
            port=port or (443 if u.scheme == "https" else 80),
            base_path=base,
        )


# ---------------------------------------------------------------------------------------------
# Filters


@dataclass(slots=True)
class Filter:
    """Which exchanges to replay: methods (any of), host regex, path regexes (include/exclude).

    Regexes use ``re.search`` so a plain substring works as a pattern too.
    """

    methods: frozenset[str] = frozenset()
    host: re.Pattern[str] | None = None
    paths: list[re.Pattern[str]] = field(default_factory=list)
    exclude_paths: list[re.Pattern[str]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        methods: Iterable[str] = (),
        host: str | None = None,
        paths: Iterable[str] = (),
        exclude_paths: Iterable[str] = (),
    ) -> Filter:
        return cls(
            methods=frozenset(m.upper() for m in methods),
            host=_compile(host, "--host") if host else None,
            paths=[_compile(p, "--path") for p in paths],
            exclude_paths=[_compile(p, "--exclude-path") for p in exclude_paths],
        )

    @property
    def empty(self) -> bool:
        return not (self.methods or self.host or self.paths or self.exclude_paths)

    def accepts(self, ex: Exchange) -> bool:
        r = ex.request
        if r is None:
            return False
        if self.methods and r.method.upper() not in self.methods:
            return False
        if self.host is not None and not self.host.search(r.host or ""):
            return False
        path = r.path
        if self.paths and not any(p.search(path) for p in self.paths):
            return False
        return not any(p.search(path) for p in self.exclude_paths)


def _compile(pattern: str, opt: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InputError(f"{opt} {pattern!r}: not a valid regular expression ({e})") from None


def skip_reason(ex: Exchange, *, include_incomplete: bool = False, need_response: bool = False
                ) -> str | None:
    """Why a captured exchange should not be replayed, or None if it can be.

    A request with gaps or cut short cannot be rebuilt, so it is never replayed. Other kinds of
    incompleteness (no response seen, the response cut short, a timeout) leave the request intact:
    they are skipped by default, because the capture's answer is then not trustworthy either, and
    replayed with ``include_incomplete``. CONNECT and Upgrade start tunnels, not HTTP exchanges.
    A message marked desync (framing that cannot be trusted: a request smuggling shape) is never
    replayed, whatever else is true of it. ``need_response``: the comparator needs the captured
    (primary) response.
    """
    r = ex.request
    if r is None:
        return NO_REQUEST_CAPTURED
    c = ex.completeness
    if c.desync:
        return "desync"  # framing not to be trusted (a smuggling shape): never replayed
    if c.request_gaps:
        return "request body has gaps"
    if c.request_truncated:
        return "request truncated"
    if r.method.upper() == "CONNECT" or ex.tunnel is not None:
        return "tunnel (CONNECT/Upgrade)"
    h2 = ex.meta.get("h2") if ex.meta else None
    if h2 is not None and h2.get("hpack_unknown"):
        # fields that referenced HPACK entries from before the capture (replay.h2)
        return "HTTP/2 header fields unknown"
    if need_response and ex.response is None:
        return NO_RESPONSE_CAPTURED
    if not include_incomplete:
        if c.response_gaps:
            return "response has gaps"
        if c.response_truncated:
            return "response truncated"
        if c.timed_out:
            return "timed out in capture"
        if c.unpaired:
            return NO_RESPONSE_CAPTURED
    if need_response and (c.response_gaps or c.response_truncated):
        return "response has gaps" if c.response_gaps else "response truncated"
    return None


# ---------------------------------------------------------------------------------------------
# Rewrites


@dataclass(slots=True)
class Rewrite:
    """User rewrites applied to every replayed request, plus the Host policy."""

    set_headers: list[tuple[str, str]] = field(default_factory=list)
    remove_headers: frozenset[str] = frozenset()
    path_subs: list[tuple[re.Pattern[str], str]] = field(default_factory=list)
    keep_host: bool = False

    @classmethod
    def build(
        cls,
        set_headers: Iterable[str] = (),
        remove_headers: Iterable[str] = (),
        path_subs: Iterable[str] = (),
        keep_host: bool = False,
    ) -> Rewrite:
        """From CLI strings: ``"Name: value"``, ``"Name"``, ``"REGEX=>REPLACEMENT"``."""
        sets: list[tuple[str, str]] = []
        for h in set_headers:
            name, sep, value = h.partition(":")
            if not sep or not name.strip() or not _TOKEN.fullmatch(name.strip()):
                raise InputError(f"--set-header {h!r}: expected 'Name: value'")
            sets.append((name.strip(), value.strip()))
        subs: list[tuple[re.Pattern[str], str]] = []
        for s in path_subs:
            pat, sep, repl = s.partition("=>")
            if not sep or not pat:
                raise InputError(f"--rewrite-path {s!r}: expected 'REGEX=>REPLACEMENT'")
            subs.append((_compile(pat, "--rewrite-path"), repl))
        return cls(
            set_headers=sets,
            remove_headers=frozenset(h.strip().lower() for h in remove_headers),
            path_subs=subs,
            keep_host=keep_host,
        )

    def path(self, path: str) -> str:
        for pat, repl in self.path_subs:
            try:
                path = pat.sub(repl, path)
            except (re.error, IndexError) as e:
                raise InputError(f"--rewrite-path {pat.pattern!r}: bad replacement ({e})") from None
        return path


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def rewrite_request(ex: Exchange, target: Target, rw: Rewrite) -> Request:
    """``ex.request`` as it will be sent to ``target``: the model, for the record of what was
    sent (the replayer writes ``encode_request`` of it)."""
    r = ex.request
    assert r is not None
    path = "*" if r.target == "*" else r.path
    if rw.path_subs and path != "*":
        path = rw.path(path)
    if target.base_path and path != "*":
        path = target.base_path + path
    if not path:
        path = "/"
    remove = rw.remove_headers
    set_names = {n.lower() for n, _ in rw.set_headers}
    headers: list[tuple[str, str]] = []
    if "host" not in set_names:
        headers.append(("Host", r.host if rw.keep_host and r.host else target.authority))
    for k, v in r.headers:
        lk = k.lower()
        if lk in HOP_BY_HOP or lk == "host" or lk in remove or lk in set_names:
            continue
        headers.append((k, v))
    headers.extend(rw.set_headers)
    body = r.body
    if body or r.method.upper() in ("POST", "PUT", "PATCH"):
        headers.append(("Content-Length", str(len(body))))
    return Request(r.method, path, "HTTP/1.1", headers, body)


def encode_request(r: Request) -> bytes:
    """Wire bytes of a request built by ``rewrite_request`` (one buffer: one write)."""
    head = f"{r.method} {r.target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in r.headers)
    data = (head + "\r\n").encode("latin-1", "replace")
    return data + r.body if r.body else data


class WireBuilder:
    """The wire bytes ``encode_request(rewrite_request(ex, t, rw))`` gives for each target, built
    in one pass without the ``Request`` models (the live shadowing's hot path: it needs the bytes
    only). Per-target constants (the Host line, the base path) and the header-name verdicts are
    computed once. ``ok`` is False for the rewrites it does not cover (``keep_host``, a Host set
    by the user): callers then use ``rewrite_request`` + ``encode_request``, which remain the
    definition (tests hold the two byte for byte)."""

    __slots__ = ("_bases", "_drop", "_hosts", "_names", "_rw", "_tail", "ok")

    def __init__(self, targets: list[Target], rw: Rewrite) -> None:
        set_names = {n.lower() for n, _ in rw.set_headers}
        self.ok = not rw.keep_host and "host" not in set_names
        self._drop = HOP_BY_HOP | {"host"} | rw.remove_headers | set_names
        self._tail = "".join(f"{k}: {v}\r\n" for k, v in rw.set_headers)
        self._rw = rw
        self._hosts = [f"Host: {t.authority}\r\n".encode("latin-1", "replace") for t in targets]
        bases = [t.base_path for t in targets]
        self._bases = None if len(set(bases)) == 1 and not bases[0] else bases
        self._names: dict[str, bool] = {}

    def build(self, r: Request) -> list[bytes]:
        """One request's bytes for every target (only when ``ok``)."""
        path = "*" if r.target == "*" else r.path
        rw = self._rw
        if rw.path_subs and path != "*":
            path = rw.path(path)
        names = self._names
        parts = []
        for k, v in r.headers:
            d = names.get(k)
            if d is None:
                if len(names) > 4096:
                    names.clear()
                d = names[k] = k.lower() in self._drop
            if not d:
                parts.append(f"{k}: {v}\r\n")
        text = "".join(parts)
        body = r.body
        method = r.method
        if body or method.upper() in ("POST", "PUT", "PATCH"):
            rest = f"{text}{self._tail}Content-Length: {len(body)}\r\n\r\n"
        else:
            rest = f"{text}{self._tail}\r\n"
        data = rest.encode("latin-1", "replace")
        if body:
            data += body
        hosts = self._hosts
        if self._bases is None:
            line = f"{method} {path or '/'} HTTP/1.1\r\n".encode("latin-1", "replace")
            return [line + h + data for h in hosts]
        out = []
        for base, h in zip(self._bases, hosts, strict=True):
            p = base + path if base and path != "*" else path
            out.append(f"{method} {p or '/'} HTTP/1.1\r\n".encode("latin-1", "replace") + h
                       + data)
        return out
