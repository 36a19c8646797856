"""Every capture of tcpdump's test suite (``../shared/corpus/tcpdump``) through ``extract_file``.

These are hundreds of small, often deliberately malformed captures (fuzzer finds, heap-overflow
reproducers, odd link types). The contract: each one is either refused with a ``FormatError`` that
names the file, or read to the end (damage recorded in ``summary.errors``, naming the file) --
never any other exception. The whole set takes well under two seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from replay.errors import FormatError
from replay.extract import Summary, extract_file

pytestmark = pytest.mark.corpus

# Files that hold HTTP/1.x exchanges we extract, and how many. The corpus is about tcpdump's
# printers, so HTTP is rare. Cross-checked with `tshark -Y http.request` over the whole set: it
# finds requests in accecn_handshake, arcnet-rfc1051-arp-icmp-http (Linux ARCnet, link type 129)
# and eapon1.pcap; eapon1's are SSDP M-SEARCH over UDP (HTTPU), not HTTP over TCP, so out of
# scope. ipv4_tcp_http_xml.pcap is a lone response tshark does not dissect as HTTP.
EXPECTED_EXCHANGES = {
    "accecn_handshake.pcap": 1,
    "arcnet-rfc1051-arp-icmp-http.pcap": 1,
    "ipv4_tcp_http_xml.pcap": 1,
    "print-flags.pcap": 1,
}


def _files(corpus: Path) -> list[Path]:
    d = corpus / "tcpdump"
    if not d.is_dir():
        pytest.skip(f"tcpdump corpus not found at {d}")
    files = sorted(p for p in d.iterdir() if p.is_file())
    assert len(files) > 100
    return files


def test_every_tcpdump_capture_is_refused_cleanly_or_read(corpus):
    refused: dict[str, str] = {}
    yielded: dict[str, int] = {}
    damaged: dict[str, list[str]] = {}
    total = Summary()
    for f in _files(corpus):
        s = Summary()
        try:
            exchanges = list(extract_file(f, summary=s))
        except FormatError as e:
            msg = str(e)
            assert str(f) in msg, msg
            assert "\n" not in msg
            refused[f.name] = msg
            continue
        # Any other exception propagates and fails the test with the file in the traceback;
        # make the file name explicit too.
        assert s.files == [str(f)]
        for e in s.errors:
            assert str(f) in e, e
        if s.errors:
            damaged[f.name] = s.errors
        if exchanges:
            yielded[f.name] = len(exchanges)
            assert s.exchanges == len(exchanges)
            for ex in exchanges:
                assert ex.request is not None or ex.response is not None
        total.packets += s.packets
    assert yielded == EXPECTED_EXCHANGES
    # Refusals are about link types we do not decode, and say so.
    for name, msg in refused.items():
        assert "unsupported link type" in msg or "not a pcap" in msg, (name, msg)
    # Most of the corpus is read (Ethernet, raw IP, cooked, loopback, PPP...).
    assert total.packets > 1000
    assert len(refused) < len(yielded) + 300


@pytest.mark.parametrize(
    "name,request_line,status,note",
    [
        # tshark agrees: GET /1M (Host 66.228.43.12) -> 200; the 1 MB body is not in the capture.
        ("accecn_handshake.pcap", ("GET", "/1M", "66.228.43.12"), 200, "response_truncated"),
        # tshark agrees: GET / (Host tcpdump.org) -> 301, over Linux ARCnet (RFC 1051 framing).
        ("arcnet-rfc1051-arp-icmp-http.pcap", ("GET", "/", "tcpdump.org"), 301, "complete"),
        # tshark agrees: GET / (Host localhost) -> 200, complete.
        ("print-flags.pcap", ("GET", "/", "localhost"), 200, "complete"),
        # A single packet: an HTTP response whose request was not captured.
        ("ipv4_tcp_http_xml.pcap", None, 200, "unpaired"),
    ],
)
def test_http_exchanges_in_tcpdump_corpus(corpus, name, request_line, status, note):
    f = corpus / "tcpdump" / name
    if not f.exists():
        pytest.skip(f"{f} not in corpus")
    (ex,) = list(extract_file(f))
    if request_line is None:
        assert ex.request is None
    else:
        assert (ex.request.method, ex.request.target, ex.request.host) == request_line
    assert ex.response is not None and ex.response.status == status
    c = ex.completeness
    if note == "complete":
        assert c.complete
    else:
        assert getattr(c, note) is True
        assert not c.complete
