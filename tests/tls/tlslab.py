"""A TLS lab for the decryption tests: nginx serving HTTPS with a self-signed certificate made
here, curl with ``SSLKEYLOGFILE`` making several requests on one keep-alive connection, tcpdump
capturing it all, inside a network namespace made for the test and removed at its end
(loopback with a 1500-byte MTU, so records are split over segments as on a real link).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import secrets
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from netsim import Conv, segments

HOST = "shop.test"
"""The name curl asks for (SNI), resolved to the namespace's loopback by ``--resolve``."""

SIZES = {"empty": 0, "small": 120, "mid": 5000, "big": 70000}
"""Static files nginx serves, by name: bodies from none to several TLS records."""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def make_cert(d: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
            .sign(key, hashes.SHA256()))
    kp, cp = d / "key.pem", d / "cert.pem"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()))
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cp, kp




def flight_frames(flights: list[tuple[bool, bytes]], sizes: list[int], rng: random.Random,
                  conv: Conv | None = None) -> list[tuple[float, int, bytes]]:
    """The frames of one TCP connection (``conv``, or a client to 10.0.0.2:443) carrying
    ``flights`` cut in segments of sizes drawn from ``sizes``: handshake, data, FINs."""
    conv = conv or Conv(server=("10.0.0.2", 443))
    frames = conv.handshake()
    for from_client, b in flights:
        for seg in segments(b, rng.choice(sizes)):
            frames.append(conv.c(seg) if from_client else conv.s(seg))
    return frames + [conv.fin_c(), conv.fin_s()]

class MemoryTls:
    """One TLS connection between two in-memory OpenSSL endpoints (``ssl.MemoryBIO``), the
    client writing its secrets to ``keylog``: ``flights`` is every (from_client, bytes) that
    crossed, in order, as a capture would see them. ``ciphers``: an OpenSSL cipher list, with
    ``/noetm`` appended for MAC-then-encrypt (no RFC 7366 encrypt-then-MAC)."""

    def __init__(self, tmp: Path, version: ssl.TLSVersion, keylog: Path, *,
                 alpn: str = "http/1.1", ciphers: str | None = None) -> None:
        cert, key = make_cert(tmp)
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(cert, key)
        sctx.set_alpn_protocols([alpn])
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.check_hostname = False
        cctx.verify_mode = ssl.CERT_NONE
        cctx.minimum_version = cctx.maximum_version = version
        cctx.set_alpn_protocols([alpn])
        if ciphers and ciphers.endswith("/noetm"):
            cctx.options |= 0x80000  # SSL_OP_NO_ENCRYPT_THEN_MAC
        if ciphers:
            cctx.set_ciphers(ciphers.split("/")[0])
            sctx.set_ciphers(ciphers.split("/")[0])  # Python's server default leaves SHA-1 out
        cctx.keylog_filename = str(keylog)
        self.keylog = keylog
        self.cin, self.cout, self.sin, self.sout = (ssl.MemoryBIO() for _ in range(4))
        self.c = cctx.wrap_bio(self.cin, self.cout, server_hostname=HOST)
        self.s = sctx.wrap_bio(self.sin, self.sout, server_side=True)
        self.flights: list[tuple[bool, bytes]] = []

    def step(self) -> bool:
        """Handshake as far as it goes, then move the bytes pending, client first; whether
        any moved."""
        for obj in (self.c, self.s):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        moved = False
        for from_client, src, dst in ((True, self.cout, self.sin), (False, self.sout, self.cin)):
            b = src.read()
            if b:
                self.flights.append((from_client, b))
                dst.write(b)
                moved = True
        return moved

    def pump(self) -> None:
        """``step`` until nothing moves."""
        for _ in range(50):
            if not self.step():
                return


NGINX_CONF = """
user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    keepalive_requests 1000;
    server {{
        listen 127.0.0.1:443 ssl;
        server_name {host};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:AES256-GCM-SHA384:AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-SHA256:AES256-SHA;
        ssl_session_tickets off;
        root {d}/www;
        location = /post {{ return 201 "created\\n"; }}
    }}
    server {{
        listen 127.0.0.1:8443 ssl http2;
        ssl_protocols TLSv1.3;  # ALPN then travels encrypted (EncryptedExtensions)
        server_name {host};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {d}/www;
    }}
}}
"""


@dataclass
class Lab:
    ns: str
    d: Path

    def run(self, *argv: str, **kw: object) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], **kw)  # type: ignore

    def popen(self, *argv: str, **kw: object) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **kw)  # type: ignore


def wait_port(lab: Lab, port: int, proc: subprocess.Popen, what: str) -> None:
    """Until something listens on ``port`` in the lab, or ``proc`` died (its stderr raised)."""
    deadline = time.monotonic() + 15
    while True:
        r = lab.run("bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}", capture_output=True)
        if r.returncode == 0:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"{what} did not start: {err}" + _read(lab.d / "error.log"))
        time.sleep(0.05)


def stop(p: subprocess.Popen | None) -> None:
    """Terminate, then kill after 5 s."""
    if p is None:
        return
    p.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(5)
    if p.poll() is None:
        p.kill()
        p.wait()


