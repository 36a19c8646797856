"""Real HTTP servers on loopback for the replay tests: a tiny asyncio/httptools HTTP/1.1 server
running in its own thread, with pluggable behaviour (an app function, or a misbehaviour: slow,
reset, garbage), and the 'v1' / 'v2' services whose differences the comparator must find.

Why our own server rather than http.server: it must keep connections alive, answer fast enough
not to be what the pacing tests measure, and misbehave on demand.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import httptools
import orjson


@dataclass
class Seen:
    """A request as the server received it, with its arrival time (time.perf_counter)."""

    t: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Reply = tuple[int, list[tuple[str, str]], bytes]
App = Callable[[Seen], Reply]


class _Proto(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        if self.server.behaviour == "reset":
            transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        srv = self.server
        seen = Seen(time.perf_counter(), self.parser.get_method().decode(),
                    self._url.decode("latin-1"), self._headers, b"".join(self._body))
        keep = self.parser.should_keep_alive()
        self._url, self._headers, self._body = b"", {}, []
        with srv.lock:
            srv.seen.append(seen)
        b = srv.behaviour
        if b == "garbage":
            self.transport.write(b"SSH-2.0-OpenSSH_9.2 not http at all\r\n\r\n")  # type: ignore
            return
        if b == "close":
            self.transport.close()  # type: ignore[union-attr]
            return
        if b == "slow":
            return  # never answer
        status, headers, body = srv.app(seen)
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}"]
        head += [f"{k}: {v}" for k, v in headers]
        head.append(f"Content-Length: {len(body)}")
        if not keep:
            head.append("Connection: close")
        if seen.method == "HEAD":
            body = b""
        if b == "early_hints":
            self.transport.write(b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload"  # type: ignore
                                 b"\r\n\r\n")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)  # type: ignore
        if not keep or b == "drop_idle":
            self.transport.close()  # type: ignore[union-attr]


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found",
            500: "Internal Server Error"}


def ok_app(seen: Seen) -> Reply:
    return 200, [("Content-Type", "text/plain")], b"ok"


@dataclass
class HttpServer:
    """``with HttpServer(app) as srv: srv.url`` — serves on 127.0.0.1 in a background thread.

    ``behaviour``: ``normal`` (call ``app``), ``slow`` (never answer), ``reset`` (abort every
    connection), ``garbage`` (answer with non-HTTP bytes), ``close`` (close without answering),
    ``drop_idle`` (answer as keep-alive, then close: what an idle timeout does to a pool),
    ``early_hints`` (a 103 interim response before each answer).
    """

    app: App = ok_app
    behaviour: str = "normal"
    port: int = 0
    ssl_context: Any = None
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test server did not start")
        return self

    def _run(self) -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            loop.create_server(lambda: _Proto(self), "127.0.0.1", self.port, backlog=1024,
                               ssl=self.ssl_context)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dead_url() -> str:
    """A loopback URL where nothing listens (bound, then released)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------------
# The services under comparison


def _json(status: int, doc: object, gz: bool = False) -> Reply:
    body = orjson.dumps(doc)
    headers = [
        ("Content-Type", "application/json"),
        ("Date", formatdate(time.time() + random.random() * 5, usegmt=True)),
        ("X-Request-Id", str(uuid.uuid4())),
    ]
    if gz:
        body = gzip.compress(body, mtime=0)
        headers.append(("Content-Encoding", "gzip"))
    return status, headers, body


def make_service(version: str) -> App:
    """The 'v1' (production build) or 'v2' (candidate) service.

    Both builds are noisy on every call (a timestamp, a uuid request id, a set-like array in
    random order, a Date and X-Request-Id header). v2 carries the seeded regressions:

    * ``GET /api/users/{id}``: ``age`` changes type (number → string);
    * ``GET /api/orders/{id}``: ``currency`` vanishes (gzip-encoded endpoint);
    * ``GET /api/items/{id}``: ``related`` has one element too many (off by one);
    * ``GET /api/reports/{id}``: answers 500;
    * ``GET /api/health``: a harmless new field ``build`` (extra), for rules to allow.
    """
    v2 = version == "v2"

    def app(seen: Seen) -> Reply:
        parts = seen.path.split("?")[0].strip("/").split("/")
        rnd = random.Random()
        noise = {
            "generated_at": f"2026-11-26T13:{rnd.randrange(60):02d}:{rnd.randrange(60):02d}."
                            f"{rnd.randrange(10**6):06d}Z",
            "request_id": str(uuid.uuid4()),
        }
        if parts[:2] == ["api", "users"] and len(parts) == 3:
            uid = int(parts[2])
            tags = ["admin", "beta", "staff", "vip"]
            rnd.shuffle(tags)
            age = 20 + uid % 50
            doc = {"id": uid, "name": f"user{uid}", "age": str(age) if v2 else age,
                   "tags": tags, **noise}
            return _json(200, doc)
        if parts[:2] == ["api", "orders"] and len(parts) == 3:
            oid = int(parts[2])
            doc = {"order": oid, "total": round(oid * 10.5, 2), "items": [oid, oid + 1],
                   **noise}
            if not v2:
                doc["currency"] = "EUR"
            return _json(200, doc, gz="gzip" in seen.headers.get("accept-encoding", ""))
        if parts[:2] == ["api", "items"] and len(parts) == 3:
            iid = int(parts[2])
            related = [iid + k for k in range(1, 4 + (1 if v2 else 0))]
            return _json(200, {"item": iid, "related": related, **noise})
        if parts[:2] == ["api", "reports"] and len(parts) == 3:
            if v2:
                return _json(500, {"error": "internal"})
            return _json(200, {"report": parts[2], "rows": 3, **noise})
        if parts == ["api", "health"]:
            doc = {"ok": True, **noise}
            if v2:
                doc["build"] = "2.0.0"
            return _json(200, doc)
        if parts == ["api", "echo"] and seen.method == "POST":
            return _json(200, {"echo": orjson.loads(seen.body or b"null"), **noise})
        if parts and parts[0] == "page":
            html = (
                "<html>\n<head><title>Page</title></head>\n<body>\n"
                f"<p>page {parts[-1]}</p>\n<p>rendered {noise['generated_at']}</p>\n"
                "</body>\n</html>\n"
            ).encode()
            return 200, [("Content-Type", "text/html; charset=utf-8"),
                         ("Date", formatdate(usegmt=True))], html
        return 404, [("Content-Type", "text/plain")], b"not found"

    return app


def self_signed_context(tmp: Any) -> Any:
    """A server SSLContext with a fresh self-signed certificate for 127.0.0.1."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cp, kp = tmp / "cert.pem", tmp / "key.pem"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cp, kp)
    return ctx
