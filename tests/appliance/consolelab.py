"""A running appliance without namespaces or root, for the console and Prometheus tests.

``shadowtap appliance run`` with a VXLAN collector on loopback as its source (UDP: no root, no
namespace), fed synthetic production traffic (``replay.synth``) as VXLAN datagrams at a steady
pace by a thread, sanitising, logging and shadowing to two small local HTTP servers: build v1
(the secondary) and build v2 (the candidate), which carries one seeded regression (see
``EchoShadow``). The rest of the answer differs from production on both shadows alike: noise.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import yaml
from apphelpers import REPO, SHADOWTAP, Daemon, JsonHandler, free_port, serve_http

from replay.synth import generate_pcap


class EchoShadow(JsonHandler):
    """Answers with production's JSON headers: build v1 sends ``Cache-Control: no-cache`` as
    production's API does, build v2 ``no-store`` (the seeded regression:
    ``header:cache-control`` changed where production's answer is JSON). The body (a random
    ``rid``) differs from production's on both shadows alike: noise."""

    build = "v1"

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = json.dumps({"data": [], "page": 1, "rid": os.urandom(4).hex()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache" if self.build == "v1" else "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class VxlanFeeder:
    """Sends synthetic traffic as VXLAN to ``port``: a new capture of ``batch`` connections
    every round (another seed: other client ports), ``fps`` frames a second, until stopped."""

    def __init__(self, port: int, fps: int = 1500, batch: int = 60) -> None:
        self.port, self.fps, self.batch = port, fps, batch
        self.sent = 0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vxlan-feeder", daemon=True)

    def start(self) -> VxlanFeeder:
        self._thread.start()
        return self

    def _frames(self, seed: int) -> list[bytes]:
        buf = io.BytesIO()
        generate_pcap(buf, connections=self.batch, concurrency=20, seed=seed,
                      requests_per_conn=(1, 4))
        buf.seek(0)
        return [bytes(f) for _, f in dpkt.pcap.Reader(buf)]

    def _run(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hdr = b"\x08\0\0\0" + (4242).to_bytes(3, "big") + b"\0"
        seed = random.randrange(1 << 20)
        try:
            while not self._stop.is_set():
                frames = self._frames(seed)
                seed += 1
                t0 = time.monotonic()
                for i, f in enumerate(frames):
                    if self._stop.is_set():
                        return
                    while self._paused.is_set() and not self._stop.is_set():
                        time.sleep(0.05)
                    s.sendto(hdr + f, ("127.0.0.1", self.port))
                    self.sent += 1
                    ahead = t0 + (i + 1) / self.fps - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        finally:
            s.close()

    def pause(self, on: bool = True) -> None:
        (self._paused.set if on else self._paused.clear)()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Appliance:
    daemon: Daemon
    workdir: Path
    metrics_port: int
    console_port: int
    token: str
    feeder: VxlanFeeder
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def console(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"


@contextlib.contextmanager
def running_appliance(workdir: Path, *, token_file: bool = True, fps: int = 1500
                      ) -> Iterator[Appliance]:
    """The daemon with a console (token from a file, or the random one it prints), its two
    shadows and the feeder; everything stopped at the end."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "key").write_bytes(os.urandom(32))
    os.chmod(workdir / "key", 0o600)
    udp, mport, cport, p1, p2 = free_udp_port(), free_port(), free_port(), free_port(), free_port()
    console: dict[str, Any] = {"listen": f"127.0.0.1:{cport}"}
    token = ""
    if token_file:
        token = os.urandom(16).hex()
        (workdir / "token").write_text(token + "\n")
        os.chmod(workdir / "token", 0o600)
        console["token_file"] = str(workdir / "token")
    cfg = {
        "source": {"vxlan": {"listen": "127.0.0.1", "port": udp}},
        "extract": {"port": 80, "idle_timeout": "5s"},
        "pipeline": {"workers": 1,
                     "sanitise": {"enabled": True, "key_file": str(workdir / "key")},
                     "sinks": [{"type": "jsonl", "path": str(workdir / "exchanges.jsonl")}]},
        "metrics": {"listen": f"127.0.0.1:{mport}"},
        "shadowing": {"secondary": {"url": f"http://127.0.0.1:{p1}", "name": "shadow-1",
                                    "label": "secondary (v1)"},
                      "candidate": {"url": f"http://127.0.0.1:{p2}", "name": "shadow-2",
                                    "label": "candidate (v2)"},
                      "min_samples": 5, "verdict_every": "1s",
                      "report": str(workdir / "report.json")},
        "console": console,
    }
    (workdir / "appliance.yaml").write_text(yaml.safe_dump(cfg))
    v2 = type("EchoV2", (EchoShadow,), {"build": "v2"})
    log = workdir / "appliance.log"
    with serve_http(EchoShadow, "127.0.0.1", p1), serve_http(v2, "127.0.0.1", p2):
        d = Daemon(workdir / "appliance.yaml", mport, log)
        feeder = VxlanFeeder(udp, fps=fps)
        try:
            d.start(30)
            if not token_file:
                end = time.monotonic() + 10
                while not token and time.monotonic() < end:
                    m = re.search(r"shadowtap console: \S+\?token=(\S+)", log.read_text())
                    token = m.group(1) if m else ""
                    time.sleep(0.1)
            feeder.start()
            yield Appliance(d, workdir, mport, cport, token, feeder, log)
        finally:
            feeder.stop()
            if d.proc is not None and d.proc.poll() is None:
                try:
                    d.stop(60)
                except subprocess.TimeoutExpired:
                    d.kill()


__all__ = ["REPO", "SHADOWTAP", "Appliance", "running_appliance"]
