"""Mirror ports: copy an interface's traffic to a capture veth or a VXLAN collector.

clsact + u32 + ``mirred egress mirror``: the only combination this kernel offers (no matchall,
no flower) and one that copies every packet exactly once in both directions. The production
packet is never delayed or dropped by the copy; it only costs the kernel's clone.

Filters (protocol, ports, CIDRs) compile to u32 keys at fixed offsets from the IPv4 header.
Port keys assume a 20-byte IP header and a first fragment, and say so with two extra keys
(IHL == 5, fragment offset == 0): packets with IP options or later fragments are *not* copied
by a port filter rather than copied wrongly. Alternatives (``port 80`` = sport 80 OR dport 80)
become several u32 nodes under one priority, rewritten to be disjoint so a packet matching two
alternatives is still copied once. Every node ends in ``continue``: a mirror never stops
classification, so several mirrors on one interface (the lab's and a user's) all get copies.
"""

from __future__ import annotations

import ipaddress
import itertools
import secrets
import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from netconfig import netns as nsmod
from netconfig import state
from netconfig.errors import NetconfigError
from netconfig.ops import EGRESS, ETH_P_ALL, ETH_P_IP, INGRESS, LiveRunner, Runner, U32Key

VXLAN_PORT = 4789
PRIO_BASE = 0xC000  # our u32 filters live at prio 49152+, far from hand-made ones
PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "icmp": socket.IPPROTO_ICMP,
          "sctp": 132}
DIRECTIONS = ("in", "out", "both")


@dataclass
class MirrorFilter:
    """What to copy. Empty = everything (all ethertypes). Lists are alternatives (OR)."""

    proto: str | None = None
    ports: list[int] = field(default_factory=list)  # either side
    sports: list[int] = field(default_factory=list)
    dports: list[int] = field(default_factory=list)
    nets: list[str] = field(default_factory=list)  # either side
    srcs: list[str] = field(default_factory=list)
    dsts: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.proto or self.ports or self.sports or self.dports or self.nets
                    or self.srcs or self.dsts)

    def validate(self) -> None:
        """Reject what u32 cannot express, before anything is touched."""
        if self.proto is not None and self.proto not in PROTOS and not str(self.proto).isdigit():
            raise NetconfigError(f"unknown protocol {self.proto!r}: use tcp, udp, icmp, sctp or a number")
        for p in [*self.ports, *self.sports, *self.dports]:
            if not 0 < int(p) < 65536:
                raise NetconfigError(f"port {p} out of range 1-65535")
        if (self.ports or self.sports or self.dports) and self.proto in ("icmp",):
            raise NetconfigError("ports make no sense with protocol icmp")
        for c in [*self.nets, *self.srcs, *self.dsts]:
            try:
                net = ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise NetconfigError(f"bad CIDR {c!r}") from None
            if net.version != 4:
                raise NetconfigError(f"{c}: u32 mirror filters match IPv4 only")

    def describe(self) -> str:
        parts = []
        if self.proto:
            parts.append(str(self.proto))
        for name, vals in (("port", self.ports), ("sport", self.sports), ("dport", self.dports),
                           ("net", self.nets), ("src", self.srcs), ("dst", self.dsts)):
            if vals:
                parts.append(f"{name} " + ",".join(str(v) for v in vals))
        return " ".join(parts) or "all"


def _net_key(cidr: str, offset: int) -> dict[int, tuple[int, int]]:
    net = ipaddress.ip_network(cidr, strict=False)
    return {offset: (int(net.network_address), int(net.netmask))}


Conj = dict[int, tuple[int, int]]  # word offset -> (value, mask), all ANDed


def _and(a: Conj, b: Conj) -> Conj | None:
    """Conjunction of two key sets, or None if no packet can match both."""
    out = dict(a)
    for off, (v, m) in b.items():
        if off in out:
            v0, m0 = out[off]
            if (v0 ^ v) & m0 & m:
                return None
            out[off] = ((v0 & m0) | (v & m), m0 | m)
        else:
            out[off] = (v & m, m)
    return out


