"""Benchmark: live shadowing alone (replay to two shadows + three-way compare), per CPU-second,
against the code before the live engine, in the same run; and the engine from 1 to 2 workers.

Why offline: in `bench/live/run.py` the sender, the capture and the shadows share the host
with the workers, so what the workers can do is what is left of two cores. Here the same
exchanges (a synthetic capture, extracted once) are handed straight to the shadowing code, and
the CPU time of the process that replays and compares is what is measured:

- **per CPU-second**: the shadowing code fed N exchanges; compared requests / CPU seconds of
  its process. Two feeds: ``loop``, the ``Shadower`` fed inside its event loop as an engine
  worker feeds it (``appliance run``: ``ShadowSink`` -> ``take``, pausing while ``busy``, as
  for a capture file); ``thread``, ``LiveShadowing`` (a pump thread + hand-off queue, as
  ``appliance run`` used it before the engine, and as the canary uses it now). ``--baseline
  DIR`` runs the ``thread`` driver against another checkout (it has no other).
- **1 -> 2 workers**: the live engine on the capture file (sanitise on, JSONL log, shadowing)
  with ``pipeline.workers`` 1 and 2; compared requests per wall second and per CPU-second of
  the worker processes.

The shadows are two ``bench/replay/server.py`` on loopback. Run:
``.venv/bin/python bench/live/shadowing.py [--connections 1500] [--baseline DIR] [--no-docs]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import update_docs  # noqa: E402
from bench.live.run import start_shadows  # noqa: E402

PY = str(ROOT / ".venv/bin/python")

DRIVER = r'''
import json, resource, sys, time
import os, appliance
# the house as regrouped (appliance/live/), or a checkout from before (--baseline): decided by
# the tree itself (an editable install would answer appliance.live from the other one)
if os.path.isfile(os.path.join(os.path.dirname(appliance.__file__), "live", "shadowing.py")):
    from appliance.live import config
    from appliance.live.pipeline import Handoff, Stats
    from appliance.live.shadowing import LiveShadowing
else:
    from appliance import config
    from appliance.pipeline import Handoff, Stats
    from appliance.shadowing import LiveShadowing
from replay.formats.jsonl import read_jsonl
exs = [e for e in read_jsonl(sys.argv[1]) if e.response is not None
       and e.completeness.complete]
cfg = config.parse({"source": {"file": sys.argv[1]},
                    "pipeline": {"sanitise": {"enabled": False},
                                 "sinks": [{"type": "handoff", "size": len(exs) + 1}]},
                    "metrics": {"listen": None},
                    "shadowing": {"secondary": sys.argv[2], "candidate": sys.argv[3],
                                  "max_in_flight": 2048}})
h = Handoff(len(exs) + 1, Stats())
for e in exs:
    h.process(e)
if sys.argv[4] == "loop":
    import asyncio
    import gc
    from appliance.live.shadowing import Shadower, run_loop

    async def feed():
        # as ProcessingWorker.run: the collector tuned, then every exchange to take()
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, *gc.get_threshold()[1:])
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        sh = await Shadower(cfg.shadowing, lossless=True).start()
        for i in range(0, len(exs), 256):
            while sh.busy:
                await asyncio.sleep(0.002)
            for e in exs[i:i + 256]:
                sh.take(e)
            await asyncio.sleep(0)
        await sh.drain(300)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        st = sh.status()
        await sh.close()
        return st, wall, r0, r1

    st, wall, r0, r1 = run_loop(feed())
    print(json.dumps({"n": len(exs), "compared": st["compared"], "wall": wall,
                      "cpu": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)}))
    sys.exit(0)
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
ls = LiveShadowing(cfg.shadowing, h, registry=False).start()
while ls.status()["compared"] + sum(ls.status()["skipped"].values()) < len(exs):
    time.sleep(0.01)
    if time.perf_counter() - t0 > 300 or getattr(ls, "error", None):
        break
wall = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
st = ls.status()
ls.stop(timeout=30)
print(json.dumps({"n": len(exs), "compared": st["compared"], "wall": wall,
                  "cpu": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)}))
'''


def shadows() -> tuple[list[subprocess.Popen], list[str]]:
    procs, ports = start_shadows()
    return procs, [f"http://127.0.0.1:{p}" for p in ports]


def driver(tree: Path, jsonl: Path, urls: list[str], feed: str = "thread") -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([PY, "-c", DRIVER, str(jsonl), *urls, feed], cwd=tree, env=env,
                         capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def engine(pcap: Path, tmp: Path, urls: list[str], workers: int) -> dict[str, Any]:
    import resource
    import time

    from appliance.live import config
    from appliance.live.engine import LiveEngine

    out = tmp / f"e{workers}-{secrets.token_hex(2)}"
    key = tmp / "key"
    cfg = config.parse({
        "source": {"file": str(pcap)},
        "pipeline": {"workers": workers, "sanitise": {"enabled": True, "key_file": str(key)},
                     "sinks": [{"type": "jsonl", "path": str(out / "ex.jsonl")}]},
        "metrics": {"listen": None},
        "shadowing": {"secondary": urls[0], "candidate": urls[1]},
    })
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    eng = LiveEngine(cfg, source="bench").start()
    while not eng.app.finished:  # type: ignore[union-attr]
        time.sleep(0.02)
    doc = eng.stop() or {}
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["rm", "-rf", str(out)], check=False)
    return {"workers": workers, "compared": doc.get("summary", {}).get("compared", 0),
            "wall": wall, "cpu": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=1500)
    ap.add_argument("--repeat", type=int, default=3, help="best of")
    ap.add_argument("--baseline", type=Path)
    ap.add_argument("--no-docs", action="store_true")
    a = ap.parse_args(argv)
    from replay.synth import generate_pcap

    tmp = Path(tempfile.mkdtemp(prefix="shadowtap-bench-shadowing-", dir="/dev/shm"))
    (tmp / "key").write_bytes(secrets.token_bytes(32))
    os.chmod(tmp / "key", 0o600)
    procs: list[subprocess.Popen] = []
    rows: list[tuple[str, dict[str, Any]]] = []
    scale: list[dict[str, Any]] = []
    try:
        generate_pcap(tmp / "t.pcap", connections=a.connections, concurrency=50, seed=3,
                      truth=[])
        trees = [("now", ROOT)] + ([("before", a.baseline)] if a.baseline else [])
        runs = [("now", ROOT, "loop"), ("now, thread", ROOT, "thread")] + (
            [("before", a.baseline, "thread")] if a.baseline else [])
        for label, tree in trees:  # each tree reads the log its own extract writes
            subprocess.run([PY, "-m", "appliance.cli", "extract", str(tmp / "t.pcap"), "-o",
                            str(tmp / f"t-{label}.jsonl")], cwd=tree, check=True,
                           capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)})
        procs, urls = shadows()
        for _ in range(a.repeat):
            for label, tree, feed in runs:
                r = driver(tree, tmp / f"t-{label.split(',')[0]}.jsonl", urls, feed)
                print(label, r, flush=True)
                rows.append((label, r))
            for w in (1, 2):
                r = engine(tmp / "t.pcap", tmp, urls, w)
                print("engine", r, flush=True)
                scale.append(r)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    def best(label: str) -> dict[str, Any]:
        rs = [r for lab, r in rows if lab == label]
        return max(rs, key=lambda r: r["compared"] / max(1e-9, r["cpu"]))

    lines = [f"Measured {dt.date.today()} on {platform.node() or 'host'} ({os.cpu_count()} "
             f"cores, load average {os.getloadavg()[0]:.1f} at the end) by "
             "`bench/live/shadowing.py`: the exchanges of a synthetic capture "
             f"({a.connections:,} connections) replayed to two `bench/replay/server.py` on "
             f"loopback and compared three ways; best of {a.repeat}.", "",
             "| shadowing code | exchanges | compared | wall s | CPU s | compared per CPU-s |",
             "|---|---|---|---|---|---|"]
    ref = None
    for label in ("now", "now, thread", "before"):
        if not any(lab == label for lab, _ in rows):
            continue
        r = best(label)
        per = r["compared"] / max(1e-9, r["cpu"])
        if label == "before":
            ref = per
        lines.append(f"| {label} | {r['n']:,} | {r['compared']:,} | {r['wall']:.2f} | "
                     f"{r['cpu']:.2f} | {per:,.0f} |")
    if ref:
        now = best("now")
        thr = best("now, thread")
        lines += ["", f"Now / before, compared per CPU-second: "
                  f"**{now['compared'] / max(1e-9, now['cpu']) / ref:.2f}×** (fed as an engine "
                  "worker feeds it); "
                  f"{thr['compared'] / max(1e-9, thr['cpu']) / ref:.2f}× through the thread and "
                  "hand-off queue the canary still uses. *now*: the `Shadower` inside its event "
                  "loop, as `appliance run`'s workers run it; *now, thread* and *before*: "
                  "`LiveShadowing`, a pump thread feeding the loop from a hand-off queue (how "
                  "`appliance run` shadowed before the live engine)."]
    lines += ["", "The live engine on the same capture file (sanitise on, JSONL log, "
              "shadowing; the capture waits for the workers, so every exchange is compared):",
              "", "| workers | compared | wall s | compared per wall-s | worker CPU s | "
              "compared per worker CPU-s |", "|---|---|---|---|---|---|"]
    for w in (1, 2):
        rs = [r for r in scale if r["workers"] == w]
        if not rs:
            continue
        r = min(rs, key=lambda r: r["wall"])
        lines.append(f"| {w} | {r['compared']:,} | {r['wall']:.2f} | "
                     f"{r['compared'] / r['wall']:,.0f} | {r['cpu']:.2f} | "
                     f"{r['compared'] / max(1e-9, r['cpu']):,.0f} |")
    lines += ["", "*Worker CPU* is every child process of the engine (capture process and "
              "workers). On a 2-core host the two shadow servers share the cores with the "
              "workers."]
    section = "\n".join(lines)
    print(section)
    if not a.no_docs:
        update_docs("live-shadowing", "## Live shadowing alone (`bench/live/shadowing.py`)"
                    "\n\n" + section)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
