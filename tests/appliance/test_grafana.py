"""The Grafana dashboard (appliance/grafana/shadowtap.json) asks only for series the appliance
really exports: every metric name in its PromQL is checked against a real scrape of /metrics,
served by the appliance's own ``MetricsServer`` with the shadowing and canary collectors
registered as ``appliance run`` and ``canary run`` register them."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.canary.rollout import CanaryPolicy, Rollout, RolloutCollector
from appliance.live.metrics import MetricsServer
from appliance.live.shadowing import ShadowingConfig, ShadowMetrics, ShadowTarget, merge_status
from replay.compare import Finding, Verdict

DASHBOARD = Path(__file__).resolve().parents[2] / "appliance" / "grafana" / "shadowtap.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",), "summary": ("", "_sum", "_count"), "untyped": ("",)}


def _snapshot(worker: int, role: str) -> dict:
    return {"worker": worker, "role": role, "packets": 10, "bytes": 1000, "exchanges": 3,
            "drops": {"undecodable": 1}, "filtered": {"sample": 1}, "sink_written": {"jsonl": 3},
            "sink_rotations": {"jsonl": 0}, "connections_tracked": 2,
            "queues": {"handoff": (1, 100)}, "http_weird": {"bare_cr": 1}, "http_desync": 0,
            "handoff": {"shed": 1, "keep_level": 1.0, "pending_bytes": 0}, "cpu_seconds": 1.5}


@pytest.fixture(scope="module")
def scrape() -> Iterator[str]:
    cfg = ShadowingConfig(candidate=ShadowTarget("shadow-2", "http://127.0.0.1:9", "candidate"),
                          secondary=ShadowTarget("shadow-1", "http://127.0.0.1:8", "secondary"))
    f = Finding("GET /x", "body:$.a", "changed_value", "regression", 10, 10, 0, 1e-4, 1e-4)
    verdict = Verdict([f], [], [], [], 10, 10, True, {})
    status = merge_status([{"compared": 10, "health": {
        "shadow-1": {"up": True, "answered": 10, "failed": 0, "transitions": []},
        "shadow-2": {"up": True, "answered": 10, "failed": 0, "transitions": []}},
        "skipped": {"shed_overload": 1}}])
    srv = MetricsServer("127.0.0.1:0", lambda: [_snapshot(0, "capture"), _snapshot(1, "pipeline")],
                        lambda: (True, "ok"), lambda: 0)
    srv.registry.register(ShadowMetrics(cfg, lambda: status, lambda: verdict))
    srv.registry.register(RolloutCollector(Rollout(CanaryPolicy(steps=[5, 100]), lambda w: None)))
    srv.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=10) as r:
            yield r.read().decode()
    finally:
        srv.stop()


def exported_names(text: str) -> set[str]:
    """Every series name a query can use: the samples, and the names each family's type
    implies (a family with no sample yet, e.g. no drops, is still a valid query)."""
    names = set()
    for fam in text_string_to_metric_families(text):
        names.update(s.name for s in fam.samples)
        names.update(fam.name + sfx for sfx in SUFFIXES.get(fam.type, ("",)))
    return names


def queries() -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD.read_text())
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def test_every_query_uses_exported_metrics(scrape: str) -> None:
    have = exported_names(scrape)
    assert "shadowtap_capture_packets_total" in have and "shadowtap_shadow_up" in have
    qs = queries()
    assert len(qs) >= 20
    missing = []
    for title, expr in qs:
        used = set(re.findall(r"\bshadowtap_[a-z0-9_]+", expr))
        assert used, f"{title}: no shadowtap metric in {expr!r}"
        missing += [f"{title}: {n}" for n in sorted(used - have)]
    assert not missing, "metrics the appliance does not export:\n" + "\n".join(missing)


def test_dashboard_covers_each_part_and_is_well_formed() -> None:
    d = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert rows == ["Capture", "Pipeline", "Shadows", "Verdict", "Canary"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    used = " ".join(e for _, e in queries())
    for name in ("shadowtap_capture_kernel_drops_total", "shadowtap_shed_exchanges_total",
                 "shadowtap_pipeline_latency_seconds_bucket", "shadowtap_shadow_up",
                 "shadowtap_http_latency_seconds_bucket", "shadowtap_field_regression",
                 "shadowtap_canary_weight_percent"):
        assert name in used, name
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, p["title"]


def test_the_check_catches_a_misspelt_metric(scrape: str) -> None:
    have = exported_names(scrape)
    assert "shadowtap_shadow_requests_total" in have
    assert "shadowtap_shadows_request_total" not in have
    assert "shadowtap_canary_weight" not in have  # the name is ..._weight_percent