def _not(c: Conj) -> list[Conj]:
    """The complement of ``c`` as *disjoint* conjunctions (first differing bit, MSB first)."""
    out: list[Conj] = []
    prefix: Conj = {}
    for off, (v, m) in sorted(c.items()):
        above = 0
        for bit in range(31, -1, -1):
            b = 1 << bit
            if not m & b:
                continue
            term = _and(prefix, {off: ((v & above) | (~v & b), above | b)})
            if term is not None:
                out.append(term)
            above |= b
        nxt = _and(prefix, {off: (v, m)})
        assert nxt is not None
        prefix = nxt
    return out


def _disjoint(alts: list[Conj]) -> list[Conj]:
    """Rewrite OR-ed alternatives so no packet matches two of them.

    Mirror filters run with the ``continue`` verdict (so several mirrors on one interface all
    fire), which means every matching u32 node copies the packet: overlapping alternatives
    (``sport 80`` and ``dport 80`` for an 80->80 packet) would copy it twice. Alternative i
    becomes ``alt_i AND NOT alt_1 AND ... AND NOT alt_(i-1)``, with each NOT expanded to
    disjoint prefix keys and contradictions pruned, so the copy stays exactly-once.
    """
    out: list[Conj] = []
    for i, alt in enumerate(alts):
        pieces: list[Conj] = [alt]
        for prev in alts[:i]:
            pieces = [t for p in pieces for n in _not(prev) if (t := _and(p, n)) is not None]
        out += pieces
    return out


def compile_u32(f: MirrorFilter) -> tuple[int, list[list[U32Key]]]:
    """(ethertype, alternatives): each alternative is a list of ANDed (value, mask, offset) keys.

    Offsets are from the start of the IPv4 header: protocol at 9 (word 8), saddr 12, daddr 16,
    ports at 20 (sport high half, dport low half) when IHL is 5. No packet matches two
    alternatives (see :func:`_disjoint`).
    """
    f.validate()
    if f.is_empty():
        return ETH_P_ALL, [[(0, 0, 0)]]
    has_ports = bool(f.ports or f.sports or f.dports)
    protos: list[int | None]
    if f.proto is not None:
        protos = [PROTOS.get(str(f.proto)) or int(f.proto)]
    else:
        protos = [socket.IPPROTO_TCP, socket.IPPROTO_UDP] if has_ports else [None]
    # Each "dimension" is a list of alternatives; the cross product ANDs one from each.
    dims: list[list[Conj]] = []
    dims.append([{8: (p << 16, 0x00FF0000)} if p is not None else {} for p in protos])
    if has_ports:
        alts: list[Conj] = []
        alts += [{20: (int(p) << 16, 0xFFFF0000)} for p in f.sports]
        alts += [{20: (int(p), 0x0000FFFF)} for p in f.dports]
        for p in f.ports:
            alts += [{20: (int(p) << 16, 0xFFFF0000)}, {20: (int(p), 0x0000FFFF)}]
        dims.append(alts)
        # IHL == 5 and fragment offset == 0, or the port offsets would be wrong.
        dims.append([{0: (0x05000000, 0x0F000000), 4: (0, 0x00001FFF)}])
    if f.srcs or f.dsts or f.nets:
        alts = [_net_key(c, 12) for c in f.srcs] + [_net_key(c, 16) for c in f.dsts]
        for c in f.nets:
            alts += [_net_key(c, 12), _net_key(c, 16)]
        dims.append(alts)
    combos: list[Conj] = []
    # Disjoint alternatives within each dimension make every combination disjoint too.
    for combo in itertools.product(*(_disjoint(d) for d in dims)):
        acc: Conj | None = {}
        for part in combo:
            acc = _and(acc, part) if acc is not None else None
        if acc is not None:
            combos.append(acc)
    out = [[(v, m, off) for off, (v, m) in sorted(c.items())] or [(0, 0, 0)]
           for c in combos]
    return ETH_P_IP, out


