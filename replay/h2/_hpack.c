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
 * for ``H2Connection._events``; any other frame is left to ``_frame``. ``run(...)`` reads the
 * same frames and handles their usual events itself (see its comment below), making the
 * reader's objects by recipe (``make``).
 * tests/h2/test_hpack_native.py and tests/h2/test_h2_run_native.py hold them to their Python
 * definitions.
 *
 * The block and frame bytes are hostile; so may be the Python objects read (the decoder's
 * attributes are plain): an entry that is not a (str, str) tuple or a size beyond 2^60 is
 * refused (TypeError, OverflowError) before it is used, counters are added to as Python adds,
 * lengths are read again after anything that may run Python code, and the static table is a
 * copy made at ``configure``.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
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

/* Write the decoder's state back (when it changed: as the Python code, which assigns only
 * what it changes); then ``forget()`` when asked. */
static int store(St *st, int forget) {
    if (st->dirty) {
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
    }
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
    /* (a str of another length is not UNKNOWN: most are compared by their length alone) */
    if (k != UNKNOWN && (PyUnicode_GET_LENGTH(k) != PyUnicode_GET_LENGTH(UNKNOWN)
                         || PyUnicode_Compare(k, UNKNOWN) != 0)) {
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

/* One frame at ``d[pos:end]`` of the kinds ``scan`` and ``run`` read (complete DATA, or
 * HEADERS ending its block; padding and priority checked and stripped): 1 with its parts, 0
 * when it is anything else, which ``_frame`` in Python reads. */
typedef struct {
    long long length;
    unsigned ftype, flags;
    long sid;
    const unsigned char *body;
    Py_ssize_t n;
} CommonFrame;

static int common_frame(const unsigned char *d, Py_ssize_t pos, Py_ssize_t end,
                        long long max_frame, CommonFrame *f) {
    if (end - pos < 9) return 0;
    const unsigned char *h = d + pos;
    f->length = ((long long)h[0] << 16) | (h[1] << 8) | h[2];
    f->ftype = h[3];
    f->flags = h[4];
    f->sid = ((long)(h[5] & 0x7F) << 24) | (h[6] << 16) | (h[7] << 8) | h[8];
    if (f->length > max_frame && f->length >= 16384) return 0;
    if (end - pos < 9 + f->length) return 0;
    if (f->ftype > 1 || !f->sid) return 0;
    if (f->ftype == 1 && !(f->flags & 0x04)) return 0;
    f->body = h + 9;
    f->n = (Py_ssize_t)f->length;
    if (f->flags & 0x08) {  /* PADDED */
        if (f->n == 0 || f->body[0] >= f->n) return 0;
        f->n = f->n - 1 - f->body[0];
        f->body += 1;
    }
    if (f->ftype == 1 && (f->flags & 0x20)) {  /* PRIORITY */
        if (f->n < 5) return 0;
        f->body += 5;
        f->n -= 5;
    }
    return 1;
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
    CommonFrame f;
    while (common_frame(d, pos, end, max_frame, &f)) {
        long long length = f.length;
        unsigned ftype = f.ftype, flags = f.flags;
        long sid = f.sid;
        const unsigned char *body = f.body;
        Py_ssize_t n = f.n;
        if (ftype == 1 && PyList_GET_SIZE(events)) break;  /* a HEADERS frame only first */
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

/* ---- Objects of the reader's dataclasses made as their generated ``__init__`` makes them ----
 *
 * ``configure_make(i, cls, nargs, recipe)``: recipe i makes ``cls(*args)`` for ``nargs``
 * positional arguments: per field (``dataclasses.fields`` order), its slot's name and how it is
 * filled: (name, 0, None) the next argument, (name, 1, default) the default object itself,
 * (name, 2, list or dict) a new empty one, (name, 3, j) an object of recipe j < i (a
 * ``default_factory`` that is another of these classes). ``replay.h2.reader`` builds the recipes
 * from the dataclasses and checks that ``__init__`` is the generated one; here each name must be
 * a writable object slot of ``cls`` itself (a member descriptor inside the instance) and
 * ``cls`` must be made by ``object.__new__``. tests/h2/test_hpack_native.py holds the objects
 * made to the ones the classes make. */
#define N_RECIPES 8
#define MAX_RFIELDS 24
typedef struct {
    PyTypeObject *cls;  /* NULL: not configured (the class is called) */
    int nargs, n;
    Py_ssize_t off[MAX_RFIELDS];
    int kind[MAX_RFIELDS];
    PyObject *val[MAX_RFIELDS];
} Recipe;
static Recipe recipes[N_RECIPES];
#define RC_COMPLETENESS 0
#define RC_EXCHANGE 1
#define RC_REQUEST 2
#define RC_RESPONSE 3
#define RC_MSG 4
#define RC_STREAM 5

static PyObject *make(int r, PyObject *const *args, Py_ssize_t nargs) {
    Recipe *R = &recipes[r];
    if (R->cls == NULL || nargs != R->nargs) {
        PyErr_SetString(PyExc_RuntimeError, "replay.h2._hpack: recipe not configured");
        return NULL;
    }
    PyObject *o = R->cls->tp_alloc(R->cls, 0);
    if (o == NULL) return NULL;
    int a = 0;
    for (int i = 0; i < R->n; i++) {
        PyObject *v;
        switch (R->kind[i]) {
        case 0:
            v = args[a++];
            Py_INCREF(v);
            break;
        case 1:
            v = R->val[i];
            Py_INCREF(v);
            break;
        case 2:
            v = R->val[i] == (PyObject *)&PyList_Type ? PyList_New(0) : PyDict_New();
            break;
        default:
            v = make((int)PyLong_AsLong(R->val[i]), NULL, 0);
            break;
        }
        if (v == NULL) {
            Py_DECREF(o);
            return NULL;
        }
        PyObject **slot = (PyObject **)((char *)o + R->off[i]);
        Py_XSETREF(*slot, v);
    }
    return o;
}

/* ``cls(*args)``: by its recipe when there is one, else called. */
static PyObject *new_of(int r, PyObject *cls, PyObject *const *args, Py_ssize_t nargs) {
    if (recipes[r].cls != NULL) return make(r, args, nargs);
    return PyObject_Vectorcall(cls, args, nargs, NULL);
}

static PyObject *configure_make(PyObject *self, PyObject *args) {
    int r, nargs;
    PyObject *cls, *recipe;
    if (!PyArg_ParseTuple(args, "iO!iO!", &r, &PyType_Type, &cls, &nargs, &PyList_Type,
                          &recipe))
        return NULL;
    PyTypeObject *t = (PyTypeObject *)cls;
    Py_ssize_t n = PyList_GET_SIZE(recipe);
    if (r < 0 || r >= N_RECIPES || n > MAX_RFIELDS || nargs < 0 || nargs > n) {
        PyErr_SetString(PyExc_ValueError, "recipe out of range");
        return NULL;
    }
    if (t->tp_new != PyBaseObject_Type.tp_new || t->tp_alloc == NULL
        || t->tp_basicsize < (Py_ssize_t)sizeof(PyObject) || t->tp_itemsize != 0) {
        PyErr_SetString(PyExc_TypeError, "recipe: a class made by object.__new__");
        return NULL;
    }
    Recipe R;
    memset(&R, 0, sizeof(R));
    R.nargs = nargs;
    R.n = (int)n;
    int args_seen = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(recipe, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3
            || !PyUnicode_Check(PyTuple_GET_ITEM(item, 0))
            || !PyLong_Check(PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "recipe: (name, kind, value) tuples");
            return NULL;
        }
        PyObject *d = PyDict_GetItemWithError(t->tp_dict, PyTuple_GET_ITEM(item, 0));
        if (d == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "recipe: a slot of the class itself");
            return NULL;
        }
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type)
            || ((PyMemberDescrObject *)d)->d_common.d_type != t) {
            PyErr_SetString(PyExc_TypeError, "recipe: a slot of the class itself");
            return NULL;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)
            || m->offset < (Py_ssize_t)sizeof(PyObject)
            || m->offset > t->tp_basicsize - (Py_ssize_t)sizeof(PyObject *)) {
            PyErr_SetString(PyExc_TypeError, "recipe: a writable object slot");
            return NULL;
        }
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        PyObject *v = PyTuple_GET_ITEM(item, 2);
        if (kind == 0) {
            if (args_seen != i) {
                PyErr_SetString(PyExc_ValueError, "recipe: the arguments first");
                return NULL;
            }
            args_seen++;
        } else if (kind == 2) {
            if (v != (PyObject *)&PyList_Type && v != (PyObject *)&PyDict_Type) {
                PyErr_SetString(PyExc_ValueError, "recipe: list or dict");
                return NULL;
            }
        } else if (kind == 3) {
            long j = PyLong_Check(v) ? PyLong_AsLong(v) : -1;
            if (j < 0 || j >= r || recipes[j].cls == NULL || recipes[j].nargs != 0) {
                PyErr_SetString(PyExc_ValueError, "recipe: an earlier recipe without arguments");
                return NULL;
            }
        } else if (kind != 1) {
            PyErr_SetString(PyExc_ValueError, "recipe: kind 0 to 3");
            return NULL;
        }
        R.off[i] = m->offset;
        R.kind[i] = (int)kind;
        R.val[i] = kind == 0 ? NULL : v;
    }
    if (args_seen != nargs) {
        PyErr_SetString(PyExc_ValueError, "recipe: as many arguments as said");
        return NULL;
    }
    for (int i = 0; i < R.n; i++) Py_XINCREF(R.val[i]);
    Py_INCREF(cls);
    R.cls = t;
    Recipe old = recipes[r];
    recipes[r] = R;
    for (int i = 0; i < old.n; i++) Py_XDECREF(old.val[i]);
    Py_XDECREF(old.cls);
    Py_RETURN_NONE;
}

