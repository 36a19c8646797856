"""The VMs' generated provisioning scripts, run for real in namespaces standing in for VMs.

A VM is a namespace here; its NICs are veths with the spec's names, joined as the UDP tunnels
would join them; its management NIC is a veth to a 'management host'. Each node's script then
runs as the Vagrant provisioner would run it (twice: it must be idempotent), and the lab must
behave like the namespace lab: HTTP from the client to the VIP answered by prod, every packet
of it copied once to cap0 in the gateway, shadows fenced, the management net carrying SSH
from the management host only. This checks every tc, ip and nft line the VMs will run, in
seconds, without booting anything (the end-to-end test boots real VMs).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nethelpers import (
    VIP,
    Backend,
    Capture,
    Listeners,
    force_cleanup,
    host_traces,
    one_shot,
    parse_frame,
    probe_tcp,
    run_in,
    unique_prefix,
)

from netconfig import lab, vagrant

pytestmark = pytest.mark.root


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Namespaces '<prefix><node>' wired as the Vagrantfile wires VMs, scripts applied twice."""
    prefix = unique_prefix()
    before = host_traces(prefix)
    d = vagrant.describe(lab.load_spec(None))
    mgmt = prefix + "mgmt"
    other = prefix + "othervm"
    ns = {n["name"]: prefix + n["name"] for n in d["nodes"]}
    tmp = tmp_path_factory.mktemp("scripts")
    try:
        for n in [*ns.values(), mgmt, other]:
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        for ln in d["links"]:
            if ln["kind"] == "tunnel":
                a, b = ln["a"], ln["b"]
                sh("ip", "-n", ns[a["node"]], "link", "add", a["dev"], "type", "veth", "peer",
                   "name", b["dev"], "netns", ns[b["node"]])
        # management: shadow-1 and prod each get mgmt0; the management host holds .1
        for node, peer, peer_dev, addr in (("shadow-1", mgmt, "m-shadow", "192.168.121.11/24"),
                                           ("prod", other, "m-prod", "192.168.121.12/24")):
            sh("ip", "-n", ns[node], "link", "add", "mgmt0", "type", "veth", "peer", "name",
               peer_dev, "netns", peer)
            sh("ip", "-n", ns[node], "addr", "add", addr, "dev", "mgmt0")
            sh("ip", "-n", ns[node], "link", "set", "mgmt0", "up")
            sh("ip", "-n", peer, "link", "set", peer_dev, "up")
        sh("ip", "-n", mgmt, "addr", "add", "192.168.121.1/24", "dev", "m-shadow")
        # 'othervm' is another VM on the management net (.50), and also holds the host's .1
        sh("ip", "-n", other, "addr", "add", "192.168.121.50/24", "dev", "m-prod")
        sh("ip", "-n", other, "addr", "add", "192.168.121.1/24", "dev", "m-prod")
        runs: dict[str, list[int]] = {}
        for n in d["nodes"]:
            script = tmp / f"{n['name']}.sh"
            script.write_text(n["script"])
            for _ in range(2):  # 'vagrant provision' runs it again: must be idempotent
                p = subprocess.run(["ip", "netns", "exec", ns[n["name"]], "sh", str(script)],
                                   capture_output=True, text=True)
                assert p.returncode == 0, f"{n['name']}: {p.stderr}"
                runs.setdefault(n["name"], []).append(p.returncode)
        yield {"ns": ns, "mgmt": mgmt, "other": other, "desc": d, "runs": runs}
    finally:
        force_cleanup(prefix)
        assert host_traces(prefix) == before


def test_every_script_runs_twice(standin: dict[str, Any]) -> None:
    assert standin["runs"] == {n: [0, 0] for n in standin["ns"]}
    gw = standin["ns"]["gateway"]
    # iproute2's JSON output (-j), not its human-readable text, which changes between versions
    rules = json.loads(subprocess.run(["ip", "-j", "-n", gw, "rule"], capture_output=True,
                                      text=True, check=True).stdout)
    tables = [str(r.get("table")) for r in rules]
    assert tables.count("100") == 1 and tables.count("101") == 1, rules
    for dev in ("prod0", "canary0"):
        actions: set[int] = set()
        for hook in ("ingress", "egress"):
            out = subprocess.run(["tc", "-j", "-n", gw, "filter", "show", "dev", dev, hook],
                                 capture_output=True, text=True, check=True).stdout
            # this kernel lists a clsact's filters under both hooks: count distinct actions
            for f in json.loads(out or "[]"):
                for a in f.get("options", {}).get("actions", []):
                    if (a.get("kind"), a.get("mirred_action"), a.get("direction"),
                            a.get("to_dev"), a.get("control_action", {}).get("type")) == (
                            "mirred", "mirror", "egress", "tap0", "continue"):
                        actions.add(int(a["index"]))
        assert len(actions) == 2, actions  # one per hook, not two after the second run