@dataclass
class Mirror:
    """One mirror port: where it copies from, to, and which packets."""

    netns: str | None
    dev: str
    direction: str = "both"
    to: str | None = None  # local capture interface in the same namespace
    vxlan_remote: str | None = None
    vni: int | None = None
    vxlan_port: int = VXLAN_PORT
    vxlan_local: str | None = None
    vxlan_underlay: str | None = None
    vxlan_dev: str | None = None
    vxlan_dev_existed: bool = False  # then remove must not delete it
    filter: MirrorFilter = field(default_factory=MirrorFilter)
    prio: int | None = None
    id: str = ""
    owner: str = "cli"

    def validate(self) -> None:
        """Check the request makes sense before touching anything."""
        if self.direction not in DIRECTIONS:
            raise NetconfigError(f"direction must be one of {', '.join(DIRECTIONS)}, not {self.direction!r}")
        if bool(self.to) == bool(self.vxlan_remote):
            raise NetconfigError("give exactly one target: a local capture interface (--to) "
                                 "or a VXLAN collector (--vxlan-remote with --vni)")
        if self.vxlan_remote:
            try:
                ipaddress.IPv4Address(self.vxlan_remote)
            except ValueError:
                raise NetconfigError(f"VXLAN remote must be an IPv4 address, not {self.vxlan_remote!r}") from None
            if self.vni is None or not 0 < self.vni < 2**24:
                raise NetconfigError("a VXLAN mirror needs --vni between 1 and 16777215")
        if self.to == self.dev:
            raise NetconfigError("a mirror cannot copy an interface onto itself")
        self.filter.validate()

    @property
    def target_dev(self) -> str:
        if self.to:
            return self.to
        return self.vxlan_dev or f"stvx{self.vni}"

    def parents(self) -> list[int]:
        return {"in": [INGRESS], "out": [EGRESS], "both": [INGRESS, EGRESS]}[self.direction]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Mirror:
        d = dict(d)
        d["filter"] = MirrorFilter(**d.get("filter", {}))
        return cls(**d)


def install(runner: Runner, m: Mirror, make_vxlan: bool = True) -> None:
    """Create the VXLAN device if needed, clsact on ``m.dev``, and the u32 mirred filters."""
    assert m.prio is not None
    protocol, keys = compile_u32(m.filter)
    if m.vxlan_remote and make_vxlan:
        runner.vxlan_add(m.netns, m.target_dev, int(m.vni or 0), m.vxlan_remote, m.vxlan_port,
                         m.vxlan_local, m.vxlan_underlay)
        runner.sysctl(m.netns, f"net.ipv6.conf.{m.target_dev}.disable_ipv6", 1)
        runner.link_up(m.netns, m.target_dev)
    runner.clsact(m.netns, m.dev)
    for parent in m.parents():
        runner.u32_mirror(m.netns, m.dev, parent, m.prio, protocol, keys, m.target_dev)


def uninstall(runner: Runner, m: Mirror) -> None:
    """Remove the mirror's filters (and the VXLAN device it made); leave clsact for others."""
    assert m.prio is not None
    protocol, _ = compile_u32(m.filter)
    for parent in m.parents():
        runner.filter_del(m.netns, m.dev, parent, m.prio, protocol)
    if m.vxlan_remote and not m.vxlan_dev_existed:
        runner.link_del(m.netns, m.target_dev)


# ---- the mirror registry (what ``mirror list`` shows) -------------------------------------

def _store_path() -> Any:
    return state.state_dir() / "mirrors.json"


def load_all() -> list[Mirror]:
    """Every mirror shadowtap has recorded (lab-made ones included)."""
    data = state.read(_store_path()) or {"mirrors": []}
    return [Mirror.from_dict(d) for d in data["mirrors"]]


def _save_all(mirrors: Iterable[Mirror]) -> None:
    state.write(_store_path(), {"mirrors": [m.to_dict() for m in mirrors]})


def _used_prios(runner: LiveRunner, ns: str | None, dev: str) -> set[int]:
    idx = runner.index(ns, dev)
    used: set[int] = set()
    for parent in (INGRESS, EGRESS):
        for f in runner.ipr(ns).get_filters(index=idx, parent=parent):
            used.add(int(f["info"]) >> 16)
    return used


