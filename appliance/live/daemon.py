"""Workers and the appliance daemon: capture -> Extractor -> pipeline, with reload and drain.

A ``Worker`` owns one capture source, one ``replay.extract.Extractor`` (the same sans-I/O core as
``shadowtap extract``) and one pipeline. Its loop polls the source, hands the frames to the frame
sinks and the Extractor, and once a second flushes sinks, rotates by age, sweeps idle
connections and refreshes the kernel counters.

``Appliance`` runs workers: with one worker, in a thread of the calling process (what the demo
and ``shadowtap capture`` use; the live hand-off queue is then ``appliance.handoff``); with
several, in forked processes that join one PACKET_FANOUT_HASH group, each publishing a
counter snapshot to the parent for the metrics endpoint. Dead worker processes are restarted.

Signals (wired by ``run_daemon``): SIGHUP re-reads and validates the config and swaps each
worker's pipeline (and kernel filter) without closing the capture socket, so not a packet is
missed; a bad new config is logged and the old pipeline keeps running. SIGTERM/SIGINT stop the
loop, drain what the ring still holds, close every open connection (their exchanges are emitted,
marked incomplete where they are) and flush and fsync every sink.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from appliance.live import config as cfgmod
from appliance.live.capture import FileSource, Source
from appliance.live.config import ApplianceConfig
from appliance.live.pipeline import Handoff, Pipeline, Stats, build
from replay.extract import Extractor, Summary
from replay.model import Exchange

log = logging.getLogger("shadowtap.appliance")


@dataclass
class HandoffLink:
    """How a capture process hands exchanges to the live engine's worker processes: the write
    ends of their pipes (one per worker) and a control socket on which the engine sends the
    new pipe of a restarted worker (SCM_RIGHTS)."""

    fds: list[int]
    control: socket.socket | None = None
    budget: int = 64 << 20


class Worker:
    """One capture source through one Extractor into one pipeline.

    With a ``HandoffLink`` it is the live engine's capture process: its own pipeline keeps only
    what needs the frames (connection sampling, raw pcap sinks) and hands every exchange to the
    worker processes (``appliance.live.handoff``); sanitise, filters, logs and shadowing run
    there.
    """

    def __init__(self, cfg: ApplianceConfig, index: int = 0, *, source: Source | None = None,
                 handoff: Handoff | None = None, link: HandoffLink | None = None) -> None:
        self.cfg = cfg
        self.index = index
        self.stats = Stats()
        self.link = link
        self.dispatcher: Any = None
        if link is not None:
            from appliance.live.handoff import Dispatcher

            self.dispatcher = Dispatcher(link.fds, budget=link.budget, drop=self.stats.drop,
                                         lossless=cfg.source.kind == "file")
        self.source = source if source is not None else cfg.source.open(cfg.workers)
        self.pipeline: Pipeline = self._build(cfg.pipeline, handoff)
        boot = format(int(time.time() * 1000) % (36 ** 6), "x")
        ex = cfg.extract
        self.keylog: Any = None
        """source.keylog: the key log files, tailed (``_poll_keylog``) as the servers append."""
        self._keylog_at = 0.0
        if cfg.source.keylog:
            from replay.tls.keylog import KeyLog

            self.keylog = KeyLog()
            self._poll_keylog(0.0)
        # The emit callback is a bound method of the worker, so a reload only swaps
        # self.pipeline: the Extractor and its connection state live on.
        self.extractor = Extractor(self._emit, port=ex.port, id_prefix=f"{boot}w{index}-",
                                   max_connections=ex.max_connections, max_buffer=ex.max_buffer,
                                   idle_timeout=ex.idle_timeout, keylog=self.keylog)
        self._sync_lines()
        self.stop_event = threading.Event()
        self.reload_requested = False
        self.heartbeat = time.monotonic()
        self.source_stats: dict[str, Any] = {}
        self.live = not isinstance(self.source, FileSource)
        self.done = False
        self.extract_errors = 0
        self._warned_at: tuple[int, int, float] = (0, 0, -1e9)

    def _build(self, pcfg: Any, handoff: Handoff | None = None) -> Pipeline:
        if self.dispatcher is None:
            return build(pcfg, self.stats, linktype=self.source.linktype, index=self.index,
                         workers=self.cfg.workers, handoff=handoff)
        from appliance.live.config import PipelineConfig, SanitiseConfig
        from appliance.live.handoff import DispatchSink

        mine = PipelineConfig(sample_percent=pcfg.sample_percent,
                              sanitise=SanitiseConfig(enabled=False),
                              sinks=[sc for sc in pcfg.sinks if sc.type == "pcap"])
        p = build(mine, self.stats, linktype=self.source.linktype, index=self.index,
                  workers=self.cfg.workers)
        p.sinks.append(DispatchSink(self.dispatcher))
        return p

    @property
    def handoff(self) -> Handoff | None:
        return self.pipeline.handoff

    def _emit(self, ex: Exchange) -> None:
        self.pipeline.emit(ex)

    def _emit_lines(self, blob: bytes, n: int, ts: bytes) -> None:
        self.pipeline.emit_lines(blob, n, ts)

    def _sync_lines(self) -> None:
        """A pipeline that only writes JSONL logs takes the native path's finished lines (no
        Exchange objects); any other takes Exchanges. Called again after every reload."""
        self.extractor.set_emit_line(self._emit_lines if self.pipeline.lines_ok else None)

    def run(self) -> None:
        """The capture loop, until ``stop_event`` is set (or a file source ends); then drain."""
        src = self.source
        pipeline_frames = self.pipeline.frames
        next_tick = 0.0
        # Extraction makes millions of short-lived objects next to long-lived connection state;
        # with default thresholds the collector rescans that state constantly (the same tuning
        # as replay.extract for files, ~10 % of the time).
        old_gc = gc.get_threshold()
        gc.set_threshold(max(old_gc[0], 100_000), old_gc[1], old_gc[2])
        try:
            while not self.stop_event.is_set():
                if self.reload_requested:
                    self._reload()
                    pipeline_frames = self.pipeline.frames
                if self._native_ring():
                    # Frames go from the ring to the native extractor without Python objects.
                    n, errors, last = src.poll_native(  # type: ignore[attr-defined]
                        self.extractor.run_ring, 0.05)
                    frames = n
                    if errors:
                        self._extract_failed(errors, last)
                else:
                    frames = src.poll(0.05)
                    if frames:
                        if self.pipeline.frame_sinks:
                            pipeline_frames(frames)
                        self._feed(frames)
                if self.dispatcher is not None:
                    self.dispatcher.flush()
                now = time.monotonic()
                if self.keylog is not None and now - self._keylog_at >= 0.02:
                    self._poll_keylog(now)
                if now >= next_tick:
                    next_tick = now + 1.0
                    self._tick()
                if not frames and not self.live and getattr(src, "done", False):
                    break
            self._drain()
        finally:
            self.done = True
            self._tick()
            self.pipeline.close()
            src.close()
            gc.set_threshold(*old_gc)

    def _poll_keylog(self, now: float) -> None:
        """Read what the servers appended to the key logs (a stat per file when nothing was:
        every 20 ms, so a connection's secrets are usually there before its first encrypted
        record; one whose secrets come later is decrypted from the record they arrive at)."""
        self._keylog_at = now
        for p in self.cfg.source.keylog:
            try:
                self.keylog.poll_file(p)
            except Exception as e:  # a key log must never stop capture
                log.warning("source.keylog %s: %r", p, e)

    def _native_ring(self) -> bool:
        """Whether frames can go straight from the ring to the native extractor: nothing in
        the pipeline wants the frames themselves (pcap sinks, connection sampling)."""
        return (self.extractor.native is not None and hasattr(self.source, "poll_native")
                and not self.pipeline.frame_sinks and self.pipeline.sample is None)

    def _extract_failed(self, n: int, err: Any) -> None:
        self.extract_errors += n
        self.stats.drop("extractor_error", n)
        if self.extract_errors <= 20:
            log.warning("extractor failed on %d frame(s): %s", n, err)

    def _feed(self, frames: list[Any]) -> None:
        if self.pipeline.sample is not None:
            frames = self.pipeline.sample.frames(frames)
        try:
            self.extractor.run(frames)
        except Exception as e:  # one hostile packet must never stop capture
            self.extract_errors += 1
            self.stats.drop("extractor_error", len(frames))
            if self.extract_errors <= 20:
                log.warning("extractor failed on a batch of %d frames: %r", len(frames), e)

    def _swap_pipes(self) -> None:
        """A restarted worker's new pipe, sent by the engine on the control socket."""
        ctl = self.link.control if self.link is not None else None
        if ctl is None:
            return
        if ctl.getblocking():
            ctl.setblocking(False)  # (recv_fds ignores its flags argument in 3.11)
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(ctl, 64, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not msg and not fds:
                return
            if fds and msg.startswith(b"swap:"):
                self.dispatcher.swap(int(msg[5:]), fds[0])
                log.info("capture: worker %s has a new pipe", msg[5:].decode())

    def _tick(self) -> None:
        self._swap_pipes()
        self.heartbeat = time.monotonic()
        now = time.time()
        if self.live:
            with contextlib.suppress(Exception):
                self.extractor.reasm.sweep(now)
        try:
            self.source_stats = self.source.stats()
        except OSError:
            pass
        self.pipeline.tick(now)
        self._warn_losses()

    def _warn_losses(self) -> None:
        """At most once a minute, say in the log what is being lost and what to do about it."""
        kd = int(self.source_stats.get("kernel_drops", 0))
        ho = self.stats.drops.get("handoff_overflow", 0)
        if (kd, ho) == self._warned_at[:2] or time.monotonic() - self._warned_at[2] < 60:
            return
        if kd > self._warned_at[0]:
            log.warning("worker %d: the kernel dropped %d packets (%d in all): the capture "
                        "cannot keep up; raise source.ring.block_count, add workers, or narrow "
                        "source.filter", self.index, kd - self._warned_at[0], kd)
        if ho > self._warned_at[1]:
            log.warning("worker %d: %d exchanges did not fit the hand-off queue (its consumer "
                        "is slower than the traffic); raise its size or sample less",
                        self.index, ho - self._warned_at[1])
        self._warned_at = (kd, ho, time.monotonic())

    def _drain(self) -> None:
        """Whatever the ring or socket still holds, then close every connection."""
        for _ in range(64):
            frames = self.source.poll(0.0)
            if not frames:
                break
            if self.pipeline.frame_sinks:
                self.pipeline.frames(frames)
            self._feed(frames)
        try:
            self.extractor.finish()
        except Exception as e:
            log.warning("closing connections failed: %r", e)

    def request_reload(self) -> None:
        self.reload_requested = True

    def _reload(self) -> None:
        """Re-read the config; on success swap the pipeline and kernel filter, else keep both."""
        self.reload_requested = False
        if self.cfg.path is None:
            return
        try:
            new = cfgmod.load(self.cfg.path)
        except cfgmod.ConfigError as e:
            self.stats.reload_errors += 1
            log.error("reload refused, keeping the running pipeline: %s", e)
            return
        if self.cfg.netns_override is not None:
            new.source.netns = new.netns_override = self.cfg.netns_override
        if (new.source.kind, new.source.interface, new.source.netns, new.workers) != (
                self.cfg.source.kind, self.cfg.source.interface, self.cfg.source.netns,
                self.cfg.workers):
            log.warning("reload: source changes (interface, namespace, workers) need a restart; "
                        "applying the pipeline only")
        if ((new.source.bpf, new.source.skip_bare_acks)
                != (self.cfg.source.bpf, self.cfg.source.skip_bare_acks)
                and hasattr(self.source, "set_filter")):
            try:
                self.source.set_filter(new.source.bpf,  # type: ignore[attr-defined]
                                       new.source.skip_bare_acks)
            except Exception as e:
                self.stats.reload_errors += 1
                log.error("reload: cannot set the new filter (%s); keeping the old one", e)
                new.source.bpf = self.cfg.source.bpf
                new.source.skip_bare_acks = self.cfg.source.skip_bare_acks
        old = self.pipeline
        if old.handoff is not None and not any(sk.type == "handoff" for sk in new.pipeline.sinks):
            # Its consumer (live shadowing) runs on: the queue stays until a restart.
            log.warning("reload: the hand-off queue stays until a restart (live shadowing "
                        "consumes it; shadowing changes take effect at restart)")
            new.pipeline.sinks.append(cfgmod.SinkConfig(type="handoff", size=old.handoff.size))
        if self.dispatcher is not None:
            for sk in old.sinks:  # the hand-off to the workers lives on (not closed)
                if getattr(sk, "name", "") != "handoff:workers":
                    with contextlib.suppress(Exception):
                        sk.close()
        else:
            old.close()
        try:
            self.pipeline = self._build(new.pipeline, old.handoff)
        except Exception as e:
            self.stats.reload_errors += 1
            log.error("reload: cannot build the new pipeline (%s); rebuilding the old one", e)
            self.pipeline = self._build(self.cfg.pipeline, old.handoff)
            self._sync_lines()
            return
        new.source.kind = self.cfg.source.kind
        self.cfg = new
        self._sync_lines()
        self.stats.reloads += 1
        log.info("reloaded %s", new.path)

    def snapshot(self) -> dict[str, Any]:
        """Every counter of this worker, as plain data (it may travel between processes)."""
        for attempt in range(5):
            s = Summary()
            try:
                self.extractor.fill(s)  # may run in the metrics thread while capture goes on
                break
            except RuntimeError:  # a dict changed size under us: take the numbers again
                if attempt == 4:
                    raise
        st = self.stats
        drops = dict(st.drops)
        for k, v in s.skipped_packets.items():
            if k != "fragments_reassembled":
                drops[f"packet_{k}"] = drops.get(f"packet_{k}", 0) + v
        for k in ("evicted", "buffer_overflow", "overflow", "evicted_connections"):
            if s.tcp.get(k):
                drops[f"tcp_{k}"] = s.tcp[k]
        src = self.source_stats or {}
        for k, v in (src.get("drops") or {}).items():
            drops[f"capture_{k}"] = v
        return {
            "worker": self.index,
            "packets": self.source.packets,
            "bytes": self.source.bytes,
            "extracted_packets": s.packets,
            "kernel_packets": src.get("kernel_packets", 0),
            "kernel_drops": src.get("kernel_drops", 0),
            "drops": drops,
            "filtered": dict(st.filtered),
            "connections_tracked": self.extractor.reasm.tracked,
            "connections": s.connections,
            "exchanges": s.exchanges,
            "incomplete": s.incomplete_exchanges,
            "http_weird": dict(getattr(s, "weird", {}) or {}),
            "http_desync": getattr(s, "desync_messages", 0),
            "gaps": s.gaps,
            "retransmits": s.retransmits,
            "sink_written": dict(st.sink_written),
            "sink_rotations": dict(st.sink_rotations),
            "queues": {k: list(v) for k, v in st.queues.items()},
            "latency_counts": list(st.latency_counts),
            "latency_sum": st.latency_sum,
            "reloads": st.reloads,
            "reload_errors": st.reload_errors,
            "heartbeat_age": time.monotonic() - self.heartbeat,
            "done": self.done,
            "handoff": self.dispatcher.counters() if self.dispatcher is not None else None,
            "cpu_seconds": time.process_time(),
        }


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a worker whose supervisor is killed (-9) goes too, freeing the port."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def _worker_process(cfg: ApplianceConfig, index: int, out: Any,
                    link: HandoffLink | None = None) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if link is not None:
        # The capture comes first: above normal where it may (root). At nice -10 it keeps
        # ~90 % of a core against a normal process sharing it (CFS weights 9548 : 1024); at
        # -5 (75 %) a capture near its line rate lost packets in the kernel to the workers
        # and the shadows (bench/live, once in five trials at R).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, -10)
    try:
        w = Worker(cfg, index, link=link)
    except Exception as e:
        out.put(("error", index, str(e)))
        return
    signal.signal(signal.SIGTERM, lambda *_: w.stop_event.set())
    signal.signal(signal.SIGHUP, lambda *_: w.request_reload())

    def publish() -> None:
        while not w.done:
            with contextlib.suppress(Exception):
                out.put(("stats", index, w.snapshot()))
            time.sleep(0.5)
        with contextlib.suppress(Exception):
            out.put(("stats", index, w.snapshot()))

    threading.Thread(target=publish, daemon=True).start()
    w.run()
    with contextlib.suppress(Exception):
        out.put(("stats", index, w.snapshot()))
    out.close()
    out.join_thread()


