"""Compare HTTP responses field by field, and tell regressions from noise (sans-I/O).

Two layers:

* ``Comparator``: one response against another. Status; headers by ``Rules`` (each header has a
  mode: ``exact``, ``presence``, ``names`` for Set-Cookie, or ``ignore``; the defaults are data in
  ``DEFAULT_HEADER_RULES``, written out with the rules file, not silence buried in code); bodies
  by content type after undoing Content-Encoding (gzip, deflate, br): JSON structurally by field
  path (``changed_value``, ``changed_type``, ``missing``, ``extra``, ``array_order``,
  ``array_length``), text and HTML by lines, anything else by bytes (reported with hashes).
* ``ThreeWay``: many comparisons, grouped by endpoint (method + path template with ids, uuids
  and hashes collapsed), judged with a statistical test. ``primary`` is the production answer
  recorded in the capture, ``secondary`` a shadow running production's build, ``candidate`` the
  new build. A difference (endpoint, field, kind) is a regression only when the candidate differs
  from primary significantly more often than the secondary does on the *same* requests: an exact
  one-sided McNemar test (a binomial test on the discordant pairs), Holm-corrected across every
  difference seen in the run, with a minimum number of compared requests per endpoint. Without a
  secondary there is nothing to test against, so every difference not covered by the rules is
  reported. Differences the secondary shares are noise, and can be written to a rules file.
  Its state is plain data that merges (``state()``, ``merge()``): workers judging shares of the
  traffic add up to the verdict one process would give.

Speed: JSON bodies are not parsed whole. msgspec splits an object body one level deep (an array
body into its elements), each member or element kept as its raw JSON text; members whose bytes
are equal on both sides are equal and never parsed, the others are parsed with orjson and go
to the same lean recursive walk, which only descends into unequal subtrees. Whether a body is
JSON to orjson is settled by simdjson for one side and by the walk for the other (see
``Prepared._check`` and ``_shallow_json``). Findings, values included, are exactly those of the
walk over two orjson documents (tests/replay/test_replay_compare_fast.py). docs/benchmarks.md
has the figures; DeepDiff is a few hundred times slower. Work that cannot change a result is
skipped: equal header lists, header names compared by position when both sides list the same
names in the same order, a body identical to the primary's (its parse is reused). The walk uses
Python equality to skip equal subtrees, so a ``true`` ↔ ``1`` swap inside an otherwise equal
object is not seen (Python says ``True == 1``); a swap where the values differ is.

In ``ThreeWay.add``, nothing is prepared when no answer has production's status (that is the
only difference ``diff`` reports then) unless an example shows it; text is decoded only when
compared or shown (``_TEXT``); small bodies and shown bodies are remembered (``_SMALL``,
``_SHOWN``). With ``replay/_compare.c`` built, a JSON object or array body is checked whole by
simdjson first and split at its top level by a plain scan (``_split``), and the cut form of a
long unparsed array in an example comes from its first elements (``_show_head``);
tests/replay/test_compare_native.py holds these to their definitions.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter, ne
from pathlib import Path
from typing import Any

import orjson

try:  # the shallow parse (see ``prepare``); without these, orjson parses every body whole
    import msgspec
    import simdjson

    _Raw: Any = msgspec.Raw
    _raw_object: Any = msgspec.json.Decoder(dict[str, _Raw]).decode
    # An object body's members all kept raw: skipping a member is cheaper than splitting it
    # (an array into an object per element), and the walk splits the unequal ones it needs.
    _shallow_top: Any = _raw_object
    _raw_array: Any = msgspec.json.Decoder(list[_Raw]).decode
    _simd: Any = simdjson.Parser()
    _MsgspecError: Any = msgspec.MsgspecError
except ImportError:  # pragma: no cover
    _Raw = _shallow_top = _raw_object = _raw_array = _simd = None
    _MsgspecError = ValueError

from replay._native import load_c
from replay.errors import InputError
from replay.model import NO_ANSWER, Headers, Request, Response, absolute_form
from replay.stats import binom_sf_half, holm

# ---------------------------------------------------------------------------------------------
# Rules

HEADER_MODES = ("exact", "presence", "names", "ignore")

DEFAULT_HEADER_RULES: dict[str, str] = {
    # Hop-by-hop: they describe a connection, not the answer.
    "connection": "ignore",
    "keep-alive": "ignore",
    "proxy-connection": "ignore",
    "transfer-encoding": "ignore",
    "te": "ignore",
    "trailer": "ignore",
    "upgrade": "ignore",
    # Framing follows the body, which is compared itself (after decoding).
    "content-length": "ignore",
    # Volatile by design: different on every answer of every build.
    "date": "ignore",
    "age": "ignore",
    "expires": "ignore",
    "server-timing": "ignore",
    "x-request-id": "ignore",
    "x-correlation-id": "ignore",
    "x-trace-id": "ignore",
    "x-amzn-trace-id": "ignore",
    "traceparent": "ignore",
    "tracestate": "ignore",
    "x-runtime": "ignore",
    "x-response-time": "ignore",
    "cf-ray": "ignore",
    "via": "ignore",
    # Compare what matters, not the value: is it there, which cookies are set.
    "etag": "presence",
    "last-modified": "presence",
    "set-cookie": "names",
}

KINDS = (
    "changed_value",
    "changed_type",
    "missing",
    "extra",
    "array_order",
    "array_length",
    "lines_changed",
    "bytes_changed",
    NO_ANSWER,
)


def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches anything; everything else is literal (paths contain ``[*]`` and ``$``)."""
    return re.compile(".*".join(re.escape(p) for p in pattern.split("*")) + r"\Z", re.S)


@dataclass(slots=True)
class FieldRule:
    """Differences to treat as noise: endpoint and field are globs (``*`` = anything),
    ``kinds`` limits it to some kinds of difference (empty = all)."""

    endpoint: str = "*"
    field: str = "*"
    kinds: tuple[str, ...] = ()
    reason: str = ""
    _ep: re.Pattern[str] | None = None
    _fd: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        self._ep = _glob(self.endpoint)
        self._fd = _glob(self.field)

    def matches(self, endpoint: str, fld: str, kind: str) -> bool:
        if self.kinds and kind not in self.kinds:
            return False
        return bool(self._fd.match(fld) and self._ep.match(endpoint))  # type: ignore[union-attr]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"endpoint": self.endpoint, "field": self.field}
        if self.kinds:
            d["kinds"] = list(self.kinds)
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass(slots=True)
class Rules:
    """What to ignore: header modes, field rules, and whether new (extra) JSON fields in the
    answer count. Loaded from and saved to YAML or JSON (see docs/replay.md)."""

    headers: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_HEADER_RULES))
    fields: list[FieldRule] = field(default_factory=list)
    allow_extra_fields: bool = False
    _cache: dict[tuple[str, str, str], FieldRule | None] = field(default_factory=dict)

    def header_mode(self, name: str) -> str:
        return self.headers.get(name, "exact")

    def match(self, endpoint: str, fld: str, kind: str) -> FieldRule | None:
        """The first field rule covering this difference (cached: the same keys recur)."""
        key = (endpoint, fld, kind)
        try:
            return self._cache[key]
        except KeyError:
            pass
        hit = None
        if self.allow_extra_fields and kind == "extra" and fld.startswith("body:"):
            hit = _EXTRA_RULE
        else:
            for r in self.fields:
                if r.matches(endpoint, fld, kind):
                    hit = r
                    break
        if len(self._cache) < 100_000:
            self._cache[key] = hit
        return hit

    def add(self, rule: FieldRule) -> None:
        self.fields.append(rule)
        self._cache.clear()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "allow_extra_fields": self.allow_extra_fields,
            "headers": dict(sorted(self.headers.items())),
            "fields": [r.to_dict() for r in self.fields],
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "rules") -> Rules:
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected a mapping with 'headers' and/or 'fields'")
        unknown = set(d) - {"version", "allow_extra_fields", "headers", "fields"}
        if unknown:
            raise InputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        headers = dict(DEFAULT_HEADER_RULES)
        hd = d.get("headers") or {}
        if not isinstance(hd, dict):
            raise InputError(f"{where}: 'headers' must map header names to a mode")
        for k, v in hd.items():
            if v not in HEADER_MODES:
                raise InputError(f"{where}: header {k!r}: mode {v!r} is not one of "
                                 f"{', '.join(HEADER_MODES)}")
            headers[str(k).lower()] = v
        rules = []
        fl = d.get("fields") or []
        if not isinstance(fl, list):
            raise InputError(f"{where}: 'fields' must be a list of rules")
        for i, r in enumerate(fl):
            if not isinstance(r, dict) or "field" not in r:
                raise InputError(f"{where}: fields[{i}] needs at least a 'field'")
            kinds = r.get("kinds") or []
            if isinstance(kinds, str):
                kinds = [kinds]
            bad = [k for k in kinds if k not in KINDS]
            if bad:
                raise InputError(f"{where}: fields[{i}]: unknown kind(s) {', '.join(bad)} "
                                 f"(kinds: {', '.join(KINDS)})")
            rules.append(FieldRule(str(r.get("endpoint", "*")), str(r["field"]), tuple(kinds),
                                   str(r.get("reason", ""))))
        return cls(headers=headers, fields=rules,
                   allow_extra_fields=bool(d.get("allow_extra_fields", False)))

    @classmethod
    def load(cls, path: str | Path) -> Rules:
        """From a ``.yaml``/``.yml`` or ``.json`` file; a bad file is an ``InputError``."""
        p = Path(path)
        try:
            text = p.read_bytes()
        except FileNotFoundError:
            raise InputError(f"{p}: no such rules file") from None
        except OSError as e:
            raise InputError(f"{p}: cannot read ({e.strerror or e})") from None
        import strictconf

        if p.suffix.lower() == ".json":
            try:
                d = orjson.loads(text)
            except orjson.JSONDecodeError as e:
                raise InputError(f"{p}: not valid JSON ({str(e).splitlines()[0]})") from None
        else:
            d = strictconf.parse_yaml(text, file=p, error=InputError)
        schema = {"version": int, "allow_extra_fields": bool, "headers": strictconf.MapOf(str),
                  "fields": [{"endpoint": str, "field": str, "kinds": (str, [str]),
                              "reason": str}]}
        strictconf.check(d, schema, file=p, error=InputError)
        return cls.from_dict(d or {}, str(p))

    def save(self, path: str | Path) -> None:
        p = Path(path)
        d = self.to_dict()
        if p.suffix.lower() == ".json":
            p.write_bytes(orjson.dumps(d, option=orjson.OPT_INDENT_2) + b"\n")
            return
        import yaml

        head = ("# shadowtap noise rules (docs/replay.md). Edit freely: header modes are exact,\n"
                "# presence, names or ignore; field rules are globs over endpoint and field.\n")
        p.write_text(head + yaml.safe_dump(d, sort_keys=False, allow_unicode=True, width=100))


