"""Replay throughput and comparator throughput, peer against peer, in one run.

Replay: requests/s of ``shadowtap replay --speed max`` replaying 50,000 exchanges to a local
keep-alive server (bench/replay/server.py, uvloop + httptools, ~one nginx worker's speed), next
to the peers the issue names on the same exchanges: locust FastHttpUser (one process), mitmdump
client replay (a smaller sample: it manages ~1k flows/s) and wrk as the ceiling. Clients are
pinned to CPU 0 and the server to CPU 1 when ``taskset`` is there. Every figure is measured at
the server (requests counted and timed where they arrive), so all clients are timed the same
way; wrk's own figure is printed too.

Comparator: exchange pairs/s of ~2 KB JSON responses that differ in a few fields (timestamps, a
reordered array, a changed value), end to end (decode + parse of both: msgspec one level deep,
simdjson checking one side, orjson for the members whose bytes differ + structural walk + header
rules), next to DeepDiff on the same pairs (orjson parse + ``DeepDiff``), and the
three-way accumulator (three responses per request).

Usage: ``python bench/replay/run.py [--n 50000] [--rounds 3] [--no-peers] [--no-write]
[--compare-only]``. Writes the result
into docs/benchmarks.md between ``<!-- bench:replay -->`` markers (only that section).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from operator import ne
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.common import free_port  # noqa: E402
from replay.compare import Comparator, Rules, ThreeWay, prepare  # noqa: E402
from replay.formats import open_writer  # noqa: E402
from replay.model import ConnKey, Exchange, Request, Response  # noqa: E402

BEGIN = "<!-- bench:replay -->"
END = "<!-- /bench:replay -->"
BIN = Path(sys.executable).parent
TASKSET = shutil.which("taskset")


def pinned(cpu: int, cmd: list[str]) -> list[str]:
    return [TASKSET, "-c", str(cpu), *cmd] if TASKSET and (os.cpu_count() or 1) > 1 else cmd


def server_stats(port: int, reset: bool = False) -> dict:
    path = "/__reset" if reset else "/__stats"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def server_rate(port: int) -> tuple[int, float | None]:
    s = server_stats(port)
    span = s["last"] - s["first"]
    return s["count"], (s["count"] - 1) / span if s["count"] > 1 and span > 0 else None


def make_exchanges(n: int, port: int) -> list[Exchange]:
    rng = random.Random(42)
    out = []
    for i in range(n):
        path = rng.choice([f"/api/items/{rng.randrange(10**6)}", f"/api/users/{i % 5000}",
                           "/api/health", f"/static/app.{i % 97}.js", "/search?q=shoes&page=2"])
        out.append(Exchange(
            id=str(i), conn=ConnKey("10.0.0.9", 40000 + i % 20000, "127.0.0.1", port),
            request=Request("GET", path, "HTTP/1.1", [
                ("Host", f"127.0.0.1:{port}"), ("User-Agent", "Mozilla/5.0 bench"),
                ("Accept", "application/json"), ("Accept-Language", "en-GB")]),
            response=Response(200, "OK", headers=[("Content-Length", "2")], body=b"ok"),
            ts_request_start=1.7e9 + i * 0.0001))
    return out


def write(fmt: str, path: Path, exs: list[Exchange]) -> Path:
    with path.open("wb") as fp:
        w = open_writer(fmt, fp)
        for ex in exs:
            w.write(ex)
        w.close()
    return path


def wait_until_idle(port: int, expect: int, limit: float) -> None:
    """Until the server has seen ``expect`` requests, or nothing new came for 3 s after the
    first one (start-up, loading flows, may take a while on a busy host)."""
    t_end = time.time() + limit
    last, since = 0, time.time()
    while time.time() < t_end:
        c = server_stats(port)["count"]
        if c >= expect:
            return
        if c != last:
            last, since = c, time.time()
        elif c and time.time() - since > 3:
            return
        time.sleep(0.2)


def bench_wrk(port: int, seconds: int) -> dict:
    if not shutil.which("wrk"):
        return {"error": "wrk not installed"}
    server_stats(port, reset=True)
    p = subprocess.run(pinned(0, ["wrk", "-t1", "-c32", f"-d{seconds}s",
                                  f"http://127.0.0.1:{port}/api/health"]),
                       capture_output=True, text=True, timeout=seconds + 30, check=False)
    own = None
    for ln in p.stdout.splitlines():
        if ln.startswith("Requests/sec:"):
            own = float(ln.split()[1])
    n, rate = server_rate(port)
    return {"requests": n, "rate": rate, "own": own}


def bench_shadowtap(port: int, jsonl: Path, n: int) -> dict:
    server_stats(port, reset=True)
    t0 = time.perf_counter()
    p = subprocess.run(pinned(0, [str(BIN / "shadowtap"), "replay", str(jsonl), "--target",
                                  f"http://127.0.0.1:{port}", "--speed", "max", "-c", "32",
                                  "--summary-json"]),
                       capture_output=True, text=True, timeout=600, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr else "failed"}
    own = json.loads(p.stdout)
    count, rate = server_rate(port)
    return {"requests": count, "rate": rate, "own": own["achieved_rate"],
            "wall_with_startup": round(wall, 2), "errors": sum(
                sum(t["errors"].values()) for t in own["targets"].values())}


LOCUSTFILE = '''
import itertools, json
from locust import FastHttpUser, constant, task
PATHS = itertools.cycle(json.load(open({paths!r})))
HEADERS = {{"User-Agent": "Mozilla/5.0 bench", "Accept": "application/json",
           "Accept-Language": "en-GB"}}
class Replay(FastHttpUser):
    host = {host!r}
    wait_time = constant(0)
    @task
    def go(self):
        self.client.get(next(PATHS), headers=HEADERS)
'''


def bench_locust(port: int, exs: list[Exchange], seconds: int, tmp: Path) -> dict:
    if not (BIN / "locust").exists():
        return {"error": "locust not installed"}
    paths = tmp / "paths.json"
    paths.write_text(json.dumps([e.request.target for e in exs]))
    lf = tmp / "locustfile.py"
    lf.write_text(LOCUSTFILE.format(paths=str(paths), host=f"http://127.0.0.1:{port}"))
    server_stats(port, reset=True)
    p = subprocess.run(pinned(0, [str(BIN / "locust"), "-f", str(lf), "--headless", "-u", "32",
                                  "-r", "1000", "-t", f"{seconds}s", "--only-summary",
                                  "--csv", str(tmp / "locust")]),
                       capture_output=True, text=True, timeout=seconds + 60, check=False)
    own = None
    try:
        for row in (tmp / "locust_stats.csv").read_text().splitlines()[1:]:
            cols = row.split(",")
            if "Aggregated" in row:
                own = float(cols[9])
    except (OSError, ValueError, IndexError):
        pass
    count, rate = server_rate(port)
    if count == 0:
        return {"error": (p.stderr.strip().splitlines() or ["no requests"])[-1]}
    return {"requests": count, "rate": rate, "own": own}


def bench_mitmdump(port: int, flows: Path, n: int) -> dict:
    if not (BIN / "mitmdump").exists():
        return {"error": "mitmdump not installed"}
    server_stats(port, reset=True)
    home = tempfile.mkdtemp(prefix="mitm-home-")
    proc = subprocess.Popen(pinned(0, [str(BIN / "mitmdump"), "-n", "-q", "-C", str(flows),
                                       "--set", "client_replay_concurrency=-1",
                                       "--set", f"confdir={home}"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_idle(port, n, 300)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    count, rate = server_rate(port)
    if count == 0:
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        return {"error": (err.splitlines() or ["no requests"])[-1]}
    return {"requests": count, "rate": rate, "own": None}


# ---------------------------------------------------------------------------------------------
# Comparator


def json_pair(rng: random.Random) -> tuple[Response, Response]:
    items = [{"sku": f"SKU-{rng.randrange(10**5):05d}", "price": round(rng.uniform(1, 500), 2),
              "qty": rng.randrange(1, 9), "tags": ["new", "sale", "eco"][: rng.randrange(4)]}
             for _ in range(28)]
    doc = {"order_id": rng.randrange(10**9), "status": "shipped", "items": items,
           "customer": {"id": rng.randrange(10**6), "tier": "gold", "locale": "en-GB"},
           "generated_at": "2026-11-26T13:18:21.123456Z", "request_id": f"{rng.getrandbits(64):x}",
           "flags": ["a", "b", "c", "d"]}
    a = orjson.dumps(doc)
    doc2 = json.loads(a)
    doc2["generated_at"] = "2026-11-26T13:18:22.654321Z"
    doc2["request_id"] = f"{rng.getrandbits(64):x}"
    doc2["flags"] = ["c", "a", "d", "b"]
    doc2["items"][3]["price"] = doc2["items"][3]["price"] + 1
    b = orjson.dumps(doc2)
    headers = [("Content-Type", "application/json"), ("Date", "Thu, 26 Nov 2026 13:18:21 GMT"),
               ("Server", "app/1.0"), ("X-Request-Id", "x"), ("Cache-Control", "no-store")]
    return (Response(200, "OK", headers=headers, body=a),
            Response(200, "OK", headers=headers[:3] + [("X-Request-Id", "y")] + headers[4:],
                     body=b))


def pure_compare_rate(n_pairs: int) -> float | None:
    """The ``Comparator`` row from the unchanged source (``SHADOWTAP_PURE_PYTHON=1``, a child
    process), or None when this run is pure Python already or the child fails."""
    import replay.compare as mod
    from replay import _native

    if not _native.compiled(mod):
        return None
    env = dict(os.environ, SHADOWTAP_PURE_PYTHON="1")
    r = subprocess.run([sys.executable, __file__, "--compare-main-only", "--pairs", str(n_pairs)],
                       capture_output=True, text=True, env=env, check=False)
    try:
        return float(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def bench_compare(n_pairs: int, n_deepdiff: int, main_only: bool = False) -> dict:
    rng = random.Random(9)
    pairs = [json_pair(rng) for _ in range(2000)]
    size = sum(len(a.body) for a, _ in pairs) / len(pairs)
    comp = Comparator(Rules())
    # As `shadowtap diff` runs it: a larger young generation (see replay/cli_replay.py).
    old = gc.get_threshold()
    gc.set_threshold(100_000, *old[1:])
    best = 0.0
    for _ in range(5):
        t0 = time.process_time()
        done = 0
        while done < n_pairs:
            for a, b in pairs:
                comp.diff(prepare(a), prepare(b))
            done += len(pairs)
        best = max(best, done / (time.process_time() - t0))
    if main_only:
        gc.set_threshold(*old)
        return {"shadowtap": best}
    gc.collect()
    loads = orjson.loads
    parse = 0.0
    for _ in range(5):  # best of 5, as the rows it is the reference for
        t0 = time.process_time()
        for a, b in pairs:
            loads(a.body)
            loads(b.body)
        parse = max(parse, len(pairs) / (time.process_time() - t0))
    floor = 0.0
    for _ in range(5):  # parse both, then compare each element of the top-level arrays once
        t0 = time.process_time()
        for a, b in pairs:
            x, y = loads(a.body), loads(b.body)
            for k, v in x.items():
                w = y.get(k)
                if type(v) is list and type(w) is list:
                    list(map(ne, v, w))
        floor = max(floor, len(pairs) / (time.process_time() - t0))
    req = Request("GET", "/api/orders/1")
    tw = ThreeWay(Rules())
    t0 = time.process_time()
    for i, (a, b) in enumerate(pairs * 5):
        tw.add(str(i), req, a, b, a)
    three = len(pairs) * 5 / (time.process_time() - t0)
    dd = None
    try:
        from deepdiff import DeepDiff

        t0 = time.process_time()
        for a, b in pairs[:n_deepdiff]:
            DeepDiff(orjson.loads(a.body), orjson.loads(b.body), ignore_order=False)
        dd = n_deepdiff / (time.process_time() - t0)
    except ImportError:
        pass
    gc.set_threshold(*old)
    return {"size": size, "shadowtap": best, "three_way": three, "deepdiff": dd, "parse": parse,
            "floor": floor, "pure": pure_compare_rate(n_pairs)}


# ---------------------------------------------------------------------------------------------


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def compare_table(cmp: dict) -> list[str]:
    """The comparator part of the section: its introduction and table, up to the end marker."""
    st, dd, tw3, pz = cmp["shadowtap"], cmp["deepdiff"], cmp["three_way"], cmp["parse"]
    fl = cmp["floor"]
    pu = cmp.get("pure")
    return [
        f"Comparing ~{cmp['size'] / 1024:.1f} KB JSON response pairs that differ in a few fields "
        "(end to end: headers by rules, body decode, both sides parsed (msgspec splits each body one"
        " level deep, simdjson checks one side is JSON, orjson parses the members whose bytes"
        " differ), structural walk; CPU time, best of 5 (a shared host: noise only lowers a run)):",
        "",
        "| comparator | pairs/s | vs DeepDiff |",
        "|---|---:|---:|",
        f"| shadowtap `Comparator` (prepare both + diff) | {fmt(st)} | "
        f"{f'{st / dd:,.0f}×' if dd else '-'} |",
        f"| (the same, pure Python: `SHADOWTAP_PURE_PYTHON=1`, the same `.py` not compiled) | "
        f"{fmt(pu)} | {f'{pu / dd:,.0f}×' if dd and pu else '-'} |",
        f"| shadowtap `ThreeWay.add` (primary, candidate, secondary: 2 diffs; the secondary "
        "answers the primary's bytes, so their parse is shared) | "
        f"{fmt(tw3)} | {f'{tw3 / dd:,.0f}×' if dd else '-'} |",
        f"| DeepDiff (orjson parse + `DeepDiff`) | {fmt(dd)} | 1× |",
        f"| (reference: `orjson.loads` of both bodies, nothing else) | {fmt(pz)} | "
        f"{f'{pz / dd:,.0f}×' if dd else '-'} |",
        f"| (reference: `orjson.loads` of both, one pass over the top-level keys comparing each "
        f"element of their arrays once with C-level `!=`: less than any structural comparison "
        f"does) | {fmt(fl)} | "
        f"{f'{fl / dd:,.0f}×' if dd else '-'} |",
        "",
        ("Build: `replay/compare.py` compiled by Cython at install (`setup.py`, "
         "`replay/_native.py`); the pure-Python row runs the same file uncompiled."
         if pu else "Build: pure Python (no compiled `replay/compare.py` found)."),
    ]


def write_compare_only(cmp: dict) -> None:
    """Replace only the comparator table in docs/benchmarks.md, keeping the replay rows of the
    last full run (the comparator takes seconds, the replay peers minutes)."""
    doc = ROOT / "docs" / "benchmarks.md"
    old = doc.read_text()
    head = "Comparing ~"
    if BEGIN not in old or END not in old or head not in old[old.index(BEGIN):]:
        raise SystemExit("docs/benchmarks.md has no replay section yet: run the full bench once")
    i = old.index(head, old.index(BEGIN))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    note = (f"(comparator rows re-measured alone with `--compare-only`, {when}, load average "
            f"{os.getloadavg()[0]:.1f})")
    doc.write_text(old[:i] + "\n".join([*compare_table(cmp), "", note, END])
                   + old[old.index(END) + len(END):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="exchanges replayed")
    ap.add_argument("--mitm-n", type=int, default=5_000, help="flows for mitmdump (slow)")
    ap.add_argument("--seconds", type=int, default=8, help="locust duration")
    ap.add_argument("--wrk-seconds", type=int, default=2,
                    help="wrk duration: about as long as the 50,000-request replay, so that "
                         "both get the same chances of a quiet window on a shared host")
    ap.add_argument("--pairs", type=int, default=50_000, help="comparator pairs")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per client")
    ap.add_argument("--no-peers", action="store_true", help="skip locust and mitmdump")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--compare-only", action="store_true",
                    help="measure only the comparator and replace only its table in "
                         "docs/benchmarks.md (the replay rows of the last full run stay)")
    ap.add_argument("--compare-main-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.compare_main_only:  # the child of pure_compare_rate
        print(bench_compare(a.pairs, 0, main_only=True)["shadowtap"])
        return 0
    if a.compare_only:
        cmp = bench_compare(a.pairs, 300)
        print("compare", cmp, flush=True)
        print("\n".join(compare_table(cmp)))
        if not a.no_write:
            write_compare_only(cmp)
        return 0

    port = free_port()
    srv = subprocess.Popen(pinned(1, [sys.executable, str(Path(__file__).with_name("server.py")),
                                      str(port)]), stdout=subprocess.PIPE, text=True)
    assert srv.stdout is not None
    if srv.stdout.readline().strip() != "ready":
        print("server did not start", file=sys.stderr)
        return 2
    runs: dict[str, list[dict]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-replay-") as td:
            tmp = Path(td)
            exs = make_exchanges(a.n, port)
            jsonl = write("jsonl", tmp / "ex.jsonl", exs)
            flows = write("mitm", tmp / "ex.flows", exs[: a.mitm_n])
            clients: dict[str, Any] = {
                "wrk": lambda: bench_wrk(port, a.wrk_seconds),
                "shadowtap": lambda: bench_shadowtap(port, jsonl, a.n),
            }
            if not a.no_peers:
                clients["locust"] = lambda: bench_locust(port, exs, a.seconds, tmp)
                clients["mitmdump"] = lambda: bench_mitmdump(port, flows, a.mitm_n)
            # Interleaved rounds: on a shared host the load changes from second to second,
            # so every client gets the same chances; each one's best and median are reported.
            for rnd in range(a.rounds):
                for name, fn in clients.items():
                    r = fn()
                    runs.setdefault(name, []).append(r)
                    print(f"round {rnd + 1} {name}", r, flush=True)
    finally:
        srv.terminate()
        srv.wait(10)
    cmp = bench_compare(a.pairs, 300)
    print("compare", cmp, flush=True)

    def summary(name: str) -> dict:
        ok = [r for r in runs.get(name, []) if r.get("rate")]
        if not ok:
            errs = [r.get("error", "no result") for r in runs.get(name, [])]
            return {"error": errs[-1] if errs else "not run"}
        rates = sorted(r["rate"] for r in ok)
        return {"best": rates[-1], "median": statistics.median(rates), "n": len(rates),
                "requests": max(r["requests"] for r in ok)}

    res = {k: summary(k) for k in runs}
    ceiling = res["wrk"].get("best")
    ceiling_med = res["wrk"].get("median")
    rows = []
    labels = {
        "wrk": f"wrk -t1 -c32 -d{a.wrk_seconds}s (ceiling)",
        "shadowtap": f"shadowtap replay --speed max -c 32 ({a.n:,} exchanges)",
        "locust": f"locust FastHttpUser, 1 process, 32 users ({a.seconds} s)",
        "mitmdump": f"mitmdump -C, client_replay_concurrency=-1 ({a.mitm_n:,} flows)",
    }
    for k, label in labels.items():
        r = res.get(k)
        if r is None:
            continue
        if "error" in r:
            rows.append(f"| {label} | - | - | - | - | {r['error']} |")
            continue
        ratio = f"{r['best'] / ceiling:.2f}" if ceiling else "-"
        ratio_med = f"{r['median'] / ceiling_med:.2f}" if ceiling_med else "-"
        rows.append(f"| {label} | {fmt(r['best'])} | {fmt(r['median'])} | {ratio} | "
                    f"{ratio_med} | {r['requests']:,} × {r['n']} |")
    load = os.getloadavg()[0]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = "\n".join([
        BEGIN,
        "## Replay and comparison (`bench/replay/run.py`)",
        "",
        f"One run of {a.rounds} interleaved rounds, {when}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {load:.1f} at the end (a shared host: the "
        "ratios matter more than the absolute figures). Server: `bench/replay/server.py` "
        "(uvloop + httptools, fixed 53-byte JSON answer) pinned to CPU 1; clients pinned to "
        "CPU 0. Rates are measured at the server (requests counted where they arrive), so "
        "every client is timed the same way. Targets: >= 50,000 requests/s and "
        ">= 50,000 compared pairs/s on one core.",
        "",
        "| client | best requests/s | median | best vs wrk's best | median vs wrk's median | "
        "requests × rounds |",
        "|---|---:|---:|---:|---:|---|",
        *rows,
        "",
        *compare_table(cmp),
        END,
    ])
    print(text)
    if not a.no_write:
        doc = ROOT / "docs" / "benchmarks.md"
        old = doc.read_text() if doc.exists() else "# Benchmarks\n"
        if BEGIN in old and END in old:
            new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END):]
        else:
            new = old.rstrip("\n") + "\n\n" + text + "\n"
        doc.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
