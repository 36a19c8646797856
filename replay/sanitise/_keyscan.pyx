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


cdef extern from "string.h":
    # GNU memmem (pyconfig.h defines _GNU_SOURCE before any system header)
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)


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


cdef inline Py_ssize_t _stem_at(const unsigned char* s, Py_ssize_t p, Py_ssize_t limit,
                                const unsigned char* f, const unsigned char* st, Py_ssize_t ns,
                                const unsigned char* pr) noexcept:
    """The length of the first stem (in ``stems`` order) starting at ``s[p]`` and ending by
    ``limit``, or 0: the two-byte ``pairs`` mark first, then the stems of that first byte."""
    if p + 1 >= limit or not pr[(s[p] << 8) | s[p + 1]]:
        return 0
    return _stem_len(s, p, limit, f, st, ns)


cdef inline Py_ssize_t _stem_len(const unsigned char* s, Py_ssize_t p, Py_ssize_t limit,
                                 const unsigned char* f, const unsigned char* st,
                                 Py_ssize_t ns) noexcept:
    """``_stem_at`` without the two-byte gate (the caller has its own)."""
    cdef Py_ssize_t r, q2
    r = f[2 * s[p]] | (f[2 * s[p] + 1] << 8)
    if not r:
        return 0
    r -= 1
    while r < ns and st[r] == s[p]:  # the stems starting with this byte, in order
        q2 = 1
        while r + q2 < ns and st[r + q2] != 0 and p + q2 < limit and st[r + q2] == s[p + q2]:
            q2 += 1
        if r + q2 < ns and st[r + q2] == 0:
            return q2
        while r < ns and st[r] != 0:
            r += 1
        r += 1
    return 0


def kv_scan_stems(frozenset names, Py_ssize_t minlen, Py_ssize_t maxlen, bytes table,
                  bytes first, bytes stems, bytes pairs, bytes lo):
    """``kv_scan`` plus every other name (up to ``maxlen`` long) that holds one of ``stems``.

    ``stems``: the stems sorted, each followed by a NUL byte; ``first``: 512 bytes, for each
    byte value 1 + the offset in ``stems`` of the first stem starting with it (16 bits, little
    endian), 0 if none; ``pairs``: 65536 bytes, non-zero at ``b0 << 8 | b1`` for the first two
    bytes of each stem (every stem is at least two long), so most positions cost one lookup. A quoted text followed by a colon is a result when it is one of
    ``names`` or holds a stem (the caller then decides by the whole name, with a cache)."""
    cdef const unsigned char* s = lo
    cdef const unsigned char* t = table
    cdef const unsigned char* f = first
    cdef const unsigned char* st = stems
    cdef const unsigned char* pr = pairs
    cdef Py_ssize_t ns = len(stems)
    cdef Py_ssize_t n = len(lo)
    cdef Py_ssize_t i = 0, j, k, length, stop, p
    cdef const unsigned char* q
    cdef uint32_t h
    cdef unsigned char c
    cdef bint hit
    out = []
    if len(table) != 65536 or len(first) != 512 or len(pairs) != 65536:
        raise ValueError("table must be 65536 bytes and first 512")
    while i < n:
        q = <const unsigned char*>memchr(s + i, 34, n - i)
        if q == NULL:
            break
        i = q - s
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
        if j < n and s[j] != 34:
            q = <const unsigned char*>memchr(s + j, 34, n - j)
            if q == NULL:
                break
            i = q - s
            continue
        if j >= n:
            break
        length = j - i - 1
        k = j + 1
        while k < n and _blank(s[k]):
            k += 1
        if length > 0 and k < n and s[k] == 58:  # a member name
            hit = False
            if length >= minlen and t[h & 0xFFFF]:
                name = lo[i + 1:j]
                hit = name in names
            if not hit:
                p = i + 1
                while p + 1 < j and not hit:
                    hit = _stem_at(s, p, j, f, st, ns, pr) > 0
                    p += 1
            if hit:
                k += 1
                while k < n and _blank(s[k]):
                    k += 1
                out.append((lo[i + 1:j], k))
                i = k
                continue
        i = j
    return out


cdef inline bint _hex(unsigned char c) noexcept:
    return (48 <= c <= 57) or (65 <= c <= 70) or (97 <= c <= 102)


