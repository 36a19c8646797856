# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The JSON member-name scan of ``replay.sanitise.keyscan`` as a C loop (see there for why).

Same results as ``KeyScan.find_regex``: every quote is a possible start of a member name (the
document holds no backslash, so every quote is a delimiter); the text up to the next quote is
a name when it is one of ``names`` and a colon follows (blanks around it allowed); after a match
the scan goes on after the blanks that follow the colon, otherwise at that next quote.

Each quoted text short enough to be a name is hashed while it is walked (FNV-1a, 32 bits), and
only one whose hash is marked in ``table`` (the names' hashes, 16 bits of them) becomes a
Python object to look up: most quoted texts of a document cost a few C operations a byte.
"""

from libc.stdint cimport uint32_t
from libc.string cimport memchr


cdef inline bint _blank(unsigned char c) noexcept:
    return c == 32 or c == 9 or c == 13 or c == 10


def fnv1a(bytes name):
    """The hash ``kv_scan`` computes over a quoted text (for building ``table``)."""
    cdef uint32_t h = 2166136261u
    cdef unsigned char c
    for c in name:
        h = (h ^ c) * 16777619u
    return h


def kv_scan(frozenset names, Py_ssize_t minlen, Py_ssize_t maxlen, bytes table, bytes lo):
    """[(name, offset of the value after the colon and blanks), ...] in document order.

    ``table``: 65536 bytes, non-zero at ``fnv1a(name) & 0xFFFF`` for each name. ``lo`` comes
    last so that ``functools.partial`` can bind the rest once."""
    cdef const unsigned char* s = lo
    cdef const unsigned char* t = table
    cdef Py_ssize_t n = len(lo)
    cdef Py_ssize_t i = 0, j, k, length, stop
    cdef const unsigned char* q
    cdef uint32_t h
    cdef unsigned char c
    out = []
    if len(table) != 65536:
        raise ValueError("table must be 65536 bytes")
    while i < n:
        q = <const unsigned char*>memchr(s + i, 34, n - i)
        if q == NULL:
            break
        i = q - s  # a quote: a possible name starts after it
        j = i + 1
        stop = i + 1 + maxlen
        if stop > n:
            stop = n
        h = 2166136261u
        while j < stop:
            c = s[j]
            if c == 34:
                break
            h = (h ^ c) * 16777619u
            j += 1
        if j < n and s[j] != 34:  # longer than any name: find its end without hashing
            q = <const unsigned char*>memchr(s + j, 34, n - j)
            if q == NULL:
                break
            i = q - s
            continue
        if j >= n:
            break
        length = j - i - 1
        if length >= minlen and t[h & 0xFFFF]:
            name = lo[i + 1:j]
            if name in names:
                k = j + 1
                while k < n and _blank(s[k]):
                    k += 1
                if k < n and s[k] == 58:  # ':'
                    k += 1
                    while k < n and _blank(s[k]):
                        k += 1
                    out.append((name, k))
                    i = k
                    continue
        i = j  # the closing quote may open the next candidate
    return out
