"""Helpers of the replay tests (a module of its own: test modules import it by a name that no
other test directory uses, unlike ``conftest``, of which pytest sees several)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from replay.formats.jsonl import JsonlWriter
from replay.model import Exchange, Request
from replay.replayer import Replayer, run_async

SHADOWTAP = Path(sys.executable).parent / "shadowtap"

PER_ENDPOINT = 24


def run_cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real console script in a subprocess (its own interpreter and event loop)."""
    if not SHADOWTAP.exists():
        pytest.skip(f"console script not installed at {SHADOWTAP}")
    return subprocess.run([str(SHADOWTAP), *map(str, args)], capture_output=True,
                          timeout=timeout, check=False)


def capture_requests(per_endpoint: int = PER_ENDPOINT) -> list[Exchange]:
    """Requests spread over the services' endpoints, in a realistic interleaving."""
    out: list[Exchange] = []
    t = 1_700_000_000.0
    for i in range(per_endpoint):
        targets = [
            ("GET", f"/api/users/{100 + i}", b""),
            ("GET", f"/api/orders/{5000 + i}", b""),
            ("GET", f"/api/items/{i}", b""),
            ("GET", f"/api/reports/{i:04x}ab12cd", b""),
            ("GET", f"/api/health?probe={i}", b""),
            ("GET", f"/page/{i}", b""),
            ("POST", "/api/echo", b'{"n": %d, "tags": ["a", "b"]}' % i),
        ]
        for m, path, body in targets:
            headers = [("Host", "shop.example.com"), ("User-Agent", "test/1"),
                       ("Accept-Encoding", "gzip")]
            if body:
                headers.append(("Content-Type", "application/json"))
            out.append(Exchange(id=f"c{len(out)}", request=Request(m, path, "HTTP/1.1", headers,
                                                                   body),
                                ts_request_start=t))
            t += 0.002
    return out


def record_capture(url: str, requests: list[Exchange]) -> list[Exchange]:
    """Send each request to ``url`` and keep its real answer as the captured response."""

    async def go() -> list[Exchange]:
        async with Replayer([url], concurrency=8) as rp:
            got = []
            for ex in requests:
                res = (await rp.send(ex))[url]
                assert isinstance(res, Exchange), res
                got.append(Exchange(id=ex.id, request=ex.request, response=res.response,
                                    ts_request_start=ex.ts_request_start,
                                    ts_response_start=ex.ts_request_start + 0.001))
            return got

    return run_async(go())


def write_jsonl(path: Path, exchanges: list[Exchange]) -> Path:
    with path.open("wb") as f:
        w = JsonlWriter(f)
        for ex in exchanges:
            w.write(ex)
        w.close()
    return path
