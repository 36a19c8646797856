"""The web console without a browser: its config keys, the token, noise marks reaching the
merged verdict, and the exchange ring's bounds (the browser test is test_console_browser.py)."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from appliance.console.server import Console
from appliance.console.state import ExchangeRing, LogTail, NoiseMarks
from appliance.live import config
from appliance.live.shadowing import ShadowingConfig, ShadowTarget, live_report


def _cfg(tmp: Path, console: Any) -> Any:
    (tmp / "c.pcap").write_bytes(b"")
    (tmp / "key").write_bytes(b"k" * 32)
    os.chmod(tmp / "key", 0o600)
    return config.parse({"source": {"file": str(tmp / "c.pcap")},
                         "pipeline": {"sanitise": {"key_file": str(tmp / "key")},
                                      "sinks": [{"type": "jsonl", "path": str(tmp / "x.jsonl")}]},
                         "metrics": {"listen": None}, "console": console})


@pytest.mark.parametrize(("console", "msg"), [
    ({"listen": "localhost"}, "console.listen: 'localhost' is not HOST:PORT"),
    ({"tokn_file": "x"}, "did you mean 'token_file'?"),
    ({"token_file": "/nonexistent/token"}, "console.token_file: '/nonexistent/token' is not a"),
    ({"exchanges": 5}, "console.exchanges: 5 is out of range"),
    ({"exchanges": "many"}, "console.exchanges: expected a whole number"),
])
def test_console_config_mistakes_name_the_key(tmp_path: Path, console: dict, msg: str) -> None:
    with pytest.raises(config.ConfigError, match=None) as e:
        _cfg(tmp_path, console)
    assert msg in str(e.value)


def test_console_is_off_unless_configured(tmp_path: Path) -> None:
    assert _cfg(tmp_path, None).console is None
    c = _cfg(tmp_path, {}).console
    assert c.listen == "127.0.0.1:9750" and c.token_file is None and c.exchanges == 50_000


def _state(field: str) -> dict[str, Any]:
    """A worker's ThreeWay state: the candidate alone differs on ``field`` in 30/30."""
    return {"three_way": {
        "version": 1, "three_way": True, "compared": 30,
        "endpoints": {"GET /x": {"compared": 30, "candidate_errors": 0, "not_compared": 0}},
        "keys": [{"endpoint": "GET /x", "field": field, "kind": "changed_value", "cand": 30,
                  "sec": 0, "cand_only": 30, "sec_only": 0, "ruled": 0, "rule": False,
                  "examples": []}],
        "patterns": [[[0], 30]]}, "compared": 30}


def test_a_noise_mark_turns_the_merged_verdict_and_is_saved(tmp_path: Path) -> None:
    sh = ShadowingConfig(candidate=ShadowTarget("b", "http://127.0.0.1:2", "candidate"),
                         secondary=ShadowTarget("a", "http://127.0.0.1:1", "secondary"))
    states = [_state("header:cache-control")]
    doc, _ = live_report(sh, states, source="t")
    assert doc["summary"]["verdict"] == "fail"
    marks = NoiseMarks(tmp_path / "rules.yaml")
    assert marks.set("*", "header:cache-control", "changed_value", True)
    assert not marks.set("*", "header:cache-control", "changed_value", True)  # no duplicate
    doc, _ = live_report(sh, states, source="t", rules=marks.rules())
    assert doc["summary"]["verdict"] == "pass"
    (f,) = doc["noise"]
    assert f["source"] == "rules" and f["reason"] == NoiseMarks.REASON
    again = NoiseMarks(tmp_path / "rules.yaml")  # read back at the next start
    assert [r.to_dict() for r in again.fields] == marks.marked()
    assert again.set("*", "header:cache-control", "changed_value", False)
    doc, _ = live_report(sh, states, source="t", rules=again.rules())
    assert doc["summary"]["verdict"] == "fail"