class Appliance:
    """Capture + pipeline workers and their counters; the API the CLI and the demo use.

    >>> app = Appliance(config.load("appliance.yaml")); app.start()
    >>> ex = app.handoff.get(timeout=1.0)      # live exchanges (one-worker mode)
    >>> app.snapshots(); app.reload(); app.stop()
    """

    def __init__(self, cfg: ApplianceConfig, *, link: HandoffLink | None = None) -> None:
        self.cfg = cfg
        self.link = link
        """The live engine's hand-off: capture then runs in a process of its own even with
        one worker (``appliance.live.engine``)."""
        self.worker: Worker | None = None
        self._thread: threading.Thread | None = None
        self._procs: dict[int, Any] = {}
        self._snaps: dict[int, dict[str, Any]] = {}
        self._q: Any = None
        self._stopping = False
        self.restarts = 0
        self.errors: list[str] = []

    @property
    def handoff(self) -> Handoff | None:
        """The live hand-off queue (one-worker mode): ``get(timeout)`` gives Exchanges."""
        return self.worker.handoff if self.worker is not None else None

    def start(self) -> Appliance:
        """Open the capture (errors raise here, before anything runs) and start the workers."""
        if self.cfg.workers == 1 and self.link is None:
            self.worker = Worker(self.cfg)
            self._thread = threading.Thread(target=self._run_worker, name="capture",
                                            daemon=True)
            self._thread.start()
            return self
        ctx = mp.get_context("fork")
        self._q = ctx.Queue()
        for i in range(self.cfg.workers):
            self._spawn(i)
        threading.Thread(target=self._collect, daemon=True).start()
        deadline = time.monotonic() + 10
        while len(self._snaps) < self.cfg.workers and time.monotonic() < deadline:
            if self.errors:
                self.stop()
                raise RuntimeError(self.errors[0])
            time.sleep(0.05)
        return self

    def _run_worker(self) -> None:
        assert self.worker is not None
        try:
            self.worker.run()
        except Exception as e:  # reported by /healthz too (the thread is gone)
            self.errors.append(repr(e))
            log.exception("capture worker failed")

    def serve_metrics(self, listen: str | None = None) -> Any:
        """Serve /metrics and /healthz for this appliance (``metrics.listen`` by default);
        returns the server (``.stop()``; ``.port`` is the bound port, useful with port 0)."""
        from appliance.live.metrics import MetricsServer

        addr = listen or self.cfg.metrics_listen
        if not addr:
            raise ValueError("no metrics address: set metrics.listen or pass listen=")
        server = MetricsServer(addr, self.snapshots, self.healthy, lambda: self.restarts)
        try:
            server.start()
        except OSError as e:
            raise RuntimeError(f"metrics.listen: cannot listen on {addr} "
                               f"({e.strerror or e}); pick a free address") from None
        return server

    def _spawn(self, i: int) -> None:
        ctx = mp.get_context("fork")
        p = ctx.Process(target=_worker_process, args=(self.cfg, i, self._q, self.link),
                        name=f"shadowtap-capture-{i}", daemon=True)
        p.start()
        self._procs[i] = p

    def _collect(self) -> None:
        while True:
            try:
                kind, i, data = self._q.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError, ValueError):
                return
            if kind == "stats":
                data["received"] = time.monotonic()
                self._snaps[i] = data
            else:
                self.errors.append(data)
                log.error("worker %d failed to start: %s", i, data)

    def supervise(self) -> None:
        """Restart worker processes that died (not when stopping)."""
        if self._stopping:
            return
        for i, p in list(self._procs.items()):
            if not p.is_alive():
                if p.exitcode == 0 and self.cfg.source.kind == "file":
                    continue  # a capture file read to its end
                self.restarts += 1
                log.warning("worker %d exited (code %s); restarting", i, p.exitcode)
                # Healthy again only once the new worker reports. Its joining the fanout group
                # re-maps flows among workers: connections in flight at that moment may be
                # split (their exchanges come out incomplete, counted, not silently lost).
                self._snaps.pop(i, None)
                self._spawn(i)

    @property
    def finished(self) -> bool:
        """A capture file has been read to its end (live sources never finish)."""
        if self.worker is not None:
            return self.worker.done
        return (self.cfg.source.kind == "file" and bool(self._procs)
                and all(p.exitcode == 0 for p in self._procs.values()))

    def reload(self) -> bool:
        """Validate the config file again; if good, every worker swaps its pipeline."""
        if self.cfg.path is None:
            return False
        try:
            cfgmod.load(self.cfg.path)
        except cfgmod.ConfigError as e:
            log.error("reload refused, keeping the running pipeline: %s", e)
            if self.worker is not None:
                self.worker.stats.reload_errors += 1
            return False
        if self.worker is not None:
            self.worker.request_reload()
        for p in self._procs.values():
            if p.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGHUP)
        return True

    def snapshots(self) -> list[dict[str, Any]]:
        if self.worker is not None:
            return [self.worker.snapshot()]
        return [self._snaps[i] for i in sorted(self._snaps)]

    def healthy(self) -> tuple[bool, str]:
        if self.worker is None and not self._procs:
            return False, "not started"
        if self.worker is not None:
            t = self._thread
            if t is None or not t.is_alive():
                return False, "capture thread stopped"
            age = time.monotonic() - self.worker.heartbeat
            return (age < 5, f"heartbeat {age:.1f}s ago")
        dead = [i for i, p in self._procs.items() if not p.is_alive()]
        if dead:
            return False, f"workers {dead} not running"
        now = time.monotonic()
        old = [s["worker"] for s in self._snaps.values()
               if s.get("heartbeat_age", 0) > 5 or now - s.get("received", now) > 5]
        if old or len(self._snaps) < len(self._procs):
            return False, "workers not reporting"
        return True, f"{len(self._procs)} workers"

    def stop(self, timeout: float = 30.0) -> None:
        """Drain and flush every worker (SIGTERM semantics) and wait for them."""
        self._stopping = True
        if self.worker is not None:
            self.worker.stop_event.set()
            if self._thread is not None:
                self._thread.join(timeout)
            return
        for p in self._procs.values():
            if p.is_alive() and p.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self._procs.values():
            p.join(max(0.1, deadline - time.monotonic()))
        time.sleep(0.1)  # let the collector take the final snapshots

    def wait(self) -> None:
        """Block until a one-worker appliance's source ends (capture files)."""
        if self._thread is not None:
            self._thread.join()


