"""Pipeline stages, sinks, config validation and the file source (no root needed)."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import yaml

from appliance.live import config as cfgmod
from appliance.live.capture import (
    CaptureError,
    FileSource,
    compile_bpf,
    conn_hash,
    endpoint_bytes,
    frame_conn_hash,
)
from appliance.live.config import ConfigError, FilterConfig, SinkConfig
from appliance.live.daemon import Appliance
from appliance.live.pipeline import (
    Filter,
    Handoff,
    PcapSink,
    RotatingFile,
    Sample,
    Stats,
    build,
)
from replay.extract import extract_file
from replay.formats.jsonl import read_jsonl
from replay.formats.pcap import CaptureReader
from replay.model import ConnKey, Exchange, Request
from replay.synth import generate_pcap

REPO = Path(__file__).resolve().parents[2]


def _ex(method: str = "GET", target: str = "/", host: str = "a.example.com",
        conn: ConnKey | None = None) -> Exchange:
    return Exchange(id="x", conn=conn or ConnKey("10.0.0.1", 40000, "10.0.0.2", 80),
                    request=Request(method, target, headers=[("Host", host)]))


# ---- stages ----------------------------------------------------------------------------

def test_sample_keeps_whole_connections_both_directions_and_about_the_share() -> None:
    s = Sample(30)
    kept = 0
    for port in range(20000, 22000):
        a = ConnKey("10.0.0.1", port, "10.0.0.2", 80)
        b = ConnKey("10.0.0.2", 80, "10.0.0.1", port)  # the same connection seen reversed
        ka, kb = s.process(_ex(conn=a)) is not None, s.process(_ex(conn=b)) is not None
        assert ka == kb
        assert all((s.process(_ex(conn=a)) is not None) == ka for _ in range(3))
        kept += ka
    assert 500 < kept < 700


def _tcp_frame(src: str, sport: int, dst: str, dport: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    return b"\x02" * 12 + b"\x08\x00" + ip + struct.pack("!HHIIBBHHH", sport, dport, 0, 0,
                                                        0x50, 2, 0, 0, 0)


def test_frame_hash_agrees_with_exchange_hash() -> None:
    """The pcap sink samples frames by the same hash the exchange sampler uses."""
    for port in (1, 80, 40000, 65535):
        h = conn_hash(endpoint_bytes("10.0.0.1", port), endpoint_bytes("10.0.0.2", 80))
        assert frame_conn_hash(_tcp_frame("10.0.0.1", port, "10.0.0.2", 80)) == h
        assert frame_conn_hash(_tcp_frame("10.0.0.2", 80, "10.0.0.1", port)) == h
    assert frame_conn_hash(b"\x00" * 20) is None


def test_filters_host_method_path_port_and_exclude() -> None:
    f = Filter(FilterConfig(host=["*.example.com"], method=["POST"], path="^/api/",
                            port=[80]), 0)
    assert f.process(_ex("POST", "/api/x", "shop.example.com:80")) is not None
    assert f.process(_ex("GET", "/api/x")) is None
    assert f.process(_ex("POST", "/web/x")) is None
    assert f.process(_ex("POST", "/api/x", "other.org")) is None
    assert f.process(_ex("POST", "/api/x", conn=ConnKey("1.1.1.1", 5, "2.2.2.2", 8080))) is None
    assert f.process(_ex("POST", "http://a.example.com/api/y")) is not None  # absolute form
    ex = Filter(FilterConfig(path=r"^/health", exclude=True), 1)
    assert ex.process(_ex(target="/healthz")) is None
    assert ex.process(_ex(target="/orders")) is not None


def test_handoff_is_bounded_and_never_blocks() -> None:
    st = Stats()
    h = Handoff(2, st)
    t0 = time.monotonic()
    for _ in range(5):
        assert h.process(_ex()) is not None
    assert time.monotonic() - t0 < 0.1
    assert st.drops["handoff_overflow"] == 3 and h.depth() == 2
    assert h.get(0.01) is not None and h.get(0.01) is not None and h.get(0.01) is None


def test_sanitise_stage_runs_before_every_sink(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k" * 32)
    cfg = cfgmod.parse({"source": {"file": str(REPO / "pyproject.toml")},
                        "pipeline": {"sanitise": {"key_file": str(key)},
                                     "sinks": [{"type": "jsonl",
                                                "path": str(tmp_path / "o.jsonl")},
                                               {"type": "handoff", "size": 10}]}})
    st = Stats()
    p = build(cfg.pipeline, st)
    ex = _ex()
    assert ex.request is not None
    ex.request.headers.append(("Authorization", "Bearer secret-token-123456"))
    p.emit(ex)
    p.close()
    assert p.handoff is not None
    got = p.handoff.get(0.1)
    assert got is not None and got.request is not None
    assert "secret-token-123456" not in str(got.request.headers)
    assert "secret-token-123456" not in (tmp_path / "o.jsonl").read_text()
    assert p.stages[-1].name == "sanitise"


# ---- sinks -----------------------------------------------------------------------------

def test_rotating_file_by_size_keeps_newest_and_trims_partial_records(tmp_path: Path) -> None:
    live = tmp_path / "ex.jsonl"
    live.write_bytes(b'{"a":1}\n{"b":2}\n{"half')  # what a kill -9 can leave
    from appliance.live.pipeline import _trim_partial_line

    f = RotatingFile(live, max_size=100, max_age=3600, keep=3, trim=_trim_partial_line)
    rotated = sorted(tmp_path.glob("ex.*.jsonl"))
    assert len(rotated) == 1 and rotated[0].read_bytes() == b'{"a":1}\n{"b":2}\n'
    for i in range(40):
        time.sleep(0.001)
        f.write(b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 20))
    f.close()
    rotated = sorted(tmp_path.glob("ex.*.jsonl"))
    assert len(rotated) == 3, rotated
    assert all(p.read_bytes().endswith(b"\n") for p in rotated)
    assert f.rotations >= 10


def test_pcap_sink_rotates_by_time_and_files_read_back(tmp_path: Path) -> None:
    sink = PcapSink(SinkConfig(type="pcap", path=str(tmp_path / "cap.pcap"), max_age=0.05,
                               keep=10), 1, None)
    frames = [(1.7e9 + i * 0.001, 1, _tcp_frame("10.0.0.1", 1000 + i, "10.0.0.2", 80))
              for i in range(10)]
    sink.frames(frames[:5])
    time.sleep(0.1)
    sink.tick(time.time())
    sink.frames(frames[5:])
    sink.close()
    files = sorted(tmp_path.glob("cap*.pcap"))
    assert len(files) == 2
    got = [f for p in files for f in CaptureReader(p)]
    assert [g[2] for g in got] == [f[2] for f in frames]
    assert abs(got[3][0] - frames[3][0]) < 1e-6


# ---- the file source through the whole appliance -----------------------------------------

def test_capture_file_source_gives_what_extract_gives(tmp_path: Path) -> None:
    pcap = tmp_path / "in.pcap"
    generate_pcap(pcap, connections=300, seed=3)
    want = sorted((e.request.method, e.request.target) for e in extract_file(pcap) if e.request)
    cfg = cfgmod.parse({"source": {"file": str(pcap)}, "metrics": {"listen": None},
                        "pipeline": {"sanitise": {"enabled": False},
                                     "sinks": [{"type": "jsonl",
                                                "path": str(tmp_path / "out/ex.jsonl")},
                                               {"type": "handoff", "size": 100_000}]}})
    app = Appliance(cfg).start()
    app.wait()
    got = sorted((e.request.method, e.request.target)
                 for e in read_jsonl(tmp_path / "out/ex.jsonl") if e.request)
    assert got == want and len(got) > 300
    assert app.handoff is not None and app.handoff.depth() == len(want)
    snap = app.snapshots()[0]
    assert snap["exchanges"] == len(want) and snap["kernel_drops"] == 0


def test_file_source_rejects_non_captures(tmp_path: Path) -> None:
    bad = tmp_path / "x.pcap"
    bad.write_text("hello")
    with pytest.raises(CaptureError, match=r"x\.pcap"):
        FileSource(bad)


# ---- config -------------------------------------------------------------------------------

BASE = {"source": {"interface": "cap0"},
        "pipeline": {"sanitise": {"enabled": False},
                     "sinks": [{"type": "jsonl", "path": "/tmp/x.jsonl"}]}}


def _with(path: str, value: object) -> dict:
    d = yaml.safe_load(yaml.safe_dump(BASE))
    cur = d
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur.setdefault(k, {}) if not k.isdigit() else cur[int(k)]
    cur[keys[-1]] = value
    return d


@pytest.mark.parametrize(("path", "value", "message"), [
    ("source.interfcae", "x", "source.interfcae: unknown key; did you mean 'interface'?"),
    ("source.filter", "tcp port", "source.filter: bad capture filter 'tcp port'"),
    ("source.filter", "vlan and tcp", "source.filter: bad capture filter 'vlan and tcp': 'vlan' "
     "cannot match"),
    ("source.ring.block_size", "1 parsec", "source.ring.block_size: '1 parsec' is not a size"),
    ("source.ring.block_size", 4096, "source.ring: ring block_size 4096 is too small"),
    ("source.workers", 0, "source.workers: 0 is out of range"),
    ("source.netns", "a/b", "source.netns: 'a/b' is not a namespace name"),
    ("pipeline.sinks.0.type", "s3", "pipeline.sinks[0].type: 's3'; use jsonl, pcap or handoff"),
    ("pipeline.sinks.0.max_age", "soon", "pipeline.sinks[0].max_age: 'soon' is not a duration"),
    ("pipeline.sample", 150, "pipeline.sample.percent: 150 must be a number in (0, 100]"),
    ("pipeline.filters", [{"path": "(["}], "pipeline.filters[0].path: bad regular expression"),
    ("pipeline.filters", [{"mehtod": "GET"}], "pipeline.filters[0].mehtod: unknown key"),
    ("pipeline.sanitise", {}, "pipeline.sanitise: the policy makes pseudonyms and needs a key"),
    ("metrics.listen", "9617", "metrics.listen: '9617' is not HOST:PORT"),
    ("extract.port", 70000, "extract.port: 70000 is out of range"),
])
def test_bad_config_names_the_key_and_the_fix(path: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        cfgmod.parse(_with(path, value))
    assert message in str(e.value)


def test_pcap_sink_next_to_sanitise_needs_explicit_consent(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("k" * 32)
    d = _with("pipeline.sanitise", {"key_file": str(key)})
    d["pipeline"]["sinks"].append({"type": "pcap", "path": "/tmp/c.pcap"})
    with pytest.raises(ConfigError, match=r"sinks\[1\].*raw_unsanitised: true"):
        cfgmod.parse(d)
    d["pipeline"]["sinks"][1]["raw_unsanitised"] = True
    assert cfgmod.parse(d).pipeline.sinks[1].raw_unsanitised


def test_source_needs_exactly_one_kind() -> None:
    with pytest.raises(ConfigError, match="source: give exactly one of interface"):
        cfgmod.parse({"source": {"interface": "a", "vxlan": {}}, "pipeline": BASE["pipeline"]})


def test_example_config_in_the_repo_is_valid() -> None:
    cfg = yaml.safe_load((REPO / "appliance/appliance.example.yaml").read_text())
    cfg["pipeline"]["sanitise"] = {"enabled": False}
    c = cfgmod.parse(cfg)
    assert c.source.interface and c.pipeline.sinks


def test_cli_bad_config_is_one_error_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "a.yaml"
    bad.write_text(yaml.safe_dump(_with("pipeline.sinks.0.type", "kafka")))
    p = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "appliance.cli", "appliance",
                        "run", "--config", str(bad)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "sinks[0].type" in lines[0]
    p = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "appliance.cli", "appliance",
                        "run", "--config", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "no such config file" in p.stderr


def test_bpf_compiles_with_tcpdump() -> None:
    prog = compile_bpf("tcp port 80")
    assert prog[-1][0] == 6 and len(prog) > 5  # ends in a 'ret'
    with pytest.raises(CaptureError, match="bad capture filter 'port 99999'"):
        compile_bpf("port 99999")


def test_sampling_before_extraction_keeps_whole_connections(tmp_path: Path) -> None:
    """With sample < 100 % unsampled connections are dropped as frames, before extraction; what
    comes out is exactly the exchanges of the sampled connections, all of them, complete."""
    pcap = tmp_path / "in.pcap"
    generate_pcap(pcap, connections=400, seed=5)
    s = Sample(40)

    def chosen(e: Exchange) -> bool:
        c = e.conn
        assert c is not None
        return s.keep_hash(conn_hash(endpoint_bytes(c.client_ip, c.client_port),
                                     endpoint_bytes(c.server_ip, c.server_port)))

    want = sorted((e.id.split("c", 1)[0], e.request.target) for e in extract_file(pcap)
                  if e.request and chosen(e))
    cfg = cfgmod.parse({"source": {"file": str(pcap)}, "metrics": {"listen": None},
                        "pipeline": {"sample": 40, "sanitise": {"enabled": False},
                                     "sinks": [{"type": "jsonl",
                                                "path": str(tmp_path / "o/ex.jsonl")}]}})
    app = Appliance(cfg).start()
    app.wait()
    got = list(read_jsonl(tmp_path / "o/ex.jsonl"))
    assert sorted(("", e.request.target) for e in got if e.request) == \
        sorted(("", t) for _, t in want)
    assert all(e.completeness.complete for e in got)
    snap = app.snapshots()[0]
    total = sum(1 for _ in CaptureReader(pcap))
    assert snap["packets"] == total and snap["extracted_packets"] < 0.7 * total


def test_in_process_appliance_serves_metrics_and_health(tmp_path: Path) -> None:
    """The demo's path: an in-process appliance with its own /metrics and /healthz."""
    import urllib.request

    pcap = tmp_path / "in.pcap"
    generate_pcap(pcap, connections=50, seed=2)
    cfg = cfgmod.parse({"source": {"file": str(pcap)}, "metrics": {"listen": "127.0.0.1:0"},
                        "pipeline": {"sanitise": {"enabled": False},
                                     "sinks": [{"type": "handoff", "size": 10}]}})
    app = Appliance(cfg)
    server = app.serve_metrics()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/healthz")  # not started yet: 503
        app.start()
        app.wait()
        with urllib.request.urlopen(base + "/metrics") as r:
            text = r.read().decode()
        assert "shadowtap_exchanges_emitted_total" in text
        assert 'shadowtap_queue_capacity{queue="handoff",worker="0"} 10.0' in text
        assert 'shadowtap_userspace_drops_total{reason="handoff_overflow",worker="0"}' in text
    finally:
        server.stop()


