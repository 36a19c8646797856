"""The sanitiser's fast paths give exactly what the straightforward code gives.

Each speed-up (an e-mail's local part found by translate + rfind instead of a regex search per
byte, digit runs found by ``find``, HMAC with pre-hashed key pads, class-preserving replacement
with whole-string operations, remembered header lines and request targets) is checked against
a plain reference implementation kept here, on random and hostile inputs: non-UTF-8 bytes,
long runs of the anchor characters, nested JSON, secrets split by escapes."""

from __future__ import annotations

import hmac
import random
import re

import pytest
from sanitise_corpus import build_seeded, corpus_policy

from replay.model import Exchange
from replay.sanitise import Policy, Sanitiser, detectors, pseudonym
from replay.sanitise.detectors import _EMAIL, _EMAIL_PCT, _LOCAL, _RUN, Prep

KEY = b"fast-path-test-key-0123456789abcdef"


# -- references: the code as it was before the fast paths -----------------------------------


def _ref_find_around(text: bytes, sep: bytes, rx: re.Pattern[bytes]) -> list[tuple[int, int]]:
    i = text.find(sep)
    out = []
    n = len(text)
    prev = 0
    k = len(sep)
    while i >= 0:
        if (
            i == 0
            or text[i - 1] not in _LOCAL
            or i + k >= n
            or text[i + k] not in detectors._DOMAIN_START
        ):
            i = text.find(sep, i + 1)
            continue
        end = min(n, i + 256)
        m = rx.search(text, max(prev, i - detectors._LOCAL_MAX), end)
        while m is not None and m.end() <= i:
            m = rx.search(text, m.end(), end)
        if m is not None and m.start() <= i:
            out.append(m.span())
            prev = m.end()
            i = text.find(sep, prev)
        else:
            i = text.find(sep, i + 1)
    return out


def _ref_find_email(text: bytes) -> list[tuple[int, int]]:
    out = _ref_find_around(text, b"@", _EMAIL) if b"@" in text else []
    if b"%40" in text:
        out.extend(_ref_find_around(text, b"%40", _EMAIL_PCT))
        out.sort()
    return out


def _ref_runs(text: bytes) -> list[tuple[int, int]]:
    return [m.span() for m in _RUN.finditer(text.translate(detectors.CLASS_MAP))]


def _ref_class_replace(value: bytes, rnd: bytes) -> bytes:
    alpha = pseudonym._CLASS_ALPHABET
    return bytes([c if (a := alpha[c]) is None else a[r] for c, r in zip(value, rnd, strict=True)])


# -- random and hostile texts ---------------------------------------------------------------

_PIECES = [
    b"@", b"%40", b".", b"-", b"_", b"+", b"%", b" ", b"\n", b'"', b"\\u0040", b"\xff\xfe",
    b"a", b"Z", b"0", b"9", b"x.y", b"example.com", b"user.name", b"a+b", b"@@", b"..",
    b"com", b"co.uk", b"12345678901", b"4111 1111 1111 1111", b"+44 20 7946 0958",
    b"SKU-12345", b"DE89370400440532013000", b"2001:db8::1", b"12:42:00", b"203.0.113.7",
]  # fmt: skip


