"""CLI for netconfig: ``shadowtap lab``, ``shadowtap mirror``, ``shadowtap route``.

A thin face: parsing, printing and error reporting only. User mistakes (bad spec, missing
interface, not root) arrive as ``NetconfigError`` and leave as one ``error: ...`` line with exit
code 2 — never a traceback. pyroute2 is imported lazily inside the commands so ``shadowtap
--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from netconfig.cli_common import JsonOpt, SpecOpt, friendly, print_json

lab_app = typer.Typer(help="The namespace lab: client, gateway, prod, canary, shadows.",
                      no_args_is_help=True)
mirror_app = typer.Typer(help="Mirror ports: copy an interface's packets (tc clsact+u32+mirred).",
                         no_args_is_help=True)
route_app = typer.Typer(help="Canary weights for new connections to the VIP.",
                        no_args_is_help=True)

DryOpt = typer.Option(False, "--dry-run", help="Print the equivalent ip/tc/nft commands only.")
PrefixOpt = typer.Option(None, "--prefix", help="Namespace prefix (overrides the spec's; "
                         "several labs can coexist).")


def _load(spec: Path | None, prefix: str | None) -> Any:
    from netconfig import lab

    s = lab.load_spec(spec)
    return lab.parse_spec({**s.raw, "prefix": prefix}) if prefix else s


# ---- lab -----------------------------------------------------------------------------------

@lab_app.command("up")
@friendly
def lab_up(
    spec: Path | None = SpecOpt, prefix: str | None = PrefixOpt, as_json: bool = JsonOpt,
    dry_run: bool = DryOpt,
    split: str | None = typer.Option(
        None, "--split", help="Canary split: haproxy (per request, HTTP; the built-in lab's "
        "default) or nft (per new connection, no proxy in path; a spec file's default unless "
        "its canary.split says otherwise)."),
) -> None:
    """Build the lab (idempotent: running it again completes or re-asserts it)."""
    from netconfig import lab
    from netconfig.errors import NetconfigError

    s = _load(spec, prefix)
    if s.canary is not None:
        given = (s.raw.get("canary") or {}).get("split")
        # the built-in lab serves HTTP: HAProxy by default; a spec file says it itself
        # (canary.split, default nft: the proxy-free mode)
        choice = split or given or ("haproxy" if spec is None else "nft")
        if choice not in ("haproxy", "nft"):
            raise NetconfigError(f"--split must be haproxy or nft, not {choice!r}")
        if choice != s.canary.split:
            s = lab.parse_spec({**s.raw, "canary": {**s.raw["canary"], "split": choice}})
    lines = lab.up(s, dry_run=dry_run)
    if dry_run:
        if as_json:
            print_json({"commands": lines})
        else:
            typer.echo("\n".join(lines))
        return
    if as_json:
        print_json(lab.status(s))
    else:
        typer.echo(f"lab {s.prefix} is up: {len(s.nodes)} namespaces ({s.prefix}*); "
                   "see 'shadowtap lab status'")


@lab_app.command("down")
@friendly
def lab_down(
    spec: Path | None = SpecOpt, prefix: str | None = PrefixOpt, as_json: bool = JsonOpt,
    dry_run: bool = DryOpt,
) -> None:
    """Remove exactly what 'lab up' made (also after a crash halfway through)."""
    from netconfig import lab

    s = _load(spec, prefix)
    done = lab.down(s.prefix, dry_run=dry_run)
    if as_json:
        print_json({"prefix": s.prefix, "removed": done, "dry_run": dry_run})
    elif dry_run:
        typer.echo("\n".join(done) if done else "# nothing to remove")
    else:
        typer.echo(f"lab {s.prefix} is down ({len(done)} namespaces removed)" if done
                   else f"lab {s.prefix}: nothing recorded, nothing removed")


@lab_app.command("status")
@friendly
def lab_status(
    spec: Path | None = SpecOpt, prefix: str | None = PrefixOpt, as_json: bool = JsonOpt,
    dry_run: bool = DryOpt,
) -> None:
    """Draw the topology with what exists now."""
    from netconfig import lab

    s = _load(spec, prefix)
    st = lab.status(s)
    if as_json:
        print_json(st)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"lab {s.prefix} ({st['state']})")
    for col in ("node", "netns", "interface", "address", "state", "peer"):
        t.add_column(col)
    for n in st["nodes"]:
        first = True
        for ln in n["links"] or [{"dev": "-", "addr": None, "state": "", "peer": ""}]:
            t.add_row(n["node"] if first else "", (n["netns"] + ("" if n["exists"] else " (absent)"))
                      if first else "", ln["dev"], ln["addr"] or "", ln["state"], ln["peer"])
            first = False
    con = Console()
    con.print(t)
    for m in st["mirrors"]:
        con.print(f"mirror {m['netns']}:{m['dev']} ({m['direction']}, {m['filter']}) -> {m['to']}: "
                  f"{m['status']}")
    c = st["canary"]
    if c and "error" not in c and c.get("split") == "haproxy":
        con.print(f"canary (haproxy, per request): {c['canary_percent']:g}% of requests to "
                  f"{c['vip']} (answered: prod {c['requests']['prod']}, canary "
                  f"{c['requests']['canary']})")
    elif c and "error" not in c:
        con.print(f"canary: {c['canary_percent']:g}% of new connections to {c['vip']} "
                  f"(seen: prod {c['new_connections']['prod']}, canary {c['new_connections']['canary']})")
    for gw, counts in st["fences"].items():
        con.print(f"fences in {gw}: " + ", ".join(f"{k} dropped {v}" for k, v in counts.items()))
    con.print(_vagrant_note())


def _vagrant_note() -> str:
    """'lab status' and 'route' see namespaces on this host; say so, and where the VMs are."""
    from netconfig import state, vmlab

    note = ("this is the namespace lab (network namespaces on this host);\n"
            "the Vagrant lab's VMs: shadowtap lab vagrant status")
    rec = state.read(vmlab.state_path())
    if rec:
        note += f" (a Vagrant lab is recorded: {rec.get('status', 'unknown state')})"
    return note


# ---- mirror --------------------------------------------------------------------------------

def _csv_ints(v: str | None) -> list[int]:
    from netconfig.errors import NetconfigError

    try:
        return [int(x) for x in v.split(",")] if v else []
    except ValueError:
        raise NetconfigError(f"ports must be numbers separated by commas, not {v!r}") from None


def _csv(v: str | None) -> list[str]:
    return [x.strip() for x in v.split(",")] if v else []


@mirror_app.command("add")
@friendly
def mirror_add(
    dev: str = typer.Option(..., "--dev", help="Interface whose packets are copied."),
    netns: str | None = typer.Option(None, "--netns", help="Its namespace (default: host)."),
    direction: str = typer.Option("both", "--direction", help="in, out or both."),
    to: str | None = typer.Option(None, "--to", help="Local capture interface (same netns)."),
    vxlan_remote: str | None = typer.Option(None, "--vxlan-remote", help="Collector IPv4."),
    vni: int | None = typer.Option(None, "--vni", help="VXLAN network identifier.", min=0,
                                   max=(1 << 24) - 1),
    vxlan_port: int = typer.Option(4789, "--vxlan-port", help="Collector UDP port.", min=1,
                                   max=65535),
    vxlan_local: str | None = typer.Option(None, "--vxlan-local", help="Tunnel source IPv4."),
    vxlan_dev: str | None = typer.Option(None, "--vxlan-dev", help="Name for the VXLAN device."),
    proto: str | None = typer.Option(None, "--proto", help="tcp, udp, icmp, sctp or a number."),
    port: str | None = typer.Option(None, "--port", help="Ports, either side (comma list)."),
    sport: str | None = typer.Option(None, "--sport", help="Source ports (comma list)."),
    dport: str | None = typer.Option(None, "--dport", help="Destination ports (comma list)."),
    net: str | None = typer.Option(None, "--net", help="CIDRs, either side (comma list)."),
    src: str | None = typer.Option(None, "--src", help="Source CIDRs (comma list)."),
    dst: str | None = typer.Option(None, "--dst", help="Destination CIDRs (comma list)."),
    as_json: bool = JsonOpt,
    dry_run: bool = DryOpt,
) -> None:
    """Copy packets of DEV to a capture interface or a VXLAN collector."""
    from netconfig import mirror
    from netconfig.ops import DryRunner

    m = mirror.Mirror(
        netns=netns, dev=dev, direction=direction, to=to, vxlan_remote=vxlan_remote, vni=vni,
        vxlan_port=vxlan_port, vxlan_local=vxlan_local, vxlan_dev=vxlan_dev,
        filter=mirror.MirrorFilter(proto=proto, ports=_csv_ints(port), sports=_csv_ints(sport),
                                   dports=_csv_ints(dport), nets=_csv(net), srcs=_csv(src),
                                   dsts=_csv(dst)))
    if dry_run:
        dry = DryRunner()
        mirror.add(m, dry)
        typer.echo("\n".join(dry.lines))
        return
    mirror.add(m)
    if as_json:
        print_json(m.to_dict())
    else:
        typer.echo(f"{m.id}: {netns or 'host'}:{dev} ({direction}, {m.filter.describe()}) -> "
                   f"{m.target_dev}")


@mirror_app.command("list")
@friendly
def mirror_list(as_json: bool = JsonOpt) -> None:
    """Mirrors shadowtap made (lab ones included), with whether their filters are live."""
    from netconfig import mirror

    rows = [{**m.to_dict(), "status": mirror.live_status(m)} for m in mirror.load_all()]
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no mirrors")
    for r in rows:
        f = mirror.MirrorFilter(**r["filter"]).describe()
        typer.echo(f"{r['id']}\t{r['netns'] or 'host'}:{r['dev']}\t{r['direction']}\t{f}\t-> "
                   f"{r['to'] or r['vxlan_dev'] or 'stvx' + str(r['vni'])}\t{r['status']}")


@mirror_app.command("remove")
@friendly
def mirror_remove(mirror_id: str = typer.Argument(..., help="Id from 'mirror list'.")) -> None:
    """Remove a mirror's filters (and the VXLAN device it created)."""
    from netconfig import mirror

    m = mirror.remove(mirror_id)
    typer.echo(f"removed {m.id}")


