"""Pacing: the sans-I/O schedule exactly, then the real thing measured at a real server.

Live checks compare ratios and percentiles of gaps measured where it matters (arrival at the
server), not single timings, so a busy machine does not make them flaky.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

import pytest
from replay_helpers import run_cli, write_jsonl
from replay_servers import HttpServer

from replay.model import Exchange, Request
from replay.pacing import Pacing, PacingError, Schedule, order_by_time
from replay.stats import percentile


def test_parse() -> None:
    assert Pacing.parse(None, None).is_max
    assert Pacing.parse("max", None).is_max
    assert Pacing.parse("2.5", None).speed == 2.5
    assert Pacing.parse(None, 100).rate == 100
    assert Pacing.parse("inf", None).is_max
    for bad in ("0", "-1", "fast", "nan", "1e999"):
        with pytest.raises(PacingError):
            Pacing.parse(bad, None)
    with pytest.raises(PacingError):
        Pacing.parse("1", 5)
    with pytest.raises(PacingError):
        Pacing.parse(None, 0)


def test_rate_schedule() -> None:
    s = Schedule(Pacing(rate=100), [None] * 10, loops=3)
    assert s.total == 30
    assert [s.due(i) for i in (0, 1, 10, 29)] == [0.0, 0.01, 0.1, 0.29]
    assert s.target_rate == 100
    assert s.duration == pytest.approx(0.29)


def test_speed_schedule_scales_and_loops() -> None:
    ts = [100.0, 100.5, 101.0, None, 103.0]
    s1 = Schedule(Pacing(speed=1), ts)
    assert [s1.due(i) for i in range(5)] == [0.0, 0.5, 1.0, 1.0, 3.0]
    s2 = Schedule(Pacing(speed=2), ts, loops=2)
    assert [s2.due(i) for i in range(5)] == [0.0, 0.25, 0.5, 0.5, 1.5]
    # The second pass starts one mean gap after the first ends, and keeps the rhythm.
    span = 1.5 + 1.5 / 4
    assert s2.due(5) == pytest.approx(span)
    assert s2.due(9) == pytest.approx(span + 1.5)
    assert s2.target_rate == pytest.approx(9 / (span + 1.5))
    # Timestamps that go backwards never make the schedule go backwards.
    s3 = Schedule(Pacing(speed=1), [10.0, 9.0, 11.0])
    assert [s3.due(i) for i in range(3)] == [0.0, 0.0, 1.0]


def test_max_has_no_schedule() -> None:
    s = Schedule(Pacing(), [1.0, 2.0])
    assert s.due(1) is None and s.duration is None and s.target_rate is None
    with pytest.raises(PacingError):
        Schedule(Pacing(), [1.0], loops=0)


def test_order_by_time() -> None:
    items = [("a", 3.0), ("b", 1.0), ("c", None), ("d", 2.0)]
    # "c" has no time: it stays right after "b", the timed item it followed.
    assert [x for x, _ in order_by_time(items, lambda t: t[1])] == ["b", "c", "d", "a"]


def overload() -> float:
    """How much more than its cores the host is asked to run (1 when it is not overloaded).

    A user-space client cannot keep millisecond promises when the kernel has other runnable
    work for every core: on a shared CI host at load 6 on 2 cores, time slices of ~10 ms show up
    in the p95. The 5 ms bound is checked as stated on a host that is not overloaded, and scaled
    by the overload (capped at 4×) otherwise; the median bound holds regardless.
    """
    per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    return min(4.0, max(1.0, per_cpu))


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_rate_is_held_over_ten_seconds(tmp_path: Path) -> None:
    n = 10_000
    f = write_jsonl(tmp_path / "r.jsonl",
                    [Exchange(id=str(i), request=Request("GET", f"/r/{i}", headers=[("Host", "h")]))
                     for i in range(n)])
    with HttpServer() as srv:
        p = run_cli("replay", f, "-t", srv.url, "--rate", "1000", "--summary-json")
        assert p.returncode == 0, p.stderr.decode()
        times = sorted(s.t for s in srv.seen)
    assert len(times) == n
    achieved = (n - 1) / (times[-1] - times[0])
    assert 0.95 <= achieved / 1000 <= 1.05, achieved
    s = json.loads(p.stdout)
    assert s["target_rate"] == 1000
    assert 0.95 <= s["achieved_rate"] / 1000 <= 1.05, s["achieved_rate"]
    # Evenly spread, not bursts: every 1-second window holds about 1000 requests.
    t0 = times[0]
    per_second = [sum(1 for t in times if k <= t - t0 < k + 1) for k in range(9)]
    assert all(700 <= c <= 1300 for c in per_second), per_second


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_speed_follows_the_capture_rhythm(speed: float, tmp_path: Path) -> None:
    rng = random.Random(7)
    ts, t = [], 1_700_000_000.0
    for _ in range(150):
        ts.append(t)
        t += rng.choice([0.0, 0.002, 0.005, 0.01, 0.02, 0.03])  # bursts and lulls
    exs = [Exchange(id=str(i), request=Request("GET", f"/s/{i}", headers=[("Host", "h")]),
                    ts_request_start=x) for i, x in enumerate(ts)]
    rng.shuffle(exs)  # captures list exchanges by connection, not by time
    f = write_jsonl(tmp_path / "s.jsonl", exs)
    with HttpServer() as srv:
        p = run_cli("replay", f, "-t", srv.url, "--speed", str(speed), "--summary-json")
        assert p.returncode == 0, p.stderr.decode()
        arrivals = {s.path: s.t for s in srv.seen}
    got = [arrivals[f"/s/{i}"] for i in range(150)]
    want = [x / speed for x in _gaps(ts)]
    errors = sorted(abs(g - w) for g, w in zip(_gaps(got), want, strict=True))
    assert percentile(errors, 50) <= 0.002, errors[-10:]
    assert percentile(errors, 95) <= 0.005 * overload(), errors[-10:]
    span_ratio = (got[-1] - got[0]) / ((ts[-1] - ts[0]) / speed)
    tol = 0.05 * overload()
    assert 1 - tol <= span_ratio <= 1 + tol, span_ratio
