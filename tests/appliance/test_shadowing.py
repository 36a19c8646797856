"""Live shadowing in the daemon (``shadowing:`` in the config): real production traffic on a
mirrored link, replayed by ``shadowtap appliance run`` to two real shadow servers, compared
three ways while it flows; a dead shadow, a shadow URL that is production, and config mistakes."""

from __future__ import annotations

import contextlib
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from apphelpers import (
    SERVER,
    Daemon,
    JsonHandler,
    Topo,
    free_port,
    log_files,
    read_log,
    serve_http,
    topology,
    wait_for,
)

from appliance.live import config
from netconfig import netns as nsmod

pytestmark = pytest.mark.root


class _Api(JsonHandler):
    """A JSON API with honest noise (a timestamp, a uuid) and, in build "v2", one seeded
    regression: ``price`` on /items/{id} turns from a number into a string."""

    build = "v1"

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        n = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        doc: dict[str, object] = {"ts": time.time(), "rid": str(uuid.uuid4())}
        if parts[0] == "items":
            price = 10 + n % 7 + 0.5
            doc["item"] = {"id": n, "name": f"item {n}",
                           "price": f"{price:.2f}" if self.build == "v2" else price}
        else:
            doc["user"] = {"id": n, "name": f"user {n}", "orders": n % 3}
        self.send_json(200, doc)


def api(build: str, addr: str, port: int,
        ns: str | None = None) -> contextlib.AbstractContextManager[None]:
    return serve_http(type(f"Api{build}", (_Api,), {"build": build}), addr, port, ns)


def client_load(topo: Topo, n_conn: int = 10, per_conn: int = 30) -> int:
    """Keep-alive GETs from the client namespace to production; returns requests answered."""
    ok = 0
    with nsmod.netns_context(topo.client):
        for c in range(n_conn):
            conn = http.client.HTTPConnection(SERVER, 80, timeout=5)
            for i in range(per_conn):
                path = f"/items/{(c * per_conn + i) % 40}" if i % 2 else f"/users/{i % 25}"
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                ok += r.status == 200
            conn.close()
    return ok


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topo]:
    with topology(tmp_path_factory.mktemp("shtopo")) as t, api("v1", SERVER, 80, t.server):
        yield t


def _daemon(tmp: Path, topo: Topo, shadowing: dict) -> tuple[Daemon, Path]:
    out = tmp / "out"
    port = free_port()
    cfg = {"source": {"interface": "cap0", "filter": "tcp port 80", "netns": topo.app},
           "extract": {"port": 80},
           "pipeline": {"sanitise": {"enabled": False},
                        "sinks": [{"type": "jsonl", "path": str(out / "exchanges.jsonl")}]},
           "metrics": {"listen": f"127.0.0.1:{port}"},
           "shadowing": {"verdict_every": "1s", "min_samples": 5,
                         "report": str(out / "report.json"), **shadowing}}
    (tmp / "appliance.yaml").write_text(yaml.safe_dump(cfg))
    return Daemon(tmp / "appliance.yaml", port, tmp / "daemon.log"), out


def test_daemon_replays_live_and_finds_exactly_the_seeded_regression(topo: Topo,
                                                                      tmp_path: Path) -> None:
    p1, p2 = free_port(), free_port()
    with api("v1", "127.0.0.1", p1), api("v2", "127.0.0.1", p2):
        d, out = _daemon(tmp_path, topo, {"secondary": f"http://127.0.0.1:{p1}",
                                          "candidate": {"url": f"http://127.0.0.1:{p2}",
                                                        "name": "cand", "label": "v2"}})
        d.start()
        try:
            assert client_load(topo) == 300
            wait_for(lambda: d.total("shadowtap_compared_requests_total") >= 300, 40,
                     "300 live comparisons")
            assert d.total("shadowtap_shadow_requests_total", shadow="cand",
                           result="answered") >= 300
            assert d.total("shadowtap_shadow_requests_total", result="failed") == 0
            assert d.total("shadowtap_shadow_up", shadow="shadow-1") == 1
            wait_for(lambda: (out / "report.json").exists(), 10, "the rolling report")
            live = json.loads((out / "report.json").read_text())
            assert live["shadowtap"] == "live"  # rewritten while running, not only at the end
        finally:
            assert d.stop() == 0
    rep = json.loads((out / "report.json").read_text())
    regs = {(f["endpoint"], f["field"], f["kind"]) for f in rep["regressions"]}
    assert regs == {("GET /items/{id}", "body:$.item.price", "changed_type")}, regs
    noise = {f["field"] for f in rep["noise"]}
    assert {"body:$.ts", "body:$.rid"} <= noise, noise
    assert rep["shadows"]["cand"]["answered"] >= 300 and rep["shadows"]["cand"]["role"] == "v2"
    assert rep["summary"]["compared"] >= 300
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert len(read_log(log_files(out))) >= 300  # the log is written as before
    assert "final report" in d.log.read_text()


