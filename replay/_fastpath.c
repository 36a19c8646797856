/* replay._fastpath: the extractor's per-packet path in C, for the common case.
 *
 * Why: decoding, reassembly and HTTP/1 framing in Python cost ~10 us per packet, and most
 * packets of real traffic are the boring case: an in-order segment of a connection whose SYN
 * was seen, carrying a well-formed request or response. This module handles exactly that case
 * and nothing else, and hands everything else to the Python code (replay/extract.py,
 * replay/tcp.py, replay/http1.py), which stays the definition of what shadowtap does.
 *
 * How the hand-off stays exact ("checkpoint and replay"):
 *   - A connection is adopted only at its client SYN, after the Python reassembler has created
 *     its state (_Conn + HttpConnection), so ids, counters and the LRU order are Python's own.
 *   - While adopted, the C code keeps the TCP and HTTP state, and logs every segment it applies
 *     since the last *checkpoint*: a point where no exchange is pending (both directions between
 *     messages). An exchange is emitted only at such a point, so a checkpoint follows every
 *     emission.
 *   - The moment anything is not boring (out of order, a retransmission, an ACK ahead of what
 *     was seen, a head this code does not read strictly, an Upgrade, a close-delimited body, a
 *     reset mid-exchange...), or the Python side needs the connection (an idle sweep, an
 *     eviction, the end of the capture, a packet that only the Python decoder reads), the
 *     connection is given back: its Python objects are set to the checkpoint and the logged
 *     segments are replayed through the Python reassembler, which then carries on. Nothing the
 *     Python code would have emitted is lost or emitted twice; tests/test_fastpath.py checks that
 *     both paths write identical exchange logs.
 *
 * The hand-back contract (docs/architecture.md): this file reads and writes no attribute of the
 * per-connection Python objects; it calls their named methods, once per event:
 *   - taking a connection over: _Conn.export_state() and HttpConnection.export_state() (what it
 *     starts from, and the conditions it adopts under), then _Conn.set_fast(True);
 *   - giving it back: _Conn.import_state(last_ts, (nxt, closed) x2),
 *     HttpConnection.import_state(n, (state, buf, first_message, last_ts) x2), then
 *     Reassembler.replay_native(conn, log) for the segments since the checkpoint;
 *   - ending it here (both FINs, or an RST between exchanges): Reassembler.end_native(conn);
 *   - Python ending it (Reassembler._end: idle, evicted, the end of the input, a port reused)
 *     calls FastPath.end(conn): given back if held, and its entry dropped whatever its state;
 *   - a retransmission of a foreign connection (below), counted as the reassembler counts it:
 *     Reassembler.retransmit_native(conn, ts).
 * The one field written in place is _Conn.last_ts (FP_touch, before a sweep or an eviction).
 * The reader states are replay.http1.ReaderState's numbers, read at import (READER_STATES): this
 * file has none of its own. The per-packet path uses the Reassembler's own tables and clock as
 * before (keys, stats, now, next_sweep, hole_count, segment, ack_only, _timers).
 *
 * Connections whose bytes another reader took (TLS, HTTP/2: HttpConnection.export_foreign),
 * after they were given back at their first bytes: their TCP reassembly comes back here, in-order
 * bytes handed to that reader's feed(from_client, data, ts) as the HTTP/1 readers in state FOREIGN
 * would (_Conn.export_state to start from, _Conn.import_state and HttpConnection.import_foreign
 * to give them back, at once: every segment is a checkpoint); a segment wholly before what was
 * delivered (a retransmission) is only counted (foreign_retransmit), so a retransmission storm
 * does not take the connection from C. Given back, a connection stays in the table, dormant
 * (Python's), and is taken again once its TCP state is clean (with a back-off when it keeps
 * coming back), until Python ends it (FastPath.end drops its entry). Decrypted
 * HTTP/1 (replay.tls.records) is read by Plain, the same HTTP/1 reader and JSONL encoder fed
 * plaintext, with the same checkpoint-and-replay hand-back (HttpConnection.import_state and the
 * logged feeds); and a TLS 1.3 direction in the steady state can be lent to the foreign
 * connection (Plain.lend): its records are then decrypted (the AEAD object's decrypt) and read
 * here with no Python call per segment, until one is not for it (TlsConnection._lent_back).
 * HTTP/2 over TLS lends its directions the same way to a sink (FastPath.sink), a Plain with no
 * HTTP/1 reader: each segment's plaintext goes to the HTTP/2 reader's feed in one call.
 *
 * The parts, in file order: the connection table; the checkpoint and the give-back; strict
 * HTTP/1 heads; JSONL lines built from the head bytes (byte-identical to JsonlWriter, for
 * `shadowtap extract` and log-only appliance pipelines); emission; TCP segments and adoption;
 * frame decoding; encode_line (the JSONL line of any Exchange of the usual shape); and the
 * FastPath type, whose run/run_pcap/run_ring walk tuples, pcap records and TPACKET_V3 blocks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MASK32(x) ((uint32_t)(x))
#define HALF 0x80000000u
#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_ACK 0x10
#define MAX_HEAD (64 * 1024)
#define LOG_MAX_BYTES (16 * 1024 * 1024)
/* A foreign connection read here for this many segments since it was taken has settled: its
 * back-off (foreign_back) starts again from 1. */
#define FOREIGN_SETTLED 64

/* The states of a direction's reader that this code reads strictly: replay.http1.ReaderState's
 * values of the same names, read once at import (init_states), never numbers of its own. */
static long H_HEAD = -1, H_BODY_CL = -1, H_CHUNK_SIZE = -1, H_CHUNK_DATA = -1, H_CHUNK_CRLF = -1,
            H_TRAILERS = -1;
enum { OK = 0, BAIL = 1, BAIL_LOGGED = 2, ERR = -1 };
/* BAIL: give the connection back, then Python takes the segment; BAIL_LOGGED: the segment
 * is already in the log that is replayed. */

/* ------------------------------------------------------------------------------------------ */
typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int buf_add(Buf *b, const char *s, Py_ssize_t n) {
    if (b->len + n > b->cap) {
        Py_ssize_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        char *q = PyMem_Realloc(b->p, cap);
        if (!q) { PyErr_NoMemory(); return -1; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}
static void buf_free(Buf *b) { PyMem_Free(b->p); b->p = NULL; b->len = b->cap = 0; }
/* Move a buffer's contents to another (no copy); the source is left empty. */
static void buf_move(Buf *to, Buf *from) {
    PyMem_Free(to->p);
    *to = *from;
    from->p = NULL;
    from->len = from->cap = 0;
}

static int put(Buf *b, const char *s, Py_ssize_t n);
static int puts_(Buf *b, const char *s);
static int put_json_ascii(Buf *b, const char *s, Py_ssize_t n);
static int put_long(Buf *b, long v);

/* The exchange in progress on a connection (one at a time: a pipelined request goes to Python).
 * As Exchanges: the request and response as tuples ready for the Python model; as JSONL: the
 * messages' JSON and bodies. */
typedef struct {
    PyObject *req;      /* (method, target, version, headers, body) once the request is done */
    PyObject *resp;
    PyObject *interim;  /* list of (status, reason, version, headers, b"") or NULL */
    /* when written as JSONL: each message's JSON up to its body, the bodies, the interims */
    Buf jreq, jresp, jint, breq, bresp;
    double t0, t1, t2, t3;
    long n;
    char req_done, resp_done, has_resp, is_head;
} PEx;

typedef struct {
    long state;         /* a replay.http1.ReaderState value (H_*) */
    Buf buf;            /* a head or chunk line not complete yet */
    long long remaining;
    PEx *ex;            /* the exchange whose message is being read, or NULL between messages */
    Buf body;
    PyObject *head;     /* (…, headers) of the message being read */
    Buf jhead;          /* or its JSON, when exchanges are written as JSONL */
    char first_message;
    double last_ts;
} Rd;

struct FastPath;

/* A logged segment ('s': through the reassembler) or the rest of one after a checkpoint ('f':
 * straight to the direction's HTTP reader). Payload bytes live in Conn.logdata. */
typedef struct {
    char kind, d;
    int flags;
    double ts;
    uint32_t seq, ack;
    Py_ssize_t off, len;
} LogEntry;

typedef struct Conn {
    struct Conn *prev, *next;
    PyObject *pyconn, *handler, *key[2];
    PyObject *line_id, *line_conn; /* JSONL fragments when exchanges are written as lines */
    PyObject *line_sfx; /* or NULL: what follows the response in each line (a Plain's: the
                         * completeness and meta of decrypted TLS exchanges) */
    uint32_t nxt[2];
    char has_nxt[2], closed[2];
    double last_ts;
    /* checkpoint */
    uint32_t ck_nxt[2];
    char ck_has_nxt[2], ck_closed[2], ck_first[2];
    long ck_state[2];
    double ck_last_ts, ck_rlast[2];
    long ck_n;
    PyObject *ck_buf[2];
    LogEntry *log;
    Py_ssize_t nlog, caplog;
    Buf logdata;
    Rd rd[2];
    long n;
    long max_body;
    PEx *ex;            /* the exchange not yet emitted, or NULL: nothing pending */
    /* A connection another reader took over (HttpConnection.export_foreign: TLS, HTTP/2): its
     * in-order bytes go to that reader's feed(from_client, data, ts), retransmissions are
     * counted, and anything else gives it back (foreign_back); it then stays in the table,
     * dormant (Python holds it), and is taken again once its TCP state is clean (try_foreign),
     * or dropped when Python ends it (FP_end) or no longer tracks it. */
    PyObject *ffeed;
    struct Plain *plain; /* the decrypted HTTP/1 reader some of whose directions' records are
                          * read here (Plain.lend), or NULL */
    char dormant;
    char busy; /* with Python now (a segment, its feed, a give-back): sweep_dormant, keys_free
                * and FP_end leave it */
    char ended; /* Python ended it while it was busy (FP_end): dropped when that returns */
    int retry, retry_in; /* back-off of the next take (dormant_retry) */
    long fsegs; /* segments read here since it was last taken (FOREIGN_SETTLED resets retry) */
} Conn;

typedef struct {
    uint64_t h;
    Conn *c;   /* NULL: empty; TOMB: deleted */
    int d;
} Slot;

static Conn TOMB_;
#define TOMB (&TOMB_)

typedef struct FastPath {
    PyObject_HEAD
    PyObject *ex;       /* the Python Extractor */
    PyObject *reasm;
    PyObject *keys;
    PyObject *segment, *ack_only, *timers, *slow_frame, *emit, *stats;
    PyObject *emit_line, *line_parts; /* write exchanges as JSONL lines (None: as Exchanges) */
    PyObject *float_text;
    int lines_on;
    Buf line, line_ts;  /* pending lines, and each one's last timestamp (doubles) */
    long long lines, pending_lines;
    PyObject *replay, *end_native; /* the Reassembler's hand-back methods */
    PyObject *retransmit; /* Reassembler.retransmit_native, or NULL (then a give-back) */
    Slot *tab;
    size_t cap, used, tomb;
    Conn head;          /* list of adopted connections */
    Conn *cur_conn;     /* the foreign connection whose reader is being fed (Plain.lend) */
    long nconn;
    double next_sweep;
    long long packets, bytes, segments;
    long long adopted, given_back, exchanges;
    long long f_adopted, f_given_back; /* connections fed to a foreign reader (TLS, HTTP/2) */
    long long lent_segments; /* segments whose TLS records were read here (Plain.lend) */
    long long f_retransmits; /* retransmissions of foreign connections counted here */
    long ndormant, dormant_limit;
    PyObject *reasons;  /* dict: why connections were given back */
} FastPath;

static PyObject *S_conn; /* (with the encoder's names below) */
static PyObject *S_now, *S_next_sweep, *S_hole_count, *S_last_ts, *S_resets, *S_HTTP11,
    *S_HTTP10, *S_empty_bytes, *S_retransmits, *S_export_state, *S_set_fast;

/* ------------------------------------------------------------------------------------------ */
/* hash table: directional key -> (conn, direction) */

static uint64_t hkey(const unsigned char *k, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < n; i++) { h ^= k[i]; h *= 1099511628211ULL; }
    return h | 1;
}

static Slot *tab_find(FastPath *fp, const unsigned char *k, Py_ssize_t n, uint64_t h) {
    if (!fp->cap) return NULL;
    size_t m = fp->cap - 1, i = h & m;
    for (;;) {
        Slot *s = &fp->tab[i];
        if (s->c == NULL) return NULL;
        if (s->c != TOMB && s->h == h) {
            PyObject *kb = s->c->key[s->d];
            if (PyBytes_GET_SIZE(kb) == n && memcmp(PyBytes_AS_STRING(kb), k, n) == 0) return s;
        }
        i = (i + 1) & m;
    }
}

static int tab_grow(FastPath *fp) {
    size_t ncap = fp->cap ? fp->cap : 1024;
    while ((fp->used + 1) * 2 > ncap) ncap *= 2;
    Slot *nt = PyMem_Calloc(ncap, sizeof(Slot));
    if (!nt) { PyErr_NoMemory(); return -1; }
    for (size_t i = 0; i < fp->cap; i++) {
        Slot *s = &fp->tab[i];
        if (s->c == NULL || s->c == TOMB) continue;
        size_t j = s->h & (ncap - 1);
        while (nt[j].c) j = (j + 1) & (ncap - 1);
        nt[j] = *s;
    }
    PyMem_Free(fp->tab);
    fp->tab = nt;
    fp->cap = ncap;
    fp->tomb = 0;
    return 0;
}

static int tab_put(FastPath *fp, Conn *c, int d) {
    if ((fp->used + fp->tomb + 1) * 3 > fp->cap * 2 || !fp->cap)
        if (tab_grow(fp) < 0) return -1;
    PyObject *kb = c->key[d];
    uint64_t h = hkey((unsigned char *)PyBytes_AS_STRING(kb), PyBytes_GET_SIZE(kb));
    size_t m = fp->cap - 1, i = h & m;
    while (fp->tab[i].c != NULL && fp->tab[i].c != TOMB) i = (i + 1) & m;
    if (fp->tab[i].c == TOMB) fp->tomb--;
    fp->tab[i].h = h;
    fp->tab[i].c = c;
    fp->tab[i].d = d;
    fp->used++;
    return 0;
}

static void tab_del(FastPath *fp, Conn *c, int d) {
    PyObject *kb = c->key[d];
    Py_ssize_t n = PyBytes_GET_SIZE(kb);
    uint64_t h = hkey((unsigned char *)PyBytes_AS_STRING(kb), n);
    Slot *s = tab_find(fp, (unsigned char *)PyBytes_AS_STRING(kb), n, h);
    if (s && s->c == c) { s->c = TOMB; fp->used--; fp->tomb++; }
}

/* ------------------------------------------------------------------------------------------ */
/* small helpers */

static int set_attr_double(PyObject *o, PyObject *name, double v) {
    PyObject *f = PyFloat_FromDouble(v);
    if (!f) return -1;
    int r = PyObject_SetAttr(o, name, f);
    Py_DECREF(f);
    return r;
}

static int refresh_sweep(FastPath *fp) {
    PyObject *v = PyObject_GetAttr(fp->reasm, S_next_sweep);
    if (!v) return -1;
    double d = PyFloat_AsDouble(v);
    Py_DECREF(v);
    if (d == -1.0 && PyErr_Occurred()) return -1;
    fp->next_sweep = d;
    return 0;
}

static void pex_free(PEx *e) {
    if (!e) return;
    Py_XDECREF(e->req);
    Py_XDECREF(e->resp);
    Py_XDECREF(e->interim);
    buf_free(&e->jreq);
    buf_free(&e->jresp);
    buf_free(&e->jint);
    buf_free(&e->breq);
    buf_free(&e->bresp);
    PyMem_Free(e);
}

static void plain_detach(Conn *c);

static void conn_free(Conn *c) {
    if (c->plain) plain_detach(c);
    for (int d = 0; d < 2; d++) {
        buf_free(&c->rd[d].buf);
        buf_free(&c->rd[d].body);
        buf_free(&c->rd[d].jhead);
        Py_XDECREF(c->rd[d].head);
        Py_XDECREF(c->key[d]);
        Py_XDECREF(c->ck_buf[d]);
    }
    pex_free(c->ex);
    Py_XDECREF(c->pyconn);
    Py_XDECREF(c->handler);
    Py_XDECREF(c->line_id);
    Py_XDECREF(c->line_conn);
    Py_XDECREF(c->line_sfx);
    Py_XDECREF(c->ffeed);
    PyMem_Free(c->log);
    buf_free(&c->logdata);
    PyMem_Free(c);
}

static void conn_unlink(FastPath *fp, Conn *c) {
    tab_del(fp, c, 0);
    tab_del(fp, c, 1);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    fp->nconn--;
}

static void count_reason(FastPath *fp, const char *why) {
    PyObject *k = PyUnicode_InternFromString(why);
    if (!k) { PyErr_Clear(); return; }
    PyObject *v = PyDict_GetItemWithError(fp->reasons, k);
    long n = v ? PyLong_AsLong(v) : 0;
    PyObject *nv = PyLong_FromLong(n + 1);
    if (nv) { PyDict_SetItem(fp->reasons, k, nv); Py_DECREF(nv); }
    PyErr_Clear();
    Py_DECREF(k);
}

/* The checkpoint: the state right now, with nothing pending. */
static int checkpoint(Conn *c) {
    for (int d = 0; d < 2; d++) {
        c->ck_nxt[d] = c->nxt[d];
        c->ck_has_nxt[d] = c->has_nxt[d];
        c->ck_closed[d] = c->closed[d];
        c->ck_first[d] = c->rd[d].first_message;
        c->ck_state[d] = c->rd[d].state;
        c->ck_rlast[d] = c->rd[d].last_ts;
        Py_CLEAR(c->ck_buf[d]);
        if (c->rd[d].buf.len) {
            c->ck_buf[d] = PyBytes_FromStringAndSize(c->rd[d].buf.p, c->rd[d].buf.len);
            if (!c->ck_buf[d]) return -1;
        }
    }
    c->ck_last_ts = c->last_ts;
    c->ck_n = c->n;
    c->nlog = 0;
    c->logdata.len = 0;
    if (c->logdata.cap > 65536) buf_free(&c->logdata); /* memory follows what is in flight */
    return 0;
}

static int log_add(Conn *c, char kind, int d, double ts, uint32_t seq, int flags, const char *pl,
                   Py_ssize_t plen, uint32_t ack) {
    if (c->nlog == c->caplog) {
        Py_ssize_t cap = c->caplog ? c->caplog * 2 : 16;
        LogEntry *q = PyMem_Realloc(c->log, cap * sizeof(LogEntry));
        if (!q) { PyErr_NoMemory(); return -1; }
        c->log = q;
        c->caplog = cap;
    }
    LogEntry *e = &c->log[c->nlog];
    e->kind = kind;
    e->d = (char)d;
    e->flags = flags;
    e->ts = ts;
    e->seq = seq;
    e->ack = ack;
    e->off = c->logdata.len;
    e->len = plen;
    if (plen && buf_add(&c->logdata, pl, plen) < 0) return -1;
    c->nlog++;
    return 0;
}

/* Give a connection back to the Python reassembler: its objects are set to the checkpoint
 * (_Conn.import_state, HttpConnection.import_state) and the segments since are replayed through
 * it (Reassembler.replay_native). */
static int give_back(FastPath *fp, Conn *c, const char *why) {
    int rc = -1;
    PyObject *nx[2] = {NULL, NULL}, *r = NULL, *log = NULL;
    conn_unlink(fp, c);
    fp->given_back++;
    count_reason(fp, why);
    PyObject *pc = c->pyconn, *h = c->handler;
    for (int d = 0; d < 2; d++) {
        if (c->ck_has_nxt[d]) {
            if (!(nx[d] = PyLong_FromUnsignedLong(c->ck_nxt[d]))) goto done;
        } else {
            nx[d] = Py_None;
            Py_INCREF(nx[d]);
        }
    }
    /* TCP: the time of the last segment, each direction's (nxt, closed) */
    r = PyObject_CallMethod(pc, "import_state", "d(OO)(OO)", c->ck_last_ts, nx[0],
                            c->ck_closed[0] ? Py_True : Py_False, nx[1],
                            c->ck_closed[1] ? Py_True : Py_False);
    if (!r) goto done;
    Py_DECREF(r);
    /* HTTP: exchanges numbered, each reader's (state, buf, first_message, last_ts) */
    r = PyObject_CallMethod(h, "import_state", "l(lOOd)(lOOd)", c->ck_n,
                            c->ck_state[0], c->ck_buf[0] ? c->ck_buf[0] : S_empty_bytes,
                            c->ck_first[0] ? Py_True : Py_False, c->ck_rlast[0],
                            c->ck_state[1], c->ck_buf[1] ? c->ck_buf[1] : S_empty_bytes,
                            c->ck_first[1] ? Py_True : Py_False, c->ck_rlast[1]);
    if (!r) goto done;
    Py_DECREF(r);
    /* the segments since the checkpoint: (through the reassembler, direction, ts, seq, flags,
     * payload, ack); 'f' entries are the rest of a segment after a checkpoint, which go
     * straight to the direction's reader */
    if (!(log = PyList_New(c->nlog))) goto done;
    for (Py_ssize_t i = 0; i < c->nlog; i++) {
        LogEntry *e = &c->log[i];
        /* (no payload logged yet: logdata.p is NULL, and "y#" would pass None, not b"") */
        const char *pl = c->logdata.p ? c->logdata.p + e->off : "";
        PyObject *t = Py_BuildValue("(Oidkiy#k)", e->kind == 's' ? Py_True : Py_False,
                                    (int)e->d, e->ts, (unsigned long)e->seq, e->flags, pl, e->len,
                                    (unsigned long)e->ack);
        if (!t) goto done;
        PyList_SET_ITEM(log, i, t);
    }
    r = PyObject_CallFunctionObjArgs(fp->replay, pc, log, NULL);
    if (!r) goto done;
    Py_DECREF(r);
    rc = refresh_sweep(fp);
done:
    Py_XDECREF(nx[0]);
    Py_XDECREF(nx[1]);
    Py_XDECREF(log);
    conn_free(c);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* HTTP/1 heads, strictly: only what llhttp accepts and replay/http1.py reads the same way. */

static unsigned char T_TOKEN[256], T_TARGET[256], T_VALUE[256], T_REASON[256];

static void init_tables(void) {
    const char *tok = "!#$%&'*+-.^_`|~";
    for (int c = '0'; c <= '9'; c++) T_TOKEN[c] = 1;
    for (int c = 'a'; c <= 'z'; c++) T_TOKEN[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++) T_TOKEN[c] = 1;
    for (const char *p = tok; *p; p++) T_TOKEN[(unsigned char)*p] = 1;
    for (int c = 0x21; c <= 0x7e; c++) T_TARGET[c] = c != '#';
    for (int c = 0x20; c <= 0x7e; c++) T_VALUE[c] = 1;
    T_VALUE['\t'] = 1;
    for (int c = 0x20; c <= 0x7e; c++) T_REASON[c] = 1;
}

static const char *METHODS[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
                                "TRACE", NULL};
static PyObject *METHOD_STR[8];

static int ieq(const char *a, Py_ssize_t n, const char *lower) {
    Py_ssize_t m = (Py_ssize_t)strlen(lower);
    if (n != m) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char ch = a[i];
        if (ch >= 'A' && ch <= 'Z') ch += 32;
        if (ch != lower[i]) return 0;
    }
    return 1;
}

static PyObject *latin1(const char *p, Py_ssize_t n) {
    return PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, p, n);
}

