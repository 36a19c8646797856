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
import difflib
import html
from pathlib import Path
from typing import Any

import orjson

from replay.errors import InputError
from replay.model import NO_ANSWER

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


NARROW = 120
"""Below this many columns the tables abbreviate kinds and print examples under the table."""

KIND_SHORT = {"changed_value": "value", "changed_type": "type", "missing": "missing",
              "extra": "extra", "array_order": "order", "array_length": "length",
              "lines_changed": "lines", "bytes_changed": "bytes", NO_ANSWER: "no answer"}


def _narrow(width: int | None) -> bool:
    return width is not None and width < NARROW


def _role_names(report_targets: dict[str, Any] | None,
                roles: dict[str | None, str] | None) -> dict[str, str]:
    out = {u: r for u, r in (roles or {}).items() if u}
    for role, url in (report_targets or {}).items():
        if url:
            out.setdefault(url, role)
    return out


def replay_tables(stats: Any, *, roles: dict[str | None, str] | None = None,
                  width: int | None = None) -> list[Any]:
    """Rich tables of a replay: overall rates and counts, then one row per target (named by
    ``roles[url]``, e.g. candidate/secondary, when given)."""
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
    names = _role_names(None, roles)
    narrow = _narrow(width)
    lt = Table(title="per target", title_justify="left")
    cols = ("target", "sent", "answered", "statuses", "errors", "p50 ms", "p90 ms",
            "p99 ms", "max ms")
    if narrow:
        cols = ("target", "sent", "answered", "statuses", "errors", "p50 ms", "p99 ms")
    for col in cols:
        lt.add_column(col, justify="left" if col in ("target", "statuses", "errors") else "right",
                      no_wrap=col == "target")
    for url, ts in d["targets"].items():
        lat = ts["latency_ms"]
        qs = ("p50", "p99") if narrow else ("p50", "p90", "p99", "max")
        lt.add_row(
            names.get(url, url), f"{ts['sent']:,}", f"{ts['answered']:,}",
            " ".join(f"{k}×{v}" for k, v in ts["statuses"].items()) or "-",
            " ".join(f"{k}×{v}" for k, v in ts["errors"].items()) or "-",
            *(_ms(lat[q]) for q in qs),
        )
    return [t, lt]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _ep_field(endpoint: str, fld: str) -> Any:
    """The endpoint over its field, in one cell: both stay whole at 80 columns. Plain Text:
    both come from the traffic, and rich would read "[/]" or ":smile:" in them as markup."""
    from rich.text import Text

    return Text.assemble(endpoint, "\n  ", (fld, "bold"))


def _cell_width(findings: list[dict[str, Any]], width: int | None) -> int | None:
    """Width of the endpoint/field column: its longest line, within what the console has."""
    longest = max((max(len(f["endpoint"]), len(f["field"]) + 2) for f in findings), default=8)
    cap = (width or 200) - 36
    return longest if longest <= cap else None


def findings_table(findings: list[dict[str, Any]], *, title: str, cand: str = "candidate",
                   sec: str = "secondary", width: int | None = None, examples: bool = True,
                   p_format: str = ".2g", source: bool = False) -> Any:
    """Regressions (or noise) as a table that fits ``width``: endpoint and field stacked in the
    first column (never cut), the kind abbreviated when narrow, examples in a column when wide
    (see ``examples_text`` for narrow consoles)."""
    from rich.table import Table
    from rich.text import Text

    narrow = _narrow(width)
    t = Table(title=title, title_justify="left")
    w = _cell_width(findings, width)
    t.add_column("endpoint / field", no_wrap=w is not None, min_width=w,
                 overflow="fold")
    t.add_column("kind")
    t.add_column(cand, justify="right")
    t.add_column(sec, justify="right")
    if source:
        t.add_column("source")
    else:
        t.add_column("p (Holm)", justify="right")
    show_ex = examples and not narrow
    if show_ex:
        t.add_column("example")
    for f in findings:
        kind = KIND_SHORT.get(f["kind"], f["kind"]) if narrow else f["kind"]
        row = [_ep_field(f["endpoint"], f["field"]), kind,
               f"{f['candidate_diffs']}/{f['compared']}",
               "-" if f["secondary_diffs"] is None else f"{f['secondary_diffs']}/{f['compared']}"]
        if source:
            row.append(Text(f["source"]))
        else:
            row.append("-" if f.get("p_adjusted") is None else format(f["p_adjusted"], p_format))
        if show_ex:
            row.append(Text(_example(f)))  # the answers' values
        t.add_row(*row, end_section=narrow)
    return t