def run_daemon(cfg: ApplianceConfig) -> int:
    """``shadowtap appliance run``: start the live engine, serve metrics, handle signals,
    drain on SIGTERM."""
    from appliance.live.engine import LiveEngine

    src = cfg.source
    where = (src.interface or (f"vxlan {src.listen}:{src.port}" if src.kind == "vxlan"
                               else src.path))
    eng = LiveEngine(cfg, source=f"live capture ({src.interface or src.kind})")
    stop = threading.Event()
    hup = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    server = None
    if cfg.metrics_listen:
        # Bound before capture starts: a port in use is a start-up error, not a half-started
        # appliance.
        server = eng.serve_metrics()
        log.info("metrics on http://%s/metrics", cfg.metrics_listen)
    console = None
    if cfg.console is not None:
        from appliance.console.server import Console

        try:  # bound before capture starts, like the metrics
            console = Console(eng, cfg.console).start()
        except BaseException:
            if server is not None:
                server.stop()
            raise
        log.info("console on %s (token %s)", console.url,
                 "below" if console.generated else f"in {cfg.console.token_file}")
        if console.generated:  # the one place it is shown: the operator's terminal or journal
            print(f"shadowtap console: {console.login_url()}", file=sys.stderr, flush=True)
    try:
        eng.start()
    except BaseException:
        if console is not None:
            console.stop()
        if server is not None:
            server.stop()
        raise
    log.info("capturing from %s%s with %d capture process(es)%s", where,
             f" in {src.netns}" if src.netns else "", cfg.workers,
             f" and {eng.n} pipeline worker(s)" if eng.n else "")
    sh = cfg.shadowing
    if sh is not None:
        log.info("shadowing: replaying to %s", ", ".join(f"{t.name} ({t.role}) {t.url}"
                                                       for t in sh.targets))
    log.info("ready")
    app = eng.app
    assert app is not None
    try:
        while not stop.is_set():
            stop.wait(0.2)
            if hup.is_set():
                hup.clear()
                eng.reload()
            eng.supervise()
            if app.finished:
                break
    finally:
        eng.stop()
        if console is not None:
            console.stop()
        if sh is not None:
            if eng.error:
                log.error("shadowing failed: %s", eng.error)
            elif sh.report:
                log.info("shadowing: final report in %s", sh.report)
        if server is not None:
            server.stop()
    if app.errors:
        log.error("stopped after a capture failure: %s", app.errors[0])
        return 1  # systemd restarts the unit
    log.info("stopped; sinks flushed")
    return 0