def test_client_to_vip_answered_by_prod_and_mirrored_once(standin: dict[str, Any]) -> None:
    ns = standin["ns"]
    with Backend(ns["prod"], "prod"), Backend(ns["canary"], "canary"), \
            Capture(ns["gateway"], "cap0") as cap:
        got = [run_in(ns["client"], one_shot(f"/vm/{i}")) for i in range(5)]
        frames = cap.stop()
    assert got == ["prod"] * 5  # canary at 0 %
    pkts = [p for p in map(parse_frame, frames) if p and p.proto == 6]
    reqs = [p for p in pkts if p.dst == VIP and p.payload.startswith(b"GET /vm/")]
    resps = [p for p in pkts if p.src == VIP and p.payload.startswith(b"HTTP/1.1 200")]
    assert sorted(p.payload.split(b" ")[1] for p in reqs) == [f"/vm/{i}".encode()
                                                                for i in range(5)]
    assert len(resps) == 5
    segs = [(p.src, p.sport, p.dst, p.dport, p.seq, p.flags, len(p.payload)) for p in pkts]
    assert len(segs) == len(set(segs)), "a segment was copied twice"
    assert all(len(f) <= 1514 for f in frames)


def test_shadow_reaches_only_the_gateway(standin: dict[str, Any]) -> None:
    ns = standin["ns"]
    targets = {"prod": "10.77.2.2", "client": "10.77.1.2", "canary": "10.77.3.2"}
    listeners = [Listeners(ns[n]) for n in (*targets, "gateway")]
    try:
        assert probe_tcp(ns["gateway"], "10.77.2.2")  # positive control
        assert probe_tcp(ns["shadow-1"], "10.77.11.1")  # the appliance address feeding it
        for addr in (*targets.values(), VIP, "10.77.1.1", "10.77.12.2"):
            assert not probe_tcp(ns["shadow-1"], addr), addr
    finally:
        for li in listeners:
            li.close()


def test_management_net_carries_ssh_from_the_host_only(standin: dict[str, Any]) -> None:
    ns, mgmt, other = standin["ns"], standin["mgmt"], standin["other"]
    ssh_shadow = Listeners(ns["shadow-1"], tcp_port=22, udp_port=7101)
    other_shadow = Listeners(ns["shadow-1"], tcp_port=7000, udp_port=7001)
    ssh_prod = Listeners(ns["prod"], tcp_port=22, udp_port=7102)
    host = Listeners(mgmt, tcp_port=7000, udp_port=7001)
    try:
        assert probe_tcp(mgmt, "192.168.121.11", 22)  # Vagrant's SSH into a fenced shadow
        assert not probe_tcp(mgmt, "192.168.121.11", 7000)  # nothing else
        assert not probe_tcp(ns["shadow-1"], "192.168.121.1", 7000)  # shadow out: dropped
        # prod answers SSH from the management host's address, not from another VM's
        from netconfig import netns as nsmod

        def from_addr(src: str) -> bool:
            s = nsmod.socket_in_netns(other)
            s.settimeout(0.5)
            try:
                s.bind((src, 0))
                s.connect(("192.168.121.12", 22))
                return True
            except OSError:
                return False
            finally:
                s.close()

        assert from_addr("192.168.121.1")
        assert not from_addr("192.168.121.50")
    finally:
        for li in (ssh_shadow, other_shadow, ssh_prod, host):
            li.close()


def test_scripts_need_no_file_outside_the_vm(standin: dict[str, Any]) -> None:
    """The scripts are self-contained: no path of the host, no namespace name."""
    for n in standin["desc"]["nodes"]:
        assert str(Path.cwd()) not in n["script"]
        assert "/run/netns" not in n["script"]