/* Header lines from p (just after the start line) to the blank line at end. Returns the list of
 * (name, value) or NULL with *bail set (not strict) or an exception. framing: 0 none, 1 length,
 * 2 chunked. */
static PyObject *parse_fields(const char *p, const char *end, int *framing, long long *length,
                              int *bail, Buf *jb) {
    /* jb: write the fields as JSON pairs there instead (returns None) */
    PyObject *list;
    if (jb) {
        list = Py_None;
        Py_INCREF(list);
    } else if (!(list = PyList_New(0))) {
        return NULL;
    }
    int nf = 0;
    int cl = 0, te = 0, expect = 0;
    while (p < end) {
        if (p[0] == '\r') { /* the blank line */
            if (p + 2 != end || p[1] != '\n') goto bail;
            break;
        }
        const char *k = p;
        while (p < end && T_TOKEN[(unsigned char)*p]) p++;
        if (p == k || p >= end || *p != ':') goto bail;
        Py_ssize_t kn = p - k;
        p++;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *v = p;
        while (p < end && T_VALUE[(unsigned char)*p]) p++;
        if (p + 1 >= end || p[0] != '\r' || p[1] != '\n') goto bail;
        const char *ve = p;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        p += 2;
        if (kn == 14 && ieq(k, kn, "content-length")) {
            if (cl || ve - v < 1 || ve - v > 18 || (ve - v > 1 && v[0] == '0')) goto bail;
            long long x = 0;
            for (const char *q = v; q < ve; q++) {
                if (*q < '0' || *q > '9') goto bail;
                x = x * 10 + (*q - '0');
            }
            cl = 1;
            *length = x;
        } else if (kn == 17 && ieq(k, kn, "transfer-encoding")) {
            /* (whitespace after the value: llhttp refuses "chunked\t" in a request) */
            if (te || ve != p - 2 || !ieq(v, ve - v, "chunked")) goto bail;
            te = 1;
        } else if (kn == 7 && ieq(k, kn, "upgrade")) {
            goto bail;
        } else if ((kn == 17 && ieq(k, kn, "transfer_encoding")) ||
                   (kn == 14 && ieq(k, kn, "content_length"))) {
            goto bail; /* '_' for '-': a desync in a request (Python's bad_framing_field_name) */
        } else if (kn == 6 && ieq(k, kn, "expect")) {
            expect = 1; /* Expect: 100-continue without a body is a desync shape (Python's) */
        }
        if (jb) {
            if ((nf++ && put(jb, ",", 1) < 0) || put(jb, "[", 1) < 0 ||
                put_json_ascii(jb, k, kn) < 0 || put(jb, ",", 1) < 0 ||
                put_json_ascii(jb, v, ve - v) < 0 || put(jb, "]", 1) < 0) {
                Py_DECREF(list);
                return NULL;
            }
            continue;
        }
        PyObject *ks = latin1(k, kn), *vs = latin1(v, ve - v);
        PyObject *t = (ks && vs) ? PyTuple_Pack(2, ks, vs) : NULL;
        Py_XDECREF(ks);
        Py_XDECREF(vs);
        if (!t || PyList_Append(list, t) < 0) { Py_XDECREF(t); Py_DECREF(list); return NULL; }
        Py_DECREF(t);
    }
    if (cl && te) goto bail;
    if (expect && !te && !(cl && *length > 0)) goto bail;
    *framing = te ? 2 : cl ? 1 : 0;
    return list;
bail:
    Py_DECREF(list);
    *bail = 1;
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* JSONL lines, byte for byte what replay.formats.jsonl.JsonlWriter (orjson) writes for the same
 * exchange: key order, escapes, float text and body encoding. Anything outside what this
 * encoder is sure of (a timestamp orjson would print in another notation) is left to Python. */

static unsigned char J_PLAIN[256]; /* 1: copied as is (printable ASCII but " and \) */
static unsigned char J_ESC[256]; /* 0: copy; 1: \uXXXX; else the letter after the backslash */

static void init_json(void) {
    for (int c = 0; c < 0x20; c++) J_ESC[c] = 1;
    J_ESC['"'] = '"';
    J_ESC['\\'] = '\\';
    J_ESC['\b'] = 'b';
    J_ESC['\t'] = 't';
    J_ESC['\n'] = 'n';
    J_ESC['\f'] = 'f';
    J_ESC['\r'] = 'r';
    for (int c = 0x20; c < 0x80; c++) J_PLAIN[c] = !J_ESC[c];
}

static int put(Buf *b, const char *s, Py_ssize_t n) { return buf_add(b, s, n); }
static int puts_(Buf *b, const char *s) { return buf_add(b, s, (Py_ssize_t)strlen(s)); }

static int reserve(Buf *b, Py_ssize_t n) {
    if (b->len + n <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *q = PyMem_Realloc(b->p, cap);
    if (!q) { PyErr_NoMemory(); return -1; }
    b->p = q;
    b->cap = cap;
    return 0;
}

/* Append s as the inside of a JSON string, validating it as UTF-8 as strictly as
 * bytes.decode("utf-8"): returns 1 (buffer unchanged) if it is not valid, 0 when written. */

static inline Py_ssize_t plain_run(const unsigned char *s, Py_ssize_t i, Py_ssize_t n) {
#ifdef __SSE2__
    const __m128i q = _mm_set1_epi8('"'), bs = _mm_set1_epi8('\\'), sp = _mm_set1_epi8(0x20);
    while (i + 16 <= n) {
        __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
        /* signed: bytes >= 0x80 are negative, so "< 0x20" also catches them */
        __m128i m = _mm_or_si128(_mm_cmplt_epi8(v, sp),
                                 _mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, bs)));
        int mask = _mm_movemask_epi8(m);
        if (mask) return i + __builtin_ctz(mask);
        i += 16;
    }
#endif
    while (i < n && J_PLAIN[s[i]]) i++;
    return i;
}

static int put_escaped(Buf *b, const unsigned char *s, Py_ssize_t n, int utf8) {
    Py_ssize_t start = b->len;
    if (reserve(b, 6 * n + 16) < 0) return -1; /* the worst case: every byte \u00XX */
    char *o = b->p + b->len;
    Py_ssize_t i = 0;
    static const char hx[] = "0123456789abcdef";
    while (i < n) {
        Py_ssize_t j = plain_run(s, i, n);
        if (j > i) {
            memcpy(o, s + i, j - i);
            o += j - i;
            i = j;
            if (i >= n) break;
        }
        unsigned char ch = s[i];
        if (ch < 0x80) {
            unsigned char e = J_ESC[ch];
            *o++ = '\\';
            if (e == 1) {
                *o++ = 'u'; *o++ = '0'; *o++ = '0'; *o++ = hx[ch >> 4]; *o++ = hx[ch & 15];
            } else {
                *o++ = (char)e;
            }
            i++;
            continue;
        }
        if (!utf8) goto invalid;
        Py_ssize_t m;
        if (ch < 0xC2) goto invalid;
        else if (ch < 0xE0) m = 2;
        else if (ch < 0xF0) m = 3;
        else if (ch < 0xF5) m = 4;
        else goto invalid;
        if (i + m > n) goto invalid;
        unsigned char c1 = s[i + 1];
        unsigned char lo1 = 0x80, hi1 = 0xBF;
        if (ch == 0xE0) lo1 = 0xA0;
        else if (ch == 0xED) hi1 = 0x9F;
        else if (ch == 0xF0) lo1 = 0x90;
        else if (ch == 0xF4) hi1 = 0x8F;
        if (c1 < lo1 || c1 > hi1) goto invalid;
        for (Py_ssize_t k = 2; k < m; k++)
            if ((s[i + k] & 0xC0) != 0x80) goto invalid;
        memcpy(o, s + i, m);
        o += m;
        i += m;
    }
    b->len = o - b->p;
    return 0;
invalid:
    b->len = start;
    return 1;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char B64_PAIR[4096 * 2]; /* 12 bits -> their two base64 letters (init_b64) */

static void init_b64(void) {
    for (int v = 0; v < 4096; v++) {
        B64_PAIR[2 * v] = B64[v >> 6];
        B64_PAIR[2 * v + 1] = B64[v & 63];
    }
}

static int put_base64(Buf *b, const unsigned char *s, Py_ssize_t n) {
    if (reserve(b, (n + 2) / 3 * 4) < 0) return -1;
    char *o = b->p + b->len;
    Py_ssize_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)s[i] << 16) | (s[i + 1] << 8) | s[i + 2];
        memcpy(o, B64_PAIR + 2 * (v >> 12), 2);
        memcpy(o + 2, B64_PAIR + 2 * (v & 4095), 2);
        o += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        *o++ = B64[v >> 18]; *o++ = B64[(v >> 12) & 63]; *o++ = '='; *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)s[i] << 16) | (s[i + 1] << 8);
        *o++ = B64[v >> 18]; *o++ = B64[(v >> 12) & 63]; *o++ = B64[(v >> 6) & 63]; *o++ = '=';
    }
    b->len = o - b->p;
    return 0;
}

/* ASCII head text (tokens, targets, field values: no control bytes but tab) as a JSON string. */
static int put_json_ascii(Buf *b, const char *s, Py_ssize_t n) {
    if (reserve(b, 2 * n + 2) < 0) return -1;
    char *o = b->p + b->len;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '"' || ch == '\\') { *o++ = '\\'; *o++ = ch; }
        else if (ch == '\t') { *o++ = '\\'; *o++ = 't'; }
        else *o++ = ch;
    }
    *o++ = '"';
    b->len = o - b->p;
    return 0;
}

/* Python's repr of a double when it is in plain notation (what orjson prints too): 1 and the
 * text in *s, *n (valid until the next call); 0 when repr uses another notation; -1 on error.
 * The last one is remembered: an exchange's timestamps are often equal in pairs. */
static int plain_repr(double v, const char **s, Py_ssize_t *n) {
    static double last_v;
    static char last_s[40];
    static Py_ssize_t last_n = -1;
    if (last_n >= 0 && memcmp(&v, &last_v, sizeof v) == 0) {
        *s = last_s;
        *n = last_n;
        return 1;
    }
    char *r = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!r) return -1;
    size_t k = strlen(r);
    int plain = strpbrk(r, "eEni") == NULL && k < sizeof last_s;
    if (plain) {
        memcpy(last_s, r, k);
        last_n = (Py_ssize_t)k;
        last_v = v;
        *s = last_s;
        *n = last_n;
    }
    PyMem_Free(r);
    return plain;
}

/* A float as orjson prints it: Python's repr where the two agree (plain notation), else the
 * text orjson itself gives (asked through Python: rare). */
static int put_float(FastPath *fp, Buf *b, double v) {
    const char *s;
    Py_ssize_t n;
    int k = plain_repr(v, &s, &n);
    if (k < 0) return -1;
    if (k) return put(b, s, n);
    PyObject *t = PyObject_CallFunction(fp->float_text, "d", v);
    int rc = t && PyBytes_Check(t) ? put(b, PyBytes_AS_STRING(t), PyBytes_GET_SIZE(t)) : -1;
    Py_XDECREF(t);
    return rc;
}

static int put_long(Buf *b, long v) {
    char tmp[32];
    int k = snprintf(tmp, sizeof tmp, "%ld", v);
    return put(b, tmp, k);
}

static int put_body(Buf *b, Buf *body) {
    if (!body->len) return 0;
    const unsigned char *s = (const unsigned char *)body->p;
    if (puts_(b, ",\"body\":\"") < 0) return -1;
    int r = put_escaped(b, s, body->len, 1);
    if (r < 0) return -1;
    if (r == 1 && (put_base64(b, s, body->len) < 0 ||
                   puts_(b, "\",\"body_encoding\":\"base64") < 0))
        return -1;
    return put(b, "\"", 1);
}

static int flush_lines(FastPath *fp) {
    if (!fp->line.len) return 0;
    PyObject *blob = PyBytes_FromStringAndSize(fp->line.p, fp->line.len);
    PyObject *tsb = blob ? PyBytes_FromStringAndSize(fp->line_ts.p, fp->line_ts.len) : NULL;
    long long n = fp->pending_lines;
    fp->line.len = 0;
    fp->line_ts.len = 0;
    fp->pending_lines = 0;
    if (!tsb) { Py_XDECREF(blob); return -1; }
    PyObject *r = PyObject_CallFunction(fp->emit_line, "OLO", blob, n, tsb);
    Py_DECREF(blob);
    Py_DECREF(tsb);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* One exchange's JSONL line, appended to the pending lines (handed to Python in blocks, and
 * always before any exchange the Python code emits, so the order is kept). */
