"""The namespace lab: client, gateway (appliance), prod, canary and fenced shadows on one host.

A YAML spec names nodes (one network namespace each), links (veth pairs with addresses),
routes, mirrored links, the canary split and the shadow fences. Everything the lab creates lives
inside namespaces it created, so tearing down is deleting those namespaces: the kernel removes
their links, qdiscs, filters, rules, routes and nft tables with them.

``up`` is idempotent (every step is "ensure"), and it writes a state record *before* creating
each namespace, so ``down`` after a crash halfway removes exactly what was made and nothing
else: a namespace that already existed and is not in the record is refused, never adopted.
The whole spec is validated first; a bad spec changes nothing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import yaml

import strictconf
from netconfig import haproxy, isolation, mirror, routing, state
from netconfig import netns as nsmod
from netconfig.errors import NetconfigError, SpecError, require_root
from netconfig.ops import DryRunner, LiveRunner, Runner

DEFAULT_SPEC_YAML = """\
# The default shadowtap lab. Every node is a network namespace named <prefix><name>.
prefix: st-
nodes:
  - name: client
    routes:
      - {to: default, via: 10.77.1.1}
  - name: gateway            # the appliance: routes client <-> VIP, captures on cap0
    forwarding: true
  - name: prod
    routes:
      - {to: default, via: 10.77.2.1}
  - name: canary
    routes:
      - {to: default, via: 10.77.3.1}
  - name: shadow-1           # no default route: fenced, reaches only the gateway
  - name: shadow-2
links:
  - a: {node: client, dev: eth0, addr: 10.77.1.2/24}
    b: {node: gateway, dev: client0, addr: 10.77.1.1/24}
    offloads: false
  - a: {node: gateway, dev: prod0, addr: 10.77.2.1/24}
    b: {node: prod, dev: eth0, addr: 10.77.2.2/24}
    offloads: false          # wire-sized frames in the mirror, like a real SPAN port
  - a: {node: gateway, dev: canary0, addr: 10.77.3.1/24}
    b: {node: canary, dev: eth0, addr: 10.77.3.2/24}
    offloads: false
  - a: {node: gateway, dev: shadow1, addr: 10.77.11.1/24}
    b: {node: shadow-1, dev: eth0, addr: 10.77.11.2/24}
  - a: {node: gateway, dev: shadow2, addr: 10.77.12.1/24}
    b: {node: shadow-2, dev: eth0, addr: 10.77.12.2/24}
  - a: {node: gateway, dev: tap0}    # mirrors send copies into tap0 ...
    b: {node: gateway, dev: cap0}    # ... and the appliance captures them on cap0
    offloads: false
mirrors:
  - {node: gateway, dev: prod0, direction: both, to: tap0}
  - {node: gateway, dev: canary0, direction: both, to: tap0}
canary:
  node: gateway
  vip: 10.77.100.10          # put on prod's and canary's loopback, routed by the gateway
  prod: prod
  canary: canary
  percent: 0
fences:
  - {shadow: shadow-1, appliance: gateway}
  - {shadow: shadow-2, appliance: gateway}
