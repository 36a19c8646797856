"""The console's HTTP server: standard library only (``ThreadingHTTPServer`` in a thread).

Routes (every one needs the token; without it 401)::

    GET  /?token=T          sets the cookie and redirects to /   (401 with a wrong token)
    GET  /                  the app (static/index.html); /static/app.js, /static/app.css
    GET  /api/overview      capture rate, kernel drops, shed share, exchanges/s, shadows, verdict
    GET  /api/rates         the last N one-second samples (charts)
    GET  /api/findings      endpoints, regressions, undecided, noise (no examples), marks
    GET  /api/finding?endpoint=&field=&kind=   one finding with its examples, highlighted
    POST /api/noise         {"endpoint", "field", "kind", "noise": true|false} -> new verdict
    GET  /api/exchanges?method=&status=&q=&host=&offset=&limit=   newest first, paged
    GET  /api/exchange?id=  one sanitised exchange (recent ones)
    GET  /api/latency[?endpoint=]   latency per endpoint over time
    GET  /api/shadows       live shadows and the image/shadow pool
    GET  /api/canary        the canary: a controller's live state (console.canary_control) or
                            a status file (console.canary_status); weight and step over time
    POST /api/canary/{pause,resume,promote,abort}   forwarded to the controller's control API
                            (with the controller's own token); 404 without canary_control
    GET  /api/events        Server-Sent Events: "overview" every second, "verdict" on a new one

The token travels as ``Authorization: Bearer T`` or the HttpOnly, SameSite=Strict cookie the
``/?token=`` visit sets; a POST must also be ``application/json`` (a cross-site form cannot
send that without a preflight this server never answers). Responses carry a strict
Content-Security-Policy: no inline script, nothing from elsewhere.
"""

from __future__ import annotations

import contextlib
import hmac
import http.server
import logging
import secrets
import threading
import urllib.parse
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from appliance.console import ConsoleConfig
from appliance.console.state import ConsoleState

log = logging.getLogger("shadowtap.console")

COOKIE = "shadowtap_console"
MAX_SSE = 16
_STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
           "index.html": "text/html; charset=utf-8"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def read_token(ccfg: ConsoleConfig) -> tuple[str, bool]:
    """(token, generated): from ``token_file`` or a fresh random one."""
    if ccfg.token_file:
        tok = Path(ccfg.token_file).read_text().strip()
        if len(tok) < 16 or any(c.isspace() for c in tok):
            raise RuntimeError(f"console.token_file: {ccfg.token_file}: the token must be one "
                               "line of 16 or more characters without spaces")
        return tok, False
    return secrets.token_urlsafe(24), True