static int emit_jsonl(FastPath *fp, Conn *c, PEx *e) {
    Buf *b = &fp->line;
    if (put(b, PyBytes_AS_STRING(c->line_id), PyBytes_GET_SIZE(c->line_id)) < 0 ||
        put_long(b, e->n) < 0 || put(b, "\"", 1) < 0 ||
        put(b, PyBytes_AS_STRING(c->line_conn), PyBytes_GET_SIZE(c->line_conn)) < 0)
        return -1;
    static const char *TSK[4] = {",\"ts_request_start\":", ",\"ts_request_end\":",
                                 ",\"ts_response_start\":", ",\"ts_response_end\":"};
    double ts[4] = {e->t0, e->t1, e->t2, e->t3};
    for (int i = 0; i < 4; i++)
        if (puts_(b, TSK[i]) < 0 || put_float(fp, b, ts[i]) < 0) return -1;
    if (puts_(b, ",\"request\":") < 0 || put(b, e->jreq.p, e->jreq.len) < 0 ||
        put_body(b, &e->breq) < 0 || put(b, "}", 1) < 0)
        return -1;
    if (e->jint.len && (puts_(b, ",\"interim\":[") < 0 || put(b, e->jint.p, e->jint.len) < 0 ||
                        put(b, "]", 1) < 0))
        return -1;
    if (puts_(b, ",\"response\":") < 0 || put(b, e->jresp.p, e->jresp.len) < 0 ||
        put_body(b, &e->bresp) < 0)
        return -1;
    if (c->line_sfx) {
        if (put(b, "}", 1) < 0 ||
            put(b, PyBytes_AS_STRING(c->line_sfx), PyBytes_GET_SIZE(c->line_sfx)) < 0 ||
            puts_(b, "}\n") < 0)
            return -1;
    } else if (puts_(b, "}}\n") < 0) {
        return -1;
    }
    if (put(&fp->line_ts, (const char *)&e->t3, sizeof(double)) < 0) return -1;
    fp->lines++;
    fp->pending_lines++;
    if (b->len >= (1 << 20)) return flush_lines(fp);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* emission */

static int emit_ready(FastPath *fp, Conn *c, int *emitted) {
    PEx *e = c->ex;
    if (e && e->req_done && e->resp_done) {
        if (c->line_id) {
            if (emit_jsonl(fp, c, e) < 0) return -1;
        } else {
            if (fp->line.len && flush_lines(fp) < 0) return -1; /* lines pending go first */
            PyObject *n = PyLong_FromLong(e->n);
            if (!n) return -1;
            PyObject *r = PyObject_CallFunction(fp->emit, "OOOOOdddd", c->handler, n, e->req,
                                                e->resp, e->interim ? e->interim : Py_None,
                                                e->t0, e->t1, e->t2, e->t3);
            Py_DECREF(n);
            if (!r) return -1;
            Py_DECREF(r);
        }
        fp->exchanges++;
        c->ex = NULL;
        pex_free(e);
        *emitted = 1;
    }
    return 0;
}

static PyObject *body_bytes(Rd *r) {
    PyObject *b = r->body.len ? PyBytes_FromStringAndSize(r->body.p, r->body.len) : S_empty_bytes;
    if (b == S_empty_bytes) Py_INCREF(b);
    r->body.len = 0;
    if (r->body.cap > 65536) buf_free(&r->body);
    return b;
}

/* A message of direction d is over at ts. */
static int finish_message(FastPath *fp, Conn *c, int d, double ts, int *emitted) {
    Rd *r = &c->rd[d];
    PEx *e = r->ex;
    if (c->line_id) {
        /* JSONL: the head's JSON and the body move to the exchange as they are */
        buf_move(d == 0 ? &e->jreq : &e->jresp, &r->jhead);
        buf_move(d == 0 ? &e->breq : &e->bresp, &r->body);
    } else {
        PyObject *body = body_bytes(r);
        if (!body) return -1;
        PyObject *h = r->head;
        PyObject *full = PyTuple_Pack(5, PyTuple_GET_ITEM(h, 0), PyTuple_GET_ITEM(h, 1),
                                      PyTuple_GET_ITEM(h, 2), PyTuple_GET_ITEM(h, 3), body);
        Py_DECREF(body);
        if (!full) return -1;
        Py_CLEAR(r->head);
        if (d == 0) e->req = full;
        else e->resp = full;
    }
    r->first_message = 0;
    r->ex = NULL;
    r->state = H_HEAD;
    if (d == 0) {
        e->t1 = ts;
        e->req_done = 1;
    } else {
        e->t3 = ts;
        e->resp_done = 1;
    }
    return emit_ready(fp, c, emitted);
}

static int start_body(FastPath *fp, Conn *c, int d, int framing, long long length, double ts,
                      int *emitted) {
    Rd *r = &c->rd[d];
    if (framing == 1 && length > 0) {
        if (length > c->max_body) return BAIL;
        r->remaining = length;
        r->state = H_BODY_CL;
        return OK;
    }
    if (framing == 2) {
        r->state = H_CHUNK_SIZE;
        return OK;
    }
    return finish_message(fp, c, d, ts, emitted) < 0 ? ERR : OK;
}

/* A message's JSON up to its header list: k1 v1 (a string, or as is when raw: the status
 * digits), k2 "v2", the 8-byte version ("HTTP/1.1"), then the opening of "headers". */
static int json_head_start(Buf *jb, const char *k1, const char *v1, Py_ssize_t n1, int raw,
                           const char *k2, const char *v2, Py_ssize_t n2, const char *ver) {
    jb->len = 0;
    if (puts_(jb, k1) < 0 || (raw ? put(jb, v1, n1) : put_json_ascii(jb, v1, n1)) < 0 ||
        puts_(jb, k2) < 0 || put_json_ascii(jb, v2, n2) < 0 ||
        puts_(jb, ",\"version\":") < 0 || put_json_ascii(jb, ver, 8) < 0 ||
        puts_(jb, ",\"headers\":[") < 0)
        return -1;
    return 0;
}

/* The field lines of a head and the message's framing: as JSON pairs closing the head's JSON
 * in jb (JSONL mode; *fields is NULL) or as a new list in *fields. OK, BAIL or ERR. */
static int head_fields(const char *q, const char *he, PyObject *ver, Buf *jb, int *framing,
                       long long *length, PyObject **fields) {
    int bail = 0;
    *fields = NULL;
    PyObject *f = parse_fields(q, he, framing, length, &bail, jb);
    if (!f) return bail ? BAIL : ERR;
    if (*framing == 2 && ver == S_HTTP10) { Py_DECREF(f); return BAIL; }
    if (jb) {
        Py_DECREF(f);
        return put(jb, "]", 1) < 0 ? ERR : OK;
    }
    *fields = f;
    return OK;
}

/* A complete head [p, he) of direction d. */
static int on_head(FastPath *fp, Conn *c, int d, const char *p, const char *he, double ts,
                   int *emitted) {
    Rd *r = &c->rd[d];
    int framing = 0;
    long long length = 0;
    Buf *jb = NULL;   /* JSONL: the head's JSON goes here instead of into objects */
    if (d == 0) {
        const char *q = p;
        while (q < he && *q >= 'A' && *q <= 'Z') q++;
        int mi = -1;
        for (int i = 0; METHODS[i]; i++)
            if ((Py_ssize_t)strlen(METHODS[i]) == q - p && memcmp(METHODS[i], p, q - p) == 0) {
                mi = i;
                break;
            }
        if (mi < 0 || q >= he || *q != ' ') return BAIL;
        const char *t = ++q;
        while (q < he && T_TARGET[(unsigned char)*q]) q++;
        if (q == t || q + 11 > he || *q != ' ') return BAIL;
        if (!(*t == '/' || (q - t == 1 && *t == '*' && mi == 5))) return BAIL;
        const char *tend = q;
        q++;
        PyObject *ver;
        if (memcmp(q, "HTTP/1.1\r\n", 10) == 0) ver = S_HTTP11;
        else if (memcmp(q, "HTTP/1.0\r\n", 10) == 0) ver = S_HTTP10;
        else return BAIL;
        const char *vs = q;
        q += 10;
        /* One exchange at a time: an exchange is emitted only when nothing else is pending,
         * so every emission is a checkpoint (a pipelined request goes to Python). */
        if (c->ex) return BAIL;
        if (c->line_id) {
            jb = &r->jhead;
            if (json_head_start(jb, "{\"method\":", p, t - 1 - p, 0, ",\"target\":", t,
                                tend - t, vs) < 0)
                return ERR;
        }
        PyObject *fields;
        int hr = head_fields(q, he, ver, jb, &framing, &length, &fields);
        if (hr != OK) return hr;
        if ((mi == 0 || mi == 1 || mi == 4 || mi == 5 || mi == 7) &&
            (framing == 2 || (framing == 1 && length > 0))) {
            /* a body on GET/HEAD/DELETE/OPTIONS/TRACE (rare): Python checks it for a request
             * line (request_in_body, the CL.0 shape) */
            Py_XDECREF(fields);
            return BAIL;
        }
        PyObject *head = NULL;
        if (!jb) {
            PyObject *target = latin1(t, tend - t);
            if (!target) { Py_DECREF(fields); return ERR; }
            head = PyTuple_Pack(4, METHOD_STR[mi], target, ver, fields);
            Py_DECREF(target);
            Py_DECREF(fields);
            if (!head) return ERR;
        }
        PEx *e = PyMem_Calloc(1, sizeof(PEx));
        if (!e) { Py_XDECREF(head); PyErr_NoMemory(); return ERR; }
        e->n = ++c->n;
        e->t0 = ts;
        e->is_head = mi == 1;
        c->ex = e;
        r->head = head;
        r->ex = e;
        return start_body(fp, c, d, framing, length, ts, emitted);
    }
    /* response */
    if (he - p < 14 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') ||
        p[8] != ' ')
        return BAIL;
    PyObject *ver = p[7] == '1' ? S_HTTP11 : S_HTTP10;
    const char *q = p + 9;
    if (q[0] < '1' || q[0] > '5' || q[1] < '0' || q[1] > '9' || q[2] < '0' || q[2] > '9' ||
        q[3] != ' ')
        return BAIL;
    int status = (q[0] - '0') * 100 + (q[1] - '0') * 10 + (q[2] - '0');
    q += 4;
    const char *rs = q;
    while (q < he && T_REASON[(unsigned char)*q]) q++;
    if (q + 1 >= he || q[0] != '\r' || q[1] != '\n') return BAIL;
    const char *rend = q;
    q += 2;
    if (status == 101) return BAIL;
    PEx *e = c->ex;
    if (!e || e->has_resp) return BAIL; /* a response without a request */
    if (c->line_id) {
        jb = &r->jhead;
        if (json_head_start(jb, "{\"status\":", p + 9, 3, 1, ",\"reason\":", rs, rend - rs,
                            p) < 0)
            return ERR;
    }
    PyObject *fields;
    int hr = head_fields(q, he, ver, jb, &framing, &length, &fields);
    if (hr != OK) return hr;
    PyObject *head = NULL;
    if (!jb) {
        PyObject *reason = latin1(rs, rend - rs);
        PyObject *st = PyLong_FromLong(status);
        head = (reason && st) ? PyTuple_Pack(4, st, reason, ver, fields) : NULL;
        Py_XDECREF(reason);
        Py_XDECREF(st);
        Py_DECREF(fields);
        if (!head) return ERR;
    }
    if (status < 200) { /* interim: kept apart, the final response follows */
        if (jb) {
            if ((e->jint.len && put(&e->jint, ",", 1) < 0) ||
                put(&e->jint, jb->p, jb->len) < 0 || put(&e->jint, "}", 1) < 0)
                return ERR;
            jb->len = 0;
            return OK;
        }
        PyObject *full = PyTuple_Pack(5, PyTuple_GET_ITEM(head, 0), PyTuple_GET_ITEM(head, 1),
                                      PyTuple_GET_ITEM(head, 2), PyTuple_GET_ITEM(head, 3),
                                      S_empty_bytes);
        Py_DECREF(head);
        if (!full) return ERR;
        if (!e->interim && !(e->interim = PyList_New(0))) { Py_DECREF(full); return ERR; }
        int rr = PyList_Append(e->interim, full);
        Py_DECREF(full);
        return rr < 0 ? ERR : OK;
    }
    e->has_resp = 1;
    e->t2 = ts;
    r->head = head;
    r->ex = e;
    if (e->is_head || status == 204 || status == 304) return start_body(fp, c, d, 0, 0, ts, emitted);
    if (framing == 0) return BAIL; /* close-delimited */
    return start_body(fp, c, d, framing, length, ts, emitted);
}

/* Could these bytes (no head end yet) be the start of a head this code reads? */
static int plausible_start(int d, const char *p, Py_ssize_t n) {
    if (d == 1) {
        Py_ssize_t m = n < 7 ? n : 7;
        return memcmp(p, "HTTP/1.", m) == 0;
    }
    for (int i = 0; METHODS[i]; i++) {
        Py_ssize_t ml = (Py_ssize_t)strlen(METHODS[i]);
        Py_ssize_t m = n < ml ? n : ml;
        if (memcmp(p, METHODS[i], m) == 0 && (n <= ml || p[ml] == ' ')) return 1;
    }
    return 0;
}

/* Feed in-order bytes of direction d, like replay.http1._Reader.feed. Returns OK, BAIL or ERR.
 * On a checkpoint inside the data, the rest is logged as a direct feed. */
static int http_feed(FastPath *fp, Conn *c, int d, const char *data, Py_ssize_t len, double ts) {
    Rd *r = &c->rd[d];
    r->last_ts = ts;
    const char *p = data, *end = data + len;
    int owned = 0;
    if (r->buf.len) {
        if (buf_add(&r->buf, data, len) < 0) return ERR;
        /* take the buffer: parse from it */
        p = r->buf.p;
        end = r->buf.p + r->buf.len;
        owned = 1;
    }
    Buf hold = {0};
    if (owned) { hold = r->buf; r->buf.p = NULL; r->buf.len = r->buf.cap = 0; }
    int rc = OK;
    while (p < end) {
        long st = r->state;
        if (st == H_BODY_CL || st == H_CHUNK_DATA) {
            Py_ssize_t take = end - p < r->remaining ? end - p : (Py_ssize_t)r->remaining;
            if (r->body.len + take > c->max_body) { rc = BAIL; goto out; }
            if (buf_add(&r->body, p, take) < 0) { rc = ERR; goto out; }
            p += take;
            r->remaining -= take;
            if (r->remaining == 0) {
                if (st == H_BODY_CL) {
                    int emitted = 0;
                    if (finish_message(fp, c, d, ts, &emitted) < 0) { rc = ERR; goto out; }
                    if (emitted) goto checkpoint_here;
                } else {
                    r->state = H_CHUNK_CRLF;
                }
            }
            continue;
        }
        if (st == H_HEAD) {
            while (p < end && (*p == '\r' || *p == '\n')) p++;
            if (p >= end) break;
            const char *he = NULL;
            for (const char *q = p; q + 3 < end; q++) {
                q = memchr(q, '\r', end - q - 3);
                if (!q) break;
                if (q[1] == '\n' && q[2] == '\r' && q[3] == '\n') { he = q + 4; break; }
            }
            if (!he) {
                /* not complete: keep it if it can still become a head this code reads */
                if (end - p > MAX_HEAD || !plausible_start(d, p, end - p)) { rc = BAIL; goto out; }
                const char *q = p;
                while ((q = memchr(q, '\n', end - q)) != NULL) {
                    if (q == p || q[-1] != '\r') { rc = BAIL; goto out; }
                    q++;
                }
                if (buf_add(&r->buf, p, end - p) < 0) { rc = ERR; goto out; }
                p = end;
                break;
            }
            /* no bare LF inside the head: the lenient "\n\n" end must not come first */
            {
                const char *q = p;
                while ((q = memchr(q, '\n', he - q)) != NULL) {
                    if (q == p || q[-1] != '\r') { rc = BAIL; goto out; }
                    q++;
                }
            }
            int emitted = 0;
            int hr = on_head(fp, c, d, p, he, ts, &emitted);
            if (hr != OK) { rc = hr; goto out; }
            p = he;
            if (emitted) goto checkpoint_here;
            continue;
        }
        if (st == H_CHUNK_SIZE) {
            const char *nl = memchr(p, '\n', end - p);
            if (!nl) {
                if (end - p >= 1024) { rc = BAIL; goto out; }
                if (buf_add(&r->buf, p, end - p) < 0) { rc = ERR; goto out; }
                p = end;
                break;
            }
            const char *q = p;
            long long size = 0;
            while (q < nl && ((*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'f') ||
                              (*q >= 'A' && *q <= 'F'))) {
                int v = *q <= '9' ? *q - '0' : (*q | 32) - 'a' + 10;
                size = size * 16 + v;
                q++;
            }
            if (q == p || q - p > 15) { rc = BAIL; goto out; }
            if (*q == ';') {
                while (q < nl && *q != '\r') q++;
            }
            if (q + 1 != nl || *q != '\r') { rc = BAIL; goto out; }
            p = nl + 1;
            if (size == 0) {
                r->state = H_TRAILERS;
            } else {
                if (r->body.len + size > c->max_body) { rc = BAIL; goto out; }
                r->remaining = size;
                r->state = H_CHUNK_DATA;
            }
            continue;
        }
        /* H_CHUNK_CRLF or H_TRAILERS: a CRLF after chunk data, or the empty trailer section
         * that ends the message (trailers themselves go to Python) */
        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
            p += 2;
            if (st == H_CHUNK_CRLF) {
                r->state = H_CHUNK_SIZE;
                continue;
            }
            int emitted = 0;
            if (finish_message(fp, c, d, ts, &emitted) < 0) { rc = ERR; goto out; }
            if (emitted) goto checkpoint_here;
            continue;
        }
        if (end - p == 1 && p[0] == '\r') {
            if (buf_add(&r->buf, p, 1) < 0) { rc = ERR; goto out; }
            p = end;
            break;
        }
        rc = BAIL;
        goto out;
    checkpoint_here:
        /* Nothing pending: a checkpoint, with the rest of this data logged as a direct feed. */
        if (checkpoint(c) < 0) { rc = ERR; goto out; }
        if (p < end && log_add(c, 'f', d, ts, 0, 0, p, end - p, 0) < 0) { rc = ERR; goto out; }
    }
out:
    buf_free(&hold);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* segments */

/* A connection ends here, with nothing pending: the Python reassembler drops it from its tables
 * as its _end would, and breaks the readers' cycle with the HttpConnection, so the objects go at
 * once instead of waiting for a garbage collection (which the tuned threshold makes rare), and
 * memory stays flat however long the capture (Reassembler.end_native). */
static int native_end(FastPath *fp, Conn *c) {
    PyObject *r = PyObject_CallFunctionObjArgs(fp->end_native, c->pyconn, NULL);
    if (!r) return -1;
    Py_DECREF(r);
    conn_unlink(fp, c);
    conn_free(c);
    return 0;
}

static int bump_stat(FastPath *fp, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(fp->stats, key);
    if (!v && PyErr_Occurred()) return -1;
    long n = v ? PyLong_AsLong(v) : 0;
    PyObject *nv = PyLong_FromLong(n + 1);
    if (!nv) return -1;
    int r = PyDict_SetItem(fp->stats, key, nv);
    Py_DECREF(nv);
    return r;
}

/* One TCP segment of an adopted connection. Returns OK (consumed), BAIL (give the connection
 * back, then let Python take this segment) or ERR. */
static int conn_segment(FastPath *fp, Conn *c, int d, double ts, uint32_t seq, int flags,
                        const char *pl, Py_ssize_t plen, uint32_t ack, int slow) {
    int od = 1 - d;
    if (c->has_nxt[od]) {
        uint32_t ahead = MASK32(ack - c->nxt[od]);
        if (ahead && ahead < HALF) {
            if ((flags & F_ACK) && !c->closed[od]) return BAIL; /* parked or a capture loss */
            slow = 1;
        }
    }
    if (slow) {
        if (set_attr_double(fp->reasm, S_now, ts) < 0) return ERR;
    }
    if (flags & F_RST) {
        if (plen || (flags & (F_SYN | F_FIN)) || c->ex || c->rd[0].buf.len || c->rd[1].buf.len) return BAIL;
        if (bump_stat(fp, S_resets) < 0) return ERR;
        return native_end(fp, c) < 0 ? ERR : OK;
    }
    if (flags & F_SYN) {
        if (d != 1 || c->has_nxt[1] || plen || (flags & F_FIN)) return BAIL;
        c->last_ts = ts;
        c->nxt[1] = seq + 1;
        c->has_nxt[1] = 1;
        return log_add(c, 's', d, ts, seq, flags, pl, plen, ack) < 0 ? ERR : OK;
    }
    if (plen) {
        if (c->closed[d] || !c->has_nxt[d] || seq != c->nxt[d]) return BAIL;
        if (c->logdata.len + plen > LOG_MAX_BYTES) return BAIL;
    }
    if ((flags & F_FIN) && (c->closed[d] || !c->has_nxt[d] || seq != c->nxt[d])) return BAIL;
    c->last_ts = ts;
    if (log_add(c, 's', d, ts, seq, flags, pl, plen, ack) < 0) return ERR;
    if (plen) {
        c->nxt[d] = seq + (uint32_t)plen;
        int hr = http_feed(fp, c, d, pl, plen, ts);
        if (hr != OK) return hr == BAIL ? BAIL_LOGGED : hr;
    }
    if (flags & F_FIN) {
        Rd *r = &c->rd[d];
        /* this direction ends: only between messages with nothing buffered */
        if (r->ex || r->buf.len || r->state != H_HEAD) return BAIL_LOGGED;
        c->closed[d] = 1;
        if (c->closed[od]) {
            if (c->ex || c->rd[od].buf.len) return BAIL_LOGGED;
            return native_end(fp, c) < 0 ? ERR : OK;
        }
    }
    return OK;
}

/* ------------------------------------------------------------------------------------------ */
/* adoption */

/* Is a direction's (nxt, fin_seq, closed, ooo) from _Conn.export_state one to start from: nxt
 * as given (want_nxt < 0: None), no FIN, nothing out of order? */
static int fresh_dir(PyObject *t, long long want_nxt) {
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 4) return 0;
    PyObject *nxt = PyTuple_GET_ITEM(t, 0), *ooo = PyTuple_GET_ITEM(t, 3);
    if (PyTuple_GET_ITEM(t, 1) != Py_None || !PyLong_Check(ooo) || PyLong_AsLong(ooo) != 0)
        return 0;
    if (want_nxt < 0) return nxt == Py_None;
    return PyLong_Check(nxt) && PyLong_AsUnsignedLong(nxt) == (unsigned long)want_nxt;
}

/* Is a reader's (state, buf, first_message, last_ts, resyncing) from _Reader.export_state one to
 * start from: between messages (H_HEAD), nothing buffered, not resynchronising? */