"""

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
DEV_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass
class End:
    node: str
    dev: str
    addr: str | None = None


@dataclass
class Link:
    a: End
    b: End
    offloads: bool = True


@dataclass
class Route:
    to: str
    via: str | None = None
    dev: str | None = None
    table: int | None = None


@dataclass
class Node:
    name: str
    forwarding: bool = False
    ipv6: bool = False
    addresses: list[End] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)


@dataclass
class MirrorSpec:
    node: str
    dev: str
    direction: str = "both"
    to: str | None = None
    vxlan_remote: str | None = None
    vni: int | None = None
    filter: dict[str, Any] = field(default_factory=dict)


@dataclass
class CanarySpec:
    node: str
    vip: str
    prod: str
    canary: str
    percent: float = 0.0
    split: str = "nft"
    """``haproxy``: per-request split by HAProxy on the VIP in the gateway (``shadowtap lab up``'s
    default for HTTP services); ``nft``: the proxy-free per-connection split."""
    port: int = 80
    sticky: bool = False
    routes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FenceSpec:
    shadow: str
    appliance: str


@dataclass
class LabSpec:
    """A parsed and validated lab spec."""

    prefix: str
    nodes: list[Node]
    links: list[Link]
    mirrors: list[MirrorSpec] = field(default_factory=list)
    canary: CanarySpec | None = None
    fences: list[FenceSpec] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def ns(self, node: str) -> str:
        return self.prefix + node

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise SpecError(f"unknown node {name!r}")

    def devs(self, node: str) -> dict[str, str | None]:
        """Interfaces of ``node`` from the links, with their address (CIDR) if any."""
        out: dict[str, str | None] = {"lo": None}
        for ln in self.links:
            for e in (ln.a, ln.b):
                if e.node == node:
                    out[e.dev] = e.addr
        return out

    def link_between(self, x: str, y: str) -> tuple[End, End]:
        """(x's end, y's end) of the first link joining nodes x and y."""
        for ln in self.links:
            if ln.a.node == x and ln.b.node == y:
                return ln.a, ln.b
            if ln.b.node == x and ln.a.node == y:
                return ln.b, ln.a
        raise SpecError(f"no link between {x!r} and {y!r}")

    def canary_route(self) -> routing.CanaryRoute | None:
        if not self.canary:
            return None
        c = self.canary
        _, prod_end = self.link_between(c.node, c.prod)
        _, canary_end = self.link_between(c.node, c.canary)
        return routing.CanaryRoute(self.ns(c.node), c.vip, _ip(prod_end.addr), _ip(canary_end.addr))

    def haproxy_split(self) -> haproxy.HAProxySplit | None:
        """The request-level split (``canary.split: haproxy``): servers at their link addresses."""
        if not self.canary or self.canary.split != "haproxy":
            return None
        c = self.canary
        _, prod_end = self.link_between(c.node, c.prod)
        _, canary_end = self.link_between(c.node, c.canary)
        try:
            routes = [haproxy.ABRoute(**r) for r in c.routes or []]
        except TypeError as exc:
            raise SpecError(f"canary.routes: {exc}") from None
        return haproxy.HAProxySplit(self.ns(c.node), c.vip, _ip(prod_end.addr),
                                    _ip(canary_end.addr), port=int(c.port), sticky=bool(c.sticky),
                                    routes=routes)

    def fence_list(self) -> list[isolation.Fence]:
        out = []
        for f in self.fences:
            gw_end, _ = self.link_between(f.appliance, f.shadow)
            out.append(isolation.Fence(self.ns(f.appliance), gw_end.dev, _ip(gw_end.addr),
                                       self.ns(f.shadow)))
        return out

    def mirror_list(self) -> list[mirror.Mirror]:
        out: list[mirror.Mirror] = []
        prios: dict[tuple[str, str], int] = {}
        for i, m in enumerate(self.mirrors):
            key = (m.node, m.dev)
            prios[key] = prios.get(key, mirror.PRIO_BASE - 1) + 1
            out.append(mirror.Mirror(
                netns=self.ns(m.node), dev=m.dev, direction=m.direction, to=m.to,
                vxlan_remote=m.vxlan_remote, vni=m.vni, filter=mirror.MirrorFilter(**m.filter),
                prio=prios[key], id=f"lab:{self.prefix}{i}", owner=f"lab:{self.prefix}"))
        return out


def _ip(cidr: str | None) -> str:
    if not cidr:
        raise SpecError("a link used for routing or fencing needs addresses on both ends")
    return str(ipaddress.ip_interface(cidr).ip)


def _obj(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        return cls(**d)
    except TypeError as exc:
        missing = [k for k, f in fields.items()
                   if k not in d and f.default is MISSING and f.default_factory is MISSING]
        raise SpecError(f"{where}: missing {', '.join(missing) or 'fields'} ({exc})") from None


_END = {"node": str, "dev": str, "addr": str}
SPEC_SCHEMA: dict[str, Any] = {
    "prefix": str,
    "nodes": [{"name": str, "forwarding": bool, "ipv6": bool,
               "addresses": [{"node": str, "dev": str, "addr": str}],
               "routes": [{"to": str, "via": str, "dev": str, "table": int}]}],
    "links": [{"a": _END, "b": _END, "offloads": bool}],
    "mirrors": [{"node": str, "dev": str, "direction": str, "to": str, "vxlan_remote": str,
                 "vni": int,
                 "filter": {"proto": (str, int), "ports": (int, [int]), "sports": (int, [int]),
                            "dports": (int, [int]), "nets": (str, [str]),
                            "srcs": (str, [str]), "dsts": (str, [str])}}],
    "canary": {"node": str, "vip": str, "prod": str, "canary": str, "percent": float,
               "split": str, "port": int, "sticky": bool,
               "routes": [{"to": str, "header": str, "cookie": str, "value": str}]},
    "fences": [{"shadow": str, "appliance": str}],
}
"""Every key a lab spec knows (``strictconf``): a typo is an error with its path."""


def parse_spec(data: Any, file: str | Path | None = None) -> LabSpec:
    """Turn a YAML-loaded dict into a :class:`LabSpec` and validate it completely."""
    if not isinstance(data, dict):
        raise SpecError("a lab spec must be a YAML mapping with nodes and links")
    strictconf.check(data, SPEC_SCHEMA, file=f"spec {file}" if file else None, error=SpecError)
    known = {"prefix", "nodes", "links", "mirrors", "canary", "fences"}
    unknown = set(data) - known
    if unknown:
        raise SpecError(f"unknown top-level key(s) {', '.join(sorted(unknown))}")
    nodes = []
    for i, n in enumerate(data.get("nodes") or []):
        where = f"nodes[{i}]"
        node = _obj(Node, n, where)
        node.addresses = [_obj(End, {"node": node.name, **a}, f"{where}.addresses[{j}]")
                          for j, a in enumerate(node.addresses or [])]
        node.routes = [_obj(Route, r, f"{where}.routes[{j}]") for j, r in enumerate(node.routes or [])]
        nodes.append(node)
    links = []
    for i, ln in enumerate(data.get("links") or []):
        where = f"links[{i}]"
        if not isinstance(ln, dict):
            raise SpecError(f"{where}: expected a mapping")
        extra = set(ln) - {"a", "b", "offloads"}
        if extra:
            raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        for side in ("a", "b"):
            if side not in ln:
                raise SpecError(f"{where}: missing end {side!r}")
        links.append(Link(_obj(End, ln["a"], f"{where}.a"), _obj(End, ln["b"], f"{where}.b"),
                          bool(ln.get("offloads", True))))
    spec = LabSpec(
        prefix=str(data.get("prefix", "st-")),
        nodes=nodes,
        links=links,
        mirrors=[_obj(MirrorSpec, m, f"mirrors[{i}]") for i, m in enumerate(data.get("mirrors") or [])],
        canary=_obj(CanarySpec, data["canary"], "canary") if data.get("canary") else None,
        fences=[_obj(FenceSpec, f, f"fences[{i}]") for i, f in enumerate(data.get("fences") or [])],
        raw=data,
    )
    validate(spec)
    return spec


def validate(spec: LabSpec) -> None:
    """Every check that can be made without touching the host; one clear message per problem."""
    if not PREFIX_RE.match(spec.prefix):
        raise SpecError(f"prefix {spec.prefix!r}: use up to 16 lowercase letters, digits or '-'")
    if not spec.nodes:
        raise SpecError("the spec has no nodes")
    names: set[str] = set()
    for n in spec.nodes:
        if not NAME_RE.match(str(n.name)):
            raise SpecError(f"node name {n.name!r}: use lowercase letters, digits and '-'")
        if n.name in names:
            raise SpecError(f"node {n.name!r} is defined twice")
        names.add(n.name)

    def known(node: str, where: str) -> None:
        if node not in names:
            raise SpecError(f"{where} names unknown node {node!r} (nodes: {', '.join(sorted(names))})")

    addrs: dict[str, str] = {}

    def claim(cidr: str | None, where: str) -> None:
        if cidr is None:
            return
        try:
            iface = ipaddress.ip_interface(str(cidr))
        except ValueError:
            raise SpecError(f"{where}: bad address {cidr!r} (want e.g. 10.0.0.1/24)") from None
        if iface.version != 4:
            raise SpecError(f"{where}: the lab is IPv4 only ({cidr})")
        ip = str(iface.ip)
        if ip in addrs:
            raise SpecError(f"duplicate address {ip}: used by {addrs[ip]} and {where}")
        addrs[ip] = where

    devs: dict[str, set[str]] = {n: {"lo"} for n in names}
    for i, ln in enumerate(spec.links):
        for side, e in (("a", ln.a), ("b", ln.b)):
            where = f"links[{i}].{side}"
            known(e.node, where)
            if not DEV_RE.match(str(e.dev)) or e.dev == "lo":
                raise SpecError(f"{where}: bad interface name {e.dev!r} (1-15 chars, not 'lo')")
            if e.dev in devs[e.node]:
                raise SpecError(f"{where}: node {e.node!r} already has an interface {e.dev!r}")
            devs[e.node].add(e.dev)
            claim(e.addr, f"{e.node}:{e.dev}")
    if spec.canary:
        claim(f"{spec.canary.vip}/32", "canary.vip")

    def need_dev(node: str, dev: str | None, where: str) -> None:
        if dev is not None and dev not in devs[node]:
            raise SpecError(f"{where}: node {node!r} has no interface {dev!r} "
                            f"(it has: {', '.join(sorted(devs[node]))})")

    for n in spec.nodes:
        for j, a in enumerate(n.addresses):
            need_dev(n.name, a.dev, f"nodes[{n.name}].addresses[{j}]")
            claim(a.addr, f"{n.name}:{a.dev}")
        subnets = [ipaddress.ip_interface(a).network for a in spec.devs(n.name).values() if a]
        for j, r in enumerate(n.routes):
            where = f"nodes[{n.name}].routes[{j}]"
            if r.to != "default":
                try:
                    ipaddress.ip_network(r.to, strict=False)
                except ValueError:
                    raise SpecError(f"{where}: bad destination {r.to!r}") from None
            need_dev(n.name, r.dev, where)
            if r.via is None and r.dev is None:
                raise SpecError(f"{where}: give 'via' or 'dev'")
            if r.via is not None:
                try:
                    via = ipaddress.ip_address(r.via)
                except ValueError:
                    raise SpecError(f"{where}: bad gateway {r.via!r}") from None
                if not any(via in s for s in subnets):
                    raise SpecError(f"{where}: gateway {r.via} is on none of {n.name!r}'s links")
    for i, m in enumerate(spec.mirrors):
        where = f"mirrors[{i}]"
        known(m.node, where)
        need_dev(m.node, m.dev, where)
        need_dev(m.node, m.to, where)
        try:
            mirror.Mirror(netns=None, dev=m.dev, direction=m.direction, to=m.to,
                          vxlan_remote=m.vxlan_remote, vni=m.vni,
                          filter=mirror.MirrorFilter(**m.filter)).validate()
        except (NetconfigError, TypeError) as exc:
            raise SpecError(f"{where}: {exc}") from None
    if spec.canary:
        c = spec.canary
        for key in ("node", "prod", "canary"):
            known(getattr(c, key), f"canary.{key}")
        try:
            c.percent = float(c.percent)
        except (TypeError, ValueError):
            raise SpecError(f"canary.percent must be a number, not {c.percent!r}") from None
        routing.check_percent(c.percent)
        if c.split not in ("haproxy", "nft"):
            raise SpecError(f"canary.split must be haproxy or nft, not {c.split!r}")
        spec.canary_route()
        if c.split == "haproxy":
            try:
                spec.haproxy_split().validate()
            except NetconfigError as exc:
                raise SpecError(f"canary: {exc}") from None
    for i, f in enumerate(spec.fences):
        known(f.shadow, f"fences[{i}].shadow")
        known(f.appliance, f"fences[{i}].appliance")
    spec.fence_list()


def load_spec(path: str | Path | None) -> LabSpec:
    """The spec at ``path``, or the built-in default lab."""
    if path is None:
        return parse_spec(yaml.safe_load(DEFAULT_SPEC_YAML))
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec {p}: {exc.strerror}") from None
    data = strictconf.parse_yaml(text, file=p, error=SpecError)
    return parse_spec(data, p)


# ---- state ---------------------------------------------------------------------------------

def state_path(prefix: str) -> Path:
    """Where the record of lab ``prefix`` lives."""
    return state.state_dir() / f"lab-{prefix.rstrip('-') or 'lab'}.json"


def read_state(prefix: str) -> dict[str, Any] | None:
    return state.read(state_path(prefix))


# ---- up / down / status -----------------------------------------------------------------------

def build(runner: Runner, spec: LabSpec) -> None:
    """Every step of the lab, in order, on ``runner`` (live or dry)."""
    for n in spec.nodes:
        ns = spec.ns(n.name)
        runner.netns_add(ns)
        runner.link_up(ns, "lo")
        if not n.ipv6:  # before links exist, so they inherit it: no IPv6 chatter in captures
            runner.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
            runner.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1)
        if n.forwarding:
            runner.sysctl(ns, "net.ipv4.ip_forward", 1)
            # replies from the canary carry the VIP as source but the main route to the VIP
            # points at prod: strict reverse-path filtering would drop them.
            runner.sysctl(ns, "net.ipv4.conf.all.rp_filter", 0)
            runner.sysctl(ns, "net.ipv4.conf.default.rp_filter", 0)
    for ln in spec.links:
        runner.veth_add(spec.ns(ln.a.node), ln.a.dev, spec.ns(ln.b.node), ln.b.dev)
        for e in (ln.a, ln.b):
            if not ln.offloads:
                runner.offloads_off(spec.ns(e.node), e.dev)
            runner.link_up(spec.ns(e.node), e.dev)
            if e.addr:
                runner.addr_add(spec.ns(e.node), e.dev, e.addr)
    for n in spec.nodes:
        for a in n.addresses:
            runner.addr_add(spec.ns(n.name), a.dev, str(a.addr))
    if spec.canary:
        for backend in (spec.canary.prod, spec.canary.canary):
            runner.addr_add(spec.ns(backend), "lo", f"{spec.canary.vip}/32")
    for n in spec.nodes:
        for r in n.routes:
            runner.route_replace(spec.ns(n.name), r.to, via=r.via, dev=r.dev, table=r.table)
    cr = spec.canary_route()
    hp = spec.haproxy_split()
    if hp is not None and spec.canary:
        # the proxy owns the VIP in the gateway: clients' requests end there, and it opens its
        # own connections to prod's and canary's link addresses (mirrored on prod0/canary0)
        runner.addr_add(hp.netns, "lo", f"{hp.vip}/32")
        if isinstance(runner, LiveRunner):
            percent = float(spec.canary.percent)
            if haproxy.running(hp.netns) is not None:  # re-running 'up' keeps the live weight
                percent = haproxy.live_percent(hp.netns)
            haproxy.install(hp, percent)
        elif isinstance(runner, DryRunner):
            runner.lines.append(f"ip netns exec {hp.netns} haproxy -D -f "
                                f"{haproxy.workdir(hp.netns) / 'haproxy.cfg'}  # request-level "
                                f"split, canary {spec.canary.percent:g} %")
    elif cr and spec.canary:
        percent = float(spec.canary.percent)
        if isinstance(runner, LiveRunner) and nsmod.exists(cr.netns):
            # re-running 'up' must not silently move production's split back to the spec's
            try:
                percent = float(routing.show(cr.netns)["canary_percent"])
            except NetconfigError:
                pass
        routing.install(runner, cr, percent)
    for m in spec.mirror_list():
        mirror.install(runner, m)
    if spec.fences:
        isolation.install(runner, spec.fence_list())


def preflight(spec: LabSpec) -> dict[str, Any]:
    """Refuse namespaces we did not make; return the (possibly new) state record."""
    rec = read_state(spec.prefix) or {"prefix": spec.prefix, "namespaces": [], "status": "new"}
    ours = set(rec["namespaces"])
    for n in spec.nodes:
        ns = spec.ns(n.name)
        if nsmod.exists(ns) and ns not in ours:
            raise NetconfigError(
                f"namespace {ns} already exists and was not made by this lab: remove it "
                f"('ip netns del {ns}') or choose another prefix")
    return rec


def up(spec: LabSpec, dry_run: bool = False) -> list[str]:
    """Build (or complete, or re-assert) the lab. Returns the commands in dry-run mode."""
    if dry_run:
        dry = DryRunner()
        build(dry, spec)
        return dry.lines
    require_root()
    path = state_path(spec.prefix)
    with state.locked(path):
        rec = preflight(spec)
        rec["spec"] = spec.raw
        rec["status"] = "building"
        state.write(path, rec)

        def journal(kind: str, what: dict[str, Any]) -> None:
            if kind == "netns" and what["name"] not in rec["namespaces"]:
                rec["namespaces"].append(what["name"])
                state.write(path, rec)  # on disk before the namespace exists

        with LiveRunner(journal) as live:
            build(live, spec)
        rec["status"] = "up"
        state.write(path, rec)
    for m in spec.mirror_list():
        mirror.record(m)
    return []


def down(prefix: str, dry_run: bool = False) -> list[str]:
    """Remove what ``up`` recorded (and only that). Returns what was (or would be) removed."""
    path = state_path(prefix)
    rec = read_state(prefix)
    if rec is None:
        return []
    todo = [ns for ns in reversed(rec["namespaces"]) if nsmod.exists(ns)]
    if dry_run:
        return [f"ip netns del {ns}" for ns in todo]
    require_root()
    from pyroute2 import netns

    with state.locked(path):
        for ns in rec["namespaces"]:
            haproxy.stop(ns)  # its sockets would keep the namespace alive
        for ns in todo:
            netns.remove(ns)
        left = [ns for ns in rec["namespaces"] if nsmod.exists(ns)]
        if left:
            rec["namespaces"] = left
            state.write(path, rec)
            raise NetconfigError(f"could not remove namespace(s) {', '.join(left)}: a process "
                                 "may hold them; retry 'lab down'")
        path.unlink(missing_ok=True)
    mirror.forget_owner(f"lab:{prefix}", rec["namespaces"])
    return [f"ip netns del {ns}" for ns in todo]


def status(spec: LabSpec) -> dict[str, Any]:
    """What exists now, per node and interface, plus the canary split and fence drops."""
    rec = read_state(spec.prefix)
    out: dict[str, Any] = {"prefix": spec.prefix, "state": rec["status"] if rec else "down",
                           "nodes": [], "mirrors": [], "canary": None, "fences": {}}
    live = LiveRunner() if os.geteuid() == 0 else None
    try:
        for n in spec.nodes:
            ns = spec.ns(n.name)
            present = nsmod.exists(ns)
            links = []
            for ln in spec.links:
                for mine, peer in ((ln.a, ln.b), (ln.b, ln.a)):
                    if mine.node != n.name:
                        continue
                    oper = "?"
                    if present and live is not None:
                        found = live.ipr(ns).link_lookup(ifname=mine.dev)
                        if not found:
                            oper = "missing"
                        else:
                            msg = live.ipr(ns).get_links(found[0])[0]
                            oper = "up" if msg["flags"] & 1 else "down"
                    elif not present:
                        oper = "absent"
                    links.append({"dev": mine.dev, "addr": mine.addr, "state": oper,
                                  "peer": f"{peer.node}:{peer.dev}"})
            out["nodes"].append({"node": n.name, "netns": ns, "exists": present, "links": links})
        for m in spec.mirror_list():
            out["mirrors"].append({"netns": m.netns, "dev": m.dev, "direction": m.direction,
                                   "to": m.target_dev, "filter": m.filter.describe(),
                                   "status": mirror.live_status(m) if live else "?"})
        cr = spec.canary_route()
        if cr and live and nsmod.exists(cr.netns):
            try:
                out["canary"] = haproxy.show(cr.netns)
            except NetconfigError as exc:
                out["canary"] = {"error": str(exc)}
        if live:
            for gw in sorted({f.gateway_netns for f in spec.fence_list()}, key=str):
                if nsmod.exists(gw):
                    out["fences"][gw] = isolation.drop_counts(gw)
    finally:
        if live:
            live.close()
    return out
