"""The compiled member-name scan (``_keyscan.pyx``) finds exactly what the regex finds.

The regex is the definition (``KeyScan.find_regex``); the C loop must agree on every text,
including texts that are not JSON at all, quotes without partners, names followed by no
colon, blanks around colons and names that are prefixes or extensions of one another."""

from __future__ import annotations

import random

import orjson
import pytest

from replay.sanitise import Policy, Sanitiser
from replay.sanitise.keyscan import KeyScan

NAMES = [b"access_token", b"token", b"pass", b"password", b"pwd", b"x", b"session-id", b"a_b"]

needs_native = pytest.mark.skipif(
    not KeyScan.native_available(),
    reason="the compiled helper is not built here (pure-Python install): nothing to compare",
)


def _texts(rng: random.Random, count: int) -> list[bytes]:
    alphabet = [b'"', b":", b" ", b"\t", b"\n", b",", b"{", b"}", b"[", b"]", b"1", b"a"]
    alphabet += [n for n in NAMES] + [b'"' + n + b'"' for n in NAMES]
    alphabet += [b"passwords", b"tok", b"_token", b"\xff", b"\x00"]
    out = []
    for _ in range(count):
        out.append(b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60))))
    return out


def _docs(rng: random.Random, count: int) -> list[bytes]:
    keys = [n.decode() for n in NAMES] + ["order_id", "name", "passwords", "Token", "tok"]
    out = []
    for _ in range(count):
        doc = {rng.choice(keys): rng.choice([1, "v", "token", {"pwd": "p"}, [1, {"x": 2}]])
               for _ in range(rng.randrange(1, 12))}
        text = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if rng.random() < 0.3 else 0)
        out.append(text.lower())
    return out


@needs_native
def test_native_scan_agrees_with_the_regex_on_random_texts() -> None:
    ks = KeyScan(NAMES)
    rng = random.Random(3)
    checked = 0
    for text in _texts(rng, 4000) + _docs(rng, 2000):
        assert ks.find(text) == ks.find_regex(text), text
        checked += bool(ks.find_regex(text))
    assert checked > 500  # the texts do hold names, so agreement is not trivially on nothing


@needs_native
def test_native_scan_edges() -> None:
    ks = KeyScan(NAMES)
    for text in (b"", b'"', b'""', b'"pwd"', b'"pwd":', b'"pwd" \n:\t 1', b'x"pwd":1',
                 b'"pwd""pwd":2', b'"a_b":"x":3', b'"password":"pass":', b'"pwd" :'):
        assert ks.find(text) == ks.find_regex(text), text
    assert ks.find(b'{"pwd" : 1, "password":"x"}') == [(b"pwd", 9), (b"password", 23)]


def test_pure_scan_finds_members_and_value_offsets() -> None:
    ks = KeyScan(NAMES, native=False)
    text = b'{"name":"a","access_token": "t","token":5,"passwords":1}'
    found = ks.find(text)
    assert [n for n, _ in found] == [b"access_token", b"token"]
    assert [text[o:o + 3] for _, o in found] == [b'"t"', b"5,\""]


@needs_native
def test_sanitiser_output_is_the_same_with_either_scan() -> None:
    """End to end: name rules applied with the compiled scan give the same bytes."""
    body = orjson.dumps({"user": {"password": "hunter22", "token": "abcdefghijkl"},
                         "access_token": "zzzzzzzzzzzz", "n": [{"pwd": "q1w2e3r4"}]})
    from replay.model import ConnKey, Exchange, Request, Response

    ex = Exchange(id="1", conn=ConnKey("10.0.0.1", 1, "10.0.0.2", 80),
                  request=Request("POST", "/login", headers=[("Content-Type", "application/json")],
                                  body=body),
                  response=Response(200, "OK", headers=[("Content-Type", "application/json")],
                                    body=body))
    fast = Sanitiser(Policy.default(), b"k" * 32)
    slow = Sanitiser(Policy.default(), b"k" * 32)
    assert slow._json_kv is not None
    slow._json_kv.find = slow._json_kv.find_regex
    a, b = fast.apply(ex), slow.apply(ex)
    assert a is not None and b is not None
    assert a.request.body == b.request.body and a.response.body == b.response.body
    assert b"hunter22" not in a.request.body and b"zzzzzzzzzzzz" not in a.response.body


