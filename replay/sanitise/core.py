"""The sanitiser: apply a Policy to Exchanges, sans-I/O.

``Sanitiser(policy, key).apply(ex)`` returns a new Exchange with every selected or detected value
dropped, masked or replaced by a keyed format-preserving pseudonym, or ``None`` when an exchange
rule drops the whole exchange. Requests, responses, interim responses and trailers all go through
the same code with the same key, so a response that echoes a request's e-mail carries the same
pseudonym and does not show up as a diff.

Speed (target: 20,000 exchanges/s on one core with 2 KB JSON bodies) shapes the code:

* header, cookie and query values are scanned as one joined blob; only when the blob has a hit
  are single values rescanned;
* a JSON body is parsed only when a name or path rule might apply (a cheap literal pre-check on
  the lower-cased body) or when it contains ``\\u`` escapes that could hide a value from the text
  scan; otherwise detectors run directly over the JSON text, which is safe because no detector
  matches a quote or a backslash, so a replacement can never break the document;
* rule selection by name is cached per (location, name);
* pseudonyms are cached (HMAC is the most expensive step and users recur).

Never an unmasked write: a body that cannot be decoded or parsed as its headers claim falls back
to a whole-body scan (or, by policy, its removal) and is counted in the report.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from replay.errors import InputError
from replay.model import ConnKey, Exchange, Headers, Request, Response
from replay.sanitise import bodies
from replay.sanitise.detectors import (
    NAME_STEMS,
    PAIR_DETECTORS,
    Detector,
    DetSet,
    is_ipv4,
    is_ipv6,
    scan,
)
from replay.sanitise.grpc import sanitise_grpc
from replay.sanitise.keyscan import KeyScan, trie
from replay.sanitise.policy import (
    FRAMING_HEADERS,
    LOCATIONS,
    Policy,
    Rule,
    json_path_matches,
    norm_name,
)
from replay.sanitise.pseudonym import Pseudonymiser, key_fingerprint

_H_VALUE, _H_SKIP, _H_COOKIE, _H_URL, _H_CTYPE, _H_CENC = range(6)
_URL_HEADERS = frozenset({"referer", "location", "content-location", "origin", "refresh"})
_ECHO_MIN = 6
"""Values shorter than this are not chased through the rest of the exchange (too many false
replacements of ordinary short strings)."""
_JSON_START = frozenset(b'{["-0123456789tfn')
_SAMPLES = 3
_CLEAN_MAX = 512
_MEMO_ENTRIES = 1 << 13
_CLEAN_ENTRIES = 1 << 14
_HMEMO_VALUE_MAX = 4096
"""Header lines up to this long are remembered (a session's Authorization, a user agent)."""


@dataclass
class SanitiseReport:
    """What the sanitiser did: counts per (rule, location), pseudonym samples, fallbacks.

    Samples are pseudonyms (or the mask), never originals, so the report is safe to share."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)
    exchanges_in: int = 0
    exchanges_out: int = 0
    exchanges_dropped: int = 0
    bodies_rewritten: int = 0
    key_id: str = ""
    _rec: list[tuple[str, str, bytes | None]] | None = field(default=None, repr=False)
    _full: set[str] = field(default_factory=set, repr=False)
    """Rules that have all their samples (the common case after the first few exchanges)."""
    """While set, every count is also appended here (the sanitiser memoises whole results)."""

    def count(self, rule: str, loc: str, sample: bytes | None) -> None:
        if self._rec is not None:
            self._rec.append((rule, loc, sample))
        k = (rule, loc)
        counts = self.counts
        counts[k] = counts.get(k, 0) + 1
        if sample is not None and rule not in self._full:
            s = self.samples.get(rule)
            if s is None:
                s = self.samples[rule] = []
            txt = sample[:80].decode("latin-1")
            if txt not in s:
                s.append(txt)
                if len(s) >= _SAMPLES:
                    self._full.add(rule)

    def replay(self, recorded: tuple[tuple[str, str, bytes | None], ...]) -> None:
        """Count again what a memoised step counted the first time."""
        for rule, loc, sample in recorded:
            self.count(rule, loc, sample)

    def fallback(self, reason: str) -> None:
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_rule(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (rule, _loc), n in self.counts.items():
            out[rule] = out.get(rule, 0) + n
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--report FILE`` and the appliance metrics)."""
        return {
            "exchanges": {
                "in": self.exchanges_in,
                "out": self.exchanges_out,
                "dropped": self.exchanges_dropped,
            },
            "bodies_rewritten": self.bodies_rewritten,
            "redactions": [
                {"rule": r, "location": loc, "count": n}
                for (r, loc), n in sorted(self.counts.items())
            ],
            "samples": {k: list(v) for k, v in sorted(self.samples.items())},
            "fallbacks": dict(sorted(self.fallbacks.items())),
            "key_id": self.key_id,
        }


class _Ctx:
    """Per-exchange state: originals already replaced, to be chased through later text."""

    __slots__ = ("dropped", "echo", "produced")

    def __init__(self) -> None:
        self.dropped: list[dict[str, Any]] | None = None
        """Bodies removed because nothing could look inside them: length and keyed hash."""
        self.echo: dict[bytes, bytes] = {}
        self.produced: set[bytes] = set()
        """Replacements written so far: a second, safety-net scan of the same text must not
        pseudonymise a pseudonym (which passes the same validators by design)."""


class _Drop(Exception):
    """Raised inside body handling when policy says a mismatching body drops the exchange."""


_DROP = object()


class Sanitiser:
    """Applies a Policy to Exchanges. One instance per stream; not thread-safe (caches)."""

    def __init__(self, policy: Policy, key: bytes | None) -> None:
        if policy.needs_key and not key:
            raise InputError(
                "this policy makes pseudonyms and needs a key: pass --key-file FILE or --key-env VAR"
            )
        # A mask/drop-only policy never derives anything from the key; any constant will do.
        self.pseudo = Pseudonymiser(key or b"\0" * 32)
        self.policy = policy
        self.report = SanitiseReport(key_id=key_fingerprint(key) if key else "")
        self._rules = policy.rules
        self._mask = policy.mask
        self._skip = FRAMING_HEADERS | policy.skip_headers
        # Per location: whole-value rules (selector, no detector), scoped detector rules
        # (selector + detector) and unscoped detector rules (tag = rule index).
        self._whole: dict[str, list[Rule]] = {loc: [] for loc in LOCATIONS}
        self._scoped: dict[str, list[tuple[int, Rule]]] = {loc: [] for loc in LOCATIONS}
        self._dets: dict[str, list[tuple[int, Detector]]] = {loc: [] for loc in LOCATIONS}
        for i, r in enumerate(self._rules):
            for loc in r.locations:
                if r.detector is None:
                    self._whole[loc].append(r)
                elif r.has_selector:
                    self._scoped[loc].append((i, r))
                else:
                    self._dets[loc].append((i, r.detector))
        body = self._dets["body"]
        # Detectors for the JSON text scan: json's plus body's (whole-body patterns), once each;
        # the name=value detectors only where a document holds text of that kind (below).
        in_json = {t for t, _d in self._dets["json"]}
        pairs = [(t, d) for t, d in body if d.name in PAIR_DETECTORS and t not in in_json]
        text_only = {t for t, _d in pairs}
        self._json_text_dets = DetSet(
            [(t, d) for t, d in _union(self._dets["json"], body) if t not in text_only]
        )
        self._json_pair_dets = DetSet(pairs)
        self._key = key or b""
        self._form_extra = DetSet(_minus(body, self._dets["form"]))
        self._mp_extra = DetSet(_minus(body, self._dets["multipart"]))
        self._frag_dets = DetSet(_union(self._dets["query"], self._dets["path"]))
        self._dets = {loc: DetSet(d) for loc, d in self._dets.items()}
        self._body_dets = self._dets["body"]
        # Literal pre-check for JSON name/path rules.
        self._json_rules = self._whole["json"] + [r for _i, r in self._scoped["json"]]
        self._json_always_parse = False
        lits: set[bytes] = set()
        stems: set[bytes] = set()
        for r in self._json_rules:
            if r.name_rx is not None:
                self._json_always_parse = True
            if r.name_fn is not None:
                stems.update(NAME_STEMS)  # every name the classifier could select holds one
            for n in r.raw_names:
                # the spellings a document may use: access_token, access-token, accesstoken
                # (the body is lower-cased first, so accessToken is the last one)
                for v in (n, n.replace("-", "_"), n.replace("_", "-"), norm_name(n)):
                    lits.add(v.encode("utf-8"))
            for steps in r.json_paths or ():
                keys = [a for k, a in steps if k == "key"]
                if keys:
                    lits.add(keys[-1].lower().encode("utf-8"))
                else:
                    self._json_always_parse = True
        # Array elements have no name: only rules with JSON paths can select them.
        self._json_by_path = any(r.json_paths for r in self._json_rules)
        self._json_name_cache: dict[str, tuple[Rule | None, list[tuple[int, Detector]]]] = {}
        self._json_bname_cache: dict[bytes, tuple[Rule | None, list[tuple[int, Detector]]]] = {}
        self._json_splice_ok = (
            bool(self._json_rules) and not self._json_by_path and not self._json_always_parse
        )
        # One pass over the lower-cased body: a quoted key from the rules, as a trie-shaped
        # alternation (re tries the branches of one position by first byte, so the cost barely
        # grows with the number of names).
        self._json_key_rx = re.compile(b'"' + trie(sorted(lits)) + b'"') if lits else None
        # The same keys followed by ':' (a member name, not a value) for in-place edits, and
        # every key holding a stem of a secret name when a rule selects names by their words.
        self._json_kv = KeyScan(lits, stems=stems) if lits or stems else None
        self._json_stems = bool(stems)
        # The client address in the connection key is personal data too: it follows the first
        # IP-detector rule (pseudonymised like any address in a body).
        self._ip_rules: dict[str, Rule] = {}
        for r in self._rules:
            det = r.detector
            if det is not None and det.name in ("ipv4", "ipv6") and r.action == "pseudonym":
                self._ip_rules.setdefault(r.detector.name, r)
        # A path segment after one naming a secret ('/reset/<token>') is replaced whole by the
        # first path rule with the high-entropy detector.
        self._url_token_rule: Rule | None = next(
            (r for r in self._rules
             if r.detector is not None and r.detector.name == "high_entropy"
             and "path" in r.locations and not r.has_selector), None)
        self._conn_cache: dict[str, tuple[Rule | None, bytes]] = {}
        self._conn_memo: dict[ConnKey, tuple[Rule | None, bytes, ConnKey]] = {}
        self._hkind: dict[str, tuple[int, str]] = {}
        self._hmemo: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._clean_targets: set[str] = set()
        self._ctype_cache: dict[str | None, tuple[str, dict[str, str]]] = {}
        """Content-Type value -> (body kind: json/form/multipart/text, parameters)."""
        self._cookie_cache: dict[tuple[str, bool], tuple[Any, list[Any], dict[bytes, bytes]]] = {}
        self._clean: dict[str, set[bytes]] = {loc: set() for loc in LOCATIONS}
        self._clean_whole: dict[str, set[bytes]] = {"query": set(), "form": set()}
        self._select_cache: dict[
            tuple[str, str], tuple[Rule | None, list[tuple[int, Detector]]]
        ] = {}

    # -- public API ------------------------------------------------------------------------------

    def apply(self, ex: Exchange) -> Exchange | None:
        """The sanitised copy of ``ex`` (the input is not modified), or None to drop it."""
        rep = self.report
        rep.exchanges_in += 1
        if self.policy.exchange_rules and self._exchange_dropped(ex):
            rep.exchanges_dropped += 1
            return None
        ctx = _Ctx()
        try:
            req = self._request(ex.request, ctx) if ex.request is not None else None
            resp = self._response(ex.response, ctx) if ex.response is not None else None
            interim = [self._response(r, ctx) for r in ex.interim] if ex.interim else ex.interim
        except _Drop:
            rep.exchanges_dropped += 1
            return None
        conn = ex.conn
        if conn is not None and self._ip_rules:
            conn = self._conn(conn)
        rep.exchanges_out += 1
        meta = ex.meta
        if ctx.dropped:
            meta = dict(meta)
            meta["sanitise_dropped_bodies"] = ctx.dropped
        if (
            req is ex.request
            and resp is ex.response
            and conn is ex.conn
            and (
                interim is ex.interim
                or all(a is b for a, b in zip(interim, ex.interim, strict=False))
            )
        ):
            return ex
        return Exchange(  # positional (hot path): the field order of replay.model.Exchange
            ex.id,
            conn,
            req,
            resp,
            list(interim),
            ex.ts_request_start,
            ex.ts_request_end,
            ex.ts_response_start,
            ex.ts_response_end,
            ex.completeness,
            ex.tunnel,
            dict(meta),  # later stages may annotate the copy, never the original
        )

    __call__ = apply

    def _conn(self, conn: ConnKey) -> ConnKey:
        """The client address is personal data: pseudonymise it like any address in a body
        (the server side is production's own address and stays, so replays can be routed).

        The new key is remembered per connection key (a connection carries many exchanges,
        and building a frozen dataclass costs more than looking one up)."""
        done = self._conn_memo.get(conn)
        if done is None:
            done = self._conn_new(conn)
            if done[0] is None:
                return conn
            if len(self._conn_memo) >= _MEMO_ENTRIES:
                self._conn_memo.clear()
            self._conn_memo[conn] = done
        rule, new_ip, new = done
        self.report.count(rule.name, "conn", new_ip)
        return new

    def _conn_new(self, conn: ConnKey) -> tuple[Rule | None, bytes, ConnKey]:
        """(rule, pseudonym, new key) for ``_conn``; the address pseudonym is cached per address
        (rule None: the address stays)."""
        hit = self._conn_cache.get(conn.client_ip)
        if hit is None:
            ip = conn.client_ip.encode("latin-1", "replace")
            fmt = "ipv6" if b":" in ip else "ipv4"
            rule = self._ip_rules.get(fmt)
            if rule is None or not (is_ipv4(ip) or is_ipv6(ip)):
                hit = (None, b"")
            else:
                hit = (rule, self.pseudo.pseudonym(fmt, ip))
            if len(self._conn_cache) > 4096:
                self._conn_cache.clear()
            self._conn_cache[conn.client_ip] = hit
        rule, new_ip = hit
        if rule is None:
            return None, b"", conn
        new = ConnKey(new_ip.decode("ascii"), conn.client_port, conn.server_ip, conn.server_port)
        return rule, new_ip, new

    # -- exchange rules --------------------------------------------------------------------------

    def _exchange_dropped(self, ex: Exchange) -> bool:
        """Whether an ``exchange`` rule drops this exchange (conditions are ANDed)."""
        req = ex.request
        for r in self.policy.exchange_rules:
            if r.method is not None and (req is None or req.method.upper() not in r.method):
                continue
            if r.path_rx is not None and (req is None or not r.path_rx.search(req.path)):
                continue
            if r.host_rx is not None and (req is None or not r.host_rx.search(req.host or "")):
                continue
            if r.status is not None and (ex.response is None or ex.response.status not in r.status):
                continue
            self.report.count(r.name, "exchange", None)
            return True
        return False

    # -- messages --------------------------------------------------------------------------------

    def _request(self, req: Request, ctx: _Ctx) -> Request:
        """A sanitised copy of a request (target, headers, body, trailers), or the same one."""
        target = self._target(req.target, ctx)
        headers, ctype, cenc = self._headers(req.headers, ctx)
        trailers = self._headers(req.trailers, ctx)[0] if req.trailers else req.trailers
        body, headers = self._message_body(headers, req.body, ctype, cenc, ctx)
        if (
            target is req.target
            and headers is req.headers
            and body is req.body
            and trailers is req.trailers
        ):
            return req
        return Request(req.method, target, req.version, headers, body, trailers)

    def _response(self, resp: Response, ctx: _Ctx) -> Response:
        """A sanitised copy of a response (headers, body, trailers), or the same one."""
        headers, ctype, cenc = self._headers(resp.headers, ctx)
        trailers = self._headers(resp.trailers, ctx)[0] if resp.trailers else resp.trailers
        body, headers = self._message_body(headers, resp.body, ctype, cenc, ctx)
        if headers is resp.headers and body is resp.body and trailers is resp.trailers:
            return resp
        return Response(resp.status, resp.reason, resp.version, headers, body, trailers)

    # -- selection -------------------------------------------------------------------------------

    def _select(self, loc: str, lname: str) -> tuple[Rule | None, list[tuple[int, Detector]]]:
        """(first whole-value rule selecting this name, scoped detectors for it), cached."""
        ck = (loc, lname)
        hit = self._select_cache.get(ck)
        if hit is not None:
            return hit
        whole = None
        for r in self._whole[loc]:
            if not r.has_selector or r.selects_name(lname):
                whole = r
                break
        scoped = [
            (i, r.detector)
            for i, r in self._scoped[loc]
            if r.detector is not None and r.selects_name(lname)
        ]
        res = (whole, scoped)
        if len(self._select_cache) > 4096:
            self._select_cache.clear()
        self._select_cache[ck] = res
        return res

    # -- actions ---------------------------------------------------------------------------------

    def _whole_value(self, rule: Rule, loc: str, value: bytes, ctx: _Ctx) -> bytes | None:
        """Apply a whole-value rule; None means drop the item."""
        if rule.action == "drop":
            self.report.count(rule.name, loc, None)
            new = None
        elif rule.action == "mask":
            new = self._mask
            self.report.count(rule.name, loc, new)
        else:
            if rule.fmt == "authorization":
                new = self._authorization(value)
            else:
                new = self.pseudo.pseudonym(rule.fmt, value)
            self.report.count(rule.name, loc, new)
        if len(value) >= _ECHO_MIN:
            ctx.echo[value] = self._mask if new is None else new
        if new:
            ctx.produced.add(new)
        return new

    def _authorization(self, value: bytes) -> bytes:
        """Scheme-aware: keep the scheme word, pseudonymise the credentials in their format."""
        scheme, sp, cred = value.partition(b" ")
        if not sp:
            return self.pseudo.pseudonym("token", value)
        ls = scheme.lower()
        cred = cred.strip()
        if ls == b"basic":
            new = self.pseudo.pseudonym("basic", cred)
        elif ls == b"bearer":
            new = self.pseudo.pseudonym("bearer", cred)
        else:
            new = self.pseudo.pseudonym("token", cred)
        return scheme + b" " + new

    def _replace_hits(
        self,
        loc: str,
        text: bytes,
        dets: list[tuple[int, Detector]],
        ctx: _Ctx,
        json_text: bool = False,
        skip: set[bytes] | None = None,
    ) -> bytes:
        """Scan ``text`` with ``dets`` and apply each hit's rule; returns ``text`` if no hit.

        With ``json_text`` the text is a JSON document: a hit outside any string (a card number
        written as a bare number) must stay valid JSON, so a mask becomes a quoted string, a drop
        becomes ``null`` and a pseudonym that is not a valid number is quoted."""
        if not dets or not text:
            return text
        hits = scan(text, dets)
        if not hits:
            return text
        out = []
        pos = 0
        rules = self._rules
        rep = self.report
        strings: list[tuple[int, int]] | None = None
        produced = ctx.produced
        has_bs = json_text and b"\\" in text
        for s, e, tag, det in hits:
            rule = rules[tag]
            if has_bs and s > 0:
                # the hit starts inside a JSON escape ('\njohn@x.com', '\u001fkey'): keep the
                # escape whole, or the replacement could write an invalid one
                s = _after_escape(text, s)
                if s >= e or s < pos:
                    continue
            if json_text and (det.name in PAIR_DETECTORS or det.name in _IN_STRINGS):
                # a name=value found in a JSON text is edited only inside a string ('"q":
                # "pw=x"', JSON in a string); outside one it is the document's own structure
                if strings is None:
                    strings = [m.span() for m in _JSON_STRING.finditer(text)]
                if not any(a < s and e < b for a, b in strings):
                    continue
            if s < pos:
                continue  # inside a number token a previous hit already replaced
            orig = text[s:e]
            if skip is not None and _already_done(orig, skip):
                continue
            if rule.action == "drop":
                new = b""
                rep.count(rule.name, loc, None)
            elif rule.action == "mask":
                new = self._mask
                rep.count(rule.name, loc, new)
            else:
                new = self.pseudo.pseudonym(det.fmt if rule.fmt == "auto" else rule.fmt, orig)
                rep.count(rule.name, loc, new)
            # Only a number-shaped hit can stand outside a string in valid JSON.
            if (
                json_text
                and orig[0] in _NUM_START
                and _JSON_NUM.fullmatch(orig)
                and (rule.action != "pseudonym" or not _JSON_NUM.fullmatch(new))
            ):
                if strings is None:
                    strings = [m.span() for m in _JSON_STRING.finditer(text)]
                if not any(a < s and e < b for a, b in strings):
                    new = b"null" if rule.action == "drop" else b'"' + new + b'"'
                    # the whole number token goes: '-"0123"' or '"0123".5' is not JSON
                    while s > pos and text[s - 1] in _NUM_CHARS:
                        s -= 1
                    while e < len(text) and text[e] in _NUM_CHARS:
                        e += 1
            # (no echo entry: the same detector finds the same value wherever it recurs)
            if new:
                produced.add(new)
            out.append(text[pos:s])
            out.append(new)
            pos = e
        if not out:
            return text  # every hit was skipped
        out.append(text[pos:])
        return b"".join(out)

    def _items(self, loc: str, items: list[tuple[str, bytes]], ctx: _Ctx) -> dict[int, Any]:
        """Sanitise named values at ``loc``. Returns {index: new bytes or _DROP} for changes.

        Values no rule selects by name are scanned as one joined blob; only a blob with a hit
        is rescanned value by value (most exchanges have no hit at all)."""
        out: dict[int, Any] = {}
        pending: list[int] = []
        for i, (lname, v) in enumerate(items):
            if not v:
                continue
            whole, scoped = self._select(loc, lname)
            if whole is not None:
                new = self._whole_value(whole, loc, v, ctx)
                out[i] = _DROP if new is None else new
            elif scoped:
                new = self._replace_hits(loc, v, scoped + self._dets[loc], ctx)
                if new is not v:
                    out[i] = new
            elif v[0] in b"{[" and self._json_rules:
                new = self._embedded_json(v, ctx)
                if new is None:
                    pending.append(i)
                else:
                    new = self._replace_hits(loc, new, self._dets[loc], ctx, skip=ctx.produced)
                    if new != v:
                        out[i] = new
            else:
                pending.append(i)
        dets = self._dets[loc]
        if not dets or not pending:
            return out
        clean = self._clean[loc]
        pending = [i for i in pending if items[i][1] not in clean]
        if not pending:
            return out
        if len(pending) == 1:
            i = pending[0]
            v = items[i][1]
            new = self._replace_hits(loc, v, dets, ctx)
            if new is not v:
                out[i] = new
            else:
                self._remember_clean(clean, v)
            return out
        blob = b"\n".join(items[i][1] for i in pending)
        hits = scan(blob, dets)
        if not hits:
            for i in pending:
                self._remember_clean(clean, items[i][1])
            return out
        starts = [h[0] for h in hits]
        pos = 0
        k = 0
        for i in pending:
            end = pos + len(items[i][1])
            while k < len(starts) and starts[k] < pos:
                k += 1
            if k < len(starts) and starts[k] <= end:
                v = items[i][1]
                new = self._replace_hits(loc, v, dets, ctx)
                if new is not v:
                    out[i] = new
            pos = end + 1
        return out

    @staticmethod
    def _remember_clean(clean: set[bytes], v: bytes) -> None:
        """Remember a short value no detector fires on: user agents, accept lists and the like
        recur in nearly every exchange, and a set lookup is far cheaper than a scan."""
        if len(v) <= _CLEAN_MAX:
            if len(clean) >= _CLEAN_ENTRIES:
                clean.clear()
            clean.add(v)

    # -- headers, cookies ------------------------------------------------------------------------

    def _headers(self, headers: Headers, ctx: _Ctx) -> tuple[Headers, str | None, str | None]:
        """Sanitise header values; also returns Content-Type and Content-Encoding (framing
        headers, never rewritten), found in the same pass.

        Most header lines recur verbatim (user agents, accept lists, a session's Authorization),
        so what a line needs is remembered per (name, value): skipped, clean, or its replacement
        with the counts, echo entries and pseudonyms it produced (replayed on a hit). URL
        headers depend on what this exchange already wrote and are done each time."""
        memo = self._hmemo
        ctype = cenc = None
        new: list[tuple[str, str]] | None = None
        drop: list[int] | None = None
        later: list[tuple[int, int]] | None = None  # URL and cookie lines, after the values
        rep = self.report
        for i, kv in enumerate(headers):
            rec = memo.get(kv)
            fresh = rec is None
            if fresh:
                rec = self._header_rec(kv)  # counted while it was worked out
            kind = rec[0]
            if kind == _H_SKIP:
                continue
            if kind == _H_VALUE:
                nv, counts, echo, produced = rec[1], rec[2], rec[3], rec[4]
                if counts and not fresh:
                    rep.replay(counts)
                if echo:
                    ctx.echo.update(echo)
                if produced:
                    ctx.produced.update(produced)
                if nv is not kv[1]:
                    if new is None:
                        new = list(headers)
                    if nv is None:
                        if drop is None:
                            drop = []
                        drop.append(i)
                    else:
                        new[i] = (kv[0], nv)
            elif kind == _H_CTYPE:
                if ctype is None:
                    ctype = kv[1]
            elif kind == _H_CENC:
                if cenc is None:
                    cenc = kv[1]
            elif later is None:
                later = [(i, kind)]
            else:
                later.append((i, kind))
        if later is not None:
            for i, kind in later:
                if kind == _H_URL:
                    new = self._url_header(headers, new, i, ctx)
            for i, kind in later:
                k, v = headers[i]
                if kind == _H_COOKIE:
                    nv = self._cookie_memo(v, k.lower() == "set-cookie", ctx)
                    if nv is v:
                        continue
                    if new is None:
                        new = list(headers)
                    if nv is None:
                        if drop is None:
                            drop = []
                        drop.append(i)
                    else:
                        new[i] = (k, nv)
        if new is None:
            return headers, ctype, cenc
        if drop:
            gone = set(drop)
            new = [h for i, h in enumerate(new) if i not in gone]
        if new == headers:
            return headers, ctype, cenc
        return new, ctype, cenc

    def _url_header(
        self, headers: Headers, new: list[tuple[str, str]] | None, i: int, ctx: _Ctx
    ) -> list[tuple[str, str]] | None:
        """A URL header (Referer, Location...): sanitised as a URL, then the header detectors
        over the whole URL (host, fragment...), skipping what the URL pass already wrote."""
        cur = headers[i][1]
        nv = self._url(cur, ctx)
        raw = _enc(nv)
        checked = self._replace_hits("header", raw, self._dets["header"], ctx, skip=ctx.produced)
        if checked is not raw:
            nv = _dec(checked, cur)
        if nv is cur:
            return new
        if new is None:
            new = list(headers)
        new[i] = (headers[i][0], nv)
        return new

    def _header_rec(self, kv: tuple[str, str]) -> tuple[Any, ...]:
        """What a header line needs (see ``_headers``), computed once and remembered.

        (kind,) for skipped, URL, cookie, Content-Type and Content-Encoding lines; for plain
        values (_H_VALUE, new value or the same str or None to drop, recorded counts, echo
        entries, pseudonyms written). A value is done on its own, like a value that a joined
        scan found a hit in; a clean one is remembered like ``_remember_clean`` does."""
        k, v = kv
        kk = self._hkind.get(k)
        kind, lk = kk if kk is not None else self._classify_header(k)
        if kind != _H_VALUE:
            rec: tuple[Any, ...] = (kind,)
        else:
            vb = _enc(v)
            sub = _Ctx()
            counts: list[tuple[str, str, bytes | None]] = []
            rep = self.report
            rep._rec = counts
            try:
                changes = self._items("header", [(lk, vb)], sub)
            finally:
                rep._rec = None
            if not changes:
                nv: str | None = v
            elif changes[0] is _DROP:
                nv = None
            else:
                nv = _dec(changes[0], v)
            rec = (_H_VALUE, nv, tuple(counts), dict(sub.echo), frozenset(sub.produced))
        if len(kv[1]) <= _HMEMO_VALUE_MAX:
            if len(self._hmemo) >= _MEMO_ENTRIES:
                self._hmemo.clear()
            self._hmemo[kv] = rec
        return rec

    def _classify_header(self, name: str) -> tuple[int, str]:
        """What to do with a header of this name (cached: names repeat in every message)."""
        lk = name.lower()
        if lk == "content-type":
            kind = _H_CTYPE
        elif lk == "content-encoding":
            kind = _H_CENC
        elif lk in self._skip:
            kind = _H_SKIP
        elif lk in ("cookie", "set-cookie"):
            kind = _H_COOKIE
        elif lk in _URL_HEADERS:
            whole, scoped = self._select("header", lk)
            # a rule that picks this header by name treats it as a plain value
            kind = _H_URL if whole is None and not scoped else _H_VALUE
        else:
            kind = _H_VALUE
        if len(self._hkind) > 4096:
            self._hkind.clear()
        self._hkind[name] = (kind, lk)
        return kind, lk

    def _cookie_memo(self, value: str, is_set: bool, ctx: _Ctx) -> str | None:
        """``_cookie_header`` memoised: a session sends the same Cookie header with every
        request. The result is a pure function of the value (and key), so a hit replays the
        recorded counts and echo entries and returns the same output."""
        key = (value, is_set)
        hit = self._cookie_cache.get(key)
        rep = self.report
        if hit is None:
            sub = _Ctx()
            rec: list[tuple[str, str, bytes | None]] = []
            rep._rec = rec
            try:
                new = self._cookie_header(value, is_set, sub)
            finally:
                rep._rec = None
            hit = (new, rec, sub.echo)
            if len(self._cookie_cache) >= _MEMO_ENTRIES:
                self._cookie_cache.clear()
            self._cookie_cache[key] = hit
        else:
            for r, loc, smp in hit[1]:
                rep.count(r, loc, smp)
        if hit[2]:
            ctx.echo.update(hit[2])
        return hit[0]

    def _cookie_header(self, value: str, is_set: bool, ctx: _Ctx) -> str | None:
        """Cookie: every pair; Set-Cookie: the first pair (attributes are not personal)."""
        raw = _enc(value)
        if is_set:
            pair, sep, attrs = raw.partition(b";")
            pairs = [pair]
        else:
            pairs = raw.split(b";")
        items = []
        for p in pairs:
            name, eq, val = p.partition(b"=")
            if not eq:
                name, val = b"", p
            items.append((name.strip().decode("latin-1").lower(), val.strip()))
        changes = self._items("cookie", items, ctx)
        if not changes:
            return value
        kept = []
        for j, p in enumerate(pairs):
            if j in changes:
                if changes[j] is _DROP:
                    continue
                name, eq, val = p.partition(b"=")
                lead = len(val) - len(val.lstrip())
                trail = len(val) - len(val.rstrip())
                val2 = val[:lead] + changes[j] + (val[len(val) - trail :] if trail else b"")
                kept.append(name + eq + val2 if eq else val2)
            else:
                kept.append(p)
        if not kept:
            return None
        if is_set:
            out = kept[0] + (b";" + attrs if sep else b"")
        else:
            out = b";".join(kept).lstrip()
        return _dec(out, value)

    # -- request target, URLs --------------------------------------------------------------------

    def _target(self, target: str, ctx: _Ctx) -> str:
        """The request-target: userinfo, path segments, query, fragment.

        Targets that went through untouched (no count, nothing written) are remembered: health
        checks, listings and asset URLs recur. Only while nothing was written in this exchange
        yet, since a safety-net scan skips what was (the request target comes first)."""
        if ctx.produced or ctx.echo:
            return self._url(target, ctx)
        clean = self._clean_targets
        if target in clean:
            return target
        rep = self.report
        rec: list[tuple[str, str, bytes | None]] = []
        rep._rec = rec
        try:
            new = self._url(target, ctx)
        finally:
            rep._rec = None
        clean_now = new is target and not rec and not ctx.produced and not ctx.echo
        if clean_now and len(target) <= _CLEAN_MAX:
            if len(clean) >= _CLEAN_ENTRIES:
                clean.clear()
            clean.add(target)
        return new

    def _url(self, url: str, ctx: _Ctx) -> str:
        """Sanitise userinfo, path segments and query parameters of a URL or request-target."""
        raw = _enc(url)
        prefix = b""
        rest = raw
        if b"://" in raw[:16]:
            scheme, _, after = raw.partition(b"://")
            slash = after.find(b"/")
            q = after.find(b"?")
            cut = min(x for x in (slash, q, len(after)) if x >= 0)
            authority = after[:cut]
            if b"@" in authority:
                userinfo, _, hostport = authority.rpartition(b"@")
                new_ui = self.pseudo.pseudonym("token", userinfo)
                self.report.count("userinfo", "path", new_ui)
                if len(userinfo) >= _ECHO_MIN:
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
        new_path = self._path(path, ctx)
        new_query = self._query(query, ctx) if qm else query
        new_frag = self._fragment(frag, ctx) if frag else frag
        if (
            new_path is path
            and new_query is query
            and new_frag is frag
            and (not prefix or prefix == raw[: len(prefix)])
        ):
            return url
        return _dec(prefix + new_path + qm + new_query + new_frag, url)

    def _fragment(self, frag: bytes, ctx: _Ctx) -> bytes:
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

    def _decoded_hits(
        self, loc: str, raw: bytes, dets: list[tuple[int, Detector]], ctx: _Ctx, safe: bytes
    ) -> bytes | None:
        """Detector hits in an encoded name, with '+' read as a space and as a literal; the
        re-encoded name, or None if neither reading has a hit."""
        for plus in (True, False):
            dec = bodies.unquote(raw, plus=plus)
            new = self._replace_hits(loc, dec, dets, ctx)
            if new is not dec:
                return bodies.quote(new, plus=plus, safe=safe if plus else safe + b"+")
        return None

    def _path(self, path: bytes, ctx: _Ctx) -> bytes:
        """Path segments: segment rules by position or value, then detectors."""
        whole = self._whole["path"]
        dets = self._dets["path"]
        if not whole and not dets:
            return path
        clean = self._clean["path"]
        if path in clean:
            return path  # this exact path went through unchanged before
        if (
            not whole
            and not scan(bodies.unquote(path, plus=False), dets)
            and (b"+" not in path or not scan(bodies.unquote(path, plus=True), dets))
            and (self._url_token_rule is None or _SECRET_SEG.search(path.lower()) is None)
        ):
            self._remember_clean(clean, path)
            return path
        segs = path.split(b"/")
        changed = False
        for i, seg in enumerate(segs):
            if not seg:
                continue
            dec = bodies.unquote(seg, plus=False) if b"%" in seg else seg
            new = dec
            done = False
            for r in whole:
                if (
                    r.segments is not None
                    and i - 1 not in r.segments
                    and (i - len(segs) not in r.segments)
                ):
                    continue
                if r.segment_rx is not None and not r.segment_rx.fullmatch(dec.decode("latin-1")):
                    continue
                v = self._whole_value(r, "path", dec, ctx)
                new = b"" if v is None else v
                done = True
                break
            if not done and i > 1 and self._url_token_rule is not None and _SECRET_SEG.search(
                segs[i - 1].lower()
            ) and _TOKEN_SEG.fullmatch(dec):
                # '/reset-password/<token>', '/verify/<uuid>': the segment after one naming a
                # secret is one, whatever its shape
                v = self._whole_value(self._url_token_rule, "path", dec, ctx)
                new = b"" if v is None else v
                done = True
            if not done:
                new = self._replace_hits("path", dec, dets, ctx)
                if new is dec and b"+" in seg:
                    # '+' is a literal in a path, but some clients write spaces that way
                    dplus = bodies.unquote(seg, plus=True)
                    np = self._replace_hits("path", dplus, dets, ctx)
                    if np is not dplus:
                        segs[i] = bodies.quote(np, plus=True, safe=b"@:!$&'()*,;=")
                        changed = True
                        continue
            if new is not dec:
                segs[i] = (
                    new if dec is seg else bodies.quote(new, plus=False, safe=b"@:!$&'()*+,;=")
                )
                changed = True
        if not changed:
            self._remember_clean(clean, path)
            return path
        return b"/".join(segs)

    def _query(self, query: bytes, ctx: _Ctx) -> bytes:
        """Query parameters (see ``_pairs``)."""
        if not query:
            return query
        return self._pairs("query", query, ctx, b"@:,/")

    def _pairs(self, loc: str, data: bytes, ctx: _Ctx, safe: bytes) -> bytes:
        """``k=v&k=v`` (query strings, form bodies): rules on the decoded names and values,
        then a safety-net scan of the raw text for what decoding hides or creates (a key
        without a value, '+' that decodes to a space in front of a phone number).

        Only changed pairs are re-encoded; the rest stay byte for byte."""
        clean = self._clean_whole[loc]  # whole strings: never mixed with single values
        if data in clean:
            return data  # this exact string went through unchanged before
        pairs = data.split(b"&")
        items = []
        encoded = []
        for p in pairs:
            k, _eq, v = p.partition(b"=")
            enc = b"%" in v or b"+" in v
            encoded.append(enc)
            name = bodies.unquote(k).decode("utf-8", "replace").lower() if k else ""
            items.append((name, bodies.unquote(v) if enc else v))
        changes = self._items(loc, items, ctx)
        dets = self._dets[loc]
        # Names written encoded ('%', '+') get their own look (the raw scan cannot see them),
        # and a '+' is tried both ways: clients write spaces as '+' but also a literal '+'
        # unencoded ('+44 20...' as '+44%2020...').
        if dets:
            for j, p in enumerate(pairs):
                if changes.get(j) is _DROP:
                    continue
                k, eq, v = p.partition(b"=")
                if b"%" in k or b"+" in k:
                    nk = self._decoded_hits(loc, k, dets, ctx, safe)
                    if nk is not None:
                        k = nk
                        pairs[j] = p = k + eq + v
                        changes.setdefault(j, None)
                if b"+" in v and changes.get(j) is None:  # value not already replaced
                    lit = bodies.unquote(v, plus=False)
                    nv = self._replace_hits(loc, lit, dets, ctx)
                    if nv is not lit:
                        pairs[j] = k + eq + bodies.quote(nv, plus=False, safe=safe + b"+")
                        changes[j] = None
        out = data
        if changes:
            parts = []
            for j, p in enumerate(pairs):
                c = changes.get(j, p) if j in changes else p
                if c is p or c is None:
                    parts.append(p)
                elif c is not _DROP:
                    k, _eq, _v = p.partition(b"=")
                    if encoded[j] or any(ch not in _QSAFE for ch in c):
                        c = bodies.quote(c, plus=True, safe=safe)
                    parts.append(k + b"=" + c)
            out = b"&".join(parts)
        if dets:
            out = self._replace_hits(loc, out, dets, ctx, skip=ctx.produced)
        if out == data:
            self._remember_clean(clean, data)
            return data
        return out

    # -- bodies ----------------------------------------------------------------------------------

    def _message_body(
        self, headers: Headers, body: bytes, ctype: str | None, cenc: str | None, ctx: _Ctx
    ) -> tuple[bytes, Headers]:
        """Sanitise a message body; returns (body, headers with Content-Length fixed)."""
        if not body:
            return body, headers
        if ctype is not None and ctype[:16].lower() == "application/grpc":
            new = self._grpc(headers, body, cenc, ctx)
        else:
            new = self._body(ctype, cenc, body, ctx)
        if new is body:
            return body, headers
        self.report.bodies_rewritten += 1
        out = []
        kinds = self._hkind  # (kind, lower-case name) of every name _headers has seen
        n = str(len(new))
        for h in headers:
            kk = kinds.get(h[0])
            lk = kk[1] if kk is not None else h[0].lower()
            out.append((h[0], n) if lk == "content-length" else h)
        return new, out

    def _body(self, ctype: str | None, cenc: str | None, body: bytes, ctx: _Ctx) -> bytes:
        """Undo content codings, sanitise by media type, redo the codings if changed."""
        codes = bodies.codings(cenc) if cenc else []
        ct = self._ctype_cache.get(ctype)
        if ct is None:
            mime, params = bodies.parse_content_type(ctype)
            ct = (bodies.body_kind(mime), params)
            if len(self._ctype_cache) > 1024:
                self._ctype_cache.clear()
            self._ctype_cache[ctype] = ct
        kind, params = ct
        inner = body
        if codes:
            try:
                inner = bodies.decode(body, codes)
            except bodies.BodyError as e:
                self.report.fallback(f"undecodable content-encoding: {str(e).split(' (')[0]}")
                return self._opaque(body, ctx)
        new = self._content(kind, params, inner, ctx)
        if new is inner:
            return body
        if not codes:
            return new
        if new == inner:
            return body
        return bodies.encode(new, codes)

    def _grpc(self, headers: Headers, body: bytes, cenc: str | None, ctx: _Ctx) -> bytes:
        """A gRPC body: walked message by message, every string field through the text scan,
        lengths and prefixes written anew (``replay.sanitise.grpc``); a body that does not walk
        is dropped with its length and keyed hash."""
        if cenc:  # gRPC compresses per message (grpc-encoding), not the whole body
            return self._opaque(body, ctx)
        enc = None
        for k, v in headers:
            if k.lower() == "grpc-encoding":
                enc = v
        new = sanitise_grpc(body, enc, lambda b: self._text(b, ctx))
        if new is None:
            self.report.fallback("gRPC body that does not walk as length-prefixed protobuf")
            return self._opaque(body, ctx)
        return new

    def _opaque(self, data: bytes, ctx: _Ctx) -> bytes:
        """A body nothing can look inside (a content coding that does not decode, or one not
        supported): never passed on. Dropped (the exchange too under ``on_mismatch:
        drop_exchange``); its length and a keyed hash are kept in the exchange's meta
        (``sanitise_dropped_bodies``), so two captures can still be compared."""
        if self.policy.on_mismatch == "drop_exchange":
            raise _Drop()
        digest = hmac.new(self._key or b"\0", data, hashlib.sha256).hexdigest()
        if ctx.dropped is None:
            ctx.dropped = []
        ctx.dropped.append({"length": len(data), "hmac_sha256": digest})
        return b""

    def _mismatch(self, data: bytes, ctx: _Ctx) -> bytes:
        """A body that is not what its headers say: scan it as text, or drop it, per policy."""
        how = self.policy.on_mismatch
        if how == "drop_exchange":
            raise _Drop()
        if how == "drop_body":
            return b""
        return self._text(data, ctx)

    def _text(self, data: bytes, ctx: _Ctx) -> bytes:
        """A body whose media type names no structure we parse (text/plain, none, XML, HTML,
        octet-stream...): JSON and NDJSON are recognised by content; everything else gets the
        whole-body scan (value detectors and name=value pairs) and the echo pass."""
        if self._json_rules or self._json_text_dets:
            first = data[:1]
            if first in b" \t\r\n" and first:
                first = data.lstrip()[:1]
            if first and first in b'{["':
                new = self._sniffed_json(data, ctx)
                if new is not None:
                    return new
        new = self._replace_hits("body", data, self._body_dets, ctx)
        return self._echo(new, ctx)

    def _sniffed_json(self, data: bytes, ctx: _Ctx) -> bytes | None:
        """JSON or NDJSON (one document per line) whatever the Content-Type said, or None."""
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            return self._json(data, ctx)
        if b"\n" not in data:
            return None
        lines = data.split(b"\n")
        out = []
        docs = 0
        for line in lines:
            st = line.strip()
            if st[:1] in (b"{", b"["):
                try:
                    orjson.loads(st)
                except orjson.JSONDecodeError:
                    return None  # not NDJSON: the text scan takes it
                docs += 1
                out.append(line)
            elif st:
                return None
            else:
                out.append(line)
        if docs < 1:
            return None
        new = [self._json(x, ctx) if x.strip() else x for x in out]
        if all(a is b for a, b in zip(new, out, strict=True)):
            return data
        return b"\n".join(new)

    def _embedded_json(self, value: bytes, ctx: _Ctx) -> bytes | None:
        """A JSON document inside a form field, a query parameter or a header value: the JSON
        treatment (names, detectors), or None if it is not JSON."""
        try:
            orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        return self._json(value, ctx)

    def _echo(self, data: bytes, ctx: _Ctx, json_text: bool = False) -> bytes:
        """Replace originals seen earlier in this exchange (e.g. a cookie echoed in a body).

        In a JSON text an original holding a backslash or a quote is not replaced: it could
        match across an escape and break the document (its JSON form is found by name)."""
        if not ctx.echo:
            return data
        for orig, new in ctx.echo.items():
            if orig in data:
                if json_text and (b"\\" in orig or b'"' in orig):
                    continue
                data = data.replace(orig, new)
                self.report.count("echo", "body", new)
        return data

    def _content(self, kind: str, params: dict[str, str], data: bytes, ctx: _Ctx) -> bytes:
        """Dispatch a decoded body to its structured handler by media type."""
        if kind == "json":
            return self._json(data, ctx)
        if kind == "form":
            return self._form(data, ctx)
        if kind == "multipart":
            return self._multipart(data, params.get("boundary", ""), ctx)
        return self._text(data, ctx)

    # -- JSON ------------------------------------------------------------------------------------

    def _json(self, data: bytes, ctx: _Ctx) -> bytes:
        """A JSON body: name/path rules only when the pre-check says they may apply, then the
        detectors over the document text (safe: no detector matches a quote or backslash)."""
        if not data:
            return data  # e.g. a compressed empty body
        first = data[0]
        if first not in _JSON_START:
            stripped = data.lstrip()
            first = stripped[0] if stripped else 0
        if first not in _JSON_START:
            self.report.fallback("body is not JSON as Content-Type says")
            return self._mismatch(data, ctx)
        backslash = b"\\" in data
        escaped = backslash and (b"\\u" in data or b"\\/" in data)
        text = data
        skip = None
        need_walk = False
        if self._json_rules:
            if self._json_always_parse or escaped:
                # name_regex rules need every key; escapes could hide a key from the pattern
                need_walk = True
            elif self._json_splice_ok and not backslash:
                spliced = self._json_splice(data, data.lower(), ctx)
                if spliced is None:
                    need_walk = True
                elif spliced is not data:
                    text = spliced
                    skip = ctx.produced  # never pseudonymise what a name rule just wrote
            elif self._json_key_rx is not None or self._json_stems:
                lo = data.lower()
                need_walk = (
                    self._json_key_rx is not None and self._json_key_rx.search(lo) is not None
                ) or (self._json_kv is not None and bool(self._json_kv.find(lo)))
        if need_walk or escaped:
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                self.report.fallback("body is not JSON as Content-Type says")
                return self._mismatch(data, ctx)
            changed = False
            if need_walk:
                doc, changed = self._walk(doc, (), ctx)
                skip = ctx.produced  # the detectors must not redo what a name rule wrote
            if changed or escaped:
                text = orjson.dumps(doc)
            if escaped and not changed:
                # Normalising escapes rewrites the document; only keep that if a detector hits.
                new = self._replace_hits(
                    "json", text, self._json_text_dets, ctx, json_text=True, skip=skip
                )
                if self._json_pair_dets and (b'\\"' in new or b"=" in new):
                    new = self._replace_hits(
                        "body", new, self._json_pair_dets, ctx, json_text=True, skip=ctx.produced
                    )
                if new is text:
                    return self._echo_keep(data, ctx)
                return self._echo(new, ctx, True)
        new = self._replace_hits("json", text, self._json_text_dets, ctx, json_text=True, skip=skip)
        if self._json_pair_dets and (b'\\"' in new or b"=" in new):
            # JSON or a form inside a string ('{"data": "{\\"password\\": \\"x\\"}"}',
            # '"q": "user=a&pw=x"'): the name=value detectors over the document text
            new = self._replace_hits(
                "body", new, self._json_pair_dets, ctx, json_text=True, skip=ctx.produced
            )
        if new is data:
            return self._echo_keep(data, ctx)
        return self._echo(new, ctx, True)

    def _json_splice(self, data: bytes, lo: bytes, ctx: _Ctx) -> bytes | None:
        """Name rules without parsing: find ``"name":`` with the key pattern and replace the
        string or number after it in place, keeping the document's formatting. Returns None
        (parse and walk instead) for anything less simple: a container, a float, a drop.

        Only used for documents without backslashes, so every quote is a real delimiter and a
        match is a real key (or, at worst, a key that merely ends in the name: masked too).
        Everything is planned first, so a fallback leaves no counts behind."""
        if self._json_kv is None:
            return data
        plan: list[tuple[int, int, Rule | None, list[tuple[int, Detector]], bytes, bool]] = []
        cache = self._json_bname_cache  # by the matched bytes: no decode per member
        n = len(data)
        for bname, vs in self._json_kv.find(lo):
            hit = cache.get(bname)
            if hit is None:
                hit = self._json_rule((), bname.decode("utf-8", "replace"))
                if len(cache) > 4096:
                    cache.clear()
                cache[bname] = hit
            whole, scoped = hit
            if whole is None and not scoped:
                continue
            if vs >= n:
                return None
            c = data[vs]
            if c == 34:  # '"'
                ve = data.find(b'"', vs + 1) + 1
                if ve == 0:
                    return None
                plan.append((vs, ve, whole, scoped, data[vs + 1 : ve - 1], True))
            elif c in _NUM_START:
                nm = _JSON_NUM.match(data, vs)
                if nm is None:
                    return None
                raw = nm.group()
                if whole is not None and not raw.lstrip(b"-").isdigit():
                    return None  # a float or exponent: the walk keeps its type
                plan.append((vs, nm.end(), whole, scoped, raw, False))
            elif c in b"tfn":
                continue  # true/false/null: nothing personal
            else:
                return None  # an object or array: the walk handles containers
            if whole is not None and whole.action == "drop":
                return None  # removing a member (and its comma) is the walk's job
        if not plan:
            return data
        out: list[bytes] = []
        pos = 0
        rep = self.report
        for vs, ve, whole, scoped, raw, is_str in plan:
            if whole is not None:
                if whole.action == "mask":
                    new = b'"' + self._mask + b'"'
                    rep.count(whole.name, "json", self._mask)
                    if len(raw) >= _ECHO_MIN:
                        ctx.echo[raw] = self._mask
                    ctx.produced.add(self._mask)
                elif not raw:
                    continue
                elif is_str:
                    ps = self.pseudo.pseudonym(whole.fmt, raw)
                    rep.count(whole.name, "json", ps)
                    if len(raw) >= _ECHO_MIN:
                        ctx.echo[raw] = ps
                    ctx.produced.add(ps)
                    new = b'"' + ps + b'"'
                else:
                    digits = raw.lstrip(b"-")
                    ps = self.pseudo.pseudonym("digits", digits)
                    if len(ps) > 1 and ps[:1] == b"0":
                        ps = b"1" + ps[1:]
                    rep.count(whole.name, "json", ps)
                    ctx.produced.add(ps)
                    new = raw[: len(raw) - len(digits)] + ps
            else:
                if not is_str:
                    continue
                nb = self._replace_hits("json", raw, scoped, ctx)
                if nb is raw:
                    continue
                new = b'"' + nb + b'"'
            out.append(data[pos:vs])
            out.append(new)
            pos = ve
        if not out:
            return data
        out.append(data[pos:])
        return b"".join(out)

    def _echo_keep(self, data: bytes, ctx: _Ctx) -> bytes:
        """``_echo`` that returns the very same object when nothing changed."""
        if not ctx.echo:
            return data
        new = self._echo(data, ctx, True)
        return data if new == data else new

    def _json_rule(self, path: tuple[Any, ...], key: Any) -> tuple[Rule | None, list]:
        """(first whole-value rule, scoped detector rules) for one JSON member or element."""
        lname = key.lower() if isinstance(key, str) else None
        whole = None
        for r in self._whole["json"]:
            if self._json_selects(r, path, lname):
                whole = r
                break
        scoped = [
            (i, r.detector)
            for i, r in self._scoped["json"]
            if r.detector is not None and self._json_selects(r, path, lname)
        ]
        return whole, scoped

    @staticmethod
    def _json_selects(r: Rule, path: tuple[Any, ...], lname: str | None) -> bool:
        if lname is not None and r.selects_name(lname):
            return True
        if r.json_paths is not None:
            return any(json_path_matches(steps, path) for steps in r.json_paths)
        return False

    def _walk(self, node: Any, path: tuple[Any, ...], ctx: _Ctx) -> tuple[Any, bool]:
        """Apply JSON name/path rules in one pass. Returns (node, changed)."""
        if isinstance(node, dict):
            out: dict[str, Any] | None = None  # made at the first change: most dicts have none
            by_path = self._json_by_path
            cache = self._json_name_cache
            p = path
            for idx, (k, v) in enumerate(node.items()):
                if by_path:
                    p = (*path, k)
                    whole, scoped = self._json_rule(p, k)
                else:
                    # selection depends on the key alone: cached (documents repeat their keys)
                    hit = cache.get(k)
                    if hit is None:
                        hit = self._json_rule((), k)
                        if len(cache) > 4096:
                            cache.clear()
                        cache[k] = hit
                    whole, scoped = hit
                nv: Any = v
                if whole is not None:
                    nv = self._json_whole(whole, v, ctx)
                elif scoped and isinstance(v, str):
                    b = v.encode("utf-8")
                    nb = self._replace_hits("json", b, scoped, ctx)
                    if nb is not b:
                        nv = nb.decode("utf-8", "replace")
                elif isinstance(v, (dict, list)):
                    nv, c = self._walk(v, p, ctx)
                    if not c:
                        nv = v
                if out is None:
                    if nv is v:
                        continue
                    out = dict(itertools.islice(node.items(), idx))
                if nv is not _DROP:
                    out[k] = nv
            return (node, False) if out is None else (out, True)
        if isinstance(node, list):
            changed = False
            items: list[Any] = []
            by_path = self._json_by_path
            for i, v in enumerate(node):
                p = (*path, i)
                whole, scoped = self._json_rule(p, None) if by_path else (None, [])
                if whole is not None:
                    nv = self._json_whole(whole, v, ctx)
                    changed = True
                    if nv is not _DROP:
                        items.append(nv)
                    continue
                if scoped and isinstance(v, str):
                    b = v.encode("utf-8")
                    nb = self._replace_hits("json", b, scoped, ctx)
                    if nb is not b:
                        items.append(nb.decode("utf-8", "replace"))
                        changed = True
                        continue
                if isinstance(v, (dict, list)):
                    nv, c = self._walk(v, p, ctx)
                    changed |= c
                    items.append(nv)
                else:
                    items.append(v)
            return (items if changed else node), changed
        return node, False

    def _json_whole(self, rule: Rule, v: Any, ctx: _Ctx) -> Any:
        """A whole JSON value under a rule: keeps the JSON type where the action allows."""
        if rule.action == "drop":
            self.report.count(rule.name, "json", None)
            return _DROP
        if rule.action == "mask":
            if v is None or isinstance(v, bool):
                return v  # nothing personal in null/true/false (and the splice path agrees)
            self.report.count(rule.name, "json", self._mask)
            if isinstance(v, str) and len(v) >= _ECHO_MIN:
                ctx.echo[v.encode("utf-8")] = self._mask
            return self._mask.decode("latin-1")
        return self._json_pseudo(rule, v, ctx)

    def _json_pseudo(self, rule: Rule, v: Any, ctx: _Ctx) -> Any:
        """A pseudonym that keeps the JSON type: strings stay strings, ints keep digit count."""
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, str):
            b = v.encode("utf-8")
            if not b:
                return v
            nb = self.pseudo.pseudonym(rule.fmt, b)
            self.report.count(rule.name, "json", nb)
            if len(b) >= _ECHO_MIN:
                ctx.echo[b] = nb
            ctx.produced.add(nb)
            return nb.decode("utf-8", "replace")
        if isinstance(v, int):
            s = str(abs(v)).encode()
            ns = self.pseudo.pseudonym("digits", s)
            if len(ns) > 1 and ns[:1] == b"0":
                ns = b"1" + ns[1:]
            self.report.count(rule.name, "json", ns)
            ctx.produced.add(ns)
            out = -int(ns) if v < 0 else int(ns)
            if not -(2**63) <= out < 2**64:
                return ns.decode()  # as many digits, but past what JSON encoders take as int
            return out
        if isinstance(v, float):
            s = repr(v).encode()
            ns = self.pseudo.pseudonym("digits", s)
            self.report.count(rule.name, "json", ns)
            ctx.produced.add(ns)
            try:
                return float(ns)
            except ValueError:
                return 0.0
        if isinstance(v, dict):
            return {k: self._json_pseudo(rule, x, ctx) for k, x in v.items()}
        if isinstance(v, list):
            return [self._json_pseudo(rule, x, ctx) for x in v]
        return v

    # -- forms and multipart -----------------------------------------------------------------------

    def _form(self, data: bytes, ctx: _Ctx) -> bytes:
        """A urlencoded form body: the query-string treatment, then body-only patterns."""
        if b"\0" in data:
            self.report.fallback("body is not a form as Content-Type says")
            return self._mismatch(data, ctx)
        # '@' and ':' stay unencoded (valid in forms) so a pseudonymised address reads the same
        # as everywhere else, and the raw safety-net scan recognises it as already done
        out = self._pairs("form", data, ctx, b"@:,/")
        if self._form_extra:
            out = self._replace_hits("body", out, self._form_extra, ctx, skip=ctx.produced)
        new = self._echo(out, ctx)
        return data if new == data else new

    def _multipart(self, data: bytes, boundary: str, ctx: _Ctx) -> bytes:
        """Each part by name and media type; rebuilt with the original boundary if changed.

        A part under ``Content-Transfer-Encoding: base64`` or ``quoted-printable`` is decoded,
        sanitised like any other part and encoded again; one that does not decode (or names an
        encoding we do not know) is never passed on: its body is dropped and its length and
        keyed hash kept (``_opaque``; the whole exchange under ``on_mismatch: drop_exchange``)."""
        try:
            mp = bodies.parse_multipart(data, boundary)
        except bodies.BodyError as e:
            self.report.fallback(f"multipart: {e}")
            return self._mismatch(data, ctx)
        changed = False
        keep = []
        for part in mp.parts:
            hdr = self._replace_hits("multipart", part.headers, self._dets["multipart"], ctx)
            if hdr is not part.headers:
                part.headers = hdr
                changed = True
            cte = bodies.transfer_encoding(part)
            if cte is None:
                nb = self._part_body(part, part.body, ctx)
            else:
                try:
                    inner = bodies.decode_transfer(part.body, cte)
                except bodies.BodyError as e:
                    self.report.fallback(str(e))
                    part.body = self._opaque(part.body, ctx)
                    changed = True
                    keep.append(part)
                    continue
                nb = self._part_body(part, inner, ctx)
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

    def _part_body(self, part: bodies.Part, body: bytes, ctx: _Ctx) -> bytes | None:
        """The sanitised (decoded) body of one multipart part, or None to leave the part out."""
        whole, scoped = self._select("multipart", part.name.lower())
        if whole is not None:
            return self._whole_value(whole, "multipart", body, ctx)
        ptype, pparams = bodies.parse_content_type(
            (part.header(b"content-type") or b"").decode("latin-1")
        )
        kind = bodies.body_kind(ptype)
        if kind in ("json", "form", "multipart"):
            return self._content(kind, pparams, body, ctx)
        if body[:1] in (b"{", b"[") and (sn := self._sniffed_json(body, ctx)) is not None:
            return sn
        nb = self._replace_hits("multipart", body, scoped + self._dets["multipart"], ctx)
        if self._mp_extra:
            nb = self._replace_hits("body", nb, self._mp_extra, ctx, skip=ctx.produced)
        return self._echo(nb, ctx)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NUM_START = frozenset(b"-0123456789")