@contextlib.contextmanager
def nginx_lab(tmp: Path, conf: str, prefix: str) -> Iterator[Lab]:
    """A namespace (loopback at MTU 1500, offloads off: records really split over segments)
    with the ``SIZES`` files, a self-signed cert for ``HOST`` and nginx running ``conf``
    (formatted with ``d``, ``host``, ``cert``, ``key``) until port 443 answers."""
    ns = f"{prefix}{secrets.token_hex(3)}"
    lab = Lab(ns, tmp)
    nginx = None
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "mtu", "1500")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("ip", "netns", "exec", ns, "ethtool", "-K", "lo", "tso", "off", "gso", "off",
               "gro", "off")
        (tmp / "www").mkdir()
        (tmp / "tmp").mkdir()
        for name, n in SIZES.items():
            (tmp / "www" / name).write_bytes(bytes((i * 7 + n) % 251 for i in range(n)))
        cert, key = make_cert(tmp)
        (tmp / "nginx.conf").write_text(conf.format(d=tmp, host=HOST, cert=cert, key=key))
        nginx = lab.popen("nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(lab, 443, nginx, "nginx")
        yield lab
    finally:
        stop(nginx)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def tls_lab(tmp: Path) -> contextlib.AbstractContextManager[Lab]:
    """The namespace with nginx serving HTTPS on 127.0.0.1:443 (``HOST``)."""
    return nginx_lab(tmp, NGINX_CONF, "sttls")


@contextlib.contextmanager
def capture(lab: Lab, pcap: Path) -> Iterator[None]:
    """tcpdump on the namespace's loopback, port 443, for the duration."""
    p = lab.popen("tcpdump", "-i", "lo", "-B", "65536", "--immediate-mode", "-U", "-s", "0",
                  "-w", str(pcap), "tcp", "port", "443", "or", "tcp", "port", "8443",
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert p.stderr is not None
        os.set_blocking(p.stderr.fileno(), False)
        deadline = time.monotonic() + 10
        seen = b""
        while b"listening on" not in seen:
            chunk = p.stderr.read() or b""
            seen += chunk
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump did not start: {seen.decode(errors='replace')}")
            time.sleep(0.02)
        yield
        time.sleep(0.5)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass
class Fetch:
    method: str
    path: str
    status: int
    size: int


def curl(lab: Lab, keylog: Path, paths: list[str], *, tls: str, ciphers: str = "",
         tls13_ciphers: str = "", post: str = "") -> list[Fetch]:
    """One curl run: every path on one keep-alive connection (HTTP/1.1), ``tls`` "1.2" or
    "1.3". ``post``: the body of a POST to /post added at the end. Returns what curl got."""
    argv = ["curl", "--http1.1", "-k", "-sS", "--resolve", f"{HOST}:443:127.0.0.1",
            f"--tlsv{tls}", "--tls-max", tls,
            "-w", "%{method} %{url_effective} %{http_code} %{size_download} "
                  "%{num_connects}\\n"]
    if ciphers:
        argv += ["--ciphers", ciphers]
    if tls13_ciphers:
        argv += ["--tls13-ciphers", tls13_ciphers]
    for p in paths:
        argv += ["-o", "/dev/null", f"https://{HOST}{p}"]
    if post:
        argv += ["--next", "--http1.1", "-k", "-sS", "--resolve", f"{HOST}:443:127.0.0.1",
                 f"--tlsv{tls}", "--tls-max", tls, "-o", "/dev/null", "-d", post,
                 "-w", "%{method} %{url_effective} %{http_code} %{size_download} "
                       "%{num_connects}\\n", f"https://{HOST}/post"]
        if ciphers:
            argv[-1:-1] = ["--ciphers", ciphers]
        if tls13_ciphers:
            argv[-1:-1] = ["--tls13-ciphers", tls13_ciphers]
    env = dict(os.environ, SSLKEYLOGFILE=str(keylog))
    r = lab.run(*argv, capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = []
    for line in r.stdout.decode().splitlines():
        method, url, code, size, _nc = line.split()
        out.append(Fetch(method, url.split(HOST, 1)[1], int(code), int(size)))
    return out


def curl_h2(lab: Lab, keylog: Path, path: str) -> int:
    """One HTTP/2 request over TLS (ALPN h2) to the second server (port 8443): its status."""
    env = dict(os.environ, SSLKEYLOGFILE=str(keylog))
    r = lab.run("curl", "--http2", "-k", "-sS", "--resolve", f"{HOST}:8443:127.0.0.1",
                "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                f"https://{HOST}:8443{path}", capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    code, version = r.stdout.decode().split()
    assert version == "2", version
    return int(code)


def tshark_requests(pcap: Path, keylog: Path) -> list[tuple[str, str]]:
    """(method, uri) of every HTTP request tshark decrypts from the capture with the key log."""
    r = subprocess.run(["tshark", "-n", "-r", str(pcap), "-o", f"tls.keylog_file:{keylog}",
                        "-o", "tcp.desegment_tcp_streams:TRUE",
                        "-Y", "http.request", "-T", "fields", "-e", "http.request.method",
                        "-e", "http.request.uri"], capture_output=True, timeout=120, check=True)
    return [tuple(line.split("\t")) for line in r.stdout.decode().splitlines()  # type: ignore
            if line.strip()]


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def openssl_key_updates(lab: Lab, keylog: Path, paths: list[str]) -> int:
    """``openssl s_client`` over TLS 1.3 asking for a KeyUpdate between requests ("K": update
    and have the server update too; "k": only the client's keys). Returns the 200s it read."""
    p = lab.popen("openssl", "s_client", "-connect", "127.0.0.1:443", "-servername", HOST,
                  "-tls1_3", "-crlf", "-keylogfile", str(keylog), stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None

    def send(b: bytes) -> None:
        p.stdin.write(b)  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
        time.sleep(0.3)

    time.sleep(0.4)
    for i, path in enumerate(paths):
        if i:
            send(b"K\n" if i % 2 else b"k\n")
        send(f"GET {path} HTTP/1.1\nHost: {HOST}\n\n".encode())
    out, err = p.communicate(timeout=20)
    assert err.count(b"KEYUPDATE") == len(paths) - 1, err.decode(errors="replace")
    return out.count(b"HTTP/1.1 200 ")
