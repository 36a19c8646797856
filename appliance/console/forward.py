"""A loopback TCP forwarder into a network namespace: how the demo shows the console of an
appliance that runs inside the lab's gateway namespace to a browser on the host.

``NetnsForwarder(("127.0.0.1", 9750), "st-gateway", ("127.0.0.1", 9750)).start()`` accepts on
the host's loopback and, per connection, connects a socket created inside the namespace
(``netconfig.netns.socket_in_netns``) to the target, then copies bytes both ways. The console
behind it still asks for its token."""

from __future__ import annotations

import contextlib
import socket
import threading


class NetnsForwarder:
    def __init__(self, listen: tuple[str, int], netns: str, target: tuple[str, int]) -> None:
        self.listen, self.netns, self.target = listen, netns, target
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        assert self._sock is not None
        return self._sock.getsockname()[1]

    def start(self) -> NetnsForwarder:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(self.listen)
        except OSError:
            s.bind((self.listen[0], 0))  # the usual port is taken: any free one
        s.listen(16)
        s.settimeout(0.5)
        self._sock = s
        threading.Thread(target=self._accept, name="console-forward", daemon=True).start()
        return self

    def _accept(self) -> None:
        from netconfig.netns import socket_in_netns

        while not self._stop.is_set():
            try:
                c, _ = self._sock.accept()  # type: ignore[union-attr]
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                up = socket_in_netns(self.netns)
                up.settimeout(5)
                up.connect(self.target)
                up.settimeout(None)
            except Exception:
                c.close()
                continue
            with self._lock:
                self._conns.update((c, up))
            for a, b in ((c, up), (up, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
                with self._lock:
                    self._conns.discard(s)

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