# ---- route -----------------------------------------------------------------------------

ROUTE_NETNS_HELP = ("Gateway namespace (overrides the spec); '-': the namespace this runs in "
                    "(inside the Vagrant lab's gateway VM).")
VAGRANT_ROUTE = ("for the Vagrant lab's VMs run it in the gateway VM: shadowtap lab vagrant ssh "
                 "gateway -- sudo shadowtap route {cmd} --netns -")


def _gateway_ns(spec: Path | None, netns: str | None, prefix: str | None, cmd: str,
                check: bool = True) -> str | None:
    """The namespace ``route`` works in: the namespace lab's gateway unless told otherwise.

    The Vagrant lab's gateway is a VM whose own namespace is the gateway: '-' names it. A
    namespace that does not exist is a one-line error that says both ways on.
    """
    from netconfig import netns as nsmod
    from netconfig.errors import NetconfigError

    if netns == "-":
        return None
    if netns:
        ns = netns
    else:
        s = _load(spec, prefix)
        cr = s.canary_route()
        if cr is None:
            raise NetconfigError("the lab spec has no canary section")
        ns = cr.netns
    if check and not nsmod.exists(ns):
        raise NetconfigError(
            f"network namespace {ns} does not exist: 'shadowtap route' addresses the namespace "
            "lab ('shadowtap lab up' starts it); " + VAGRANT_ROUTE.format(cmd=cmd))
    return ns


