"""Capture sources: an AF_PACKET TPACKET_V3 ring, a VXLAN receiver and capture files.

Every source has the same small surface so that one worker loop (``appliance.live.pipeline``) drives
any of them: ``poll(timeout) -> list[(ts, linktype, frame)]`` returns the frames that arrived
(possibly none), ``stats() -> dict`` returns cumulative counters (kernel packets and drops,
user-space drops by reason), ``close()``. The frames go unchanged into ``replay.extract.Extractor``,
the same core as ``shadowtap extract``, so a live capture and a file give the same Exchanges.

Why a memory-mapped TPACKET_V3 ring rather than ``recv``: the kernel fills whole blocks of
frames and hands them over with one status word, so user space pays one poll per block rather
than one system call per packet (measured here: ~0.25 µs of Python per packet to walk the ring
against ~1.1 µs for a recv loop). The walk uses ``struct.unpack_from`` over the mmap; the only
per-packet object is the frame's bytes (plus the tuple the Extractor takes).

Why tcpdump compiles the filter: writing a BPF compiler is a project of its own, and tcpdump
(libpcap) is the reference one users already know the language of. Its ``-dd`` output (C array
initialisers) is parsed and attached with SO_ATTACH_FILTER, so the kernel drops uninteresting
packets before they are copied into the ring.

Fanout (PACKET_FANOUT_HASH) lets several worker processes share one port: the kernel picks the
socket by a *symmetric* flow hash (``__skb_get_hash_symmetric``), so both directions of a
connection reach the same worker and no connection is split. ``PACKET_FANOUT_FLAG_DEFRAG``
makes fragments of one datagram hash together.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from netconfig import netns as nsmod
from netconfig.errors import NetconfigError

# <linux/if_packet.h>, <asm-generic/socket.h>
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_ATTACH_REUSEPORT_CBPF = 51
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_LOSING = 4
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101

# tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status, num_pkts,
# offset_to_first_pkt, blk_len, seq_num (u64), ts_first, ts_last.
_BLOCK_STATUS = 8
_BLOCK_HDR = struct.Struct("<III")  # block_status, num_pkts, offset_to_first_pkt
# tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status, mac (u16), net (u16),
# hv1: rxhash (u32), vlan_tci (u32), vlan_tpid (u16)...
_PKT_HDR = struct.Struct("<IIIIIIH")
_VLAN = struct.Struct("<IH")  # vlan_tci, vlan_tpid at offset 32

Frame = tuple[float, int, bytes]


class CaptureError(Exception):
    """A capture source cannot start (bad filter, missing interface or namespace, no root).

    The message says what failed and what to do; the CLI prints it as one ``error:`` line.
    """


class Source(Protocol):
    """What the worker loop needs from a capture source."""

    linktype: int
    packets: int
    """Frames delivered to user space so far (before any sampling)."""
    bytes: int

    def poll(self, timeout: float) -> list[Frame]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


# ---- BPF ----------------------------------------------------------------------------------

_INSN = re.compile(r"\{\s*(0x[0-9a-fA-F]+|\d+),\s*(\d+),\s*(\d+),\s*(0x[0-9a-fA-F]+|\d+)\s*\}")

BpfProgram = list[tuple[int, int, int, int]]


def compile_bpf(expr: str, linktype: int = LINKTYPE_ETHERNET) -> BpfProgram:
    """Compile a pcap filter expression to classic BPF with ``tcpdump -dd``.

    Raises CaptureError with tcpdump's own explanation for an expression it rejects.
    """
    if shutil.which("tcpdump") is None:
        raise CaptureError("a capture filter needs tcpdump to compile it: install tcpdump "
                           "(Debian: apt-get install tcpdump) or drop the filter")
    dlt = {LINKTYPE_ETHERNET: "EN10MB", LINKTYPE_RAW: "RAW"}.get(linktype)
    if dlt is None:
        raise CaptureError(f"cannot compile a filter for link type {linktype}")
    proc = subprocess.run(["tcpdump", "-dd", "-y", dlt, expr], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1].removeprefix("tcpdump: ") if lines else f"exit {proc.returncode}"
        raise CaptureError(f"bad capture filter {expr!r}: {why}")
    prog = [(int(a, 0), int(b), int(c), int(d, 0)) for a, b, c, d in _INSN.findall(proc.stdout)]
    if not prog:
        raise CaptureError(f"bad capture filter {expr!r}: tcpdump produced no program")
    return prog


_VLAN_WORD = re.compile(r"\bvlan\b")


def check_live_filter(expr: str) -> None:
    """Refuse what cannot work on a live Linux socket with a tcpdump -dd program.

    The receive path moves 802.1Q tags out of the frame *before* socket filters run, and
    ``tcpdump -dd`` (compiled offline) tests the tag inside the frame, so ``vlan`` would match
    nothing. Filters on the inner headers match tagged and untagged frames alike."""
    if _VLAN_WORD.search(expr):
        raise CaptureError(f"bad capture filter {expr!r}: 'vlan' cannot match on a live Linux "
                           "capture (the kernel removes 802.1Q tags before the filter runs); "
                           "filter on the inner headers, which match tagged frames too")


# An IPv4 TCP segment with no payload and no SYN/FIN/RST, typically a third of HTTP packets.
# Dropping them in the kernel frees ring space and user-space time, but the extractor uses them
# when the capture has lost bytes (a peer's ACK over a hole declares the gap at once, keeping
# later exchanges paired), so it is an opt-in for throughput. GRO super-frames (IP total length
# 0) are not matched.
BARE_ACK = ("ip and tcp and (tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst)) == 0 and "
            "(ip[2:2] - ((ip[0]&0xf)<<2) - ((tcp[12]&0xf0)>>2)) == 0")


def kernel_filter(expr: str | None, skip_bare_acks: bool) -> str | None:
    """The expression actually compiled: the user's, plus 'not a bare ACK' when asked."""
    if not skip_bare_acks:
        return expr or None
    return f"({expr}) and not ({BARE_ACK})" if expr else f"not ({BARE_ACK})"


