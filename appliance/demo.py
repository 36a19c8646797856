"""``shadowtap demo``: production traffic, copied by the kernel, replayed live to two shadows.

What it shows, end to end, on one host: the namespace lab (``netconfig.lab``) with the shop
service ``v1`` in ``prod`` and in ``shadow-1`` and ``v2`` (the candidate) in ``shadow-2``; a
client driving realistic traffic at the VIP through the gateway; the appliance capturing the
gateway's mirrored production link, turning packets into exchanges, sanitising them, and
replaying each one live to both shadows; the three-way comparison (production as captured,
shadow-1 running production's build, shadow-2 the candidate) judging what is a regression and
what is noise; and a latency judge per endpoint.

Two processes: the orchestrator (this module's ``run_demo``, in the host namespace: lab,
services, traffic, the terminal) and the engine (``python -m appliance.demo engine``), started
inside the gateway namespace because that is where the appliance lives and the only place
from which the fenced shadows can be reached. The engine writes a progress file the
orchestrator renders, and on SIGTERM drains, judges and writes the reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("shadowtap.demo")
SHOP = ROOT / "examples" / "shop"
VIP = "10.77.100.10"
SHADOW_PORT = 8080
SHADOW_ADDRS = {"shadow-1": "10.77.11.2", "shadow-2": "10.77.12.2"}
METRICS = "10.77.1.1:9617"  # on the gateway's client-facing address: reachable from `client`


# ---------------------------------------------------------------------------------------------
# Latency judge (sans-I/O)


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """One-sided p-value that ``a`` tends to be larger than ``b`` (Mann-Whitney U, normal
    approximation with tie correction). Used for latency: no distribution assumed."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 1.0
    allv = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(allv)
    i = 0
    ties = 0.0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1][0] == allv[i][0]:
            j += 1
        r = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[k] = r
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    r1 = sum(r for r, (_, g) in zip(ranks, allv, strict=True) if g == 0)
    u1 = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 1.0
    z = (u1 - mu - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


def _median(v: list[float]) -> float | None:
    if not v:
        return None
    s = sorted(v)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def judge_latency(samples: dict[str, dict[str, list[float]]], *, alpha: float = 0.01,
                  min_samples: int = 10, min_ms: float = 20.0,
                  min_ratio: float = 1.3) -> list[dict[str, Any]]:
    """Per endpoint, is the candidate slower than the secondary (same host, same moment, so the
    only difference is the build)? A regression needs a significant Mann-Whitney test
    (Bonferroni over endpoints) AND a difference that matters (>= ``min_ms`` and
    >= ``min_ratio`` in medians): significance alone flags harmless microseconds."""
    eps = [e for e, s in samples.items()
           if len(s.get("candidate", [])) >= min_samples
           and len(s.get("secondary", [])) >= min_samples]
    out = []
    for ep, s in sorted(samples.items()):
        row: dict[str, Any] = {"endpoint": ep}
        for k in ("production", "secondary", "candidate"):
            v = s.get(k, [])
            row[f"{k}_n"] = len(v)
            m = _median(v)
            row[f"{k}_p50_ms"] = None if m is None else round(m * 1000, 2)
        if ep in eps:
            p = mann_whitney_p(s["candidate"], s["secondary"])
            mc, ms = _median(s["candidate"]) or 0.0, _median(s["secondary"]) or 0.0
            row["p_value"] = p
            row["regression"] = bool(p < alpha / max(1, len(eps))
                                     and (mc - ms) * 1000 >= min_ms
                                     and mc >= ms * min_ratio)
        else:
            row["p_value"] = None
            row["regression"] = False
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# The engine: runs inside the gateway namespace


@dataclass
class _Health:
    """A shadow is down after 3 failures in a row, up again at its first answer."""

    up: bool = True
    fails_in_row: int = 0
    answered: int = 0
    failed: int = 0
    transitions: list[dict[str, Any]] = field(default_factory=list)

    def record(self, ok: bool, now: float, why: str = "") -> None:
        if ok:
            self.answered += 1
            self.fails_in_row = 0
            if not self.up:
                self.up = True
                self.transitions.append({"t": now, "state": "up"})
        else:
            self.failed += 1
            self.fails_in_row += 1
            if self.up and self.fails_in_row >= 3:
                self.up = False
                self.transitions.append({"t": now, "state": "down", "why": why})


class Engine:
    """Capture -> pipeline (sanitise, exchange log, hand-off) -> live replay -> comparison."""

    def __init__(self, workdir: Path, key: bytes, *, interface: str = "cap0",
                 concurrency: int = 32) -> None:
        self.workdir = workdir
        self.key = key
        self.interface = interface
        self.concurrency = concurrency
        self.started = time.time()
        self.stop_event = threading.Event()
        self.health = {name: _Health() for name in SHADOW_ADDRS}
        self.latency: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.captured = 0
        self.replayed = 0
        self.chains: dict[Any, asyncio.Future] = {}
        self.metrics: Any = None
        self.registry: Any = None
        self.last_verdict = time.time()
        self.regressions = 0

    def _config(self) -> Any:
        from appliance import config

        keyfile = self.workdir / "pseudonym.key"
        keyfile.write_bytes(self.key)
        os.chmod(keyfile, 0o600)
        return config.parse({
            "source": {"interface": self.interface, "filter": "tcp port 80",
                       "ring": {"block_size": "512KiB", "block_count": 128, "retire_ms": 60},
                       "rcvbuf": "64MiB", "workers": 1},
            "extract": {"port": 80, "idle_timeout": "60s"},
            "pipeline": {
                "sample": {"percent": 100},
                "sanitise": {"enabled": True, "policy": None, "key_file": str(keyfile)},
                "sinks": [{"type": "jsonl", "path": str(self.workdir / "exchanges.jsonl"),
                           "max_size": "1GiB", "max_age": "24h", "keep": 1},
                          {"type": "handoff", "size": 20000}],
            },
            "metrics": {"listen": METRICS},
        })

    def _progress(self, tw: Any, rp: Any) -> None:
        doc = {
            "ready": True,
            "elapsed": round(time.time() - self.started, 1),
            "captured": self.captured,
            "replayed": self.replayed,
            "compared": tw.compared,
            "regressions": self.regressions,
            "shadows": {n: {"up": h.up, "answered": h.answered, "failed": h.failed}
                        for n, h in self.health.items()},
            "dropped": rp.stats.dropped,
        }
        tmp = self.workdir / "progress.json.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.workdir / "progress.json")

    def _metrics(self, registry: Any = None) -> dict[str, Any]:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        reg = registry if registry is not None else REGISTRY
        return {
            "requests": Counter("shadowtap_shadow_requests_total",
                                "Requests replayed to a shadow, by result", ["shadow", "result"],
                                registry=reg),
            "up": Gauge("shadowtap_shadow_up", "1 while the shadow answers", ["shadow"],
                        registry=reg),
            "compared": Counter("shadowtap_compared_requests_total",
                                "Requests compared three ways (production, shadow-1, shadow-2)",
                                registry=reg),
            "field_diffs": Gauge("shadowtap_field_differences",
                                 "Requests whose answer differed from production's, per endpoint "
                                 "and field (rolling)", ["endpoint", "field", "shadow"],
                                 registry=reg),
            "field_regression": Gauge("shadowtap_field_regression",
                                      "1 while the candidate's difference is judged a regression",
                                      ["endpoint", "field"], registry=reg),
            "latency": Histogram("shadowtap_http_latency_seconds",
                                 "Response latency: production (captured) and each shadow",
                                 ["target"], registry=reg,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)),
        }

    async def _one(self, ex: Any, rp: Any, tw: Any) -> None:
        from replay.compare import endpoint_of
        from replay.model import Exchange as Ex

        key = (ex.conn.client_ip, ex.conn.client_port) if ex.conn else None
        prev = self.chains.get(key)
        done = asyncio.get_running_loop().create_future()
        self.chains[key] = done
        try:
            if prev is not None:  # keep each client connection's requests in order
                await prev
            results = await rp.submit(ex)
        finally:
            done.set_result(None)
            if self.chains.get(key) is done:
                del self.chains[key]
        self.replayed += 1
        ep = endpoint_of(ex.request.method, ex.request.target)
        lat = (ex.ts_response_end - ex.ts_request_end
               if ex.ts_response_end is not None and ex.ts_request_end is not None else None)
        if lat is not None:
            self.latency[ep]["production"].append(lat)
            if self.metrics:
                self.metrics["latency"].labels("production").observe(lat)
        now = time.time()
        outs = []
        for (name, _addr), url in zip(SHADOW_ADDRS.items(), rp_urls(rp), strict=True):
            r = results.get(url)
            ok = isinstance(r, Ex) and r.response is not None
            self.health[name].record(ok, now, "" if ok else getattr(r, "kind", "no response"))
            if self.metrics:
                self.metrics["requests"].labels(name, "answered" if ok else "failed").inc()
                self.metrics["up"].labels(name).set(1 if self.health[name].up else 0)
            if ok:
                ms = r.meta.get("latency_ms")
                rl = ms / 1000 if ms is not None else None
                if rl is not None:
                    role = "secondary" if name == "shadow-1" else "candidate"
                    self.latency[ep][role].append(rl)
                    if self.metrics:
                        self.metrics["latency"].labels(name).observe(rl)
                outs.append(r.response)
            else:
                outs.append(getattr(r, "kind", "no response"))
        secondary, candidate = outs
        tw.add(ex.id, ex.request, ex.response, candidate, secondary)
        if self.metrics:
            self.metrics["compared"].inc()

    async def run(self) -> int:
        from appliance.daemon import Appliance
        from replay.compare import Rules, ThreeWay
        from replay.replayer import Replayer

        cfg = self._config()
        app = Appliance(cfg).start()
        server = None
        with contextlib.suppress(Exception):
            server = app.serve_metrics(METRICS)
        # The shadow and comparison series go into the appliance's own registry, so one
        # /metrics shows capture, pipeline, shadows and differences together.
        self.registry = getattr(server, "registry", None)
        self.metrics = self._metrics(self.registry)
        handoff = app.handoff
        assert handoff is not None
        urls = [f"http://{a}:{SHADOW_PORT}" for a in SHADOW_ADDRS.values()]
        rules = Rules()
        rules.allow_extra_fields = True  # a new field is not a regression (docs/replay.md)
        tw = ThreeWay(rules, min_samples=8)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def pump() -> None:
            while not self.stop_event.is_set():
                ex = handoff.get(timeout=0.2)
                if ex is not None:
                    loop.call_soon_threadsafe(inbox.put_nowait, ex)
            # drain what is left after the capture stopped
            while (ex := handoff.get(timeout=0.05)) is not None:
                loop.call_soon_threadsafe(inbox.put_nowait, ex)
            loop.call_soon_threadsafe(inbox.put_nowait, None)

        loop.add_signal_handler(signal.SIGTERM, self._stop, app)
        loop.add_signal_handler(signal.SIGINT, self._stop, app)
        threading.Thread(target=pump, daemon=True).start()
        tasks: set[asyncio.Task] = set()
        async with Replayer(urls, concurrency=self.concurrency, timeout=5.0,
                            connect_timeout=1.0) as rp:
            self._progress(tw, rp)
            last = 0.0
            while True:
                try:
                    ex = await asyncio.wait_for(inbox.get(), 0.5)
                except TimeoutError:
                    ex = False
                if ex is None:
                    break
                if ex is not False and ex.request is not None and ex.response is not None:
                    self.captured += 1
                    t = asyncio.create_task(self._one(ex, rp, tw))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                if time.time() - last > 0.5:
                    self._progress(tw, rp)
                    last = time.time()
                if time.time() - self.last_verdict > 5:
                    try:
                        self._rolling_verdict(tw)
                    except Exception:  # a live view must never stop the comparison
                        log.exception("rolling verdict failed")
            if tasks:
                await asyncio.wait(tasks, timeout=30)
            self._progress(tw, rp)
            self._report(tw, rp, app)
        return 0

    def _rolling_verdict(self, tw: Any) -> None:
        """Judge what has been compared so far: the gauges and the live view follow the run."""
        self.last_verdict = time.time()
        v = tw.verdict()
        self.regressions = len(v.regressions)
        if not self.metrics:
            return
        for f in [*v.regressions, *v.noise, *v.undecided]:
            for shadow, n in (("shadow-2", f.candidate_diffs), ("shadow-1", f.secondary_diffs)):
                if n is not None:  # None: not measured (a rule decided without a secondary)
                    self.metrics["field_diffs"].labels(f.endpoint, f.field, shadow).set(n)
        for f in v.regressions:
            self.metrics["field_regression"].labels(f.endpoint, f.field).set(1)

    def _stop(self, app: Any) -> None:
        if not self.stop_event.is_set():
            threading.Thread(target=lambda: (app.stop(), self.stop_event.set()),
                             daemon=True).start()

    def _report(self, tw: Any, rp: Any, app: Any) -> None:
        from replay.report import build_report, render_html, write_report

        verdict = tw.verdict()
        urls = rp_urls(rp)
        doc = build_report(verdict, rp.stats, input_path=f"live capture ({self.interface})",
                           candidate=urls[1], secondary=urls[0], fail_on=0.0, skipped={})
        doc["shadowtap"] = "demo"
        doc["latency"] = judge_latency({k: dict(v) for k, v in self.latency.items()})
        doc["latency_regressions"] = [r["endpoint"] for r in doc["latency"] if r["regression"]]
        doc["shadows"] = {n: {"role": "secondary (v1)" if n == "shadow-1" else "candidate (v2)",
                              "url": u, "up": h.up, "answered": h.answered, "failed": h.failed,
                              "transitions": h.transitions}
                          for (n, h), u in zip(self.health.items(), urls, strict=True)}
        snaps = app.snapshots()
        doc["capture"] = snaps[0] if snaps else {}
        doc["captured_exchanges"] = self.captured
        write_report(self.workdir / "report.json", doc)
        with contextlib.suppress(Exception):  # what /metrics showed at the end of the run
            from prometheus_client import REGISTRY, generate_latest

            reg = self.registry if self.registry is not None else REGISTRY
            (self.workdir / "metrics.prom").write_bytes(generate_latest(reg))
        with contextlib.suppress(Exception):
            (self.workdir / "report.html").write_text(render_html(doc))


