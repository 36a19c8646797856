"""The live engine: one composition of capture, worker processes, merge and metrics.

``shadowtap appliance run`` and the demo run this (the canary's rollout judge reads the
in-process hand-off, ``workers: 0``). Its shape, on a host with C cores::

    capture process (niced up)          worker processes (pipeline.workers, default C - 1)
    ring -> native extract -> lines ==> filters -> sanitise -> JSONL logs -> Shadower
      sheds whole connections when              (replay to the shadows, three-way compare)
      a worker falls behind, counted                       | state, counters
                                                           v
                                  this process: merge -> one verdict, report, /metrics

Why processes: one GIL cannot do capture, sanitise, replay and compare at line rate, and
when they share it the kernel drops mirrored packets while Python sanitises. Here the capture
process only extracts and hands lines over; it never waits on a worker (``handoff``).

A pipeline with nothing to do in a worker (log-only: no sanitise, no filters, no shadowing),
several capture processes (``source.workers > 1``), or ``pipeline.workers: 0`` run as before:
the whole pipeline in each capture process, shadowing in a thread (``LiveShadowing``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from appliance.live.config import ApplianceConfig
from appliance.live.daemon import Appliance, HandoffLink
from appliance.live.handoff import make_pipe
from appliance.live.shadowing import fill_examples

log = logging.getLogger("shadowtap.engine")


def needs_workers(cfg: ApplianceConfig) -> bool:
    """Whether this config runs worker processes (see the module docstring)."""
    p = cfg.pipeline
    work = (p.sanitise.enabled or bool(p.filters) or cfg.shadowing is not None
            or cfg.bus is not None)
    return cfg.workers == 1 and p.resolved_workers() > 0 and work


class LiveEngine:
    """Capture + workers + merged verdict; the API of the daemon and the demo.

    >>> eng = LiveEngine(cfg, source="live capture (cap0)").start()
    >>> eng.status(); eng.snapshots(); eng.report()   # progress, /metrics, the merged report
    >>> eng.stop()                                    # drain, final verdict and reports
    """

    def __init__(self, cfg: ApplianceConfig, *, source: str = "live capture") -> None:
        self.cfg = cfg
        self.source = source
        self.n = cfg.pipeline.resolved_workers() if needs_workers(cfg) else 0
        self.app: Appliance | None = None
        self.shadowing: Any = None  # in-process mode only
        self._ctx = mp.get_context("fork")
        self._q: Any = None
        self._procs: dict[int, Any] = {}
        self._wfds: list[int] = []
        self._ctl: socket.socket | None = None
        self._ctl_child: socket.socket | None = None
        self._snaps: dict[int, dict[str, Any]] = {}
        self._status: dict[int, dict[str, Any]] = {}
        self._states: dict[int, dict[str, Any]] = {}
        self._retired: list[dict[str, Any]] = []
        """States of workers that died: their comparisons still count."""
        self._done: set[int] = set()
        self._lock = threading.Lock()
        self._verdict_lock = threading.Lock()
        self._verdict_thread: threading.Thread | None = None
        self._next_start: dict[int, float] = {}
        self._swaps: dict[int, int] = {}
        """Pipes of restarted workers not yet handed to the capture process."""
        self._report: dict[str, Any] | None = None
        self._verdict: Any = None
        self._stopping = False
        self.restarts = 0
        self.errors: list[str] = []
        self.regressions = 0
        self.rules: Any = None
        """A callable returning the ``replay.compare.Rules`` the merged verdict applies (the
        console's noise marks); None: the default rules."""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LiveEngine:
        cfg = self.cfg
        if self.n == 0:
            self.app = Appliance(cfg).start()
            if cfg.shadowing is not None:
                from appliance.live.shadowing import LiveShadowing

                self.shadowing = LiveShadowing(
                    cfg.shadowing, self.app.handoff, registry=False, source=self.source,
                    capture_snapshot=lambda: self.app.snapshots()[0],
                    live=cfg.source.kind != "file")
                self.shadowing.rules = self.rules
                self.shadowing.start()
            return self
        self._q = self._ctx.Queue()
        self._ctl, self._ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._ctl.setblocking(False)
        for i in range(self.n):
            # One pipe at a time, so no worker inherits another's read end.
            r, w = make_pipe()
            self._wfds.append(w)
            self._spawn(i, r)
        threading.Thread(target=self._collect, name="engine-collect", daemon=True).start()
        link = HandoffLink(self._wfds, self._ctl_child, cfg.pipeline.handoff_budget)
        try:
            self.app = Appliance(cfg, link=link).start()
        except BaseException:
            self._stop_workers(5.0)
            raise
        if cfg.shadowing is not None:
            self._verdict_thread = threading.Thread(target=self._verdicts,
                                                    name="engine-verdict", daemon=True)
            self._verdict_thread.start()
        return self

    def _spawn(self, i: int, rfd: int) -> None:
        from appliance.live.worker import worker_main

        others = [*self._wfds]  # the write ends: EOF must reach the worker at stop
        p = self._ctx.Process(target=worker_main,
                              args=(self.cfg, i, self.n, rfd, others, self._q),
                              name=f"shadowtap-worker-{i}", daemon=True)
        p.start()
        os.close(rfd)  # the worker holds it now
        self._procs[i] = p

    def _collect(self) -> None:
        while True:
            try:
                kind, i, data = self._q.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError, ValueError):
                return
            with self._lock:
                if kind == "stats":
                    data["received_at"] = time.monotonic()
                    self._snaps[i] = data
                elif kind == "status":
                    self._status[i] = data
                elif kind == "state":
                    self._states[i] = fill_examples(data, self._states.get(i))
                    self._status[i] = data
                elif kind == "done":
                    self._done.add(i)
                elif kind == "error":
                    if len(self.errors) < 100:
                        self.errors.append(data)
                    log.error("%s", data)

    def _verdicts(self) -> None:
        assert self.cfg.shadowing is not None
        every = self.cfg.shadowing.verdict_every
        while not self._stopping:
            time.sleep(min(every, 0.5))
            if time.monotonic() - getattr(self, "_last_verdict", 0.0) >= every:
                self._last_verdict = time.monotonic()
                self._rolling()

    def _rolling(self, final: bool = False) -> dict[str, Any] | None:
        """Merge every worker's state into one verdict; write the reports."""
        from appliance.live.shadowing import live_report, write_reports

        sh = self.cfg.shadowing
        if sh is None:
            return None
        with self._lock:
            states = [*self._retired, *self._states.values()]
        if not self._verdict_lock.acquire(timeout=60):
            return None
        t0 = time.process_time()
        try:
            cap = None
            if self.app is not None:
                with contextlib.suppress(Exception):
                    cap = self.app.snapshots()[0]
            doc, v = live_report(sh, states, source=self.source, capture=cap,
                                 rules=self.rules() if self.rules else None)
            self._report, self._verdict = doc, v
            self.regressions = len(doc.get("regressions", []))
            if sh.report:
                write_reports(Path(sh.report), doc)
            log.debug("verdict over %d workers' states: %.3f CPU-s", len(states),
                      time.process_time() - t0)
            return doc
        except Exception:  # a live view must never stop the engine
            log.exception("verdict failed%s", " (final)" if final else "")
            return None
        finally:
            self._verdict_lock.release()

    def rejudge(self) -> dict[str, Any] | None:
        """A verdict now (the console after a noise mark); returns the report."""
        if self.shadowing is not None:  # its own thread judges: at its next verdict
            self.shadowing.rules = self.rules
            return None
        return self._rolling()

    def supervise(self) -> None:
        """Restart capture or worker processes that died (not when stopping)."""
        if self._stopping or self.app is None:
            return
        self.app.supervise()
        self._send_swaps()
        now = time.monotonic()
        for i, p in list(self._procs.items()):
            if p.is_alive() or i in self._done or now < self._next_start.get(i, 0.0):
                continue
            self.restarts += 1
            # A worker that fails at once (bad policy file, no memory) is not restarted in a
            # tight loop: 1 s after a crash, up to 30 s after failing to start.
            self._next_start[i] = now + (30.0 if p.exitcode == 1 else 1.0)
            log.warning("worker %d exited (code %s); restarting it on a new pipe", i,
                        p.exitcode)
            with self._lock:
                st = self._states.pop(i, None)
                if st is not None:
                    # Its comparisons stay in the verdict; its health and in-flight count
                    # were of a process that is gone.
                    st.pop("health", None)
                    st["in_flight"] = 0
                    self._retired.append(st)
                self._status.pop(i, None)
                self._snaps.pop(i, None)
            r, w = make_pipe()
            old = self._wfds[i]
            self._wfds[i] = w  # a capture restarted from now on inherits the new one
            with contextlib.suppress(OSError):
                os.close(old)
            self._spawn(i, r)
            self._swaps[i] = w
        self._send_swaps()

    def _send_swaps(self) -> None:
        """New pipes to the capture process; kept and tried again if it cannot take them
        now (its socket full, or itself restarting: a new capture inherits them anyway)."""
        for i, w in list(self._swaps.items()):
            if self._ctl is None or self._wfds[i] != w:
                del self._swaps[i]
                continue
            try:
                socket.send_fds(self._ctl, [f"swap:{i}".encode()], [w])
            except OSError:
                return
            del self._swaps[i]

    def reload(self) -> bool:
        """SIGHUP: the capture processes and every worker re-read the config file (each keeps
        its running pipeline if the file is bad)."""
        if self.app is None or not self.app.reload():
            return False
        for p in self._procs.values():
            if p.is_alive() and p.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGHUP)
        return True

    def stop(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """Stop the capture (it drains the ring and hands everything over), then let the
        workers finish, then the final verdict and reports. Returns the report."""
        self._stopping = True
        if self._verdict_thread is not None:
            self._verdict_thread.join(timeout)
        if self.app is not None:
            self.app.stop(timeout)
        if self.n == 0:
            return self.shadowing.stop() if self.shadowing is not None else None
        drain = self.cfg.shadowing.drain_timeout if self.cfg.shadowing is not None else 0.0
        self._stop_workers(drain + timeout)
        return self._rolling(final=True)

    def _stop_workers(self, timeout: float) -> None:
        for fd in self._wfds:  # with the capture's gone, the workers read to EOF
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wfds = []
        deadline = time.monotonic() + timeout
        for p in self._procs.values():
            p.join(max(0.1, deadline - time.monotonic()))
        for p in self._procs.values():
            if p.is_alive():
                log.warning("worker %s did not finish in time; killing it", p.name)
                p.kill()
                p.join(5)
        # The collector takes the last messages (final states may be megabytes).
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with self._lock:
                left = [i for i, p in self._procs.items()
                        if i not in self._done and p.exitcode == 0]
            if not left:
                break
            time.sleep(0.05)
        time.sleep(0.1)
        for s in (self._ctl, self._ctl_child):
            if s is not None:
                s.close()

    # -- views -------------------------------------------------------------------------------

    def snapshots(self) -> list[dict[str, Any]]:
        """Every process's counters: capture processes, then workers (``/metrics``)."""
        caps = self.app.snapshots() if self.app is not None else []
        with self._lock:
            return [*caps, *(self._snaps[i] for i in sorted(self._snaps))]

    def healthy(self) -> tuple[bool, str]:
        if self.app is None:
            return False, "not started"
        ok, why = self.app.healthy()
        if not ok or self.n == 0:
            return ok, why
        dead = [i for i, p in self._procs.items() if not p.is_alive() and i not in self._done]
        if dead:
            return False, f"pipeline workers {dead} not running"
        return True, f"{why}; {self.n} pipeline workers"

    def merged_status(self) -> dict[str, Any]:
        from appliance.live.shadowing import merge_status

        if self.shadowing is not None:
            return merge_status([self.shadowing.shadower.status()])
        with self._lock:
            parts = [*self._retired, *self._status.values()]
        return merge_status(parts)

    def status(self) -> dict[str, Any]:
        """Counters for a progress view (cheap: no verdict)."""
        from appliance.live.shadowing import progress_view

        if self.shadowing is not None:
            return self.shadowing.status()
        err = self.errors[0] if self.errors else None
        return progress_view(self.merged_status(), self.regressions, err)

    @property
    def error(self) -> str | None:
        if self.shadowing is not None:
            return self.shadowing.error
        return self.errors[0] if self.errors else None

    @property
    def last_report(self) -> dict[str, Any] | None:
        if self.shadowing is not None:
            return self.shadowing.last_report
        return self._report

    def verdict(self) -> Any:
        if self.shadowing is not None:
            return self.shadowing._verdict
        return self._verdict

    def serve_metrics(self, listen: str | None = None) -> Any:
        """/metrics and /healthz for capture, workers and shadowing (``metrics.listen``)."""
        from appliance.live.metrics import MetricsServer
        from appliance.live.shadowing import ShadowMetrics

        addr = listen or self.cfg.metrics_listen
        if not addr:
            raise ValueError("no metrics address: set metrics.listen or pass listen=")
        server = MetricsServer(addr, self.snapshots, self.healthy,
                               lambda: self.restarts + (self.app.restarts if self.app else 0))
        if self.cfg.shadowing is not None:
            server.registry.register(ShadowMetrics(self.cfg.shadowing, self.merged_status,
                                                   self.verdict))
        try:
            server.start()
        except OSError as e:
            raise RuntimeError(f"metrics.listen: cannot listen on {addr} "
                               f"({e.strerror or e}); pick a free address") from None
        return server