static int fresh_reader(PyObject *t, Rd *r) {
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 5) return 0;
    PyObject *st = PyTuple_GET_ITEM(t, 0), *bf = PyTuple_GET_ITEM(t, 1);
    if (!PyLong_Check(st) || PyLong_AsLong(st) != H_HEAD || !PyBytes_Check(bf) ||
        PyBytes_GET_SIZE(bf) != 0 || PyTuple_GET_ITEM(t, 4) != Py_False)
        return 0;
    int first = PyObject_IsTrue(PyTuple_GET_ITEM(t, 2));
    double last = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 3));
    if (first < 0 || (last == -1.0 && PyErr_Occurred())) return 0;
    r->state = H_HEAD;
    r->first_message = (char)first;
    r->last_ts = last;
    return 1;
}

static int still_tracked(FastPath *fp, Conn *c);
static void drop_dormant(FastPath *fp, Conn *c);

/* May a connection with these keys go into the table? An entry already there for one of them is
 * a dormant one Python no longer tracks (dropped now), or the key is taken: 1 yes, 0 no, -1. */
static int keys_free(FastPath *fp, PyObject *k0, PyObject *k1) {
    PyObject *k[2] = {k0, k1};
    for (int i = 0; i < 2; i++) {
        const unsigned char *kb = (const unsigned char *)PyBytes_AS_STRING(k[i]);
        Py_ssize_t n = PyBytes_GET_SIZE(k[i]);
        Slot *s = tab_find(fp, kb, n, hkey(kb, n));
        if (!s) continue;
        Conn *o = s->c;
        if (!o->dormant || o->busy || o == fp->cur_conn) return 0;
        int t = still_tracked(fp, o);
        if (t) return t < 0 ? -1 : 0;
        drop_dormant(fp, o);
    }
    return 1;
}

/* Take a connection over just after its client SYN, when the Python objects (as their
 * export_state methods tell) are where this code starts from: a fresh HTTP/1 connection. */
static int try_adopt(FastPath *fp, PyObject *key, double ts, uint32_t seq) {
    PyObject *e = PyDict_GetItemWithError(fp->keys, key);
    if (!e) return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 2) return 0;
    if (PyLong_AsLong(PyTuple_GET_ITEM(e, 1)) != 0) return 0;
    PyObject *pc = PyTuple_GET_ITEM(e, 0);
    Rd rd[2];
    memset(rd, 0, sizeof rd);
    long max_body = 0, n = -1;
    /* (keys, handler, fwd_is_client, parked, last_ts, fwd, rev) */
    PyObject *ts_ = PyObject_CallMethodObjArgs(pc, S_export_state, NULL), *hs = NULL;
    if (!ts_) return -1;
    PyObject *keys = NULL, *h = NULL;
    int ok = PyTuple_Check(ts_) && PyTuple_GET_SIZE(ts_) == 7;
    if (ok) {
        keys = PyTuple_GET_ITEM(ts_, 0);
        h = PyTuple_GET_ITEM(ts_, 1);
        ok = h != Py_None && PyTuple_Check(keys) && PyTuple_GET_SIZE(keys) == 2 &&
             PyBytes_Check(PyTuple_GET_ITEM(keys, 0)) && PyBytes_Check(PyTuple_GET_ITEM(keys, 1)) &&
             PyTuple_GET_ITEM(ts_, 2) == Py_True && PyTuple_GET_ITEM(ts_, 3) == Py_False &&
             fresh_dir(PyTuple_GET_ITEM(ts_, 5), MASK32(seq + 1)) &&
             fresh_dir(PyTuple_GET_ITEM(ts_, 6), -1);
    }
    if (ok) {
        /* (n, client, server, retransmits, non_http, max_body) */
        hs = PyObject_CallMethodObjArgs(h, S_export_state, NULL);
        ok = hs && PyTuple_Check(hs) && PyTuple_GET_SIZE(hs) == 6;
        if (ok) {
            PyObject *nn = PyTuple_GET_ITEM(hs, 0), *rt = PyTuple_GET_ITEM(hs, 3),
                     *mb = PyTuple_GET_ITEM(hs, 5);
            ok = PyLong_Check(nn) && (n = PyLong_AsLong(nn)) == 0 && PyLong_Check(rt) &&
                 PyLong_AsLong(rt) == 0 && PyTuple_GET_ITEM(hs, 4) == Py_False &&
                 PyLong_Check(mb) && (max_body = PyLong_AsLong(mb)) > 0 &&
                 fresh_reader(PyTuple_GET_ITEM(hs, 1), &rd[0]) &&
                 fresh_reader(PyTuple_GET_ITEM(hs, 2), &rd[1]);
        }
    }
    if (ok) ok = keys_free(fp, PyTuple_GET_ITEM(keys, 0), PyTuple_GET_ITEM(keys, 1));
    if (PyErr_Occurred() || ok <= 0) {
        Py_DECREF(ts_);
        Py_XDECREF(hs);
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_DECREF(hs);
    Conn *c = PyMem_Calloc(1, sizeof(Conn));
    if (!c) { Py_DECREF(ts_); PyErr_NoMemory(); return -1; }
    if (fp->lines_on) {
        /* the line's fixed parts, made by the Python encoder itself: {"v":1,"id":"<conn id>.
         * and ,"conn":{...} */
        PyObject *parts = PyObject_CallFunctionObjArgs(fp->line_parts, h, NULL);
        if (!parts || !PyArg_ParseTuple(parts, "SS", &c->line_id, &c->line_conn)) {
            Py_XDECREF(parts);
            Py_DECREF(ts_);
            PyMem_Free(c);
            return -1;
        }
        Py_INCREF(c->line_id);
        Py_INCREF(c->line_conn);
        Py_DECREF(parts);
    }
    c->pyconn = pc;
    Py_INCREF(pc);
    c->handler = h;
    Py_INCREF(h);
    c->max_body = max_body;
    c->n = n;
    c->key[0] = PyTuple_GET_ITEM(keys, 0);
    c->key[1] = PyTuple_GET_ITEM(keys, 1);
    Py_INCREF(c->key[0]);
    Py_INCREF(c->key[1]);
    Py_DECREF(ts_);
    c->nxt[0] = seq + 1;
    c->has_nxt[0] = 1;
    c->last_ts = ts;
    for (int d = 0; d < 2; d++) {
        c->rd[d].state = rd[d].state;
        c->rd[d].first_message = rd[d].first_message;
        c->rd[d].last_ts = rd[d].last_ts;
    }
    if (checkpoint(c) < 0) { conn_free(c); return -1; }
    PyObject *r = PyObject_CallMethodObjArgs(pc, S_set_fast, Py_True, NULL);
    if (!r) { conn_free(c); return -1; }
    Py_DECREF(r);
    if (tab_put(fp, c, 0) < 0 || tab_put(fp, c, 1) < 0) { conn_free(c); return -1; }
    c->next = fp->head.next;
    c->prev = &fp->head;
    fp->head.next->prev = c;
    fp->head.next = c;
    fp->nconn++;
    fp->adopted++;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* foreign readers: connections whose bytes another reader took (TLS, HTTP/2) */

static PyObject *S_export_foreign;
static int lent_feed(FastPath *fp, Conn *c, int d, double ts, const char *pl, Py_ssize_t plen,
                     PyObject **rest);
static int lent_return_all(Conn *c);
static int sweep_dormant(FastPath *fp);

static int python_segment(FastPath *fp, const unsigned char *key, Py_ssize_t klen, double ts,
                          uint32_t seq, int flags, const unsigned char *pl, Py_ssize_t plen,
                          uint32_t ack);

/* A direction's (nxt, fin_seq, closed, ooo) from _Dir.export_state to carry on from: no FIN,
 * nothing out of order (nxt None: nothing seen yet). */
static int foreign_dir(PyObject *t, uint32_t *nxt, char *has) {
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 4) return 0;
    PyObject *n = PyTuple_GET_ITEM(t, 0), *ooo = PyTuple_GET_ITEM(t, 3);
    if (PyTuple_GET_ITEM(t, 1) != Py_None || PyTuple_GET_ITEM(t, 2) != Py_False ||
        !PyLong_Check(ooo) || PyLong_AsLong(ooo) != 0)
        return 0;
    if (n == Py_None) {
        *has = 0;
        *nxt = 0;
        return 1;
    }
    if (!PyLong_Check(n)) return 0;
    unsigned long v = PyLong_AsUnsignedLong(n);
    if (v == (unsigned long)-1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
    *nxt = (uint32_t)v;
    *has = 1;
    return 1;
}

/* Is the Python reassembler's entry for c's first key still c's connection? */
static int still_tracked(FastPath *fp, Conn *c) {
    PyObject *e = PyDict_GetItemWithError(fp->keys, c->key[0]);
    if (!e) return PyErr_Occurred() ? -1 : 0;
    return PyTuple_Check(e) && PyTuple_GET_SIZE(e) == 2 && PyTuple_GET_ITEM(e, 0) == c->pyconn;
}

/* Drop a foreign connection's entry (dormant, or ended while busy: FP_end). */
static void drop_dormant(FastPath *fp, Conn *c) {
    conn_unlink(fp, c);
    if (c->dormant) fp->ndormant--;
    conn_free(c);
}

/* Take connection pc over as a foreign one (c: its dormant entry, or NULL for a new one) when
 * its handler's readers both go to another reader (HttpConnection.export_foreign) and its TCP
 * state is one to carry on from (_Conn.export_state: held by the reassembler, client first,
 * nothing parked, no FIN, nothing out of order). 1 taken, 0 not, -1 error. */
static int try_foreign(FastPath *fp, PyObject *pc, Conn *c) {
    PyObject *st = PyObject_CallMethodObjArgs(pc, S_export_state, NULL), *feed = NULL, *hs = NULL;
    if (!st) return -1;
    PyObject *keys = NULL, *h = NULL;
    uint32_t nxt[2] = {0, 0};
    char has[2] = {0, 0};
    double last = 0.0, rl[2] = {0.0, 0.0};
    int ok = PyTuple_Check(st) && PyTuple_GET_SIZE(st) == 7;
    if (ok) {
        keys = PyTuple_GET_ITEM(st, 0);
        h = PyTuple_GET_ITEM(st, 1);
        ok = h != Py_None && PyTuple_Check(keys) && PyTuple_GET_SIZE(keys) == 2 &&
             PyBytes_Check(PyTuple_GET_ITEM(keys, 0)) && PyBytes_Check(PyTuple_GET_ITEM(keys, 1)) &&
             PyTuple_GET_ITEM(st, 2) == Py_True && PyTuple_GET_ITEM(st, 3) == Py_False &&
             foreign_dir(PyTuple_GET_ITEM(st, 5), &nxt[0], &has[0]) &&
             foreign_dir(PyTuple_GET_ITEM(st, 6), &nxt[1], &has[1]);
        if (ok) {
            last = PyFloat_AsDouble(PyTuple_GET_ITEM(st, 4));
            if (last == -1.0 && PyErr_Occurred()) goto err;
            /* still the connection those keys lead to */
            PyObject *e = PyDict_GetItemWithError(fp->keys, PyTuple_GET_ITEM(keys, 0));
            if (!e && PyErr_Occurred()) goto err;
            ok = e && PyTuple_Check(e) && PyTuple_GET_SIZE(e) == 2 &&
                 PyTuple_GET_ITEM(e, 0) == pc;
        }
    }
    if (ok && !c) {
        ok = keys_free(fp, PyTuple_GET_ITEM(keys, 0), PyTuple_GET_ITEM(keys, 1));
        if (ok < 0) goto err;
    }
    if (ok) {
        feed = PyObject_CallMethodObjArgs(h, S_export_foreign, NULL);
        if (!feed) goto err;
        ok = feed != Py_None;
    }
    if (ok) {
        hs = PyObject_CallMethodObjArgs(h, S_export_state, NULL);
        if (!hs) goto err;
        ok = PyTuple_Check(hs) && PyTuple_GET_SIZE(hs) == 6;
        for (int d = 0; ok && d < 2; d++) {
            PyObject *r = PyTuple_GET_ITEM(hs, 1 + d);
            ok = PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 5;
            if (ok) {
                rl[d] = PyFloat_AsDouble(PyTuple_GET_ITEM(r, 3));
                if (rl[d] == -1.0 && PyErr_Occurred()) goto err;
            }
        }
    }
    if (!ok) {
        Py_DECREF(st);
        Py_XDECREF(feed);
        Py_XDECREF(hs);
        return 0;
    }
    int fresh = c == NULL;
    if (fresh) {
        c = PyMem_Calloc(1, sizeof(Conn));
        if (!c) { PyErr_NoMemory(); goto err; }
        c->pyconn = pc;
        Py_INCREF(pc);
        c->key[0] = PyTuple_GET_ITEM(keys, 0);
        c->key[1] = PyTuple_GET_ITEM(keys, 1);
        Py_INCREF(c->key[0]);
        Py_INCREF(c->key[1]);
    }
    Py_INCREF(h);
    Py_XSETREF(c->handler, h);
    Py_XSETREF(c->ffeed, feed);
    feed = NULL;
    for (int d = 0; d < 2; d++) {
        c->nxt[d] = nxt[d];
        c->has_nxt[d] = has[d];
        c->closed[d] = 0;
        c->rd[d].last_ts = rl[d];
    }
    c->last_ts = last;
    PyObject *r = PyObject_CallMethodObjArgs(pc, S_set_fast, Py_True, NULL);
    if (!r) {
        if (fresh) conn_free(c);
        else Py_CLEAR(c->ffeed);
        goto err;
    }
    Py_DECREF(r);
    if (fresh) {
        if (tab_put(fp, c, 0) < 0 || tab_put(fp, c, 1) < 0) { conn_free(c); goto err; }
        c->next = fp->head.next;
        c->prev = &fp->head;
        fp->head.next->prev = c;
        fp->head.next = c;
        fp->nconn++;
    } else {
        c->dormant = 0;
        fp->ndormant--;
    }
    c->fsegs = 0; /* (the back-off, retry, is kept until it settles: FOREIGN_SETTLED) */
    fp->f_adopted++;
    Py_DECREF(st);
    Py_DECREF(hs);
    return 1;
err:
    Py_DECREF(st);
    Py_XDECREF(feed);
    Py_XDECREF(hs);
    return -1;
}

/* Give a foreign connection back (its state is always a checkpoint: each segment was handed on
 * whole): _Conn.import_state, HttpConnection.import_foreign. It stays in the table, dormant,
 * unless the caller drops it (FP_end: Python is ending it). c is busy meanwhile, so that no
 * sweep frees it. */
static int foreign_back(FastPath *fp, Conn *c) {
    PyObject *nx[2] = {NULL, NULL}, *r = NULL;
    int rc = -1;
    char busy = c->busy;
    c->busy = 1;
    fp->f_given_back++;
    if (c->plain && lent_return_all(c) < 0) { c->busy = busy; return -1; }
    for (int d = 0; d < 2; d++) {
        if (c->has_nxt[d]) {
            if (!(nx[d] = PyLong_FromUnsignedLong(c->nxt[d]))) goto done;
        } else {
            nx[d] = Py_None;
            Py_INCREF(nx[d]);
        }
    }
    Py_CLEAR(c->ffeed);
    c->dormant = 1;
    fp->ndormant++;
    /* The back-off of the next take: a connection given back again soon after it was taken
     * (a storm of losses or reorderings) waits twice as many segments each time, up to 64. */
    if (c->fsegs >= FOREIGN_SETTLED) c->retry = 0;
    c->retry_in = 1 << c->retry;
    if (c->retry < 6) c->retry++;
    if (fp->ndormant > fp->dormant_limit && fp->dormant_limit && sweep_dormant(fp) < 0)
        goto done;
    if (!fp->dormant_limit) fp->dormant_limit = 64;
    r = PyObject_CallMethod(c->pyconn, "import_state", "d(OO)(OO)", c->last_ts, nx[0], Py_False,
                            nx[1], Py_False);
    if (!r) goto done;
    Py_DECREF(r);
    r = PyObject_CallMethod(c->handler, "import_foreign", "dd", c->rd[0].last_ts,
                            c->rd[1].last_ts);
    if (!r) goto done;
    Py_DECREF(r);
    rc = refresh_sweep(fp);
done:
    Py_XDECREF(nx[0]);
    Py_XDECREF(nx[1]);
    c->busy = busy;
    return rc;
}

/* After Python took a segment of a dormant connection: take it again when it is clean (tried
 * after 1, 2, 4... 64 segments while it is not, or while it keeps coming back soon after it was
 * taken: see foreign_back). */
static int dormant_retry(FastPath *fp, Conn *c) {
    if (--c->retry_in > 0) return 0;
    int t = still_tracked(fp, c);
    if (t < 0) return -1;
    if (!t) { drop_dormant(fp, c); return 0; }
    t = try_foreign(fp, c->pyconn, c);
    if (t < 0) return -1;
    if (t == 0) {
        if (c->retry < 6) c->retry++;
        c->retry_in = 1 << c->retry;
    }
    return 0;
}

/* A segment of a dormant connection: Python's. */
static int dormant_segment(FastPath *fp, Conn *c, const unsigned char *key, Py_ssize_t klen,
                           double ts, uint32_t seq, int flags, const unsigned char *pl,
                           Py_ssize_t plen, uint32_t ack) {
    int t = (flags & F_SYN) ? 0 : still_tracked(fp, c);
    if (t < 0) return -1;
    if (!t) {
        drop_dormant(fp, c); /* the connection ended (or a new one reuses the ports) */
        return python_segment(fp, key, klen, ts, seq, flags, pl, plen, ack);
    }
    c->busy = 1;
    int pr = python_segment(fp, key, klen, ts, seq, flags, pl, plen, ack);
    c->busy = 0;
    if (c->ended) {
        drop_dormant(fp, c); /* Python ended it meanwhile (FP_end) */
        return pr < 0 ? -1 : 0;
    }
    if (pr < 0) return -1;
    t = still_tracked(fp, c);
    if (t < 0) return -1;
    if (!t) {
        drop_dormant(fp, c); /* that segment ended it */
        return 0;
    }
    return dormant_retry(fp, c);
}

/* Drop the dormant connections the Python reassembler no longer tracks (ended by an idle
 * timeout, an eviction, or a segment of theirs): run when their number has doubled, so memory
 * follows the connections alive. */
static int sweep_dormant(FastPath *fp) {
    Conn *c = fp->head.next;
    while (c != &fp->head) {
        Conn *nx = c->next;
        if (c->dormant && !c->busy) {
            int t = still_tracked(fp, c);
            if (t < 0) return -1;
            if (!t) drop_dormant(fp, c);
        }
        c = nx;
    }
    fp->dormant_limit = fp->ndormant * 2 > 64 ? fp->ndormant * 2 : 64;
    return 0;
}

/* A data segment of a foreign connection wholly before what was delivered (a retransmission):
 * what the reassembler does with it (Reassembler.segment -> _segment -> _apply -> _deliver, on
 * a connection with nothing out of order or parked, whose ACK does not run ahead: the caller
 * checked) is to set its clock and the connection's last activity, and count it
 * (Reassembler.retransmit_native: the "retransmits" counter and the handler's, which every
 * later exchange carries: the suffix of a Plain reading lent directions is refreshed). */
static int plain_refresh(Conn *c);
static int foreign_retransmit(FastPath *fp, Conn *c, double ts) {
    PyObject *a[2] = {c->pyconn, PyFloat_FromDouble(ts)};
    if (!a[1]) return ERR;
    c->last_ts = ts;
    Py_INCREF(c->pyconn); /* (c is not freed by this, but the call must not see it go) */
    PyObject *r = PyObject_Vectorcall(fp->retransmit, a, 2, NULL);
    Py_DECREF(a[1]);
    Py_DECREF(a[0]);
    if (!r) return ERR;
    Py_DECREF(r);
    fp->f_retransmits++;
    c->fsegs++;
    return plain_refresh(c) < 0 ? ERR : OK;
}

/* An in-order data segment of a foreign connection: to the reader, as the HTTP/1 readers in
 * state FOREIGN pass it on (their last_ts kept here); a retransmission: counted
 * (foreign_retransmit). Anything else: BAIL. */
static int foreign_segment(FastPath *fp, Conn *c, int d, double ts, uint32_t seq, int flags,
                           const char *pl, Py_ssize_t plen, uint32_t ack, int slow) {
    int od = 1 - d;
    if (c->has_nxt[od]) {
        uint32_t ahead = MASK32(ack - c->nxt[od]);
        if (ahead && ahead < HALF) return BAIL; /* (the reassembler's slow path) */
    }
    if ((flags & 7) || !plen || !c->has_nxt[d]) return BAIL;
    if (seq != c->nxt[d]) {
        /* all of it before nxt: (seq - nxt) mod 2^32 >= 2^31 and nxt - seq >= its length, as
         * _deliver tells a retransmission from an overlap (trimmed) or a hole (out of order) */
        uint32_t behind = MASK32(c->nxt[d] - seq);
        if (!fp->retransmit || behind > HALF || (Py_ssize_t)behind < plen) return BAIL;
        return foreign_retransmit(fp, c, ts);
    }
    if (slow && set_attr_double(fp->reasm, S_now, ts) < 0) return ERR;
    c->last_ts = ts;
    c->fsegs++;
    c->nxt[d] = seq + (uint32_t)plen;
    c->rd[d].last_ts = ts;
    PyObject *a[3];
    a[0] = d == 0 ? Py_True : Py_False;
    a[1] = NULL;
    if (c->plain) {
        /* a direction whose records are read here (Plain.lend)? */
        int lr = lent_feed(fp, c, d, ts, pl, plen, &a[1]);
        if (lr < 0) return ERR;
        if (lr == 0) return OK;
    }
    if (!a[1]) a[1] = PyBytes_FromStringAndSize(pl, plen);
    a[2] = a[1] ? PyFloat_FromDouble(ts) : NULL;
    Conn *was = fp->cur_conn;
    fp->cur_conn = c;
    PyObject *r = a[2] ? PyObject_Vectorcall(c->ffeed, a, 3, NULL) : NULL;
    fp->cur_conn = was;
    Py_XDECREF(a[1]);
    Py_XDECREF(a[2]);
    if (!r) return ERR;
    Py_DECREF(r);
    return OK;
}

/* ------------------------------------------------------------------------------------------ */
/* frames */

static int python_segment(FastPath *fp, const unsigned char *key, Py_ssize_t klen, double ts,
                          uint32_t seq, int flags, const unsigned char *pl, Py_ssize_t plen,
                          uint32_t ack) {
    PyObject *r;
    PyObject *kb = PyBytes_FromStringAndSize((const char *)key, klen);
    if (!kb) return -1;
    if (plen || (flags & 7)) {
        r = PyObject_CallFunction(fp->segment, "dOkiy#k", ts, kb, (unsigned long)seq, flags,
                                  (const char *)pl, plen, (unsigned long)ack);
        if (r && (flags & (F_SYN | F_ACK | F_FIN | F_RST)) == F_SYN && !plen) {
            Py_DECREF(r);
            r = try_adopt(fp, kb, ts, seq) < 0 ? NULL : Py_None;
            Py_XINCREF(r);
        }
    } else {
        PyObject *hc = PyObject_GetAttr(fp->reasm, S_hole_count);
        if (!hc) { Py_DECREF(kb); return -1; }
        long holes = PyLong_AsLong(hc);
        Py_DECREF(hc);
        if (holes > 0)
            r = PyObject_CallFunction(fp->ack_only, "dOk", ts, kb, (unsigned long)ack);
        else
            r = Py_None, Py_INCREF(r);
    }
    Py_DECREF(kb);
    if (!r) return -1;
    Py_DECREF(r);
    return refresh_sweep(fp);
}

static int tcp_segment(FastPath *fp, const unsigned char *key, Py_ssize_t klen, double ts,
                       uint32_t seq, int flags, const unsigned char *pl, Py_ssize_t plen,
                       uint32_t ack) {
    int bare = !plen && !(flags & 7);
    if (!bare) fp->segments++;
    uint64_t h = hkey(key, klen);
    Slot *s = tab_find(fp, key, klen, h);
    if (!s) return python_segment(fp, key, klen, ts, seq, flags, pl, plen, ack);
    if (s->c->dormant) return dormant_segment(fp, s->c, key, klen, ts, seq, flags, pl, plen, ack);
    if (bare) return 0; /* nothing to reassemble, and adopted connections have no holes */
    int slow = (flags & 7) != 0;
    if (ts > fp->next_sweep) {
        PyObject *r = PyObject_CallFunction(fp->timers, "d", ts);
        if (!r) return -1;
        Py_DECREF(r);
        if (refresh_sweep(fp) < 0) return -1;
        slow = 1;
        s = tab_find(fp, key, klen, h); /* the sweep may have ended it */
        if (!s) {
            if (set_attr_double(fp->reasm, S_now, ts) < 0) return -1;
            return python_segment(fp, key, klen, ts, seq, flags, pl, plen, ack);
        }
        if (s->c->dormant) {
            if (set_attr_double(fp->reasm, S_now, ts) < 0) return -1;
            return dormant_segment(fp, s->c, key, klen, ts, seq, flags, pl, plen, ack);
        }
    }
    Conn *c = s->c;
    int d = s->d;
    int r;
    if (c->ffeed) {
        c->busy = 1;
        r = foreign_segment(fp, c, d, ts, seq, flags, (const char *)pl, plen, ack, slow);
        c->busy = 0;
        if (c->ended) {
            drop_dormant(fp, c); /* Python ended it meanwhile (FP_end) */
            return r == ERR ? -1 : 0;
        }
        if (r == OK) return 0;
        if (r == ERR) return -1;
        /* Python takes this segment, then the connection again if it is clean by then */
        if (foreign_back(fp, c) < 0) {
            if (c->ended) drop_dormant(fp, c);
            return -1;
        }
        if ((flags & F_SYN) || c->ended) {
            /* as dormant_segment: a SYN ends it or starts another on its ports (which
             * python_segment may adopt under the same keys): dropped first */
            drop_dormant(fp, c);
            return python_segment(fp, key, klen, ts, seq, flags, pl, plen, ack);
        }
        return dormant_segment(fp, c, key, klen, ts, seq, flags, pl, plen, ack);
    }
    r = conn_segment(fp, c, d, ts, seq, flags, (const char *)pl, plen, ack, slow);
    if (r == OK) return 0;
    if (r == ERR) return -1;
    const char *why = r == BAIL_LOGGED ? "http_or_close" : "tcp";
    PyObject *pc = c->pyconn;
    Py_INCREF(pc);
    if (give_back(fp, c, why) < 0) { Py_DECREF(pc); return -1; }
    /* BAIL: Python takes this segment now; BAIL_LOGGED: the replay already applied it */
    if (r == BAIL && python_segment(fp, key, klen, ts, seq, flags, pl, plen, ack) < 0) {
        Py_DECREF(pc);
        return -1;
    }
    /* another reader (TLS, HTTP/2) may have taken its bytes over: its TCP stays here */
    int t = try_foreign(fp, pc, NULL);
    Py_DECREF(pc);
    return t < 0 ? -1 : 0;
}

/* Decode the frames this code reads; 1 = handled, 0 = not ours (Python decodes it), -1 error. */
static int frame(FastPath *fp, double ts, int lt, const unsigned char *f, Py_ssize_t n) {
    Py_ssize_t off;
    int et;
    if (lt == 1) {
        if (n < 14) return 0;
        et = (f[12] << 8) | f[13];
        off = 14;
        int tags = 0;
        while (et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x9200) {
            if (off + 4 > n || ++tags > 4) return 0;
            et = (f[off + 2] << 8) | f[off + 3];
            off += 4;
        }
    } else if (lt == 101 || lt == 12 || lt == 14 || lt == 228 || lt == 229) {
        if (n < 1) return 0;
        et = (f[0] >> 4) == 4 ? 0x0800 : (f[0] >> 4) == 6 ? 0x86DD : 0;
        off = 0;
    } else if (lt == 113) {
        if (n < 16) return 0;
        et = (f[14] << 8) | f[15];
        off = 16;
    } else if (lt == 276) {
        if (n < 20) return 0;
        et = (f[0] << 8) | f[1];
        off = 20;
    } else {
        return 0;
    }
    if (et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x9200) return 0;
    unsigned char key[36];
    Py_ssize_t klen, o, end;
    if (et == 0x0800) {
        if (off + 20 > n) return 0;
        const unsigned char *ip = f + off;
        int ihl = (ip[0] & 15) << 2;
        if ((ip[0] >> 4) != 4 || ihl < 20) return 0;
        int total = (ip[2] << 8) | ip[3];
        if (total < ihl || off + total > n) return 0;
        if (ip[9] != 6) return 0;
        if (((ip[6] << 8) | ip[7]) & 0x3FFF) return 0;
        memcpy(key, ip + 12, 8);
        klen = 12;
        o = off + ihl;
        end = off + total;
    } else if (et == 0x86DD) {
        if (off + 40 > n) return 0;
        const unsigned char *ip = f + off;
        if ((ip[0] >> 4) != 6 || ip[6] != 6) return 0;
        int plen = (ip[4] << 8) | ip[5];
        if (plen == 0 || off + 40 + plen > n) return 0;
        memcpy(key, ip + 8, 32);
        klen = 36;
        o = off + 40;
        end = off + 40 + plen;
    } else {
        return 0;
    }
    if (end - o < 20) return 0;
    const unsigned char *t = f + o;
    int doff = (t[12] >> 4) << 2;
    if (doff < 20 || o + doff > end) return 0;
    memcpy(key + klen - 4, t, 4);
    uint32_t seq = ((uint32_t)t[4] << 24) | (t[5] << 16) | (t[6] << 8) | t[7];
    uint32_t ack = ((uint32_t)t[8] << 24) | (t[9] << 16) | (t[10] << 8) | t[11];
    int flags = t[13] & 0x3F;
    const unsigned char *pl = t + doff;
    Py_ssize_t plen = end - o - doff;
    for (;;) {
        int r = tcp_segment(fp, key, klen, ts, seq, flags, pl, plen, ack);
        if (r == 0) return 1;
        if (r == -1) return -1;
        /* -2: the connection was given back; Python takes this segment */
        r = python_segment(fp, key, klen, ts, seq, flags, pl, plen, ack);
        return r < 0 ? -1 : 1;
    }
}

static int one_frame(FastPath *fp, double ts, int lt, PyObject *fobj, const unsigned char *f,
                     Py_ssize_t n) {
    fp->packets++;
    fp->bytes += n;
    int r = frame(fp, ts, lt, f, n);
    if (r < 0) return -1;
    if (r == 0) {
        PyObject *o = fobj;
        if (!o) {
            o = PyBytes_FromStringAndSize((const char *)f, n);
            if (!o) return -1;
        } else {
            Py_INCREF(o);
        }
        PyObject *res = PyObject_CallFunction(fp->slow_frame, "diO", ts, lt, o);
        Py_DECREF(o);
        if (!res) return -1;
        Py_DECREF(res);
        if (refresh_sweep(fp) < 0) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* encode_line(exchange): the JSONL line of any Exchange of the usual shape, byte for byte what
 * orjson.dumps(exchange_to_record(ex), option=OPT_APPEND_NEWLINE) gives; None for anything else
 * (meta other than str/int/bool/None values in dicts (e_meta), a number orjson would print
 * differently, an unexpected type), which the caller
 * then encodes in Python. The exchange log sinks spend most of their time there otherwise. */

#define FB 1 /* "fall back to Python" */

static PyObject *S_id, *S_conn, *S_client_ip, *S_client_port, *S_server_ip, *S_server_port,
    *S_ts[4], *S_request, *S_response, *S_interim, *S_completeness, *S_tunnel, *S_meta,
    *S_method, *S_target, *S_version, *S_headers, *S_body, *S_trailers, *S_status, *S_reason,
    *S_request_gaps, *S_response_gaps, *S_flags[4], *S_notes, *S_desync, *S_weird;
static Buf ENC;

static int e_str(Buf *b, PyObject *u) {
    if (!PyUnicode_CheckExact(u)) return FB;
    Py_ssize_t n;
    const char *s;
    if (PyUnicode_IS_ASCII(u)) {
        s = (const char *)PyUnicode_1BYTE_DATA(u);
        n = PyUnicode_GET_LENGTH(u);
    } else {
        s = PyUnicode_AsUTF8AndSize(u, &n);
        if (!s) { PyErr_Clear(); return FB; } /* lone surrogates: orjson refuses, Python says so */
    }
    if (put(b, "\"", 1) < 0) return -1;
    int r = put_escaped(b, (const unsigned char *)s, n, 1);
    if (r) return r < 0 ? -1 : FB;
    return put(b, "\"", 1);
}

static int e_int(Buf *b, PyObject *v) {
    if (!PyLong_CheckExact(v)) return FB;
    int of = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &of);
    if (of || (x == -1 && PyErr_Occurred())) { PyErr_Clear(); return FB; }
    char tmp[32];
    int k = snprintf(tmp, sizeof tmp, "%lld", x);
    return put(b, tmp, k);
}

static int e_float(Buf *b, PyObject *v) {
    if (!PyFloat_CheckExact(v)) return FB;
    const char *s;
    Py_ssize_t n;
    int k = plain_repr(PyFloat_AS_DOUBLE(v), &s, &n);
    return k < 0 ? -1 : k ? put(b, s, n) : FB;
}

/* [[k, v], ...] from a list of 2-tuples/lists of str */
static int e_pairs(Buf *b, PyObject *l) {
    if (!PyList_CheckExact(l)) return FB;
    if (put(b, "[", 1) < 0) return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(l); i++) {
        PyObject *kv = PyList_GET_ITEM(l, i), *k, *v;
        if (PyTuple_CheckExact(kv) && PyTuple_GET_SIZE(kv) == 2) {
            k = PyTuple_GET_ITEM(kv, 0);
            v = PyTuple_GET_ITEM(kv, 1);
        } else if (PyList_CheckExact(kv) && PyList_GET_SIZE(kv) == 2) {
            k = PyList_GET_ITEM(kv, 0);
            v = PyList_GET_ITEM(kv, 1);
        } else {
            return FB;
        }
        int r;
        if ((i && put(b, ",", 1) < 0) || put(b, "[", 1) < 0) return -1;
        if ((r = e_str(b, k))) return r;
        if (put(b, ",", 1) < 0) return -1;
        if ((r = e_str(b, v))) return r;
        if (put(b, "]", 1) < 0) return -1;
    }
    return put(b, "]", 1);
}

#define TRY(x) do { int r_ = (x); if (r_) { rc = r_; goto out; } } while (0)
#define PUT(s) do { if (puts_(b, s) < 0) { rc = -1; goto out; } } while (0)

static int e_message(Buf *b, PyObject *m, int response) {
    int rc = 0;
    PyObject *a = NULL, *c = NULL, *v = NULL, *h = NULL, *body = NULL, *tr = NULL;
    if (response) {
        a = PyObject_GetAttr(m, S_status);
        c = PyObject_GetAttr(m, S_reason);
    } else {
        a = PyObject_GetAttr(m, S_method);
        c = PyObject_GetAttr(m, S_target);
    }
    v = PyObject_GetAttr(m, S_version);
    h = PyObject_GetAttr(m, S_headers);
    body = PyObject_GetAttr(m, S_body);
    tr = PyObject_GetAttr(m, S_trailers);
    if (!a || !c || !v || !h || !body || !tr) { PyErr_Clear(); rc = FB; goto out; }
    if (response) {
        PUT("{\"status\":");
        TRY(e_int(b, a));
        PUT(",\"reason\":");
    } else {
        PUT("{\"method\":");
        TRY(e_str(b, a));
        PUT(",\"target\":");
    }
    TRY(e_str(b, c));
    PUT(",\"version\":");
    TRY(e_str(b, v));
    PUT(",\"headers\":");
    TRY(e_pairs(b, h));
    if (!PyBytes_CheckExact(body)) { rc = FB; goto out; }
    if (PyBytes_GET_SIZE(body)) {
        const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(body);
        Py_ssize_t n = PyBytes_GET_SIZE(body);
        PUT(",\"body\":\"");
        int r = put_escaped(b, s, n, 1);
        if (r < 0) { rc = -1; goto out; }
        if (r == 1) {
            if (put_base64(b, s, n) < 0) { rc = -1; goto out; }
            PUT("\",\"body_encoding\":\"base64");
        }
        PUT("\"");
    }
    if (!PyList_CheckExact(tr)) { rc = FB; goto out; }
    if (PyList_GET_SIZE(tr)) {
        PUT(",\"trailers\":");
        TRY(e_pairs(b, tr));
    }
    PUT("}");
out:
    Py_XDECREF(a); Py_XDECREF(c); Py_XDECREF(v); Py_XDECREF(h); Py_XDECREF(body); Py_XDECREF(tr);
    return rc;
}

static int e_gaps(Buf *b, PyObject *l) {
    if (!PyList_CheckExact(l)) return FB;
    if (put(b, "[", 1) < 0) return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(l); i++) {
        PyObject *g = PyList_GET_ITEM(l, i);
        if (!PyTuple_CheckExact(g) || PyTuple_GET_SIZE(g) != 2) return FB;
        int r;
        if ((i && put(b, ",", 1) < 0) || put(b, "[", 1) < 0) return -1;
        if ((r = e_int(b, PyTuple_GET_ITEM(g, 0)))) return r;
        if (put(b, ",", 1) < 0) return -1;
        if ((r = e_int(b, PyTuple_GET_ITEM(g, 1)))) return r;
        if (put(b, "]", 1) < 0) return -1;
    }
    return put(b, "]", 1);
}

