"""HAR 1.2 output: standard fields a HAR consumer expects, haralyzer loads it, bad HAR fails."""

from __future__ import annotations

import base64
import io
import json
from datetime import datetime
from pathlib import Path

import haralyzer
import pytest
from formats_samples import ALL_BYTES, T0, sample_exchanges

from replay.errors import FormatError
from replay.formats.har import HarWriter, read_har
from replay.model import Exchange

SAMPLES = sample_exchanges()


def har_bytes(exs: list[Exchange]) -> bytes:
    buf = io.BytesIO()
    w = HarWriter(buf)
    for ex in exs:
        w.write(ex)
    w.close()
    return buf.getvalue()


def entries_by_id(exs: list[Exchange]) -> dict[str, dict]:
    doc = json.loads(har_bytes(exs))
    return {e["_shadowtap"]["id"]: e for e in doc["log"]["entries"]}


def test_loads_in_haralyzer() -> None:
    exs = list(SAMPLES.values())
    parser = haralyzer.HarParser(json.loads(har_bytes(exs)))
    assert parser.creator["name"] == "shadowtap"
    assert parser.version == "1.2"
    entries = [e for page in parser.pages for e in page.entries]
    assert len(entries) == len(exs)
    by_url = {(e.request.method, e.url): e for e in entries}
    e = by_url[("GET", "http://example.com/search?q=a+b&q=c&empty=&flag")]
    assert e.status == 200
    assert e.response.text.startswith("héllo wörld")
    assert e.startTime.timestamp() == pytest.approx(T0, abs=1e-6)
    assert e.time == pytest.approx(20.0, abs=0.01)
    assert e.serverAddress == "10.0.0.2"
    assert e.port == 51234  # haralyzer reads HAR's "connection" as an int
    assert e.request.get_header_value("x-dup") == "one"


def test_empty_writer_is_a_valid_document() -> None:
    doc = json.loads(har_bytes([]))
    assert doc == {
        "log": {"version": "1.2", "creator": {"name": "shadowtap", "version": "0.1.0"},
                "entries": []}
    }  # fmt: skip
    haralyzer.HarParser(doc)


def test_standard_fields() -> None:
    es = entries_by_id(list(SAMPLES.values()))
    e = es["c1-1"]
    assert datetime.fromisoformat(e["startedDateTime"]).timestamp() == pytest.approx(T0, abs=1e-6)
    assert e["timings"]["send"] == pytest.approx(1.0)
    assert e["timings"]["wait"] == pytest.approx(11.5)
    assert e["timings"]["receive"] == pytest.approx(7.5)
    assert e["time"] == pytest.approx(20.0)
    req = e["request"]
    assert req["httpVersion"] == "HTTP/1.1"
    assert req["queryString"] == [
        {"name": "q", "value": "a b"}, {"name": "q", "value": "c"},
        {"name": "empty", "value": ""}, {"name": "flag", "value": ""},
    ]  # fmt: skip
    assert req["cookies"] == [{"name": "sid", "value": "abc"}, {"name": "theme", "value": "dark"}]
    assert [h["name"] for h in req["headers"]][2:5] == ["X-Dup", "x-dup", "X-DUP"]
    assert req["bodySize"] == 0 and "postData" not in req
    assert req["headersSize"] == len(
        b"GET /search?q=a+b&q=c&empty=&flag HTTP/1.1\r\n"
        + b"".join(f"{h['name']}: {h['value']}\r\n".encode() for h in req["headers"])
        + b"\r\n"
    )
    resp = e["response"]
    assert resp["cookies"][0] == {"name": "a", "value": "1", "path": "/", "httpOnly": True}
    assert resp["cookies"][1]["secure"] is True
    assert resp["content"]["mimeType"] == "text/plain; charset=utf-8"
    assert e["_shadowtap"]["response"]["trailers"] == [["X-Checksum", "abc123"],
                                                      ["x-checksum", "again"]]  # fmt: skip

    # binary request body: base64 with a marker; gzip response: decoded text, raw kept aside
    e = es["c1-2"]
    pd = e["request"]["postData"]
    assert pd["_encoding"] == "base64" and base64.b64decode(pd["text"]) == ALL_BYTES
    assert pd["mimeType"] == "application/octet-stream"
    assert e["request"]["url"] == "http://example.com:8080/upload"
    c = e["response"]["content"]
    assert c["text"] == '{"ok": true}' and c["size"] == 12
    assert c["compression"] == 12 - e["response"]["bodySize"]
    assert "raw" in e["_shadowtap"]["response"]

    e = es["c1-3"]  # form post, brotli response
    assert e["request"]["postData"]["params"] == [
        {"name": "user", "value": "alice"}, {"name": "pass", "value": "s cret"},
        {"name": "empty", "value": ""},
    ]  # fmt: skip
    assert e["response"]["content"]["text"] == "<html>welcome</html>"

    e = es["c2-1"]  # absolute-form kept as the URL
    assert e["request"]["url"] == "http://Example.COM:8080/p/a?x=1"
    assert e["response"]["redirectURL"] == "http://example.com/new"
    assert es["c3-1"]["request"]["url"] == "http://example.com:443/"
    assert es["c4-1"]["request"]["url"] == "http://[2001:db8::2]:8080"
    assert es["c4-1"]["_shadowtap"]["request"]["target"] == "*"

    e = es["c6-1"]  # request only: HAR needs a response; status 0 like browsers
    assert e["response"]["status"] == 0 and e["_shadowtap"]["no_response"] is True
    e = es["c7-1"]  # response only: placeholder request
    assert e["request"]["method"] == "UNKNOWN" and e["_shadowtap"]["no_request"] is True

    e = es["c8-1"]  # HTTP/1.0, binary response, no Host: URL from the server address
    assert e["request"]["httpVersion"] == "HTTP/1.0"
    assert e["request"]["url"] == "http://10.0.0.2/old"
    assert e["response"]["content"]["encoding"] == "base64"
    assert e["_shadowtap"]["completeness"]["response_gaps"] == [[8, 100], [500, 3]]

    e = es["c11-1"]  # truncated gzip cannot be decoded: the bytes as sent, base64
    assert e["response"]["content"]["encoding"] == "base64"
    assert "compression" not in e["response"]["content"]
    assert e["request"]["url"] == "http://unknown.invalid/x"
    assert "serverIPAddress" not in e and "connection" not in e

    e = es["c5-1"]
    assert [r["status"] for r in e["_shadowtap"]["interim"]] == [100, 103]


