"""detect_format on exchange files: the corners fixed alongside the JSONL/HAR writers."""

from __future__ import annotations

import json
from pathlib import Path

from replay.formats import detect_format, read_exchanges
from replay.formats.jsonl import JsonlWriter
from replay.model import Exchange, Request


def test_jsonl_with_log_in_first_record_is_not_har(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    with p.open("wb") as f:
        JsonlWriter(f).write(Exchange(id="log", request=Request("GET", '/"log"')))
    assert detect_format(p) == "jsonl"
    assert [e.id for e in read_exchanges(p)] == ["log"]


def test_har_with_bom(tmp_path: Path) -> None:
    p = tmp_path / "fiddler.json"
    doc = {"log": {"version": "1.2", "creator": {"name": "Fiddler", "version": "5"}, "entries": []}}
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc, indent=2).encode())
    assert detect_format(p) == "har"
    assert list(read_exchanges(p)) == []
