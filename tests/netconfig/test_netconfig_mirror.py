"""Mirror ports: filters copy what they say; VXLAN mirrors reach a remote collector."""

from __future__ import annotations

import itertools
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


def _header(proto: int, sport: int, dport: int, src: str, dst: str, ihl: int = 5,
            frag: int = 0) -> bytes:
    return (struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 40, 1, frag, 64, proto, 0,
                        socket.inet_aton(src), socket.inet_aton(dst))
            + struct.pack("!HH", sport, dport))


def _hits(alts: list[list[tuple[int, int, int]]], hdr: bytes) -> int:
    """How many u32 nodes match, evaluated the way cls_u32 does (32-bit words)."""
    word = lambda off: struct.unpack("!I", hdr[off:off + 4])[0]  # noqa: E731
    return sum(all(word(o) & m == v for v, m, o in keys) for keys in alts)


FILTERS = [
    (mirror.MirrorFilter(proto="tcp", ports=[80]),
     lambda p, sp, dp, s, d, ok: ok and p == 6 and 80 in (sp, dp)),
    (mirror.MirrorFilter(ports=[80, 443]),
     lambda p, sp, dp, s, d, ok: ok and p in (6, 17) and bool({sp, dp} & {80, 443})),
    (mirror.MirrorFilter(proto="udp", sports=[53], dsts=["10.1.0.0/16"]),
     lambda p, sp, dp, s, d, ok: ok and p == 17 and sp == 53 and d.startswith("10.1.")),
    (mirror.MirrorFilter(proto="tcp", ports=[80], nets=["10.0.0.0/8"]),
     lambda p, sp, dp, s, d, ok: ok and p == 6 and 80 in (sp, dp)
     and (s.startswith("10.") or d.startswith("10."))),
    (mirror.MirrorFilter(proto="icmp", srcs=["192.168.1.0/24", "192.168.0.0/16"]),
     lambda p, sp, dp, s, d, ok: p == 1 and s.startswith("192.168.")),
]


@pytest.mark.parametrize(("flt", "want"), FILTERS, ids=[f.describe() for f, _ in FILTERS])
def test_compiled_keys_match_exactly_once_what_the_filter_says(flt: Any, want: Any) -> None:
    """Brute force over headers: 1 matching node when the filter holds, else 0 (never 2)."""
    proto, alts = mirror.compile_u32(flt)
    assert proto == ETH_P_IP
    ports = [80, 443, 53, 22, 33000]
    addrs = ["10.1.2.3", "10.9.9.9", "192.168.1.5", "192.168.7.1", "172.16.0.1"]
    for p, sp, dp, s, d, (ihl, frag) in itertools.product(
            [6, 17, 1], ports, ports, addrs, addrs, [(5, 0), (6, 0), (5, 0x2001)]):
        ok = ihl == 5 and frag & 0x1FFF == 0
        hits = _hits(alts, _header(p, sp, dp, s, d, ihl, frag))
        assert hits == int(bool(want(p, sp, dp, s, d, ok))), (p, sp, dp, s, d, ihl, frag, hits)


def test_port_filter_stays_small() -> None:
    """sport 80, or dport 80 with sport != 80 (16 disjoint prefixes): 17 nodes."""
    assert len(mirror.compile_u32(mirror.MirrorFilter(proto="tcp", ports=[80]))[1]) == 17


def test_ports_without_proto_mean_tcp_or_udp_and_cidrs_compile() -> None:
    _, alts = mirror.compile_u32(mirror.MirrorFilter(dports=[53], dsts=["10.1.0.0/16"]))
    assert len(alts) == 2
    assert all((0x0A010000, 0xFFFF0000, 16) in a for a in alts)
    assert {k for a in alts for k in a if k[2] == 8} == {(6 << 16, 0xFF0000, 8),
                                                         (17 << 16, 0xFF0000, 8)}


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
        t.join(5)
        sock.setblocking(False)
        while True:  # drain what a loaded host has not delivered to the thread yet
            try:
                got.append(sock.recv(65535))
            except BlockingIOError:
                break
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


@pytest.mark.root
def test_directions_and_two_mirrors_on_one_interface(running_lab: Any, state_dir: Path) -> None:
    """'in' copies only what arrives, 'out' only what leaves; both mirrors get their copies."""
    spec = running_lab
    gw, client, prod = spec.ns("gateway"), spec.ns("client"), spec.ns("prod")
    with LiveRunner() as live:
        for t, c in (("itap", "icap"), ("otap", "ocap")):
            live.veth_add(gw, t, gw, c)
            for dev in (t, c):
                live.offloads_off(gw, dev)
                live.link_up(gw, dev)
    m_in = mirror.add(mirror.Mirror(netns=gw, dev="client0", direction="in", to="itap"))
    m_out = mirror.add(mirror.Mirror(netns=gw, dev="client0", direction="out", to="otap",
                                     filter=mirror.MirrorFilter(proto="tcp", ports=[80])))
    try:
        assert m_in.prio != m_out.prio
        with Backend(prod, "prod"), Capture(gw, "icap") as ci, Capture(gw, "ocap") as co:
            for i in range(30):
                assert run_in(client, one_shot(f"/d/{i}")) == "prod"
            ins = [p for p in map(parse_frame, ci.stop()) if p is not None]
            outs = [p for p in map(parse_frame, co.stop(0)) if p is not None]
        assert ins and all(p.src == "10.77.1.2" for p in ins)
        assert outs and all(p.dst == "10.77.1.2" and p.sport == 80 for p in outs)
        assert sum(p.payload.startswith(b"GET /d/") for p in ins) == 30
        assert sum(b"prod /d/" in p.payload for p in outs) == 30
    finally:
        mirror.remove(m_in.id)
        mirror.remove(m_out.id)
        with LiveRunner() as live:
            live.link_del(gw, "itap")
            live.link_del(gw, "otap")


@pytest.mark.root
def test_mirror_into_its_own_veth_peer_is_refused(running_lab: Any, state_dir: Path) -> None:
    gw = running_lab.ns("gateway")
    for dev, to in (("cap0", "tap0"), ("tap0", "cap0")):
        with pytest.raises(NetconfigError, match="veth peer"):
            mirror.add(mirror.Mirror(netns=gw, dev=dev, to=to))
    assert mirror.load_all() == []


@pytest.mark.root
def test_same_ifindex_in_another_namespace_is_not_a_loop(state_dir: Path) -> None:
    """A veth peer's IFLA_LINK is an index in the *peer's* namespace: no false alarm."""
    from nethelpers import force_cleanup, unique_prefix

    prefix = unique_prefix()
    a, b, c = (prefix + x for x in "abc")
    try:
        with LiveRunner() as live:
            for ns in (a, b, c):
                live.netns_add(ns)
            live.veth_add(a, "eth0", b, "eth0")  # index 2 on both sides
            live.veth_add(a, "tapx", c, "capx")  # tapx's peer capx is index 2 in c
            for ns, dev in ((a, "eth0"), (a, "tapx")):
                live.link_up(ns, dev)
        m = mirror.add(mirror.Mirror(netns=a, dev="eth0", to="tapx"))
        assert mirror.live_status(m) == "active"
        mirror.remove(m.id)
    finally:
        force_cleanup(prefix)