/* make(i, *args): an object by recipe i (for the tests). */
static PyObject *make_py(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "make(recipe, *args)");
        return NULL;
    }
    long r = PyLong_AsLong(args[0]);
    if (r == -1 && PyErr_Occurred()) return NULL;
    if (r < 0 || r >= N_RECIPES) {
        PyErr_SetString(PyExc_ValueError, "recipe out of range");
        return NULL;
    }
    return make((int)r, args + 1, nargs - 1);
}

/* ---- The reader's usual events, handled in C ------------------------------------------------
 *
 * ``run(conn, side, data, pos, ts) -> pos`` reads the frames ``scan`` reads, and does with each
 * what ``H2Connection._events`` (``_data``, ``_body``, ``_end``, ``_stream``,
 * ``_request_headers``, ``_response_headers``, ``_done``, ``_emit``) does with it, in the usual
 * case: a request head (read whole, no unknown entry) opening a new stream, a final response
 * head (2xx-5xx) on a stream without one, a body chunk within the limits on a known stream, the
 * ends of streams and the emission of a plain exchange (no gap, no cap, no unknown entry,
 * request and response both seen, not gRPC). Anything else goes to the Python code, the
 * definition, as it comes: the event to ``conn._events`` (decided before anything is changed),
 * the end of a stream to ``conn._done``, an emission to ``conn._emit``; a frame ``scan`` does
 * not read stops ``run`` (left to ``_frame``). Each frame is handled before the next is read
 * (the order ``_frame`` keeps). The Python objects read are checked: an attribute of another
 * type than the reader's makes the event go to Python, never a crash. */