_NUM_CHARS = frozenset(b"-+.eE0123456789")
_IN_STRINGS = frozenset({"pem", "high_entropy"})
"""Detectors whose hits in a JSON text count only inside strings (key material, tokens: never
the document's own numbers and literals)."""
_JSON_NUM = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_QSAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~@:,/*")


_SECRET_SEG = re.compile(
    rb"reset|token|verif|confirm|activat|invite|invitation|magic|unsubscribe|password|passwd"
    rb"|secret|apikey|api-key|api_key|signin|sign-in|login|session|otp|recover|share"
)
"""A path segment naming a secret: the segment after it is one."""
_TOKEN_SEG = re.compile(rb"[A-Za-z0-9_\-.~=]{16,512}")


def _after_escape(text: bytes, s: int) -> int:
    """``s`` moved past a JSON escape it sits inside (the letter after a backslash, or the
    hex digits of a backslash-u escape); ``s`` itself if it is not inside one."""
    j = text.rfind(b"\\", max(0, s - 5), s)
    if j < 0:
        return s
    k = j
    while k > 0 and text[k - 1] == 92:
        k -= 1
    if (j - k) % 2 == 1:
        return s  # that backslash is itself escaped
    end = j + 6 if j + 1 < len(text) and text[j + 1] == 117 else j + 2
    return end if end > s else s


def _already_done(hit: bytes, produced: set[bytes]) -> bool:
    """Whether a hit of a second (safety-net) scan is something this exchange already wrote:
    a replacement itself, part of one (a phone pseudonym's digits can look like a card), or
    one in its URL-encoded form ('a%2Bb@x.com' for 'a+b@x.com')."""
    if hit in produced:
        return True
    forms = [hit]
    if b"%" in hit or b"+" in hit:
        forms += [bodies.unquote(hit, plus=True), bodies.unquote(hit, plus=False)]
    for p in produced:
        lp = len(p)
        if lp < 6:
            continue
        for f in forms:
            if len(f) <= lp:
                if f in p:
                    return True  # part of a pseudonym: the text is the pseudonym's either way
                continue
            i = f.find(p)
            if (
                i >= 0
                and (i == 0 or f[i - 1] == 32)
                and (i + len(p) == len(f) or f[i + len(p)] == 32)
            ):
                return True  # the pseudonym as a whole word ('call+x%2By@z.com' decoded)
    return False


def _union(a: list[tuple[int, Detector]], b: list[tuple[int, Detector]]) -> list:
    seen = {t for t, _ in a}
    return sorted(a + [x for x in b if x[0] not in seen], key=lambda x: x[0])


def _minus(a: list[tuple[int, Detector]], b: list[tuple[int, Detector]]) -> list:
    seen = {t for t, _ in b}
    return [x for x in a if x[0] not in seen]


def _enc(s: str) -> bytes:
    try:
        return s.encode("latin-1")
    except UnicodeEncodeError:
        return s.encode("utf-8")


def _dec(b: bytes, like: str) -> str:
    """Back to str the way ``_enc`` went (latin-1 unless the original needed UTF-8)."""
    try:
        like.encode("latin-1")
    except UnicodeEncodeError:
        return b.decode("utf-8", "replace")
    return b.decode("latin-1")
