"""Link, network and transport decoding down to TCP segments: bytes in, tuples out.

This is the per-packet hot path, so it builds no objects per packet: it indexes and slices the
frame (``bytes`` indexing and ``struct.unpack_from``), and returns one small tuple for a TCP
segment or ``None`` for anything else, counting *why* in ``Decoder.skipped``. Malformed input
never raises out of ``decode``: a bad packet is a counted skip, never a crash.

Handled: Ethernet (802.1Q / 802.1ad / QinQ tags), Linux cooked capture v1 and v2, raw IPv4/IPv6
link types, BSD loopback (NULL and LOOP), PPP; IPv4 with fragment reassembly; IPv6 with extension
headers (hop-by-hop, routing, destination options, AH, fragment reassembly); TCP; and VXLAN (UDP
4789) decapsulated to the inner Ethernet frame, as AWS VPC Traffic Mirroring sends it.

A segment is ``(key, seq, flags, payload, ack)`` where ``key`` is ``src_ip + dst_ip + sport + dport``
as raw bytes (12 bytes for IPv4, 36 for IPv6): hashable, cheap, and reversible with
``reverse_key`` / ``describe_key``.
"""

from __future__ import annotations

import ipaddress
import struct

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW_BSD = 12
LINKTYPE_RAW_OPENBSD = 14
LINKTYPE_PPP_HDLC = 50
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_ARCNET_LINUX = 129
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

LINKTYPE_NAMES = {
    LINKTYPE_NULL: "NULL (BSD loopback)",
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_PPP: "PPP",
    LINKTYPE_RAW_BSD: "raw IP",
    LINKTYPE_RAW_OPENBSD: "raw IP",
    LINKTYPE_PPP_HDLC: "PPP in HDLC framing",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_LOOP: "OpenBSD loopback",
    LINKTYPE_LINUX_SLL: "Linux cooked v1",
    LINKTYPE_ARCNET_LINUX: "Linux ARCnet",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2",
}
SUPPORTED_LINKTYPES = frozenset(LINKTYPE_NAMES)
SUPPORTED_SUMMARY = ("Ethernet (1), raw IP (12, 14, 101, 228, 229), BSD loopback (0, 108), "
                     "PPP (9, 50), Linux cooked v1/v2 (113, 276), Linux ARCnet (129)")

VXLAN_PORT = 4789
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_VLAN_TYPES = (0x8100, 0x88A8, 0x9100, 0x9200)
_IPV6_EXT = frozenset((0, 43, 60, 135, 139, 140, 253, 254))
_unpack_tcp = struct.Struct("!HHIIH").unpack_from
_MAX_DEPTH = 3  # VXLAN in VXLAN in VXLAN is already absurd

Segment = tuple[bytes, int, int, bytes, int]


class _Fragments:
    """IP fragment reassembly with bounded memory (datagrams pending, age)."""

    __slots__ = ("max_parts", "max_pending", "next_expiry", "pending", "timeout")

    def __init__(self, max_pending: int = 4096, timeout: float = 30.0,
                 max_parts: int = 256) -> None:
        self.pending: dict[tuple, list] = {}
        self.max_pending = max_pending
        self.timeout = timeout
        # Fragments kept per datagram: without a bound, a stream of duplicate fragments of a
        # datagram that never completes grows memory without limit and costs a sort per fragment.
        self.max_parts = max_parts
        self.next_expiry = 0.0

    def add(self, key: tuple, offset: int, more: bool, data: bytes, ts: float,
            skipped: dict[str, int]) -> bytes | None:
        """Add one fragment; return the whole payload once every byte has arrived."""
        if ts > self.next_expiry:  # age out stale datagrams now and then, not per fragment
            if self.pending:
                self._expire(ts, skipped)
            self.next_expiry = ts + self.timeout / 2
        entry = self.pending.get(key)
        if entry is None:
            if len(self.pending) >= self.max_pending:
                self._expire(ts, skipped, force=True)
            entry = [ts, None, []]  # first-seen, total length, [(offset, data)]
            self.pending[key] = entry
        if not more:
            if entry[1] is not None and entry[1] != offset + len(data):
                skipped["fragments_conflicting_end"] = (
                    skipped.get("fragments_conflicting_end", 0) + 1
                )
                del self.pending[key]
                return None
            entry[1] = offset + len(data)
        entry[2].append((offset, data))
        if len(entry[2]) > self.max_parts:
            del self.pending[key]
            skipped["fragments_too_many"] = skipped.get("fragments_too_many", 0) + 1
            return None
        total = entry[1]
        if total is None:
            return None
        if total > 65535 + 40:
            del self.pending[key]
            skipped["fragments_oversized"] = skipped.get("fragments_oversized", 0) + 1
            return None
        parts = sorted(entry[2], key=lambda p: p[0])
        have = 0
        for off, d in parts:
            if off > have:
                return None  # a hole remains
            have = max(have, off + len(d))
        if have < total:
            return None
        buf = bytearray(total)
        for off, d in parts:
            end = min(off + len(d), total)
            buf[off:end] = d[: end - off]
        del self.pending[key]
        skipped["fragments_reassembled"] = skipped.get("fragments_reassembled", 0) + 1
        return bytes(buf)

    def _expire(self, ts: float, skipped: dict[str, int], force: bool = False) -> None:
        old = [k for k, e in self.pending.items() if ts - e[0] > self.timeout]
        if force and not old:
            old = [next(iter(self.pending))]
        for k in old:
            del self.pending[k]
        if old:
            skipped["fragments_expired"] = skipped.get("fragments_expired", 0) + len(old)

    def finish(self, skipped: dict[str, int]) -> None:
        if self.pending:
            skipped["fragments_incomplete"] = (
                skipped.get("fragments_incomplete", 0) + len(self.pending)
            )
            self.pending.clear()


