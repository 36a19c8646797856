"""The appliance on a real mirrored link: exactly-once exchanges, VXLAN, kill -9, SIGHUP,
SIGTERM, fanout, kernel drop counters and the metrics endpoint, all in private namespaces."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apphelpers import (
    COLLECTOR,
    Daemon,
    Server,
    Topo,
    check_exactly_once,
    free_port,
    kernel_path_drops,
    log_files,
    read_log,
    run_load,
    topology,
    wait_for,
    write_config,
)

from appliance.live.capture import RingConfig, RingSource
from netconfig import netns as nsmod

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topo]:
    with topology(tmp_path_factory.mktemp("topo"), vxlan=True) as t, Server(t.server):
        yield t


def _daemon(tmp: Path, topo: Topo, **kw: object) -> tuple[Daemon, Path]:
    out = tmp / "out"
    port = free_port()
    cfg = write_config(tmp / "appliance.yaml", topo, out, metrics_port=port, **kw)  # type: ignore[arg-type]
    return Daemon(cfg, port, tmp / "daemon.log"), out


def _hostile_frames(topo: Topo, n: int = 500) -> None:
    """Garbage on the capture port: truncated headers, bad lengths, random bytes."""
    s = nsmod.socket_in_netns(topo.server, socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("tapm", 0))
    eth = b"\x02" * 6 + b"\x04" * 6
    shapes = [eth + b"\x08\x00" + b"\x45", eth + b"\x08\x00" + b"\x4f" + os.urandom(60),
              eth + b"\x08\x00" + b"\x45\x00\xff\xff" + os.urandom(16) + b"\x06" + os.urandom(30),
              eth + b"\x86\xdd" + os.urandom(30), eth + b"\x81\x00" + os.urandom(4),
              eth + b"\x08\x00" + b"\x45\x00\x00\x28" + b"\0" * 5 + b"\x06" + b"\0" * 10
              + b"\0\x50\0\x50" + os.urandom(8) + b"\xf0\x02" + os.urandom(6)]
    for i in range(n):
        s.send(shapes[i % len(shapes)] if i % 7 else os.urandom(14 + i % 200))
    s.close()


def test_mirrored_http_exactly_once_with_metrics(topo: Topo, tmp_path: Path) -> None:
    """2,000 requests on the mirrored link: each logged once, paired, byte-identical; hostile
    frames on the port are counted, not fatal; /metrics and /healthz answer for real."""
    d, out = _daemon(tmp_path, topo)
    drops0 = kernel_path_drops(topo)
    d.start()
    try:
        _hostile_frames(topo)
        load = run_load(topo.client, "m", connections=100, per_conn=20)
        assert not load.failures and len(load.sent) == 2000
        wait_for(lambda: d.total("shadowtap_exchanges_emitted_total") >= 2000, 40,
                 "2000 exchanges emitted")
        m = d.metrics()
        assert d.get("/healthz")[0] == 200
        assert d.total("shadowtap_capture_kernel_drops_total") == 0
        assert any(n == "shadowtap_capture_kernel_drops_total" for n, _ in m)
        assert d.total("shadowtap_capture_packets_total") > 4000
        assert d.total("shadowtap_capture_bytes_total") > 1_000_000
        if kernel_path_drops(topo) == drops0:  # else the kernel lost copies: gaps are right
            assert d.total("shadowtap_exchanges_incomplete_total") == 0
        assert d.total("shadowtap_pipeline_latency_seconds_count") >= 2000
        assert d.total("shadowtap_userspace_drops_total") > 0, "hostile frames are counted"
        assert d.get("/nope")[0] == 404
    finally:
        assert d.stop() == 0
    check_exactly_once(load, read_log(log_files(out)),
                       path_drops=kernel_path_drops(topo) - drops0)


def test_vxlan_collector_gets_the_same_exchanges(topo: Topo, tmp_path: Path) -> None:
    d, out = _daemon(tmp_path, topo, vxlan=True)
    drops0 = kernel_path_drops(topo)
    d.start()
    try:
        load = run_load(topo.client, "v", connections=100, per_conn=20)
        assert not load.failures
        wait_for(lambda: d.total("shadowtap_exchanges_emitted_total") >= 2000, 40,
                 "2000 exchanges over VXLAN")
        assert d.total("shadowtap_capture_kernel_drops_total") == 0
        # Datagrams that are not VXLAN, or carry another session's VNI, are counted and skipped.
        u = nsmod.socket_in_netns(topo.server, socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(10):
            u.sendto(b"\x08\0\0\0\0\0\x07\0" + os.urandom(60), (COLLECTOR, 4789))
            u.sendto(b"\0" * 30, (COLLECTOR, 4789))
        u.close()
        wait_for(lambda: d.total("shadowtap_userspace_drops_total",
                                 reason="capture_vni_not_selected") == 10, 30, "VNI drops")
        assert d.total("shadowtap_userspace_drops_total", reason="capture_not_vxlan") == 10
    finally:
        assert d.stop() == 0
    check_exactly_once(load, read_log(log_files(out)),
                       path_drops=kernel_path_drops(topo) - drops0)


def test_kill_9_costs_production_nothing_and_restart_resumes(topo: Topo, tmp_path: Path) -> None:
    d, out = _daemon(tmp_path, topo)
    drops0 = kernel_path_drops(topo)
    d.start()
    stop = threading.Event()
    box: dict[str, object] = {}
    t = threading.Thread(target=lambda: box.update(
        load=run_load(topo.client, "k", connections=400, per_conn=25, concurrency=40,
                      stop=stop)))
    t.start()
    time.sleep(0.6)
    d.kill()  # SIGKILL mid-load
    time.sleep(0.4)
    t.join(60)
    load = box["load"]
    assert not load.failures, load.failures[:3]  # type: ignore[attr-defined]
    assert len(load.sent) == 10_000  # type: ignore[attr-defined]
    d.start()  # same config, no operator action: the left-over log is rotated away
    try:
        after = run_load(topo.client, "r", connections=20, per_conn=10)
        wait_for(lambda: d.total("shadowtap_exchanges_emitted_total") >= 200, 30, "resumed")
    finally:
        assert d.stop() == 0
    exchanges = read_log(log_files(out))  # every file, including the killed run's, parses
    killed = sum(1 for ex in exchanges if ex.request and ex.request.path.startswith("/k/"))
    assert 0 < killed < 10_000, f"the kill was not mid-load ({killed} logged)"
    check_exactly_once(after, exchanges, tag="r",
                       path_drops=kernel_path_drops(topo) - drops0)


def test_sighup_reload_keeps_capturing_and_refuses_bad_config(topo: Topo,
                                                              tmp_path: Path) -> None:
    d, out = _daemon(tmp_path, topo)
    drops0 = kernel_path_drops(topo)
    d.start()
    try:
        a = run_load(topo.client, "a", connections=20, per_conn=10)
        wait_for(lambda: d.total("shadowtap_exchanges_emitted_total") >= 200, 30, "first batch")
        before = d.total("shadowtap_capture_packets_total")
        # New pipeline: only POSTs from now on.
        write_config(d.config, topo, out, metrics_port=d.port,
                     extra_pipeline={"filters": [{"method": ["POST"]}]})
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.total("shadowtap_reloads_total") == 1, 30, "reload")
        b = run_load(topo.client, "b", connections=20, per_conn=10)
        wait_for(lambda: d.total("shadowtap_exchanges_emitted_total") >= 400, 30, "second batch")
        assert d.total("shadowtap_capture_packets_total") > before, "capture never reset"
        # A broken config is refused; the running pipeline stays.
        d.config.write_text("source: {interface: cap0}\npipeline: {sinks: [{type: nope}]}\n")
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.total("shadowtap_reload_errors_total") >= 1, 30, "refused reload")
        c = run_load(topo.client, "c", connections=5, per_conn=3)
        wait_for(lambda: d.total("shadowtap_exchanges_emitted_total") >= 415, 30, "third batch")
        assert d.total("shadowtap_capture_kernel_drops_total") == 0
    finally:
        assert d.stop() == 0
    exchanges = read_log(log_files(out))
    check_exactly_once(a, exchanges, tag="a",
                       path_drops=kernel_path_drops(topo) - drops0)
    posts = {k: v for k, v in b.sent.items() if v.startswith(b"POST")}
    assert {ex.request.method for ex in exchanges if ex.request
            and ex.request.path.startswith("/b/")} == {"POST"}
    b.sent = posts
    check_exactly_once(b, exchanges, tag="b",
                       path_drops=kernel_path_drops(topo) - drops0)
    assert "reload refused" in d.log.read_text()
    assert sum(1 for ex in exchanges if ex.request and ex.request.path.startswith("/c/")) == \
        sum(1 for v in c.sent.values() if v.startswith(b"POST"))


def test_sigterm_drains_and_flushes_open_exchanges(topo: Topo, tmp_path: Path) -> None:
    """An exchange still waiting for its response is written, marked, when SIGTERM arrives
    (the drain closes every open connection), and the log holds everything after exit 0."""
    d, out = _daemon(tmp_path, topo)
    drops0 = kernel_path_drops(topo)
    d.start()
    s = nsmod.socket_in_netns(topo.client)
    try:
        load = run_load(topo.client, "t", connections=10, per_conn=5)
        s.connect(("10.99.1.2", 80))
        s.sendall(b"GET /hang/1 HTTP/1.1\r\nHost: prod.test\r\n\r\n")
        wait_for(lambda: d.total("shadowtap_exchanges_emitted_total") >= 50, 30, "batch")
        time.sleep(0.3)
    finally:
        assert d.stop() == 0
        s.close()
    exchanges = read_log(log_files(out))
    check_exactly_once(load, exchanges, tag="t",
                       path_drops=kernel_path_drops(topo) - drops0)
    hang = [ex for ex in exchanges if ex.request and ex.request.path == "/hang/1"]
    assert len(hang) == 1 and hang[0].response is None and not hang[0].completeness.complete


def test_fanout_two_workers_never_split_a_connection(topo: Topo, tmp_path: Path) -> None:
    d, out = _daemon(tmp_path, topo, workers=2)
    drops0 = kernel_path_drops(topo)
    d.start()
    try:
        load = run_load(topo.client, "f", connections=200, per_conn=5)
        wait_for(lambda: d.total("shadowtap_exchanges_emitted_total") >= 1000, 40, "fanout")
        per_worker = {w: d.total("shadowtap_exchanges_emitted_total", worker=w)
                      for w in ("0", "1")}
        assert all(v > 100 for v in per_worker.values()), per_worker
    finally:
        assert d.stop() == 0
    files = [f for f in log_files(out) if f.name.count(".") == 1]  # the live files
    assert {f.name for f in files} == {"exchanges-w0.jsonl", "exchanges-w1.jsonl"}
    where: dict[int, set[str]] = {}
    for f in files:
        for ex in read_log([f]):
            assert ex.conn is not None
            where.setdefault(ex.conn.client_port, set()).add(f.name)
    assert all(len(v) == 1 for v in where.values()), "a connection was split across workers"
    check_exactly_once(load, read_log(files),
                       path_drops=kernel_path_drops(topo) - drops0)


def test_kernel_drop_counters_from_packet_statistics(topo: Topo) -> None:
    """A tiny ring nobody reads overflows: PACKET_STATISTICS shows drops, tp_packets includes
    them, and reading resets the kernel's count (we accumulate)."""
    ring = RingSource("cap0", netns=topo.app, bpf="tcp port 80",
                      ring=RingConfig(block_size=131072, block_count=2, retire_ms=5),
                      rcvbuf=1 << 16)
    try:
        run_load(topo.client, "d", connections=20, per_conn=20)
        time.sleep(0.2)
        s1 = ring.stats()
        assert s1["kernel_drops"] > 0
        assert s1["kernel_packets"] > s1["kernel_drops"]
        s2 = ring.stats()
        assert s2["kernel_drops"] == s1["kernel_drops"], "accumulated, not re-added"
        frames = ring.poll(0.1)
        assert frames and all(f[1] == 1 for f in frames)
    finally:
        ring.close()


