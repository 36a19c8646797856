"""nftables through its JSON interface: batches go to ``nft -j -f -`` as one transaction.

Rules are built as Python dicts (libnftables JSON schema) and serialised with ``json.dumps``:
nothing is ever assembled as nft command text, so an interface or address from a spec cannot
inject syntax. One batch is one kernel transaction, which is what makes weight flips atomic.
"""

from __future__ import annotations

import json
from typing import Any

from netconfig.errors import NetconfigError
from netconfig.netns import exists, run_tool

Batch = list[dict[str, Any]]


def apply(ns: str | None, batch: Batch) -> None:
    """Commit ``batch`` atomically inside ``ns``: all of it or (on error) none of it."""
    run_tool(ns, ["nft", "-j", "-f", "-"], stdin=json.dumps({"nftables": batch}))


def list_objects(ns: str | None, what: list[str]) -> list[dict[str, Any]]:
    """``nft -j list <what...>`` as a list of objects (metainfo dropped); [] if it doesn't exist."""
    if not exists(ns):
        raise NetconfigError(f"network namespace {ns!r} does not exist")
    try:
        out = run_tool(ns, ["nft", "-j", "list", *what])
    except NetconfigError as exc:
        if "No such file" in str(exc) or "does not exist" in str(exc):
            return []
        raise
    return [o for o in json.loads(out).get("nftables", []) if "metainfo" not in o]


def table_exists(ns: str | None, family: str, name: str) -> bool:
    """Whether table ``family name`` exists in ``ns``."""
    return any(
        "table" in o and o["table"]["family"] == family and o["table"]["name"] == name
        for o in list_objects(ns, ["tables"])
    )


def replace_table(family: str, name: str, body: Batch) -> Batch:
    """A batch that atomically swaps table ``name`` for a fresh one holding ``body``.

    ``add`` first makes ``delete`` safe when the table is absent (idempotent ``lab up``).
    """
    t = {"family": family, "name": name}
    return [{"add": {"table": t}}, {"delete": {"table": t}}, {"add": {"table": t}}, *body]


def delete_table(family: str, name: str) -> Batch:
    """A batch that removes table ``name`` whether or not it exists."""
    t = {"family": family, "name": name}
    return [{"add": {"table": t}}, {"delete": {"table": t}}]


def match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    """A JSON ``match`` expression."""
    return {"match": {"op": op, "left": left, "right": right}}


def payload(protocol: str, field: str) -> dict[str, Any]:
    """A JSON ``payload`` reference such as ``ip daddr``."""
    return {"payload": {"protocol": protocol, "field": field}}


def meta(key: str) -> dict[str, Any]:
    """A JSON ``meta`` reference such as ``meta iifname``."""
    return {"meta": {"key": key}}


def ct(key: str) -> dict[str, Any]:
    """A JSON ``ct`` reference such as ``ct mark``."""
    return {"ct": {"key": key}}


def prefix(cidr: str) -> Any:
    """An address or prefix as nft JSON wants it (bare address for host routes)."""
    addr, _, plen = cidr.partition("/")
    if not plen or plen in ("32", "128"):
        return addr
    return {"prefix": {"addr": addr, "len": int(plen)}}
