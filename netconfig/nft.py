"""nftables through its JSON interface, one batch = one kernel transaction.

Rules are built as Python dicts (libnftables JSON schema) and serialised with ``json.dumps``:
nothing is ever assembled as nft command text, so an interface or address from a spec cannot
inject syntax. One batch is one kernel transaction, which is what makes weight flips atomic.

The batch goes to libnftables in-process (ctypes, from a thread that entered the namespace:
well under a millisecond, so a canary flip does not depend on how fast a loaded host can fork
and exec) and falls back to ``nft -j -f -`` where the library is missing. Same JSON either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

from netconfig.errors import NetconfigError
from netconfig.netns import exists, run_in_netns, run_tool

Batch = list[dict[str, Any]]
_JSON_OUTPUT = 1 << 4  # NFT_CTX_OUTPUT_JSON; in nftables 1.0.x it also selects JSON input
_lib: Any = None
_lib_lock = threading.Lock()


def _libnftables() -> Any:
    """The loaded libnftables (prototypes declared), or False if it cannot be loaded."""
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1")
            except OSError:
                _lib = False
                return _lib
            vp, cp = ctypes.c_void_p, ctypes.c_char_p
            for name, args, res in (
                ("nft_ctx_new", [ctypes.c_uint32], vp), ("nft_ctx_free", [vp], None),
                ("nft_ctx_output_get_flags", [vp], ctypes.c_uint),
                ("nft_ctx_output_set_flags", [vp, ctypes.c_uint], None),
                ("nft_ctx_buffer_output", [vp], ctypes.c_int),
                ("nft_ctx_buffer_error", [vp], ctypes.c_int),
                ("nft_ctx_get_output_buffer", [vp], cp), ("nft_ctx_get_error_buffer", [vp], cp),
                ("nft_run_cmd_from_buffer", [vp, cp], ctypes.c_int),
            ):
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, res
            _lib = lib
        return _lib


def _run_json(ns: str | None, doc: dict[str, Any]) -> str:
    """Run one JSON document in ``ns``; return nft's JSON output, or raise with its error."""
    if not exists(ns):
        raise NetconfigError(f"network namespace {ns!r} does not exist")
    text = json.dumps(doc)
    lib = _libnftables()
    if not lib:
        if "list" in doc["nftables"][0]:
            what = doc["nftables"][0]["list"]
            argv = (["list", "tables"] if "tables" in what else
                    ["list", "table", what["table"]["family"], what["table"]["name"]])
            return run_tool(ns, ["nft", "-j", *argv])
        return run_tool(ns, ["nft", "-j", "-f", "-"], stdin=text)

    def call() -> tuple[int, str, str]:
        ctx = lib.nft_ctx_new(0)
        try:
            lib.nft_ctx_output_set_flags(ctx, lib.nft_ctx_output_get_flags(ctx) | _JSON_OUTPUT)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            rc = lib.nft_run_cmd_from_buffer(ctx, text.encode())
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
            return rc, out, err
        finally:
            lib.nft_ctx_free(ctx)

    rc, out, err = run_in_netns(ns, call)
    if rc != 0:
        where = f" in namespace {ns}" if ns else ""
        lines = [ln.split(": ", 1)[-1] for ln in err.strip().splitlines() if ln.strip()]
        raise NetconfigError(f"nft failed{where}: {lines[0] if lines else rc}")
    return out


def apply(ns: str | None, batch: Batch) -> None:
    """Commit ``batch`` atomically inside ``ns``: all of it or (on error) none of it."""
    _run_json(ns, {"nftables": batch})


def list_objects(ns: str | None, what: list[str]) -> list[dict[str, Any]]:
    """``nft -j list tables`` / ``list table FAMILY NAME`` as objects; [] if it doesn't exist."""
    if what == ["tables"]:
        cmd: dict[str, Any] = {"tables": None}
    elif len(what) == 3 and what[0] == "table":
        cmd = {"table": {"family": what[1], "name": what[2]}}
    else:
        raise ValueError(f"unsupported list {what}")
    try:
        out = _run_json(ns, {"nftables": [{"list": cmd}]})
    except NetconfigError as exc:
        if "No such file" in str(exc) or "does not exist" in str(exc):
            if "network namespace" in str(exc):
                raise
            return []
        raise
    return [o for o in json.loads(out or "{}").get("nftables", []) if "metainfo" not in o]


def replace_table(family: str, name: str, body: Batch) -> Batch:
    """A batch that atomically swaps table ``name`` for a fresh one holding ``body``.

    ``add`` first makes ``delete`` safe when the table is absent (idempotent ``lab up``).
    """
    t = {"family": family, "name": name}
    return [{"add": {"table": t}}, {"delete": {"table": t}}, {"add": {"table": t}}, *body]


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