def key_gates(bytes text, bytes us_tbl, bytes dash_tbl, bytes dot_tbl):
    """Where a vendor key could start: ``[(offset, separator byte), ...]`` for each '_', '-'
    and '.' whose preceding byte is marked in that separator's 256-byte table, and (byte 65)
    each 'A' starting 'A?[A-Z]A' with ? in KSGIRN, or 'AIza', and (byte 83) each 'SK' + a
    hex digit with room for 32 of them; in order per separator; and whether the text holds
    '-----BEGIN' (a PEM block). One memchr walk per
    separator instead of a regex attempt at each of them (see ``detectors.find_api_key``)."""
    cdef const unsigned char* s = text
    cdef const unsigned char* tu = us_tbl
    cdef const unsigned char* td = dash_tbl
    cdef const unsigned char* tp = dot_tbl
    cdef Py_ssize_t n = len(text)
    cdef Py_ssize_t i
    cdef const unsigned char* q
    cdef bint pem = False
    if len(us_tbl) != 256 or len(dash_tbl) != 256 or len(dot_tbl) != 256:
        raise ValueError("tables must be 256 bytes")
    out = []
    i = 1
    while i < n:
        q = <const unsigned char*>memchr(s + i, 95, n - i)
        if q == NULL:
            break
        i = q - s
        if tu[s[i - 1]]:
            out.append((i, 95))
        i += 1
    i = 1
    while i < n:
        q = <const unsigned char*>memchr(s + i, 45, n - i)
        if q == NULL:
            break
        i = q - s
        if td[s[i - 1]]:
            out.append((i, 45))
        if not pem and i + 10 <= n and s[i + 1] == 45 and s[i + 2] == 45 and s[i + 3] == 45 \
                and s[i + 4] == 45 and s[i + 5] == 66 and s[i + 6] == 69 and s[i + 7] == 71 \
                and s[i + 8] == 73 and s[i + 9] == 78:
            pem = True
        i += 1
    if not pem and n >= 10 and s[0] == 45 and text.startswith(b"-----BEGIN"):
        pem = True
    i = 0
    while i + 4 <= n:  # AWS key ids (AKIA, ASIA, AGPA...) and Google keys (AIza)
        q = <const unsigned char*>memchr(s + i, 65, n - i)
        if q == NULL:
            break
        i = q - s
        if i + 4 <= n and ((s[i + 3] == 65 and s[i + 2] >= 65 and s[i + 2] <= 90
                            and (s[i + 1] == 75 or s[i + 1] == 83 or s[i + 1] == 71
                                 or s[i + 1] == 73 or s[i + 1] == 82 or s[i + 1] == 78))
                           or (s[i + 1] == 73 and s[i + 2] == 122 and s[i + 3] == 97)):
            out.append((i, 65))
        i += 1
    i = 1
    while i < n:
        q = <const unsigned char*>memchr(s + i, 46, n - i)
        if q == NULL:
            break
        i = q - s
        if tp[s[i - 1]]:
            out.append((i, 46))
        i += 1
    i = 0
    while i + 34 <= n:  # Twilio API keys: 'SK' and 32 hex digits
        q = <const unsigned char*>memchr(s + i, 83, n - i)
        if q == NULL:
            break
        i = q - s
        if i + 34 <= n and s[i + 1] == 75 and _hex(s[i + 2]):
            out.append((i, 83))
        i += 1
    return out, pem


def ipv6_gate(bytes text):
    """Whether ``detectors._IPV6_ANCHOR`` (``::``, or ``:h:h:h:`` with 1-4 hex digits each)
    matches anywhere in ``text``: one memchr walk over the colons instead of a regex attempt at
    each (a JSON document has one per member)."""
    cdef const unsigned char* s = text
    cdef Py_ssize_t n = len(text)
    cdef Py_ssize_t i = 0, j, g, k
    cdef const unsigned char* q
    while i < n:
        q = <const unsigned char*>memchr(s + i, 58, n - i)
        if q == NULL:
            return False
        i = q - s
        if i + 1 < n and s[i + 1] == 58:
            return True
        j = i + 1
        g = 0
        while g < 3:
            k = 0
            while j < n and k < 4 and _hex(s[j]):
                j += 1
                k += 1
            if k == 0 or j >= n or s[j] != 58:
                break
            j += 1
            g += 1
        if g == 3:
            return True
        i += 1
    return False


