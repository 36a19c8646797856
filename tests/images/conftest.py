"""Fixtures for image-sync tests: a private home, state dir and namespace prefix per test.

Everything a test makes lives under its tmp dir and in namespaces named ``sti<6 hex>-...``;
teardown destroys the pool and then deletes any namespace left with that prefix, so a failing
test leaves nothing behind and never touches anyone else's lab.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagehelpers import Env

from netconfig import netns as nsmod


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    prefix = f"sti{secrets.token_hex(3)}-"
    home = tmp_path / "home"
    monkeypatch.setenv("SHADOWTAP_HOME", str(home))
    monkeypatch.setenv("SHADOWTAP_STATE_DIR", str(tmp_path / "state"))
    e = Env(home, prefix, tmp_path)
    try:
        yield e
    finally:
        try:
            from appliance.images.shadows import Pool

            if (home / "pool.json").exists():
                Pool(home).destroy()
        finally:
            for ns in nsmod.list_netns():
                if ns.startswith(prefix):
                    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                         text=True).stdout.split()
                    for p in out:
                        try:
                            os.kill(int(p), 9)
                        except (ProcessLookupError, ValueError):
                            pass
                    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