def _line(i: int) -> bytes:
    return json.dumps({"v": 1, "id": f"c{i}.1", "ts_request_start": 1.0 + i,
                       "ts_request_end": 1.0 + i, "ts_response_start": 1.002 + i,
                       "request": {"method": "GET" if i % 3 else "POST",
                                   "target": f"/items/{i}", "version": "HTTP/1.1",
                                   "headers": [["Host", "shop.example"]]},
                       "response": {"status": 500 if i % 10 == 0 else 200}}).encode()


def test_the_exchange_ring_is_bounded_and_pages_on_the_server() -> None:
    ring = ExchangeRing(size=20_000, details=100)
    for i in range(60_000):
        ring.add_line(_line(i), 0.0)
    assert len(ring.rows) == 20_000 and len(ring.details) == 100
    p = ring.page(method="POST", status="5xx", q="/items/", offset=10, limit=25)
    assert len(p["rows"]) == 25 and p["kept"] == 20_000 and p["offset"] == 10
    assert p["rows"] and all(r["method"] == "POST" and r["status"] == 500 for r in p["rows"])
    assert p["rows"][0]["seq"] > p["rows"][-1]["seq"]  # newest first
    assert p["total"] == sum(1 for i in range(40_000, 60_000) if i % 3 == 0 and i % 10 == 0)
    assert p["rows"][0]["latency_ms"] == pytest.approx(2.0, abs=0.01)
    assert ring.detail("c59999.1")["id"] == "c59999.1"
    assert ring.detail("c1.1") is None  # only the recent ones are kept whole


def test_the_shadows_page_lists_the_last_pushes_and_their_verdicts(tmp_path: Path) -> None:
    """Images and shadows: the build history's last pushes, newest first, with their verdicts
    and failed checks; no history yet: none, and none created."""
    from appliance.console.state import ConsoleState
    from appliance.images.checks import CheckResult
    from appliance.images.feedback import BuildResult, History

    cfg = _cfg(tmp_path, {"listen": "127.0.0.1:0"})
    st = ConsoleState(_Engine(cfg), cfg.console)
    home = tmp_path / "home"
    rows, note = st.builds(home)
    assert rows == [] and "no pushes recorded" in note
    assert not (home / "history.sqlite").exists()
    hist = History(home / "history.sqlite")
    hist.record(BuildResult("shop", "push", None, push_seconds=1.5))
    hist.record(BuildResult("shop", "merge", None, note="error: rsync failed", checks=[
        CheckResult("smoke", "http", "sh-1", False, 0.2, "GET / answered 500")]))
    rows, note = st.builds(home)
    assert note == "" and [(r["stage"], r["verdict"], r["failed"]) for r in rows] == [
        ("merge", "fail", ["smoke"]), ("push", "pass", [])]  # newest first
    assert rows[1]["push_seconds"] == 1.5
    for _ in range(ConsoleState.BUILDS + 3):
        hist.record(BuildResult("api", "push", None))
    rows, _ = st.builds(home)
    assert [r["image"] for r in rows] == ["api"] * ConsoleState.BUILDS  # the last ones only
    (home / "history.sqlite").write_bytes(b"not a database")
    rows, note = st.builds(home)
    assert rows == [] and note.startswith("build history: DatabaseError")
    st.stop()


_COMPACT = (b'{"v":1,"id":"c%d","ts_request_start":%d.0,"ts_request_end":%d.0,'
            b'"ts_response_start":%d.002,"request":{"method":"%s","target":"/items/%d",'
            b'"version":"HTTP/1.1","headers":[["Host","shop.example"]]},'
            b'"response":{"status":%d}}\n')


def _compact(start: int, n: int) -> bytes:
    """``n`` exchange log lines from number ``start``: every 10th a POST, every 7th a 500."""
    return b"".join(_COMPACT % (i, i, i, i, b"POST" if i % 10 == 0 else b"GET", i,
                                500 if i % 7 == 0 else 200) for i in range(start, start + n))


def _retained(ring: ExchangeRing) -> int:
    """Bytes the ring holds: its rows (tuples and their values) and the full records."""
    return (sum(sys.getsizeof(r) + sum(sys.getsizeof(v) for v in r) for r in ring.rows)
            + ring.detail_bytes)