static PyObject *R_Exchange = NULL, *R_Request = NULL, *R_Response = NULL, *R_Stream = NULL;
static Py_ssize_t R_MAX_STREAMS = -1;
static PyObject *R_HTTP2, *R_EMPTY, *R_GRPC, *R_CTYPE, *R_EMPTY_BYTES;
static PyObject *a_hpack, *a_stats, *a_client, *a_max_frame, *a_streams, *a_closed, *a_n,
    *a_conn_id, *a_conn, *a_meta, *a_h2, *a_stream, *a_req, *a_resp, *a_ex, *a_sid, *a_final,
    *a_unknown, *a_request, *a_response, *a_ts_rqs, *a_ts_rqe, *a_ts_rss, *a_ts_rse, *a_body,
    *a_length, *a_kept, *a_capped, *a_ended, *a_gaps, *a_held, *a_max_body, *a_block_sid,
    *a_events, *a_done, *a_emit_m, *a_emit, *a_outer, *a_retransmits, *a_completeness,
    *a_headers, *a_update, *a_join, *k_streams, *k_exchanges;

#define DECLINE 0
#define HANDLED 1
#define FAILED (-1)

/* A long long attribute that is an int (exactly) in range: 1; 0 when it is not one; -1 on an
 * error. */
static int get_ll(PyObject *o, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    int ok = 0;
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred()) {
            Py_DECREF(v);
            return -1;
        }
        if (!overflow && x < SIZE_LIMIT && x > -SIZE_LIMIT) {
            *out = x;
            ok = 1;
        }
    }
    Py_DECREF(v);
    return ok;
}

static int set_ll(PyObject *o, PyObject *name, long long x) {
    PyObject *v = PyLong_FromLongLong(x);
    if (v == NULL) return -1;
    int r = PyObject_SetAttr(o, name, v);
    Py_DECREF(v);
    return r;
}

/* The attribute's truth: 1, 0; -1 on an error. */
static int get_true(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* ``conn.<name>(*args)`` (the Python definition, for what is not the usual case). */
static int call_py(PyObject *conn, PyObject *name, PyObject *a, PyObject *b, PyObject *c) {
    PyObject *r = PyObject_CallMethodObjArgs(conn, name, a, b, c, NULL);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* ``msg.body[0] if len(msg.body) == 1 else b"".join(msg.body)``: new reference. */
static PyObject *joined(PyObject *body) {
    Py_ssize_t n = PyList_GET_SIZE(body);
    if (n == 1) {
        PyObject *b = PyList_GET_ITEM(body, 0);
        Py_INCREF(b);
        return b;
    }
    if (n == 0) {
        Py_INCREF(R_EMPTY_BYTES);
        return R_EMPTY_BYTES;
    }
    return PyObject_CallMethodOneArg(R_EMPTY_BYTES, a_join, body);
}

/* ``_is_grpc(ex)`` of the request's headers: 1, 0; 2 when they are not (str, str) tuples in
 * a list (left to Python); -1 on an error. */
static int is_grpc(PyObject *request) {
    PyObject *hs = PyObject_GetAttr(request, a_headers);
    if (hs == NULL) return -1;
    int r = 2;
    if (PyList_CheckExact(hs)) {
        r = 0;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(hs); i++) {
            PyObject *f = PyList_GET_ITEM(hs, i);
            if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 2
                || !PyUnicode_CheckExact(PyTuple_GET_ITEM(f, 0))
                || !PyUnicode_CheckExact(PyTuple_GET_ITEM(f, 1))) {
                r = 2;
                break;
            }
            PyObject *k = PyTuple_GET_ITEM(f, 0);
            if (PyUnicode_GET_LENGTH(k) == 12 && PyUnicode_Compare(k, R_CTYPE) == 0) {
                PyObject *v = PyTuple_GET_ITEM(f, 1);
                Py_ssize_t m = PyUnicode_Tailmatch(v, R_GRPC, 0, PY_SSIZE_T_MAX, -1);
                r = m < 0 ? -1 : (int)m;
                break;
            }
        }
    }
    Py_DECREF(hs);
    return r;
}

