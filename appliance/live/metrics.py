"""Prometheus metrics (``/metrics``) and a health check (``/healthz``) for the appliance.

Why a custom collector over worker snapshots rather than prometheus-client counters updated in
the hot path: workers may be separate processes (fanout), and incrementing a locked Counter per
packet would cost more than walking the ring. Workers keep plain integers; at scrape time the
collector turns the latest snapshot of each worker into metric families, labelled by ``worker``
(Prometheus sums them; a restarted worker's counters restart from zero, which ``rate()``
handles as a counter reset).

Names follow Prometheus conventions: ``shadowtap_`` prefix, ``_total`` for counters, units in
the name (``_bytes``, ``_seconds``). The full list is in docs/appliance.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from appliance.live.pipeline import LATENCY_BUCKETS

Snapshots = Callable[[], list[dict[str, Any]]]
Health = Callable[[], tuple[bool, str]]

# (metric name, snapshot key, help) for plain per-worker counters
_COUNTERS = [
    ("shadowtap_capture_packets_total", "packets",
     "Frames read from the capture source into user space."),
    ("shadowtap_capture_bytes_total", "bytes", "Bytes of the frames read from the source."),
    ("shadowtap_extract_packets_total", "extracted_packets",
     "Frames given to the extractor (fewer than captured when connection sampling is on: "
     "unsampled connections are dropped as frames, before extraction)."),
    ("shadowtap_capture_kernel_packets_total", "kernel_packets",
     "Packets the kernel passed the filter for this socket, including those it dropped."),
    ("shadowtap_capture_kernel_drops_total", "kernel_drops",
     "Packets the kernel dropped because the ring or socket buffer was full "
     "(PACKET_STATISTICS tp_drops; UDP receive-queue drops for VXLAN)."),
    ("shadowtap_connections_total", "connections", "TCP connections seen."),
    ("shadowtap_exchanges_emitted_total", "exchanges",
     "Exchanges the extractor produced (before sampling and filters)."),
    ("shadowtap_exchanges_incomplete_total", "incomplete",
     "Emitted exchanges with gaps, truncation, timeouts or no partner."),
    ("shadowtap_tcp_gaps_total", "gaps", "Holes in reassembled TCP streams."),
    ("shadowtap_tcp_retransmits_total", "retransmits", "Segments seen more than once."),
    ("shadowtap_reloads_total", "reloads", "Successful configuration reloads (SIGHUP)."),
    ("shadowtap_reload_errors_total", "reload_errors",
     "Reloads refused because the new configuration was invalid."),
]


class SnapshotCollector(Collector):
    """Metric families from worker snapshots, computed at scrape time."""

    def __init__(self, snapshots: Snapshots, restarts: Callable[[], int] | None = None) -> None:
        self.snapshots = snapshots
        self.restarts = restarts

    def collect(self) -> Iterator[Metric]:
        snaps = self.snapshots()
        for name, key, doc in _COUNTERS:
            c = CounterMetricFamily(name.removesuffix("_total"), doc, labels=["worker"])
            for s in snaps:
                c.add_metric([str(s["worker"])], float(s.get(key, 0)))
            yield c
        drops = CounterMetricFamily(
            "shadowtap_userspace_drops", "Packets or exchanges lost in user space, by reason "
            "(undecodable or truncated frames, hand-off overflow, stage errors, evictions).",
            labels=["worker", "reason"])
        filtered = CounterMetricFamily(
            "shadowtap_pipeline_filtered_exchanges",
            "Exchanges a stage chose not to pass on (sampling, filters, sanitise drop rules).",
            labels=["worker", "stage"])
        written = CounterMetricFamily("shadowtap_sink_exchanges",
                                      "Exchanges written by each sink.", labels=["worker", "sink"])
        rot = CounterMetricFamily("shadowtap_sink_rotations", "File rotations by each sink.",
                                  labels=["worker", "sink"])
        tracked = GaugeMetricFamily("shadowtap_connections_tracked",
                                    "TCP connections currently held by the reassembler.",
                                    labels=["worker"])
        depth = GaugeMetricFamily("shadowtap_queue_depth", "Items waiting in a queue.",
                                  labels=["worker", "queue"])
        cap = GaugeMetricFamily("shadowtap_queue_capacity", "Size bound of a queue.",
                                labels=["worker", "queue"])
        lat = HistogramMetricFamily(
            "shadowtap_pipeline_latency_seconds",
            "From an exchange's last captured packet to the end of the sinks.",
            labels=["worker"])
        for s in snaps:
            w = str(s["worker"])
            for reason, n in sorted(s.get("drops", {}).items()):
                drops.add_metric([w, reason], float(n))
            for stage, n in sorted(s.get("filtered", {}).items()):
                filtered.add_metric([w, stage], float(n))
            for sink, n in sorted(s.get("sink_written", {}).items()):
                written.add_metric([w, sink], float(n))
            for sink, n in sorted(s.get("sink_rotations", {}).items()):
                rot.add_metric([w, sink], float(n))
            tracked.add_metric([w], float(s.get("connections_tracked", 0)))
            for qn, (d, c) in sorted(s.get("queues", {}).items()):
                depth.add_metric([w, qn], float(d))
                cap.add_metric([w, qn], float(c))
            counts = s.get("latency_counts") or [0] * (len(LATENCY_BUCKETS) + 1)
            acc = 0
            buckets = []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                acc += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(acc)))
            lat.add_metric([w], buckets, float(s.get("latency_sum", 0.0)))
        yield from (drops, filtered, written, rot, tracked, depth, cap, lat)
        shed = CounterMetricFamily(
            "shadowtap_shed_exchanges", "Exchanges of connections the capture sampled out on "
            "purpose because the workers were behind (whole connections, by a hash).",
            labels=["worker"])
        keep = GaugeMetricFamily("shadowtap_handoff_keep_ratio",
                                 "Share of new connections the capture hands to the workers "
                                 "(1 = all; lower while shedding).", labels=["worker"])
        pending = GaugeMetricFamily("shadowtap_handoff_pending_bytes",
                                    "Bytes of exchanges waiting in the capture for the workers.",
                                    labels=["worker"])
        for s in snaps:
            h = s.get("handoff")
            if h:
                w = str(s["worker"])
                shed.add_metric([w], float(h["shed"]))
                keep.add_metric([w], float(h["keep_level"]))
                pending.add_metric([w], float(h["pending_bytes"]))
        yield from (shed, keep, pending)
        yield from _weird_families(snaps)
        cpu = CounterMetricFamily("shadowtap_process_cpu_seconds",
                                  "CPU time of each capture and worker process.",
                                  labels=["worker"])
        for s in snaps:
            if "cpu_seconds" in s:
                cpu.add_metric([str(s["worker"])], float(s["cpu_seconds"]))
        yield cpu
        up = GaugeMetricFamily("shadowtap_workers", "Capture workers reporting.")
        up.add_metric([], float(sum(1 for s in snaps if s.get("role") != "pipeline")))
        yield up
        pw = GaugeMetricFamily("shadowtap_pipeline_workers",
                               "Worker processes (sanitise, sinks, shadowing) reporting.")
        pw.add_metric([], float(sum(1 for s in snaps if s.get("role") == "pipeline")))
        yield pw
        if self.restarts is not None:
            r = CounterMetricFamily("shadowtap_worker_restarts",
                                    "Worker processes restarted after dying.")
            r.add_metric([], float(self.restarts()))
            yield r


def _weird_families(snaps: list[dict[str, Any]]) -> Iterator[Metric]:
    """HTTP framing weirds by reason and desync messages, from the extraction summary
    (``Summary.weird``, ``Summary.desync_messages``, in a snapshot as ``http_weird`` and
    ``http_desync``): request smuggling attempts seen on the mirror are a security signal."""
    weird = CounterMetricFamily(
        "shadowtap_http_weird", "HTTP/1 framing oddities by reason (Zeek-style weirds: invalid "
        "Content-Length, obfuscated Transfer-Encoding, bare CR, garbage between messages...).",
        labels=["worker", "reason"])
    desync = CounterMetricFamily(
        "shadowtap_http_desync_messages", "Messages whose framing could not be trusted "
        "(request smuggling shapes): never replayed, their connection not read further.",
        labels=["worker"])
    for s in snaps:
        w = str(s["worker"])
        for reason, n in sorted((s.get("http_weird") or {}).items()):
            weird.add_metric([w, reason], float(n))
        if "http_desync" in s:
            desync.add_metric([w], float(s["http_desync"]))
    yield weird
    yield desync


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class MetricsServer:
    """``/metrics`` and ``/healthz`` on HOST:PORT, served from a background thread."""

    def __init__(self, listen: str, snapshots: Snapshots, health: Health,
                 restarts: Callable[[], int] | None = None) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.registry = CollectorRegistry()
        self.registry.register(SnapshotCollector(snapshots, restarts))
        self.health = health
        self._metrics_app = make_wsgi_app(self.registry)
        self._httpd: Any = None

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            ok, why = self.health()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain")])
            return [f"{'ok' if ok else 'unhealthy'}: {why}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    def start(self) -> None:
        self._httpd = make_server(self.host, self.port, self.app,
                                  server_class=_ThreadingWSGIServer, handler_class=_Quiet)
        self.port = self._httpd.server_port
        threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