def _where(ns: str | None) -> str:
    return f"namespace lab gateway {ns}" if ns else "this host's own namespace"


@route_app.command("set")
@friendly
def route_set(
    canary: float = typer.Option(..., "--canary", help="Percent of NEW connections to canary.",
                                 min=0.0, max=100.0),
    spec: Path | None = SpecOpt,
    prefix: str | None = PrefixOpt,
    netns: str | None = typer.Option(None, "--netns", help=ROUTE_NETNS_HELP),
    dry_run: bool = DryOpt,
) -> None:
    """Atomically change the canary weight; established connections keep their backend.

    Addresses the namespace lab; in the Vagrant lab run it inside the gateway VM (--netns -).
    """
    from netconfig import routing
    from netconfig.errors import require_root
    from netconfig.ops import DryRunner

    if dry_run:
        ns = _gateway_ns(spec, netns, prefix, "set --canary N", check=False)
        dry = DryRunner()
        routing.set_canary(ns, canary, dry)
        typer.echo("\n".join(dry.lines))
        return
    require_root()
    from netconfig import haproxy

    ns = _gateway_ns(spec, netns, prefix, "set --canary N")
    haproxy.set_canary(ns, canary)
    what = "requests (haproxy)" if haproxy.split_of(ns) == "haproxy" else "new connections"
    typer.echo(f"canary weight {canary:g}% for {what} ({_where(ns)})")


@route_app.command("show")
@friendly
def route_show(
    spec: Path | None = SpecOpt,
    prefix: str | None = PrefixOpt,
    netns: str | None = typer.Option(None, "--netns", help=ROUTE_NETNS_HELP),
    as_json: bool = JsonOpt,
) -> None:
    """The live split: configured weight and new connections seen per backend.

    Addresses the namespace lab; in the Vagrant lab run it inside the gateway VM (--netns -).
    """
    from netconfig.errors import require_root

    require_root()
    from netconfig import haproxy

    ns = _gateway_ns(spec, netns, prefix, "show")
    st = haproxy.show(ns)
    if as_json:
        print_json(st)
        return
    if st["split"] == "haproxy":
        obs = st["observed_canary_percent"]
        typer.echo(f"VIP {st['vip']} (haproxy, per request): canary {st['canary_percent']:g}% "
                   f"of requests (weights prod {st['weights']['prod']}, canary "
                   f"{st['weights']['canary']}); answered prod {st['requests']['prod']}, canary "
                   f"{st['requests']['canary']}" + (f" ({obs:g}% canary)" if obs is not None else ""))
        typer.echo(f"({_where(ns)})")
        return
    obs = st["observed_canary_percent"]
    typer.echo(f"VIP {st['vip']}: canary {st['canary_percent']:g}% of new connections; "
               f"seen prod {st['new_connections']['prod']}, canary {st['new_connections']['canary']}"
               + (f" ({obs:g}% canary)" if obs is not None else ""))
    typer.echo(f"({_where(ns)})")


def register(app: typer.Typer) -> None:
    """Mount netconfig's commands on the root app."""
    from netconfig import vagrant_cli

    lab_app.add_typer(vagrant_cli.app, name="vagrant")
    app.add_typer(lab_app, name="lab")
    app.add_typer(mirror_app, name="mirror")
    app.add_typer(route_app, name="route")