def rp_urls(rp: Any) -> list[str]:
    return [t.url for t in rp.targets]


def engine_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.demo engine")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--key-hex", required=True)
    ap.add_argument("--interface", default="cap0")
    a = ap.parse_args(argv)
    import uvloop

    eng = Engine(a.workdir, bytes.fromhex(a.key_hex), interface=a.interface)
    return uvloop.run(eng.run())


# ---------------------------------------------------------------------------------------------
# The orchestrator: host namespace, terminal


class DemoError(Exception):
    """Something the user can act on (not root, a lab already up, a port in use...)."""


@dataclass
class _Procs:
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, cwd: Path | None = None,
              log: Path | None = None) -> subprocess.Popen:
        out = log.open("wb") if log is not None else subprocess.DEVNULL
        p = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append((name, p))
        return p

    def get(self, name: str) -> subprocess.Popen | None:
        for n, p in self.procs:
            if n == name:
                return p
        return None

    def stop(self, name: str | None = None, timeout: float = 10.0) -> None:
        for n, p in list(self.procs):
            if name is not None and n != name:
                continue
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
            self.procs.remove((n, p))


def _netns_exec(ns: str, argv: list[str], cpu: str | None = None) -> list[str]:
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    return ["ip", "netns", "exec", ns, *pin, *argv]


