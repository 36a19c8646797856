"""A small HTTP/2 server built on the ``h2`` package, for the tests: h2c with prior knowledge
and ``Upgrade: h2c`` (which nginx does not do). It answers every request with a JSON document
naming the method, path, body length and stream; ``/status/N`` answers status N.

Run: ``python h2server.py PORT [TAG [CERT KEY]]`` (TAG goes into each answer, to tell servers
apart; with CERT and KEY it serves TLS with ALPN h2).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys

import h2.config
import h2.connection
import h2.events

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Proto(asyncio.Protocol):
    def __init__(self, tag: str = "h2") -> None:
        self.tag = tag
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.buf = b""
        self.mode = ""
        self.bodies: dict[int, bytes] = {}
        self.heads: dict[int, dict[str, str]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.mode:
            self.buf += data
            if len(self.buf) < len(PREFACE) and PREFACE.startswith(self.buf):
                return
            if self.buf.startswith(PREFACE):
                self.mode = "h2"
                self.conn.initiate_connection()
                data, self.buf = self.buf, b""
            else:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, rest = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
                self.buf = b""
                lines = head.split("\r\n")
                method, path, _ = lines[0].split(" ")
                hdrs = {k.strip().lower(): v.strip()
                        for k, v in (ln.split(":", 1) for ln in lines[1:])}
                if hdrs.get("upgrade", "").lower() != "h2c":
                    self.t.write(b"HTTP/1.1 505 No\r\ncontent-length: 0\r\n\r\n")
                    self.t.close()
                    return
                settings = hdrs.get("http2-settings", "")
                self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                             b"Upgrade: h2c\r\n\r\n")
                self.conn.initiate_upgrade_connection(
                    (settings + "=" * (-len(settings) % 4)).encode())
                self.mode = "h2"
                self.heads[1] = {":method": method, ":path": path}
                self.bodies[1] = b""
                self.answer(1)
                data = rest
        for ev in self.conn.receive_data(data) if data else []:
            if isinstance(ev, h2.events.RequestReceived):
                self.heads[ev.stream_id] = {k.decode() if isinstance(k, bytes) else k:
                                            v.decode() if isinstance(v, bytes) else v
                                            for k, v in ev.headers}
                self.bodies[ev.stream_id] = b""
            elif isinstance(ev, h2.events.DataReceived):
                self.bodies[ev.stream_id] = self.bodies.get(ev.stream_id, b"") + ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.answer(ev.stream_id)
        self.t.write(self.conn.data_to_send())

    def answer(self, sid: int) -> None:
        h = self.heads.pop(sid, {})
        body = self.bodies.pop(sid, b"")
        path = h.get(":path", "")
        status = 200
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        doc = json.dumps({"method": h.get(":method"), "path": path, "len": len(body),
                          "server": self.tag}).encode()
        self.conn.send_headers(sid, [(":status", str(status)), ("content-type",
                                      "application/json"), ("x-tag", self.tag),
                                     ("content-length", str(len(doc)))])
        self.conn.send_data(sid, doc, end_stream=True)
        self.t.write(self.conn.data_to_send())


async def main(port: int, tag: str = "h2", cert: str = "", key: str = "") -> None:
    loop = asyncio.get_running_loop()
    ctx = None
    if cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["h2"])
    srv = await loop.create_server(lambda: Proto(tag), "127.0.0.1", port, ssl=ctx)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), *sys.argv[2:5]))
