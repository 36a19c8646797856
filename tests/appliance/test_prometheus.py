"""Debian's ``prometheus`` scrapes a running appliance (``consolelab``: live VXLAN traffic,
shadowing to two real shadows) and answers the Grafana dashboard's queries: every expression
of appliance/grafana/shadowtap.json is valid PromQL to a real Prometheus, and those about
capture, pipeline, shadows and the verdict return series (the canary's need ``canary run``)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from apphelpers import free_port
from consolelab import REPO, running_appliance

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = REPO / "appliance" / "grafana" / "shadowtap.json"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(PROMETHEUS).exists(),
                       reason="Debian's prometheus is not installed (apt-get install prometheus;"
                              " scripts/setup.sh installs it)"),
]

# Expressions (by a substring) that must return at least one series against a live appliance
# with traffic and a regression. The rest must be valid queries; they may be empty here (no
# drops, no weird HTTP, no restarts, no canary). The queue panel reads the in-process queues or,
# with worker processes (a pipe per worker), each pipe's backlog against the shed threshold.
MUST_HAVE = [
    "shadowtap_handoff_pending_bytes",
    "rate(shadowtap_capture_packets_total",
    "rate(shadowtap_capture_bytes_total",
    "rate(shadowtap_capture_kernel_drops_total",
    "min(shadowtap_handoff_keep_ratio)",
    "min(shadowtap_shadowing_keep_ratio)",
    "rate(shadowtap_exchanges_emitted_total",
    "sum by (sink) (rate(shadowtap_sink_exchanges_total",
    "shadowtap_pipeline_latency_seconds_bucket[",
    "shadowtap_pipeline_workers",
    "sum(shadowtap_connections_tracked)",
    "rate(shadowtap_process_cpu_seconds_total",
    "shadowtap_shadow_up",
    "sum by (shadow, result) (rate(shadowtap_shadow_requests_total",
    "histogram_quantile(0.9, sum by (le, target) (rate(shadowtap_http_latency_seconds_bucket",
    "sum(shadowtap_field_regression) or vector(0)",
    "rate(shadowtap_compared_requests_total",
    "shadowtap_field_regression * on (endpoint, field)",
]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for t in panel.get("targets", []):
            if t.get("expr"):
                out.append(t["expr"])
    return out


@contextlib.contextmanager
def prometheus(tmp: Path, target: str) -> Iterator[str]:
    port = free_port()
    (tmp / "data").mkdir(parents=True)
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "scrape_configs": [{"job_name": "shadowtap",
                               "static_configs": [{"targets": [target]}]}]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}",
                             "--storage.tsdb.retention.time=1h"],
                            stdout=log, stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError("prometheus exited: "
                                     + (tmp / "prometheus.log").read_text()[-2000:])
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("prometheus not ready: "
                                     + (tmp / "prometheus.log").read_text()[-2000:])
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}") | {"http": e.code}


def test_prometheus_scrapes_the_appliance_and_answers_the_dashboard(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    for want in MUST_HAVE:
        assert any(want in e for e in exprs), f"the dashboard no longer asks for {want!r}"
    with running_appliance(tmp_path / "app") as app, \
            prometheus(tmp_path / "prom", f"127.0.0.1:{app.metrics_port}") as prom:
        # A scrape that saw a regression, and enough samples after it for rate().
        deadline = time.monotonic() + 90
        while True:
            r = query(prom, "sum(shadowtap_field_regression)")
            if r.get("data", {}).get("result") and float(r["data"]["result"][0]["value"][1]) > 0:
                break
            assert time.monotonic() < deadline, f"no regression scraped: {r}"
            time.sleep(1)
        time.sleep(5)
        targets = json.loads(urllib.request.urlopen(prom + "/api/v1/targets",
                                                    timeout=5).read())
        active = targets["data"]["activeTargets"]
        assert active and active[0]["health"] == "up", active
        empty, bad = [], []
        for e in exprs:
            r = query(prom, e.replace("$__rate_interval", "15s"))
            if r.get("status") != "success":
                bad.append((e, r.get("error")))
            elif any(w in e for w in MUST_HAVE) and not r["data"]["result"]:
                empty.append(e)
        assert not bad, f"queries Prometheus refuses: {bad}"
        assert not empty, f"queries with no series against a live appliance: {empty}"
        # A value that means something: packets were read at a positive rate.
        r = query(prom, "sum(rate(shadowtap_capture_packets_total[15s]))")
        assert float(r["data"]["result"][0]["value"][1]) > 10