def stem_find(bytes first, bytes stems, bytes pairs, bytes lo):
    """Where ``stems`` occur in ``lo``: ``[(start, end), ...]``, leftmost first and never
    overlapping, exactly as ``re.finditer`` over the alternation of the stems in sorted order
    (at one position the first stem in sorted order that matches wins; the scan goes on at its
    end). ``first``, ``stems`` and ``pairs`` as for ``kv_scan_stems``.

    Why: the text detectors look for secret-like names (``password=``, ``api_key:``) by their
    stems in every body; Python's ``re`` tries the alternation at every byte (~10 ns a byte),
    this costs one table lookup a byte."""
    cdef const unsigned char* s = lo
    cdef const unsigned char* f = first
    cdef const unsigned char* st = stems
    cdef const unsigned char* pr = pairs
    cdef Py_ssize_t ns = len(stems)
    cdef Py_ssize_t n = len(lo)
    cdef Py_ssize_t p = 0, q2
    out = []
    if len(first) != 512 or len(pairs) != 65536:
        raise ValueError("first must be 512 bytes and pairs 65536")
    while p + 1 < n:
        q2 = _stem_at(s, p, n, f, st, ns, pr)
        if q2:
            out.append((p, p + q2))
            p += q2
        else:
            p += 1
    return out


cdef inline bint _cls_alpha(unsigned char c) noexcept:
    return c == 65 or c == 97  # 'A' or 'a' on the class map


cdef inline bint _alnum(unsigned char c) noexcept:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122)


cdef inline bint _iban_at(const unsigned char* s, const unsigned char* x,
                         const unsigned char* cc, const unsigned char* ln, Py_ssize_t p,
                         Py_ssize_t n) noexcept:
    """Whether an IBAN anchor starts at p - 2 (s[p] and s[p + 1] are '0' on the class map)."""
    cdef Py_ssize_t k, e
    cdef unsigned char a, b
    if p + 12 >= n or not _cls_alpha(s[p - 1]) or not _cls_alpha(s[p - 2]):
        return False
    k = p + 2
    while k < p + 13:
        if s[k] != 48 and not _cls_alpha(s[k]):
            return False
        k += 1
    if x == NULL:
        return True
    a = x[p - 2] & 0xDF  # upper case
    b = x[p - 1] & 0xDF
    if not ((not (p > 2 and _alnum(x[p - 3])) and 48 <= x[p] <= 57
             and 48 <= x[p + 1] <= 57 and 65 <= a <= 90 and 65 <= b <= 90
             and cc[(a - 65) * 26 + (b - 65)] != 0)):
        return False
    if ln != NULL:
        # the country's length of letters and digits, then one more: find_iban takes exactly
        # that many and rejects an IBAN glued to a further letter or digit (a hex token 'at00...')
        e = p - 2 + ln[(a - 65) * 26 + (b - 65)]
        if e < n:
            k = p + 2
            while k <= e and _alnum(x[k]):
                k += 1
            if k > e:
                return False
    return True


def iban_anchors(bytes t, bytes text=None, bytes countries=None, bytes lengths=None):
    """Where an IBAN in any case could start, on the class map (``detectors.CLASS_MAP``):
    ``[i, ...]`` for each ``[Aa][Aa]00`` followed by eleven of ``0``, ``A``, ``a`` — exactly
    the starts of ``re.finditer(rb"(?:AA|aa|Aa|aA)00(?=[0Aa]{11})", t)``.

    With ``text`` (the original bytes) and ``countries`` (676 bytes, non-zero at
    ``(A - 65) * 26 + (B - 65)`` for each country code ``AB``), the first checks of
    ``detectors.find_iban`` are made here too: no letter or digit right before, two real digits,
    a known country in either case. Tokens full of ``ab12...`` then cost no Python at all.
    With ``lengths`` too (676 bytes, the country's IBAN length), a start whose country's length
    of letters and digits is followed by one more letter or digit is left out: ``find_iban``
    rejects it (it is part of a longer token).

    Why: that regex has no literal prefix, so ``re`` tries it at every byte of a body full of
    letters; here a loop looks at every other byte of the class map for a '0' (both '0's of the
    '00' cannot be missed) and checks the rest only there."""
    cdef const unsigned char* s = t
    cdef const unsigned char* x = NULL
    cdef const unsigned char* cc = NULL
    cdef const unsigned char* ln = NULL
    cdef Py_ssize_t n = len(t)
    if text is not None and countries is not None:
        if len(text) != n or len(countries) != 676:
            raise ValueError("text must match t, countries must be 676 bytes")
        x = text
        cc = countries
        if lengths is not None:
            if len(lengths) != 676:
                raise ValueError("lengths must be 676 bytes")
            ln = lengths
    cdef Py_ssize_t q = 3
    out = []
    # an anchor's '00' is at p, p + 1 with p >= 2: q = 3, 5, 7 ... covers p = q - 1 and p = q
    while q < n:
        if s[q] == 48:
            if s[q - 1] == 48:
                if _iban_at(s, x, cc, ln, q - 1, n):
                    out.append(q - 3)
            elif q + 1 < n and s[q + 1] == 48:
                if _iban_at(s, x, cc, ln, q, n):
                    out.append(q - 2)
        q += 2
    return out


