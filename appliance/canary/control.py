"""A controllable, crash-safe rollout: verbs over a local control API, state on disk, webhooks.

- ``ControlledRollout`` is the step machine (``rollout.Rollout``) plus the operator's verbs:
  ``pause`` (the step holds its weight and is never promoted; errors and latency still roll
  back), ``resume``, ``promote`` (to the next step now, ``full``: to the last one; the operator's
  word replaces the judge's and the gate's), ``abort`` (roll back now), and the
  confirm-promotion gate (``webhooks``). Verbs arrive on a queue and are applied by the loop's
  own thread at its next tick: the step machine stays single-threaded.
- ``ControlServer`` is the control API: HTTP on 127.0.0.1 (never another interface) with a
  bearer token read from a 0600 file (``load_or_create_token``); ``GET /v1/status``,
  ``POST /v1/{start,pause,resume,promote,abort}``. Anything without the token gets 401. It
  writes ``control.json`` (URL, pid, token file) next to the state so ``shadowtap canary
  status|pause|...`` find it (``ControlClient``).
- ``run_controlled`` is the controller: reconcile with the record left by an earlier run
  (``state.reconcile``: the live weight is read from the split and compared), write the state
  durably at every transition (weights are written as an intent before the split is touched and
  confirmed after they are read back), fire webhooks, and run ``rollout.run_rollout``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import secrets
import stat
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from appliance.canary import state as st
from appliance.canary.rollout import Judgement, Rollout, run_rollout

log = logging.getLogger("shadowtap.canary.control")

VERBS = ("start", "pause", "resume", "promote", "abort")


class ControlError(Exception):
    """A verb could not be delivered or was refused; the message says why."""


# ---- the step machine with verbs ---------------------------------------------------------------

class ControlledRollout(Rollout):
    def __init__(self, *args: Any, gate: Callable[[], bool] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gate = gate
        self.paused_at: float | None = None
        self.gate_holding = False
        self.resumed = False
        self.started_flag = threading.Event()
        self.commands: queue.Queue[tuple[str, dict[str, Any], threading.Event, dict]] = \
            queue.Queue()
        self.events: list[dict[str, Any]] = []

    # verbs, called from any thread: queued, applied by the loop
    def submit(self, verb: str, args: dict[str, Any] | None = None,
               timeout: float = 5.0) -> dict[str, Any]:
        if verb not in VERBS:
            raise ControlError(f"unknown verb {verb!r} (one of {', '.join(VERBS)})")
        if self.done:  # the loop has stopped applying verbs
            raise ControlError(f"the rollout is over ({self.state})")
        done, box = threading.Event(), {}
        self.commands.put((verb, dict(args or {}), done, box))
        if verb == "start":
            self.started_flag.set()
        if not done.wait(timeout):
            raise ControlError(f"the controller did not apply {verb} within {timeout:g} s")
        if "error" in box:
            raise ControlError(box["error"])
        return box["result"]

    def _note(self, event: str, **kw: Any) -> None:
        self.events.append({"t": round(time.time(), 3), "event": event, "step": self.step + 1,
                            "weight": self.weight, **kw})

    def apply_commands(self, now: float) -> None:
        while True:
            try:
                verb, args, done, box = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                box["result"] = self._apply(verb, args, now)
            except ControlError as e:
                box["error"] = str(e)
            except Exception as e:  # never let a verb kill the loop
                box["error"] = f"{verb} failed: {e!r}"
            done.set()

    def _apply(self, verb: str, args: dict[str, Any], now: float) -> dict[str, Any]:
        who = str(args.get("by") or "operator")
        if verb == "start":
            if self.state != "pending":
                raise ControlError(f"the rollout is already {self.state}")
            return {"state": self.state}  # Controller.run starts it
        if verb == "abort" and self.state == "pending":
            self.state = "rolled_back"
            self.reasons = [f"aborted by {who} before the start: the canary never got traffic"]
            return {"state": self.state}
        if self.done:
            raise ControlError(f"the rollout is over ({self.state})")
        if self.state != "running":
            raise ControlError("the rollout has not started: 'shadowtap canary start'")
        if verb == "pause":
            if self.paused_at is None:
                self.paused_at = now
                self._note("paused", by=who)
        elif verb == "resume":
            if self.paused_at is not None:
                self.step_started += now - self.paused_at  # the pause does not count
                self.paused_at = None
                self._note("resumed", by=who)
        elif verb == "abort":
            self._note("aborted", by=who)
            self.rollback([f"aborted by {who}" + (f": {args['reason']}" if args.get("reason")
                                                  else "")])
        elif verb == "promote":
            self._note("promote", by=who, full=bool(args.get("full")))
            self.advance(now, full=bool(args.get("full")), why=f"promoted by {who}")
        return {"state": self.state, "step": self.step + 1, "weight": self.weight,
                "paused": self.paused_at is not None}

    def advance(self, now: float, full: bool = False, why: str = "") -> None:
        """The operator's promotion: the next step (or the last) now, without the judge."""
        last = len(self.policy.steps) - 1
        sides = getattr(self.judge, "sides", {})
        self.history.append({"step": self.step + 1, "weight": self.weight,
                             "seconds": round(now - self.step_started, 1),
                             "decision": "promote", "reasons": [why] if why else [],
                             **{k: v.to_dict() for k, v in sides.items()}})
        if self.step >= last:
            self.state = "promoted"
            return
        self.paused_at = None
        self._enter(last if full else self.step + 1, now)

    def start(self, now: float) -> None:
        if self.resumed:  # state.resume_into put it back where the record left it
            return
        super().start(now)

    def promotion_next(self) -> bool:
        """Is the next move the promotion (the last step, or 'promoted' for one step)?"""
        n = len(self.policy.steps)
        return self.step + 1 >= n - 1

    def tick(self, now: float) -> Judgement | None:
        self.apply_commands(now)
        if self.state != "running":
            return None
        eff = now
        hold_at = self.step_started + self.policy.step_seconds - 1e-3
        if self.paused_at is not None:
            eff = min(self.paused_at, hold_at)  # the step's clock stops: no promotion
        elif (self.gate is not None and self.promotion_next()
              and now - self.step_started >= self.policy.step_seconds):
            if not self.gate():
                if not self.gate_holding:
                    self._note("gate-holding")
                self.gate_holding = True
                eff = min(now, hold_at)
            elif self.gate_holding:
                self.gate_holding = False
                self._note("gate-confirmed")
        return super().tick(eff)


