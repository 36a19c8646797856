"""Fences: from a shadow, TCP, UDP and ICMP to everything but its appliance address fail."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from nethelpers import Listeners, probe_icmp, probe_tcp, probe_udp

from netconfig import isolation

pytestmark = pytest.mark.root

PROBES: dict[str, Callable[..., bool]] = {
    "tcp": probe_tcp, "udp": probe_udp, "icmp": probe_icmp}


def _targets(spec: Any) -> dict[str, str]:
    """Everything a shadow must not reach, by description."""
    return {
        "prod": "10.77.2.2", "prod VIP": "10.77.100.10", "canary": "10.77.3.2",
        "client": "10.77.1.2", "gateway client side": "10.77.1.1",
        "gateway prod side": "10.77.2.1", "gateway canary side": "10.77.3.1",
        "gateway shadow-2 side": "10.77.12.1", "gateway uplink": "10.77.200.1",
        "other shadow": "10.77.12.2", "outside": "10.77.200.2",
    }


def _probe_all(ns: str, targets: dict[str, str], timeout: float = 0.5,
               ) -> dict[tuple[str, str], bool]:
    jobs = {(name, proto): (fn, addr) for name, addr in targets.items()
            for proto, fn in PROBES.items()}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futs = {k: pool.submit(fn, ns, addr, timeout=timeout) for k, (fn, addr) in jobs.items()}
        return {k: f.result() for k, f in futs.items()}


@pytest.fixture(scope="module")
def listening(running_lab: Any) -> Any:
    nodes = ["prod", "canary", "client", "gateway", "shadow-2", "outside"]
    ls = [Listeners(running_lab.ns(n)) for n in nodes]
    try:
        yield running_lab
    finally:
        for lst in ls:
            lst.close()


def test_probes_work_where_allowed(listening: Any) -> None:
    """Positive controls: the probes do detect reachability."""
    spec = listening
    ok = _probe_all(spec.ns("shadow-1"), {"appliance": "10.77.11.1"}, timeout=3)
    assert all(ok.values()), ok
    ok = _probe_all(spec.ns("client"), {"outside": "10.77.200.2", "prod": "10.77.2.2"}, timeout=3)
    assert all(ok.values()), ok


def test_shadow_reaches_nothing_but_its_appliance(listening: Any) -> None:
    spec = listening
    got = _probe_all(spec.ns("shadow-1"), _targets(spec))
    leaked = [k for k, v in got.items() if v]
    assert leaked == [], f"shadow-1 reached {leaked}"


def test_gateway_fence_holds_even_if_the_shadow_adds_a_route_and_drops_its_own_fence(
    listening: Any,
) -> None:
    """Defense in depth: a compromised shadow can undo its own side; the gateway's stays."""
    spec = listening
    sh = spec.ns("shadow-1")
    gw = spec.ns("gateway")
    subprocess.run(["ip", "netns", "exec", sh, "nft", "delete", "table", "inet",
                    isolation.TABLE], check=True)
    subprocess.run(["ip", "-n", sh, "route", "add", "default", "via", "10.77.11.1"], check=True)
    try:
        before = sum(isolation.drop_counts(gw).values())
        got = _probe_all(sh, _targets(spec))
        leaked = [k for k, v in got.items() if v]
        assert leaked == [], f"shadow-1 reached {leaked} through the gateway"
        assert sum(isolation.drop_counts(gw).values()) > before, "drops are counted"
        ok = _probe_all(sh, {"appliance": "10.77.11.1"}, timeout=3)
        assert all(ok.values()), ok
    finally:
        subprocess.run(["ip", "-n", sh, "route", "del", "default"], check=False)
        from netconfig.ops import LiveRunner

        with LiveRunner() as live:
            live.nft(sh, isolation.shadow_batch("10.77.11.1"))
