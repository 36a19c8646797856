"""Rollout webhooks, like Flagger's: pre-rollout, step, confirm-promotion (a gate), rollback,
promoted.

Each is an HTTP POST of a JSON body::

    {"event": "step", "rollout": "<name>", "id": "<rollout id>", "state": "running",
     "step": 2, "weight": 25.0, "reasons": [], "timestamp": 1765000000.1, ...}

with headers ``X-Shadowtap-Event``, ``X-Shadowtap-Delivery`` (one id per delivery, the same on
every retry, so a receiver can drop duplicates) and, when the hook has a secret,
``X-Shadowtap-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>`` (GitHub's
scheme: the receiver recomputes it over the raw body and compares in constant time).

- ``pre-rollout``: before the first weight change; all must answer 2xx (after retries) or the
  rollout does not start (it ends rolled back, weight 0).
- ``step``, ``rollback``, ``promoted``: notifications; delivered in the background with
  retries and exponential backoff (``retries`` extra attempts, ``backoff`` × 2^n seconds), never
  delaying the judge or a rollback.
- ``confirm-promotion``: a gate asked before the promotion (the move to the last step, or to
  "promoted" for a one-step policy). Any non-2xx answer (or none) holds the promotion; the step
  is still judged (errors and latency still roll back) and the gate is asked again every
  ``gate_interval`` seconds.

The policy lists them (``webhooks:`` in the canary policy YAML)::

    webhooks:
      - {name: notify, type: step, url: "http://127.0.0.1:9000/hook", secret_file: /etc/st.key}
      - {name: change-board, type: confirm-promotion, url: "http://cab.internal/approve"}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("shadowtap.canary.webhooks")

EVENTS = ("pre-rollout", "step", "confirm-promotion", "rollback", "promoted")
SIGNATURE_HEADER = "X-Shadowtap-Signature"

WEBHOOK_SCHEMA: dict[str, Any] = {"name": str, "type": str, "url": str, "secret_file": str,
                                  "secret": str, "timeout": float, "retries": int,
                                  "backoff": float}
"""The keys of one ``webhooks:`` entry of a canary policy."""


@dataclass
class Webhook:
    name: str
    type: str
    url: str
    secret: str | None = None
    timeout: float = 2.0
    retries: int = 3
    backoff: float = 0.2

    def validate(self) -> None:
        if self.type not in EVENTS:
            raise ValueError(f"webhook {self.name!r}: type must be one of {', '.join(EVENTS)}, "
                             f"not {self.type!r}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook {self.name!r}: url must be http:// or https://")
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise ValueError(f"webhook {self.name!r}: timeout > 0, retries >= 0, backoff >= 0")


def from_config(entries: list[dict[str, Any]] | None, base: Path | None = None) -> list[Webhook]:
    """Webhooks from a policy's ``webhooks:`` list; ``secret_file`` is read (relative to
    ``base``, the policy file's directory)."""
    hooks = []
    for i, e in enumerate(entries or []):
        e = dict(e)
        unknown = set(e) - set(WEBHOOK_SCHEMA)
        if unknown:
            raise ValueError(f"webhooks[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        sf = e.pop("secret_file", None)
        if sf is not None:
            p = Path(sf)
            if base is not None and not p.is_absolute():
                p = base / p
            try:
                e["secret"] = p.read_text().strip()
            except OSError as exc:
                raise ValueError(f"webhooks[{i}].secret_file {p}: {exc.strerror}") from None
        e.setdefault("name", f"hook{i}")
        for k in ("type", "url"):
            if k not in e:
                raise ValueError(f"webhooks[{i}]: missing {k}")
        h = Webhook(**e)
        h.validate()
        hooks.append(h)
    return hooks


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute the signature over the raw body, compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


@dataclass
class Delivery:
    hook: str
    event: str
    ok: bool
    status: int | None
    attempts: int
    error: str | None = None


def post(hook: Webhook, payload: dict[str, Any], retries: int | None = None) -> Delivery:
    """POST ``payload`` to ``hook``, retrying non-2xx and failures with backoff."""
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "shadowtap-canary",
               "X-Shadowtap-Event": str(payload.get("event")),
               "X-Shadowtap-Delivery": uuid.uuid4().hex}
    if hook.secret:
        headers[SIGNATURE_HEADER] = sign(hook.secret, body)
    tries = 1 + (hook.retries if retries is None else retries)
    status: int | None = None
    err: str | None = None
    for n in range(tries):
        if n:
            time.sleep(hook.backoff * 2 ** (n - 1))
        req = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=hook.timeout) as r:
                status = r.status
                r.read(65536)
        except urllib.error.HTTPError as e:
            status, err = e.code, f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            status, err = None, str(e)
        else:
            if 200 <= status < 300:
                return Delivery(hook.name, str(payload.get("event")), True, status, n + 1)
            err = f"HTTP {status}"
    log.warning("webhook %s (%s) failed after %d attempt(s): %s", hook.name, hook.type, tries,
                err)
    return Delivery(hook.name, str(payload.get("event")), False, status, tries, err)


