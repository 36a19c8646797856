"""The verdict goes back to the build: push, check, record, alert, exit 0 or 1.

``build()`` is the whole loop one build step waits for (``shadowtap build-hook``): snapshot the
image and push the delta to every shadow, run the checks, store the result in the history,
POST a webhook, and answer pass or fail. It exists so that a failure stops the build minutes
after the change that caused it, instead of after the image is finished.

* History: SQLite (``$SHADOWTAP_HOME/history.sqlite``), one row per build and one per check
  result, with the figures that show trends (time to switch, time to verdict, delta size,
  load-test p95). SQLite because a build server has no database to hand and the history must
  survive restarts.
* Webhooks: a JSON POST whose ``text`` field is what Slack (and Mattermost, Teams' Slack
  compatibility) display, plus the structured result for anything else.
* Merge events: GitHub ``pull_request`` (closed + merged) and GitLab ``Merge Request Hook``
  (action merge) name the branch whose ephemeral shadows are no longer needed.
* Metrics: a Prometheus text file (``$SHADOWTAP_HOME/metrics/imagesync.prom``) rewritten after
  every build, for node-exporter's textfile collector or the appliance's own exporter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from appliance.images.checks import CheckResult, ChecksFile, load_checks, run_checks
from appliance.images.imagesync import ImageStore, Replicator, ShadowApply, Snapshot, load_manifest
from appliance.images.shadows import Pool

SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
  id INTEGER PRIMARY KEY AUTOINCREMENT, image TEXT, snapshot TEXT, parent TEXT, stage TEXT,
  started REAL, verdict TEXT, shadows INTEGER, switched INTEGER, push_seconds REAL,
  verdict_seconds REAL, batch_bytes INTEGER, changed_files INTEGER, summary TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS check_results (
  build_id INTEGER, name TEXT, kind TEXT, shadow TEXT, ok INTEGER, seconds REAL,
  summary TEXT, metrics TEXT);
"""


@dataclass
class BuildResult:
    """Everything ``build-hook`` reports."""

    image: str
    stage: str
    snapshot: Snapshot | None
    applies: list[ShadowApply] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    push_seconds: float = 0.0
    verdict_seconds: float = 0.0
    build_id: int | None = None
    note: str = ""
    forced: bool = False  # no change: the latest snapshot re-verified and re-checked

    @property
    def ok(self) -> bool:
        if self.snapshot is None:
            return not self.note.startswith("error")
        return all(a.ok for a in self.applies) and all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[str]:
        out = [f"sync {a.shadow}: {a.note}" for a in self.applies if not a.ok]
        out += [f"{c.name} on {c.shadow}: {c.summary}" for c in self.checks if not c.ok]
        return out

    def text(self) -> str:
        """One Slack-friendly message."""
        if self.snapshot is None:
            return f"shadowtap: {self.image} ({self.stage}): {self.note}"
        again = ", re-checked without a change" if self.forced else ""
        head = (f"{'✅' if self.ok else '❌'} shadowtap: {self.image} snapshot {self.snapshot.id} "
                f"({self.stage}{again}) {'passed' if self.ok else 'FAILED'} on "
                f"{len(self.applies)} shadow(s) in {self.verdict_seconds:.1f} s")
        lines = [head]
        lines += [f"• {f}" for f in self.failed[:10]]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "stage": self.stage, "ok": self.ok,
                "snapshot": asdict(self.snapshot) if self.snapshot else None,
                "applies": [asdict(a) for a in self.applies],
                "checks": [asdict(c) for c in self.checks], "push_seconds": self.push_seconds,
                "verdict_seconds": self.verdict_seconds, "build_id": self.build_id,
                "failed": self.failed, "note": self.note, "forced": self.forced}


# ---- history ----------------------------------------------------------------------------------