/* ,"completeness":{...} when anything is set (Completeness.to_dict) */
static int e_completeness(Buf *b, PyObject *c) {
    int rc = 0, first = 1;
    PyObject *rg = PyObject_GetAttr(c, S_request_gaps), *sg = PyObject_GetAttr(c, S_response_gaps);
    PyObject *rt = PyObject_GetAttr(c, S_retransmits), *notes = PyObject_GetAttr(c, S_notes);
    PyObject *fl[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < 4; i++) fl[i] = PyObject_GetAttr(c, S_flags[i]);
    if (!rg || !sg || !rt || !notes || !fl[0] || !fl[1] || !fl[2] || !fl[3]) {
        PyErr_Clear();
        rc = FB;
        goto out;
    }
    if (!PyList_CheckExact(rg) || !PyList_CheckExact(sg) || !PyLong_CheckExact(rt) ||
        !PyList_CheckExact(notes)) { rc = FB; goto out; }
    for (int i = 0; i < 4; i++) if (fl[i] != Py_True && fl[i] != Py_False) { rc = FB; goto out; }
    {
        /* a desync or weird framing record: rare, written by the Python encoder */
        PyObject *ds = PyObject_GetAttr(c, S_desync), *wd = PyObject_GetAttr(c, S_weird);
        int plain = ds == Py_False && wd && PyList_CheckExact(wd) && PyList_GET_SIZE(wd) == 0;
        Py_XDECREF(ds);
        Py_XDECREF(wd);
        if (!plain) { PyErr_Clear(); rc = FB; goto out; }
    }
    long rtv = PyLong_AsLong(rt);
    if (rtv == -1 && PyErr_Occurred()) { PyErr_Clear(); rc = FB; goto out; }
    int any = PyList_GET_SIZE(rg) || PyList_GET_SIZE(sg) || rtv || PyList_GET_SIZE(notes) ||
              fl[0] == Py_True || fl[1] == Py_True || fl[2] == Py_True || fl[3] == Py_True;
    if (!any) goto out;
    PUT(",\"completeness\":{");
#define SEP() do { if (!first) PUT(","); first = 0; } while (0)
    if (PyList_GET_SIZE(rg)) { SEP(); PUT("\"request_gaps\":"); TRY(e_gaps(b, rg)); }
    if (PyList_GET_SIZE(sg)) { SEP(); PUT("\"response_gaps\":"); TRY(e_gaps(b, sg)); }
    if (rtv) { SEP(); PUT("\"retransmits\":"); TRY(e_int(b, rt)); }
    static const char *FN[4] = {"\"request_truncated\":true", "\"response_truncated\":true",
                                "\"timed_out\":true", "\"unpaired\":true"};
    for (int i = 0; i < 4; i++) if (fl[i] == Py_True) { SEP(); PUT(FN[i]); }
    if (PyList_GET_SIZE(notes)) {
        SEP();
        PUT("\"notes\":[");
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(notes); i++) {
            if (i) PUT(",");
            TRY(e_str(b, PyList_GET_ITEM(notes, i)));
        }
        PUT("]");
    }
