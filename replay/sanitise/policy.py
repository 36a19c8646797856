"""Sanitisation policy: which values to find, where, and what to do with them.

A policy is YAML (see docs/sanitise.md for the full reference). It is validated completely at
load time, so a typo (an unknown detector, a bad JSON path, a regex that does not compile, a key
file that is not there) stops the run before a single exchange is written, with an ``InputError``
that names the rule and the problem. Nothing about a policy is checked lazily.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from replay.errors import InputError
from replay.sanitise.detectors import (
    BUILTIN,
    NAME_CLASSES,
    NAME_DETECTORS,
    Detector,
    regex_detector,
)
from replay.sanitise.pseudonym import FORMATS

LOCATIONS = ("header", "cookie", "query", "path", "json", "form", "multipart", "body")
"""Where a value can sit. ``exchange`` (whole-exchange drop by condition) is handled apart."""
ACTIONS = ("drop", "mask", "pseudonym")

FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "content-encoding", "content-type", "connection"}
)
"""Never rewritten: changing them would break the message framing (the sanitiser itself keeps
Content-Length in step with the body)."""

DEFAULT_POLICY_YAML = """\
# shadowtap built-in sanitise policy (docs/sanitise.md explains every key).
version: 1
mask: "****"
on_mismatch: scan          # a body that is not what its Content-Type says: scan it as text
# Headers that never carry personal data are not scanned (framing headers never are).
skip_headers: [host, accept, accept-encoding, accept-language, accept-ranges, age,
               cache-control, pragma, date, expires, last-modified, if-modified-since,
               if-unmodified-since, etag, if-match, if-none-match, vary, server,
               content-language, sec-fetch-dest, sec-fetch-mode, sec-fetch-site,
               sec-fetch-user, upgrade-insecure-requests]
rules:
  # Credentials by name. Scheme-aware: 'Bearer <jwt>' stays a Bearer JWT, Basic stays Basic.
  - name: authorization
    location: header
    detector: authorization
    action: pseudonym
  - name: api-key-headers
    location: header
    detector: api_key_header
    action: pseudonym
  # Every cookie value is an identifier of someone (session, tracking, preferences).
  - name: cookies
    location: cookie
    action: pseudonym
  # Fields that are secrets by name, wherever a form or JSON document puts them.
  - name: password-fields
    location: [header, query, json, form, multipart]
    names: [password, passwd, pwd, pass, new_password, old_password, current_password,
            passphrase, pin, otp, cvv, cvc, cvv2, security_code]
    action: mask
  - name: token-fields
    location: [header, query, json, form, multipart]
    names: [token, access_token, refresh_token, id_token, auth_token, session_token,
            api_key, apikey, api-key, client_secret, secret, private_key, code_verifier,
            session, sessionid, session_id, sid, x-amz-signature, x-amz-credential,
            x-amz-security-token, signature, sig, authorization, aws_access_key_id,
            aws_secret_access_key, aws_session_token]
    action: pseudonym
  # OAuth authorization codes travel as 'code' in redirects and token requests.
  - name: oauth-code
    location: [query, form]
    names: [code]
    action: pseudonym
  # Every other spelling, by the words in the name: pw, userPassword, passwordHash,
  # user[password], apiSecret, credentials.secretKey, private_token, csrf_token, *_key, auth,
  # appid, card_number, pan, ssn... in every structure (names describing a secret, like
  # token_type or password_hint, are not secrets).
  - name: password-names
    location: [header, query, json, form, multipart]
    detector: password_name
    action: mask
  - name: secret-names
    location: [header, query, json, form, multipart]
    detector: secret_name
    action: pseudonym
  # The same names in text: name=value, name: value, <Password>v</Password>, password="v",
  # <input type="hidden" name="csrf_token" value="v"> (XML, HTML, logs, env files, YAML).
  - name: password-pairs
    location: [header, body, multipart]
    detector: password_pair
    action: mask
  - name: secret-pairs
    location: [header, body, multipart]
    detector: secret_pair
    action: pseudonym
  # Secrets and personal data by shape, everywhere (headers, cookies, query, path, bodies).
  - {name: jwt, location: any, detector: jwt, action: pseudonym}
  # (in JSON documents an Authorization value is a named field, and a JWT is found by shape)
  - name: bearer
    location: [header, cookie, query, path, form, multipart, body]
    detector: bearer
    action: pseudonym
  - name: basic
    location: [header, cookie, query, path, form, multipart, body]
    detector: basic
    action: pseudonym
  - {name: api-key, location: any, detector: api_key, action: pseudonym}
  - {name: private-key, location: any, detector: pem, action: pseudonym}
  # Generated tokens without a name: reset links, magic links (path segments, fragments).
  - {name: url-token, location: path, detector: high_entropy, action: pseudonym}
  - {name: email, location: any, detector: email, action: pseudonym}
  - {name: iban, location: any, detector: iban, action: pseudonym}
  - {name: card, location: any, detector: card, action: pseudonym}
  - {name: ssn, location: any, detector: ssn, action: pseudonym}
  - {name: ipv6, location: any, detector: ipv6, action: pseudonym}
  - {name: ipv4, location: any, detector: ipv4, action: pseudonym}
  - {name: phone, location: any, detector: phone, action: pseudonym}
