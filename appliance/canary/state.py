"""Durable rollout state: written at every transition, reconciled after a crash.

The controller writes one JSON record per rollout (``$SHADOWTAP_HOME/canary/<name>.json``):
state, step, weight, the weight being applied (``pending_weight``), the judge's evidence for
the current step, the history of judged steps, a timeline of weights, when it started, and a
hash of the policy. Every write is atomic and durable: a temp file in the same directory,
``fsync``, ``rename`` over the record, ``fsync`` of the directory. A ``kill -9`` at any moment
leaves either the old record or the new one, never half of one.

A weight change is written twice: *before* the split is touched (``pending_weight``: the
intent) and *after* it is read back (``weight``). So after a crash the record names every
weight the split can hold: ``reconcile`` reads the live weight from the split (HAProxy's
runtime API or nft) and compares; whatever it decides, it sets the weight explicitly and reads
it back, so the rollout never continues with an unknown weight:

- a record in a final state (promoted, rolled back) or none: a fresh rollout;
- the policy changed since (another hash): roll back;
- ``on_restart: rollback``: roll back (weight 0);
- ``on_restart: resume``: the live weight must be the recorded one or the pending one
  (a crash between intent and apply); the step resumes with its evidence and the seconds it
  had already run, at the recorded weight. A live weight the record does not explain (someone
  changed it by hand) rolls back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_VERSION = 1
FINAL = ("promoted", "rolled_back")
MAX_LATENCIES = 20000
"""Latencies kept per side in the evidence snapshot (the most recent ones)."""


class StateError(Exception):
    """The state record cannot be read (corrupt, from a newer version): say which and where."""


def default_dir() -> Path:
    return Path(os.environ.get("SHADOWTAP_HOME", "/var/lib/shadowtap")) / "canary"


def policy_hash(policy: Any) -> str:
    """A stable hash of a policy (a dataclass or a mapping)."""
    d = dataclasses.asdict(policy) if dataclasses.is_dataclass(policy) else dict(policy)
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def atomic_write_json(path: Path, doc: dict[str, Any], mode: int = 0o600) -> None:
    """Replace ``path`` with ``doc``: temp file, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class StateStore:
    """One rollout's record."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.writes = 0

    def write(self, doc: dict[str, Any]) -> None:
        doc = {**doc, "version": STATE_VERSION, "updated": time.time()}
        atomic_write_json(self.path, doc)
        self.writes += 1

    def read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise StateError(f"{self.path}: not a rollout state record ({e}); move it away to "
                             "start a new rollout") from None
        if not isinstance(doc, dict) or doc.get("version", 0) > STATE_VERSION:
            raise StateError(f"{self.path}: a state record this version cannot read")
        return doc


# ---- a rollout <-> its record ------------------------------------------------------------------

def evidence(rollout: Any) -> dict[str, Any]:
    """The current step's evidence, as far as the judge exposes it (``sides``)."""
    out: dict[str, Any] = {}
    for name, side in (getattr(rollout.judge, "sides", None) or {}).items():
        d = {k: getattr(side, k) for k in ("requests", "errors") if hasattr(side, k)}
        lat = getattr(side, "latencies", None)
        if isinstance(lat, list):
            d["latencies"] = [round(x, 6) for x in lat[-MAX_LATENCIES:]]
        out[name] = d
    return out


def restore_evidence(rollout: Any, ev: dict[str, Any]) -> None:
    """Feed the recorded evidence back through the judge's own ``add`` (so every view the judge
    keeps is rebuilt; per-endpoint detail is not recorded and restarts empty)."""
    for name, d in (ev or {}).items():
        lat = [float(x) for x in d.get("latencies") or []]
        errors = int(d.get("errors", 0))
        ok_no_latency = max(0, int(d.get("requests", 0)) - errors - len(lat))
        for _ in range(errors):
            rollout.judge.add(name, None, None)
        for x in lat:
            rollout.judge.add(name, 200, x)
        for _ in range(ok_no_latency):
            rollout.judge.add(name, 200, None)


def snapshot(rollout: Any, now: float, **extra: Any) -> dict[str, Any]:
    """The record for ``rollout`` at monotonic time ``now`` (elapsed seconds, not clocks)."""
    paused_at = getattr(rollout, "paused_at", None)
    ref = paused_at if paused_at is not None else now
    return {
        "state": rollout.state,
        "paused": paused_at is not None,
        "step": rollout.step,
        "steps": list(rollout.policy.steps),
        "weight": rollout.weight,
        "step_elapsed": round(max(0.0, ref - rollout.step_started), 3)
        if rollout.state == "running" else 0.0,
        "history": rollout.history,
        "reasons": rollout.reasons,
        "evidence": evidence(rollout) if rollout.state == "running" else {},
        "totals": rollout.totals,
        "unattributed": rollout.unattributed,
        "stale": rollout.stale,
        "before_start": rollout.before_start,
        **extra,
    }


@dataclass
class Reconciled:
    """What a restarted controller does."""

    action: str  # "fresh", "resume" or "rollback"
    weight: float
    """The weight the split must have now (set and read back by the caller)."""
    reasons: list[str] = field(default_factory=list)
    saved: dict[str, Any] | None = None


def reconcile(saved: dict[str, Any] | None, live_weight: float | None, phash: str,
              on_restart: str) -> Reconciled:
    """Decide what a controller starting with record ``saved`` does (see the module doc)."""
    if on_restart not in ("resume", "rollback"):
        raise ValueError(f"on_restart must be resume or rollback, not {on_restart!r}")
    if saved is None or saved.get("state") in FINAL or saved.get("state") == "pending":
        return Reconciled("fresh", 0.0, saved=saved)
    where = (f"the controller restarted at step {int(saved.get('step', -1)) + 1} "
             f"({saved.get('weight', 0):g} %)")
    if saved.get("policy_hash") != phash:
        return Reconciled("rollback", 0.0, [f"{where} with a different policy: rolled back"],
                          saved)
    if on_restart == "rollback":
        return Reconciled("rollback", 0.0, [f"{where} (on_restart: rollback)"], saved)
    # the split holds what was last read back from it, or what was being applied at the crash
    known = {float(saved.get("applied_weight", saved.get("weight", 0.0)))}
    if saved.get("pending_weight") is not None:
        known.add(float(saved["pending_weight"]))
    if live_weight is None or not any(abs(live_weight - w) < 0.01 for w in known):
        seen = "unreadable" if live_weight is None else f"{live_weight:g} %"
        return Reconciled("rollback", 0.0, [
            f"{where}: the split holds {seen}, which the record does not explain "
            f"(expected {' or '.join(f'{w:g} %' for w in sorted(known))}): rolled back"], saved)
    return Reconciled("resume", float(saved.get("weight", 0.0)), [f"{where}: resumed"], saved)


def resume_into(rollout: Any, saved: dict[str, Any], now: float) -> None:
    """Put ``rollout`` (started from scratch, not yet ``start``-ed) where ``saved`` left off.

    Does not touch the split: the caller has set the weight already."""
    rollout.state = "running"
    rollout.step = int(saved["step"])
    rollout.weight = float(saved["weight"])
    rollout.step_started = now - float(saved.get("step_elapsed", 0.0))
    rollout.history = list(saved.get("history") or [])
    rollout.reasons = []
    for k, v in (saved.get("totals") or {}).items():
        if k in rollout.totals:
            rollout.totals[k] = list(v)
    rollout.unattributed = int(saved.get("unattributed", 0))
    rollout.stale = int(saved.get("stale", 0))
    rollout.before_start = int(saved.get("before_start", 0))
    restore_evidence(rollout, saved.get("evidence") or {})
