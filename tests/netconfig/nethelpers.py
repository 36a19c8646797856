"""Helpers for netconfig's root tests: unique names, HTTP backends, clients and capture in
network namespaces, all from one process (sockets keep the namespace they were created in)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from helpers import NsServer

from netconfig import lab
from netconfig import netns as nsmod

REPO = Path(__file__).resolve().parents[2]
VIP = "10.77.100.10"


def unique_prefix() -> str:
    """``st<6 hex>-``: every test's namespaces are its own."""
    return f"st{secrets.token_hex(3)}-"


def default_spec_dict(prefix: str, outside: bool = False) -> dict[str, Any]:
    """The built-in lab with our prefix, optionally plus an 'outside' host behind the gateway."""
    d = yaml.safe_load(lab.DEFAULT_SPEC_YAML)
    d["prefix"] = prefix
    if outside:
        d["nodes"].append({"name": "outside", "routes": [{"to": "default", "via": "10.77.200.1"}]})
        d["links"].append({"a": {"node": "gateway", "dev": "uplink0", "addr": "10.77.200.1/24"},
                           "b": {"node": "outside", "dev": "eth0", "addr": "10.77.200.2/24"}})
    return d


def write_spec(path: Path, d: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(d))
    return path


def namespaces_with(prefix: str) -> list[str]:
    return [n for n in nsmod.list_netns() if n.startswith(prefix)]


def force_cleanup(prefix: str) -> None:
    """Last resort after a failed test: delete namespaces carrying our unique prefix."""
    for ns in namespaces_with(prefix):
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def host_traces(prefix: str) -> list[str]:
    """Lines of the host namespace's state that could belong to a lab: it must have none.

    Only lab-looking lines are compared (its prefix, its addresses, its interface names, our
    nft tables), so other people's work on the same host cannot make the test flaky.
    """
    cmds = [["ip", "-o", "link"], ["ip", "-o", "addr"], ["ip", "route", "show", "table", "all"],
            ["ip", "rule"], ["nft", "list", "tables"], ["tc", "qdisc"]]
    devs = re.compile(r"\b(client0|prod0|canary0|shadow[12]|tap0|cap0|uplink0|stvx\d+)\b")
    out = []
    for argv in cmds:
        for line in subprocess.run(argv, capture_output=True, text=True).stdout.splitlines():
            if prefix in line or "10.77." in line or "shadowtap" in line or devs.search(line):
                out.append(line)
    return out


# ---- HTTP backend in a namespace ---------------------------------------------------------------

class Backend(NsServer):
    """A tiny keep-alive HTTP/1.1 server on (addr, port) in ``ns``; answers with its name."""

    def __init__(self, ns: str, name: str, addr: str = VIP, port: int = 80) -> None:
        super().__init__(ns, addr, port)
        self.name = name
        self.requests = 0

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.requests += 1
                body = f"{self.name} {path}\n".encode()
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %s\r\n\r\n%s"
                        % (len(body), self.name.encode(), body))
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


@dataclass
class KeepAlive:
    """One client connection that can send several requests."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    backends: list[str] = field(default_factory=list)

    async def get(self, path: str) -> str:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: vip\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        backend = ""
        for line in head.split(b"\r\n"):
            k, _, v = line.partition(b":")
            if k.lower() == b"content-length":
                length = int(v)
            elif k.lower() == b"x-backend":
                backend = v.strip().decode()
        body = await self.reader.readexactly(length)
        assert path.encode() in body
        self.backends.append(backend)
        return backend

    def close(self) -> None:
        self.writer.close()


async def connect(addr: str = VIP, port: int = 80) -> KeepAlive:
    r, w = await asyncio.open_connection(addr, port)
    return KeepAlive(r, w)


async def one_shot(path: str, addr: str = VIP, port: int = 80) -> str:
    """A new connection, one request, close: returns the backend that answered."""
    c = await connect(addr, port)
    try:
        return await c.get(path)
    finally:
        c.close()


async def many_new(n: int, concurrency: int = 50, tag: str = "n") -> list[str]:
    """``n`` new connections, ``concurrency`` at a time; the backend of each."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with sem:
            return await one_shot(f"/{tag}/{i}")

    return await asyncio.gather(*(one(i) for i in range(n)))


def run_in(ns: str, coro: Any) -> Any:
    """Run a coroutine on a fresh loop whose sockets are created in ``ns``."""
    with nsmod.netns_context(ns):
        return asyncio.run(coro)


# ---- capture ---------------------------------------------------------------------------------