# ---- the control API -----------------------------------------------------------------------------

def load_or_create_token(path: Path | str) -> str:
    """The bearer token in ``path`` (created 0600 with a random token when missing); a file
    others can read is refused."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = p.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ControlError(f"{p} is readable by others (mode {stat.S_IMODE(mode):o}): "
                               f"chmod 600 {p}") from None
        tok = p.read_text().strip()
        if len(tok) < 16:
            raise ControlError(f"{p}: the token must be at least 16 characters") from None
        return tok
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return load_or_create_token(p)
    tok = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(tok + "\n")
    return tok


def read_token(path: Path | str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise ControlError(f"cannot read the control token {path}: {e.strerror}") from None


class ControlServer:
    """HTTP on 127.0.0.1:``port`` for one controller; bearer token required on every path."""

    def __init__(self, token: str, status: Callable[[], dict[str, Any]],
                 submit: Callable[[str, dict[str, Any]], dict[str, Any]], port: int = 0,
                 host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ControlError(f"the control API listens on loopback only, not {host}")
        self.token = token
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                h = self.headers.get("Authorization", "")
                ok = h.startswith("Bearer ") and hmac.compare_digest(
                    h[7:].strip().encode(), outer.token.encode())
                if not ok:
                    self._send(401, {"error": "a bearer token is required (the controller's "
                                              "token file)"})
                return ok

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                if self.path.rstrip("/") in ("/v1/status", "/v1"):
                    self._send(200, status())
                else:
                    self._send(404, {"error": f"no {self.path}"})

            def do_POST(self) -> None:
                if not self._authorised():
                    return
                verb = self.path.rstrip("/").rsplit("/", 1)[-1]
                if not self.path.startswith("/v1/") or verb not in VERBS:
                    self._send(404, {"error": f"no {self.path} (verbs: {', '.join(VERBS)})"})
                    return
                n = int(self.headers.get("Content-Length") or 0)
                try:
                    args = json.loads(self.rfile.read(n) or b"{}") if n else {}
                    if not isinstance(args, dict):
                        raise ValueError("a JSON object")
                except ValueError as e:
                    self._send(400, {"error": f"bad body: {e}"})
                    return
                try:
                    self._send(200, {"ok": True, **submit(verb, args)})
                except ControlError as e:
                    self._send(409, {"ok": False, "error": str(e)})

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="canary-control",
                                        daemon=True)

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_discovery(path: Path, url: str, token_file: Path, name: str) -> None:
    st.atomic_write_json(path, {"url": url, "pid": os.getpid(), "token_file": str(token_file),
                                "rollout": name})


class ControlClient:
    """What ``shadowtap canary status|pause|...`` and the console use."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    @classmethod
    def discover(cls, control_file: Path, token_file: Path | None = None) -> ControlClient:
        try:
            d = json.loads(Path(control_file).read_text())
        except FileNotFoundError:
            raise ControlError(f"no running controller: {control_file} does not exist (start "
                               "one with 'shadowtap canary run --control 127.0.0.1:0')") from None
        except ValueError:
            raise ControlError(f"{control_file} is not a controller record") from None
        return cls(d["url"], read_token(token_file or d["token_file"]))

    def call(self, verb: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        if verb == "status":
            req = urllib.request.Request(f"{self.url}/v1/status", method="GET")
        else:
            req = urllib.request.Request(f"{self.url}/v1/{verb}", method="POST",
                                         data=json.dumps(args or {}).encode())
            req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error", "")
            except ValueError:
                msg = ""
            if e.code == 401:
                raise ControlError("the controller refused the token (401): use its token "
                                   "file") from None
            raise ControlError(msg or f"HTTP {e.code}") from None
        except OSError as e:
            raise ControlError(f"the controller at {self.url} does not answer ({e}); is "
                               "'shadowtap canary run' still running?") from None


# ---- the controller --------------------------------------------------------------------------

class Controller:
    """Durable state, webhooks and verbs around one rollout (``run`` is the loop)."""

    def __init__(self, rollout: ControlledRollout, *, name: str, store: st.StateStore,
                 split_get: Callable[[], float], split_set: Callable[[float], None],
                 webhooks: Any = None, evidence_every: float = 1.0) -> None:
        self.rollout = rollout
        self.name = name
        self.store = store
        self.split_get = split_get
        self.split_set = split_set
        self.webhooks = webhooks
        self.evidence_every = evidence_every
        self.phash = st.policy_hash(rollout.policy)
        self.id = uuid.uuid4().hex[:12]
        self.started = time.time()
        self.applied: float | None = None
        self.pending: float | None = None
        self.timeline: list[dict[str, Any]] = []
        self.restart: dict[str, Any] | None = None
        self._last_write = 0.0
        self._seen = (rollout.state, rollout.step)
        self.lock = threading.Lock()
        rollout.set_weight = self.set_weight  # every weight change goes through the record
        if webhooks is not None and rollout.gate is None and webhooks.of("confirm-promotion"):
            rollout.gate = lambda: webhooks.gate_open(
                step=rollout.step + 1, weight=rollout.weight,
                next_weight=rollout.policy.steps[min(rollout.step + 1,
                                                     len(rollout.policy.steps) - 1)])

    # the record
    def doc(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        r = self.rollout
        return st.snapshot(r, now, name=self.name, id=self.id, started=self.started,
                           policy_hash=self.phash, on_restart=r.policy.on_restart,
                           applied_weight=self.applied, pending_weight=self.pending,
                           gate_holding=r.gate_holding, events=r.events[-200:],
                           timeline=self.timeline[-2000:], restart=self.restart)

    def save(self, now: float | None = None) -> None:
        with self.lock:
            self.store.write(self.doc(now))
            self._last_write = time.monotonic()

    def status(self) -> dict[str, Any]:
        d = self.doc()
        d.pop("evidence", None)
        r = self.rollout
        d["current"] = {k: v.to_dict() for k, v in getattr(r.judge, "sides", {}).items()}
        return d

    def set_weight(self, pct: float) -> None:
        """Intent on disk, then the split, then read back, then the confirmed weight on disk."""
        self.pending = pct
        self.save()
        self.split_set(pct)
        got = self.split_get()
        if abs(got - pct) > 0.01:
            raise RuntimeError(f"the split holds {got:g} % after setting {pct:g} %")
        self.applied, self.pending = got, None
        self.timeline.append({"t": round(time.time(), 3), "weight": got,
                              "step": self.rollout.step + 1, "state": self.rollout.state})
        self.save()

    def _payload(self) -> dict[str, Any]:
        r = self.rollout
        return {"state": r.state, "step": r.step + 1, "weight": r.weight,
                "steps": list(r.policy.steps), "reasons": r.reasons,
                "last": r.history[-1] if r.history else None}

    def on_tick(self, r: Rollout, j: Judgement | None) -> None:
        now = time.monotonic()
        seen = (r.state, r.step)
        if seen != self._seen:
            self._seen = seen
            self.save(now)
            if self.webhooks is not None:
                if r.state == "promoted":
                    self.webhooks.fire("promoted", **self._payload())
                elif r.state == "rolled_back":
                    self.webhooks.fire("rollback", **self._payload())
                else:
                    self.webhooks.fire("step", **self._payload())
        elif now - self._last_write >= self.evidence_every:
            self.save(now)

    def reconcile(self) -> st.Reconciled:
        """Read the record and the live weight; set the weight the decision needs."""
        saved = self.store.read()
        try:
            live: float | None = self.split_get()
        except Exception as e:  # an unreadable split is an unknown weight: roll back
            log.warning("cannot read the live weight: %s", e)
            live = None
        rec = st.reconcile(saved, live, self.phash, self.rollout.policy.on_restart)
        if rec.action == "fresh":
            return rec
        assert saved is not None
        self.id = saved.get("id", self.id)
        self.started = float(saved.get("started", self.started))
        self.timeline = list(saved.get("timeline") or [])
        self.rollout.events = list(saved.get("events") or [])
        self.restart = {"action": rec.action, "live_weight": live,
                        "recorded_weight": saved.get("weight"),
                        "pending_weight": saved.get("pending_weight"),
                        "reasons": rec.reasons, "t": round(time.time(), 3)}
        self.applied = saved.get("applied_weight")
        now = time.monotonic()
        if rec.action == "resume":
            st.resume_into(self.rollout, saved, now)
            self.rollout.resumed = True
            self.rollout._note("resumed-after-restart", live_weight=live)
            self.set_weight(rec.weight)  # explicit, read back: never an unknown weight
            # what the capture saw before this (under a weight the crash may have left) is
            # not the resumed step's evidence
            self.rollout.step_wall = time.time()
        else:
            r = self.rollout
            r.step = int(saved.get("step", -1))
            r.weight = float(saved.get("weight", 0.0))
            r.history = list(saved.get("history") or [])
            r.state = "running"
            r._note("rolled-back-after-restart", live_weight=live)
            r.rollback(rec.reasons)  # calls set_weight(0): intent, apply, read back
        self._seen = (self.rollout.state, self.rollout.step)
        self.save()
        return rec

    def run(self, handoff: Any, backend_of: Callable[[Any], str | None], *,
            stop: threading.Event | None = None, hold: bool = False,
            on_tick: Callable[[Rollout, Judgement | None], None] | None = None,
            tee: Callable[[Any], Any] | None = None, tick_every: float = 0.5) -> dict[str, Any]:
        """Reconcile, (wait for ``start``), pre-rollout hooks, the loop; the report."""
        stop = stop or threading.Event()
        r = self.rollout
        rec = self.reconcile()
        if rec.action == "rollback":
            if self.webhooks is not None:
                self.webhooks.fire("rollback", **self._payload())
            return self._finish()
        if rec.action == "fresh":
            self.save()
            if hold:
                # What the capture hands over while held is drained and counted, not judged:
                # left queued, it would fill the hand-off (drops) and be read as step 1.
                while not stop.is_set() and r.state == "pending":
                    r.apply_commands(time.monotonic())
                    if r.started_flag.is_set():
                        r.apply_commands(time.monotonic())
                        break
                    until, wait = time.monotonic() + 0.1, 0.05
                    while handoff.get(timeout=wait) is not None:
                        r.before_start += 1
                        wait = 0.0
                        if time.monotonic() >= until or r.started_flag.is_set():
                            break
                if stop.is_set() and r.state == "pending":
                    r.state = "rolled_back"
                    r.reasons = ["interrupted before the start: the canary never got traffic"]
                if r.state != "pending":
                    return self._finish()
            if self.webhooks is not None:
                failed = self.webhooks.pre_rollout(**self._payload())
                if failed:
                    r.state = "running"
                    r.rollback(failed)
                    self.webhooks.fire("rollback", **self._payload())
                    return self._finish()

        def tick(rr: Rollout, j: Judgement | None) -> None:
            self.on_tick(rr, j)
            if on_tick is not None:
                on_tick(rr, j)
        try:
            run_rollout(r, handoff, backend_of, stop=stop, on_tick=tick, tee=tee,
                        tick_every=tick_every)
        finally:
            # a rollback by interruption or a failure of the loop happens outside a tick
            if (r.state, r.step) != self._seen:
                self.on_tick(r, None)
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        self.save()
        if self.webhooks is not None:
            self.webhooks.flush()
        doc = self.rollout.report()
        doc.update({"name": self.name, "id": self.id, "restart": self.restart,
                    "events": self.rollout.events, "timeline": self.timeline})
        if self.webhooks is not None:
            doc["webhooks"] = [vars(d) for d in self.webhooks.deliveries]
        return doc
