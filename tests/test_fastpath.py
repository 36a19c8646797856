"""The native fast path (``replay/_fastpath.c``) against the Python extractor it stands in for.

The C code handles only the common case and gives a connection back to the Python reassembler
(set to its last checkpoint, the segments since replayed) the moment anything is unusual. The
contract is that nothing observable changes: every test here extracts the same capture twice,
once with the fast path and once without, and requires byte-identical exchange records (ids,
timestamps, headers, bodies, completeness) in the same order, and the same summary counters.
The captures cover the common case (where the fast path must actually engage) and everything
that makes it hand back: loss, reordering, retransmissions, idle timeouts, evictions, tiny
buffers, a port filter, IPv6 and VLANs, random byte damage, and the public corpora.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import orjson
import pytest
from corpus_paths import CORPUS

from replay._native import load_c
from replay.extract import Extractor, Summary, extract_file
from replay.formats.jsonl import exchange_to_record
from replay.formats.pcap import CaptureReader
from replay.model import Exchange
from replay.synth import generate_pcap

FAST = load_c("replay._fastpath", "FastPath")
pytestmark = pytest.mark.skipif(
    FAST is None, reason="replay._fastpath is not built (bash scripts/setup.sh builds it)")


def _lines(x: Exchange | bytes) -> list[bytes]:
    if type(x) is bytes:
        return x.splitlines(keepends=True)
    return [orjson.dumps(exchange_to_record(x), option=orjson.OPT_APPEND_NEWLINE)]  # type: ignore[arg-type]


def _run(path: Path, native: bool, lines: bool = False,
         **limits: object) -> tuple[list[bytes], dict]:
    s = Summary()
    recs = [line
            for x in extract_file(path, summary=s, native=native, lines=lines, **limits)
            for line in _lines(x)]
    d = s.to_dict()
    d.pop("seconds")
    d.pop("packets_per_second")
    return recs, d


def _same(path: Path, **limits: object) -> list[bytes]:
    py_recs, py_sum = _run(path, False, **limits)
    for lines in (False, True):
        # Exchanges built from C, and (lines) JSONL lines encoded in C.
        c_recs, c_sum = _run(path, True, lines, **limits)
        for i, (a, b) in enumerate(zip(py_recs, c_recs, strict=False)):
            assert a == b, (f"{path.name} (lines={lines}): exchange {i} differs:\n"
                            f" python {a[:400]!r}\n native {b[:400]!r}")
        assert len(c_recs) == len(py_recs), f"{path.name}: {len(c_recs)} vs {len(py_recs)}"
        assert c_sum == py_sum
    return c_recs


def _fast_stats(path: Path, **limits: object) -> dict:
    ex = Extractor(lambda e: None, **limits)  # type: ignore[arg-type]
    with CaptureReader(path) as r:
        ex.run(iter(r))
    ex.finish()
    return ex.native.stats()


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("fast") / "clean.pcap"
    generate_pcap(p, connections=300, concurrency=60, seed=3)
    return p


def test_clean_traffic_is_identical_and_runs_native(clean: Path) -> None:
    recs = _same(clean)
    assert len(recs) > 500
    st = _fast_stats(clean)
    # Every connection starts with a SYN here, so each is adopted; the ones given back are
    # those with something the C code leaves to Python (a 100-continue is read natively, a
    # reset mid-exchange is not). Most exchanges must come from the fast path, or it does
    # nothing.
    assert st["adopted"] == 300
    assert st["exchanges"] > 0.8 * len(recs)


@pytest.mark.parametrize("opts", [
    {"loss": 0.01},
    {"reorder": 0.03},
    {"retransmit": 0.03},
    {"loss": 0.005, "reorder": 0.01, "retransmit": 0.01, "ipv6_share": 0.5},
    {"vlan": 42, "ipv6_share": 0.3, "chunked_share": 0.6},
    {"post_share": 0.9, "chunked_share": 0.5, "mss": 200},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("seed", [1, 2])
def test_damaged_traffic_is_identical(tmp_path: Path, opts: dict, seed: int) -> None:
    p = tmp_path / "d.pcap"
    generate_pcap(p, connections=120, concurrency=40, seed=seed, **opts)  # type: ignore[arg-type]
    _same(p)


@pytest.mark.parametrize("limits", [
    {"idle_timeout": 0.002},
    {"max_connections": 7},
    {"max_buffer": 3000},
    {"port": 80},
    {"port": 8081},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_limits_are_identical(clean: Path, limits: dict) -> None:
    _same(clean, **limits)


def _records(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each record's frame in a little-endian classic pcap."""
    out = []
    pos = 24
    while pos + 16 <= len(data):
        n = struct.unpack_from("<I", data, pos + 8)[0]
        out.append((pos + 16, n))
        pos += 16 + n
    return out


@pytest.mark.parametrize("seed", range(6))
def test_random_damage_is_identical(tmp_path: Path, clean: Path, seed: int) -> None:
    """Bytes flipped anywhere in the frames (headers, heads, chunk sizes, bodies): both paths
    must read the same damaged traffic the same way."""
    rng = random.Random(seed)
    src = tmp_path / "src.pcap"
    generate_pcap(src, connections=80, concurrency=30, seed=10 + seed, chunked_share=0.5,
                  retransmit=0.01)
    data = bytearray(src.read_bytes())
    recs = _records(bytes(data))
    for _ in range(400):
        off, n = rng.choice(recs)
        if n:
            i = off + rng.randrange(n)
            data[i] = rng.choice([0, 10, 13, 32, 48, 58, 255, rng.randrange(256)])
    p = tmp_path / "damaged.pcap"
    p.write_bytes(bytes(data))
    _same(p)


def test_pcap_walk_in_c_matches_the_reader(tmp_path: Path, clean: Path) -> None:
    """A capture cut mid-record: the C record walk stops where the Python reader stops, with
    the same error, and the exchanges before the cut are identical."""
    data = clean.read_bytes()
    p = tmp_path / "cut.pcap"
    p.write_bytes(data[: len(data) * 2 // 3])
    _same(p)
    s = Summary()
    list(extract_file(p, summary=s))
    assert s.errors and "truncated at byte" in s.errors[0]


CORPUS_FILES = sorted(
    f for d in ("zeek-http", "tcpdump") if (CORPUS / d).is_dir()
    for f in (CORPUS / d).iterdir() if ".pcap" in f.name
)


@pytest.mark.corpus
def test_corpus_is_identical() -> None:
    if not CORPUS_FILES:
        pytest.skip(f"capture corpus not found at {CORPUS}")
    from replay.errors import FormatError
    checked = 0
    for f in CORPUS_FILES:
        try:
            _same(f)
        except FormatError:
            continue
        checked += 1
    assert checked > 100
