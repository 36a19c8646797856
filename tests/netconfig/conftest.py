"""Fixtures for netconfig tests: a private state dir and a lab with its own unique names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nethelpers import default_spec_dict, env, force_cleanup, unique_prefix

from netconfig import lab


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """Lab and mirror records go to the test's tmp dir, never to /run/shadowtap."""
    d = tmp_path / "state"
    with env("SHADOWTAP_STATE_DIR", str(d)):
        yield d


@pytest.fixture(scope="module")
def running_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The default lab plus an 'outside' host, up for a whole module, torn down after it."""
    prefix = unique_prefix()
    d = tmp_path_factory.mktemp("labstate")
    with env("SHADOWTAP_STATE_DIR", str(d)):
        spec = lab.parse_spec(default_spec_dict(prefix, outside=True))
        try:
            lab.up(spec)
            yield spec
        finally:
            try:
                lab.down(prefix)
            finally:
                force_cleanup(prefix)
