"""Checks after every delta: is the new build still good, as seen from the appliance?

Declared in YAML (a file of its own, or named by the image manifest's ``checks:``)::

    timeout: 300                 # per check, seconds
    checks:
      - {name: smoke, type: http, port: 8080, path: /health, status: 200, contains: ok}
      - {name: api, type: pytest, path: tests/shadow}          # JUnit XML kept per run
      - {name: load, type: locust, locustfile: load.py, users: 10, spawn_rate: 10,
         duration: 5s, p95_ms: 300, max_error_rate: 0.01}
      - {name: security, type: security, allowed_ports: [8080]}
      - {name: replay, type: replay, input: capture.jsonl, fail_on: 1%}

Why they run where they run: a shadow is fenced, reachable only from the appliance's address on
its link, so every check that talks to the service (pytest, locust, the replay diff) runs as a
child process *inside the pool's gateway namespace* (``ShadowHost.client_netns``); for an ssh
shadow that is simply this host. Each runs in its own process, which also keeps locust's gevent
monkey-patching (it patches ``socket`` for the whole process) away from the appliance.

``shadows: all`` runs a check on every shadow, ``first`` on one; the cheap checks (http,
security) default to all, the heavy ones (pytest, locust, replay) to the first, so a verdict with
eight shadows does not cost eight load tests.

The replay check drives ``shadowtap diff`` (replay/replayer.py + replay/compare.py) as a child in
the gateway namespace: its asyncio sockets must be created in that namespace, and a child that
enters it is the one way that needs no cooperation from the replayer. Its exit code (0 within
``--fail-on``, 1 regression, 2 could not run) is the verdict; its JSON report is kept.
"""

from __future__ import annotations

import csv
import os
import re
import stat
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import procs
from appliance.images.imagesync import ImageStore, Snapshot
from appliance.images.shadows import RSYNC_PORT, ShadowHost, parse_duration

REPO = Path(__file__).resolve().parents[1]
KINDS = ("http", "pytest", "locust", "security", "replay")
DEFAULT_SCOPE = {"http": "all", "security": "all", "pytest": "first", "locust": "first",
                 "replay": "first"}


class CheckSpecError(Exception):
    """The checks file is wrong; the message names the entry."""


@dataclass
class CheckSpec:
    name: str
    kind: str
    opts: dict[str, Any]
    scope: str
    timeout: float


@dataclass
class ChecksFile:
    checks: list[CheckSpec]
    base: Path  # relative paths in the file are relative to here


@dataclass
class CheckResult:
    """One check on one shadow."""

    name: str
    kind: str
    shadow: str
    ok: bool
    seconds: float
    summary: str
    metrics: dict[str, float] = field(default_factory=dict)
    artefacts: list[str] = field(default_factory=list)


