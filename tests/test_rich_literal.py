"""Strings from the traffic (endpoints, JSON fields, answers' values, judge reasons quoting them,
sanitiser samples and fallback reasons) reach rich: markup or emoji codes in them print as they
are, never interpreted (an unbalanced "[/]" made rich raise MarkupError, "[bold]" restyled the
output, ":smile:" became an emoji). Rendering only: no lab, no root."""

from __future__ import annotations

import time
from io import StringIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

# One of each: an unbalanced close tag, a style tag, an emoji code.
HOSTILE = "GET /a/[/]/[bold]x:smile:"
FIELD = "body:$.[/][link=http://evil]y:cd:"
VALUE = "[red]v[/]:thumbs_up:"


def _console() -> Console:
    return Console(file=StringIO(), width=200)


def _out(con: Console) -> str:
    return con.file.getvalue()  # type: ignore[attr-defined]


def _finding(endpoint: str = HOSTILE, fld: str = FIELD) -> dict[str, Any]:
    return {"endpoint": endpoint, "field": fld, "kind": "changed_value", "compared": 10,
            "candidate_diffs": 9, "secondary_diffs": 0, "p_adjusted": 0.001,
            "source": "[/]rules:smile:",
            "examples": [{"id": "x1", "primary_value": VALUE, "candidate_value": "w"}]}


def _diff_report() -> dict[str, Any]:
    return {
        "summary": {"compared": 10, "skipped": {}, "http_weird": {"[/]:smile:": 1},
                    "regressions": 1, "noise": 1, "undecided": 0, "regression_requests": 9,
                    "regression_rate": 0.9, "verdict": "fail"},
        "test": {"name": "t"},
        "endpoints": [{"endpoint": HOSTILE, "compared": 10, "regressions": 1, "noise": 1,
                       "undecided": 0, "candidate_errors": 0}],
        "regressions": [_finding()],
        "latency": [{"endpoint": HOSTILE, "production_n": 5, "candidate_n": 5,
                     "production_p50_ms": 1.0, "production_p90_ms": 2.0,
                     "candidate_p50_ms": 9.0, "candidate_p90_ms": 9.5, "regression": True,
                     "baseline": "production"}],
        "noise": [_finding()],
    }


@pytest.mark.parametrize("width", [200, 80])
def test_diff_tables_print_endpoints_fields_and_values_literally(width: int) -> None:
    from replay.report import diff_tables

    con = Console(file=StringIO(), width=width)
    for t in diff_tables(_diff_report(), width=width):
        con.print(t)
    out = _out(con)
    for s in (HOSTILE, FIELD, "HTTP weird: [/]:smile:", VALUE):  # VALUE: the example
        assert s in out, (s, out)
    if width == 200:
        assert "[/]rules:smile:" in out  # the noise table's source column
    assert "😄" not in out and "💿" not in out and "👍" not in out
    assert "FAIL" in out and "SLOWER" in out and "[red]SLOWER" not in out  # ours still styled


def test_sanitise_report_table_prints_samples_and_fallbacks_literally() -> None:
    from replay.cli_sanitise import report_table
    from replay.sanitise.report import SanitiseReport

    rep = SanitiseReport()
    rep.count("ip", "json", b"2001:cd:1::")
    rep.count("email", "json", b"[/]x@y.example")
    rep.fallback("undecodable content-encoding: unsupported content coding '[bold]z[/]:smile:'")
    con = _console()
    con.print(report_table(rep))
    out = _out(con)
    assert "2001:cd:1::" in out and "[/]x@y.example" in out
    assert "unsupported content coding '[bold]z[/]:smile:'" in out
    assert "fallback" in out and "[yellow]fallback" not in out  # our own markup still applies


