"""One TLS connection, observed passively: records in (both directions), plaintext out.

``TlsConnection`` takes the place of the HTTP/1 readers of a TCP connection once its first bytes
turn out to be TLS (``replay.http1.HttpConnection.sniff``). It is fed each direction's in-order
bytes, gaps and closes exactly as the HTTP/1 reader would be, and:

- splits records that span segments or share one, and after a gap (or when the capture starts
  mid-connection) skips to the next plausible record header, counted;
- reads the ClientHello (client random, SNI, offered ALPN) and ServerHello (server random,
  cipher suite, version, incl. ``supported_versions`` for TLS 1.3, selected ALPN in TLS 1.2);
- finds the connection's secrets in the ``KeyLog`` by client random (looked up at the first
  encrypted record, so secrets that arrive later in a pcapng file or a tailed key log count);
- decrypts TLS 1.2 records (key block from the master secret; GCM nonce = salt + explicit
  nonce, RFC 5288; ChaCha20-Poly1305 nonce = IV xor sequence, RFC 7905; AES-CBC with its
  HMAC, MAC-then-encrypt or encrypt-then-MAC, RFC 7366) and TLS 1.3 records
  (traffic keys from the logged handshake and application secrets, inner content type,
  Finished switching to the application keys, KeyUpdate), and counts every authentication
  failure instead of raising;
- hands each direction's application data to an inner ``HttpConnection`` as if it were the TCP
  payload, so TLS exchanges are ordinary Exchanges, marked ``meta["tls"]`` = {version, cipher,
  sni, alpn}. HTTP/2 (ALPN ``h2`` or the client preface) goes to an inner
  ``replay.h2.H2Connection`` instead (outcome ``h2``: decrypted, HTTP/2).

Every connection ends in exactly one outcome, counted in ``stats`` (``decrypted``, ``no_key``,
``auth_failed``, ``h2``, ``mid_stream``, ``unsupported_cipher``, ``no_server_hello``: a
handshake the server never answered); connections without a key are also listed by SNI and
ALPN in ``undecrypted``.
"""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidTag

from replay._native import load_c
from replay.http1 import HttpConnection
from replay.model import ConnKey, Exchange
from replay.tls.keylog import KeyLog
from replay.tls.keyschedule import (
    SUITES,
    Suite,
    cbc_open,
    suite_name,
    tls12_keys,
    tls13_keys,
    tls13_next_secret,
)

MAX_RECORD = 16384 + 2048
"""The largest TLSCiphertext fragment (RFC 5246 §6.2.3; TLS 1.3 allows 2^14 + 256)."""
MAX_SEQ_SKIP = 64
"""After a gap, how many lost records to try when looking for the sequence number."""
MAX_FAIL_STREAK = 16
"""Authentication failures in a row (with nothing decrypted yet) before giving up a direction."""
MAX_HANDSHAKE = 256 * 1024
"""A handshake message longer than this is skipped (certificates chains are far smaller)."""
MAX_UNDECRYPTED_KINDS = 1000

HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
VERSIONS = {0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FAST_ERRORS = (InvalidTag, ValueError, OverflowError, IndexError)
_tls13_open = load_c("replay._fastpath", "tls13_open")
"""TLS 1.3 application data records in a row, decrypted in C (``replay._fastpath``): the loop of
``TlsConnection._fast_record`` (kind 0) without a Python call per record; None without the
module."""


def plausible_header(data: bytes, pos: int) -> bool:
    """A TLS record header at ``pos`` (5 bytes present)."""
    return (20 <= data[pos] <= 24 and data[pos + 1] == 3 and data[pos + 2] <= 4
            and 0 < ((data[pos + 3] << 8) | data[pos + 4]) <= MAX_RECORD)


def _seq_nonce(iv: bytes, seq: int) -> bytes:
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")


class _Dir:
    """One direction: record framing, its keys, its sequence number."""

    __slots__ = (
        "aead",
        "app_secret",
        "buf",
        "dead",
        "decrypted",
        "encrypted",
        "epoch",
        "fail_streak",
        "gap_bytes",
        "gap_records",
        "hs",
        "is_client",
        "iv",
        "lent",
        "resync",
        "seen",
        "seq",
        "seq_known",
    )

    def __init__(self, is_client: bool, resync: bool) -> None:
        self.is_client = is_client
        self.buf = b""
        self.resync = resync
        """Looking for a record boundary (after a gap, or picked up mid-connection)."""
        self.encrypted = False
        self.epoch = ""
        """"" (no keys), "12", "hs" (TLS 1.3 handshake), "app" (TLS 1.3 application)."""
        self.aead: Any = None
        self.iv = b""
        self.app_secret = b""
        self.seq = 0
        self.seq_known = True
        """False after a gap: the next record's sequence number is found by trial."""
        self.hs = b""
        self.decrypted = 0
        self.fail_streak = 0
        self.dead = False
        self.gap_bytes = 0
        """Ciphertext lost (gaps, skipped bytes, records that failed) since the last record
        decrypted."""
        self.gap_records = 0
        """Records among those that failed authentication (their framing is not plaintext)."""
        self.seen = 0
        """Bytes this direction carried before any was lent to the C reader (gaps included):
        whether the server said anything at all."""
        self.lent = False
        """Its records are read by the C reader (``TlsConnection._lend``): ``seq`` and ``buf``
        are there until ``_lent_back``."""


class TlsConnection:
    """A TLS connection in place of the HTTP/1 readers of ``outer`` (see the module docstring).

    Fed like a ``StreamHandler``'s readers: ``feed(from_client, data, ts)``,
    ``gap(from_client, n, ts)``, ``close(from_client, ts)``, ``finish(ts, timed_out)``.
    """

    def __init__(self, outer: HttpConnection, keylog: KeyLog | None, stats: dict[str, int],
                 undecrypted: dict[str, int], *, mid_stream: bool) -> None:
        self.outer = outer
        self.keylog = keylog
        self.stats = stats
        self.undecrypted = undecrypted
        self.mid_stream = mid_stream
        self.dirs = {True: _Dir(True, mid_stream), False: _Dir(False, mid_stream)}
        self.client_random = b""
        self.server_random = b""
        self.suite: Suite | None = None
        self.suite_code: int | None = None
        self.version = 0
        self.sni = ""
        self.alpn_offered: list[str] = []
        self.alpn = ""
        self.etm = False
        """encrypt_then_mac (RFC 7366) was negotiated: CBC records carry their MAC outside."""
        self.keys_state = ""
        """"" not looked up yet, "ok", "no_key", "unsupported"."""
        self.inner: HttpConnection | None = None
        self.new_plain: Any = None
        """``(conn_id, key, max_body) -> replay._fastpath.Plain`` when the extractor's native
        fast path writes exchanges as JSONL lines (``replay.extract`` sets it): the decrypted
        HTTP/1 is then read by that C reader (``plain``) until it gives it back to ``inner``."""
        self.plain: Any = None
        """The C HTTP/1 reader of the plaintext (``FastPath.plain``), in place of ``inner``
        while it reads the common case; ``_python_inner`` turns it into ``inner``."""
        self._sfx_key: Any = None
        self._lender: Any = None
        """The ``plain`` (or sink) that directions were lent to (``_lend``), kept after it is
        gone."""
        self.new_sink: Any = None
        """``(feed) -> replay._fastpath.Plain`` (``FastPath.sink``) when the extractor's native
        path feeds this connection: HTTP/2's directions are then lent to it (``_lend_h2``)."""
        self._sink: Any = None
        self.h2 = False
        self.inner_h2: Any = None
        """The HTTP/2 reader of the decrypted bytes (``replay.h2.H2Connection``)."""
        self.h2_stats: dict[str, int] | None = None
        """Where that reader counts (``Extractor.h2_stats``); a dict of its own if unset."""
        self.swapped = False
        self.auth_failures = 0
        self.finished = False
        self._hello_seen = 0
        self._info_key: tuple[Any, ...] | None = None
        self._info: dict[str, str] = {}
        self._count("connections")

    # -- counters ------------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def info(self) -> dict[str, str]:
        """The ``meta["tls"]`` marker of this connection's exchanges: a copy of one built
        once per handshake state (it is the same for every exchange after the hellos)."""
        key = (self.version, self.suite_code, self.sni, self.alpn, self.alpn_offered)
        if self._info_key != key:
            self._info_key, self._info = key, self._build_info()
        return self._info.copy()

    def _build_info(self) -> dict[str, str]:
        d = {"version": VERSIONS.get(self.version, f"0x{self.version:04X}"),
             "cipher": suite_name(self.suite_code) if self.suite_code is not None else ""}
        if self.sni:
            d["sni"] = self.sni
        alpn = self.alpn or ",".join(self.alpn_offered)
        if alpn:
            d["alpn"] = alpn
        return d

    # -- input (from the outer HttpConnection's readers) ---------------------------------------
    def feed(self, from_client: bool, data: bytes, ts: float) -> None:
        dr = self.dirs[from_client]
        if dr.lent:
            self._lender.unlend(from_client)
        dr.seen += len(data)
        self._feed(dr, data, ts)
        if self.plain is not None and self.new_plain is not None:
            self._lend(from_client, dr)
        elif self.inner_h2 is not None and self.new_sink is not None:
            self._lend_h2(from_client, dr)

    def _lend(self, from_client: bool, dr: _Dir) -> None:
        """When the extractor's native path feeds this connection (``replay._fastpath``), let
        it read this direction's next records itself while they are the steady state of the
        ``plain`` branch of ``_feed`` (TLS 1.3 application data, in sequence, for the C reader),
        each segment exactly as ``_feed`` would; ``_lent_back`` when one is not. (Outside
        that native feed, ``plain.lend`` declines.)"""
        if self._sfx_key != (self.outer.retransmits, self.version, self.suite_code, self.sni,
                             self.alpn, self.alpn_offered):
            self._set_suffix()
        fast = self._fast_open(dr)
        if fast is None or fast[2] != 0 or dr.resync or self.h2:
            return
        plain = self.plain
        if plain.lend(from_client, 0 if dr.is_client else 1, fast[0].decrypt, dr.iv, dr.seq,
                      dr.buf, self._lent_back, self.stats, _FAST_ERRORS, MAX_RECORD,
                      self._refresh_suffix):
            dr.lent = True
            dr.buf = b""
            self._lender = plain

    def _refresh_suffix(self) -> None:
        """The C path counted a retransmission of the outer connection while a direction is
        lent (called from C): the C reader's lines carry the count from now on, as ``_emit``'s
        exchanges do."""
        if self.plain is not None and self._sfx_key != (
                self.outer.retransmits, self.version, self.suite_code, self.sni, self.alpn,
                self.alpn_offered):
            self._set_suffix()

    def _lend_h2(self, from_client: bool, dr: _Dir) -> None:
        """``_lend`` for HTTP/2 (``inner_h2`` reads the plaintext): in the steady state of
        ``_feed``'s loop (TLS 1.3 application data, in sequence), the direction's records are
        decrypted in C and each segment's plaintext goes to ``inner_h2.feed`` in one call, as
        ``_fast_flush`` and ``_app_data`` hand it on (``records_decrypted`` and ``h2_bytes``
        counted there); ``_lent_back`` when a record is not one for it."""
        fast = self._fast_open(dr)
        if fast is None or fast[2] != 0 or dr.resync or not self.h2:
            return
        sink = self._sink
        if sink is None:
            sink = self._sink = self.new_sink(self.inner_h2.feed)
        if sink.lend(from_client, 0 if dr.is_client else 1, fast[0].decrypt, dr.iv, dr.seq,
                     dr.buf, self._lent_back, self.stats, _FAST_ERRORS, MAX_RECORD):
            dr.lent = True
            dr.buf = b""
            self._lender = sink

    def _lent_back(self, from_client: bool, seq: int, records: int, buf: bytes,
                   back: tuple | None) -> None:
        """A direction lent (``_lend``) comes back (called from C): its sequence number, the
        records read meanwhile (``records_decrypted`` is counted there already), a record not
        complete yet; ``back``: the C reader gave the plaintext back (``_python_inner``)."""
        dr = self.dirs[from_client]
        dr.lent = False
        dr.seq = seq
        if records:
            dr.decrypted += records
            dr.fail_streak = 0
        dr.buf = buf
        if back is not None:
            self._python_inner(back)

    def _feed(self, dr: _Dir, data: bytes, ts: float) -> None:
        if dr.buf:
            data = dr.buf + data
            dr.buf = b""
        pos = 0
        end = len(data)
        fast = self._fast_open(dr)
        plain = self.plain
        if (plain is not None and fast is not None and fast[2] == 0 and not dr.resync
                and not self.h2):
            # The steady state with the C reader, in one call: the segment's application data
            # records decrypted and their plaintext fed to it (as the loop below and
            # ``_app_data`` would); a record that is not one for it, or a partial one, is left.
            if self._sfx_key != (self.outer.retransmits, self.version, self.suite_code, self.sni,
                                 self.alpn, self.alpn_offered):
                self._set_suffix()
            pos, seq, k, back = plain.records(0 if dr.is_client else 1, data, 0,
                                              fast[0].decrypt, dr.iv, dr.seq, _FAST_ERRORS,
                                              MAX_RECORD, ts)
            if k:
                dr.seq = seq
                dr.decrypted += k
                dr.fail_streak = 0
                self._count("records_decrypted", k)
                if back is not None:
                    self._python_inner(back)
            if pos == end:
                return
            if end - pos < 5 or (plausible_header(data, pos) and end - pos < 5 + (
                    (data[pos + 3] << 8) | data[pos + 4])):
                dr.buf = data[pos:]  # a record not complete yet
                return
            fast = self._fast_open(dr)
        # The steady state (application data under known keys, in sequence, nothing lost) is
        # decrypted here, without the general path's per-record calls; its plaintext is handed
        # on in one piece per segment. Anything else (and any record that does not verify) goes
        # to ``_record``, after the plaintext gathered so far.
        pts: list[bytes] = []
        nfast = 0
        while pos < end:
            if fast is not None and not dr.resync and end - pos >= 5 and data[pos] == 23:
                if fast[2] == 0 and _tls13_open is not None:
                    pos2, seq, k, pt = _tls13_open(data, pos, fast[0].decrypt, dr.iv, dr.seq,
                                                   _FAST_ERRORS, MAX_RECORD)
                    if k:
                        dr.seq = seq
                        if pt:
                            pts.append(pt)
                        nfast += k
                        pos = pos2
                        continue
                n = (data[pos + 3] << 8) | data[pos + 4]
                if data[pos + 1] == 3 and 0 < n <= MAX_RECORD and end - pos >= 5 + n:
                    pt = self._fast_record(dr, fast, data, pos, n)
                    if pt is not None:
                        if pt:
                            pts.append(pt)
                        nfast += 1
                        pos += 5 + n
                        continue
            if pts or nfast:
                self._fast_flush(dr, pts, nfast, ts)
                pts = []
                nfast = 0
            if dr.resync:
                p = self._find_record(data, pos)
                if p < 0:
                    keep = min(end - pos, 4)
                    self._skipped(dr, end - pos - keep)
                    pos = end - keep
                    break
                self._skipped(dr, p - pos)
                pos = p
                dr.resync = False
            if end - pos < 5:
                break
            if not plausible_header(data, pos):
                self._count("bad_record_headers")
                dr.resync = True
                dr.seq_known = False
                continue
            n = (data[pos + 3] << 8) | data[pos + 4]
            if end - pos < 5 + n:
                break
            self._record(dr, data[pos], data[pos:pos + 5], data[pos + 5:pos + 5 + n], ts)
            pos += 5 + n
            fast = self._fast_open(dr)  # the record may have changed the keys or the state
        if pts or nfast:
            self._fast_flush(dr, pts, nfast, ts)
        if pos < end:
            dr.buf = data[pos:] if pos else data

    def _fast_open(self, dr: _Dir) -> tuple[Any, int, int] | None:
        """(aead, IV as an integer, 0 for TLS 1.3 / 1 for TLS 1.2 AES-GCM / 2 for TLS 1.2
        ChaCha20) when this direction's next application data record can take the fast path."""
        if (self.keys_state != "ok" or dr.aead is None or dr.dead or not dr.seq_known
                or not dr.encrypted or dr.gap_bytes):
            return None
        if dr.epoch == "app":
            return dr.aead, int.from_bytes(dr.iv, "big"), 0
        if dr.epoch == "12" and self.suite is not None:
            if self.suite.cipher == "aes-gcm":
                return dr.aead, 0, 1
            if self.suite.cipher == "chacha20":
                return dr.aead, int.from_bytes(dr.iv, "big"), 2
        return None

    @staticmethod
    def _fast_record(dr: _Dir, fast: tuple[Any, int, int], data: bytes, pos: int, n: int
                     ) -> bytes | None:
        """The plaintext of the application data record at ``pos`` (``n`` bytes of body), its
        sequence number taken; None (nothing changed) if it is not one for the fast path."""
        aead, ivn, kind = fast
        seq = dr.seq
        try:
            if kind == 0:
                pt = aead.decrypt((ivn ^ seq).to_bytes(12, "big"), data[pos + 5:pos + 5 + n],
                                  data[pos:pos + 5])
                # TLSInnerPlaintext: content, the real type, zero padding
                if pt[-1] != 23:
                    pt = pt.rstrip(b"\0")
                    if not pt or pt[-1] != 23:
                        return None  # a handshake message or an alert: the general path
                pt = pt[:-1]
            elif kind == 1:
                if n < 24:
                    return None
                pt = aead.decrypt(dr.iv + data[pos + 5:pos + 13], data[pos + 13:pos + 5 + n],
                                  seq.to_bytes(8, "big") + b"\x17" + data[pos + 1:pos + 3]
                                  + (n - 24).to_bytes(2, "big"))
            else:
                if n < 16:
                    return None
                pt = aead.decrypt((ivn ^ seq).to_bytes(12, "big"), data[pos + 5:pos + 5 + n],
                                  seq.to_bytes(8, "big") + b"\x17" + data[pos + 1:pos + 3]
                                  + (n - 16).to_bytes(2, "big"))
        except (InvalidTag, ValueError, OverflowError, IndexError):
            return None
        dr.seq = seq + 1
        return pt

    def _fast_flush(self, dr: _Dir, pts: list[bytes], nfast: int, ts: float) -> None:
        dr.decrypted += nfast
        dr.fail_streak = 0
        self._count("records_decrypted", nfast)
        if pts:
            self._app_data(dr, pts[0] if len(pts) == 1 else b"".join(pts), ts, 0)

    def gap(self, from_client: bool, n: int, ts: float) -> None:
        """``n`` bytes of this direction were not captured: resynchronise on a record header
        and find the sequence number by trial."""
        dr = self.dirs[from_client]
        if dr.lent:
            self._lender.unlend(from_client)
        self._count("gaps")
        dr.seen += n
        dr.gap_bytes += n + len(dr.buf)
        if dr.buf:
            self._count("bytes_skipped", len(dr.buf))
        dr.buf = b""
        dr.resync = True
        dr.seq_known = False
        dr.hs = b""

    def close(self, from_client: bool, ts: float) -> None:
        dr = self.dirs[from_client]
        if dr.lent:
            self._lender.unlend(from_client)
        if dr.buf:
            self._count("bytes_truncated", len(dr.buf))
            dr.buf = b""
        if self.plain is not None:
            self._python_inner(self.plain.handback())
        if self.inner is not None:
            self.inner.close(dr.is_client, ts)
        if self.inner_h2 is not None:
            self.inner_h2.close(dr.is_client, ts)

    def finish(self, ts: float, timed_out: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        for fc in (True, False):
            self.close(fc, ts)  # (a C reader is given back to ``inner`` there)
        if self.inner is not None:
            self.inner.finish(ts, timed_out)
            if self.inner.non_http:
                self._count("decrypted_not_http")
        if self.inner_h2 is not None:
            self.inner_h2.finish(ts, timed_out)
        self._count(self.outcome())
        if self.outcome() in ("no_key", "mid_stream", "unsupported_cipher", "auth_failed"):
            k = f"{self.sni or '-'} ({self.alpn or ','.join(self.alpn_offered) or '-'})"
            if k not in self.undecrypted and len(self.undecrypted) >= MAX_UNDECRYPTED_KINDS:
                k = "other"
            self.undecrypted[k] = self.undecrypted.get(k, 0) + 1

    def outcome(self) -> str:
        """What became of this connection (one of the counted outcomes)."""
        decrypted = self.dirs[True].decrypted + self.dirs[False].decrypted
        if self.h2 and (decrypted or self.keys_state == "ok"):
            return "h2"  # decrypted, and HTTP/2 (``inner_h2``)
        if self.keys_state == "unsupported":
            return "unsupported_cipher"
        if decrypted:
            return "decrypted"
        if self.auth_failures:
            return "auth_failed"
        if not self.client_random and self.mid_stream:
            return "mid_stream"
        if (self.client_random and not self.server_random and not self.mid_stream
                and self._dir(False).seen == 0 and self._dir(True).seen <= self._hello_seen):
            # The server sent not a byte (refused, overloaded, reset) and the client nothing
            # after its hello: no handshake, no keys to log, no data; not a key-log problem.
            # (A server alert, a retry request, a cut hello, a one-sided capture: not this.)
            return "no_server_hello"
        if self.keys_state == "ok":
            return "decrypted"  # keys, but no record to decrypt (a handshake alone)
        return "no_key"

    # -- framing -------------------------------------------------------------------------------
    def _skipped(self, dr: _Dir, n: int) -> None:
        if n > 0:
            self._count("bytes_skipped", n)
            dr.gap_bytes += n

    @staticmethod
    def _find_record(data: bytes, pos: int) -> int:
        """The first offset from ``pos`` where a plausible record header starts, checked
        against the next header when that is in ``data`` too; -1 if none yet."""
        end = len(data)
        i = pos
        while True:
            j = data.find(b"\x03", i + 1)  # the version's major byte follows the type
            if j < 0 or j + 4 > end:
                return -1
            s = j - 1
            if plausible_header(data, s):
                nxt = s + 5 + ((data[s + 3] << 8) | data[s + 4])
                if nxt + 5 > end or plausible_header(data, nxt):
                    return s
            i = j

    def _record(self, dr: _Dir, ctype: int, header: bytes, body: bytes, ts: float) -> None:
        if ctype == 20 and self.version != 0x0304:
            # ChangeCipherSpec: this direction's next records are under the new keys (TLS 1.2)
            dr.encrypted = True
            dr.seq = 0
            dr.seq_known = True
            return
        if not dr.encrypted:
            if self.mid_stream and not self.client_random and ctype != 22:
                dr.encrypted = True  # picked up after the handshake
            elif ctype == 22:
                self._handshake(dr, body)
                return
            elif ctype == 23:
                self._count("early_data_records")
                return
            else:
                return  # a plaintext alert
        if ctype == 20:
            return  # TLS 1.3 middlebox-compatibility ChangeCipherSpec
        self._encrypted(dr, ctype, header, body, ts)

    # -- plaintext handshake -------------------------------------------------------------------
    def _handshake(self, dr: _Dir, body: bytes) -> None:
        buf = dr.hs + body
        pos = 0
        while len(buf) - pos >= 4:
            mtype = buf[pos]
            n = int.from_bytes(buf[pos + 1:pos + 4], "big")
            if n > MAX_HANDSHAKE:
                self._count("handshake_too_long")
                buf, pos = b"", 0
                break
            if len(buf) - pos < 4 + n:
                break
            msg = buf[pos + 4:pos + 4 + n]
            pos += 4 + n
            try:
                if mtype == 1:
                    self._client_hello(dr, msg)
                elif mtype == 2:
                    self._server_hello(msg)
            except (IndexError, ValueError):
                self._count("bad_hellos")
        dr.hs = buf[pos:]

    def _client_hello(self, dr: _Dir, m: bytes) -> None:
        if not dr.is_client:
            # The side taken for the server (no SYN, ports misleading) sent the ClientHello.
            self.swapped = not self.swapped
            for d in self.dirs.values():
                d.is_client = not d.is_client
        self.client_random = m[2:34]
        self._hello_seen = dr.seen
        p = 34
        p += 1 + m[p]  # session id
        p += 2 + int.from_bytes(m[p:p + 2], "big")  # cipher suites
        p += 1 + m[p]  # compression methods
        for etype, ext in _extensions(m, p):
            if etype == 0:  # server_name: list<2> of (type, name<2>)
                q = 2
                while q + 3 <= len(ext):
                    ln = int.from_bytes(ext[q + 1:q + 3], "big")
                    if ext[q] == 0:
                        self.sni = ext[q + 3:q + 3 + ln].decode("ascii", "replace")
                        break
                    q += 3 + ln
            elif etype == 16:
                self.alpn_offered = _alpn_list(ext)

    def _server_hello(self, m: bytes) -> None:
        self.version = int.from_bytes(m[0:2], "big")
        random = m[2:34]
        p = 34
        p += 1 + m[p]
        code = int.from_bytes(m[p:p + 2], "big")
        p += 3
        for etype, ext in _extensions(m, p):
            if etype == 43 and len(ext) >= 2:
                self.version = int.from_bytes(ext[0:2], "big")
            elif etype == 22:
                self.etm = True
                self._count("encrypt_then_mac")
            elif etype == 16:
                sel = _alpn_list(ext)
                if sel:
                    self.alpn = sel[0]
        if random == HRR_RANDOM:
            return  # HelloRetryRequest: a second ClientHello and the real ServerHello follow
        self.server_random = random
        self.suite_code = code
        self.suite = SUITES.get(code)
        if self.alpn == "h2":
            self.h2 = True
        if self.version == 0x0304:
            for d in self.dirs.values():
                d.encrypted = True
                d.epoch = "hs"
                d.seq = 0
                d.seq_known = True

    # -- keys ----------------------------------------------------------------------------------
    def _setup_keys(self) -> None:
        """Look the connection's secrets up (once they exist) and key both directions."""
        if self.suite_code is None or not self.client_random:
            self.keys_state = "no_key"
            return
        if self.suite is None or (self.suite.cipher == "aes-cbc" and self.version != 0x0303):
            self.keys_state = "unsupported"
            return
        secrets = self.keylog.get(self.client_random) if self.keylog is not None else None
        if not secrets:
            self.keys_state = "no_key"
            return
        s = self.suite
        if self.version == 0x0304:
            ok = False
            for is_client, hs_label, app_label in (
                    (True, "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0"),
                    (False, "SERVER_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0")):
                dr = self._dir(is_client)
                dr.app_secret = secrets.get(app_label, b"")
                hs = secrets.get(hs_label)
                if dr.epoch == "hs" and hs is not None:
                    dr.aead, dr.iv = self._aead13(hs)
                    ok = True
                elif dr.app_secret:
                    # no handshake secret: the application secret from the Finished on
                    dr.epoch = "app"
                    dr.aead, dr.iv = self._aead13(dr.app_secret)
                    ok = True
            self.keys_state = "ok" if ok else "no_key"
            return
        master = secrets.get("CLIENT_RANDOM")
        if master is None:
            self.keys_state = "no_key"
            return
        ck, civ, sk, siv = tls12_keys(s, master, self.client_random, self.server_random)
        for is_client, k, iv in ((True, ck, civ), (False, sk, siv)):
            dr = self._dir(is_client)
            dr.epoch = "12"
            dr.aead = s.aead(k)
            dr.iv = iv
        self.keys_state = "ok"

    def _dir(self, is_client: bool) -> _Dir:
        return self.dirs[is_client != self.swapped]

    def _aead13(self, secret: bytes) -> tuple[Any, bytes]:
        assert self.suite is not None
        k, iv = tls13_keys(self.suite, secret)
        return self.suite.aead(k), iv

    # -- decryption ----------------------------------------------------------------------------
    def _decrypt(self, dr: _Dir, aead: Any, iv: bytes, seq: int, ctype: int, header: bytes,
                 body: bytes) -> tuple[int, bytes] | None:
        """(content type, plaintext), or None if the tag does not verify."""
        try:
            if dr.epoch == "12":
                assert self.suite is not None
                if self.suite.cipher == "aes-cbc":
                    pt = cbc_open(self.suite, aead, iv, seq, header, body, self.etm)
                    return None if pt is None else (ctype, pt)
                if self.suite.cipher == "chacha20":
                    nonce, ct = _seq_nonce(iv, seq), body
                else:
                    if len(body) < 24:
                        return None
                    nonce, ct = iv + body[:8], body[8:]
                aad = (seq.to_bytes(8, "big") + header[:3]
                       + (len(ct) - 16).to_bytes(2, "big"))
                return ctype, aead.decrypt(nonce, ct, aad)
            pt = aead.decrypt(_seq_nonce(iv, seq), body, header)
        except (InvalidTag, ValueError, OverflowError):
            return None
        # TLSInnerPlaintext: content, the real type, zero padding
        end = len(pt)
        while end and pt[end - 1] == 0:
            end -= 1
        if not end:
            return None
        return pt[end - 1], pt[:end - 1]

    def _candidates(self, dr: _Dir, body: bytes) -> list[int]:
        if dr.seq_known:
            return [dr.seq]
        out = []
        if dr.epoch == "12" and self.suite is not None and self.suite.cipher == "aes-gcm":
            explicit = int.from_bytes(body[:8], "big")
            if 0 <= explicit - dr.seq <= 1 << 20:
                out.append(explicit)  # OpenSSL, GnuTLS and NSS send the sequence number
        out.extend(range(dr.seq, dr.seq + MAX_SEQ_SKIP))
        return out

    def _encrypted(self, dr: _Dir, ctype: int, header: bytes, body: bytes, ts: float) -> None:
        if self.keys_state == "" or (self.keys_state == "no_key" and self.keylog is not None
                                     and self.client_random
                                     and self.keylog.get(self.client_random)):
            self._setup_keys()
        if self.keys_state != "ok" or dr.aead is None:
            self._count("records_undecrypted")
            dr.seq += 1
            return
        if dr.dead:
            self._count("records_undecrypted")
            dr.seq += 1
            return
        got = None
        for seq in self._candidates(dr, body):
            got = self._decrypt(dr, dr.aead, dr.iv, seq, ctype, header, body)
            if got is not None:
                break
        if got is None and dr.epoch in ("hs", "app"):
            got = self._next_epoch(dr, ctype, header, body)
            if got is not None:
                seq = 0
        if got is None:
            self.auth_failures += 1
            self._count("auth_failures")
            dr.gap_bytes += 5 + len(body)  # its plaintext is lost: a gap for the HTTP reader
            dr.gap_records += 1
            dr.seq += 1
            dr.fail_streak += 1
            if dr.fail_streak >= MAX_FAIL_STREAK and not dr.decrypted:
                dr.dead = True
                self._count("directions_given_up")
            return
        lost, dr.gap_bytes = dr.gap_bytes, 0
        if lost:
            # The ciphertext lost was whole records (the one cut by the gap included, and those
            # that failed): less their framing, that many plaintext bytes are missing.
            k = dr.gap_records + max(0, seq - dr.seq)
            over = self._overhead(dr)
            if (dr.epoch == "12" and self.suite is not None and self.suite.cipher == "aes-cbc"
                    and k * (16384 + over) <= lost <= k * (16384 + over + 15)):
                lost = k * 16384  # full records: CBC padding (1 to 16 bytes) is not knowable
            else:
                lost = max(1, lost - k * over)
            dr.gap_records = 0
        dr.seq = seq + 1
        dr.seq_known = True
        dr.fail_streak = 0
        dr.decrypted += 1
        self._count("records_decrypted")
        itype, pt = got
        if itype == 23:
            self._app_data(dr, pt, ts, lost)
        elif itype == 22 and dr.epoch in ("hs", "app"):
            self._handshake13(dr, pt)

    def _overhead(self, dr: _Dir) -> int:
        """Bytes of a record that are not plaintext: header, explicit nonce, tag, inner type."""
        if dr.epoch != "12":
            return 5 + 16 + 1
        s = self.suite
        if s is not None and s.cipher == "aes-cbc":
            return 5 + 16 + s.mac_len + 1  # IV, MAC, and at least the padding length byte
        return 5 + 16 + (0 if s is not None and s.cipher == "chacha20" else 8)

    def _next_epoch(self, dr: _Dir, ctype: int, header: bytes, body: bytes
                    ) -> tuple[int, bytes] | None:
        """TLS 1.3: the record did not verify under the current keys; if the switch to the
        next keys was missed (the Finished or a KeyUpdate lost), try those from sequence 0."""
        if dr.epoch == "hs":
            nxt = dr.app_secret
        elif dr.app_secret:
            assert self.suite is not None
            nxt = tls13_next_secret(self.suite, dr.app_secret)
        else:
            return None
        if not nxt:
            return None
        aead, iv = self._aead13(nxt)
        got = self._decrypt(dr, aead, iv, 0, ctype, header, body)
        if got is None:
            return None
        self._count("key_switches_by_trial")
        if dr.epoch == "app":
            dr.app_secret = nxt
        dr.epoch = "app"
        dr.aead, dr.iv = aead, iv
        return got

    def _handshake13(self, dr: _Dir, pt: bytes) -> None:
        """Encrypted TLS 1.3 handshake messages: ALPN from EncryptedExtensions, Finished (the
        application keys follow), KeyUpdate (the next application keys follow)."""
        buf = dr.hs + pt
        pos = 0
        switch = ""
        while len(buf) - pos >= 4:
            mtype = buf[pos]
            n = int.from_bytes(buf[pos + 1:pos + 4], "big")
            if n > MAX_HANDSHAKE:
                self._count("handshake_too_long")
                buf, pos = b"", 0
                break
            if len(buf) - pos < 4 + n:
                break
            msg = buf[pos + 4:pos + 4 + n]
            pos += 4 + n
            if mtype == 8:  # EncryptedExtensions
                try:
                    for etype, ext in _extensions(msg, 0):
                        if etype == 16:
                            sel = _alpn_list(ext)
                            if sel:
                                self.alpn = sel[0]
                                if sel[0] == "h2":
                                    self.h2 = True
                except (IndexError, ValueError):
                    self._count("bad_hellos")
            elif mtype == 20 and dr.epoch == "hs":
                switch = "finished"
            elif mtype == 24 and dr.epoch == "app":
                switch = "key_update"
        dr.hs = buf[pos:]
        if switch == "finished" and dr.app_secret:
            dr.epoch = "app"
            dr.aead, dr.iv = self._aead13(dr.app_secret)
            dr.seq = 0
            dr.hs = b""
        elif switch == "key_update" and dr.app_secret:
            assert self.suite is not None
            dr.app_secret = tls13_next_secret(self.suite, dr.app_secret)
            dr.aead, dr.iv = self._aead13(dr.app_secret)
            dr.seq = 0
            dr.hs = b""
            self._count("key_updates")

    # -- plaintext out -------------------------------------------------------------------------
    def _app_data(self, dr: _Dir, pt: bytes, ts: float, lost: int) -> None:
        if not pt:
            return
        if self.h2 or (self.inner is None and self.plain is None and dr.is_client
                       and pt.startswith(H2_PREFACE[:14])):
            self.h2 = True
            self._count("h2_bytes", len(pt))
            self._h2_data(dr, pt, ts, lost)
            return
        plain = self.plain
        if plain is not None:
            if not lost:
                if self._sfx_key != (self.outer.retransmits, self.version, self.suite_code,
                                     self.sni, self.alpn, self.alpn_offered):
                    self._set_suffix()
                back = plain.feed(0 if dr.is_client else 1, pt, ts)
                if back is not None:
                    self._python_inner(back)
                return
            self._python_inner(plain.handback())
        inner = self.inner
        if inner is None:
            resync = self.mid_stream or bool(lost)
            if self.new_plain is not None and not resync:
                # the common case: read in C (same exchanges, as JSONL lines), given back to a
                # Python reader when it is not (see ``replay._fastpath.Plain``)
                o = self.outer
                self.plain = self.new_plain(o.conn_id, self._key(), o.max_body)
                self._app_data(dr, pt, ts, 0)
                return
            inner = self._new_inner(resync)
        elif lost:
            inner.gap(dr.is_client, lost, ts)
        inner.data(dr.is_client, pt, ts)

    def _key(self) -> ConnKey:
        key = self.outer.conn
        if self.swapped:
            key = ConnKey(key.server_ip, key.server_port, key.client_ip, key.client_port)
        return key

    def _new_inner(self, resync: bool) -> HttpConnection:
        o = self.outer
        inner = self.inner = HttpConnection(self._key(), o.conn_id, self._emit, o.stats,
                                            max_body=o.max_body, resync=resync)
        inner.retransmits = o.retransmits
        return inner

    def _python_inner(self, back: tuple) -> None:
        """The C reader gave the plaintext back (``replay._fastpath.Plain``): ``inner`` from
        its checkpoint (``n``, each reader's state), and the feeds since replayed through it."""
        self.plain = None
        n, client, server, log = back
        inner = self._new_inner(False)
        inner.import_state(n, client, server)
        for d, ts, data in log:
            inner.data(d == 0, data, ts)

    def _set_suffix(self) -> None:
        """What follows the response in the C reader's lines: the completeness and meta that
        ``_emit`` gives an exchange, as ``replay.formats.jsonl`` writes them."""
        import orjson

        rt = self.outer.retransmits
        self._sfx_key = (rt, self.version, self.suite_code, self.sni, self.alpn,
                         self.alpn_offered)
        sfx = b',"completeness":{"retransmits":%d}' % rt if rt else b""
        self.plain.set_suffix(sfx + b',"meta":' + orjson.dumps({"tls": self.info()}))

    def _h2_data(self, dr: _Dir, pt: bytes, ts: float, lost: int) -> None:
        h = self.inner_h2
        if h is None:
            from replay.h2.reader import H2Connection  # only for HTTP/2 inside TLS

            o = self.outer
            key = o.conn
            if self.swapped:
                key = ConnKey(key.server_ip, key.server_port, key.client_ip, key.client_port)
            if self.h2_stats is None:
                self.h2_stats = {}
            mid = self.mid_stream or (dr.is_client and not pt.startswith(H2_PREFACE[:14]))
            h = self.inner_h2 = H2Connection(key, o.conn_id, self._emit, self.h2_stats,
                                             max_body=o.max_body, mid_stream=mid, via="tls")
        elif lost:
            h.gap(dr.is_client, lost, ts)
        h.feed(dr.is_client, pt, ts)

    def _emit(self, ex: Exchange) -> None:
        ex.meta["tls"] = self.info()
        ex.completeness.retransmits = self.outer.retransmits  # TCP's count, not the inner's
        self.outer.emit(ex)


def _extensions(m: bytes, p: int) -> list[tuple[int, bytes]]:
    """The extensions of a hello at ``p`` (their length first); [] if there are none."""
    if p + 2 > len(m):
        return []
    end = min(len(m), p + 2 + int.from_bytes(m[p:p + 2], "big"))
    p += 2
    out = []
    while p + 4 <= end:
        etype = int.from_bytes(m[p:p + 2], "big")
        n = int.from_bytes(m[p + 2:p + 4], "big")
        out.append((etype, m[p + 4:p + 4 + n]))
        p += 4 + n
    return out


def _alpn_list(ext: bytes) -> list[str]:
    out = []
    q = 2
    while q < len(ext):
        n = ext[q]
        out.append(ext[q + 1:q + 1 + n].decode("ascii", "replace"))
        q += 1 + n
    return out