def test_dropping_bare_acks_in_the_kernel_changes_no_exchange(tmp_path: Path) -> None:
    """``skip_bare_acks`` filters a third of the packets; on a capture without loss the
    exchanges are the same, byte for byte. Checked by running the very filter expression
    through tcpdump over a synthetic capture. (Under loss the extractor uses the peer's ACKs to
    declare holes early, hence the option is off by default.)"""
    from appliance.live.capture import kernel_filter
    from replay.formats.jsonl import exchange_to_record

    pcap = tmp_path / "in.pcap"
    generate_pcap(pcap, connections=300, seed=9, reorder=0.01, retransmit=0.01)
    small = tmp_path / "noack.pcap"
    expr = kernel_filter("tcp", True)
    assert expr is not None
    subprocess.run(["tcpdump", "-r", str(pcap), "-w", str(small), expr], check=True,
                   capture_output=True)
    n_all = sum(1 for _ in CaptureReader(pcap))
    n_small = sum(1 for _ in CaptureReader(small))
    assert n_small < 0.8 * n_all

    def records(p: Path) -> list[bytes]:
        out = []
        for e in extract_file(p):
            d = exchange_to_record(e)
            d.pop("id")
            out.append(orjson.dumps(d, option=orjson.OPT_SORT_KEYS))
        return sorted(out)

    assert records(small) == records(pcap)
    assert not cfgmod.parse(BASE).source.skip_bare_acks
    assert cfgmod.parse(_with("source.skip_bare_acks", True)).source.skip_bare_acks


