"""A worker process of the live engine: hand-off pipe -> filters -> sanitise -> sinks -> shadows.

Each worker reads the JSONL lines its pipe carries (the connections that hash to it), turns them
back into Exchanges, and runs the pipeline stages the capture process no longer runs: filters,
the sanitise stage (before anything reaches a log or a shadow), the JSONL logs (one file per
worker when there are several), and live shadowing (``appliance.live.shadowing.Shadower``) in one
event loop. It never talks to the capture except by reading: a slow worker fills its pipe and
the capture sheds, counted.

What it reports to the engine (a multiprocessing queue): its pipeline counters twice a second,
its mergeable comparison state at every verdict tick, and both once more at the end. The
engine merges them into one verdict and one report.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from typing import Any

import orjson

from appliance.live.handoff import LineSplitter
from appliance.live.pipeline import Pipeline, Stats, build

log = logging.getLogger("shadowtap.worker")


class ShadowSink:
    """The pipeline's last sink when shadowing is on: every sanitised exchange to the
    ``Shadower`` (which never waits)."""

    name = "shadowing"

    def __init__(self, shadower: Any) -> None:
        self.shadower = shadower

    def process(self, ex: Any) -> Any:
        self.shadower.take(ex)
        return ex


def pipeline_for_worker(cfg: Any, index: int, workers: int, stats: Stats) -> Pipeline:
    """The stages and sinks a worker runs: everything but sampling (done on frames in the
    capture), raw pcap sinks (they need frames) and the in-process hand-off queue."""
    from appliance.live.config import PipelineConfig

    p = cfg.pipeline
    mine = PipelineConfig(sample_percent=100.0, filters=p.filters, sanitise=p.sanitise,
                          sinks=[sc for sc in p.sinks if sc.type == "jsonl"])
    pipe = build(mine, stats, index=index, workers=workers)
    if cfg.bus is not None:  # after sanitise, like every sink
        from appliance.live.bus import BusSink

        pipe.sinks.append(BusSink(cfg.bus, stats))
    return pipe


class ProcessingWorker:
    """One worker's loop (see the module docstring)."""

    def __init__(self, cfg: Any, index: int, workers: int, rfd: int, out: Any) -> None:
        from appliance.live.shadowing import Shadower

        self.cfg = cfg
        self.index = index
        self.workers = workers
        self.rfd = rfd
        self.out = out
        self.stats = Stats()
        self.pipeline = pipeline_for_worker(cfg, index, workers, self.stats)
        self.lossless = cfg.source.kind == "file"
        self.shadower = (Shadower(cfg.shadowing, shard=index, lossless=self.lossless)
                         if cfg.shadowing else None)
        if self.shadower is not None:
            self.pipeline.sinks.append(ShadowSink(self.shadower))
        self.received = 0
        self.lag = 0.0
        """Seconds between the capture of the last exchange read and its reading."""
        self.bad = 0
        self.stopping = False
        self.reload_requested = False

    def reload(self) -> None:
        """SIGHUP: the config file again; on success new filters, sanitise policy and logs
        (the shadowing and its state go on), else the running pipeline stays."""
        from appliance.live import config as cfgmod

        self.reload_requested = False
        if self.cfg.path is None:
            return
        try:
            new = cfgmod.load(self.cfg.path)
            pipe = pipeline_for_worker(new, self.index, self.workers, self.stats)
        except Exception as e:  # a bad file must not stop the worker
            self.stats.reload_errors += 1
            log.error("worker %d: reload refused, keeping the running pipeline: %s",
                      self.index, e)
            return
        for sk in self.pipeline.sinks:
            if not isinstance(sk, ShadowSink):
                with contextlib.suppress(Exception):
                    sk.close()
        if self.shadower is not None:
            pipe.sinks.append(ShadowSink(self.shadower))
        self.pipeline = pipe
        self.stats.reloads += 1
        log.info("worker %d: reloaded %s", self.index, self.cfg.path)

    def snapshot(self) -> dict[str, Any]:
        st = self.stats
        drops = dict(st.drops)
        if self.bad:
            drops["handoff_bad_record"] = self.bad
        return {"worker": f"p{self.index}", "role": "pipeline", "received": self.received,
                "drops": drops, "filtered": dict(st.filtered),
                "sink_written": dict(st.sink_written), "sink_rotations": dict(st.sink_rotations),
                "latency_counts": list(st.latency_counts), "latency_sum": st.latency_sum,
                "queues": {}, "pid": os.getpid(), "cpu_seconds": time.process_time()}

    def _send(self, kind: str, data: Any) -> None:
        with contextlib.suppress(Exception):
            self.out.put((kind, self.index, data))

    def _lines(self, lines: list[bytes]) -> None:
        from replay.formats.jsonl import exchange_from_record

        emit = self.pipeline.emit
        loads = orjson.loads
        ex = None
        for line in lines:
            try:
                ex = exchange_from_record(loads(line))
            except Exception:  # never expected (the capture wrote it): counted, not fatal
                self.bad += 1
                continue
            self.received += 1
            emit(ex)
        if ex is not None:
            t = ex.ts_response_end or ex.ts_request_end
            if t is not None:
                self.lag = max(0.0, time.time() - t)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # Every exchange allocates thousands of objects, nearly none in cycles: the default
        # gen-0 threshold (700) runs the collector every few exchanges over everything the
        # worker holds (~15 % of its time). What exists now (modules, config, policy) is
        # frozen out of every collection; young cycles are still collected, less often.
        gc.collect()
        gc.freeze()
        old = gc.get_threshold()
        gc.set_threshold(max(old[0], 100_000), old[1], old[2])
        if self.shadower is not None:
            await self.shadower.start()
        os.set_blocking(self.rfd, False)
        splitter = LineSplitter()
        eof = loop.create_future()

        def readable() -> None:
            try:
                chunk = os.read(self.rfd, 1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                chunk = b""
                log.warning("worker %d: reading the hand-off failed: %s", self.index, e)
            if not chunk:
                loop.remove_reader(self.rfd)
                if not eof.done():
                    eof.set_result(None)
                return
            self._lines(splitter.feed(chunk))

        loop.add_reader(self.rfd, readable)
        reading = True
        sh = self.shadower
        every = self.cfg.shadowing.verdict_every if sh is not None else 5.0
        next_state = time.monotonic() + min(1.0, every)
        next_stats = 0.0
        next_tick = 0.0
        while not eof.done():
            await asyncio.wait([eof], timeout=0.1 if reading else 0.005)
            if self.reload_requested:
                self.reload()
            if sh is not None and self.lossless:  # a file: wait for the shadows, drop nothing
                if reading and sh.busy:
                    loop.remove_reader(self.rfd)
                    reading = False
                elif not reading and not sh.busy and not eof.done():
                    loop.add_reader(self.rfd, readable)
                    reading = True
            now = time.monotonic()
            if sh is not None:
                sh.adapt(self.lag if self.cfg.source.kind != "file" else 0.0)
            if now >= next_tick:  # flushes logs, publishes to the bus, rotates
                next_tick = now + 0.2
                self.pipeline.tick(time.time())
            if now >= next_stats:
                next_stats = now + 0.5
                self._send("stats", self.snapshot())
                if sh is not None:
                    self._send("status", sh.status())
            if sh is not None and now >= next_state:
                next_state = now + every
                self._send("state", sh.state(delta=True))
        if sh is not None:
            await sh.drain(self.cfg.shadowing.drain_timeout)
            await sh.close()
        self.pipeline.close()
        self._send("stats", self.snapshot())
        if sh is not None:
            self._send("state", sh.state(delta=True))
        self._send("done", None)


def worker_main(cfg: Any, index: int, workers: int, rfd: int, close_fds: list[int],
                out: Any) -> None:
    """The worker process's entry (forked by the engine)."""
    from appliance.live.daemon import _die_with_parent
    from appliance.live.shadowing import run_loop

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM: finish what the pipe still holds (the engine closes it at stop).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for fd in close_fds:  # other workers' pipes and the capture's ends: EOF must reach us
        if fd != rfd:
            with contextlib.suppress(OSError):
                os.close(fd)
    if os.getpriority(os.PRIO_PROCESS, 0) < 0:  # forked from a process above normal
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker can reload
    try:
        w = ProcessingWorker(cfg, index, workers, rfd, out)
    except Exception as e:
        out.put(("error", index, f"worker {index}: {e}"))
        out.close()
        out.join_thread()
        sys.exit(1)  # non-zero: the engine backs off before starting it again
    signal.signal(signal.SIGHUP, lambda *_: setattr(w, "reload_requested", True))
    try:
        run_loop(w.run())
    except Exception as e:
        log.exception("worker %d failed", index)
        out.put(("error", index, f"worker {index}: {e!r}"))
        code = 1
    else:
        code = 0
    finally:
        with contextlib.suppress(Exception):
            out.close()
            out.join_thread()
    sys.exit(code)
