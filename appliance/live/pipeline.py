"""The exchange pipeline: sample -> filters -> sanitise -> sinks, each a small object.

Like mitmproxy addons or GoReplay plugins, every stage has one method, ``process(ex)``, which
returns the Exchange (possibly a new one) or None to stop it there. Sinks are stages too, with
optional ``tick(now)`` (flush, time-based rotation) and ``close()`` (flush everything; SIGTERM)
hooks; frame sinks (pcap) get the raw frames with ``frames(batch)``. So a user adds a filter or
a sink by writing one small class, without touching capture or extraction.

The order is fixed by construction, not by the user: sampling first (cheapest, and whole
connections: the decision is a symmetric hash of the 4-tuple, so every exchange of a connection
gets the same answer), then filters, then the sanitise stage, and only then any sink, so no
exchange reaches a sink unmasked. The one exception is the pcap sink, which records raw
packets; the config refuses it next to a sanitise stage unless ``raw_unsanitised: true``.

Nothing here may block capture: the hand-off queue to the replayer is bounded and drops (and
counts) when full; a failing sink counts its errors and the pipeline goes on.
"""

from __future__ import annotations

import bisect
import contextlib
import fnmatch
import logging
import os
import queue
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from appliance.live.capture import Frame, conn_hash, endpoint_bytes, frame_conn_hash
from appliance.live.config import FilterConfig, PipelineConfig, SinkConfig
from replay.model import Exchange

log = logging.getLogger("shadowtap.appliance")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0)


class Stats:
    """Counters of one worker; ``snapshot()`` is what metrics and the supervisor see.

    Plain ints and dicts, not prometheus objects: a worker may be a separate process, and its
    numbers travel to the metrics endpoint as a snapshot.
    """

    def __init__(self) -> None:
        self.drops: dict[str, int] = {}
        self.filtered: dict[str, int] = {}
        self.sink_written: dict[str, int] = {}
        self.sink_rotations: dict[str, int] = {}
        self.emitted = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.reloads = 0
        self.reload_errors = 0
        self.queues: dict[str, tuple[int, int]] = {}

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


# ---- stages ------------------------------------------------------------------------------

class Sample:
    """Keep ``percent`` of connections, whole: the decision is a symmetric hash of the
    connection's endpoints, the same one the pcap sink uses on frames."""

    name = "sample"

    def __init__(self, percent: float) -> None:
        self.threshold = int(percent * 100)  # of 10,000
        self._cache: dict[Any, bool] = {}

    def keep_hash(self, h: int) -> bool:
        return h % 10_000 < self.threshold

    def frames(self, batch: list[Frame]) -> list[Frame]:
        """Drop frames of connections not sampled *before* extraction, so unsampled traffic
        costs a hash instead of reassembly and parsing. Frames it cannot place pass; the
        exchange-level decision (same hash) still applies to them."""
        keep = self.keep_hash
        out = []
        for f in batch:
            h = frame_conn_hash(f[2], f[1])
            if h is None or keep(h):
                out.append(f)
        return out

    def process(self, ex: Exchange) -> Exchange | None:
        c = ex.conn
        if c is None or self.threshold >= 10_000:
            return ex
        keep = self._cache.get(c)
        if keep is None:
            keep = self.keep_hash(conn_hash(endpoint_bytes(c.client_ip, c.client_port),
                                            endpoint_bytes(c.server_ip, c.server_port)))
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[c] = keep
        return ex if keep else None


class Filter:
    """Keep exchanges matching every given field (host glob, method, path regex, server port);
    with ``exclude`` drop them instead. Fields hold alternatives (any host in the list)."""

    def __init__(self, cfg: FilterConfig, index: int) -> None:
        self.name = f"filter{index}"
        self.hosts = [re.compile(fnmatch.translate(h.lower())) for h in cfg.host]
        self.methods = frozenset(cfg.method)
        self.path = re.compile(cfg.path) if cfg.path else None
        self.ports = frozenset(cfg.port)
        self.exclude = cfg.exclude

    def _matches(self, ex: Exchange) -> bool:
        req = ex.request
        if self.methods and (req is None or req.method not in self.methods):
            return False
        if self.hosts:
            host = (req.host or "") if req is not None else ""
            host = host.lower().rsplit(":", 1)[0] if not host.startswith("[") else host.lower()
            if not any(h.match(host) for h in self.hosts):
                return False
        if self.path is not None and (req is None or not self.path.search(req.path)):
            return False
        return not (self.ports and (ex.conn is None or ex.conn.server_port not in self.ports))

    def process(self, ex: Exchange) -> Exchange | None:
        return ex if self._matches(ex) != self.exclude else None


