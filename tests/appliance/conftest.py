"""Fixtures shared by the live engine's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from apphelpers import JsonHandler, free_port, serve_http


class StatusShadow(JsonHandler):
    """Answers like the synthetic production would not: the path and a changing id; in build
    "v2" a seeded regression: every answer's status is 201 instead of 200."""

    build = "v1"

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        doc: dict[str, Any] = {"path": self.path.split("?")[0], "rid": os.urandom(4).hex()}
        self.send_json(201 if self.build == "v2" else 200, doc)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer


@pytest.fixture(scope="module")
def shadow_pair() -> Iterator[tuple[int, int]]:
    """Two shadows on loopback: ports of build v1 (secondary) and v2 (candidate)."""
    p1, p2 = free_port(), free_port()
    v2 = type("ShadowV2", (StatusShadow,), {"build": "v2"})
    with serve_http(StatusShadow, "127.0.0.1", p1), serve_http(v2, "127.0.0.1", p2):
        yield p1, p2


@pytest.fixture
def running_lab(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The default namespace lab (its own prefix and state dir), torn down after the test
    with every namespace of that prefix, whatever ``lab.down`` managed."""
    import secrets
    import subprocess

    import yaml

    from netconfig import lab
    from netconfig import netns as nsmod

    prefix = f"sa{secrets.token_hex(2)}-"
    monkeypatch.setenv("SHADOWTAP_STATE_DIR", str(tmp_path / "state"))
    d = yaml.safe_load(lab.DEFAULT_SPEC_YAML)
    d["prefix"] = prefix
    spec = lab.parse_spec(d)
    try:
        lab.up(spec)
        yield spec
    finally:
        try:
            lab.down(prefix)
        finally:
            for ns in nsmod.list_netns():
                if ns.startswith(prefix):
                    subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
