"""Benchmark: canary rollouts in the lab with the shop's keep-alive traffic, A/A and v2, N runs.

Why (issue 17): a judge is only as good as its false-rollback rate on a canary that is no
different (A/A: production and canary both run the shop's v1) and its catch rate on one that is
(v2: the shop's seeded regressions, ``examples/shop/CHANGES.md``), on real traffic: the shop's
own driver (``examples/shop/traffic.py``: 6 virtual users, one keep-alive connection each, as
fast as answered, about 1,000 requests/s here) through the gateway's split, judged from the
mirror port by ``shadowtap canary run`` with the default policy.

What is measured, per kind (``aa``, ``v2``), over ``--runs`` runs (default 20):

* A/A promoted rate (the false-rollback rate is the rest) and why the others rolled back;
* v2 rolled-back rate, and in how many the first reason names an endpoint and a metric
  (``latency: GET /orders/{id}: ...``, ``errors: GET /users/{id}/orders: ...``);
* time to weight 0: from the step that let v2's first answers through (the canary's first
  weight) to the rollback decision that set the weight to 0 (the report's step ``seconds``;
  at 1,000 requests/s the canary answers within milliseconds of its weight, so this bounds
  "first bad answers to weight 0" from above);
* the failed client requests the driver saw (keep-alive under weight changes).

Run as root: ``.venv/bin/python bench/canary/run.py [--runs 20] [--step-seconds 30]
[--steps 5,25,50,100] [--split haproxy|nft] [--canary-args "..."] [--no-docs]``. It builds its own lab (prefix
``kjb<hex>-``) and tears it down; it rewrites only its section of docs/benchmarks.md.
``--canary-args`` passes options to ``canary run`` (e.g. the split mode).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.common import update_docs  # noqa: E402

SHOP = ROOT / "examples" / "shop"
SHADOWTAP = str(Path(sys.executable).parent / "shadowtap")


def _ns_exec(ns: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], start_new_session=True, **kw)


def _stop(p: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, wait: float = 15) -> None:
    if p is None or p.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)
    try:
        p.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)


def _wait_http(ns: str, url: str, timeout: float = 20.0) -> None:
    from netconfig import netns as nsmod

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), nsmod.netns_context(ns), \
                urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} in {ns} did not answer in {timeout:.0f} s")


def one_run(spec: Any, work: Path, kind: str, i: int, args: argparse.Namespace
            ) -> dict[str, Any]:
    from netconfig import haproxy as split  # either split: the proxy, or nft without it

    pre = spec.prefix
    gw, vip = pre + "gateway", spec.canary.vip
    d = work / f"{kind}-{i}"
    d.mkdir(parents=True)
    procs: list[subprocess.Popen[Any]] = []
    traffic = None
    try:
        for ns, build in ((pre + "prod", "v1"), (pre + "canary", "v1" if kind == "aa" else "v2")):
            log = (d / f"{ns}.log").open("wb")
            procs.append(_ns_exec(ns, [sys.executable, "app.py", "--host", "0.0.0.0", "--port",
                                       "80", "--data-dir", str(d / f"data-{ns}")],
                                  cwd=SHOP / build, stdout=log, stderr=subprocess.STDOUT))
        _wait_http(pre + "prod", "http://127.0.0.1/healthz")
        _wait_http(pre + "canary", "http://127.0.0.1/healthz")
        split.set_canary(gw, 0)
        tout = (d / "traffic.json").open("wb")
        traffic = _ns_exec(pre + "client", [sys.executable, str(SHOP / "traffic.py"),
                                            f"http://{vip}", "--users", str(args.users),
                                            "--duration", "3600", "--seed", str(i + 1),
                                            "--json"],
                           stdout=tout, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        report = d / "canary.json"
        argv = [SHADOWTAP, "canary", "run", "--netns", gw, "--steps", args.steps,
                "--step-seconds", str(args.step_seconds), "--report", str(report),
                "--history", str(work / "history.sqlite"), *shlex.split(args.canary_args)]
        t0 = time.monotonic()
        p = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        wall = time.monotonic() - t0
    finally:
        if traffic is not None:
            # its report covers every request of the run (200,000 in a 2-minute A/A): give
            # it time to write it, or the failed-request count is lost with a SIGKILL
            _stop(traffic, signal.SIGINT, wait=120)
        for pr in procs:
            _stop(pr)
        with contextlib.suppress(Exception):
            split.set_canary(gw, 0)
    doc: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(report.read_text())
    seen: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        seen = json.loads((d / "traffic.json").read_text())
    hist = doc.get("history") or []
    last = hist[-1] if hist else {}
    reasons = doc.get("reasons") or []
    first = reasons[0] if reasons else ""
    return {"kind": kind, "run": i, "exit": p.returncode, "state": doc.get("state"),
            "steps": [h.get("weight") for h in hist], "reason": first,
            "names_endpoint_and_metric": names_endpoint_and_metric(first),
            # only a rollback for what v2 does wrong (not for too little traffic)
            "rollback_seconds": last.get("seconds") if doc.get("state") == "rolled_back"
            and len(hist) == 1 and first.split(":", 1)[0] in ("errors", "latency",
                                                               "divergence") else None,
            "rollback_step": len(hist) if doc.get("state") == "rolled_back" else None,
            "wall_seconds": round(wall, 1),
            "client_requests": seen.get("requests"),
            # transport failures (refused, reset, timed out): not the answers v2 gets wrong
            "client_failed": (sum((seen.get("transport_errors") or {}).values())
                              if seen else None),
            "stderr_tail": p.stderr[-400:] if p.returncode not in (0, 1) else ""}


def names_endpoint_and_metric(reason: str) -> bool:
    """Whether a rollback's first reason says which metric and where: ``errors: GET /x: ...``,
    ``latency: GET /x: ...``, a total ``...; most of it on GET /x (...)``, or a divergence
    (which names its field and endpoint)."""
    metric = reason.split(":", 1)[0]
    if metric == "divergence":
        return True
    if metric not in ("errors", "latency"):
        return False
    where = reason.split(":", 2)[1] if reason.count(":") >= 2 else ""
    return " /" in where or "; most of it on " in reason


def _q(v: list[float], q: float) -> float | None:
    if not v:
        return None
    s = sorted(v)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def section(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    aa = [r for r in rows if r["kind"] == "aa"]
    v2 = [r for r in rows if r["kind"] == "v2"]
    aa_ok = sum(r["state"] == "promoted" for r in aa)
    v2_rb = sum(r["state"] == "rolled_back" for r in v2)
    v2_named = sum(r["state"] == "rolled_back" and names_endpoint_and_metric(r["reason"])
                   for r in v2)
    v2_found = sum(r["state"] == "rolled_back" and r["reason"].split(":", 1)[0]
                   in ("errors", "latency", "divergence") for r in v2)
    tt = [r["rollback_seconds"] for r in v2 if r["rollback_seconds"] is not None]
    fails = [r["client_failed"] for r in rows if isinstance(r.get("client_failed"), int)]
    why_aa: dict[str, int] = {}
    for r in aa:
        if r["state"] != "promoted":
            k = (r["reason"] or f"exit {r['exit']}")[:90]
            why_aa[k] = why_aa.get(k, 0) + 1
    why_v2: dict[str, int] = {}
    for r in v2:
        k = (r["reason"] or f"exit {r['exit']}").split(" (", 1)[0][:70]
        why_v2[k] = why_v2.get(k, 0) + 1
    cpu = platform.processor() or platform.machine()
    lines = [
        "## Canary rollouts, A/A and v2 (`bench/canary/run.py`)",
        "",
        f"{dt.date.today()}, {os.cpu_count()} CPUs ({cpu}), the namespace lab, the shop's "
        f"traffic driver ({args.users} keep-alive users), the {args.split} split, "
        f"`shadowtap canary run` with the "
        f"default judge, steps {args.steps} % x {args.step_seconds:g} s"
        + (f", `{args.canary_args}`" if args.canary_args else "")
        + f"; {len(aa)} + {len(v2)} runs in {seconds / 60:.0f} min.",
        "",
        "| | runs | result | |",
        "|---|---:|---|---|",
        f"| A/A (v1 vs v1) | {len(aa)} | **promoted {aa_ok} / {len(aa)}** | false rollbacks "
        f"{len(aa) - aa_ok} ({(len(aa) - aa_ok) / max(1, len(aa)):.0%}) |",
        f"| v2 (seeded regressions) | {len(v2)} | **rolled back {v2_rb} / {len(v2)}** | "
        f"for a regression found (errors, latency, divergence): {v2_found}; naming the "
        f"endpoint and metric: {v2_named} |",
    ]
    if tt:
        lines.append(f"| v2: canary's first weight to weight 0 | {len(tt)} | median "
                     f"{statistics.median(tt):.1f} s | p90 {_q(tt, 0.9):.1f} s, max "
                     f"{max(tt):.1f} s (judged every 0.5 s) |")
    if fails:
        lines.append(f"| failed client requests (all runs) | {len(fails)} | {sum(fails)} | |")
    lines.append("")
    if why_aa:
        lines.append("A/A rollbacks: " + "; ".join(f"{n}x `{k}`" for k, n in why_aa.items()))
    lines.append("v2 first reasons: " + "; ".join(f"{n}x `{k}`" for k, n in why_v2.items()))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="runs per kind (default 20)")
    ap.add_argument("--kinds", default="aa,v2")
    ap.add_argument("--steps", default="5,25,50,100")
    ap.add_argument("--step-seconds", type=float, default=30.0)
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--canary-args", default="", help="more options for canary run")
    ap.add_argument("--split", choices=("haproxy", "nft"), default=None,
                    help="the lab's canary split (default: haproxy, as lab up gives)")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--json", type=Path, help="also write every run's row here")
    ap.add_argument("--rows", type=Path, help="no runs: the section from rows --json wrote")
    ap.add_argument("--seconds", type=float, default=0.0, help="with --rows: the runs' time")
    args = ap.parse_args()
    if args.rows is not None:
        text = section(json.loads(args.rows.read_text()), args, args.seconds)
        print(text)
        if not args.no_docs:
            update_docs("canary", text)
        return 0
    if os.geteuid() != 0:
        print("error: run as root (namespaces, nftables, capture)", file=sys.stderr)
        return 2
    # Started in the background (nohup, '&'), SIGINT comes ignored, and children inherit an
    # ignored signal: the traffic driver would never write its report when told to stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from netconfig import lab

    spec = lab.load_spec(None)
    spec.prefix = f"kjb{secrets.token_hex(1)}-"
    # what 'shadowtap lab up' gives the built-in lab (the API's spec default is nft)
    spec.canary.split = args.split or "haproxy"
    args.split = spec.canary.split
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp:
        os.environ["SHADOWTAP_STATE_DIR"] = str(Path(tmp) / "state")
        os.environ["SHADOWTAP_HOME"] = str(Path(tmp) / "home")  # state files, control token
        try:
            lab.up(spec)
            for i in range(args.runs):
                for kind in args.kinds.split(","):
                    r = one_run(spec, Path(tmp), kind, i, args)
                    rows.append(r)
                    print(f"{kind} run {i + 1}/{args.runs}: {r['state']} (exit {r['exit']}, "
                          f"steps {r['steps']}, {r['wall_seconds']} s) {r['reason'][:100]}"
                          f"{r['stderr_tail']}", flush=True)
        finally:
            with contextlib.suppress(Exception):
                lab.down(spec.prefix)
    text = section(rows, args, time.monotonic() - t0)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not args.no_docs:
        update_docs("canary", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