def test_dead_shadow_is_marked_down_and_capture_goes_on(topo: Topo, tmp_path: Path) -> None:
    p1, dead = free_port(), free_port()  # nothing listens on ``dead``
    with api("v1", "127.0.0.1", p1):
        d, out = _daemon(tmp_path, topo, {"secondary": f"http://127.0.0.1:{p1}",
                                          "candidate": f"http://127.0.0.1:{dead}"})
        d.start()
        try:
            assert client_load(topo, 5, 20) == 100
            wait_for(lambda: d.total("shadowtap_shadow_requests_total", shadow="shadow-2",
                                     result="failed") >= 100, 40, "failures counted")
            assert d.total("shadowtap_shadow_up", shadow="shadow-2") == 0
            assert d.total("shadowtap_shadow_up", shadow="shadow-1") == 1
            assert d.total("shadowtap_shadow_requests_total", shadow="shadow-1",
                           result="answered") >= 100
            assert d.get("/healthz")[0] == 200
        finally:
            assert d.stop() == 0
    rep = json.loads((out / "report.json").read_text())
    s2 = rep["shadows"]["shadow-2"]
    assert not s2["up"] and s2["failed"] >= 100 and s2["transitions"][0]["state"] == "down"
    # A candidate that never answers where production's build does is judged as such (field
    # 'response', kind 'no_response'), not as differences in the fields of its answers.
    assert {(f["field"], f["kind"]) for f in rep["regressions"]} == {("response", "no_response")}
    assert len(read_log(log_files(out))) == 100


class _Slow(JsonHandler):
    def do_GET(self) -> None:
        time.sleep(1.0)
        self.send_json(200, {"slow": True})


def test_what_the_shadows_could_not_take_before_stop_is_counted(topo: Topo,
                                                                tmp_path: Path) -> None:
    """A slow candidate and a short drain: the exchanges still queued at SIGTERM are counted
    as not replayed (and the daemon still exits 0, its log complete)."""
    port = free_port()
    with serve_http(_Slow, "127.0.0.1", port):
        d, out = _daemon(tmp_path, topo, {"candidate": f"http://127.0.0.1:{port}",
                                          "concurrency": 2, "drain_timeout": "1s"})
        d.start()
        try:
            assert client_load(topo, 4, 15) == 60
            wait_for(lambda: d.total("shadowtap_exchanges_emitted_total") >= 60, 30, "captured")
        finally:
            t0 = time.monotonic()
            assert d.stop() == 0
            assert time.monotonic() - t0 < 20  # the drain is bounded
    rep = json.loads((out / "report.json").read_text())
    late = rep["summary"]["skipped"].get("not_replayed_at_stop", 0)
    assert late > 0 and late + rep["summary"]["compared"] <= 60, rep["summary"]
    assert len(read_log(log_files(out))) == 60
    assert "still waiting for the shadows at stop" in d.log.read_text()


def test_a_shadow_url_that_is_production_is_refused(topo: Topo, tmp_path: Path) -> None:
    """A typo that points the candidate at production must not replay production's traffic
    (writes included) back into production."""
    d, out = _daemon(tmp_path, topo, {"candidate": f"http://{SERVER}:80"})
    d.start()
    try:
        assert client_load(topo, 2, 10) == 20
        wait_for(lambda: d.total("shadowtap_shadowing_skipped_total",
                                 reason="refused_production") >= 20, 30, "refusals")
        assert d.total("shadowtap_shadow_requests_total") == 0
    finally:
        assert d.stop() == 0
    rep = json.loads((out / "report.json").read_text())
    assert "production server" in rep["shadows"]["shadow-2"]["refused"]


