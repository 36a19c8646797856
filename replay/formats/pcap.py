"""Streaming readers for pcap and pcapng (also gzip-compressed), without a packet object per packet.

Both read the file in large chunks and slice records out with ``struct.unpack_from``, yielding
``(timestamp, linktype, frame_bytes)``. Memory stays flat however long the capture is.

A damaged file is not a crash: packets before the damage are yielded, then ``reader.error`` says
what was wrong and where (byte offset), so the CLI can report it in one line and exit non-zero.
"""

from __future__ import annotations

import contextlib
import gzip
import mmap
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from replay.errors import FormatError
from replay.packets import SUPPORTED_LINKTYPES, SUPPORTED_SUMMARY

CHUNK = 1 << 20
MAX_RECORD = 1 << 24  # 16 MiB: larger records mean a corrupt length field

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


class _GzipChunks:
    """``read(n)`` over a GzipFile that keeps what was decompressed before a failure.

    ``GzipFile.read(n)`` discards everything it decompressed in that call when the stream turns
    out cut short or corrupt, so a damaged gzip capture would lose up to ``n`` bytes (all of it,
    for a small file) of good packets. This gathers ``read1`` pieces instead, returns what it
    has, and raises the failure on the next call. ``delivered`` counts decompressed bytes.
    """

    __slots__ = ("_fp", "_pending", "delivered")

    def __init__(self, fp: gzip.GzipFile) -> None:
        self._fp = fp
        self._pending: BaseException | None = None
        self.delivered = 0

    def read(self, n: int) -> bytes:
        if self._pending is not None:
            e, self._pending = self._pending, None
            raise e
        parts: list[bytes] = []
        got = 0
        while got < n:
            try:
                b = self._fp.read1(n - got)
            except (OSError, EOFError, zlib.error) as e:
                if not parts:
                    raise
                self._pending = e
                break
            if not b:
                break
            parts.append(b)
            got += len(b)
        self.delivered += got
        return b"".join(parts)


