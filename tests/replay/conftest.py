"""Fixtures for the replay tests: real v1/v2 services on loopback and a capture of production.

The "capture" is made the way production traffic would be: real requests to the v1 service
over real sockets, its real answers recorded as Exchanges and written to JSONL with the
project's own writer. The diff tests then replay that capture to a secondary (v1 again) and a
candidate (v2).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from replay_helpers import capture_requests, record_capture, write_jsonl
from replay_servers import HttpServer, make_service


@pytest.fixture(scope="session")
def production() -> Iterator[HttpServer]:
    with HttpServer(make_service("v1")) as s:
        yield s


@pytest.fixture(scope="session")
def secondary() -> Iterator[HttpServer]:
    with HttpServer(make_service("v1")) as s:
        yield s


@pytest.fixture(scope="session")
def candidate() -> Iterator[HttpServer]:
    with HttpServer(make_service("v2")) as s:
        yield s


@pytest.fixture(scope="session")
def capture(production: HttpServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JSONL capture of production (v1) answering ``capture_requests()``."""
    d = tmp_path_factory.mktemp("capture")
    return write_jsonl(d / "prod.jsonl", record_capture(production.url, capture_requests()))
