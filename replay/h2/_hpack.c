/* HPACK header block decoding for a passive observer, in C: exactly
 * ``replay.h2.hpack_passive.PassiveDecoder.decode_py`` (the definition; read it first), which
 * runs instead when this module is not built or SHADOWTAP_PURE_PYTHON is set.
 *
 * ``decode(dec, block)`` reads and updates the decoder's own attributes (``entries``, the list
 * of known dynamic entries, newest first; ``size``; ``max_size``; ``known_all``; ``stats``, the
 * counters) and returns what ``decode_py`` returns: (fields, unknown references, whether the
 * block was read whole). A lost block calls ``dec.forget()`` as the Python code does. The
 * static table, the UNKNOWN marker, the limits and the Huffman code come from the Python module
 * (``configure``), so they are defined once. The Python decoder's caches (blocks, Huffman
 * strings) only save work: decoding afresh gives the same fields.
 *
 * ``scan(...)`` reads the usual frames of ``replay.h2.reader.H2Connection`` (complete DATA
 * frames, HEADERS frames that end their block) as its ``_frame`` does, decodes their blocks and
 * splits the heads as ``_request_parts`` / ``_response_parts`` do, and hands them back as events
 * for ``H2Connection._events``; any other frame is left to ``_frame``.
 * tests/h2/test_hpack_native.py holds both to their Python definitions.
 *
 * The block and frame bytes are hostile; so may be the Python objects read (the decoder's
 * attributes are plain): an entry that is not a (str, str) tuple or a size beyond 2^60 is
 * refused (TypeError, OverflowError) before it is used, counters are added to as Python adds,
 * lengths are read again after anything that may run Python code, and the static table is a
 * copy made at ``configure``.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *STATIC = NULL;   /* tuple of 61 (name, value) tuples: a copy, so that a
                                   * change to the Python list cannot move what is read */
static Py_ssize_t N_STATIC = 0;
static PyObject *UNKNOWN = NULL;  /* str */
static PyObject *UNKNOWN_FIELD = NULL;  /* (UNKNOWN, UNKNOWN) */
static long long MAX_TABLE = 64 * 1024;
static long long MAX_HEADER_LIST = 256 * 1024;
static Py_ssize_t MAX_FIELDS = 4096;
static long long MAX_INT = 1 << 28;

/* The Huffman code as a binary tree: per node, its two children (-1: none) and its symbol
 * (-1 for an inner node). 256 symbols: at most 511 nodes. */
static int tree_child[1024][2];
static int tree_sym[1024];
static int tree_n = 0;
static int configured = 0;
/* The tree walked 4 bits at a time: per inner node (a state, by its index among inner
 * nodes) and nibble, the state reached, and the symbol completed (a code is 5 bits at least,
 * so one per nibble at most), or a failure (EOS). Made from the tree at ``configure``. */
static uint32_t nib[256][16];
#define NIB_STATE 0xFFu
#define NIB_SYM 0x10000u
#define NIB_FAIL 0x20000u

static PyObject *s_entries, *s_size, *s_max_size, *s_known_all, *s_stats, *s_forget;
static PyObject *k_bad_index, *k_capped, *k_unknown_insert, *k_too_large, *k_errors,
    *k_unknown_refs, *k_frames;

typedef struct {
    PyObject *dec;
    PyObject *stats;
    PyObject *entries;  /* owned */
    long long size;
    long long max_size;
    int known_all;
    int dirty;  /* entries, size or max_size changed since read or stored */
} St;

/* ``stats[key] = stats.get(key, 0) + n``, as the Python code counts (any number type, no
 * overflow). */
static int count_in(PyObject *stats, PyObject *key, long long n) {
    PyObject *old = PyDict_GetItemWithError(stats, key);
    if (old == NULL && PyErr_Occurred()) return -1;
    PyObject *add = PyLong_FromLongLong(n);
    if (add == NULL) return -1;
    PyObject *nv;
    if (old == NULL) {
        nv = add;
    } else {
        Py_INCREF(old);  /* borrowed from the dict: its __add__ may change the dict */
        nv = PyNumber_Add(old, add);
        Py_DECREF(old);
        Py_DECREF(add);
        if (nv == NULL) return -1;
    }
    int r = PyDict_SetItem(stats, key, nv);
    Py_DECREF(nv);
    return r;
}

