"""Helpers the benchmark scripts share: one section of docs/benchmarks.md each."""

from __future__ import annotations

import os
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"


def update_docs(name: str, section: str) -> None:
    """Replace only the ``<!-- bench:NAME -->`` section of docs/benchmarks.md (others own the
    rest); append it when missing."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def tree_cpu(root_pid: int) -> float:
    """CPU seconds used so far by a process and all its descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)
    total = 0.0
    want = {root_pid}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in want and pid not in want:
                want.add(pid)
                changed = True
    for pid in want:
        if pid in stats:
            total += stats[pid][1]
    return total


def proc_cpu(pid: int) -> float:
    """CPU seconds of one process (0 when gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / tick


def wait_healthy(port: int, timeout: float = 30.0) -> None:
    """Until the daemon's /healthz on loopback answers 200 (RuntimeError after ``timeout``)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("appliance did not start")
        time.sleep(0.1)
