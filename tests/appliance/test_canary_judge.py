"""The canary judge (``appliance.canary.judge``) on synthetic samples, its YAML policy
(``appliance.canary.policy`` through ``strictconf``), the step machine holding on inconclusive
evidence, and a Prometheus metric answered by Debian's real Prometheus."""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.canary.judge import (
    FAIL,
    INCONCLUSIVE,
    MARGINAL,
    PASS,
    Allowance,
    Evidence,
    Judge,
    JudgePolicy,
    MetricPolicy,
    PrometheusFetcher,
    default_judge_policy,
    hodges_lehmann,
    mann_whitney,
    prometheus_samples,
)
from appliance.canary.rollout import (
    CANARY,
    PROD,
    CanaryConfigError,
    CanaryPolicy,
    Rollout,
    load_policy,
)

SHADOWTAP = [str(Path(sys.executable).parent / "shadowtap")]

# The shop's traffic mix (examples/shop/traffic.py, roughly): GET /orders/{id} carries 6 %.
MIX = {"GET /products": 0.34, "GET /products/{id}": 0.30, "GET /users/me": 0.14,
       "GET /users/{id}/orders": 0.10, "GET /orders/{id}": 0.06, "POST /orders": 0.04,
       "DELETE /orders/{id}": 0.02}
BASE_MS = {"GET /products": 3.0, "GET /products/{id}": 2.0, "GET /users/me": 2.5,
           "GET /users/{id}/orders": 4.0, "GET /orders/{id}": 2.0, "POST /orders": 6.0,
           "DELETE /orders/{id}": 3.0}


def _sample(rng: random.Random, side: str, *, slow: dict[str, float] | None = None,
            err: float = 0.002) -> tuple[str, int, float]:
    r = rng.random()
    acc = 0.0
    ep = "GET /products"
    for e, share in MIX.items():
        acc += share
        if r < acc:
            ep = e
            break
    ms = BASE_MS[ep] * rng.lognormvariate(0, 0.35) + (slow or {}).get(ep, 0.0)
    status = 500 if rng.random() < err else 200
    return ep, status, ms / 1000


def _evidence(seed: int, n_canary: int, n_prod: int, **canary_kw: object) -> Evidence:
    rng = random.Random(seed)
    ev = Evidence()
    for side, n, kw in ((CANARY, n_canary, canary_kw), (PROD, n_prod, {})):
        for _ in range(n):
            ep, st, lat = _sample(rng, side, **kw)  # type: ignore[arg-type]
            ev.add(side, st, lat, ep)
    return ev


# ---- the statistics --------------------------------------------------------------------------

def test_mann_whitney_exact_for_small_samples_and_normal_with_ties() -> None:
    u, up, two = mann_whitney([4, 5, 6], [1, 2, 3])
    assert u == 9 and up == pytest.approx(1 / 20) and two == pytest.approx(2 / 20)
    u, up, two = mann_whitney([1, 2, 3], [4, 5, 6])
    assert u == 0 and up == pytest.approx(1.0) and two == pytest.approx(0.1)
    # interleaved: no evidence either way
    assert mann_whitney([1, 3, 5, 7], [2, 4, 6, 8])[2] > 0.5
    # ties and a large sample: the normal approximation agrees with replay's own U test
    from replay.latency import mann_whitney_p

    rng = random.Random(5)
    a = [round(rng.gauss(10.3, 2)) for _ in range(400)]
    b = [round(rng.gauss(10, 2)) for _ in range(500)]
    assert mann_whitney(a, b)[1] == pytest.approx(mann_whitney_p(a, b), rel=1e-9)
    assert mann_whitney([], [1.0]) == (0.0, 1.0, 1.0)