static inline int count(St *st, PyObject *key, long long n) {
    return count_in(st->stats, key, n);
}

/* Field size as HPACK counts it (RFC 7541 §4.1): the lengths of the str objects + 32. Only
 * for a checked field (``entry_ok``, the static table, a field made here). */
static inline long long fsize(PyObject *field) {
    return (long long)PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(field, 0))
        + (long long)PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(field, 1)) + 32;
}

/* A dynamic entry read from the Python side (``dec.entries`` is anyone's list): a (str, str)
 * tuple, else TypeError. */
static int entry_ok(PyObject *e) {
    if (PyTuple_Check(e) && PyTuple_GET_SIZE(e) == 2 && PyUnicode_Check(PyTuple_GET_ITEM(e, 0))
        && PyUnicode_Check(PyTuple_GET_ITEM(e, 1)))
        return 1;
    PyErr_SetString(PyExc_TypeError, "decoder entries must be (str, str) tuples");
    return 0;
}

static int evict(St *st) {
    Py_ssize_t n;
    /* the size is read again each time: removing an entry may run code (a __del__) */
    while (st->size > st->max_size && (n = PyList_GET_SIZE(st->entries)) > 0) {
        PyObject *last = PyList_GET_ITEM(st->entries, n - 1);
        if (!entry_ok(last)) return -1;
        st->size -= fsize(last);
        st->dirty = 1;
        if (PyList_SetSlice(st->entries, n - 1, n, NULL) < 0) return -1;
    }
    return 0;
}

/* Sizes beyond this (only from a decoder's attributes set by hand) are refused: the sums of
 * sizes below stay far from overflowing. */
#define SIZE_LIMIT (1LL << 60)

static int read_size(PyObject *dec, PyObject *name, long long *out) {
    PyObject *tmp = PyObject_GetAttr(dec, name);
    if (tmp == NULL) return -1;
    long long v = PyLong_AsLongLong(tmp);
    Py_DECREF(tmp);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v > SIZE_LIMIT || v < -SIZE_LIMIT) {
        PyErr_Format(PyExc_OverflowError, "decoder %U out of range", name);
        return -1;
    }
    *out = v;
    return 0;
}

/* Write the decoder's state back; then ``forget()`` when asked. */
static int store(St *st, int forget) {
    PyObject *v = PyLong_FromLongLong(st->size);
    if (v == NULL) return -1;
    int r = PyObject_SetAttr(st->dec, s_size, v);
    Py_DECREF(v);
    if (r < 0) return -1;
    v = PyLong_FromLongLong(st->max_size);
    if (v == NULL) return -1;
    r = PyObject_SetAttr(st->dec, s_max_size, v);
    Py_DECREF(v);
    if (r < 0) return -1;
    st->dirty = 0;
    if (forget) {
        PyObject *x = PyObject_CallMethodNoArgs(st->dec, s_forget);
        if (x == NULL) return -1;
        Py_DECREF(x);
        Py_SETREF(st->entries, PyObject_GetAttr(st->dec, s_entries));
        if (st->entries == NULL) return -1;
        if (!PyList_Check(st->entries)) {
            PyErr_SetString(PyExc_TypeError, "entries must be a list");
            return -1;
        }
        if (read_size(st->dec, s_size, &st->size) < 0) return -1;
        if (read_size(st->dec, s_max_size, &st->max_size) < 0) return -1;
        PyObject *ka = PyObject_GetAttr(st->dec, s_known_all);
        if (ka == NULL) return -1;
        st->known_all = PyObject_IsTrue(ka);
        Py_DECREF(ka);
        if (st->known_all < 0) return -1;
    }
    return 0;
}

