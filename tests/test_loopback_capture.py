"""Real traffic, real kernel frames: a real HTTP server and client on loopback, captured with
tcpdump, then extracted; every exchange must match what the client sent and received, byte for
byte (method, target, headers in order, bodies, status).
"""

from __future__ import annotations

import gzip
import http.client
import http.server
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import free_port

from replay.extract import Summary, extract_file

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: object) -> None:
        pass

    def _reply(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        path = self.path
        if path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first,", b"second," * 50, body):
                if part:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if path.startswith("/gzip"):
            out = gzip.compress(b"compressed " * 200)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
        elif path.startswith("/empty"):
            self.send_response(204)
            self.end_headers()
            return
        else:
            out = b"echo:" + self.command.encode() + b":" + path.encode() + b":" + body
            self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _reply


def test_loopback_capture_matches_client_view(tmp_path: Path) -> None:
    port = free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cap = tmp_path / "lo.pcap"
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-B", "16384", "-s", "0", "-w",
                             str(cap), f"tcp port {port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # tcpdump attaches
        sent = []
        for c in range(8):  # 8 keep-alive connections, 25 requests each
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            for i in range(25):
                kind = (c * 25 + i) % 6
                body = None
                if kind == 0:
                    method, target = "GET", f"/item/{c}/{i}?q=a%20b"
                elif kind == 1:
                    method, target, body = "POST", f"/orders/{c}", (f'{{"n":{i}}}' * 300).encode()
                elif kind == 2:
                    method, target = "GET", f"/chunked/{i}"
                elif kind == 3:
                    method, target = "HEAD", f"/big/{i}"
                elif kind == 4:
                    method, target = "GET", "/gzip"
                else:
                    method, target = "DELETE", f"/empty/{i}"
                headers = {"X-Test": f"{c}-{i}", "User-Agent": "shadowtap-test"}
                conn.request(method, target, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                sent.append((method, target, body or b"", r.status, data,
                             f"127.0.0.1:{port}", f"{c}-{i}"))
            conn.close()
        time.sleep(0.5)
    finally:
        dump.send_signal(signal.SIGINT)
        _, err = dump.communicate(timeout=10)
        srv.shutdown()
    # stopped cleanly by the SIGINT (the capture file is complete); the extraction below is
    # what proves nothing was lost. tcpdump's statistics lines are its own wording: only when
    # it reports a kernel drop count must that count be 0.
    assert dump.returncode == 0, err
    drops = re.search(rb"(\d+) packets? dropped by kernel", err)
    assert drops is None or int(drops.group(1)) == 0, err
    s = Summary()
    exs = list(extract_file(cap, summary=s))
    assert s.exchanges == len(sent) == 200
    assert s.incomplete_exchanges == 0 and s.gaps == 0
    got = {}
    for ex in exs:
        hdrs = dict(ex.request.headers)
        got[hdrs["X-Test"]] = ex
    for method, target, body, status, data, host, tag in sent:
        ex = got[tag]
        assert ex.request.method == method and ex.request.target == target
        assert ex.request.host == host
        assert [k for k, _ in ex.request.headers][:2] == ["Host", "Accept-Encoding"]
        assert ex.request.body == body
        assert ex.response.status == status
        # http.client hands back the de-chunked body (gzip untouched): so does the extractor.
        assert ex.response.body == data
        assert ex.completeness.complete
