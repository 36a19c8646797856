/* One level of a JSON body, split in C: exactly what ``replay.compare``'s msgspec decoders
 * ``_raw_object`` (``dict[str, msgspec.Raw]``) and ``_raw_array`` (``list[msgspec.Raw]``) give
 * for a document simdjson has already accepted (the definition, used when this module is not
 * built or SHADOWTAP_PURE_PYTHON is set; see ``replay.compare._split``).
 *
 * ``split(body, Raw, loads)``: ``body`` (bytes) starts with "{" or "[". An object gives a dict
 * of its member names to ``Raw`` of each value's text (from its first byte to its last, no
 * surrounding whitespace), in order of first appearance with a repeated name's last value, as
 * msgspec builds it; an array gives a list of ``Raw`` of its elements. A name holding a
 * backslash is decoded with ``loads`` (orjson) on its quoted text; the others are UTF-8 as they
 * stand. Validation is simdjson's, done before: this only finds the boundaries, and returns
 * None at anything it does not expect (the caller then uses msgspec).
 * tests/replay/test_compare_split.py holds it to the msgspec decoders.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

static inline int is_ws(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* p at an opening quote: returns the position after the closing one, or -1; *esc set when a
 * backslash is seen. */
static Py_ssize_t skip_string(const unsigned char *s, Py_ssize_t p, Py_ssize_t n, int *esc) {
    p++;
    while (p < n) {
        const unsigned char *q = memchr(s + p, '"', (size_t)(n - p));
        if (q == NULL)
            return -1;
        Py_ssize_t e = q - s;
        /* a quote preceded by an odd number of backslashes is escaped */
        Py_ssize_t b = e;
        while (b > p && s[b - 1] == '\\')
            b--;
        if (!*esc && memchr(s + p, '\\', (size_t)(e - p)) != NULL)
            *esc = 1;
        if (((e - b) & 1) == 0)
            return e + 1;
        p = e + 1;
    }
    return -1;
}

/* Set bits in a mask (no libgcc call where the popcnt instruction is not assumed). */
static inline Py_ssize_t pop64(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return (Py_ssize_t)((x * 0x0101010101010101ull) >> 56);
}

/* The container at p ("{" or "["): returns the position after the bracket that closes it,
 * or -1. A byte at a time: in a string or not, an escape pending or not, the depth. With SSE2,
 * 64 bytes at a time where there is no backslash and the depth cannot reach zero: the bytes in
 * strings are those after an odd number of quotes (a prefix XOR of the quotes' mask), and the
 * brackets outside them are counted. */
static Py_ssize_t skip_from(const unsigned char *s, Py_ssize_t p, Py_ssize_t n,
                            Py_ssize_t *maxd);

static Py_ssize_t skip_container(const unsigned char *s, Py_ssize_t p, Py_ssize_t n) {
    return skip_from(s, p + 1, n, NULL);
}

/* The rest of a container from p, just after its opening bracket (or just after a comma
 * between two of its members or elements): the position after its closing bracket, or -1.
 * With maxd, *maxd is raised to at least the deepest nesting inside it (1: none). */
static Py_ssize_t skip_from(const unsigned char *s, Py_ssize_t p, Py_ssize_t n,
                            Py_ssize_t *maxd) {
    Py_ssize_t depth = 1;
    int in_str = 0, esc = 0;
#ifdef __SSE2__
    const __m128i QUOTE = _mm_set1_epi8('"'), BSLASH = _mm_set1_epi8('\\');
    const __m128i OPEN1 = _mm_set1_epi8('{'), OPEN2 = _mm_set1_epi8('[');
    const __m128i CLOSE1 = _mm_set1_epi8('}'), CLOSE2 = _mm_set1_epi8(']');
    while (p + 64 <= n) {
        if (!esc) {
            uint64_t q = 0, bs = 0, op = 0, cl = 0;
            for (int k = 0; k < 4; k++) {
                __m128i v = _mm_loadu_si128((const __m128i *)(s + p + 16 * k));
                int sh = 16 * k;
                q |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, QUOTE)) << sh;
                bs |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, BSLASH)) << sh;
                op |= (uint64_t)(unsigned)_mm_movemask_epi8(
                    _mm_or_si128(_mm_cmpeq_epi8(v, OPEN1), _mm_cmpeq_epi8(v, OPEN2))) << sh;
                cl |= (uint64_t)(unsigned)_mm_movemask_epi8(
                    _mm_or_si128(_mm_cmpeq_epi8(v, CLOSE1), _mm_cmpeq_epi8(v, CLOSE2))) << sh;
            }
            if (bs == 0) {
                uint64_t x = q;
                x ^= x << 1;
                x ^= x << 2;
                x ^= x << 4;
                x ^= x << 8;
                x ^= x << 16;
                x ^= x << 32;
                if (in_str)
                    x = ~x;
                op &= ~x;
                cl &= ~x;
                Py_ssize_t ncl = pop64(cl);
                if (ncl < depth) {  /* cannot close the container in this block */
                    Py_ssize_t nop = pop64(op);
                    if (maxd != NULL && depth + nop > *maxd)
                        *maxd = depth + nop;  /* at most this deep in the block */
                    depth += nop - ncl;
                    in_str ^= (int)(pop64(q) & 1);
                    p += 64;
                    continue;
                }
            }
        }
        /* this block a byte at a time */
        Py_ssize_t end = p + 64;
        for (; p < end; p++) {
            unsigned char c = s[p];
            if (in_str) {
                if (esc)
                    esc = 0;
                else if (c == '\\')
                    esc = 1;
                else if (c == '"')
                    in_str = 0;
            } else if (c == '"') {
                in_str = 1;
            } else if (c == '{' || c == '[') {
                if (++depth > 1 && maxd != NULL && depth > *maxd)
                    *maxd = depth;
            } else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return p + 1;
            }
        }
    }