def test_hodges_lehmann_is_the_shift_and_stays_cheap_and_repeatable() -> None:
    rng = random.Random(2)
    b = [rng.expovariate(1 / 5) for _ in range(300)]
    a = [x + 80 for x in b]
    assert hodges_lehmann(a, b) == pytest.approx(80, abs=1.5)
    big_b = [rng.gauss(20, 5) for _ in range(5000)]
    big_a = [rng.gauss(27, 5) for _ in range(5000)]  # 25 M pairs: sampled, with a fixed seed
    t0 = time.perf_counter()
    e1 = hodges_lehmann(big_a, big_b)
    assert time.perf_counter() - t0 < 1.0
    assert e1 == hodges_lehmann(big_a, big_b) and e1 == pytest.approx(7, abs=0.3)
    assert hodges_lehmann([], [1.0]) is None


# ---- the verdicts ------------------------------------------------------------------------------

def test_a_and_a_passes_in_at_least_99_of_100_seeded_trials() -> None:
    judge = Judge(default_judge_policy(), CANARY, PROD)
    outcomes = [judge.judge(_evidence(seed, 800, 2400), divergence=[]).outcome
                for seed in range(100)]
    assert outcomes.count(PASS) >= 99, outcomes


def test_80_ms_on_an_endpoint_with_6_percent_of_the_traffic_is_found() -> None:
    ev = _evidence(7, 2000, 6000, slow={"GET /orders/{id}": 80.0})
    v = Judge(default_judge_policy(), CANARY, PROD).judge(ev, divergence=[])
    assert v.outcome == FAIL
    lat = next(m for m in v.metrics if m.name == "latency")
    overall = lat.tests[0]
    # the whole distribution barely moves: its own test would have passed
    assert overall.endpoint is None and overall.result == PASS and overall.effect is not None
    assert overall.effect < 10
    bad = [t for t in lat.tests if t.result == FAIL]
    assert [t.endpoint for t in bad] == ["GET /orders/{id}"]
    assert bad[0].effect == pytest.approx(80, abs=8)
    assert bad[0].n_canary < 0.08 * 2000
    assert v.reasons[0].startswith("latency: GET /orders/{id}: p95 "), v.reasons
    # and no error metric blamed
    assert next(m for m in v.metrics if m.name == "errors").result == PASS


def test_a_clear_error_regression_fails_and_names_the_endpoint() -> None:
    rng = random.Random(3)
    ev = _evidence(3, 1500, 4000)
    for _ in range(200):  # the shop's v2: 500s for users without orders
        ev.add(CANARY, 500 if rng.random() < 0.6 else 200, 0.004, "GET /users/{id}/orders")
    v = Judge(default_judge_policy(), CANARY, PROD).judge(ev, divergence=[])
    assert v.outcome == FAIL
    errs = next(m for m in v.metrics if m.name == "errors")
    assert errs.result == FAIL and errs.critical
    assert any(t.endpoint == "GET /users/{id}/orders" and t.result == FAIL for t in errs.tests)
    assert any(r.startswith("errors: GET /users/{id}/orders: ") for r in v.reasons), v.reasons
    # the same share spread as a few unlucky errors is not enough: 2 in 40
    ev2 = _evidence(4, 40, 4000)
    ev2.add(CANARY, 500, None, "GET /products")
    ev2.add(CANARY, 500, None, "GET /products")
    pol = default_judge_policy(min_requests=30)
    assert Judge(pol, CANARY, PROD).judge(ev2, divergence=[]).outcome == PASS


def test_too_few_samples_is_inconclusive_not_pass() -> None:
    ev = _evidence(1, 20, 3000)
    v = Judge(default_judge_policy(min_requests=50), CANARY, PROD).judge(ev, divergence=[])
    assert v.outcome == INCONCLUSIVE
    assert any("inconclusive: errors" in r for r in v.reasons), v.reasons