def test_capture_cli_count_duration_and_errors(topo: Topo, tmp_path: Path) -> None:
    """``shadowtap capture``: tcpdump for exchanges, with tcpdump-like stop conditions."""
    import subprocess

    from apphelpers import SHADOWTAP

    out = tmp_path / "c.jsonl"
    p = subprocess.Popen([*SHADOWTAP, "capture", "-i", "cap0", "--netns", topo.app, "-f",
                          "tcp port 80", "--count", "50", "-o", str(out)],
                         stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    assert "capturing on cap0" in p.stderr.readline()
    load = run_load(topo.client, "cli", connections=10, per_conn=10)
    assert p.wait(20) == 0, p.stderr.read()
    got = read_log([out])
    assert len(got) == 50
    assert all(ex.request and ex.response and ex.request.path.split("?")[0] in load.sent
               for ex in got)
    t0 = time.monotonic()
    p = subprocess.run([*SHADOWTAP, "capture", "-i", "cap0", "--netns", topo.app,
                        "--duration", "0.5", "-o", str(tmp_path / "d.jsonl")],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 0 and time.monotonic() - t0 < 10
    assert "kernel:" in p.stderr
    for argv, msg in [(["-f", "tcp port"], "bad capture filter 'tcp port'"),
                      (["--netns", "sa-nope-x"], "namespace 'sa-nope-x' does not exist"),
                      (["-i", "nope0"], "no interface 'nope0'")]:
        base = {"-i": "cap0", "--netns": topo.app}
        base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
        args = [x for kv in base.items() for x in kv]
        p = subprocess.run([*SHADOWTAP, "capture", *args, "-o", str(tmp_path / "e.jsonl")],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 2, p.stderr
        assert p.stderr.startswith("error: ") and msg in p.stderr, p.stderr


def test_vlan_tags_stripped_by_the_kernel_are_put_back(topo: Topo) -> None:
    """The receive path moves 802.1Q tags out of the frame; the ring gives them back in place,
    so captured frames are what was on the wire."""
    ring = RingSource("cap0", netns=topo.app)
    s = nsmod.socket_in_netns(topo.server, socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("tapm", 0))
    sent = []
    for vid in (5, 100, 4000):
        f = (b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x81\x00"
             + ((3 << 13) | vid).to_bytes(2, "big") + b"\x08\x00" + b"\x45" + bytes(40))
        s.send(f)
        sent.append(f)
    s.close()
    got: list[bytes] = []
    deadline = time.monotonic() + 3
    try:
        while len(got) < 3 and time.monotonic() < deadline:
            got += [f for _, _, f in ring.poll(0.1)]
    finally:
        ring.close()
    assert got == sent


def test_vxlan_with_two_workers_never_splits_a_connection(topo: Topo, tmp_path: Path) -> None:
    """Two workers share UDP 4789 (SO_REUSEPORT) and a classic-BPF program picks the worker by
    a symmetric hash of the *inner* flow: the sender's outer source port differs per direction,
    so the kernel's own choice would split connections."""
    d, out = _daemon(tmp_path, topo, vxlan=True, workers=2)
    drops0 = kernel_path_drops(topo)
    d.start()
    try:
        load = run_load(topo.client, "x", connections=200, per_conn=5)
        wait_for(lambda: d.total("shadowtap_exchanges_emitted_total") >= 1000, 40, "vxlan x2")
        per_worker = [d.total("shadowtap_exchanges_emitted_total", worker=w) for w in "01"]
        assert all(v > 100 for v in per_worker), per_worker
    finally:
        assert d.stop() == 0
    files = log_files(out)
    where: dict[int, set[str]] = {}
    for f in files:
        for ex in read_log([f]):
            assert ex.conn is not None
            where.setdefault(ex.conn.client_port, set()).add(f.name.split(".")[0])
    assert all(len(v) == 1 for v in where.values()), "a connection was split across workers"
    check_exactly_once(load, read_log(files),
                       path_drops=kernel_path_drops(topo) - drops0)


def test_a_killed_worker_process_is_restarted(topo: Topo, tmp_path: Path) -> None:
    """With fanout workers, the supervisor restarts a worker that dies; capture goes on, and
    SIGHUP reaches every worker."""
    d, out = _daemon(tmp_path, topo, workers=2)
    drops0 = kernel_path_drops(topo)
    d.start()
    try:
        assert d.proc is not None
        kids = [int(p) for p in Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children")
                .read_text().split()]
        assert len(kids) == 2
        os.kill(kids[0], signal.SIGKILL)
        wait_for(lambda: d.total("shadowtap_worker_restarts_total") == 1, 30, "restart")
        wait_for(lambda: d.get("/healthz")[0] == 200, 30, "healthy again")
        load = run_load(topo.client, "w", connections=40, per_conn=5)
        wait_for(lambda: d.total("shadowtap_exchanges_emitted_total") >= 200, 30, "capturing")
        d.signal(signal.SIGHUP)  # the supervisor validates, then every worker reloads
        wait_for(lambda: d.total("shadowtap_reloads_total") == 2, 30, "both workers reload")
    finally:
        assert d.stop() == 0
    check_exactly_once(load, read_log(log_files(out)), tag="w",
                       path_drops=kernel_path_drops(topo) - drops0)


def test_kernel_drops_reach_the_metrics_endpoint(topo: Topo, tmp_path: Path) -> None:
    """A frozen appliance (SIGSTOP) with a tiny ring loses packets in the kernel; once it runs
    again /metrics shows the drops (and production never noticed)."""
    d, _ = _daemon(tmp_path, topo, ring={"block_size": 131072, "block_count": 2,
                                         "retire_ms": 5}, rcvbuf=65536)
    d.start()
    try:
        assert d.total("shadowtap_capture_kernel_drops_total") == 0
        d.signal(signal.SIGSTOP)
        try:
            load = run_load(topo.client, "z", connections=20, per_conn=20)
        finally:
            d.signal(signal.SIGCONT)
        assert not load.failures  # production never waits for the appliance
        wait_for(lambda: d.total("shadowtap_capture_kernel_drops_total") > 0, 30, "drops")
        assert d.total("shadowtap_capture_kernel_packets_total") > \
            d.total("shadowtap_capture_packets_total")
    finally:
        assert d.stop() == 0
    assert "the kernel dropped" in d.log.read_text()  # and the log says what to do


def test_native_ring_walk_reads_what_the_python_walk_reads(topo: Topo, tmp_path: Path) -> None:
    """Two rings on the capture port see the same frames: one walked in Python (``poll``) into
    the Python extractor, one walked in C (``poll_native``) into the native one. HTTP in VLAN
    frames (the kernel strips the tag; the C walk puts it back) mixed with hostile frames must
    give identical exchanges and counters."""
    import orjson

    from replay.extract import Extractor, Summary
    from replay.formats.jsonl import exchange_to_record
    from replay.formats.pcap import CaptureReader
    from replay.synth import generate_pcap

    cap = tmp_path / "v.pcap"
    generate_pcap(cap, connections=40, concurrency=10, seed=5, vlan=7, chunked_share=0.4)
    frames = [f for _, _, f in CaptureReader(cap)]
    rings = [RingSource("cap0", netns=topo.app), RingSource("cap0", netns=topo.app)]
    outs: list[list[bytes]] = [[], []]
    exs = [Extractor(lambda e: outs[0].append(orjson.dumps(exchange_to_record(e))),
                     native=False),
           Extractor(lambda e: outs[1].append(orjson.dumps(exchange_to_record(e))))]
    if exs[1].native is None:
        pytest.skip("replay._fastpath is not built")
    s = nsmod.socket_in_netns(topo.server, socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("tapm", 0))
    try:
        for i in range(0, len(frames), 200):
            for f in frames[i:i + 200]:
                s.send(f)
            s.send(b"\x02" * 12 + b"\x08\x00\x45\x00\xff\xff" + os.urandom(40))  # hostile
            time.sleep(0.01)
            exs[0].run(rings[0].poll(0.01))
            rings[1].poll_native(exs[1].run_ring, 0.01)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (rings[0].packets < len(frames)
                                               or rings[1].packets < len(frames)):
            exs[0].run(rings[0].poll(0.05))
            rings[1].poll_native(exs[1].run_ring, 0.05)
    finally:
        s.close()
        for r in rings:
            r.close()
    assert rings[0].packets == rings[1].packets >= len(frames)
    sums = []
    for ex in exs:
        ex.finish()
        sm = Summary()
        ex.fill(sm)
        d = sm.to_dict()
        d.pop("seconds"), d.pop("packets_per_second")
        sums.append(d)
    # Each socket stamps its own copy (a few hundred ns apart): compare all but the times.
    def untimed(lines: list[bytes]) -> list[dict]:
        return [{k: v for k, v in orjson.loads(x).items() if not k.startswith("ts_")}
                for x in lines]

    assert untimed(outs[1]) == untimed(outs[0])
    assert sums[1] == sums[0]
    assert len(outs[0]) > 100 and exs[1].native.stats()["exchanges"] > 50
