"""A small, fast HTTP/1.1 keep-alive server for the replay benchmark (uvloop + httptools).

Why not nginx: it is not installed here, and this server answers ~100k small requests/s on one
core, like one nginx worker, so it is not what the benchmark measures. Answers every request with
a fixed small JSON body. Pipelining-safe (answers in order).

It also counts what it serves, so every client is measured the same way, where the requests
arrive: ``GET /__stats`` answers ``{"count", "first", "last"}`` (perf_counter seconds) and
``GET /__reset`` zeroes them. (mitmdump exits before its replay finishes, so its own timing
cannot be trusted; wrk's and locust's own figures are printed next to these.)

Usage: ``python bench/replay/server.py PORT`` (prints ``ready`` when listening).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httptools

BODY = b'{"ok":true,"items":[1,2,3],"name":"shadowtap bench"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
STATS = {"count": 0, "first": 0.0, "last": 0.0}


def _plain(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class Proto(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url = url

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        if self.url.startswith(b"/__"):
            if self.url == b"/__reset":
                STATS.update(count=0, first=0.0, last=0.0)
            self.transport.write(_plain(json.dumps(STATS).encode()))
            return
        now = time.perf_counter()
        if not STATS["count"]:
            STATS["first"] = now
        STATS["count"] += 1
        STATS["last"] = now
        if self.parser.should_keep_alive():
            self.transport.write(RESPONSE)
        else:
            self.transport.write(CLOSE_RESPONSE)
            self.transport.close()


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Proto, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