#undef SEP
    PUT("}");
out:
    Py_XDECREF(rg); Py_XDECREF(sg); Py_XDECREF(rt); Py_XDECREF(notes);
    for (int i = 0; i < 4; i++) Py_XDECREF(fl[i]);
    return rc;
}

/* A meta value as orjson writes it (no option): dicts with str keys (in their order), str, int,
 * true, false, null; anything else (a float, a list, bytes, deeper than 8) falls back. */
static int e_meta(Buf *b, PyObject *v, int depth) {
    if (v == Py_True) return puts_(b, "true");
    if (v == Py_False) return puts_(b, "false");
    if (v == Py_None) return puts_(b, "null");
    if (PyUnicode_CheckExact(v)) return e_str(b, v);
    if (PyLong_CheckExact(v)) return e_int(b, v);
    if (!PyDict_CheckExact(v) || depth >= 8) return FB;
    Py_ssize_t i = 0;
    PyObject *k, *x;
    int first = 1, r;
    if (put(b, "{", 1) < 0) return -1;
    while (PyDict_Next(v, &i, &k, &x)) {
        if (!PyUnicode_CheckExact(k)) return FB;
        if (!first && put(b, ",", 1) < 0) return -1;
        first = 0;
        if ((r = e_str(b, k))) return r;
        if (put(b, ":", 1) < 0) return -1;
        if ((r = e_meta(b, x, depth + 1))) return r;
    }
    return put(b, "}", 1);
}

static int e_exchange(Buf *b, PyObject *ex) {
    int rc = 0;
    PyObject *o[13] = {NULL};
    PyObject *names[13] = {S_id, S_conn, S_ts[0], S_ts[1], S_ts[2], S_ts[3], S_request,
                           S_interim, S_response, S_completeness, S_tunnel, S_meta, NULL};
    for (int i = 0; names[i]; i++) {
        o[i] = PyObject_GetAttr(ex, names[i]);
        if (!o[i]) { PyErr_Clear(); rc = FB; goto out; }
    }
    PyObject *meta = o[11];
    if (!PyDict_CheckExact(meta)) { rc = FB; goto out; }
    PUT("{\"v\":1,\"id\":");
    TRY(e_str(b, o[0]));
    if (o[1] != Py_None) {
        PyObject *c[4] = {PyObject_GetAttr(o[1], S_client_ip), PyObject_GetAttr(o[1], S_client_port),
                          PyObject_GetAttr(o[1], S_server_ip), PyObject_GetAttr(o[1], S_server_port)};
        int r = (!c[0] || !c[1] || !c[2] || !c[3]) ? FB : 0;
        if (r) PyErr_Clear();
        if (!r && puts_(b, ",\"conn\":{\"client_ip\":") < 0) r = -1;
        if (!r) r = e_str(b, c[0]);
        if (!r && puts_(b, ",\"client_port\":") < 0) r = -1;
        if (!r) r = e_int(b, c[1]);
        if (!r && puts_(b, ",\"server_ip\":") < 0) r = -1;
        if (!r) r = e_str(b, c[2]);
        if (!r && puts_(b, ",\"server_port\":") < 0) r = -1;
        if (!r) r = e_int(b, c[3]);
        if (!r && puts_(b, "}") < 0) r = -1;
        for (int i = 0; i < 4; i++) Py_XDECREF(c[i]);
        TRY(r);
    }
    static const char *TK[4] = {",\"ts_request_start\":", ",\"ts_request_end\":",
                                ",\"ts_response_start\":", ",\"ts_response_end\":"};
    for (int i = 0; i < 4; i++) {
        if (o[2 + i] == Py_None) continue;
        PUT(TK[i]);
        TRY(e_float(b, o[2 + i]));
    }
    if (o[6] != Py_None) { PUT(",\"request\":"); TRY(e_message(b, o[6], 0)); }
    if (!PyList_CheckExact(o[7])) { rc = FB; goto out; }
    if (PyList_GET_SIZE(o[7])) {
        PUT(",\"interim\":[");
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(o[7]); i++) {
            if (i) PUT(",");
            TRY(e_message(b, PyList_GET_ITEM(o[7], i), 1));
        }
        PUT("]");
    }
    if (o[8] != Py_None) { PUT(",\"response\":"); TRY(e_message(b, o[8], 1)); }
    TRY(e_completeness(b, o[9]));
    if (o[10] != Py_None) { PUT(",\"tunnel\":"); TRY(e_str(b, o[10])); }
    if (PyDict_GET_SIZE(meta)) { PUT(",\"meta\":"); TRY(e_meta(b, meta, 0)); }
    PUT("}\n");
out:
    for (int i = 0; i < 13; i++) Py_XDECREF(o[i]);
    return rc;
}

static PyObject *encode_line(PyObject *mod, PyObject *ex) {
    ENC.len = 0;
    int r = e_exchange(&ENC, ex);
    if (r < 0) return NULL;
    if (r == FB) {
        if (ENC.cap > (1 << 22)) buf_free(&ENC);
        Py_RETURN_NONE;
    }
    PyObject *line = PyBytes_FromStringAndSize(ENC.p, ENC.len);
    if (ENC.cap > (1 << 22)) buf_free(&ENC);
    return line;
}

static PyObject *tls13_open(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef module_methods[] = {
    {"encode_line", (PyCFunction)encode_line, METH_O,
     "The JSONL line of an Exchange (orjson's bytes exactly), or None to encode it in Python."},
    {"tls13_open", (PyCFunction)(void (*)(void))tls13_open, METH_FASTCALL,
     "TLS 1.3 application data records in sequence, decrypted: (pos, seq, records, plaintext)."},
    {NULL}};

/* ------------------------------------------------------------------------------------------ */
/* the type */

static PyObject *FP_run(FastPath *fp, PyObject *frames) {
    PyObject *it = PyObject_GetIter(frames);
    if (!it) return NULL;
    if (refresh_sweep(fp) < 0) { Py_DECREF(it); return NULL; }
    long long count = 0;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        double ts;
        int lt;
        PyObject *fo;
        if (!PyArg_ParseTuple(item, "diO", &ts, &lt, &fo)) { Py_DECREF(item); break; }
        char *buf;
        Py_ssize_t n;
        int r;
        if (PyBytes_Check(fo)) {
            buf = PyBytes_AS_STRING(fo);
            n = PyBytes_GET_SIZE(fo);
            r = one_frame(fp, ts, lt, fo, (unsigned char *)buf, n);
        } else {
            Py_buffer view;
            if (PyObject_GetBuffer(fo, &view, PyBUF_SIMPLE) < 0) { Py_DECREF(item); break; }
            r = one_frame(fp, ts, lt, NULL, view.buf, view.len);
            PyBuffer_Release(&view);
        }
        Py_DECREF(item);
        count++;
        if (r < 0) break;
    }
    Py_DECREF(it);
    if (PyErr_Occurred() || flush_lines(fp) < 0) return NULL;
    return PyLong_FromLongLong(count);
}

/* run_pcap(buf, pos, little_endian, scale, linktype, max_record) -> (pos, frames, corrupt_len)
 * Walks classic pcap records in buf from pos; stops at a record not complete in buf (pos is
 * its start) or at a corrupt length (corrupt_len > 0). */
static PyObject *FP_run_pcap(FastPath *fp, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos;
    int le, lt;
    double scale;
    long long maxrec;
    if (!PyArg_ParseTuple(args, "y*nidiL", &view, &pos, &le, &scale, &lt, &maxrec)) return NULL;
    if (refresh_sweep(fp) < 0) { PyBuffer_Release(&view); return NULL; }
    const unsigned char *b = view.buf;
    Py_ssize_t end = view.len;
    long long frames = 0, corrupt = 0;
    int err = 0;
    while (pos + 16 <= end) {
        const unsigned char *h = b + pos;
        uint32_t v[4];
        for (int i = 0; i < 4; i++) {
            const unsigned char *q = h + 4 * i;
            v[i] = le ? ((uint32_t)q[0] | (q[1] << 8) | (q[2] << 16) | ((uint32_t)q[3] << 24))
                      : (((uint32_t)q[0] << 24) | (q[1] << 16) | (q[2] << 8) | q[3]);
        }
        if ((long long)v[2] > maxrec) { corrupt = v[2]; break; }
        if (pos + 16 + (Py_ssize_t)v[2] > end) break;
        double ts = (double)v[0] + (double)v[1] * scale;
        if (one_frame(fp, ts, lt, NULL, h + 16, v[2]) < 0) { err = 1; break; }
        pos += 16 + v[2];
        frames++;
    }
    PyBuffer_Release(&view);
    if (err || flush_lines(fp) < 0) return NULL;
    return Py_BuildValue("nLL", pos, frames, corrupt);
}

/* run_ring(mmap, block, block_size, block_count, linktype)
 *   -> (next block, frames, bytes, truncated frames, errors, last error or None)
 * Walks the TPACKET_V3 blocks the kernel has handed to user space (appliance.capture.RingSource),
 * feeding every frame to the extractor and giving each block back to the kernel as soon as it is
 * read, like RingSource.poll does but without a Python object per frame. A frame whose processing
 * raises is counted and skipped: one bad packet never stops capture, and its block is still given
 * back. At most one ring's worth per call. */
static PyObject *FP_run_ring(FastPath *fp, PyObject *args) {
    PyObject *mmobj;
    Py_ssize_t block, bs, nblocks;
    int lt;
    if (!PyArg_ParseTuple(args, "Onnni", &mmobj, &block, &bs, &nblocks, &lt)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(mmobj, &view, PyBUF_WRITABLE) < 0) return NULL;
    if (bs < 64 || nblocks < 1 || view.len < bs * nblocks || block < 0 || block >= nblocks) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "ring geometry does not match the mapping");
        return NULL;
    }
    if (refresh_sweep(fp) < 0) { PyBuffer_Release(&view); return NULL; }
    unsigned char *base = view.buf;
    long long frames = 0, nbytes = 0, truncated = 0, errors = 0;
    PyObject *last_error = NULL;
    unsigned char *scratch = NULL;
    Py_ssize_t scratch_cap = 0;
    for (Py_ssize_t k = 0; k < nblocks; k++) {
        unsigned char *blk = base + block * bs;
        volatile uint32_t *status = (volatile uint32_t *)(blk + 8);
        if (!(*status & 1)) break; /* TP_STATUS_USER */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        uint32_t npkts, first;
        memcpy(&npkts, blk + 12, 4);
        memcpy(&first, blk + 16, 4);
        Py_ssize_t p = first;
        for (uint32_t i = 0; i < npkts; i++) {
            if (p < 0 || p + 48 > bs) break; /* a corrupt block: give it back */
            uint32_t nxt, sec, nsec, snap, len, st;
            uint16_t mac;
            memcpy(&nxt, blk + p, 4);
            memcpy(&sec, blk + p + 4, 4);
            memcpy(&nsec, blk + p + 8, 4);
            memcpy(&snap, blk + p + 12, 4);
            memcpy(&len, blk + p + 16, 4);
            memcpy(&st, blk + p + 20, 4);
            memcpy(&mac, blk + p + 24, 2);
            if (p + mac + (Py_ssize_t)snap > bs) break;
            const unsigned char *f = blk + p + mac;
            Py_ssize_t n = snap;
            if ((st & 0x10) && n >= 12) { /* TP_STATUS_VLAN_VALID: put the stripped tag back */
                uint32_t tci;
                uint16_t tpid;
                memcpy(&tci, blk + p + 32, 4);
                memcpy(&tpid, blk + p + 36, 2);
                if (!(st & 0x40) || !tpid) tpid = 0x8100;
                if (scratch_cap < n + 4) {
                    unsigned char *q = PyMem_Realloc(scratch, n + 4);
                    if (!q) { PyErr_NoMemory(); goto fail; }
                    scratch = q;
                    scratch_cap = n + 4;
                }
                memcpy(scratch, f, 12);
                scratch[12] = tpid >> 8;
                scratch[13] = tpid & 0xff;
                scratch[14] = (tci >> 8) & 0xff;
                scratch[15] = tci & 0xff;
                memcpy(scratch + 16, f + 12, n - 12);
                f = scratch;
                n += 4;
            }
            double ts = (double)sec + (double)nsec * 1e-9;
            if (one_frame(fp, ts, lt, NULL, f, n) < 0) {
                PyObject *et, *ev, *tb;
                PyErr_Fetch(&et, &ev, &tb);
                errors++;
                Py_XDECREF(last_error);
                last_error = ev ? PyObject_Repr(ev) : NULL;
                if (!last_error) PyErr_Clear();
                Py_XDECREF(et);
                Py_XDECREF(ev);
                Py_XDECREF(tb);
            }
            if (snap != len) truncated++;
            nbytes += snap;
            frames++;
            if (!nxt) break;
            p += nxt;
        }
        __atomic_thread_fence(__ATOMIC_RELEASE);
        *status = 0; /* TP_STATUS_KERNEL: the block goes back */
        block = (block + 1) % nblocks;
    }
    PyMem_Free(scratch);
    PyBuffer_Release(&view);
    if (flush_lines(fp) < 0) { Py_XDECREF(last_error); return NULL; }
    PyObject *r = Py_BuildValue("nLLLLO", block, frames, nbytes, truncated, errors,
                                last_error ? last_error : Py_None);
    Py_XDECREF(last_error);
    return r;
fail:
    PyMem_Free(scratch);
    PyBuffer_Release(&view);
    Py_XDECREF(last_error);
    return NULL;
}

/* The entry of a Python _Conn (its keys: the first item of export_state()), or NULL. */
static Slot *find_pyconn(FastPath *fp, PyObject *pyconn) {
    PyObject *st = PyObject_CallMethodObjArgs(pyconn, S_export_state, NULL);
    if (!st) return NULL;
    PyObject *keys = PyTuple_Check(st) && PyTuple_GET_SIZE(st) ? PyTuple_GET_ITEM(st, 0) : NULL;
    PyObject *k = keys && PyTuple_Check(keys) && PyTuple_GET_SIZE(keys) ? PyTuple_GET_ITEM(keys, 0)
                                                                        : NULL;
    if (!k || !PyBytes_Check(k)) {
        Py_DECREF(st);
        PyErr_SetString(PyExc_TypeError, "_Conn.export_state(): (keys, ...) expected");
        return NULL;
    }
    Slot *s = tab_find(fp, (unsigned char *)PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k),
                       hkey((unsigned char *)PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k)));
    Py_DECREF(st);
    return s && s->c->pyconn == pyconn ? s : NULL;
}

/* Python ends a connection (Reassembler._end: an idle timeout, an eviction, the end of the
 * input, a port reused): given back if this code holds it (as sync), and its entry dropped, so
 * nothing stays here holding its objects. An entry with Python right now (busy: one of its
 * segments, its reader fed, a give-back in progress) is marked and left to that caller, which
 * drops it when Python returns. */
