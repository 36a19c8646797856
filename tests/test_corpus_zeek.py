"""Zeek's hostile HTTP captures: extraction agrees with tshark, except where the bytes prove
tshark wrong; each such case is its own test saying why.
"""

from __future__ import annotations

import collections
import functools
import shutil
import subprocess
from pathlib import Path

import pytest
from corpus_paths import CORPUS

from replay.extract import Summary, extract_file

ZEEK = CORPUS / "zeek-http"
FILES = sorted(ZEEK.glob("*.pcap*")) if ZEEK.is_dir() else []
HAVE_TSHARK = shutil.which("tshark") is not None

pytestmark = pytest.mark.corpus

# tshark dissects HTTP only on ports it associates with HTTP; shadowtap detects HTTP by content.
# With tshark told to decode these ports as HTTP ("decode as"), the two agree: tested below.
NONSTANDARD_PORT = {
    "get-to-ssh-server.pcap": 22,
    "http-single-conn-22.pcap": 22,
    "zeek-image-post-1080-8000-x.pcap": 8000,
}
# Cases decided from the bytes, each tested separately below.
DECIDED = {"http_09.pcap", "no-uri.pcap", "methods.pcap", "query-method-non-standard-port.pcap"}
# Request smuggling shapes (RFC 9112 §11.2): shadowtap reports the desync and reads nothing
# after it; tshark reads on with one of the possible framings. Tested below.
SMUGGLING = {
    "variant-02-cl_uint64max.pcap": ("bad_content_length", "/smuggled-cl-uint64max"),
    "variant-04-te_cl_desync.pcap": ("te_with_content_length", "/smuggled-te-cl"),
    "variant-08-leading_zeros.pcap": ("content_length_leading_zeros", "/smuggled-leading-zeros"),
    "variant-10-multi_value_te.pcap": ("te_not_chunked_last", "/smuggled-multi-te"),
}