class Sanitise:
    """The policy engine (``replay.sanitise``) as a stage; always placed before every sink."""

    name = "sanitise"

    def __init__(self, policy: str | None, key_file: str | None, key_env: str | None) -> None:
        from replay.sanitise import Policy, Sanitiser, load_key

        pol = Policy.load(policy)
        key = None
        if key_file or key_env:
            key = load_key(key_file, key_env)
        elif pol.key_file is not None or pol.key_env is not None:
            key = load_key(pol.key_file, pol.key_env)
        self.sanitiser = Sanitiser(pol, key)

    def process(self, ex: Exchange) -> Exchange | None:
        return self.sanitiser.apply(ex)


# ---- sinks -------------------------------------------------------------------------------

class RotatingFile:
    """A file that rotates by size and age: ``exchanges.jsonl`` is the live one, rotated files
    are renamed ``exchanges.20261126T133015.000001.jsonl`` and only the newest ``keep`` remain.

    A live file left by a previous run (e.g. after ``kill -9``) is rotated away at start; a
    trailing partial record is cut first (``trim``), so every file is whole records.
    """

    def __init__(self, path: str | Path, max_size: int, max_age: float, keep: int,
                 header: bytes = b"", trim: Callable[[Path], None] | None = None) -> None:
        self.path = Path(path)
        self.max_size = max_size
        self.max_age = max_age
        self.keep = keep
        self.header = header
        self.rotations = 0
        self._seq = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > len(header):
            if trim is not None:
                trim(self.path)
            self._rename_away()
        self._open()

    def _open(self) -> None:
        self.fp: BinaryIO = self.path.open("wb", buffering=1 << 20)
        self.fp.write(self.header)
        self.size = len(self.header)
        self.opened = time.monotonic()
        self.dirty = False

    def _rename_away(self) -> None:
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        dst = self.path.with_name(f"{self.path.stem}.{stamp}.{os.getpid()}{self._seq:04d}"
                                  f"{self.path.suffix}")
        os.replace(self.path, dst)
        self.rotations += 1
        self._prune()

    def _prune(self) -> None:
        pattern = f"{self.path.stem}.*{self.path.suffix}"
        old = sorted((p for p in self.path.parent.glob(pattern) if p != self.path),
                     key=lambda p: p.stat().st_mtime)
        for p in old[:max(0, len(old) - self.keep)]:
            with contextlib.suppress(OSError):
                p.unlink()

    def write(self, data: bytes) -> None:
        self.fp.write(data)
        self.size += len(data)
        self.dirty = True
        if self.size >= self.max_size:
            self.rotate()

    def rotate(self) -> None:
        if self.size <= len(self.header):
            self.opened = time.monotonic()
            return
        self.fp.close()
        self._rename_away()
        self._open()

    def tick(self, now: float) -> None:
        if time.monotonic() - self.opened >= self.max_age:
            self.rotate()
        elif self.dirty:
            self.fp.flush()
            self.dirty = False

    def close(self) -> None:
        self.fp.flush()
        os.fsync(self.fp.fileno())
        self.fp.close()
        if self.size <= len(self.header):
            with contextlib.suppress(OSError):
                self.path.unlink()


def _trim_partial_line(path: Path) -> None:
    """Cut a JSONL file after its last newline (a record half-written when we were killed)."""
    with path.open("rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            i = chunk.rfind(b"\n")
            if i >= 0:
                f.truncate(pos - step + i + 1)
                return
            pos -= step
        f.truncate(0)


class JsonlSink:
    """The exchange log: ``replay.formats.jsonl`` records, rotated by size and age."""

    def __init__(self, cfg: SinkConfig, stats: Stats) -> None:
        from replay.formats.jsonl import exchange_line

        self.name = f"jsonl:{cfg.path}"
        self.file = RotatingFile(cfg.path or "", cfg.max_size, cfg.max_age, cfg.keep,
                                 trim=_trim_partial_line)
        self.stats = stats
        self._line = exchange_line

    def process(self, ex: Exchange) -> Exchange | None:
        self.file.write(self._line(ex))
        return ex

    def write_lines(self, blob: bytes) -> None:
        """Whole lines the native extractor encoded, rotated exactly as line-by-line writes
        would be (a file ends with the line that takes it to ``max_size``)."""
        f = self.file
        while blob:
            room = f.max_size - f.size
            if len(blob) < room:
                f.write(blob)
                return
            cut = blob.find(b"\n", max(0, room - 1)) + 1 or len(blob)
            f.write(blob[:cut])
            blob = blob[cut:]

    def tick(self, now: float) -> None:
        self.file.tick(now)

    def close(self) -> None:
        self.file.close()


_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)  # nanosecond pcap