def pick_prio(runner: LiveRunner, ns: str | None, dev: str, taken: Iterable[int] = ()) -> int:
    """The lowest free priority of ours on ``dev`` (ours start at 49152)."""
    used = _used_prios(runner, ns, dev) | set(taken)
    prio = PRIO_BASE
    while prio in used:
        prio += 1
    return prio


def _refuse_loop(live: LiveRunner, m: Mirror) -> None:
    """Copying an interface into its own veth peer (or a peer into the interface) would send
    every copy back through the mirror: a packet storm. Refuse it."""
    src, dst = live.index(m.netns, m.dev), live.index(m.netns, str(m.to))
    for a, b in ((src, dst), (dst, src)):
        link = live.ipr(m.netns).get_links(a)[0]
        if link.get_attr("IFLA_LINK_NETNSID") is not None:
            continue  # the peer lives in another namespace: its ifindex means nothing here
        if link.get_attr("IFLA_LINK") == b and link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "veth":
            raise NetconfigError(f"{m.to} is the veth peer of {m.dev}: the mirror would copy its "
                                 "own copies forever; use another capture interface")


def add(m: Mirror, runner: Runner | None = None) -> Mirror:
    """Validate, install and record a mirror; with a DryRunner only print the commands."""
    m.validate()
    if runner is not None and not isinstance(runner, LiveRunner):
        m.prio = m.prio or PRIO_BASE
        install(runner, m)
        return m
    from netconfig.errors import require_root

    require_root()
    if not nsmod.exists(m.netns):
        raise NetconfigError(f"network namespace {m.netns!r} does not exist")
    with state.locked(_store_path()), LiveRunner() as live:
        for dev in [m.dev] + ([m.to] if m.to else []):
            live.index(m.netns, dev)  # clear error for a missing interface
        if m.to:
            _refuse_loop(live, m)
        if m.vxlan_remote:
            m.vxlan_dev_existed = live.has_link(m.netns, m.target_dev)
        mirrors = load_all()
        same_dev = [x.prio for x in mirrors if x.netns == m.netns and x.dev == m.dev and x.prio]
        m.prio = m.prio or pick_prio(live, m.netns, m.dev, same_dev)
        m.id = m.id or "mir-" + secrets.token_hex(3)
        mirrors.append(m)
        _save_all(mirrors)  # record first: a crash mid-install still leaves a removable entry
        try:
            install(live, m)
        except Exception:
            try:
                uninstall(live, m)
            finally:
                _save_all([x for x in load_all() if x.id != m.id])
            raise
    return m


def remove(mirror_id: str) -> Mirror:
    """Remove a recorded mirror's filters (and its VXLAN device) and forget it."""
    from netconfig.errors import require_root

    require_root()
    with state.locked(_store_path()):
        mirrors = load_all()
        found = [m for m in mirrors if m.id == mirror_id]
        if not found:
            raise NetconfigError(f"no mirror {mirror_id!r}: see 'shadowtap mirror list'")
        m = found[0]
        if nsmod.exists(m.netns):
            with LiveRunner() as live:
                uninstall(live, m)
        _save_all([x for x in mirrors if x.id != mirror_id])
    return m


def forget_owner(owner: str, netns: Iterable[str] = ()) -> None:
    """Drop the records of mirrors made by ``owner`` (a lab torn down with its namespaces), and
    of any mirror that lived in one of ``netns`` (their filters went with the namespace)."""
    gone = set(netns)
    with state.locked(_store_path()):
        _save_all([m for m in load_all() if m.owner != owner and m.netns not in gone])


def record(m: Mirror) -> None:
    """Register a mirror installed by someone else (the lab) so ``mirror list`` shows it."""
    with state.locked(_store_path()):
        _save_all([*[x for x in load_all() if x.id != m.id], m])


def live_status(m: Mirror) -> str:
    """'active' if its filters are in the kernel, 'missing' if not, 'gone' if its netns is."""
    if not nsmod.exists(m.netns):
        return "gone"
    try:
        with LiveRunner() as live:
            if not live.has_link(m.netns, m.dev):
                return "gone"
            return "active" if m.prio in _used_prios(live, m.netns, m.dev) else "missing"
    except Exception:
        return "unknown"
