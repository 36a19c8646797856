"""The demo's result tables at 80 columns (a laptop terminal): every line fits, and the
endpoint and the field of every regression, and every endpoint of the latency table, are there
whole (the issue: ``body:$.dat…``, ``changed_va…``). Rendering only: no lab, no root."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from appliance.demo import _print_results

FIELDS = ["body:$.data[*].price", "body:$.data[*].currency", "body:$.data[*].stock",
          "body:$.data[*].name", "body:$.data[*].tags", "body:$.data", "body:$.data.price",
          "status"]
ENDPOINTS = ["GET /products", "GET /products/{id}", "GET /users/{id}/orders",
             "DELETE /orders/{id}", "GET /orders/{id}"]


def _report() -> dict:
    regs = []
    for i, f in enumerate(FIELDS):
        regs.append({"endpoint": ENDPOINTS[i % len(ENDPOINTS)], "field": f,
                     "kind": ("changed_value", "array_length", "changed_type")[i % 3],
                     "compared": 16344, "candidate_diffs": 9413, "secondary_diffs": 0,
                     "p_adjusted": 0.0, "source": "three-way"})
    lat = [{"endpoint": ep, "production_n": 2483, "secondary_n": 2483, "candidate_n": 2483,
            "production_p50_ms": 2.0, "production_p90_ms": 3.1, "secondary_p50_ms": 47.0,
            "secondary_p90_ms": 47.0, "candidate_p50_ms": 81.8, "candidate_p90_ms": 91.8,
            "regression": ep == "GET /orders/{id}", "baseline": "secondary"}
           for ep in ENDPOINTS]
    return {"regressions": regs, "latency": lat, "latency_regressions": ["GET /orders/{id}"],
            "noise": [{"field": "body:$.meta.request_id"}], "shadows": {},
            "summary": {"regressions": len(regs), "noise": 1, "compared": 38892}}


@pytest.mark.parametrize("width", [80, 100])
def test_demo_tables_fit_and_keep_endpoint_and_field_whole(width: int, tmp_path: Path) -> None:
    buf = io.StringIO()
    con = Console(width=width, file=buf, color_system=None, force_terminal=False)
    _print_results(con, _report(), tmp_path)
    out = buf.getvalue()
    assert max(len(ln) for ln in out.splitlines()) <= width, out
    lines = out.splitlines()
    for f in FIELDS:
        assert any(f in ln for ln in lines), f
    for ep in ENDPOINTS:
        assert any(ep in ln for ln in lines), ep
    slow = [ln for ln in lines if "GET /orders/{id}" in ln and "SLOWER" in ln]
    assert slow and "91.8" in slow[0], out
    assert "…" not in out.split("noise suppressed")[0]