_EXTRA_RULE = FieldRule("*", "body:*", ("extra",), "allow_extra_fields")

# ---------------------------------------------------------------------------------------------
# Endpoints

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_INT = re.compile(r"[+-]?\d+\Z")
_HEX = re.compile(r"(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\Z")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_TOKEN = re.compile(r"(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_\-]{24,}\Z")


_DIGIT = re.compile(r"\d")
_PARTS = re.compile(r"([-_.~,]+)")
_SLUG_WORD = re.compile(r"(?:[^\W\d_]|%[0-9A-Fa-f]{2})+\Z")


def _part(p: str) -> str:
    """One part of a segment split at ``-_.~,``: long numbers and fingerprints become
    placeholders, words stay."""
    if len(p) >= 3 and p.isdigit():
        return "{id}"
    if _HEX.match(p):
        return "{hash}"
    return p


def _segment(s: str) -> str:
    if not s:
        return s
    if _INT.match(s):
        return "{id}"
    if len(s) == 36 and _UUID.match(s):
        return "{uuid}"
    if _HEX.match(s):
        return "{hash}"
    if _DATE.match(s):
        return "{date}"
    if _TOKEN.match(s):
        return "{token}"
    if not _DIGIT.search(s):
        return s
    # Ids inside a segment: product slugs (``red-shoe-966070``) and fingerprinted assets
    # (``app.5c91361f.css``, ``301120_640.png``). Left apart, every product or build is an
    # endpoint of its own with a sample or two, which no test can judge.
    parts = _PARTS.split(s)
    out = [_part(p) if i % 2 == 0 else p for i, p in enumerate(parts)]
    if out == parts:
        return s
    words = [p for i, p in enumerate(out) if i % 2 == 0]
    if (all(p in ("{id}", "{hash}") or _SLUG_WORD.match(p) for p in words)
            and all(sep in ("-", "_") for sep in out[1::2])
            and any(p not in ("{id}", "{hash}") for p in words)):
        return "{slug}"  # words and an id: a slug, whatever its words are
    return "".join(out)


_EP_CACHE: dict[tuple[str, str], str] = {}


def endpoint_of(method: str, target: str) -> str:
    """``GET /users/{id}/orders/{uuid}``: method + path template (query dropped), so requests to
    the same handler are counted together."""
    key = (method, target)
    ep = _EP_CACHE.get(key)
    if ep is not None:
        return ep
    path = target
    if absolute_form(path):
        rest = path.split("://", 1)[1]
        i = rest.find("/")
        path = rest[i:] if i >= 0 else "/"
    path = path.split("?", 1)[0].split("#", 1)[0]
    ep = f"{method.upper()} " + "/".join(_segment(s) for s in path.split("/"))
    if len(_EP_CACHE) > 200_000:
        _EP_CACHE.clear()
    _EP_CACHE[key] = ep
    return ep


# ---------------------------------------------------------------------------------------------
# Preparing a response: decode, classify, parse (once, reused for every comparison)


def decode_body(body: bytes, encodings: Iterable[str]) -> tuple[bytes, str | None]:
    """Undo Content-Encoding (applied in order, so undone in reverse). Returns the bytes and an
    error note when a coding is unknown or broken (the raw bytes are then compared)."""
    codings = [c.strip().lower() for e in encodings for c in e.split(",") if c.strip()]
    data = body
    for c in reversed(codings):
        try:
            if c in ("gzip", "x-gzip"):
                data = zlib.decompress(data, 47)  # gzip or zlib header, auto
            elif c == "deflate":
                try:
                    data = zlib.decompress(data)
                except zlib.error:
                    data = zlib.decompress(data, -15)  # raw deflate, as some servers send
            elif c == "br":
                import brotli

                data = brotli.decompress(data)
            elif c == "identity":
                continue
            else:
                return body, f"unknown content-encoding {c!r}"
        except Exception as e:
            return body, f"broken {c} body ({e})"
    return data, None


class _Layout:
    """What a list of header names says, worked out once per distinct list: one server answers
    with the same names in the same order again and again, so lower-casing the names and finding
    Content-Type and Content-Encoding is one dict lookup per response instead of a loop."""

    __slots__ = ("ctype", "encodings", "lower")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.lower = tuple(n.lower() for n in names)
        self.ctype = self.lower.index("content-type") if "content-type" in self.lower else -1
        self.encodings = tuple(i for i, n in enumerate(self.lower) if n == "content-encoding")


_LAYOUTS: dict[tuple[str, ...], _Layout] = {}
_name = itemgetter(0)


def _layout(headers: Headers) -> _Layout:
    names = tuple(map(_name, headers))
    lay = _LAYOUTS.get(names)
    if lay is None:
        if len(_LAYOUTS) >= 4096:  # bounded: a client sending random header names cannot grow it
            _LAYOUTS.clear()
        lay = _LAYOUTS[names] = _Layout(names)
    return lay


_orjson_loads = orjson.loads


def _split(body: bytes, raw: Any = None, loads: Any = None) -> Any:
    """A JSON object or array body one level deep (``Prepared.lazy``): msgspec's split, the
    definition of ``replay/_compare.c``'s ``split``, which gives the same for a body simdjson
    accepts (None where it cannot)."""
    return _raw_object(body) if body[0] == 123 else _raw_array(body)


_csplit: Any = load_c("replay._compare", "split") if _simd is not None else None
_chead: Any = load_c("replay._compare", "head") if _simd is not None else None
"""``replay/_compare.c``'s ``head`` (see ``_show_head``); None runs the definition (the whole
value parsed and written)."""

_UNSET: Any = object()
_TEXT: Any = object()
"""``Prepared._doc`` of a text body not decoded yet (UTF-8, else Latin-1): its kind is known
without decoding it, and the text is only needed when two text bodies differ, or for a report."""
_REPLACED: Any = object()
"""``Prepared._doc`` of a body that says JSON and is not, not decoded yet (UTF-8 with
replacement characters)."""


