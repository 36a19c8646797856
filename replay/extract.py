"""Captures to Exchanges: decode -> reassemble -> HTTP/1.x, with a summary of everything dropped.

``Extractor`` is the sans-I/O composition (frames and timestamps in, Exchanges out) used by both
``shadowtap extract`` (files) and the appliance's live capture (AF_PACKET ring); ``extract_file``
is the file edge.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from replay._native import load_c
from replay.formats.jsonl import SCHEMA_VERSION, conn_to_record, exchange_from_record
from replay.formats.pcap import CaptureReader
from replay.http1 import FOREIGN, HttpConnection, looks_like_request, looks_like_response
from replay.model import ConnKey, Exchange, Request, Response
from replay.packets import SUPPORTED_SUMMARY, Decoder, describe_key, key_ports
from replay.tcp import Reassembler, _port_classify
from replay.tls.keylog import KeyLog, looks_like_tls


class Lines:
    """Finished JSONL lines from the native fast path (``extract_file(lines=True)``): ``data``
    is exactly what ``JsonlWriter.write`` writes for those exchanges, ``n`` how many."""

    __slots__ = ("data", "n")

    def __init__(self, data: bytes, n: int) -> None:
        self.data = data
        self.n = n


@dataclass
class Summary:
    """What an extraction saw and what it could not use. Every drop has a reason."""

    files: list[str] = field(default_factory=list)
    packets: int = 0
    bytes: int = 0
    tcp_segments: int = 0
    connections: int = 0
    http_connections: int = 0
    non_http_streams: int = 0
    exchanges: int = 0
    incomplete_exchanges: int = 0
    gaps: int = 0
    gap_bytes: int = 0
    bytes_skipped: int = 0
    retransmits: int = 0
    tunnels: int = 0
    desync_messages: int = 0
    """Messages whose framing could not be trusted (request smuggling shapes, RFC 9112 §11.2):
    never replayed, and the bytes after them on their connection not read as messages."""
    weird: dict[str, int] = field(default_factory=dict)
    """Zeek-style weirds by reason (``replay.http1.WEIRD_REASONS``): a security signal."""
    vxlan_packets: int = 0
    skipped_packets: dict[str, int] = field(default_factory=dict)
    tcp: dict[str, int] = field(default_factory=dict)
    http: dict[str, int] = field(default_factory=dict)
    tls: dict[str, int] = field(default_factory=dict)
    """TLS connections by outcome (``decrypted``, ``no_key``, ``auth_failed``, ``h2``,
    ``mid_stream``, ``unsupported_cipher``, ``no_server_hello``) and record counters
    (``replay.tls.records``)."""
    tls_undecrypted: dict[str, int] = field(default_factory=dict)
    """TLS connections that were not decrypted, by ``"SNI (ALPN)"``."""
    h2: dict[str, int] = field(default_factory=dict)
    """HTTP/2 (``replay.h2``): ``connections`` (``via_tls``, ``via_h2c``, ``via_upgrade``),
    ``streams``, ``exchanges``, ``grpc_calls``, and errors by kind (``replay.h2.reader.
    ERROR_KINDS``: bounded HPACK bombs, CONTINUATION floods, bad frames...)."""
    keylog_keys: int = 0
    """Client randoms with secrets in the key logs given (``--keylog``, pcapng DSBs)."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["packets_per_second"] = round(self.packets / self.seconds) if self.seconds else None
        return d


