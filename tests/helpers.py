"""Helpers every test folder shares (``tests/`` is on the path through its conftest): a free
local port, and the asyncio TCP server in a network namespace that the lab tests' HTTP backends
are made of."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Self

from netconfig import netns as nsmod


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NsServer:
    """An asyncio TCP server on (addr, port) in namespace ``ns`` (``None``: this one), on a loop
    of its own in a thread, as a context manager. Subclasses answer in ``_handle``; at exit the
    connections still open are cancelled before the loop closes (no 'Event loop is closed'
    noise when their coroutines are collected later)."""

    def __init__(self, ns: str | None, addr: str, port: int) -> None:
        self.ns, self.addr, self.port = ns, addr, port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.server: Any = None

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        sock = nsmod.socket_in_netns(self.ns)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.addr, self.port))
        sock.listen(4096)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, sock=sock, backlog=4096))
        self._ready.set()
        self.loop.run_forever()
        self.server.close()
        pending = asyncio.all_tasks(self.loop)
        for t in pending:
            t.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(5), f"{type(self).__name__} did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