def zero_runs(bytes t):
    """The runs of eleven or more '0' on the class map (digits, spaces, dashes), as
    ``[(start, end), ...]`` in order: the same as ``detectors.zero_runs_py``. A byte ten places
    on that is not '0' skips eleven."""
    cdef const unsigned char* s = t
    cdef Py_ssize_t n = len(t)
    cdef Py_ssize_t i = 0, j, start
    out = []
    while i + 11 <= n:  # s[i - 1] is no '0' (or i == 0)
        if s[i + 10] != 48:
            i += 11
            continue
        start = i + 10
        while start > i and s[start - 1] == 48:
            start -= 1
        j = i + 11
        while j < n and s[j] == 48:
            j += 1
        if j - start >= 11:
            out.append((start, j))
        i = j + 1
    return out


def dot_spans(bytes t):
    """``[m.span() for m in re.finditer(rb"\\.0{1,3}\\.", t)]`` (``detectors._DOT``) as a memchr
    hop from one '.' to the next."""
    cdef const unsigned char* s = t
    cdef Py_ssize_t n = len(t)
    cdef Py_ssize_t i = 0, k
    cdef const unsigned char* q
    out = []
    while i < n:
        q = <const unsigned char*>memchr(s + i, 46, n - i)
        if q == NULL:
            break
        i = q - s
        k = 0
        while k < 3 and i + 1 + k < n and s[i + 1 + k] == 48:
            k += 1
        if k > 0 and i + 1 + k < n and s[i + 1 + k] == 46:
            out.append((i, i + k + 2))
            i += k + 2
        else:
            i += 1
    return out


def contains(hay, needle):
    """``needle in hay`` (memmem for two ``bytes``): CPython's own search skips poorly for a
    needle of many distinct bytes in a body of many distinct bytes (the echo check of a
    bearer token over a JSON body)."""
    if type(hay) is not bytes or type(needle) is not bytes:
        return needle in hay
    cdef const unsigned char* h = hay
    cdef const unsigned char* nd = needle
    return memmem(h, len(hay), nd, len(needle)) != NULL


def nine_digit_runs(bytes text):
    """Offsets of the runs of exactly nine ASCII digits (not inside a longer run of digits, not
    followed by a letter) that are not the whole value of a JSON member (``"id":123456789``, ``"ref": "123456789"``:
    the member's name says what it is, and the name rules decide), in order: where a bare SSN
    can be (``detectors.find_ssn``). Same results as ``detectors.nine_digit_runs_py``. A byte
    eight places on that is not a digit skips nine."""
    cdef const unsigned char* s = text
    cdef Py_ssize_t n = len(text)
    cdef Py_ssize_t i = 0, j, k, start
    cdef bint quoted
    out = []
    while i + 9 <= n:
        if not (48 <= s[i + 8] <= 57):
            i += 9  # no run of nine holds a position before i + 9
            continue
        start = i + 8  # the run holding i + 8; s[i - 1] is no digit, so it starts at i or on
        while start > i and 48 <= s[start - 1] <= 57:
            start -= 1
        j = i + 9
        while j < n and 48 <= s[j] <= 57:
            j += 1
        i = j + 1
        if j - start != 9 or (j < n and ((65 <= s[j] <= 90) or (97 <= s[j] <= 122))):
            continue  # not nine, or glued to a letter after it (a token, a hash)
        k = start - 1
        quoted = k >= 0 and s[k] == 34
        if quoted:
            k -= 1
        while k >= 0 and s[k] == 32:
            k -= 1
        if k >= 1 and s[k] == 58 and s[k - 1] == 34 and (not quoted or (j < n and s[j] == 34)):
            continue
        out.append(start)
    return out


