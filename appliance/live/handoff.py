"""The local hand-off from the capture process to the worker processes.

Why JSONL lines over pipes: the native extractor already writes each exchange as its JSONL line
in C (``replay.formats.jsonl``'s bytes exactly), so the capture process pays nothing to
serialise, and a newline-framed byte stream needs no other framing. Exchanges the Python reader
emits are encoded by the same encoder. Each worker has its own pipe; an exchange goes to the
worker its *connection* hashes to, so a connection's requests stay in order and in one worker.

Why the capture never waits: the pipes are non-blocking. What a worker has not taken yet waits in
a bounded buffer of the capture process. When a worker falls behind, load is shed on purpose,
before anything is lost in the kernel: *new* connections are sampled out by a deterministic hash
of their id (``Shedder``), so what is kept is an unbiased sample and every kept connection stays
whole. Only when the buffer is full despite that is an exchange of a kept connection dropped
(``handoff_overflow``). Both are counted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import select
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any

F_SETPIPE_SZ = 1031
_IOV = 512
"""Lines per ``writev`` (IOV_MAX is 1024 on Linux)."""


class Shedder:
    """Keep or shed whole connections, by a deterministic hash, at an adaptive level.

    ``level`` is the share of *new* connections kept, in 1/10,000. A connection's decision is
    taken at its first exchange and remembered, so raising or lowering the level never splits
    one. The level follows a fill ratio (0 = idle, 1 = full): down fast when it passes
    ``high``, back up slowly below ``low``.
    """

    __slots__ = ("_at", "decided", "high", "kept", "level", "low", "max_decided", "shed")

    def __init__(self, high: float = 1.0, low: float = 0.1,
                 max_decided: int = 500_000) -> None:
        self.level = 10_000
        self.decided: dict[bytes, bool] = {}
        self.high = high
        self.low = low
        self.max_decided = max_decided
        self.kept = 0
        self.shed = 0
        self._at = 0.0

    def keep(self, conn_id: bytes, h: int, room: bool = True) -> bool:
        """Whether this exchange (of connection ``conn_id``, hash ``h``) is kept. ``room``:
        False when the consumer's waiting line is full; a new connection is then shed whatever
        its hash (one already kept goes on: its sequence stays whole)."""
        d = self.decided.get(conn_id)
        if d is None:
            d = room and (h % 10_000) < self.level
            if len(self.decided) >= self.max_decided:
                # Forget the older half (dicts keep insertion order): connections that old have
                # almost always ended; one still open is decided again at the current level.
                old = self.decided
                self.decided = dict(list(old.items())[len(old) // 2:])
            self.decided[conn_id] = d
        if d:
            self.kept += 1
        else:
            self.shed += 1
        return d

    def adapt(self, fill: float) -> None:
        """At most ten steps a second, however often it is called."""
        now = time.monotonic()
        if now - self._at < 0.1:
            return
        self._at = now
        if fill > self.high:
            # Not below 1 %: the verdict keeps a trickle, and a backlog that is not about new
            # connections falls on the hard budget instead (counted as overflow).
            self.level = max(100, int(self.level * 0.7))
        elif fill < self.low and self.level < 10_000:
            self.level = min(10_000, self.level + 500)


def conn_of_line(line: bytes) -> bytes:
    """The connection part of a JSONL line's id (``{"v":1,"id":"<conn>.<n>"``)."""
    end = line.find(b'"', 13)
    return line[13:line.rfind(b".", 13, end)]


def conn_hash(conn_id: bytes) -> int:
    """Stable across processes and runs (unlike ``hash``): shard and shed decisions repeat."""
    return zlib.crc32(conn_id)