def test_jsonl_sink_takes_line_blocks_and_rotates_as_line_by_line(tmp_path: Path) -> None:
    """The native extractor hands the log whole blocks of lines; files must end exactly where
    writing them one by one would have rotated them."""
    import random

    from appliance.live.pipeline import JsonlSink
    from replay.formats.jsonl import exchange_line

    exs = list(extract_file(_small_capture(tmp_path)))
    lines = [exchange_line(e) for e in exs]
    outs = []
    for mode in ("one", "blocks"):
        cfg = SinkConfig(type="jsonl", path=str(tmp_path / mode / "ex.jsonl"), max_size=20_000,
                         keep=10_000)
        sink = JsonlSink(cfg, Stats())
        if mode == "one":
            for e in exs:
                sink.process(e)
        else:
            rng = random.Random(1)
            i = 0
            while i < len(lines):
                k = rng.randint(1, 40)
                sink.write_lines(b"".join(lines[i:i + k]))
                i += k
        sink.close()
        files = sorted((tmp_path / mode).iterdir(), key=lambda p: (p.name == "ex.jsonl", p.name))
        outs.append([p.read_bytes() for p in files])
    assert len(outs[0]) > 5
    assert outs[1] == outs[0]


def _small_capture(tmp_path: Path) -> Path:
    pcap = tmp_path / "small.pcap"
    if not pcap.exists():
        generate_pcap(pcap, connections=200, seed=9, chunked_share=0.5)
    return pcap


