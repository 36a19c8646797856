"""An HTTP/2 lab for the tests of ``replay.h2``: nginx serving HTTP/2 over TLS (1.2 and 1.3,
ALPN h2) and h2c with prior knowledge, a small ``h2``-package server answering ``Upgrade: h2c``,
and a gRPC server (grpcio), with tcpdump capturing, all in a network namespace made for the
test (prefix ``h2-``) and removed at its end. Reuses ``tests/tls/tlslab.py``'s certificate and
namespace helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tls"))

from tlslab import HOST, SIZES, Lab, nginx_lab, stop, wait_port  # noqa: F401

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
    keepalive_requests 100000;  # also HTTP/2's requests per connection (bench/extract/tls_h2.py)
    server {{
        listen 127.0.0.1:443 ssl http2;
        server_name {host};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        root {d}/www;
        location = /post {{ return 201 "created\\n"; }}
        location = /big {{ limit_rate 150k; }}  # slow: the other streams overtake it
    }}
    server {{
        listen 127.0.0.1:8080 http2;
        root {d}/www;
        location = /post {{ return 201 "created\\n"; }}
    }}
}}
"""

PORTS = (443, 8080, 8081, 50051)


def h2_lab(tmp: Path) -> contextlib.AbstractContextManager[Lab]:
    """The namespace with nginx (443 TLS h2, 8080 h2c) running."""
    return nginx_lab(tmp, NGINX_CONF, "h2-")


@contextlib.contextmanager
def capture(lab: Lab, pcap: Path, ports: tuple[int, ...] = PORTS, *,
            buffer_kib: int = 65536) -> Iterator[dict[str, int]]:
    """tcpdump on the namespace's loopback, on the lab's ports, for the duration. Yields a dict
    filled in when tcpdump has stopped: ``captured`` and ``dropped`` (its "packets dropped by
    kernel" line; a loaded loopback overruns a small capture buffer and the capture then lacks
    segments, so a count of what was extracted means nothing). ``buffer_kib``: tcpdump's ``-B``."""
    flt: list[str] = []
    for p in ports:
        flt += (["or"] if flt else []) + ["tcp", "port", str(p)]
    stats = {"captured": -1, "dropped": -1}
    p = lab.popen("tcpdump", "-i", "lo", "-B", str(buffer_kib), "--immediate-mode", "-U",
                  "-s", "0", "-w", str(pcap), *flt,
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    try:
        assert p.stderr is not None
        os.set_blocking(p.stderr.fileno(), False)
        deadline = time.monotonic() + 10
        while b"listening on" not in seen:
            seen += p.stderr.read() or b""
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump did not start: {seen.decode(errors='replace')}")
            time.sleep(0.02)
        yield stats
        time.sleep(0.5)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        assert p.stderr is not None
        seen += p.stderr.read() or b""
        p.stderr.close()
        for line in seen.decode(errors="replace").splitlines():
            words = line.split()
            if line.endswith("packets captured") and words[0].isdigit():
                stats["captured"] = int(words[0])
            elif line.endswith("packets dropped by kernel") and words[0].isdigit():
                stats["dropped"] = int(words[0])


def curl(lab: Lab, urls: list[str], *opts: str, keylog: Path | None = None
         ) -> list[tuple[str, int]]:
    """One curl run over one connection (``-Z --parallel``: multiplexed streams): (path,
    status) of each transfer."""
    argv = ["curl", "-k", "-sS", "--resolve", f"{HOST}:443:127.0.0.1", *opts,
            "-w", "%{url_effective} %{http_code} %{http_version}\\n"]
    for u in urls:
        argv += ["-o", "/dev/null", u]
    env = dict(os.environ)
    if keylog is not None:
        env["SSLKEYLOGFILE"] = str(keylog)
    r = lab.run(*argv, capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = []
    for line in r.stdout.decode().splitlines():
        url, code, version = line.split()
        assert version == "2", line
        path = "/" + url.split("://", 1)[1].split("/", 1)[1]
        out.append((path, int(code)))
    return out


def tshark_h2(pcap: Path, keylog: Path | None, *extra: str) -> list[tuple[str, ...]]:
    """(method, path) of every HTTP/2 request header block tshark dissects."""
    argv = ["tshark", "-n", "-r", str(pcap)]
    if keylog is not None:
        argv += ["-o", f"tls.keylog_file:{keylog}"]
    argv += [*extra, "-Y", "http2.type == 1 && http2.header.name == \":method\"",
             "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|",
             "-e", "http2.headers.method", "-e", "http2.headers.path"]
    r = subprocess.run(argv, capture_output=True, timeout=120, check=True)
    out = []
    for line in r.stdout.decode().splitlines():
        if not line.strip():
            continue
        methods, paths = line.split("\t")
        out.extend(zip(methods.split("|"), paths.split("|"), strict=False))
    return out