class History:
    def __init__(self, path: Path | None = None, pool_home: Path | None = None) -> None:
        self.path = path or (pool_home or Pool().home) / "history.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)
            cols = {r["name"] for r in db.execute("PRAGMA table_info(builds)")}
            if "trigger" not in cols:  # histories written before forced re-checks existed
                db.execute("ALTER TABLE builds ADD COLUMN trigger TEXT DEFAULT 'change'")

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def record(self, b: BuildResult) -> int:
        s = b.snapshot
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO builds (image, snapshot, parent, stage, started, verdict, shadows, "
                "switched, push_seconds, verdict_seconds, batch_bytes, changed_files, summary, "
                "detail, trigger) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (b.image, s.id if s else None, s.parent if s else None, b.stage, time.time(),
                 "pass" if b.ok else "fail", len(b.applies), sum(a.ok for a in b.applies),
                 b.push_seconds, b.verdict_seconds, s.batch_bytes if s and not b.forced else 0,
                 len(s.changed) if s and not b.forced else 0, b.text(), json.dumps(b.to_dict()),
                 "forced" if b.forced else "change"))
            bid = int(cur.lastrowid or 0)
            db.executemany(
                "INSERT INTO check_results VALUES (?,?,?,?,?,?,?,?)",
                [(bid, c.name, c.kind, c.shadow, int(c.ok), c.seconds, c.summary,
                  json.dumps(c.metrics)) for c in b.checks])
        return bid

    def builds(self, image: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        q = "SELECT * FROM builds" + (" WHERE image = ?" if image else "") + \
            " ORDER BY id DESC LIMIT ?"
        with self._db() as db:
            rows = [dict(r) for r in db.execute(q, (image, limit) if image else (limit,))]
            for r in rows:
                r["checks"] = [dict(c) for c in db.execute(
                    "SELECT name, kind, shadow, ok, seconds, summary, metrics FROM check_results "
                    "WHERE build_id = ?", (r["id"],))]
        return rows


def trend(values: list[float | None]) -> str:
    """An arrow comparing the newest value with the mean of the ones before it."""
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return ""
    newest, before = vals[0], vals[1:]
    mean = sum(before) / len(before)
    if mean == 0:
        return ""
    change = (newest - mean) / mean
    return "↑" if change > 0.1 else "↓" if change < -0.1 else "→"


# ---- webhooks ---------------------------------------------------------------------------------

def post_webhook(url: str, b: BuildResult, timeout: float = 5.0) -> str | None:
    """POST the result; returns None on success or why it failed (never raises: an alert
    channel being down must not fail the build)."""
    body = json.dumps({"text": b.text(), "shadowtap": b.to_dict()}).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": "shadowtap"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if resp.status >= 300:
                return f"webhook {url}: HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as e:
        return f"webhook {url}: {getattr(e, 'reason', e)}"
    return None


def merged_branch(headers: dict[str, str], body: bytes) -> str | None:
    """The source branch of a merged pull/merge request, from a GitHub or GitLab webhook."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        ev = json.loads(body)
    except ValueError:
        return None
    if not isinstance(ev, dict):
        return None
    if h.get("x-github-event") == "pull_request" or ("pull_request" in ev and "action" in ev):
        pr = ev.get("pull_request") or {}
        if ev.get("action") == "closed" and pr.get("merged"):
            return (pr.get("head") or {}).get("ref")
        return None
    if h.get("x-gitlab-event") == "Merge Request Hook" or ev.get("object_kind") == "merge_request":
        attrs = ev.get("object_attributes") or {}
        if attrs.get("action") == "merge" or attrs.get("state") == "merged":
            return attrs.get("source_branch")
    return None


def verify_signature(headers: dict[str, str], body: bytes, secret: str | None) -> bool:
    """GitHub's HMAC-SHA256 signature or GitLab's shared token; anything passes without one."""
    if not secret:
        return True
    h = {k.lower(): v for k, v in headers.items()}
    if "x-hub-signature-256" in h:
        want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, h["x-hub-signature-256"])
    if "x-gitlab-token" in h:
        return hmac.compare_digest(secret, h["x-gitlab-token"])
    return False


def merge_webhook_server(pool: Pool, host: str, port: int, secret: str | None = None
                         ) -> ThreadingHTTPServer:
    """An HTTP server that deletes a merged branch's shadows (GitHub/GitLab merge events)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            hdrs = dict(self.headers.items())
            if not verify_signature(hdrs, body, secret):
                self._answer(401, {"error": "bad signature"})
                return
            branch = merged_branch(hdrs, body)
            if not branch:
                self._answer(202, {"deleted": [], "note": "not a merge event"})
                return
            try:
                gone = pool.delete_branch(branch)
            except Exception as e:
                self._answer(500, {"error": str(e)})
                return
            self._answer(200, {"branch": branch, "deleted": gone})

        def _answer(self, code: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args: Any) -> None:
            return None

    return ThreadingHTTPServer((host, port), Handler)


# ---- metrics ----------------------------------------------------------------------------------

def write_metrics(b: BuildResult, path: Path) -> None:
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    reg = CollectorRegistry()
    lab = ["image"]
    Gauge("shadowtap_image_push_seconds", "Push to every shadow switched", lab,
          registry=reg).labels(b.image).set(b.push_seconds)
    Gauge("shadowtap_image_verdict_seconds", "Push to tested verdict", lab,
          registry=reg).labels(b.image).set(b.verdict_seconds)
    Gauge("shadowtap_image_delta_bytes", "Size of the last batch delta", lab,
          registry=reg).labels(b.image).set(b.snapshot.batch_bytes if b.snapshot and not b.forced
                                      else 0)
    Gauge("shadowtap_image_build_ok", "1 if the last build passed", lab,
          registry=reg).labels(b.image).set(1 if b.ok else 0)
    g = Gauge("shadowtap_image_shadows", "Shadows by last apply mode", ["image", "mode"],
              registry=reg)
    for mode in ("batch", "full", "unchanged", "failed"):
        g.labels(b.image, mode).set(sum(1 for a in b.applies if a.mode == mode))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), reg)


# ---- the loop ---------------------------------------------------------------------------------

