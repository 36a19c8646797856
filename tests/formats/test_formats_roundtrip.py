"""Round trips: Exchange -> each format -> Exchange must give back an equal Exchange.

Equality is the dataclass ``==``: every field, including header order/case/duplicates, exact body
bytes, trailers, interim responses, exact float timestamps, completeness and meta.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from formats_samples import sample_exchanges

from replay.formats import detect_format, open_writer, read_exchanges
from replay.formats.har import HarWriter, read_har
from replay.formats.jsonl import JsonlWriter, read_jsonl
from replay.formats.mitm import MitmWriter, read_mitm
from replay.model import Exchange

SAMPLES = sample_exchanges()
FORMATS = {
    "jsonl": (JsonlWriter, read_jsonl, ".jsonl"),
    "har": (HarWriter, read_har, ".har"),
    "mitm": (MitmWriter, read_mitm, ".mitm"),
}


def write(fmt: str, path: Path, exchanges: list[Exchange]) -> Path:
    writer_cls = FORMATS[fmt][0]
    with path.open("wb") as f:
        w = writer_cls(f)
        for ex in exchanges:
            w.write(ex)
        w.close()
    return path


def roundtrip(fmt: str, tmp_path: Path, exchanges: list[Exchange]) -> list[Exchange]:
    _, reader, ext = FORMATS[fmt]
    p = write(fmt, tmp_path / f"out{ext}", exchanges)
    return list(reader(p))


def assert_same(got: list[Exchange], want: list[Exchange]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        # Field by field first, for a readable failure; then the whole thing.
        assert g.request == w.request, w.id
        assert g.response == w.response, w.id
        assert g.interim == w.interim, w.id
        assert g == w


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", SAMPLES)
def test_roundtrip_each_sample(fmt: str, name: str, tmp_path: Path) -> None:
    ex = SAMPLES[name]
    assert_same(roundtrip(fmt, tmp_path, [ex]), [ex])


@pytest.mark.parametrize("fmt", FORMATS)
def test_roundtrip_all_in_one_file(fmt: str, tmp_path: Path) -> None:
    exs = list(SAMPLES.values())
    assert_same(roundtrip(fmt, tmp_path, exs), exs)


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_file_roundtrip(fmt: str, tmp_path: Path) -> None:
    assert roundtrip(fmt, tmp_path, []) == []


def test_chain_jsonl_har_mitm_back(tmp_path: Path) -> None:
    """The issue's must-hold: JSONL -> HAR -> mitmproxy -> back keeps everything."""
    exs = list(SAMPLES.values())
    p1 = write("jsonl", tmp_path / "a.jsonl", exs)
    p2 = write("har", tmp_path / "b.har", list(read_jsonl(p1)))
    p3 = write("mitm", tmp_path / "c.mitm", list(read_har(p2)))
    p4 = write("jsonl", tmp_path / "d.jsonl", list(read_mitm(p3)))
    assert_same(list(read_jsonl(p4)), exs)
    assert p4.read_bytes() == p1.read_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_through_dispatcher(fmt: str, tmp_path: Path) -> None:
    """open_writer / detect_format / read_exchanges find these entry points."""
    ext = FORMATS[fmt][2]
    p = tmp_path / f"x{ext}"
    exs = list(SAMPLES.values())
    with p.open("wb") as f:
        w = open_writer(fmt, f)
        for ex in exs:
            w.write(ex)
        w.close()
    assert detect_format(p) == fmt
    assert_same(list(read_exchanges(p)), exs)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gzip_compressed_input(fmt: str, tmp_path: Path) -> None:
    """detect_format looks inside gzip, so every reader must gunzip transparently."""
    ext = FORMATS[fmt][2]
    exs = list(SAMPLES.values())
    plain = write(fmt, tmp_path / f"x{ext}", exs)
    gz = tmp_path / f"x{ext}.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert detect_format(gz) == fmt
    assert_same(list(read_exchanges(gz)), exs)