#endif
    for (; p < n; p++) {
        unsigned char c = s[p];
        if (in_str) {
            if (esc)
                esc = 0;
            else if (c == '\\')
                esc = 1;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > 1 && maxd != NULL && depth > *maxd)
                *maxd = depth;
        } else if (c == '}' || c == ']') {
            if (--depth == 0)
                return p + 1;
        }
    }
    return -1;
}

/* p at the first byte of a value: returns the position after its last byte, or -1. */
static Py_ssize_t skip_value(const unsigned char *s, Py_ssize_t p, Py_ssize_t n) {
    unsigned char c = s[p];
    int esc = 0;
    if (c == '"')
        return skip_string(s, p, n, &esc);
    if (c == '{' || c == '[')
        return skip_container(s, p, n);
    /* a number, true, false or null */
    while (p < n) {
        c = s[p];
        if (c == ',' || c == '}' || c == ']' || is_ws(c))
            break;
        p++;
    }
    return p;
}

/* Raw of s[a:b]: a slice of a memoryview of the body when long (no copy; the view, made
 * once, keeps the body alive), else a copy. */
static PyObject *make_raw(PyObject *raw_type, PyObject *body, PyObject **view,
                          const unsigned char *s, Py_ssize_t a, Py_ssize_t b) {
    PyObject *src;
    if (b - a >= 512) {
        if (*view == NULL) {
            *view = PyMemoryView_FromObject(body);
            if (*view == NULL)
                return NULL;
        }
        PyObject *start = PyLong_FromSsize_t(a), *stop = PyLong_FromSsize_t(b);
        PyObject *sl = (start && stop) ? PySlice_New(start, stop, NULL) : NULL;
        Py_XDECREF(start);
        Py_XDECREF(stop);
        if (sl == NULL)
            return NULL;
        src = PyObject_GetItem(*view, sl);
        Py_DECREF(sl);
    } else {
        src = PyBytes_FromStringAndSize((const char *)s + a, b - a);
    }
    if (src == NULL)
        return NULL;
    PyObject *r = PyObject_CallOneArg(raw_type, src);
    Py_DECREF(src);
    return r;
}

#define SKIP_WS  while (p < n && is_ws(s[p])) p++

static PyObject *split_body(PyObject *const *args, PyObject **view);

static PyObject *split(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "split(body: bytes, Raw, loads)");
        return NULL;
    }
    PyObject *view = NULL;
    PyObject *out = split_body(args, &view);
    Py_XDECREF(view);
    return out;
}

