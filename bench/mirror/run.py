"""Benchmark: what the kernel mirror costs production, measured with wrk through the gateway.

Why (issue 3): the house rule is that production only ever pays the kernel's copy; the target
is at least 0.95 of the unmirrored rate. This script measures it in one run, interleaved so
drift (thermal, noisy neighbours) hits both sides alike:

1. builds the default lab under a unique prefix (its own state dir; torn down at the end),
   with offloads off (the lab default) and/or on;
2. starts nginx (one worker, 180-byte responses, no access log) on the VIP in ``prod``;
3. alternates mirror OFF / ON (the lab's clsact+u32+mirred copies of prod0 and canary0 to the
   capture veth), ``--rounds`` times, each time running ``wrk`` from ``client`` with keep-alive
   connections and with ``Connection: close`` (a new TCP connection per request);
4. prints median requests/s per mode, the on/off ratio (median of the paired ratios, with
   their range), and CPU microseconds per request of wrk + nginx (where the kernel charges the
   forwarding and the copy: a steadier measure than requests/s on a shared host), and
   rewrites its own section of ``docs/benchmarks.md`` (between ``<!-- bench:mirror -->`` and
   ``<!-- /bench:mirror -->``).

Nobody reads the capture port during the run: this isolates the cost of the copy itself
(on a 2-core host a reader would compete with wrk and nginx for CPU and measure that instead).

Run as root: ``.venv/bin/python bench/mirror/run.py [--rounds 10] [--duration 2]
[--offloads off|on|both] [--no-docs]`` (default both: the lab's offloads-off links, for
wire-sized captured frames, and offloads on, the cheaper production setting). Needs ``wrk`` and ``nginx`` (Debian: wrk, nginx-light).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.common import DOCS, update_docs  # noqa: E402
from netconfig import lab, mirror  # noqa: E402
from netconfig.ops import LiveRunner  # noqa: E402

VIP = "10.77.100.10"
NGINX_CONF = """
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen {vip}:80 reuseport backlog=4096;
        location / {{ return 200 "{body}"; }}
    }}
}}
"""


def proc_cpu(pids: list[int]) -> float:
    """User+system CPU seconds used so far by ``pids`` (softirq work done on their behalf in
    syscall context, such as forwarding and the mirror's clone, is charged here too)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def nginx_pids(master: int) -> list[int]:
    """The nginx master and its workers."""
    pids = [master]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    pids.append(int(d.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return pids


def wrk(ns: str, duration: int, close: bool, conns: int, server: list[int]) -> tuple[float, float]:
    """(requests/s, CPU microseconds per request of wrk + nginx) from one wrk run in ``ns``."""
    argv = ["ip", "netns", "exec", ns, "wrk", "-t1", f"-c{conns}", f"-d{duration}s"]
    if close:
        argv += ["-H", "Connection: close"]
    before = proc_cpu(server)
    p = subprocess.Popen([*argv, f"http://{VIP}/"], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{out}")
    cpu = usage.ru_utime + usage.ru_stime + proc_cpu(server) - before
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if not m or not n:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(m.group(1)), 1e6 * cpu / max(int(n.group(1)), 1)


def set_mirrors(spec: lab.LabSpec, on: bool) -> None:
    with LiveRunner() as live:
        for m in spec.mirror_list():
            (mirror.install if on else mirror.uninstall)(live, m)



# offloads, workload, req/s off, req/s on, ratio, lo, hi, cpu us/req off, on, cpu ratio
Row = tuple[str, str, float, float, float, float, float, float, float, float]


def measure(args: Any, offloads: bool) -> list[Row]:
    """One lab (offloads on or off on its links), interleaved rounds; rows per workload."""
    prefix = f"stb{secrets.token_hex(2)}-"
    tmp = Path(tempfile.mkdtemp(prefix="shadowtap-bench-"))
    os.environ["SHADOWTAP_STATE_DIR"] = str(tmp / "state")
    d = yaml.safe_load(lab.DEFAULT_SPEC_YAML)
    d["prefix"] = prefix
    for ln in d["links"]:
        ln["offloads"] = offloads
    spec = lab.parse_spec(d)
    label = "on" if offloads else "off"
    nginx: subprocess.Popen[bytes] | None = None
    results: dict[tuple[str, bool], list[float]] = {}
    cpus: dict[tuple[str, bool], list[float]] = {}
    try:
        lab.up(spec)
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(d=tmp, vip=VIP, body="x" * 180))
        nginx = subprocess.Popen(["ip", "netns", "exec", spec.ns("prod"), "nginx", "-c",
                                  str(tmp / "nginx.conf"), "-g", "daemon off;"])
        time.sleep(0.5)
        server = nginx_pids(nginx.pid)
        client = spec.ns("client")
        wrk(client, 1, False, args.connections, server)  # warm-up
        for r in range(args.rounds):
            for name, close in (("keep-alive", False), ("new connections", True)):
                # adjacent off/on pairs, order alternating, so drift hits both alike
                for on in (False, True) if r % 2 == 0 else (True, False):
                    set_mirrors(spec, on)
                    rate, cpu = wrk(client, args.duration, close, args.connections, server)
                    results.setdefault((name, on), []).append(rate)
                    cpus.setdefault((name, on), []).append(cpu)
                    print(f"offloads {label:3s} round {r + 1} {name:16s} mirror "
                          f"{'on ' if on else 'off'} {rate:10.0f} req/s {cpu:7.1f} us/req",
                          flush=True)
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(5)
        lab.down(prefix)
        shutil.rmtree(tmp, ignore_errors=True)
    rows: list[Row] = []
    for name in ("keep-alive", "new connections"):
        offs, ons = results[(name, False)], results[(name, True)]
        # the ratio is the median of per-round paired ratios: robust to load that changes
        # between rounds (other jobs on a shared host), which a ratio of medians is not
        ratios = [b / a for a, b in zip(offs, ons, strict=True)]
        c_off, c_on = statistics.median(cpus[(name, False)]), statistics.median(cpus[(name, True)])
        rows.append((label, name, statistics.median(offs), statistics.median(ons),
                     statistics.median(ratios), min(ratios), max(ratios), c_off, c_on,
                     c_off / c_on))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--duration", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--offloads", choices=["off", "on", "both"], default="both",
                    help="off = the lab default (wire-sized frames in the capture)")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("error: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            print(f"error: {tool} not found (Debian: apt-get install wrk nginx-light)",
                  file=sys.stderr)
            return 2
    rows: list[Row] = []
    for offloads in {"off": [False], "on": [True], "both": [False, True]}[args.offloads]:
        rows += measure(args, offloads)
    load = os.getloadavg()[0]
    print()
    print(f"{'offloads':9s} {'workload':16s} {'req/s off':>10s} {'req/s on':>9s} "
          f"{'on/off':>7s} {'paired range':>12s} {'us/req off':>10s} {'us/req on':>9s} "
          f"{'off/on':>7s}")
    for label, name, off, on, ratio, lo, hi, c_off, c_on, c_ratio in rows:
        print(f"{label:9s} {name:16s} {off:10.0f} {on:9.0f} {ratio:7.3f} {lo:5.2f}-{hi:<6.2f} "
              f"{c_off:10.1f} {c_on:9.1f} {c_ratio:7.3f}")
    print(f"load average at the end: {load:.1f}")
    if not args.no_docs:
        update_docs("mirror", render(rows, args, load))
        print(f"\nupdated {DOCS.relative_to(ROOT)}")
    return 0


def render(rows: list[Row], args: Any, load: float) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Mirror cost to production (`bench/mirror/run.py`)",
        "",
        f"wrk (1 thread, {args.connections} connections) in `client` -> gateway -> nginx "
        f"(1 worker, 180-byte body) on the VIP in `prod`; the gateway's prod0/canary0 links "
        f"mirrored both ways with clsact + u32 + mirred to the capture veth (nobody reading). "
        f"{args.rounds} interleaved off/on pairs of {args.duration} s per row; on/off is the "
        f"median of the paired ratios, with their range. Offloads off is the lab default. "
        f"{when}, {platform.machine()}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
        f"load average {load:.1f} at the end (a shared host: read the range). "
        "Target: mirror on >= 0.95 x mirror off.",
        "",
        "CPU per request is wrk's and nginx's user+system time (where the kernel charges the "
        "forwarding and the mirror's copy) divided by requests: less sensitive to other load "
        "than requests/s; off/on is the rate ratio a CPU-bound path would see.",
        "",
        "| lab offloads | workload | req/s off | req/s on | on / off | paired range "
        "| CPU µs/req off | CPU µs/req on | off / on |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for label, name, off, on, ratio, lo, hi, c_off, c_on, c_ratio in rows:
        lines.append(f"| {label} | {name} | {off:,.0f} | {on:,.0f} | {ratio:.3f} | "
                     f"{lo:.2f}-{hi:.2f} | {c_off:.1f} | {c_on:.1f} | {c_ratio:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