@needs_native
def test_key_gates_agree_with_the_python_definition() -> None:
    from replay.sanitise import detectors as d

    rng = random.Random(5)
    pieces = [b"_", b"-", b".", b"ghp", b"sk", b"xoxb", b"-----BEGIN", b"----BEGIN", b"9", b"G",
              b"a", b" ", b"\xff", b"\x00", b"order_id", b"en-GB", b"12.99", b"AKIA", b"AIza",
              b"SK", b"SKU", b"0123456789abcdef", b"A"]
    for _ in range(3000):
        text = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30)))
        c, py = d._key_gates(text, *d._GATE_TABLES), d.key_gates_py(text, *d._GATE_TABLES)
        assert (sorted(c[0]), c[1]) == (sorted(py[0]), py[1]), text  # order: find_api_key sorts


@needs_native
def test_stem_scan_agrees_with_the_regex() -> None:
    from replay.sanitise.detectors import NAME_STEMS

    ks = KeyScan(NAMES, stems=NAME_STEMS)
    rng = random.Random(4)
    for text in _texts(rng, 3000) + _docs(rng, 1500):
        assert ks.find(text) == ks.find_regex(text), text
    doc = b'{"userpassword": 1, "x_api_key" : "k", "name": "pw", "' + b"k" * 200 + b'": 1}'
    assert [n for n, _ in ks.find(doc)] == [b"userpassword", b"x_api_key"]


@needs_native
def test_ipv6_gate_agrees_with_the_anchor_regex() -> None:
    from replay.sanitise import detectors as d

    rng = random.Random(6)
    pieces = [b":", b"::", b"a", b"F", b"g", b"0", b"12", b"abcd", b"abcde", b'"', b" ", b"\xff"]
    for _ in range(5000):
        text = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 20)))
        assert d._ipv6_gate(text) == (d._IPV6_ANCHOR.search(text) is not None), text


@needs_native
def test_stem_finder_agrees_with_finditer() -> None:
    """The C stem finder (pairs in text: ``password=``, ``api_key:``) gives ``re.finditer``'s
    spans over the sorted alternation, including stems that are prefixes of each other and
    matches that run into the text's end."""
    from replay.sanitise.detectors import NAME_STEMS
    from replay.sanitise.keyscan import stem_finder

    rng = random.Random(8)
    native, regex = stem_finder(NAME_STEMS), stem_finder(NAME_STEMS, native=False)
    assert native is not regex and getattr(native, "func", None) is not None  # really the C one
    alphabet = b"pawsecrtokyuhigndvmjbxl_=:\" \xff"
    for text in _texts(rng, 2000) + _docs(rng, 1000):
        assert native(text) == regex(text), text
    for _ in range(3000):
        text = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert native(text) == regex(text), text
    stems = [b"pa", b"pass", b"ss", b"sx"]  # prefixes: the first in sorted order wins
    n2, r2 = stem_finder(stems), stem_finder(stems, native=False)
    for _ in range(3000):
        text = bytes(rng.choice(b"pasx") for _ in range(rng.randrange(0, 30)))
        assert n2(text) == r2(text), text
    assert n2(b"xpassx") == [(1, 3), (3, 5)] and native(b"pw") == [(0, 2)]


@needs_native
def test_pair_name_finder_agrees_with_python() -> None:
    """The C stem-and-name walk (``_keyscan.pair_names``, used by the text pair detectors)
    gives the pure-Python loop's (stem start, name start, name end), with stems that are
    prefixes of each other, two-byte stems, names at the text's ends and at the length cap."""
    from replay.sanitise.detectors import _NAME_CHARS, _NAME_MAX, NAME_STEMS
    from replay.sanitise.keyscan import pair_name_finder

    rng = random.Random(9)
    native = pair_name_finder(NAME_STEMS, _NAME_CHARS, _NAME_MAX)
    py = pair_name_finder(NAME_STEMS, _NAME_CHARS, _NAME_MAX, native=False)
    assert getattr(native, "func", None) is not None  # really the C one
    alphabet = b"pawsecrtokyuhigndvmjbxlPWK_.-=:\" \xff"
    for text in _texts(rng, 2000) + _docs(rng, 1000):
        assert native(text.lower(), text) == py(text.lower(), text), text
    for _ in range(3000):
        text = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 150)))
        assert native(text.lower(), text) == py(text.lower(), text), text
    stems = [b"pa", b"pass", b"ss", b"sx"]
    n2 = pair_name_finder(stems, b"pasx", 6)
    r2 = pair_name_finder(stems, b"pasx", 6, native=False)
    for _ in range(3000):
        text = bytes(rng.choice(b"pasx =") for _ in range(rng.randrange(0, 30)))
        assert n2(text, text) == r2(text, text), text