def load_checks(path: Path) -> ChecksFile:
    """Parse and validate a checks file completely before anything runs."""
    import strictconf  # unknown keys are errors: a typo'd gate (p95ms:) must not turn it off

    d = strictconf.load_yaml(path, what="checks file", error=CheckSpecError)
    if isinstance(d, list):
        d = {"checks": d}
    port, num, args = int, float, [(str, float)]
    strictconf.check(d, {"timeout": (num, str), "checks": [strictconf.Tagged("type", {
        "http": {"port": port, "path": str, "status": int, "contains": str},
        "pytest": {"path": str, "args": args, "port": port},
        "locust": {"locustfile": str, "duration": (num, str), "users": int, "spawn_rate": num,
                   "port": port, "p95_ms": num, "max_error_rate": num},
        "security": {"allowed_ports": [int], "allow_files": [str],
                     "allow_world_writable": bool, "allow_setuid": bool},
        "replay": {"input": str, "port": port, "fail_on": (str, num), "secondary": str,
                   "noise_rules": str, "args": args},
    }, common={"name": str, "type": str, "shadows": str, "timeout": (num, str)})]},
        file=path, error=CheckSpecError)
    if not isinstance(d, dict) or not isinstance(d.get("checks"), list):
        raise CheckSpecError(f"{path}: expected a mapping with a 'checks' list")
    default_timeout = float(d.get("timeout", 300))
    out = []
    names = set()
    for i, c in enumerate(d["checks"]):
        where = f"{path}: checks[{i}]"
        if not isinstance(c, dict):
            raise CheckSpecError(f"{where}: expected a mapping")
        kind = c.get("type")
        if kind not in KINDS:
            raise CheckSpecError(f"{where}: type must be one of {', '.join(KINDS)}, not {kind!r}")
        name = str(c.get("name") or kind)
        if name in names:
            raise CheckSpecError(f"{where}: duplicate check name {name!r}")
        names.add(name)
        scope = str(c.get("shadows", DEFAULT_SCOPE[kind]))
        if scope not in ("all", "first"):
            raise CheckSpecError(f"{where}: shadows must be 'all' or 'first'")
        need = {"pytest": "path", "locust": "locustfile", "replay": "input"}.get(kind)
        if need and not c.get(need):
            raise CheckSpecError(f"{where}: a {kind} check needs '{need}'")
        opts = {k: v for k, v in c.items() if k not in ("name", "type", "shadows", "timeout")}
        out.append(CheckSpec(name, kind, opts, scope, float(c.get("timeout", default_timeout))))
    return ChecksFile(out, path.parent.resolve())