class Prepared:
    """A response ready to compare: its headers as received with their names' layout, the
    decoded body, its kind and parsed form. The lower-cased header dict is built only when
    asked for (reports, and headers whose names differ between the two sides).

    A JSON object or array body is held *shallow* (``lazy``, see ``prepare``) and parsed whole
    with orjson only if ``doc`` is asked for: a comparison parses just the members whose bytes
    differ from the other side's. Whether such a body is JSON to orjson is settled when first
    needed (``kind``; see ``_check``), and a comparison settles it for one side by the other."""

    __slots__ = ("_checked", "_doc", "_kind", "body", "ctype", "decode_error", "grpc", "layout",
                 "lazy", "raw_headers", "status")

    def __init__(self, status: int, raw_headers: Headers, layout: _Layout, ctype: str, kind: str,
                 body: bytes, doc: Any = None, decode_error: str | None = None,
                 lazy: Any = None, checked: bool = True, grpc: int | None = None) -> None:
        self.status = status
        self.grpc = grpc
        """A gRPC answer's grpc-status (trailers, or a trailers-only head), compared like the
        HTTP status; None for anything else."""
        self.raw_headers = raw_headers
        self.layout = layout
        self.ctype = ctype
        """The first Content-Type, lower-cased ("" when absent): with the body, it fixes the
        kind."""
        self._kind = kind
        self.body = body
        self._doc = doc
        self.decode_error = decode_error
        self.lazy = lazy
        """A JSON object body one level deep (scalar members as values, arrays as
        ``list[Raw]``, objects as ``dict[str, Raw]``) or an array body as ``list[Raw]``, where
        each ``msgspec.Raw`` is a member's or element's JSON text, a slice of ``body``; or
        None (the body is parsed whole, or is not JSON)."""
        self._checked = checked

    @property
    def kind(self) -> str:
        """``json``, ``text``, ``binary`` or ``empty``."""
        if not self._checked:
            self._check()
        return self._kind

    @property
    def doc(self) -> Any:
        """The parsed form: the JSON document (orjson), the text, or None."""
        d = self._doc
        if d is _UNSET:
            d = self._doc = orjson.loads(self.body)
        elif d is _TEXT:
            d = self._doc = _text(self.body)
        elif d is _REPLACED:
            d = self._doc = self.body.decode("utf-8", "replace")
        return d

    def _check(self) -> None:
        """Settle a shallow body's kind: msgspec skips nested values without checking all that
        orjson checks (UTF-8 inside strings, numbers overflowing to infinity) and decodes
        integers beyond 64 bits as ``int`` where orjson gives a float, so the whole body goes
        through simdjson, which accepts nothing orjson refuses (a byte-order mark cannot come
        first here) and refuses integers beyond 64 bits. What it refuses, orjson decides, as
        for any other body."""
        self._checked = True
        try:
            _simd.parse(self.body)  # the proxy it returns is dropped at once
            return
        except Exception:
            pass
        self.lazy = None
        self._kind, self._doc = _parse(self.body, self.ctype)

    def __repr__(self) -> str:
        return (f"Prepared(status={self.status}, kind={self._kind!r}, ctype={self.ctype!r}, "
                f"body={len(self.body)} bytes)")

    @property
    def headers(self) -> dict[str, list[str]]:
        """Lower-cased name → its values in order."""
        out: dict[str, list[str]] = {}
        for lk, (_, v) in zip(self.layout.lower, self.raw_headers, strict=True):
            lst = out.get(lk)
            if lst is None:
                out[lk] = [v]
            else:
                lst.append(v)
        return out


_TEXTY = ("text/", "xml", "javascript", "x-www-form-urlencoded", "csv", "yaml")


def prepare(resp: Response, like: Prepared | None = None, path: str = "") -> Prepared:
    """Decode, classify and parse ``resp``. ``like``: an already prepared answer to the same
    request (the primary); when the decoded body is the same bytes under the same Content-Type,
    its kind and parsed document are reused instead of parsing again (a secondary running
    production's build often answers byte for byte what production did). ``path``: the
    request's, for a gRPC answer (its messages are decoded by the method's output type when
    descriptors are loaded, ``replay.h2.grpc``)."""
    raw = resp.headers
    lay = _layout(raw)
    body = resp.body
    err = None
    if lay.encodings and body:
        body, err = decode_body(body, [raw[i][1] for i in lay.encodings])
    ct = raw[lay.ctype][1].lower() if lay.ctype >= 0 else ""
    if ct.startswith("application/grpc"):
        return _prepare_grpc(resp, raw, lay, ct, body, err, like, path)
    if not body:
        return Prepared(resp.status, raw, lay, ct, "empty", body, None, err)
    if like is not None and like.ctype == ct and like.body == body:
        return Prepared(resp.status, raw, lay, ct, like._kind, body, like._doc, err, like.lazy,
                        like._checked)
    if len(body) > _SMALL_BODY:
        return _prepare_body(resp.status, raw, lay, ct, body, err)
    key = (ct, body)
    got = _SMALL.get(key)
    if got is None:
        p = _prepare_body(resp.status, raw, lay, ct, body, err)
        if len(_SMALL) >= 4096:
            _SMALL.clear()
        _SMALL[key] = (p._kind, p._doc, p.lazy, p._checked)
        return p
    return Prepared(resp.status, raw, lay, ct, got[0], body, got[1], err, got[2], got[3])


_SMALL_BODY = 1024
_SMALL: dict[tuple[str, bytes], tuple[str, Any, Any, bool]] = {}
"""What ``_prepare_body`` made of a small body under a Content-Type (its kind, parsed form,
shallow form, whether checked): nothing else goes into them, and a shadow answers many
requests with the same few bytes (an error, an empty list). Documents are shared, as with
``like``, never changed."""


def _prepare_body(status: int, raw: Headers, lay: _Layout, ct: str, body: bytes,
                  err: str | None) -> Prepared:
    """``prepare`` for a decoded, non-empty body that is not gRPC."""
    if "json" in ct or not ct:
        c = body[0]  # an object or an array: held shallow, JSON to msgspec (``Prepared.lazy``)
        if (c == 123 or c == 91) and _shallow_top is not None:  # "{" or "["
            if _csplit is not None:
                # Checked first (``Prepared._check``), then split by a plain scan for the
                # boundaries (``_split``): cheaper than msgspec's split and a check after it.
                try:
                    _simd.parse(body)  # the proxy it returns is dropped at once
                    ok = True
                except Exception:
                    ok = False
                if not ok:
                    kind, doc = _parse(body, ct)
                    return Prepared(status, raw, lay, ct, kind, body, doc, err)
                top = _csplit(body, _Raw, _orjson_loads)
                if top is not None:
                    return Prepared(status, raw, lay, ct, "json", body, _UNSET, err, top)
            try:
                top = _shallow_top(body) if c == 123 else _raw_array(body)
                return Prepared(status, raw, lay, ct, "json", body, _UNSET, err, top, False)
            except Exception:
                pass
    if "json" in ct:  # not an object or array, or not parsed shallow: orjson decides
        try:
            return Prepared(status, raw, lay, ct, "json", body, orjson.loads(body), err)
        except orjson.JSONDecodeError:
            pass
    kind, doc = _parse(body, ct)
    return Prepared(status, raw, lay, ct, kind, body, doc, err)


def _prepare_grpc(resp: Response, raw: Headers, lay: _Layout, ct: str, body: bytes,
                  err: str | None, like: Prepared | None, path: str) -> Prepared:
    """A gRPC answer: its messages decoded as protobuf into a JSON-like document (diffed field
    by field like a JSON body), its grpc-status apart (compared like the HTTP status)."""
    from replay.h2 import grpc

    code, _ = grpc.status_of(resp)
    if like is not None and like.ctype == ct and like.body == body and like._doc is not None:
        doc = like._doc
    else:
        doc = grpc.document(raw, body, path)
    return Prepared(resp.status, raw, lay, ct, "json" if body else "empty", body, doc, err,
                    grpc=code)


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("latin-1")


def _parse(body: bytes, ct: str) -> tuple[str, Any]:
    """The kind of a non-empty decoded body and its parsed form (JSON document, or text; a text
    whose kind does not depend on its decoding is decoded when first asked for, see ``_TEXT``)."""
    if "json" in ct or (not ct and body[:1] in (b"{", b"[")):
        try:
            return "json", orjson.loads(body)
        except orjson.JSONDecodeError:
            # Says JSON, is not: compare as text (the kinds differ if the other one parses).
            return "text", _REPLACED
    if ct and any(t in ct for t in _TEXTY):  # text whatever its bytes: UTF-8, else Latin-1
        return "text", _TEXT
    if not ct:
        try:
            return "text", body.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return "binary", None