def attach_bpf(sock: socket.socket, prog: BpfProgram, option: int = SO_ATTACH_FILTER) -> None:
    """SO_ATTACH_FILTER (or another classic-BPF option): the kernel copies the program and
    replaces any previous one atomically."""
    insns = b"".join(struct.pack("HBBI", *i) for i in prog)
    buf = ctypes.create_string_buffer(insns, len(insns))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, option, fprog)


def vxlan_reuseport_program(workers: int) -> BpfProgram:
    """Classic BPF for SO_ATTACH_REUSEPORT_CBPF: pick the worker by a *symmetric* hash of the
    inner flow, so both directions of a mirrored connection reach the same worker.

    Without it the kernel picks by the outer 4-tuple, whose source port the sender derives from
    a direction-dependent flow hash (Linux VXLAN), which would split connections. The program
    sees the UDP payload: VXLAN header (8) + inner Ethernet (14) + IPv4; it XORs the inner
    addresses (offsets 34, 38) and ports (42, 44; IHL 5 assumed), then mixes the bits with a
    multiplicative hash before taking it modulo the worker count (Linux picks even ephemeral
    ports for connect(), so the low bit of a plain XOR is the same for every connection).
    Anything shorter (ARP, runts) aborts the program, which returns socket 0."""
    return [
        (0x20, 0, 0, 34), (0x07, 0, 0, 0),                     # A = src; X = A
        (0x20, 0, 0, 38), (0xAC, 0, 0, 0), (0x07, 0, 0, 0),    # A = dst ^ X; X = A
        (0x28, 0, 0, 42), (0xAC, 0, 0, 0), (0x07, 0, 0, 0),    # A = sport ^ X; X = A
        (0x28, 0, 0, 44), (0xAC, 0, 0, 0),                     # A = dport ^ X
        (0x24, 0, 0, 0x9E3779B1), (0x74, 0, 0, 16),            # mix: A *= golden; A >>= 16
        (0x94, 0, 0, workers),                                 # A %= workers
        (0x16, 0, 0, 0),                                       # return A
    ]


