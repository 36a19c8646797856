"""The Vagrant lab's description is the namespace lab's spec, exactly (no VMs needed)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from netconfig import lab, vagrant
from netconfig.errors import SpecError

REPO = Path(__file__).resolve().parents[2]

SPEC = yaml.safe_load(lab.DEFAULT_SPEC_YAML)


def node(d: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in d["nodes"] if n["name"] == name)


def test_nodes_are_the_spec_nodes(full: dict[str, Any]) -> None:
    assert [n["name"] for n in full["nodes"]] == [n["name"] for n in SPEC["nodes"]]
    assert [n["name"] for n in full["nodes"]] == ["client", "gateway", "prod", "canary",
                                                   "shadow-1", "shadow-2"]
    assert full["selected"] == [n["name"] for n in SPEC["nodes"]]
    roles = {n["name"]: n["role"] for n in full["nodes"]}
    assert roles == {"client": "node", "gateway": "gateway", "prod": "backend",
                     "canary": "backend", "shadow-1": "shadow", "shadow-2": "shadow"}
    assert full["vip"] == "10.77.100.10"
    assert full["gateway"] == "gateway" and full["capture_dev"] == "tap0"
    assert full["mirrors"] == [{"node": "gateway", "dev": "prod0", "direction": "both", "to": "tap0"},
                               {"node": "gateway", "dev": "canary0", "direction": "both", "to": "tap0"}]


def test_links_and_addresses_exactly(full: dict[str, Any]) -> None:
    """Every spec link: two NICs with the spec's names and addresses, or the local veth."""
    assert len(full["links"]) == len(SPEC["links"])
    for got, want in zip(full["links"], SPEC["links"], strict=True):
        if want["a"]["node"] == want["b"]["node"]:
            assert got["kind"] == "veth"
            assert (got["node"], got["a"], got["b"]) == (want["a"]["node"], want["a"]["dev"],
                                                         want["b"]["dev"])
            continue
        assert got["kind"] == "tunnel"
        for side in ("a", "b"):
            assert got[side]["node"] == want[side]["node"]
            assert got[side]["dev"] == want[side]["dev"]
            assert got[side]["addr"] == want[side].get("addr")
        assert got["offloads"] == want.get("offloads", True)
    # per node: the interfaces and addresses the namespace lab gives it
    spec = lab.load_spec(None)
    for n in full["nodes"]:
        assert n["addresses"] == {d: a for d, a in spec.devs(n["name"]).items() if a}
        nic_devs = {c["dev"] for c in n["nics"]}
        want = {d for d in spec.devs(n["name"]) if d != "lo"} - {"tap0", "cap0"}
        assert nic_devs == want
    gw = node(full, "gateway")
    assert [(c["dev"], c["addr"]) for c in gw["nics"]] == [
        ("client0", "10.77.1.1/24"), ("prod0", "10.77.2.1/24"), ("canary0", "10.77.3.1/24"),
        ("shadow1", "10.77.11.1/24"), ("shadow2", "10.77.12.1/24")]
    assert [(c["dev"], c["addr"]) for c in node(full, "prod")["nics"]] == [("eth0", "10.77.2.2/24")]
    assert node(full, "client")["routes"] == [{"to": "default", "via": "10.77.1.1", "dev": None,
                                               "table": None}]
    assert node(full, "shadow-1")["routes"] == []  # fenced: no default route


def test_tunnels_pair_up_and_macs_name_every_nic(full: dict[str, Any]) -> None:
    ports: set[int] = set()
    macs: set[str] = set()
    for ln in full["links"]:
        if ln["kind"] != "tunnel":
            continue
        a = next(c for c in node(full, ln["a"]["node"])["nics"] if c["dev"] == ln["a"]["dev"])
        b = next(c for c in node(full, ln["b"]["node"])["nics"] if c["dev"] == ln["b"]["dev"])
        assert a["tunnel"]["local_port"] == b["tunnel"]["remote_port"]
        assert b["tunnel"]["local_port"] == a["tunnel"]["remote_port"]
        assert ipaddress.ip_address(a["tunnel"]["local_ip"]).is_loopback
        ports |= {a["tunnel"]["local_port"], b["tunnel"]["local_port"]}
    assert len(ports) == 2 * sum(ln["kind"] == "tunnel" for ln in full["links"])
    for n in full["nodes"]:
        for c in [n["mgmt"], *n["nics"]]:
            assert c["mac"] not in macs
            macs.add(c["mac"])
            assert f"shadowtap.ifname={c['dev']}:{c['mac']}" in n["cmdline"].split()
        assert n["cmdline"].startswith(vagrant.CMDLINE + " ")


def test_scripts_are_the_lab_builders_commands(full: dict[str, Any]) -> None:
    """Mirrors, canary split and fences come from netconfig's own builders, per VM."""
    gw = node(full, "gateway")["script"]
    for dev in ("prod0", "canary0"):
        for hook in ("ingress", "egress"):
            assert f"tc filter add dev {dev} {hook} prio 49152 protocol all u32" in gw
        assert f"tc qdisc add dev {dev} clsact" in gw
    assert gw.count("action mirred egress mirror dev tap0 continue") == 4
    assert "ip link add tap0 type veth peer name cap0" in gw
    assert "sysctl -qw net.ipv4.ip_forward=1" in gw
    assert "ip route replace 10.77.100.10/32 via 10.77.2.2" in gw
    assert '"name": "shadowtap_canary"' in gw and '"name": "shadowtap_fence"' in gw
    prod = node(full, "prod")["script"]
    assert "ip addr replace 10.77.100.10/32 dev lo" in prod
    assert "ip route replace default via 10.77.2.1" in prod
    for n in full["nodes"]:
        s = n["script"]
        assert "ip netns" not in s and " -n st-" not in s and "st-" not in s
        assert '"name": "shadowtap_mgmt"' in s  # the management net is guarded everywhere
        if n["role"] != "gateway":
            assert "tc filter" not in s and "shadowtap_canary" not in s
    sh = node(full, "shadow-1")["script"]
    assert "10.77.11.1" in sh and "route replace default" not in sh


