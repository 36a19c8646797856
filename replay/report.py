"""Reports of replays and comparisons: rich tables for the terminal, JSON for machines, and a
self-contained HTML page for people.

The JSON report is the contract (CI gates and the appliance read it): ``regressions``, ``noise``
and ``undecided`` are lists of objects with ``endpoint``, ``field``, ``kind``, counts
(``compared``, ``candidate_diffs``, ``secondary_diffs``), the test's ``p_value``/``p_adjusted``
and ``example_ids`` (captured exchange ids). The HTML page is built from that same dict, so the
two never disagree; it has no external assets (CSS inline, no scripts) so it can be attached to
a CI run or mailed.
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path
from typing import Any

import orjson

from replay.errors import InputError

REPORT_VERSION = 1


def build_report(verdict: Any, stats: Any, *, input_path: str, candidate: str,
                 secondary: str | None, fail_on: float, skipped: dict[str, int],
                 rules_file: str | None = None,
                 weird: dict[str, int] | None = None) -> dict[str, Any]:
    """The report document (plain JSON types) from a ``compare.Verdict`` and ``ReplayStats``.

    ``weird``: HTTP framing weirds of the extraction by reason (``Summary.weird``): request
    smuggling attempts seen on the mirror are a security signal, listed in the report."""
    rate = verdict.regression_rate
    failed = bool(verdict.regressions) and rate > fail_on
    doc = {
        "shadowtap": "diff",
        "version": REPORT_VERSION,
        "generated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "input": input_path,
        "targets": {"candidate": candidate, "secondary": secondary},
        "rules_file": rules_file,
        "test": verdict.test,
        "summary": {
            "compared": verdict.compared,
            "not_compared": sum(e["not_compared"] for e in verdict.endpoints),
            "candidate_errors": sum(e["candidate_errors"] for e in verdict.endpoints),
            "skipped": skipped,
            "regressions": len(verdict.regressions),
            "noise": len(verdict.noise),
            "undecided": len(verdict.undecided),
            "regression_requests": verdict.regression_requests,
            "regression_rate": round(rate, 6),
            "fail_on": fail_on,
            "verdict": "fail" if failed else "pass",
        },
        "replay": stats.to_dict(),
        "endpoints": verdict.endpoints,
        "regressions": [f.to_dict() for f in verdict.regressions],
        "noise": [_strip_examples(f.to_dict()) for f in verdict.noise],
        "undecided": [f.to_dict() for f in verdict.undecided],
    }
    if weird:
        doc["summary"]["http_weird"] = dict(sorted(weird.items()))
    return doc


def _strip_examples(d: dict[str, Any]) -> dict[str, Any]:
    """Noise keeps its example ids but not the full bodies: it is the bulk of any report."""
    d["examples"] = [{k: e[k] for k in ("id", "request", "primary_value", "candidate_value")}
                     for e in d.get("examples", [])]
    return d


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Write by extension: ``.json`` or ``.html``/``.htm``; anything else is a user error."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in (".json", ".html", ".htm"):
        raise InputError(f"--report {p}: give a .json or .html file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if ext == ".json":
            p.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        else:
            p.write_text(render_html(report), encoding="utf-8")
    except OSError as e:
        raise InputError(f"--report {p}: cannot write ({e.strerror or e})") from None


# ---------------------------------------------------------------------------------------------
# Terminal


def replay_tables(stats: Any) -> list[Any]:
    """Rich tables of a replay: overall rates and counts, then one row per target."""
    from rich.table import Table

    d = stats.to_dict()
    t = Table(title="shadowtap replay", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("exchanges read", f"{d['read']:,}")
    for reason, n in sorted(d["skipped"].items()):
        t.add_row(f"skipped: {reason}", f"{n:,}")
    if d["filtered"]:
        t.add_row("filtered out", f"{d['filtered']:,}")
    t.add_row("replayed", f"{d['replayed']:,}")
    t.add_row("pacing", d["pacing"])
    tr = d["target_rate"]
    t.add_row("target rate", "as fast as possible" if tr is None else f"{tr:,.1f}/s")
    ar = d["achieved_rate"]
    t.add_row("achieved rate", "-" if ar is None else f"{ar:,.1f}/s")
    if d["lateness_p95_ms"] is not None:
        t.add_row("lateness p95", f"{d['lateness_p95_ms']:.1f} ms")
    t.add_row("time", f"{d['seconds']:.2f} s")
    if d["dropped"]:
        t.add_row("dropped (queue full)", f"{d['dropped']:,}")
    lt = Table(title="per target", title_justify="left")
    for col in ("target", "sent", "answered", "statuses", "errors", "p50 ms", "p90 ms",
                "p99 ms", "max ms"):
        lt.add_column(col, justify="left" if col in ("target", "statuses", "errors") else "right")
    for url, ts in d["targets"].items():
        lat = ts["latency_ms"]
        lt.add_row(
            url, f"{ts['sent']:,}", f"{ts['answered']:,}",
            " ".join(f"{k}×{v}" for k, v in ts["statuses"].items()) or "-",
            " ".join(f"{k}×{v}" for k, v in ts["errors"].items()) or "-",
            *(_ms(lat[q]) for q in ("p50", "p90", "p99", "max")),
        )
    return [t, lt]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def diff_tables(report: dict[str, Any]) -> list[Any]:
    """Rich tables of a diff report: endpoints, then regressions, then a noise summary."""
    from rich.table import Table

    s = report["summary"]
    head = Table(title="shadowtap diff", show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column(justify="right")
    head.add_row("compared requests", f"{s['compared']:,}")
    if s.get("not_compared"):
        head.add_row("not compared (secondary failed)", f"{s['not_compared']:,}")
    if s.get("candidate_errors"):
        head.add_row("candidate errors (no answer)", f"{s['candidate_errors']:,}")
    for reason, n in sorted(s["skipped"].items()):
        head.add_row(f"skipped: {reason}", f"{n:,}")
    for reason, n in sorted(s.get("http_weird", {}).items()):
        head.add_row(f"HTTP weird: {reason}", f"{n:,}")
    head.add_row("regressions", str(s["regressions"]))
    head.add_row("noise (ignored)", str(s["noise"]))
    head.add_row("undecided", str(s["undecided"]))
    head.add_row("requests with a regression",
                 f"{s['regression_requests']:,} ({s['regression_rate']:.2%})")
    head.add_row("test", str(report["test"]["name"]))
    head.add_row("verdict", "[red]FAIL[/]" if s["verdict"] == "fail" else "[green]pass[/]")
    eps = Table(title="endpoints", title_justify="left")
    for col in ("endpoint", "requests", "regressions", "noise", "undecided", "cand. errors"):
        eps.add_column(col, justify="left" if col == "endpoint" else "right")
    for e in report["endpoints"]:
        reg = str(e["regressions"])
        eps.add_row(e["endpoint"], f"{e['compared']:,}", f"[red]{reg}[/]" if e["regressions"]
                    else reg, str(e["noise"]), str(e["undecided"]), str(e["candidate_errors"]))
    out = [head, eps]
    if report["regressions"]:
        rt = Table(title="regressions", title_justify="left")
        for col in ("endpoint", "field", "kind", "candidate", "secondary", "p (Holm)",
                    "example"):
            rt.add_column(col)
        for f in report["regressions"]:
            rt.add_row(f["endpoint"], f["field"], f["kind"],
                       f"{f['candidate_diffs']}/{f['compared']}",
                       "-" if f["secondary_diffs"] is None
                       else f"{f['secondary_diffs']}/{f['compared']}",
                       "-" if f["p_adjusted"] is None else f"{f['p_adjusted']:.2g}",
                       _example(f))
        out.append(rt)
    if report["noise"]:
        nt = Table(title="noise (not reported)", title_justify="left")
        for col in ("endpoint", "field", "kind", "candidate", "secondary", "source"):
            nt.add_column(col)
        for f in report["noise"][:40]:
            nt.add_row(f["endpoint"], f["field"], f["kind"],
                       f"{f['candidate_diffs']}/{f['compared']}",
                       "-" if f["secondary_diffs"] is None
                       else f"{f['secondary_diffs']}/{f['compared']}", f["source"])
        if len(report["noise"]) > 40:
            nt.add_row(f"… {len(report['noise']) - 40} more in the report", "", "", "", "", "")
        out.append(nt)
    return out


def _example(f: dict[str, Any]) -> str:
    ex = f.get("examples") or []
    if not ex:
        return ""
    e = ex[0]
    return f"{e['id']}: {e['primary_value'][:30]} → {e['candidate_value'][:30]}"


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right}
.fail{color:#b00;font-weight:bold}.pass{color:#070;font-weight:bold}
.reg{background:#fff1f1}.side{display:grid;grid-template-columns:1fr 1fr 1fr;gap:8px}
pre{background:#f8f8f8;border:1px solid #e4e4e4;padding:6px;overflow:auto;max-height:360px;
margin:0;font-size:12px;white-space:pre-wrap;word-break:break-all}
details{margin:.4em 0 1em}summary{cursor:pointer}code{background:#f3f3f3;padding:0 3px}
.muted{color:#777}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _side(label: str, r: dict[str, Any] | None) -> str:
    if r is None:
        return f"<div><b>{label}</b><pre class='muted'>(no secondary)</pre></div>"
    if "error" in r:
        return f"<div><b>{label}</b><pre>error: {_e(r['error'])}</pre></div>"
    head = "\n".join(f"{k}: {v}" for k, v in r.get("headers", []))
    return (f"<div><b>{label}</b> — status {_e(r.get('status'))}<pre>{_e(head)}</pre>"
            f"<pre>{_e(r.get('body'))}</pre></div>")


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page (inline CSS, no scripts, no external links)."""
    s = report["summary"]
    t = report["test"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>shadowtap diff report</title><style>", _CSS, "</style></head><body>",
        "<h1>shadowtap diff report</h1>",
        f"<p>Input <code>{_e(report['input'])}</code>; candidate "
        f"<code>{_e(report['targets']['candidate'])}</code>; secondary "
        f"<code>{_e(report['targets']['secondary'] or 'none')}</code>; generated "
        f"{_e(report['generated'])}.</p>",
        f"<p>Verdict: <span class='{s['verdict']}'>{s['verdict'].upper()}</span> — "
        f"{s['regressions']} regression(s) in {s['regression_requests']} of {s['compared']} "
        f"compared requests ({s['regression_rate']:.2%}; fail above {s['fail_on']:.2%}). "
        f"{s['noise']} noise, {s['undecided']} undecided.</p>",
        f"<p class='muted'>Test: {_e(t['name'])}; α = {_e(t.get('alpha'))}; correction: "
        f"{_e(t.get('correction'))}; minimum sample per endpoint: {_e(t.get('min_samples'))}."
        "</p>",
    ]
    if s["skipped"]:
        parts.append("<p class='muted'>Skipped: " + ", ".join(
            f"{_e(k)} × {v}" for k, v in sorted(s["skipped"].items())) + "</p>")
    if s.get("http_weird"):
        parts.append("<p class='reg'>HTTP framing weirds (request smuggling shapes seen on the "
                     "mirror; desync messages are never replayed): " + ", ".join(
                         f"{_e(k)} × {v}" for k, v in sorted(s["http_weird"].items())) + "</p>")
    parts.append("<h2>Endpoints</h2><table><tr><th>endpoint</th><th>requests</th>"
                 "<th>regressions</th><th>noise</th><th>undecided</th><th>candidate errors"
                 "</th></tr>")
    for e in report["endpoints"]:
        cls = " class='reg'" if e["regressions"] else ""
        parts.append(f"<tr{cls}><td>{_e(e['endpoint'])}</td><td class=n>{e['compared']}</td>"
                     f"<td class=n>{e['regressions']}</td><td class=n>{e['noise']}</td>"
                     f"<td class=n>{e['undecided']}</td><td class=n>{e['candidate_errors']}"
                     "</td></tr>")
    parts.append("</table>")
    for title, key in (("Regressions", "regressions"), ("Undecided", "undecided")):
        items = report[key]
        parts.append(f"<h2>{title} ({len(items)})</h2>")
        if not items:
            parts.append("<p class='muted'>None.</p>")
            continue
        for f in items:
            sec = ("-" if f["secondary_diffs"] is None
                   else f"{f['secondary_diffs']}/{f['compared']}")
            parts.append(
                f"<h3><code>{_e(f['endpoint'])}</code> <code>{_e(f['field'])}</code> "
                f"{_e(f['kind'])}</h3><p>candidate differs in {f['candidate_diffs']}/"
                f"{f['compared']}, secondary in {sec}; p = {_e(f['p_value'])}, Holm-adjusted "
                f"{_e(f['p_adjusted'])}. {_e(f['reason'])}</p>"
            )
            for ex in f.get("examples", []):
                parts.append(
                    f"<details open><summary>request <code>{_e(ex['id'])}</code>: "
                    f"<code>{_e(ex['request'])}</code> — production <code>"
                    f"{_e(ex['primary_value'])}</code> → candidate <code>"
                    f"{_e(ex['candidate_value'])}</code></summary><div class='side'>"
                    + _side("production (primary)", ex.get("primary"))
                    + _side("candidate", ex.get("candidate"))
                    + _side("secondary", ex.get("secondary"))
                    + "</div></details>"
                )
    parts.append(f"<h2>Noise ({len(report['noise'])})</h2><table><tr><th>endpoint</th>"
                 "<th>field</th><th>kind</th><th>candidate</th><th>secondary</th><th>source</th>"
                 "<th>why</th></tr>")
    for f in report["noise"]:
        sec = "-" if f["secondary_diffs"] is None else f"{f['secondary_diffs']}/{f['compared']}"
        parts.append(f"<tr><td>{_e(f['endpoint'])}</td><td><code>{_e(f['field'])}</code></td>"
                     f"<td>{_e(f['kind'])}</td><td class=n>{f['candidate_diffs']}/"
                     f"{f['compared']}</td><td class=n>{sec}</td><td>{_e(f['source'])}</td>"
                     f"<td>{_e(f['reason'])}</td></tr>")
    parts.append("</table><h2>Replay</h2><table><tr><th>target</th><th>sent</th><th>answered"
                 "</th><th>errors</th><th>p50 ms</th><th>p99 ms</th></tr>")
    for url, ts in report["replay"]["targets"].items():
        errs = ", ".join(f"{k} × {v}" for k, v in ts["errors"].items()) or "-"
        lat = ts["latency_ms"]
        parts.append(f"<tr><td>{_e(url)}</td><td class=n>{ts['sent']}</td><td class=n>"
                     f"{ts['answered']}</td><td>{_e(errs)}</td><td class=n>{_ms(lat['p50'])}</td>"
                     f"<td class=n>{_ms(lat['p99'])}</td></tr>")
    parts.append("</table></body></html>\n")
    return "".join(parts)
