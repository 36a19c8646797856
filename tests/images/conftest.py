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
from dataclasses import dataclass
from pathlib import Path

import pytest

from netconfig import netns as nsmod


@dataclass
class Env:
    home: Path
    prefix: str
    tmp: Path


def make_image(root: Path, *, files: int = 10, size: int = 100_000, version: str = "v1",
               port: int = 8080, seed: int = 1) -> Path:
    """An image with an HTTP service (python's http.server serving the tree) and random files."""
    import random

    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "shadowtap-image.yaml").write_text(
        "name: demo\n"
        f"service: {{command: 'exec python3 -m http.server {port} --bind 0.0.0.0', "
        f"port: {port}, health: /VERSION}}\n"
        "ignore: ['*.tmp']\n")
    (root / "VERSION").write_text(version + "\n")
    data = root / "data"
    data.mkdir(exist_ok=True)
    for i in range(files):
        (data / f"blob{i:03d}").write_bytes(rnd.randbytes(size))
    return root


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
            from appliance.shadows import Pool

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
