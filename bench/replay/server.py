"""A small, fast HTTP/1.1 keep-alive server for the replay benchmark (uvloop + httptools).

Why not nginx: it is not installed here, and this server answers ~100k small requests/s on one
core, like one nginx worker, so it is not what the benchmark measures. Answers every request with
a fixed small JSON body. Pipelining-safe (answers in order).

Usage: ``python bench/replay/server.py PORT`` (prints ``ready`` when listening).
"""

from __future__ import annotations

import asyncio
import sys

import httptools

BODY = b'{"ok":true,"items":[1,2,3],"name":"shadowtap bench"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


class Proto(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
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
