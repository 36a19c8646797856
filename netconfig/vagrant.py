"""The Vagrant lab's description, generated from the same spec as the namespace lab.

``vagrant/Vagrantfile`` reads the JSON made here; it knows nothing about the lab itself. So the
VMs get exactly the nodes, links, addresses, routes, mirrors, canary split and fences of
``lab.DEFAULT_SPEC_YAML`` (or of any spec file), and a change to the spec changes both labs.

How the spec maps onto VMs:

* one VM per node; a reduced set (``nodes=``) boots fewer VMs but leaves every kept node's
  configuration unchanged: a link to a node that is not booted still becomes a NIC (its tunnel
  points at a port nobody listens on), so the gateway has the same interfaces either way;
* a link between two nodes is a pair of NICs joined by a QEMU UDP tunnel (vagrant-libvirt's
  ``libvirt__tunnel_type: udp``): point to point like a veth, with no bridge and no host
  address on it. A link whose ends are on one node (the capture veth tap0/cap0) stays a veth;
* each NIC gets a fixed MAC, and the guest renames it to the spec's interface name at boot
  (``shadowtap.ifname=NAME:MAC`` on the kernel command line), so ``prod0`` is ``prod0``;
* each node's provisioning script is produced by running the namespace lab's own builder
  (:func:`netconfig.lab.build`) against a runner that writes shell commands per node instead
  of touching namespaces. The mirrors (tc clsact + u32 + mirred), the canary split (nft +
  fwmark rules) and the fences (nft) are therefore the very same rules, not a re-implementation.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netconfig import lab
from netconfig import nft as nftmod
from netconfig.errors import NetconfigError, SpecError
from netconfig.ops import INGRESS, DryRunner, U32Key

FORMAT = 1
BOX = "shadowtap/debian"
BOX_PYTHON = "3.11"  # Debian 12's python3, what the gateway VM runs shadowtap with
# Must match vagrant/guest/box.Vagrantfile: the lab Vagrantfile appends the interface names.
CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"
TUNNEL_IP = "127.0.0.1"  # the UDP tunnels live on the loopback of the lab's private namespace
PORT_BASE = 47000
MGMT_DEV = "mgmt0"
MGMT_NET = "192.168.121.0/24"  # vagrant-libvirt's management network, set explicitly
MGMT_HOST = "192.168.121.1"  # its host end: the only peer a VM may talk to on mgmt0
MEMORY_MB = {"gateway": 1024}  # the gateway installs shadowtap with pip; others need little
DEFAULT_MEMORY_MB = 512


def mac(node_index: int, nic_index: int) -> str:
    """A fixed, locally administered MAC per (node, NIC): the guest names NICs by it."""
    if not (0 <= node_index < 256 and 0 <= nic_index < 256):
        raise SpecError("the Vagrant lab supports at most 255 nodes with 255 NICs each")
    return f"52:54:00:77:{node_index:02x}:{nic_index:02x}"


class GuestScripts(DryRunner):
    """A :class:`DryRunner` that files each command under the node it belongs to.

    Commands are written for a VM (no namespace arguments), and made idempotent so that
    ``vagrant provision`` can run them again: addresses are replaced, rules and tc filters
    deleted before they are added, the capture veth made only when missing. A veth between two
    nodes is not a command at all: in the VM lab it is a pair of NICs that already exist.
    """

    def __init__(self, spec: lab.LabSpec) -> None:
        super().__init__()
        self.by_ns = {spec.ns(n.name): n.name for n in spec.nodes}
        self.scripts: dict[str, list[str]] = {n.name: [] for n in spec.nodes}

    def _node(self, ns: str | None) -> str:
        if ns not in self.by_ns:
            raise NetconfigError(f"internal: a lab step ran outside the lab's nodes ({ns!r})")
        return self.by_ns[ns]

    def _put(self, ns: str | None, fn: Callable[[], None], before: list[str] | None = None) -> None:
        start = len(self.lines)
        fn()
        self.scripts[self._node(ns)] += (before or []) + self.lines[start:]

    def netns_add(self, ns: str) -> None:
        self._node(ns)  # a VM, booted by Vagrant

    def veth_add(self, ns_a: str | None, dev_a: str, ns_b: str | None, dev_b: str) -> None:
        if ns_a != ns_b:
            return  # two NICs joined by a UDP tunnel, created by Vagrant, named at boot
        self.scripts[self._node(ns_a)].append(
            f"ip link show dev {shlex.quote(dev_a)} >/dev/null 2>&1 || "
            + shlex.join(["ip", "link", "add", dev_a, "type", "veth", "peer", "name", dev_b]))

    def vxlan_add(self, ns: str | None, dev: str, vni: int, remote: str, port: int,
                  local: str | None, underlay: str | None) -> None:
        self._put(ns, lambda: super(GuestScripts, self).vxlan_add(
            None, dev, vni, remote, port, local, underlay),
            [f"ip link del dev {shlex.quote(dev)} 2>/dev/null || true"])

    def link_del(self, ns: str | None, dev: str) -> None:
        self._put(ns, lambda: super(GuestScripts, self).link_del(None, dev))

    def link_up(self, ns: str | None, dev: str) -> None:
        self._put(ns, lambda: super(GuestScripts, self).link_up(None, dev))

    def addr_add(self, ns: str | None, dev: str, cidr: str) -> None:
        self.scripts[self._node(ns)].append(shlex.join(["ip", "addr", "replace", cidr, "dev", dev]))

    def route_replace(self, ns: str | None, dst: str, via: str | None = None,
                      dev: str | None = None, table: int | None = None) -> None:
        self._put(ns, lambda: super(GuestScripts, self).route_replace(None, dst, via, dev, table))

    def rule_add(self, ns: str | None, fwmark: int, fwmask: int, table: int, priority: int) -> None:
        self._put(ns, lambda: super(GuestScripts, self).rule_add(None, fwmark, fwmask, table,
                                                                 priority),
                  [f"while ip rule del priority {priority} 2>/dev/null; do :; done"])

    def sysctl(self, ns: str | None, key: str, value: int | str) -> None:
        self._put(ns, lambda: super(GuestScripts, self).sysctl(None, key, value))
        if key == "net.ipv4.conf.all.rp_filter":
            # in a namespace the links are made after this; a VM's NICs exist already and
            # keep the distribution's per-interface value (2), so set theirs too
            self.scripts[self._node(ns)].append(
                f"for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo {int(value)} > \"$f\"; done")

    def offloads_off(self, ns: str | None, dev: str) -> None:
        self._put(ns, lambda: super(GuestScripts, self).offloads_off(None, dev))

    def clsact(self, ns: str | None, dev: str) -> None:
        q = shlex.quote(dev)
        self.scripts[self._node(ns)].append(
            f"tc qdisc show dev {q} | grep -q clsact || tc qdisc add dev {q} clsact")

    def u32_mirror(self, ns: str | None, dev: str, parent: int, prio: int, protocol: int,
                   keys: list[list[U32Key]], target: str) -> None:
        hook = "ingress" if parent == INGRESS else "egress"
        self._put(ns, lambda: super(GuestScripts, self).u32_mirror(
            None, dev, parent, prio, protocol, keys, target),
            [f"tc filter del dev {shlex.quote(dev)} {hook} prio {prio} 2>/dev/null || true"])

    def filter_del(self, ns: str | None, dev: str, parent: int, prio: int, protocol: int) -> None:
        self._put(ns, lambda: super(GuestScripts, self).filter_del(None, dev, parent, prio,
                                                                   protocol))

    def nft(self, ns: str | None, batch: nftmod.Batch) -> None:
        self._put(ns, lambda: super(GuestScripts, self).nft(None, ssh_through_fence(batch)))


def _mgmt_ssh(chain: str) -> list[dict[str, Any]]:
    """Rules admitting Vagrant's SSH and DHCP on mgmt0, with the host end only."""
    inbound = chain == "input"
    dev = nftmod.meta("iifname" if inbound else "oifname")
    peer = nftmod.payload("ip", "saddr" if inbound else "daddr")
    ssh = nftmod.payload("tcp", "dport" if inbound else "sport")
    dhcp = nftmod.payload("udp", "dport")
    return [
        [nftmod.match(dev, MGMT_DEV), nftmod.match(peer, MGMT_HOST), nftmod.match(ssh, 22),
         {"accept": None}],
        [nftmod.match(dev, MGMT_DEV), nftmod.match(dhcp, 68 if inbound else 67), {"accept": None}],
    ]