class PcapSink:
    """Raw frames to rotating nanosecond pcap files (link type of the source), sampled by the
    same connection hash as the exchanges. Raw means unsanitised: see the module docstring."""

    name = "pcap"

    def __init__(self, cfg: SinkConfig, linktype: int, sample: Sample | None) -> None:
        header = _PCAP_HEADER[:-4] + struct.pack("<I", linktype)
        self.name = f"pcap:{cfg.path}"
        self.linktype = linktype
        self.file = RotatingFile(cfg.path or "", cfg.max_size, cfg.max_age, cfg.keep, header)
        self.sample = sample if sample is not None and sample.threshold < 10_000 else None
        self._rec = struct.Struct("<IIII").pack

    def process(self, ex: Exchange) -> Exchange | None:
        return ex

    def frames(self, batch: list[Frame]) -> None:
        rec = self._rec
        keep = self.sample.keep_hash if self.sample is not None else None
        parts: list[bytes] = []
        for ts, lt, frame in batch:
            if keep is not None:
                h = frame_conn_hash(frame, lt)
                if h is not None and not keep(h):
                    continue
            sec = int(ts)
            n = len(frame)
            parts.append(rec(sec, int((ts - sec) * 1e9), n, n))
            parts.append(frame)
        if parts:
            self.file.write(b"".join(parts))

    def tick(self, now: float) -> None:
        self.file.tick(now)

    def close(self) -> None:
        self.file.close()