def test_shadow_fence_lets_only_vagrant_ssh_through() -> None:
    from netconfig import isolation

    batch = vagrant.ssh_through_fence(isolation.shadow_batch("10.77.11.1"))
    rules = [c["add"]["rule"] for c in batch if "rule" in c.get("add", {})]
    for chain in ("input", "output"):
        exprs = [json.dumps(r["expr"]) for r in rules if r["chain"] == chain]
        assert '"lo"' in exprs[0]
        assert "mgmt0" in exprs[1] and vagrant.MGMT_HOST in exprs[1] and "22" in exprs[1]
        assert "mgmt0" in exprs[2]
        assert exprs[-1] == json.dumps([{"counter": None}, {"drop": None}])
    other = isolation.gateway_batch([isolation.Fence("g", "shadow1", "10.77.11.1", "s")])
    assert vagrant.ssh_through_fence(other) == other


def test_reduced_node_set_keeps_every_kept_node_identical(spec: lab.LabSpec,
                                                          full: dict[str, Any]) -> None:
    small = vagrant.describe(spec, ["prod", "client", "gateway"])
    assert small["selected"] == ["client", "gateway", "prod"]  # spec order
    assert [n["name"] for n in small["nodes"] if n["booted"]] == ["client", "gateway", "prod"]
    for name in ("client", "gateway", "prod"):
        a, b = node(small, name), node(full, name)
        assert a["script"] == b["script"] and a["cmdline"] == b["cmdline"]
        assert [c["dev"] for c in a["nics"]] == [c["dev"] for c in b["nics"]]
    gw = {c["dev"]: c["peer_booted"] for c in node(small, "gateway")["nics"]}
    assert gw == {"client0": True, "prod0": True, "canary0": False, "shadow1": False,
                  "shadow2": False}
    with pytest.raises(SpecError, match=r"unknown node.*nope"):
        vagrant.describe(spec, ["client", "nope"])
    assert vagrant.parse_nodes(" client, gateway ,") == ["client", "gateway"]
    assert vagrant.parse_nodes("") is None


def test_cli_spec_and_module_agree(tmp_path: Path) -> None:
    py = str(REPO / ".venv" / "bin" / "python")
    a = subprocess.run([py, "-m", "netconfig.vagrant", "--nodes", "client,gateway"], cwd=REPO,
                       capture_output=True, text=True, check=True).stdout
    out = tmp_path / "lab.json"
    subprocess.run([str(REPO / ".venv" / "bin" / "shadowtap"), "lab", "vagrant", "spec",
                    "--nodes", "client,gateway", "-o", str(out)], check=True, capture_output=True)
    assert json.loads(a) == json.loads(out.read_text())
    bad = subprocess.run([py, "-m", "netconfig.vagrant", "--nodes", "client,bogus"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown node(s) bogus")


needs_vagrant = pytest.mark.skipif(shutil.which("vagrant") is None,
                                   reason="vagrant is not installed (bash scripts/setup.sh)")


def _validate(tmp_path: Path, lab_json: Path | None) -> subprocess.CompletedProcess[str]:
    """``vagrant validate`` with no libvirt running: without SHADOWTAP_LAB_SHARE.

    With it, vagrant-libvirt's 9p synced folder asks libvirtd whether 9p is usable, and
    ``--ignore-provider`` crashes vagrant-libvirt 0.11.2; 'vagrant up' in the e2e test
    validates that part against a real libvirtd.
    """
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vhome"), "VAGRANT_CHECKPOINT_DISABLE": "1",
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"), "VAGRANT_NO_COLOR": "1"}
    env.pop("SHADOWTAP_LAB_JSON", None)
    env.pop("SHADOWTAP_LAB_SHARE", None)
    if lab_json:
        env["SHADOWTAP_LAB_JSON"] = str(lab_json)
    return subprocess.run(["vagrant", "validate"], cwd=REPO / "vagrant", env=env,
                          capture_output=True, text=True, timeout=120)


@needs_vagrant
@pytest.mark.parametrize("nodes", [None, ["client", "gateway", "prod"]])
def test_vagrant_validate(tmp_path: Path, spec: lab.LabSpec, nodes: list[str] | None) -> None:
    path = tmp_path / "lab.json"
    vagrant.write(spec, path, nodes)
    p = _validate(tmp_path, path)
    assert p.returncode == 0, p.stdout + p.stderr  # vagrant's verdict (its wording may change)


@needs_vagrant
def test_vagrant_validate_without_description_says_what_to_do(tmp_path: Path) -> None:
    p = _validate(tmp_path, tmp_path / "missing.json")
    assert p.returncode != 0
    assert "no lab description" in p.stderr and "vagrant-lab.sh up" in p.stderr
