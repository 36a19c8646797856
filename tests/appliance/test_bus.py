"""Scale-out over a real broker: Debian's redis-server on a unix socket, capture nodes
publishing sanitised exchanges to Redis Streams, ``shadowtap worker`` processes consuming them.

Two capture nodes publish; one worker and, in another consumer group, two workers consume the
same entries: the same verdict. A worker killed mid-stream loses nothing; a broker restart is
survived and said."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apphelpers import wait_for
from test_live_engine import _essence, _run

from appliance.live import config
from replay.synth import generate_pcap

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (scripts/setup.sh)")

ROOT = Path(__file__).resolve().parents[2]


def start_redis(d: Path) -> subprocess.Popen:
    sock = d / "redis.sock"
    p = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock),
                          "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                          "--dir", str(d)], stdout=subprocess.DEVNULL)
    wait_for(sock.exists, 10, "redis-server's socket")
    return p


@pytest.fixture()
def redis_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "redis"
    d.mkdir()
    p = start_redis(d)
    try:
        yield d
    finally:
        p.terminate()
        p.wait(10)


def _publish(tmp: Path, url: str, seed: int, conns: int = 100) -> int:
    """A capture node: a capture file through the engine, sanitised, published."""
    d = tmp / f"node{seed}"
    d.mkdir()
    truth: list[Any] = []
    generate_pcap(d / "t.pcap", connections=conns, concurrency=20, seed=seed, truth=truth)
    (d / "key").write_bytes(os.urandom(32))
    os.chmod(d / "key", 0o600)
    cfg = config.parse({
        "source": {"file": str(d / "t.pcap")},
        "pipeline": {"workers": 1, "sanitise": {"enabled": True, "key_file": str(d / "key")},
                     "sinks": [{"type": "jsonl", "path": str(d / "ex.jsonl")}]},
        "metrics": {"listen": None},
        "bus": {"url": url, "shards": 4},
    })
    eng, _ = _run(cfg)
    assert not eng.errors
    return len(truth)


def _worker(url: str, ports: tuple[int, int], *args: str) -> list[str]:
    return [sys.executable, "-m", "appliance.cli", "worker", "--redis", url,
            "--secondary", f"http://127.0.0.1:{ports[0]}",
            "--candidate", f"http://127.0.0.1:{ports[1]}", "--min-samples", "5",
            "--verdict-every", "1", *args]


def _entries(url: str) -> int:
    import redis

    r = redis.Redis.from_url(url)
    return sum(r.xlen(f"shadowtap:{s}") for s in range(4))


def test_two_publishers_two_workers_one_verdict(redis_dir: Path, shadow_pair: tuple[int, int],
                                                tmp_path: Path) -> None:
    url = f"unix://{redis_dir / 'redis.sock'}"
    n = _publish(tmp_path, url, 5) + _publish(tmp_path, url, 6)
    assert _entries(url) == n
    # No raw secret on the bus: the synthetic traffic's bearer tokens were masked first.
    import redis

    r = redis.Redis.from_url(url)
    raw = b"".join(f[b"x"] for s in range(4) for _, f in r.xrange(f"shadowtap:{s}"))
    assert b"Bearer eyJ" not in raw and raw.count(b"\n") == n
    one = subprocess.run(_worker(url, shadow_pair, "--group", "one", "--until-idle", "2",
                                 "--report", str(tmp_path / "one.json")),
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = [subprocess.Popen(_worker(url, shadow_pair, "--group", "two", "--index", str(i), "--of",
                                    "2", "--until-idle", "2"), cwd=ROOT,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in two:
        assert p.wait(120) == 0, p.stderr.read() if p.stderr else ""
    rep = subprocess.run(_worker(url, shadow_pair, "--group", "two", "--report-only", "--report",
                                 str(tmp_path / "two.json")), cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert rep.returncode == 0, rep.stderr
    assert "verdict over 2 workers" in rep.stdout
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert a["bus"]["consumed"] == b["bus"]["consumed"] == n
    assert a["summary"]["compared"] > 0.8 * n
    assert _essence(a) == _essence(b)
    assert a["regressions"] and all(f["field"] == "status" for f in a["regressions"])


def test_a_killed_worker_loses_nothing_and_counts_nothing_twice(
        redis_dir: Path, shadow_pair: tuple[int, int], tmp_path: Path) -> None:
    url = f"unix://{redis_dir / 'redis.sock'}"
    import redis

    n = _publish(tmp_path, url, 7, conns=600)
    r = redis.Redis.from_url(url)
    log = tmp_path / "w.log"
    with log.open("w") as fh:
        w = subprocess.Popen(_worker(url, shadow_pair, "--until-idle", "3"), cwd=ROOT, stderr=fh)

    def mid_stream() -> bool:  # a state written, and entries read but not acknowledged
        return bool(r.hlen("shadowtap:state:shadowtap-workers")) and sum(
            r.xpending(f"shadowtap:{s}", "shadowtap-workers")["pending"]
            for s in range(4)) > 0

    wait_for(mid_stream, 60, "the worker in mid-stream")
    os.kill(w.pid, signal.SIGKILL)
    w.wait(10)
    with log.open("a") as fh:
        w = subprocess.Popen(_worker(url, shadow_pair, "--until-idle", "3", "--report",
                                     str(tmp_path / "r.json")), cwd=ROOT, stderr=fh)
    assert w.wait(180) == 0, log.read_text()
    rep = json.loads((tmp_path / "r.json").read_text())
    text = log.read_text()
    # every exchange compared (or deliberately skipped) exactly once across the two runs
    assert rep["bus"]["consumed"] == n, (rep["bus"], text[-2000:])
    assert rep["summary"]["compared"] + sum(rep["summary"]["skipped"].values()) == n
    assert rep["bus"]["reclaimed"] > 0 and "taking back" in text  # pending, then redone
    assert rep["bus"]["workers"] == 2  # the killed run's state stays in the verdict


def test_a_broker_restart_is_survived_with_a_clear_log_line(tmp_path: Path,
                                                           shadow_pair: tuple[int, int]) -> None:
    d = tmp_path / "redis"
    d.mkdir()
    p = start_redis(d)
    url = f"unix://{d / 'redis.sock'}"
    log = tmp_path / "w.log"
    try:
        with log.open("w") as fh:
            w = subprocess.Popen(_worker(url, shadow_pair, "--log-level", "info"), cwd=ROOT,
                                 stderr=fh)
        time.sleep(2.0)
        p.terminate()
        p.wait(10)
        wait_for(lambda: "unreachable" in log.read_text(), 20, "the broker-down line")
        assert w.poll() is None  # still running
        (d / "redis.sock").unlink(missing_ok=True)
        p = start_redis(d)
        n = _publish(tmp_path, url, 8, conns=30)
        wait_for(lambda: "is back" in log.read_text(), 30, "the broker-back line")
        import redis

        r = redis.Redis.from_url(url)

        def done() -> bool:
            groups = r.xinfo_groups("shadowtap:0")
            return bool(groups) and all(g["lag"] == 0 for g in groups)

        wait_for(done, 60, "the worker to read everything again")
        assert n > 0
    finally:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
            assert w.wait(60) == 0, log.read_text()[-2000:]
        p.terminate()
        p.wait(10)