# ---------------------------------------------------------------------------------------------
# Comparing two prepared responses

Diff = tuple[str, str, Any, Any]
"""(field, kind, value in primary, value in other): values are for examples only."""

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")


def _jtype(v: Any) -> str:
    t = type(v)
    if t is dict:
        return "object"
    if t is list:
        return "array"
    if t is str:
        return "string"
    if t is bool:
        return "boolean"
    if t is int or t is float:
        return "number"
    return "null"


_SEGS: dict[str, str] = {}


def _seg(k: str) -> str:
    """A key's path segment (``.name`` or ``["odd key"]``), cached: the same keys recur."""
    seg = _SEGS.get(k)
    if seg is None:
        seg = f".{k}" if _IDENT.match(k) else "[" + orjson.dumps(k).decode() + "]"
        if len(_SEGS) < 50_000:
            _SEGS[k] = seg
    return seg


def _canon(v: Any) -> bytes:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS)


_SORTABLE = frozenset((str, int, float))


def _same_multiset(xs: list[Any] | tuple[Any, ...], ys: list[Any] | tuple[Any, ...]) -> bool:
    """Whether two sequences hold the same elements, counted, in any order. Those of one scalar
    type sort directly; anything else (mixed types, where ``1`` and ``1.0`` or ``true`` must
    stay apart) by canonical JSON bytes."""
    types = {*map(type, xs), *map(type, ys)}
    if len(types) == 1 and types <= _SORTABLE:
        return sorted(xs) == sorted(ys)
    return sorted(map(_canon, xs)) == sorted(map(_canon, ys))


_ABSENT = object()


def diff_json(a: Any, b: Any, path: str = "$", out: list[Diff] | None = None) -> list[Diff]:
    """Structural differences between two parsed JSON values, by field path. Array elements
    share one path (``[*]``) so that a field is counted once per response, whatever its index.

    Equal subtrees are skipped with one C-level ``==`` (the walk only descends where values
    differ), and path strings are only built for differences found."""
    if out is None:
        out = []
    ta = type(a)
    if ta is type(b):
        if ta is dict:
            _diff_dict(a, b, path, out)
        elif ta is list:
            _diff_list(a, b, path, out)
        elif a != b:
            out.append((path, "changed_value", a, b))
    elif (ja := _jtype(a)) != _jtype(b):
        out.append((path, "changed_type", a, b))
    elif ja != "object" and ja != "array" and a != b:  # int against float: one number type
        out.append((path, "changed_value", a, b))
    return out


def _diff_dict(a: dict[str, Any], b: dict[str, Any], path: str, out: list[Diff]) -> None:
    missing = 0
    get = b.get
    for k, va in a.items():
        vb = get(k, _ABSENT)
        if vb is _ABSENT:
            missing += 1
            out.append((path + (_SEGS.get(k) or _seg(k)), "missing", va, None))
            continue
        tv = type(va)
        if tv is type(vb):
            if va == vb:
                continue
            if tv is dict:
                _diff_dict(va, vb, path + (_SEGS.get(k) or _seg(k)), out)
            elif tv is list:
                _diff_list(va, vb, path + (_SEGS.get(k) or _seg(k)), out)
            else:  # a leaf: no need to recurse
                out.append((path + (_SEGS.get(k) or _seg(k)), "changed_value", va, vb))
        else:  # ``true`` against ``1`` is equal to Python yet a changed type to JSON
            diff_json(va, vb, path + (_SEGS.get(k) or _seg(k)), out)
    if len(b) > len(a) - missing:  # b has keys a lacks
        for k, vb in b.items():
            if k not in a:
                out.append((path + (_SEGS.get(k) or _seg(k)), "extra", None, vb))


def _diff_list(a: list[Any], b: list[Any], path: str, out: list[Diff]) -> None:
    if len(a) != len(b):
        out.append((path, "array_length", len(a), len(b)))
        return
    # Positions that differ; the array is a reordering when the elements at those positions
    # are the same multiset (equal positions match already), which needs at least two.
    diff_at = list(compress(range(len(a)), map(ne, a, b)))  # all in C
    if not diff_at:
        return
    if len(diff_at) > 1:
        if len(diff_at) == len(a):
            xs, ys = a, b
        else:
            pick = itemgetter(*diff_at)
            xs, ys = pick(a), pick(b)
        if _same_multiset(xs, ys):
            out.append((path, "array_order", a, b))
            return
    sub = path + "[*]"
    for i in diff_at:
        va = a[i]
        vb = b[i]
        tv = type(va)
        if tv is type(vb) and tv is not dict and tv is not list:
            out.append((sub, "changed_value", va, vb))
        else:
            diff_json(va, vb, sub, out)


# The same walk over shallow documents (``Prepared.lazy``). A JSON object body is decoded one
# level deep: its scalar members as values, its arrays as ``list[Raw]`` and its objects as
# ``dict[str, Raw]``, where each ``Raw`` is an element's or member's JSON text (a slice of the
# body); an array body is a ``list[Raw]``. Equal bytes are equal values and are skipped
# unparsed; raw text whose bytes differ is parsed with orjson and handed to the walk above, or,
# when both sides are large objects or arrays, split one level further the same way. Unequal
# bytes need not be unequal values (key order, ``1.0`` against ``1``, escapes, whitespace): the
# parsed values decide, so every finding is the one ``diff_json`` makes on the whole parsed
# documents, values included.

_SPLIT_MIN = 96
"""Raw members at least this long on both sides are split a level further instead of parsed
whole (below it, parsing both is cheaper than splitting)."""


_SMALL_ARRAY = 6
"""Arrays of at most this many elements are parsed whole once their bytes differ."""



def _loads(r: Any) -> Any:
    return _orjson_loads(bytes(r))


def _loads_all(raws: Any) -> list[Any]:
    """Several raw values parsed in one orjson call (each as it would be on its own)."""
    return orjson.loads(b"[" + b",".join(raws) + b"]")


def _full(v: Any) -> Any:
    """A shallow value parsed whole."""
    t = type(v)
    if t is _Raw:
        return orjson.loads(bytes(v))
    if t is list:
        return _loads_all(v) if v else []
    if t is dict:
        return {k: orjson.loads(bytes(r)) for k, r in v.items()}
    return v


class _Later:
    """A finding's value left unparsed: a member present on one side only, whose value only a
    report's example shows. A body unlike the other side's (an error page against a
    document) is mostly such members; parsing them all would cost more than the comparison.
    Equal (``==``) to its parsed value, as which it is shown."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def value(self) -> Any:
        return _full(self.raw)

    def __eq__(self, other: object) -> bool:
        return self.value() == (other.value() if isinstance(other, _Later) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self.value())


def _later(v: Any) -> Any:
    """``v`` (a shallow member) as a finding's value: scalars as they are, the rest later."""
    t = type(v)
    return _Later(v) if t is _Raw or t is list or t is dict else v


def _member(va: Any, vb: Any, path: str, out: list[Diff]) -> None:
    """A member of two parsed objects, as ``_diff_dict`` treats one present on both sides."""
    tv = type(va)
    if tv is type(vb):
        if va == vb:
            return
        if tv is dict:
            _diff_dict(va, vb, path, out)
        elif tv is list:
            _diff_list(va, vb, path, out)
        else:
            out.append((path, "changed_value", va, vb))
    else:
        diff_json(va, vb, path, out)


def _raw_member(ra: Any, rb: Any, path: str, out: list[Diff]) -> None:
    """``_member`` for two members' raw text whose bytes differ."""
    if len(ra) >= _SPLIT_MIN and len(rb) >= _SPLIT_MIN:
        ca = memoryview(ra)[0]
        if ca == memoryview(rb)[0]:
            if ca == 91:  # "[": equal arrays give no finding, no equality test needed
                _shallow_list(_raw_array(ra), _raw_array(rb), path, out)
                return
            if ca == 123:  # "{"
                _shallow_object(_raw_object(ra), _raw_object(rb), path, out)
                return
    _member(_loads(ra), _loads(rb), path, out)


def _shallow_object(a: dict[str, Any], b: dict[str, Any], path: str, out: list[Diff]) -> None:
    """``_member`` for two shallow objects: nothing when they are equal (``==``), else
    ``_diff_dict``'s findings. A per-member walk sees ``true`` against ``1`` where ``==`` on
    the whole objects does not; only then can the first finding be a changed type."""
    n = len(out)
    _shallow_dict(a, b, path, out)
    if len(out) > n and out[n][1] == "changed_type" and _full(a) == _full(b):
        del out[n:]