static PyObject *split_body(PyObject *const *args, PyObject **view) {
    PyObject *raw_type = args[1], *loads = args[2];
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t p = 0;
    SKIP_WS;
    if (p >= n)
        Py_RETURN_NONE;
    if (s[p] == '[') {
        PyObject *out = PyList_New(0);
        if (out == NULL)
            return NULL;
        p++;
        SKIP_WS;
        if (p < n && s[p] == ']') {
            p++;
        } else {
            for (;;) {
                if (p >= n)
                    goto none_list;
                Py_ssize_t v = p;
                p = skip_value(s, p, n);
                if (p < 0)
                    goto none_list;
                PyObject *r = make_raw(raw_type, args[0], view, s, v, p);
                if (r == NULL) {
                    Py_DECREF(out);
                    return NULL;
                }
                int rc = PyList_Append(out, r);
                Py_DECREF(r);
                if (rc < 0) {
                    Py_DECREF(out);
                    return NULL;
                }
                SKIP_WS;
                if (p >= n)
                    goto none_list;
                if (s[p] == ',') {
                    p++;
                    SKIP_WS;
                    continue;
                }
                if (s[p] == ']') {
                    p++;
                    break;
                }
                goto none_list;
            }
        }
        SKIP_WS;
        if (p != n)
            goto none_list;
        return out;
    none_list:
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    if (s[p] != '{')
        Py_RETURN_NONE;
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    p++;
    SKIP_WS;
    if (p < n && s[p] == '}') {
        p++;
    } else {
        for (;;) {
            if (p >= n || s[p] != '"')
                goto none_dict;
            int esc = 0;
            Py_ssize_t k = p;
            p = skip_string(s, p, n, &esc);
            if (p < 0)
                goto none_dict;
            PyObject *key;
            if (esc) {
                PyObject *q = PyBytes_FromStringAndSize((const char *)s + k, p - k);
                if (q == NULL) {
                    Py_DECREF(out);
                    return NULL;
                }
                key = PyObject_CallOneArg(loads, q);
                Py_DECREF(q);
                if (key != NULL && !PyUnicode_CheckExact(key)) {
                    Py_DECREF(key);
                    goto none_dict;
                }
            } else {
                key = PyUnicode_DecodeUTF8((const char *)s + k + 1, p - k - 2, NULL);
            }
            if (key == NULL) {
                PyErr_Clear();
                goto none_dict;
            }
            SKIP_WS;
            if (p >= n || s[p] != ':') {
                Py_DECREF(key);
                goto none_dict;
            }
            p++;
            SKIP_WS;
            if (p >= n) {
                Py_DECREF(key);
                goto none_dict;
            }
            Py_ssize_t v = p;
            p = skip_value(s, p, n);
            if (p < 0) {
                Py_DECREF(key);
                goto none_dict;
            }
            PyObject *r = make_raw(raw_type, args[0], view, s, v, p);
            if (r == NULL) {
                Py_DECREF(key);
                Py_DECREF(out);
                return NULL;
            }
            int rc = PyDict_SetItem(out, key, r);
            Py_DECREF(key);
            Py_DECREF(r);
            if (rc < 0) {
                Py_DECREF(out);
                return NULL;
            }
            SKIP_WS;
            if (p >= n)
                goto none_dict;
            if (s[p] == ',') {
                p++;
                SKIP_WS;
                continue;
            }
            if (s[p] == '}') {
                p++;
                break;
            }
            goto none_dict;
        }
    }
    SKIP_WS;
    if (p != n)
        goto none_dict;
    return out;
none_dict:
    Py_DECREF(out);
    Py_RETURN_NONE;
}

/* head(body, limit): body (bytes) is a JSON array simdjson has accepted. The position just
 * after the first element that ends ``limit`` or more bytes in, when it is not the last one
 * and nothing in the array nests more than 200 deep; else -1. */
static PyObject *head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "head(body: bytes, limit: int)");
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (n < 2 || s[0] != '[')
        return PyLong_FromLong(-1);
    Py_ssize_t p = 1, found = -1;
    int in_str = 0, esc = 0;
    Py_ssize_t depth = 1;
    /* a byte at a time: the array is read whole (for the depth), elements end at a comma
     * at depth 1 */
    for (; p < n; p++) {
        unsigned char c = s[p];
        if (in_str) {
            if (esc)
                esc = 0;
            else if (c == '\\')
                esc = 1;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > 200)
                return PyLong_FromLong(-1);
        } else if (c == '}' || c == ']') {
            if (--depth == 0)
                break;
        } else if (c == ',' && depth == 1 && p >= limit) {
            found = p;
            break;
        }
    }
    if (found < 0)
        return PyLong_FromLong(-1);
    /* the rest of the array, for its depth */
    Py_ssize_t maxd = depth;
    if (skip_from(s, found + 1, n, &maxd) < 0 || maxd > 200)
        return PyLong_FromLong(-1);
    return PyLong_FromSsize_t(found);
}

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(body, Raw, loads): a JSON object body's members (dict of name to Raw) or an array "
     "body's elements (list of Raw), one level deep; None when it cannot."},
    {"head", (PyCFunction)(void (*)(void))head, METH_FASTCALL,
     "head(body, limit): where the first element of a JSON array ending at least limit bytes "
     "in ends (before a comma), or -1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_compare", NULL, -1, methods};

PyMODINIT_FUNC PyInit__compare(void) { return PyModule_Create(&moddef); }