def ssh_through_fence(batch: nftmod.Batch) -> nftmod.Batch:
    """A shadow's fence table with Vagrant's SSH let through on mgmt0 (else provisioning hangs).

    The shadow's own table (isolation.shadow_batch) drops everything but loopback and the
    appliance. A VM is also reached over its management NIC, so right after the loopback rule
    of each chain come rules for SSH with the management host and DHCP, nothing else.
    Other batches pass unchanged.
    """
    out: nftmod.Batch = []
    for cmd in batch:
        out.append(cmd)
        rule = cmd.get("add", {}).get("rule")
        if not rule or rule.get("table") != "shadowtap_fence" or rule.get("chain") not in (
                "input", "output"):
            continue
        if any(e.get("match", {}).get("right") == "lo" for e in rule["expr"]):
            for expr in _mgmt_ssh(rule["chain"]):
                out.append({"add": {"rule": {k: rule[k] for k in ("family", "table", "chain")}
                                    | {"expr": expr}}})
    return out


def mgmt_guard() -> nftmod.Batch:
    """Every VM: on mgmt0 only SSH from the management host and DHCP, everything else dropped.

    The management network joins all VMs (a libvirt bridge), which the namespace lab has no
    counterpart of. Without this a shadow could reach prod's management address; with it the
    receiving VM drops that, a layer the shadow cannot undo.
    """
    t = {"family": "inet", "table": "shadowtap_mgmt"}
    body: nftmod.Batch = [{"add": {"chain": {**t, "name": "input", "type": "filter",
                                             "hook": "input", "prio": -20, "policy": "accept"}}}]
    for expr in _mgmt_ssh("input"):
        body.append({"add": {"rule": {**t, "chain": "input", "expr": expr}}})
    body += [
        {"add": {"rule": {**t, "chain": "input", "expr": [
            nftmod.match(nftmod.meta("iifname"), MGMT_DEV),
            nftmod.match(nftmod.ct("state"), ["established", "related"], op="in"),
            nftmod.match(nftmod.payload("ip", "saddr"), MGMT_HOST), {"accept": None}]}}},
        {"add": {"rule": {**t, "chain": "input", "comment": "mgmt0: not the management host",
                          "expr": [nftmod.match(nftmod.meta("iifname"), MGMT_DEV),
                                   {"counter": None}, {"drop": None}]}}},
    ]
    return nftmod.replace_table("inet", "shadowtap_mgmt", body)


