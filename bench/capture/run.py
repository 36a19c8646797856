"""Benchmark: the highest mirrored rate the appliance turns into exchanges without loss, next to
``tcpdump -w /dev/null`` on the same port in the same run.

Why this shape: on a small host a live HTTP load generator (wrk + nginx) competes with the
capture for the same cores, and we would measure the load generator. So the traffic is a
synthetic capture of real-looking HTTP/1.1 (``replay.synth``: handshakes, keep-alive, chunked
bodies, with a known number of exchanges) sent frame by frame into one end of a veth pair, paced
at a target packets/s; the appliance (the real daemon, ``shadowtap appliance run``, writing a
JSONL log to tmpfs) or tcpdump captures on the other end, in its own namespace, as on a mirror
port. Each rate is tried for each capturer in turn (interleaved, so drift hits all alike).

A trial is lossless when the kernel dropped nothing (PACKET_STATISTICS / tcpdump's own count),
the appliance emitted exactly the known number of exchanges, all complete, with no TCP gaps; for
tcpdump, when it captured every packet sent. The sender is ``tcpreplay`` (paced with ``--pps``,
or ``--topspeed`` for the "max" row; ~450k packets/s on a veth here) pinned to one core, and a
single-worker capturer is pinned to the other, so the two do not share a core; without tcpreplay
a Python sender is used (~150k packets/s ceiling). Rates the sender could not reach are reported
as achieved, not target.

Run as root: ``.venv/bin/python bench/capture/run.py [--rates 20000,50000,...]
[--connections 2000] [--no-docs]``. Rewrites only its section of docs/benchmarks.md (between
``<!-- bench:capture -->`` and ``<!-- /bench:capture -->``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import multiprocessing as mp
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.common import free_port, update_docs, wait_healthy  # noqa: E402
from netconfig import netns as nsmod  # noqa: E402

PY = str(ROOT / ".venv/bin/python")


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def load_frames(path: Path) -> list[bytes]:
    from replay.formats.pcap import CaptureReader

    return [f for _, _, f in CaptureReader(path)]


def sender(ns: str, frames: list[bytes], rate: float, out: Any) -> None:
    """Send every frame into ``tapm`` at ``rate`` packets/s (batches of 500, then sleep)."""
    s = nsmod.socket_in_netns(ns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind(("tapm", 0))
    send = s.send
    batch = 500
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch):
        for f in frames[i:i + batch]:
            send(f)
        ahead = t0 + (i + batch) / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    out.put(len(frames) / (time.perf_counter() - t0))


SENDER_CPU, CAPTURE_CPU = "0", "1"
"""On a host with two cores or more, the sender and a one-worker capturer get a core each."""


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    if cpus is None or (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return argv
    return ["taskset", "-c", cpus, *argv]


def send_at(ns: str, frames: list[bytes], rate: float, pcap: Path | None = None) -> float:
    """Send every frame at ``rate`` packets/s (very high: as fast as possible); returns the
    rate achieved."""
    if pcap is not None and shutil.which("tcpreplay"):
        pace = (["--topspeed"] if rate >= 5_000_000 else
                [f"--pps={rate:.0f}", f"--pps-multi={10 if rate >= 100_000 else 1}"])
        out = subprocess.run(["ip", "netns", "exec", ns,
                              *pinned(["tcpreplay", "-i", "tapm", *pace, str(pcap)], SENDER_CPU)],
                             capture_output=True, text=True, check=True).stdout
        m = re.search(r"Actual: (\d+) packets .* sent in ([\d.]+) seconds", out)
        if m is None:
            raise RuntimeError(f"tcpreplay said: {out[-300:]}")
        return int(m.group(1)) / max(1e-6, float(m.group(2)))
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=sender, args=(ns, frames, rate, q))
    p.start()
    achieved = q.get(timeout=600)
    p.join()
    return achieved


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def trial_appliance(ns_s: str, ns_a: str, frames: list[bytes], rate: float, expected: int,
                    workers: int, tmp: Path, pcap: Path | None = None,
                    nframes: int = 0) -> dict[str, Any]:
    port = free_port()
    out = tmp / f"out-{secrets.token_hex(3)}"
    cfg = {"source": {"interface": "cap0", "netns": ns_a, "workers": workers},
           "pipeline": {"sanitise": {"enabled": False},
                        "sinks": [{"type": "jsonl", "path": str(out / "ex.jsonl")}]},
           "metrics": {"listen": f"127.0.0.1:{port}"}}
    cfgp = tmp / "bench.yaml"
    cfgp.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(pinned([PY, "-m", "appliance.cli", "appliance", "run", "--config",
                                    str(cfgp), "--log-level", "warning"],
                                   CAPTURE_CPU if workers == 1 else None), cwd=ROOT,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_healthy(port, 20)
        cpu0 = group_cpu(proc.pid)
        achieved = send_at(ns_s, frames, rate, pcap)
        last, stable = -1.0, 0
        m: dict[str, float] = {}
        for _ in range(300):  # wait until the counters stop moving
            time.sleep(0.2)
            m = scrape(port)
            cur = m.get("shadowtap_capture_packets_total", 0) + m.get(
                "shadowtap_exchanges_emitted_total", 0)
            stable = stable + 1 if cur == last else 0
            last = cur
            if stable >= 3:
                break
        cpu = group_cpu(proc.pid) - cpu0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        subprocess.run(["rm", "-rf", str(out)], check=False)
    ex = int(m.get("shadowtap_exchanges_emitted_total", 0))
    kd = int(m.get("shadowtap_capture_kernel_drops_total", 0))
    gaps = int(m.get("shadowtap_tcp_gaps_total", 0))
    inc = int(m.get("shadowtap_exchanges_incomplete_total", 0))
    ud = int(sum(v for k, v in m.items() if k.startswith("shadowtap_userspace_drops")))
    return {"achieved": achieved, "packets": int(m.get("shadowtap_capture_packets_total", 0)),
            "sent": nframes, "cpu": cpu, "exchanges": ex, "kernel_drops": kd, "user_drops": ud + gaps + inc,
            "ok": kd == 0 and ex == expected and gaps == 0 and inc == 0 and ud == 0}


def trial_tcpdump(ns_s: str, ns_a: str, frames: list[bytes], rate: float,
                  pcap: Path | None = None, nframes: int = 0) -> dict[str, Any]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns_a,
                             *pinned(["tcpdump", "-i", "cap0", "-n", "-B", "65536", "-w",
                                      "/dev/null"], CAPTURE_CPU)],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    proc.stderr.readline()  # "listening on cap0 ..."
    time.sleep(0.3)
    cpu0 = group_cpu(proc.pid)
    achieved = send_at(ns_s, frames, rate, pcap)
    time.sleep(1.0)
    cpu = group_cpu(proc.pid) - cpu0
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    proc.wait(10)
    cap = int(re.search(r"(\d+) packets? captured", err).group(1))  # type: ignore[union-attr]
    drop = int(re.search(r"(\d+) packets? dropped by kernel", err).group(1))  # type: ignore
    return {"achieved": achieved, "packets": cap, "sent": nframes, "kernel_drops": drop,
            "cpu": cpu,
            "ok": drop == 0 and cap == nframes}


def group_cpu(pgid: int) -> float:
    """CPU seconds used so far by every process of a process group (a capturer and its
    workers), from /proc: read before and after a trial, so start-up is not counted."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[2]) == pgid:
            total += int(f[11]) + int(f[12])
    return total / tick



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="50000,100000,150000,200000,250000,300000,0",
                    help="target packets/s; 0 = as fast as the sender can")
    ap.add_argument("--seconds", type=float, default=4.0,
                    help="traffic per trial at the target rate (more than a 64 MB ring fills)")
    ap.add_argument("--workers", default="1,2", help="appliance worker counts to try")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("error: run as root (namespaces, raw sockets)", file=sys.stderr)
        return 2
    from replay.synth import generate_pcap

    tmp = Path(tempfile.mkdtemp(prefix="shadowtap-bench-capture-", dir="/dev/shm"))
    tag = secrets.token_hex(2)
    ns_s, ns_a = f"sbc{tag}-s", f"sbc{tag}-a"
    rates = [float(r) for r in args.rates.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    results: dict[str, list[dict[str, Any]]] = {"tcpdump": []}
    for w in worker_counts:
        results[f"appliance x{w}"] = []
    frames_total = exchanges_total = 0
    try:
        sh(f"ip netns add {ns_s} && ip netns add {ns_a}")
        for ns in (ns_s, ns_a):  # no router solicitations or MLD reports in the counts
            nsmod.write_sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
            nsmod.write_sysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1)
        sh(f"ip link add tapm netns {ns_s} type veth peer name cap0 netns {ns_a}")
        sh(f"ip -n {ns_s} link set tapm up && ip -n {ns_a} link set cap0 up")
        for rate in rates:
            # ~51 frames per synthetic connection: enough traffic for --seconds at this rate.
            conns = max(200, int((rate or 400_000) * args.seconds / 51))
            truth: list[Any] = []
            pcap = tmp / "traffic.pcap"
            gen = generate_pcap(pcap, connections=conns, concurrency=200, seed=11, truth=truth)
            # tcpreplay reads the file itself; only the Python sender needs the frames loaded.
            frames = [] if shutil.which("tcpreplay") else load_frames(pcap)
            nframes = gen.packets
            expected = len(truth)
            frames_total += nframes
            exchanges_total += expected
            rate_ = rate or 10_000_000.0
            print(f"target {rate:,.0f}/s: {nframes:,} frames, {expected:,} exchanges")
            r = trial_tcpdump(ns_s, ns_a, frames, rate_, pcap, nframes)
            results["tcpdump"].append({"rate": rate, "expected": expected, **r})
            print(f"  tcpdump     : {r}")
            for w in worker_counts:
                r = trial_appliance(ns_s, ns_a, frames, rate_, expected, w, tmp, pcap, nframes)
                results[f"appliance x{w}"].append({"rate": rate, "expected": expected, **r})
                print(f"  appliance x{w}: {r}")
            del frames
    finally:
        subprocess.run(f"ip netns del {ns_s}; ip netns del {ns_a}", shell=True, check=False,
                       capture_output=True)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    def best(rows: list[dict[str, Any]]) -> float:
        ok = [r["achieved"] for r in rows if r["ok"]]
        return max(ok) if ok else 0.0

    td = best(results["tcpdump"])
    sender_name = ("`tcpreplay --pps` (`--topspeed` for max)" if shutil.which("tcpreplay")
                   else "one Python sender")
    pin_note = (f" Sender pinned to CPU {SENDER_CPU}, tcpdump and the one-worker appliance to "
                f"CPU {CAPTURE_CPU}; two workers are not pinned (they share the host with the "
                "sender)." if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") else "")
    per_ex = frames_total / max(1, exchanges_total)
    lines = [
        f"Measured {dt.date.today()} on {platform.node() or 'host'} ({os.cpu_count()} cores, "
        f"kernel {platform.release()}, load average {os.getloadavg()[0]:.1f} at the end) by "
        "`bench/capture/run.py`: synthetic HTTP/1.1 (`replay.synth`, "
        f"{per_ex:.1f} frames per exchange) sent into a veth at each target rate for "
        f"~{args.seconds:g} s by {sender_name}; the appliance daemon (JSONL sink on tmpfs, "
        "sanitise off) and `tcpdump -B 65536 -w /dev/null` capture the other end in turn, same "
        f"run.{pin_note}",
        "",
        "| capturer | highest lossless rate (packets/s) | ≈ exchanges/s | vs tcpdump | "
        "packets per CPU-second | ≈ exchanges per CPU-second |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        b = best(rows)
        ratio = f"{b / td:.2f}" if td else "-"
        effs = sorted(r["sent"] / max(1e-2, r["cpu"]) for r in rows if r["ok"]) or [0.0]
        eff = effs[len(effs) // 2]
        lines.append(f"| {name} | {b:,.0f} | {b / per_ex:,.0f} | {ratio} | {eff:,.0f} | "
                     f"{eff / per_ex:,.0f} |")
    lines += ["", "Every trial (achieved rate; kernel drops; for the appliance, exchanges out of "
              "those sent and user-space losses = drops + TCP gaps + incomplete):", "",
              "| target/s | capturer | achieved/s | packets | kernel drops | exchanges | "
              "user-space losses | lossless |", "|---|---|---|---|---|---|---|---|"]
    for i, rate in enumerate(rates):
        for name, rows in results.items():
            r = rows[i]
            ex = f"{r['exchanges']:,}/{r['expected']:,}" if "exchanges" in r else "-"
            tgt = f"{rate:,.0f}" if rate else "max"
            lines.append(f"| {tgt} | {name} | {r['achieved']:,.0f} | "
                         f"{r['packets']:,} | {r['kernel_drops']:,} | {ex} | "
                         f"{r.get('user_drops', '-')} | {'yes' if r['ok'] else 'no'} |")
    lines += ["", "A rate the sender could not reach shows as its achieved value. On a 2-core "
              "host the sender takes one core, so a second appliance worker has no core of its "
              "own: the x2 row measures contention, not scaling. *Packets per CPU-second* is "
              "traffic sent per CPU-second of the capturer's processes during lossless trials "
              "(median): its own capacity, what one core would sustain if it did nothing "
              "else."]
    section = "\n".join(lines)
    print(section)
    if not args.no_docs:
        update_docs("capture", "## Capture (`bench/capture/run.py`)\n\n" + section)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
