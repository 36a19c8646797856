"""Fences: a shadow reaches only the appliance address that feeds it, nothing else.

Two layers, because a shadow runs code under test that we do not trust:

* In the gateway (the real fence, out of the shadow's reach): packets arriving from a shadow's
  link may be delivered locally only to the appliance's address on that same link, and nothing
  from or to a shadow link is ever forwarded. Every drop is counted.
* In the shadow itself: no default route, and an nft table that admits only the appliance, so a
  misdirected packet fails fast (EPERM) instead of timing out against the gateway fence.

ARP is not IP and passes, which the appliance needs to reach the shadow at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netconfig import nft
from netconfig.ops import Runner

TABLE = "shadowtap_fence"
FAMILY = "inet"


@dataclass
class Fence:
    """One shadow behind one gateway link."""

    gateway_netns: str | None
    gateway_dev: str  # the gateway's end of the link to the shadow
    appliance_addr: str  # the gateway's address on that link (no prefix length)
    shadow_netns: str | None


def gateway_batch(fences: list[Fence]) -> nft.Batch:
    """The gateway's fence table for all its shadows, swapped in atomically."""
    t = {"family": FAMILY, "table": TABLE}
    devs = sorted({f.gateway_dev for f in fences})
    dev_set: Any = devs[0] if len(devs) == 1 else {"set": devs}
    body: nft.Batch = [
        {"add": {"chain": {**t, "name": "input", "type": "filter", "hook": "input",
                           "prio": -10, "policy": "accept"}}},
        {"add": {"chain": {**t, "name": "forward", "type": "filter", "hook": "forward",
                           "prio": -10, "policy": "accept"}}},
    ]
    for f in fences:
        body.append({"add": {"rule": {**t, "chain": "input", "expr": [
            nft.match(nft.meta("iifname"), f.gateway_dev),
            nft.match(nft.payload("ip", "daddr"), f.appliance_addr),
            {"accept": None}]}}})
    if devs:
        body += [
            {"add": {"rule": {**t, "chain": "input", "comment": "shadow to anything else",
                              "expr": [nft.match(nft.meta("iifname"), dev_set),
                                       {"counter": None}, {"drop": None}]}}},
            {"add": {"rule": {**t, "chain": "forward", "comment": "from a shadow",
                              "expr": [nft.match(nft.meta("iifname"), dev_set),
                                       {"counter": None}, {"drop": None}]}}},
            {"add": {"rule": {**t, "chain": "forward", "comment": "to a shadow",
                              "expr": [nft.match(nft.meta("oifname"), dev_set),
                                       {"counter": None}, {"drop": None}]}}},
        ]
    return nft.replace_table(FAMILY, TABLE, body)


def shadow_batch(appliance_addr: str) -> nft.Batch:
    """The shadow's own table: only loopback and the appliance, in and out."""
    t = {"family": FAMILY, "table": TABLE}
    body: nft.Batch = []
    for chain, hook, dev_key, addr_field in (("output", "output", "oifname", "daddr"),
                                             ("input", "input", "iifname", "saddr")):
        body += [
            {"add": {"chain": {**t, "name": chain, "type": "filter", "hook": hook,
                               "prio": -10, "policy": "drop"}}},
            {"add": {"rule": {**t, "chain": chain, "expr": [
                nft.match(nft.meta(dev_key), "lo"), {"accept": None}]}}},
            {"add": {"rule": {**t, "chain": chain, "expr": [
                nft.match(nft.payload("ip", addr_field), appliance_addr), {"accept": None}]}}},
            {"add": {"rule": {**t, "chain": chain, "expr": [{"counter": None}, {"drop": None}]}}},
        ]
    return nft.replace_table(FAMILY, TABLE, body)


def install(runner: Runner, fences: list[Fence]) -> None:
    """Fence every shadow: gateway table first (the one that matters), then each shadow's."""
    by_gw: dict[str | None, list[Fence]] = {}
    for f in fences:
        by_gw.setdefault(f.gateway_netns, []).append(f)
    for gw, fs in by_gw.items():
        runner.nft(gw, gateway_batch(fs))
    for f in fences:
        runner.nft(f.shadow_netns, shadow_batch(f.appliance_addr))


def drop_counts(ns: str | None) -> dict[str, int]:
    """Packets each fence rule dropped in ``ns`` (keyed by chain and comment)."""
    out: dict[str, int] = {}
    for o in nft.list_objects(ns, ["table", FAMILY, TABLE]):
        r = o.get("rule")
        if not r:
            continue
        for e in r["expr"]:
            c = e.get("counter")
            if isinstance(c, dict):
                key = f"{r['chain']}: {r.get('comment', 'other')}"
                out[key] = out.get(key, 0) + int(c.get("packets", 0))
    return out
