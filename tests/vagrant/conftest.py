"""Fixtures for the Vagrant lab's tests: the generated description, and netconfig's helpers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "netconfig"))  # nethelpers

from netconfig import lab, vagrant

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec() -> lab.LabSpec:
    return lab.load_spec(None)


@pytest.fixture(scope="module")
def full(spec: lab.LabSpec) -> dict[str, Any]:
    return vagrant.describe(spec)