def test_a_log_only_pipeline_gets_native_lines_and_writes_the_same_log(tmp_path: Path) -> None:
    """A pipeline whose only sinks are JSONL logs takes the native path's finished lines (no
    Exchange objects); it must write what the object path writes (a filter that keeps
    everything forces that path), and count and time every exchange the same."""
    import orjson

    pcap = _small_capture(tmp_path)
    logs = []
    for name, filters in (("lines", []), ("objects", [{"method": ["GET", "POST", "PUT",
                                                                    "HEAD", "DELETE",
                                                                    "OPTIONS", "PATCH"]}])):
        cfg = cfgmod.parse({"source": {"file": str(pcap)}, "metrics": {"listen": None},
                            "pipeline": {"sanitise": {"enabled": False}, "filters": filters,
                                         "sinks": [{"type": "jsonl",
                                                    "path": str(tmp_path / name / "ex.jsonl")}]}})
        app = Appliance(cfg).start()
        app.wait()
        w = app.worker
        assert w is not None
        native = w.extractor.native
        if native is None:
            pytest.skip("replay._fastpath is not built")
        assert (native.stats()["lines"] > 0) == (name == "lines")
        snap = app.snapshots()[0]
        recs = [orjson.loads(x) for x in (tmp_path / name / "ex.jsonl").read_bytes().splitlines()]
        for r in recs:  # ids carry the worker's boot time
            r["id"] = r["id"].split("-", 1)[1]
        logs.append((recs, snap["exchanges"], sum(w.stats.latency_counts)))
    assert logs[0][0] == logs[1][0] and len(logs[0][0]) > 500
    assert logs[0][1:] == logs[1][1:] == (len(logs[0][0]), len(logs[0][0]))
