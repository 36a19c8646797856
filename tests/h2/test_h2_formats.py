"""HTTP/2 exchanges through every format: JSONL (version), HAR (``httpVersion`` ``HTTP/2``),
mitmproxy flows (``HTTP/2.0`` flows, pseudo-headers as the request's fields, as mitmproxy's own
HTTP/2 flows are; they load in mitmproxy), each read back to the same exchange."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_h2_hostile import _extract

from replay.formats.har import HarWriter, read_har
from replay.formats.jsonl import JsonlWriter, read_jsonl
from replay.formats.mitm import MitmWriter, read_mitm
from replay.model import Exchange


def _exchanges() -> list[Exchange]:
    out, _ = _extract()
    assert len(out) == 3 and all(e.request.version == "HTTP/2" for e in out)
    return out


def _same(a: Exchange, b: Exchange) -> None:
    assert b.request.version == "HTTP/2" and b.response.version == "HTTP/2"
    assert b.request.method == a.request.method and b.request.target == a.request.target
    assert b.request.headers == a.request.headers
    assert b.response.status == a.response.status and b.response.body == a.response.body
    assert b.response.headers == a.response.headers
    assert b.meta.get("h2") == a.meta.get("h2")


def test_jsonl(tmp_path: Path) -> None:
    exs = _exchanges()
    p = tmp_path / "x.jsonl"
    with p.open("wb") as f:
        w = JsonlWriter(f)
        for e in exs:
            w.write(e)
    for line in p.read_text().splitlines():
        assert json.loads(line)["request"]["version"] == "HTTP/2"
    for a, b in zip(exs, read_jsonl(p), strict=True):
        _same(a, b)


def test_har(tmp_path: Path) -> None:
    exs = _exchanges()
    p = tmp_path / "x.har"
    with p.open("wb") as f:
        w = HarWriter(f)
        for e in exs:
            w.write(e)
        w.close()
    doc = json.loads(p.read_text())
    entries = doc["log"]["entries"]
    assert {e["request"]["httpVersion"] for e in entries} == {"HTTP/2"}
    assert entries[0]["request"]["url"].startswith("http://shop.test/e")
    for a, b in zip(exs, read_har(p), strict=True):
        _same(a, b)


def test_mitm(tmp_path: Path) -> None:
    exs = _exchanges()
    p = tmp_path / "x.flows"
    with p.open("wb") as f:
        w = MitmWriter(f)
        for e in exs:
            w.write(e)
        w.close()
    from mitmproxy.io import FlowReader

    with p.open("rb") as f:
        flows = list(FlowReader(f).stream())
    for fl, e in zip(flows, exs, strict=True):
        assert fl.request.http_version == "HTTP/2.0" and fl.response.http_version == "HTTP/2.0"
        assert fl.request.authority == "shop.test" and fl.request.scheme == "http"
        assert fl.request.path == e.request.target
        assert not any(k.startswith(":") for k in fl.request.headers)
        assert fl.request.url == f"http://shop.test{e.request.target}"
    for a, b in zip(exs, read_mitm(p), strict=True):
        _same(a, b)
    # a flow of mitmproxy's own (no shadowtap metadata) reads as HTTP/2 too
    for fl in flows:
        fl.metadata.clear()
    q = tmp_path / "foreign.flows"
    from mitmproxy.io import FlowWriter

    with q.open("wb") as f:
        fw = FlowWriter(f)
        for fl in flows:
            fw.add(fl)
    got = list(read_mitm(q))
    assert [g.request.target for g in got] == [e.request.target for e in exs]
    assert all(g.request.version == "HTTP/2" for g in got)
    assert got[0].request.headers[:2] == [(":authority", "shop.test"), (":scheme", "http")]