"""


def norm_name(name: str) -> str:
    """A field name without case, '_' and '-': ``accessToken`` == ``access_token``."""
    return name.lower().replace("_", "").replace("-", "")


# -- JSON paths -----------------------------------------------------------------------------

JsonStep = tuple[str, Any]
"""('key', name) | ('idx', n) | ('any', None) | ('desc', None): ``..`` (any depth, then next)."""

_PATH_TOKEN = re.compile(
    r"""\.\.|\.(?P<name>[A-Za-z_$@\-][\w$@\-]*)|\.\*|\[\*\]|\[(?P<idx>-?\d+)\]"""
    r"""|\[(?P<q>['"])(?P<qname>(?:[^\\]|\\.)*?)(?P=q)\]"""
)


def compile_json_path(path: str) -> list[JsonStep]:
    """Compile the JSONPath subset we support: ``$``, ``.key``, ``['key']``, ``[n]``, ``[*]``,
    ``.*`` and ``..`` (recursive descent). Raises ValueError with the offending position."""
    if not isinstance(path, str) or not path.startswith("$"):
        raise ValueError("must start with '$'")
    steps: list[JsonStep] = []
    i = 1
    while i < len(path):
        m = _PATH_TOKEN.match(path, i)
        if m is None:
            raise ValueError(f"unexpected {path[i:]!r} at position {i}")
        tok = m.group(0)
        if tok == "..":
            if steps and steps[-1][0] == "desc":
                raise ValueError(f"'...' at position {i}")
            steps.append(("desc", None))
            # '..name' and '..*' and '..[0]' are all written without the second dot
            nxt = path[m.end() : m.end() + 1]
            if nxt and (nxt.isalpha() or nxt in "_$@-*"):
                j = m.end()
                if nxt == "*":
                    steps.append(("any", None))
                    i = j + 1
                    continue
                m2 = re.match(r"[A-Za-z_$@\-][\w$@\-]*", path[j:])
                assert m2 is not None
                steps.append(("key", m2.group(0)))
                i = j + m2.end()
                continue
            if nxt == "":
                raise ValueError("path ends in '..'")
        elif m.group("name") is not None:
            steps.append(("key", m.group("name")))
        elif m.group("idx") is not None:
            steps.append(("idx", int(m.group("idx"))))
        elif m.group("qname") is not None:
            steps.append(("key", re.sub(r"\\(.)", r"\1", m.group("qname"))))
        else:
            steps.append(("any", None))
        i = m.end()
    if not steps:
        raise ValueError("'$' alone selects the whole document; use a body rule instead")
    if steps[-1][0] == "desc":
        raise ValueError("path ends in '..'")
    return steps


def json_path_matches(steps: list[JsonStep], path: tuple[Any, ...]) -> bool:
    """Whether a concrete path (keys are str, array positions int) matches compiled ``steps``."""
    return _jp_match(steps, 0, path, 0)


def _jp_match(steps: list[JsonStep], i: int, path: tuple[Any, ...], j: int) -> bool:
    while i < len(steps):
        kind, arg = steps[i]
        if kind == "desc":
            return any(_jp_match(steps, i + 1, path, k) for k in range(j, len(path)))
        if j >= len(path):
            return False
        p = path[j]
        if kind == "key":
            if not isinstance(p, str) or p != arg:
                return False
        elif kind == "idx" and (not isinstance(p, int) or p != arg):
            return False
        # 'any' matches anything
        i += 1
        j += 1
    return j == len(path)


# -- rules ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Rule:
    """One compiled policy rule. See docs/sanitise.md for the YAML form."""

    name: str
    locations: frozenset[str]
    action: str
    fmt: str = "auto"
    names: frozenset[str] | None = None
    """Normalised (``norm_name``) field names this rule selects."""
    raw_names: frozenset[str] = frozenset()
    """The names as written (lower-cased), for the JSON pre-check."""
    name_rx: re.Pattern[str] | None = None
    name_fn: Any = None
    """A by-name detector decided by the words of a name (``NAME_CLASSES``), or None."""
    json_paths: list[list[JsonStep]] | None = None
    segments: frozenset[int] | None = None
    segment_rx: re.Pattern[str] | None = None
    detector: Detector | None = None
    name_detector: str | None = None
    # exchange-level conditions
    method: frozenset[str] | None = None
    path_rx: re.Pattern[str] | None = None
    host_rx: re.Pattern[str] | None = None
    status: frozenset[int] | None = None

    @property
    def has_selector(self) -> bool:
        return (
            self.names is not None
            or self.name_rx is not None
            or self.name_fn is not None
            or self.json_paths is not None
            or self.segments is not None
            or self.segment_rx is not None
        )

    def selects_name(self, lname: str) -> bool:
        """Whether a field/header/cookie named ``lname`` (lower-cased) is selected by name.

        ``names`` are compared without case, '_' and '-', so ``access_token`` also selects
        ``accessToken`` and ``Access-Token`` (APIs spell the same field every way)."""
        if self.names is not None and norm_name(lname) in self.names:
            return True
        if self.name_fn is not None and self.name_fn(lname):
            return True
        return self.name_rx is not None and self.name_rx.search(lname) is not None


@dataclass(slots=True)
class Policy:
    """A validated sanitise policy. Build with ``Policy.load(path)`` or ``Policy.default()``."""

    rules: list[Rule]
    mask: bytes = b"****"
    on_mismatch: str = "scan"
    skip_headers: frozenset[str] = frozenset({"host"})
    key_file: Path | None = None
    key_env: str | None = None
    source: str = "<default>"
    exchange_rules: list[Rule] = field(default_factory=list)

    @classmethod
    def default(cls) -> Policy:
        """The built-in policy (DEFAULT_POLICY_YAML)."""
        return cls.from_dict(yaml.safe_load(DEFAULT_POLICY_YAML), "<default>")

    @classmethod
    def load(cls, path: str | Path | None) -> Policy:
        """Load and validate a policy file; ``None`` gives the built-in default."""
        if path is None:
            return cls.default()
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{p}: policy file not found") from None
        except IsADirectoryError:
            raise InputError(f"{p}: is a directory, not a policy file") from None
        except (PermissionError, UnicodeDecodeError) as e:
            raise InputError(f"{p}: cannot read policy ({e})") from None
        import strictconf  # one strict reader for every YAML file (one-line errors, did-you-mean)

        data = strictconf.parse_yaml(text, file=p, error=InputError)
        any_ = strictconf.ANY
        schema = {"version": any_, "extends": any_, "mask": any_, "on_mismatch": any_,
                  "skip_headers": any_, "key": {"file": any_, "env": any_},
                  "detectors": [dict.fromkeys(("name", "pattern", "format", "group"), any_)],
                  "rules": [dict.fromkeys(_RULE_KEYS, any_)]}
        strictconf.check(data, schema, file=p, error=InputError)
        return cls.from_dict(data, str(p), base=p.parent)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>", base: Path | None = None) -> Policy:
        """Validate a parsed policy document. Every problem is an InputError naming ``source``."""

        def err(msg: str) -> InputError:
            return InputError(f"{source}: {msg}")

        if not isinstance(data, dict):
            raise err("policy must be a mapping with a 'rules' list")
        ext = data.get("extends")
        if ext is not None:
            if ext != "default":
                raise err(f"extends: {ext!r} is not supported (only 'default')")
            data = _extend_default(data, err)
        known = {"version", "mask", "on_mismatch", "skip_headers", "key", "detectors", "rules"}
        extra = set(data) - known
        if extra:
            raise err(f"unknown top-level key(s) {sorted(extra)}; known: {sorted(known)}")
        if data.get("version", 1) != 1:
            raise err(f"unsupported policy version {data.get('version')!r} (expected 1)")
        mask = data.get("mask", "****")
        if not isinstance(mask, str) or any(c in mask for c in '"\\\r\n'):
            raise err("mask must be a string without quotes, backslashes or newlines")
        on_mismatch = data.get("on_mismatch", "scan")
        if on_mismatch not in ("scan", "drop_body", "drop_exchange"):
            raise err(f"on_mismatch: {on_mismatch!r} is not one of scan, drop_body, drop_exchange")
        skip = data.get("skip_headers", ["host"])
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise err("skip_headers must be a list of header names")

        key_file: Path | None = None
        key_env: str | None = None
        key = data.get("key")
        if key is not None:
            if not isinstance(key, dict) or not set(key) <= {"file", "env"} or not key:
                raise err("key must be a mapping with 'file' or 'env'")
            if "file" in key:
                key_file = Path(str(key["file"])).expanduser()
                if base is not None and not key_file.is_absolute():
                    key_file = base / key_file
                if not key_file.is_file():
                    raise err(f"key file {key_file} not found")
            if "env" in key:
                key_env = str(key["env"])

        detectors: dict[str, Detector] = dict(BUILTIN)
        for i, d in enumerate(data.get("detectors") or []):
            where = f"detectors[{i}]"
            if not isinstance(d, dict) or "name" not in d or "pattern" not in d:
                raise err(f"{where}: needs 'name' and 'pattern'")
            unknown = set(d) - {"name", "pattern", "format", "group"}
            if unknown:
                raise err(f"{where}: unknown key(s) {sorted(unknown)}")
            name = str(d["name"])
            if name in detectors or name in NAME_DETECTORS or name in NAME_CLASSES:
                raise err(f"{where}: detector {name!r} already exists")
            fmt = d.get("format", "token")
            if fmt not in FORMATS:
                raise err(f"{where}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
            try:
                detectors[name] = regex_detector(
                    name, str(d["pattern"]), fmt, int(d.get("group", 0))
                )
            except re.error as e:
                raise err(f"{where}: pattern does not compile ({e})") from None
            except IndexError:
                raise err(f"{where}: group {d.get('group')} not in pattern") from None

        raw_rules = data.get("rules")
        if raw_rules is None:
            raw_rules = []
        if not isinstance(raw_rules, list):
            raise err("rules must be a list")
        rules: list[Rule] = []
        exchange_rules: list[Rule] = []
        seen: set[str] = set()
        for i, r in enumerate(raw_rules):
            rule = _compile_rule(r, i, detectors, err)
            if rule.name in seen:
                raise err(f"rules[{i}]: duplicate rule name {rule.name!r}")
            seen.add(rule.name)
            (exchange_rules if "exchange" in rule.locations else rules).append(rule)
        return cls(
            rules=rules,
            mask=mask.encode("latin-1", "replace"),
            on_mismatch=on_mismatch,
            skip_headers=frozenset(s.lower() for s in skip),
            key_file=key_file,
            key_env=key_env,
            source=source,
            exchange_rules=exchange_rules,
        )

    @property
    def needs_key(self) -> bool:
        """Whether any rule makes pseudonyms (mask/drop-only policies need no key)."""
        return any(r.action == "pseudonym" for r in self.rules)


def _extend_default(data: dict[str, Any], err: Any) -> dict[str, Any]:
    """``extends: default``: the built-in policy plus these rules. The user's rules come first
    (for a named field the first matching rule wins), a user rule with a default rule's name
    replaces it, and top-level settings given here override the default's."""
    base = yaml.safe_load(DEFAULT_POLICY_YAML)
    own = data.get("rules") or []
    if not isinstance(own, list):
        raise err("rules must be a list")
    names = {r.get("name") for r in own if isinstance(r, dict)}
    merged = {k: v for k, v in base.items() if k != "rules"}
    merged.update({k: v for k, v in data.items() if k not in ("extends", "rules")})
    merged["rules"] = own + [r for r in base["rules"] if r.get("name") not in names]
    return merged


_RULE_KEYS = {
    "name", "location", "action", "format", "names", "name_regex", "paths", "segments",
    "segment_regex", "detector", "method", "path_regex", "host_regex", "status",
}  # fmt: skip


def _compile_rule(r: Any, i: int, detectors: dict[str, Detector], err: Any) -> Rule:
    where = f"rules[{i}]"
    if not isinstance(r, dict):
        raise err(f"{where}: must be a mapping")
    unknown = set(r) - _RULE_KEYS
    if unknown:
        raise err(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(_RULE_KEYS)}")
    name = str(r.get("name") or f"rule{i}")
    where = f"rules[{i}] ({name})"
    loc = r.get("location")
    if loc is None:
        raise err(f"{where}: needs 'location' (one of {', '.join(LOCATIONS)}, any, exchange)")
    locs = [loc] if isinstance(loc, str) else loc
    if not isinstance(locs, list) or not locs:
        raise err(f"{where}: location must be a name or a list of names")
    locset: set[str] = set()
    for x in locs:
        if x == "any":
            locset.update(LOCATIONS)
        elif x in LOCATIONS or x == "exchange":
            locset.add(x)
        else:
            raise err(
                f"{where}: unknown location {x!r}; choose from {', '.join(LOCATIONS)}, any, exchange"
            )
    if "exchange" in locset and len(locset) > 1:
        raise err(f"{where}: location 'exchange' cannot be combined with others")
    action = r.get("action", "drop" if "exchange" in locset else "pseudonym")
    if action not in ACTIONS:
        raise err(f"{where}: unknown action {action!r}; choose one of {', '.join(ACTIONS)}")
    fmt = r.get("format", "auto")
    if fmt not in FORMATS:
        raise err(f"{where}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    rule = Rule(name=name, locations=frozenset(locset), action=action, fmt=fmt)

    def rx(key: str, flags: int = 0) -> re.Pattern[str] | None:
        v = r.get(key)
        if v is None:
            return None
        try:
            return re.compile(str(v), flags)
        except re.error as e:
            raise err(f"{where}: {key} does not compile ({e})") from None

    if "exchange" in locset:
        if action != "drop":
            raise err(f"{where}: exchange rules can only 'drop'")
        m = r.get("method")
        if m is not None:
            rule.method = frozenset(str(x).upper() for x in ([m] if isinstance(m, str) else m))
        rule.path_rx = rx("path_regex")
        rule.host_rx = rx("host_regex", re.I)
        st = r.get("status")
        if st is not None:
            try:
                rule.status = frozenset(int(x) for x in ([st] if isinstance(st, int) else st))
            except (TypeError, ValueError):
                raise err(f"{where}: status must be a number or list of numbers") from None
        if (
            rule.method is None
            and rule.path_rx is None
            and rule.host_rx is None
            and not rule.status
        ):
            raise err(f"{where}: exchange rule needs method, path_regex, host_regex or status")
        return rule

    names = r.get("names")
    if names is not None:
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names:
            raise err(f"{where}: names must be a list of field names")
        rule.names = frozenset(norm_name(str(n)) for n in names)
        rule.raw_names = frozenset(str(n).lower() for n in names)
    rule.name_rx = rx("name_regex", re.I)
    paths = r.get("paths")
    if paths is not None:
        if "json" not in locset:
            raise err(f"{where}: 'paths' selects JSON values; add location json")
        if isinstance(paths, str):
            paths = [paths]
        compiled = []
        for p in paths:
            try:
                compiled.append(compile_json_path(p))
            except ValueError as e:
                raise err(f"{where}: bad JSON path {p!r}: {e}") from None
        rule.json_paths = compiled
    segs = r.get("segments")
    if segs is not None:
        try:
            rule.segments = frozenset(int(x) for x in ([segs] if isinstance(segs, int) else segs))
        except (TypeError, ValueError):
            raise err(f"{where}: segments must be path segment numbers (0 = first)") from None
    rule.segment_rx = rx("segment_regex")
    det = r.get("detector")
    if det is not None:
        det = str(det)
        if det in NAME_DETECTORS or det in NAME_CLASSES:
            if not locset <= {"header", "cookie", "query", "form", "multipart", "json"}:
                raise err(f"{where}: detector {det!r} selects by name; use it on headers/cookies")
            rule.name_detector = det
            if det in NAME_CLASSES:
                rule.name_fn = NAME_CLASSES[det]
            else:
                rule.name_rx = re.compile(NAME_DETECTORS[det])
            if det == "authorization" and fmt == "auto":
                rule.fmt = "authorization"
        elif det in detectors:
            rule.detector = detectors[det]
        else:
            known = sorted(set(detectors) | set(NAME_DETECTORS) | set(NAME_CLASSES))
            raise err(f"{where}: unknown detector {det!r}; known: {', '.join(known)}")
    # A location-only rule (e.g. every cookie) replaces the whole value of every item there;
    # for JSON, bodies and paths that would destroy the document, so it is refused.
    if rule.detector is None and not rule.has_selector and locset & {"json", "body", "path"}:
        raise err(
            f"{where}: a rule without detector or selector would replace every value at "
            f"{sorted(locset & {'json', 'body', 'path'})}; add a detector, names, paths or "
            f"segments"
        )
    return rule


def load_key(key_file: str | Path | None = None, key_env: str | None = None) -> bytes:
    """Read the pseudonym key from a file or an environment variable.

    The key is never logged, written or put in a report (only a fingerprint is). Surrounding
    whitespace is stripped so that ``echo secret > key`` works; at least 16 bytes are required
    because a short key makes pseudonyms guessable by brute force."""
    if key_file is not None:
        p = Path(key_file).expanduser()
        try:
            key = p.read_bytes().strip()
        except FileNotFoundError:
            raise InputError(f"{p}: key file not found") from None
        except IsADirectoryError:
            raise InputError(f"{p}: key file is a directory") from None
        except PermissionError:
            raise InputError(f"{p}: key file not readable (permission denied)") from None
        where = str(p)
    elif key_env is not None:
        v = os.environ.get(key_env)
        if v is None:
            raise InputError(f"environment variable {key_env} is not set (pseudonym key)")
        key = v.strip().encode("utf-8")
        where = f"${key_env}"
    else:
        raise InputError("no pseudonym key: pass --key-file FILE or --key-env VAR")
    if len(key) < 16:
        raise InputError(f"{where}: pseudonym key too short ({len(key)} bytes; need at least 16)")
    return key
