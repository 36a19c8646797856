"""Rollout history (SQLite) and the canary's image rollback.

* History: ``$SHADOWTAP_HOME/canary-history.sqlite`` (next to the image builds'
  ``history.sqlite``, same style): one row per rollout (outcome, steps reached, reasons, the
  image rollback if any, the policy) and one per judged step with the judge's evidence (score,
  outcome, every metric's tests: sample sizes, medians or shares, effect size, allowance,
  p-values). ``shadowtap canary history`` shows it. SQLite because a gateway has no database to
  hand and the history must survive restarts.
* Image rollback: when the canary is a shadow of the image pipeline (``shadowtap image``,
  ``shadowtap shadow``), a rollback puts it back on the snapshot before the one it runs (the
  snapshot's parent when still kept, else the newest older one), with the same atomic switch
  ``shadowtap image rollback`` uses (``Replicator.rollback``): after the weight is 0, so
  production never waits for it.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
  id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL, ended REAL, state TEXT, weight REAL,
  steps TEXT, step_reached INTEGER, reasons TEXT, source TEXT, image TEXT, shadow TEXT,
  image_from TEXT, image_to TEXT, image_ok INTEGER, image_note TEXT, policy TEXT, report TEXT);
CREATE TABLE IF NOT EXISTS rollout_steps (
  rollout_id INTEGER, step INTEGER, weight REAL, seconds REAL, decision TEXT, outcome TEXT,
  score REAL, canary_requests INTEGER, prod_requests INTEGER, reasons TEXT, evidence TEXT);
"""


@dataclass
class ImageTarget:
    """The canary is shadow ``shadow`` of image ``image`` (``shadowtap shadow list``)."""

    image: str
    shadow: str
    to: str | None = None
    """Snapshot to go back to (default: the one before the canary's)."""

    @classmethod
    def parse(cls, text: str) -> ImageTarget:
        """``IMAGE:SHADOW`` or ``IMAGE:SHADOW@SNAPSHOT``."""
        head, _, to = text.partition("@")
        image, sep, shadow = head.partition(":")
        if not sep or not image or not shadow:
            raise ValueError(f"--image-target {text!r}: give IMAGE:SHADOW (the image's name and "
                             "the shadow running the canary), e.g. shop:canary-1")
        return cls(image, shadow, to or None)


def default_path() -> Path:
    from appliance.images.shadows import home

    return home() / "canary-history.sqlite"


