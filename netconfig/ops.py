"""The primitive network operations, applied live (pyroute2) or printed (``--dry-run``).

Every builder in netconfig (lab, mirror, routing, fences) talks to a :class:`Runner`. The live
runner applies each step with "ensure" semantics so ``lab up`` is idempotent; the dry runner
prints the equivalent ``ip``/``tc``/``nft`` command for the same step. Because both consume the
same call sequence, the dry-run output cannot drift from what ``up`` really does.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from netconfig import netns as nsmod
from netconfig import nft
from netconfig.errors import NetconfigError

INGRESS = 0xFFFFFFF2  # clsact ingress hook (ffff:fff2)
EGRESS = 0xFFFFFFF3  # clsact egress hook (ffff:fff3)
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800

U32Key = tuple[int, int, int]  # (value, mask, offset from the network header)
Journal = Callable[[str, dict[str, Any]], None]


class Runner(Protocol):
    """What a topology builder may do to the network."""

    def netns_add(self, ns: str) -> None: ...
    def veth_add(self, ns_a: str | None, dev_a: str, ns_b: str | None, dev_b: str) -> None: ...
    def vxlan_add(
        self, ns: str | None, dev: str, vni: int, remote: str, port: int,
        local: str | None, underlay: str | None,
    ) -> None: ...
    def link_del(self, ns: str | None, dev: str) -> None: ...
    def link_up(self, ns: str | None, dev: str) -> None: ...
    def addr_add(self, ns: str | None, dev: str, cidr: str) -> None: ...
    def route_replace(
        self, ns: str | None, dst: str, via: str | None = None, dev: str | None = None,
        table: int | None = None,
    ) -> None: ...
    def rule_add(self, ns: str | None, fwmark: int, fwmask: int, table: int, priority: int) -> None: ...
    def sysctl(self, ns: str | None, key: str, value: int | str) -> None: ...
    def offloads_off(self, ns: str | None, dev: str) -> None: ...
    def clsact(self, ns: str | None, dev: str) -> None: ...
    def u32_mirror(
        self, ns: str | None, dev: str, parent: int, prio: int, protocol: int,
        keys: list[list[U32Key]], target: str,
    ) -> None: ...
    def filter_del(self, ns: str | None, dev: str, parent: int, prio: int, protocol: int) -> None: ...
    def nft(self, ns: str | None, batch: nft.Batch) -> None: ...


def _pyroute2_keys(key: U32Key) -> list[str]:
    """pyroute2's u32 key text for one (value, mask, offset) key, one string per masked byte.

    pyroute2 0.9.7 packs keys into a byte array but advances the offset only on non-zero mask
    bytes, so a mask with a zero byte inside (0x8000ffff) lands shifted. A one-byte key cannot
    be mangled; pyroute2 regroups the bytes into 32-bit keys itself. 0/0 is match-all.
    """
    value, mask, off = key
    if mask == 0:
        return [f"0x0/0x0+{off}"]
    out = []
    for i in range(4):
        shift = 24 - 8 * i
        bmask = (mask >> shift) & 0xFF
        if bmask:
            out.append(f"{(value >> shift) & bmask:#x}/{bmask:#x}+{off + i}")
    return out


def _dst(dst: str) -> str:
    return "0.0.0.0/0" if dst == "default" else str(ipaddress.ip_network(dst, strict=False))


@dataclass
class DryRunner:
    """Collects the shell commands equivalent to each step instead of running them."""

    lines: list[str] = field(default_factory=list)

    def _ip(self, ns: str | None, *args: str) -> None:
        self.lines.append(shlex.join(["ip", *(["-n", ns] if ns else []), *args]))

    def _tc(self, ns: str | None, *args: str) -> None:
        self.lines.append(shlex.join(["tc", *(["-n", ns] if ns else []), *args]))

    def netns_add(self, ns: str) -> None:
        self.lines.append(shlex.join(["ip", "netns", "add", ns]))

    def veth_add(self, ns_a: str | None, dev_a: str, ns_b: str | None, dev_b: str) -> None:
        peer = ["peer", "name", dev_b] + (["netns", ns_b] if ns_b and ns_b != ns_a else [])
        self._ip(ns_a, "link", "add", dev_a, "type", "veth", *peer)

    def vxlan_add(
        self, ns: str | None, dev: str, vni: int, remote: str, port: int,
        local: str | None, underlay: str | None,
    ) -> None:
        extra = (["local", local] if local else []) + (["dev", underlay] if underlay else [])
        self._ip(ns, "link", "add", dev, "type", "vxlan", "id", str(vni), "remote", remote,
                 "dstport", str(port), *extra, "nolearning")

    def link_del(self, ns: str | None, dev: str) -> None:
        self._ip(ns, "link", "del", dev)

    def link_up(self, ns: str | None, dev: str) -> None:
        self._ip(ns, "link", "set", dev, "up")

    def addr_add(self, ns: str | None, dev: str, cidr: str) -> None:
        self._ip(ns, "addr", "add", cidr, "dev", dev)

    def route_replace(
        self, ns: str | None, dst: str, via: str | None = None, dev: str | None = None,
        table: int | None = None,
    ) -> None:
        args = ["route", "replace", dst]
        args += ["via", via] if via else []
        args += ["dev", dev] if dev else []
        args += ["table", str(table)] if table is not None else []
        self._ip(ns, *args)

    def rule_add(self, ns: str | None, fwmark: int, fwmask: int, table: int, priority: int) -> None:
        self._ip(ns, "rule", "add", "priority", str(priority), "fwmark",
                 f"{fwmark:#x}/{fwmask:#x}", "lookup", str(table))

    def sysctl(self, ns: str | None, key: str, value: int | str) -> None:
        self.lines.append(shlex.join(nsmod.ns_argv(ns, ["sysctl", "-qw", f"{key}={value}"])))

    def offloads_off(self, ns: str | None, dev: str) -> None:
        self.lines.append(shlex.join(nsmod.ns_argv(
            ns, ["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"])))

    def clsact(self, ns: str | None, dev: str) -> None:
        self._tc(ns, "qdisc", "add", "dev", dev, "clsact")

    def u32_mirror(
        self, ns: str | None, dev: str, parent: int, prio: int, protocol: int,
        keys: list[list[U32Key]], target: str,
    ) -> None:
        hook = "ingress" if parent == INGRESS else "egress"
        proto = "ip" if protocol == ETH_P_IP else "all"
        for keyset in keys:
            match: list[str] = []
            for value, mask, off in keyset:
                match += ["match", "u32", f"{value:#010x}", f"{mask:#010x}", "at", str(off)]
            self._tc(ns, "filter", "add", "dev", dev, hook, "prio", str(prio), "protocol", proto,
                     "u32", *match, "action", "mirred", "egress", "mirror", "dev", target,
                     "continue")

    def filter_del(self, ns: str | None, dev: str, parent: int, prio: int, protocol: int) -> None:
        hook = "ingress" if parent == INGRESS else "egress"
        self._tc(ns, "filter", "del", "dev", dev, hook, "prio", str(prio))

    def nft(self, ns: str | None, batch: nft.Batch) -> None:
        body = json.dumps({"nftables": batch}, indent=1)
        self.lines.append(shlex.join(nsmod.ns_argv(ns, ["nft", "-j", "-f", "-"]))
                          + " <<'EOF'\n" + body + "\nEOF")


def _mirred_with_control() -> None:
    """Teach pyroute2's mirred encoder a ``control`` verdict (it hard-codes ``pipe``).

    A mirror must end in TC_ACT_UNSPEC ("continue"): with ``pipe`` the first mirror on an
    interface ends classification and a second mirror there never sees a packet. This kernel
    has no act_gact to append a ``continue``, so the verdict goes in mirred's own parms, as
    ``tc ... action mirred egress mirror dev X continue`` does. Idempotent; other callers of
    pyroute2 are unaffected unless they pass ``control`` themselves.
    """
    from pyroute2.netlink.rtnl.tcmsg import act_mirred, common_act
    from pyroute2.netlink.rtnl.tcmsg.common import tc_actions

    if getattr(common_act.plugins["mirred"], "shadowtap", False):
        return

    class Mirred:
        shadowtap = True
        options = act_mirred.options

        @staticmethod
        def get_parameters(kwarg: dict[str, Any]) -> dict[str, Any]:
            ret = act_mirred.get_parameters(kwarg)
            control = kwarg.get("control")
            if control:
                verdict = -1 if control == "continue" else tc_actions[control]
                ret["attrs"][0][1]["action"] = verdict
            return ret

    common_act.plugins["mirred"] = Mirred


class LiveRunner:
    """Applies each step through pyroute2 (nft and ethtool through their own tools).

    ``journal`` is called *before* anything is created (namespaces, links in the host
    namespace), so a crash between the call and the creation leaves a record that ``down``
    can act on: it removes what exists and ignores what never came to be.
    """

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal
        self._handles: dict[str | None, Any] = {}

    def close(self) -> None:
        """Release the per-namespace netlink helpers."""
        for h in self._handles.values():
            try:
                h.close()
            except Exception:
                pass
        self._handles.clear()

    def __enter__(self) -> LiveRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ipr(self, ns: str | None) -> Any:
        """A cached IPRoute for ``ns`` (never creates the namespace)."""
        if ns not in self._handles:
            self._handles[ns] = nsmod.iproute(ns)
        return self._handles[ns]

    def index(self, ns: str | None, dev: str) -> int:
        """Interface index of ``dev`` in ``ns``, or a clear error."""
        found = self.ipr(ns).link_lookup(ifname=dev)
        if not found:
            where = f"namespace {ns}" if ns else "the host namespace"
            raise NetconfigError(f"interface {dev!r} not found in {where}")
        return int(found[0])

    def has_link(self, ns: str | None, dev: str) -> bool:
        return bool(nsmod.exists(ns) and self.ipr(ns).link_lookup(ifname=dev))

    def _note(self, kind: str, **what: Any) -> None:
        if self.journal:
            self.journal(kind, what)

    def netns_add(self, ns: str) -> None:
        from pyroute2 import netns

        if nsmod.exists(ns):
            return
        self._note("netns", name=ns)
        netns.create(ns)

    def veth_add(self, ns_a: str | None, dev_a: str, ns_b: str | None, dev_b: str) -> None:
        have_a, have_b = self.has_link(ns_a, dev_a), self.has_link(ns_b, dev_b)
        if have_a and have_b:
            return
        if have_a or have_b:
            raise NetconfigError(
                f"only one end of veth {dev_a}/{dev_b} exists; run 'lab down' and 'lab up' again")
        if ns_b is None and ns_a is not None:
            raise NetconfigError("create host-namespace veths from the host side (ns_a=None)")
        if ns_a is None:
            self._note("link", netns=None, dev=dev_a)
            if ns_b is None:
                self._note("link", netns=None, dev=dev_b)
        peer: dict[str, Any] = {"ifname": dev_b}
        if ns_b != ns_a:
            peer["net_ns_fd"] = ns_b
        self.ipr(ns_a).link("add", ifname=dev_a, kind="veth", peer=peer)

    def vxlan_add(
        self, ns: str | None, dev: str, vni: int, remote: str, port: int,
        local: str | None, underlay: str | None,
    ) -> None:
        if self.has_link(ns, dev):
            return
        self._note("link", netns=ns, dev=dev)
        kw: dict[str, Any] = {"vxlan_id": vni, "vxlan_group": remote, "vxlan_port": port,
                              "vxlan_learning": 0}
        if local:
            kw["vxlan_local"] = local
        if underlay:
            kw["vxlan_link"] = self.index(ns, underlay)
        self.ipr(ns).link("add", ifname=dev, kind="vxlan", **kw)

    def link_del(self, ns: str | None, dev: str) -> None:
        if self.has_link(ns, dev):
            self.ipr(ns).link("del", index=self.index(ns, dev))

    def link_up(self, ns: str | None, dev: str) -> None:
        self.ipr(ns).link("set", index=self.index(ns, dev), state="up")

    def addr_add(self, ns: str | None, dev: str, cidr: str) -> None:
        from pyroute2 import NetlinkError

        iface = ipaddress.ip_interface(cidr)
        try:
            self.ipr(ns).addr("add", index=self.index(ns, dev), address=str(iface.ip),
                              prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    def route_replace(
        self, ns: str | None, dst: str, via: str | None = None, dev: str | None = None,
        table: int | None = None,
    ) -> None:
        kw: dict[str, Any] = {"dst": _dst(dst)}
        if via:
            kw["gateway"] = via
        if dev:
            kw["oif"] = self.index(ns, dev)
        if table is not None:
            kw["table"] = table
        self.ipr(ns).route("replace", **kw)

    def rule_add(self, ns: str | None, fwmark: int, fwmask: int, table: int, priority: int) -> None:
        for r in self.ipr(ns).get_rules(family=2):
            if (r.get_attr("FRA_PRIORITY") == priority and r.get_attr("FRA_FWMARK") == fwmark
                    and r.get_attr("FRA_TABLE") == table):
                return
        self.ipr(ns).rule("add", table=table, priority=priority, fwmark=fwmark, fwmask=fwmask)

    def sysctl(self, ns: str | None, key: str, value: int | str) -> None:
        nsmod.write_sysctl(ns, key, value)

    def offloads_off(self, ns: str | None, dev: str) -> None:
        nsmod.run_tool(ns, ["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"])

    def clsact(self, ns: str | None, dev: str) -> None:
        idx = self.index(ns, dev)
        for q in self.ipr(ns).get_qdiscs(index=idx):
            if q.get_attr("TCA_KIND") == "clsact":
                return
        self.ipr(ns).tc("add", "clsact", idx)

    def u32_mirror(
        self, ns: str | None, dev: str, parent: int, prio: int, protocol: int,
        keys: list[list[U32Key]], target: str,
    ) -> None:
        _mirred_with_control()
        idx, tgt = self.index(ns, dev), self.index(ns, target)
        self.filter_del(ns, dev, parent, prio, protocol)
        for keyset in keys:
            self.ipr(ns).tc(
                "add-filter", "u32", idx, parent=parent, prio=prio, protocol=protocol, target=0x1,
                keys=[t for k in keyset for t in _pyroute2_keys(k)],
                # verdict "continue": other filters (other mirrors) still see the packet
                action={"kind": "mirred", "direction": "egress", "action": "mirror",
                        "ifindex": tgt, "control": "continue"},
            )

    def filter_del(self, ns: str | None, dev: str, parent: int, prio: int, protocol: int) -> None:
        from pyroute2 import NetlinkError

        if not self.has_link(ns, dev):
            return
        try:
            self.ipr(ns).tc("del-filter", "u32", self.index(ns, dev), parent=parent, prio=prio,
                            protocol=protocol, target=0x1)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise

    def nft(self, ns: str | None, batch: nft.Batch) -> None:
        nft.apply(ns, batch)
