"""mitmproxy flow files: mitmproxy's own reader and ``mitmdump -nr`` read what we write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from formats_samples import sample_exchanges

from replay.errors import FormatError
from replay.formats.mitm import MitmWriter, read_mitm
from replay.model import Exchange

SAMPLES = sample_exchanges()
MITMDUMP = Path(sys.executable).parent / "mitmdump"


def write(path: Path, exs: list[Exchange]) -> Path:
    with path.open("wb") as f:
        w = MitmWriter(f)
        for ex in exs:
            w.write(ex)
        w.close()
    return path


def test_mitmproxy_flowreader_reads_it(tmp_path: Path) -> None:
    from mitmproxy import http
    from mitmproxy.io import FlowReader

    exs = list(SAMPLES.values())
    p = write(tmp_path / "x.mitm", exs)
    with p.open("rb") as f:
        flows = list(FlowReader(f).stream())
    assert len(flows) == len(exs)
    by_id = {fl.metadata["shadowtap"]["id"]: fl for fl in flows}
    for fl in flows:
        assert isinstance(fl, http.HTTPFlow)

    fl = by_id["c1-1"]
    assert fl.request.method == "GET"
    assert fl.request.pretty_url == "http://example.com/search?q=a+b&q=c&empty=&flag"
    assert fl.request.headers.get_all("x-dup") == ["one", "two", "three"]
    assert fl.response is not None and fl.response.status_code == 200
    assert fl.response.trailers is not None and fl.response.trailers.get_all("X-Checksum") == [
        "abc123",
        "again",
    ]
    assert fl.client_conn.peername == ("10.0.0.1", 51234)
    assert fl.server_conn.address == ("10.0.0.2", 80)

    fl = by_id["c1-2"]  # gzip response: mitmproxy keeps raw bytes and decodes on demand
    assert fl.response is not None and fl.response.content == b'{"ok": true}'

    fl = by_id["c2-1"]  # absolute-form as mitmproxy's own HTTP/1 reader would store it
    assert fl.request.first_line_format == "absolute"
    assert (fl.request.host, fl.request.port) == ("Example.COM", 8080)

    fl = by_id["c3-1"]
    assert fl.request.first_line_format == "authority" and fl.request.authority == (
        "example.com:443"
    )

    fl = by_id["c6-1"]  # request only: no response, an error saying why
    assert fl.response is None and fl.error is not None
    assert fl.error.msg == "no response captured"

    fl = by_id["c5-1"]
    assert [r["status"] for r in fl.metadata["shadowtap"]["interim"]] == [100, 103]


def test_mitmdump_reads_it(tmp_path: Path) -> None:
    exs = list(SAMPLES.values())
    p = write(tmp_path / "x.mitm", exs)
    r = subprocess.run([str(MITMDUMP), "-nr", str(p)], capture_output=True, timeout=120)
    # mitmdump echoes raw target bytes (latin-1 ones included), so decode leniently
    out, err = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, err
    assert "Traceback" not in out + err
    assert "GET http://example.com/search?q=a+b&q=c&empty=&flag" in out
    assert "<< 200 OK" in out
    assert "CONNECT example.com:443" in out
    assert "<< 500 Internal Server Error" in out
    assert "<< no response captured" in out
    # every flow is listed (mitmdump prints one at its response or error)
    assert out.count("<<") == len(exs)


def test_foreign_flows_best_effort(tmp_path: Path) -> None:
    """Flows recorded by mitmproxy itself (no shadowtap metadata) read; TCP flows are skipped."""
    from mitmproxy.io import FlowWriter
    from mitmproxy.test import tflow

    http_flow = tflow.tflow(resp=True)
    failed = tflow.tflow(err=True)
    p = tmp_path / "foreign.mitm"
    with p.open("wb") as f:
        w = FlowWriter(f)
        w.add(http_flow)
        w.add(tflow.ttcpflow())
        w.add(failed)
    a, b = list(read_mitm(p))
    assert a.id == http_flow.id
    assert a.request is not None and a.request.method == "GET"
    assert a.request.target == "/path"
    assert a.response is not None and a.response.status == 200
    assert a.conn is not None and a.conn.client_ip == "127.0.0.1"
    assert a.conn.server_ip == "192.168.0.1"
    assert b.response is None and b.completeness.unpaired
    assert any(n.startswith("mitmproxy-error:") for n in b.completeness.notes)


def test_truncated_file(tmp_path: Path) -> None:
    exs = list(SAMPLES.values())
    p = write(tmp_path / "x.mitm", exs)
    data = p.read_bytes()
    cut = tmp_path / "cut.mitm"
    cut.write_bytes(data[: len(data) - 50])
    got: list[Exchange] = []
    with pytest.raises(
        FormatError,
        match=rf"cut\.mitm: truncated or corrupt mitmproxy flow file after {len(exs) - 1} flows",
    ):
        for ex in read_mitm(cut):
            got.append(ex)
    assert got == exs[:-1]  # the flows before the cut are delivered intact


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"12:hello world!,", r"x\.mitm: .*mitmproxy flow file after 0 flows"),
        (b"5:{abc", r"x\.mitm: truncated or corrupt mitmproxy flow file after 0 flows"),
        (b"not a flow file at all", r"x\.mitm: truncated or corrupt mitmproxy flow file"),
    ],
)
def test_not_a_flow_file(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "x.mitm"
    p.write_bytes(content)
    with pytest.raises(FormatError, match=message):
        list(read_mitm(p))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"gone\.mitm: no such file"):
        list(read_mitm(tmp_path / "gone.mitm"))
