"""Helpers for image-sync tests: the per-test environment record and a demo image maker."""

from __future__ import annotations

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
