"""The web console in a real browser: headless Debian ``chromium`` driven by Playwright (no
``playwright install``: ``executable_path=/usr/bin/chromium``), against ``shadowtap appliance
run`` fed live traffic and shadowing to two real shadows (``consolelab``).

It is refused without the token, sees the live counters move (Server-Sent Events, no reload),
opens a regression and finds the differing part highlighted, marks the field as noise and sees
the verdict turn, un-marks it and sees it turn back. It saves the screenshots the README shows
(docs/img/console-overview.png, console-regression.png, report.png)."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from consolelab import REPO, running_appliance

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
IMG = REPO / "docs" / "img"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="Debian's chromium is not installed (apt-get install chromium; "
                              "scripts/setup.sh installs it)"),
]
playwright = pytest.importorskip("playwright.sync_api",
                                 reason="playwright (the test extra) is not installed")


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _number(text: str) -> int:
    return int("".join(c for c in text.split("/s;")[-1] if c.isdigit()) or 0)


def test_console_in_chromium(tmp_path: Path) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    with running_appliance(tmp_path / "app", token_file=False) as app, \
            playwright.sync_playwright() as pw:
        base = app.console
        assert app.token, "the appliance printed no console token"
        # Without the token: refused, pages and API alike (and a wrong token too).
        for path in ("/", "/api/overview", "/api/exchanges", "/static/app.js", "/api/events",
                     "/?token=wrong-token-wrong-token"):
            assert _status(base + path) == 401, path
        assert _status(base + "/api/overview",
                       {"Authorization": f"Bearer {app.token}"}) == 200

        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            ctx = browser.new_context(viewport={"width": 1400, "height": 900})
            page = ctx.new_page()
            r = page.goto(base + "/")
            assert r is not None and r.status == 401
            assert "token" in page.content()

            # With the token: the cookie is set, the URL loses the token.
            page.goto(f"{base}/?token={app.token}")
            assert page.url.rstrip("/") == base
            page.wait_for_selector("#live.on", timeout=15_000)
            page.wait_for_function(
                "() => /[1-9]/.test(document.querySelector('#ov-ex-total').textContent)",
                timeout=30_000)
            first = _number(page.inner_text("#ov-ex-total"))
            time.sleep(3)  # live: Server-Sent Events move the counters, no reload
            second = _number(page.inner_text("#ov-ex-total"))
            assert second > first, (first, second)
            assert float(page.inner_text("#ov-pps").replace(",", "")) > 0

            # A regression appears (the candidate's Cache-Control), the badge says FAIL.
            page.wait_for_selector("#verdict-badge.fail", timeout=90_000)
            time.sleep(4)  # a few more points on the chart
            page.screenshot(path=str(IMG / "console-overview.png"))
            report = app.workdir / "report.html"
            shutil.copy(report, tmp_path / "report.html")

            page.click("nav a[data-page=findings]")
            # a locator, not an element handle: live updates re-render the table, and a
            # locator finds the row again where a handle would be detached
            row = page.locator("#fd-regressions tr[data-field='header:cache-control']").first
            row.wait_for(timeout=15_000)
            row.click(timeout=15_000)
            page.wait_for_selector("#fd-examples mark", timeout=15_000)
            title = page.inner_text("#fd-detail-title")
            assert "header:cache-control" in title and "regression" in title
            marks = page.eval_on_selector_all("#fd-examples .d mark",
                                              "els => els.map(e => e.textContent)")
            assert "stor" in marks and "cach" in marks, marks
            page.screenshot(path=str(IMG / "console-regression.png"))

            # The exchange list: live, filtered on the server.
            page.click("nav a[data-page=exchanges]")
            page.wait_for_selector("#ex-table tbody tr[data-id]", timeout=15_000)
            page.select_option("#ex-filter select[name=method]", "GET")
            page.click("#ex-filter button[type=submit]")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#ex-table tbody tr')].length > 0 && "
                "[...document.querySelectorAll('#ex-table tbody tr td:nth-child(3)')]"
                ".every(td => td.textContent === 'GET')", timeout=15_000)
            assert "Sanitised" in page.inner_text("#ex-info")

            # Latency per endpoint over time: production and each shadow, a line each.
            page.click("nav a[data-page=latency]")
            for key in ("production_p50_ms", "secondary_p50_ms", "candidate_p50_ms"):
                page.wait_for_selector(f"#lat-chart polyline[data-series={key}]",
                                       timeout=30_000)
            # Images and shadows: both shadows up; the pushes of the build history (none
            # recorded for this appliance's home: the table says so).
            page.click("nav a[data-page=shadows]")
            page.wait_for_selector("#sh-live tbody td.up", timeout=15_000)
            assert page.locator("#sh-live tbody td.up").count() == 2
            page.wait_for_selector("#sh-builds tbody tr td", timeout=15_000)

            # Mark the field as noise on every endpoint: the verdict turns to PASS.
            page.click("nav a[data-page=findings]")
            page.click("#fd-regressions tr[data-field='header:cache-control'] "
                       "button[data-all='1']")
            page.wait_for_selector("#verdict-badge.pass", timeout=30_000)
            page.wait_for_selector("#fd-marks tr[data-field='header:cache-control']",
                                   timeout=10_000)
            rules = (app.workdir / "console-rules.yaml").read_text()
            assert "header:cache-control" in rules and "marked as noise in the console" in rules
            assert "marked as noise in the console" in page.inner_text("#fd-noise")
            # noise apart, with its rates and p-values (a column of its own)
            heads = page.eval_on_selector_all("#fd-noise thead th",
                                              "els => els.map(e => e.textContent)")
            assert "p (Holm)" in heads and "why" in heads, heads
            assert "%" in page.inner_text("#fd-noise tbody tr:first-child td:nth-child(4)")
            # ... and back.
            page.click("#fd-marks tr[data-field='header:cache-control'] button")
            page.wait_for_selector("#verdict-badge.fail", timeout=30_000)

            # The static HTML report, highlighted the same way.
            rp = ctx.new_page()
            rp.goto((tmp_path / "report.html").as_uri())
            rp.wait_for_selector("mark")
            rp.evaluate("() => [...document.querySelectorAll('h2')]"
                        ".find(h => h.textContent.startsWith('Regressions')).scrollIntoView()")
            rp.screenshot(path=str(IMG / "report.png"))
        finally:
            browser.close()
        assert app.daemon.proc is not None and app.daemon.proc.poll() is None
    for name in ("console-overview.png", "console-regression.png", "report.png"):
        assert (IMG / name).stat().st_size > 10_000, name


def test_canary_page_in_chromium(tmp_path: Path) -> None:
    """The canary page against a running controller (its control API, as ``canary run
    --control`` serves it): the weight over time, the judge's result per step, and the Pause
    and Abort buttons reaching the controller."""
    from test_canary_control import Running
    from test_console import _cfg, _Engine

    from appliance.canary.rollout import CanaryPolicy
    from appliance.console.server import Console

    # many short steps: a promoted one to show, and plenty left to pause and abort
    run = Running(tmp_path / "ctl", CanaryPolicy(steps=list(range(2, 101, 2)),
                                                 step_seconds=0.5, min_requests=5))
    cfg = _cfg(tmp_path, {"listen": "127.0.0.1:0", "canary_control": str(run.control_file)})
    con = Console(_Engine(cfg), cfg.console).start()
    try:
        run.wait(lambda: run.rollout.step >= 1)
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.on("dialog", lambda d: d.accept())  # "Roll the canary back now?"
                page.goto(f"{con.url}?token={con.token}")
                page.click("nav a[data-page=canary]")
                page.wait_for_selector("#cn-actions:not([hidden])", timeout=15_000)
                page.wait_for_selector("#cn-chart polyline[data-series=weight]")
                # a judged step: its decision, the judge's outcome and both sides' figures
                row = page.locator("#cn-judge tbody tr", has_text="promote").first
                row.wait_for(timeout=15_000)
                assert "judge:" in row.inner_text() and "req" in row.inner_text()
                page.click("#cn-actions button[data-verb=pause]")
                page.wait_for_function("() => /pause: running/.test("
                                       "document.querySelector('#cn-result').textContent)")
                assert run.rollout.paused_at is not None
                page.wait_for_selector("#cn-summary:has-text('(paused)')")
                page.click("#cn-actions button[data-verb=abort]")
                page.wait_for_function("() => /abort: rolled_back/.test("
                                       "document.querySelector('#cn-result').textContent)")
                assert run.split.weight == 0 and run.rollout.reasons == ["aborted by console"]
            finally:
                browser.close()
    finally:
        con.stop()
        run.close()