#define BAD (-2)  /* a malformed block (HpackError in the Python code) */

/* An HPACK integer (§5.1) with a ``prefix``-bit prefix at *pos. */
static int read_int(const unsigned char *d, Py_ssize_t end, Py_ssize_t *pos, int prefix,
                    long long *out) {
    unsigned mask = (1u << prefix) - 1;
    long long v = d[*pos] & mask;
    (*pos)++;
    if (v < (long long)mask) {
        *out = v;
        return 0;
    }
    int shift = 0;
    for (;;) {
        if (*pos >= end) return BAD;
        unsigned b = d[*pos];
        (*pos)++;
        if (b & 0x7F) {
            /* >= 2^56 > MAX_INT (``configure`` checks) whatever came before; v stays below
             * 2^57 */
            if (shift >= 56) return BAD;
            v += (long long)(b & 0x7F) << shift;
            if (v > MAX_INT) return BAD;
        }
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
        /* any number of 0x80 bytes (adding nothing) may come: shift stops growing */
        if (shift < 56) shift += 7;
    }
}

static PyObject *huffman_str(const unsigned char *s, Py_ssize_t n, int *bad) {
    unsigned char stackbuf[1024];
    stackbuf[0] = 0;
    /* a code is 5 bits at least (``configure`` checks): at most 8n/5 symbols */
    Py_ssize_t cap = n / 5 * 8 + 8;
    unsigned char *buf = cap <= (Py_ssize_t)sizeof(stackbuf) ? stackbuf : PyMem_Malloc(cap);
    if (buf == NULL) return PyErr_NoMemory();
    Py_ssize_t o = 0;
    unsigned state = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned b = s[i];
        uint32_t e = nib[state][b >> 4];
        if (e & NIB_FAIL) goto eos;
        if (e & NIB_SYM) buf[o++] = (unsigned char)(e >> 8);
        state = e & NIB_STATE;
        e = nib[state][b & 0x0F];
        if (e & NIB_FAIL) goto eos;
        if (e & NIB_SYM) buf[o++] = (unsigned char)(e >> 8);
        state = e & NIB_STATE;
    }
    {
        PyObject *r = PyUnicode_DecodeLatin1((const char *)buf, o, NULL);
        if (buf != stackbuf) PyMem_Free(buf);
        return r;
    }
eos:  /* the EOS code, or past it: not a string */
    if (buf != stackbuf) PyMem_Free(buf);
    *bad = 1;
    return NULL;
}

/* A string literal (§5.2) at *pos: new reference, NULL with *bad set for a malformed one. */
static PyObject *read_str(const unsigned char *d, Py_ssize_t end, Py_ssize_t *pos, int *bad) {
    if (*pos >= end) {
        *bad = 1;
        return NULL;
    }
    int huff = d[*pos] & 0x80;
    long long n;
    if (read_int(d, end, pos, 7, &n) < 0 || *pos + n > end) {
        *bad = 1;
        return NULL;
    }
    const unsigned char *raw = d + *pos;
    *pos += (Py_ssize_t)n;
    if (huff) return huffman_str(raw, (Py_ssize_t)n, bad);
    return PyUnicode_DecodeLatin1((const char *)raw, (Py_ssize_t)n, NULL);
}

/* Entry ``idx`` (1-based, static then dynamic): borrowed; NULL with *bad for index 0, NULL
 * without it for an entry not known (counted as the peer's error when all are known); NULL
 * with *err and an exception for an error. */
static PyObject *lookup(St *st, long long idx, int *bad, int *err) {
    if (idx <= 0) {
        *bad = 1;
        return NULL;
    }
    if (idx <= N_STATIC) return PyTuple_GET_ITEM(STATIC, idx - 1);
    long long i = idx - N_STATIC - 1;
    if (i < PyList_GET_SIZE(st->entries)) {
        PyObject *e = PyList_GET_ITEM(st->entries, i);
        if (entry_ok(e)) return e;
        *err = 1;
        return NULL;
    }
    if (st->known_all && count(st, k_bad_index, 1) < 0) *err = 1;
    return NULL;
}

