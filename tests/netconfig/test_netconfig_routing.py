"""Canary weights: accurate split of new connections, flips never move established ones."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from nethelpers import Backend, KeepAlive, connect, many_new, one_shot, run_in

from netconfig import routing
from netconfig.errors import NetconfigError

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def backends(running_lab: Any) -> Any:
    with Backend(running_lab.ns("prod"), "prod"), Backend(running_lab.ns("canary"), "canary"):
        yield running_lab


def test_ten_percent_splits_2000_new_connections_within_3_points(backends: Any) -> None:
    gw, client = backends.ns("gateway"), backends.ns("client")
    routing.set_canary(gw, 10)
    before = routing.show(gw)
    assert before["canary_percent"] == 10
    got = run_in(client, many_new(2000, concurrency=50, tag="split"))
    share = 100 * got.count("canary") / len(got)
    assert got.count("canary") + got.count("prod") == 2000
    assert 7 <= share <= 13, f"canary share {share:.1f}%"
    after = routing.show(gw)
    new = {k: after["new_connections"][k] - before["new_connections"][k] for k in ("prod", "canary")}
    assert new == {"prod": got.count("prod"), "canary": got.count("canary")}


def test_300_keepalive_connections_survive_five_flips(backends: Any) -> None:
    gw, client = backends.ns("gateway"), backends.ns("client")
    routing.set_canary(gw, 50)

    async def scenario() -> list[KeepAlive]:
        conns = [await connect() for _ in range(300)]
        await asyncio.gather(*(c.get(f"/ka/{i}/0") for i, c in enumerate(conns)))
        for step, pct in enumerate((90, 0, 100, 10, 50), start=1):
            routing.set_canary(gw, pct)
            # new connections follow the new weight immediately...
            if pct in (0, 100):
                fresh = await asyncio.gather(*(one_shot(f"/fresh/{step}/{i}") for i in range(20)))
                assert set(fresh) == {"canary" if pct == 100 else "prod"}
            # ...while every established one keeps answering from its first backend
            await asyncio.gather(*(c.get(f"/ka/{i}/{step}") for i, c in enumerate(conns)))
        for c in conns:
            c.close()
        return conns

    conns = run_in(client, scenario())
    assert len(conns) == 300
    for c in conns:
        assert len(c.backends) == 6 and len(set(c.backends)) == 1, c.backends
    firsts = [c.backends[0] for c in conns]
    assert 0 < firsts.count("canary") < 300  # both backends really held connections


def test_flip_takes_effect_for_new_connections_within_100ms(backends: Any) -> None:
    gw, client = backends.ns("gateway"), backends.ns("client")
    routing.set_canary(gw, 0)
    assert run_in(client, one_shot("/warm")) == "prod"

    async def measure(target: str, pct: float) -> float:
        t0 = time.monotonic()
        routing.set_canary(gw, pct)
        while True:
            if await one_shot("/probe") == target:
                return time.monotonic() - t0
            assert time.monotonic() - t0 < 2, "flip never took effect"

    to_canary = run_in(client, measure("canary", 100))
    to_prod = run_in(client, measure("prod", 0))
    print(f"flip -> canary effective after {to_canary * 1000:.1f} ms, -> prod {to_prod * 1000:.1f} ms")
    assert to_canary < 0.1 and to_prod < 0.1, (to_canary, to_prod)


def test_bad_weights_are_refused_and_change_nothing(backends: Any) -> None:
    gw = backends.ns("gateway")
    routing.set_canary(gw, 25)
    for bad in (-1, 100.5, 1000):
        with pytest.raises(NetconfigError, match="between 0 and 100"):
            routing.set_canary(gw, bad)
    assert routing.show(gw)["canary_percent"] == 25


def test_nft_cli_fallback_gives_the_same_result(backends: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without libnftables the same JSON goes through ``nft -j -f -``."""
    from netconfig import nft

    gw = backends.ns("gateway")
    monkeypatch.setattr(nft, "_lib", False)
    routing.set_canary(gw, 33.3)
    assert routing.show(gw)["canary_percent"] == 33.3
    monkeypatch.undo()
    assert routing.show(gw)["canary_percent"] == 33.3