static PyObject *FP_end(FastPath *fp, PyObject *pyconn) {
    Slot *s = find_pyconn(fp, pyconn);
    if (!s) {
        if (PyErr_Occurred()) return NULL;
        PyObject *r = PyObject_CallMethodObjArgs(pyconn, S_set_fast, Py_False, NULL);
        if (!r) return NULL;
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    Conn *c = s->c;
    if (c->busy) {
        c->ended = 1;
        Py_RETURN_NONE;
    }
    if (!c->dormant && !c->ffeed) {
        if (give_back(fp, c, "python_needs_it") < 0) return NULL; /* (c is freed) */
        Py_RETURN_NONE;
    }
    if (!c->dormant && foreign_back(fp, c) < 0) return NULL;
    drop_dormant(fp, c);
    Py_RETURN_NONE;
}

/* Drop every dormant entry whose connection Python no longer tracks (after Reassembler.finish:
 * none should be left). */
static PyObject *FP_sweep(FastPath *fp, PyObject *unused) {
    if (sweep_dormant(fp) < 0) return NULL;
    Py_RETURN_NONE;
}

/* Give back one connection (by its Python _Conn), e.g. before the Python side ends it. */
static PyObject *FP_sync(FastPath *fp, PyObject *pyconn) {
    Slot *s = find_pyconn(fp, pyconn);
    if (!s && PyErr_Occurred()) return NULL;
    if (!s) {
        PyObject *r = PyObject_CallMethodObjArgs(pyconn, S_set_fast, Py_False, NULL);
        if (!r) return NULL;
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    if (s->c->dormant) Py_RETURN_NONE; /* Python holds it already */
    if (s->c->ffeed) {
        if (foreign_back(fp, s->c) < 0) return NULL;
        Py_RETURN_NONE;
    }
    if (give_back(fp, s->c, "python_needs_it") < 0) return NULL;
    Py_RETURN_NONE;
}

/* Write each adopted connection's last activity to its Python object (before a sweep or an
 * eviction reads them). */
static PyObject *FP_touch(FastPath *fp, PyObject *unused) {
    for (Conn *c = fp->head.next; c != &fp->head; c = c->next)
        if (!c->dormant && set_attr_double(c->pyconn, S_last_ts, c->last_ts) < 0) return NULL;
    Py_RETURN_NONE;
}

/* Whether connections adopted from now on write their exchanges as JSONL lines (to the
 * extractor's _lines_out: line block, count, each line's last timestamp as doubles) or as
 * Exchanges. Connections already adopted keep their way. */
static PyObject *FP_set_lines(FastPath *fp, PyObject *on) {
    int v = PyObject_IsTrue(on);
    if (v < 0 || flush_lines(fp) < 0) return NULL;
    fp->lines_on = v;
    Py_RETURN_NONE;
}

static PyObject *FP_flush(FastPath *fp, PyObject *unused) {
    if (flush_lines(fp) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *FP_stats(FastPath *fp, PyObject *unused) {
    return Py_BuildValue("{sLsLsLsLsLsLsLslsOsLsLslsLsL}", "packets", fp->packets, "bytes",
                         fp->bytes, "segments", fp->segments, "adopted", fp->adopted,
                         "given_back", fp->given_back, "exchanges", fp->exchanges, "lines",
                         fp->lines, "tracked", fp->nconn, "given_back_why", fp->reasons,
                         "foreign_adopted", fp->f_adopted, "foreign_given_back",
                         fp->f_given_back, "dormant", fp->ndormant, "tls_lent_segments",
                         fp->lent_segments, "foreign_retransmits", fp->f_retransmits);
}

static PyObject *FP_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *ex, *reasm;
    if (!PyArg_ParseTuple(args, "OO", &ex, &reasm)) return NULL;
    FastPath *fp = (FastPath *)type->tp_alloc(type, 0);
    if (!fp) return NULL;
    fp->head.next = fp->head.prev = &fp->head;
    fp->ex = ex;
    Py_INCREF(ex);
    fp->reasm = reasm;
    Py_INCREF(reasm);
    fp->keys = PyObject_GetAttrString(reasm, "keys");
    fp->replay = PyObject_GetAttrString(reasm, "replay_native");
    fp->end_native = PyObject_GetAttrString(reasm, "end_native");
    /* (optional: without it, a retransmission gives a foreign connection back) */
    fp->retransmit = PyObject_GetAttrString(reasm, "retransmit_native");
    if (!fp->retransmit) PyErr_Clear();
    fp->stats = PyObject_GetAttrString(reasm, "stats");
    fp->segment = PyObject_GetAttrString(reasm, "segment");
    fp->ack_only = PyObject_GetAttrString(reasm, "ack_only");
    fp->timers = PyObject_GetAttrString(reasm, "_timers");
    fp->slow_frame = PyObject_GetAttrString(ex, "_slow_frame");
    fp->emit = PyObject_GetAttrString(ex, "_fast_exchange");
    fp->emit_line = PyObject_GetAttrString(ex, "_lines_out");
    PyObject *want = PyObject_GetAttrString(ex, "_emit_line");
    fp->lines_on = want && want != Py_None;
    Py_XDECREF(want);
    fp->line_parts = PyObject_GetAttrString(ex, "_line_parts");
    fp->float_text = PyObject_GetAttrString(ex, "_float_text");
    fp->reasons = PyDict_New();
    if (!fp->keys || !fp->replay || !fp->end_native || !fp->stats || !fp->segment ||
        !fp->ack_only || !fp->timers || !fp->slow_frame || !fp->emit || !fp->reasons ||
        !fp->emit_line || !fp->line_parts || !fp->float_text) {
        Py_DECREF(fp);
        return NULL;
    }
    return (PyObject *)fp;
}

static int FP_traverse(FastPath *fp, visitproc visit, void *arg) {
    Py_VISIT(fp->ex);
    Py_VISIT(fp->reasm);
    Py_VISIT(fp->slow_frame);
    Py_VISIT(fp->emit);
    /* (the bound methods of the extractor and the reassembler too: they hold them) */
    Py_VISIT(fp->keys);
    Py_VISIT(fp->segment);
    Py_VISIT(fp->ack_only);
    Py_VISIT(fp->timers);
    Py_VISIT(fp->stats);
    Py_VISIT(fp->emit_line);
    Py_VISIT(fp->line_parts);
    Py_VISIT(fp->float_text);
    Py_VISIT(fp->replay);
    Py_VISIT(fp->end_native);
    Py_VISIT(fp->retransmit);
    Py_VISIT(fp->reasons);
    for (Conn *c = fp->head.next; c && c != &fp->head; c = c->next) {
        Py_VISIT(c->pyconn);
        Py_VISIT(c->handler);
        Py_VISIT(c->ffeed);
        Py_VISIT((PyObject *)c->plain);
    }
    return 0;
}

static int FP_clear(FastPath *fp) {
    while (fp->head.next && fp->head.next != &fp->head) {
        Conn *c = fp->head.next;
        conn_unlink(fp, c);
        conn_free(c);
    }
    PyMem_Free(fp->tab);
    fp->tab = NULL;
    fp->cap = fp->used = fp->tomb = 0;
    Py_CLEAR(fp->ex);
    Py_CLEAR(fp->reasm);
    Py_CLEAR(fp->keys);
    Py_CLEAR(fp->replay);
    Py_CLEAR(fp->end_native);
    Py_CLEAR(fp->retransmit);
    Py_CLEAR(fp->stats);
    Py_CLEAR(fp->segment);
    Py_CLEAR(fp->ack_only);
    Py_CLEAR(fp->timers);
    Py_CLEAR(fp->slow_frame);
    Py_CLEAR(fp->emit);
    Py_CLEAR(fp->emit_line);
    Py_CLEAR(fp->line_parts);
    Py_CLEAR(fp->float_text);
    buf_free(&fp->line);
    buf_free(&fp->line_ts);
    Py_CLEAR(fp->reasons);
    return 0;
}

static void FP_dealloc(FastPath *fp) {
    PyObject_GC_UnTrack(fp);
    FP_clear(fp);
    Py_TYPE(fp)->tp_free((PyObject *)fp);
}

/* ------------------------------------------------------------------------------------------ */
/* Plain: the HTTP/1 reader of one decrypted TLS connection (replay.tls.records.TlsConnection).
 *
 * The same strict reader and JSONL encoder as above, fed plaintext instead of TCP segments:
 * feed(d, data, ts) is HttpConnection.data(d == 0, data, ts), and exchanges become lines of the
 * FastPath's pending block (so their order with every other exchange is kept), each ending with
 * the suffix Python sets (set_suffix: completeness and meta, as JsonlWriter writes them). The
 * same checkpoint-and-replay keeps it exact: every feed since the last checkpoint is logged, and
 * anything this code does not read (or a gap, a close, the end: the Python side asks with
 * handback()) gives the reader back as (n, (state, buf, first_message, last_ts) x2, [(d, ts,
 * data), ...]): HttpConnection.import_state(n, ...) and the logged feeds replayed through its
 * data() give exactly what the Python reader would have done from the start. Only used when
 * exchanges are written as lines. */
/* A direction of a TLS connection whose application data records are read here (lent by
 * TlsConnection._lend): the record layer's state for it, while it is lent. */
typedef struct {
    char on;
    int pd;                 /* the direction for the HTTP reader (0: the TLS client) */
    PyObject *decrypt;      /* the AEAD's decrypt */
    unsigned char iv[12];
    unsigned long long seq;
    long nrec;              /* records decrypted since it was lent */
    Buf buf;                /* a record not complete yet */
} Lent;

typedef struct Plain {
    PyObject_HEAD
    FastPath *fp;
    Conn *c;          /* NULL once given back */
    Lent lent[2];     /* by TCP direction (0: the TCP client) */
    Conn *conn;       /* the foreign connection they are lent to (it holds a reference) */
    PyObject *back, *stats, *errs; /* TlsConnection._lent_back, its counters, decrypt errors */
    PyObject *sink;   /* a sink (FastPath.sink): the HTTP/2 reader's feed(from_client, data, ts)
                       * the plaintext goes to, in place of the HTTP/1 reader c (NULL) */
    PyObject *refresh; /* or NULL: called when the connection's retransmission count changed
                        * here (foreign_retransmit), as the suffix of c's lines carries it */
    long max_record;
} Plain;

static PyTypeObject PlainType;

static PyObject *FP_plain(FastPath *fp, PyObject *args) {
    PyObject *line_id, *line_conn;
    long max_body;
    if (!PyArg_ParseTuple(args, "SSl", &line_id, &line_conn, &max_body)) return NULL;
    Conn *c = PyMem_Calloc(1, sizeof(Conn));
    if (!c) return PyErr_NoMemory();
    c->line_id = line_id;
    Py_INCREF(line_id);
    c->line_conn = line_conn;
    Py_INCREF(line_conn);
    c->max_body = max_body > 0 ? max_body : 1;
    for (int d = 0; d < 2; d++) {
        c->rd[d].state = H_HEAD;
        c->rd[d].first_message = 1;
        c->rd[d].last_ts = 0.0;
    }
    if (checkpoint(c) < 0) { conn_free(c); return NULL; }
    Plain *p = PyObject_GC_New(Plain, &PlainType);
    if (!p) { conn_free(c); return NULL; }
    /* (GC_New does not zero what follows the header) */
    memset((char *)p + sizeof(PyObject), 0, sizeof(Plain) - sizeof(PyObject));
    p->fp = fp;
    Py_INCREF(fp);
    p->c = c;
    PyObject_GC_Track(p);
    return (PyObject *)p;
}

/* FastPath.sink(feed): a Plain with no HTTP/1 reader whose lent directions' plaintext goes to
 * feed(from_client, data, ts) (the HTTP/2 reader of a TLS connection, TlsConnection._lend_h2),
 * as TlsConnection._fast_flush and _app_data hand it on: records_decrypted and h2_bytes counted,
 * one call per segment. */
static PyObject *FP_sink(FastPath *fp, PyObject *feed) {
    if (!PyCallable_Check(feed)) {
        PyErr_SetString(PyExc_TypeError, "sink(feed): a callable");
        return NULL;
    }
    Plain *p = PyObject_GC_New(Plain, &PlainType);
    if (!p) return NULL;
    memset((char *)p + sizeof(PyObject), 0, sizeof(Plain) - sizeof(PyObject));
    p->fp = fp;
    Py_INCREF(fp);
    p->sink = feed;
    Py_INCREF(feed);
    PyObject_GC_Track(p);
    return (PyObject *)p;
}

static PyObject *plain_handback(Plain *p) {
    Conn *c = p->c;
    if (!c) { PyErr_SetString(PyExc_ValueError, "Plain: already given back"); return NULL; }
    PyObject *log = PyList_New(c->nlog), *out = NULL;
    if (!log) return NULL;
    for (Py_ssize_t i = 0; i < c->nlog; i++) {
        LogEntry *e = &c->log[i];
        const char *pl = c->logdata.p ? c->logdata.p + e->off : "";
        PyObject *t = Py_BuildValue("(idy#)", (int)e->d, e->ts, pl, e->len);
        if (!t) { Py_DECREF(log); return NULL; }
        PyList_SET_ITEM(log, i, t);
    }
    out = Py_BuildValue("l(lOOd)(lOOd)O", c->ck_n,
                        c->ck_state[0], c->ck_buf[0] ? c->ck_buf[0] : S_empty_bytes,
                        c->ck_first[0] ? Py_True : Py_False, c->ck_rlast[0],
                        c->ck_state[1], c->ck_buf[1] ? c->ck_buf[1] : S_empty_bytes,
                        c->ck_first[1] ? Py_True : Py_False, c->ck_rlast[1], log);
    Py_DECREF(log);
    if (!out) return NULL;
    p->c = NULL;
    conn_free(c);
    return out;
}

static PyObject *plain_feed_bytes(Plain *p, int d, const char *data, Py_ssize_t len, double ts) {
    Conn *c = p->c;
    if (!c) { PyErr_SetString(PyExc_ValueError, "Plain: already given back"); return NULL; }
    if (log_add(c, 'f', d, ts, 0, 0, data, len, 0) < 0) return NULL;
    if (c->logdata.len > LOG_MAX_BYTES)
        return plain_handback(p); /* too much in flight to keep for a replay */
    int rc = http_feed(p->fp, c, d, data, len, ts);
    if (rc == ERR) return NULL;
    if (rc != OK) return plain_handback(p);
    Py_RETURN_NONE;
}

static PyObject *Plain_feed(Plain *p, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "feed(d, data: bytes, ts)");
        return NULL;
    }
    long d = PyLong_AsLong(args[0]);
    double ts = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (d != 0 && d != 1) { PyErr_SetString(PyExc_ValueError, "d: 0 or 1"); return NULL; }
    return plain_feed_bytes(p, (int)d, PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1]), ts);
}

static PyObject *Plain_handback(Plain *p, PyObject *unused) { return plain_handback(p); }

static PyObject *Plain_set_suffix(Plain *p, PyObject *sfx) {
    if (!PyBytes_Check(sfx)) { PyErr_SetString(PyExc_TypeError, "bytes expected"); return NULL; }
    if (!p->c) Py_RETURN_NONE;
    Py_INCREF(sfx);
    Py_XSETREF(p->c->line_sfx, sfx);
    Py_RETURN_NONE;
}

static int Plain_traverse(Plain *p, visitproc visit, void *arg) {
    Py_VISIT(p->fp);
    Py_VISIT(p->back);
    Py_VISIT(p->stats);
    Py_VISIT(p->errs);
    Py_VISIT(p->sink);
    Py_VISIT(p->refresh);
    Py_VISIT(p->lent[0].decrypt);
    Py_VISIT(p->lent[1].decrypt);
    return 0;
}

static int Plain_clear(Plain *p) {
    if (p->c) { conn_free(p->c); p->c = NULL; }
    for (int d = 0; d < 2; d++) {
        Py_CLEAR(p->lent[d].decrypt);
        buf_free(&p->lent[d].buf);
        p->lent[d].on = 0;
    }
    Py_CLEAR(p->back);
    Py_CLEAR(p->stats);
    Py_CLEAR(p->errs);
    Py_CLEAR(p->sink);
    Py_CLEAR(p->refresh);
    Py_CLEAR(p->fp);
    return 0;
}

static void Plain_dealloc(Plain *p) {
    PyObject_GC_UnTrack(p);
    Plain_clear(p);
    PyObject_GC_Del(p);
}

static PyObject *Plain_records(Plain *p, PyObject *const *args, Py_ssize_t nargs);
static PyObject *Plain_lend(Plain *p, PyObject *const *args, Py_ssize_t nargs);
static PyObject *Plain_unlend(Plain *p, PyObject *fc);

static PyMethodDef Plain_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))Plain_feed, METH_FASTCALL,
     "feed(d, data, ts): None, or the hand-back (n, client, server, log) if not read here."},
    {"records", (PyCFunction)(void (*)(void))Plain_records, METH_FASTCALL,
     "records(d, data, pos, decrypt, iv, seq, errors, max_record, ts): TLS 1.3 application "
     "data records decrypted and fed: (pos, seq, records, hand-back or None)."},
    {"lend", (PyCFunction)(void (*)(void))Plain_lend, METH_FASTCALL,
     "lend(from_client, d, decrypt, iv, seq, buf, back, stats, errors, max_record): the "
     "direction's records read in C from now (only from the connection's feed): True if so."},
    {"unlend", (PyCFunction)Plain_unlend, METH_O,
     "unlend(from_client): the direction back to the TLS reader (through back) if lent."},
    {"handback", (PyCFunction)Plain_handback, METH_NOARGS,
     "Give the reader back: (n, (state, buf, first_message, last_ts) x2, [(d, ts, data)])."},
    {"set_suffix", (PyCFunction)Plain_set_suffix, METH_O,
     "The bytes after the response in each line (before the closing brace)."},
    {NULL}};

static PyTypeObject PlainType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "replay._fastpath.Plain",
    .tp_basicsize = sizeof(Plain),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)Plain_dealloc,
    .tp_traverse = (traverseproc)Plain_traverse,
    .tp_clear = (inquiry)Plain_clear,
    .tp_methods = Plain_methods,
    .tp_doc = "The HTTP/1 reader of decrypted TLS plaintext, in C (FastPath.plain).",
};

/* TLS 1.3 application data records from *pos, in sequence, as TlsConnection._fast_record (kind
 * 0) reads them one by one: each whole record of type 23 (version 3.x, 0 < length <=
 * max_record) is decrypted with decrypt(iv xor seq, body, header); the plaintexts (inner type
 * 23, padding stripped) are joined. It stops before the first record that is anything else,
 * does not verify (an exception of type errs) or holds another inner type: that one is the
 * caller's. *pos, *seq and *k (records read) are updated; the plaintext is returned (a new
 * reference), NULL on an error. */
static PyObject *open13(const unsigned char *data, Py_ssize_t end, Py_ssize_t *ppos,
                        PyObject *decrypt, const unsigned char *iv, unsigned long long *pseq,
                        PyObject *errs, long max_record, long *pk) {
    Py_ssize_t pos = *ppos;
    unsigned long long seq = *pseq;
    Buf out = {0};
    PyObject *one = NULL; /* a single record's plaintext, kept as is */
    Py_ssize_t one_len = 0;
    long k = 0;
    while (pos >= 0 && end - pos >= 5 && data[pos] == 23 && data[pos + 1] == 3) {
        long n = (data[pos + 3] << 8) | data[pos + 4];
        if (n <= 0 || n > max_record || end - pos < 5 + n) break;
        unsigned char nonce[12];
        memcpy(nonce, iv, 12);
        for (int i = 0; i < 8; i++) nonce[11 - i] ^= (unsigned char)(seq >> (8 * i));
        PyObject *a[3];
        a[0] = PyBytes_FromStringAndSize((const char *)nonce, 12);
        a[1] = PyBytes_FromStringAndSize((const char *)data + pos + 5, n);
        a[2] = PyBytes_FromStringAndSize((const char *)data + pos, 5);
        PyObject *pt = NULL;
        if (a[0] && a[1] && a[2]) pt = PyObject_Vectorcall(decrypt, a, 3, NULL);
        Py_XDECREF(a[0]);
        Py_XDECREF(a[1]);
        Py_XDECREF(a[2]);
        if (!pt) {
            if (PyErr_ExceptionMatches(errs)) { PyErr_Clear(); break; }
            goto error;
        }
        if (!PyBytes_Check(pt)) { Py_DECREF(pt); break; }
        const char *q = PyBytes_AS_STRING(pt);
        Py_ssize_t m = PyBytes_GET_SIZE(pt);
        if (m == 0) { Py_DECREF(pt); break; }
        if (q[m - 1] != 23) {
            while (m && q[m - 1] == 0) m--;
            if (!m || q[m - 1] != 23) { Py_DECREF(pt); break; }
        }
        m--;
        if (m) {
            if (!one && !out.len) {
                one = pt;
                one_len = m;
                pt = NULL;
            } else {
                if (one) {
                    if (buf_add(&out, PyBytes_AS_STRING(one), one_len) < 0) {
                        Py_XDECREF(pt);
                        goto error;
                    }
                    Py_CLEAR(one);
                }
                if (buf_add(&out, q, m) < 0) { Py_DECREF(pt); goto error; }
            }
        }
        Py_XDECREF(pt);
        seq++;
        pos += 5 + n;
        k++;
    }
    PyObject *res;
    if (one) {
        if (one_len == PyBytes_GET_SIZE(one)) {
            res = one;
        } else {
            res = PyBytes_FromStringAndSize(PyBytes_AS_STRING(one), one_len);
            Py_DECREF(one);
        }
    } else {
        res = PyBytes_FromStringAndSize(out.p ? out.p : "", out.len);
    }
    buf_free(&out);
    if (!res) return NULL;
    *ppos = pos;
    *pseq = seq;
    *pk = k;
    return res;
error:
    Py_XDECREF(one);
    buf_free(&out);
    return NULL;
}

static int open13_args(PyObject *const *args, const unsigned char **data, Py_ssize_t *end,
                       Py_ssize_t *pos, const unsigned char **iv, unsigned long long *seq,
                       long *max_record) {
    /* (data, pos, decrypt, iv, seq, errors, max_record) */
    if (!PyBytes_Check(args[0]) || !PyBytes_Check(args[3]) || PyBytes_GET_SIZE(args[3]) != 12) {
        PyErr_SetString(PyExc_TypeError, "(data: bytes, pos, decrypt, iv: 12 bytes, seq, errors, "
                                         "max_record) expected");
        return -1;
    }
    *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    *end = PyBytes_GET_SIZE(args[0]);
    *pos = PyLong_AsSsize_t(args[1]);
    *iv = (const unsigned char *)PyBytes_AS_STRING(args[3]);
    *seq = PyLong_AsUnsignedLongLong(args[4]);
    *max_record = PyLong_AsLong(args[6]);
    if (PyErr_Occurred()) return -1;
    if (*pos < 0 || *pos > *end) { PyErr_SetString(PyExc_ValueError, "pos"); return -1; }
    return 0;
}

/* tls13_open(data, pos, decrypt, iv, seq, errors, max_record) -> (pos, seq, records,
 * plaintext): open13 from Python. */
static PyObject *tls13_open(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "tls13_open: 7 arguments");
        return NULL;
    }
    const unsigned char *data, *iv;
    Py_ssize_t end, pos;
    unsigned long long seq;
    long max_record, k = 0;
    if (open13_args(args, &data, &end, &pos, &iv, &seq, &max_record) < 0) return NULL;
    PyObject *pt = open13(data, end, &pos, args[2], iv, &seq, args[5], max_record, &k);
    if (!pt) return NULL;
    return Py_BuildValue("nKlN", pos, seq, k, pt);
}

/* Plain.records(d, data, pos, decrypt, iv, seq, errors, max_record, ts) -> (pos, seq, records,
 * hand-back or None): open13, and the plaintext (if any) fed as feed(d, plaintext, ts): what
 * TlsConnection.feed does with a segment's application data records in the steady state. */