def make_pipe(size: int = 1 << 20) -> tuple[int, int]:
    """A pipe whose write end never blocks, with a kernel buffer as large as allowed."""
    r, w = os.pipe()
    for s in (size, 1 << 20):
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, s)
            break
        except OSError:
            continue
    fl = fcntl.fcntl(w, fcntl.F_GETFL)
    fcntl.fcntl(w, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    return r, w


class Dispatcher:
    """Capture side: exchanges (JSONL lines) into one pipe per worker, never waiting.

    ``lines(blob, n, ts)`` takes the native extractor's blocks, ``exchange(ex)`` the Python
    reader's Exchanges; ``flush()`` (after every ring poll) writes what the pipes take.
    ``budget`` bounds the bytes waiting per worker in this process.
    """

    def __init__(self, fds: list[int], *, budget: int = 64 << 20, shed_above: int = 4 << 20,
                 drop: Callable[[str, int], None] | None = None,
                 lossless: bool = False) -> None:
        from replay.formats.jsonl import exchange_line

        self.fds = list(fds)
        self.n = len(fds)
        self.budget = budget
        self.shed_above = min(shed_above, budget // 4)
        """Waiting bytes (per worker) above which new connections start to be shed: a backlog
        of about a second of a worker's work, so what is kept is compared while fresh."""
        self.pending: list[deque[bytes]] = [deque() for _ in fds]
        self.pending_bytes = [0] * self.n
        self.shedders = [Shedder() for _ in fds]
        """One per worker: a hot or dead worker sheds its own share, not everyone's."""
        self.overflow = 0
        self.broken = [False] * self.n
        self.lost = 0
        """Bytes buffered for a worker that died (its pipe broke): counted as lost exchanges."""
        self.sent = [0] * self.n
        self._drop = drop
        self._line = exchange_line
        self.lossless = lossless
        """A capture file, not a live port: wait for the workers instead of shedding."""
        for fd in self.fds:
            # Set either way: the flag belongs to the pipe's open file, which a capture
            # process that ran before this one may have left in either state.
            os.set_blocking(fd, lossless)

    def swap(self, i: int, fd: int) -> None:
        """A restarted worker's new pipe for shard ``i``."""
        with contextlib.suppress(OSError):
            os.close(self.fds[i])
        os.set_blocking(fd, self.lossless)
        self.fds[i] = fd
        self.broken[i] = False

    def _put(self, line: bytes, cid: bytes) -> None:
        h = conn_hash(cid)
        i = (h >> 16) % self.n
        if self.lossless:
            self.pending[i].append(line)
            self.pending_bytes[i] += len(line)
            if self.pending_bytes[i] > 1 << 20:
                self.flush()
            return
        if not self.shedders[i].keep(cid, h):
            return
        if self.broken[i]:  # its worker died; the engine is starting another
            self.lost += 1
            if self._drop is not None:
                self._drop("worker_lost", 1)
            return
        if self.pending_bytes[i] + len(line) > self.budget:
            self.overflow += 1
            if self._drop is not None:
                self._drop("handoff_overflow", 1)
            return
        self.pending[i].append(line)
        self.pending_bytes[i] += len(line)

    def lines(self, blob: bytes, n: int, ts: bytes) -> None:
        put = self._put
        for line in blob.splitlines(keepends=True):
            put(line, conn_of_line(line))

    def exchange(self, ex: Any) -> None:
        line = self._line(ex)
        self._put(line, ex.id.rpartition(".")[0].encode())

    def flush(self) -> None:
        """Write what each pipe takes now; the rest waits for the next call.

        The waiting lines go out with ``writev`` in slices of ``_IOV``, never joined: a worker
        that is behind leaves megabytes waiting here, and copying all of them at every ring
        poll (as a ``join`` did) cost the capture more than its extraction, until the kernel
        dropped packets (bench/live, at R)."""
        for i in range(self.n):
            parts = self.pending[i]
            if not parts or self.broken[i]:
                continue
            fd = self.fds[i]
            sent = 0
            while parts:
                batch = list(itertools.islice(parts, _IOV))
                try:
                    k = os.writev(fd, batch)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in (errno.EPIPE, errno.EBADF):
                        self.broken[i] = True
                        n = sum(p.count(b"\n") for p in parts)
                        self.lost += n
                        if self._drop is not None:
                            self._drop("worker_lost", n)
                        parts.clear()
                        break
                    raise
                sent += k
                for b in batch:  # drop what was written; keep the unwritten end of a line
                    if k >= len(b):
                        k -= len(b)
                        parts.popleft()
                    else:
                        if k:
                            parts[0] = b[k:]
                        break
                else:
                    continue  # all of the slice went: more may
                if not self.lossless:
                    break  # the pipe is full
            self.sent[i] += sent
            self.pending_bytes[i] = 0 if self.broken[i] else self.pending_bytes[i] - sent
        for i, sh in enumerate(self.shedders):
            sh.adapt(self.pending_bytes[i] / self.shed_above)

    def close(self, timeout: float = 30.0) -> None:
        """End of capture: what waits is written (waiting for the workers at most
        ``timeout`` seconds in all; the pipes stay non-blocking, see ``__init__``), then the
        pipes are closed and the workers see EOF once they have read everything."""
        deadline = time.monotonic() + timeout
        for i, fd in enumerate(self.fds):
            data = b"".join(self.pending[i]) if not self.broken[i] else b""
            while data and time.monotonic() < deadline:
                try:
                    data = data[os.write(fd, data):]
                except BlockingIOError:
                    select.select([], [fd], [], 0.2)
                except OSError:
                    break
            if data:
                n = data.count(b"\n")
                self.lost += n
                if self._drop is not None:
                    self._drop("worker_lost", n)
            self.pending[i] = deque()
            self.pending_bytes[i] = 0
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def shedder(self) -> Shedder:
        """The most restrictive worker's (for a one-number view)."""
        return min(self.shedders, key=lambda s: s.level)

    def counters(self) -> dict[str, Any]:
        return {"kept": sum(s.kept for s in self.shedders),
                "shed": sum(s.shed for s in self.shedders),
                "keep_level": self.shedder.level / 10_000, "overflow": self.overflow,
                "pending_bytes": sum(self.pending_bytes), "budget": self.budget * self.n}


class LineSplitter:
    """Worker side: chunks read from the pipe -> whole lines (a line may span two reads)."""

    __slots__ = ("rest",)

    def __init__(self) -> None:
        self.rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.rest:
            chunk = self.rest + chunk
        cut = chunk.rfind(b"\n") + 1
        self.rest = chunk[cut:]
        return chunk[:cut].splitlines() if cut else []


class DispatchSink:
    """The capture pipeline's last sink: every exchange to the worker processes. It takes the
    native extractor's finished lines as they are (``write_lines``), or Exchanges."""

    name = "handoff:workers"

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def process(self, ex: Any) -> Any:
        self.dispatcher.exchange(ex)
        return ex

    def write_lines(self, blob: bytes) -> None:
        self.dispatcher.lines(blob, 0, b"")

    def close(self) -> None:
        self.dispatcher.close()
