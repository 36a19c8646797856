"""Benchmark: scale-out over Redis Streams (issue 14), against the broker-free engine, one run.

Why: where one host is not enough, capture nodes publish sanitised exchanges to Redis Streams
(Debian's ``redis-server``) and ``shadowtap worker`` processes on any host consume them. What a
user needs to know before deploying it: how fast a node publishes (sanitise on), how fast
workers replay and compare from the bus, how that moves from 1 to 2 of each, what the broker
costs against the embedded path, and that 2 workers give the verdict 1 gives.

What runs (all real: ``redis-server`` on a unix socket, two ``bench/replay/server.py``
shadows on loopback, the daemon's own engine and the ``shadowtap worker`` CLI):

- **publish**: 1, then 2 capture nodes at once, each the live engine reading its own synthetic
  capture file (sanitise on, JSONL log, ``bus:`` section); published exchanges per wall second
  and per CPU-second of the nodes.
- **consume**: the entries of both nodes, read by 1 worker (consumer group ``one``), then by 2
  workers (group ``two``, ``--index i --of 2``) and merged (``--report-only``): compared per
  wall second (the ``--until-idle`` wait taken off) and per worker CPU-second; the two
  verdicts' regressions and counts must be equal.
- **embedded**: the broker-free engine (``pipeline.workers`` 1, sanitise on, shadowing) on the
  same two files, one after the other: what the same host does without a broker.

Run: ``.venv/bin/python bench/live/bus.py [--connections 1500] [--no-docs]`` (needs
``redis-server``: ``scripts/setup.sh`` installs it). Rewrites only its section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import update_docs  # noqa: E402
from bench.live.run import start_shadows  # noqa: E402

PY = sys.executable
IDLE = 1.0
"""``--until-idle`` of the workers: taken off their wall time."""

NODE = r'''
import json, sys, time
from appliance.live import config
from appliance.live.engine import LiveEngine
pcap, out, key, url = sys.argv[1:5]
cfg = config.parse({
    "source": {"file": pcap},
    "pipeline": {"workers": 1, "sanitise": {"enabled": True, "key_file": key},
                 "sinks": [{"type": "jsonl", "path": out}]},
    "metrics": {"listen": None},
    "bus": {"url": url, "shards": 4},
})
eng = LiveEngine(cfg, source="bench").start()
while not eng.app.finished:
    time.sleep(0.02)
eng.stop()
print(json.dumps({"errors": len(eng.errors)}))
'''


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def start_redis(d: Path) -> tuple[subprocess.Popen, str]:
    sock = d / "redis.sock"
    p = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock),
                          "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                          "--dir", str(d)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline or p.poll() is not None:
            raise SystemExit("redis-server did not start (is it installed? scripts/setup.sh)")
        time.sleep(0.05)
    return p, f"unix://{sock}"


def entries(url: str) -> int:
    import redis

    r = redis.Redis.from_url(url)
    return sum(r.xlen(f"shadowtap:{s}") for s in range(4))


def publish(tmp: Path, url: str, pcaps: list[Path]) -> dict[str, Any]:
    import redis

    redis.Redis.from_url(url).flushall()
    c0, t0 = _cpu_children(), time.perf_counter()
    procs = [subprocess.Popen([PY, "-c", NODE, str(p), str(tmp / f"pub{i}.jsonl"),
                               str(tmp / "key"), url], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i, p in enumerate(pcaps)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"a capture node failed: {err.strip()[-400:]}")
    wall, cpu = time.perf_counter() - t0, _cpu_children() - c0
    return {"nodes": len(pcaps), "published": entries(url), "wall": wall, "cpu": cpu}


def worker_argv(url: str, urls: list[str], *args: str) -> list[str]:
    return [PY, "-m", "appliance.cli", "worker", "--redis", url, "--secondary", urls[0],
            "--candidate", urls[1], "--verdict-every", "1", *args]


def consume(url: str, urls: list[str], n: int, tmp: Path) -> dict[str, Any]:
    group = f"w{n}"
    report = tmp / f"{group}.json"
    c0, t0 = _cpu_children(), time.perf_counter()
    procs = [subprocess.Popen(worker_argv(url, urls, "--group", group, "--index", str(i),
                                          "--of", str(n), "--until-idle", str(IDLE)),
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for i in range(n)]
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"a worker failed: {err.strip()[-400:]}")
    wall, cpu = time.perf_counter() - t0 - IDLE, _cpu_children() - c0
    r = subprocess.run(worker_argv(url, urls, "--group", group, "--report-only", "--report",
                                   str(report)), cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"merging the workers' reports failed: {r.stderr.strip()[-400:]}")
    doc = json.loads(report.read_text())
    return {"workers": n, "consumed": doc["bus"]["consumed"],
            "compared": doc["summary"]["compared"], "wall": wall, "cpu": cpu,
            "essence": essence(doc)}


def embedded(pcaps: list[Path], tmp: Path, urls: list[str]) -> dict[str, Any]:
    from appliance.live import config
    from appliance.live.engine import LiveEngine

    compared, c0, t0 = 0, _cpu_children(), time.perf_counter()
    for i, pcap in enumerate(pcaps):
        cfg = config.parse({
            "source": {"file": str(pcap)},
            "pipeline": {"workers": 1, "sanitise": {"enabled": True, "key_file": str(tmp / "key")},
                         "sinks": [{"type": "jsonl", "path": str(tmp / f"emb{i}.jsonl")}]},
            "metrics": {"listen": None},
            "shadowing": {"secondary": urls[0], "candidate": urls[1]},
        })
        eng = LiveEngine(cfg, source="bench").start()
        while not eng.app.finished:  # type: ignore[union-attr]
            time.sleep(0.02)
        doc = eng.stop() or {}
        compared += doc.get("summary", {}).get("compared", 0)
    return {"compared": compared, "wall": time.perf_counter() - t0,
            "cpu": _cpu_children() - c0}


def essence(doc: dict[str, Any]) -> dict[str, Any]:
    """What must be equal between 1 and 2 workers: counts and findings, not examples."""
    keep = ("endpoint", "field", "kind", "verdict", "candidate", "secondary", "compared")
    return {"summary": doc["summary"],
            "regressions": sorted(json.dumps({k: f.get(k) for k in keep}, sort_keys=True)
                                  for f in doc["regressions"]),
            "noise": len(doc["noise"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=1500, help="per capture node")
    ap.add_argument("--no-docs", action="store_true")
    a = ap.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("bench/live/bus.py: redis-server is not installed; run scripts/setup.sh",
              file=sys.stderr)
        return 2
    from replay.synth import generate_pcap

    tmp = Path(tempfile.mkdtemp(prefix="shadowtap-bench-bus-", dir="/dev/shm"))
    (tmp / "key").write_bytes(secrets.token_bytes(32))
    os.chmod(tmp / "key", 0o600)
    procs: list[subprocess.Popen] = []
    t_start = time.perf_counter()
    try:
        pcaps = []
        for seed in (5, 6):
            p = tmp / f"node{seed}.pcap"
            generate_pcap(p, connections=a.connections, concurrency=50, seed=seed, truth=[])
            pcaps.append(p)
        rp, url = start_redis(tmp)
        procs.append(rp)
        sp, ports = start_shadows()
        procs += sp
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        pubs = [publish(tmp, url, pcaps[:1]), publish(tmp, url, pcaps)]
        for r in pubs:
            print("publish", r, flush=True)
        cons = [consume(url, urls, 1, tmp), consume(url, urls, 2, tmp)]
        for r in cons:
            print("consume", {k: v for k, v in r.items() if k != "essence"}, flush=True)
        emb = embedded(pcaps, tmp, urls)
        print("embedded", emb, flush=True)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM) if p.pid == os.getpgid(p.pid) else p.terminate()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    same = cons[0]["essence"] == cons[1]["essence"]
    minutes = (time.perf_counter() - t_start) / 60
    lines = [
        f"Measured {dt.date.today()} on {platform.node() or 'host'} ({os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end) by `bench/live/bus.py` in "
        f"{minutes:.1f} min: `redis-server` on a unix socket, two synthetic captures "
        f"({a.connections:,} connections each), two `bench/replay/server.py` shadows on "
        "loopback. Publishers are capture nodes (the live engine, sanitise on, JSONL log, "
        "`bus:`); workers are `shadowtap worker` (replay to both shadows, three-way compare).",
        "",
        "| stage | processes | exchanges | wall s | per wall-s | CPU s | per CPU-s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in pubs:
        lines.append(f"| publish (sanitised) | {r['nodes']} node(s) | {r['published']:,} | "
                     f"{r['wall']:.2f} | {r['published'] / r['wall']:,.0f} | {r['cpu']:.2f} | "
                     f"{r['published'] / max(1e-9, r['cpu']):,.0f} |")
    for r in cons:
        lines.append(f"| consume + compare | {r['workers']} worker(s) | {r['compared']:,} of "
                     f"{r['consumed']:,} | {r['wall']:.2f} | {r['compared'] / r['wall']:,.0f} | "
                     f"{r['cpu']:.2f} | {r['compared'] / max(1e-9, r['cpu']):,.0f} |")
    lines.append(f"| embedded, no broker (sanitise + compare) | 1 worker | "
                 f"{emb['compared']:,} | {emb['wall']:.2f} | {emb['compared'] / emb['wall']:,.0f}"
                 f" | {emb['cpu']:.2f} | {emb['compared'] / max(1e-9, emb['cpu']):,.0f} |")
    lines += ["", f"Verdict of 2 workers = verdict of 1 worker (counts, regressions, noise): "
              f"**{'yes' if same else 'NO'}**. *Per wall-s* of the workers leaves out their "
              f"`--until-idle {IDLE:g}` wait. *CPU s*: every process of the stage (nodes: "
              "capture and sanitising worker; workers: replay and compare), not the broker or "
              "the shadows. On 2 cores, 2 workers share them with the two shadows."]
    section = "## Scale-out over Redis Streams (`bench/live/bus.py`)\n\n" + "\n".join(lines)
    print(section)
    if not a.no_docs:
        update_docs("live-bus", section)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
