"""TLS record framing and decryption without a network or root: a real OpenSSL client and
server (Python's ``ssl`` over memory BIOs, writing the key log) talk HTTP/1.1; their bytes are
cut into TCP segments of every awkward size (a record header split over segments, many records
in one segment) and fed to the extractor. Then the same bytes damaged at random: flipped bits,
lost segments, cut streams. Every decrypted exchange must be exact; damage is counted, never
an exception."""

from __future__ import annotations

import random
import ssl
from pathlib import Path

import pytest
from netsim import run
from tlslab import MemoryTls, flight_frames

from replay.tls import KeyLog

BODIES = [b"", b"x" * 10, bytes(range(256)) * 80, b"y" * 40000]


def _conversation(tmp: Path, version: ssl.TLSVersion, ciphers: str | None = None
                  ) -> tuple[list[tuple[bool, bytes]], KeyLog]:
    """(from_client, bytes) flights of one TLS connection carrying len(BODIES) keep-alive
    exchanges, and the key log the client wrote."""
    keylog = tmp / f"keys-{version.name}-{ciphers}.log".replace("/", "-")
    m = MemoryTls(tmp, version, keylog, ciphers=ciphers)
    c, s, pump = m.c, m.s, m.pump

    pump()
    for i, body in enumerate(BODIES):
        c.write(f"POST /item/{i} HTTP/1.1\r\nHost: shop.test\r\nContent-Length: {len(body)}"
                "\r\n\r\n".encode() + body)
        pump()
        got = b""
        while True:
            try:
                got += s.read(65536)
            except ssl.SSLWantReadError:
                break
        assert got.endswith(body)
        resp = body[::-1] + b"!"
        s.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(resp)}\r\n\r\n".encode() + resp)
        pump()
        while True:
            try:
                c.read(65536)
            except ssl.SSLWantReadError:
                break
    kl = KeyLog()
    kl.add_file(keylog)
    return m.flights, kl


CASES = [
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES256-GCM-SHA384"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-CHACHA20-POLY1305"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA"),  # CBC, encrypt-then-MAC
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES256-SHA384/noetm"),  # CBC, MAC-then-encrypt
    (ssl.TLSVersion.TLSv1_3, None),
]


@pytest.mark.parametrize("version,ciphers", CASES, ids=lambda v: getattr(v, "name", v))
@pytest.mark.parametrize("sizes", [[1], [3, 4, 5, 7], [1448], [60000]],
                         ids=["1", "odd", "mss", "coalesced"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_records_over_any_segmentation(tmp_path: Path, version: ssl.TLSVersion,
                                       ciphers: str | None, sizes: list[int], native: bool):
    flights, kl = _conversation(tmp_path, version, ciphers)
    if sizes == [60000]:  # several records (and both flights' worth) in one segment
        merged: list[tuple[bool, bytes]] = []
        for fc, b in flights:
            if merged and merged[-1][0] == fc:
                merged[-1] = (fc, merged[-1][1] + b)
            else:
                merged.append((fc, b))
        flights = merged
    exs, e = run(flight_frames(flights, sizes, random.Random(1)), keylog=kl, native=native)
    assert [(x.request.target, x.request.body, x.response.status, x.response.body)
            for x in exs] == [(f"/item/{i}", b, 200, b[::-1] + b"!")
                              for i, b in enumerate(BODIES)]
    assert all(x.completeness.complete for x in exs)
    tls = exs[0].meta["tls"]
    cbc = bool(ciphers) and "CBC" in tls["cipher"]
    assert cbc == (bool(ciphers) and "GCM" not in ciphers and "CHACHA" not in ciphers)
    assert e.tls_stats.get("encrypt_then_mac", 0) == (cbc and "/noetm" not in ciphers)
    assert tls["version"] == ("TLS 1.3" if version == ssl.TLSVersion.TLSv1_3 else "TLS 1.2")
    assert tls["sni"] == "shop.test" and tls["alpn"] == "http/1.1"
    assert e.tls_stats["decrypted"] == 1 and not e.tls_stats.get("auth_failures")


@pytest.mark.parametrize("version,ciphers", CASES, ids=lambda v: getattr(v, "name", v))
def test_damage_is_counted_never_raised(tmp_path: Path, version: ssl.TLSVersion,
                                        ciphers: str | None):
    flights, kl = _conversation(tmp_path, version, ciphers)
    rng = random.Random(7)
    for trial in range(40):
        frames = flight_frames(flights, [37, 100, 1448, 5000], rng)
        data_frames = [i for i, f in enumerate(frames) if len(f[2]) > 54]
        kind = trial % 4
        if kind == 0:  # flip bits in a few segments
            for i in rng.sample(data_frames, min(3, len(data_frames))):
                ts, lt, f = frames[i]
                b = bytearray(f)
                b[rng.randrange(54, len(b))] ^= 1 << rng.randrange(8)
                frames[i] = (ts, lt, bytes(b))
        elif kind == 1:  # lose a window of segments
            i = rng.choice(data_frames)
            del frames[i:i + rng.randint(1, 4)]
        elif kind == 2:  # the capture ends anywhere
            frames = frames[:rng.randrange(4, len(frames))]
        else:  # the capture starts anywhere (no SYN, no handshake)
            frames = frames[rng.randrange(3, len(frames) - 2):]
        exs, e = run(frames, keylog=kl)
        for x in exs:  # whatever comes out is real
            if x.request is not None and x.completeness.complete:
                i = int(x.request.target.rsplit("/", 1)[1])
                assert x.request.body == BODIES[i]
                if x.response is not None:
                    assert x.response.body == BODIES[i][::-1] + b"!"
        st = e.tls_stats
        if st.get("connections"):
            assert sum(st.get(k, 0) for k in ("decrypted", "no_key", "auth_failed", "h2",
                                              "mid_stream", "unsupported_cipher",
                                              "no_server_hello")) == 1