@needs_native
def test_iban_anchors_agree_with_their_regex() -> None:
    """The C IBAN anchor search gives the starts of its regex definition on the class map,
    and a compact lower-case IBAN deep inside a long body is found and masked."""
    from replay.sanitise import detectors as d

    rng = random.Random(9)
    pieces = [b"a", b"A", b"0", b"00", b"aa00", b"AA00", b"Aa00", b" ", b'"', b"\xff", b"0a"]
    for _ in range(5000):
        t = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 25)))
        assert d._iban_anchors(t) == [m.start() for m in d._IBAN_ANCHOR_ANY.finditer(t)], t
    # with the text and the countries: exactly find_iban's first checks, made in C
    for _ in range(5000):
        text = b"".join(rng.choice([b"de", b"DE", b"Nl", b"zz", b"89", b"12", b"370400440532",
                                    b" ", b"-", b"x", b"0"]) for _ in range(rng.randrange(0, 12)))
        t = text.translate(d.CLASS_MAP)
        want = [s for s in (m.start() for m in d._IBAN_ANCHOR_ANY.finditer(t))
                if not (s > 0 and text[s - 1] in d._ALNUM) and 48 <= text[s + 2] <= 57
                and 48 <= text[s + 3] <= 57 and text[s:s + 2].upper() in d.IBAN_LENGTHS]
        assert d._iban_anchors(t, text, d._IBAN_COUNTRIES) == want, text
    body = (b'{"items": [' + b", ".join(b'{"sku": "ab%06d", "qty": %d}' % (i, i % 7)
                                        for i in range(400))
            + b'], "note": "pay to nl91abna0417164300 please"}')
    assert len(body) > 8000
    hits = d.find_iban(d.Prep(body))
    assert [body[s:e] for s, e in hits] == [b"nl91abna0417164300"]


@needs_native
def test_nine_digit_runs_agree_with_the_regex() -> None:
    from replay.sanitise import detectors as d

    rng = random.Random(9)
    pieces = [b"1", b"12", b"123", b"1234", b"123456789", b"1234567890", b"12345678", b" ",
              b"-", b"a", b"SSN ", b"\xff", b"2024-08-17", b'"', b'":', b'": "', b":", b"Z", b"z"]
    for _ in range(4000):
        text = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 25)))
        assert d._nine_digit_runs(text) == d.nine_digit_runs_py(text), text


@needs_native
def test_alt_card_starts_agree_with_the_regex() -> None:
    from replay.sanitise import detectors as d

    rng = random.Random(13)
    pieces = [b"1", b"12", b"1234", b"4111", b"12345", b".", b"/", b"\xc2\xa0", b"\xc2", b"\xa0",
              b"\xe2\x80\xaf", b"\x80\xaf", b"&nbsp;", b"&NBSP;", b"&#160;", b"&#16;", b";", b"&",
              b" ", b"a", b"-"]
    for _ in range(6000):
        text = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 25)))
        assert d._alt_card_starts(text) == d.alt_card_starts_py(text), text


@needs_native
def test_run_dot_and_contains_helpers_agree_with_their_definitions() -> None:
    """The C digit-run, '.d.' and memmem helpers give what their Python definitions give, and
    the IBAN anchors left out by the country lengths are exactly starts ``find_iban`` rejects."""
    from replay.sanitise import _keyscan as k
    from replay.sanitise import detectors as d

    rng = random.Random(11)
    pieces = [b"0", b"00", b".", b"a", b"A", b"0000", b"00000000000", b".0.", b" ", b'"', b"-"]
    for _ in range(5000):
        t = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30)))
        assert k.zero_runs(t) == d.zero_runs_py(t), t
        assert k.dot_spans(t) == [m.span() for m in d._DOT.finditer(t)], t
        needle = rng.choice([b"0", b"00", b"a.", b"0a0", b""])
        assert k.contains(t, needle) == (needle in t)
    assert k.contains("abc", "b") and not k.contains(bytearray(b"abc"), b"x")
    real = d._iban_anchors
    words = [b"de", b"DE", b"Nl", b"at", b"zz", b"89", b"12", b"370400440532", b"ab", b"f3",
             b"0532013000", b" ", b"-", b"x", b"0", b'"']
    left_out = 0
    try:
        for _ in range(5000):
            text = b"".join(rng.choice(words) for _ in range(rng.randrange(0, 16)))
            t = text.translate(d.CLASS_MAP)
            every = real(t, text, d._IBAN_COUNTRIES)
            fewer = real(t, text, d._IBAN_COUNTRIES, d._IBAN_LENGTH_T)
            assert set(fewer) <= set(every)
            left_out += len(every) - len(fewer)
            d._iban_anchors = lambda *a, s=every: s  # type: ignore[assignment]
            want = d.find_iban(d.Prep(text))
            d._iban_anchors = lambda *a, s=fewer: s  # type: ignore[assignment]
            assert d.find_iban(d.Prep(text)) == want, text
    finally:
        d._iban_anchors = real
    assert left_out > 100