def pair_names(bytes first, bytes stems, bytes pid, bytes tri, bytes namechars,
               Py_ssize_t name_max, bytes lo, bytes text):
    """``stem_find`` over ``lo`` (the same stems, the same non-overlapping hits) with, for each
    hit, the name around it in ``text``: ``[(stem start, name start, name end), ...]``.

    The name runs over the bytes marked in ``namechars`` (256 bytes): back from the stem start
    while fewer than ``name_max`` bytes have been taken, then forward from the stem end while the
    name is shorter than ``name_max`` (the loops of ``detectors.find_pairs``).

    ``pid``: 65536 bytes, for the first two bytes of each stem a small id (1-255), 0 elsewhere;
    ``tri``: 65536 bytes, non-zero at ``id << 8 | b`` when a stem with that two-byte start has
    ``b`` as its third byte, and at every ``b`` when the two bytes are a stem of their own. Most
    positions of a text cost one lookup, most two-byte starts of English words a second one.
    ``first`` and ``stems`` as for ``stem_find``."""
    cdef const unsigned char* s = lo
    cdef const unsigned char* tx = text
    cdef const unsigned char* f = first
    cdef const unsigned char* st = stems
    cdef const unsigned char* pi = pid
    cdef const unsigned char* tr = tri
    cdef const unsigned char* nc = namechars
    cdef Py_ssize_t ns = len(stems)
    cdef Py_ssize_t n = len(lo)
    cdef Py_ssize_t p = 0, q2, a, b
    cdef unsigned int v
    out = []
    if len(first) != 512 or len(pid) != 65536 or len(tri) != 65536 or len(namechars) != 256:
        raise ValueError("first must be 512 bytes, pid and tri 65536, namechars 256")
    if len(text) != n:
        raise ValueError("text and lo must be the same length")
    while p + 1 < n:
        v = pi[(s[p] << 8) | s[p + 1]]
        if not v or (p + 2 < n and not tr[(v << 8) | s[p + 2]]):
            p += 1
            continue
        q2 = _stem_len(s, p, n, f, st, ns)
        if not q2:
            p += 1
            continue
        a = p
        while a > 0 and p - a < name_max and nc[tx[a - 1]]:
            a -= 1
        b = p + q2
        while b < n and b - a < name_max and nc[tx[b]]:
            b += 1
        out.append((p, a, b))
        p += q2
    return out



cdef inline bint _dig(unsigned char c) noexcept:
    return 48 <= c <= 57


cdef unsigned char _ALT_CLS[256]
"""Per byte: 1 a digit, 2 the last byte of a card group separator other than a space or dash
('.', '/', 0xA0, 0xAF, ';'), 0 else."""
for _c in range(256):
    _ALT_CLS[_c] = 1 if 48 <= _c <= 57 else 2 if _c in (46, 47, 0xA0, 0xAF, 59) else 0


def alt_card_starts(bytes text):
    """Offsets of the runs of exactly four ASCII digits followed by a '.', '/', no-break space
    (U+00A0, U+202F in UTF-8), ``&nbsp;`` (any case) or ``&#160;`` and four more digits, in
    order: where a card grouped by those separators can start (``detectors.find_card``). Same
    results as ``detectors.alt_card_starts_py``.

    The last byte of the separator and the four digits after it are five bytes in a row, so
    one byte in five is looked at: one that is neither a digit nor such a last byte ('.', '/',
    0xA0, 0xAF, ';') rules out the five places it could be in."""
    cdef const unsigned char* s = text
    cdef Py_ssize_t n = len(text)
    cdef Py_ssize_t kb = 0, k, e, st
    cdef unsigned char c
    out = []
    while kb + 4 < n:
        if not _ALT_CLS[s[kb + 4]]:
            kb += 5
            continue
        for k in range(kb, kb + 5):
            if k + 4 >= n:
                break
            if _ALT_CLS[s[k]] != 2:
                continue
            if not (_dig(s[k + 1]) and _dig(s[k + 2]) and _dig(s[k + 3]) and _dig(s[k + 4])):
                continue
            c = s[k]
            if c == 46 or c == 47:
                e = k
            elif c == 0xA0:
                if k < 1 or s[k - 1] != 0xC2:
                    continue
                e = k - 1
            elif c == 0xAF:
                if k < 2 or s[k - 2] != 0xE2 or s[k - 1] != 0x80:
                    continue
                e = k - 2
            else:
                if k < 5 or s[k - 5] != 38:
                    continue
                if not ((s[k - 4] | 32) == 110 and (s[k - 3] | 32) == 98
                        and (s[k - 2] | 32) == 115 and (s[k - 1] | 32) == 112) and not (
                        s[k - 4] == 35 and s[k - 3] == 49 and s[k - 2] == 54 and s[k - 1] == 48):
                    continue
                e = k - 5
            st = e - 4
            if st < 0 or not (_dig(s[st]) and _dig(s[st + 1]) and _dig(s[st + 2])
                              and _dig(s[st + 3])):
                continue
            if st > 0 and _dig(s[st - 1]):
                continue
            out.append(st)
        kb += 5
    return out