def _static(name: str) -> bytes:
    return resources.files("appliance.console").joinpath("static", name).read_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("console %s " + fmt, self.address_string(), *args)

    # -- helpers -----------------------------------------------------------------------------

    def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
              ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, doc: Any, code: int = 200) -> None:
        self._send(code, orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS),
                   "application/json")

    def _denied(self) -> None:
        self._send(401, b"401: this console needs its token: open the URL printed at start "
                        b"(/?token=...) or send 'Authorization: Bearer <token>'\n",
                   "text/plain; charset=utf-8", {"WWW-Authenticate": 'Bearer realm="shadowtap"'})

    def _token_ok(self, tok: str | None) -> bool:
        return bool(tok) and hmac.compare_digest(tok.encode(), self.server.token.encode())

    def _authed(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer ") and self._token_ok(auth[7:].strip()):
            return True
        for part in (self.headers.get("Cookie") or "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == COOKIE and self._token_ok(v):
                return True
        return False

    # -- routes ------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("console: GET %s failed", self.path)
            with contextlib.suppress(Exception):
                self._json({"error": "internal error (see the appliance log)"}, 500)

    def _get(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        qs = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        if url.path == "/" and "token" in qs:
            if not self._token_ok(qs["token"]):
                self._denied()
                return
            self._send(303, b"", "text/plain", {
                "Location": "/",
                "Set-Cookie": f"{COOKIE}={self.server.token}; Path=/; HttpOnly; "
                              "SameSite=Strict"})
            return
        if not self._authed():
            self._denied()
            return
        st = self.server.state
        path = url.path
        if path in ("/", "/index.html"):
            self._send(200, _static("index.html"), _STATIC["index.html"])
        elif path.startswith("/static/") and path[8:] in _STATIC:
            self._send(200, _static(path[8:]), _STATIC[path[8:]])
        elif path == "/api/overview":
            self._json(st.overview())
        elif path == "/api/rates":
            self._json(st.rates(_int(qs.get("points"), 300, 1, 900)))
        elif path == "/api/findings":
            self._json(st.findings())
        elif path == "/api/finding":
            f = st.finding(qs.get("endpoint", ""), qs.get("field", ""), qs.get("kind", ""))
            self._json(f if f is not None else {"error": "no such finding in the current "
                                                         "verdict"}, 200 if f else 404)
        elif path == "/api/exchanges":
            self._json(st.ring.page(method=qs.get("method", ""), status=qs.get("status", ""),
                                    q=qs.get("q", ""), host=qs.get("host", ""),
                                    offset=_int(qs.get("offset"), 0, 0, 10**9),
                                    limit=_int(qs.get("limit"), 50, 1, 500)) | {
                "sanitised": st.sanitised, "not_listed": st.tail.skipped})
        elif path == "/api/exchange":
            d = st.ring.detail(qs.get("id", ""))
            self._json(d if d is not None else {"error": "not among the recent exchanges "
                                                         "kept in full"}, 200 if d else 404)
        elif path == "/api/latency":
            self._json(st.latency_series(qs.get("endpoint")))
        elif path == "/api/shadows":
            self._json(st.shadows())
        elif path == "/api/canary":
            self._json(st.canary())
        elif path == "/api/events":
            self._events()
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        try:
            self._post()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("console: POST %s failed", self.path)
            with contextlib.suppress(Exception):
                self._json({"error": "internal error (see the appliance log)"}, 500)

    def _post(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(n, 1 << 16)) if n > 0 else b""
        if not self._authed():
            self._denied()
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._json({"error": "send application/json"}, 415)
            return
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/api/canary/"):
            self._canary_verb(path.rsplit("/", 1)[-1], body)
            return
        if path != "/api/noise":
            self._json({"error": "not found"}, 404)
            return
        try:
            d = orjson.loads(body)
            ep, fld = str(d["endpoint"]), str(d["field"])
            kind = d.get("kind")
            noise = bool(d.get("noise", True))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._json({"error": 'expected {"endpoint": ..., "field": ..., "kind": ..., '
                                 '"noise": true|false}'}, 400)
            return
        if not ep or not fld or len(ep) > 1000 or len(fld) > 1000:
            self._json({"error": "endpoint and field are required"}, 400)
            return
        st = self.server.state
        changed = st.marks.set(ep, fld, str(kind) if kind else None, noise)
        log.info("console: %s %s %s %s as noise", "marked" if noise else "un-marked", ep, fld,
                 kind or "(any kind)")
        if changed:
            st.engine.rejudge()
            st.sample()
        self._json({"changed": changed, "marks": st.marks.marked(),
                    "verdict": st.overview()["verdict"]})

    def _canary_verb(self, verb: str, body: bytes) -> None:
        from appliance.canary.control import ControlError

        if verb not in ("pause", "resume", "promote", "abort"):
            self._json({"error": f"no canary verb {verb!r}"}, 404)
            return
        st = self.server.state
        if not st.ccfg.canary_control:
            self._json({"error": "no canary controller configured (console.canary_control)"},
                       404)
            return
        try:
            args = orjson.loads(body) if body else {}
            if not isinstance(args, dict):
                raise TypeError
        except (orjson.JSONDecodeError, TypeError):
            self._json({"error": "expected a JSON object"}, 400)
            return
        args = {k: args[k] for k in ("full", "reason") if k in args}
        args["by"] = "console"
        try:
            out = st.canary_client().call(verb, args)
        except ControlError as e:
            self._json({"ok": False, "error": str(e)}, 409)
            return
        log.info("console: canary %s", verb)
        self._json(out)

    def _events(self) -> None:
        srv = self.server
        with srv.sse_lock:
            if srv.sse_clients >= MAX_SSE:
                self._json({"error": f"too many live views (max {MAX_SSE})"}, 503)
                return
            srv.sse_clients += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self.close_connection = True
            st = srv.state
            seq, rseq = -1, st.report_seq
            self.wfile.write(b"retry: 2000\n\n")
            while not srv.stopping:
                with st.changed:
                    if st.tick_seq == seq:
                        st.changed.wait(2.0)
                if srv.stopping:
                    break
                if st.tick_seq == seq:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    continue
                seq = st.tick_seq
                ov = st.overview()
                msg = b"event: overview\ndata: " + orjson.dumps(ov, default=str) + b"\n\n"
                if st.report_seq != rseq:
                    rseq = st.report_seq
                    msg += b"event: verdict\ndata: " + orjson.dumps(ov["verdict"],
                                                                  default=str) + b"\n\n"
                self.wfile.write(msg)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass
        finally:
            with srv.sse_lock:
                srv.sse_clients -= 1


def _int(v: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(v))) if v is not None else default
    except ValueError:
        return default


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], state: ConsoleState, token: str) -> None:
        super().__init__(addr, _Handler)
        self.state = state
        self.token = token
        self.stopping = False
        self.sse_lock = threading.Lock()
        self.sse_clients = 0


class Console:
    """The console of a running engine.

    >>> con = Console(engine, cfg.console).start()   # binds, starts sampling
    >>> con.url, con.token                            # print these for the user
    >>> con.stop()
    """

    def __init__(self, engine: Any, ccfg: ConsoleConfig) -> None:
        self.engine = engine
        self.ccfg = ccfg
        self.token, self.generated = read_token(ccfg)
        self.state = ConsoleState(engine, ccfg)
        host, _, port = ccfg.listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self._srv: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def login_url(self) -> str:
        return f"{self.url}?token={self.token}"

    def start(self) -> Console:
        try:
            self._srv = _Server((self.host, self.port), self.state, self.token)
        except OSError as e:
            raise RuntimeError(f"console.listen: cannot listen on {self.ccfg.listen} "
                               f"({e.strerror or e}); pick a free address") from None
        self.port = self._srv.server_address[1]
        self.state.start()
        self._thread = threading.Thread(target=self._srv.serve_forever, kwargs={
            "poll_interval": 0.2}, name="console-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._srv is None:
            return
        self._srv.stopping = True
        with self.state.changed:
            self.state.changed.notify_all()
        self._srv.shutdown()
        self._srv.server_close()
        self.state.stop()
        if self._thread is not None:
            self._thread.join(5)
        self._srv = None


def serve(engine: Any, ccfg: ConsoleConfig) -> Console:
    return Console(engine, ccfg).start()


__all__ = ["Console", "read_token", "serve"]

