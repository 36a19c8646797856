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
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The latency judge lives with the live-shadowing loop (the daemon runs it too); the names stay
# importable from here.
from appliance.live.shadowing import judge_latency, mann_whitney_p  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("shadowtap.demo")
SHOP = ROOT / "examples" / "shop"
VIP = "10.77.100.10"
SHADOW_PORT = 8080
SHADOW_ADDRS = {"shadow-1": "10.77.11.2", "shadow-2": "10.77.12.2"}
METRICS = "10.77.1.1:9617"  # on the gateway's client-facing address: reachable from `client`
CONSOLE = ("127.0.0.1", 9750)
"""The web console: on the gateway namespace's loopback, forwarded to the host's (same port,
or a free one when that is taken) while the demo runs."""

# ---------------------------------------------------------------------------------------------
# The engine: runs inside the gateway namespace


class Engine:
    """The appliance as the demo runs it: capture on the mirror port -> pipeline (sanitise,
    exchange log, hand-off) -> ``LiveShadowing`` (replay to both shadows, three-way comparison),
    with a progress file for the orchestrator's live view and the reports at the end."""

    def __init__(self, workdir: Path, key: bytes, *, interface: str = "cap0",
                 concurrency: int = 32) -> None:
        self.workdir = workdir
        self.key = key
        self.interface = interface
        self.concurrency = concurrency
        self.stop_event = threading.Event()

    def _config(self) -> Any:
        from appliance.live import config

        keyfile = self.workdir / "pseudonym.key"
        keyfile.write_bytes(self.key)
        os.chmod(keyfile, 0o600)
        s1, s2 = SHADOW_ADDRS["shadow-1"], SHADOW_ADDRS["shadow-2"]
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
            "console": {"listen": f"{CONSOLE[0]}:{CONSOLE[1]}",
                        "token_file": str(self.workdir / "console.token"),
                        "rules_file": str(self.workdir / "console-rules.yaml")},
            "shadowing": {
                "secondary": {"url": f"http://{s1}:{SHADOW_PORT}", "name": "shadow-1",
                              "label": "secondary (v1)"},
                "candidate": {"url": f"http://{s2}:{SHADOW_PORT}", "name": "shadow-2",
                              "label": "candidate (v2)"},
                "concurrency": self.concurrency, "timeout": "5s", "connect_timeout": "1s",
                "verdict_every": "5s", "min_samples": 8,
                # The demo's shadows share the host with production and the client, so they
                # may fall behind for a while: let the backlog wait (bounded) rather than drop.
                "max_in_flight": 100_000,
                # a new field is not a regression (docs/replay.md)
                "allow_extra_fields": True,
            },
        })

    def _progress(self, doc: dict[str, Any]) -> None:
        tmp = self.workdir / "progress.json.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.workdir / "progress.json")

    def run(self) -> int:
        from appliance.live.engine import LiveEngine
        from appliance.live.shadowing import write_reports

        cfg = self._config()
        eng = LiveEngine(cfg, source=f"live capture ({self.interface})")
        server = None
        with contextlib.suppress(Exception):
            server = eng.serve_metrics(METRICS)
        console = None
        try:
            from appliance.console.server import Console

            console = Console(eng, cfg.console).start()
        except Exception as e:  # the demo goes on without its console, and says why
            log.warning("console not started: %s", e)
        eng.start()
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        self._progress(eng.status())
        while not self.stop_event.wait(0.5):
            eng.supervise()
            self._progress(eng.status())
        doc = eng.stop() or {}
        self._progress(eng.status())
        doc["shadowtap"] = "demo"
        write_reports(self.workdir / "report.json", doc)
        with contextlib.suppress(Exception):  # what /metrics showed at the end of the run
            from prometheus_client import generate_latest

            if server is not None:
                (self.workdir / "metrics.prom").write_bytes(generate_latest(server.registry))
        if server is not None:
            server.stop()
        if console is not None:
            console.stop()
        return 0 if eng.error is None else 1


def engine_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.demo engine")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--key-hex", required=True)
    ap.add_argument("--interface", default="cap0")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    eng = Engine(a.workdir, bytes.fromhex(a.key_hex), interface=a.interface)
    return eng.run()


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
    for stale in ("report.json", "report.html", "progress.json", "exchanges.jsonl",
                  "console-rules.yaml"):
        with contextlib.suppress(FileNotFoundError):
            (workdir / stale).unlink()
    spec = lab.load_spec(None)
    spec.prefix = prefix
    ns = {n.name: f"{prefix}{n.name}" for n in spec.nodes}
    procs = _Procs()
    report: dict[str, Any] = {}
    forward: Any = None
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
        token = secrets.token_urlsafe(24)
        tok_file = workdir / "console.token"
        tok_file.write_text(token + "\n")
        os.chmod(tok_file, 0o600)
        with contextlib.suppress(OSError):
            from appliance.console.forward import NetnsForwarder

            forward = NetnsForwarder(CONSOLE, ns["gateway"], CONSOLE).start()
            con.print(f"   web console (while the demo runs): "
                      f"http://127.0.0.1:{forward.port}/?token={token}", soft_wrap=True)
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
        if forward is not None:
            forward.stop()
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

    from replay.report import findings_table, latency_table

    # Endpoint over field in one column, kinds abbreviated when narrow: at 80 columns nothing
    # a user needs is cut (tests/demo/test_demo_tables.py).
    con.print(findings_table(
        report.get("regressions", []), title="regressions: candidate (v2) differs from "
        "production significantly more often than shadow-1 (v1) does", cand="v2 differs",
        sec="v1 differs", width=con.width, examples=False, p_format=".1e"))
    noise = report.get("noise", [])
    if noise:
        by_field: dict[str, int] = {}
        for f in noise:
            name = f["field"].split(":", 1)[-1]
            by_field[name] = by_field.get(name, 0) + 1
        top = ", ".join(f"{k} ({v} endpoints)" for k, v in
                        sorted(by_field.items(), key=lambda kv: -kv[1])[:6])
        con.print(f"noise suppressed: {len(noise)} (endpoint, field) pairs differed as often in "
                  f"shadow-1 (production's build) as in v2, e.g. {top}",
                  markup=False, emoji=False)  # field names come from the traffic
    con.print(latency_table(
        report.get("latency", []), width=con.width,
        title="latency per endpoint (ms, p50 / p90): production vs shadows",
        labels={"secondary": "shadow-1 (v1)", "candidate": "shadow-2 (v2)"}))
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
    cap = report.get("capture") or {}
    over = cap.get("drops", {}).get("handoff_overflow", 0)
    skipped = (report.get("summary") or {}).get("skipped", {})
    late = skipped.get("not_replayed_at_stop", 0)
    shed_sh = skipped.get("shed_overload", 0) + skipped.get("shadow_overflow", 0)
    ho = cap.get("handoff") or {}
    shed_cap = ho.get("shed", 0)
    seen = ho.get("kept", 0) + shed_cap
    kd = int(cap.get("kernel_drops", 0))
    con.print(f"capture: {cap.get('packets', 0)} packets, kernel drops {kd}; shed on purpose: "
              f"{shed_cap} of {seen} exchanges "
              f"({(shed_cap / seen if seen else 0):.1%}) before the workers, {shed_sh} before "
              "the shadows")
    if over or late:
        con.print(f"[yellow]{over + late} captured exchanges were not replayed: the shadows fell "
                  f"behind ({over} overflowed the hand-off, {late} still queued when the "
                  "run ended); production was not slowed[/]")
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