def test_foreign_har_best_effort(tmp_path: Path) -> None:
    """A browser-style HAR (HTTP/2 pseudo-headers, decoded body, a failed request) reads."""
    doc = {
        "log": {
            "version": "1.2",
            "creator": {"name": "WebInspector", "version": "537.36"},
            "entries": [
                {
                    "startedDateTime": "2024-05-01T10:00:00.000Z",
                    "time": 30,
                    "request": {
                        "method": "GET",
                        "url": "https://example.com/a/b?x=1#frag",
                        "httpVersion": "http/2.0",
                        "headers": [
                            {"name": ":method", "value": "GET"},
                            {"name": ":authority", "value": "example.com"},
                            {"name": "accept", "value": "*/*"},
                        ],
                        "queryString": [], "cookies": [], "headersSize": -1, "bodySize": 0,
                    },
                    "response": {
                        "status": 200, "statusText": "", "httpVersion": "http/2.0",
                        "headers": [{"name": "content-encoding", "value": "gzip"}],
                        "cookies": [],
                        "content": {"size": 5, "mimeType": "text/plain", "text": "hello"},
                        "redirectURL": "", "headersSize": -1, "bodySize": 25,
                    },
                    "cache": {},
                    "timings": {"blocked": 5, "dns": -1, "connect": -1, "send": 1, "wait": 20,
                                "receive": 4},
                },
                {
                    "startedDateTime": "2024-05-01T10:00:01+00:00",
                    "time": 0,
                    "request": {"method": "POST", "url": "http://example.org", "headers": [],
                                "postData": {"mimeType": "text/plain", "text": "hi"}},
                    "response": {"status": 0, "headers": [], "content": {}},
                    "timings": {},
                },
            ],
        }
    }  # fmt: skip
    p = tmp_path / "browser.har"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())
    a, b = list(read_har(p))
    assert a.request is not None and a.response is not None
    assert a.request.target == "/a/b?x=1"
    assert a.request.headers == [("Host", "example.com"), ("accept", "*/*")]
    assert a.response.body == b"hello"
    assert "har-body-decoded" in a.completeness.notes
    assert a.ts_request_start == pytest.approx(1714557600.005)
    assert a.latency == pytest.approx(0.020)
    assert b.request is not None and b.request.body == b"hi" and b.request.target == "/"
    assert b.response is None and b.completeness.unpaired


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"GET / HTTP/1.1\r\n", r"x\.har: not a HAR file: not valid JSON"),
        (b'{"log": {"version": "1.2"', r"x\.har: not a HAR file: not valid JSON"),
        (b'{"v":1,"id":"x"}', r"x\.har: not a HAR file \(no log\.entries list\)"),
        (b'{"log": {"entries": {}}}', r"x\.har: not a HAR file \(no log\.entries list\)"),
        (b"[1, 2, 3]", r"x\.har: not a HAR file \(no log\.entries list\)"),
        (b'{"log": {"entries": [42]}}', r"x\.har: HAR entry 0: entry is not an object"),
        (
            b'{"log": {"entries": [{"request": {"method": "GET"}, "response": {}}]}}',
            r"x\.har: HAR entry 0: request has no method or url",
        ),
        (
            b'{"log": {"entries": [{"request": {"method": "GET", "url": "http://a/"},'
            b' "response": {"status": "ok"}}]}}',
            r"x\.har: HAR entry 0: response status is not an integer",
        ),
    ],
)
def test_not_har(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "x.har"
    p.write_bytes(content)
    with pytest.raises(FormatError, match=message):
        list(read_har(p))


def test_bad_entry_after_good_ones(tmp_path: Path) -> None:
    doc = json.loads(har_bytes([SAMPLES["http09"], SAMPLES["head_empty_body"]]))
    doc["log"]["entries"].append({"request": 1})
    p = tmp_path / "x.har"
    p.write_text(json.dumps(doc))
    got = []
    with pytest.raises(FormatError, match=r"x\.har: HAR entry 2: 'request' is not an object"):
        for ex in read_har(p):
            got.append(ex)
    assert [e.id for e in got] == ["c9-1", "c13-1"]