@pytest.mark.slow
def test_a_million_exchanges_seen_keep_the_console_bounded(tmp_path: Path) -> None:
    """#18: pages stay fast with 1M exchanges seen. The log tail counts every line and parses
    only its budget (the newest); the ring keeps ``console.exchanges`` rows and a bounded set of
    full records, whatever went by; a page is filtered and cut on the server."""
    log = tmp_path / "x.jsonl"
    ring = ExchangeRing(size=50_000, details=500)
    tail = LogTail([log], ring, max_rate=5000)
    polls = 0
    for batch in range(10):  # 100,000 lines (~20 MB, more than a read) between two polls
        with open(log, "ab") as fh:
            fh.write(_compact(batch * 100_000, 100_000))
        if batch % 3 == 2:  # the sink rotates: the old file is read out before it is left
            log.rename(tmp_path / f"x.{batch}.jsonl")
        tail.poll(tail.max_rate, 0.0)
        polls += 1
    tail.close()
    assert ring.seen == 1_000_000
    assert 0 < ring.listed <= polls * tail.max_rate
    assert tail.skipped == ring.seen - ring.listed
    assert ring.rows[-1][8] == "c999999"  # the newest are the ones listed

    # Every one of a million parsed (a budget as large as the traffic): still bounded.
    ring = ExchangeRing(size=50_000, details=500)
    for batch in range(10):
        for line in _compact(batch * 100_000, 100_000).splitlines():
            ring.add_line(line, 0.0)
    assert ring.listed == 1_000_000
    assert len(ring.rows) == 50_000 and len(ring.details) == 500
    assert ring.detail_bytes <= ExchangeRing.MAX_DETAIL_BYTES
    assert _retained(ring) < 50_000 * 1000 + ExchangeRing.MAX_DETAIL_BYTES
    p = ring.page(method="POST", status="500", offset=5, limit=20)
    want = [i for i in range(999_999, 949_999, -1) if i % 10 == 0 and i % 7 == 0]
    assert p["total"] == len(want) and p["kept"] == 50_000
    assert [r["id"] for r in p["rows"]] == [f"c{i}" for i in want[5:25]]
    assert ring.detail(f"c{want[0]}")["response"]["status"] == 500


def test_verdict_views_are_bounded_whatever_the_verdict_holds(tmp_path: Path) -> None:
    """Latency per endpoint over time and the noise list stay bounded with many endpoints,
    many noise fields and many verdicts."""
    from appliance.console.state import ConsoleState

    cfg = _cfg(tmp_path, {"listen": "127.0.0.1:0"})
    eng = _Engine(cfg)
    st = ConsoleState(eng, cfg.console)
    noise = [{"endpoint": f"GET /n{i}", "field": "body:$.rid", "kind": "changed_value",
              "compared": 10, "candidate_diffs": 10, "secondary_diffs": 10, "p_value": None,
              "p_adjusted": None, "source": "statistics", "reason": "both differ",
              "examples": []} for i in range(5000)]
    for k in range(ConsoleState.LAT_POINTS + 20):
        eng.last_report = {  # a new verdict every sample
            "summary": {"verdict": "pass", "regressions": 0, "noise": 5000, "undecided": 0,
                        "compared": 10 * k}, "regressions": [], "undecided": [],
            "noise": noise, "endpoints": [],
            "latency": [{"endpoint": f"GET /e{i}", "production_p50_ms": 1.0 + k,
                         "candidate_p50_ms": 2.0, "regression": False} for i in range(300)]}
        st.sample()
    assert st.report_seq == ConsoleState.LAT_POINTS + 20
    assert len(st.latency) == ConsoleState.MAX_ENDPOINTS
    assert all(len(d) == ConsoleState.LAT_POINTS for d in st.latency.values())
    pts = st.latency_series("GET /e0")["points"]
    assert pts[-1]["production_p50_ms"] == 1.0 + ConsoleState.LAT_POINTS + 19
    f = st.findings()
    assert len(f["noise"]) == 2000 and f["noise_total"] == 5000
    assert "examples" not in f["noise"][0]  # examples come one finding at a time
    assert len(st.rates(10_000)) <= ConsoleState.POINTS
    st.stop()