# ---- AF_PACKET ring ----------------------------------------------------------------------

@dataclass
class RingConfig:
    """Geometry of the TPACKET_V3 ring; memory used is ``block_size * block_count``.

    Blocks are handed to user space when full or after ``retire_ms`` (so a quiet link still
    delivers promptly). A block must hold the largest frame (64 KB GRO frames on a veth with
    offloads on), hence a 1 MB default.
    """

    block_size: int = 1 << 20
    block_count: int = 64
    retire_ms: int = 10
    frame_size: int = 2048

    def validate(self) -> None:
        page = mmap.PAGESIZE
        if self.block_size < page or self.block_size % page:
            raise CaptureError(f"ring block_size {self.block_size} must be a multiple of the "
                               f"page size ({page}); 1048576 is a good value")
        if self.block_size < 131072:
            raise CaptureError(f"ring block_size {self.block_size} is too small for 64 KB "
                               "GRO frames; use at least 131072")
        if self.block_count < 2:
            raise CaptureError("ring block_count must be at least 2")


def _ns_socket(ns: str | None, family: int, type_: int, proto: int) -> socket.socket:
    if ns is not None and not nsmod.exists(ns):
        # Checked here, not left to pyroute2 or setns: NetNS('x') would create a missing one.
        raise CaptureError(f"network namespace {ns!r} does not exist: create it or fix --netns")
    try:
        return nsmod.socket_in_netns(ns, family, type_, proto)
    except NetconfigError as e:
        raise CaptureError(str(e)) from None
    except PermissionError:
        raise CaptureError("capturing needs root (or CAP_NET_RAW): run as root") from None