/* (fields, unknown, whole) of the block d[0:end], decoded with ``dec``'s state. */
static PyObject *decode_impl(PyObject *dec, const unsigned char *d, Py_ssize_t end) {
    St st = {dec, NULL, NULL, 0, 0, 0, 0};
    PyObject *out = NULL, *result = NULL, *tmp;
    long long unknown = 0, total = 0;
    int over = 0, bad = 0, err = 0;

    st.stats = PyObject_GetAttr(st.dec, s_stats);
    if (st.stats == NULL) goto fail;
    if (!PyDict_Check(st.stats)) {
        PyErr_SetString(PyExc_TypeError, "stats must be a dict");
        goto fail;
    }
    st.entries = PyObject_GetAttr(st.dec, s_entries);
    if (st.entries == NULL) goto fail;
    if (!PyList_Check(st.entries)) {
        PyErr_SetString(PyExc_TypeError, "entries must be a list");
        goto fail;
    }
    if (read_size(st.dec, s_size, &st.size) < 0) goto fail;
    if (read_size(st.dec, s_max_size, &st.max_size) < 0) goto fail;
    tmp = PyObject_GetAttr(st.dec, s_known_all);
    if (tmp == NULL) goto fail;
    st.known_all = PyObject_IsTrue(tmp);
    Py_DECREF(tmp);
    if (st.known_all < 0) goto fail;

    out = PyList_New(0);
    if (out == NULL) goto fail;
    Py_ssize_t pos = 0;
    while (pos < end) {
        unsigned b = d[pos];
        PyObject *field;  /* new reference */
        if (b & 0x80) {  /* indexed field */
            long long idx;
            if (read_int(d, end, &pos, 7, &idx) < 0) { bad = 1; break; }
            PyObject *e = lookup(&st, idx, &bad, &err);
            if (bad) break;
            if (err) goto fail;
            if (e == NULL) {
                unknown++;
                e = UNKNOWN_FIELD;
            }
            Py_INCREF(e);
            field = e;
        } else if ((b & 0xE0) == 0x20) {  /* dynamic table size update */
            long long size;
            if (read_int(d, end, &pos, 5, &size) < 0) { bad = 1; break; }
            if (size > MAX_TABLE) {
                if (count(&st, k_capped, 1) < 0) goto fail;
                size = MAX_TABLE;
            }
            st.max_size = size;
            st.dirty = 1;
            if (evict(&st) < 0) goto fail;
            continue;
        } else {
            long long idx;
            int add = (b & 0x40) != 0;
            if (read_int(d, end, &pos, add ? 6 : 4, &idx) < 0) { bad = 1; break; }
            PyObject *name;  /* new reference */
            if (idx) {
                PyObject *e = lookup(&st, idx, &bad, &err);
                if (bad) break;
                if (err) goto fail;
                if (e == NULL) {
                    unknown++;
                    name = UNKNOWN;
                } else {
                    name = PyTuple_GET_ITEM(e, 0);
                }
                Py_INCREF(name);
            } else {
                name = read_str(d, end, &pos, &bad);
                if (name == NULL) {
                    if (bad) break;
                    goto fail;
                }
            }
            PyObject *value = read_str(d, end, &pos, &bad);
            if (value == NULL) {
                Py_DECREF(name);
                if (bad) break;
                goto fail;
            }
            field = PyTuple_Pack(2, name, value);
            Py_DECREF(name);
            Py_DECREF(value);
            if (field == NULL) goto fail;
            if (add) {
                PyObject *nm = PyTuple_GET_ITEM(field, 0);
                int is_unknown = nm == UNKNOWN || PyUnicode_Compare(nm, UNKNOWN) == 0;
                if (is_unknown) {
                    /* its size is unknown: the known entries are known no more */
                    if (store(&st, 1) < 0 || count(&st, k_unknown_insert, 1) < 0) {
                        Py_DECREF(field);
                        goto fail;
                    }
                } else {
                    long long k = fsize(field);
                    if (k > st.max_size) {
                        if (PyList_SetSlice(st.entries, 0, PyList_GET_SIZE(st.entries), NULL)
                            < 0) {
                            Py_DECREF(field);
                            goto fail;
                        }
                        st.size = 0;
                        st.dirty = 1;
                    } else {
                        if (PyList_Insert(st.entries, 0, field) < 0) {
                            Py_DECREF(field);
                            goto fail;
                        }
                        st.size += k;
                        st.dirty = 1;
                        if (st.size > st.max_size && evict(&st) < 0) {
                            Py_DECREF(field);
                            goto fail;
                        }
                    }
                }
            }
        }
        if (over) {
            Py_DECREF(field);
            continue;
        }
        total += fsize(field);
        if (total > MAX_HEADER_LIST || PyList_GET_SIZE(out) >= MAX_FIELDS) {
            over = 1;
            Py_DECREF(field);
            if (count(&st, k_too_large, 1) < 0) goto fail;
            continue;
        }
        int r = PyList_Append(out, field);
        Py_DECREF(field);
        if (r < 0) goto fail;
    }
    if (PyErr_Occurred()) goto fail;
    if (bad) {
        /* the rest of the block is lost, and with it any inserts it made */
        if (count(&st, k_errors, 1) < 0 || store(&st, 1) < 0) goto fail;
        result = Py_BuildValue("(OLO)", out, unknown, Py_False);
    } else {
        if (unknown && count(&st, k_unknown_refs, unknown) < 0) goto fail;
        if (store(&st, 0) < 0) goto fail;
        result = Py_BuildValue("(OLO)", out, unknown, over ? Py_False : Py_True);
    }
fail:
    if (result == NULL && st.dirty && st.entries != NULL) {
        /* an exception (never from the block: from the decoder's objects, or memory) after
         * entries changed: the decoder's size kept in step with them, as the Python code
         * keeps it */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (store(&st, 0) < 0) PyErr_Clear();
        PyErr_Restore(et, ev, tb);
    }
    Py_XDECREF(out);
    Py_XDECREF(st.entries);
    Py_XDECREF(st.stats);
    return result;
}

