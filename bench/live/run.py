"""Benchmark: the whole live path (capture -> sanitise -> log -> replay to two shadows -> three-way
compare) against the capture alone, as ratios to R measured in the same run.

Method (as in ``bench/capture``): a synthetic HTTP/1.1 capture (``replay.synth``) is sent by
``tcpreplay`` (pinned to CPU 0) into a veth at fixed rates; the real daemon
(``shadowtap appliance run``) captures the other end in its own namespace. The shadows are two
``bench/replay/server.py`` (uvloop + httptools, ~100k requests/s each) on the namespace's
loopback, or nothing at all ("dead": connection refused).

1. R: the highest rate at which the capture alone (sanitise off, JSONL only: the capture
   benchmark's configuration) is lossless, from ``--rates``.
2. At R and at fractions of it, the configuration users run: sanitise on (default policy, keyed
   pseudonyms), JSONL log, live shadowing to both shadows; and with both shadows dead.
   A trial reports kernel drops, exchanges extracted out of those sent, exchanges logged,
   shed on purpose, compared, compare lag p99 and CPU.
3. ``--baseline DIR``: the same rows for another checkout (e.g. a ``git worktree`` of the
   commit before the live engine, built in place) in the same run, for "today's" figures.

Run as root: ``.venv/bin/python bench/live/run.py [--rates 5000,10000,...] [--no-docs]``.
Rewrites only its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.common import free_port, tree_cpu, update_docs, wait_healthy  # noqa: E402
from netconfig import netns as nsmod  # noqa: E402

PY = str(ROOT / ".venv/bin/python")
SENDER_CPU = "0"
FRAMES_PER_CONN = 51  # replay.synth's average: sizes the capture to the trial's length


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def send(ns: str, pcap: Path, pps: float) -> float:
    """tcpreplay at ``pps`` (pinned to CPU 0); returns the rate achieved.

    Paced by ``nanosleep`` in bursts about 0.1 ms apart (``--timer=nano``, ``--pps-multi``),
    not by tcpreplay's default busy-wait: the busy-wait holds CPU 0 for the whole send (0.77
    CPU-s for 0.77 s at 100k packets/s, against 0.37 sleeping, measured), CPU that a mirror
    port's traffic, arriving from another host, never takes from the appliance. Every row,
    R included, is sent the same way."""
    pin = ["taskset", "-c", SENDER_CPU] if (os.cpu_count() or 1) > 1 else []
    pace = [f"--pps={pps:.0f}", "--timer=nano", f"--pps-multi={max(1, round(pps / 10_000))}"]
    out = subprocess.run(["ip", "netns", "exec", ns, *pin, "tcpreplay", "-i", "tapm", *pace,
                          str(pcap)], capture_output=True, text=True, check=True).stdout
    m = re.search(r"Actual: (\d+) packets .* sent in ([\d.]+) seconds", out)
    if m is None:
        raise RuntimeError(f"tcpreplay said: {out[-300:]}")
    return int(m.group(1)) / max(1e-6, float(m.group(2)))


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                continue
            key = s.name
            if s.name == "shadowtap_process_cpu_seconds_total":
                key += ":p" if str(s.labels.get("worker", "")).startswith("p") else ":c"
            elif s.name == "shadowtap_sink_exchanges_total":
                key += ":" + s.labels.get("sink", "").split(":")[0]
            out[key] = out.get(key, 0.0) + s.value
    return out


def start_shadows() -> tuple[list[subprocess.Popen], list[int]]:
    procs, ports = [], []
    for _ in range(2):
        port = free_port()
        # The daemon replays from its own (the host's) namespace: the shadows listen on its
        # loopback. (Only the capture runs in the appliance namespace.)
        p = subprocess.Popen([PY, str(ROOT / "bench/replay/server.py"), str(port)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert p.stdout is not None
        p.stdout.readline()  # "ready"
        procs.append(p)
        ports.append(port)
    return procs, ports


def trial(tree: Path, ns_s: str, ns_a: str, pcap: Path, pps: float, expected: int, tmp: Path,
          *, sanitise: bool, shadows: list[int] | None, workers: Any = "auto") -> dict[str, Any]:
    """One run of the daemon from checkout ``tree`` at ``pps``."""
    port = free_port()
    out = tmp / f"out-{secrets.token_hex(3)}"
    key = tmp / "key"
    pipe: dict[str, Any] = {"sanitise": {"enabled": sanitise, **({"key_file": str(key)}
                                                                  if sanitise else {})},
                            "sinks": [{"type": "jsonl", "path": str(out / "ex.jsonl")}]}
    if workers != "auto" and (tree / "appliance/live").exists():
        pipe["workers"] = workers
    cfg: dict[str, Any] = {"source": {"interface": "cap0", "netns": ns_a},
                           "pipeline": pipe,
                           "metrics": {"listen": f"127.0.0.1:{port}"}}
    if shadows is not None:
        cfg["shadowing"] = {"secondary": f"http://127.0.0.1:{shadows[0]}",
                            "candidate": f"http://127.0.0.1:{shadows[1]}",
                            "report": str(out / "report.json"),
                            "drain_timeout": "60s"}
    cfgp = tmp / f"live-{secrets.token_hex(3)}.yaml"
    cfgp.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with (tmp / "daemon.log").open("ab") as logf:
        proc = subprocess.Popen([PY, "-m", "appliance.cli", "appliance", "run", "--config",
                                 str(cfgp), "--log-level",
                                 os.environ.get("BENCH_LOG_LEVEL", "warning")],
                                cwd=tree, env=env, stderr=logf, start_new_session=True)
    m: dict[str, float] = {}
    try:
        wait_healthy(port)
        time.sleep(0.5)
        cpu0 = tree_cpu(proc.pid)
        m0 = scrape(port)
        t0 = time.monotonic()
        achieved = send(ns_s, pcap, pps)
        sent_s = time.monotonic() - t0
        last, stable = -1.0, 0
        for _ in range(300):  # until the counters stop moving (scrapes cost the daemon too)
            time.sleep(0.5)
            m = scrape(port)
            cur = (m.get("shadowtap_capture_packets_total", 0)
                   + m.get("shadowtap_exchanges_emitted_total", 0)
                   + m.get("shadowtap_compared_requests_total", 0)
                   + m.get("shadowtap_sink_exchanges_total:jsonl", 0))
            stable = stable + 1 if cur == last else 0
            last = cur
            if stable >= 4:
                break
        settle = time.monotonic() - t0 - 4 * 0.5
        cpu = tree_cpu(proc.pid) - cpu0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(120)
    rep: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        rep = json.loads((out / "report.json").read_text())
    subprocess.run(["rm", "-rf", str(out)], check=False)
    logged = int(m.get("shadowtap_sink_exchanges_total:jsonl", 0))
    ccpu = m.get("shadowtap_process_cpu_seconds_total:c", 0) - m0.get(
        "shadowtap_process_cpu_seconds_total:c", 0)
    wcpu = m.get("shadowtap_process_cpu_seconds_total:p", 0) - m0.get(
        "shadowtap_process_cpu_seconds_total:p", 0)
    return {
        "achieved": achieved, "expected": expected,
        "kernel_drops": int(m.get("shadowtap_capture_kernel_drops_total", 0)),
        "extracted": int(m.get("shadowtap_exchanges_emitted_total", 0)),
        "logged": logged,
        "shed": int(m.get("shadowtap_shed_exchanges_total", 0)),
        "compared": int(m.get("shadowtap_compared_requests_total", 0)),
        "shadow_skipped": {k: v for k, v in (rep.get("summary") or {}).get("skipped", {}).items()
                           if v},
        "lag_p99": (rep.get("compare_lag") or {}).get("p99_s"),
        "report_compared": (rep.get("summary") or {}).get("compared"),
        "shadows": {k: (v.get("answered"), v.get("failed")) for k, v in
                    (rep.get("shadows") or {}).items()},
        "send_s": sent_s, "settle_s": settle, "cpu": cpu, "worker_cpu": wcpu,
        "capture_cpu": ccpu,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="3000,5000,8000,11000,15000,20000,26000",
                    help="exchanges/s tried for R (the capture alone)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--fractions", default="1,0.5,0.3", help="of R, for the live rows")
    ap.add_argument("--baseline", type=Path, help="another checkout to measure in the same run")
    ap.add_argument("--no-docs", action="store_true")
    a = ap.parse_args(argv)
    if os.geteuid() != 0 or not shutil.which("tcpreplay"):
        print("error: run as root with tcpreplay installed (scripts/setup.sh)", file=sys.stderr)
        return 2
    from replay.synth import generate_pcap

    tmp = Path(tempfile.mkdtemp(prefix="shadowtap-bench-live-", dir="/dev/shm"))
    (tmp / "key").write_bytes(secrets.token_bytes(32))
    os.chmod(tmp / "key", 0o600)
    tag = secrets.token_hex(2)
    ns_s, ns_a = f"sbl{tag}-s", f"sbl{tag}-a"
    shadows: list[subprocess.Popen] = []
    rows: list[dict[str, Any]] = []
    per_ex = 10.8
    pcaps: dict[float, tuple[Path, int, float]] = {}

    def capture_for(rate: float) -> tuple[Path, int, float]:
        """A synthetic capture of ~--seconds at ``rate`` exchanges/s: (file, exchanges,
        frames per exchange)."""
        if rate not in pcaps:
            truth: list[Any] = []
            conns = max(200, int(rate * per_ex * a.seconds / FRAMES_PER_CONN))
            p = tmp / f"t{len(pcaps)}.pcap"
            g = generate_pcap(p, connections=conns, concurrency=200, seed=11, truth=truth)
            pcaps[rate] = (p, len(truth), g.packets / max(1, len(truth)))
        return pcaps[rate]

    def row(name: str, tree: Path, rate: float, **kw: Any) -> dict[str, Any]:
        p, n, fpe = capture_for(rate)
        r = trial(tree, ns_s, ns_a, p, rate * fpe, n, tmp, **kw)
        r.update(name=name, rate=rate)
        print(f"  {name} @ {rate:,.0f}/s: {r}", flush=True)
        rows.append(r)
        return r

    try:
        sh(f"ip netns add {ns_s} && ip netns add {ns_a}")
        for ns in (ns_s, ns_a):
            nsmod.write_sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
        sh(f"ip link add tapm netns {ns_s} type veth peer name cap0 netns {ns_a}")
        sh(f"ip -n {ns_s} link set tapm up && ip -n {ns_a} link set cap0 up && "
           f"ip -n {ns_a} link set lo up")
        shadows, ports = start_shadows()
        dead = [free_port(), free_port()]
        # 1. R: the capture alone
        big = 0.0
        for rate in (float(x) for x in a.rates.split(",")):
            r = row("capture alone (sanitise off, JSONL)", ROOT, rate, sanitise=False,
                    shadows=None)
            if r["kernel_drops"] == 0 and r["extracted"] == r["expected"]:
                big = rate
            else:
                break
        if not big:
            raise RuntimeError("the capture alone was not lossless at any rate tried")
        R = big
        print(f"R = {R:,.0f} exchanges/s", flush=True)
        trees = [("now", ROOT)] + ([("before", a.baseline)] if a.baseline else [])
        for frac in (float(x) for x in a.fractions.split(",")):
            for label, tree in trees:
                row(f"{label}: sanitise + shadowing", tree, R * frac, sanitise=True,
                    shadows=ports)
            if frac == 1.0:
                for label, tree in trees:
                    row(f"{label}: sanitise + shadowing, shadows dead", tree, R, sanitise=True,
                        shadows=dead)
        for w in (1, 2):
            row(f"now: sanitise + shadowing, {w} worker(s)", ROOT, R * 0.5, sanitise=True,
                shadows=ports, workers=w)
    finally:
        for p in shadows:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        subprocess.run(f"ip netns del {ns_s}; ip netns del {ns_a}", shell=True, check=False,
                       capture_output=True)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    lines = [
        f"Measured {dt.date.today()} on {platform.node() or 'host'} ({os.cpu_count()} cores, "
        f"kernel {platform.release()}, load average {os.getloadavg()[0]:.1f} at the end) by "
        "`bench/live/run.py`: synthetic HTTP/1.1 sent by tcpreplay (CPU 0, paced by "
        "nanosleep in bursts ~0.1 ms apart) into a veth; the "
        "daemon captures the other end; two `bench/replay/server.py` shadows on "
        "loopback (or dead ports). **R = "
        f"{R:,.0f} exchanges/s**, the highest rate tried at which the capture alone (sanitise "
        "off, JSONL only) was lossless in this run. Rates below are fractions of R.",
        "",
        "| configuration | rate | kernel drops | extracted | logged | shed | compared | "
        "lag p99 | compared per CPU-s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        frac = r["rate"] / R
        per_cpu = r["compared"] / r["cpu"] if r["cpu"] and r["compared"] else None
        lag = r["lag_p99"]
        lines.append(
            f"| {r['name']} | {frac:.2g} R | {r['kernel_drops']:,} | "
            f"{r['extracted']:,}/{r['expected']:,} | {r['logged']:,} | {r['shed']:,} | "
            f"{r['compared']:,} | {'-' if lag is None else f'≤ {lag:g} s'} | "
            f"{'-' if per_cpu is None else f'{per_cpu:,.0f}'} |")
    lines += ["", "*Extracted*: exchanges out of the capture (of those sent). *Logged*: written "
              "to the JSONL log after sanitising. *Shed*: exchanges of whole connections the "
              "capture sampled out on purpose because the workers were behind. *Compared*: "
              "replayed to both shadows and judged three ways. *Lag p99*: upper bucket bound of "
              "the 99th percentile from an exchange's last captured packet to its comparison. "
              "*Compared per CPU-s*: comparisons per CPU-second of the whole daemon (capture, "
              "workers, merge) during the trial."]
    section = "\n".join(lines)
    print(section)
    if not a.no_docs:
        update_docs("live", "## The live path (`bench/live/run.py`)\n\n" + section)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
