"""Small JSON state records under /run/shadowtap (tmpfs: gone after reboot, as are namespaces).

Written atomically (temp file + rename + fsync) under an flock, so a crash never leaves a
half-written record and two commands never interleave their updates.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def state_dir() -> Path:
    """Where records live; ``SHADOWTAP_STATE_DIR`` overrides (tests, non-default installs)."""
    return Path(os.environ.get("SHADOWTAP_STATE_DIR", "/run/shadowtap"))


def read(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when there is none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write(path: Path, data: dict[str, Any]) -> None:
    """Replace the record at ``path`` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write cycles on ``path`` across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