static PyObject *decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decode(decoder, block)");
        return NULL;
    }
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "replay.h2._hpack: configure() first");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *r = decode_impl(args[0], view.buf, view.len);
    PyBuffer_Release(&view);
    return r;
}

static PyObject *QMARK = NULL;  /* "?" */

static inline int is_pseudo(PyObject *k) {
    return PyUnicode_GET_LENGTH(k) > 0 && PyUnicode_READ_CHAR(k, 0) == ':';
}

/* ("?", value or "?") for a field naming an unknown entry; else the field. New reference. */
static PyObject *marked(PyObject *f) {
    PyObject *k = PyTuple_GET_ITEM(f, 0), *v = PyTuple_GET_ITEM(f, 1);
    if (k != UNKNOWN && PyUnicode_Compare(k, UNKNOWN) != 0) {
        if (PyErr_Occurred()) return NULL;
        Py_INCREF(f);
        return f;
    }
    int vu = v == UNKNOWN || PyUnicode_Compare(v, UNKNOWN) == 0;
    return PyTuple_Pack(2, QMARK, vu ? QMARK : v);
}

/* ``replay.h2.reader._request_parts``: (method, target, headers). */
static PyObject *request_parts(PyObject *fields) {
    PyObject *method = NULL, *target = NULL, *authority = NULL;  /* borrowed */
    PyObject *headers = PyList_New(0), *regular = PyList_New(0), *r = NULL;
    if (headers == NULL || regular == NULL) goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fields); i++) {
        PyObject *f = PyList_GET_ITEM(fields, i);
        PyObject *k = PyTuple_GET_ITEM(f, 0);
        if (!is_pseudo(k)) {
            PyObject *m = marked(f);
            if (m == NULL) goto done;
            int e = PyList_Append(regular, m);
            Py_DECREF(m);
            if (e < 0) goto done;
        } else if (PyUnicode_CompareWithASCIIString(k, ":method") == 0) {
            method = PyTuple_GET_ITEM(f, 1);
        } else if (PyUnicode_CompareWithASCIIString(k, ":path") == 0) {
            target = PyTuple_GET_ITEM(f, 1);
        } else {
            if (PyUnicode_CompareWithASCIIString(k, ":authority") == 0)
                authority = PyTuple_GET_ITEM(f, 1);
            if (PyList_Append(headers, f) < 0) goto done;
        }
    }
    PyObject *empty = PyUnicode_New(0, 0);
    if (empty == NULL) goto done;
    if (method == NULL) method = empty;
    if (target == NULL) target = empty;
    if (authority == NULL) authority = empty;
    if (PyUnicode_GET_LENGTH(target) == 0
        && PyUnicode_CompareWithASCIIString(method, "CONNECT") == 0)
        target = authority;
    if (PyList_SetSlice(headers, PyList_GET_SIZE(headers), PyList_GET_SIZE(headers), regular)
        == 0)
        r = PyTuple_Pack(3, method, target, headers);
    Py_DECREF(empty);