def examples_text(findings: list[dict[str, Any]]) -> Any:
    """One line per finding with an example: what production answered, what the candidate did
    (the window around where they first differ)."""
    from rich.text import Text

    out = Text()
    for f in findings:
        ex = _example(f)
        if ex:
            out.append(f"{f['endpoint']} {f['field']}", style="bold")
            out.append(f": {ex}\n")
    return out


def latency_table(rows: list[dict[str, Any]], *, title: str | None = None,
                  labels: dict[str, str] | None = None, width: int | None = None) -> Any:
    """Per endpoint answer times (p50 / p90, ms) of production and the shadows, and the judge's
    verdict (``replay.latency.judge_latency`` rows)."""
    from rich.table import Table
    from rich.text import Text

    lab = {"production": "production", "secondary": "secondary", "candidate": "candidate",
           **(labels or {})}
    t = Table(title=title or "latency per endpoint (ms, p50 / p90)", title_justify="left")
    w = max((len(r["endpoint"]) for r in rows), default=8)
    t.add_column("endpoint", no_wrap=w <= (width or 200) - 40, overflow="fold")
    t.add_column("n", justify="right")
    sides = [k for k in ("production", "secondary", "candidate")
             if any(r.get(f"{k}_n") for r in rows)]
    for k in sides:
        t.add_column(lab[k], justify="right")
    t.add_column("verdict", justify="right")

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    sep = "/" if _narrow(width) else " / "
    for r in rows:
        n = max(r.get(f"{k}_n", 0) for k in ("production", "secondary", "candidate"))
        t.add_row(Text(r["endpoint"]), str(n),
                  *(f"{f(r.get(f'{k}_p50_ms'))}{sep}{f(r.get(f'{k}_p90_ms'))}" for k in sides),
                  "[red]SLOWER[/]" if r["regression"] else "ok")
    return t


def diff_tables(report: dict[str, Any], *, width: int | None = None) -> list[Any]:
    """Rich tables of a diff report: endpoints, then regressions, latency, and a noise summary.
    ``width``: the console's (at 80 columns the tables stack endpoint over field and abbreviate
    kinds; nothing that names an endpoint or a field is cut)."""
    from rich.table import Table
    from rich.text import Text

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
        head.add_row(Text(f"HTTP weird: {reason}"), f"{n:,}")  # an input file's to name
    head.add_row("regressions", str(s["regressions"]))
    if "latency_regressions" in s:
        head.add_row("endpoints slower", str(s["latency_regressions"]))
    head.add_row("noise (ignored)", str(s["noise"]))
    head.add_row("undecided", str(s["undecided"]))
    head.add_row("requests with a regression",
                 f"{s['regression_requests']:,} ({s['regression_rate']:.2%})")
    head.add_row("test", str(report["test"]["name"]))
    head.add_row("verdict", "[red]FAIL[/]" if s["verdict"] == "fail" else "[green]pass[/]")
    eps = Table(title="endpoints", title_justify="left")
    w = max((len(e["endpoint"]) for e in report["endpoints"]), default=8)
    cols = ("endpoint", "requests", "regressions", "noise", "undecided", "cand. errors")
    if _narrow(width):
        cols = ("endpoint", "requests", "regr.", "noise", "undec.", "cand. err.")
    for col in cols:
        eps.add_column(col, justify="left" if col == "endpoint" else "right",
                       no_wrap=col == "endpoint" and w <= (width or 200) - 30,
                       overflow="fold")
    for e in report["endpoints"]:
        reg = str(e["regressions"])
        eps.add_row(Text(e["endpoint"]), f"{e['compared']:,}", f"[red]{reg}[/]" if e["regressions"]
                    else reg, str(e["noise"]), str(e["undecided"]), str(e["candidate_errors"]))
    out = [head, eps]
    if report["regressions"]:
        out.append(findings_table(report["regressions"], title="regressions", width=width))
        if _narrow(width):
            out.append(Text("examples (production → candidate):", style="italic"))
            out.append(examples_text(report["regressions"]))
    if report.get("latency"):
        base = report["latency"][0].get("baseline", "secondary")
        out.append(latency_table(
            report["latency"], width=width,
            title=f"latency per endpoint (ms, p50 / p90): candidate vs {base}"))
    if report["noise"]:
        more = len(report["noise"]) - 40
        out.append(findings_table(report["noise"][:40], title="noise (not reported)",
                                  width=width, examples=False, source=True))
        if more > 0:
            out.append(Text(f"… {more} more noise fields in the report"))
    return out