class Extractor:
    """Feed frames with ``feed(ts, linktype, frame)``; Exchanges go to ``emit``.

    ``port`` narrows to connections with that port on either side; without it, HTTP is detected
    by content on any port.
    """

    def __init__(
        self,
        emit: Callable[[Exchange], None],
        *,
        port: int | None = None,
        id_prefix: str = "",
        max_connections: int = 100_000,
        max_buffer: int = 4 * 1024 * 1024,
        idle_timeout: float = 120.0,
        native: bool = True,
        emit_line: Callable[[bytes, int, bytes], None] | None = None,
        keylog: KeyLog | None = None,
    ) -> None:
        self._emit_cb = emit
        self.keylog = keylog
        """Secrets for TLS connections (``replay.tls``); without it they are reported, by SNI
        and ALPN, as having no key."""
        self.tls_stats: dict[str, int] = {}
        self.tls_undecrypted: dict[str, int] = {}
        self.h2_stats: dict[str, int] = {}
        self._tls_cls: Any = None
        self._h2_cls: Any = None
        self._emit_line = emit_line
        """With the native fast path: where the exchanges it reads go as finished JSONL lines
        (``JsonlWriter``'s bytes exactly, in blocks of whole lines, with their number and each
        one's last timestamp as packed doubles) instead of as Exchanges, for
        a JSONL file that is the only consumer. Exchanges the Python code reads still go to
        ``emit``, in order."""
        self._lines_seen = 0
        self.port = port
        self.id_prefix = id_prefix
        self.decoder = Decoder()
        self.http_stats: dict[str, int] = {}
        self.reasm = Reassembler(
            self._factory,
            classify=self._classify,
            max_connections=max_connections,
            max_buffer=max_buffer,
            idle_timeout=idle_timeout,
        )
        self.n_conn = 0
        self.http_conns = 0
        self.exchanges = 0
        self.incomplete = 0
        self.packets = 0
        self.bytes = 0
        self.segments = 0
        self._slow_segments = 0
        fast = load_c("replay._fastpath", "FastPath") if native else None
        self.native: Any = fast(self, self.reasm) if fast is not None else None
        """The common case in C (``replay/_fastpath.c``); None runs everything in Python."""
        self.reasm.native = self.native

    def set_emit_line(self, emit_line: Callable[[bytes, int, bytes], None] | None) -> None:
        """Switch between JSONL lines and Exchanges for connections adopted from now on (the
        appliance's pipeline reload); lines still coming from connections adopted before a
        switch to Exchanges are turned back into Exchanges."""
        self._emit_line = emit_line
        if self.native is not None:
            self.native.set_lines(emit_line is not None)

    def _lines_out(self, blob: bytes, n: int, ts: bytes) -> None:
        """Lines from the native path (called from C)."""
        cb = self._emit_line
        if cb is not None:
            cb(blob, n, ts)
            return
        for line in blob.splitlines():
            self._emit_cb(exchange_from_record(orjson.loads(line)))

    def _emit(self, ex: Exchange) -> None:
        if self.native is not None:
            self.native.flush()  # the native path's lines so far go first: order is kept
        self.exchanges += 1
        if not ex.completeness.complete:
            self.incomplete += 1
        self._emit_cb(ex)

    def _factory(self, ckey: bytes, syn: bool, from_start: bool) -> HttpConnection | None:
        if self.port is not None and self.port not in key_ports(ckey):
            return None
        self.n_conn += 1
        src, sport, dst, dport = describe_key(ckey)
        self.http_conns += 1
        h = HttpConnection(
            ConnKey(src, sport, dst, dport),
            f"{self.id_prefix}c{self.n_conn}",
            self._emit,
            self.http_stats,
            resync=not from_start,
        )
        h.sniff = self._tls_sniff
        h.h2c = self._h2c_upgrade
        return h

    def _tls_sniff(self, conn: HttpConnection, from_client: bool, data: bytes,
                   ts: float) -> bool:
        """A stream's first bytes are not HTTP/1: if they are TLS records, a
        ``replay.tls.records.TlsConnection`` takes the connection over (its decrypted
        application data goes to an HTTP/1 reader of its own). The native fast path gives
        such connections back at their first bytes: it reads only HTTP/1 heads."""
        mid = conn.client.resyncing
        if not looks_like_tls(data, not mid) or (mid and len(data) < 5):
            return self._h2_sniff(conn, from_client, data, ts, mid)
        if self._tls_cls is None:
            from replay.tls.records import TlsConnection  # imports cryptography: only now

            self._tls_cls = TlsConnection
        tls = self._tls_cls(conn, self.keylog, self.tls_stats, self.tls_undecrypted,
                            mid_stream=mid)
        tls.h2_stats = self.h2_stats
        if self.native is not None and self._emit_line is not None:
            tls.new_plain = self._new_plain  # decrypted HTTP/1 read in C, as JSONL lines
        if self.native is not None:
            tls.new_sink = self.native.sink  # HTTP/2's records decrypted in C (its reader fed)
        conn.foreign = tls
        for r in (conn.client, conn.server):
            if r.buf:
                self.http_stats["bytes_skipped"] = self.http_stats.get("bytes_skipped",
                                                                       0) + len(r.buf)
                r.buf = b""
            r.state = FOREIGN
        tls.feed(from_client, data, ts)
        return True

    def _h2_sniff(self, conn: HttpConnection, from_client: bool, data: bytes, ts: float,
                  mid: bool) -> bool:
        """Cleartext HTTP/2 (h2c): the client preface, a server's first SETTINGS frame, or (a
        connection picked up mid-way) bytes that tile into plausible frames: an
        ``replay.h2.H2Connection`` takes the connection over."""
        preface = from_client and data.startswith(b"PRI * HTTP/2.0\r\n")
        settings = (not from_client and not mid and len(data) >= 9 and data[3] == 4
                    and data[4] == 0 and data[5:9] == b"\0\0\0\0"
                    and ((data[0] << 16) | (data[1] << 8) | data[2]) % 6 == 0)
        if preface or settings:
            h2 = True
        else:
            # picked up mid-connection, or after a gap at the start: frames by their shape,
            # from any offset (a segment may start inside a frame); else only from the first
            # byte (cheap: one header looked at, for most streams that are not HTTP/2)
            if self._h2_cls is None:
                self._load_h2()
            if mid or conn.client.after_gap or conn.server.after_gap:
                h2 = self._h2_cls[1](data)
            else:
                h2 = self._h2_cls[2](data)
            mid = mid or h2
        if not h2:
            return False
        h = self._h2_take(conn, mid, "h2c")
        h.feed(from_client, data, ts)  # (a server's SETTINGS first: the preface still expected)
        return True

    def _load_h2(self) -> None:
        from replay.h2.reader import H2Connection, find_h2_frames, looks_like_h2_frames

        self._h2_cls = (H2Connection, find_h2_frames, looks_like_h2_frames)

    def _h2_take(self, conn: HttpConnection, mid: bool, via: str) -> Any:
        if self._h2_cls is None:
            self._load_h2()
        h = self._h2_cls[0](conn.conn, conn.conn_id, conn.emit, self.h2_stats, mid_stream=mid,
                            via=via, first_n=conn.n)
        h.outer = conn
        conn.foreign = h
        for r in (conn.client, conn.server):
            if r.buf and via != "upgrade":
                self.http_stats["bytes_skipped"] = self.http_stats.get("bytes_skipped",
                                                                       0) + len(r.buf)
                r.buf = b""
            r.state = FOREIGN
        return h

    def _h2c_upgrade(self, conn: HttpConnection, ex: Exchange, rest: bytes, ts: float) -> None:
        """``Upgrade: h2c`` answered 101 (called by ``replay.http1``): the rest of the
        connection is HTTP/2; stream 1 is the upgraded request, whose exchange (the 101 as its
        interim response) the HTTP/2 reader finishes."""
        client_buf = conn.client.buf
        conn.client.buf = b""
        h = self._h2_take(conn, False, "upgrade")
        h.adopt_upgrade(ex)
        if client_buf:
            h.feed(True, client_buf, ts)
        if rest:
            h.feed(False, rest, ts)

    @staticmethod
    def _classify(key: bytes, payload: bytes) -> bool:
        """Without a SYN, tell the client by what it says, else by ports."""
        if payload:
            if looks_like_request(payload):
                return True
            if looks_like_response(payload):
                return False
        return _port_classify(key, payload)

    def _fast_exchange(self, h: HttpConnection, n: int, rq: tuple, rs: tuple,
                       interim: list[tuple] | None, t0: float, t1: float, t2: float,
                       t3: float) -> None:
        """An exchange the native fast path read completely (called from C)."""
        ex = Exchange(f"{h.conn_id}.{n}", h.conn, Request(*rq), Response(*rs),
                      [Response(*x) for x in interim] if interim else [], t0, t1, t2, t3)
        self.exchanges += 1
        self._emit_cb(ex)

    def _line_parts(self, h: HttpConnection) -> tuple[bytes, bytes]:
        """The fixed parts of a connection's JSONL lines, made by the JSONL encoder itself
        (called from C): ``{"v":1,"id":"<conn id>.`` and ``,"conn":{...}``."""
        head = orjson.dumps({"v": SCHEMA_VERSION, "id": f"{h.conn_id}."})
        return head[:-2], b',"conn":' + orjson.dumps(conn_to_record(h.conn))

    def _new_plain(self, conn_id: str, key: ConnKey, max_body: int) -> Any:
        """The C HTTP/1 reader of a decrypted TLS connection (``replay._fastpath.Plain``), its
        lines' fixed parts made as ``_line_parts`` makes them."""
        head = orjson.dumps({"v": SCHEMA_VERSION, "id": f"{conn_id}."})
        return self.native.plain(head[:-2], b',"conn":' + orjson.dumps(conn_to_record(key)),
                                 max_body)

    @staticmethod
    def _float_text(v: float) -> bytes:
        """A timestamp as the JSONL encoder writes it (called from C for exponent notation)."""
        return orjson.dumps(v)

    def _slow_frame(self, ts: float, lt: int, frame: bytes) -> None:
        """A frame the native fast path does not decode (called from C): the general decoder."""
        seg = self.decoder.decode(frame, lt, ts)
        if seg is not None:
            if seg[3] or seg[2] & 7:
                self._slow_segments += 1
                self.reasm.segment(ts, seg[0], seg[1], seg[2], seg[3], seg[4])
            elif self.reasm.has_holes():
                self.reasm.ack_only(ts, seg[0], seg[4])

    def _native_counts(self) -> None:
        st = self.native.stats()
        self.packets = st["packets"]
        self.bytes = st["bytes"]
        self.segments = st["segments"] + self._slow_segments
        self.exchanges += st["lines"] - self._lines_seen
        self._lines_seen = st["lines"]

    def run_pcap(self, buf: bytes, pos: int, little: bool, scale: float, linktype: int,
                 max_record: int) -> tuple[int, int, int]:
        """Classic pcap records in ``buf`` from ``pos``, walked in C (native only):
        (position after the last whole record, frames, length of a corrupt record or 0)."""
        r = self.native.run_pcap(buf, pos, little, scale, linktype, max_record)
        self._native_counts()
        return r

    def run_ring(self, mm: Any, block: int, block_size: int, block_count: int,
                 linktype: int) -> tuple:
        """The TPACKET_V3 blocks user space owns, walked in C (native only; see
        ``appliance.live.capture.RingSource.poll_native``)."""
        r = self.native.run_ring(mm, block, block_size, block_count, linktype)
        self._native_counts()
        return r

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        """One frame. (Loops should hand ``run`` an iterable: it hoists the lookups.)"""
        self.run(((ts, linktype, frame),))

    def run(self, frames: Iterable[tuple[float, int, bytes]]) -> int:
        """The hot loop: ``feed`` for every frame, with lookups hoisted. Returns frames read."""
        if self.native is not None:
            n = self.native.run(frames)
            self._native_counts()
            return n
        decode = self.decoder.decode
        segment = self.reasm.segment
        ack_only = self.reasm.ack_only
        holes = self.reasm.has_holes
        packets = nbytes = segs = 0
        for ts, lt, frame in frames:
            packets += 1
            n = len(frame)
            nbytes += n
            # Fast path, inlined: Ethernet, no VLAN, IPv4 without options or fragments, TCP.
            # Anything else (or anything odd) takes the general decoder.
            if (lt == 1 and n >= 54 and frame[12] == 8 and frame[13] == 0 and frame[14] == 0x45
                    and frame[23] == 6 and not (frame[20] & 0x3F or frame[21])):
                end = 14 + ((frame[16] << 8) | frame[17])
                po = 34 + ((frame[46] >> 4) << 2)
                if 54 <= po <= end <= n:
                    flags = frame[47] & 0x3F
                    if po == end and not flags & 7:
                        # A bare ACK: nothing to reassemble, but it can close a capture hole.
                        if ack_only is not None and holes():
                            ack_only(ts, frame[26:38], int.from_bytes(frame[42:46], "big"))
                        continue
                    segs += 1
                    segment(ts, frame[26:38], int.from_bytes(frame[38:42], "big"), flags,
                            frame[po:end], int.from_bytes(frame[42:46], "big"))
                    continue
            seg = decode(frame, lt, ts)
            if seg is not None:
                if seg[3] or seg[2] & 7:
                    segs += 1
                    segment(ts, seg[0], seg[1], seg[2], seg[3], seg[4])
                elif holes():
                    self.reasm.ack_only(ts, seg[0], seg[4])
        self.packets += packets
        self.bytes += nbytes
        self.segments += segs
        return packets

    def finish(self) -> None:
        """End of input: close every open connection (their exchanges are emitted)."""
        self.reasm.finish()
        self.decoder.frags.finish(self.decoder.skipped)

    def fill(self, s: Summary) -> None:
        """Add this extractor's counts to a summary."""
        t = self.reasm.stats
        s.packets += self.packets
        s.bytes += self.bytes
        s.tcp_segments += self.segments
        s.connections += t.get("connections", 0)
        tls = self.tls_stats
        s.http_connections += (self.http_conns - t.get("non_http_streams", 0)
                               - tls.get("connections", 0) + tls.get("decrypted", 0)
                               + tls.get("h2", 0))
        s.non_http_streams += t.get("non_http_streams", 0)
        s.exchanges += self.exchanges
        s.incomplete_exchanges += self.incomplete
        s.gaps += t.get("gaps", 0)
        s.gap_bytes += t.get("gap_bytes", 0)
        s.retransmits += t.get("retransmits", 0)
        s.bytes_skipped += self.http_stats.get("bytes_skipped", 0) + t.get("bytes_ignored", 0)
        s.tunnels += self.http_stats.get("tunnels", 0)
        s.desync_messages += self.http_stats.get("desync_messages", 0)
        for k, v in list(self.http_stats.items()):
            if k.startswith("weird:"):
                s.weird[k[6:]] = s.weird.get(k[6:], 0) + v
        s.vxlan_packets += self.decoder.vxlan
        if self.keylog is not None:
            s.keylog_keys = max(s.keylog_keys, len(self.keylog))
        for src, dst in ((self.decoder.skipped, s.skipped_packets), (t, s.tcp),
                         (self.http_stats, s.http), (tls, s.tls), (self.h2_stats, s.h2),
                         (self.tls_undecrypted, s.tls_undecrypted)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v


def extract_file(
    path: str | Path,
    *,
    port: int | None = None,
    summary: Summary | None = None,
    id_prefix: str = "",
    progress: Callable[[int, int], None] | None = None,
    lines: bool = False,
    keylog: KeyLog | None = None,
    **limits: Any,
) -> Iterator[Exchange | Lines]:
    """Exchanges from one capture file, in the order they completed.

    With ``lines``, exchanges that the native fast path read come as finished JSONL lines
    (``Lines``: one or more lines, exactly what ``JsonlWriter.write`` would write for them) and
    the others as Exchanges, in order: for writing a JSONL file without building objects nobody
    else reads.

    ``keylog`` holds the secrets to decrypt TLS connections with (``replay.tls``); pcapng
    Decryption Secrets Blocks in the file are added to it (or to a key log of its own).

    Raises ``FormatError`` for a file that is not a capture. A damaged file yields what came
    before the damage, and the problem is added to ``summary.errors``.
    """
    with gc_tuned():
        yield from _extract(path, port, summary, id_prefix, progress, lines, keylog, limits)


@contextmanager
def gc_tuned() -> Iterator[None]:
    """Extraction allocates millions of short-lived small objects while holding long-lived
    connection state: with the default thresholds the collector re-scans that state constantly
    (~10% of the time). Raise the young-generation threshold for the duration. (The appliance's
    workers run with the same threshold; ``shadowtap sanitise`` uses this too.)"""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], 100_000), old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _extract(path: str | Path, port: int | None, summary: Summary | None, id_prefix: str,
             progress: Callable[[int, int], None] | None, lines: bool,
             keylog: KeyLog | None, limits: dict[str, Any]) -> Iterator[Exchange | Lines]:
    out: list[Any] = []
    def add_lines(b: bytes, n: int, _ts: bytes) -> None:
        out.append(Lines(b, n))

    if keylog is None:
        keylog = KeyLog()  # for the file's own Decryption Secrets Blocks, if any
    ex = Extractor(out.append, port=port, id_prefix=id_prefix,
                   emit_line=add_lines if lines else None, keylog=keylog, **limits)
    t0 = time.perf_counter()
    with CaptureReader(path) as reader:
        reader.on_secrets = keylog.add_dsb
        if ex.native is not None and reader.kind == "pcap":
            # Records walked in C too: no tuple per frame.
            for _ in reader.walk_pcap(ex.run_pcap):
                if out:
                    yield from out
                    out.clear()
                if progress is not None:
                    progress(reader.position, reader.size)
        else:
            frames = iter(reader)
            batch = 4096
            while True:
                n = ex.run(islice(frames, batch))
                if out:
                    yield from out
                    out.clear()
                if progress is not None:
                    progress(reader.position, reader.size)
                if n < batch:
                    break
        ex.finish()
        yield from out
        out.clear()
        if summary is not None:
            summary.files.append(str(path))
            ex.fill(summary)
            summary.seconds += time.perf_counter() - t0
            if reader.error:
                summary.errors.append(reader.error)
            if reader.unsupported_linktypes:
                lts = ", ".join(str(x) for x in sorted(reader.unsupported_linktypes))
                summary.skipped_packets["unsupported_linktype_blocks"] = (
                    summary.skipped_packets.get("unsupported_linktype_blocks", 0)
                    + reader.skipped_blocks
                )
                if ex.packets == 0:
                    summary.errors.append(
                        f"{path}: no interface with a supported link type (found {lts}); "
                        f"shadowtap reads {SUPPORTED_SUMMARY}"
                    )
                else:
                    summary.warnings.append(
                        f"{path}: packets of interfaces with unsupported link types {lts} "
                        "were skipped"
                    )
