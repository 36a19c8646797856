"""What a user of ``shadowtap diff`` sees: a per-endpoint latency verdict, terminal examples that
show the change, ad-hoc noise flags, an HTML report that highlights (safely) what differs and
names targets by role, and tables that fit 80 columns. Real v1/v2 services on loopback."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from replay_helpers import SHADOWTAP
from replay_servers import App, HttpServer, Seen, make_service

from replay.report import _window, diff_tables, highlight, render_html

SLOW_EP = "GET /api/items/{id}"


def _slowed(app: App, prefix: str, delay: float, header: tuple[str, str] | None = None) -> App:
    """``app`` answering requests under ``prefix`` ``delay`` seconds late (and adding
    ``header`` to every answer)."""

    def wrapped(seen: Seen) -> tuple[int, list[tuple[str, str]], bytes]:
        if seen.path.startswith(prefix):
            time.sleep(delay)
        st, hd, body = app(seen)
        return st, hd + ([header] if header else []), body

    return wrapped


@pytest.fixture(scope="module")
def slow_pair() -> Iterator[tuple[HttpServer, HttpServer]]:
    """A secondary (v1) answering items in ~47 ms and a candidate (v2) in ~95 ms: +50 ms on
    that one endpoint only."""
    with HttpServer(_slowed(make_service("v1"), "/api/items/", 0.045)) as sec, \
            HttpServer(_slowed(make_service("v2"), "/api/items/", 0.095)) as cand:
        yield cand, sec


def cli(*args: object, columns: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([str(SHADOWTAP), *map(str, args)], capture_output=True, timeout=120,
                          check=False, env=env)


@pytest.fixture(scope="module")
def slow_run(capture: Path, slow_pair, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[dict, str, str]:
    cand, sec = slow_pair
    d = tmp_path_factory.mktemp("slow")
    rep = d / "r.json"
    # One exchange at a time: the test servers answer in their own loop thread, so concurrent
    # sleeps would queue and slow every endpoint, not just the one under test.
    p = cli("diff", capture, "--candidate", cand.url, "--secondary", sec.url, "--report", rep,
            "--concurrency", "1", columns=80)
    html_rep = d / "r.html"
    from replay.report import write_report

    doc = json.loads(rep.read_text())
    write_report(html_rep, doc)
    # Without the stale-build notices (replay/_native.py) a source edit can print.
    err = "\n".join(ln for ln in p.stderr.decode().splitlines()
                    if not ln.startswith("shadowtap: "))
    return doc, err, html_rep.read_text()


def test_a_slower_endpoint_is_flagged_and_only_it(slow_run) -> None:
    doc, err, _ = slow_run
    assert doc["latency_regressions"] == [SLOW_EP], doc["latency"]
    assert doc["summary"]["latency_regressions"] == 1
    assert doc["summary"]["verdict"] == "fail"
    row = next(r for r in doc["latency"] if r["endpoint"] == SLOW_EP)
    assert row["baseline"] == "secondary"
    assert row["candidate_p90_ms"] > row["secondary_p90_ms"] + 30
    assert row["candidate_n"] == row["secondary_n"] == 24
    others = [r for r in doc["latency"] if r["endpoint"] != SLOW_EP]
    assert len(others) == 6 and not any(r["regression"] for r in others)
    # The terminal says so, in a table that fits the 80 columns it was given.
    assert "SLOWER" in err
    line = next(ln for ln in err.splitlines() if SLOW_EP in ln and "SLOWER" in ln)
    assert len(line) <= 80
    assert max(len(ln) for ln in err.splitlines()) <= 80, err


def test_terminal_examples_show_the_change_at_80_columns(slow_run) -> None:
    _, err, _ = slow_run
    assert "examples (production → candidate)" in err
    # Each shown example's two sides differ (the window sits on the change).
    shown = [ln for ln in err.splitlines() if re.match(r"GET /api/\S+ \S+: c\d+: ", ln)]
    assert len(shown) >= 4, err
    for ln in shown:
        a, b = ln.split(": ", 2)[2].split(" → ")
        assert a != b, ln


def test_window_is_around_the_first_difference() -> None:
    a = '{"id": 12345, "name": "a long shared prefix of a body", "currency": "EUR"}'
    b = '{"id": 12345, "name": "a long shared prefix of a body", "currency": "USD"}'
    wa, wb = _window(a, b)
    assert wa != wb and "EUR" in wa and "USD" in wb
    assert wa.startswith("…")
    # Short values are shown whole.
    assert _window("25", '"25"') == ("25", '"25"')


def test_html_names_roles_and_says_each_sentence_once(slow_run, capture: Path,
                                                      slow_pair) -> None:
    doc, _, html = slow_run
    cand, sec = slow_pair
    for f in doc["regressions"]:
        sentence = f"differs in {f['candidate_diffs']}/{f['compared']}, secondary in"
        block = html.split(f"<code>{f['field']}</code>", 1)[1].split("</p>", 1)[0]
        assert block.count("differs in") == 1, block
        assert sentence in block
    # The replay table names targets by role; URLs are only an aside.
    assert re.search(r"<tr><td>candidate <span class='muted'>" + re.escape(cand.url), html)
    assert re.search(r"<tr><td>secondary <span class='muted'>" + re.escape(sec.url), html)
    assert f"<td>{cand.url}</td>" not in html
    assert "Latency per endpoint" in html and "SLOWER" in html


def test_html_highlights_the_differing_field(slow_run) -> None:
    _, _, html = slow_run
    # GET /api/orders/{id}: currency is gone in v2; production's side marks that line.
    assert re.search(r"<span class=d><mark>\s*&quot;currency&quot;: &quot;EUR&quot;", html)
    # GET /api/users/{id}: age became a string; the quotes are what is marked.
    assert re.search(r"&quot;age&quot;: <mark>&quot;</mark>\d+<mark>&quot;</mark>", html)
    # GET /api/reports: 500 instead of 200.
    assert "status <mark>500</mark>" in html
    # What the secondary changes too (a fresh request id, a timestamp, Date) is noise: grey,
    # apart from the candidate's own differences.
    assert re.search(r"<span class=n>\s*&quot;request_id&quot;", html)
    assert not re.search(r"<span class=d>[^\n]*(request_id|generated_at)", html)


def test_highlighting_escapes_hostile_bodies() -> None:
    evil = '{\n  "name": "<script>alert(1)</script>",\n  "x": "</pre><img src=x onerror=alert(2)>"\n}'
    good = '{\n  "name": "bob",\n  "x": "ok"\n}'
    _, b = highlight(good, evil)
    assert "<script" not in b and "<img" not in b and "</pre>" not in b
    assert "&lt;script&gt;" in b and "<mark>" in b
    doc = _report_with(primary_body=good, candidate_body=evil,
                       headers=[["X-Evil", "<b onmouseover=alert(3)>"]])
    html = render_html(doc)
    assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "<b onmouseover" not in html
    assert "&lt;b onmouseover=alert(3)&gt;" in html
    assert "<link" not in html.lower() and "http://" not in html.split("</style>")[0]


def _report_with(primary_body: str, candidate_body: str,
                 headers: list[list[str]]) -> dict:
    side = {"status": 200, "headers": [["Content-Type", "application/json"]],
            "body": primary_body}
    ex = {"id": "c1", "request": "GET /x", "primary_value": '"bob"', "candidate_value": '"<"',
          "primary": side, "candidate": {**side, "headers": side["headers"] + headers,
                                         "body": candidate_body}, "secondary": side}
    f = {"endpoint": "GET /x", "field": "body:$.name", "kind": "changed_value", "compared": 10,
         "candidate_diffs": 10, "secondary_diffs": 0, "p_value": 0.001, "p_adjusted": 0.001,
         "source": "three-way", "reason": "candidate differs in 10/10, secondary in 0/10",
         "example_ids": ["c1"], "examples": [ex]}
    return {"input": "x.jsonl", "generated": "now", "targets": {"candidate": "http://c",
                                                                 "secondary": "http://s"},
            "test": {"name": "t"}, "endpoints": [], "regressions": [f], "undecided": [],
            "noise": [], "replay": {"targets": {}},
            "summary": {"verdict": "fail", "regressions": 1, "regression_requests": 10,
                        "compared": 10, "regression_rate": 1.0, "fail_on": 0.0, "noise": 0,
                        "undecided": 0, "skipped": {}}}


def test_ignore_flags_make_noise_without_a_file(capture: Path, candidate: HttpServer,
                                                tmp_path: Path) -> None:
    with HttpServer(_slowed(make_service("v2"), "/nowhere", 0, ("X-Served-By", "v2"))) as cand:
        rep = tmp_path / "r.json"
        p = cli("diff", capture, "--candidate", cand.url, "--report", rep, "-q")
        assert p.returncode == 1, p.stderr.decode()
        before = {(f["endpoint"], f["field"]) for f in json.loads(rep.read_text())["regressions"]}
        assert ("GET /api/users/{id}", "body:$.age") in before
        assert ("GET /api/orders/{id}", "body:$.currency") in before
        assert any(fl == "header:x-served-by" for _, fl in before), before
        p = cli("diff", capture, "--candidate", cand.url, "--report", rep, "-q",
                "--ignore-header", "X-Served-By", "--ignore-field", "$.age",
                "--ignore-field", "body:$.curr*")
        assert p.returncode == 1, p.stderr.decode()
        doc = json.loads(rep.read_text())
    after = {(f["endpoint"], f["field"]) for f in doc["regressions"]}
    assert after == {k for k in before if k[1] not in ("header:x-served-by", "body:$.age",
                                                       "body:$.currency")}
    ruled = {f["field"] for f in doc["noise"] if f["source"] == "rules"}
    assert {"body:$.age", "body:$.currency"} <= ruled
    p = cli("diff", capture, "--candidate", candidate.url, "--ignore-header", "a b")
    assert p.returncode == 2 and "--ignore-header" in p.stderr.decode()


def test_diff_tables_fit_80_columns(slow_run) -> None:
    from rich.console import Console

    doc, _, _ = slow_run
    buf = io.StringIO()
    con = Console(width=80, file=buf, force_terminal=False, color_system=None)
    for t in diff_tables(doc, width=80):
        con.print(t)
    out = buf.getvalue()
    assert max(len(ln) for ln in out.splitlines()) <= 80, out
    for f in doc["regressions"] + doc["noise"][:40]:
        assert f["endpoint"] in out and f["field"] in out, (f["endpoint"], f["field"])
    for e in doc["endpoints"]:
        assert e["endpoint"] in out