class Handoff:
    """The live hand-off to the replayer: a bounded queue that never blocks capture.

    ``put`` does not wait: when the consumer falls behind, the exchange is dropped and counted
    (``handoff_overflow``). Consumers call ``get(timeout)`` (or ``queue.get``) from their own
    thread.
    """

    name = "handoff"

    def __init__(self, size: int, stats: Stats) -> None:
        self.queue: queue.Queue[Exchange] = queue.Queue(size)
        self.size = size
        self.stats = stats

    def process(self, ex: Exchange) -> Exchange | None:
        try:
            self.queue.put_nowait(ex)
        except queue.Full:
            self.stats.drop("handoff_overflow")
        return ex

    def get(self, timeout: float | None = None) -> Exchange | None:
        """The next exchange, or None after ``timeout`` seconds without one."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def get_many(self, limit: int, timeout: float | None = None) -> list[Exchange]:
        """Up to ``limit`` exchanges: waits (``timeout``) for the first only, then takes what
        is already queued. Why: one wake-up of the consumer per batch instead of per exchange
        (a cross-thread hand-over costs as much as a third of a comparison)."""
        first = self.get(timeout)
        if first is None:
            return []
        out = [first]
        q = self.queue
        while len(out) < limit:
            try:
                out.append(q.get_nowait())
            except queue.Empty:
                break
        return out

    def depth(self) -> int:
        return self.queue.qsize()


# ---- the pipeline ------------------------------------------------------------------------

class Pipeline:
    """Stages then sinks; counts every exchange that stops and why, times every one."""

    def __init__(self, stages: list[Any], sinks: list[Any], stats: Stats,
                 handoff: Handoff | None = None) -> None:
        self.stages = stages
        self.sample: Sample | None = next((s for s in stages if isinstance(s, Sample)), None)
        self.sinks = sinks
        self.frame_sinks = [s for s in sinks if hasattr(s, "frames")]
        self.stats = stats
        self.handoff = handoff
        self._errors_logged = 0

    @property
    def lines_ok(self) -> bool:
        """Can exchanges arrive as finished JSONL lines (``emit_lines``)? Only when nothing
        looks inside them: no stage, no hand-off queue, every sink one that takes lines (a
        JSONL log, the live engine's hand-off to its workers)."""
        return (not self.stages and self.handoff is None and bool(self.sinks)
                and all(hasattr(s, "write_lines") for s in self.sinks))

    def emit_lines(self, blob: bytes, n: int, ts: bytes) -> None:
        """``n`` exchanges the native extractor wrote as JSONL lines (``lines_ok`` pipelines),
        with each one's last capture timestamp (packed doubles) for the latency histogram."""
        st = self.stats
        st.emitted += n
        for sink in self.sinks:
            try:
                sink.write_lines(blob)
            except Exception as e:
                self._error(sink.name, e)
                continue
            st.sink_written[sink.name] = st.sink_written.get(sink.name, 0) + n
        now = time.time()
        observe = st.observe
        for t in memoryview(ts).cast("d"):
            observe(max(0.0, now - t))

    def emit(self, ex: Exchange) -> None:
        st = self.stats
        st.emitted += 1
        for stage in self.stages:
            try:
                out = stage.process(ex)
            except Exception as e:  # a stage bug must not stop capture
                self._error(stage.name, e)
                return
            if out is None:
                st.filtered[stage.name] = st.filtered.get(stage.name, 0) + 1
                return
            ex = out
        for sink in self.sinks:
            try:
                sink.process(ex)
            except Exception as e:
                self._error(sink.name, e)
                continue
            st.sink_written[sink.name] = st.sink_written.get(sink.name, 0) + 1
        last = ex.ts_response_end or ex.ts_response_start or ex.ts_request_end \
            or ex.ts_request_start
        if last is not None:
            st.observe(max(0.0, time.time() - last))

    def _error(self, name: str, e: Exception) -> None:
        self.stats.drop(f"stage_error:{name}")
        if self._errors_logged < 20:
            self._errors_logged += 1
            log.warning("pipeline stage %s failed: %s", name, e)

    def frames(self, batch: list[Frame]) -> None:
        for s in self.frame_sinks:
            try:
                s.frames(batch)
            except Exception as e:
                self._error(s.name, e)

    def tick(self, now: float) -> None:
        for s in self.sinks:
            tick = getattr(s, "tick", None)
            if tick is not None:
                try:
                    tick(now)
                except Exception as e:
                    self._error(s.name, e)
            rot = getattr(getattr(s, "file", None), "rotations", None)
            if rot is not None:
                self.stats.sink_rotations[s.name] = rot
        if self.handoff is not None:
            self.stats.queues["handoff"] = (self.handoff.depth(), self.handoff.size)

    def close(self) -> None:
        """Flush and close every sink (SIGTERM, reload): each is tried even if one fails."""
        for s in self.sinks:
            close = getattr(s, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as e:
                    self._error(s.name, e)


def worker_path(path: str, index: int, workers: int) -> str:
    """``exchanges.jsonl`` -> ``exchanges-w1.jsonl`` when several workers write side by side."""
    if workers <= 1:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}-w{index}{p.suffix}"))


def build(cfg: PipelineConfig, stats: Stats, *, linktype: int = 1, index: int = 0,
          workers: int = 1, handoff: Handoff | None = None) -> Pipeline:
    """The pipeline for one worker from its validated config.

    ``handoff`` lets a caller keep one hand-off queue across reloads (its consumer holds it).
    """
    stages: list[Any] = []
    sample = Sample(cfg.sample_percent)
    if cfg.sample_percent < 100:
        stages.append(sample)
    stages.extend(Filter(f, i) for i, f in enumerate(cfg.filters))
    if cfg.sanitise.enabled:
        stages.append(Sanitise(cfg.sanitise.policy, cfg.sanitise.key_file, cfg.sanitise.key_env))
    sinks: list[Any] = []
    ho: Handoff | None = None
    for sc in cfg.sinks:
        if sc.type in ("jsonl", "pcap"):
            sc = SinkConfig(**{**sc.__dict__, "path": worker_path(sc.path or "", index, workers)})
        if sc.type == "jsonl":
            sinks.append(JsonlSink(sc, stats))
        elif sc.type == "pcap":
            sinks.append(PcapSink(sc, linktype, sample))
        elif sc.type == "handoff":
            # A kept queue stays as it is (its consumer holds it; a new size needs a restart).
            ho = handoff if handoff is not None else Handoff(sc.size, stats)
            ho.stats = stats
            sinks.append(ho)
    return Pipeline(stages, sinks, stats, ho)