class CaptureReader:
    """Iterate ``(ts, linktype, frame)`` over a pcap or pcapng file, plain or gzip."""

    def __init__(self, path: str | Path, *, strict_linktype: bool = True) -> None:
        self.path = Path(path)
        self.error: str | None = None
        self._walked: int | None = None
        self.skipped_blocks = 0
        self.unsupported_linktypes: set[int] = set()
        self.strict_linktype = strict_linktype
        self.on_secrets: Callable[[int, bytes], object] | None = None
        """Called with (secrets type, data) for each pcapng Decryption Secrets Block, as it is
        read (before the packets after it): ``replay.tls.KeyLog.add_dsb``."""
        self.secrets_blocks = 0
        try:
            raw = self.path.open("rb")
        except FileNotFoundError:
            raise FormatError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise FormatError(f"{self.path}: is a directory, not a capture file") from None
        except PermissionError:
            raise FormatError(f"{self.path}: permission denied") from None
        self._raw = raw
        try:
            self.size = self.path.stat().st_size
            magic = raw.read(4)
            raw.seek(0)
            self._fp: BinaryIO = raw
            if magic[:2] == b"\x1f\x8b":
                self._fp = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
                try:
                    magic = self._fp.read(4)
                except (OSError, EOFError, zlib.error) as e:
                    raise FormatError(f"{self.path}: broken gzip data ({e})") from None
                raw.seek(0)
                self._fp = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
            if not magic:
                raise FormatError(f"{self.path}: empty file")
            if magic in _PCAP_MAGIC:
                self.kind = "pcap"
            elif magic == PCAPNG_MAGIC:
                self.kind = "pcapng"
            else:
                raise FormatError(
                    f"{self.path}: not a pcap or pcapng capture (magic number {magic.hex()})"
                )
        except BaseException:
            raw.close()
            raise
        self.linktype: int | None = None
        if self.kind == "pcap":
            try:
                self._head = self._fp.read(24)
            except (OSError, EOFError, zlib.error) as e:  # gzip cut or corrupt inside the header
                raw.close()
                raise FormatError(f"{self.path}: broken gzip data ({e})") from None
            if len(self._head) < 24:
                raw.close()
                raise FormatError(f"{self.path}: truncated pcap header ({len(self._head)} bytes)")
            order, _ = _PCAP_MAGIC[self._head[:4]]
            lt = struct.unpack_from(order + "I", self._head, 20)[0] & 0x0FFFFFFF
            self.linktype = lt
            if lt not in SUPPORTED_LINKTYPES and strict_linktype:
                raw.close()
                raise FormatError(
                    f"{self.path}: unsupported link type {lt}; shadowtap reads "
                    + SUPPORTED_SUMMARY
                )

    @property
    def position(self) -> int:
        """Bytes of the (possibly compressed) file consumed so far: for progress bars."""
        if self._walked is not None:
            return self._walked
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[float, int, bytes]]:
        gz = None
        if isinstance(self._fp, gzip.GzipFile):
            gz = _GzipChunks(self._fp)
            self._read = gz.read
        else:
            self._read = self._fp.read
        try:
            if self.kind == "pcap":
                yield from self._pcap()
            else:
                yield from self._pcapng()
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            self.error = self._read_failed(e, gz)

    def walk_pcap(self, step: Callable[[bytes, int, bool, float, int, int], tuple[int, int, int]]
                  ) -> Iterator[int]:
        """Classic pcap only: hand ``step`` whole buffers of records to walk itself (the native
        extractor does, in C) instead of one tuple per frame. ``step(buf, pos, little_endian,
        scale, linktype, max_record)`` returns (position after the last whole record, frames,
        length of a corrupt record or 0). Yields frames walked after each buffer; damage is
        reported in ``error`` exactly as iterating would."""
        assert self.kind == "pcap" and self.linktype is not None
        gz = None
        if not isinstance(self._fp, gzip.GzipFile):
            mm = self._map()
            if mm is not None:
                yield from self._walk_mapped(mm, step)
                return
        if isinstance(self._fp, gzip.GzipFile):
            gz = _GzipChunks(self._fp)
            read = gz.read
        else:
            read = self._fp.read
        try:
            yield from self._walk_chunks(step, read)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            self.error = self._read_failed(e, gz)

    def _walk_chunks(self, step: Callable[..., tuple[int, int, int]],
                     read: Callable[[int], bytes]) -> Iterator[int]:
        """Classic pcap records read ``CHUNK`` at a time, each buffer handed to ``step`` (see
        ``walk_pcap``; the Python iteration has its own step); yields frames per buffer."""
        order, scale = _PCAP_MAGIC[self._head[:4]]
        little = order == "<"
        lt = self.linktype
        buf = b""
        pos = 0
        offset = 24  # file offset of buf[0]
        while True:
            chunk = read(CHUNK)
            if chunk:
                buf = buf[pos:] + chunk if pos < len(buf) else chunk
                offset += pos
                pos = 0
            pos, frames, corrupt = step(buf, pos, little, scale, lt, MAX_RECORD)
            yield frames
            if corrupt:
                self.error = self._corrupt(offset + pos, corrupt)
                return
            if not chunk:
                if pos < len(buf):
                    self.error = self._truncated(offset + pos, len(buf) - pos)
                return

    def _read_failed(self, e: BaseException, gz: _GzipChunks | None) -> str:
        where = ""
        if gz is not None:
            done = gz.delivered + (24 if self.kind == "pcap" else 0)
            where = f" after byte {done} of the decompressed capture"
        return f"{self.path}: read failed{where} ({e}); packets before it were processed"

    def _map(self) -> mmap.mmap | None:
        """The whole (plain) file mapped read-only, or None where that is not possible (an
        empty file, a pipe): the walk then reads it in chunks."""
        try:
            mm = mmap.mmap(self._raw.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
        with contextlib.suppress(AttributeError, OSError):
            mm.madvise(mmap.MADV_SEQUENTIAL)
        return mm

    def _walk_mapped(self, mm: mmap.mmap, step: Callable[..., tuple[int, int, int]]
                     ) -> Iterator[int]:
        """``walk_pcap`` over the mapped file: no read copies; steps of about ``CHUNK``."""
        order, scale = _PCAP_MAGIC[self._head[:4]]
        size = len(mm)
        mv = memoryview(mm)
        dropped = 0
        try:
            pos = limit = 24
            while True:
                limit = min(size, max(limit, pos) + CHUNK)  # grows: a huge record fits at last
                pos, frames, corrupt = step(mv[:limit], pos, order == "<", scale, self.linktype,
                                            MAX_RECORD)
                self._walked = pos
                # Unmap what was read (the page cache keeps it): resident memory stays flat
                # however long the capture.
                done = pos - pos % mmap.PAGESIZE
                if done - dropped >= CHUNK:
                    with contextlib.suppress(AttributeError, OSError, ValueError):
                        mm.madvise(mmap.MADV_DONTNEED, dropped, done - dropped)
                    dropped = done
                yield frames
                if corrupt:
                    self.error = self._corrupt(pos, corrupt)
                    return
                if limit >= size:
                    if pos < size:
                        self.error = self._truncated(pos, size - pos)
                    return
        finally:
            mv.release()
            mm.close()

    def _corrupt(self, at: int, length: int) -> str:
        return (f"{self.path}: corrupt record at byte {at} (length {length}); packets before it "
                "were processed")

    def _truncated(self, at: int, present: int) -> str:
        return (f"{self.path}: truncated at byte {at} (the last record is cut short: {present} "
                "of its bytes present); packets before it were processed")

    # -- pcap ---------------------------------------------------------------------------------
    def _pcap(self) -> Iterator[tuple[float, int, bytes]]:
        order, _ = _PCAP_MAGIC[self._head[:4]]
        unpack = struct.Struct(order + "IIII").unpack_from
        out: list[tuple[float, int, bytes]] = []

        def step(buf: bytes, pos: int, _little: bool, scale: float, lt: int,
                 max_record: int) -> tuple[int, int, int]:
            end = len(buf)
            n = 0
            while pos + 16 <= end:
                sec, frac, caplen, _wire = unpack(buf, pos)
                if caplen > max_record:
                    return pos, n, caplen
                nxt = pos + 16 + caplen
                if nxt > end:
                    break
                out.append((sec + frac * scale, lt, buf[pos + 16 : nxt]))
                pos = nxt
                n += 1
            return pos, n, 0

        for _ in self._walk_chunks(step, self._read):
            yield from out
            out.clear()

    # -- pcapng -------------------------------------------------------------------------------
    def _pcapng(self) -> Iterator[tuple[float, int, bytes]]:
        read = self._read
        buf = b""
        pos = 0
        offset = 0
        order = "<"
        ifaces: list[tuple[int, float, float]] = []  # (linktype, ts scale, ts offset)
        seen_shb = False
        while True:
            chunk = read(CHUNK)
            if chunk:
                buf = buf[pos:] + chunk if pos < len(buf) else chunk
                offset += pos
                pos = 0
            end = len(buf)
            while pos + 12 <= end:
                btype = buf[pos : pos + 4]
                if btype == PCAPNG_MAGIC:
                    if pos + 12 > end:
                        break
                    bom = buf[pos + 8 : pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        order = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        order = ">"
                    else:
                        self.error = (
                            f"{self.path}: bad pcapng section header at byte {offset + pos}"
                        )
                        return
                    seen_shb = True
                    ifaces = []
                elif not seen_shb:
                    self.error = f"{self.path}: pcapng file does not start with a section header"
                    return
                t, blen = struct.unpack_from(order + "II", buf, pos)
                if blen < 12 or blen % 4 or blen > MAX_RECORD:
                    self.error = (
                        f"{self.path}: corrupt pcapng block at byte {offset + pos} "
                        f"(length {blen}); packets before it were processed"
                    )
                    return
                nxt = pos + blen
                if nxt > end:
                    break
                if t == 6:  # Enhanced Packet Block
                    iface, hi, lo, caplen, _wire = struct.unpack_from(order + "IIIII", buf, pos + 8)
                    if iface >= len(ifaces) or 32 + caplen > blen:
                        self.skipped_blocks += 1
                    else:
                        lt, scale, tsoff = ifaces[iface]
                        if lt in SUPPORTED_LINKTYPES:
                            yield (((hi << 32) | lo) * scale + tsoff, lt,
                                   buf[pos + 28 : pos + 28 + caplen])
                        else:
                            self.unsupported_linktypes.add(lt)
                            self.skipped_blocks += 1
                elif t == 1:  # Interface Description Block
                    ifaces.append(self._idb(buf, pos, blen, order))
                elif t == 10:  # Decryption Secrets Block (TLS key log: type 0x544c534b)
                    stype, slen = struct.unpack_from(order + "II", buf, pos + 8)
                    self.secrets_blocks += 1
                    if self.on_secrets is not None and 20 + slen <= blen:
                        self.on_secrets(stype, buf[pos + 16 : pos + 16 + slen])
                elif t == 3:  # Simple Packet Block
                    (wire,) = struct.unpack_from(order + "I", buf, pos + 8)
                    caplen = min(wire, blen - 16)
                    if ifaces and ifaces[0][0] in SUPPORTED_LINKTYPES:
                        yield 0.0, ifaces[0][0], buf[pos + 12 : pos + 12 + caplen]
                    else:
                        self.skipped_blocks += 1
                elif t == 2:  # obsolete Packet Block
                    iface, _drops, hi, lo, caplen, _wire = struct.unpack_from(
                        order + "HHIIII", buf, pos + 8
                    )
                    if iface < len(ifaces) and 32 + caplen <= blen and \
                            ifaces[iface][0] in SUPPORTED_LINKTYPES:
                        lt, scale, tsoff = ifaces[iface]
                        yield (((hi << 32) | lo) * scale + tsoff, lt,
                               buf[pos + 28 : pos + 28 + caplen])
                    else:
                        self.skipped_blocks += 1
                pos = nxt
            if not chunk:
                if pos < end:
                    self.error = (
                        f"{self.path}: truncated at byte {offset + pos} (the last block is cut "
                        "short); packets before it were processed"
                    )
                return

    def _idb(self, buf: bytes, pos: int, blen: int, order: str) -> tuple[int, float, float]:
        lt = struct.unpack_from(order + "H", buf, pos + 8)[0]
        scale, tsoff = 1e-6, 0.0
        o = pos + 16
        end = pos + blen - 4
        while o + 4 <= end:
            code, ln = struct.unpack_from(order + "HH", buf, o)
            if code == 0:
                break
            val = buf[o + 4 : o + 4 + ln]
            if code == 9 and ln >= 1:
                r = val[0]
                scale = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
            elif code == 14 and ln >= 8:
                tsoff = float(struct.unpack_from(order + "q", val, 0)[0])
            o += 4 + ((ln + 3) & ~3)
        if lt not in SUPPORTED_LINKTYPES:
            self.unsupported_linktypes.add(lt)
        return lt, scale, tsoff