/* ``_emit(st)``: the plain exchange here, any other by ``conn._emit``. */
static int r_emit(PyObject *conn, PyObject *stats, PyObject *st) {
    PyObject *req = NULL, *resp = NULL, *ex = NULL, *request = NULL, *response = NULL,
        *rb = NULL, *sb = NULL, *g = NULL, *tmp = NULL;
    int rc = -1, plain = 0;
    long long rk = 0, sk = 0, held = 0, unk = 1;
    if ((req = PyObject_GetAttr(st, a_req)) == NULL) goto done;
    if ((resp = PyObject_GetAttr(st, a_resp)) == NULL) goto done;
    if ((ex = PyObject_GetAttr(st, a_ex)) == NULL) goto done;
    if ((request = PyObject_GetAttr(ex, a_request)) == NULL) goto done;
    if ((response = PyObject_GetAttr(ex, a_response)) == NULL) goto done;
    if (request == Py_None || response == Py_None) goto decided;
    int k;
    if ((k = get_ll(st, a_unknown, &unk)) < 0) goto done;
    if (!k || unk) goto decided;
    PyObject *msgs[2] = {req, resp};
    for (int i = 0; i < 2; i++) {
        if ((g = PyObject_GetAttr(msgs[i], a_gaps)) == NULL) goto done;
        int ok = PyList_CheckExact(g) && PyList_GET_SIZE(g) == 0;
        Py_CLEAR(g);
        if (!ok) goto decided;
        if ((k = get_true(msgs[i], a_capped)) < 0) goto done;
        if (k) goto decided;
        if ((k = get_ll(msgs[i], a_kept, i ? &sk : &rk)) < 0) goto done;
        if (!k) goto decided;
        if ((tmp = PyObject_GetAttr(msgs[i], a_body)) == NULL) goto done;
        if (!PyList_CheckExact(tmp)) goto decided;
        if (i) sb = tmp; else rb = tmp;
        tmp = NULL;
    }
    if ((k = get_ll(conn, a_held, &held)) < 0) goto done;
    if (!k) goto decided;
    if ((k = is_grpc(request)) < 0) goto done;
    if (k) goto decided;
    plain = 1;
decided:
    if (!plain) {
        rc = call_py(conn, a_emit_m, st, NULL, NULL);
        goto done;
    }
    /* as ``_emit`` does with a plain exchange */
    if (set_ll(conn, a_held, held - rk - sk) < 0) goto done;
    if ((tmp = joined(rb)) == NULL || PyObject_SetAttr(request, a_body, tmp) < 0) goto done;
    Py_CLEAR(tmp);
    if ((tmp = joined(sb)) == NULL || PyObject_SetAttr(response, a_body, tmp) < 0) goto done;
    Py_CLEAR(tmp);
    if ((tmp = PyObject_GetAttr(conn, a_meta)) == NULL) goto done;
    if (tmp != Py_None) {
        PyObject *m = PyObject_CallNoArgs(tmp);
        if (m == NULL) goto done;
        Py_SETREF(tmp, m);
        PyObject *em = PyObject_GetAttr(ex, a_meta);
        if (em == NULL) goto done;
        PyObject *r = PyObject_CallMethodOneArg(em, a_update, tmp);
        Py_DECREF(em);
        if (r == NULL) goto done;
        Py_DECREF(r);
    }
    Py_CLEAR(tmp);
    if ((tmp = PyObject_GetAttr(conn, a_outer)) == NULL) goto done;
    if (tmp != Py_None) {
        PyObject *rt = PyObject_GetAttr(tmp, a_retransmits);
        if (rt == NULL) goto done;
        PyObject *c = PyObject_GetAttr(ex, a_completeness);
        if (c == NULL) {
            Py_DECREF(rt);
            goto done;
        }
        int e = PyObject_SetAttr(c, a_retransmits, rt);
        Py_DECREF(c);
        Py_DECREF(rt);
        if (e < 0) goto done;
    }
    Py_CLEAR(tmp);
    if (count_in(stats, k_exchanges, 1) < 0) goto done;
    if ((tmp = PyObject_GetAttr(conn, a_emit)) == NULL) goto done;
    PyObject *r = PyObject_CallOneArg(tmp, ex);
    if (r == NULL) goto done;
    Py_DECREF(r);
    rc = 0;
done:
    Py_XDECREF(tmp);
    Py_XDECREF(g);
    Py_XDECREF(rb);
    Py_XDECREF(sb);
    Py_XDECREF(request);
    Py_XDECREF(response);
    Py_XDECREF(ex);
    Py_XDECREF(resp);
    Py_XDECREF(req);
    return rc;
}