def test_divergence_is_a_metric_and_vetoes_when_critical() -> None:
    ev = _evidence(1, 800, 2400)
    j = Judge(default_judge_policy(), CANARY, PROD)
    v = j.judge(ev, divergence=["GET /products/{id} body:$.data.price changed_type"])
    assert v.outcome == FAIL and v.reasons == [
        "divergence: GET /products/{id} body:$.data.price changed_type"]
    assert j.judge(ev, divergence=None).outcome == PASS  # no shadows: not judged


def _scored(marginal: float, critical: bool = False) -> JudgePolicy:
    return JudgePolicy(
        metrics=[MetricPolicy("errors", "error_share", group="errors",
                              allowed_increase=Allowance(absolute=0.01)),
                 MetricPolicy("latency", "latency", group="latency", critical=critical,
                              allowed_increase=Allowance(relative=0.2, absolute=2)),
                 MetricPolicy("divergence", "divergence", group="divergence")],
        groups={"errors": 50, "latency": 30, "divergence": 20}, pass_score=95,
        marginal_score=marginal, min_samples=50)


def test_groups_weights_score_thresholds_and_critical_metrics() -> None:
    ev = _evidence(9, 1000, 3000, slow={ep: 5.0 for ep in MIX})  # everything +5 ms
    v = Judge(_scored(marginal=60), CANARY, PROD).judge(ev, divergence=[])
    assert v.score == pytest.approx(70) and v.outcome == MARGINAL  # 50 + 20 of 100
    assert Judge(_scored(marginal=75), CANARY, PROD).judge(ev, divergence=[]).outcome == FAIL
    crit = Judge(_scored(marginal=60, critical=True), CANARY, PROD).judge(ev, divergence=[])
    assert crit.outcome == FAIL and crit.score == pytest.approx(70)
    assert crit.reasons[0].startswith("latency: p95 ")
    ok = Judge(_scored(marginal=60), CANARY, PROD).judge(_evidence(9, 1000, 3000), divergence=[])
    assert ok.outcome == PASS and ok.score == 100


def test_a_decrease_can_be_the_regression() -> None:
    pol = JudgePolicy(metrics=[MetricPolicy(
        "throughput", "prometheus", direction="decrease", critical=True, url="http://x",
        canary_query="c", baseline_query="b", allowed_decrease=Allowance(relative=0.1))],
        min_samples=10)
    rng = random.Random(1)
    base = [rng.gauss(1000, 30) for _ in range(30)]
    j = Judge(pol, CANARY, PROD)
    low = j.judge(Evidence(), external={"throughput": ([x * 0.7 for x in base], base)})
    assert low.outcome == FAIL and low.metrics[0].tests[0].effect < -250  # type: ignore[operator]
    assert j.judge(Evidence(), external={"throughput": ([x * 0.97 for x in base], base)}
                   ).outcome == PASS
    higher = j.judge(Evidence(), external={"throughput": ([x * 1.5 for x in base], base)})
    assert higher.outcome == PASS  # more is not worse here


# ---- inconclusive in the step machine ------------------------------------------------------------