def _shallow_dict(a: dict[str, Any], b: dict[str, Any], path: str, out: list[Diff]) -> None:
    """``_diff_dict`` over shallow members (msgspec keeps a repeated key's last value in its
    first place, as orjson does)."""
    missing = 0
    get = b.get
    for k, va in a.items():
        vb = get(k, _ABSENT)
        if vb is _ABSENT:
            missing += 1
            out.append((path + (_SEGS.get(k) or _seg(k)), "missing", _later(va), None))
            continue
        tv = type(va)
        if tv is type(vb):
            if va == vb:  # raw text: the same bytes; a parsed scalar: equal
                continue
            if tv is _Raw:
                _raw_member(va, vb, path + (_SEGS.get(k) or _seg(k)), out)
            elif tv is list:
                _shallow_list(va, vb, path + (_SEGS.get(k) or _seg(k)), out)
            elif tv is dict:
                _shallow_object(va, vb, path + (_SEGS.get(k) or _seg(k)), out)
            else:
                out.append((path + (_SEGS.get(k) or _seg(k)), "changed_value", va, vb))
        else:
            diff_json(_full(va), _full(vb), path + (_SEGS.get(k) or _seg(k)), out)
    if len(b) > len(a) - missing:
        for k, vb in b.items():
            if k not in a:
                out.append((path + (_SEGS.get(k) or _seg(k)), "extra", None, _later(vb)))


def _shallow_list(a: list[Any], b: list[Any], path: str, out: list[Diff]) -> None:
    """``_diff_list`` over raw elements: only those whose bytes differ are parsed."""
    n = len(a)
    if n != len(b):
        out.append((path, "array_length", n, len(b)))
        return
    if n <= _SMALL_ARRAY:  # parsing all of a few elements is cheaper than looking first
        _diff_list(_loads_all(a), _loads_all(b), path, out)
        return
    at = list(compress(range(n), map(ne, a, b)))  # positions whose bytes differ
    if not at:
        return
    if len(at) == 1:  # the common case: one element changed (a single one is no reordering)
        i = at[0]
        va = _orjson_loads(bytes(a[i]))
        vb = _orjson_loads(bytes(b[i]))
        if va == vb:
            return
        tv = type(va)
        if tv is type(vb):
            if tv is dict:
                _diff_dict(va, vb, path + "[*]", out)
            elif tv is list:
                _diff_list(va, vb, path + "[*]", out)
            else:
                out.append((path + "[*]", "changed_value", va, vb))
        else:
            diff_json(va, vb, path + "[*]", out)
        return
    if len(at) == n:  # every element's bytes differ: the arrays whole, the parsed walk
        _diff_list(_loads_all(a), _loads_all(b), path, out)
        return
    pick = itemgetter(*at)
    xs = _loads_all(pick(a))
    ys = _loads_all(pick(b))
    differ = list(map(ne, xs, ys))  # of those, positions whose values differ too
    if False in differ:
        if True not in differ:
            return
        xs = list(compress(xs, differ))
        ys = list(compress(ys, differ))
    if len(xs) > 1 and _same_multiset(xs, ys):
        out.append((path, "array_order", _loads_all(a), _loads_all(b)))
        return
    sub = path + "[*]"
    for va, vb in zip(xs, ys, strict=True):
        tv = type(va)
        if tv is type(vb) and tv is not dict and tv is not list:
            out.append((sub, "changed_value", va, vb))
        else:
            diff_json(va, vb, sub, out)