/* ``_done(st)``: here while the closed streams are few, else by ``conn._done``. */
static int r_done(PyObject *conn, PyObject *stats, PyObject *st) {
    PyObject *streams = PyObject_GetAttr(conn, a_streams), *closed = NULL, *sid = NULL;
    int rc = -1;
    if (streams == NULL) return -1;
    if ((closed = PyObject_GetAttr(conn, a_closed)) == NULL) goto done;
    if ((sid = PyObject_GetAttr(st, a_sid)) == NULL) goto done;
    if (!PyDict_CheckExact(streams) || !PySet_CheckExact(closed) || !PyLong_CheckExact(sid)
        || PySet_GET_SIZE(closed) >= 4 * R_MAX_STREAMS) {
        rc = call_py(conn, a_done, st, NULL, NULL);
        goto done;
    }
    int has = PyDict_Contains(streams, sid);
    if (has < 0) goto done;
    if (has && PyDict_DelItem(streams, sid) < 0) goto done;
    if (PySet_Add(closed, sid) < 0) goto done;
    rc = r_emit(conn, stats, st);
done:
    Py_XDECREF(sid);
    Py_XDECREF(closed);
    Py_DECREF(streams);
    return rc;
}

/* ``_end(st, client, ts)``. */
static int r_end(PyObject *conn, PyObject *stats, PyObject *st, PyObject *ex, int client,
                 PyObject *ts) {
    PyObject *msg = PyObject_GetAttr(st, client ? a_req : a_resp);
    if (msg == NULL) return -1;
    int e = PyObject_SetAttr(msg, a_ended, Py_True);
    Py_DECREF(msg);
    if (e < 0) return -1;
    if (PyObject_SetAttr(ex, client ? a_ts_rqe : a_ts_rse, ts) < 0) return -1;
    PyObject *other = PyObject_GetAttr(st, client ? a_resp : a_req);
    if (other == NULL) return -1;
    int ended = get_true(other, a_ended);
    Py_DECREF(other);
    if (ended <= 0) return ended;
    return r_done(conn, stats, st);
}

/* ``_data(side, sid, chunk, end_stream, ts)`` on a known stream, within the body limits. */
static int r_data(PyObject *conn, PyObject *stats, PyObject *streams, int client,
                  PyObject *sid, const unsigned char *body, Py_ssize_t n, int end_stream,
                  PyObject *ts) {
    PyObject *st = PyDict_GetItemWithError(streams, sid);
    if (st == NULL) return PyErr_Occurred() ? FAILED : DECLINE;
    Py_INCREF(st);
    PyObject *msg = NULL, *ex = NULL, *lst = NULL, *chunk = NULL;
    int rc = FAILED, k;
    long long kept = 0, held = 0, max_body = 0, length = 0;
    if ((msg = PyObject_GetAttr(st, client ? a_req : a_resp)) == NULL) goto done;
    if ((ex = PyObject_GetAttr(st, a_ex)) == NULL) goto done;
    if (n) {
        rc = DECLINE;
        if ((k = get_true(msg, a_capped)) != 0) goto fail_or_decline;
        if ((k = get_ll(msg, a_kept, &kept)) <= 0) goto fail_or_decline;
        if ((k = get_ll(msg, a_length, &length)) <= 0) goto fail_or_decline;
        if ((k = get_ll(conn, a_held, &held)) <= 0) goto fail_or_decline;
        if ((k = get_ll(conn, a_max_body, &max_body)) <= 0) goto fail_or_decline;
        long long room = max_body - kept < max_body - held ? max_body - kept : max_body - held;
        if (n > room) goto done;
        if ((lst = PyObject_GetAttr(msg, a_body)) == NULL) goto fail;
        if (!PyList_CheckExact(lst)) goto done;
        rc = FAILED;
    }
    /* as ``_body`` and ``_end`` do */
    if (client) {
        if (PyObject_SetAttr(ex, a_ts_rqe, ts) < 0) goto done;
    } else {
        if (PyObject_SetAttr(ex, a_ts_rse, ts) < 0) goto done;
        PyObject *t = PyObject_GetAttr(ex, a_ts_rss);
        if (t == NULL) goto done;
        Py_DECREF(t);
        if (t == Py_None && PyObject_SetAttr(ex, a_ts_rss, ts) < 0) goto done;
    }
    if (n) {
        if (set_ll(msg, a_length, length + n) < 0) goto done;
        if ((chunk = PyBytes_FromStringAndSize((const char *)body, n)) == NULL) goto done;
        if (PyList_Append(lst, chunk) < 0) goto done;
        if (set_ll(msg, a_kept, kept + n) < 0) goto done;
        if (set_ll(conn, a_held, held + n) < 0) goto done;
    }
    if (end_stream && r_end(conn, stats, st, ex, client, ts) < 0) goto done;
    rc = HANDLED;
    goto done;
fail_or_decline:
    if (k > 0 || (k == 0 && !PyErr_Occurred())) goto done;  /* k: 1 (capped) or 0: decline */
fail:
    rc = FAILED;
done:
    Py_XDECREF(chunk);
    Py_XDECREF(lst);
    Py_XDECREF(ex);
    Py_XDECREF(msg);
    Py_DECREF(st);
    return rc;
}