def _texts(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    out = [
        b"@" * 3000,
        b"a" * 70 + b"@" + b"b" * 300 + b".com",
        b"x@" * 500 + b"y.com",
        b"%40" * 700,
        b"0" * 5000,
        b"0000000000a" * 300,
        b"1234567890 " * 300,
        b"a@b.cc.dd@x.com",
        b"x@a.bc@example.com",
        b"q@a.bcd@x.com",
        b'{"e":"a\\u0040b.com","f":"user%40example.org"}',
    ]
    for _ in range(count):
        parts = [rng.choice(_PIECES) for _ in range(rng.randrange(1, 40))]
        if rng.random() < 0.3:
            parts.append(rng.randbytes(rng.randrange(0, 40)))
        out.append(b"".join(parts))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_email_finder_matches_reference(seed: int) -> None:
    for text in _texts(seed, 3000):
        assert detectors.find_email(Prep(text)) == _ref_find_email(text), text


@pytest.mark.parametrize("seed", range(2))
def test_digit_runs_match_reference(seed: int) -> None:
    for text in _texts(100 + seed, 3000):
        assert Prep(text).runs == _ref_runs(text), text


def test_hmac_with_prehashed_pads_is_hmac() -> None:
    rng = random.Random(7)
    for klen in (1, 16, 32, 63, 64, 65, 200):
        key = rng.randbytes(klen)
        ps = pseudonym.Pseudonymiser(key)
        for _ in range(200):
            msg = rng.randbytes(rng.randrange(0, 300))
            assert ps._mac(msg) == hmac.digest(key, msg, "sha256")


def test_class_replace_matches_per_character_loop() -> None:
    rng = random.Random(8)
    for _ in range(5000):
        v = rng.randbytes(rng.randrange(0, 100))
        r = rng.randbytes(len(v))
        assert pseudonym.class_replace(v, r) == _ref_class_replace(v, r)


def test_known_pseudonyms_unchanged() -> None:
    """Pseudonyms are stable across versions: a capture sanitised before these speed-ups and
    one sanitised after must name the same user the same way."""
    ps = pseudonym.Pseudonymiser(b"bench-key-0123456789abcdef")
    known = {  # made with the code before the speed-ups
        ("token", b"at000123abcdefABCDEF0123"): b"fe751691sjhxgkEGKXTF8351",
        ("email", b"user12.name@example.com"): b"frwa43.cvtj@axjcqbi.com",
        ("digits", b"1234567890123"): b"1935370756124",
        ("card", b"4111 1111 1111 1111"): b"4111 4858 9269 5116",
        (
            "jwt",
            b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyQGV4YW1wbGUuY29tIn0.abc-def_123",
        ): b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzanhxQGF4amNxYmkuY29tIn0.TofOLtNYLoz",
        ("iban", b"DE89370400440532013000"): b"DE50016770137510999012",
        ("phone", b"+44 20 7946 0958"): b"+45 45 5739 2430",
        ("ipv4", b"203.0.113.7"): b"176.101.176.97",
        ("basic", b"dXNlcjpwYXNzd29yZA=="): b"dW5ncTpvaWh6dnlkbg==",
    }
    for (fmt, value), want in known.items():
        assert ps.pseudonym(fmt, value) == want, fmt


# -- remembered header lines, request targets and connection keys ----------------------------


def _dump(ex: Exchange | None) -> object:
    if ex is None:
        return None
    msgs = [ex.request, ex.response, *ex.interim]
    return (
        ex.conn,
        [(m.headers, m.body, m.trailers) if m is not None else None for m in msgs],
        ex.request.target if ex.request is not None else None,
    )


@pytest.mark.parametrize("policy", ["builtin", "user_patterns"])
def test_remembered_results_equal_fresh_ones(policy: str) -> None:
    """Every exchange twice through one sanitiser (the second time from its memos) and once
    through a fresh sanitiser of its own: the same output and the same counts each time."""
    pol = Policy.default() if policy == "builtin" else corpus_policy()
    sd = build_seeded(seed=31, n=150)
    exs = sd.exchanges + sd.exchanges[:40]  # recurring header lines, targets and users
    shared = Sanitiser(pol, KEY)
    for ex in exs:
        fresh = Sanitiser(pol, KEY)
        want = _dump(fresh.apply(ex))
        before = dict(shared.report.counts)
        got = _dump(shared.apply(ex))
        assert got == want
        delta = {k: n - before.get(k, 0) for k, n in shared.report.counts.items()}
        assert {k: n for k, n in delta.items() if n} == fresh.report.counts