done:
    Py_XDECREF(headers);
    Py_XDECREF(regular);
    return r;
}

/* ``replay.h2.reader._response_parts``: (the first :status value or None, _plain(fields)). */
static PyObject *response_parts(PyObject *fields) {
    PyObject *status = Py_None;  /* borrowed */
    int found = 0;
    PyObject *plain = PyList_New(0), *r = NULL;
    if (plain == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fields); i++) {
        PyObject *f = PyList_GET_ITEM(fields, i);
        PyObject *k = PyTuple_GET_ITEM(f, 0);
        if (!is_pseudo(k)) {
            PyObject *m = marked(f);
            if (m == NULL) goto done;
            int e = PyList_Append(plain, m);
            Py_DECREF(m);
            if (e < 0) goto done;
        } else if (!found && PyUnicode_CompareWithASCIIString(k, ":status") == 0) {
            status = PyTuple_GET_ITEM(f, 1);
            found = 1;
        }
    }
    r = PyTuple_Pack(2, status, plain);
done:
    Py_DECREF(plain);
    return r;
}

static int count_frame(PyObject *stats) {
    return count_in(stats, k_frames, 1);
}

/* scan(decoder, stats, client, data, pos, max_frame) -> (events, pos): the frames at ``pos``
 * that ``H2Connection._frame`` reads the usual way, read here: complete DATA frames and
 * HEADERS frames that end their header block (END_HEADERS), with their padding and priority
 * fields well-formed, on a stream other than 0, no larger than the frame size allowed. It
 * stops at the first other frame (left to ``_frame``), and before a HEADERS frame that is not
 * the first (so that a block is decoded, and its counters counted, after the frames before it
 * are handled). Each frame is counted in ``stats["frames"]``, as ``_frame`` does. Events:
 * (0, stream, payload, END_STREAM) and (1, stream, END_STREAM, fields, unknown, whole, parts)
 * with parts as ``_request_parts`` (client) or ``_response_parts`` (server) make them. */