class Capture:
    """AF_PACKET capture of every frame on ``dev`` in ``ns`` (64 MB buffer: no drops)."""

    def __init__(self, ns: str, dev: str) -> None:
        self.sock = nsmod.socket_in_netns(ns, socket.AF_PACKET, socket.SOCK_RAW,
                                          socket.htons(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
        self.sock.bind((dev, 0))
        self.sock.settimeout(0.2)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.frames.append(self.sock.recv(262144))
            except TimeoutError:
                continue

    def __enter__(self) -> Capture:
        self._thread.start()
        return self

    def stop(self, settle: float = 0.3) -> list[bytes]:
        """Stop, then drain whatever is still queued (a loaded host may lag behind)."""
        time.sleep(settle)
        self._stop.set()
        self._thread.join(5)
        self.sock.setblocking(False)
        while True:
            try:
                self.frames.append(self.sock.recv(262144))
            except BlockingIOError:
                break
        self.sock.close()
        return self.frames

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.stop(0)


@dataclass
class Pkt:
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    seq: int
    flags: int
    payload: bytes
    ip_id: int


def parse_ipv4(data: bytes) -> Pkt | None:
    """Decode an IPv4 packet (TCP/UDP ports and payload), or None for anything else."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0xF) * 4
    total = struct.unpack("!H", data[2:4])[0]
    ip_id = struct.unpack("!H", data[4:6])[0]
    proto = data[9]
    src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
    l4 = data[ihl:total]
    if proto == 6 and len(l4) >= 20:
        sport, dport, seq = struct.unpack("!HHI", l4[:8])
        off = (l4[12] >> 4) * 4
        return Pkt(src, dst, 6, sport, dport, seq, l4[13], bytes(l4[off:]), ip_id)
    if proto == 17 and len(l4) >= 8:
        sport, dport = struct.unpack("!HH", l4[:4])
        return Pkt(src, dst, 17, sport, dport, 0, 0, bytes(l4[8:]), ip_id)
    return Pkt(src, dst, proto, 0, 0, 0, 0, bytes(l4), ip_id)


def parse_frame(frame: bytes) -> Pkt | None:
    """Decode an Ethernet frame carrying IPv4."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    return parse_ipv4(frame[14:])


# ---- probes for fences --------------------------------------------------------------------

class Listeners:
    """TCP and UDP echo listeners on 0.0.0.0 in a namespace, for reachability probes."""

    def __init__(self, ns: str, tcp_port: int = 7000, udp_port: int = 7001) -> None:
        self.tcp = nsmod.socket_in_netns(ns)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("0.0.0.0", tcp_port))
        self.tcp.listen(64)
        self.tcp.settimeout(0.2)
        self.udp = nsmod.socket_in_netns(ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", udp_port))
        self.udp.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._tcp, daemon=True),
                         threading.Thread(target=self._udp, daemon=True)]
        for t in self._threads:
            t.start()

    def _tcp(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self.tcp.accept()
                c.close()
            except (TimeoutError, OSError):
                continue

    def _udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(2048)
                self.udp.sendto(data, peer)
            except (TimeoutError, OSError):
                continue

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.tcp.close()
        self.udp.close()


def probe_tcp(ns: str, addr: str, port: int = 7000, timeout: float = 0.5) -> bool:
    s = nsmod.socket_in_netns(ns)
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def probe_udp(ns: str, addr: str, port: int = 7001, timeout: float = 0.5) -> bool:
    s = nsmod.socket_in_netns(ns, socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    token = secrets.token_bytes(8)
    try:
        s.sendto(token, (addr, port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data, _ = s.recvfrom(2048)
            if data == token:
                return True
        return False
    except OSError:
        return False
    finally:
        s.close()


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def probe_icmp(ns: str, addr: str, timeout: float = 0.5) -> bool:
    s = nsmod.socket_in_netns(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(timeout)
    ident = int.from_bytes(os.urandom(2), "big")
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"shadowtap"
    pkt = hdr[:2] + struct.pack("!H", _csum(hdr)) + hdr[4:]
    try:
        s.sendto(pkt, (addr, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data, peer = s.recvfrom(2048)
            ihl = (data[0] & 0xF) * 4
            typ, _, _, rid = struct.unpack("!BBHH", data[ihl:ihl + 6])
            if typ == 0 and rid == ident and peer[0] == addr:
                return True
        return False
    except OSError:
        return False
    finally:
        s.close()


@contextlib.contextmanager
def env(key: str, value: str) -> Iterator[None]:
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