def _cpus() -> tuple[str | None, str | None]:
    """(production side, appliance side) CPU lists. On a real gateway the appliance has its own
    cores; on a small host the demo gives it its own share, so that what production feels is the
    kernel's mirror copy, not a fight for the same CPU with the shadows."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    half = len(cpus) // 2
    return (",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half:])))


def _wait_http(ns: str, url: str, timeout: float = 20.0) -> None:
    code = ("import sys,urllib.request\n"
            f"urllib.request.urlopen({url!r}, timeout=1).read()\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(_netns_exec(ns, [sys.executable, "-c", code]),
                           capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.3)
    raise DemoError(f"{url} did not answer from namespace {ns} within {timeout:.0f} s "
                    "(see the service logs in the demo's work directory)")


def _traffic(ns: str, seconds: float, users: int, seed: int) -> list[str]:
    return _netns_exec(ns, [sys.executable, str(SHOP / "traffic.py"), f"http://{VIP}",
                            "--users", str(users), "--duration", str(seconds),
                            "--seed", str(seed), "--json"], _cpus()[0])


def _run_traffic(procs: _Procs, ns: str, seconds: float, users: int, seed: int,
                 workdir: Path, name: str, on_tick: Any = None) -> dict[str, Any]:
    out = workdir / f"{name}.json"
    p = procs.start(name, _traffic(ns, seconds, users, seed), log=out)
    while p.poll() is None:
        if on_tick is not None:
            on_tick()
        time.sleep(0.25)
    procs.stop(name)
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError):
        raise DemoError(f"the traffic driver failed; see {out}") from None


def run_demo(*, duration: float = 20.0, users: int = 6, baseline: float = 4.0,
             workdir: Path = Path("out/demo"), prefix: str = "st-", keep: bool = False,
             seed: int = 1, stop_shadow_at: float | None = None,
             restart_shadow_after: float | None = None, console: Any = None) -> dict[str, Any]:
    """Run the whole demo; returns the JSON report. Tears everything down unless ``keep``."""
    from rich.console import Console
    from rich.live import Live

    from netconfig import lab

    con = console or Console(stderr=True)
    if os.geteuid() != 0:
        raise DemoError("the demo builds network namespaces, veths and tc mirrors: run it as "
                        "root (or try 'shadowtap demo --offline' for the capture-only demo)")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", "report.html", "progress.json", "exchanges.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            (workdir / stale).unlink()
    spec = lab.load_spec(None)
    spec.prefix = prefix
    ns = {n.name: f"{prefix}{n.name}" for n in spec.nodes}
    procs = _Procs()
    report: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        con.print(f"[bold]1.[/] lab up (prefix {prefix!r}): client, gateway, prod, canary, "
                  "shadow-1, shadow-2; gateway's production links mirrored to cap0")
        lab.up(spec)
        con.print("[bold]2.[/] services: v1 in prod (VIP :80) and shadow-1, v2 in shadow-2")
        prod_cpu, app_cpu = _cpus()

        def start_prod() -> None:
            procs.start("prod", _netns_exec(ns["prod"], [
                sys.executable, "app.py", "--host", "0.0.0.0", "--port", "80", "--data-dir",
                str(workdir / "data-prod")], prod_cpu), cwd=SHOP / "v1",
                log=workdir / "prod.log")

        start_prod()

        def start_shadow(name: str, build: str, keep_data: bool = False) -> None:
            argv = [sys.executable, "app.py", "--host", "0.0.0.0", "--port", str(SHADOW_PORT),
                    "--data-dir", str(workdir / f"data-{name}"), "--trust-tokens"]
            if keep_data:  # a restarted shadow keeps its state, like a rebooted VM
                argv.append("--keep-data")
            procs.start(name, _netns_exec(ns[name], argv, app_cpu), cwd=SHOP / build,
                        log=workdir / f"{name}.log")

        for name, build in (("shadow-1", "v1"), ("shadow-2", "v2")):
            start_shadow(name, build)
        _wait_http(ns["client"], f"http://{VIP}/healthz")
        for addr in SHADOW_ADDRS.values():
            _wait_http(ns["gateway"], f"http://{addr}:{SHADOW_PORT}/healthz")
        base = None
        if baseline > 0:
            con.print(f"[bold]3.[/] baseline: {baseline:.0f} s of client traffic with no "
                      "appliance reading the mirror")
            base = _run_traffic(procs, ns["client"], baseline, users, seed + 100, workdir,
                                "traffic-baseline")
            # The baseline wrote to production; the shadows never saw it. Start production
            # again from the seed, so all three begin from the same state.
            procs.stop("prod")
            start_prod()
            _wait_http(ns["client"], f"http://{VIP}/healthz")
        key = secrets.token_bytes(32)
        con.print("[bold]4.[/] appliance on cap0 in the gateway: capture -> sanitise -> "
                  "exchange log + live replay to both shadows -> three-way comparison")
        procs.start("engine", _netns_exec(ns["gateway"], [
            sys.executable, "-m", "appliance.demo", "engine", "--workdir", str(workdir),
            "--key-hex", key.hex()], app_cpu), cwd=ROOT, log=workdir / "engine.log")
        deadline = time.monotonic() + 20
        while not (workdir / "progress.json").exists():
            eng = procs.get("engine")
            if eng is not None and eng.poll() is not None:
                raise DemoError(f"the appliance engine stopped at start; see "
                                f"{workdir / 'engine.log'}")
            if time.monotonic() > deadline:
                raise DemoError(f"the appliance engine did not start; see "
                                f"{workdir / 'engine.log'}")
            time.sleep(0.2)
        con.print(f"[bold]5.[/] client traffic for {duration:.0f} s ({users} users) through "
                  f"the gateway to http://{VIP}/")
        stopped = {"done": False}
        tstart = time.monotonic()

        def tick() -> None:
            live.update(_progress_table(workdir, time.monotonic() - tstart, duration))
            now = time.monotonic() - tstart
            if stop_shadow_at is not None and not stopped["done"] and now >= stop_shadow_at:
                stopped["done"] = True
                procs.stop("shadow-2")
                con.print("   (shadow-2 stopped mid-run, as asked)")
            if (restart_shadow_after is not None and stopped["done"]
                    and not stopped.get("restarted")
                    and now >= (stop_shadow_at or 0) + restart_shadow_after):
                stopped["restarted"] = True
                start_shadow("shadow-2", "v2", keep_data=True)
                con.print("   (shadow-2 restarted)")

        with Live(_progress_table(workdir, 0, duration), console=con,
                  refresh_per_second=4, transient=False) as live:
            main = _run_traffic(procs, ns["client"], duration, users, seed, workdir,
                                "traffic", on_tick=tick)
            time.sleep(1.5)  # the last exchanges are still in flight to the shadows
            eng = procs.get("engine")
            if eng is not None:
                os.killpg(eng.pid, signal.SIGTERM)
                try:
                    eng.wait(60)
                except subprocess.TimeoutExpired:
                    pass
            live.update(_progress_table(workdir, time.monotonic() - tstart, duration))
        con.print()
        try:
            report = json.loads((workdir / "report.json").read_text())
        except (OSError, ValueError):
            raise DemoError(f"the engine wrote no report; see {workdir / 'engine.log'}") from None
        report["client"] = {"baseline": base, "with_appliance": main}
        (workdir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        with contextlib.suppress(Exception):
            from replay.report import render_html

            (workdir / "report.html").write_text(render_html(report))
        _print_results(con, report, workdir)
        if keep:
            con.print(
                f"\n[bold]--keep:[/] the lab is up. Try:\n"
                f"  ip netns exec {ns['client']} curl -s http://{VIP}/products | head\n"
                f"  ip netns exec {ns['client']} curl -s http://{METRICS}/metrics | grep "
                f"shadowtap_\n  shadowtap lab status\n"
                f"Tear down with: shadowtap lab down   (and kill the services listed in "
                f"{workdir}/pids)")
            (workdir / "pids").write_text(
                "\n".join(f"{n} {p.pid}" for n, p in procs.procs) + "\n")
        con.print(f"done in {time.monotonic() - t0:.0f} s")
        return report
    finally:
        if not keep:
            procs.stop()
            with contextlib.suppress(Exception):
                lab.down(prefix)


def _progress_table(workdir: Path, elapsed: float, duration: float) -> Any:
    from rich.table import Table

    try:
        p = json.loads((workdir / "progress.json").read_text())
    except (OSError, ValueError):
        p = {}
    t = Table(title=f"live: {min(elapsed, duration):4.1f} / {duration:.0f} s",
              title_justify="left")
    for col in ("captured", "replayed", "compared", "regressions so far", "shadow-1 (v1)",
                "shadow-2 (v2)"):
        t.add_column(col, justify="right")
    sh = p.get("shadows", {})

    def state(name: str) -> str:
        s = sh.get(name)
        if not s:
            return "-"
        tag = "[green]up[/]" if s["up"] else "[red]DOWN[/]"
        return f"{tag} {s['answered']}/{s['answered'] + s['failed']}"

    t.add_row(str(p.get("captured", 0)), str(p.get("replayed", 0)), str(p.get("compared", 0)),
              str(p.get("regressions", 0)), state("shadow-1"), state("shadow-2"))
    return t


def _print_results(con: Any, report: dict[str, Any], workdir: Path) -> None:
    from rich.table import Table

    rt = Table(title="regressions: candidate (v2) differs from production significantly more "
               "often than shadow-1 (v1) does", title_justify="left")
    for col in ("endpoint", "field", "kind", "v2 differs", "v1 differs", "p (Holm)"):
        rt.add_column(col, justify="left" if col in ("endpoint", "field", "kind") else "right")
    for f in report.get("regressions", []):
        rt.add_row(f["endpoint"], f["field"], f["kind"],
                   f"{f['candidate_diffs']}/{f['compared']}",
                   f"{f['secondary_diffs']}/{f['compared']}", f"{f['p_adjusted']:.1e}")
    con.print(rt)
    noise = report.get("noise", [])
    if noise:
        by_field: dict[str, int] = {}
        for f in noise:
            name = f["field"].split(":", 1)[-1]
            by_field[name] = by_field.get(name, 0) + 1
        top = ", ".join(f"{k} ({v} endpoints)" for k, v in
                        sorted(by_field.items(), key=lambda kv: -kv[1])[:6])
        con.print(f"noise suppressed: {len(noise)} (endpoint, field) pairs differed as often in "
                  f"shadow-1 (production's build) as in v2, e.g. {top}")
    lt = Table(title="latency per endpoint (p50, ms): production vs shadows",
               title_justify="left")
    for col in ("endpoint", "n", "production", "shadow-1 (v1)", "shadow-2 (v2)", "verdict"):
        lt.add_column(col, justify="right" if col != "endpoint" else "left")
    for r in report.get("latency", []):
        def f(v: Any) -> str:
            return "-" if v is None else f"{v:.1f}"
        lt.add_row(r["endpoint"], str(r["production_n"]), f(r["production_p50_ms"]),
                   f(r["secondary_p50_ms"]), f(r["candidate_p50_ms"]),
                   "[red]SLOWER[/]" if r["regression"] else "ok")
    con.print(lt)
    st = Table(title="shadows", title_justify="left")
    for col in ("shadow", "role", "answered", "failed", "state"):
        st.add_column(col)
    for n, s in report.get("shadows", {}).items():
        downs = [x for x in s.get("transitions", []) if x["state"] == "down"]
        state = "up" if s["up"] else "DOWN"
        if downs and s["up"]:
            state = f"up (was down {len(downs)}x)"
        st.add_row(n, s["role"], str(s["answered"]), str(s["failed"]), state)
    con.print(st)
    c = report.get("client", {})
    base, main = c.get("baseline"), c.get("with_appliance")
    if base and main:
        ct = Table(title="production as the client saw it", title_justify="left")
        for col in ("phase", "requests", "errors", "p50 ms", "p99 ms"):
            ct.add_column(col, justify="right" if col != "phase" else "left")
        for name, r in (("without appliance", base), ("with appliance + shadows", main)):
            ct.add_row(name, str(r["requests"]), str(r["errors"]),
                       f"{r['latency_ms']['p50']:.1f}", f"{r['latency_ms']['p99']:.1f}")
        con.print(ct)
    s = report.get("summary", {})
    con.print(f"[bold]verdict:[/] {s.get('regressions', 0)} field regressions, "
              f"{len(report.get('latency_regressions', []))} latency regressions, "
              f"{s.get('noise', 0)} noisy fields suppressed, over {s.get('compared', 0)} "
              "compared requests")
    con.print(f"reports: {workdir / 'report.json'}, {workdir / 'report.html'}; exchange log: "
              f"{workdir / 'exchanges.jsonl'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        sys.exit(engine_main(sys.argv[2:]))
    print("usage: python -m appliance.demo engine --workdir DIR --key-hex HEX", file=sys.stderr)
    sys.exit(2)