/* ``f"{conn_id}.{n}"`` of a str and an int (checked exactly by the caller). */
static PyObject *exchange_id(PyObject *cid, PyObject *n) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(n, &overflow);
    if (v == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t len = PyUnicode_GET_LENGTH(cid);
    if (overflow || v < 0 || !PyUnicode_IS_ASCII(cid) || len > 4096)
        return PyUnicode_FromFormat("%U.%S", cid, n);
    char digits[24];
    int nd = snprintf(digits, sizeof(digits), ".%lld", v);
    PyObject *r = PyUnicode_New(len + nd, 127);
    if (r == NULL) return NULL;
    memcpy(PyUnicode_1BYTE_DATA(r), PyUnicode_1BYTE_DATA(cid), (size_t)len);
    memcpy(PyUnicode_1BYTE_DATA(r) + len, digits, (size_t)nd);
    return r;
}

/* A three-digit final status ("200" to "599") as ``_STATUS`` maps it; else -1. */
static long final_status(PyObject *v) {
    if (!PyUnicode_CheckExact(v) || PyUnicode_GET_LENGTH(v) != 3) return -1;
    long s = 0;
    for (int i = 0; i < 3; i++) {
        Py_UCS4 ch = PyUnicode_READ_CHAR(v, i);
        if (ch < '0' || ch > '9') return -1;
        s = s * 10 + (long)(ch - '0');
    }
    return s >= 200 && s < 600 ? s : -1;
}

/* A whole header block read with no unknown entry: a request head opening a new stream, or a
 * final response head on a stream without one. */
static int r_headers(PyObject *conn, PyObject *stats, PyObject *side, PyObject *streams,
                     int client, PyObject *sid, PyObject *fields, int end_stream,
                     PyObject *ts) {
    PyObject *st = PyDict_GetItemWithError(streams, sid);
    if (st == NULL && PyErr_Occurred()) return FAILED;
    PyObject *parts = NULL, *ex = NULL, *tmp = NULL, *id = NULL, *n1 = NULL, *closed = NULL,
        *cid = NULL, *cconn = NULL, *own = NULL;
    int rc = DECLINE;
    if (client) {
        if (st != NULL) return DECLINE;  /* trailers, or a head again */
        if ((closed = PyObject_GetAttr(conn, a_closed)) == NULL) return FAILED;
        int k = PySet_CheckExact(closed) ? PySet_Contains(closed, sid) : 1;
        Py_CLEAR(closed);
        if (k != 0) return k < 0 ? FAILED : DECLINE;
        if (PyDict_GET_SIZE(streams) >= R_MAX_STREAMS) return DECLINE;
        rc = FAILED;
        if ((tmp = PyObject_GetAttr(conn, a_n)) == NULL) goto done;
        if ((cid = PyObject_GetAttr(conn, a_conn_id)) == NULL) goto done;
        if (!PyLong_CheckExact(tmp) || !PyUnicode_CheckExact(cid)) {
            rc = DECLINE;
            goto done;
        }
        if ((parts = request_parts(fields)) == NULL) goto done;
        /* as ``_stream`` does */
        PyObject *one = PyLong_FromLong(1);
        if (one == NULL) goto done;
        n1 = PyNumber_Add(tmp, one);
        Py_DECREF(one);
        if (n1 == NULL) goto done;
        Py_CLEAR(tmp);
        if (PyObject_SetAttr(side, a_block_sid, sid) < 0) goto done;
        if (PyObject_SetAttr(conn, a_n, n1) < 0) goto done;
        if ((id = exchange_id(cid, n1)) == NULL) goto done;
        if ((cconn = PyObject_GetAttr(conn, a_conn)) == NULL) goto done;
        PyObject *xa[2] = {id, cconn};
        if ((ex = new_of(RC_EXCHANGE, R_Exchange, xa, 2)) == NULL) goto done;
        if ((tmp = PyObject_GetAttr(ex, a_meta)) == NULL) goto done;
        PyObject *h2 = Py_BuildValue("{OO}", a_stream, sid);
        if (h2 == NULL) goto done;
        int e = PyObject_SetItem(tmp, a_h2, h2);
        Py_DECREF(h2);
        if (e < 0) goto done;
        Py_CLEAR(tmp);
        PyObject *sa[2] = {sid, ex};
        if ((own = new_of(RC_STREAM, R_Stream, sa, 2)) == NULL) goto done;
        if (PyDict_SetItem(streams, sid, own) < 0) goto done;
        if (count_in(stats, k_streams, 1) < 0) goto done;
        /* as ``_request_headers`` does */
        PyObject *qa[4] = {PyTuple_GET_ITEM(parts, 0), PyTuple_GET_ITEM(parts, 1), R_HTTP2,
                           PyTuple_GET_ITEM(parts, 2)};
        PyObject *req = new_of(RC_REQUEST, R_Request, qa, 4);
        if (req == NULL) goto done;
        e = PyObject_SetAttr(ex, a_request, req);
        Py_DECREF(req);
        if (e < 0 || PyObject_SetAttr(ex, a_ts_rqs, ts) < 0
            || PyObject_SetAttr(ex, a_ts_rqe, ts) < 0)
            goto done;
        if (end_stream && r_end(conn, stats, own, ex, 1, ts) < 0) goto done;
        rc = HANDLED;
    } else {
        if (st == NULL) return DECLINE;  /* a response without its request */
        Py_INCREF(st);
        own = st;
        int k = get_true(own, a_final);
        if (k != 0) {  /* trailers */
            rc = k < 0 ? FAILED : DECLINE;
            goto done;
        }
        rc = FAILED;
        if ((parts = response_parts(fields)) == NULL) goto done;
        long status = final_status(PyTuple_GET_ITEM(parts, 0));
        if (status < 0) {  /* 1xx, or odd: ``_response_headers`` */
            rc = DECLINE;
            goto done;
        }
        if ((ex = PyObject_GetAttr(own, a_ex)) == NULL) goto done;
        if (PyObject_SetAttr(side, a_block_sid, sid) < 0) goto done;
        /* as ``_response_headers`` does */
        if ((tmp = PyLong_FromLong(status)) == NULL) goto done;
        PyObject *pa[4] = {tmp, R_EMPTY, R_HTTP2, PyTuple_GET_ITEM(parts, 1)};
        PyObject *resp = new_of(RC_RESPONSE, R_Response, pa, 4);
        if (resp == NULL) goto done;
        Py_CLEAR(tmp);
        int e = PyObject_SetAttr(own, a_final, Py_True);
        if (e == 0) e = PyObject_SetAttr(ex, a_response, resp);
        Py_DECREF(resp);
        if (e < 0 || PyObject_SetAttr(ex, a_ts_rss, ts) < 0
            || PyObject_SetAttr(ex, a_ts_rse, ts) < 0)
            goto done;
        if (end_stream && r_end(conn, stats, own, ex, 0, ts) < 0) goto done;
        rc = HANDLED;
    }
done:
    Py_XDECREF(own);
    Py_XDECREF(cconn);
    Py_XDECREF(id);
    Py_XDECREF(n1);
    Py_XDECREF(cid);
    Py_XDECREF(tmp);
    Py_XDECREF(ex);
    Py_XDECREF(parts);
    return rc;
}

