"""Canary weights: split *new* connections to a VIP between prod and canary, never move old ones.

Why not weighted multipath routes? The kernel hashes each forwarded packet onto a nexthop, and
on any weight change it re-hashes: established flows land on the other backend and are reset
(124 of 300 measured here). Resilient nexthop groups keep flows but delay the new split.

Instead the choice is made once per connection and remembered by conntrack:

1. nftables, prerouting in the gateway: for a packet to the VIP whose conntrack entry has no
   backend mark yet (its first packet, SYN retransmits included), ``numgen random mod 1000``
   picks a backend through an interval map, and the result is stored in ``ct mark``.
2. Every packet to the VIP copies ``ct mark`` into ``meta mark``.
3. Policy routing (pyroute2): ``fwmark 1 -> table 100`` (VIP via prod), ``fwmark 2 -> table
   101`` (VIP via canary); the main table also routes the VIP to prod as a safe fallback.

A flip replaces the one rule holding the interval map in a single nft transaction: atomic, in
effect for the next SYN (milliseconds), and established connections keep their ct mark, so they
keep their backend. Named counters (never flushed) give the live split of new connections.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from netconfig import nft
from netconfig.errors import NetconfigError
from netconfig.ops import Runner

TABLE = "shadowtap_canary"
FAMILY = "ip"
MARK_PROD, MARK_CANARY, MARK_MASK = 0x1, 0x2, 0x3
RT_PROD, RT_CANARY = 100, 101
RULE_PRIO_PROD, RULE_PRIO_CANARY = 1000, 1001
SCALE = 1000  # weights have 0.1 % resolution


@dataclass
class CanaryRoute:
    """Where the split happens (the gateway namespace) and between which next hops."""

    netns: str | None
    vip: str
    prod_via: str
    canary_via: str

    def validate(self) -> None:
        for name in ("vip", "prod_via", "canary_via"):
            try:
                ipaddress.IPv4Address(getattr(self, name))
            except ValueError:
                raise NetconfigError(f"canary {name} must be an IPv4 address, not {getattr(self, name)!r}") from None


def check_percent(percent: float) -> int:
    """Percent -> slots out of SCALE; a clear error outside 0..100."""
    if not 0 <= percent <= 100:
        raise NetconfigError(f"canary percent must be between 0 and 100, not {percent}")
    return round(percent * SCALE / 100)


def _vip_match(vip: str) -> dict[str, Any]:
    return nft.match(nft.payload("ip", "daddr"), vip)


def split_rules(percent: float) -> nft.Batch:
    """The contents of chain ``split``: pick a backend, then count the pick."""
    slots = check_percent(percent)
    entries: list[list[Any]] = []
    if slots > 0:
        entries.append([{"range": [0, slots - 1]}, MARK_CANARY])
    if slots < SCALE:
        entries.append([{"range": [slots, SCALE - 1]}, MARK_PROD])
    numgen = {"numgen": {"mode": "random", "mod": SCALE, "offset": 0}}
    base = {"family": FAMILY, "table": TABLE, "chain": "split"}
    pick = {"mangle": {"key": nft.ct("mark"),
                       "value": {"map": {"key": numgen, "data": {"set": entries}}}}}
    return [
        {"add": {"rule": {**base, "comment": f"canary {percent:g}", "expr": [pick]}}},
        {"add": {"rule": {**base, "expr": [nft.match(nft.ct("mark"), MARK_PROD),
                                           {"counter": "new_prod"}]}}},
        {"add": {"rule": {**base, "expr": [nft.match(nft.ct("mark"), MARK_CANARY),
                                           {"counter": "new_canary"}]}}},
    ]


def table_batch(vip: str, percent: float) -> nft.Batch:
    """The whole table, swapped in atomically (used by ``lab up``)."""
    t = {"family": FAMILY, "table": TABLE}
    body: nft.Batch = [
        {"add": {"counter": {"family": FAMILY, "table": TABLE, "name": "new_prod"}}},
        {"add": {"counter": {"family": FAMILY, "table": TABLE, "name": "new_canary"}}},
        {"add": {"chain": {**t, "name": "split"}}},
        {"add": {"chain": {**t, "name": "pre", "type": "filter", "hook": "prerouting",
                           "prio": -150, "policy": "accept"}}},
        {"add": {"rule": {**t, "chain": "pre", "expr": [
            _vip_match(vip),
            nft.match({"&": [nft.ct("mark"), MARK_MASK]}, 0),
            {"jump": {"target": "split"}}]}}},
        {"add": {"rule": {**t, "chain": "pre", "expr": [
            _vip_match(vip),
            {"mangle": {"key": nft.meta("mark"), "value": nft.ct("mark")}}]}}},
        *split_rules(percent),
    ]
    return nft.replace_table(FAMILY, TABLE, body)


def install(runner: Runner, cfg: CanaryRoute, percent: float) -> None:
    """Routes, fwmark rules and the nft table for the split (idempotent)."""
    cfg.validate()
    check_percent(percent)
    dst = f"{cfg.vip}/32"
    runner.route_replace(cfg.netns, dst, via=cfg.prod_via)
    runner.route_replace(cfg.netns, dst, via=cfg.prod_via, table=RT_PROD)
    runner.route_replace(cfg.netns, dst, via=cfg.canary_via, table=RT_CANARY)
    runner.rule_add(cfg.netns, MARK_PROD, MARK_MASK, RT_PROD, RULE_PRIO_PROD)
    runner.rule_add(cfg.netns, MARK_CANARY, MARK_MASK, RT_CANARY, RULE_PRIO_CANARY)
    runner.nft(cfg.netns, table_batch(cfg.vip, percent))


def _rules(ns: str | None) -> list[dict[str, Any]]:
    objs = nft.list_objects(ns, ["table", FAMILY, TABLE])
    if not objs:
        raise NetconfigError(
            f"no canary routing in {'namespace ' + ns if ns else 'the host namespace'}: "
            "run 'shadowtap lab up' first")
    return objs


def _live_vip(objs: list[dict[str, Any]]) -> str:
    for o in objs:
        r = o.get("rule")
        if r and r["chain"] == "pre":
            for e in r["expr"]:
                m = e.get("match")
                if m and m["left"] == nft.payload("ip", "daddr"):
                    return str(m["right"])
    raise NetconfigError(f"table {TABLE} is damaged (no VIP rule): run 'shadowtap lab up' again")


def set_canary(ns: str | None, percent: float, runner: Runner | None = None) -> None:
    """Atomically change the share of new connections that go to the canary.

    One nft transaction and nothing else (no read first): the flip is as fast as one exec.
    """
    check_percent(percent)
    batch = [{"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": "split"}}},
             *split_rules(percent)]
    if runner is not None:
        runner.nft(ns, batch)
        return
    try:
        nft.apply(ns, batch)
    except NetconfigError as exc:
        if "No such file or directory" in str(exc):
            raise NetconfigError(
                f"no canary routing in {'namespace ' + ns if ns else 'the host namespace'}: "
                "run 'shadowtap lab up' first") from None
        raise


def show(ns: str | None) -> dict[str, Any]:
    """The split as the kernel has it now: configured percent and new connections per backend."""
    objs = _rules(ns)
    slots = 0
    found = False
    counters: dict[str, int] = {}
    for o in objs:
        if "counter" in o:
            counters[o["counter"]["name"]] = int(o["counter"]["packets"])
        r = o.get("rule")
        if not r or r["chain"] != "split":
            continue
        for e in r["expr"]:
            mg = e.get("mangle")
            if mg and "map" in mg["value"]:
                found = True
                for key, mark in mg["value"]["map"]["data"]["set"]:
                    if mark == MARK_CANARY:
                        lo, hi = key["range"] if isinstance(key, dict) else (key, key)
                        slots += hi - lo + 1
    if not found:
        raise NetconfigError(f"table {TABLE} is damaged (no split rule): run 'shadowtap lab up' again")
    prod, canary = counters.get("new_prod", 0), counters.get("new_canary", 0)
    total = prod + canary
    return {
        "netns": ns,
        "vip": _live_vip(objs),
        "canary_percent": slots * 100 / SCALE,
        "new_connections": {"prod": prod, "canary": canary},
        "observed_canary_percent": round(100 * canary / total, 2) if total else None,
    }