static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "scan(decoder, stats, client, data, pos, max_frame)");
        return NULL;
    }
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "replay.h2._hpack: configure() first");
        return NULL;
    }
    PyObject *dec = args[0], *stats = args[1];
    if (!PyDict_Check(stats)) {
        PyErr_SetString(PyExc_TypeError, "stats must be a dict");
        return NULL;
    }
    int client = PyObject_IsTrue(args[2]);
    if (client < 0) return NULL;
    if (!PyBytes_Check(args[3]))  /* (a bytearray, a view): all left to ``_frame`` */
        return Py_BuildValue("(NO)", PyList_New(0), args[4]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[4]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    long long max_frame = PyLong_AsLongLong(args[5]);
    if (max_frame == -1 && PyErr_Occurred()) return NULL;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(args[3]);
    Py_ssize_t end = PyBytes_GET_SIZE(args[3]);
    PyObject *events = PyList_New(0);
    if (events == NULL) return NULL;
    if (pos < 0) pos = end;
    while (end - pos >= 9) {
        const unsigned char *h = d + pos;
        long long length = ((long long)h[0] << 16) | (h[1] << 8) | h[2];
        unsigned ftype = h[3], flags = h[4];
        long sid = ((long)(h[5] & 0x7F) << 24) | (h[6] << 16) | (h[7] << 8) | h[8];
        if (length > max_frame && length >= 16384) break;
        if (end - pos < 9 + length) break;
        if (ftype > 1 || !sid) break;
        if (ftype == 1 && (!(flags & 0x04) || PyList_GET_SIZE(events))) break;
        const unsigned char *body = h + 9;
        Py_ssize_t n = (Py_ssize_t)length;
        if (flags & 0x08) {  /* PADDED */
            if (n == 0 || body[0] >= n) break;
            n = n - 1 - body[0];
            body += 1;
        }
        if (ftype == 1 && (flags & 0x20)) {  /* PRIORITY */
            if (n < 5) break;
            body += 5;
            n -= 5;
        }
        if (count_frame(stats) < 0) goto fail;
        PyObject *ev;
        if (ftype == 0) {
            ev = Py_BuildValue("(ily#N)", 0, sid, (const char *)body, n,
                               PyBool_FromLong(flags & 0x01));
        } else {
            PyObject *res = decode_impl(dec, body, n);
            if (res == NULL) goto fail;
            PyObject *fields = PyTuple_GET_ITEM(res, 0);
            PyObject *parts = client ? request_parts(fields) : response_parts(fields);
            if (parts == NULL) {
                Py_DECREF(res);
                goto fail;
            }
            ev = Py_BuildValue("(ilNOOON)", 1, sid, PyBool_FromLong(flags & 0x01), fields,
                               PyTuple_GET_ITEM(res, 1), PyTuple_GET_ITEM(res, 2), parts);
            Py_DECREF(res);
        }
        if (ev == NULL) goto fail;
        int e = PyList_Append(events, ev);
        Py_DECREF(ev);
        if (e < 0) goto fail;
        pos += 9 + (Py_ssize_t)length;
    }
    return Py_BuildValue("(Nn)", events, pos);
fail:
    Py_DECREF(events);
    return NULL;
}

