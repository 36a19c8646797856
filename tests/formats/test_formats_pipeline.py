"""The issue's must-hold end to end: pcap -> JSONL -> HAR -> mitmproxy -> back, lossless.

Uses the synthetic capture generator and the extractor when they are present (they are developed
alongside); the hand-built round trips in test_formats_roundtrip.py do not depend on them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from replay.formats.har import HarWriter, read_har
from replay.formats.jsonl import JsonlWriter, read_jsonl
from replay.formats.mitm import MitmWriter, read_mitm

synth = pytest.importorskip("replay.synth")
extract = pytest.importorskip("replay.extract")


def test_capture_through_every_format(tmp_path: Path) -> None:
    cap = tmp_path / "x.pcap"
    synth.generate_pcap(cap, connections=40, seed=7, gzip_share=0.3, post_share=0.4)
    exs = list(extract.extract_file(cap))
    assert len(exs) > 40
    assert any(e.request and e.request.body for e in exs)
    paths = []
    src = exs
    for writer, reader, ext in (
        (JsonlWriter, read_jsonl, ".jsonl"),
        (HarWriter, read_har, ".har"),
        (MitmWriter, read_mitm, ".mitm"),
        (JsonlWriter, read_jsonl, ".jsonl"),
    ):
        p = tmp_path / f"{len(paths)}{ext}"
        with p.open("wb") as f:
            w = writer(f)
            for ex in src:
                w.write(ex)
            w.close()
        paths.append(p)
        src = list(reader(p))
        assert src == exs, ext
    assert paths[0].read_bytes() == paths[-1].read_bytes()