def test_the_pages_assets_ship_inside_the_package() -> None:
    """No CDN, no build step: the page is the three files of static/, every one of them served
    and matched by pyproject's package-data (so a wheel, not only an editable install, has
    them), and none of them loads anything from elsewhere."""
    import fnmatch
    import re
    import tomllib

    import appliance.console
    from appliance.console.server import _STATIC

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["appliance.console"]
    static = Path(appliance.console.__file__).parent / "static"
    files = sorted(p.name for p in static.iterdir() if p.is_file())
    assert files == sorted(_STATIC)
    assert all(any(fnmatch.fnmatch(f"static/{f}", g) for g in globs) for f in files), globs
    for f in files:
        text = (static / f).read_text()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), f
        assert "@import" not in text and "cdn" not in text.lower(), f


class _Engine:
    """What the console needs of a LiveEngine."""

    def __init__(self, cfg: Any) -> None:
        self.cfg, self.n, self.rules, self.rejudged = cfg, 0, None, 0
        self.last_report = None

    def snapshots(self) -> list[dict[str, Any]]:
        return [{"worker": 0, "role": "capture", "packets": 10, "exchanges": 3}]

    def status(self) -> dict[str, Any]:
        return {}

    def healthy(self) -> tuple[bool, str]:
        return True, "ok"

    def rejudge(self) -> None:
        self.rejudged += 1