class Comparator:
    """Compares ``Prepared`` responses under ``Rules`` (header modes only; field rules are
    applied by ``ThreeWay``, which knows the endpoint)."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or Rules()

    def diff(self, a: Prepared, b: Prepared) -> list[Diff]:
        out: list[Diff] = []
        if a.status != b.status:
            # A different status is the difference: the headers and body of an error page
            # differing from a normal answer's are its consequences, not more findings.
            out.append(("status", "changed_value", a.status, b.status))
            return out
        if a.grpc != b.grpc:
            # gRPC's own status (trailers): the same, for a call
            out.append(("grpc-status", "changed_value", a.grpc, b.grpc))
            return out
        if a.raw_headers != b.raw_headers:  # the same list is the same in every mode
            if a.layout is b.layout:
                self._header_values(a.raw_headers, b.raw_headers, a.layout.lower, out)
            else:
                self._headers(a.headers, b.headers, out)
        if a.body != b.body and not (a.lazy is not None and b.lazy is not None
                                     and _shallow_json(a, b, out)):
            self._body(a, b, out)
        return out

    def compare(self, a: Response, b: Response) -> list[Diff]:
        """Convenience: prepare both and diff (the ``ThreeWay`` prepares primary once)."""
        pa = prepare(a)
        return self.diff(pa, prepare(b, like=pa))

    def _header_values(self, ha: Headers, hb: Headers, lower: tuple[str, ...],
                       out: list[Diff]) -> None:
        """Both sides carry the same names in the same order, so the per-name value lists
        differ exactly for the names at positions whose values differ: only those are looked
        at (no dicts built, nothing missing or extra)."""
        mode_of = self.rules.headers
        names: list[str] = []
        for name in compress(lower, map(ne, ha, hb)):
            mode = mode_of.get(name, "exact")
            if mode != "ignore" and mode != "presence" and name not in names:
                names.append(name)
        if len(names) > 1:
            names.sort(key=lower.index)  # in order of first appearance, as the dicts give
        for name in names:
            va = [v for n, (_, v) in zip(lower, ha, strict=True) if n == name]
            vb = [v for n, (_, v) in zip(lower, hb, strict=True) if n == name]
            if mode_of.get(name, "exact") == "exact" or _cookie_names(va) != _cookie_names(vb):
                out.append(("header:" + name, "changed_value", va, vb))

    def _headers(self, ha: dict[str, list[str]], hb: dict[str, list[str]], out: list[Diff]
                 ) -> None:
        mode_of = self.rules.headers
        for name, va in ha.items():
            mode = mode_of.get(name, "exact")
            if mode == "ignore":
                continue
            vb = hb.get(name)
            if vb is None:
                out.append(("header:" + name, "missing", va, None))
            elif va != vb and (mode == "exact" or (
                mode == "names" and _cookie_names(va) != _cookie_names(vb)
            )):
                out.append(("header:" + name, "changed_value", va, vb))
        if len(hb) != len(ha) or any(n not in ha for n in hb):
            for name, vb in hb.items():
                if name not in ha and mode_of.get(name, "exact") != "ignore":
                    out.append(("header:" + name, "extra", None, vb))

    def _body(self, a: Prepared, b: Prepared, out: list[Diff]) -> None:
        """Bodies whose decoded bytes differ, by kind (two shallow JSON bodies go to
        ``_shallow_json`` first)."""
        if a.kind != b.kind:
            out.append(("body", "changed_type", a.kind, b.kind))
            return
        if a.kind == "json":
            _json_body(a, b, out)
        elif a.kind == "text":
            if a.doc != b.doc:
                out.append(("body", "lines_changed", a.doc, b.doc))
        else:
            out.append(("body", "bytes_changed", a.body, b.body))


def _json_body(a: Prepared, b: Prepared, out: list[Diff]) -> None:
    """Two JSON bodies: the walk over their shallow forms when both have one, else over the
    parsed documents."""
    n = len(out)
    la = a.lazy
    lb = b.lazy
    if la is not None and lb is not None and type(la) is type(lb):
        if type(la) is dict:
            _shallow_dict(la, lb, "body:$", out)
        else:
            _shallow_list(la, lb, "body:$", out)
    else:
        diff_json(a.doc, b.doc, "body:$", out)
    # Python-equal documents are the same answer (``true`` against ``1`` deep inside is not
    # told apart, see the module docstring). Only changed types can be found in such a pair,
    # so any other first finding proves them unequal without the test.
    if len(out) > n and out[n][1] == "changed_type" and type(a.doc) is type(b.doc) \
            and a.doc == b.doc:
        del out[n:]


_I64_MIN = -(2**63)
_U64_MAX = 2**64 - 1


def _shallow_json(a: Prepared, b: Prepared, out: list[Diff]) -> bool:
    """Two shallow JSON bodies, at least one not yet checked (``Prepared._check``). One side is
    checked whole (the other one when it already is); the other is then checked by the walk
    itself where that is enough: every part of it the walk does not parse with orjson (or
    split further) has the same bytes as the part of the checked side it is compared with,
    known good. So when the walk completes, with no orjson error, no ``array_length`` finding
    (arrays whose elements it did not look at) and no top-level integer beyond 64 bits from
    that side in a finding (msgspec's ``int`` where orjson gives a float), that side is JSON to
    orjson and the findings are exact. Otherwise it is checked whole and the two compared
    again the ordinary way. False: not done here (the caller goes on)."""
    if a._checked:
        other, side = b, 3
    else:
        if not b._checked:
            b._check()  # the one prepared last: its bytes are likelier still in the cache
        other, side = a, 2
    if a.lazy is None or b.lazy is None or other._checked or type(a.lazy) is not type(b.lazy):
        return False  # the ordinary way settles whatever is left
    n = len(out)
    try:
        if type(a.lazy) is dict:
            _shallow_dict(a.lazy, b.lazy, "body:$", out)
        else:
            _shallow_list(a.lazy, b.lazy, "body:$", out)
        if len(out) > n and out[n][1] == "changed_type" and type(a.doc) is type(b.doc) \
                and a.doc == b.doc:  # as in ``_json_body``
            del out[n:]
    except (ValueError, _MsgspecError):
        del out[n:]
        other._check()
        return False
    unparsed = False
    for d in out[n:]:
        v = d[side]
        if d[1] == "array_length" or (type(v) is int and not _I64_MIN <= v <= _U64_MAX):
            del out[n:]
            other._check()
            return False
        if type(v) is _Later:
            unparsed = True
    if unparsed:
        # Members the walk left unparsed (``_Later``) were not checked by it: the side is
        # checked whole (simdjson, cheaper than parsing them), and compared again the
        # ordinary way if that finds it is not JSON to orjson after all.
        other._check()
        if other.lazy is None:
            del out[n:]
            return False
        return True
    other._checked = True
    return True


def _cookie_names(values: list[str]) -> list[str]:
    return sorted(v.split("=", 1)[0].strip() for v in values)


def _show_head(v: _Later, limit: int) -> str | None:
    """``describe_values``'s form of a long array left unparsed, from its first elements
    alone: JSON of a list is ``[`` and its elements' JSON joined by commas, so once those of
    the first few are ``limit`` characters long, that prefix is the (cut) form of the whole.
    None where that is not so or not known (the whole is then parsed): not a long array
    (``head``), or nested deep enough somewhere that orjson might refuse to write it."""
    raw = v.raw
    if _chead is None or type(raw) is not _Raw or len(raw) <= limit:
        return None
    body = bytes(raw)
    end = _chead(body, limit)
    if end < 0:
        return None
    try:
        s = orjson.dumps(orjson.loads(body[:end] + b"]")).decode()
    except Exception:
        return None
    if len(s) <= limit:  # without its "]", fewer than ``limit`` characters
        return None
    return s[: limit - 1] + "…"


def describe_values(kind: str, va: Any, vb: Any, limit: int = 400) -> tuple[str, str]:
    """Short human-readable forms of a difference's two sides (for reports)."""
    sa = sb = None
    if type(va) is _Later:
        sa = _show_head(va, limit)
        va = va.value() if sa is None else None
    if type(vb) is _Later:
        sb = _show_head(vb, limit)
        vb = vb.value() if sb is None else None
    if kind == "lines_changed" and isinstance(va, str) and isinstance(vb, str):
        lines = list(difflib.unified_diff(va.splitlines(), vb.splitlines(), "primary", "other",
                                          n=0, lineterm=""))[2:22]
        minus = "\n".join(x for x in lines if x.startswith("-"))
        plus = "\n".join(x for x in lines if x.startswith("+"))
        return minus[:limit], plus[:limit]
    if kind == "bytes_changed":
        return (f"{len(va)} bytes sha256:{hashlib.sha256(va).hexdigest()[:16]}",
                f"{len(vb)} bytes sha256:{hashlib.sha256(vb).hexdigest()[:16]}")

    def show(v: Any) -> str:
        if v is None and kind in ("extra", "missing"):
            return "(absent)"
        try:
            s = orjson.dumps(v).decode()
        except TypeError:
            s = repr(v)
        return s if len(s) <= limit else s[: limit - 1] + "…"

    return (show(va) if sa is None else sa), (show(vb) if sb is None else sb)


# ---------------------------------------------------------------------------------------------
# Three-way judgement


@dataclass(slots=True)
class _Key:
    """One (endpoint, field, kind): on how many compared requests the candidate and the
    secondary differ from primary, together and alone (``ruled`` counts the requests where
    either does, for a key a rule covers, instead). ``ix`` is its ordinal in ``ThreeWay.keys``
    (insertion order, never reused): what ``ThreeWay.patterns`` names it by."""

    endpoint: str
    field: str
    kind: str
    cand: int = 0
    sec: int = 0
    cand_only: int = 0
    sec_only: int = 0
    rule: FieldRule | None = None
    ruled: int = 0
    ix: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def fold(self) -> None:
        """Move the candidate's and secondary's counts into ``ruled`` (a rule covers this key
        after all): the requests where either differs are those where the secondary does plus
        those where only the candidate does."""
        self.ruled += self.sec + self.cand_only
        self.cand = self.sec = self.cand_only = self.sec_only = 0
        self.examples.clear()


@dataclass(slots=True)
class _Endpoint:
    name: str
    compared: int = 0
    candidate_errors: int = 0
    not_compared: int = 0


@dataclass
class Finding:
    """One (endpoint, field, kind) and its verdict: ``regression``, ``noise`` or ``undecided``."""

    endpoint: str
    field: str
    kind: str
    verdict: str
    compared: int
    candidate_diffs: int
    secondary_diffs: int | None
    p_value: float | None = None
    p_adjusted: float | None = None
    source: str = ""
    reason: str = ""
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "field": self.field,
            "kind": self.kind,
            "compared": self.compared,
            "candidate_diffs": self.candidate_diffs,
            "secondary_diffs": self.secondary_diffs,
            "candidate_rate": round(self.candidate_diffs / self.compared, 4)
            if self.compared else None,
            "secondary_rate": round(self.secondary_diffs / self.compared, 4)
            if self.compared and self.secondary_diffs is not None else None,
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "source": self.source,
            "reason": self.reason,
            "example_ids": [e["id"] for e in self.examples],
            "examples": self.examples,
        }


@dataclass
class Verdict:
    """The outcome of a three-way comparison, ready for reports."""

    regressions: list[Finding]
    noise: list[Finding]
    undecided: list[Finding]
    endpoints: list[dict[str, Any]]
    compared: int
    regression_requests: int
    three_way: bool
    test: dict[str, Any]

    @property
    def regression_rate(self) -> float:
        return self.regression_requests / self.compared if self.compared else 0.0


def _short(text: bytes | str, limit: int = 4000) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more)"


_SHOWN: dict[tuple[str, bytes], str] = {}
"""``_pretty``'s body text by kind and decoded body (a pure function of the two, gRPC apart):
one server answers many requests with the same bytes, and examples are shown of the first
requests of every difference, so the same body is often shown again. Bounded (entries, and
the size of a body kept)."""
_shown_bytes = 0


def _pretty(p: Prepared | None, err: str | None = None) -> dict[str, Any]:
    if p is None:
        return {"error": err or NO_ANSWER}
    kind = p.kind
    key: tuple[str, bytes] | None = None
    body: str | None = None
    if len(p.body) <= 65536 and not p.ctype.startswith("application/grpc"):
        key = (kind, p.body)
        body = _SHOWN.get(key)
    if body is None:
        if kind == "json":
            body = orjson.dumps(p.doc, option=orjson.OPT_INDENT_2).decode()
        elif kind == "binary":
            body = f"({len(p.body)} bytes, sha256 {hashlib.sha256(p.body).hexdigest()[:16]})"
        else:
            body = p.body.decode("utf-8", "replace")
        body = _short(body)
        if key is not None:
            global _shown_bytes
            if len(_SHOWN) >= 1024 or _shown_bytes > 8 << 20:
                _SHOWN.clear()
                _shown_bytes = 0
            _SHOWN[key] = body
            _shown_bytes += len(p.body) + len(body)
    d = {
        "status": p.status,
        "headers": [[k, v] for k, vs in p.headers.items() for v in vs],
        "body": body,
    }
    if p.grpc is not None:
        d["grpc_status"] = p.grpc
    return d