@dataclass
class Context:
    """What a check may look at: the shadow, the snapshot it runs, where artefacts go."""

    host: ShadowHost
    snap: Snapshot
    store: ImageStore
    artefacts: Path
    base: Path
    service_port: int | None

    def url(self, port: int | None = None) -> str:
        return f"http://{self.host.addr}:{port or self.service_port}"

    def child_env(self, port: int | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(SHADOW_URL=self.url(port), SHADOW_HOST=self.host.addr,
                   SHADOW_PORT=str(port or self.service_port or ""), SHADOW_NAME=self.host.name,
                   SHADOW_SNAPSHOT=self.snap.id)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        return env


# ---- the checks ------------------------------------------------------------------------------

def check_http(spec: CheckSpec, ctx: Context) -> CheckResult:
    o = spec.opts
    port = int(o.get("port") or ctx.service_port or 80)
    path = str(o.get("path", "/"))
    want = int(o.get("status", 200))
    t0 = time.monotonic()
    try:
        status, body = ctx.host.http_get(port, path, timeout=min(spec.timeout, 10))
    except OSError as e:
        return CheckResult(spec.name, spec.kind, ctx.host.name, False, time.monotonic() - t0,
                           f"GET {path}: {e}")
    ms = (time.monotonic() - t0) * 1000
    problems = []
    if status != want:
        problems.append(f"status {status}, expected {want}")
    if o.get("contains") and str(o["contains"]).encode() not in body:
        problems.append(f"body lacks {o['contains']!r}")
    ok = not problems
    return CheckResult(spec.name, spec.kind, ctx.host.name, ok, time.monotonic() - t0,
                       f"GET {path} -> {status} in {ms:.0f} ms" if ok else
                       f"GET {path}: " + "; ".join(problems), {"latency_ms": ms})


def check_pytest(spec: CheckSpec, ctx: Context) -> CheckResult:
    o = spec.opts
    target = (ctx.base / str(o["path"])).resolve()
    xml = ctx.artefacts / f"{spec.name}-{ctx.host.name}.junit.xml"
    argv = [sys.executable, "-m", "pytest", str(target), "-q", "-p", "no:cacheprovider",
            f"--junitxml={xml}", "--rootdir", str(target if target.is_dir() else target.parent),
            "-o", "addopts=", *[str(a) for a in o.get("args", [])]]
    r = procs.run(argv, timeout=spec.timeout, netns=ctx.host.client_netns,
                  env=ctx.child_env(o.get("port")), cwd=str(ctx.base))
    (ctx.artefacts / f"{spec.name}-{ctx.host.name}.log").write_text(r.stdout + r.stderr)
    counts = _junit_counts(xml)
    if r.timed_out:
        summary, ok = f"timed out after {spec.timeout:.0f} s", False
    elif counts is None:
        summary, ok = f"no JUnit report: {r.why()}", False
    else:
        ok = r.returncode == 0 and counts["failures"] == 0 and counts["errors"] == 0
        summary = (f"{counts['tests']} tests, {counts['failures']} failed, {counts['errors']} "
                   f"errors, {counts['skipped']} skipped")
        bad = _junit_failed_names(xml)
        if bad:
            summary += ": " + ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
    return CheckResult(spec.name, spec.kind, ctx.host.name, ok, r.seconds, summary,
                       {k: float(v) for k, v in (counts or {}).items()},
                       [str(xml)] if xml.exists() else [])


def _junit_counts(xml: Path) -> dict[str, int] | None:
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for s in suites:
        for k in out:
            out[k] += int(s.get(k, 0))
    return out


def _junit_failed_names(xml: Path) -> list[str]:
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return []
    return [tc.get("name", "?") for tc in root.iter("testcase")
            if tc.find("failure") is not None or tc.find("error") is not None]


def check_locust(spec: CheckSpec, ctx: Context) -> CheckResult:
    o = spec.opts
    lf = (ctx.base / str(o["locustfile"])).resolve()
    prefix = ctx.artefacts / f"{spec.name}-{ctx.host.name}"
    duration = parse_duration(str(o.get("duration", "5s")))
    argv = [sys.executable, "-m", "locust", "-f", str(lf), "--headless",
            "-u", str(o.get("users", 5)), "-r", str(o.get("spawn_rate", o.get("users", 5))),
            "-t", f"{int(duration)}s", "--host", ctx.url(o.get("port")), "--csv", str(prefix),
            "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "1"]
    r = procs.run(argv, timeout=max(spec.timeout, duration + 30), netns=ctx.host.client_netns,
                  env=ctx.child_env(o.get("port")), cwd=str(ctx.base))
    (ctx.artefacts / f"{spec.name}-{ctx.host.name}.log").write_text(r.stdout + r.stderr)
    agg = _locust_aggregate(Path(f"{prefix}_stats.csv"))
    if agg is None:
        return CheckResult(spec.name, spec.kind, ctx.host.name, False, r.seconds,
                           f"locust produced no statistics: {r.why()}")
    reqs, fails, p95 = agg
    rate = fails / reqs if reqs else 1.0
    metrics = {"requests": float(reqs), "failures": float(fails), "p95_ms": p95,
               "error_rate": rate, "rps": reqs / duration if duration else 0.0}
    problems = []
    if reqs == 0:
        problems.append("no requests were made")
    if o.get("p95_ms") is not None and p95 > float(o["p95_ms"]):
        problems.append(f"p95 {p95:.0f} ms > {float(o['p95_ms']):.0f} ms")
    if rate > float(o.get("max_error_rate", 0.01)):
        problems.append(f"error rate {rate:.2%} > {float(o.get('max_error_rate', 0.01)):.2%}")
    summary = f"{reqs:,} requests, p95 {p95:.0f} ms, errors {rate:.2%}"
    if problems:
        summary += ": " + "; ".join(problems)
    return CheckResult(spec.name, spec.kind, ctx.host.name, not problems, r.seconds, summary,
                       metrics, [f"{prefix}_stats.csv"])


def _locust_aggregate(path: Path) -> tuple[int, int, float] | None:
    try:
        with path.open() as fh:
            for row in csv.DictReader(fh):
                if row.get("Name") == "Aggregated":
                    p95 = row.get("95%", "0")
                    return (int(row["Request Count"]), int(row["Failure Count"]),
                            float(p95) if p95 not in ("", "N/A") else 0.0)
    except (OSError, KeyError, ValueError):
        return None
    return None


# (kind, literal anchors that must occur first, pattern). The anchors are found by bytes.find
# (C speed) so the regexes only run on files that could match: on 2 MB of binary the regexes
# alone cost ~230 ms, the anchors ~5 ms.
SECRET_PATTERNS: list[tuple[str, tuple[bytes, ...], re.Pattern[bytes]]] = [
    ("private key", (b"PRIVATE KEY",), re.compile(
        rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----")),
    ("AWS access key", (b"AKIA", b"ASIA"), re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", (b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"github_pat_"), re.compile(
        rb"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,})")),
    ("Slack token", (b"xox",), re.compile(rb"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("GitLab token", (b"glpat-",), re.compile(rb"\bglpat-[A-Za-z0-9_-]{20}\b")),
    ("JWT", (b"eyJ",), re.compile(
        rb"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("assigned secret", (b"api_key", b"api-key", b"apikey", b"secret", b"token", b"password"),
     re.compile(
        rb"(?i)\b(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|password)\b"
        rb"[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+_.=-]{16,}")),
]
_CASELESS = {"assigned secret"}


def scan_tree_permissions(root: Path, allow: set[str]) -> tuple[list[str], list[str]]:
    """(world-writable entries, setuid/setgid files) under ``root``; sticky dirs are fine."""
    ww, suid = [], []
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if rel in allow:
                continue
            try:
                st = p.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            if st.st_mode & stat.S_IWOTH and not (stat.S_ISDIR(st.st_mode)
                                                 and st.st_mode & stat.S_ISVTX):
                ww.append(rel)
            if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                suid.append(rel)
    return sorted(ww), sorted(suid)


def scan_secrets(root: Path, paths: list[str], max_bytes: int = 4_000_000) -> list[str]:
    """``path: kind`` for every file among ``paths`` that holds a key or token."""
    hits = []
    for rel in paths:
        p = root / rel
        try:
            if p.is_symlink() or not p.is_file() or p.stat().st_size > max_bytes:
                continue
            data = p.read_bytes()
        except OSError:
            continue
        lower = None
        for kind, anchors, rx in SECRET_PATTERNS:
            hay = data
            if kind in _CASELESS:
                lower = data.lower() if lower is None else lower
                hay = lower
            if any(hay.find(a) >= 0 for a in anchors) and rx.search(data):
                hits.append(f"{rel}: {kind}")
                break
    return hits


def listening_ports(host: ShadowHost, timeout: float = 10) -> set[int] | None:
    r = host.exec("ss -Hltun", timeout=timeout)
    if not r.ok:
        return None
    ports = set()
    for line in r.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 5:
            m = re.search(r":(\d+)$", cols[4])
            if m:
                ports.add(int(m.group(1)))
    return ports


_scan_cache: dict[tuple[str, str, str], tuple[list[str], list[str], list[str], int]] = {}
_scan_lock = threading.Lock()


def _scan_snapshot(ctx: Context, allow: set[str]) -> tuple[list[str], list[str], list[str], int]:
    """(world-writable, setuid, secrets, files scanned) of a snapshot, computed once for all
    shadows: they run the same hash-verified tree, and the scan is CPU-bound Python (GIL)."""
    key = (str(ctx.store.dir), ctx.snap.id, ",".join(sorted(allow)))
    with _scan_lock:
        if key not in _scan_cache:
            tree = ctx.store.tree(ctx.snap.id)
            ww, suid = scan_tree_permissions(tree, allow)
            if ctx.snap.parent is None:
                added = [str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()]
            else:
                added = ctx.snap.changed
            _scan_cache[key] = (ww, suid, scan_secrets(tree, added), len(added))
        return _scan_cache[key]


def check_security(spec: CheckSpec, ctx: Context) -> CheckResult:
    o = spec.opts
    t0 = time.monotonic()
    problems: list[str] = []
    metrics: dict[str, float] = {}
    allowed = {int(p) for p in o.get("allowed_ports", [])}
    infra = {RSYNC_PORT} if ctx.host.backend == "lab" else {22}  # shadowtap's own way in
    ports = listening_ports(ctx.host)
    if ports is None:
        problems.append("could not list listening ports (ss failed)")
    else:
        extra = sorted(ports - allowed - infra)
        metrics["listening_ports"] = float(len(ports))
        if extra:
            problems.append(f"ports not allowed: {', '.join(map(str, extra))}")
    # the snapshot is identical to the shadow's release (hash-verified before the switch)
    ww, suid, secrets, n_added = _scan_snapshot(ctx, set(o.get("allow_files", [])))
    metrics["world_writable"], metrics["setuid"] = float(len(ww)), float(len(suid))
    if ww and not o.get("allow_world_writable"):
        problems.append(f"world-writable: {', '.join(ww[:5])}" + (" ..." if len(ww) > 5 else ""))
    if suid and not o.get("allow_setuid"):
        problems.append(f"setuid/setgid: {', '.join(suid[:5])}" + (" ..." if len(suid) > 5 else ""))
    metrics["secrets"] = float(len(secrets))
    if secrets:
        problems.append(f"keys/tokens added: {', '.join(secrets[:5])}")
    summary = "; ".join(problems) if problems else (
        f"ports {sorted(ports or [])} ok, no world-writable or setuid files, "
        f"no secrets in {n_added} changed files")
    return CheckResult(spec.name, spec.kind, ctx.host.name, not problems,
                       time.monotonic() - t0, summary, metrics)


def check_replay(spec: CheckSpec, ctx: Context) -> CheckResult:
    o = spec.opts
    report = ctx.artefacts / f"{spec.name}-{ctx.host.name}.json"
    argv = [sys.executable, "-m", "appliance.cli", "diff", str(ctx.base / str(o["input"])),
            "--candidate", ctx.url(o.get("port")), "--report", str(report),
            "--fail-on", str(o.get("fail_on", "1%")), "--quiet"]
    if o.get("secondary"):
        argv += ["--secondary", str(o["secondary"])]
    if o.get("noise_rules"):
        argv += ["--noise-rules", str(ctx.base / str(o["noise_rules"]))]
    for a in o.get("args", []):
        argv.append(str(a))
    r = procs.run(argv, timeout=spec.timeout, netns=ctx.host.client_netns,
                  env=ctx.child_env(o.get("port")), cwd=str(ctx.base))
    (ctx.artefacts / f"{spec.name}-{ctx.host.name}.log").write_text(r.stdout + r.stderr)
    if r.timed_out:
        return CheckResult(spec.name, spec.kind, ctx.host.name, False, r.seconds,
                           f"replay diff timed out after {spec.timeout:.0f} s")
    last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or [""])[-1]
    verdict = {0: "no regression above --fail-on", 1: "regressions above --fail-on"}.get(
        r.returncode or 0, f"could not run: {last}")
    return CheckResult(spec.name, spec.kind, ctx.host.name, r.returncode == 0, r.seconds,
                       verdict, {}, [str(report)] if report.exists() else [])


RUNNERS: dict[str, Callable[[CheckSpec, Context], CheckResult]] = {
    "http": check_http, "pytest": check_pytest, "locust": check_locust,
    "security": check_security, "replay": check_replay,
}


def run_checks(cf: ChecksFile, hosts: list[ShadowHost], snap: Snapshot, store: ImageStore,
               artefacts: Path, service_port: int | None) -> list[CheckResult]:
    """Every check in file order; a check's shadows in parallel. Never raises for a check."""
    artefacts.mkdir(parents=True, exist_ok=True)
    out: list[CheckResult] = []
    if not hosts:
        return [CheckResult("shadows", "pool", "-", False, 0.0,
                            "no shadow is running this image: nothing was checked")]
    for spec in cf.checks:
        targets = hosts if spec.scope == "all" else hosts[:1]

        def one(h: ShadowHost, spec: CheckSpec = spec) -> CheckResult:
            ctx = Context(h, snap, store, artefacts, cf.base, service_port)
            t0 = time.monotonic()
            try:
                return RUNNERS[spec.kind](spec, ctx)
            except Exception as e:  # a broken check is a failed check, not a crashed build
                return CheckResult(spec.name, spec.kind, h.name, False, time.monotonic() - t0,
                                   f"check crashed: {type(e).__name__}: {e}")

        with ThreadPoolExecutor(max_workers=len(targets)) as ex:
            out.extend(ex.map(one, targets))
    return out