class RingSource:
    """AF_PACKET socket with a TPACKET_V3 mmap ring on ``interface`` in ``netns``.

    Set-up order matters: the socket is created with protocol 0 (it receives nothing), the ring
    and the BPF filter are installed, and only then is it bound with ETH_P_ALL, so no
    unfiltered packet slips in before the filter. Fanout joins last (it needs a bound socket).
    """

    def __init__(
        self,
        interface: str,
        *,
        netns: str | None = None,
        bpf: str | None = None,
        ring: RingConfig | None = None,
        fanout_group: int | None = None,
        rcvbuf: int = 64 << 20,
        skip_bare_acks: bool = False,
    ) -> None:
        self.interface = interface
        self.skip_bare_acks = skip_bare_acks
        self.netns = netns
        self.ring = ring or RingConfig()
        self.ring.validate()
        self.kernel_packets = 0
        self.kernel_drops = 0
        self.kernel_freezes = 0
        self.packets = 0
        self.bytes = 0
        self.drops: dict[str, int] = {}
        self.sock = _ns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._setup(bpf, fanout_group, rcvbuf, skip_bare_acks)
        except BaseException:
            self.close()
            raise
        self._block = 0
        self._poll = select.poll()
        self._poll.register(self.sock.fileno(), select.POLLIN | select.POLLERR)

    def _setup(self, bpf: str | None, fanout_group: int | None, rcvbuf: int,
               skip_bare_acks: bool) -> None:
        s = self.sock
        try:
            s.bind((self.interface, 0))
        except OSError as e:
            where = f" in namespace {self.netns}" if self.netns else ""
            if e.errno == errno.ENODEV:
                raise CaptureError(f"no interface {self.interface!r}{where}: check the name "
                                   "(ip link) or --netns") from None
            raise CaptureError(f"cannot bind to {self.interface!r}{where}: {e.strerror}") from None
        hatype = s.getsockname()[3]
        if hatype in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
            self.linktype = LINKTYPE_ETHERNET
            if hatype == ARPHRD_LOOPBACK:
                # Loopback shows every packet twice (out, then in); keep one, like tcpdump.
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        elif hatype == ARPHRD_NONE:
            self.linktype = LINKTYPE_RAW
        else:
            raise CaptureError(f"{self.interface}: hardware type {hatype} is not supported "
                               "(Ethernet, loopback and raw-IP interfaces are)")
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        prog = self._program(bpf)
        if prog:
            attach_bpf(s, prog)
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        r = self.ring
        frames = r.block_size // r.frame_size * r.block_count
        req = struct.pack("IIIIIII", r.block_size, r.block_count, r.frame_size, frames,
                          r.retire_ms, 0, 0)
        try:
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        except OSError as e:
            raise CaptureError(f"cannot allocate a {r.block_size * r.block_count >> 20} MB "
                               f"capture ring ({e.strerror}); lower ring.block_count") from None
        self.size = r.block_size * r.block_count
        self.mm = mmap.mmap(s.fileno(), self.size, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)
        self.stats()  # reset the kernel's counters (reading does) before packets flow
        self.kernel_packets = self.kernel_drops = self.kernel_freezes = 0
        s.bind((self.interface, ETH_P_ALL))
        if fanout_group is not None:
            val = (fanout_group & 0xFFFF) | ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16)
            try:
                s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", val))
            except OSError as e:
                raise CaptureError(f"cannot join fanout group {fanout_group} on "
                                   f"{self.interface}: {e.strerror} (another program uses that "
                                   "group id with other settings? pick another group)") from None

    def _program(self, bpf: str | None) -> BpfProgram | None:
        """The kernel program for the user's expression (checked on its own first, so an error
        quotes what the user wrote), plus the bare-ACK clause if enabled."""
        if bpf:
            check_live_filter(bpf)
            prog = compile_bpf(bpf, self.linktype)
            if not self.skip_bare_acks:
                return prog
        expr = kernel_filter(bpf, self.skip_bare_acks)
        return compile_bpf(expr, self.linktype) if expr else None

    def set_filter(self, bpf: str | None, skip_bare_acks: bool | None = None) -> None:
        """Replace the kernel filter on the live socket (SIGHUP reload); None accepts all."""
        old = self.skip_bare_acks
        if skip_bare_acks is not None:
            self.skip_bare_acks = skip_bare_acks
        try:
            prog = self._program(bpf)
        except CaptureError:
            self.skip_bare_acks = old
            raise
        attach_bpf(self.sock, prog or [(6, 0, 0, 0x40000)])

    def poll(self, timeout: float) -> list[Frame]:
        """Frames of every block the kernel has handed over; waits up to ``timeout`` for one."""
        mm = self.mm
        bs = self.ring.block_size
        nblocks = self.ring.block_count
        off = self._block * bs
        if not mm[off + _BLOCK_STATUS] & TP_STATUS_USER:
            self._poll.poll(int(timeout * 1000))
            if not mm[off + _BLOCK_STATUS] & TP_STATUS_USER:
                return []
        out: list[Frame] = []
        append = out.append
        unpack_pkt = _PKT_HDR.unpack_from
        lt = self.linktype
        truncated = nbytes = 0
        # Walk at most one ring's worth per call, so the caller's loop stays responsive.
        for _ in range(nblocks):
            status, npkts, first = _BLOCK_HDR.unpack_from(mm, off + _BLOCK_STATUS)
            if not status & TP_STATUS_USER:
                break
            p = off + first
            for _ in range(npkts):
                nxt, sec, nsec, snap, length, st, mac = unpack_pkt(mm, p)
                start = p + mac
                if st & TP_STATUS_VLAN_VALID:
                    append((sec + nsec * 1e-9, lt, self._with_vlan(mm, p, start, snap, st)))
                else:
                    append((sec + nsec * 1e-9, lt, mm[start:start + snap]))
                if snap != length:
                    truncated += 1
                nbytes += snap
                p += nxt
            mm[off + _BLOCK_STATUS:off + _BLOCK_STATUS + 4] = b"\0\0\0\0"  # back to the kernel
            self._block = (self._block + 1) % nblocks
            off = self._block * bs
        if truncated:
            self.drops["truncated_frames"] = self.drops.get("truncated_frames", 0) + truncated
        self.packets += len(out)
        self.bytes += nbytes
        return out

    def poll_native(self, run_ring: Callable[..., tuple], timeout: float) -> tuple[int, int, str | None]:
        """Like ``poll``, but the blocks are walked by the native extractor
        (``Extractor.run_ring``): no Python object per frame. Returns (frames, frames whose
        processing failed, the last failure or None)."""
        mm = self.mm
        bs = self.ring.block_size
        if not mm[self._block * bs + _BLOCK_STATUS] & TP_STATUS_USER:
            self._poll.poll(int(timeout * 1000))
            if not mm[self._block * bs + _BLOCK_STATUS] & TP_STATUS_USER:
                return 0, 0, None
        blk, n, nbytes, truncated, errors, last = run_ring(mm, self._block, bs,
                                                           self.ring.block_count, self.linktype)
        self._block = blk
        if truncated:
            self.drops["truncated_frames"] = self.drops.get("truncated_frames", 0) + truncated
        self.packets += n
        self.bytes += nbytes
        return n, errors, last

    @staticmethod
    def _with_vlan(mm: mmap.mmap, p: int, start: int, snap: int, st: int) -> bytes:
        """The kernel stripped an 802.1Q tag into the header: put it back, as on the wire."""
        tci, tpid = _VLAN.unpack_from(mm, p + 32)
        if not st & TP_STATUS_VLAN_TPID_VALID or not tpid:
            tpid = 0x8100
        frame = mm[start:start + snap]
        return frame[:12] + struct.pack("!HH", tpid, tci & 0xFFFF) + frame[12:]

    def stats(self) -> dict[str, Any]:
        """Cumulative counters. PACKET_STATISTICS resets on read, so it is accumulated here;
        the kernel's ``tp_packets`` includes the dropped ones."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        pk, dr, fr = struct.unpack("III", raw)
        self.kernel_packets += pk
        self.kernel_drops += dr
        self.kernel_freezes += fr
        return {"kernel_packets": self.kernel_packets, "kernel_drops": self.kernel_drops,
                "kernel_queue_freezes": self.kernel_freezes, "drops": dict(self.drops)}

    def close(self) -> None:
        mm = getattr(self, "mm", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass
        self.sock.close()


# ---- VXLAN receiver ----------------------------------------------------------------------

class VxlanSource:
    """UDP receiver for VXLAN (RFC 7348): remote taps, AWS VPC Traffic Mirroring.

    Each datagram is an 8-byte VXLAN header and an inner Ethernet frame; the inner frame goes to
    the same Extractor as a local capture. ``vnis`` (empty = all) keeps only those sessions
    (AWS gives each mirror session its own VNI). The timestamp is the arrival time, one per
    poll: the sender's capture time is not carried by VXLAN.
    """

    linktype = LINKTYPE_ETHERNET

    def __init__(
        self,
        *,
        listen: str = "0.0.0.0",
        port: int = 4789,
        vnis: list[int] | None = None,
        netns: str | None = None,
        rcvbuf: int = 64 << 20,
        workers: int = 1,
    ) -> None:
        self.netns = netns
        self.vnis = frozenset(vnis or ())
        self.drops: dict[str, int] = {}
        self.received = 0
        self.packets = 0
        self.bytes = 0
        family = socket.AF_INET6 if ":" in listen else socket.AF_INET
        self.sock = _ns_socket(netns, family, socket.SOCK_DGRAM, 0)
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if workers > 1:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.sock.bind((listen, port))
            if workers > 1:
                attach_bpf(self.sock, vxlan_reuseport_program(workers),
                           SO_ATTACH_REUSEPORT_CBPF)
        except OSError as e:
            self.sock.close()
            raise CaptureError(f"cannot listen for VXLAN on {listen}:{port}: {e.strerror} "
                               "(a VXLAN device or another collector already uses the port?)"
                               ) from None
        self.sock.setblocking(False)
        self._inode = os.fstat(self.sock.fileno()).st_ino
        self._poll = select.poll()
        self._poll.register(self.sock.fileno(), select.POLLIN)
        self._buf = bytearray(65536)

    def poll(self, timeout: float, max_datagrams: int = 4096) -> list[Frame]:
        if not self._poll.poll(int(timeout * 1000)):
            return []
        out: list[Frame] = []
        ts = time.time()
        recv = self.sock.recv
        vnis = self.vnis
        drops = self.drops
        for _ in range(max_datagrams):
            try:
                d = recv(65536)
            except BlockingIOError:
                break
            self.received += 1
            if len(d) < 22 or not d[0] & 0x08:
                drops["not_vxlan"] = drops.get("not_vxlan", 0) + 1
                continue
            if vnis and int.from_bytes(d[4:7], "big") not in vnis:
                drops["vni_not_selected"] = drops.get("vni_not_selected", 0) + 1
                continue
            out.append((ts, LINKTYPE_ETHERNET, d[8:]))
            self.bytes += len(d) - 8
        self.packets += len(out)
        return out

    def _udp_drops(self) -> int:
        """The socket's receive-queue drops, from /proc/net/udp as seen in its namespace."""
        def read() -> int:
            for name in ("/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"):
                try:
                    with open(name) as fh:
                        next(fh)
                        for line in fh:
                            f = line.split()
                            if len(f) >= 13 and int(f[9]) == self._inode:
                                return int(f[-1])
                except OSError:
                    continue
            return 0
        try:
            return nsmod.run_in_netns(self.netns, read)
        except (NetconfigError, OSError):
            return 0

    def stats(self) -> dict[str, Any]:
        drops = self._udp_drops()
        return {"kernel_packets": self.received + drops, "kernel_drops": drops,
                "drops": dict(self.drops)}

    def close(self) -> None:
        self.sock.close()