def _window(a: str, b: str, width: int = 30) -> tuple[str, str]:
    """The same window of both values, placed around the first position where they differ
    (cutting both to a common prefix would hide the change)."""
    i = 0
    n = min(len(a), len(b))
    while i < n and a[i] == b[i]:
        i += 1
    start = 0 if i < width - 8 else i - width // 3

    def cut(v: str) -> str:
        return (("…" if start else "") + v[start:start + width]
                + ("…" if len(v) > start + width else ""))

    return cut(a), cut(b)


def _example(f: dict[str, Any]) -> str:
    ex = f.get("examples") or []
    if not ex:
        return ""
    e = ex[0]
    a, b = _window(str(e["primary_value"]), str(e["candidate_value"]))
    return f"{e['id']}: {a} → {b}"


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
.muted{color:#777}.d{background:#fff3c4;display:inline-block;min-width:100%}
.n{background:#eceff3;color:#667;display:inline-block;min-width:100%}
mark{background:#ffb3b3;color:inherit;padding:0}p .d,p .n{display:inline;min-width:0}
td.n{display:table-cell;background:none;color:inherit;min-width:0}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


_MAX_CHAR_DIFF = 4000
"""Lines longer than this are marked whole rather than character by character."""


def _chars(a: str, b: str) -> tuple[str, str]:
    """Escaped HTML of two lines with the characters that differ in ``<mark>``."""
    if len(a) + len(b) > _MAX_CHAR_DIFF:
        return f"<mark>{_e(a)}</mark>", f"<mark>{_e(b)}</mark>"
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    oa: list[str] = []
    ob: list[str] = []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            oa.append(_e(a[i1:i2]))
            ob.append(_e(b[j1:j2]))
            continue
        if i2 > i1:
            oa.append(f"<mark>{_e(a[i1:i2])}</mark>")
        if j2 > j1:
            ob.append(f"<mark>{_e(b[j1:j2])}</mark>")
    return "".join(oa), "".join(ob)


def changed_lines(base: str, other: str) -> set[int]:
    """Where ``other`` differs from ``base``, by line of ``base``: indexes of lines changed or
    gone, and ``-(i + 1)`` for lines inserted before line ``i``."""
    la, lb = base.split("\n"), other.split("\n")
    out: set[int] = set()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, la, lb,
                                                       autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        out.update(range(i1, i2))
        if j2 - j1 > i2 - i1:
            out.add(-(i1 + 1))
    return out


def highlight(base: str, other: str, noisy: set[int] | frozenset[int] = frozenset()
              ) -> tuple[str, str]:
    """Escaped HTML of two texts (pretty-printed bodies, header blocks) with what differs
    marked: a changed line in ``<span class=d>`` with the characters that differ in
    ``<mark>``, a line only one side has marked whole. Lines of ``base`` in ``noisy`` (see
    ``changed_lines``: what the other shadow changes too, i.e. noise) get ``<span class=n>``
    instead, without character marks. Every piece of the input goes through ``html.escape``:
    bodies are hostile input and can never become markup."""
    la, lb = base.split("\n"), other.split("\n")
    sm = difflib.SequenceMatcher(None, la, lb, autojunk=False)
    oa: list[str] = []
    ob: list[str] = []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            oa.extend(_e(x) for x in la[i1:i2])
            ob.extend(_e(x) for x in lb[j1:j2])
            continue
        pairs = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for k, (x, y) in enumerate(zip(la[i1:i1 + pairs], lb[j1:j1 + pairs], strict=True)):
            if i1 + k in noisy:
                oa.append(f"<span class=n>{_e(x)}</span>")
                ob.append(f"<span class=n>{_e(y)}</span>")
                continue
            hx, hy = _chars(x, y)
            oa.append(f"<span class=d>{hx}</span>")
            ob.append(f"<span class=d>{hy}</span>")
        for k, x in enumerate(la[i1 + pairs:i2], i1 + pairs):
            oa.append(f"<span class=n>{_e(x)}</span>" if k in noisy
                      else f"<span class=d><mark>{_e(x)}</mark></span>")
        ins = -(i1 + 1) in noisy
        ob.extend(f"<span class=n>{_e(y)}</span>" if ins
                  else f"<span class=d><mark>{_e(y)}</mark></span>" for y in lb[j1 + pairs:j2])
    return "\n".join(oa), "\n".join(ob)


def _texts(r: dict[str, Any] | None) -> tuple[str, str, str] | None:
    """(status, header block, body) of an example side, or None for an error / no side."""
    if r is None or "error" in r:
        return None
    head = "\n".join(f"{k}: {v}" for k, v in r.get("headers", []))
    return str(r.get("status")), head, str(r.get("body") or "")


def _sides(ex: dict[str, Any], cand: str, sec: str) -> str:
    """Production, candidate and secondary side by side, each shadow's differences from
    production highlighted (and production's from the candidate)."""
    prod = _texts(ex.get("primary"))
    cand_t, sec_t = _texts(ex.get("candidate")), _texts(ex.get("secondary"))
    # What the other shadow changes too is noise: shown apart (grey, no character marks).
    noisy: dict[str, tuple[set[int], set[int]]] = {}
    if prod is not None:
        for key, peer in (("primary", sec_t), ("candidate", sec_t), ("secondary", cand_t)):
            if peer is not None:
                noisy[key] = (changed_lines(prod[1], peer[1]), changed_lines(prod[2], peer[2]))
    out = []
    for label, key in (("production (primary)", "primary"), (cand, "candidate"),
                       (sec, "secondary")):
        r = ex.get(key)
        if r is None:
            out.append(f"<div><b>{_e(label)}</b><pre class='muted'>(no {_e(key)})</pre></div>")
            continue
        if "error" in r:
            out.append(f"<div><b>{_e(label)}</b><pre><mark>error: {_e(r['error'])}</mark>"
                       "</pre></div>")
            continue
        mine = _texts(r)
        assert mine is not None
        other = prod if key != "primary" else cand_t
        nh, nb = noisy.get(key, (set(), set()))
        if other is None:
            st, hd, bd = _e(mine[0]), _e(mine[1]), _e(mine[2])
        elif key == "primary":  # production, marked where the candidate differs from it
            st = _e(mine[0]) if mine[0] == other[0] else f"<mark>{_e(mine[0])}</mark>"
            hd = highlight(mine[1], other[1], nh)[0]
            bd = highlight(mine[2], other[2], nb)[0]
        else:
            st = _e(mine[0]) if mine[0] == other[0] else f"<mark>{_e(mine[0])}</mark>"
            hd = highlight(other[1], mine[1], nh)[1]
            bd = highlight(other[2], mine[2], nb)[1]
        out.append(f"<div><b>{_e(label)}</b> — status {st}<pre>{hd}</pre><pre>{bd}</pre></div>")
    return "<div class='side'>" + "".join(out) + "</div>"


def _target_names(report: dict[str, Any]) -> dict[str, str]:
    """URL -> the role a reader knows it by: candidate, secondary (with the live report's
    labels, e.g. 'candidate (v2)', when there are some)."""
    names = {u: role for role, u in (report.get("targets") or {}).items() if u}
    for sh in (report.get("shadows") or {}).values():
        if sh.get("url") and sh.get("role"):
            names[sh["url"]] = sh["role"]
    return names


def _latency_html(rows: list[dict[str, Any]]) -> str:
    base = rows[0].get("baseline", "secondary")
    parts = [f"<h2>Latency per endpoint</h2><p class='muted'>Milliseconds, p50 / p90. A "
             f"regression: the candidate significantly slower than the {_e(base)} "
             "(Mann-Whitney, Bonferroni over endpoints) by at least 20 ms and 30 % in medians."
             "</p><table><tr><th>endpoint</th><th>n</th><th>production</th><th>secondary</th>"
             "<th>candidate</th><th>verdict</th></tr>"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    for r in rows:
        n = max(r.get(f"{k}_n", 0) for k in ("production", "secondary", "candidate"))
        cells = "".join(f"<td class=n>{f(r.get(f'{k}_p50_ms'))} / {f(r.get(f'{k}_p90_ms'))}</td>"
                        for k in ("production", "secondary", "candidate"))
        slow = r.get("regression")
        parts.append(f"<tr{' class=reg' if slow else ''}><td>{_e(r['endpoint'])}</td>"
                     f"<td class=n>{n}</td>{cells}<td>"
                     f"{'<span class=fail>SLOWER</span>' if slow else 'ok'}</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page (inline CSS, no scripts, no external links)."""
    s = report["summary"]
    t = report["test"]
    names = _target_names(report)
    tg = report.get("targets") or {}
    cand_name = names.get(tg.get("candidate") or "", "candidate")
    sec_name = names.get(tg.get("secondary") or "", "secondary")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>shadowtap diff report</title><style>", _CSS, "</style></head><body>",
        "<h1>shadowtap diff report</h1>",
        f"<p>Input <code>{_e(report['input'])}</code>; generated {_e(report['generated'])}. "
        f"<b>{_e(cand_name)}</b> <span class='muted'>{_e(tg.get('candidate'))}</span>; "
        f"<b>{_e(sec_name)}</b> <span class='muted'>{_e(tg.get('secondary') or 'none')}"
        "</span>.</p>",
        f"<p>Verdict: <span class='{s['verdict']}'>{s['verdict'].upper()}</span> — "
        f"{s['regressions']} regression(s) in {s['regression_requests']} of {s['compared']} "
        f"compared requests ({s['regression_rate']:.2%}; fail above {s['fail_on']:.2%}). "
        + (f"{s['latency_regressions']} endpoint(s) slower. " if s.get("latency_regressions")
           else "")
        + f"{s['noise']} noise, {s['undecided']} undecided.</p>",
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
        if items:
            parts.append("<p class='muted'>In the examples, <span class=d>yellow lines</span> "
                         "differ from production (the differing characters <mark>in red</mark>"
                         "); <span class=n>grey lines</span> differ in the other shadow too "
                         "(noise).</p>")
        if not items:
            parts.append("<p class='muted'>None.</p>")
            continue
        for f in items:
            sec = ("-" if f["secondary_diffs"] is None
                   else f"{f['secondary_diffs']}/{f['compared']}")
            # The three-way reason restates the counts of the sentence: said once.
            why = f.get("reason") or ""
            why = "" if why.startswith("candidate differs in") else f" {_e(why)}"
            p = ("" if f["p_value"] is None else
                 f"; p = {_e(f['p_value'])}, Holm-adjusted {_e(f['p_adjusted'])}")
            parts.append(
                f"<h3><code>{_e(f['endpoint'])}</code> <code>{_e(f['field'])}</code> "
                f"{_e(f['kind'])}</h3><p>{_e(cand_name)} differs in {f['candidate_diffs']}/"
                f"{f['compared']}, {_e(sec_name)} in {sec}{p}.{why}</p>"
            )
            for ex in f.get("examples", []):
                parts.append(
                    f"<details open><summary>request <code>{_e(ex['id'])}</code>: "
                    f"<code>{_e(ex['request'])}</code> — production <code>"
                    f"{_e(ex['primary_value'])}</code> → {_e(cand_name)} <code>"
                    f"{_e(ex['candidate_value'])}</code></summary>"
                    + _sides(ex, cand_name, sec_name) + "</details>"
                )
    if report.get("latency"):
        parts.append(_latency_html(report["latency"]))
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
        who = names.get(url)
        label = f"{_e(who)} <span class='muted'>{_e(url)}</span>" if who else _e(url)
        parts.append(f"<tr><td>{label}</td><td class=n>{ts['sent']}</td><td class=n>"
                     f"{ts['answered']}</td><td>{_e(errs)}</td><td class=n>{_ms(lat['p50'])}</td>"
                     f"<td class=n>{_ms(lat['p99'])}</td></tr>")
    parts.append("</table></body></html>\n")
    return "".join(parts)