def _feed(r: Rollout, n: int, share: float, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        side = CANARY if rng.random() < share else PROD
        ep, st, lat = _sample(rng, side, err=0.0)
        r.add(side, st, lat, ep)


@pytest.mark.parametrize("action", ["rollback", "promote"])
def test_an_inconclusive_step_holds_then_follows_the_policy(action: str) -> None:
    jp = default_judge_policy(min_requests=100)
    jp.max_wait, jp.on_timeout = 20.0, action
    w: list[float] = []
    r = Rollout(CanaryPolicy(steps=[5, 100], step_seconds=5, min_requests=100, judge=jp),
                w.append)
    r.start(0.0)
    for t in range(1, 20):  # 10 canary requests per second: not enough for 19 s
        _feed(r, 30, 0.02, t)
        j = r.tick(float(t))
        assert j is not None and j.decision == "wait", (t, j)
        assert j.stats["judgement"]["outcome"] == INCONCLUSIVE
    j = r.tick(20.0)
    assert j is not None and j.decision == action
    if action == "rollback":
        assert r.state == "rolled_back" and w == [5, 0]
        assert r.reasons[0].startswith("too little traffic: ")
    else:
        assert r.step == 1 and w == [5, 100]
    # enough traffic arriving late still promotes before the wait is over
    r2 = Rollout(CanaryPolicy(steps=[50], step_seconds=5, min_requests=100, judge=jp),
                 lambda x: None)
    r2.start(0.0)
    _feed(r2, 20, 0.5, 1)
    assert r2.tick(6.0).decision == "wait"  # type: ignore[union-attr]
    _feed(r2, 600, 0.5, 2)
    assert r2.tick(12.0).decision == "promote"  # type: ignore[union-attr]
    h = r2.history[-1]["judgement"]
    assert h["outcome"] == PASS and {m["name"] for m in h["metrics"]} == {
        "errors", "latency", "divergence"}


def test_the_rollout_finds_the_slow_endpoint_and_keeps_the_evidence() -> None:
    r = Rollout(CanaryPolicy(steps=[20, 100], step_seconds=30, min_requests=50), lambda w: None)
    r.start(0.0)
    rng = random.Random(11)
    for t in range(1, 10):
        for _ in range(400):
            side = CANARY if rng.random() < 0.2 else PROD
            ep, st, lat = _sample(rng, side, slow={"GET /orders/{id}": 80.0}
                                  if side == CANARY else None)
            r.add(side, st, lat, ep)
        r.tick(float(t))
        if r.done:
            break
    assert r.state == "rolled_back" and t < 10
    assert "GET /orders/{id}" in r.reasons[0] and r.reasons[0].startswith("latency:")
    ev = r.history[-1]["judgement"]
    assert ev["outcome"] == FAIL and any(
        t["endpoint"] == "GET /orders/{id}" and t["result"] == FAIL
        for m in ev["metrics"] for t in m["tests"])


# ---- the policy file -------------------------------------------------------------------------------

POLICY = """\
steps: [10, 50, 100]
step_seconds: 20
min_requests: 40
image: {name: shop, shadow: canary-1}
judge:
  alpha: 0.005
  thresholds: {pass: 90, marginal: 70}
  inconclusive: {max_wait: 90, action: rollback}
  groups: {errors: 3, latency: 1}
  metrics:
    - {name: errors, kind: error_share, critical: true, per_endpoint: true,
       allowed_increase: {absolute: 0.02}}
    - {name: latency, kind: latency, per_endpoint: true,
       allowed_increase: {relative: 0.3, absolute: 15}}
    - name: cpu
      kind: prometheus
      url: http://127.0.0.1:9090
      canary: 'rate(x{job="canary"}[30s])'
      baseline: 'rate(x{job="prod"}[30s])'
      direction: either
"""


def test_the_policy_file_builds_the_judge(tmp_path: Path) -> None:
    p = tmp_path / "canary.yaml"
    p.write_text(POLICY)
    pol = load_policy(p)
    assert pol.steps == [10, 50, 100] and pol.image.image == "shop"
    assert pol.image.shadow == "canary-1"
    jp = pol.judge_policy()
    assert [m.name for m in jp.metrics] == ["errors", "latency", "cpu"]
    assert jp.alpha == 0.005 and jp.pass_score == 90 and jp.marginal_score == 70
    assert jp.max_wait == 90 and jp.groups == {"errors": 3, "latency": 1}
    lat = jp.metrics[1]
    assert lat.allowed_increase == Allowance(relative=0.3, absolute=15) and not lat.critical
    assert jp.metrics[2].canary_query == 'rate(x{job="canary"}[30s])'
    # without a judge: section, the flat keys (and the flags that override them) make it
    plain = tmp_path / "plain.yaml"
    plain.write_text("steps: 5,100\nmax_error_rate: 0.03\nmin_latency_ms: 25\n")
    d = load_policy(plain)
    d.max_latency_ratio = 2.0  # as --max-latency-ratio would
    dj = d.judge_policy()
    assert dj.metrics[0].allowed_increase.absolute == 0.03
    assert dj.metrics[1].allowed_increase == Allowance(relative=1.0, absolute=25)


@pytest.mark.parametrize(("edit", "message"), [
    (("allowed_increase: {relative: 0.3", "allowed_increse: {relative: 0.3"),
     "judge.metrics[1].allowed_increse: unknown key; did you mean 'allowed_increase'?"),
    (("thresholds: {pass: 90", "treshholds: {pass: 90"),
     "judge.treshholds: unknown key; did you mean 'thresholds'?"),
    (("kind: latency", "kind: latncy"), "judge.metrics[1].kind: 'latncy'; one of"),
    (("alpha: 0.005", "alpha: often"), "judge.alpha: expected a number"),
    (("      url: http://127.0.0.1:9090\n", ""),
     "judge.metrics[2]: a prometheus metric needs url"),
    (("action: rollback", "action: shrug"), "judge.inconclusive.action must be rollback or"),
    (("{name: shop, shadow: canary-1}", "{name: shop, shadw: canary-1}"),
     "image.shadw: unknown key; did you mean 'shadow'?"),
    (("per_endpoint: true,\n       allowed_increase: {absolute", "url: x,\n       "
      "allowed_increase: {absolute"), "judge.metrics[0].url: unknown key"),
])
def test_policy_mistakes_name_the_key(tmp_path: Path, edit: tuple[str, str],
                                      message: str) -> None:
    p = tmp_path / "canary.yaml"
    assert edit[0] in POLICY
    p.write_text(POLICY.replace(edit[0], edit[1], 1))
    with pytest.raises(CanaryConfigError) as e:
        load_policy(p)
    assert str(e.value).startswith(f"{p}: "), e.value
    assert message in str(e.value), e.value


def test_canary_run_keeps_its_usage_exit_code_for_a_bad_policy(tmp_path: Path) -> None:
    p = tmp_path / "canary.yaml"
    p.write_text(POLICY.replace("kind: latency", "kind: latncy"))
    res = subprocess.run([*SHADOWTAP, "canary", "run", "--config", str(p)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and f"\nerror: {p}: judge.metrics[1].kind" in "\n" + res.stderr
    res = subprocess.run([*SHADOWTAP, "canary", "run", "--image-target", "shop"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "IMAGE:SHADOW" in res.stderr, res.stderr


# ---- Prometheus ----------------------------------------------------------------------------------

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@contextlib.contextmanager
def _exporters() -> Iterator[tuple[int, int]]:
    """Two /metrics endpoints: the canary's gauge runs about 2x production's."""
    from apphelpers import free_port
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    stop = threading.Event()
    ports, gauges, servers = [], [], []
    for _ in range(2):
        reg = CollectorRegistry()
        gauges.append(Gauge("kj_busy", "work in progress", registry=reg))
        port = free_port()
        servers.append(start_http_server(port, "127.0.0.1", registry=reg))
        ports.append(port)

    def loop() -> None:
        rng = random.Random(1)
        while not stop.wait(0.2):
            gauges[0].set(rng.gauss(20, 2))  # canary
            gauges[1].set(rng.gauss(10, 1))  # prod

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield ports[0], ports[1]
    finally:
        stop.set()
        for s in servers:
            with contextlib.suppress(Exception):
                s[0].shutdown()


@pytest.mark.slow
@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="Debian's prometheus is not installed")
def test_a_prometheus_query_is_a_metric(tmp_path: Path) -> None:
    import yaml
    from apphelpers import free_port

    with _exporters() as (cport, pport):
        port = free_port()
        cfg = {"global": {"scrape_interval": "1s"}, "scrape_configs": [
            {"job_name": "canary", "static_configs": [{"targets": [f"127.0.0.1:{cport}"]}]},
            {"job_name": "prod", "static_configs": [{"targets": [f"127.0.0.1:{pport}"]}]}]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        (tmp_path / "data").mkdir()
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            pol = JudgePolicy(metrics=[MetricPolicy(
                "busy", "prometheus", critical=True, url=url,
                canary_query='kj_busy{job="canary"}[30s]', baseline_query='kj_busy{job="prod"}[30s]',
                allowed_increase=Allowance(relative=0.25))], min_samples=6)
            fetch = PrometheusFetcher(pol, every=0.0)
            judge = Judge(pol, CANARY, PROD)
            deadline = time.monotonic() + 40
            v = None
            while time.monotonic() < deadline:
                samples = fetch(time.monotonic())
                v = judge.judge(Evidence(), external=samples)
                if v.outcome != INCONCLUSIVE:
                    break
                time.sleep(1)
            assert v is not None and v.outcome == FAIL, (v, fetch.errors)
            t = v.metrics[0].tests[0]
            assert t.n_canary >= 6 and t.effect is not None and 7 < t.effect < 13
            assert v.reasons[0].startswith("busy: ")
            # the same query against itself: no difference
            same = prometheus_samples(url, 'kj_busy{job="prod"}[30s]')
            assert len(same) >= 6 and all(math.isfinite(x) for x in same)
            assert Judge(pol, CANARY, PROD).judge(Evidence(), external={
                "busy": (same, same)}).outcome == PASS
            # a query Prometheus refuses: no evidence, and why
            bad = JudgePolicy(metrics=[MetricPolicy("x", "prometheus", url=url,
                                                    canary_query="rate(", baseline_query="up")])
            f2 = PrometheusFetcher(bad, every=0.0, background=False)
            f2(0.0)
            assert "x" in f2.errors and f2.samples == {}
        finally:
            proc.terminate()
            proc.wait(10)


def test_at_100_percent_production_samples_come_from_the_step_before() -> None:
    """At 100 % production gets no new connections: the last step is judged against the
    production samples of the step before, and still finds a regression."""
    for slow, want in ((None, "promoted"), ({"GET /orders/{id}": 80.0}, "rolled_back")):
        r = Rollout(CanaryPolicy(steps=[50, 100], step_seconds=5, min_requests=50),
                    lambda w: None)
        r.start(0.0)
        rng = random.Random(4)
        for _ in range(2000):  # step 1 (50 %): both sides, v1 on both
            side = CANARY if rng.random() < 0.5 else PROD
            ep, st, lat = _sample(rng, side, err=0.0)
            r.add(side, st, lat, ep)
        assert r.tick(6.0).decision == "promote"  # type: ignore[union-attr]
        for _ in range(1500):  # step 2 (100 %): the canary only
            ep, st, lat = _sample(rng, CANARY, err=0.0, slow=slow)
            r.add(CANARY, st, lat, ep)
        j = r.tick(12.0)
        assert r.state == want, (j.reasons if j else None, r.history)
        tests = [t for m in r.history[-1]["judgement"]["metrics"] for t in m["tests"]]
        lat = next(t for t in tests if t["metric"] == "latency" and t["endpoint"] is None)
        assert lat["n_baseline"] > 500 and lat["note"] == "production: the step before's samples"
        if slow:
            assert r.reasons[0].startswith("latency: GET /orders/{id}: ")


def test_a_hung_prometheus_never_delays_the_judge() -> None:
    release = threading.Event()
    calls: list[str] = []

    def slow(url: str, query: str) -> list[float]:
        calls.append(query)
        release.wait(10)
        return [1.0, 2.0, 3.0]

    pol = JudgePolicy(metrics=[MetricPolicy("q", "prometheus", url="http://x",
                                            canary_query="c", baseline_query="b")])
    f = PrometheusFetcher(pol, every=0.0, fetch=slow)
    t0 = time.monotonic()
    assert f(0.0) == {} and f(1.0) == {}  # the first query hangs; no second one piles up
    assert time.monotonic() - t0 < 0.5 and calls == ["c"]
    release.set()
    f._busy.join(5)
    assert f(2.0)["q"] == ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])


def test_a_failure_only_the_sum_shows_still_names_the_endpoint() -> None:
    """Errors spread thin (each endpoint's share not significant alone, the total is): the
    reason names the endpoint that moved the total most, so a rollback says where to look."""
    rng = random.Random(11)
    ev = Evidence()
    for _ in range(4000):
        ev.add(PROD, 200, 0.004, rng.choice(["GET /a", "GET /b", "GET /c", "GET /d"]))
    eps = ["GET /a", "GET /b", "GET /c", "GET /d"]
    errors = {"GET /a": 3, "GET /b": 3, "GET /c": 4, "GET /d": 3}  # 13 of 400 in all
    for ep in eps:
        for i in range(100):
            ev.add(CANARY, 500 if i < errors[ep] else 200, 0.004, ep)
    v = Judge(default_judge_policy(), CANARY, PROD).judge(ev, divergence=[])
    errs = next(m for m in v.metrics if m.name == "errors")
    assert errs.result == FAIL
    assert not any(t.endpoint and t.result == FAIL for t in errs.tests)  # no endpoint alone
    assert errs.reasons[0].startswith("errors: 3.2% of 400 canary requests"), errs.reasons
    assert "most of it on GET /c (4 errors in 100 canary requests)" in errs.reasons[0], errs.reasons


def test_errors_too_thin_to_judge_per_endpoint_are_still_located() -> None:
    """A step's first seconds: the total fails but no endpoint has enough requests to be
    judged; the reason still says where the errors are."""
    ev = Evidence()
    for i in range(2000):
        ev.add(PROD, 200, 0.004, "GET /a" if i % 2 else "GET /b")
    for i in range(60):
        ep = "GET /orders" if i < 8 else "GET /a"
        ev.add(CANARY, 500 if i < 5 else 200, 0.004, ep)
    v = Judge(default_judge_policy(), CANARY, PROD).judge(ev, divergence=[])
    errs = next(m for m in v.metrics if m.name == "errors")
    assert errs.result == FAIL, errs.reasons
    assert "most of it on GET /orders (5 errors in 8 canary requests)" in errs.reasons[0]


def test_errors_beyond_doubt_fail_before_the_sample_minimum_and_a_few_do_not() -> None:
    """A step's first second: 12 canary requests on one endpoint, 6 of them 500s, against a
    production that answers it without errors. No test needs 30 requests to see that; the
    early failure says so and names the endpoint. A couple of errors, or errors production
    makes as often, stay inconclusive until the minimum."""
    def ev_with(errors: int, n: int) -> Evidence:
        ev = Evidence()
        for i in range(3000):
            ev.add(PROD, 200, 0.004, "GET /a" if i % 3 else "GET /u")
        for i in range(n):
            ev.add(CANARY, 500 if i < errors else 200, 0.004, "GET /u")
        return ev

    judge = Judge(default_judge_policy(), CANARY, PROD)
    v = judge.judge(ev_with(6, 12), divergence=[])
    assert v.outcome == FAIL, v.reasons
    assert v.reasons[0].startswith("errors: GET /u: 50.0% of 12 canary requests"), v.reasons
    errs = next(m for m in v.metrics if m.name == "errors")
    assert any("early" in t.note for t in errs.tests if t.result == FAIL)
    assert judge.judge(ev_with(2, 12), divergence=[]).outcome == INCONCLUSIVE
    # production fails a third of GET /u too: 4 in 12 is no news
    same = ev_with(4, 12)
    for _ in range(1000):
        same.add(PROD, 500, 0.004, "GET /u")
    assert judge.judge(same, divergence=[]).outcome == INCONCLUSIVE