def _req(url: str, *, token: str | None = None, cookie: str | None = None,
         body: bytes | None = None, ctype: str = "application/json") -> tuple[int, bytes, Any]:
    h = {}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if cookie:
        h["Cookie"] = cookie
    if body is not None:
        h["Content-Type"] = ctype

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=body, headers=h), timeout=5) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def test_the_token_guards_every_route_and_a_mark_rejudges(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("x" * 20 + "\n")
    cfg = _cfg(tmp_path, {"listen": "127.0.0.1:0", "token_file": str(tmp_path / "tok"),
                          "rules_file": str(tmp_path / "marks.yaml")})
    eng = _Engine(cfg)
    con = Console(eng, cfg.console).start()
    try:
        base = con.url.rstrip("/")
        assert con.token == "x" * 20 and not con.generated
        for path in ("/", "/static/app.js", "/api/overview", "/api/findings", "/api/events"):
            assert _req(base + path)[0] == 401, path
            assert _req(base + path, token="y" * 20)[0] == 401, path
        assert _req(base + "/?token=nope")[0] == 401
        code, _, headers = _req(f"{base}/?token={con.token}")
        assert code == 303
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        code, body, headers = _req(base + "/", cookie=cookie)
        assert code == 200 and b"shadowtap console" in body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        code, body, _ = _req(base + "/api/overview", token=con.token)
        assert code == 200 and json.loads(body)["exchanges"]["sanitised"] is True
        mark = json.dumps({"endpoint": "GET /x", "field": "body:$.a", "kind": "changed_value",
                           "noise": True}).encode()
        assert _req(base + "/api/noise", body=mark)[0] == 401
        assert _req(base + "/api/noise", cookie=cookie, body=mark, ctype="text/plain")[0] == 415
        code, body, _ = _req(base + "/api/noise", cookie=cookie, body=mark)
        assert code == 200 and json.loads(body)["changed"] and eng.rejudged == 1
        assert eng.rules().match("GET /x", "body:$.a", "changed_value") is not None
        assert "body:$.a" in (tmp_path / "marks.yaml").read_text()
    finally:
        con.stop()


def test_the_canary_page_drives_a_running_controller_through_its_control_api(
        tmp_path: Path) -> None:
    """console.canary_control: /api/canary shows the controller's live state with its weight
    timeline; POST /api/canary/<verb> (console token) reaches the controller (its own token)."""
    from test_canary_control import Running

    from appliance.canary.rollout import CanaryPolicy

    # Nine half-second steps: a loaded host still pauses it well before it could end.
    run = Running(tmp_path / "ctl", CanaryPolicy(steps=[10, 20, 30, 40, 50, 60, 70, 80, 90],
                                                 step_seconds=0.5, min_requests=5))
    (tmp_path / "tok").write_text("c" * 20 + "\n")
    cfg = _cfg(tmp_path, {"listen": "127.0.0.1:0", "token_file": str(tmp_path / "tok"),
                          "canary_control": str(run.control_file)})
    con = Console(_Engine(cfg), cfg.console).start()
    try:
        base = con.url.rstrip("/")
        assert con.token != run.token  # two tokens: the console's and the controller's
        assert _req(base + "/api/canary")[0] == 401
        run.wait(lambda: run.rollout.step >= 1)
        code, body, _ = _req(base + "/api/canary", token=con.token)
        d = json.loads(body)
        assert code == 200 and d["controls"] is True and d["status"]["state"] == "running"
        assert [p["weight"] for p in d["status"]["timeline"]][:2] == [10, 20]
        # a verb needs the console's token and JSON, then reaches the controller
        assert _req(base + "/api/canary/pause", body=b"{}")[0] == 401
        assert _req(base + "/api/canary/pause", token=con.token, body=b"{}",
                    ctype="text/plain")[0] == 415
        assert _req(base + "/api/canary/explode", token=con.token, body=b"{}")[0] == 404
        code, body, _ = _req(base + "/api/canary/pause", token=con.token, body=b"{}")
        assert code == 200 and json.loads(body)["paused"] is True
        step = run.rollout.step
        time.sleep(1.5)  # three step-times: a paused step holds
        assert run.rollout.step == step and run.rollout.paused_at is not None
        code, body, _ = _req(base + "/api/canary/abort", token=con.token, body=b"{}")
        assert code == 200 and json.loads(body)["state"] == "rolled_back"
        assert run.split.weight == 0 and run.rollout.reasons == ["aborted by console"]
        code, body, _ = _req(base + "/api/canary/resume", token=con.token, body=b"{}")
        assert code == 409 and "over" in json.loads(body)["error"]
        assert [e["by"] for e in run.rollout.events if "by" in e] == ["console", "console"]
    finally:
        con.stop()
        run.close()
    # without canary_control: the page is read-only and verbs are 404
    cfg = _cfg(tmp_path, {"listen": "127.0.0.1:0", "token_file": str(tmp_path / "tok")})
    con = Console(_Engine(cfg), cfg.console).start()
    try:
        base = con.url.rstrip("/")
        assert _req(base + "/api/canary/pause", token=con.token, body=b"{}")[0] == 404
        d = json.loads(_req(base + "/api/canary", token=con.token)[1])
        assert d["controls"] is False
    finally:
        con.stop()


@pytest.mark.parametrize("extra", [0, 1])
def test_the_log_tail_parses_the_newest_lines_across_a_full_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: int) -> None:
    """Review: more than a read (``CHUNK``) between two polls, ending exactly at a read's end or
    one line after it: the newest ``budget`` lines are the ones listed, not only those of the
    last, short read (or none at all)."""
    log = tmp_path / "x.jsonl"
    lines = [b'{"id": "c%d", "request": {"method": "GET", "target": "/%d"}}' % (i, i)
             for i in range(200)]
    blob = b"".join(ln + b"\n" for ln in lines[:190])
    monkeypatch.setattr(LogTail, "CHUNK", len(blob))  # the first 190 lines: one full read
    with open(log, "wb") as fh:
        fh.write(blob + b"".join(ln + b"\n" for ln in lines[190:190 + extra]))
    ring = ExchangeRing(size=1000, details=10)
    tail = LogTail([log], ring, max_rate=50)
    assert tail.poll(50, 0.0) == 50
    tail.close()
    assert ring.seen == 190 + extra and tail.skipped == ring.seen - 50
    assert [r[8] for r in ring.rows] == [f"c{i}" for i in range(140 + extra, 190 + extra)]
