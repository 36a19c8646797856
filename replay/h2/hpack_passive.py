"""HPACK (RFC 7541) for a passive observer: one decoder per direction that survives not knowing.

The ``hpack`` package's ``Decoder`` is an endpoint's: a reference to a dynamic-table entry it
does not hold is a compression error, and the connection is over. An observer that picked the
connection up mid-way (or lost a segment holding a header block) does not know the older
entries, yet every entry inserted since it started is known *exactly*: entries are inserted at
the front and evicted from the back, so the oldest (unknown) ones always go first, and the known
ones keep their indices (62, 63, ... newest first). This decoder keeps only those, reads every
instruction of every block (so the table stays in step), and returns the fields it could decode
with the ones that reference unknown entries marked (``UNKNOWN``), never raising.

It uses the ``hpack`` package's static table and Huffman decoder; the instruction loop is its
own so that it can be bounded: the decoded header list of one block is capped (an "HPACK bomb"
references one large entry thousands of times), table size updates are capped, integers are
capped, and a malformed block is counted and abandoned without an exception.

``replay/h2/_hpack.c`` does exactly what ``PassiveDecoder.decode_py`` does (Huffman included,
with this module's table, marker, limits and code); ``decode`` runs it when it is built (not
with ``SHADOWTAP_PURE_PYTHON=1``), and ``tests/h2/test_hpack_native.py`` holds the two, and the
``hpack`` package, to the same results.
"""

from __future__ import annotations

from collections.abc import Callable

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

from replay._native import load_c

STATIC = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in HeaderTable.STATIC_TABLE]
"""RFC 7541 Appendix A, index 1..61 at 0..60."""
N_STATIC = len(STATIC)

UNKNOWN = "\x00?"
"""The name or value of a field that referenced a dynamic-table entry this observer never saw
(the field is kept, in place, so that the order and count stay honest)."""

MAX_TABLE = 64 * 1024
"""The largest dynamic table accepted from a size update (SETTINGS_HEADER_TABLE_SIZE is
usually 4096; some peers use 64 KiB)."""
MAX_HEADER_LIST = 256 * 1024
"""Decoded bytes of one header block beyond which fields are dropped (counted): bounds an
HPACK bomb. Instructions are still read, so the dynamic table stays in step."""
MAX_FIELDS = 4096
"""Fields of one header block beyond which fields are dropped (counted)."""
MAX_INT = 1 << 28
MAX_CACHED_BLOCK = 1024
"""Header blocks up to this size that reference no dynamic entry are kept with their fields
(responses repeat: the same date, type, length and etag), at most ``MAX_CACHED_BLOCKS``."""
MAX_CACHED_BLOCKS = 4096


class HpackError(Exception):
    """The block cannot be read further (its remaining instructions are lost)."""