static PyObject *plain_feed_bytes(Plain *p, int d, const char *data, Py_ssize_t len, double ts);

static PyObject *Plain_records(Plain *p, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "records: 9 arguments");
        return NULL;
    }
    long d = PyLong_AsLong(args[0]);
    double ts = PyFloat_AsDouble(args[8]);
    if (PyErr_Occurred()) return NULL;
    if (d != 0 && d != 1) { PyErr_SetString(PyExc_ValueError, "d: 0 or 1"); return NULL; }
    if (!p->c) { PyErr_SetString(PyExc_ValueError, "Plain: already given back"); return NULL; }
    const unsigned char *data, *iv;
    Py_ssize_t end, pos;
    unsigned long long seq;
    long max_record, k = 0;
    if (open13_args(args + 1, &data, &end, &pos, &iv, &seq, &max_record) < 0) return NULL;
    PyObject *pt = open13(data, end, &pos, args[3], iv, &seq, args[6], max_record, &k);
    if (!pt) return NULL;
    PyObject *back;
    if (PyBytes_GET_SIZE(pt)) {
        back = plain_feed_bytes(p, (int)d, PyBytes_AS_STRING(pt), PyBytes_GET_SIZE(pt), ts);
    } else {
        back = Py_None;
        Py_INCREF(back);
    }
    Py_DECREF(pt);
    if (!back) return NULL;
    return Py_BuildValue("nKlN", pos, seq, k, back);
}

/* ------------------------------------------------------------------------------------------ */
/* Lent directions: while a foreign connection's TLS direction is in the steady state (TLS 1.3
 * application data under known keys, in sequence, the plaintext read by this Plain), its
 * segments are read here as TlsConnection.feed would read them (the Plain.records branch), with
 * no Python call: the record layer's state (sequence number, a partial record) is kept in the
 * Lent. The first record that is anything else, a Plain given back, or the connection leaving
 * C (foreign_back) returns the direction: TlsConnection._lent_back(from_client, seq, records,
 * buf, hand-back or None) puts that state back into its _Dir, and the rest of the bytes go to
 * its feed. */

static void lent_clear(Lent *L) {
    L->on = 0;
    Py_CLEAR(L->decrypt);
    buf_free(&L->buf);
    L->nrec = 0;
}

/* Return direction d (TCP) to the TLS reader; buf: its partial record; back: the Plain's
 * hand-back or NULL. */
static int lent_return(Plain *p, int d, PyObject *back, const char *buf, Py_ssize_t blen) {
    Lent *L = &p->lent[d];
    PyObject *b = PyBytes_FromStringAndSize(buf ? buf : "", buf ? blen : 0);
    if (!b) return -1;
    PyObject *r = PyObject_CallFunction(p->back, "OKlNO", d == 0 ? Py_True : Py_False, L->seq,
                                        L->nrec, b, back ? back : Py_None);
    lent_clear(L);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* Every lent direction of c back to Python, and the Plain let go (foreign_back). */
static int lent_return_all(Conn *c) {
    Plain *p = c->plain;
    if (!p) return 0;
    Py_INCREF(p);
    int rc = 0;
    for (int d = 0; d < 2 && rc == 0; d++) {
        Lent *L = &p->lent[d];
        if (L->on) {
            Buf keep = L->buf;
            L->buf.p = NULL;
            L->buf.len = L->buf.cap = 0;
            rc = lent_return(p, d, NULL, keep.p, keep.len);
            buf_free(&keep);
        }
    }
    if (c->plain) plain_detach(c);
    Py_DECREF(p);
    return rc;
}

static void plain_detach(Conn *c) {
    Plain *p = c->plain;
    c->plain = NULL;
    if (p->conn == c) p->conn = NULL;
    Py_DECREF(p);
}

static int bump_count(PyObject *stats, PyObject *key, long n) {
    PyObject *v = PyDict_GetItemWithError(stats, key);
    if (!v && PyErr_Occurred()) return -1;
    long cur = v ? PyLong_AsLong(v) : 0;
    if (cur == -1 && PyErr_Occurred()) return -1;
    PyObject *nv = PyLong_FromLong(cur + n);
    if (!nv) return -1;
    int r = PyDict_SetItem(stats, key, nv);
    Py_DECREF(nv);
    return r;
}

static PyObject *S_records_decrypted, *S_h2_bytes;

/* A segment of lent direction d: 0 read here, 1 *rest (new) to the TLS reader's feed (the
 * direction was returned), 2 not lent (all of it to the feed), -1 error. */
static int lent_feed(FastPath *fp, Conn *c, int d, double ts, const char *pl, Py_ssize_t plen,
                     PyObject **rest) {
    Plain *p = c->plain;
    Lent *L = &p->lent[d];
    if (!L->on) return 2;
    if (!p->c && !p->sink) {
        /* the reader was given back meanwhile: the direction too, with its partial record */
        Buf keep = L->buf;
        L->buf.p = NULL;
        L->buf.len = L->buf.cap = 0;
        int r = lent_return(p, d, NULL, keep.p, keep.len);
        buf_free(&keep);
        return r < 0 ? -1 : 2;
    }
    Buf tmp = {0};
    const unsigned char *data = (const unsigned char *)pl;
    Py_ssize_t end = plen;
    if (L->buf.len) {
        if (buf_add(&L->buf, pl, plen) < 0) return -1;
        tmp = L->buf;
        L->buf.p = NULL;
        L->buf.len = L->buf.cap = 0;
        data = (const unsigned char *)tmp.p;
        end = tmp.len;
    }
    int rc = -1;
    Py_ssize_t pos = 0;
    long k = 0;
    unsigned long long seq = L->seq;
    PyObject *back = NULL;
    fp->lent_segments++;
    Py_INCREF(p);
    PyObject *pt = open13(data, end, &pos, L->decrypt, L->iv, &seq, p->errs, p->max_record, &k);
    if (!pt) goto out;
    L->seq = seq;
    if (k) {
        L->nrec += k;
        if (bump_count(p->stats, S_records_decrypted, k) < 0) { Py_DECREF(pt); goto out; }
    }
    if (PyBytes_GET_SIZE(pt) && p->sink) {
        /* (TlsConnection._app_data, h2: h2_bytes counted, then inner_h2.feed) */
        PyObject *a[3] = {L->pd == 0 ? Py_True : Py_False, pt, PyFloat_FromDouble(ts)};
        PyObject *r = NULL;
        if (a[2] && bump_count(p->stats, S_h2_bytes, (long)PyBytes_GET_SIZE(pt)) == 0)
            r = PyObject_Vectorcall(p->sink, a, 3, NULL);
        Py_XDECREF(a[2]);
        if (!r) { Py_DECREF(pt); goto out; }
        Py_DECREF(r);
        if (!L->on) {
            /* (not expected) the direction was returned meanwhile: the rest to its feed */
            Py_DECREF(pt);
            if (pos == end) {
                rc = 0;
            } else {
                *rest = PyBytes_FromStringAndSize((const char *)data + pos, end - pos);
                rc = *rest ? 1 : -1;
            }
            goto out;
        }
    } else if (PyBytes_GET_SIZE(pt)) {
        back = plain_feed_bytes(p, L->pd, PyBytes_AS_STRING(pt), PyBytes_GET_SIZE(pt), ts);
        if (!back) { Py_DECREF(pt); goto out; }
    }
    Py_DECREF(pt);
    Py_ssize_t rem = end - pos;
    int partial = 0;
    if (rem > 0) {
        long n = rem >= 5 ? ((data[pos + 3] << 8) | data[pos + 4]) : 0;
        partial = rem < 5 || (data[pos] >= 20 && data[pos] <= 24 && data[pos + 1] == 3 &&
                              data[pos + 2] <= 4 && n > 0 && n <= p->max_record &&
                              rem < 5 + n);
    }
    if (back && back != Py_None) {
        /* the HTTP reader was given back: both directions go back to Python */
        if (lent_return(p, d, back, partial ? (const char *)data + pos : NULL, rem) < 0)
            goto out;
        for (int od = 0; od < 2; od++) {
            Lent *O = &p->lent[od];
            if (O->on) {
                Buf keep = O->buf;
                O->buf.p = NULL;
                O->buf.len = O->buf.cap = 0;
                int r = lent_return(p, od, NULL, keep.p, keep.len);
                buf_free(&keep);
                if (r < 0) goto out;
            }
        }
        if (rem == 0 || partial) {
            rc = 0;
        } else {
            *rest = PyBytes_FromStringAndSize((const char *)data + pos, rem);
            rc = *rest ? 1 : -1;
        }
        goto out;
    }
    if (rem == 0) {
        rc = 0;
    } else if (partial) {
        rc = buf_add(&L->buf, (const char *)data + pos, rem) < 0 ? -1 : 0;
    } else {
        /* a record that is not one for this path: the direction and the rest to Python */
        if (lent_return(p, d, NULL, NULL, 0) < 0) goto out;
        *rest = PyBytes_FromStringAndSize((const char *)data + pos, rem);
        rc = *rest ? 1 : -1;
    }
out:
    Py_XDECREF(back);
    buf_free(&tmp);
    Py_DECREF(p);
    return rc;
}

/* Plain.lend(from_client, d, decrypt, iv, seq, buf, back, stats, errors, max_record): from the
 * foreign connection's feed (the TLS reader, called from C), the direction's next records are
 * read here until one is not for it. False when not called so (or already lent). */
static PyObject *Plain_lend(Plain *p, PyObject *const *args, Py_ssize_t nargs) {
    if ((nargs != 10 && nargs != 11) || !PyBytes_Check(args[3]) ||
        PyBytes_GET_SIZE(args[3]) != 12 || !PyBytes_Check(args[5]) || !PyDict_Check(args[7]) ||
        (nargs == 11 && args[10] != Py_None && !PyCallable_Check(args[10]))) {
        PyErr_SetString(PyExc_TypeError, "lend(from_client, d, decrypt, iv: 12 bytes, seq, "
                                         "buf: bytes, back, stats: dict, errors, max_record"
                                         "[, refresh])");
        return NULL;
    }
    int from_client = PyObject_IsTrue(args[0]);
    long pd = PyLong_AsLong(args[1]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[4]);
    long max_record = PyLong_AsLong(args[9]);
    if (PyErr_Occurred() || from_client < 0) return NULL;
    if (!p->fp) Py_RETURN_FALSE; /* (cleared by the garbage collector) */
    Conn *c = p->fp->cur_conn;
    int d = from_client ? 0 : 1;
    if ((!p->c && !p->sink) || !c || (c->plain && c->plain != p) || (p->conn && p->conn != c) ||
        p->lent[d].on || (pd != 0 && pd != 1))
        Py_RETURN_FALSE;
    Lent *L = &p->lent[d];
    if (PyBytes_GET_SIZE(args[5]) &&
        buf_add(&L->buf, PyBytes_AS_STRING(args[5]), PyBytes_GET_SIZE(args[5])) < 0)
        return NULL;
    if (!c->plain) {
        c->plain = p;
        Py_INCREF(p);
    }
    p->conn = c;
    L->on = 1;
    L->pd = (int)pd;
    Py_INCREF(args[2]);
    Py_XSETREF(L->decrypt, args[2]);
    memcpy(L->iv, PyBytes_AS_STRING(args[3]), 12);
    L->seq = seq;
    L->nrec = 0;
    Py_INCREF(args[6]);
    Py_XSETREF(p->back, args[6]);
    Py_INCREF(args[7]);
    Py_XSETREF(p->stats, args[7]);
    Py_INCREF(args[8]);
    Py_XSETREF(p->errs, args[8]);
    if (nargs == 11 && args[10] != Py_None) {
        Py_INCREF(args[10]);
        Py_XSETREF(p->refresh, args[10]);
    }
    p->max_record = max_record;
    Py_RETURN_TRUE;
}

/* The retransmission count of c changed here (foreign_retransmit): a Plain reading its lent
 * directions into lines has its suffix made again (refresh, from Plain.lend). */
static int plain_refresh(Conn *c) {
    Plain *p = c->plain;
    if (!p || !p->c || !p->refresh || !(p->lent[0].on || p->lent[1].on)) return 0;
    Py_INCREF(p);
    PyObject *r = PyObject_CallNoArgs(p->refresh);
    Py_DECREF(p);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* Plain.unlend(from_client): the direction back now (through back), if it is lent. */
static PyObject *Plain_unlend(Plain *p, PyObject *fc) {
    int from_client = PyObject_IsTrue(fc);
    if (from_client < 0) return NULL;
    int d = from_client ? 0 : 1;
    Lent *L = &p->lent[d];
    if (L->on) {
        Buf keep = L->buf;
        L->buf.p = NULL;
        L->buf.len = L->buf.cap = 0;
        int r = lent_return(p, d, NULL, keep.p, keep.len);
        buf_free(&keep);
        if (r < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef FP_methods[] = {
    {"run", (PyCFunction)FP_run, METH_O, "Feed (ts, linktype, frame) tuples; returns frames read."},
    {"run_pcap", (PyCFunction)FP_run_pcap, METH_VARARGS,
     "Walk classic pcap records in a buffer: (pos, frames, corrupt_length)."},
    {"run_ring", (PyCFunction)FP_run_ring, METH_VARARGS,
     "Walk the TPACKET_V3 blocks user space owns: (block, frames, bytes, truncated, errors, "
     "last error)."},
    {"sync", (PyCFunction)FP_sync, METH_O, "Give an adopted connection back to Python."},
    {"end", (PyCFunction)FP_end, METH_O,
     "Python ends this connection: given back if held here, and forgotten."},
    {"sweep", (PyCFunction)FP_sweep, METH_NOARGS,
     "Forget the connections Python no longer tracks."},
    {"touch", (PyCFunction)FP_touch, METH_NOARGS, "Write last activity times to Python."},
    {"stats", (PyCFunction)FP_stats, METH_NOARGS, "Counters of the fast path."},
    {"flush", (PyCFunction)FP_flush, METH_NOARGS, "Hand over the JSONL lines pending."},
    {"plain", (PyCFunction)FP_plain, METH_VARARGS,
     "plain(line_id, line_conn, max_body): a Plain, the HTTP/1 reader of decrypted TLS."},
    {"sink", (PyCFunction)FP_sink, METH_O,
     "sink(feed): a Plain that lent directions' plaintext goes to as feed(from_client, data, "
     "ts) (HTTP/2 over TLS)."},
    {"set_lines", (PyCFunction)FP_set_lines, METH_O,
     "JSONL lines (True) or Exchanges (False) for connections adopted from now on."},
    {NULL}};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "replay._fastpath.FastPath",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = FP_new,
    .tp_dealloc = (destructor)FP_dealloc,
    .tp_traverse = (traverseproc)FP_traverse,
    .tp_clear = (inquiry)FP_clear,
    .tp_methods = FP_methods,
    .tp_doc = "The extractor's common case in C (see the module source for the contract).",
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1,
                                    module_methods};

#define INTERN(var, s) if (!(var = PyUnicode_InternFromString(s))) return NULL

/* The reader states, from replay.http1.ReaderState (the definition): a dict name -> value of
 * the ones this code reads, or NULL. A state missing there, or two of the same value, fail the
 * import, so an edit to http1.py can never leave this file on other numbers. */
static PyObject *init_states(void) {
    static const char *names[] = {"HEAD", "BODY_CL", "CHUNK_SIZE", "CHUNK_DATA", "CHUNK_CRLF",
                                  "TRAILERS", NULL};
    long *vars[] = {&H_HEAD, &H_BODY_CL, &H_CHUNK_SIZE, &H_CHUNK_DATA, &H_CHUNK_CRLF,
                    &H_TRAILERS};
    PyObject *mod = PyImport_ImportModule("replay.http1");
    if (!mod) return NULL;
    PyObject *cls = PyObject_GetAttrString(mod, "ReaderState");
    Py_DECREF(mod);
    if (!cls) return NULL;
    PyObject *out = PyDict_New();
    for (int i = 0; out && names[i]; i++) {
        PyObject *v = PyObject_GetAttrString(cls, names[i]);
        long x = v ? PyLong_AsLong(v) : -1;
        Py_XDECREF(v);
        if (x == -1 && PyErr_Occurred()) { Py_CLEAR(out); break; }
        for (int j = 0; j < i; j++)
            if (*vars[j] == x) {
                PyErr_Format(PyExc_ImportError, "replay.http1.ReaderState: %s and %s are both %ld",
                             names[j], names[i], x);
                Py_CLEAR(out);
                break;
            }
        if (!out) break;
        *vars[i] = x;
        PyObject *xv = PyLong_FromLong(x);
        if (!xv || PyDict_SetItemString(out, names[i], xv) < 0) Py_CLEAR(out);
        Py_XDECREF(xv);
    }
    Py_DECREF(cls);
    return out;
}

PyMODINIT_FUNC PyInit__fastpath(void) {
    init_tables();
    init_json();
    init_b64();
    PyObject *states = init_states();
    if (!states) return NULL;
    INTERN(S_export_state, "export_state");
    INTERN(S_set_fast, "set_fast");
    INTERN(S_export_foreign, "export_foreign");
    INTERN(S_records_decrypted, "records_decrypted");
    INTERN(S_h2_bytes, "h2_bytes");
    INTERN(S_now, "now");
    INTERN(S_next_sweep, "next_sweep");
    INTERN(S_hole_count, "hole_count");
    INTERN(S_last_ts, "last_ts");
    INTERN(S_resets, "resets");
    INTERN(S_retransmits, "retransmits");
    INTERN(S_HTTP11, "HTTP/1.1");
    INTERN(S_HTTP10, "HTTP/1.0");
    if (!(S_empty_bytes = PyBytes_FromStringAndSize("", 0))) return NULL;
    INTERN(S_id, "id");
    INTERN(S_conn, "conn");
    INTERN(S_client_ip, "client_ip");
    INTERN(S_client_port, "client_port");
    INTERN(S_server_ip, "server_ip");
    INTERN(S_server_port, "server_port");
    INTERN(S_ts[0], "ts_request_start");
    INTERN(S_ts[1], "ts_request_end");
    INTERN(S_ts[2], "ts_response_start");
    INTERN(S_ts[3], "ts_response_end");
    INTERN(S_request, "request");
    INTERN(S_response, "response");
    INTERN(S_interim, "interim");
    INTERN(S_completeness, "completeness");
    INTERN(S_tunnel, "tunnel");
    INTERN(S_meta, "meta");
    INTERN(S_method, "method");
    INTERN(S_target, "target");
    INTERN(S_version, "version");
    INTERN(S_headers, "headers");
    INTERN(S_body, "body");
    INTERN(S_trailers, "trailers");
    INTERN(S_status, "status");
    INTERN(S_reason, "reason");
    INTERN(S_request_gaps, "request_gaps");
    INTERN(S_response_gaps, "response_gaps");
    INTERN(S_flags[0], "request_truncated");
    INTERN(S_flags[1], "response_truncated");
    INTERN(S_flags[2], "timed_out");
    INTERN(S_flags[3], "unpaired");
    INTERN(S_notes, "notes");
    INTERN(S_desync, "desync");
    INTERN(S_weird, "weird");
    for (int i = 0; METHODS[i]; i++) INTERN(METHOD_STR[i], METHODS[i]);
    if (PyType_Ready(&FastPathType) < 0 || PyType_Ready(&PlainType) < 0) {
        Py_DECREF(states);
        return NULL;
    }
    PyObject *m = PyModule_Create(&moddef);
    if (!m) { Py_DECREF(states); return NULL; }
    Py_INCREF(&FastPathType);
    if (PyModule_AddObject(m, "FastPath", (PyObject *)&FastPathType) < 0) return NULL;
    /* the reader states this code uses, by name: replay.http1.ReaderState's (tests compare) */
    if (PyModule_AddObject(m, "READER_STATES", states) < 0) { Py_DECREF(states); return NULL; }
    return m;
}