/* The event ``scan`` would make, to ``conn._events(side, [event], ts)``. */
static int to_python(PyObject *conn, PyObject *side, PyObject *ev, PyObject *ts) {
    if (ev == NULL) return -1;
    PyObject *lst = PyList_New(1);
    if (lst == NULL) {
        Py_DECREF(ev);
        return -1;
    }
    PyList_SET_ITEM(lst, 0, ev);
    int r = call_py(conn, a_events, side, lst, ts);
    Py_DECREF(lst);
    return r;
}

static PyObject *run(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "run(conn, side, data, pos, ts)");
        return NULL;
    }
    if (!configured || R_Exchange == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "replay.h2._hpack: configure_reader() first");
        return NULL;
    }
    PyObject *conn = args[0], *side = args[1], *data = args[2], *ts = args[4];
    Py_ssize_t pos = PyLong_AsSsize_t(args[3]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    if (!PyBytes_CheckExact(data)) return PyLong_FromSsize_t(pos);  /* left to ``_frame`` */
    PyObject *dec = NULL, *stats = NULL, *streams = NULL, *ev = NULL;
    Py_ssize_t start = pos;
    long long max_frame = 0;
    int client = 0;
    if ((dec = PyObject_GetAttr(side, a_hpack)) == NULL) goto fail;
    if ((stats = PyObject_GetAttr(conn, a_stats)) == NULL) goto fail;
    if ((streams = PyObject_GetAttr(conn, a_streams)) == NULL) goto fail;
    if ((client = get_true(side, a_client)) < 0) goto fail;
    int k = get_ll(side, a_max_frame, &max_frame);
    if (k < 0) goto fail;
    if (!k || !PyDict_CheckExact(stats) || !PyDict_CheckExact(streams)) goto out;
    /* ``data`` is a bytes object held by the caller: immutable while read */
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t end = PyBytes_GET_SIZE(data);
    if (pos < 0 || pos > end) goto out;
    CommonFrame f;
    while (common_frame(d, pos, end, max_frame, &f)) {
        long long length = f.length;
        unsigned ftype = f.ftype, flags = f.flags;
        long sidv = f.sid;
        const unsigned char *body = f.body;
        Py_ssize_t n = f.n;
        /* the frame is taken: whatever happens next, ``pos`` goes past it */
        pos += 9 + (Py_ssize_t)length;
        if (count_frame(stats) < 0) goto fail;
        PyObject *sid = PyLong_FromLong(sidv);
        if (sid == NULL) goto fail;
        int end_stream = flags & 0x01, r;
        if (ftype == 0) {
            r = r_data(conn, stats, streams, client, sid, body, n, end_stream, ts);
            if (r == DECLINE)
                r = to_python(conn, side, Py_BuildValue("(iOy#N)", 0, sid, (const char *)body,
                                                        n, PyBool_FromLong(end_stream)),
                              ts);
        } else {
            PyObject *res = decode_impl(dec, body, n);
            if (res == NULL) {
                Py_DECREF(sid);
                goto fail;
            }
            PyObject *fields = PyTuple_GET_ITEM(res, 0);
            PyObject *unknown = PyTuple_GET_ITEM(res, 1);
            PyObject *whole = PyTuple_GET_ITEM(res, 2);
            r = DECLINE;
            if (whole == Py_True && PyLong_AsLong(unknown) == 0)
                r = r_headers(conn, stats, side, streams, client, sid, fields, end_stream, ts);
            if (r == DECLINE) {
                PyObject *parts = client ? request_parts(fields) : response_parts(fields);
                r = parts == NULL ? -1
                    : to_python(conn, side,
                                Py_BuildValue("(iONOOON)", 1, sid, PyBool_FromLong(end_stream),
                                              fields, unknown, whole, parts),
                                ts);
            }
            Py_DECREF(res);
        }
        Py_DECREF(sid);
        if (r < 0) goto fail;
    }
out:
    Py_XDECREF(ev);
    Py_XDECREF(dec);
    Py_XDECREF(stats);
    Py_XDECREF(streams);
    return PyLong_FromSsize_t(pos);
fail:
    (void)start;
    Py_XDECREF(ev);
    Py_XDECREF(dec);
    Py_XDECREF(stats);
    Py_XDECREF(streams);
    return NULL;
}

