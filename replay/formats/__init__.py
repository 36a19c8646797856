"""Readers and writers: every format converts to and from ``replay.model.Exchange``.

Formats: ``pcap``/``pcapng`` (read, through extraction), ``jsonl`` (the lossless exchange log),
``har`` (HAR 1.2) and ``mitm`` (mitmproxy flow files). Heavy modules (mitmproxy) are imported only
when their format is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from replay.errors import FormatError
from replay.model import Exchange

WRITE_FORMATS = ("jsonl", "har", "mitm")
READ_FORMATS = ("pcap", "pcapng", "jsonl", "har", "mitm")

_WRITERS = {
    "jsonl": "replay.formats.jsonl:JsonlWriter",
    "har": "replay.formats.har:HarWriter",
    "mitm": "replay.formats.mitm:MitmWriter",
}
_READERS = {
    "jsonl": "replay.formats.jsonl:read_jsonl",
    "har": "replay.formats.har:read_har",
    "mitm": "replay.formats.mitm:read_mitm",
}


class ExchangeWriter(Protocol):
    """A sink for Exchanges. ``close`` flushes (and for HAR, finishes the document)."""

    def write(self, ex: Exchange) -> None: ...

    def close(self) -> None: ...


def _load(spec: str):
    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr)


def open_writer(fmt: str, fp: BinaryIO) -> ExchangeWriter:
    """A writer for ``fmt`` (one of WRITE_FORMATS) over a binary file object."""
    if fmt not in _WRITERS:
        raise FormatError(f"unknown output format {fmt!r}; choose one of {', '.join(WRITE_FORMATS)}")
    return _load(_WRITERS[fmt])(fp)


def detect_format(path: str | Path) -> str:
    """Tell the format of an input file from its first bytes (not its name)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise FormatError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{p}: is a directory, not a capture or exchange file") from None
    except PermissionError:
        raise FormatError(f"{p}: permission denied") from None
    if not head:
        raise FormatError(f"{p}: empty file")
    if head[:2] == b"\x1f\x8b":
        import gzip

        try:
            with gzip.open(p, "rb") as g:
                inner = g.read(64)
        except (OSError, EOFError) as e:
            raise FormatError(f"{p}: broken gzip data ({e})") from None
        if inner[:4] in _PCAP_MAGICS:
            return "pcap"
        if inner[:4] == b"\x0a\x0d\x0d\x0a":
            return "pcapng"
        head = inner
    if head[:4] in _PCAP_MAGICS:
        return "pcap"
    if head[:4] == b"\x0a\x0d\x0d\x0a":
        return "pcapng"
    stripped = head.removeprefix(b"\xef\xbb\xbf").lstrip()  # HARs from Fiddler carry a BOM
    if stripped.startswith(b"{"):
        # Our JSONL records open with the schema version; checked first so that a "log" inside
        # the first record (an id, a header) cannot make it look like HAR.
        if stripped.startswith(b'{"v":'):
            return "jsonl"
        # HAR is one JSON document with a top-level "log"; JSONL is one object per line.
        if b'"log"' in head or p.suffix.lower() == ".har":
            return "har"
        return "jsonl"
    if head[:1].isdigit() and b":" in head[:12]:
        return "mitm"  # tnetstring: "<len>:{...}"
    raise FormatError(
        f"{p}: not a capture or exchange file (expected pcap, pcapng, JSONL, HAR or mitmproxy flows)"
    )


_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
}


def read_exchanges(path: str | Path, *, port: int | None = None) -> Iterator[Exchange]:
    """Exchanges from any supported input: captures are extracted, exchange files are read."""
    fmt = detect_format(path)
    if fmt in ("pcap", "pcapng"):
        from replay.extract import extract_file

        yield from extract_file(path, port=port)
        return
    yield from _load(_READERS[fmt])(path)
