"""Helpers for the appliance's root tests: a private mirrored topology, an HTTP server and a
recording client in namespaces, and the appliance daemon as a real subprocess.

Topology (namespaces named ``sa<4 hex>-c|s|a``, removed at the end even on failure)::

    client (10.99.1.1) eth0 ── eth0 (10.99.1.2) server ── tapm ══ cap0  appliance
                                                 └ uplink 10.99.9.1 ── eth1 10.99.9.2 ┘
    server's eth0 is mirrored (clsact + u32 + mirred, netconfig.mirror) both ways to tapm,
    and for the VXLAN tests also to a VXLAN device towards 10.99.9.2 (VNI 4242, UDP 4789).

Offloads are off on every veth so frames are wire-sized, as on a real SPAN port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import yaml

# free_port is imported from here by the appliance tests
from helpers import NsServer, free_port  # noqa: F401

from netconfig import mirror
from netconfig import netns as nsmod
from replay.model import Exchange

REPO = Path(__file__).resolve().parents[2]
SHADOWTAP = [str(REPO / ".venv/bin/python"), "-m", "appliance.cli"]
SERVER = "10.99.1.2"
CLIENT = "10.99.1.1"
COLLECTOR = "10.99.9.2"
VNI = 4242


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@dataclass
class Topo:
    prefix: str
    client: str
    server: str
    app: str
    state: Path
    mirrors: list[str] = field(default_factory=list)


def _veth(a_ns: str, a: str, b_ns: str, b: str) -> None:
    sh("ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns)
    for ns, dev in ((a_ns, a), (b_ns, b)):
        sh("ip", "-n", ns, "link", "set", dev, "up")
        nsmod.run_tool(ns, ["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"])
        nsmod.write_sysctl(ns, f"net.ipv6.conf.{dev}.disable_ipv6", 1)


@contextlib.contextmanager
def topology(tmp: Path, vxlan: bool = False) -> Iterator[Topo]:
    prefix = f"sa{secrets.token_hex(2)}-"
    t = Topo(prefix, prefix + "c", prefix + "s", prefix + "a", tmp / "state")
    old = os.environ.get("SHADOWTAP_STATE_DIR")
    os.environ["SHADOWTAP_STATE_DIR"] = str(t.state)
    try:
        for ns in (t.client, t.server, t.app):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        _veth(t.client, "eth0", t.server, "eth0")
        sh("ip", "-n", t.client, "addr", "add", f"{CLIENT}/24", "dev", "eth0")
        sh("ip", "-n", t.server, "addr", "add", f"{SERVER}/24", "dev", "eth0")
        _veth(t.server, "tapm", t.app, "cap0")
        _veth(t.server, "uplink", t.app, "eth1")
        sh("ip", "-n", t.server, "addr", "add", "10.99.9.1/24", "dev", "uplink")
        sh("ip", "-n", t.app, "addr", "add", f"{COLLECTOR}/24", "dev", "eth1")
        flt = mirror.MirrorFilter(proto="tcp", ports=[80])
        m = mirror.add(mirror.Mirror(netns=t.server, dev="eth0", to="tapm", filter=flt,
                                     owner="test"))
        t.mirrors.append(m.id)
        if vxlan:
            # Raise the underlay MTU so full-size frames plus 50 bytes of VXLAN need no
            # fragmenting (as one would on a real collector link).
            for ns, dev in ((t.server, "uplink"), (t.app, "eth1")):
                sh("ip", "-n", ns, "link", "set", dev, "mtu", "1600")
            m = mirror.add(mirror.Mirror(netns=t.server, dev="eth0", vxlan_remote=COLLECTOR,
                                         vni=VNI, vxlan_local="10.99.9.1", filter=flt,
                                         owner="test"))
            t.mirrors.append(m.id)
        yield t
    finally:
        for mid in t.mirrors:
            with contextlib.suppress(Exception):
                mirror.remove(mid)
        for ns in (t.client, t.server, t.app):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        if old is None:
            os.environ.pop("SHADOWTAP_STATE_DIR", None)
        else:
            os.environ["SHADOWTAP_STATE_DIR"] = old


# ---- HTTP server ---------------------------------------------------------------------------

class Server(NsServer):
    """Keep-alive HTTP/1.1 server in ``ns``: echoes the request id, bodies of varied sizes (some
    binary), and never answers ``/hang`` (to leave an exchange open)."""

    def __init__(self, ns: str, addr: str = SERVER, port: int = 80) -> None:
        super().__init__(ns, addr, port)

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                body = await r.readexactly(length) if length else b""
                path = head.split(b" ", 2)[1]
                if path.startswith(b"/hang"):
                    await asyncio.sleep(3600)
                rng = random.Random(path)
                n = rng.choice([0, 17, 300, 1400, 3000, 9000])
                payload = (path + b"|" + bytes(rng.getrandbits(8) for _ in range(n))
                           if rng.random() < 0.3 else path + b"|" + b"x" * n + body[:64])
                w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        b"Content-Length: %d\r\nX-Echo-Len: %d\r\n\r\n%s"
                        % (len(payload), len(body), payload))
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()


class JsonHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 handler base: ``send_json(status, doc)``, no access log."""

    protocol_version = "HTTP/1.1"

    def send_json(self, status: int, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


def serve_http(handler: type, addr: str, port: int,
               ns: str | None = None) -> contextlib.AbstractContextManager[None]:
    """A threaded ``http.server`` with ``handler``, listening on ``addr:port`` inside ``ns``
    (the socket is made there; the threads run here), shut down when the block ends."""
    from http.server import ThreadingHTTPServer

    @contextlib.contextmanager
    def run() -> Iterator[None]:
        srv = ThreadingHTTPServer((addr, port), handler, bind_and_activate=False)
        srv.socket.close()
        srv.socket = nsmod.socket_in_netns(ns) if ns else socket.socket()
        srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # http.server listens with a backlog of 5: a replayer opening 32 connections at once
        # on a loaded host would see refused or timed-out connects that are the test
        # server's, not the code's under test.
        srv.request_queue_size = 1024
        srv.server_bind()
        srv.server_activate()
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            yield
        finally:
            srv.shutdown()
            srv.server_close()

    return run()


# ---- recording client ---------------------------------------------------------------------

@dataclass
class Load:
    """What the client sent and received, per request id (the path)."""

    sent: dict[str, bytes] = field(default_factory=dict)
    received: dict[str, bytes] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    conns: dict[str, int] = field(default_factory=dict)  # request id -> client port


async def _conn(tag: str, c: int, n: int, load: Load, stop: threading.Event | None,
                addr: str) -> None:
    try:
        r, w = await asyncio.open_connection(addr, 80)
    except OSError as e:
        load.failures.append(f"{tag}{c}: connect {e}")
        return
    port = w.get_extra_info("sockname")[1]
    try:
        for i in range(n):
            if stop is not None and stop.is_set():
                break
            rid = f"/{tag}/{c}/{i}"
            if i % 3 == 1:
                body = os.urandom(random.randint(1, 2000))
                req = (f"POST {rid}?q={i} HTTP/1.1\r\nHost: prod.test\r\nX-Req: {i}\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            else:
                req = (f"GET {rid} HTTP/1.1\r\nHost: prod.test\r\nUser-Agent: t/1\r\n"
                       "Accept: */*\r\n\r\n").encode()
            w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                k, _, v = line.partition(b":")
                if k.lower() == b"content-length":
                    length = int(v)
            body_in = await r.readexactly(length)
            load.sent[rid] = req
            load.received[rid] = head + body_in
            load.conns[rid] = port
    except (OSError, asyncio.IncompleteReadError) as e:
        load.failures.append(f"{tag}{c}: {e!r}")
    finally:
        w.close()


def run_load(ns: str, tag: str, connections: int, per_conn: int, concurrency: int = 50,
             stop: threading.Event | None = None, addr: str = SERVER) -> Load:
    """``connections`` keep-alive connections of ``per_conn`` requests, ``concurrency`` at once;
    GETs and POSTs with random binary bodies."""
    load = Load()

    async def main() -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(c: int) -> None:
            async with sem:
                await _conn(tag, c, per_conn, load, stop, addr)

        await asyncio.gather(*(one(c) for c in range(connections)))

    with nsmod.netns_context(ns):
        asyncio.run(main())
    return load


def wire_request(ex: Exchange) -> bytes:
    """The request as it was on the wire (our client uses Content-Length framing only)."""
    r = ex.request
    assert r is not None
    head = f"{r.method} {r.target} {r.version}\r\n" + "".join(f"{k}: {v}\r\n"
                                                               for k, v in r.headers)
    return (head + "\r\n").encode("latin-1") + r.body


def wire_response(ex: Exchange) -> bytes:
    p = ex.response
    assert p is not None
    head = f"{p.version} {p.status} {p.reason}\r\n" + "".join(f"{k}: {v}\r\n"
                                                              for k, v in p.headers)
    return (head + "\r\n").encode("latin-1") + p.body


def read_log(paths: list[Path]) -> list[Exchange]:
    from replay.formats.jsonl import read_jsonl

    out: list[Exchange] = []
    for p in paths:
        out.extend(read_jsonl(p))
    return out


def log_files(d: Path, stem: str = "exchanges") -> list[Path]:
    return sorted(d.glob(f"{stem}*.jsonl"))


def kernel_path_drops(topo: Topo) -> int:
    """Mirror copies the kernel itself dropped before they reached the appliance's socket.

    A veth whose peer's backlog is full (``netdev_max_backlog``, a host-wide sysctl the tests
    leave alone) drops the frame and counts it as ``tx_dropped`` on the sending side; that is
    loss on the mirror path, which the appliance can only see as a TCP gap."""
    out = subprocess.run(["ip", "-n", topo.server, "-s", "-j", "link", "show"],
                         capture_output=True, text=True, check=True).stdout
    return sum(link.get("stats64", {}).get("tx", {}).get("dropped", 0)
               for link in json.loads(out))


def check_exactly_once(load: Load, exchanges: list[Exchange], tag: str | None = None,
                       path_drops: int = 0) -> None:
    """Every request of ``load`` appears once, paired, byte-identical both ways.

    ``path_drops`` is how far :func:`kernel_path_drops` rose during the load. Where the kernel lost mirror
    copies, a request may be missing or incomplete only on a connection for which the log holds
    an exchange marked with a gap, and no more such requests than copies were dropped: the
    appliance must say what it did not see, never invent or silently lose."""
    if path_drops:
        gapped = {ex.conn.client_port for ex in exchanges
                  if ex.completeness.request_gaps or ex.completeness.response_gaps
                  or ex.completeness.unpaired or ex.request is None}
        excused = {rid for rid in load.sent if load.conns.get(rid) in gapped}
        excused_sent = {rid: load.sent[rid] for rid in load.sent if rid not in excused}
        kept = [ex for ex in exchanges if ex.conn.client_port not in gapped]
        # One lost copy can damage one connection, not more.
        assert len(gapped) <= path_drops, (len(gapped), path_drops)
        load = Load(sent=excused_sent, received=load.received, conns=load.conns)
        exchanges = kept
    seen: dict[str, int] = {}
    for ex in exchanges:
        if ex.request is None:
            continue
        rid = ex.request.path.split("?")[0]
        if tag is not None and not rid.startswith(f"/{tag}/"):
            continue
        if rid not in load.sent:
            continue
        seen[rid] = seen.get(rid, 0) + 1
        assert ex.response is not None, f"{rid}: no response paired"
        assert ex.completeness.complete, (rid, ex.completeness)
        assert wire_request(ex) == load.sent[rid], rid
        assert wire_response(ex) == load.received[rid], rid
    missing = set(load.sent) - set(seen)
    dup = {k: v for k, v in seen.items() if v != 1}
    if missing:
        rid = sorted(missing)[0]
        port = load.conns.get(rid)
        same = [(ex.request.path if ex.request else None, ex.completeness.to_dict())
                for ex in exchanges if ex.conn is not None and ex.conn.client_port == port]
        raise AssertionError(f"{len(missing)} requests missing from the log, e.g. "
                             f"{sorted(missing)[:3]}; kernel path drops {path_drops}; "
                             f"logged on {rid}'s connection (port {port}): {same}")
    assert not dup, f"requests logged more than once: {list(dup.items())[:3]}"


# ---- the daemon ------------------------------------------------------------------------

def write_config(path: Path, topo: Topo, out: Path, *, vxlan: bool = False, workers: int = 1,
                 extra_pipeline: dict[str, Any] | None = None, metrics_port: int,
                 **source: Any) -> Path:
    src: dict[str, Any] = ({"vxlan": {"listen": COLLECTOR, "vnis": [VNI]}} if vxlan
                           else {"interface": "cap0", "filter": "tcp port 80"})
    src["netns"] = topo.app
    src["workers"] = workers
    src.update(source)
    pipe: dict[str, Any] = {"sanitise": {"enabled": False},
                            "sinks": [{"type": "jsonl", "path": str(out / "exchanges.jsonl")}]}
    pipe.update(extra_pipeline or {})
    cfg = {"source": src, "extract": {"port": 80}, "pipeline": pipe,
           "metrics": {"listen": f"127.0.0.1:{metrics_port}"}}
    path.write_text(yaml.safe_dump(cfg))
    return path


class Daemon:
    """``shadowtap appliance run`` as a subprocess; ready when /healthz answers 200."""

    def __init__(self, config: Path, metrics_port: int, log: Path) -> None:
        self.config, self.port, self.log = config, metrics_port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> Daemon:
        self._fh = self.log.open("ab")
        self.proc = subprocess.Popen([*SHADOWTAP, "appliance", "run", "--config",
                                      str(self.config)], stdout=self._fh, stderr=self._fh,
                                     cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: "
                                     f"{self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if self.get("/healthz")[0] == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"daemon not healthy: {self.log.read_text()[-2000:]}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for fam in text_string_to_metric_families(self.get("/metrics")[1]):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def total(self, name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in self.metrics().items()
                   if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._fh.close()

    def kill(self) -> None:
        """SIGKILL the whole session (supervisor and any worker processes)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._fh.close()


def wait_for(pred: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


__all__ = ["sys"]