# ---- capture files -----------------------------------------------------------------------

class FileSource:
    """A pcap/pcapng file (gzip allowed) through the same pipeline as a live capture.

    ``poll`` returns the next batch and an empty list at the end (``done`` is then True).
    """

    def __init__(self, path: str | Path, batch: int = 4096) -> None:
        from replay.errors import FormatError
        from replay.formats.pcap import CaptureReader

        self.path = Path(path)
        self.batch = batch
        try:
            self.reader = CaptureReader(self.path)
            self.reader.__enter__()
        except FormatError as e:
            raise CaptureError(str(e)) from None
        except OSError as e:
            raise CaptureError(f"{path}: cannot read ({e.strerror or e})") from None
        self._it: Iterator[Frame] = iter(self.reader)
        self.done = False
        self.linktype = LINKTYPE_ETHERNET
        self.packets = 0
        self.bytes = 0

    def poll(self, timeout: float) -> list[Frame]:
        if self.done:
            time.sleep(min(timeout, 0.05))
            return []
        out = list(islice(self._it, self.batch))
        self.packets += len(out)
        self.bytes += sum(len(f[2]) for f in out)
        if len(out) < self.batch:
            self.done = True
        return out

    def stats(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kernel_packets": self.packets, "kernel_drops": 0, "drops": {}}
        if self.reader.error:
            d["error"] = self.reader.error
        return d

    def close(self) -> None:
        self.reader.__exit__(None, None, None)


# ---- symmetric connection hash -----------------------------------------------------------

def endpoint_bytes(ip: str, port: int) -> bytes:
    """Packed address + big-endian port: the unit both hash functions agree on."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return socket.inet_pton(fam, ip) + port.to_bytes(2, "big")


def conn_hash(a: bytes, b: bytes) -> int:
    """Symmetric 32-bit hash of two endpoints: the same for both directions of a connection."""
    import zlib

    return zlib.crc32(a + b if a <= b else b + a)


def frame_conn_hash(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> int | None:
    """``conn_hash`` of a TCP/UDP frame's endpoints (Ethernet with VLAN tags, or raw IP), or
    None when it cannot tell (not IP/TCP/UDP, a fragment, VXLAN) and the frame must pass. Agrees with ``conn_hash`` over an Exchange's ConnKey, so the
    pcap sink samples the same connections as the exchange sinks."""
    if linktype == LINKTYPE_ETHERNET:
        o = 12
        et = frame[12:14]
        while et in (b"\x81\x00", b"\x88\xa8") and len(frame) >= o + 6:
            o += 4
            et = frame[o:o + 2]
        o += 2
    else:
        o = 0
        et = b"\x08\x00" if frame[:1] and frame[0] >> 4 == 4 else b"\x86\xdd"
    if et == b"\x08\x00" and len(frame) >= o + 20:
        if frame[o + 6] & 0x3F or frame[o + 7]:
            return None  # a fragment: later ones carry no ports; let reassembly decide
        ihl = (frame[o] & 0xF) * 4
        proto = frame[o + 9]
        src, dst = frame[o + 12:o + 16], frame[o + 16:o + 20]
        l4 = o + ihl
    elif et == b"\x86\xdd" and len(frame) >= o + 40:
        proto = frame[o + 6]
        src, dst = frame[o + 8:o + 24], frame[o + 24:o + 40]
        l4 = o + 40
    else:
        return None
    if proto not in (6, 17) or len(frame) < l4 + 4:
        return None
    if proto == 17 and b"\x12\xb5" in (frame[l4:l4 + 2], frame[l4 + 2:l4 + 4]):
        return None  # VXLAN (4789): the connection is inside; the decoder unwraps it
    return conn_hash(src + frame[l4:l4 + 2], dst + frame[l4 + 2:l4 + 4])


@dataclass
class SourceSpec:
    """Everything needed to open a source in a (possibly forked) worker."""

    kind: str = "interface"  # interface | vxlan | file
    interface: str | None = None
    netns: str | None = None
    bpf: str | None = None
    skip_bare_acks: bool = False
    ring: RingConfig = field(default_factory=RingConfig)
    rcvbuf: int = 64 << 20
    fanout_group: int | None = None
    listen: str = "0.0.0.0"
    port: int = 4789
    vnis: list[int] = field(default_factory=list)
    path: str | None = None
    keylog: list[str] = field(default_factory=list)
    """NSS key log files (``SSLKEYLOGFILE``) the servers append to, tailed while capturing
    (``appliance.live.daemon``): TLS connections are decrypted with them (``replay.tls``)."""

    def open(self, workers: int = 1) -> Source:
        """Open the source for one of ``workers`` workers (fanout / reuseport group size)."""
        if self.kind == "interface":
            assert self.interface
            return RingSource(self.interface, netns=self.netns, bpf=self.bpf, ring=self.ring,
                              fanout_group=self.fanout_group, rcvbuf=self.rcvbuf,
                              skip_bare_acks=self.skip_bare_acks)
        if self.kind == "vxlan":
            return VxlanSource(listen=self.listen, port=self.port, vnis=self.vnis,
                               netns=self.netns, rcvbuf=self.rcvbuf, workers=workers)
        if self.kind == "file":
            assert self.path
            return FileSource(self.path)
        raise CaptureError(f"unknown source type {self.kind!r}")