/* configure(static, unknown, max_table, max_header_list, max_fields, max_int, codes, lengths) */
static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *stat, *unk, *codes, *lengths;
    long long mt, mhl, mi;
    Py_ssize_t mf;
    if (!PyArg_ParseTuple(args, "O!ULLnLOO", &PyList_Type, &stat, &unk, &mt, &mhl, &mf, &mi,
                          &codes, &lengths))
        return NULL;
    if (mt < 0 || mt > SIZE_LIMIT || mhl < 0 || mhl > SIZE_LIMIT || mf < 0 || mi < 0
        || mi >= (1LL << 56)) {
        PyErr_SetString(PyExc_ValueError, "limits out of range");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(stat); i++) {
        PyObject *t = PyList_GET_ITEM(stat, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2
            || !PyUnicode_Check(PyTuple_GET_ITEM(t, 0))
            || !PyUnicode_Check(PyTuple_GET_ITEM(t, 1))) {
            PyErr_SetString(PyExc_TypeError, "static: (str, str) tuples");
            return NULL;
        }
    }
    int child[1024][2];
    int sym[1024];
    int n = 1;
    child[0][0] = child[0][1] = -1;
    sym[0] = -1;
    for (int s = 0; s < 256; s++) {
        PyObject *c = PySequence_GetItem(codes, s);
        PyObject *l = c ? PySequence_GetItem(lengths, s) : NULL;
        if (l == NULL) {
            Py_XDECREF(c);
            return NULL;
        }
        unsigned long long code = PyLong_AsUnsignedLongLong(c);
        long ln = PyLong_AsLong(l);
        Py_DECREF(c);
        Py_DECREF(l);
        if (PyErr_Occurred()) return NULL;
        if (ln < 5 || ln > 32) {  /* 5 at least: one symbol per nibble, 8n/5 per n bytes */
            PyErr_SetString(PyExc_ValueError, "bad Huffman code length");
            return NULL;
        }
        int node = 0;
        for (long k = ln - 1; k >= 0; k--) {
            int bit = (code >> k) & 1;
            int nxt = child[node][bit];
            if (nxt < 0) {
                if (n >= 1024) {
                    PyErr_SetString(PyExc_ValueError, "Huffman tree too large");
                    return NULL;
                }
                nxt = n++;
                child[nxt][0] = child[nxt][1] = -1;
                sym[nxt] = -1;
                child[node][bit] = nxt;
            }
            node = nxt;
        }
        sym[node] = s;
    }
    memcpy(tree_child, child, sizeof(child));
    memcpy(tree_sym, sym, sizeof(sym));
    tree_n = n;
    int inner[1024], ninner = 0, stateof[1024];
    for (int i = 0; i < n; i++) {
        stateof[i] = -1;
        if (sym[i] < 0) {
            if (ninner >= 256) {
                PyErr_SetString(PyExc_ValueError, "Huffman tree too large");
                return NULL;
            }
            stateof[i] = ninner;
            inner[ninner++] = i;
        }
    }
    for (int st = 0; st < ninner; st++) {
        for (int v = 0; v < 16; v++) {
            int node = inner[st];
            uint32_t e = 0;
            for (int k = 3; k >= 0; k--) {
                node = child[node][(v >> k) & 1];
                if (node < 0) {
                    e = NIB_FAIL;
                    break;
                }
                if (sym[node] >= 0) {
                    e |= NIB_SYM | ((uint32_t)sym[node] << 8);
                    node = 0;
                }
            }
            if (!(e & NIB_FAIL)) e |= (uint32_t)stateof[node];
            nib[st][v] = e;
        }
    }
    PyObject *uf = PyTuple_Pack(2, unk, unk);
    if (uf == NULL) return NULL;
    PyObject *stat_copy = PyList_AsTuple(stat);
    if (stat_copy == NULL) {
        Py_DECREF(uf);
        return NULL;
    }
    Py_XSETREF(STATIC, stat_copy);
    N_STATIC = PyTuple_GET_SIZE(stat_copy);
    Py_INCREF(unk);
    Py_XSETREF(UNKNOWN, unk);
    Py_XSETREF(UNKNOWN_FIELD, uf);
    MAX_TABLE = mt;
    MAX_HEADER_LIST = mhl;
    MAX_FIELDS = mf;
    MAX_INT = mi;
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL,
     "decode(decoder, block) -> (fields, unknown, whole): PassiveDecoder.decode_py in C."},
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(decoder, stats, client, data, pos, max_frame) -> (events, pos)."},
    {"configure", configure, METH_VARARGS, "The static table, marker, limits and code."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_hpack", NULL, -1, methods};

PyMODINIT_FUNC PyInit__hpack(void) {
#define INTERN(var, s) if ((var = PyUnicode_InternFromString(s)) == NULL) return NULL
    INTERN(s_entries, "entries");
    INTERN(s_size, "size");
    INTERN(s_max_size, "max_size");
    INTERN(s_known_all, "known_all");
    INTERN(s_stats, "stats");
    INTERN(s_forget, "forget");
    INTERN(k_bad_index, "hpack_bad_index");
    INTERN(k_capped, "hpack_table_size_capped");
    INTERN(k_unknown_insert, "hpack_unknown_insert");
    INTERN(k_too_large, "header_list_too_large");
    INTERN(k_errors, "hpack_errors");
    INTERN(k_unknown_refs, "hpack_unknown_refs");
    INTERN(k_frames, "frames");
    INTERN(QMARK, "?");
#undef INTERN
    return PyModule_Create(&moduledef);
}