class Webhooks:
    """The hooks of one rollout: notifications in the background, pre-rollout and the gate in
    line. ``deliveries`` records every outcome (for the report and the tests)."""

    def __init__(self, hooks: list[Webhook], rollout: str, rollout_id: str,
                 gate_interval: float = 2.0) -> None:
        self.hooks = hooks
        self.rollout = rollout
        self.rollout_id = rollout_id
        self.gate_interval = gate_interval
        self.deliveries: list[Delivery] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._gate_open = False
        self._gate_asked = 0.0
        self._gate_thread: threading.Thread | None = None
        self.gate_answers: list[Delivery] = []

    def of(self, event: str) -> list[Webhook]:
        return [h for h in self.hooks if h.type == event]

    def payload(self, event: str, **fields: Any) -> dict[str, Any]:
        return {"event": event, "rollout": self.rollout, "id": self.rollout_id,
                "timestamp": round(time.time(), 3), **fields}

    def _record(self, d: Delivery) -> None:
        with self._lock:
            self.deliveries.append(d)

    def fire(self, event: str, **fields: Any) -> None:
        """Notify (background, with retries)."""
        for h in self.of(event):
            p = self.payload(event, **fields)
            t = threading.Thread(target=lambda h=h, p=p: self._record(post(h, p)),
                                 name=f"webhook-{h.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def pre_rollout(self, **fields: Any) -> list[str]:
        """Run the pre-rollout hooks in line; the failures (empty: go ahead)."""
        failed = []
        for h in self.of("pre-rollout"):
            d = post(h, self.payload("pre-rollout", **fields))
            self._record(d)
            if not d.ok:
                failed.append(f"pre-rollout webhook {h.name} failed after {d.attempts} "
                              f"attempt(s): {d.error}")
        return failed

    def gate_open(self, **fields: Any) -> bool:
        """Is the promotion confirmed? Non-blocking: asks the confirm-promotion hooks in the
        background at most every ``gate_interval`` s and answers with the last verdict."""
        hooks = self.of("confirm-promotion")
        if not hooks:
            return True
        if self._gate_open:
            return True
        now = time.monotonic()
        busy = self._gate_thread is not None and self._gate_thread.is_alive()
        if not busy and now - self._gate_asked >= self.gate_interval:
            self._gate_asked = now
            p = self.payload("confirm-promotion", **fields)

            def ask() -> None:
                ds = [post(h, p, retries=0) for h in hooks]
                for d in ds:
                    self._record(d)
                self.gate_answers.extend(ds)
                if all(d.ok for d in ds):
                    self._gate_open = True
            self._gate_thread = threading.Thread(target=ask, name="webhook-gate", daemon=True)
            self._gate_thread.start()
        return False

    def flush(self, timeout: float = 10.0) -> None:
        """Wait for background deliveries (at the end of a rollout)."""
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
