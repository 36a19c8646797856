"""A request-smuggling attempt (CL.TE) through the lab gateway, at a real nginx and at a
Python server in production: the appliance on the mirror port reports the desync, and the
shadows receive nothing of the attempt (while an ordinary request is replayed to them)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
from apphelpers import Server, free_port, serve_http, wait_for

from appliance.live import config
from appliance.live.engine import LiveEngine
from netconfig import lab
from netconfig import netns as nsmod

pytestmark = pytest.mark.root
VIP = "10.77.100.10"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
BODY = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: lab\r\n\r\n"
ATTACK = (b"POST /attack HTTP/1.1\r\nHost: lab\r\nContent-Length: %d\r\n"
          b"Transfer-Encoding: chunked\r\n\r\n" % len(BODY)) + BODY


class Recorder(BaseHTTPRequestHandler):
    """A shadow that answers 200 and remembers every path it was asked for."""

    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        type(self).seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _answer

    def log_message(self, *a: object) -> None:
        pass


def _nginx(ns: str, port: int, d: Path) -> subprocess.Popen:
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(f"""
daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{ listen {VIP}:{port}; location / {{ return 200 "nginx\\n"; }} }}
}}
""")
    p = subprocess.Popen(["ip", "netns", "exec", ns, NGINX, "-p", str(d), "-c", str(conf)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return p


def _talk(ns: str, port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send ``data`` on a new connection from the client namespace; what the server said."""
    s = nsmod.socket_in_netns(ns)
    s.settimeout(timeout)
    s.connect((VIP, port))
    out = b""
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while chunk := s.recv(65536):
            out += chunk
    except (TimeoutError, OSError):
        pass
    finally:
        s.close()
    return out


def _up(ns: str, port: int) -> bool:
    try:
        return _talk(ns, port, b"GET /ready HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n",
                     1.0).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@pytest.mark.skipif(NGINX is None, reason="nginx not installed")
def test_smuggling_attempt_is_flagged_and_nothing_of_it_is_replayed(
        running_lab: lab.LabSpec, tmp_path: Path) -> None:
    Recorder.seen = []
    sec, cand = free_port(), free_port()
    client, prod = running_lab.ns("client"), running_lab.ns("prod")
    nginx_port, py_port = 8080, 80
    cfg = config.parse({
        "source": {"interface": "cap0", "netns": running_lab.ns("gateway"),
                   "filter": f"tcp port {py_port} or tcp port {nginx_port}"},
        "pipeline": {"workers": 0, "sanitise": {"enabled": False},
                     "sinks": [{"type": "jsonl", "path": str(tmp_path / "ex.jsonl")}]},
        "shadowing": {"secondary": f"http://127.0.0.1:{sec}",
                      "candidate": f"http://127.0.0.1:{cand}", "min_samples": 1,
                      "verdict_every": "1s", "report": str(tmp_path / "report.json")},
        "metrics": {"listen": None}})
    ngx = _nginx(prod, nginx_port, tmp_path / "nginx")
    doc: dict[str, Any] | None = None
    try:
        with serve_http(Recorder, "127.0.0.1", sec), serve_http(Recorder, "127.0.0.1", cand), \
                Server(prod, addr=VIP, port=py_port):
            wait_for(lambda: _up(client, nginx_port), 10, "nginx")
            eng = LiveEngine(cfg, source="test").start()
            try:
                time.sleep(1.0)  # the capture is attached
                answers = {}
                for port in (nginx_port, py_port):
                    ok = _talk(client, port, b"GET /control HTTP/1.1\r\nHost: lab\r\n\r\n")
                    assert ok.startswith(b"HTTP/1.1 200"), ok
                    answers[port] = _talk(client, port, ATTACK)
                # nginx refuses Transfer-Encoding with Content-Length (400); the Python server
                # reads Content-Length and answers once: either way production was attacked
                assert answers[nginx_port].startswith(b"HTTP/1.1 400"), answers[nginx_port]
                assert answers[py_port].startswith(b"HTTP/1.1 200"), answers[py_port]
                wait_for(lambda: Recorder.seen.count("/control") >= 4, 20, "control replayed")
                time.sleep(1.5)
            finally:
                doc = eng.stop()
    finally:
        ngx.terminate()
        ngx.wait(10)
    recs = [json.loads(line) for line in (tmp_path / "ex.jsonl").read_text().splitlines()]
    attacks = [r for r in recs if r["request"]["target"] == "/attack"]
    assert len(attacks) == 2, [r["request"]["target"] for r in recs]
    for r in attacks:
        assert r["completeness"]["desync"] is True
        assert r["completeness"]["desync_reason"] == "te_with_content_length"
        assert "te_with_content_length" in r["completeness"]["weird"]
    # the smuggled request is in the log as what it is: desync, no answer paired
    smuggled = [r for r in recs if r["request"]["target"] == "/smuggled"]
    assert len(smuggled) == 2, [r["request"]["target"] for r in recs]
    for r in smuggled:
        assert r["completeness"]["desync"] is True
        assert r["completeness"]["desync_reason"] == "smuggled"
        assert "response" not in r
    # the shadows saw the control requests, and nothing of the attempt
    assert sorted(Recorder.seen) == ["/control"] * 4, Recorder.seen
    assert doc is not None
    assert doc["summary"]["skipped"].get("desync") == 4, doc["summary"]["skipped"]