class Decoder:
    """Decodes frames of one capture into TCP segments. Holds fragment state and skip counters."""

    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}
        self.frags = _Fragments()
        self.vxlan = 0
        self.ts = 0.0

    def _skip(self, reason: str) -> None:
        s = self.skipped
        s[reason] = s.get(reason, 0) + 1

    def decode(self, data: bytes, linktype: int, ts: float = 0.0, depth: int = 0) -> Segment | None:
        """Decode one frame; a TCP segment tuple, or None (the reason is counted)."""
        self.ts = ts
        try:
            if linktype == 1:
                et = (data[12] << 8) | data[13]
                off = 14
                while et in _VLAN_TYPES:
                    et = (data[off + 2] << 8) | data[off + 3]
                    off += 4
                if et == 0x0800:
                    return self._ipv4(data, off, depth)
                if et == 0x86DD:
                    return self._ipv6(data, off, depth)
                self._skip("not_ip" if et >= 0x600 else "llc_frame")
                return None
            return self._decode_other(data, linktype, depth)
        except (IndexError, struct.error):
            self._skip("malformed")
            return None

    def _decode_other(self, data: bytes, linktype: int, depth: int) -> Segment | None:
        if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_BSD, LINKTYPE_RAW_OPENBSD, LINKTYPE_IPV4,
                        LINKTYPE_IPV6):
            v = data[0] >> 4
            if v == 4:
                return self._ipv4(data, 0, depth)
            if v == 6:
                return self._ipv6(data, 0, depth)
            self._skip("bad_ip_version")
            return None
        if linktype == LINKTYPE_LINUX_SLL:
            et, off = (data[14] << 8) | data[15], 16
        elif linktype == LINKTYPE_LINUX_SLL2:
            et, off = (data[0] << 8) | data[1], 20
        elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if linktype == LINKTYPE_LOOP or (data[0] == 0 and data[1] == 0):
                fam = int.from_bytes(data[0:4], "big")
            else:
                fam = int.from_bytes(data[0:4], "little")
            et = 0x0800 if fam == 2 else 0x86DD if fam in (10, 24, 28, 30) else 0
            off = 4
        elif linktype == LINKTYPE_ARCNET_LINUX:
            # src, dst, 2-byte offset, then the ARCnet protocol id: 0xF0 = IP in RFC 1051
            # framing; 0xD4 = IP in RFC 1201 framing (split flag + 2-byte sequence follow).
            proto = data[4]
            if proto == 0xF0:
                return self._ipv4(data, 5, depth)
            if proto == 0xD4:
                return self._ipv4(data, 8 if data[5] != 0xFF else 12, depth)
            self._skip("not_ip")
            return None
        elif linktype in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):
            off = 2 if data[0] == 0xFF and data[1] == 0x03 else 0
            proto = (data[off] << 8) | data[off + 1]
            et = 0x0800 if proto == 0x21 else 0x86DD if proto == 0x57 else 0
            off += 2
        else:
            self._skip(f"linktype_{linktype}")
            return None
        while et in _VLAN_TYPES:
            et = (data[off + 2] << 8) | data[off + 3]
            off += 4
        if et == 0x0800:
            return self._ipv4(data, off, depth)
        if et == 0x86DD:
            return self._ipv6(data, off, depth)
        self._skip("not_ip")
        return None

    def _ipv4(self, data: bytes, off: int, depth: int) -> Segment | None:
        vihl = data[off]
        ihl = (vihl & 15) << 2
        if vihl >> 4 != 4 or ihl < 20:
            self._skip("bad_ipv4_header")
            return None
        total = (data[off + 2] << 8) | data[off + 3]
        end = off + total
        if total < ihl:
            if total == 0 and len(data) - off > ihl:  # TSO: length 0 on offloaded frames
                end = len(data)
            else:
                self._skip("bad_ipv4_length")
                return None
        elif end > len(data):
            end = len(data)  # cut by the snap length: deliver what is there; TCP sees the gap
            self._skip("snaplen_cut")
        proto = data[off + 9]
        frag = (data[off + 6] << 8) | data[off + 7]
        if frag & 0x3FFF:  # MF set or offset non-zero
            key = (data[off + 12 : off + 20], data[off + 4 : off + 6], proto)
            whole = self.frags.add(key, (frag & 0x1FFF) << 3, bool(frag & 0x2000),
                                   data[off + ihl : end], self.ts, self.skipped)
            if whole is None:
                return None
            return self._l4(proto, whole, 0, len(whole), data[off + 12 : off + 20], depth)
        return self._l4(proto, data, off + ihl, end, data[off + 12 : off + 20], depth)

    def _ipv6(self, data: bytes, off: int, depth: int) -> Segment | None:
        if data[off] >> 4 != 6:
            self._skip("bad_ipv6_header")
            return None
        plen = (data[off + 4] << 8) | data[off + 5]
        nh = data[off + 6]
        addrs = data[off + 8 : off + 40]
        if len(addrs) != 32:
            self._skip("short_ipv6")
            return None
        end = off + 40 + plen
        if plen == 0:
            end = len(data)  # jumbogram or offloaded length: take the frame
        elif end > len(data):
            end = len(data)
            self._skip("snaplen_cut")
        o = off + 40
        hops = 0
        reassembled = False
        while nh in _IPV6_EXT or nh == 51 or nh == 44:
            hops += 1
            if hops > 16 or o + 8 > end or (nh == 44 and reassembled):
                self._skip("bad_ipv6_ext")
                return None
            if nh == 44:
                fo = (data[o + 2] << 8) | data[o + 3]
                ident = data[o + 4 : o + 8]
                inner = data[o]
                whole = self.frags.add((addrs, ident, inner), fo & 0xFFF8, bool(fo & 1),
                                       data[o + 8 : end], self.ts, self.skipped)
                if whole is None:
                    return None
                # The fragmentable part may itself open with extension headers (destination
                # options, RFC 8200 4.5): keep walking them in the reassembled payload.
                data, o, end, nh, reassembled = whole, 0, len(whole), inner, True
                continue
            if nh == 51:
                ln = (data[o + 1] + 2) << 2
            else:
                ln = (data[o + 1] + 1) << 3
            nh = data[o]
            o += ln
        return self._l4(nh, data, o, end, addrs, depth)

    def _l4(self, proto: int, data: bytes, o: int, end: int, addrs: bytes,
            depth: int) -> Segment | None:
        if proto == 6:
            if end - o < 20:
                self._skip("short_tcp")
                return None
            _sport, _dport, seq, ack, offflags = _unpack_tcp(data, o)
            doff = (offflags >> 12) << 2
            if doff < 20 or o + doff > end:
                self._skip("bad_tcp_header")
                return None
            return addrs + data[o : o + 4], seq, offflags & 0x3F, data[o + doff : end], ack
        if proto == 17:
            if end - o >= 16 and ((data[o + 2] << 8) | data[o + 3]) == VXLAN_PORT:
                if data[o + 8] & 0x08 and depth < _MAX_DEPTH:
                    self.vxlan += 1
                    return self.decode(data[o + 16 : end], LINKTYPE_ETHERNET, self.ts, depth + 1)
                self._skip("bad_vxlan")
                return None
            self._skip("udp")
            return None
        self._skip("not_tcp")
        return None


def reverse_key(key: bytes) -> bytes:
    """The key of the other direction of the same connection."""
    n = (len(key) - 4) >> 1
    return key[n : 2 * n] + key[:n] + key[2 * n + 2 : 2 * n + 4] + key[2 * n : 2 * n + 2]


def describe_key(key: bytes) -> tuple[str, int, str, int]:
    """(src ip, src port, dst ip, dst port) as text and ints, for reports and the model."""
    n = (len(key) - 4) >> 1
    if n == 4:
        src = ".".join(str(b) for b in key[0:4])
        dst = ".".join(str(b) for b in key[4:8])
    else:
        src = str(ipaddress.IPv6Address(key[:n]))
        dst = str(ipaddress.IPv6Address(key[n : 2 * n]))
    sport = (key[2 * n] << 8) | key[2 * n + 1]
    dport = (key[2 * n + 2] << 8) | key[2 * n + 3]
    return src, sport, dst, dport


def key_ports(key: bytes) -> tuple[int, int]:
    n = len(key) - 4
    return (key[n] << 8) | key[n + 1], (key[n + 2] << 8) | key[n + 3]