class PassiveDecoder:
    """One direction's HPACK decoding state, for an observer."""

    __slots__ = ("entries", "known_all", "max_size", "size", "stats")

    def __init__(self, stats: dict[str, int], *, known_all: bool = True) -> None:
        self.entries: list[tuple[str, str]] = []
        """Known dynamic entries, newest first (index 62 is ``entries[0]``)."""
        self.size = 0
        self.max_size = 4096
        self.known_all = known_all
        """True when the table was followed from the connection's start: then an index beyond
        the known entries is the peer's error, not our ignorance."""
        self.stats = stats

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def forget(self) -> None:
        """A header block was lost (a gap): inserts may have been missed, so the known entries'
        indices are no longer certain. Start over knowing nothing."""
        self.entries = []
        self.size = 0
        self.known_all = False

    def _add(self, name: str, value: str) -> None:
        n = len(name) + len(value) + 32
        if n > self.max_size:
            self.entries.clear()
            self.size = 0
            return
        self.entries.insert(0, (name, value))
        self.size += n
        if self.size > self.max_size:
            self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size and self.entries:
            n, v = self.entries.pop()
            self.size -= len(n) + len(v) + 32

    def _lookup(self, idx: int) -> tuple[str, str] | None:
        if idx <= 0:
            raise HpackError("index 0")
        if idx <= N_STATIC:
            return STATIC[idx - 1]
        i = idx - N_STATIC - 1
        if i < len(self.entries):
            return self.entries[i]
        if self.known_all:
            self._count("hpack_bad_index")
        return None

    def decode(self, block: bytes) -> tuple[list[tuple[str, str]], int, bool]:
        """(fields, how many reference unknown entries, whether the block was read whole):
        ``decode_py``, in C when ``replay/h2/_hpack.c`` is built (``DECODE``)."""
        return DECODE(self, block)

    def decode_py(self, block: bytes) -> tuple[list[tuple[str, str]], int, bool]:
        """``decode``, the definition (``replay/h2/_hpack.c`` does exactly this)."""
        hit = _BLOCKS.get(block)
        if hit is not None:
            # the same block decoded before, and it referenced no dynamic entry: the same
            # fields, whatever the table holds; its inserts are made again
            fields, inserts = hit
            for field in inserts:
                self._add(field[0], field[1])
            return list(fields), 0, True
        out: list[tuple[str, str]] = []
        inserts: list[tuple[str, str]] | None = [] if len(block) <= MAX_CACHED_BLOCK else None
        unknown = 0
        total = 0
        over = False
        pos = 0
        end = len(block)
        cache = _HUFF_CACHE
        try:
            entries = self.entries
            while pos < end:
                b = block[pos]
                if b & 0x80:  # indexed field
                    if b != 0xFF:  # the index in the first byte (the common case), inline
                        idx = b & 0x7F
                        pos += 1
                        if 0 < idx <= N_STATIC:
                            field = STATIC[idx - 1]
                        elif N_STATIC < idx <= N_STATIC + len(entries):
                            field = entries[idx - N_STATIC - 1]
                            inserts = None
                        else:
                            e = self._lookup(idx)
                            if e is None:
                                unknown += 1
                                e = (UNKNOWN, UNKNOWN)
                            field = e
                    else:
                        inserts = None
                        idx, pos = _int(block, pos, 7)
                        e = self._lookup(idx)
                        if e is None:
                            unknown += 1
                            e = (UNKNOWN, UNKNOWN)
                        field = e
                elif b & 0xE0 == 0x20:  # dynamic table size update
                    inserts = None
                    size, pos = _int(block, pos, 5)
                    if size > MAX_TABLE:
                        self._count("hpack_table_size_capped")
                        size = MAX_TABLE
                    self.max_size = size
                    self._evict()
                    continue
                else:
                    if b & 0x40:
                        idx, add = b & 0x3F, True
                        if idx == 0x3F:
                            idx, pos = _int(block, pos, 6)
                        else:
                            pos += 1
                    else:  # without indexing / never indexed
                        idx, add = b & 0x0F, False
                        if idx == 0x0F:
                            idx, pos = _int(block, pos, 4)
                        else:
                            pos += 1
                    if idx:
                        if idx <= N_STATIC:
                            name = STATIC[idx - 1][0]
                        elif idx <= N_STATIC + len(entries):
                            name = entries[idx - N_STATIC - 1][0]
                            inserts = None
                        else:
                            e = self._lookup(idx)
                            if e is None:
                                unknown += 1
                                name = UNKNOWN
                            else:
                                name = e[0]
                    else:
                        name, pos = _str(block, pos)
                    # the value: _str, inline
                    if pos >= end:
                        raise HpackError("truncated string")
                    h = block[pos]
                    n = h & 0x7F
                    if n == 0x7F:
                        n, pos = _int(block, pos, 7)
                    else:
                        pos += 1
                    if pos + n > end:
                        raise HpackError("truncated string")
                    raw = block[pos:pos + n]
                    pos += n
                    if h & 0x80:
                        value = cache.get(raw)  # type: ignore[assignment]
                        if value is None:
                            value = _huff_str(raw)
                    else:
                        value = raw.decode("latin-1")
                    field = (name, value)
                    if add:
                        if name == UNKNOWN:
                            # its size is unknown: the known entries' eviction is no longer
                            # exact, so they are known no more
                            self.forget()
                            self._count("hpack_unknown_insert")
                            inserts = None  # not a list of inserts to make again: no cache
                        else:
                            if inserts is not None:
                                inserts.append(field)
                            # _add, inline
                            k = len(name) + len(value) + 32
                            if k > self.max_size:
                                entries.clear()
                                self.size = 0
                            else:
                                entries.insert(0, field)
                                self.size += k
                                if self.size > self.max_size:
                                    self._evict()
                        entries = self.entries
                if over:
                    continue
                total += len(field[0]) + len(field[1]) + 32
                if total > MAX_HEADER_LIST or len(out) >= MAX_FIELDS:
                    over = True
                    self._count("header_list_too_large")
                    continue
                out.append(field)
        except HpackError:
            self._count("hpack_errors")
            # the rest of the block is lost, and with it any inserts it made
            self.forget()
            return out, unknown, False
        if unknown:
            self._count("hpack_unknown_refs", unknown)
        elif inserts is not None and not over:
            if len(_BLOCKS) >= MAX_CACHED_BLOCKS:
                _BLOCKS.clear()
            _BLOCKS[bytes(block)] = (tuple(out), tuple(inserts))
        return out, unknown, not over


def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    v = data[pos] & mask
    pos += 1
    if v < mask:
        return v, pos
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise HpackError("truncated integer")
        b = data[pos]
        pos += 1
        v += (b & 0x7F) << shift
        if v > MAX_INT:
            raise HpackError("integer too large")
        if not b & 0x80:
            return v, pos
        shift += 7


