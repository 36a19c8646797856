"""Extraction against ground truth: generated captures with thousands of interleaved connections,
clean and impaired (loss, reordering, retransmission). Nothing may be invented; on a clean
capture nothing may be missed; loss may only cost the exchanges it touched."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from replay.extract import Summary, extract_file
from replay.synth import generate_pcap


def _run(tmp_path: Path, **kw: object) -> tuple[collections.Counter, collections.Counter,
                                                 Summary, list, object]:
    truth: list = []
    cap = tmp_path / "t.pcap"
    st = generate_pcap(cap, truth=truth, **kw)  # type: ignore[arg-type]
    s = Summary()
    exs = list(extract_file(cap, summary=s))
    want = collections.Counter((c[0], c[1], m, t, h, status) for c, m, t, h, status in truth)
    got = collections.Counter(
        (x.conn.client_ip, x.conn.client_port, x.request.method, x.request.target,
         x.request.host, x.response.status if x.response else None)
        for x in exs if x.request is not None
    )
    return want, got, s, exs, st


def test_clean_capture_is_exact(tmp_path: Path) -> None:
    want, got, s, exs, st = _run(tmp_path, connections=1500, concurrency=300, seed=11,
                                 ipv6_share=0.2)
    assert got == want
    assert s.incomplete_exchanges == 0 and s.gaps == 0
    assert s.exchanges == st.requests  # type: ignore[attr-defined]
    assert all(x.completeness.complete for x in exs)


def test_vlan_tagged_capture_is_exact(tmp_path: Path) -> None:
    want, got, _s, _, _ = _run(tmp_path, connections=200, concurrency=50, seed=12, vlan=42)
    assert got == want


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reordering_and_retransmission_lose_nothing(tmp_path: Path, seed: int) -> None:
    want, got, s, _exs, st = _run(tmp_path, connections=400, concurrency=100, seed=seed,
                                 reorder=0.05, retransmit=0.05)
    assert got == want
    assert s.retransmits >= st.retransmitted_segments  # type: ignore[attr-defined]
    assert s.gaps == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_loss_invents_nothing_and_marks_what_it_touched(tmp_path: Path, seed: int) -> None:
    want, got, s, exs, st = _run(tmp_path, connections=400, concurrency=100, seed=seed,
                                 loss=0.02, reorder=0.02, retransmit=0.02)
    invented = got - want
    # A request whose head was hit by loss can only be missing, never altered or invented.
    # (A lost *response* head leaves the request paired with status None: count those apart.)
    altered = collections.Counter({k: v for k, v in invented.items() if k[5] is not None})
    assert not altered, list(altered)[:5]
    missing = sum((want - got).values())
    lost = st.dropped_segments  # type: ignore[attr-defined]
    assert missing <= 3 * lost  # each lost segment can spoil at most a few pipelined exchanges
    assert s.gaps > 0
    assert s.incomplete_exchanges > 0
    incomplete = [x for x in exs if not x.completeness.complete]
    assert all(x.completeness.request_gaps or x.completeness.response_gaps
               or x.completeness.unpaired or x.completeness.request_truncated
               or x.completeness.response_truncated for x in incomplete)