class BuildQueue:
    """Builds of one image waiting or running, as files named by pid under ``queue/<image>``.

    The pool grows with this number (more shadows while builds queue). Files of dead
    processes are ignored and removed, so a killed build-hook does not inflate it forever.
    """

    def __init__(self, home: Path, image: str) -> None:
        self.dir = home / "queue" / image
        self.me = self.dir / str(os.getpid())

    def __enter__(self) -> BuildQueue:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.me.write_text(str(time.time()))
        return self

    def __exit__(self, *exc: object) -> None:
        self.me.unlink(missing_ok=True)

    def others(self) -> int:
        n = 0
        for p in self.dir.glob("*"):
            if p == self.me or not p.name.isdigit():
                continue
            try:
                os.kill(int(p.name), 0)
                n += 1
            except ProcessLookupError:
                p.unlink(missing_ok=True)
            except PermissionError:
                n += 1
        return n


def scale_for_build(pool: Pool, store: ImageStore, image: str, *, minimum: int, maximum: int,
                    queued: int, idle_after: float, timeout: float, log: Any = None
                    ) -> list[str]:
    """Before a build: grow the image's pool shadows with the queue, shrink after idle.

    New shadows get the latest snapshot (the build's delta then reaches them as a batch)."""
    rows = History(pool_home=pool.home).builds(image, 1)
    idle = time.time() - rows[0]["started"] if rows else 0.0
    rep = Replicator(store, timeout=timeout, log=log)

    def provision(h: Any) -> None:
        snap = store.latest()
        if snap is not None:
            rep.apply_one(h, snap)

    return pool.autoscale(image, minimum=minimum, maximum=maximum, queued=queued,
                          idle_seconds=idle, idle_after=idle_after, provision=provision)


def build(image_dir: Path, stage: str, *, pool: Pool | None = None,
          checks_file: Path | None = None, webhooks: list[str] | None = None,
          timeout: float = 120.0, keep: int = 5, log: Any = None,
          min_shadows: int | None = None, max_shadows: int | None = None,
          idle_after: float = 600.0, force: bool = False, deep: bool = False) -> BuildResult:
    """Push ``image_dir`` and judge it. Never raises for a failed shadow or check.

    With ``min_shadows`` the image's pool is scaled first (see :func:`scale_for_build`).
    ``force``: when nothing changed, verify every shadow against the latest snapshot anyway
    (a drifted one gets a full copy), run the checks and record the verdict: a check added or
    a shadow tampered with since the last build is seen without waiting for a change.
    ``deep`` verifies content as well as metadata (a change that kept size and mtime).
    """
    pool = pool or Pool()
    m = load_manifest(image_dir)
    with BuildQueue(pool.home, m.name) as q:
        if min_shadows is not None:
            changes = scale_for_build(
                pool, ImageStore(m.name, pool.home, keep), m.name, minimum=min_shadows,
                maximum=max(min_shadows, max_shadows or min_shadows), queued=q.others(),
                idle_after=idle_after, timeout=timeout, log=log)
            if changes and log:
                log(f"pool {m.name}: {' '.join(changes)}")
        return _build(pool, m, image_dir, stage, checks_file, webhooks, timeout, keep, log,
                      force, deep)


def _build(pool: Pool, m: Any, image_dir: Path, stage: str, checks_file: Path | None,
           webhooks: list[str] | None, timeout: float, keep: int, log: Any, force: bool,
           deep: bool) -> BuildResult:
    t0 = time.monotonic()
    cf: ChecksFile | None = None
    cpath = checks_file or ((image_dir / m.checks) if m.checks else None)
    if cpath is not None:
        cf = load_checks(cpath)  # a broken checks file is the user's error: raise before work
    store = ImageStore(m.name, pool.home, keep)
    snap = store.take(image_dir, stage, m.ignore)
    res = BuildResult(m.name, stage, snap)
    if snap is None:
        if not force:
            res.note = ("no significant change since the last snapshot: nothing pushed "
                        "(--force re-verifies the shadows and re-runs the checks)")
            return res
        res.snapshot = snap = store.latest()
        res.forced = True
        assert snap is not None  # take() returns None only when a snapshot exists
    hosts = pool.hosts(m.name)
    if not hosts:
        res.note = "no shadow follows this image"
    res.applies = Replicator(store, timeout=timeout, log=log, deep_verify=deep).apply(hosts, snap)
    res.push_seconds = time.monotonic() - t0
    live = [h for h, a in zip(hosts, res.applies, strict=True) if a.ok]
    if cf is not None:
        sm = load_manifest(store.tree(snap.id))
        where = f"{snap.id}-recheck-{time.strftime('%Y%m%d-%H%M%S')}" if res.forced else snap.id
        res.checks = run_checks(cf, live, snap, store, pool.home / "artefacts" / m.name / where,
                                sm.service_port)
    elif not hosts:
        res.checks = [CheckResult("shadows", "pool", "-", False, 0.0,
                                  "no shadow is running this image: nothing was checked")]
    res.verdict_seconds = time.monotonic() - t0
    res.build_id = History(pool_home=pool.home).record(res)
    try:
        write_metrics(res, pool.home / "metrics" / "imagesync.prom")
    except OSError:
        pass
    for url in webhooks or []:
        err = post_webhook(url, res)
        if err and log:
            log(err)
    return res