def _roles(spec: lab.LabSpec) -> dict[str, str]:
    """What each node is for: it decides the extra provisioning (shadowtap, a web server)."""
    roles = {n.name: "node" for n in spec.nodes}
    for f in spec.fences:
        roles[f.shadow] = "shadow"
    if spec.canary:
        roles[spec.canary.prod] = "backend"
        roles[spec.canary.canary] = "backend"
    for m in spec.mirrors:
        roles[m.node] = "gateway"
    if spec.canary:
        roles[spec.canary.node] = "gateway"
    return roles


def select_nodes(spec: lab.LabSpec, nodes: list[str] | None) -> list[str]:
    """The nodes to boot, in spec order; every name must be a node of the spec."""
    names = [n.name for n in spec.nodes]
    if not nodes:
        return names
    unknown = [n for n in nodes if n not in names]
    if unknown:
        raise SpecError(f"unknown node(s) {', '.join(unknown)} for the Vagrant lab "
                        f"(the spec has: {', '.join(names)})")
    return [n for n in names if n in nodes]


def describe(spec: lab.LabSpec, nodes: list[str] | None = None) -> dict[str, Any]:
    """The JSON the Vagrantfile reads: VMs, NICs with MACs and tunnel ports, scripts."""
    selected = select_nodes(spec, nodes)
    runner = GuestScripts(spec)
    lab.build(runner, spec)
    roles = _roles(spec)
    index = {n.name: i + 1 for i, n in enumerate(spec.nodes)}
    nics: dict[str, list[dict[str, Any]]] = {n.name: [] for n in spec.nodes}
    links: list[dict[str, Any]] = []
    for i, ln in enumerate(spec.links):
        if ln.a.node == ln.b.node:
            links.append({"kind": "veth", "node": ln.a.node, "a": ln.a.dev, "b": ln.b.dev,
                          "addrs": [ln.a.addr, ln.b.addr], "offloads": ln.offloads})
            continue
        ports = (PORT_BASE + 2 * i, PORT_BASE + 2 * i + 1)
        ends = []
        for (me, peer, local, remote) in ((ln.a, ln.b, ports[0], ports[1]),
                                          (ln.b, ln.a, ports[1], ports[0])):
            nic = {"dev": me.dev, "mac": mac(index[me.node], len(nics[me.node]) + 1),
                   "addr": me.addr, "peer": {"node": peer.node, "dev": peer.dev},
                   "tunnel": {"local_ip": TUNNEL_IP, "local_port": local,
                              "remote_ip": TUNNEL_IP, "remote_port": remote},
                   "offloads": ln.offloads, "peer_booted": peer.node in selected}
            nics[me.node].append(nic)
            ends.append({"node": me.node, "dev": me.dev, "addr": me.addr, "mac": nic["mac"],
                         "port": local})
        links.append({"kind": "tunnel", "a": ends[0], "b": ends[1], "offloads": ln.offloads})
    out_nodes = []
    for n in spec.nodes:
        mgmt = mac(index[n.name], 0)
        names = [f"shadowtap.ifname={MGMT_DEV}:{mgmt}"]
        names += [f"shadowtap.ifname={c['dev']}:{c['mac']}" for c in nics[n.name]]
        script = ["#!/bin/sh", f"# {n.name}: generated by netconfig.vagrant from the lab spec",
                  "set -eu",
                  "nft -j -f - <<'EOF'", json.dumps({"nftables": mgmt_guard()}), "EOF",
                  *runner.scripts[n.name]]
        out_nodes.append({
            "name": n.name, "role": roles[n.name], "booted": n.name in selected,
            "memory": MEMORY_MB.get(roles[n.name], DEFAULT_MEMORY_MB), "cpus": 1,
            "mgmt": {"dev": MGMT_DEV, "mac": mgmt},
            "nics": nics[n.name],
            "addresses": {dev: addr for dev, addr in spec.devs(n.name).items() if addr},
            "routes": [{"to": r.to, "via": r.via, "dev": r.dev, "table": r.table}
                       for r in n.routes],
            "cmdline": " ".join([CMDLINE, *names]),
            "script": "\n".join(script) + "\n",
        })
    gateway = next((n["name"] for n in out_nodes if n["role"] == "gateway"), None)
    capture = next((m.to for m in spec.mirrors if m.to), None)
    return {
        "format": FORMAT, "box": BOX, "prefix": spec.prefix, "selected": selected,
        "gateway": gateway, "capture_dev": capture, "mgmt_net": MGMT_NET,
        "vip": spec.canary.vip if spec.canary else None,
        "backends": [spec.canary.prod, spec.canary.canary] if spec.canary else [],
        "mirrors": [{"node": m.node, "dev": m.dev, "direction": m.direction, "to": m.to}
                    for m in spec.mirrors],
        "nodes": out_nodes, "links": links,
    }


def write(spec: lab.LabSpec, path: Path, nodes: list[str] | None = None) -> dict[str, Any]:
    """Write the description to ``path`` (atomically: a Vagrantfile never reads half a file)."""
    data = describe(spec, nodes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return data


def parse_nodes(text: str | None) -> list[str] | None:
    """``"client,gateway,prod"`` -> list; empty or None means every node."""
    if not text:
        return None
    return [x.strip() for x in text.split(",") if x.strip()] or None


def main(argv: list[str] | None = None) -> int:
    """``python -m netconfig.vagrant``: print or write the description (no root needed)."""
    ap = argparse.ArgumentParser(prog="python -m netconfig.vagrant", description=__doc__.split("\n")[0])
    ap.add_argument("--spec", help="lab spec (YAML); default: the built-in lab")
    ap.add_argument("--nodes", help="comma-separated nodes to boot (default: all)")
    ap.add_argument("-o", "--output", help="write here instead of stdout")
    args = ap.parse_args(argv)
    try:
        spec = lab.load_spec(args.spec)
        if args.output:
            write(spec, Path(args.output), parse_nodes(args.nodes))
        else:
            print(json.dumps(describe(spec, parse_nodes(args.nodes)), indent=1))
    except NetconfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