@pytest.mark.parametrize(("shadowing", "msg"), [
    ({}, "shadowing.candidate: required"),
    ({"candidate": "ftp://x"}, "shadowing.candidate: 'ftp://x': only http:// and https://"),
    ({"candidate": "http://a:1", "secondary": "http://a:1"}, "must be another shadow"),
    ({"candidate": "http://a:1", "timeuot": "1s"}, "shadowing.timeuot: unknown key; did you "
     "mean 'timeout'?"),
    ({"candidate": {"url": "http://a:1", "name": "no spaces"}}, "shadowing.candidate.name"),
])
def test_shadowing_config_mistakes_name_the_key(shadowing: dict, msg: str) -> None:
    doc = {"source": {"file": __file__}, "pipeline": {"sanitise": {"enabled": False},
                                                      "sinks": [{"type": "handoff"}]},
           "shadowing": shadowing}
    with pytest.raises(config.ConfigError) as e:
        config.parse(doc)
    assert msg in str(e.value)


def test_shadowing_needs_one_worker_and_gets_its_handoff() -> None:
    base = {"source": {"interface": "cap0", "workers": 2},
            "pipeline": {"sanitise": {"enabled": False},
                         "sinks": [{"type": "jsonl", "path": "/tmp/x.jsonl"}]},
            "shadowing": {"candidate": "http://127.0.0.1:9"}}
    with pytest.raises(config.ConfigError, match=r"set source\.workers: 1"):
        config.parse(base)
    base["source"]["workers"] = 1
    c = config.parse(base)
    assert [s.type for s in c.pipeline.sinks] == ["jsonl", "handoff"]
    assert c.shadowing is not None and c.shadowing.candidate.name == "shadow-2"
    assert c.shadowing.secondary is None


def test_live_report_lists_the_captures_http_weirds() -> None:
    """The live report carries the capture's framing weirds (request smuggling shapes seen on
    the mirror), as ``shadowtap diff`` does for a file."""
    from appliance.live.shadowing import ShadowingConfig, ShadowTarget, live_report

    cfg = ShadowingConfig(candidate=ShadowTarget("shadow-2", "http://127.0.0.1:9", "candidate"))
    weird = {"te_with_content_length": 2, "bad_content_length": 1}
    doc, _ = live_report(cfg, [], source="live", capture={"http_weird": weird})
    assert doc["summary"]["http_weird"] == dict(sorted(weird.items()))
    doc, _ = live_report(cfg, [], source="live")
    assert "http_weird" not in doc["summary"]


def test_live_shadowing_leaves_the_collector_as_it_found_it() -> None:
    """Review: the shadowing thread runs inside a longer-lived process (the appliance, the
    canary CLI): it raises the gen-0 threshold while it runs and puts it back at stop, and what
    it freezes is collected first (garbage frozen at start would never be freed)."""
    import gc
    import weakref

    from appliance.live.pipeline import Handoff, Stats
    from appliance.live.shadowing import LiveShadowing, ShadowingConfig, ShadowTarget

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    gone = weakref.ref(a)
    del a, b
    before = gc.get_threshold()
    cfg = ShadowingConfig(candidate=ShadowTarget("c", "http://127.0.0.1:9", "candidate"),
                          drain_timeout=0.1, verdict_every=60.0)
    ls = LiveShadowing(cfg, Handoff(10, Stats()), registry=False).start()
    try:
        wait_for(lambda: gc.get_threshold()[0] >= 100_000 or ls._thread is None
                 or not ls._thread.is_alive(), 10, "shadowing running")
    finally:
        ls.stop(30)
    assert not ls._thread.is_alive()
    assert gc.get_threshold() == before
    gc.collect()
    freed = gone() is None
    gc.unfreeze()
    assert freed