def _str(data: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(data):
        raise HpackError("truncated string")
    huff = data[pos] & 0x80
    n, pos = _int(data, pos, 7)
    if pos + n > len(data):
        raise HpackError("truncated string")
    raw = data[pos:pos + n]
    pos += n
    if huff:
        text = _HUFF_CACHE.get(raw)
        if text is None:
            text = _huff_str(raw)
        return text, pos
    return raw.decode("latin-1"), pos


def _huff_str(raw: bytes) -> str:
    """A Huffman string decoded, and kept in the cache."""
    text = huffman(raw).decode("latin-1")
    if len(_HUFF_CACHE) >= 8192:
        _HUFF_CACHE.clear()
    _HUFF_CACHE[raw] = text
    return text


_BLOCKS: dict[bytes, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {}
"""Decoded header blocks that reference no dynamic entry: (fields, the entries they insert)."""
_HUFF_CACHE: dict[bytes, str] = {}
"""Decoded Huffman strings by their code: header values repeat (dates, types, servers)."""
_DFA: list[tuple[bytes, int] | None] = []
"""The Huffman code (RFC 7541 Appendix B, the ``hpack`` package's table) as a byte-wise
automaton: for each partial code (a state) and input byte, the bytes it completes and the partial
code left; (b"", -1) for the EOS code. Entries are made at their first use (building all 65,536
up front took 0.12 s of every run); then ~3x the ``hpack`` decoder."""
_TREE: list[list[int]] = []
"""The code's binary tree: per node, [child 0, child 1, symbol or -1]."""
_INTERNAL: list[int] = []
"""Tree node of each automaton state; ``_STATE``: the reverse."""
_STATE: dict[int, int] = {}


def _build_tree() -> None:
    tree: list[list[int]] = [[-1, -1, -1]]
    for sym in range(256):
        code, ln = REQUEST_CODES[sym], REQUEST_CODES_LENGTH[sym]
        node = 0
        for k in range(ln - 1, -1, -1):
            bit = (code >> k) & 1
            nxt = tree[node][bit]
            if nxt < 0:
                nxt = len(tree)
                tree.append([-1, -1, -1])
                tree[node][bit] = nxt
            node = nxt
        tree[node][2] = sym
    internal = [i for i in range(len(tree)) if tree[i][2] < 0]
    _STATE.update((node, i) for i, node in enumerate(internal))
    _INTERNAL[:] = internal
    _TREE[:] = tree
    _DFA[:] = [None] * (len(internal) << 8)


def _dfa_entry(i: int) -> tuple[bytes, int]:
    """Make the automaton's entry ``i`` (state << 8 | byte)."""
    tree = _TREE
    node = _INTERNAL[i >> 8]
    byte = i & 0xFF
    out = bytearray()
    e: tuple[bytes, int]
    for k in range(7, -1, -1):
        node = tree[node][(byte >> k) & 1]
        if node < 0:  # the EOS code (30 ones), or past it: not a string
            e = (b"", -1)
            break
        if tree[node][2] >= 0:
            out.append(tree[node][2])
            node = 0
    else:
        e = (bytes(out), _STATE[node])
    _DFA[i] = e
    return e


def huffman(data: bytes) -> bytes:
    """Decode an HPACK Huffman string (padding, up to 7 one bits, not checked: an observer
    reads what the peer accepted)."""
    dfa = _DFA
    if not dfa:
        _build_tree()
    state = 0
    out = []
    for b in data:
        i = (state << 8) | b
        e = dfa[i]
        chunk, state = e if e is not None else _dfa_entry(i)
        if state < 0:
            raise HpackError("bad huffman")
        if chunk:
            out.append(chunk)
    return b"".join(out)


def _load_c() -> Callable[[PassiveDecoder, bytes], tuple[list[tuple[str, str]], int, bool]]:
    """``replay/h2/_hpack.c``'s ``decode``, given this module's table, marker, limits and
    Huffman code; else ``PassiveDecoder.decode_py``."""
    configure = load_c("replay.h2._hpack", "configure")
    decode = load_c("replay.h2._hpack", "decode")
    if configure is None or decode is None:
        return PassiveDecoder.decode_py
    try:
        configure(STATIC, UNKNOWN, MAX_TABLE, MAX_HEADER_LIST, MAX_FIELDS, MAX_INT,
                  REQUEST_CODES[:256], REQUEST_CODES_LENGTH[:256])
    except (TypeError, ValueError):  # a build that does not match this module: not used
        return PassiveDecoder.decode_py
    return decode  # type: ignore[no-any-return]


DECODE = _load_c()
"""``PassiveDecoder.decode`` as a function of (decoder, block): C when built (``C_DECODE``),
else the Python definition."""
C_DECODE = DECODE if DECODE is not PassiveDecoder.decode_py else None
