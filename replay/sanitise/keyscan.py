"""Finding the JSON members a name rule selects, without parsing the document.

Why a module of its own: the sanitiser's name rules (``access_token``, ``password``...) are
applied to JSON bodies by editing the text in place (``jsonbody.JsonPart.splice``), and finding
the members is the single largest cost of a typical API exchange. Python's ``re`` does it with
one attempt per quote in the document (a trie-shaped alternation of the names, ~3 ns a byte).
The compiled helper ``_keyscan.pyx`` does the same walk as a C loop over the quotes (memchr)
and looks a quoted text up in a set only when its length and hash could make it a name;
it is built at install like the compiled modules (``setup.py``) and gives the same results
(tests/sanitise/test_keyscan.py). Without it, or with ``SHADOWTAP_PURE_PYTHON=1``, the regex
is used.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import partial
from typing import Any

from replay import _native

_kv_scan: Any = _native.load_pyx("replay.sanitise._keyscan", "kv_scan")
_fnv1a: Any = _native.load_pyx("replay.sanitise._keyscan", "fnv1a") if _kv_scan else None
_kv_stems: Any = _native.load_pyx("replay.sanitise._keyscan", "kv_scan_stems") if _kv_scan else None
_stem_find: Any = _native.load_pyx("replay.sanitise._keyscan", "stem_find") if _kv_scan else None
_pair_names: Any = _native.load_pyx("replay.sanitise._keyscan", "pair_names") if _kv_scan else None
STEM_MAXLEN = 96
"""Names longer than this are not looked at by stem (a JSON key that long is data)."""


def trie(words: list[bytes]) -> bytes:
    """A regex matching exactly ``words``, factored by common prefixes (``pass(?:word|wd)?``)."""
    root: dict[Any, Any] = {}
    for w in words:
        node = root
        for c in w:
            node = node.setdefault(c, {})
        node[None] = True

    def emit(node: dict[Any, Any]) -> bytes:
        alts = [
            re.escape(bytes([c])) + emit(child)
            for c, child in sorted((k, v) for k, v in node.items() if k is not None)
        ]
        if not alts:
            return b""
        body = alts[0] if len(alts) == 1 else b"(?:" + b"|".join(alts) + b")"
        return b"(?:" + body + b")?" if None in node else body

    return emit(root)


def stem_tables(stems: Iterable[bytes]) -> tuple[bytes, bytes, bytes]:
    """``first``, ``stems`` and ``pairs`` of the compiled stem matchers (see ``_keyscan.pyx``):
    the stems sorted, each followed by NUL; per first byte the offset of its first stem + 1;
    a mark per two-byte prefix."""
    blob = bytearray()
    first = bytearray(512)
    pairs = bytearray(65536)
    for x in sorted(set(stems)):
        if len(x) < 2:
            raise ValueError("stems must be at least two bytes long")
        pairs[(x[0] << 8) | x[1]] = 1
        if not first[2 * x[0]] and not first[2 * x[0] + 1]:
            off = len(blob) + 1
            first[2 * x[0]] = off & 0xFF
            first[2 * x[0] + 1] = off >> 8
        blob += x + b"\0"
    return bytes(first), bytes(blob), bytes(pairs)


def stem_finder(stems: Iterable[bytes], native: bool = True) -> Any:
    """A function ``lo -> [(start, end), ...]``: where ``stems`` occur in ``lo``, leftmost first,
    never overlapping; at one position the first stem in sorted order wins. In C when built
    (``_keyscan.stem_find``), else ``re.finditer`` over the same alternation (same results)."""
    ordered = sorted(set(stems))
    rx = re.compile(b"|".join(re.escape(x) for x in ordered))
    if native and _stem_find is not None and all(len(x) >= 2 for x in ordered):
        return partial(_stem_find, *stem_tables(ordered))
    return lambda lo: [m.span() for m in rx.finditer(lo)]


def pair_tables(stems: Iterable[bytes]) -> tuple[bytes, bytes]:
    """``pid`` and ``tri`` of ``_keyscan.pair_names``: a small id per two-byte start of a stem,
    and per id the third bytes a stem with that start can go on with (every byte when the two
    bytes are a stem themselves)."""
    pid = bytearray(65536)
    tri = bytearray(65536)
    ids: dict[bytes, int] = {}
    for x in sorted(set(stems)):
        if len(x) < 2:
            raise ValueError("stems must be at least two bytes long")
        v = ids.setdefault(x[:2], len(ids) + 1)
        if v > 255:
            raise ValueError("too many two-byte stem starts")
        pid[(x[0] << 8) | x[1]] = v
        if len(x) == 2:
            for c in range(256):
                tri[(v << 8) | c] = 1
        else:
            tri[(v << 8) | x[2]] = 1
    return bytes(pid), bytes(tri)


def pair_name_finder(stems: Iterable[bytes], name_chars: Iterable[int], name_max: int,
                     native: bool = True) -> Any:
    """A function ``(lo, text) -> [(stem start, name start, name end), ...]``: the hits of
    ``stem_finder(stems)`` in ``lo`` (``text`` lower-cased), each with the name around it in
    ``text``: the bytes of ``name_chars`` before the stem (while fewer than ``name_max`` are
    taken) and after it (while the name is shorter than ``name_max``). In C when built
    (``_keyscan.pair_names``), else this loop over ``stem_finder`` (same results)."""
    ordered = sorted(set(stems))
    chars = frozenset(name_chars)
    table = bytes(1 if c in chars else 0 for c in range(256))
    if native and _pair_names is not None and all(len(x) >= 2 for x in ordered):
        first, blob, _pairs = stem_tables(ordered)
        pid, tri = pair_tables(ordered)
        return partial(_pair_names, first, blob, pid, tri, table, name_max)
    find = stem_finder(ordered, native=False)

    def names(lo: bytes, text: bytes) -> list[tuple[int, int, int]]:
        out = []
        n = len(text)
        for k, b in find(lo):
            a = k
            while a > 0 and k - a < name_max and text[a - 1] in chars:
                a -= 1
            while b < n and b - a < name_max and text[b] in chars:
                b += 1
            out.append((k, a, b))
        return out

    return names


class KeyScan:
    """Member names from a fixed set, found in a (lower-cased, backslash-free) JSON text.

    ``find(lo)`` gives ``[(name, value offset), ...]``: each quoted text that is one of the
    names, or with ``stems`` holds one of them (and is at most ``STEM_MAXLEN`` long), and is
    followed by a colon (blanks around it allowed), with the offset just after the colon and
    the blanks that follow it; in document order, never overlapping."""

    __slots__ = ("find", "rx")

    def __init__(self, names: Iterable[bytes], native: bool = True,
                 stems: Iterable[bytes] = ()) -> None:
        names = frozenset(n for n in names if n)
        stems = sorted({x for x in stems if x})
        if not names and not stems:
            raise ValueError("KeyScan needs at least one name")
        alts = [trie(sorted(names))] if names else []
        if stems:
            alts.append(rb'(?=[^"]{1,%d}")[^"]*?(?:' % STEM_MAXLEN
                        + b"|".join(re.escape(x) for x in stems) + rb')[^"]*')
        self.rx = re.compile(b'"(' + b"|".join(alts) + rb')"[ \t\r\n]*:[ \t\r\n]*')
        """The names as a regex, for the pure-Python scan (and for callers that want one)."""
        self.find = self.find_regex
        if native and _kv_scan is not None:
            table = bytearray(65536)
            for n in names:
                table[_fnv1a(n) & 0xFFFF] = 1
            minlen = min(map(len, names)) if names else 1
            maxlen = max(map(len, names)) if names else 1
            if stems:
                self.find = partial(_kv_stems, names, minlen, max(maxlen, STEM_MAXLEN),
                                    bytes(table), *stem_tables(stems))
            else:
                self.find = partial(_kv_scan, names, minlen, maxlen, bytes(table))

    def find_regex(self, lo: bytes) -> list[tuple[bytes, int]]:
        return [(m.group(1), m.end()) for m in self.rx.finditer(lo)]

    @staticmethod
    def native_available() -> bool:
        return _kv_scan is not None
