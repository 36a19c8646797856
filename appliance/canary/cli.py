"""``shadowtap canary run``: a progressive rollout judged on live traffic, with automatic rollback.

A thin face over ``appliance.canary.rollout``: it opens the appliance's capture on the mirror port (no
sanitising, nothing written but the report: the exchanges are only counted), reads which
backend served each connection from the gateway's conntrack, steps the canary weight through
``netconfig.routing`` and shows each step as it is judged. Exit 0 when promoted, 1 when rolled
back, 2 for a usage mistake (one ``error:`` line).
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_USAGE = 2


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Progressive canary rollout with automatic rollback.",
                        no_args_is_help=True)
    group.command("run")(canary_run)
    from appliance.canary import control_cli

    control_cli.register(group)
    group.command("history")(canary_history)
    app.add_typer(group, name="canary")


def _steps(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _fail(f"--steps {text!r}: give increasing percentages, e.g. 5,25,50,100") from None


def canary_run(
    netns: Annotated[str | None, typer.Option(
        "--netns", help="The gateway's namespace (where the split and the mirror port are)")
    ] = "st-gateway",
    interface: Annotated[str, typer.Option("--interface", "-i",
                                           help="The mirror port to judge from")] = "cap0",
    port: Annotated[int, typer.Option(help="The service's TCP port", min=1, max=65535)] = 80,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Canary policy YAML (steps, step_seconds, min_requests, "
        "max_error_rate, max_latency_ratio, min_latency_ms); options given here win")] = None,
    steps: Annotated[str | None, typer.Option(
        help="Canary weights, percent of new connections (default 5,25,50,100)")] = None,
    step_seconds: Annotated[float | None, typer.Option(
        help="Seconds each step runs before promotion (default 30)", min=0.1)] = None,
    min_requests: Annotated[int | None, typer.Option(
        help="Canary requests a step needs to be judged (default 50)", min=1)] = None,
    max_error_rate: Annotated[float | None, typer.Option(
        help="Allowed excess of the canary's error share over production's (0.01 = 1 point; "
        "default 0.01)", min=0.0, max=1.0)] = None,
    max_latency_ratio: Annotated[float | None, typer.Option(
        help="Allowed canary p95 / production p95 (default 1.5)", min=1.0)] = None,
    min_latency_ms: Annotated[float | None, typer.Option(
        help="A latency regression must also be this many ms at p95 (default 10)", min=0.0)
    ] = None,
    canary_ip: Annotated[list[str] | None, typer.Option(
        "--canary-ip", help="Tell backends apart by server address (repeatable) instead of "
        "by the gateway's conntrack marks")] = None,
    shadow_candidate: Annotated[str | None, typer.Option(
        help="Divergence veto: a shadow running the canary's build; production's traffic is "
        "replayed to it live and any regression found rolls back")] = None,
    shadow_secondary: Annotated[str | None, typer.Option(
        help="With --shadow-candidate: a shadow running production's build (noise baseline)")
    ] = None,
    metrics: Annotated[str | None, typer.Option(
        help="Serve /metrics (rollout, capture, shadows) on HOST:PORT, e.g. 127.0.0.1:9618")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here")] = None,
    state_file: Annotated[Path | None, typer.Option(
        "--state-file", help="The rollout's durable record (default $SHADOWTAP_HOME/canary/"
        "<netns>.json); a restart after a crash reconciles with it (policy on_restart)")] = None,
    control: Annotated[str | None, typer.Option(
        "--control", help="Serve the control API (canary status|pause|resume|promote|abort) "
        "on 127.0.0.1:PORT (0: any free port)")] = None,
    control_token_file: Annotated[Path | None, typer.Option(
        "--control-token-file", help="Bearer token of the control API, 0600 (created when "
        "missing; default $SHADOWTAP_HOME/canary/control.token)")] = None,
    hold: Annotated[bool, typer.Option(
        "--hold", help="With --control: wait for 'shadowtap canary start' before step 1")
    ] = False,
    image_target: Annotated[str | None, typer.Option(
        "--image-target", help="IMAGE:SHADOW: the canary is that shadow of the image pipeline; "
        "a rollback also puts it back on its previous snapshot (policy key image:)")] = None,
    history: Annotated[Path | None, typer.Option(
        "--history", help="Rollout history database (default $SHADOWTAP_HOME/"
        "canary-history.sqlite)")] = None,
) -> None:
    """Move new connections to the canary step by step; roll back on errors or latency.

    Each step sets the canary's share of new connections (established ones never move), then
    compares the canary's answers with production's over the same seconds, as seen on the
    mirror port. Errors or latency beyond the limits roll back at once; a step is promoted after
    --step-seconds with at least --min-requests canary requests; a step that never gets them
    rolls back at 4x --step-seconds. Ctrl-C rolls back too.
    """
    import os

    from rich.console import Console

    from appliance.canary.rollout import (
        AddressBackends,
        CanaryPolicy,
        ConntrackBackends,
        load_policy,
    )
    from appliance.live.capture import CaptureError
    from netconfig.errors import NetconfigError
    from replay.cli import check_output
    from replay.errors import InputError

    con = Console(stderr=True)
    try:
        policy = load_policy(config) if config is not None else CanaryPolicy()
        policy_dir = config.parent if config is not None else None
    except ValueError as e:
        raise _fail(str(e)) from None
    given = {"steps": _steps(steps) if steps is not None else None,
             "step_seconds": step_seconds, "min_requests": min_requests,
             "max_error_rate": max_error_rate, "max_latency_ratio": max_latency_ratio,
             "min_latency_ms": min_latency_ms}
    for k, v in given.items():
        if v is not None:
            setattr(policy, k, v)
    if image_target is not None:
        from appliance.canary.history import ImageTarget

        try:
            policy.image = ImageTarget.parse(image_target)
        except ValueError as e:
            raise _fail(str(e)) from None
    try:
        policy.validate()
    except ValueError as e:
        raise _fail(str(e)) from None
    if not interface or len(interface) > 15 or "/" in interface:
        raise _fail(f"--interface {interface!r}: not an interface name (at most 15 characters)")
    try:
        if report is not None and report.suffix.lower() != ".json":
            raise InputError(f"--report {report}: the report is JSON; name the file .json")
        check_output(report, "--report")
    except InputError as e:
        raise _fail(str(e)) from None
    if os.geteuid() != 0:
        raise _fail("a rollout changes the gateway's nftables split and captures on its mirror "
                    "port: run it as root")
    from appliance.canary import control as ctl
    from appliance.canary import state as cstate
    from netconfig import haproxy

    store = cstate.StateStore(state_file or cstate.default_dir() / f"{netns or 'host'}.json")
    try:
        live = haproxy.show(netns)  # either split: HAProxy (per request) or nft
        saved = store.read()
    except (NetconfigError, cstate.StateError) as e:
        raise _fail(str(e)) from None
    unfinished = saved is not None and saved.get("state") not in (*cstate.FINAL, "pending")
    if live["canary_percent"] != 0 and not unfinished:
        raise _fail(f"the canary already has {live['canary_percent']:g} % of the traffic; "
                    f"set it to 0 first (shadowtap route set --canary 0"
                    f"{' --netns ' + netns if netns else ''})")
    if canary_ip:
        backend_of: Any = AddressBackends(canary_ip)
    elif live["split"] == "haproxy":  # the proxy connects to each backend's own address
        backend_of = AddressBackends([live["servers"]["canary"]], [live["servers"]["prod"]])
    else:
        backend_of = ConntrackBackends(netns, live["vip"])

    from appliance.live import config
    from appliance.live.daemon import Appliance

    doc_cfg: dict[str, Any] = {
        "source": {"interface": interface, "netns": netns, "filter": f"tcp port {port}"},
        "extract": {"port": port},
        "pipeline": {"sanitise": {"enabled": False},
                     "sinks": [{"type": "handoff", "size": 50000}]},
        "metrics": {"listen": metrics},
    }
    if shadow_secondary and not shadow_candidate:
        raise _fail("--shadow-secondary needs --shadow-candidate (the canary's build)")
    if shadow_candidate:
        doc_cfg["shadowing"] = {"candidate": shadow_candidate, "verdict_every": "1s"}
        if shadow_secondary:
            doc_cfg["shadowing"]["secondary"] = shadow_secondary
    server = None
    try:
        cfg = config.parse(doc_cfg)
        app = Appliance(cfg)
        if metrics:
            server = app.serve_metrics()
        app.start()
    except (config.ConfigError, CaptureError, RuntimeError, OSError) as e:
        if server is not None:
            server.stop()
        raise _fail(str(e).replace("metrics.listen", "--metrics")) from None
    registry = server.registry if server is not None else False
    shadows = None
    tee = None
    if cfg.shadowing is not None:
        from appliance.live.pipeline import Handoff, Stats
        from appliance.live.shadowing import LiveShadowing

        feed = Handoff(50000, Stats())
        shadows = LiveShadowing(cfg.shadowing, feed, registry=registry,
                                source=f"canary rollout ({interface})", live=True).start()
        tee = feed.process

    def set_weight(pct: float) -> None:
        haproxy.set_canary(netns, pct)

    rollout = ctl.ControlledRollout(
        policy, set_weight, divergence=shadows.regression_names if shadows is not None else None)
    try:
        from appliance.canary.webhooks import Webhooks, from_config

        hooks = from_config(policy.webhooks, policy_dir)
    except ValueError as e:
        app.stop()
        raise _fail(str(e)) from None
    controller = ctl.Controller(
        rollout, name=netns or "host", store=store,
        split_get=lambda: haproxy.live_percent(netns), split_set=set_weight,
        webhooks=Webhooks(hooks, netns or "host", "") if hooks else None)
    if controller.webhooks is not None:
        controller.webhooks.rollout_id = controller.id
    control_server = None
    if control is not None:
        try:
            host, _, cport = control.rpartition(":")
            tfile = control_token_file or cstate.default_dir() / "control.token"
            control_server = ctl.ControlServer(
                ctl.load_or_create_token(tfile), controller.status, rollout.submit,
                port=int(cport), host=host or "127.0.0.1").start()
            ctl.write_discovery(store.path.with_name("control.json"), control_server.url,
                                tfile, controller.name)
        except (ValueError, OSError, ctl.ControlError) as e:
            app.stop()
            raise _fail(f"--control {control}: {e}") from None
        con.print(f"control API on {control_server.url} (token in {tfile})")
    if server is not None:
        from appliance.canary.rollout import RolloutCollector

        server.registry.register(RolloutCollector(rollout))
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    on_tick = _tick_printer(con, policy)

    import time

    con.print(f"canary rollout in {netns or 'the host namespace'}: steps {policy.steps} "
              f"(% of {'requests, haproxy' if live['split'] == 'haproxy' else 'new connections'}), "
              f"{policy.step_seconds:g} s each, judged on {interface}")
    started = time.time()
    try:
        doc = controller.run(app.handoff, backend_of, stop=stop, on_tick=on_tick, tee=tee,
                             hold=hold and control_server is not None)
    finally:
        if control_server is not None:
            control_server.stop()
            store.path.with_name("control.json").unlink(missing_ok=True)
        app.stop()
        if shadows is not None:
            shadows.stop(timeout=10)
        if server is not None:
            server.stop()
        for s, h in old.items():
            signal.signal(s, h)
    last = shadows.last_report if shadows is not None else None
    if last:
        doc["shadow_comparison"] = {k: last.get(k) for k in ("summary", "regressions",
                                                              "shadows")}
    from appliance.canary.history import finish_rollout

    finish_rollout(doc, policy, started=started, source=f"{netns or '-'} {interface}",
                   history=history, say=con.print)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(doc, indent=2))
    raise typer.Exit(_say_outcome(con, rollout))


def _tick_printer(con: Any, policy: Any) -> Any:
    """The controller's ``on_tick``: a line per judged step and its reasons, and one when a step
    holds. Reasons name endpoints (and quote the traffic): printed as they are, never as markup."""
    import time

    last_step = [0]
    held: set[int] = set()

    def on_tick(r: Any, j: Any) -> None:
        if r.history and r.history[-1]["step"] != last_step[0]:
            h = r.history[-1]
            last_step[0] = h["step"]
            c, p = h["canary"], h["prod"]
            mark = "[green]ok[/]" if h["decision"] == "promote" else "[red]ROLLBACK[/]"
            jd = h.get("judgement") or {}
            if jd.get("score") is not None:
                mark += f" ({jd['outcome']}, score {jd['score']:.0f})"
            con.print(f"step {h['step']}: {h['weight']:g} % for {h['seconds']:.0f} s  {mark}  "
                      f"canary {c['requests']} req, {c['error_rate']:.1%} errors, p95 "
                      f"{c['p95_ms']} ms | prod {p['requests']} req, {p['error_rate']:.1%} "
                      f"errors, p95 {p['p95_ms']} ms")
            for reason in h["reasons"]:
                con.print(f"   {reason}", markup=False, emoji=False)
        elif (j is not None and j.decision == "wait" and r.step not in held
              and time.monotonic() - r.step_started >= policy.step_seconds):
            held.add(r.step)  # the step's time is up but the evidence is not: say so once
            jd = j.stats.get("judgement") or {}
            con.print(f"step {r.step + 1}: holding, {jd.get('outcome', 'inconclusive')} "
                      f"({'; '.join(jd.get('reasons') or [])[:160]})", markup=False, emoji=False)

    return on_tick


def _say_outcome(con: Any, rollout: Any) -> int:
    """The last line (the reasons as plain text: they quote the traffic); the exit status."""
    from rich.text import Text

    if rollout.state == "promoted":
        con.print("[bold green]promoted[/]: the canary takes 100 % of new connections")
        return 0
    con.print(Text.assemble(("rolled back", "bold red"), ": new connections go to production (",
                            "; ".join(rollout.reasons), ")"))
    return 1


def canary_history(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Rollouts shown", min=1)] = 20,
    rollout_id: Annotated[int | None, typer.Option(
        "--id", help="One rollout's steps with the judge's evidence (metrics, endpoints, "
        "effect sizes, p-values)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
    history: Annotated[Path | None, typer.Option(
        "--history", help="History database (default $SHADOWTAP_HOME/canary-history.sqlite)")
    ] = None,
) -> None:
    """Past rollouts: outcome, step reached, why, the image rollback; --id N for the evidence."""
    from appliance.canary.history import history_command

    raise typer.Exit(history_command(limit, rollout_id, as_json, history))
