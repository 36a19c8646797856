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
"""

from __future__ import annotations

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

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
        """(fields, how many reference unknown entries, whether the block was read whole)."""
        out: list[tuple[str, str]] = []
        unknown = 0
        total = 0
        over = False
        pos = 0
        end = len(block)
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
                        else:
                            e = self._lookup(idx)
                            if e is None:
                                unknown += 1
                                e = (UNKNOWN, UNKNOWN)
                            field = e
                    else:
                        idx, pos = _int(block, pos, 7)
                        e = self._lookup(idx)
                        if e is None:
                            unknown += 1
                            e = (UNKNOWN, UNKNOWN)
                        field = e
                elif b & 0xE0 == 0x20:  # dynamic table size update
                    size, pos = _int(block, pos, 5)
                    if size > MAX_TABLE:
                        self._count("hpack_table_size_capped")
                        size = MAX_TABLE
                    self.max_size = size
                    self._evict()
                    continue
                else:
                    if b & 0x40:
                        prefix, add = 6, True
                    else:
                        prefix, add = 4, False  # without indexing / never indexed
                    idx, pos = _int(block, pos, prefix)
                    if idx:
                        e = self._lookup(idx)
                        if e is None:
                            unknown += 1
                            name = UNKNOWN
                        else:
                            name = e[0]
                    else:
                        name, pos = _str(block, pos)
                    value, pos = _str(block, pos)
                    field = (name, value)
                    if add:
                        if name == UNKNOWN:
                            # its size is unknown: the known entries' eviction is no longer
                            # exact, so they are known no more
                            self.forget()
                            self._count("hpack_unknown_insert")
                        else:
                            self._add(name, value)
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
            text = huffman(raw).decode("latin-1")
            if len(_HUFF_CACHE) >= 8192:
                _HUFF_CACHE.clear()
            _HUFF_CACHE[raw] = text
        return text, pos
    return raw.decode("latin-1"), pos


_HUFF_CACHE: dict[bytes, str] = {}
"""Decoded Huffman strings by their code: header values repeat (dates, types, servers)."""
_DFA: list[tuple[bytes, int]] = []


def _build_dfa() -> None:
    """The Huffman code (RFC 7541 Appendix B, the ``hpack`` package's table) as a byte-wise
    automaton: for each partial code (a state) and input byte, the bytes it completes and the
    partial code left. Built at the first use (about 0.2 s), then ~3x the ``hpack`` decoder."""
    children: list[list[int]] = [[-1, -1]]
    leaf: list[int] = [-1]
    for sym in range(256):
        code, ln = REQUEST_CODES[sym], REQUEST_CODES_LENGTH[sym]
        node = 0
        for k in range(ln - 1, -1, -1):
            bit = (code >> k) & 1
            nxt = children[node][bit]
            if nxt < 0:
                nxt = len(children)
                children.append([-1, -1])
                leaf.append(-1)
                children[node][bit] = nxt
            node = nxt
        leaf[node] = sym
    internal = [i for i in range(len(children)) if leaf[i] < 0]
    index = {node: i for i, node in enumerate(internal)}
    dfa: list[tuple[bytes, int]] = []
    for node0 in internal:
        for byte in range(256):
            node = node0
            out = bytearray()
            dead = False
            for k in range(7, -1, -1):
                node = children[node][(byte >> k) & 1]
                if node < 0:  # the EOS code (30 ones), or past it: not a string
                    dead = True
                    break
                if leaf[node] >= 0:
                    out.append(leaf[node])
                    node = 0
            dfa.append((b"", -1) if dead else (bytes(out), index[node]))
    _DFA[:] = dfa


def huffman(data: bytes) -> bytes:
    """Decode an HPACK Huffman string (padding, up to 7 one bits, not checked: an observer
    reads what the peer accepted)."""
    dfa = _DFA
    if not dfa:
        _build_dfa()
        dfa = _DFA
    state = 0
    out = []
    for b in data:
        chunk, state = dfa[(state << 8) | b]
        if state < 0:
            raise HpackError("bad huffman")
        if chunk:
            out.append(chunk)
    return b"".join(out)
