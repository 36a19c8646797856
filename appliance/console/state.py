"""What the console shows, gathered from a running ``LiveEngine`` (no I/O but the log tail).

- ``ExchangeRing``: the recent sanitised exchanges, one small tuple each in a bounded deque
  (``console.exchanges``), plus the full records of the last few hundred for the details
  view. Filtering and paging happen here (server side): a page costs one pass over at most the
  ring, whatever the number of exchanges seen (a million or a billion).
- ``LogTail``: follows the workers' JSONL exchange logs (what the sanitise stage produced),
  across rotations. It parses at most ``max_rate`` lines a second; beyond, lines are counted
  but not listed (the list says so), so the console never competes with the pipeline.
- ``Series``: counters sampled once a second into rates (capture, kernel drops, shed share,
  exchanges, compared), bounded; latency per endpoint from every verdict, bounded.
- ``NoiseMarks``: field rules marked from the page, applied by the engine's merge and saved.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("shadowtap.console")

# ---------------------------------------------------------------------------------------------
# Exchanges

Row = tuple[int, float, str, str, str, int | None, float | None, str, str]
"""(seq, time, method, host, path, status, latency ms, protocol, id)"""


class ExchangeRing:
    MAX_DETAIL = 256 * 1024
    """A longer record is listed but not kept whole."""
    MAX_DETAIL_BYTES = 16 << 20

    def __init__(self, size: int = 50_000, details: int = 500) -> None:
        self.rows: deque[Row] = deque(maxlen=size)
        self.details: OrderedDict[str, bytes] = OrderedDict()
        self.max_details = details
        self.detail_bytes = 0
        self.seen = 0
        """Exchanges the log had (listed or not)."""
        self.listed = 0
        self._lock = threading.Lock()

    def add_line(self, line: bytes, now: float) -> None:
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        req = rec.get("request") or {}
        resp = rec.get("response") or {}
        host = ""
        for k, v in req.get("headers") or ():
            if k.lower() == "host":
                host = v
                break
        lat = None
        a = rec.get("ts_request_end") or rec.get("ts_request_start")
        b = rec.get("ts_response_start")
        if a is not None and b is not None:
            lat = round(max(0.0, b - a) * 1000, 2)
        target = str(req.get("target") or "")
        rid = str(rec.get("id") or "")
        with self._lock:
            self.listed += 1
            # Methods, hosts and versions repeat: one copy each (a third of a row's memory).
            row: Row = (self.listed, rec.get("ts_request_start") or now,
                        sys.intern(str(req.get("method") or "")), sys.intern(str(host)[:256]),
                        target[:2048], resp.get("status"), lat,
                        sys.intern(str(req.get("version") or "")), rid[:128])
            self.rows.append(row)
            if rid and len(line) <= self.MAX_DETAIL:
                old = self.details.pop(rid, None)
                if old is not None:
                    self.detail_bytes -= len(old)
                self.details[rid] = line
                self.detail_bytes += len(line)
                while (len(self.details) > self.max_details
                       or self.detail_bytes > self.MAX_DETAIL_BYTES):
                    self.detail_bytes -= len(self.details.popitem(last=False)[1])

    def page(self, *, method: str = "", status: str = "", q: str = "", host: str = "",
             offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """Newest first, filtered: ``method`` exact, ``status`` exact or ``4xx``, ``q`` a
        substring of the path, ``host`` a substring of the host."""
        with self._lock:
            rows = list(self.rows)
        method = method.upper()
        st_lo = st_hi = None
        if status:
            s = status.lower()
            if len(s) == 3 and s.endswith("xx") and s[0].isdigit():
                st_lo, st_hi = int(s[0]) * 100, int(s[0]) * 100 + 99
            elif s.isdigit():
                st_lo = st_hi = int(s)
        out: list[Row] = []
        total = 0
        for r in reversed(rows):
            if method and r[2] != method:
                continue
            if st_lo is not None and (r[5] is None or not st_lo <= r[5] <= st_hi):  # type: ignore[operator]
                continue
            if q and q not in r[4]:
                continue
            if host and host not in r[3]:
                continue
            if offset <= total < offset + limit:
                out.append(r)
            total += 1
        keys = ("seq", "time", "method", "host", "path", "status", "latency_ms", "protocol",
                "id")
        return {"total": total, "offset": offset, "limit": limit, "seen": self.seen,
                "listed": self.listed, "kept": len(rows), "ring": self.rows.maxlen,
                "rows": [dict(zip(keys, r, strict=True)) for r in out]}

    def detail(self, rid: str) -> dict[str, Any] | None:
        with self._lock:
            line = self.details.get(rid)
        return None if line is None else orjson.loads(line)


class LogTail:
    """Follows JSONL files (across rotation: a new inode at the path) into an ExchangeRing."""

    def __init__(self, paths: list[Path], ring: ExchangeRing, max_rate: int = 5000) -> None:
        self.paths = paths
        self.ring = ring
        self.max_rate = max_rate
        self._open: dict[Path, tuple[Any, int]] = {}
        self._partial: dict[Path, bytes] = {}
        self.skipped = 0
        """Lines counted but not listed (beyond ``max_rate``)."""
        self.started = time.time()

    def poll(self, budget: int, now: float) -> int:
        n = 0
        for p in self.paths:
            n += self._poll_one(p, max(0, budget - n), now)
        return n

    def _poll_one(self, p: Path, budget: int, now: float) -> int:
        n = 0
        fh, ino = self._open.get(p, (None, -1))
        try:
            st = os.stat(p)
        except OSError:
            st = None
        if fh is not None:
            n += self._read(p, fh, budget, now)
            if st is not None and st.st_ino != ino:  # rotated: the old one is read out
                n += self._read(p, fh, budget - n, now)
                fh.close()
                fh = None
                self._partial.pop(p, None)
        if fh is None and st is not None:
            with contextlib.suppress(OSError):
                fh = open(p, "rb")  # noqa: SIM115 (kept open across polls)
                fst = os.fstat(fh.fileno())
                if fst.st_mtime < self.started - 1:
                    fh.seek(0, os.SEEK_END)  # a previous run's log: not this run's exchanges
                self._open[p] = (fh, fst.st_ino)
                n += self._read(p, fh, budget - n, now)
        elif fh is None:
            self._open.pop(p, None)
        return n

    CHUNK = 8 << 20

    def _read(self, p: Path, fh: Any, budget: int, now: float) -> int:
        """Read to the end of ``fh`` (a chunk at a time): every line is counted, the newest
        ``budget`` are parsed (once the end is reached: those of a full chunk are only cut out
        when a later one does not hold ``budget`` lines itself), so a log written faster than
        the console parses is never read behind, and a rotated file is read out whole before it
        is closed. What waits to be parsed is at most ``budget`` lines and about two chunks."""
        room = max(0, budget)
        keep: list[bytes] = []
        kept = 0  # bytes in ``keep``
        lines_read = 0
        while True:
            data = fh.read(self.CHUNK)
            if not data:
                break
            data = self._partial.pop(p, b"") + data
            cut = data.rfind(b"\n")
            if cut < 0:
                if len(data) <= ExchangeRing.MAX_DETAIL * 4:
                    self._partial[p] = data  # else: one absurd line, dropped
                continue
            if cut + 1 < len(data):
                self._partial[p] = data[cut + 1:]
            k = data.count(b"\n", 0, cut) + 1
            lines_read += k
            if not room:
                continue
            start = cut
            for _ in range(min(k, room)):  # where the newest ``room`` lines of the chunk start
                start = data.rfind(b"\n", 0, start)
                if start < 0:
                    break
            new = data[start + 1:cut].split(b"\n")
            if len(new) >= room:
                keep, kept = new, cut - start
            else:
                keep.extend(new)
                kept += cut - start
                drop = 0
                while len(keep) - drop > room or (kept > 2 * self.CHUNK
                                                  and len(keep) - drop > len(new)):
                    kept -= len(keep[drop]) + 1
                    drop += 1
                del keep[:drop]
        self.ring.seen += lines_read
        self.skipped += lines_read - len(keep)
        for line in keep:
            if line.startswith(b"{"):
                self.ring.add_line(line, now)
        return len(keep)

    def close(self) -> None:
        for fh, _ in self._open.values():
            with contextlib.suppress(OSError):
                fh.close()
        self._open.clear()


# ---------------------------------------------------------------------------------------------
# Noise marks


class NoiseMarks:
    """Field rules marked from the page: applied by the engine's merge, saved to ``path``
    (the ``Rules`` YAML that ``shadowtap diff --rules`` also reads)."""

    REASON = "marked as noise in the console"

    def __init__(self, path: Path | None) -> None:
        from replay.compare import FieldRule, Rules

        self.path = path
        self._lock = threading.Lock()
        self.fields: list[FieldRule] = []
        if path is not None and path.is_file():
            self.fields = list(Rules.load(path).fields)
        self._FieldRule = FieldRule

    def rules(self) -> Any:
        from replay.compare import Rules

        with self._lock:
            return Rules(fields=list(self.fields))

    def marked(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_dict() for r in self.fields]

    def set(self, endpoint: str, fld: str, kind: str | None, noise: bool) -> bool:
        """Mark (or un-mark) one (endpoint, field[, kind]); True when something changed."""
        kinds = (kind,) if kind else ()
        with self._lock:
            have = [r for r in self.fields
                    if r.endpoint == endpoint and r.field == fld and r.kinds == kinds]
            if noise and not have:
                self.fields.append(self._FieldRule(endpoint, fld, kinds, self.REASON))
            elif not noise and have:
                self.fields = [r for r in self.fields if r not in have]
            else:
                return False
            self._save()
        return True

    def _save(self) -> None:
        if self.path is None:
            return
        from replay.compare import Rules

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        Rules(fields=list(self.fields)).save(tmp)
        tmp.replace(self.path)


# ---------------------------------------------------------------------------------------------
# The whole state


def _sum(snaps: list[dict[str, Any]], key: str) -> float:
    return float(sum(s.get(key, 0) or 0 for s in snaps))


class ConsoleState:
    """The console's view of an engine. ``start()`` runs a 1 s sampler thread."""

    POINTS = 900  # 15 min of 1 s samples
    LAT_POINTS = 300
    MAX_ENDPOINTS = 200

    def __init__(self, engine: Any, ccfg: Any) -> None:
        self.engine = engine
        self.cfg = engine.cfg
        self.ccfg = ccfg
        self.ring = ExchangeRing(ccfg.exchanges)
        self.sanitised = bool(self.cfg.pipeline.sanitise.enabled)
        self.tail = LogTail(self.log_paths() if self.sanitised else [], self.ring)
        sh = self.cfg.shadowing
        rules_file = ccfg.rules_file
        if rules_file is None and sh is not None and sh.report:
            rules_file = str(Path(sh.report).with_name("console-rules.yaml"))
        self.marks = NoiseMarks(Path(rules_file) if rules_file else None)
        engine.rules = self.marks.rules
        self.series: deque[dict[str, Any]] = deque(maxlen=self.POINTS)
        self.latency: dict[str, deque[dict[str, Any]]] = {}
        self._last_report: Any = None
        self.report_seq = 0
        self.started = time.time()
        self._prev: dict[str, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.changed = threading.Condition()
        self.tick_seq = 0

    def log_paths(self) -> list[Path]:
        from appliance.live.pipeline import worker_path

        # One log per pipeline worker; without workers, one per capture process.
        n = getattr(self.engine, "n", 0) or self.cfg.workers
        out: list[Path] = []
        for sk in self.cfg.pipeline.sinks:
            if sk.type != "jsonl" or not sk.path:
                continue
            if n > 1:
                out.extend(Path(worker_path(sk.path, i, n)) for i in range(n))
            else:
                out.append(Path(sk.path))
        return out

    # -- sampling ----------------------------------------------------------------------------

    def start(self) -> ConsoleState:
        self._thread = threading.Thread(target=self._run, name="console-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.tail.close()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.sample()
            except Exception:  # the console must never take the appliance down
                log.exception("console: sampling failed")

    def sample(self) -> None:
        now = time.time()
        self.tail.poll(self.tail.max_rate, now)
        snaps = self._snapshots()
        caps = [s for s in snaps if s.get("role") != "pipeline"]
        shed = float(sum((s.get("handoff") or {}).get("shed", 0) for s in caps))
        st = self._status()
        cur = {"t": now, "packets": _sum(caps, "packets"), "kernel_drops": _sum(caps, "kernel_drops"),
               "exchanges": _sum(caps, "exchanges"), "shed": shed,
               "compared": float(st.get("compared", 0)), "replayed": float(st.get("replayed", 0)),
               "logged": float(self.ring.seen)}
        prev = self._prev
        point: dict[str, Any] = {"t": round(now, 3)}
        for k in ("packets", "kernel_drops", "exchanges", "shed", "compared", "logged"):
            point[k] = cur[k]
            if prev is not None and now > prev["t"]:
                point[f"{k}_per_s"] = round(max(0.0, cur[k] - prev[k]) / (now - prev["t"]), 2)
            else:
                point[f"{k}_per_s"] = 0.0
        self._prev = cur
        self.series.append(point)
        rep = self._report()
        if rep is not None and rep is not self._last_report:
            self._last_report = rep
            self.report_seq += 1
            self._latency_point(rep, now)
        with self.changed:
            self.tick_seq += 1
            self.changed.notify_all()

    def _latency_point(self, rep: dict[str, Any], now: float) -> None:
        for row in rep.get("latency") or []:
            ep = row.get("endpoint")
            if not ep:
                continue
            d = self.latency.get(ep)
            if d is None:
                if len(self.latency) >= self.MAX_ENDPOINTS:
                    continue
                d = self.latency[ep] = deque(maxlen=self.LAT_POINTS)
            d.append({"t": round(now, 3), **{f"{k}_p50_ms": row.get(f"{k}_p50_ms")
                                              for k in ("production", "secondary", "candidate")},
                      **{f"{k}_p90_ms": row.get(f"{k}_p90_ms")
                         for k in ("production", "secondary", "candidate")},
                      "regression": bool(row.get("regression"))})

    def _snapshots(self) -> list[dict[str, Any]]:
        try:
            return list(self.engine.snapshots())
        except Exception:
            return []

    def _status(self) -> dict[str, Any]:
        if self.cfg.shadowing is None:
            return {}
        try:
            return dict(self.engine.status())
        except Exception:
            return {}

    def _report(self) -> dict[str, Any] | None:
        try:
            return self.engine.last_report
        except Exception:
            return None

    # -- views -------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        last = self.series[-1] if self.series else {}
        st = self._status()
        rep = self._report() or {}
        s = rep.get("summary") or {}
        shed = last.get("shed", 0.0)
        exch = last.get("exchanges", 0.0)
        ok, why = (False, "not started")
        with contextlib.suppress(Exception):
            ok, why = self.engine.healthy()
        return {
            "now": time.time(),
            "uptime_s": round(time.time() - self.started, 1),
            "healthy": ok, "health": why,
            "capture": {k: last.get(k, 0) for k in (
                "packets", "packets_per_s", "kernel_drops", "kernel_drops_per_s", "exchanges",
                "exchanges_per_s", "shed", "shed_per_s", "compared_per_s", "logged_per_s")},
            "shed_share": round(shed / (shed + exch), 4) if shed + exch else 0.0,
            "shadowing": self.cfg.shadowing is not None,
            "status": {k: st.get(k) for k in ("captured", "replayed", "compared", "in_flight",
                                              "skipped", "shadows", "compare_lag_p99",
                                              "error")} if st else None,
            "verdict": {"verdict": s.get("verdict"), "regressions": s.get("regressions", 0),
                        "noise": s.get("noise", 0), "undecided": s.get("undecided", 0),
                        "compared": s.get("compared", 0),
                        "regression_rate": s.get("regression_rate"),
                        "latency_regressions": rep.get("latency_regressions") or [],
                        "generated": rep.get("generated")} if rep else None,
            "report_seq": self.report_seq,
            "exchanges": {"seen": self.ring.seen, "listed": self.ring.listed,
                          "not_listed": self.tail.skipped, "ring": self.ring.rows.maxlen,
                          "sanitised": self.sanitised,
                          "logs": [str(p) for p in self.tail.paths]},
            "marks": len(self.marks.fields),
        }

    def rates(self, points: int = 300) -> list[dict[str, Any]]:
        return list(self.series)[-points:]

    def findings(self) -> dict[str, Any]:
        rep = self._report() or {}

        def strip(f: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in f.items() if k not in ("examples", "example_ids")}

        rules = self.marks.rules()

        def tag(f: dict[str, Any]) -> dict[str, Any]:
            d = strip(f)
            d["marked"] = rules.match(f["endpoint"], f["field"], f["kind"]) is not None
            return d

        return {"summary": rep.get("summary"), "endpoints": rep.get("endpoints") or [],
                "regressions": [tag(f) for f in rep.get("regressions") or []],
                "undecided": [tag(f) for f in rep.get("undecided") or []],
                "noise": [tag(f) for f in (rep.get("noise") or [])[:2000]],
                "noise_total": len(rep.get("noise") or []),
                "marks": self.marks.marked(), "report_seq": self.report_seq,
                "rules_file": str(self.marks.path) if self.marks.path else None,
                "shadowing": self.cfg.shadowing is not None}

    def finding(self, endpoint: str, fld: str, kind: str) -> dict[str, Any] | None:
        from replay.report import _sides, _target_names

        rep = self._report() or {}
        names = _target_names(rep)
        tg = rep.get("targets") or {}
        cand = names.get(tg.get("candidate") or "", "candidate")
        sec = names.get(tg.get("secondary") or "", "secondary")
        for group in ("regressions", "undecided", "noise"):
            for f in rep.get(group) or []:
                if (f["endpoint"], f["field"], f["kind"]) == (endpoint, fld, kind):
                    out = {k: v for k, v in f.items() if k != "examples"}
                    out["verdict"] = group
                    out["examples"] = [{"id": ex.get("id"), "request": ex.get("request"),
                                        "primary_value": ex.get("primary_value"),
                                        "candidate_value": ex.get("candidate_value"),
                                        "html": _sides(ex, cand, sec)}
                                       for ex in f.get("examples") or []]
                    out["names"] = {"candidate": cand, "secondary": sec}
                    return out
        return None

    def latency_series(self, endpoint: str | None = None) -> dict[str, Any]:
        rep = self._report() or {}
        rows = rep.get("latency") or []
        eps = sorted(self.latency, key=lambda e: -max(
            (r.get("production_n", 0) or 0 for r in rows if r.get("endpoint") == e), default=0))
        out: dict[str, Any] = {"endpoints": eps, "now": rows}
        if endpoint is not None:
            out["endpoint"] = endpoint
            out["points"] = list(self.latency.get(endpoint, ()))
        return out

    def shadows(self) -> dict[str, Any]:
        rep = self._report() or {}
        pool: Any = None
        try:
            from appliance.images.shadows import Pool

            pool = [{k: r.get(k) for k in ("name", "backend", "addr", "image", "branch",
                                           "expires", "status")} for r in Pool().records()]
        except Exception as e:  # no pool on this host: say so
            pool = {"error": f"{type(e).__name__}: {e}"}
        live = rep.get("shadows")
        if live is None and self.cfg.shadowing is not None:
            st = self._status()
            live = {n: {"role": "", "up": h.get("up"), "answered": h.get("answered"),
                        "failed": h.get("failed")} for n, h in (st.get("shadows") or {}).items()}
        builds, note = self.builds()
        return {"live": live or {}, "pool": pool, "builds": builds, "builds_note": note}

    BUILDS = 15

    def builds(self, home: Path | None = None) -> tuple[list[dict[str, Any]], str]:
        """The last image pushes (``shadowtap build-hook``/``image push``) and their verdicts,
        newest first, from the build history beside the pool (read only: no history file, no
        rows, and nothing created)."""
        try:
            from appliance.images.feedback import History
            from appliance.images.shadows import home as pool_home

            path = (home or pool_home()) / "history.sqlite"
            if not path.is_file():
                return [], f"no pushes recorded ({path} does not exist)"
            rows = History(path).builds(limit=self.BUILDS)
        except Exception as e:  # a history it cannot read: say so, show the rest
            return [], f"build history: {type(e).__name__}: {e}"
        keep = ("id", "image", "snapshot", "stage", "started", "verdict", "shadows", "switched",
                "push_seconds", "verdict_seconds", "trigger")
        return [{**{k: r.get(k) for k in keep},
                 "failed": sorted({c["name"] for c in r.get("checks") or () if not c["ok"]})}
                for r in rows], ""

    def canary_client(self) -> Any:
        """The controller's control API client (``console.canary_control``), or None."""
        if not self.ccfg.canary_control:
            return None
        from appliance.canary.control import ControlClient

        return ControlClient.discover(Path(self.ccfg.canary_control))

    def canary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "running_here": False,
            "controls": False,
            "note": "No canary runs inside 'shadowtap appliance run': 'shadowtap canary run' is "
                    "a process of its own. With console.canary_control (its control.json) this "
                    "page drives it; with console.canary_status it shows a status or state "
                    "file read-only.",
            "status": None,
        }
        if self.ccfg.canary_control:
            from appliance.canary.control import ControlError

            try:
                out["status"] = self.canary_client().call("status")
                out["controls"] = True
                out["note"] = "A running controller (its control API): pause, resume, promote "\
                              "and abort act on it."
                return out
            except ControlError as e:
                out["error"] = str(e)
        p = self.ccfg.canary_status
        if p:
            try:
                out["status"] = orjson.loads(Path(p).read_bytes())
            except (OSError, orjson.JSONDecodeError) as e:
                out["error"] = f"{p}: {e}"
        return out
