"""HTTP/2 over a reassembled byte stream, observed passively, sans-I/O: bytes in, Exchanges out.

``H2Connection`` is fed both directions of one connection, exactly as an HTTP/1 reader is
(``feed(from_client, data, ts)``, ``gap(from_client, n, ts)``, ``close(from_client, ts)``,
``finish(ts, timed_out)``), and turns each stream into an ``Exchange`` (version ``HTTP/2``):

- frames are cut by their 9-byte header and parsed with ``hyperframe`` (DATA, HEADERS and
  CONTINUATION, the frames of every stream, by a few lines here that check what hyperframe
  checks: padding, priority, stream 0); a frame that does not parse is counted and skipped,
  never raised. With ``replay/h2/_hpack.c`` built, the usual frames (complete DATA frames and
  HEADERS frames that end their block) are cut, HPACK-decoded and their heads split into
  request/response parts in C, and their usual events handled there too (``RUN``: a request
  head opening a stream, a final response head, body chunks within the limits, the end and
  emission of a plain exchange, its objects made as their dataclasses make them); the other
  events of those frames go to ``_events`` (and ``_done``, ``_emit``), the definition, as they
  come; every other frame, and all of it without the build, goes through ``_frame``;
- header blocks (HEADERS/PUSH_PROMISE + CONTINUATION) are decoded by one passive HPACK decoder
  per direction (``replay.h2.hpack_passive``): a capture that starts mid-connection, or lost a
  header block in a gap, decodes what is knowable and marks the fields that reference unknown
  entries (notes ``hpack-unknown:N``, ``meta["h2"]["hpack_unknown"]``);
- its own stream state machine (not ``h2.H2Connection``, an endpoint that rejects an
  observer's view): request headers, body, trailers; interim (1xx) and final response headers,
  body, trailers; END_STREAM on each side; RST_STREAM and GOAWAY noted on the exchanges they
  cut (``completeness.notes``, ``meta["h2"]``);
- pseudo-headers map to the model: ``:method`` and ``:path`` (``:authority`` for CONNECT) to
  ``Request.method``/``target``, ``:status`` to ``Response.status``; ``:authority``, ``:scheme``
  and ``:protocol`` stay at the front of the request headers as sent (``Request.host`` reads
  ``:authority``);
- hostile input is bounded and counted (``stats``): header lists (HPACK bombs), CONTINUATION
  floods, frames larger than allowed, streams tracked at once; interleaved streams are the
  normal case; a gap inside a DATA frame is recorded on that stream's body and the framing
  kept, any other gap resynchronises on the next plausible frame header.

Where the connection comes from: TLS with ALPN ``h2`` (``replay.tls.records``), h2c with prior
knowledge (the client preface, ``replay.extract``), and ``Upgrade: h2c`` answered 101
(``replay.http1``; stream 1 is the upgraded HTTP/1 request, the 101 its interim response).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hyperframe.exceptions import HyperframeError
from hyperframe.frame import Frame

from replay._native import load_c
from replay.h2.hpack_passive import C_DECODE, DECODE, UNKNOWN, PassiveDecoder
from replay.model import Completeness, ConnKey, Exchange, Request, Response

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_MAX_BODY = 64 * 1024 * 1024
MAX_FRAME = 1 << 24
"""The largest frame payload HTTP/2 can express (SETTINGS_MAX_FRAME_SIZE ≤ 2^24 - 1)."""
MAX_BLOCK = 512 * 1024
"""Bytes of one header block (HEADERS/PUSH_PROMISE and its CONTINUATIONs) kept at most."""
MAX_CONTINUATIONS = 256
"""CONTINUATION frames of one header block at most: a flood is cut off here (counted)."""
MAX_STREAMS = 1024
"""Streams tracked at once; frames of streams beyond are counted and skipped."""
MAX_RESYNC_SCAN = 1 << 20

ERROR_CODES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
               4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR",
               7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR",
               11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}

_FLAGS = {0: 0x09, 1: 0x2D, 2: 0, 3: 0, 4: 0x01, 5: 0x0C, 6: 0x01, 7: 0, 8: 0, 9: 0x04}
"""Flags each frame type defines (DATA, HEADERS, ..., CONTINUATION)."""

ERROR_KINDS = ("frame_errors", "hpack_errors", "hpack_bad_index", "header_list_too_large",
               "continuation_flood", "header_block_too_large", "frames_too_large",
               "streams_over_limit", "protocol_errors", "bytes_skipped", "bodies_capped")
"""The counters that are errors, by kind (in the extract summary)."""


def plausible_frame(data: bytes, pos: int, max_frame: int = 16384) -> bool:
    """Could the 9 bytes at ``pos`` be an HTTP/2 frame header?"""
    length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
    ftype = data[pos + 3]
    flags = data[pos + 4]
    if ftype > 9 or length > max_frame or flags & ~_FLAGS[ftype] or data[pos + 5] & 0x80:
        return False
    sid = int.from_bytes(data[pos + 5:pos + 9], "big")
    if ftype in (4, 6, 7):
        if sid:
            return False
        if ftype == 4:
            return length % 6 == 0 and not (flags & 1 and length)
        if ftype == 6:
            return length == 8
        return length >= 8
    if ftype == 8:
        return length == 4
    if not sid:
        return False
    if ftype == 3:
        return length == 4
    if ftype == 2:
        return length == 5
    return True


def looks_like_h2_frames(data: bytes) -> bool:
    """Do these bytes (a stream's first captured segment, picked up mid-connection) tile into
    plausible HTTP/2 frames from their start (two at least, or one that ends exactly)?"""
    pos = 0
    n = 0
    end = len(data)
    while pos + 9 <= end:
        if not plausible_frame(data, pos, MAX_FRAME - 1):
            return False
        pos += 9 + ((data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2])
        n += 1
        if n >= 2 and pos >= end:
            return True
    return pos == end and n >= 1 and end >= 17


def find_h2_frames(data: bytes, scan: int = 16384) -> bool:
    """Do these bytes (a stream's first segment after a gap, or picked up mid-connection,
    possibly starting inside a frame) hold a chain of plausible HTTP/2 frames, from some offset
    in the first ``scan`` bytes to the end of ``data`` (two complete frames at least; the last
    may be cut by the segment's end)?"""
    end = len(data)
    for i in range(min(scan, max(0, end - 17))):
        if data[i + 3] > 9 or not plausible_frame(data, i):
            continue
        pos, n, cut = i, 0, False
        # frames of the default maximum size, on streams below 2^24 (what real connections
        # use): found at any offset, a looser shape would match other protocols' bytes
        while (pos + 9 <= end and plausible_frame(data, pos)
               and int.from_bytes(data[pos + 5:pos + 9], "big") < 1 << 24):
            nxt = pos + 9 + ((data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2])
            if nxt > end:
                cut = True
                pos = end  # a frame cut by the segment's end
                break
            pos = nxt
            n += 1
        if pos == end and (n >= 3 or (n >= 2 and not cut and i == 0)):
            return True
    return False


class _Side:
    """One direction: framing, its HPACK decoder, the header block being read."""

    __slots__ = (
        "block",
        "block_bytes",
        "block_end_stream",
        "block_frames",
        "block_kind",
        "block_promised",
        "block_sid",
        "buf",
        "client",
        "closing",
        "hpack",
        "max_frame",
        "partial",
        "preface",
        "resync",
        "skipped",
    )

    def __init__(self, client: bool, stats: dict[str, int], mid_stream: bool) -> None:
        self.client = client
        self.buf = b""
        self.preface = client and not mid_stream
        """The client preface is still expected (then frames)."""
        self.resync = mid_stream
        self.hpack = PassiveDecoder(stats, known_all=not mid_stream)
        self.max_frame = MAX_FRAME - 1 if mid_stream else 16384
        """What this side may send (the peer's SETTINGS_MAX_FRAME_SIZE); unknown mid-stream."""
        self.block: list[bytes] = []
        self.block_sid = 0
        self.block_kind = ""
        self.block_end_stream = False
        self.block_frames = 0
        self.block_bytes = 0
        self.block_promised = 0
        self.partial: tuple[int, int, bool] | None = None
        """(stream, bytes left, END_STREAM) of a DATA frame cut by a gap: those bytes go to the
        stream's body as they come, then framing resumes after them."""
        self.skipped = 0
        self.closing = False
        """The direction ended: a frame found by resynchronisation is taken unchecked."""


@dataclass(slots=True)
class _Msg:
    body: list[bytes] = field(default_factory=list)
    length: int = 0
    """Body bytes seen (kept or not): offsets of gaps."""
    kept: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    capped: bool = False
    ended: bool = False


@dataclass(slots=True)
class _Stream:
    sid: int
    ex: Exchange
    req: _Msg = field(default_factory=_Msg)
    resp: _Msg = field(default_factory=_Msg)
    final: bool = False
    """A final (non-1xx) response head was seen."""
    unknown: int = 0


class H2Connection:
    """One HTTP/2 connection's streams, as Exchanges (see the module docstring)."""

    def __init__(self, conn: ConnKey, conn_id: str, emit: Callable[[Exchange], None],
                 stats: dict[str, int], *, max_body: int = DEFAULT_MAX_BODY,
                 mid_stream: bool = False, first_n: int = 0, via: str = "h2c",
                 meta: Callable[[], dict[str, Any]] | None = None) -> None:
        self.conn = conn
        self.conn_id = conn_id
        self.emit = emit
        self.stats = stats
        self.max_body = max_body
        self.n = first_n
        self.via = via
        self.held = 0
        """Body bytes held by the streams not emitted yet (bounded by ``max_body``)."""
        self.outer: Any = None
        """The TCP connection's HTTP/1 reader this one replaced (its retransmit count)."""
        self.meta = meta
        """Extra meta for each exchange (the TLS marker), asked at emission."""
        self.sides = {True: _Side(True, stats, mid_stream), False: _Side(False, stats,
                                                                         mid_stream)}
        self.streams: dict[int, _Stream] = {}
        self.closed_streams: set[int] = set()
        self.goaway: dict[str, Any] | None = None
        self.finished = False
        self.mid_stream = mid_stream
        self._count("connections")
        self._count("via_" + via)
        if mid_stream:
            self._count("mid_stream")

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    # -- the upgraded request (Upgrade: h2c) -----------------------------------------------------
    def adopt_upgrade(self, ex: Exchange) -> None:
        """Stream 1 is the HTTP/1 request that asked for the upgrade (RFC 7540 §3.2): its
        response comes on stream 1 (the 101 is kept as its interim response)."""
        st = _Stream(1, ex)
        st.req.ended = True
        self.streams[1] = st
        self._count("streams")
        ex.meta.setdefault("h2", {})["stream"] = 1

    # -- input ------------------------------------------------------------------------------------
    def feed(self, from_client: bool, data: bytes, ts: float) -> None:
        side = self.sides[from_client]
        if side.partial is not None:
            sid, left, end_stream = side.partial
            take = min(left, len(data))
            st = self.streams.get(sid)
            if st is not None:
                self._body(st, from_client, data[:take], ts)
            left -= take
            data = data[take:]
            if left:
                side.partial = (sid, left, end_stream)
                return
            side.partial = None
            if end_stream and st is not None:
                self._end(st, from_client, ts)
            if not data:
                return
        if side.buf:
            data = side.buf + data
            side.buf = b""
        pos = 0
        end = len(data)
        if side.preface:
            n = min(end, len(PREFACE))
            if data[:n] != PREFACE[:n]:
                self._count("protocol_errors")
                side.preface = False
                side.resync = True
            elif n < len(PREFACE):
                side.buf = data
                return
            else:
                side.preface = False
                pos = len(PREFACE)
        while pos < end:
            if side.resync:
                p, verified = self._find_frame(side, data, pos)
                if p < 0:
                    keep = min(end - pos, 8)
                    self._skip(side, end - pos - keep)
                    pos = end - keep
                    break
                self._skip(side, p - pos)
                pos = p
                if not verified and end - pos <= 2 * (16384 + 9) and not side.closing:
                    break  # the frame after it is not here yet: wait to check it
                side.resync = False
                self._count("resyncs")
            if end - pos < 9:
                break
            if RUN is not None and not side.block:
                # the usual frames (DATA, whole header blocks) read in C, as ``_frame`` would,
                # and their usual events handled there as ``_events`` would (the rest given to
                # ``_events``, ``_done`` and ``_emit``: see ``replay/h2/_hpack.c``'s ``run``)
                p = RUN(self, side, data, pos, ts)
                if p != pos:
                    pos = p
                    continue
            elif SCAN is not None and not side.block:
                # the usual frames (DATA, whole header blocks) read in C, as ``_frame`` would
                events, p = SCAN(side.hpack, self.stats, side.client, data, pos, side.max_frame)
                if events:
                    pos = p
                    self._events(side, events, ts)
                    continue
            length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
            if length > side.max_frame and length >= 16384:
                if length > MAX_FRAME - 1 or not plausible_frame(data, pos, MAX_FRAME - 1):
                    self._count("frame_errors")
                    side.resync = True
                    self._lost_block(side)
                    pos += 1
                    continue
                self._count("frames_too_large")
            if end - pos < 9 + length:
                if end - pos > 9 + 1024 and self._frame_start(side, data, pos, length, ts):
                    pos = end  # its payload so far taken; the rest as it comes (``partial``)
                break
            self._frame(side, data, pos, length, ts)
            pos += 9 + length
        if pos < end:
            side.buf = data[pos:] if pos else data

    def gap(self, from_client: bool, n: int, ts: float) -> None:
        """``n`` bytes of this direction were not captured."""
        side = self.sides[from_client]
        self._count("gaps")
        buf = side.buf
        if side.partial is not None:
            sid, left, end_stream = side.partial
            st = self.streams.get(sid)
            if n < left:
                side.partial = (sid, left - n, end_stream)
                if st is not None:
                    self._body_gap(st, from_client, n)
                return
            side.partial = None
            if st is not None:
                self._body_gap(st, from_client, left)
                if n == left:
                    if end_stream:
                        self._end(st, from_client, ts)
                    return
            n -= left
            buf = b""
        elif (not side.resync and not side.preface and len(buf) >= 9 and buf[3] == 0
              and not buf[4] & 0x08):
            # a DATA frame (unpadded) cut by the gap: its stream and how much is lost are known
            length = (buf[0] << 16) | (buf[1] << 8) | buf[2]
            missing = 9 + length - len(buf)
            sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            end_stream = bool(buf[4] & 1)
            st = self.streams.get(sid)
            if 0 < n <= missing:
                side.buf = b""
                if st is not None:
                    self._body(st, from_client, buf[9:], ts)
                    self._body_gap(st, from_client, n)
                if n < missing:
                    side.partial = (sid, missing - n, end_stream)
                elif end_stream and st is not None:
                    self._end(st, from_client, ts)
                return
        # anything else: where the next frame starts is unknown, and header blocks may be lost
        side.buf = b""
        side.resync = True
        side.preface = False
        self._lost_block(side)
        side.hpack.forget()
        for st in self.streams.values():
            msg = st.req if from_client else st.resp
            if not msg.ended:
                msg.gaps.append((msg.length, n + len(buf)))
        if buf:
            self._count("bytes_skipped", len(buf))

    def close(self, from_client: bool, ts: float) -> None:
        side = self.sides[from_client]
        if side.buf and side.resync and not side.closing:
            side.closing = True
            data, side.buf = side.buf, b""
            self.feed(from_client, data, ts)
        if side.buf:
            self._count("bytes_truncated", len(side.buf))
            side.buf = b""
        side.partial = None

    def finish(self, ts: float, timed_out: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        for fc in (True, False):
            self.close(fc, ts)
        for st in sorted(self.streams.values(), key=lambda s: s.sid):
            c = st.ex.completeness
            if timed_out:
                c.timed_out = True
            if not st.req.ended and st.ex.request is not None:
                c.request_truncated = True
            if not st.resp.ended:
                if st.ex.response is None:
                    c.unpaired = True
                    self._count("requests_without_response")
                else:
                    c.response_truncated = True
            self._emit(st)
        self.streams.clear()

    # -- framing ----------------------------------------------------------------------------------
    def _skip(self, side: _Side, n: int) -> None:
        if n > 0:
            side.skipped += n
            self._count("bytes_skipped", n)

    def _find_frame(self, side: _Side, data: bytes, pos: int) -> tuple[int, bool]:
        """The first offset from ``pos`` where a plausible frame header starts whose next frame
        header is plausible too (True), else the first whose next header is beyond ``data``
        (False: to be checked when more comes); (-1, False) if none."""
        end = len(data)
        mf = min(side.max_frame, 16384) if self.mid_stream else side.max_frame
        # the client preface, when a capture starts just before it
        p = data.find(PREFACE, pos, pos + MAX_RESYNC_SCAN)
        limit = min(end - 9, pos + MAX_RESYNC_SCAN) if p < 0 else p - 9
        first = -1
        for i in range(pos, limit + 1):
            if plausible_frame(data, i, mf):
                nxt = i + 9 + ((data[i] << 16) | (data[i + 1] << 8) | data[i + 2])
                if nxt + 9 <= end:
                    if plausible_frame(data, nxt, mf):
                        return i, True
                elif first < 0:
                    first = i
        if p >= 0:
            return p + len(PREFACE), True
        return first, False

    def _events(self, side: _Side, events: list[tuple[Any, ...]], ts: float) -> None:
        """The frames ``SCAN`` read: what ``_frame`` does with them, from there on."""
        for ev in events:
            if ev[0] == 0:
                self._data(side, ev[1], ev[2], ev[3], ts)
                continue
            _, sid, end_stream, fields, unknown, whole, parts = ev
            side.block_sid = sid
            self._decoded(side, sid, fields, unknown, whole, end_stream, ts, parts)

    def _frame(self, side: _Side, data: bytes, pos: int, length: int, ts: float) -> None:
        stats = self.stats
        stats["frames"] = stats.get("frames", 0) + 1
        ftype = data[pos + 3]
        if side.block and ftype != 9:
            # a header block must go on in CONTINUATION frames (RFC 9113 §6.10)
            self._count("protocol_errors")
            self._lost_block(side)
        if ftype == 0 or ftype == 1 or ftype == 9:
            # the frames of every stream, parsed here (hyperframe's objects cost more than the
            # rest of their reading); what they check, checked alike
            flags = data[pos + 4]
            sid = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            body = data[pos + 9:pos + 9 + length]
            if ftype != 9 and flags & 0x08:  # PADDED
                if not body or body[0] >= len(body):
                    self._bad_frame(side, ftype)
                    return
                body = body[1:len(body) - body[0]]
            if ftype == 1 and flags & 0x20:  # PRIORITY
                if len(body) < 5:
                    self._bad_frame(side, ftype)
                    return
                body = body[5:]
            if not sid:
                self._bad_frame(side, ftype)
                return
            if ftype == 0:
                self._data(side, sid, body, flags & 0x01, ts)
            elif ftype == 1:
                if flags & 0x04:  # END_HEADERS: the whole block in this frame (the usual)
                    side.block_sid = sid
                    self._headers(side, sid, body, flags & 0x01, ts)
                else:
                    self._block_start(side, sid, "headers", body, bool(flags & 0x01), False, 0,
                                      ts)
            else:
                self._continuation(side, sid, body, bool(flags & 0x04), ts)
            return
        try:
            frame, _ = Frame.parse_frame_header(memoryview(data[pos:pos + 9]))
            frame.parse_body(memoryview(data[pos + 9:pos + 9 + length]))
        except (HyperframeError, ValueError, IndexError):
            self._count("frame_errors")
            if ftype in (1, 5, 9):
                self._lost_block(side)
                side.hpack.forget()
            return
        sid = frame.stream_id
        if ftype == 5:
            self._block_start(side, sid, "push", frame.data, False,
                              "END_HEADERS" in frame.flags, frame.promised_stream_id, ts)
        elif ftype == 3:
            self._rst(side, sid, frame.error_code, ts)
        elif ftype == 7:
            self._goaway(side, frame)
        elif ftype == 4 and "ACK" not in frame.flags:
            mf = frame.settings.get(5)  # SETTINGS_MAX_FRAME_SIZE: what the *other* side sends
            if mf is not None and 16384 <= mf < MAX_FRAME:
                self.sides[not side.client].max_frame = mf
            self._count("settings")

    # -- header blocks -----------------------------------------------------------------------------
    def _lost_block(self, side: _Side) -> None:
        if side.block:
            st = self.streams.get(side.block_sid)
            if st is not None:
                st.ex.completeness.notes.append("h2-header-block-lost")
        side.block = []
        side.block_bytes = side.block_frames = 0

    def _block_start(self, side: _Side, sid: int, kind: str, frag: bytes, end_stream: bool,
                     end_headers: bool, promised: int, ts: float) -> None:
        side.block = [frag]
        side.block_sid = sid
        side.block_kind = kind
        side.block_end_stream = end_stream
        side.block_frames = 1
        side.block_bytes = len(frag)
        side.block_promised = promised
        if end_headers:
            self._block_done(side, ts)

    def _frame_start(self, side: _Side, data: bytes, pos: int, length: int, ts: float) -> bool:
        """A large frame whose end is not here yet: an unpadded DATA frame's payload goes to its
        stream as it comes, and a header block fragment larger than any block kept is skipped
        as it comes (instead of buffering up to 16 MiB and copying it at every segment).
        False: buffer it as usual."""
        ftype = data[pos + 3]
        flags = data[pos + 4]
        sid = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        left = 9 + length - (len(data) - pos)
        if ftype == 0 and not flags & 0x08 and sid and not side.block:
            self._count("frames")
            st = self.streams.get(sid) or self._stream(sid, side.client, ts)
            if st is not None:
                self._body(st, side.client, data[pos + 9:], ts)
            side.partial = (sid, left, bool(flags & 0x01))
            return True
        if ftype in (1, 5, 9) and length > MAX_BLOCK:
            self._count("frames")
            self._count("header_block_too_large")
            st = self.streams.get(side.block_sid if ftype == 9 else sid)
            if st is not None:
                st.ex.completeness.notes.append("h2-header-block-too-large")
            self._lost_block(side)
            side.hpack.forget()
            side.partial = (-1, left, False)  # stream -1: none, the bytes are skipped
            return True
        return False

    def _bad_frame(self, side: _Side, ftype: int) -> None:
        self._count("frame_errors")
        if ftype in (1, 5, 9):
            self._lost_block(side)
            side.hpack.forget()

    def _continuation(self, side: _Side, sid: int, frag: bytes, end_headers: bool,
                      ts: float) -> None:
        if not side.block or sid != side.block_sid:
            self._count("protocol_errors")
            return
        side.block_frames += 1
        side.block_bytes += len(frag)
        if side.block_frames > MAX_CONTINUATIONS or side.block_bytes > MAX_BLOCK:
            self._count("continuation_flood" if side.block_frames > MAX_CONTINUATIONS
                        else "header_block_too_large")
            st = self.streams.get(side.block_sid)
            if st is not None:
                st.ex.completeness.notes.append("h2-header-block-too-large")
            side.block = []
            side.block_bytes = side.block_frames = 0
            side.hpack.forget()  # its inserts are lost
            # the rest of the flood is CONTINUATION frames without a block: counted, skipped
            return
        side.block.append(frag)
        if end_headers:
            self._block_done(side, ts)

    def _block_done(self, side: _Side, ts: float) -> None:
        block = b"".join(side.block) if len(side.block) != 1 else side.block[0]
        side.block = []
        sid = side.block_sid
        if side.block_kind == "push":
            fields, unknown, _ = DECODE(side.hpack, block)
            self._push(sid, side.block_promised, fields, unknown, ts)
            return
        self._headers(side, sid, block, side.block_end_stream, ts)

    def _headers(self, side: _Side, sid: int, block: bytes, end_stream: int, ts: float) -> None:
        """A whole header block of stream ``sid`` (HEADERS and its CONTINUATIONs)."""
        fields, unknown, whole = DECODE(side.hpack, block)
        self._decoded(side, sid, fields, unknown, whole, end_stream, ts)

    def _decoded(self, side: _Side, sid: int, fields: list[tuple[str, str]], unknown: int,
                 whole: bool, end_stream: int, ts: float, parts: Any = None) -> None:
        """A decoded header block of stream ``sid`` (``parts``: its request or response parts,
        when ``SCAN`` split them already)."""
        st = self.streams.get(sid) or self._stream(sid, side.client, ts)
        if st is None:
            return
        if unknown:
            st.unknown += unknown
        if not whole:
            st.ex.completeness.notes.append("h2-header-list-cut")
        if side.client:
            self._request_headers(st, fields, ts, parts)
        else:
            self._response_headers(st, fields, ts, parts)
        if end_stream:
            self._end(st, side.client, ts)

    def _stream(self, sid: int, from_client: bool, ts: float) -> _Stream | None:
        st = self.streams.get(sid)
        if st is not None:
            return st
        if sid in self.closed_streams or sid == 0:
            self._count("frames_on_closed_streams")
            return None
        if len(self.streams) >= MAX_STREAMS:
            self._count("streams_over_limit")
            return None
        self.n += 1
        ex = Exchange(f"{self.conn_id}.{self.n}", self.conn)
        ex.meta["h2"] = {"stream": sid}
        st = _Stream(sid, ex)
        self.streams[sid] = st
        stats = self.stats
        stats["streams"] = stats.get("streams", 0) + 1
        if not from_client:
            # the request was before the capture (or lost): the response alone
            ex.completeness.unpaired = True
            ex.completeness.notes.append("request-missing")
            st.req.ended = True
            self._count("responses_without_request")
        return st

    def _request_headers(self, st: _Stream, fields: list[tuple[str, str]], ts: float,
                         parts: tuple[str, str, list[tuple[str, str]]] | None = None) -> None:
        """``parts``: ``_request_parts(fields)`` when made already (``SCAN``)."""
        ex = st.ex
        if ex.request is not None:
            ex.request.trailers = _plain(fields)
            return
        method, target, headers = parts if parts is not None else _request_parts(fields)
        ex.request = Request(method, target, "HTTP/2", headers)
        ex.ts_request_start = ts
        ex.ts_request_end = ts

    def _response_headers(self, st: _Stream, fields: list[tuple[str, str]], ts: float,
                          parts: tuple[str | None, list[tuple[str, str]]] | None = None
                          ) -> None:
        """``parts``: ``_response_parts(fields)`` when made already (``SCAN``)."""
        ex = st.ex
        v, plain = parts if parts is not None else _response_parts(fields)
        if st.final:
            assert ex.response is not None
            ex.response.trailers = plain
            return
        status = -1
        if v is not None:
            status = _STATUS.get(v, -1)
            if status < 0:
                try:
                    status = int(v)
                except ValueError:
                    self._count("protocol_errors")
        if status < 0:
            ex.completeness.notes.append("h2-status-unknown")
            status = 0
        resp = Response(status, "", "HTTP/2", plain)
        if 100 <= status < 200:
            ex.interim.append(resp)
            return
        st.final = True
        ex.response = resp
        ex.ts_response_start = ts
        ex.ts_response_end = ts

    def _push(self, sid: int, promised: int, fields: list[tuple[str, str]], unknown: int,
              ts: float) -> None:
        self._count("push_promises")
        if promised in self.streams or not promised or len(self.streams) >= MAX_STREAMS:
            return
        self.n += 1
        ex = Exchange(id=f"{self.conn_id}.{self.n}", conn=self.conn)
        ex.meta["h2"] = {"stream": promised, "pushed_by": sid}
        st = _Stream(promised, ex)
        st.unknown = unknown
        self.streams[promised] = st
        self._count("streams")
        self._request_headers(st, fields, ts)
        st.req.ended = True
        ex.completeness.notes.append("h2-push")

    # -- data and the end of streams ---------------------------------------------------------------
    def _data(self, side: _Side, sid: int, chunk: bytes, end_stream: bool, ts: float) -> None:
        st = self.streams.get(sid)
        if st is None:
            st = self._stream(sid, side.client, ts)
            if st is None:
                return
            if side.client:
                st.ex.completeness.notes.append("request-head-missing")
        self._body(st, side.client, chunk, ts)
        if end_stream:
            self._end(st, side.client, ts)

    def _body(self, st: _Stream, from_client: bool, chunk: bytes, ts: float) -> None:
        msg = st.req if from_client else st.resp
        ex = st.ex
        if from_client:
            ex.ts_request_end = ts
        else:
            ex.ts_response_end = ts
            if ex.ts_response_start is None:
                ex.ts_response_start = ts
        if not chunk:
            return
        n = len(chunk)
        msg.length += n
        if msg.capped:
            return
        # each body up to max_body, and all the bodies a connection holds at once too (a
        # thousand streams that never end must not hold a thousand bodies)
        room = min(self.max_body - msg.kept, self.max_body - self.held)
        if n > room:
            chunk = chunk[:max(0, room)]
            n = len(chunk)
            msg.capped = True
            self._count("bodies_capped")
        if n:
            msg.body.append(bytes(chunk))
            msg.kept += n
            self.held += n

    def _body_gap(self, st: _Stream, from_client: bool, n: int) -> None:
        msg = st.req if from_client else st.resp
        msg.gaps.append((msg.length, n))

    def _end(self, st: _Stream, from_client: bool, ts: float) -> None:
        msg = st.req if from_client else st.resp
        msg.ended = True
        if from_client:
            st.ex.ts_request_end = ts
        else:
            st.ex.ts_response_end = ts
        if st.req.ended and st.resp.ended:
            self._done(st)

    def _rst(self, side: _Side, sid: int, code: int, ts: float) -> None:
        self._count("rst_stream")
        st = self.streams.get(sid)
        if st is None:
            return
        name = ERROR_CODES.get(code, str(code))
        who = "client" if side.client else "server"
        st.ex.meta["h2"]["rst"] = {"by": who, "code": name}
        st.ex.completeness.notes.append(f"rst_stream:{name}:{who}")
        c = st.ex.completeness
        if not st.req.ended and st.ex.request is not None:
            c.request_truncated = True
        if not st.resp.ended:
            if st.ex.response is None:
                c.unpaired = True
            else:
                c.response_truncated = True
        self._done(st)

    def _goaway(self, side: _Side, frame: Any) -> None:
        self._count("goaway")
        name = ERROR_CODES.get(frame.error_code, str(frame.error_code))
        self.goaway = {"by": "client" if side.client else "server", "code": name,
                       "last_stream": frame.last_stream_id}
        for st in self.streams.values():
            if st.sid > frame.last_stream_id and side.client != (st.sid % 2 == 1):
                st.ex.completeness.notes.append(f"goaway:{name}")
                st.ex.meta["h2"]["goaway"] = self.goaway

    def _done(self, st: _Stream) -> None:
        self.streams.pop(st.sid, None)
        self.closed_streams.add(st.sid)
        if len(self.closed_streams) > 4 * MAX_STREAMS:
            keep = sorted(self.closed_streams)[-MAX_STREAMS:]
            self.closed_streams = set(keep)
        self._emit(st)

    def _emit(self, st: _Stream) -> None:
        ex = st.ex
        c = ex.completeness
        msg = st.req
        self.held -= msg.kept
        head: Any = ex.request
        if head is not None:
            head.body = msg.body[0] if len(msg.body) == 1 else b"".join(msg.body)
        if msg.gaps:
            c.request_gaps = msg.gaps
        if msg.capped:
            c.notes.append("request-body-capped")
        msg = st.resp
        self.held -= msg.kept
        head = ex.response
        if head is not None:
            head.body = msg.body[0] if len(msg.body) == 1 else b"".join(msg.body)
        if msg.gaps:
            c.response_gaps = msg.gaps
        if msg.capped:
            c.notes.append("response-body-capped")
        if st.unknown:
            c.notes.append(f"hpack-unknown:{st.unknown}")
            ex.meta["h2"]["hpack_unknown"] = st.unknown
        if ex.request is None and ex.response is None:
            # request body bytes of a stream whose head was never seen, and no answer: nothing
            # to show as an exchange (counted)
            self._count("streams_without_heads")
            return
        if self.meta is not None:
            ex.meta.update(self.meta())
        if self.outer is not None:
            c.retransmits = self.outer.retransmits
        if ex.request is not None and _is_grpc(ex):
            from replay.h2.grpc import annotate

            annotate(ex, self.stats)
        stats = self.stats
        stats["exchanges"] = stats.get("exchanges", 0) + 1
        self.emit(ex)


def _request_parts(fields: list[tuple[str, str]]) -> tuple[str, str, list[tuple[str, str]]]:
    """A request head's (method, target, headers): ``:method`` and ``:path`` (``:authority``
    for CONNECT) taken out, the other pseudo-headers first as sent, unknown fields marked."""
    method = target = authority = ""
    headers: list[tuple[str, str]] = []
    regular: list[tuple[str, str]] = []
    for f in fields:
        k = f[0]
        if k[:1] != ":":  # a regular field (or an unknown one: UNKNOWN is not ":...")
            regular.append(f if k != UNKNOWN else ("?", f[1] if f[1] != UNKNOWN else "?"))
        elif k == ":method":
            method = f[1]
        elif k == ":path":
            target = f[1]
        else:
            if k == ":authority":
                authority = f[1]
            headers.append(f)
    if not target and method == "CONNECT":
        target = authority
    headers += regular
    return method, target, headers


def _response_parts(fields: list[tuple[str, str]]) -> tuple[str | None, list[tuple[str, str]]]:
    """A response head's first ``:status`` value (None: none) and ``_plain(fields)``."""
    status = None
    for k, v in fields:
        if k == ":status":
            status = v
            break
    return status, _plain(fields)


SCAN = load_c("replay.h2._hpack", "scan") if C_DECODE is not None else None
"""``replay/h2/_hpack.c``'s reading of the usual frames (see ``H2Connection._events``)."""
RUN = load_c("replay.h2._hpack", "run") if SCAN is not None else None
"""``replay/h2/_hpack.c``'s reading of the usual frames and handling of their usual events
(``_events`` and what it calls, for a plain request and response), the rest handed to the
methods here; None: ``SCAN`` and ``_events``."""


def _recipes() -> list[tuple[int, type, int, list[tuple[str, int, Any]]]]:
    """How ``run`` makes the reader's objects without calling their ``__init__`` (the one
    ``dataclass`` generates, checked here): per class, its recipe's number, the class, how many
    positional arguments it is given there, and per field: (name, 0, None) an argument,
    (name, 1, default), (name, 2, list or dict) a new empty one, (name, 3, recipe) a new object
    of an earlier recipe (see ``configure_make`` in ``replay/h2/_hpack.c``)."""
    order: list[tuple[type, int]] = [(Completeness, 0), (Exchange, 2), (Request, 4),
                                     (Response, 4), (_Msg, 0), (_Stream, 2)]
    out: list[tuple[int, type, int, list[tuple[str, int, Any]]]] = []
    for i, (cls, nargs) in enumerate(order):
        init = cls.__dict__.get("__init__")
        if (not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__")
                or getattr(getattr(init, "__code__", None), "co_qualname", "")
                != "__create_fn__.<locals>.__init__"):
            continue  # not a plain dataclass (any more): ``run`` calls it
        recipe: list[tuple[str, int, Any]] = []
        ok = True
        for k, f in enumerate(dataclasses.fields(cls)):
            if not f.init:
                ok = False
            elif k < nargs:
                recipe.append((f.name, 0, None))
            elif f.default is not dataclasses.MISSING:
                recipe.append((f.name, 1, f.default))
            elif f.default_factory in (list, dict):
                recipe.append((f.name, 2, f.default_factory))
            elif any(f.default_factory is c for c, _ in order[:i]) and any(
                    r[1] is f.default_factory for r in out):
                j = next(r[0] for r in out if r[1] is f.default_factory)
                recipe.append((f.name, 3, j))
            else:
                ok = False
        if ok:
            out.append((i, cls, nargs, recipe))
    return out


if RUN is not None:
    for _i, _cls, _nargs, _recipe in _recipes():
        try:
            load_c("replay.h2._hpack", "configure_make")(_i, _cls, _nargs, _recipe)
        except (TypeError, ValueError):  # the class is called instead
            pass
    load_c("replay.h2._hpack", "configure_reader")(Exchange, Request, Response, _Stream,
                                                   MAX_STREAMS)

_STATUS = {str(n): n for n in range(100, 600)}
"""``int(:status)`` of the usual three-digit ones."""


def _plain(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Fields without pseudo-headers (response heads, trailers); unknown ones marked."""
    out = []
    for f in fields:
        k = f[0]
        if k[:1] != ":":  # UNKNOWN is not ":..."
            out.append(f if k != UNKNOWN else ("?", f[1] if f[1] != UNKNOWN else "?"))
    return out


def _is_grpc(ex: Exchange) -> bool:
    assert ex.request is not None
    for k, v in ex.request.headers:
        if k == "content-type":
            return v.startswith("application/grpc")
    return False