@functools.cache
def _tshark_requests(path: Path, port: int | None = None) -> collections.Counter:
    cmd = ["tshark", "-r", str(path), "-Y", "http.request", "-T", "fields", "-E",
           "aggregator=\x1f", "-e", "http.request.method", "-e", "http.request.uri", "-e",
           "http.host"]
    if port is not None:
        cmd[3:3] = ["-d", f"tcp.port=={port},http"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows: collections.Counter = collections.Counter()
    for line in out.splitlines():
        # Several requests in one frame come as one row with aggregated fields.
        cols = [c.split("\x1f") for c in line.split("\t")]
        for i in range(max(len(c) for c in cols)):
            rows[tuple(c[i] if i < len(c) else "" for c in cols)] += 1
    return rows


def _ours(path: Path) -> tuple[collections.Counter, list]:
    exs = list(extract_file(path))
    rows = collections.Counter(
        (x.request.method, x.request.target, x.request.host or "")
        for x in exs if x.request is not None
    )
    return rows, exs


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_extract_finishes_and_summary_adds_up(path: Path) -> None:
    s = Summary()
    exs = list(extract_file(path, summary=s))
    assert s.exchanges == len(exs)
    assert s.incomplete_exchanges == sum(not x.completeness.complete for x in exs)
    assert s.packets > 0
    assert not s.errors


@pytest.mark.skipif(not HAVE_TSHARK, reason="tshark not installed")
@pytest.mark.parametrize("path", [p for p in FILES if p.name not in DECIDED | set(SMUGGLING)],
                         ids=[p.name for p in FILES if p.name not in DECIDED | set(SMUGGLING)])
def test_requests_agree_with_tshark(path: Path) -> None:
    ours, _ = _ours(path)
    assert ours == _tshark_requests(path, NONSTANDARD_PORT.get(path.name))


@pytest.mark.skipif(not HAVE_TSHARK, reason="tshark not installed")
@pytest.mark.parametrize("name", sorted(NONSTANDARD_PORT))
def test_http_found_by_content_on_ports_tshark_does_not_dissect(name: str) -> None:
    ours, _ = _ours(ZEEK / name)
    assert sum(ours.values()) >= 1  # shadowtap finds them by content...
    # ...where tshark 4.0 alone (its default HTTP ports) sees none; should a newer tshark find
    # them without being told, it must agree with us
    assert _tshark_requests(ZEEK / name) in (collections.Counter(), ours)


def test_http09_requests_tshark_does_not_dissect() -> None:
    """``GET /zeek.html\\r\\n`` with no version is an HTTP/0.9 request, answered by raw bytes
    with no status line: tshark shows none of the five; the bytes are unambiguous."""
    _, exs = _ours(ZEEK / "http_09.pcap")
    got = sorted((x.request.method, x.request.target, x.request.version) for x in exs)
    assert ("GET", "/zeek.html", "HTTP/0.9") in got
    assert ("POST", "/zeek.html", "HTTP/0.9") in got
    first = next(x for x in exs if x.request.target == "/zeek.html" and x.request.method == "GET")
    assert first.response.version == "HTTP/0.9"
    assert b"Zeek Network Security Monitor" in first.response.body
    # "T /zeek.html": not a registered method, so not accepted as HTTP/0.9 (the server itself
    # answered "bad method").
    assert all(x.request.method != "T" for x in exs)


@pytest.mark.skipif(not HAVE_TSHARK, reason="tshark not installed")
def test_two_token_request_line_means_missing_target() -> None:
    """``GET HTTP/1.1``: tshark takes ``HTTP/1.1`` as the target (an HTTP/0.9 request). But the
    token matches the HTTP-version grammar exactly, llhttp and Zeek (whose test is named
    'no-uri') read it as a missing target, and the server answered with a status line and
    headers, which an HTTP/0.9 exchange never has. shadowtap: target '', version HTTP/1.1."""
    ours, exs = _ours(ZEEK / "no-uri.pcap")
    assert ours == {("GET", "", "bro.org"): 1}
    # tshark 4.0's reading; a tshark that changes its mind may only come round to ours
    assert _tshark_requests(ZEEK / "no-uri.pcap") in ({("GET", "HTTP/1.1", "bro.org"): 1}, ours)
    assert exs[0].request.version == "HTTP/1.1" and exs[0].response.version == "HTTP/1.1"
    assert exs[0].response.status == 200


@pytest.mark.skipif(not HAVE_TSHARK, reason="tshark not installed")
def test_methods_fuzz_agrees_except_two_token_line() -> None:
    """Zeek's request-line fuzz: every row agrees with tshark but ``OPTIONS HTTP/1.1``, decided
    as above (missing target)."""
    path = ZEEK / "methods.pcap"
    ours, _ = _ours(path)
    theirs = _tshark_requests(path)
    assert ("OPTIONS", "", "www.google.com") in ours  # the two-token line: missing target
    if theirs != ours:  # tshark 4.0; a tshark reading the line as we do agrees on every row
        assert theirs - ours == {("OPTIONS", "HTTP/1.1", "www.google.com"): 1}
        assert ours - theirs == {("OPTIONS", "", "www.google.com"): 1}


@pytest.mark.skipif(not HAVE_TSHARK, reason="tshark not installed")
def test_query_method_tshark_does_not_know() -> None:
    """QUERY (IETF httpbis 'safe method with body') on port 4711: tshark does not dissect it
    even when told the port is HTTP; the bytes are a well-formed request with a 200 answer."""
    path = ZEEK / "query-method-non-standard-port.pcap"
    ours, exs = _ours(path)
    # tshark 4.0 sees nothing; a tshark that learns QUERY must see what we see
    assert _tshark_requests(path, 4711) in (collections.Counter(), ours)
    assert len(exs) == 1
    x = exs[0]
    assert (x.request.method, x.request.target, x.request.host) == ("QUERY", "/users",
                                                                     "example.com")
    assert x.response.status == 200 and x.completeness.complete


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_variants_are_desync_and_the_smuggled_request_is_reported(name: str) -> None:
    reason, smuggled = SMUGGLING[name]
    ours, exs = _ours(ZEEK / name)
    assert [x.request.target for x in exs] == ["/", smuggled]
    assert exs[0].completeness.desync and exs[0].completeness.desync_reason == reason
    assert exs[1].completeness.desync and exs[1].completeness.desync_reason == "smuggled"
    assert exs[1].response is None  # reported, never answered, never replayed
    if HAVE_TSHARK:
        assert ours == _tshark_requests(ZEEK / name)


def agreement(files: list[Path]) -> dict[str, float]:
    """Agreement with tshark over captures: per capture (request rows equal) and per request
    row (multiset intersection over union), raw, and counting as agreeing a capture where the
    only difference is requests tshark reads after a message shadowtap reports as desync."""
    same = same_mod = 0
    inter = union = 0
    for path in files:
        ours, exs = _ours(path)
        theirs = _tshark_requests(path, NONSTANDARD_PORT.get(path.name))
        inter += sum((ours & theirs).values())
        union += sum((ours | theirs).values())
        if ours == theirs:
            same += 1
            same_mod += 1
        elif any(x.completeness.desync for x in exs) and ours <= theirs:
            same_mod += 1
    n = len(files) or 1
    return {"files": len(files), "per_capture": same / n, "per_capture_modulo_desync":
            same_mod / n, "per_request": inter / (union or 1)}


@pytest.mark.skipif(not HAVE_TSHARK, reason="tshark not installed")
def test_agreement_with_tshark_is_at_least_95_percent() -> None:
    """The measure the issue speaks of, over every capture but those decided from the bytes
    (HTTP/0.9, two-token request lines, a method tshark does not know, each tested above)."""
    a = agreement([p for p in FILES if p.name not in DECIDED])
    assert a["per_capture"] >= 0.95, a  # raw: smuggled requests are reported, as desync
    assert a["per_capture_modulo_desync"] == 1.0, a
    assert a["per_request"] >= 0.95, a


def test_gaps_are_recorded_where_the_capture_lost_data() -> None:
    _, exs = _ours(ZEEK / "entity_gap2.pcap")
    (x,) = exs
    assert x.completeness.response_gaps == [(2594, 1448)]
    assert len(x.response.body) == 4705 - 1448  # what was seen, nothing invented


def test_connect_and_upgrade_become_tunnels() -> None:
    _, exs = _ours(ZEEK / "connect-with-header.pcap")
    assert [x.tunnel for x in exs] == ["connect"]
    _, exs = _ours(ZEEK / "docker-http-upgrade.pcap")
    assert "upgrade:tcp" in [x.tunnel for x in exs]


def test_100_continue_interim_is_apart_from_final() -> None:
    _, exs = _ours(ZEEK / "100-continue.pcap")
    (x,) = exs
    assert [i.status for i in x.interim] == [100]
    assert x.response.status == 200 and x.completeness.complete