def _alike_headers(a: Headers, b: Headers, modes: dict[str, str]) -> bool:
    """Same names in the same order, and the same values wherever a difference would count
    (headers the rules ignore, such as Date, may differ): then any response is compared to
    both in the same way."""
    if a == b:
        return True
    if len(a) != len(b):
        return False
    for (na, va), (nb, vb) in zip(a, b, strict=True):
        if na != nb:
            return False
        if va != vb and modes.get(na.lower(), "exact") != "ignore":
            return False
    return True


class ThreeWay:
    """Accumulates comparisons of primary / candidate (/ secondary) and judges them.

    ``alpha``: family-wise error rate (Holm). ``min_samples``: an endpoint with fewer compared
    requests gets no verdict (its differences are ``undecided``), however strong they look.
    ``examples``: how many example requests to keep per difference.

    Mergeable: workers each comparing a disjoint share of the exchanges ship ``state()`` (plain
    data) to a parent, whose ``merge()`` (or ``ThreeWay.merged(states)``) adds them up; its
    ``verdict()`` is the one a single ThreeWay fed every exchange gives (findings, counts,
    p-values, endpoint rows, ``regression_requests``), in any merge order; only which example
    requests are shown can differ. ``shard`` is a label for callers that number their workers
    (``self.shard``); no result depends on it, nor does merging need one.

    ``regression_requests`` (how many distinct requests any regression hit) is counted exactly
    without keeping request ids: ``patterns`` maps each *set* of keys the candidate differed
    on in one request (key ordinals, sorted) to its number of requests, so the requests a set
    of regressions hit are those of the patterns that meet it. Memory grows with the number of
    distinct patterns, not with traffic: a regression or a noisy field repeats one pattern; the
    worst case, many fields the candidate changes independently at random on one endpoint, is
    one pattern per request (about what a list of request ids per key would hold).
    """

    def __init__(self, rules: Rules | None = None, *, alpha: float = 0.05,
                 min_samples: int = 10, examples: int = 3, three_way: bool = True,
                 shard: int | str = 0) -> None:
        self.rules = rules or Rules()
        self.comparator = Comparator(self.rules)
        self.alpha = alpha
        self.min_samples = max(1, min_samples)
        self.max_examples = examples
        self.three_way = three_way
        self.shard = shard
        self.keys: dict[tuple[str, str, str], _Key] = {}
        self._ep_keys: dict[str, dict[tuple[str, str], _Key]] = {}
        """``keys`` by endpoint, then (field, kind): the lookup ``add`` makes per difference
        (filled from ``keys``, whose entries are never removed)."""
        self.endpoints: dict[str, _Endpoint] = {}
        self.patterns: dict[tuple[int, ...], int] = {}
        self.compared = 0

    def _ep(self, name: str) -> _Endpoint:
        e = self.endpoints.get(name)
        if e is None:
            e = self.endpoints[name] = _Endpoint(name)
        return e

    def add(self, rid: str, request: Request, primary: Response,
            candidate: Response | str, secondary: Response | str | None = None,
            ep: str | None = None) -> None:
        """One request: the captured answer and the replayed ones. A ``str`` in place of a
        response is the error that replaced it (its kind). With ``three_way``, a request whose
        secondary failed is not compared (there is nothing to weigh the candidate against).
        ``ep``: the request's ``endpoint_of``, when the caller has it already."""
        if ep is None:
            ep = endpoint_of(request.method, request.target)
        e = self._ep(ep)
        if self.three_way and not isinstance(secondary, Response):
            e.not_compared += 1
            return
        self.compared += 1
        e.compared += 1
        path = request.path
        cand_ok = isinstance(candidate, Response)
        sec_ok = isinstance(secondary, Response)
        # The two shadows answered alike (common for endpoints the build did not change): the
        # secondary's differences are the candidate's, found once.
        alike = (cand_ok and sec_ok and secondary.status == candidate.status
                 and secondary.body == candidate.body
                 and secondary.trailers == candidate.trailers
                 and _alike_headers(candidate.headers, secondary.headers, self.rules.headers))
        P: Prepared | None = None
        C: Prepared | None = None
        S: Prepared | None = None
        cd: dict[tuple[str, str], Diff]
        sd: dict[tuple[str, str], Diff]
        pst = primary.status
        if ((not cand_ok or candidate.status != pst)
                and (not sec_ok or secondary.status != pst)):
            # No answer has production's status: that is every difference ``diff`` reports
            # (see ``Comparator.diff``), so nothing is prepared unless an example shows it.
            lazy = True
            if cand_ok:
                cd = {("status", "changed_value"): ("status", "changed_value", pst,
                                                    candidate.status)}
            else:
                cd = {}
            if alike:
                sd = cd
            elif sec_ok:
                sd = {("status", "changed_value"): ("status", "changed_value", pst,
                                                    secondary.status)}
            else:
                sd = {}
        else:
            lazy = False
            P = prepare(primary, path=path)
            diff = self.comparator.diff
            cd = {}
            if cand_ok:
                C = prepare(candidate, like=P, path=path)
                for d in diff(P, C):
                    cd.setdefault((d[0], d[1]), d)
            if alike:
                S = C
                sd = cd
            elif sec_ok:
                sd = {}
                S = prepare(secondary, like=P, path=path)
                for d in diff(P, S):
                    sd.setdefault((d[0], d[1]), d)
            else:
                sd = {}
        if not cand_ok:
            e.candidate_errors += 1
            cd[("response", NO_ANSWER)] = ("response", NO_ANSWER, pst, candidate)
        keys = self.keys
        by_fk = self._ep_keys.get(ep)
        if by_fk is None:
            by_fk = self._ep_keys[ep] = {}
        hit: list[int] = []
        shown: tuple | None = None
        same = sd is cd
        max_examples = self.max_examples
        for fk in cd.keys() | sd.keys():
            k = by_fk.get(fk)
            if k is None:
                key = (ep, fk[0], fk[1])
                k = keys.get(key)
                if k is None:
                    k = keys[key] = _Key(ep, fk[0], fk[1], ix=len(keys))
                    k.rule = self.rules.match(ep, fk[0], fk[1])
                by_fk[fk] = k
            if k.rule is not None:
                k.ruled += 1
                continue
            if same:
                in_c = in_s = True
            else:
                in_c = fk in cd
                in_s = fk in sd
            if in_c:
                k.cand += 1
                hit.append(k.ix)
                if not in_s:
                    k.cand_only += 1
                if len(k.examples) < max_examples:
                    d = cd[fk]
                    pa, pb = describe_values(fk[1], d[2], d[3])
                    if shown is None:  # the three bodies once per request, not per field
                        if lazy:
                            P = prepare(primary, path=path)
                            if cand_ok:
                                C = prepare(candidate, like=P, path=path)
                            if alike:
                                S = C
                            elif sec_ok:
                                S = prepare(secondary, like=P, path=path)
                        shown = (f"{request.method} {request.target}", _pretty(P),
                                 _pretty(C, candidate if isinstance(candidate, str) else None),
                                 _pretty(S) if S is not None else None)
                    k.examples.append({
                        "id": rid,
                        "request": shown[0],
                        "primary_value": pa,
                        "candidate_value": pb,
                        "primary": shown[1],
                        "candidate": shown[2],
                        "secondary": shown[3],
                    })
            if in_s:
                k.sec += 1
                if not in_c:
                    k.sec_only += 1
        if hit:
            hit.sort()
            sig = tuple(hit)
            self.patterns[sig] = self.patterns.get(sig, 0) + 1

    def state(self) -> dict[str, Any]:
        """Everything ``verdict()`` needs, as plain data (str, int, bool, None, lists, dicts
        with str keys: JSON, orjson and pickle carry it unchanged) for ``merge()`` elsewhere::

            {"version": 1, "three_way": bool, "compared": int,
             "endpoints": {name: {"compared", "candidate_errors", "not_compared"}},
             "keys": [{"endpoint", "field", "kind", "cand", "sec", "cand_only", "sec_only",
                       "ruled", "rule": bool, "examples": [...]}, ...],
             "patterns": [[[key position, ...], requests], ...]}

        ``rule`` says a rule covered the key here (its counts are then in ``ruled``); the
        receiver matches its own rules. A pattern's positions index ``keys``. The examples are
        shared with this instance, not copied (nothing changes them once made)."""
        return {
            "version": 1,
            "three_way": self.three_way,
            "compared": self.compared,
            "endpoints": {e.name: {"compared": e.compared,
                                   "candidate_errors": e.candidate_errors,
                                   "not_compared": e.not_compared}
                          for e in self.endpoints.values()},
            # ``ix`` is the insertion ordinal, so position in this list == ix
            "keys": [{"endpoint": k.endpoint, "field": k.field, "kind": k.kind,
                      "cand": k.cand, "sec": k.sec, "cand_only": k.cand_only,
                      "sec_only": k.sec_only, "ruled": k.ruled, "rule": k.rule is not None,
                      "examples": list(k.examples)}
                     for k in self.keys.values()],
            "patterns": [[list(sig), n] for sig, n in self.patterns.items()],
        }

    def merge(self, state: dict[str, Any]) -> None:
        """Add another ThreeWay's ``state()`` (of disjoint exchanges) into this one: counts add,
        examples fill up to this instance's ``examples``. Rules are this instance's: a key they
        cover has the other side's counts folded into ``ruled``; a key only the other side's
        rules covered stays covered (its split into candidate and secondary is gone), with a
        stand-in rule saying so. An empty state (or ``{}``) changes nothing."""
        if not state:
            return
        if state.get("version", 1) != 1:
            raise ValueError(f"ThreeWay state version {state.get('version')!r}: this build "
                             "reads version 1")
        tw = state.get("three_way", self.three_way)
        if bool(tw) != self.three_way:
            raise ValueError(f"cannot merge a {'three' if tw else 'two'}-way state into a "
                             f"{'three' if self.three_way else 'two'}-way comparison")
        self.compared += state.get("compared", 0)
        for name, es in state.get("endpoints", {}).items():
            e = self._ep(name)
            e.compared += es["compared"]
            e.candidate_errors += es["candidate_errors"]
            e.not_compared += es["not_compared"]
        keys = self.keys
        local: list[int] = []
        for ks in state.get("keys", ()):
            key = (ks["endpoint"], ks["field"], ks["kind"])
            k = keys.get(key)
            if k is None:
                k = keys[key] = _Key(key[0], key[1], key[2], ix=len(keys))
                k.rule = self.rules.match(key[0], key[1], key[2])
            local.append(k.ix)
            if k.rule is None and ks["rule"]:
                k.rule = FieldRule(key[0], key[1], (key[2],),
                                   "covered by the rules of a merged comparison")
                k.fold()
            if k.rule is not None:
                k.ruled += ks["ruled"] + ks["sec"] + ks["cand_only"]
                continue
            k.cand += ks["cand"]
            k.sec += ks["sec"]
            k.cand_only += ks["cand_only"]
            k.sec_only += ks["sec_only"]
            room = self.max_examples - len(k.examples)
            if room > 0:
                k.examples.extend(ks["examples"][:room])
        patterns = self.patterns
        for positions, n in state.get("patterns", ()):
            sig = tuple(sorted([local[i] for i in positions]))
            patterns[sig] = patterns.get(sig, 0) + n

    @classmethod
    def merged(cls, states: Iterable[dict[str, Any] | None], rules: Rules | None = None,
               **kw: Any) -> ThreeWay:
        """A ThreeWay (``rules`` and ``kw`` as for the constructor) holding every one of
        ``states`` (``None`` entries skipped), ready for ``verdict()``."""
        tw = cls(rules, **kw)
        for st in states:
            if st:
                tw.merge(st)
        return tw

    def verdict(self) -> Verdict:
        """Judge every difference seen (see the module docstring for the test)."""
        regressions: list[Finding] = []
        noise: list[Finding] = []
        undecided: list[Finding] = []
        tested: list[tuple[_Key, float]] = []
        for k in self.keys.values():
            n = self.endpoints[k.endpoint].compared
            if k.rule is not None:
                noise.append(Finding(k.endpoint, k.field, k.kind, "noise", n, k.ruled,
                                     None, source="rules",
                                     reason=k.rule.reason or f"rule {k.rule.field}"))
                continue
            if k.cand == 0:
                noise.append(Finding(k.endpoint, k.field, k.kind, "noise", n, 0, k.sec,
                                     source="secondary",
                                     reason="only the secondary differs from production"))
                continue
            if self.three_way:
                tested.append((k, binom_sf_half(k.cand_only, k.cand_only + k.sec_only)))
            else:
                regressions.append(self._finding(k, n, "regression", source="two-way",
                                                 reason="differs from production; no secondary "
                                                        "to tell noise, not covered by rules"))
        if tested:
            adjusted = holm([p for _, p in tested])
            for (k, p), pa in zip(tested, adjusted, strict=True):
                n = self.endpoints[k.endpoint].compared
                if k.cand_only == 0:
                    # Wherever the candidate differs, the secondary does too: nothing here is
                    # the candidate's own doing, whatever the sample size.
                    noise.append(self._finding(
                        k, n, "noise", p, pa, "secondary",
                        f"the secondary differs on every request the candidate does "
                        f"({k.sec}/{n})"))
                elif n < self.min_samples:
                    undecided.append(self._finding(
                        k, n, "undecided", p, pa, "three-way",
                        f"{n} compared requests, fewer than the minimum {self.min_samples}"))
                elif pa <= self.alpha:
                    regressions.append(self._finding(
                        k, n, "regression", p, pa, "three-way",
                        f"candidate differs in {k.cand}/{n}, secondary in {k.sec}/{n}"))
                elif k.sec > 0:
                    noise.append(self._finding(
                        k, n, "noise", p, pa, "secondary",
                        f"secondary differs too ({k.sec}/{n}); candidate {k.cand}/{n} is not "
                        f"significantly more (p={pa:.3g})"))
                else:
                    undecided.append(self._finding(
                        k, n, "undecided", p, pa, "three-way",
                        f"candidate differs in {k.cand}/{n}, not significant (p={pa:.3g})"))
        reg = {self.keys[(f.endpoint, f.field, f.kind)].ix for f in regressions}
        reg_requests = sum(n for sig, n in self.patterns.items()
                           if not reg.isdisjoint(sig)) if reg else 0
        eps = []
        for e in sorted(self.endpoints.values(), key=lambda x: x.name):
            eps.append({
                "endpoint": e.name,
                "compared": e.compared,
                "not_compared": e.not_compared,
                "candidate_errors": e.candidate_errors,
                "regressions": sum(1 for f in regressions if f.endpoint == e.name),
                "noise": sum(1 for f in noise if f.endpoint == e.name),
                "undecided": sum(1 for f in undecided if f.endpoint == e.name),
            })
        order = {"regression": 0}
        for lst in (regressions, noise, undecided):
            lst.sort(key=lambda f: (order.get(f.verdict, 1), f.endpoint, f.field, f.kind))
        return Verdict(regressions, noise, undecided, eps, self.compared, reg_requests,
                       self.three_way, self.test_description())

    def _finding(self, k: _Key, n: int, verdict: str, p: float | None = None,
                 pa: float | None = None, source: str = "", reason: str = "") -> Finding:
        return Finding(k.endpoint, k.field, k.kind, verdict, n, k.cand,
                       k.sec if self.three_way else None,
                       None if p is None else float(f"{p:.6g}"),
                       None if pa is None else float(f"{pa:.6g}"),
                       source, reason, list(k.examples))

    def test_description(self) -> dict[str, Any]:
        if not self.three_way:
            return {"name": "none (no secondary): differences not covered by rules are reported",
                    "min_samples": None, "alpha": None, "correction": None}
        return {
            "name": "exact one-sided McNemar test (binomial on discordant pairs, p=1/2)",
            "alpha": self.alpha,
            "correction": "Holm-Bonferroni over every (endpoint, field, kind) the candidate "
                          "changed",
            "min_samples": self.min_samples,
        }

    def learned_rules(self, verdict: Verdict, base: Rules | None = None) -> Rules:
        """``base`` (default: this run's rules) plus a field rule for every difference judged
        noise because the secondary showed it too."""
        src = base or self.rules
        out = Rules(headers=dict(src.headers), fields=list(src.fields),
                    allow_extra_fields=src.allow_extra_fields)
        have = {(r.endpoint, r.field, r.kinds) for r in out.fields}
        for f in verdict.noise:
            if f.source != "secondary" or not f.secondary_diffs:
                continue
            key = (f.endpoint, f.field, (f.kind,))
            if key in have:
                continue
            have.add(key)
            out.add(FieldRule(f.endpoint, f.field, (f.kind,),
                              f"learned: secondary differed from production in "
                              f"{f.secondary_diffs}/{f.compared} requests"))
        return out
