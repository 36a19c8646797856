"""``CompiledPolicy``: everything the sanitiser derives from a Policy, worked out once.

A Policy is a list of rules as written (locations, selectors, detectors, actions). Sanitising
an exchange needs it sorted differently: per location, the whole-value rules, the scoped
detector rules and the detector set to scan with (its short-text pre-check compiled); for JSON
bodies, which detectors run over the document text and a literal pre-check of the member names
the rules could select; the rule for client addresses and for tokens in URL paths. All of that
is read-only after construction, so the parts of the sanitiser (``headers``, ``url``, ``form``,
``jsonbody``, ``multipart``, ``message``) read it freely; what changes while sanitising lives
in ``cache.Caches``.
"""

from __future__ import annotations

import re
from typing import Any

from replay.sanitise.detectors import NAME_STEMS, PAIR_DETECTORS, Detector, DetSet
from replay.sanitise.keyscan import KeyScan, trie
from replay.sanitise.policy import FRAMING_HEADERS, LOCATIONS, Policy, Rule, norm_name


class CompiledPolicy:
    """A Policy sorted for use (see the module's doc). Built once per ``Sanitiser``."""

    __slots__ = (
        "body_dets",
        "dets",
        "exchange_rules",
        "form_extra",
        "frag_dets",
        "ip_rules",
        "json_always_parse",
        "json_by_path",
        "json_key_rx",
        "json_kv",
        "json_pair_dets",
        "json_rules",
        "json_splice_ok",
        "json_stems",
        "json_text_dets",
        "key",
        "mask",
        "mp_extra",
        "on_mismatch",
        "policy",
        "rules",
        "scoped",
        "skip",
        "url_token_rule",
        "whole",
    )

    def __init__(self, policy: Policy, key: bytes | None) -> None:
        self.policy = policy
        self.rules: list[Rule] = policy.rules
        """All value rules; a detector hit's tag is its rule's index here."""
        self.mask: bytes = policy.mask
        self.key: bytes = key or b""
        """The pseudonym key (for the keyed hash of a dropped body); empty without one."""
        self.exchange_rules = policy.exchange_rules
        self.on_mismatch: str = policy.on_mismatch
        self.skip: frozenset[str] = FRAMING_HEADERS | policy.skip_headers
        """Lower-case header names never rewritten (framing, and the policy's own list)."""
        # Per location: whole-value rules (selector, no detector), scoped detector rules
        # (selector + detector) and unscoped detector rules (tag = rule index).
        whole: dict[str, list[Rule]] = {loc: [] for loc in LOCATIONS}
        scoped: dict[str, list[tuple[int, Rule]]] = {loc: [] for loc in LOCATIONS}
        dets: dict[str, list[tuple[int, Detector]]] = {loc: [] for loc in LOCATIONS}
        for i, r in enumerate(self.rules):
            for loc in r.locations:
                if r.detector is None:
                    whole[loc].append(r)
                elif r.has_selector:
                    scoped[loc].append((i, r))
                else:
                    dets[loc].append((i, r.detector))
        self.whole = whole
        """Location -> whole-value rules (a selector, no detector), in policy order."""
        self.scoped = scoped
        """Location -> (tag, rule) of detector rules limited by a selector."""
        body = dets["body"]
        # Detectors for the JSON text scan: json's plus body's (whole-body patterns), once each;
        # the name=value detectors only where a document holds text of that kind.
        in_json = {t for t, _d in dets["json"]}
        pairs = [(t, d) for t, d in body if d.name in PAIR_DETECTORS and t not in in_json]
        text_only = {t for t, _d in pairs}
        self.json_text_dets = DetSet(
            [(t, d) for t, d in _union(dets["json"], body) if t not in text_only]
        )
        """Detectors run over a JSON document's text."""
        self.json_pair_dets = DetSet(pairs)
        """The name=value detectors, for JSON documents holding such text inside a string."""
        self.form_extra = DetSet(_minus(body, dets["form"]))
        """Whole-body detectors a form body gets on top of the form's own."""
        self.mp_extra = DetSet(_minus(body, dets["multipart"]))
        """Whole-body detectors a multipart part gets on top of the multipart ones."""
        self.frag_dets = DetSet(_union(dets["query"], dets["path"]))
        """Detectors over a URL fragment (a query string or a path, whichever it holds)."""
        self.dets: dict[str, DetSet] = {loc: DetSet(d) for loc, d in dets.items()}
        """Location -> the unscoped detectors to scan its values with."""
        self.body_dets = self.dets["body"]
        # Literal pre-check for JSON name/path rules.
        self.json_rules: list[Rule] = whole["json"] + [r for _i, r in scoped["json"]]
        """Every rule that selects JSON members by name or path."""
        self.json_always_parse = False
        """Whether a JSON body must always be parsed (a name regex, a path without a key)."""
        lits: set[bytes] = set()
        stems: set[bytes] = set()
        for r in self.json_rules:
            if r.name_rx is not None:
                self.json_always_parse = True
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
                    self.json_always_parse = True
        # Array elements have no name: only rules with JSON paths can select them.
        self.json_by_path: bool = any(r.json_paths for r in self.json_rules)
        """Whether selection depends on a member's path (else on its name alone: cached)."""
        self.json_splice_ok: bool = (
            bool(self.json_rules) and not self.json_by_path and not self.json_always_parse
        )
        """Whether name rules may be applied by editing the JSON text in place."""
        # One pass over the lower-cased body: a quoted key from the rules, as a trie-shaped
        # alternation (re tries the branches of one position by first byte, so the cost barely
        # grows with the number of names).
        self.json_key_rx: re.Pattern[bytes] | None = (
            re.compile(b'"' + trie(sorted(lits)) + b'"') if lits else None
        )
        # The same keys followed by ':' (a member name, not a value) for in-place edits, and
        # every key holding a stem of a secret name when a rule selects names by their words.
        self.json_kv: KeyScan | None = KeyScan(lits, stems=stems) if lits or stems else None
        self.json_stems: bool = bool(stems)
        # The client address in the connection key is personal data too: it follows the first
        # IP-detector rule (pseudonymised like any address in a body).
        ip_rules: dict[str, Rule] = {}
        for r in self.rules:
            det = r.detector
            if det is not None and det.name in ("ipv4", "ipv6") and r.action == "pseudonym":
                ip_rules.setdefault(det.name, r)
        self.ip_rules = ip_rules
        """Address format (ipv4/ipv6) -> the rule that pseudonymises the client address."""
        # A path segment after one naming a secret ('/reset/<token>') is replaced whole by the
        # first path rule with the high-entropy detector.
        self.url_token_rule: Rule | None = next(
            (r for r in self.rules
             if r.detector is not None and r.detector.name == "high_entropy"
             and "path" in r.locations and not r.has_selector), None)


def _union(a: list[tuple[int, Detector]], b: list[tuple[int, Detector]]) -> list[Any]:
    seen = {t for t, _ in a}
    return sorted(a + [x for x in b if x[0] not in seen], key=lambda x: x[0])


def _minus(a: list[tuple[int, Detector]], b: list[tuple[int, Detector]]) -> list[Any]:
    seen = {t for t, _ in b}
    return [x for x in a if x[0] not in seen]