/* configure_reader(Exchange, Request, Response, _Stream, max_streams) */
static PyObject *configure_reader(PyObject *self, PyObject *args) {
    PyObject *ex, *rq, *rs, *st;
    Py_ssize_t ms;
    if (!PyArg_ParseTuple(args, "O!O!O!O!n", &PyType_Type, &ex, &PyType_Type, &rq, &PyType_Type,
                          &rs, &PyType_Type, &st, &ms))
        return NULL;
    if (ms < 0 || ms > (PY_SSIZE_T_MAX / 8)) {
        PyErr_SetString(PyExc_ValueError, "max_streams out of range");
        return NULL;
    }
    Py_INCREF(ex);
    Py_XSETREF(R_Exchange, ex);
    Py_INCREF(rq);
    Py_XSETREF(R_Request, rq);
    Py_INCREF(rs);
    Py_XSETREF(R_Response, rs);
    Py_INCREF(st);
    Py_XSETREF(R_Stream, st);
    R_MAX_STREAMS = ms;
    Py_RETURN_NONE;
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
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL,
     "run(conn, side, data, pos, ts) -> pos: the usual frames read and handled."},
    {"configure", configure, METH_VARARGS, "The static table, marker, limits and code."},
    {"configure_make", configure_make, METH_VARARGS,
     "configure_make(i, cls, nargs, recipe): how recipe i makes cls(*args)."},
    {"make", (PyCFunction)(void (*)(void))make_py, METH_FASTCALL, "make(i, *args)."},
    {"configure_reader", configure_reader, METH_VARARGS,
     "configure_reader(Exchange, Request, Response, _Stream, max_streams)."},
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
    INTERN(R_HTTP2, "HTTP/2");
    INTERN(R_EMPTY, "");
    INTERN(R_GRPC, "application/grpc");
    INTERN(R_CTYPE, "content-type");
    INTERN(a_hpack, "hpack");
    INTERN(a_stats, "stats");
    INTERN(a_client, "client");
    INTERN(a_max_frame, "max_frame");
    INTERN(a_streams, "streams");
    INTERN(a_closed, "closed_streams");
    INTERN(a_n, "n");
    INTERN(a_conn_id, "conn_id");
    INTERN(a_conn, "conn");
    INTERN(a_meta, "meta");
    INTERN(a_h2, "h2");
    INTERN(a_stream, "stream");
    INTERN(a_req, "req");
    INTERN(a_resp, "resp");
    INTERN(a_ex, "ex");
    INTERN(a_sid, "sid");
    INTERN(a_final, "final");
    INTERN(a_unknown, "unknown");
    INTERN(a_request, "request");
    INTERN(a_response, "response");
    INTERN(a_ts_rqs, "ts_request_start");
    INTERN(a_ts_rqe, "ts_request_end");
    INTERN(a_ts_rss, "ts_response_start");
    INTERN(a_ts_rse, "ts_response_end");
    INTERN(a_body, "body");
    INTERN(a_length, "length");
    INTERN(a_kept, "kept");
    INTERN(a_capped, "capped");
    INTERN(a_ended, "ended");
    INTERN(a_gaps, "gaps");
    INTERN(a_held, "held");
    INTERN(a_max_body, "max_body");
    INTERN(a_block_sid, "block_sid");
    INTERN(a_events, "_events");
    INTERN(a_done, "_done");
    INTERN(a_emit_m, "_emit");
    INTERN(a_emit, "emit");
    INTERN(a_outer, "outer");
    INTERN(a_retransmits, "retransmits");
    INTERN(a_completeness, "completeness");
    INTERN(a_headers, "headers");
    INTERN(a_update, "update");
    INTERN(a_join, "join");
    INTERN(k_streams, "streams");
    INTERN(k_exchanges, "exchanges");
#undef INTERN
    if ((R_EMPTY_BYTES = PyBytes_FromStringAndSize(NULL, 0)) == NULL) return NULL;
    return PyModule_Create(&moduledef);
}
