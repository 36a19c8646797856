"""Helpers for image-sync tests: the per-test environment record and a demo image maker."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


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


REPO = Path(__file__).resolve().parents[2]


def run_cli(env: Env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``shadowtap ARGS`` as a user runs it, against the test's home, state dir and prefix."""
    e = dict(os.environ, SHADOWTAP_HOME=str(env.home), SHADOWTAP_STATE_DIR=str(env.tmp / "state"),
             SHADOWTAP_POOL_PREFIX=env.prefix, COLUMNS="200")
    e.pop("PYTHONDONTWRITEBYTECODE", None)  # services must write bytecode, as in production
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True,
                          text=True, env=e, timeout=timeout, cwd=REPO)


def error_lines(stderr: str) -> list[str]:
    """The ``error: ...`` lines of a command's stderr (other notices may precede them)."""
    return [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
