"""Lab lifecycle: up, a request to the VIP, exactly-once capture, down leaves nothing."""

from __future__ import annotations

import asyncio
import collections
import subprocess
from pathlib import Path
from typing import Any

import pytest
from nethelpers import (
    VIP,
    Backend,
    Capture,
    connect,
    default_spec_dict,
    force_cleanup,
    host_traces,
    namespaces_with,
    one_shot,
    parse_frame,
    run_in,
    unique_prefix,
)

from netconfig import lab, mirror, routing
from netconfig import netns as nsmod
from netconfig.errors import NetconfigError
from netconfig.ops import LiveRunner

pytestmark = pytest.mark.root


def test_up_request_capture_exactly_once_down_leaves_nothing(state_dir: Path) -> None:
    """1,000 requests client -> VIP; cap0 sees every request and response exactly once."""
    prefix = unique_prefix()
    before = host_traces(prefix)
    spec = lab.parse_spec(default_spec_dict(prefix))
    try:
        lab.up(spec)
        lab.up(spec)  # idempotent: a second run re-asserts and changes nothing
        assert sorted(namespaces_with(prefix)) == sorted(spec.ns(n.name) for n in spec.nodes)
        gw, client, prod = spec.ns("gateway"), spec.ns("client"), spec.ns("prod")
        with Backend(prod, "prod"), Backend(spec.ns("canary"), "canary"), \
                Capture(gw, "cap0") as cap:
            assert run_in(client, one_shot("/first")) == "prod"
            routing.set_canary(gw, 50)  # both mirrored links (prod0, canary0) carry traffic

            async def traffic() -> None:
                conns = [await connect() for _ in range(20)]
                for j in range(50):
                    await asyncio.gather(*(c.get(f"/r/{i * 50 + j}") for i, c in enumerate(conns)))
                for c in conns:
                    c.close()

            run_in(client, traffic())
            frames = cap.stop()
        requests: collections.Counter[str] = collections.Counter()
        responses: collections.Counter[str] = collections.Counter()
        backends: collections.Counter[str] = collections.Counter()
        seen: collections.Counter[tuple[Any, ...]] = collections.Counter()
        for f in frames:
            p = parse_frame(f)
            if p is None or p.proto != 6:
                continue
            seen[(p.src, p.dst, p.sport, p.dport, p.seq, p.flags, len(p.payload), p.ip_id)] += 1
            if p.dst == VIP and p.payload.startswith(b"GET /r/"):
                requests[p.payload.split(b" ")[1].decode()] += 1
            elif p.src == VIP and b" /r/" in p.payload:
                backend, path = p.payload.rsplit(b"\r\n\r\n", 1)[-1].split()[:2]
                backends[backend.decode()] += 1
                responses[path.decode()] += 1
        want = {f"/r/{i}" for i in range(1000)}
        assert set(requests) == want and set(requests.values()) == {1}
        assert set(responses) == want and set(responses.values()) == {1}
        assert max(seen.values()) == 1, "a segment was copied twice"
        assert backends["prod"] > 0 and backends["canary"] > 0, backends
        assert all(len(f) <= 1514 for f in frames), "offloads should be off: wire-sized frames"
    finally:
        removed = lab.down(prefix)
        left = namespaces_with(prefix)  # before the safety net below can hide anything
        force_cleanup(prefix)
    assert len(removed) == len(spec.nodes)
    assert left == []
    assert not lab.state_path(prefix).exists()
    assert host_traces(prefix) == before == []


def test_down_after_crash_halfway_removes_exactly_what_was_made(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = unique_prefix()
    spec = lab.parse_spec(default_spec_dict(prefix))
    real = LiveRunner.veth_add
    calls = {"n": 0}

    def crashing(self: LiveRunner, *a: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        real(self, *a)

    monkeypatch.setattr(LiveRunner, "veth_add", crashing)
    try:
        with pytest.raises(RuntimeError):
            lab.up(spec)
        rec = lab.read_state(prefix)
        assert rec is not None and rec["status"] == "building"
        assert sorted(rec["namespaces"]) == sorted(namespaces_with(prefix))
        monkeypatch.setattr(LiveRunner, "veth_add", real)
        lab.up(spec)  # and 'up' can also finish the job
        assert lab.read_state(prefix)["status"] == "up"  # type: ignore[index]
    finally:
        lab.down(prefix)
        left = namespaces_with(prefix)
        force_cleanup(prefix)
    assert left == []


def test_up_refuses_a_namespace_it_did_not_make(state_dir: Path) -> None:
    prefix = unique_prefix()
    spec = lab.parse_spec(default_spec_dict(prefix))
    foreign = spec.ns("prod")
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        with pytest.raises(NetconfigError, match="not made by this lab"):
            lab.up(spec)
        assert namespaces_with(prefix) == [foreign]  # nothing else was created
        assert lab.down(prefix) == []  # and down does not touch the foreign one
        assert nsmod.exists(foreign)
    finally:
        force_cleanup(prefix)


def test_status_reports_live_topology(state_dir: Path) -> None:
    prefix = unique_prefix()
    spec = lab.parse_spec(default_spec_dict(prefix))
    try:
        assert lab.status(spec)["state"] == "down"
        lab.up(spec)
        st = lab.status(spec)
        assert st["state"] == "up"
        assert all(n["exists"] for n in st["nodes"])
        assert all(ln["state"] == "up" for n in st["nodes"] for ln in n["links"])
        assert {m["status"] for m in st["mirrors"]} == {"active"}
        assert st["canary"]["canary_percent"] == 0
        assert routing.show(spec.ns("gateway"))["vip"] == VIP
        routing.set_canary(spec.ns("gateway"), 20)
        lab.up(spec)  # re-running up keeps the live weight: it must not move production
        assert routing.show(spec.ns("gateway"))["canary_percent"] == 20
        mirror.add(mirror.Mirror(netns=spec.ns("gateway"), dev="client0", to="tap0"))
        assert len(mirror.load_all()) == 3  # the lab's two and ours
    finally:
        lab.down(prefix)
        force_cleanup(prefix)
    assert mirror.load_all() == []  # down forgets mirrors that lived in its namespaces


@pytest.mark.parametrize("after", [2, 6])
def test_down_after_sigkill_during_up(state_dir: Path, after: int) -> None:
    """A real crash: 'lab up' killed mid-way; 'lab down' still leaves nothing."""
    import os
    import signal
    import sys

    from nethelpers import REPO, write_spec

    prefix = unique_prefix()
    spec_file = write_spec(state_dir.parent / "lab.yaml", default_spec_dict(prefix))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-m", "appliance.cli", "lab", "up", "--spec",
                          str(spec_file)], cwd=REPO, env=env)
    try:
        import time

        deadline = time.monotonic() + 10
        while len(namespaces_with(prefix)) < after and time.monotonic() < deadline:
            time.sleep(0.002)
        p.send_signal(signal.SIGKILL)  # once ``after`` namespaces exist: mid-way
        p.wait(10)
        made = lab.read_state(prefix)
        lab.down(prefix)
        left = namespaces_with(prefix)
    finally:
        force_cleanup(prefix)
    assert made is not None and made["namespaces"]
    assert left == []
    assert not lab.state_path(prefix).exists()
