"""Decrypted extraction against tshark on the same TLS capture: HTTP/1.1 and HTTP/2.

Builds a capture in a network namespace of its own (prefix ``h2-``; needs root, nginx, curl,
tcpdump, tshark): nginx serving HTTPS (TLS 1.3; ALPN h2 and http/1.1), curl with
``SSLKEYLOGFILE`` fetching ``--requests`` small files over ``--connections`` connections, once
as HTTP/1.1 (keep-alive) and once as HTTP/2 (``-Z --parallel``, multiplexed). Then times, on
each capture, ``shadowtap extract --keylog`` (JSONL to a file) and tshark decrypting with the
same key log and printing every request's method and path (``-Y http.request`` /
``-Y "http2.type == 1"``), checks both found every request, and prints a table: the fastest of
``--repeat`` runs of each tool, interleaved (the host is shared and noisy).

The capture is written to tmpfs (``/dev/shm`` when there is one) by tcpdump with a 64 MiB
buffer (``-B``). A capture whose tcpdump reports "packets dropped by kernel" lacks segments, and
the requests in them cannot be recovered by anyone: it is taken again (up to ``--attempts``
times), and a capture still lossy is reported as such in the table (``drops``), never counted
as requests the extractor missed. Requests are counted, for both tools, as the distinct
request targets the clients asked for (a record holding only a response, whose request was
lost, is not one; a request curl retried on a new connection is one). Many concurrent curls
can leave handshakes unanswered (nginx refusing them under load): what neither tool can
recover is reported, not counted as missed.

Run: ``sudo .venv/bin/python bench/extract/tls_h2.py [--requests 3000] [--connections 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # netsim, which tlslab uses
sys.path.insert(0, str(ROOT / "tests" / "h2"))
sys.path.insert(0, str(ROOT / "tests" / "tls"))

from h2lab import HOST, capture, h2_lab  # noqa: E402

SHADOWTAP = Path(sys.executable).parent / "shadowtap"


def paths(n: int, conns: int) -> list[str]:
    """Every request target ``fetch`` asks for."""
    return [f"/{('small', 'mid')[i % 2]}?c={c}&i={i}" for c in range(conns)
            for i in range(n // conns)]


def fetch(lab, keylog: Path, n: int, conns: int, h2: bool) -> None:
    per = n // conns
    procs = []
    for c in range(conns):
        argv = ["curl", "-k", "-sS", "--resolve", f"{HOST}:443:127.0.0.1",
                "--http2" if h2 else "--http1.1", "--tlsv1.3"]
        if h2:
            argv += ["-Z", "--parallel", "--parallel-max", "50"]
        for i in range(per):
            argv += ["-o", "/dev/null", f"https://{HOST}/{('small', 'mid')[i % 2]}?c={c}&i={i}"]
        procs.append(lab.popen(*argv, env=dict(os.environ, SSLKEYLOGFILE=str(keylog)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode(errors="replace")


def timed(argv: list[str], out: Path | None = None) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with (out.open("wb") if out else open(os.devnull, "wb")) as f:
        r = subprocess.run(argv, stdout=subprocess.PIPE if out is None else f,
                           stderr=subprocess.PIPE, timeout=3600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return time.perf_counter() - t0, r.stdout or b""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--keep", type=Path, help="keep the captures and key logs in this directory")
    ap.add_argument("--attempts", type=int, default=3,
                    help="captures taken at most while tcpdump reports drops")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs of each tool, interleaved; the fastest of each is shown "
                         "(the host is shared: the same treatment for both)")
    a = ap.parse_args()
    rows = []
    want = set(paths(a.requests, a.connections))
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="h2-bench-", dir=shm) as td:
        d = Path(td)
        if a.keep:
            a.keep.mkdir(parents=True, exist_ok=True)
            d = a.keep
        with h2_lab(d) as lab:
            for name, h2 in (("HTTP/1.1", False), ("HTTP/2", True)):
                pcap, keys = d / f"{name[-1]}.pcap", d / f"{name[-1]}.keys"
                for attempt in range(1, a.attempts + 1):
                    pcap.unlink(missing_ok=True)
                    keys.unlink(missing_ok=True)
                    with capture(lab, pcap, (443,)) as cap:
                        fetch(lab, keys, a.requests, a.connections, h2)
                    if cap["dropped"] == 0:
                        break
                    print(f"{name}: tcpdump dropped {cap['dropped']} packets (attempt "
                          f"{attempt}): the capture lacks segments", file=sys.stderr)
                packets = int(subprocess.run(["capinfos", "-c", "-M", str(pcap)],
                                             capture_output=True, text=True).stdout
                              .split(":")[-1].strip() or 0)
                st_argv = [str(SHADOWTAP), "extract", str(pcap), "--keylog", str(keys),
                           "-o", str(d / "out.jsonl")]
                flt = "http2.type == 1" if h2 else "http.request"
                fld = "http2.headers.path" if h2 else "http.request.uri"
                ts_argv = ["tshark", "-n", "-r", str(pcap), "-o", f"tls.keylog_file:{keys}",
                           "-Y", flt, "-T", "fields", "-E", "occurrence=a", "-E",
                           "aggregator=|", "-e", fld]
                t_st = t_ts = float("inf")
                for _ in range(max(1, a.repeat)):
                    # not timed: the kernel freeing the last run's output (~80 MB) on truncation
                    (d / "out.jsonl").unlink(missing_ok=True)
                    t_st = min(t_st, timed(st_argv)[0])
                    t, out = timed(ts_argv)
                    t_ts = min(t_ts, t)
                got = set()
                with (d / "out.jsonl").open() as f:
                    for line in f:
                        req = json.loads(line).get("request")
                        if req is not None:
                            got.add(req.get("target"))
                n_st = len(got & want)
                ts_got = {p for ln in out.decode().splitlines() for p in ln.split("|") if p}
                n_ts = len(ts_got & want)
                rows.append((name, packets, cap["dropped"], n_st, t_st, n_ts, t_ts))
    print(f"{'capture':10} {'packets':>8} {'drops':>6} {'shadowtap':>22} {'tshark':>22} "
          f"{'ratio':>6}")
    bad = 0
    for name, packets, drops, n_st, t_st, n_ts, t_ts in rows:
        print(f"{name:10} {packets:8d} {drops:6d} {n_st:7d} req {t_st:7.2f} s "
              f"{n_ts:7d} req {t_ts:7.2f} s {t_ts / t_st:5.1f}x")
        if n_st != len(want):
            why = ("the capture lost packets (tcpdump drops): not comparable" if drops
                   else "tshark missed them too (handshakes the server never answered: nothing to decrypt)"
                   if n_st >= n_ts else "shadowtap missed requests tshark decrypted")
            bad += n_st < n_ts
            print(f"  {name}: {len(want) - n_st} of {len(want)} requests not recovered; {why}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