def test_canary_step_lines_print_reasons_literally() -> None:
    from appliance.canary.cli import _say_outcome, _tick_printer

    side = {"requests": 50, "error_rate": 0.0, "p95_ms": 3}
    step = {"step": 1, "weight": 10.0, "seconds": 5.0, "decision": "rollback", "canary": side,
            "prod": side, "judgement": {"outcome": "fail", "score": 12},
            "reasons": [f"latency: {HOSTILE}: p95 slower"]}
    con = _console()
    policy = SimpleNamespace(step_seconds=1.0)
    _tick_printer(con, policy)(SimpleNamespace(history=[step]), None)
    held = SimpleNamespace(history=[], step=1, step_started=time.monotonic() - 10)
    j = SimpleNamespace(decision="wait",
                        stats={"judgement": {"outcome": "inconclusive",
                                             "reasons": [f"too few on {HOSTILE}"]}})
    _tick_printer(con, policy)(held, j)
    assert _say_outcome(con, SimpleNamespace(state="rolled_back",
                                             reasons=[f"errors: {HOSTILE}"])) == 1
    out = _out(con)
    assert f"   latency: {HOSTILE}: p95 slower" in out
    assert f"step 2: holding, inconclusive (too few on {HOSTILE})" in out
    assert f"rolled back: new connections go to production (errors: {HOSTILE})" in out
    assert "ROLLBACK" in out and "[red]ROLLBACK" not in out


def test_canary_history_prints_reasons_and_endpoints_literally(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.canary.history import RolloutHistory, history_command

    db = tmp_path / "h.sqlite"
    reason = f"latency: {HOSTILE}: p95 slower"
    test = {"endpoint": HOSTILE, "unit": "ms", "n_canary": 40, "n_baseline": 90,
            "canary": 90.0, "baseline": 3.0, "effect": 87.0, "p_beyond": 0.001,
            "result": "fail"}
    judgement = {"outcome": "fail", "score": 10,
                 "metrics": [{"name": "latency", "tests": [test]}]}
    doc = {"state": "rolled_back", "weight": 0, "steps": [10, 100], "reasons": [reason],
           "history": [{"step": 1, "weight": 10, "seconds": 5, "decision": "rollback",
                        "judgement": judgement, "canary": {"requests": 40},
                        "prod": {"requests": 90}, "reasons": [reason]}]}
    rid = RolloutHistory(db).record(doc, started=time.time() - 60)
    assert history_command(path=db, width=200) == 0
    listed = capsys.readouterr().out
    assert reason in listed and "rollback" in listed
    assert history_command(path=db, rollout_id=rid, width=200) == 0
    one = capsys.readouterr().out
    assert HOSTILE in one and f"   {reason}" in one
    assert "😄" not in listed + one


def test_demo_results_print_noise_fields_literally(tmp_path: Path) -> None:
    from appliance.demo import _print_results

    report = {"regressions": [_finding()], "latency": _diff_report()["latency"],
              "latency_regressions": [HOSTILE], "noise": [{"field": FIELD}], "shadows": {},
              "summary": {"regressions": 1, "noise": 1, "compared": 10}}
    con = _console()
    _print_results(con, report, tmp_path)
    out = _out(con)
    assert "e.g. $.[/][link=http://evil]y:cd: (1 endpoints)" in out  # the field's name
    assert HOSTILE in out and FIELD in out


def test_image_tables_print_check_summaries_and_notes_literally() -> None:
    """The build's own text (a check's summary, an apply's note, a service name) holding a
    markup tag or an emoji code prints as it is in ``shadowtap image`` tables."""
    from appliance.images import cli as images_cli

    con = images_cli._console()
    con.file = StringIO()
    con.width = 200
    check = SimpleNamespace(name="smoke[/]", kind="http", shadow="s1", ok=False, seconds=1.0,
                            summary="GET /cd/:cd:/[bold]x")
    apply = SimpleNamespace(shadow="s1", mode="rsync", ok=True, seconds=0.5,
                            service="web:smile:", note="[red]kept[/]")
    con.print(images_cli._checks_table([check]))
    con.print(images_cli._apply_table([apply], "apply"))
    out = _out(con)
    for text in ("smoke[/]", "GET /cd/:cd:/[bold]x", "web:smile:", "[red]kept[/]", "FAIL"):
        assert text in out, (text, out)
