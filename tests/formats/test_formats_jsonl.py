"""The JSONL exchange log: the documented schema, and one-line errors for bad input."""

from __future__ import annotations

import base64
import gzip
import io
from pathlib import Path

import orjson
import pytest
from formats_samples import ALL_BYTES, sample_exchanges

from replay.errors import FormatError
from replay.formats.jsonl import JsonlWriter, exchange_to_record, read_jsonl
from replay.model import Exchange, Request

SAMPLES = sample_exchanges()


def dump(exs: list[Exchange]) -> bytes:
    buf = io.BytesIO()
    w = JsonlWriter(buf)
    for ex in exs:
        w.write(ex)
    w.close()
    return buf.getvalue()


def test_one_object_per_line_with_version_first() -> None:
    data = dump(list(SAMPLES.values()))
    lines = data.split(b"\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == len(SAMPLES)
    for line in lines[:-1]:
        assert line.startswith(b'{"v":1,"id":')
        orjson.loads(line)


def test_schema_fields_of_a_full_exchange() -> None:
    rec = orjson.loads(dump([SAMPLES["origin_dup_headers_trailers"]]))
    assert list(rec) == [
        "v", "id", "conn", "ts_request_start", "ts_request_end", "ts_response_start",
        "ts_response_end", "request", "response",
    ]  # fmt: skip
    assert rec["conn"] == {
        "client_ip": "10.0.0.1", "client_port": 51234, "server_ip": "10.0.0.2", "server_port": 80
    }  # fmt: skip
    req = rec["request"]
    assert req["method"] == "GET" and req["version"] == "HTTP/1.1"
    assert req["target"] == "/search?q=a+b&q=c&empty=&flag"
    assert req["headers"][2:5] == [["X-Dup", "one"], ["x-dup", "two"], ["X-DUP", "three"]]
    assert "body" not in req and "trailers" not in req  # empty: left out
    resp = rec["response"]
    assert resp["status"] == 200 and resp["reason"] == "OK"
    assert resp["body"].startswith("héllo wörld ✓ 🚀")  # UTF-8 text kept as text
    assert "body_encoding" not in resp
    assert resp["trailers"] == [["X-Checksum", "abc123"], ["x-checksum", "again"]]


def test_binary_body_is_base64_with_marker() -> None:
    rec = orjson.loads(dump([SAMPLES["post_binary_gzip_response"]]))
    assert rec["request"]["body_encoding"] == "base64"
    assert base64.b64decode(rec["request"]["body"]) == ALL_BYTES


def test_optional_parts() -> None:
    rec = exchange_to_record(SAMPLES["expect_100_interim"])
    assert [r["status"] for r in rec["interim"]] == [100, 103]
    rec = exchange_to_record(SAMPLES["request_only_timed_out"])
    assert "response" not in rec and "ts_response_start" not in rec
    assert rec["completeness"] == {"timed_out": True, "unpaired": True, "notes": ["no-response"]}
    rec = exchange_to_record(SAMPLES["response_only"])
    assert "request" not in rec
    rec = exchange_to_record(SAMPLES["websocket_upgrade_meta"])
    assert rec["tunnel"] == "upgrade:websocket" and rec["meta"]["weight"] == 0.25
    rec = exchange_to_record(Exchange(id="bare"))
    assert rec == {"v": 1, "id": "bare"}


def test_blank_lines_skipped_and_gzip_read(tmp_path: Path) -> None:
    exs = list(SAMPLES.values())[:3]
    data = dump(exs)
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"\n" + data.replace(b"\n", b"\n\r\n", 1))
    assert list(read_jsonl(p)) == exs
    gz = tmp_path / "x.jsonl.gz"
    gz.write_bytes(gzip.compress(data))
    assert list(read_jsonl(gz)) == exs


def test_unserialisable_meta_names_the_exchange() -> None:
    with pytest.raises(TypeError, match="exchange m1"):
        dump([Exchange(id="m1", meta={"x": object()})])


def test_throughput_smoke() -> None:
    """Not a benchmark; a guard against a hot-path regression of an order of magnitude."""
    import time

    ex = SAMPLES["origin_dup_headers_trailers"]
    n = 20_000
    t = time.perf_counter()
    data = dump([ex] * n)
    elapsed = time.perf_counter() - t
    assert n / elapsed > 20_000, f"{n / elapsed:.0f} exchanges/s written"
    assert data.count(b"\n") == n


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming file and line, never a traceback; good lines before it still read.


def _bad(tmp_path: Path, lines: list[bytes]) -> tuple[Path, list[Exchange]]:
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    got: list[Exchange] = []
    return p, got


GOOD = dump([Exchange(id="ok", request=Request("GET", "/"))]).rstrip(b"\n")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (b'{"v":1,"id":"x",', r"x\.jsonl:3: not valid JSON \("),
        (b"GET / HTTP/1.1", r"x\.jsonl:3: not valid JSON \("),
        (b"[1,2]", r"x\.jsonl:3: not an exchange record: not a JSON object"),
        (b'{"id":"x"}', r"x\.jsonl:3: .*no schema version 'v'"),
        (b'{"v":2,"id":"x"}', r"x\.jsonl:3: .*schema version 2 is not supported"),
        (b'{"v":1}', r"x\.jsonl:3: .*'id' is missing"),
        (b'{"v":1,"id":"x","request":{"method":"GET"}}', r"x\.jsonl:3: .*missing 'target'"),
        (
            b'{"v":1,"id":"x","request":{"method":"GET","target":"/","headers":[["a"]]}}',
            r"x\.jsonl:3: .*not a \[name, value\] pair",
        ),
        (
            b'{"v":1,"id":"x","response":{"status":"200"}}',
            r"x\.jsonl:3: .*status' is not an integer",
        ),
        (
            b'{"v":1,"id":"x","response":{"status":200,"body":"!!","body_encoding":"base64"}}',
            r"x\.jsonl:3: .*not valid base64",
        ),
        (
            b'{"v":1,"id":"x","response":{"status":200,"body":"a","body_encoding":"rot13"}}',
            r"x\.jsonl:3: .*unknown body_encoding 'rot13'",
        ),
        (b'{"v":1,"id":"x","conn":{"client_ip":"a"}}', r"x\.jsonl:3: .*'conn' is incomplete"),
        (b'{"v":1,"id":"x","ts_request_start":"now"}', r"x\.jsonl:3: .*not a number"),
        (b'{"v":1,"id":"x","completeness":{"request_gaps":[1]}}', r"x\.jsonl:3: .*completeness"),
    ],
)
def test_bad_line(tmp_path: Path, bad_line: bytes, message: str) -> None:
    p, got = _bad(tmp_path, [GOOD, GOOD, bad_line, GOOD])
    with pytest.raises(FormatError, match=message):
        for ex in read_jsonl(p):
            got.append(ex)
    assert [e.id for e in got] == ["ok", "ok"]  # what came before the bad line was delivered


def test_har_given_as_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{\n  "log": {"version": "1.2", "entries": []}\n}\n')
    with pytest.raises(FormatError, match=r"x\.jsonl:1: not valid JSON"):
        list(read_jsonl(p))


def test_missing_file_and_broken_gzip(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"nope\.jsonl: no such file"):
        list(read_jsonl(tmp_path / "nope.jsonl"))
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(gzip.compress(dump(list(SAMPLES.values())))[:200])
    with pytest.raises(FormatError, match=r"cut\.jsonl\.gz:\d+: broken gzip data"):
        list(read_jsonl(p))
