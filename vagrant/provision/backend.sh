#!/bin/sh
# A backend (prod, canary) answers HTTP on :80, also on the VIP, naming itself, so a client
# can tell which backend served it. The namespace lab's demo starts its own services instead.
set -eu
NODE=${1:?usage: backend.sh NODE}
cat > /usr/local/sbin/shadowtap-lab-web <<'PY'
#!/usr/bin/env python3
"""Answer every GET/POST with the node's name (header X-Served-By and a small JSON body)."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NODE = sys.argv[1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        out = json.dumps({"served_by": NODE, "path": self.path, "received": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Served-By", NODE)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


ThreadingHTTPServer(("0.0.0.0", 80), Handler).serve_forever()
PY
chmod 0755 /usr/local/sbin/shadowtap-lab-web
cat > /etc/systemd/system/shadowtap-lab-web.service <<UNIT
[Unit]
Description=shadowtap lab backend web server ($NODE)
After=network.target

[Service]
ExecStart=/usr/local/sbin/shadowtap-lab-web $NODE
Restart=always

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable shadowtap-lab-web.service >/dev/null 2>&1
systemctl restart shadowtap-lab-web.service
echo "$NODE: web server on :80 (X-Served-By: $NODE)"
