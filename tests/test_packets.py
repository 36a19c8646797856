"""replay.packets.Decoder: frames of every supported link type down to TCP segment tuples.

Frames are crafted with scapy (fine in tests; the decoder itself never builds packet objects).
Each test checks the exact segment tuple ``(key, seq, flags, payload)`` or the exact skip reason.
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q
from scapy.layers.l2 import Ether as _Ether
from scapy.layers.vxlan import VXLAN

from replay.packets import (
    ACK,
    FIN,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PSH,
    SUPPORTED_LINKTYPES,
    SYN,
    Decoder,
    describe_key,
    key_ports,
    reverse_key,
)


def Ether(**kw):
    kw.setdefault("src", "02:00:00:00:00:01")
    kw.setdefault("dst", "02:00:00:00:00:02")
    return _Ether(**kw)


V4S, V4D = "10.1.2.3", "192.168.200.7"
V6S, V6D = "2001:db8::1", "2001:db8:ffff::abcd"
PAYLOAD = b"GET /index.html HTTP/1.1\r\nHost: example.test\r\n\r\n"


def ip4() -> IP:
    return IP(src=V4S, dst=V4D)


def ip6() -> IPv6:
    return IPv6(src=V6S, dst=V6D)


def tcp(seq: int = 1000, flags: str = "PA", sport: int = 40001, dport: int = 80) -> TCP:
    return TCP(sport=sport, dport=dport, seq=seq, ack=1, flags=flags)


def key4(sport: int = 40001, dport: int = 80, src: str = V4S, dst: str = V4D) -> bytes:
    return (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + struct.pack("!HH", sport, dport))


def key6(sport: int = 40001, dport: int = 80) -> bytes:
    return (ipaddress.IPv6Address(V6S).packed + ipaddress.IPv6Address(V6D).packed
            + struct.pack("!HH", sport, dport))


SEG4 = (key4(), 1000, PSH | ACK, PAYLOAD)
SEG6 = (key6(), 1000, PSH | ACK, PAYLOAD)


def dec(frame, linktype: int = LINKTYPE_ETHERNET, decoder: Decoder | None = None):
    d = decoder or Decoder()
    seg = d.decode(bytes(frame), linktype)
    return seg, d


def as_tuple(seg):
    assert seg is not None
    key, seq, flags, payload, _ack = seg
    return bytes(key), seq, flags, bytes(payload)


# -- link layers ---------------------------------------------------------------------------------

def test_ethernet_ipv4_tcp():
    seg, d = dec(Ether() / ip4() / tcp() / PAYLOAD)
    assert as_tuple(seg) == SEG4
    assert d.skipped == {}


def test_ethernet_ipv6_tcp():
    seg, d = dec(Ether() / ip6() / tcp() / PAYLOAD)
    assert as_tuple(seg) == SEG6
    assert d.skipped == {}


def test_ethernet_padding_is_not_payload():
    # A SYN in a minimum-size Ethernet frame: the 6 padding bytes must not become payload.
    frame = bytes(Ether() / ip4() / tcp(flags="S"))
    frame += b"\x00" * (60 - len(frame))
    assert len(frame) == 60
    seg, _ = dec(frame)
    assert as_tuple(seg) == (key4(), 1000, SYN, b"")


def test_tcp_options_are_skipped():
    pkt = Ether() / ip4() / TCP(sport=40001, dport=80, seq=7, flags="S",
                                options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])
    seg, _ = dec(pkt / b"x")
    assert as_tuple(seg) == (key4(), 7, SYN, b"x")


def test_flags_fin_ack():
    seg, _ = dec(Ether() / ip4() / tcp(flags="FA"))
    assert as_tuple(seg)[2] == FIN | ACK


def test_dot1q():
    seg, d = dec(Ether() / Dot1Q(vlan=42) / ip4() / tcp() / PAYLOAD)
    assert as_tuple(seg) == SEG4
    assert d.skipped == {}


def test_dot1q_ipv6():
    seg, _ = dec(Ether() / Dot1Q(vlan=42) / ip6() / tcp() / PAYLOAD)
    assert as_tuple(seg) == SEG6


def test_qinq_88a8_then_8100():
    frame = bytes(Ether(type=0x88A8) / Dot1AD(vlan=100) / Dot1Q(vlan=42) / ip4() / tcp() / PAYLOAD)
    assert frame[12:14] == b"\x88\xa8" and frame[16:18] == b"\x81\x00"
    seg, d = dec(frame)
    assert as_tuple(seg) == SEG4
    assert d.skipped == {}


def test_linux_cooked_v1():
    frame = bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=b"\x02" * 6 + b"\0\0",
                              proto=0x0800) / ip4() / tcp() / PAYLOAD)
    assert len(frame) - len(ip4() / tcp() / PAYLOAD) == 16
    seg, _ = dec(frame, LINKTYPE_LINUX_SLL)
    assert as_tuple(seg) == SEG4
    seg, _ = dec(CookedLinux(proto=0x86DD) / ip6() / tcp() / PAYLOAD, LINKTYPE_LINUX_SLL)
    assert as_tuple(seg) == SEG6


def test_linux_cooked_v1_vlan():
    frame = bytes(CookedLinux(proto=0x8100)) + bytes(Dot1Q(vlan=3) / ip4() / tcp() / PAYLOAD)
    seg, _ = dec(frame, LINKTYPE_LINUX_SLL)
    assert as_tuple(seg) == SEG4


def test_linux_cooked_v2():
    frame = bytes(CookedLinuxV2(proto=0x0800) / ip4() / tcp() / PAYLOAD)
    assert len(frame) - len(ip4() / tcp() / PAYLOAD) == 20
    seg, _ = dec(frame, LINKTYPE_LINUX_SLL2)
    assert as_tuple(seg) == SEG4
    seg, _ = dec(CookedLinuxV2(proto=0x86DD) / ip6() / tcp() / PAYLOAD, LINKTYPE_LINUX_SLL2)
    assert as_tuple(seg) == SEG6


def test_linux_cooked_non_ip_is_skipped():
    seg, d = dec(CookedLinux(proto=0x0806) / ARP(), LINKTYPE_LINUX_SLL)
    assert seg is None and d.skipped == {"not_ip": 1}


@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, LINKTYPE_IPV4, 12, 14])
def test_raw_ipv4(linktype):
    seg, d = dec(ip4() / tcp() / PAYLOAD, linktype)
    assert as_tuple(seg) == SEG4
    assert d.skipped == {}


@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, LINKTYPE_IPV6])
def test_raw_ipv6(linktype):
    seg, _ = dec(ip6() / tcp() / PAYLOAD, linktype)
    assert as_tuple(seg) == SEG6


def test_raw_bad_version():
    frame = bytearray(bytes(ip4() / tcp()))
    frame[0] = 0x55
    seg, d = dec(frame, LINKTYPE_RAW)
    assert seg is None and d.skipped == {"bad_ip_version": 1}


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("family,layer", [(2, "v4"), (10, "v6"), (24, "v6"), (28, "v6"),
                                          (30, "v6")])
def test_bsd_null_both_byte_orders(order, family, layer):
    inner = ip4() / tcp() / PAYLOAD if layer == "v4" else ip6() / tcp() / PAYLOAD
    seg, d = dec(struct.pack(order + "I", family) + bytes(inner), LINKTYPE_NULL)
    assert as_tuple(seg) == (SEG4 if layer == "v4" else SEG6)
    assert d.skipped == {}


def test_bsd_loop_is_big_endian():
    seg, _ = dec(struct.pack(">I", 2) + bytes(ip4() / tcp() / PAYLOAD), LINKTYPE_LOOP)
    assert as_tuple(seg) == SEG4
    seg, _ = dec(struct.pack(">I", 24) + bytes(ip6() / tcp() / PAYLOAD), LINKTYPE_LOOP)
    assert as_tuple(seg) == SEG6


def test_bsd_null_unknown_family():
    seg, d = dec(struct.pack("<I", 7) + bytes(ip4() / tcp()), LINKTYPE_NULL)
    assert seg is None and d.skipped == {"not_ip": 1}


def test_unknown_linktype_is_counted():
    seg, d = dec(bytes(ip4() / tcp()), 147)
    assert seg is None and d.skipped == {"linktype_147": 1}


# -- IPv6 extension headers ------------------------------------------------------------------------

def test_ipv6_hop_by_hop_routing_destopts():
    pkt = (Ether() / ip6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["2001:db8::9"])
           / IPv6ExtHdrDestOpt() / tcp() / PAYLOAD)
    raw = bytes(pkt)
    assert raw[14 + 6] == 0  # next header: hop-by-hop
    seg, d = dec(raw)
    assert as_tuple(seg) == SEG6
    assert d.skipped == {}


def test_ipv6_ext_loop_bounded():
    # 20 destination-options headers: more than the decoder's hop limit, a counted skip.
    pkt = ip6()
    for _ in range(20):
        pkt = pkt / IPv6ExtHdrDestOpt()
    seg, d = dec(pkt / tcp() / PAYLOAD, LINKTYPE_RAW)
    assert seg is None and d.skipped == {"bad_ipv6_ext": 1}


def test_ipv6_fragments_reassembled():
    big = PAYLOAD * 40
    pkt = ip6() / IPv6ExtHdrFragment(id=0x1234) / tcp() / big
    frags = fragment6(pkt, 500)
    assert len(frags) > 3
    d = Decoder()
    out = [d.decode(bytes(f), LINKTYPE_RAW) for f in frags]
    assert out[:-1] == [None] * (len(frags) - 1)
    assert as_tuple(out[-1]) == (key6(), 1000, PSH | ACK, big)
    assert d.skipped == {"fragments_reassembled": 1}
    assert d.frags.pending == {}


def test_ipv6_fragments_out_of_order_with_hop_by_hop():
    big = bytes(range(256)) * 8
    pkt = ip6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(id=77) / tcp() / big
    frags = [bytes(Ether() / f) for f in fragment6(pkt, 600)]
    d = Decoder()
    out = [d.decode(f, LINKTYPE_ETHERNET) for f in reversed(frags)]
    assert as_tuple(out[-1]) == (key6(), 1000, PSH | ACK, big)
    assert out[:-1] == [None] * (len(frags) - 1)


def test_ipv6_fragment_with_destopts_in_fragmentable_part():
    # RFC 8200 4.5: a Destination Options header may sit after the Fragment header, in the
    # fragmentable part; after reassembly the decoder must walk it to reach TCP.
    big = PAYLOAD * 30
    pkt = ip6() / IPv6ExtHdrFragment(id=5) / IPv6ExtHdrDestOpt() / tcp() / big
    frags = fragment6(pkt, 500)
    d = Decoder()
    out = [d.decode(bytes(f), LINKTYPE_RAW) for f in frags]
    assert as_tuple(out[-1]) == (key6(), 1000, PSH | ACK, big)


# -- IPv4 fragments --------------------------------------------------------------------------------

def _v4_frags(payload: bytes, size: int = 256, ident: int = 999):
    pkt = IP(src=V4S, dst=V4D, id=ident) / tcp() / payload
    return [bytes(Ether() / f) for f in fragment(pkt, fragsize=size)]


BIG4 = bytes(random.Random(4).randbytes(3000))


def test_ipv4_fragments_in_order():
    frags = _v4_frags(BIG4)
    assert len(frags) > 5
    d = Decoder()
    out = [d.decode(f, 1) for f in frags]
    assert out[:-1] == [None] * (len(frags) - 1)
    assert as_tuple(out[-1]) == (key4(), 1000, PSH | ACK, BIG4)
    assert d.skipped == {"fragments_reassembled": 1}


def test_ipv4_fragments_out_of_order():
    frags = _v4_frags(BIG4)
    order = list(range(len(frags)))
    random.Random(1).shuffle(order)
    order.remove(0)
    order.append(0)  # the first fragment (with the TCP header) arrives last
    d = Decoder()
    out = [d.decode(frags[i], 1) for i in order]
    assert as_tuple(out[-1]) == (key4(), 1000, PSH | ACK, BIG4)
    assert sum(o is not None for o in out) == 1


def test_ipv4_fragments_duplicates():
    frags = _v4_frags(BIG4)
    d = Decoder()
    seq = [frags[0], frags[1], frags[0], frags[2], frags[1], *frags[3:]]
    out = [d.decode(f, 1) for f in seq]
    assert as_tuple(out[-1]) == (key4(), 1000, PSH | ACK, BIG4)
    assert sum(o is not None for o in out) == 1
    assert d.frags.pending == {}


def test_ipv4_fragments_overlapping():
    # Hand-made overlapping fragments carrying consistent bytes: [0,40) [16,64) [48,end)
    inner = bytes(tcp() / BIG4[:200])

    def frag(start, end, more):
        return bytes(IP(src=V4S, dst=V4D, id=31, proto=6, flags="MF" if more else 0,
                        frag=start // 8) / inner[start:end])

    pieces = [frag(0, 40, True), frag(16, 64, True), frag(48, len(inner), False)]
    d = Decoder()
    out = [d.decode(p, LINKTYPE_RAW) for p in pieces]
    assert out[:2] == [None, None]
    assert as_tuple(out[2]) == (key4(), 1000, PSH | ACK, BIG4[:200])


def test_ipv4_fragments_never_completed_counted_after_finish():
    frags = _v4_frags(BIG4)
    d = Decoder()
    for f in frags[:-1]:  # last fragment lost
        assert d.decode(f, 1) is None
    other = _v4_frags(BIG4, ident=1000)
    for f in other[1:]:  # first fragment lost
        assert d.decode(f, 1) is None
    assert len(d.frags.pending) == 2
    assert "fragments_incomplete" not in d.skipped
    d.frags.finish(d.skipped)
    assert d.skipped == {"fragments_incomplete": 2}
    assert d.frags.pending == {}


def test_ipv4_fragment_ids_do_not_mix():
    a = _v4_frags(BIG4, ident=1)
    b = _v4_frags(BIG4[::-1], ident=2)
    d = Decoder()
    out = []
    for fa, fb in zip(a, b, strict=True):
        out += [d.decode(fa, 1), d.decode(fb, 1)]
    got = [as_tuple(o)[3] for o in out if o is not None]
    assert got == [BIG4, BIG4[::-1]]


def test_ipv4_duplicate_fragments_are_bounded():
    # A datagram that never completes (hole at the start) flooded with duplicates of one
    # fragment: memory and time per fragment must stay bounded, and the drop is counted.
    last = bytes(IP(src=V4S, dst=V4D, id=5, proto=6, frag=100) / (b"z" * 8))
    dup = bytes(IP(src=V4S, dst=V4D, id=5, proto=6, flags="MF", frag=2) / (b"y" * 8))
    d = Decoder()
    assert d.decode(last, LINKTYPE_RAW) is None
    for _ in range(3000):
        assert d.decode(dup, LINKTYPE_RAW) is None
    assert all(len(e[2]) <= 256 for e in d.frags.pending.values())
    assert d.skipped.get("fragments_too_many", 0) >= 1


def test_ipv4_many_small_fragments_still_reassemble():
    frags = _v4_frags(BIG4[:2000], size=16)  # ~126 fragments of 16 bytes
    assert len(frags) > 100
    d = Decoder()
    out = [d.decode(f, 1) for f in frags]
    assert as_tuple(out[-1]) == (key4(), 1000, PSH | ACK, BIG4[:2000])


# -- VXLAN -----------------------------------------------------------------------------------------

def _vxlan(flags: int = 0x08, inner=None):
    inner = inner if inner is not None else Ether() / ip4() / tcp() / PAYLOAD
    return (Ether() / IP(src="172.16.0.1", dst="172.16.0.2") / UDP(sport=55555, dport=4789)
            / VXLAN(flags=flags, vni=7) / inner)


def test_vxlan_decapsulated():
    frame = bytes(_vxlan())
    seg, d = dec(frame)
    assert as_tuple(seg) == SEG4  # the inner connection, not the tunnel endpoints
    assert d.vxlan == 1
    assert d.skipped == {}


def test_vxlan_inner_vlan_ipv6():
    seg, d = dec(_vxlan(inner=Ether() / Dot1Q(vlan=9) / ip6() / tcp() / PAYLOAD))
    assert as_tuple(seg) == SEG6 and d.vxlan == 1


def test_vxlan_without_i_flag_is_skipped():
    seg, d = dec(_vxlan(flags=0x00))
    assert seg is None
    assert d.skipped == {"bad_vxlan": 1}
    assert d.vxlan == 0


def test_vxlan_nesting_is_bounded():
    inner = Ether() / ip4() / tcp() / PAYLOAD
    for _ in range(6):
        inner = _vxlan(inner=inner)
    seg, d = dec(inner)
    assert seg is None
    assert d.skipped == {"bad_vxlan": 1}


# -- non-TCP -------------------------------------------------------------------------------------

def test_non_tcp_skips_counted_by_reason():
    d = Decoder()
    frames = [
        Ether() / ip4() / UDP(sport=5353, dport=53) / b"dns?",
        Ether() / ip4() / UDP(sport=1, dport=2) / b"x",
        Ether() / ip4() / ICMP(),
        Ether() / ip6() / UDP(sport=1, dport=2) / b"y",
        Ether() / ARP(),
        Ether() / ARP(),
        Ether() / ARP(),
    ]
    for f in frames:
        assert d.decode(bytes(f), 1) is None
    assert d.skipped == {"udp": 3, "not_tcp": 1, "not_ip": 3}


def test_llc_frame():
    frame = bytes(Ether(type=60)) + b"\x42\x42\x03" + b"\0" * 40  # 802.3 length field
    seg, d = dec(frame)
    assert seg is None and d.skipped == {"llc_frame": 1}


# -- keys ------------------------------------------------------------------------------------------

def test_key_layout_v4_and_reverse():
    seg, _ = dec(Ether() / IP(src="1.2.3.4", dst="5.6.7.8") / tcp(sport=1234, dport=8080))
    key = as_tuple(seg)[0]
    assert key == bytes([1, 2, 3, 4, 5, 6, 7, 8]) + struct.pack("!HH", 1234, 8080)
    assert len(key) == 12
    assert describe_key(key) == ("1.2.3.4", 1234, "5.6.7.8", 8080)
    rk = reverse_key(key)
    assert describe_key(rk) == ("5.6.7.8", 8080, "1.2.3.4", 1234)
    assert reverse_key(rk) == key
    assert key_ports(key) == (1234, 8080)
    # The reply packet decodes to exactly the reversed key.
    seg2, _ = dec(Ether() / IP(src="5.6.7.8", dst="1.2.3.4") / tcp(sport=8080, dport=1234))
    assert as_tuple(seg2)[0] == rk


def test_key_layout_v6_and_reverse():
    seg, _ = dec(Ether() / ip6() / tcp(sport=65535, dport=443))
    key = as_tuple(seg)[0]
    assert len(key) == 36
    assert key[:16] == ipaddress.IPv6Address(V6S).packed
    assert describe_key(key) == (V6S, 65535, V6D, 443)
    rk = reverse_key(key)
    assert describe_key(rk) == (V6D, 443, V6S, 65535)
    assert reverse_key(rk) == key
    seg2, _ = dec(Ether() / IPv6(src=V6D, dst=V6S) / tcp(sport=443, dport=65535))
    assert as_tuple(seg2)[0] == rk


def test_describe_key_v4_mapped_and_zero_ports():
    key = key4(0, 0, "0.0.0.0", "255.255.255.255")
    assert describe_key(key) == ("0.0.0.0", 0, "255.255.255.255", 0)


# -- snap length -----------------------------------------------------------------------------------

def test_snaplen_cut_ipv4_delivers_partial_payload():
    frame = bytes(Ether() / ip4() / tcp() / PAYLOAD)
    cut = frame[:-10]
    seg, d = dec(cut)
    assert as_tuple(seg) == (key4(), 1000, PSH | ACK, PAYLOAD[:-10])
    assert d.skipped == {"snaplen_cut": 1}


def test_snaplen_cut_ipv6_delivers_partial_payload():
    frame = bytes(Ether() / ip6() / tcp() / PAYLOAD)
    seg, d = dec(frame[:-20])
    assert as_tuple(seg) == (key6(), 1000, PSH | ACK, PAYLOAD[:-20])
    assert d.skipped == {"snaplen_cut": 1}


def test_snaplen_cut_inside_tcp_header():
    frame = bytes(Ether() / ip4() / tcp() / PAYLOAD)
    seg, d = dec(frame[: 14 + 20 + 10])
    assert seg is None
    assert d.skipped == {"snaplen_cut": 1, "short_tcp": 1}


def test_tso_zero_total_length():
    frame = bytearray(bytes(Ether() / ip4() / tcp() / PAYLOAD))
    frame[16:18] = b"\0\0"
    seg, _ = dec(frame)
    assert as_tuple(seg) == SEG4


# -- robustness ------------------------------------------------------------------------------------

def _whole_samples() -> list[tuple[int, bytes]]:
    t = tcp() / PAYLOAD
    v4, v6 = ip4() / t, ip6() / t
    ext6 = ip6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / t
    out = [
        (1, bytes(Ether() / v4)), (1, bytes(Ether() / v6)), (1, bytes(Ether() / ext6)),
        (1, bytes(Ether() / Dot1Q() / v4)),
        (1, bytes(Ether(type=0x88A8) / Dot1AD() / Dot1Q() / v6)),
        (1, bytes(_vxlan())),
        (113, bytes(CookedLinux(proto=0x800) / v4)), (276, bytes(CookedLinuxV2(proto=0x86DD) / v6)),
        (101, bytes(v4)), (228, bytes(v4)), (229, bytes(v6)), (12, bytes(v6)), (14, bytes(v4)),
        (0, struct.pack("<I", 2) + bytes(v4)), (0, struct.pack(">I", 30) + bytes(v6)),
        (108, struct.pack(">I", 2) + bytes(v4)),
        (9, b"\xff\x03\x00\x21" + bytes(v4)), (50, b"\x00\x57" + bytes(v6)),
        (129, b"\x01\x02\x00\x00\xf0" + bytes(v4)),  # Linux ARCnet, RFC 1051 framing
    ]
    return out


def _samples() -> list[tuple[int, bytes]]:
    t = tcp() / PAYLOAD
    out = _whole_samples()
    out += [(1, f) for f in _v4_frags(BIG4[:800], size=200)]
    out += [(101, bytes(f)) for f in fragment6(ip6() / IPv6ExtHdrFragment() / t / BIG4[:900], 400)]
    return out


def test_every_supported_linktype_has_a_sample():
    covered = {lt for lt, _ in _whole_samples()}
    assert covered >= SUPPORTED_LINKTYPES
    for lt, f in _whole_samples():
        if lt not in SUPPORTED_LINKTYPES:
            continue
        d = Decoder()
        assert as_tuple(d.decode(f, lt))[1:] == SEG4[1:], lt
        assert d.skipped == {}, lt


def test_fuzz_truncations_and_bit_flips_never_raise():
    rng = random.Random(20261126)
    samples = _samples()
    d = Decoder()
    for n in range(6000):
        lt, frame = rng.choice(samples)
        buf = bytearray(frame)
        op = rng.random()
        if op < 0.35:
            buf = buf[: rng.randrange(len(buf) + 1)]
        elif op < 0.8:
            for _ in range(rng.randint(1, 8)):
                if buf:
                    buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        else:
            for _ in range(rng.randint(1, 4)):
                if buf:
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
            buf = buf[: rng.randrange(len(buf) + 1)]
        if rng.random() < 0.1:
            lt = rng.choice(sorted(SUPPORTED_LINKTYPES))
        seg = d.decode(bytes(buf), lt, ts=float(n))
        if seg is not None:
            key, seq, flags, payload, _ack = seg
            assert len(key) in (12, 36)
            assert 0 <= seq < 2**32 and 0 <= flags < 64
            assert isinstance(payload, (bytes, bytearray, memoryview))
    d.frags.finish(d.skipped)
    assert sum(d.skipped.values()) > 0
    assert d.frags.pending == {}