class RolloutHistory:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def record(self, doc: dict[str, Any], *, started: float, ended: float | None = None,
               source: str = "", policy: Any = None,
               image: dict[str, Any] | None = None) -> int:
        """One finished rollout (``Rollout.report()``) and its judged steps."""
        img = image or {}
        hist = doc.get("history") or []
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO rollouts (started, ended, state, weight, steps, step_reached, "
                "reasons, source, image, shadow, image_from, image_to, image_ok, image_note, "
                "policy, report) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (started, ended if ended is not None else time.time(), doc.get("state"),
                 doc.get("weight"), json.dumps(doc.get("steps")),
                 max([h["step"] for h in hist], default=(doc.get("current") or {}).get("step")),
                 json.dumps(doc.get("reasons") or []), source, img.get("image"),
                 img.get("shadow"), img.get("from"), img.get("to"),
                 None if not img else int(bool(img.get("ok"))), img.get("note"),
                 json.dumps(_policy_doc(policy), default=str), json.dumps(doc, default=str)))
            rid = int(cur.lastrowid or 0)
            db.executemany(
                "INSERT INTO rollout_steps VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(rid, h.get("step"), h.get("weight"), h.get("seconds"), h.get("decision"),
                  (h.get("judgement") or {}).get("outcome"),
                  (h.get("judgement") or {}).get("score"),
                  (h.get("canary") or {}).get("requests"), (h.get("prod") or {}).get("requests"),
                  json.dumps(h.get("reasons") or []), json.dumps(h.get("judgement"), default=str))
                 for h in hist])
        return rid

    def rollouts(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = [dict(r) for r in db.execute(
                "SELECT id, started, ended, state, weight, steps, step_reached, reasons, source, "
                "image, shadow, image_from, image_to, image_ok, image_note FROM rollouts "
                "ORDER BY id DESC LIMIT ?", (limit,))]
            for r in rows:
                r["steps"] = json.loads(r["steps"] or "null")
                r["reasons"] = json.loads(r["reasons"] or "[]")
                r["step_log"] = self._steps(db, r["id"])
        return rows

    def get(self, rid: int) -> dict[str, Any] | None:
        with self._db() as db:
            r = db.execute("SELECT * FROM rollouts WHERE id = ?", (rid,)).fetchone()
            if r is None:
                return None
            out = dict(r)
            for k in ("steps", "reasons", "policy", "report"):
                out[k] = json.loads(out[k] or "null")
            out["step_log"] = self._steps(db, rid)
        return out

    @staticmethod
    def _steps(db: sqlite3.Connection, rid: int) -> list[dict[str, Any]]:
        out = []
        for s in db.execute("SELECT * FROM rollout_steps WHERE rollout_id = ? ORDER BY step",
                            (rid,)):
            d = dict(s)
            d["reasons"] = json.loads(d["reasons"] or "[]")
            d["evidence"] = json.loads(d["evidence"] or "null")
            d.pop("rollout_id", None)
            out.append(d)
        return out


def _policy_doc(policy: Any) -> Any:
    if policy is None:
        return None
    from dataclasses import asdict, is_dataclass

    if is_dataclass(policy) and not isinstance(policy, type):
        d = asdict(policy)
        try:
            d["judge"] = asdict(policy.judge_policy())
        except (AttributeError, ValueError):
            pass
        return d
    return policy


# ---- the canary's image ------------------------------------------------------------------------

def previous_snapshot(store: Any, current: str | None) -> str:
    """The snapshot to roll ``current`` back to: its parent when still kept, else the newest
    kept snapshot older than it."""
    from appliance.images.imagesync import ImageError

    snaps = store.snapshots()
    ids = [s.id for s in snaps]
    if current is None:
        raise ImageError(f"the canary runs no snapshot of {store.name} yet: nothing to roll back")
    cur = next((s for s in snaps if s.id == current), None)
    if cur is not None and cur.parent in ids:
        return str(cur.parent)
    older = [i for i in ids if i < current]
    if not older:
        raise ImageError(f"image {store.name}: no snapshot kept before {current} (kept: "
                         f"{', '.join(ids) or 'none'}); raise --keep in shadowtap image push")
    return older[-1]


def rollback_image(target: ImageTarget, *, pool: Any = None, timeout: float = 120.0
                   ) -> dict[str, Any]:
    """Put the canary's shadow back on the previous snapshot. Never raises: the result says
    what happened (the weight is already 0; a failed image rollback is reported, not fatal)."""
    from appliance.images.imagesync import ImageError, ImageStore, Replicator, release_snapshot
    from appliance.images.shadows import Pool, ShadowError

    t0 = time.monotonic()
    out: dict[str, Any] = {"image": target.image, "shadow": target.shadow, "from": None,
                           "to": target.to, "ok": False, "note": ""}
    try:
        pool = pool or Pool()
        host = pool.get(target.shadow)
        store = ImageStore(target.image, pool.home)
        out["from"] = release_snapshot(host.current_release())
        to = target.to or previous_snapshot(store, out["from"])
        out["to"] = to
        rep = Replicator(store, timeout=timeout)
        try:
            res = rep.rollback([host], to)[0]
        finally:
            rep.close()
        out.update(ok=res.ok, mode=res.mode, note=res.note, service=res.service)
    except (ImageError, ShadowError, OSError, ValueError, KeyError) as e:
        out["note"] = str(e)
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


def finish_rollout(doc: dict[str, Any], policy: Any, *, started: float, source: str = "",
                   history: Path | None = None, say: Any = None, pool: Any = None) -> int | None:
    """What ``canary run`` does once the loop is over: a rolled-back canary that is an image of
    the pipeline goes back to its previous snapshot (``doc["image_rollback"]``), then the
    rollout is recorded (``doc["history_id"]``). Neither may turn the outcome around: a failure
    is said and kept in the report."""
    say = say or (lambda s: None)
    target = getattr(policy, "image", None)
    if isinstance(target, dict):  # a policy read back from JSON
        target = ImageTarget(**{k: target.get(k) for k in ("image", "shadow", "to")})
    img = None
    if doc.get("state") == "rolled_back" and target is not None:
        say(f"rolling the canary's image back: shadow {target.shadow} of {target.image} ...")
        img = rollback_image(target, pool=pool)
        doc["image_rollback"] = img
        say(f"image {target.image} on {target.shadow}: {img['from']} -> {img['to']} "
            + ("ok" if img["ok"] else f"FAILED ({img['note']})") + f" in {img['seconds']} s")
    rid = None
    try:
        rid = RolloutHistory(history).record(doc, started=started, source=source,
                                             policy=policy, image=img)
        doc["history_id"] = rid
    except (sqlite3.Error, OSError) as e:
        say(f"warning: the rollout was not recorded in the history ({e})")
    return rid


# ---- `shadowtap canary history` ----------------------------------------------------------------

def _duration(s: float) -> str:
    if s < 100:
        return f"{s:.0f}s"
    if s < 6000:
        return f"{s / 60:.0f}m"
    if s < 360_000:
        return f"{s / 3600:.0f}h"
    return f"{s / 86400:.0f}d"


def history_command(
    limit: int = 20, rollout_id: int | None = None, as_json: bool = False,
    path: Path | None = None, width: int | None = None) -> int:
    """Print the history (a table that fits 80 columns, or JSON); one rollout's steps with the
    judge's evidence when ``rollout_id`` is given. Returns the exit status."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    try:
        h = RolloutHistory(path)
        rows = [h.get(rollout_id)] if rollout_id is not None else h.rollouts(limit)
    except (sqlite3.Error, OSError) as e:
        print(f"error: cannot read the rollout history {path or default_path()}: {e}",
              file=sys.stderr)
        return 2
    if rollout_id is not None and rows[0] is None:
        print(f"error: no rollout {rollout_id} in the history", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    con = Console(width=width) if width else Console()
    if rollout_id is None:
        cells = []
        for r in rows:
            assert r is not None
            img = "-"
            if r.get("image"):
                img = (f"→{r['image_to']}" if r.get("image_ok")
                       else "FAILED" if r.get("image_ok") == 0 else "-")
            state = r["state"]
            cells.append([str(r["id"]),
                          time.strftime("%d %H:%M", time.localtime(r["started"])),
                          "promoted" if state == "promoted" else
                          "rollback" if state == "rolled_back" else str(state),
                          f"{r['step_reached'] or 0}/{len(r['steps'] or [])}",
                          _duration((r["ended"] or r["started"]) - r["started"]), img,
                          (r["reasons"] or [""])[0]])
        heads = ("id", "started", "outcome", "step", "time", "image")
        widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
        t = Table(title="canary rollouts (newest first)", title_justify="left")
        for h, w in zip(heads, widths, strict=True):
            t.add_column(h, no_wrap=True, min_width=w,
                         justify="right" if h in ("id", "step", "time") else "left")
        # what is left of the width (3 per column of borders and padding, plus 1)
        t.add_column("why", no_wrap=True, overflow="ellipsis",
                     max_width=max(12, con.width - sum(widths) - 3 * (len(heads) + 1) - 1))
        for c in cells:  # plain Text: the reasons name endpoints (markup, emoji codes)
            colour = {"promoted": "green", "rollback": "red"}.get(c[2])
            t.add_row(*[Text(x) for x in c[:2]], Text(c[2], style=colour or ""),
                      *[Text(x) for x in c[3:]])
        con.print(t)
        if not rows:
            con.print("no rollouts recorded yet (shadowtap canary run records each one)")
        return 0
    r = rows[0]
    assert r is not None
    con.print(f"rollout {r['id']}: {r['state']}, steps {r['steps']}"
              + (f"; image {r['image']} on {r['shadow']}: {r['image_from']} -> {r['image_to']}"
                 f" ({'ok' if r['image_ok'] else 'failed'})" if r.get("image") else ""))
    for s in r["step_log"]:
        ev = s["evidence"] or {}
        score = ev.get("score")
        con.print(f"step {s['step']}: {s['weight']:g} % for {s['seconds']} s, "
                  f"{s['decision']} ({ev.get('outcome', '-')}, score "
                  f"{'-' if score is None else f'{score:.0f}'})")
        t = Table(show_header=True, header_style="bold")
        for c in ("metric", "endpoint", "n c/p", "canary", "prod", "effect", "p", "result"):
            t.add_column(c, overflow="fold")
        for m in ev.get("metrics", []):
            for x in m.get("tests", []):
                def f(v: Any, unit: str = x.get("unit", "")) -> str:
                    if v is None:
                        return "-"
                    return f"{v:.1%}" if unit == "share" else f"{v:.3g}"
                t.add_row(Text(m["name"]), Text(x.get("endpoint") or "(all)"),
                          f"{x['n_canary']}/{x['n_baseline']}", f(x["canary"]), f(x["baseline"]),
                          f(x["effect"]), "-" if x["p_beyond"] is None else f"{x['p_beyond']:.1e}",
                          x["result"])
        con.print(t)
        for why in s["reasons"]:
            con.print(f"   {why}", markup=False, emoji=False)
    return 0
