"""TCP stream reassembly, sans-I/O: segments and timestamps in, ordered bytes and gaps out.

Per connection and direction, bytes are delivered in sequence order to a ``StreamHandler``
(``replay.http1.HttpConnection`` in practice): out-of-order segments wait in a bounded buffer,
retransmissions and overlaps are trimmed and counted, sequence numbers wrap modulo 2**32, and a
connection whose SYN was not captured is picked up at its first data segment. When a hole cannot
be filled (the buffer limit is hit, the connection ends, or it goes idle) the handler is told
``gap(n)``: the missing bytes are recorded, never papered over.

Copies of the two directions can reach the capture out of order (a mirror port, a SPAN session
or a multi-queue NIC hands them over on different CPUs): the server's answer may arrive before
the client's request it acknowledges. A segment whose ACK runs ahead of what was seen of the
peer is therefore *parked* for up to ``reorder_window`` seconds of capture time: if the peer's
bytes arrive meanwhile, both are delivered in order; if not, the capture lost them and the gap
is declared then.

Memory is bounded: at most ``max_connections`` tracked (the least recently active is evicted),
and at most ``max_buffer`` bytes waiting out of order per direction. Everything dropped or evicted
is counted in ``stats`` by reason. No clocks inside: time is the capture's timestamps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from replay.packets import ACK as ACK_FLAG
from replay.packets import FIN, RST, SYN, key_ports, reverse_key

MASK = 0xFFFFFFFF
HALF = 0x80000000


class StreamHandler(Protocol):
    retransmits: int
    non_http: bool

    def feeder(self, from_client: bool) -> Callable[[bytes, float], None]:
        """The function that takes in-order bytes of one direction (the hot path)."""
        ...

    def data(self, from_client: bool, data: bytes, ts: float) -> None: ...

    def gap(self, from_client: bool, nbytes: int, ts: float) -> None: ...

    def close(self, from_client: bool, ts: float) -> None: ...

    def finish(self, ts: float, timed_out: bool = False) -> None: ...


HandlerFactory = Callable[[bytes, bool, bool], "StreamHandler | None"]
"""factory(client_to_server_key, syn_seen, from_start) -> handler, or None to ignore."""


class _Dir:
    __slots__ = ("closed", "feed", "fin_seq", "from_client", "nxt", "ooo", "ooo_bytes")

    def __init__(self, handler: StreamHandler | None, from_client: bool) -> None:
        self.from_client = from_client
        self.feed = handler.feeder(from_client) if handler is not None else None
        self.nxt: int | None = None
        self.ooo: dict[int, tuple[bytes, float]] = {}
        """seq -> (payload, capture timestamp): bytes delivered late keep their own time."""
        self.ooo_bytes = 0
        self.fin_seq: int | None = None
        self.closed = False

    def export_state(self) -> DirSnapshot:
        """``(nxt, fin_seq, closed, ooo)`` (see ``_Conn.export_state``)."""
        return self.nxt, self.fin_seq, self.closed, len(self.ooo)


DirSnapshot = tuple["int | None", "int | None", bool, int]
"""``_Dir.export_state()``: ``(nxt, fin_seq, closed, ooo)``."""


class _Conn:
    __slots__ = ("dirs", "fast", "fwd_is_client", "handler", "keys", "last_ts", "parked",
                 "serial")

    def __init__(self, serial: int, handler: StreamHandler | None, fwd_is_client: bool,
                 keys: tuple[bytes, bytes]) -> None:
        self.serial = serial
        self.handler = handler
        self.fwd_is_client = fwd_is_client
        self.dirs = (_Dir(handler, fwd_is_client), _Dir(handler, not fwd_is_client))
        self.last_ts = 0.0
        self.keys = keys
        self.parked: list[tuple[float, int, int, int, bytes, int | None, float]] | None = None
        """Segments waiting for the peer's bytes their ACK covers (see the module docstring):
        (ts, direction, seq, flags, payload, ack, deadline), in arrival order."""
        self.fast = False
        """Held by the native fast path (``replay._fastpath``): these Python objects are at its
        last checkpoint until it gives the connection back (``Reassembler.native.sync``)."""

    # -- the hand-back contract with the native fast path ---------------------------------------
    # replay/_fastpath.c takes a connection over just after its client SYN (``export_state``,
    # then ``set_fast(True)``), and either gives it back at a checkpoint (``import_state``, then
    # ``Reassembler.replay_native`` for the segments since) or ends it itself
    # (``Reassembler.end_native``). The one field it writes directly is ``last_ts``
    # (``Reassembler.native.touch()``, before a sweep or an eviction reads it). When Python ends
    # a connection (``Reassembler._end``), ``native.end`` gives it back if it is held and makes
    # the native path forget it (a foreign one it kept a dormant entry for, too).

    def export_state(self) -> tuple[tuple[bytes, bytes], StreamHandler | None, bool, bool,
                                    float, DirSnapshot, DirSnapshot]:
        """What the native fast path reads when it takes this connection over: ``(keys,
        handler, fwd_is_client, parked, last_ts, fwd, rev)``.

        - ``keys``: the directional keys (first sender's direction first, ``dirs`` order);
        - ``handler``: the ``HttpConnection`` (its own contract: ``export_state`` there);
        - ``fwd_is_client``: the first sender is the client (it sent the SYN);
        - ``parked``: segments are parked for reordering (``parked is not None``);
        - ``last_ts``: the capture time of the last segment;
        - ``fwd``, ``rev``: each direction's ``(nxt, fin_seq, closed, ooo)``: the next sequence
          number expected (None before any), the FIN's sequence number (None before it),
          closed (the FIN was delivered), and how many segments wait out of order.

        The native path adopts only a connection whose client SYN is all there is: a handler,
        ``fwd_is_client``, nothing parked, ``fwd.nxt == ISN + 1``, ``rev.nxt`` None, no FIN
        and nothing out of order."""
        return (self.keys, self.handler, self.fwd_is_client, self.parked is not None,
                self.last_ts, self.dirs[0].export_state(), self.dirs[1].export_state())

    def set_fast(self, held: bool) -> None:
        """The native fast path holds this connection from now (True), or no longer (False)."""
        self.fast = held

    def import_state(self, last_ts: float, fwd: tuple[int | None, bool],
                     rev: tuple[int | None, bool]) -> None:
        """The native fast path gives the connection back at its last checkpoint: the time of
        its last segment, and each direction's ``(nxt, closed)`` (a closed direction's FIN was
        at ``nxt``). Nothing was out of order or parked there; it is no longer held."""
        self.fast = False
        self.last_ts = last_ts
        for dr, (nxt, closed) in zip(self.dirs, (fwd, rev), strict=True):
            dr.nxt = nxt
            if closed:
                dr.fin_seq = nxt
                dr.closed = True


class Reassembler:
    """Tracks TCP connections of one capture and feeds their byte streams to handlers."""

    def __init__(
        self,
        factory: HandlerFactory,
        *,
        classify: Callable[[bytes, bytes], bool] | None = None,
        max_connections: int = 100_000,
        max_buffer: int = 4 * 1024 * 1024,
        idle_timeout: float = 120.0,
        reorder_window: float = 0.2,
    ) -> None:
        self.factory = factory
        self.reorder_window = reorder_window
        self.parked: dict[int, _Conn] = {}
        self.sweep_due = 0.0
        self.classify = classify or _port_classify
        self.max_connections = max_connections
        self.max_buffer = max_buffer
        self.idle_timeout = idle_timeout
        self.keys: dict[bytes, tuple[_Conn, int]] = {}
        self.lru: dict[int, _Conn] = {}
        self.serial = 0
        self.stats: dict[str, int] = {}
        self.next_sweep = 0.0
        self.now = 0.0
        self.hole_count = 0
        self.native: Any = None
        """The native fast path (``replay._fastpath.FastPath``) when one drives this reassembler:
        before Python touches a connection it holds, ``sync`` gives it back. Per connection it
        goes through the hand-back contract (``_Conn.export_state``, ``replay_native``,
        ``end_native``); per packet it uses this object's own tables and clock as they are:
        ``keys``, ``stats``, ``now``, ``next_sweep``, ``hole_count``, ``segment``, ``ack_only``
        and ``_timers``; ``retransmit_native`` counts a retransmission of a connection it holds.
        When this object ends a connection (``_end``), ``end`` makes it forget it."""

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    # -- the per-segment path ------------------------------------------------------------------
    def segment(self, ts: float, key: bytes, seq: int, flags: int, payload: bytes,
                ack: int | None = None) -> None:
        """One TCP segment. ``ack`` (the acknowledgement number, when ACK is set) lets holes
        the peer has already acknowledged be declared at once: the receiver got those bytes,
        so they will never be retransmitted; only the capture missed them."""
        e = self.keys.get(key)
        if e is not None and e[0].fast:
            self.native.sync(e[0])
            e = self.keys.get(key)
        if e is not None and payload and not flags & 7 and ts <= self.next_sweep:
            # Hot path: the next in-order data segment of a connection without holes.
            conn, d = e
            dirs = conn.dirs
            dr = dirs[d]
            odr = dirs[1 - d]
            onxt = odr.nxt
            # ...whose ACK does not run ahead of what we saw of the peer (that means loss).
            if (seq == dr.nxt and not dr.ooo and not odr.ooo and dr.feed is not None
                    and conn.parked is None
                    and (ack is None or onxt is None or not 0 < (ack - onxt) & MASK < HALF)):
                conn.last_ts = ts
                dr.nxt = (seq + len(payload)) & MASK
                dr.feed(payload, ts)
                return
        self._segment(ts, key, seq, flags, payload, ack)

    def ack_only(self, ts: float, key: bytes, ack: int) -> None:
        """A bare ACK: only of interest while the other direction waits on a hole."""
        e = self.keys.get(key)
        if e is not None:
            conn, d = e
            odr = conn.dirs[1 - d]
            if odr.ooo and conn.handler is not None:
                self._acked(conn, 1 - d, odr, ack, ts)

    def _acked(self, conn: _Conn, d: int, dr: _Dir, ack: int, ts: float) -> None:
        """The peer acknowledged up to ``ack``: bytes of ``dr`` below it that we never saw were
        received by the peer but lost by the capture (they will never be retransmitted). Report
        them as gaps now rather than at the close, so what follows stays in step."""
        while dr.nxt is not None:
            nxt = dr.nxt
            upto = (ack - nxt) & MASK
            if not upto or upto >= HALF:
                return
            if dr.fin_seq is not None:
                # The FIN takes one sequence number but carries no byte: an ACK of the FIN
                # must not count as one more missing byte.
                data_left = (dr.fin_seq - nxt) & MASK
                if data_left < HALF:
                    upto = min(upto, data_left)
                    if not upto:
                        return
            if dr.ooo:
                first = min(dr.ooo, key=lambda s: (s - nxt) & MASK)
                hole = (first - nxt) & MASK
                gap_ts = dr.ooo[first][1]
            else:
                first, hole, gap_ts = None, upto, ts
            if hole == 0:
                self._drain(conn, d, dr, ts)
                continue
            n = min(upto, hole)
            self._count("gaps")
            self._count("gaps_acked")
            self._count("gap_bytes", n)
            assert conn.handler is not None
            conn.handler.gap(dr.from_client, n, gap_ts)
            dr.nxt = (nxt + n) & MASK
            if first is not None and n == hole:
                self._drain(conn, d, dr, ts)
            else:
                return

    def _timers(self, ts: float) -> None:
        """Parked segments whose window has passed, then the idle sweep when it is due.
        ``next_sweep`` is the earliest of the two (the hot path's one comparison)."""
        if self.parked:
            self._expire_parked(ts)
        if ts > self.sweep_due:
            if self.sweep_due:
                self.sweep(ts)
            self.sweep_due = ts + max(1.0, self.idle_timeout / 4)
        nxt = self.sweep_due
        for c in self.parked.values():
            if c.parked and c.parked[0][6] < nxt:
                nxt = c.parked[0][6]
        self.next_sweep = nxt

    def _segment(self, ts: float, key: bytes, seq: int, flags: int, payload: bytes,
                 ack: int | None) -> None:
        if ts > self.next_sweep:
            self._timers(ts)
        self.now = ts
        e = self.keys.get(key)
        if e is None:
            if flags & RST or (not payload and not flags & SYN):
                return  # a bare ACK/FIN/RST of a connection we never saw: nothing to reassemble
            e = self._new_conn(key, flags, payload)
            if e is None:
                return
        conn, d = e
        if conn.handler is None:
            self._count("bytes_ignored", len(payload))
            conn.last_ts = ts
            return
        conn.last_ts = ts
        if conn.parked is not None:
            pd = conn.parked[0][1]
            if pd == d:  # behind a parked segment of the same direction
                self._park(conn, ts, d, seq, flags, payload, ack, conn.parked[0][6])
                return
            pnxt = conn.dirs[pd].nxt
            if (ack is not None and flags & ACK_FLAG and pnxt is not None
                    and 0 < (ack - pnxt) & MASK < HALF):
                # The peer acknowledges what is parked: it got the answer, so the bytes that
                # answer was waiting for are not coming (they come from the same queue as this
                # segment). Stop waiting: apply the parked segments (declaring that gap) first.
                self._count("parked_flushed_by_ack")
                self._flush_parked(conn)
                if conn.serial not in self.lru:
                    return
                self._apply(conn, d, ts, seq, flags, payload, ack)
                return
            self._apply(conn, d, ts, seq, flags, payload, ack)
            self._release(conn, ts)
            return
        if (ack is not None and flags & ACK_FLAG and (payload or flags & (FIN | RST))
                and self.reorder_window > 0):
            odr = conn.dirs[1 - d]
            onxt = odr.nxt
            if (onxt is not None and not odr.closed and 0 < (ack - onxt) & MASK < HALF
                    and not flags & SYN):
                self._count("parked_for_reorder")
                self._park(conn, ts, d, seq, flags, payload, ack, ts + self.reorder_window)
                return
        self._apply(conn, d, ts, seq, flags, payload, ack)

    def _park(self, conn: _Conn, ts: float, d: int, seq: int, flags: int, payload: bytes,
              ack: int | None, deadline: float) -> None:
        if conn.parked is None:
            conn.parked = []
            self.parked[conn.serial] = conn
            if deadline < self.next_sweep:
                self.next_sweep = deadline
        conn.parked.append((ts, d, seq, flags, payload, ack, deadline))
        if len(conn.parked) > 256:  # bounded: stop waiting, apply what is parked
            self._count("parked_limit")
            self._flush_parked(conn)

    def _release(self, conn: _Conn, ts: float) -> None:
        """The peer's bytes arrived: apply parked segments whose ACK they now cover."""
        while conn.parked:
            pts, d, seq, flags, payload, ack, _dl = conn.parked[0]
            odr = conn.dirs[1 - d]
            onxt = odr.nxt
            if (ack is not None and onxt is not None and not odr.closed
                    and 0 < (ack - onxt) & MASK < HALF):
                return  # still ahead: keep waiting (until the deadline)
            conn.parked.pop(0)
            self._apply(conn, d, pts, seq, flags, payload, ack)
        self._unpark(conn)

    def _unpark(self, conn: _Conn) -> None:
        if conn.parked is not None and not conn.parked:
            conn.parked = None
            self.parked.pop(conn.serial, None)

    def _flush_parked(self, conn: _Conn) -> None:
        """Apply every parked segment now (the window passed: what the ACKs cover and we never
        saw is a capture loss, declared as gaps by ``_acked``)."""
        items, conn.parked = conn.parked or [], None
        self.parked.pop(conn.serial, None)
        for i, (pts, d, seq, flags, payload, ack, _dl) in enumerate(items):
            if conn.serial not in self.lru:  # an RST or a port reuse among them ended it
                self._count("parked_after_end", len(items) - i)
                return
            self._apply(conn, d, pts, seq, flags, payload, ack)

    def _expire_parked(self, ts: float) -> None:
        for conn in [c for c in self.parked.values() if c.parked and c.parked[0][6] < ts]:
            self._count("parked_expired")
            self._flush_parked(conn)

    def _apply(self, conn: _Conn, d: int, ts: float, seq: int, flags: int, payload: bytes,
               ack: int | None) -> None:
        dr = conn.dirs[d]
        if flags & SYN:
            if dr.nxt is None:
                dr.nxt = (seq + 1) & MASK
            elif (seq + 1) & MASK != dr.nxt and (dr.closed or conn.dirs[1 - d].closed):
                # A new connection on the same 4-tuple (port reuse): close the old one.
                key = conn.keys[d]
                self._end(conn, ts)
                e = self._new_conn(key, flags, payload)
                if e is None:
                    return
                conn, d = e
                dr = conn.dirs[d]
                dr.nxt = (seq + 1) & MASK
            seq = (seq + 1) & MASK
        if ack is not None and flags & ACK_FLAG:
            # First what the peer acknowledged (it may release the other direction's data that
            # this segment answers, or show that the capture lost some), then this segment.
            odr = conn.dirs[1 - d]
            if odr.nxt is not None and not odr.closed:
                self._acked(conn, 1 - d, odr, ack, ts)
        if payload:
            if dr.nxt is None:
                dr.nxt = seq
            nxt = dr.nxt
            if seq == nxt and not dr.ooo:
                dr.nxt = (nxt + len(payload)) & MASK
                dr.feed(payload, ts)
            else:
                self._deliver(conn, d, dr, seq, payload, ts)
        if flags & (FIN | RST):
            if flags & RST:
                self._count("resets")
                self._end(conn, ts)
                return
            fin = (seq + len(payload)) & MASK
            if dr.fin_seq is None:
                dr.fin_seq = fin
            if dr.nxt is None:
                dr.nxt = fin
            self._maybe_close(conn, d, dr, ts)

    def _new_conn(self, key: bytes, flags: int, payload: bytes) -> tuple[_Conn, int] | None:
        if len(self.lru) >= self.max_connections:
            self._evict()
        rkey = reverse_key(key)
        syn = bool(flags & SYN)
        if syn:
            from_client = not (flags & 0x10)  # SYN from the client; SYN+ACK from the server
        else:
            from_client = self.classify(key, payload)
        ckey = key if from_client else rkey
        handler = self.factory(ckey, syn, syn)
        self.serial += 1
        conn = _Conn(self.serial, handler, from_client, (key, rkey))
        self.lru[conn.serial] = conn
        self.keys[key] = (conn, 0)
        self.keys[rkey] = (conn, 1)
        self._count("connections")
        if handler is None:
            self._count("connections_ignored")
        return conn, 0

    def _evict(self) -> None:
        """At the connection limit: end the least recently active 1% (at least one).

        Batching keeps the cost amortised without an LRU update on every segment."""
        if self.native is not None:
            self.native.touch()
        n = max(1, self.max_connections // 100)
        oldest = sorted(self.lru.values(), key=lambda c: c.last_ts)[:n]
        for c in oldest:
            self._count("evicted_connection_limit")
            self._end(c, self.now)

    def _deliver(self, conn: _Conn, d: int, dr: _Dir, seq: int, payload: bytes,
                 ts: float) -> None:
        nxt = dr.nxt
        assert nxt is not None
        diff = (seq - nxt) & MASK
        if diff >= HALF:  # starts before what we have delivered: retransmission or overlap
            overlap = (nxt - seq) & MASK
            if overlap >= len(payload):
                self._retransmit(conn)
                return
            self._count("overlaps_trimmed")
            payload = payload[overlap:]
            seq = nxt
            diff = 0
        if diff:
            prev = dr.ooo.get(seq)
            old = prev[0] if prev is not None else None
            if old is not None and len(old) >= len(payload):
                self._retransmit(conn)
                return
            if not dr.ooo:
                self.hole_count += 1
            dr.ooo[seq] = (payload, ts)
            dr.ooo_bytes += len(payload) - (len(old) if old is not None else 0)
            self._count("out_of_order")
            if dr.ooo_bytes > self.max_buffer:
                self._count("gaps_buffer_limit")
                self._skip_gap(conn, d, dr, ts)
            return
        dr.nxt = (nxt + len(payload)) & MASK
        dr.feed(payload, ts)
        if dr.ooo:
            self._drain(conn, d, dr, ts)

    def _retransmit(self, conn: _Conn) -> None:
        self._count("retransmits")
        if conn.handler is not None:
            conn.handler.retransmits += 1

    def _drain(self, conn: _Conn, d: int, dr: _Dir, ts: float) -> None:
        """Deliver buffered segments that now follow on, trimming overlaps."""
        had = bool(dr.ooo)
        self._drain_buffer(conn, dr)
        if had and not dr.ooo:
            self.hole_count -= 1

    def has_holes(self) -> bool:
        """Does any direction of any connection wait on a hole? (Bare ACKs matter only then.)"""
        return self.hole_count > 0

    def _drain_buffer(self, conn: _Conn, dr: _Dir) -> None:
        ooo = dr.ooo
        feed = dr.feed
        while ooo:
            nxt = dr.nxt
            assert nxt is not None
            e = ooo.pop(nxt, None)
            if e is None:
                # Any buffered segment that starts before nxt overlaps what we delivered.
                found = False
                for s in list(ooo):
                    if (s - nxt) & MASK >= HALF:
                        q, qts = ooo.pop(s)
                        dr.ooo_bytes -= len(q)
                        overlap = (nxt - s) & MASK
                        if overlap < len(q):
                            ooo[nxt] = (q[overlap:], qts)
                            dr.ooo_bytes += len(q) - overlap
                            self._count("overlaps_trimmed")
                        else:
                            self._retransmit(conn)
                        found = True
                        break
                if not found:
                    return
                continue
            p, pts = e
            dr.ooo_bytes -= len(p)
            dr.nxt = (nxt + len(p)) & MASK
            feed(p, pts)

    def _skip_gap(self, conn: _Conn, d: int, dr: _Dir, ts: float) -> None:
        """Give up waiting for the hole before the earliest buffered segment: report a gap."""
        nxt = dr.nxt
        assert nxt is not None and conn.handler is not None
        first = min(dr.ooo, key=lambda s: (s - nxt) & MASK)
        n = (first - nxt) & MASK
        if n and n < HALF:
            self._count("gaps")
            self._count("gap_bytes", n)
            conn.handler.gap(dr.from_client, n, dr.ooo[first][1])
            dr.nxt = first
        self._drain(conn, d, dr, ts)

    def _maybe_close(self, conn: _Conn, d: int, dr: _Dir, ts: float) -> None:
        if dr.closed or dr.fin_seq is None or dr.nxt != dr.fin_seq:
            return
        dr.closed = True
        assert conn.handler is not None
        conn.handler.close(dr.from_client, ts)
        if conn.dirs[1 - d].closed:
            self._end(conn, ts)

    def replay_native(self, conn: _Conn,
                      log: list[tuple[bool, int, float, int, int, bytes, int]]) -> None:
        """The native fast path gave ``conn`` back at its checkpoint (``_Conn.import_state``):
        the segments it applied since, in order, as ``(through, d, ts, seq, flags, payload,
        ack)`` with ``d`` an index of ``conn.dirs``. A segment goes through ``segment`` when
        ``through``; otherwise it is the rest of a segment after a checkpoint, which goes
        straight to the direction's reader. They were seen before the timers last ran: they
        must not run them again (with non-monotonic capture times they could), and ``now`` is
        left as it was (part of the hand-back contract, see ``_Conn.export_state``)."""
        now, due = self.now, self.next_sweep
        self.next_sweep = math.inf
        for through, d, ts, seq, flags, payload, ack in log:
            if through:
                self.segment(ts, conn.keys[d], seq, flags, payload, ack)
            else:
                feed = conn.dirs[d].feed
                assert feed is not None
                feed(payload, ts)
        self.now = now
        if due < self.next_sweep:
            self.next_sweep = due

    def retransmit_native(self, conn: _Conn, ts: float) -> None:
        """The native fast path saw a data segment of ``conn`` (a connection it holds, whose
        bytes another reader takes: nothing out of order or parked there, its ACK not ahead of
        the peer) that lies wholly before what was delivered: what ``segment`` does with it
        (``_segment``, ``_apply``, ``_deliver``), the connection's ``last_ts`` kept there (part of
        the hand-back contract, see ``_Conn.export_state``)."""
        self.now = ts
        self._retransmit(conn)

    def end_native(self, conn: _Conn) -> None:
        """The native fast path ended a connection it held (both FINs, or an RST between
        exchanges), every exchange emitted: drop it from the tables as ``_end`` would, with
        nothing left to flush (part of the hand-back contract, see ``_Conn.export_state``)."""
        for k in conn.keys:
            e = self.keys.get(k)
            if e is not None and e[0] is conn:
                del self.keys[k]
        self.lru.pop(conn.serial, None)
        conn.fast = False
        if conn.handler is not None:
            conn.handler.detach()  # type: ignore[attr-defined]

    def _end(self, conn: _Conn, ts: float, *, timed_out: bool = False) -> None:
        """Finish a connection: flush what is buffered (with gaps) and drop its state."""
        if self.native is not None:
            # given back if the native path holds it, and forgotten there either way
            fast = conn.fast
            self.native.end(conn)
            if fast and conn.serial not in self.lru:
                return  # the replayed segments ended it
        if conn.parked:
            self._flush_parked(conn)
            if conn.serial not in self.lru:
                return  # the parked segments ended it
        conn.parked = None
        self.parked.pop(conn.serial, None)
        for k in conn.keys:
            e = self.keys.get(k)
            if e is not None and e[0] is conn:
                del self.keys[k]
        self.lru.pop(conn.serial, None)
        h = conn.handler
        if h is None:
            return
        for d, dr in enumerate(conn.dirs):
            while dr.ooo:
                self._count("gaps_at_close")
                self._skip_gap(conn, d, dr, ts)
            fin = dr.fin_seq
            if fin is not None and dr.nxt is not None and not dr.closed:
                missing = (fin - dr.nxt) & MASK
                if 0 < missing < HALF:
                    self._count("gaps")
                    self._count("gap_bytes", missing)
                    h.gap(dr.from_client, missing, ts)
        h.finish(ts, timed_out=timed_out)
        if timed_out:
            self._count("connections_timed_out")
        if h.non_http:
            self._count("non_http_streams")

    def sweep(self, ts: float) -> None:
        """End connections idle longer than the timeout (capture time, not wall time)."""
        if self.parked:
            self._expire_parked(ts)
        if self.native is not None:
            self.native.touch()
        limit = ts - self.idle_timeout
        for conn in [c for c in self.lru.values() if c.last_ts <= limit]:
            self._end(conn, ts, timed_out=conn.handler is not None)

    def finish(self) -> None:
        """End of input: finish every connection still open (applying what was parked may
        open one more, on a reused port: loop until none is left)."""
        while self.lru:
            for conn in list(self.lru.values()):
                self._end(conn, self.now)
        if self.native is not None:
            self.native.sweep()  # nothing it holds outlives the connections

    @property
    def tracked(self) -> int:
        return len(self.lru)


_SERVER_PORTS = frozenset((80, 8080, 8000, 8008, 8081, 8888, 3128, 443, 8443, 5000, 3000, 9000))


def _port_classify(key: bytes, payload: bytes) -> bool:
    """Guess whether the sender of ``key`` is the client, from ports alone."""
    sport, dport = key_ports(key)
    if dport in _SERVER_PORTS and sport not in _SERVER_PORTS:
        return True
    if sport in _SERVER_PORTS and dport not in _SERVER_PORTS:
        return False
    return dport < sport
