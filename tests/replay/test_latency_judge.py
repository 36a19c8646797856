"""``replay.latency.judge_latency``: the per-endpoint latency verdict shared by ``diff``, the
demo and the appliance. A +50 ms candidate on one endpoint (p90 ~92 vs ~47 ms) is flagged and
nothing else is; significance alone (a few ms) is not enough; the baseline can be production."""

from __future__ import annotations

import random

from replay.latency import judge_latency, mann_whitney_p


def _ms(center: float, n: int, rnd: random.Random, spread: float = 4.0) -> list[float]:
    return [max(0.0, rnd.gauss(center, spread)) / 1000 for _ in range(n)]


def test_fifty_ms_slower_on_one_endpoint_is_flagged_alone() -> None:
    rnd = random.Random(7)
    samples = {
        "GET /orders/{id}": {"production": _ms(3, 200, rnd), "secondary": _ms(45, 200, rnd),
                             "candidate": _ms(95, 200, rnd)},
        "GET /products": {"production": _ms(3, 200, rnd), "secondary": _ms(45, 200, rnd),
                          "candidate": _ms(46, 200, rnd)},
        "GET /users/me": {"production": _ms(3, 200, rnd), "secondary": _ms(10, 200, rnd),
                          "candidate": _ms(14, 200, rnd)},  # significant, but only 4 ms
    }
    rows = {r["endpoint"]: r for r in judge_latency(samples)}
    assert [e for e, r in rows.items() if r["regression"]] == ["GET /orders/{id}"]
    slow = rows["GET /orders/{id}"]
    assert slow["candidate_p90_ms"] > slow["secondary_p90_ms"] + 40
    assert slow["p_value"] < 1e-6 and slow["baseline"] == "secondary"
    assert rows["GET /users/me"]["p_value"] < 0.01 and not rows["GET /users/me"]["regression"]


def test_production_as_the_baseline_and_small_samples() -> None:
    rnd = random.Random(3)
    samples = {"GET /a": {"production": _ms(40, 50, rnd), "candidate": _ms(90, 50, rnd)},
               "GET /b": {"production": _ms(40, 5, rnd), "candidate": _ms(90, 5, rnd)}}
    rows = {r["endpoint"]: r for r in judge_latency(samples, baseline="production")}
    assert rows["GET /a"]["regression"] and rows["GET /a"]["baseline"] == "production"
    assert not rows["GET /b"]["regression"] and rows["GET /b"]["p_value"] is None
    # The default baseline (the secondary) has no samples here: no verdict at all.
    assert not any(r["regression"] for r in judge_latency(samples))


def test_mann_whitney_direction() -> None:
    assert mann_whitney_p([5.0] * 20, [1.0] * 20) < 1e-6
    assert mann_whitney_p([1.0] * 20, [5.0] * 20) > 0.99
    assert mann_whitney_p([], [1.0]) == 1.0


def test_latency_warn_only_reports_without_failing() -> None:
    from replay.cli_replay import add_latency

    rnd = random.Random(5)
    samples = {"GET /a": {"secondary": _ms(40, 50, rnd), "candidate": _ms(95, 50, rnd)}}
    for fail, verdict in ((True, "fail"), (False, "pass")):
        doc = {"summary": {"verdict": "pass"}}
        add_latency(doc, samples, baseline="secondary", min_samples=10, fail=fail)
        assert doc["latency_regressions"] == ["GET /a"]
        assert doc["summary"]["latency_regressions"] == 1
        assert doc["summary"]["verdict"] == verdict
