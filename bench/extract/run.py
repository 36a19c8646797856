"""Benchmark ``shadowtap extract`` against tshark and tcpflow on the same synthetic capture.

Why this script exists (issue 2): the extractor's promise is "at least 300,000 packets/s on one
core, five times tshark, flat memory when the capture is ten times longer". A promise like that
is only worth something if it is measured in one run, against peers, on a capture whose truth is
known. So this script

1. builds a capture of ``--packets`` packets (default 200,000) of realistic HTTP/1.1 with
   :mod:`replay.synth` (keep-alive, chunked, POST bodies, ``--concurrency`` connections open at
   once, thousands in total), keeping the ground truth of every exchange;
2. times, one after another on that capture: ``shadowtap extract`` (JSONL to a file and
   ``--summary-json``), ``tshark`` pulling the request fields, ``tshark`` pulling request and
   response fields (closer to what extract does), and ``tcpflow`` reassembling the streams;
3. repeats shadowtap and tshark (requests and responses) on a capture ``--scale`` times longer
   (same concurrency, more connections) to show whether peak memory stays flat;
4. checks extract's exchanges against the ground truth (count, and per exchange: connection,
   method, target, Host, status) and prints the differences, because a fast wrong answer is
   worth nothing;
5. prints a table and rewrites its own section of ``docs/benchmarks.md``.

Wall time and peak RSS come from ``os.wait4`` on each child (``ru_maxrss``), so the numbers
include start-up (Python import time for shadowtap, dissector registration for tshark): that is
what a user waits for.

Run: ``.venv/bin/python bench/extract/run.py [--packets 200000] [--scale 10]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from replay.synth import GenStats, TruthRow, generate_pcap  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:extract -->", "<!-- /bench:extract -->"
SHADOWTAP = Path(sys.executable).parent / "shadowtap"


@dataclass
class Run:
    """One timed child process."""

    tool: str
    capture: str
    packets: int
    argv: list[str]
    wall: float = 0.0
    cpu: float = 0.0
    rss_kib: int = 0
    rc: int | None = None
    result: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.error

    @property
    def pps(self) -> float:
        return self.packets / self.wall if self.wall else 0.0

    @property
    def cpu_pps(self) -> float:
        """Packets per CPU second: less disturbed than wall time when the machine is shared."""
        return self.packets / self.cpu if self.cpu else 0.0


class _Null:
    """A write-only sink that just counts, for sizing a capture without writing it."""

    def write(self, b: bytes) -> int:
        return len(b)


def time_child(run: Run, stdout: Path | None, stderr: Path, timeout: float) -> Run:
    """Run ``run.argv`` and fill in wall time, CPU time and peak RSS (``os.wait4``)."""
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
    err = open(stderr, "wb")  # noqa: SIM115
    timed_out = threading.Event()
    try:
        t0 = time.perf_counter()
        try:
            p = subprocess.Popen(run.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        except OSError as e:
            run.error = f"cannot start {run.argv[0]}: {e}"
            return run

        def kill() -> None:
            timed_out.set()
            os.kill(p.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        _, status, ru = os.wait4(p.pid, 0)
        run.wall = time.perf_counter() - t0
        timer.cancel()
        p.returncode = run.rc = os.waitstatus_to_exitcode(status)
    finally:
        if stdout:
            cast(BinaryIO, out).close()
        err.close()
    run.cpu = ru.ru_utime + ru.ru_stime
    run.rss_kib = ru.ru_maxrss  # KiB on Linux
    if timed_out.is_set():
        run.error = f"killed after {timeout:.0f} s"
    elif run.rc != 0:
        lines = [ln.strip(" │╭╮╰╯─\t") for ln in stderr.read_text(errors="replace").splitlines()]
        tail = [ln for ln in lines if ln and "as user" not in ln][-3:]
        run.error = f"exit {run.rc}: " + " | ".join(tail)
    return run


def build_capture(path: Path, packets: int, concurrency: int, seed: int
                  ) -> tuple[GenStats, list[TruthRow], float]:
    """Generate a capture of at least ``packets`` packets; returns stats, truth, seconds."""
    probe = generate_pcap(cast(BinaryIO, _Null()), connections=400, concurrency=concurrency,
                          seed=seed + 1)
    per_conn = probe.packets / probe.connections
    conns = max(1, math.ceil(packets / per_conn * 1.03))
    while True:
        truth: list[TruthRow] = []
        t0 = time.perf_counter()
        st = generate_pcap(path, connections=conns, concurrency=concurrency, seed=seed,
                           truth=truth)
        took = time.perf_counter() - t0
        if st.packets >= packets:
            return st, truth, took
        conns = math.ceil(conns * packets / st.packets * 1.02)


def _find_summary(stderr_text: str) -> dict[str, Any] | None:
    """The ``--summary-json`` object, wherever it sits in stderr (whole, or one line of it)."""
    s = stderr_text.strip()
    candidates = [s] + [ln for ln in reversed(s.splitlines()) if ln.lstrip().startswith("{")]
    start = s.find("{")
    if start > 0:
        candidates.append(s[start:])
    for c in candidates:
        try:
            v = json.loads(c)
        except ValueError:
            continue
        if isinstance(v, dict):
            return v
    return None


def _host(headers: list[list[str]]) -> str:
    for name, value in headers:
        if name.lower() == "host":
            return value
    return ""


def compare_truth(jsonl: Path, truth: list[TruthRow], limit: int = 8) -> dict[str, Any]:
    """Exchanges in extract's JSONL against the ground truth, as multisets of
    (client ip, client port, server ip, server port, method, target, host, status)."""
    import orjson

    got: Counter[tuple[Any, ...]] = Counter()
    incomplete: Counter[str] = Counter()
    n = 0
    with open(jsonl, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            d = orjson.loads(line)
            n += 1
            c = d.get("conn") or {}
            req = d.get("request") or {}
            resp = d.get("response") or {}
            got[(c.get("client_ip"), c.get("client_port"), c.get("server_ip"),
                 c.get("server_port"), req.get("method"), req.get("target"),
                 _host(req.get("headers") or []), resp.get("status"))] += 1
            for k, v in (d.get("completeness") or {}).items():
                if v:
                    incomplete[k] += 1
    want = Counter((*k, m, t, h, s) for k, m, t, h, s in truth)
    missing = want - got
    extra = got - want
    return {
        "records": n,
        "matching": sum((want & got).values()),
        "missing": sum(missing.values()),
        "extra": sum(extra.values()),
        "missing_examples": [list(k) for k in list(missing)[:limit]],
        "extra_examples": [list(k) for k in list(extra)[:limit]],
        "completeness_flags": dict(incomplete),
    }


def run_shadowtap(cap: Path, label: str, packets: int, work: Path, timeout: float) -> Run:
    out = work / f"extract-{label}.jsonl"
    r = Run("shadowtap extract", label, packets,
            [str(SHADOWTAP), "extract", str(cap), "-o", str(out), "--summary-json"])
    errf = work / f"extract-{label}.stderr"
    time_child(r, None, errf, timeout)
    r.extra["out"] = out
    summary = _find_summary(errf.read_text(errors="replace")) if errf.exists() else None
    r.extra["summary"] = summary
    if r.ok:
        if summary is None:
            r.error = "no --summary-json object found on stderr"
        else:
            r.result = f"{summary.get('exchanges')} exchanges"
    return r


# tshark dissects bodies by media type; JSON dissection alone is ~2/3 of its time on API
# traffic. Switching body dissectors off is what a careful user would do to pull only HTTP
# fields, so that variant is the fair peer (the ratio against it is the conservative one).
BODY_DISSECTORS = ("json", "xml", "png", "media", "data-text-lines", "image-jfif", "image-gif")


def run_tshark(cap: Path, label: str, packets: int, work: Path, timeout: float,
               responses: bool, bodies: bool = True) -> Run:
    fields = ["tcp.stream", "http.request.method", "http.request.uri", "http.host"]
    if responses:
        fields.append("http.response.code")
    argv = ["tshark", "-n", "-r", str(cap), "-Y", "http" if responses else "http.request",
            "-T", "fields"]
    for f in fields:
        argv += ["-e", f]
    if not bodies:
        for proto in BODY_DISSECTORS:
            argv += ["--disable-protocol", proto]
    name = "tshark -Y http (req+resp)" if responses else "tshark -Y http.request"
    if not bodies:
        name += ", no body dissectors"
    r = Run(name, label, packets, argv)
    out = work / f"tshark-{label}-{int(responses)}{int(bodies)}.tsv"
    time_child(r, out, work / f"tshark-{label}.stderr", timeout)
    if r.ok:
        reqs = resps = 0
        with open(out, "rb") as f:
            for line in f:
                parts = line.rstrip(b"\n").split(b"\t")
                if len(parts) > 1 and parts[1]:
                    reqs += 1
                if responses and len(parts) > 4 and parts[4]:
                    resps += 1
        r.extra["requests"] = reqs
        r.result = f"{reqs} requests" + (f", {resps} responses" if responses else "")
    out.unlink(missing_ok=True)
    return r


def run_tcpflow(cap: Path, label: str, packets: int, work: Path, timeout: float) -> Run:
    d = work / f"tcpflow-{label}"
    d.mkdir(exist_ok=True)
    r = Run("tcpflow", label, packets, ["tcpflow", "-r", str(cap), "-o", str(d)])
    time_child(r, None, work / f"tcpflow-{label}.stderr", timeout)
    if r.ok:
        files = [p for p in d.iterdir() if p.is_file() and p.suffix != ".xml"]
        r.result = f"{len(files)} stream files"
    shutil.rmtree(d, ignore_errors=True)
    return r


def machine_note() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def ver(argv: list[str], pat: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return "absent"
        m = re.search(pat, out.stdout + out.stderr)
        return m.group(1) if m else "?"

    tshark = ver(["tshark", "--version"], r"TShark \(Wireshark\) (\S+)")
    tcpflow = ver(["tcpflow", "-V"], r"TCPFLOW (\S+)")
    return (f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, tshark {tshark}, tcpflow {tcpflow}")


def fmt_rows(runs: list[Run]) -> list[list[str]]:
    rows = []
    for r in runs:
        if r.ok:
            rows.append([r.tool, r.capture, f"{r.packets:,}", f"{r.wall:.2f}", f"{r.cpu:.2f}",
                         f"{r.pps:,.0f}", f"{r.cpu_pps:,.0f}", f"{r.rss_kib / 1024:,.0f}",
                         r.result])
        else:
            rows.append([r.tool, r.capture, f"{r.packets:,}", "-", "-", "-", "-", "-",
                         f"FAILED: {r.error[:120]}"])
    return rows


FAIR_TSHARK = "tshark -Y http (req+resp), no body dissectors"
HEAD = ["tool", "capture", "packets", "wall s", "CPU s", "packets/s", "packets/CPU s",
        "peak RSS MiB", "result"]


def ratios(runs: list[Run], short: str, long: str | None, startup: float = 0.0) -> list[str]:
    """Lines comparing shadowtap with each peer on the same capture, and memory growth."""
    by = {(r.tool, r.capture): r for r in runs if r.ok}
    lines = []
    st = by.get(("shadowtap extract", short))
    for peer in ("tshark -Y http.request", "tshark -Y http (req+resp)", FAIR_TSHARK, "tcpflow"):
        p = by.get((peer, short))
        if st and p:
            lines.append(f"shadowtap / {peer}: **{st.pps / p.pps:.2f}×** packets/s "
                         f"({st.pps:,.0f} vs {p.pps:,.0f}; per CPU second "
                         f"{st.cpu_pps / p.cpu_pps:.2f}×); peak RSS "
                         f"{st.rss_kib / 1024:,.0f} vs {p.rss_kib / 1024:,.0f} MiB")
    if long:
        for tool in ("shadowtap extract", FAIR_TSHARK):
            a, b = by.get((tool, short)), by.get((tool, long))
            if a and b:
                lines.append(f"{tool}: peak RSS {a.rss_kib / 1024:,.0f} MiB at {short} → "
                             f"{b.rss_kib / 1024:,.0f} MiB at {long} "
                             f"(×{b.rss_kib / a.rss_kib:.2f}); packets/s {a.pps:,.0f} → "
                             f"{b.pps:,.0f}")
    if st:
        for label in (short, long):
            r = by.get(("shadowtap extract", label)) if label else None
            if r is None:
                continue
            net = r.packets / max(1e-6, r.wall - startup)
            lines.append(f"target ≥ 300,000 packets/s ({label}): "
                         f"{'met' if r.pps >= 300_000 else 'NOT met'} ({r.pps:,.0f} packets/s; "
                         f"{net:,.0f} without the {startup:.2f} s process start-up)")
        for name in ("tshark -Y http.request", FAIR_TSHARK):
            t = by.get((name, short))
            if t:
                met = "met" if st.pps >= 5 * t.pps else "NOT met"
                lines.append(f"target ≥ 5× tshark ({name}): {met}")
    return lines


def write_doc(section: str) -> None:
    """Replace only this benchmark's section of docs/benchmarks.md (others write theirs)."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if DOC.exists():
        text = DOC.read_text()
        i, j = text.find(BEGIN), text.find(END)
        if i >= 0 and j > i:
            text = text[:i] + block + text[j + len(END):]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        text = ("# Benchmarks\n\nEach section below is written by the script it names; re-run "
                "the script to refresh it, do not edit the numbers by hand.\n\n" + block + "\n")
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=200_000, help="packets in the base capture")
    ap.add_argument("--scale", type=int, default=10,
                    help="the long capture is this many times longer (0: skip it)")
    ap.add_argument("--concurrency", type=int, default=1000,
                    help="connections open at once (interleaved packet by packet)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, help="where captures and outputs go (default: tmp)")
    ap.add_argument("--keep", action="store_true", help="keep captures and outputs")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per tool run")
    ap.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="first wait up to this long for the 1-minute load average to drop "
                    "below 1 (timings on a shared machine are otherwise noisy)")
    a = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 200)
    made_work = a.workdir is None
    work = a.workdir or Path(tempfile.mkdtemp(prefix="shadowtap-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    missing = [t for t in ("tshark", "tcpflow") if shutil.which(t) is None]
    if missing:
        con.print(f"[yellow]not installed: {', '.join(missing)} (apt-get install "
                  f"{' '.join(missing)}); their rows will show as failed[/]")
    if not SHADOWTAP.exists():
        con.print(f"[red]{SHADOWTAP} not found: install the project (pip install -e .)[/]")

    if a.wait_quiet > 0:
        deadline = time.monotonic() + a.wait_quiet
        while os.getloadavg()[0] >= 1.0 and time.monotonic() < deadline:
            time.sleep(5)
    load_before = os.getloadavg()

    sizes = [("1x", a.packets)]
    if a.scale > 1:
        sizes.append((f"{a.scale}x", a.packets * a.scale))
    caps: dict[str, tuple[Path, GenStats, list[TruthRow]]] = {}
    for label, n in sizes:
        cap = work / f"http-{label}.pcap"
        st, truth, took = build_capture(cap, n, a.concurrency, a.seed)
        caps[label] = (cap, st, truth)
        con.print(f"capture {label}: {st.packets:,} packets, {st.connections:,} connections, "
                  f"{st.requests:,} exchanges, {st.bytes / 1e6:,.0f} MB, "
                  f"{st.duration:.0f} s of traffic; generated in {took:.1f} s "
                  f"({st.packets / took:,.0f} packets/s)")

    # Process start-up (interpreter, imports, CLI) is in every wall time: measure it alone on a
    # capture of one connection, so a reader can tell it from the per-packet work.
    tiny = work / "http-tiny.pcap"
    generate_pcap(tiny, connections=1, concurrency=1, seed=a.seed)
    startup = min(time_child(Run("start-up", "tiny", 1, [str(SHADOWTAP), "extract", str(tiny),
                                                          "-o", os.devnull, "-q"]),
                             None, work / "tiny.stderr", a.timeout).wall for _ in range(3))
    con.print(f"shadowtap extract start-up (one-connection capture, best of 3): {startup:.2f} s")

    runs: list[Run] = []
    checks: dict[str, dict[str, Any]] = {}
    for label, _ in sizes:
        cap, st, truth = caps[label]
        with open(cap, "rb") as f:  # warm the page cache so no tool pays for the first read
            while f.read(1 << 24):
                pass
        con.print(f"[bold]{label}[/]: shadowtap extract …")
        r = run_shadowtap(cap, label, st.packets, work, a.timeout)
        runs.append(r)
        if r.ok:
            chk = compare_truth(r.extra["out"], truth)
            summ = r.extra["summary"] or {}
            chk["summary_exchanges"] = summ.get("exchanges")
            chk["summary_packets"] = summ.get("packets")
            chk["truth"] = len(truth)
            checks[label] = chk
        elif r.error:
            con.print(f"[red]shadowtap extract failed: {r.error}[/]")
        if not a.keep:
            Path(r.extra["out"]).unlink(missing_ok=True)
        if label == "1x":
            con.print(f"[bold]{label}[/]: tshark (requests) …")
            runs.append(run_tshark(cap, label, st.packets, work, a.timeout, responses=False))
            con.print(f"[bold]{label}[/]: tshark (requests and responses) …")
            runs.append(run_tshark(cap, label, st.packets, work, a.timeout, responses=True))
        con.print(f"[bold]{label}[/]: tshark (requests and responses, no body dissectors) …")
        runs.append(run_tshark(cap, label, st.packets, work, a.timeout, responses=True,
                               bodies=False))
        if label == "1x":
            con.print(f"[bold]{label}[/]: tcpflow …")
            runs.append(run_tcpflow(cap, label, st.packets, work, a.timeout))

    table = Table(title="shadowtap extract vs tshark vs tcpflow (one run)")
    for h in HEAD:
        table.add_column(h, justify="left" if h in ("tool", "capture", "result") else "right")
    for row in fmt_rows(runs):
        table.add_row(*row)
    con.print(table)
    rat = ratios(runs, "1x", sizes[1][0] if len(sizes) > 1 else None, startup)
    for line in rat:
        con.print(line.replace("**", ""))

    truth_lines = []
    for label, chk in checks.items():
        tsh = next((r.extra.get("requests") for r in runs if r.capture == label
                    and r.tool.startswith("tshark") and r.ok), None)
        ok = (chk["summary_exchanges"] == chk["truth"] and chk["missing"] == 0
              and chk["extra"] == 0)
        line = (f"{label}: ground truth {chk['truth']:,} exchanges; extract summary "
                f"{chk['summary_exchanges']}, JSONL records {chk['records']:,}, matching "
                f"(conn, method, target, host, status) {chk['matching']:,}, missing "
                f"{chk['missing']}, extra {chk['extra']}; tshark requests {tsh} → "
                f"{'OK' if ok else 'MISMATCH'}")
        truth_lines.append(line)
        con.print(line, style="green" if ok else "red")
        if chk["completeness_flags"]:
            con.print(f"  completeness flags set (capture has no loss): "
                      f"{chk['completeness_flags']}")
        for k in chk["missing_examples"]:
            con.print(f"  missing from extract: {k}")
        for k in chk["extra_examples"]:
            con.print(f"  extra in extract:    {k}")

    load_after = os.getloadavg()
    load_note = (f"load average (1/5/15 min) {load_before[0]:.2f}/{load_before[1]:.2f}/"
                 f"{load_before[2]:.2f} before, {load_after[0]:.2f}/{load_after[1]:.2f}/"
                 f"{load_after[2]:.2f} after")
    con.print(load_note)
    if not a.no_doc and any(r.ok for r in runs):
        _, st1, _ = caps["1x"]
        md = ["## `shadowtap extract` vs tshark vs tcpflow", "",
              f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by "
              "`bench/extract/run.py` on " + machine_note() + ".", "",
              f"Capture ({sizes[0][0]}): {st1.packets:,} packets of HTTP/1.1 from "
              f"`replay.synth` (seed {a.seed}): {st1.connections:,} keep-alive connections "
              f"(1–8 exchanges each, {a.concurrency:,} open at once and interleaved packet by "
              f"packet), {st1.requests:,} exchanges, {st1.bytes / 1e6:,.0f} MB; 20 % chunked "
              "responses, 25 % requests with bodies (JSON/form, some chunked, some "
              "`Expect: 100-continue`), 10 % gzip, bodies 200 B–60 KB, MSS 1448."]
        if len(sizes) > 1:
            _, stl, _ = caps[sizes[1][0]]
            md.append(f"Long capture ({sizes[1][0]}): {stl.packets:,} packets, "
                      f"{stl.connections:,} connections, same concurrency.")
        md += ["", "Wall time, CPU time and peak RSS of each child process (`os.wait4`), "
               f"start-up included (shadowtap's alone: {startup:.2f} s, measured on a "
               "one-connection capture); one tool at a time, page cache warm; " + load_note
               + " (CPU s close to wall s means the tool had its core to itself).", "",
               "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        md += ["| " + " | ".join(row) + " |" for row in fmt_rows(runs)]
        md += [""] + [f"- {line}" for line in rat + truth_lines]
        write_doc("\n".join(md))
        con.print(f"updated {DOC.relative_to(ROOT)}")
    if not a.keep and made_work:
        shutil.rmtree(work, ignore_errors=True)
    elif a.keep:
        con.print(f"kept {work}")
    st_ok = all(r.ok for r in runs if r.tool == "shadowtap extract")
    return 0 if st_ok else 1


if __name__ == "__main__":
    sys.exit(main())
