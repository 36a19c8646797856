"""Mirror ports: filters copy what they say; VXLAN mirrors reach a remote collector."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from nethelpers import VIP, Backend, Capture, Listeners, one_shot, parse_frame, probe_tcp, run_in

from netconfig import mirror
from netconfig import netns as nsmod
from netconfig.errors import NetconfigError
from netconfig.ops import EGRESS, ETH_P_ALL, ETH_P_IP, LiveRunner

# ---- compiling filters (no root needed) ---------------------------------------------------


def test_empty_filter_is_match_all_on_every_ethertype() -> None:
    assert mirror.compile_u32(mirror.MirrorFilter()) == (ETH_P_ALL, [[(0, 0, 0)]])


def test_port_filter_is_sport_or_dport_with_header_guards() -> None:
    proto, alts = mirror.compile_u32(mirror.MirrorFilter(proto="tcp", ports=[80]))
    assert proto == ETH_P_IP
    guards = [(0x05000000, 0x0F000000, 0), (0, 0x1FFF, 4)]
    assert alts == [[(6 << 16, 0xFF0000, 8), (80 << 16, 0xFFFF0000, 20), *guards],
                    [(6 << 16, 0xFF0000, 8), (80, 0xFFFF, 20), *guards]]


def test_ports_without_proto_mean_tcp_or_udp_and_cidrs_compile() -> None:
    _, alts = mirror.compile_u32(mirror.MirrorFilter(dports=[53], dsts=["10.1.0.0/16"]))
    assert len(alts) == 2
    assert all((0x0A010000, 0xFFFF0000, 16) in a for a in alts)
    assert {a[0] for a in alts} == {(6 << 16, 0xFF0000, 8), (17 << 16, 0xFF0000, 8)}


@pytest.mark.parametrize("bad", [
    mirror.MirrorFilter(proto="gre2"), mirror.MirrorFilter(ports=[70000]),
    mirror.MirrorFilter(srcs=["10.0.0.0/33"]), mirror.MirrorFilter(nets=["fe80::/64"]),
    mirror.MirrorFilter(proto="icmp", ports=[1]),
])
def test_bad_filters_are_refused(bad: mirror.MirrorFilter) -> None:
    with pytest.raises(NetconfigError):
        mirror.compile_u32(bad)


def test_mirror_needs_exactly_one_target() -> None:
    with pytest.raises(NetconfigError, match="exactly one target"):
        mirror.Mirror(netns=None, dev="eth0").validate()
    with pytest.raises(NetconfigError, match="vni"):
        mirror.Mirror(netns=None, dev="eth0", vxlan_remote="10.0.0.1").validate()


# ---- live ----------------------------------------------------------------------------------


@pytest.mark.root
def test_port_80_mirror_copies_no_port_22(running_lab: Any, state_dir: Path) -> None:
    spec = running_lab
    gw, client, prod = spec.ns("gateway"), spec.ns("client"), spec.ns("prod")
    with LiveRunner() as live:
        live.veth_add(gw, "ftap", gw, "fcap")
        for d in ("ftap", "fcap"):
            live.offloads_off(gw, d)
            live.link_up(gw, d)
    m = mirror.add(mirror.Mirror(netns=gw, dev="client0", direction="both", to="ftap",
                                 filter=mirror.MirrorFilter(proto="tcp", ports=[80])))
    lst = Listeners(prod, tcp_port=22, udp_port=8022)
    try:
        assert [x.id for x in mirror.load_all()].count(m.id) == 1
        assert mirror.live_status(m) == "active"
        with Backend(prod, "prod"), Capture(gw, "fcap") as cap:
            for i in range(20):
                assert probe_tcp(client, "10.77.2.2", 22)
                assert run_in(client, one_shot(f"/m/{i}")) == "prod"
            frames = cap.stop()
        pkts = [p for p in map(parse_frame, frames) if p is not None]
        assert sum(1 for p in pkts if p.payload.startswith(b"GET /m/")) == 20
        assert all(p.proto == 6 and 80 in (p.sport, p.dport) for p in pkts), "only tcp port 80"
        assert not any(22 in (p.sport, p.dport) for p in pkts)
    finally:
        lst.close()
        mirror.remove(m.id)
        with LiveRunner() as live:
            live.link_del(gw, "ftap")
    assert mirror.live_status(m) == "missing"  # client0 is there, our filters are not
    assert all(x.id != m.id for x in mirror.load_all())
    with LiveRunner() as live:
        prios = {int(f["info"]) >> 16 for f in live.ipr(gw).get_filters(
            index=live.index(gw, "client0"), parent=EGRESS)}
    assert m.prio not in prios


@pytest.mark.root
def test_vxlan_mirror_delivers_to_remote_collector(running_lab: Any, state_dir: Path) -> None:
    """prod0's traffic, VXLAN-encapsulated (UDP 4789, VNI 4242), reaches 'outside'."""
    spec = running_lab
    gw, client, prod, out = (spec.ns(n) for n in ("gateway", "client", "prod", "outside"))
    sock = nsmod.socket_in_netns(out, socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 4789))
    sock.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            try:
                got.append(sock.recv(65535))
            except TimeoutError:
                continue

    t = threading.Thread(target=collect, daemon=True)
    t.start()
    m = mirror.add(mirror.Mirror(netns=gw, dev="prod0", direction="both",
                                 vxlan_remote="10.77.200.2", vni=4242,
                                 filter=mirror.MirrorFilter(proto="tcp", ports=[80])))
    try:
        with Backend(prod, "prod"):
            for i in range(10):
                assert run_in(client, one_shot(f"/vx/{i}")) == "prod"
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(2)
        sock.close()
        mirror.remove(m.id)
    with LiveRunner() as live:
        assert not live.has_link(gw, m.target_dev), "remove deletes the VXLAN device it made"
    vnis = {struct.unpack("!I", d[4:8])[0] >> 8 for d in got}
    assert vnis == {4242}
    assert all(d[0] & 0x08 for d in got), "VXLAN I flag"
    inner = [p for p in (parse_frame(d[8:]) for d in got) if p is not None]
    reqs = {p.payload.split(b" ")[1] for p in inner if p.dst == VIP and p.payload.startswith(b"GET")}
    resps = [p for p in inner if p.src == VIP and b"prod /vx/" in p.payload]
    assert reqs == {f"/vx/{i}".encode() for i in range(10)}
    assert len(resps) == 10


@pytest.mark.root
def test_mirror_add_missing_interface_changes_nothing(running_lab: Any, state_dir: Path) -> None:
    gw = running_lab.ns("gateway")
    with pytest.raises(NetconfigError, match="not found"):
        mirror.add(mirror.Mirror(netns=gw, dev="nosuch0", to="tap0"))
    with pytest.raises(NetconfigError, match="does not exist"):
        mirror.add(mirror.Mirror(netns=running_lab.prefix + "nope", dev="x", to="y"))
    assert not nsmod.exists(running_lab.prefix + "nope")
    assert mirror.load_all() == []
