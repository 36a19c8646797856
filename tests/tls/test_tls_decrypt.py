"""TLS decryption against real peers: nginx serving HTTPS (TLS 1.2 and 1.3, each AEAD cipher
family), curl writing SSLKEYLOGFILE and making several requests on one keep-alive connection,
tcpdump capturing it, all inside a network namespace made for the test.

Every request curl made must come back as an Exchange with its status and body length, marked
with its TLS version and cipher, through the native fast path's hand-off and the pure-Python
reader alike, and agree with tshark's decryption of the same capture. Then hostile variants of
the same capture and key log: wrong keys, garbage lines, a truncated file, a capture starting
mid-connection, a window of missing segments, no key log at all.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest
from tlslab import (
    HOST,
    Fetch,
    capture,
    curl,
    curl_h2,
    openssl_key_updates,
    tls_lab,
    tshark_requests,
)

from replay.extract import Summary, extract_file
from replay.formats.jsonl import read_jsonl
from replay.formats.pcap import CaptureReader
from replay.model import Exchange
from replay.tls import KeyLog

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("nginx", "curl", "tcpdump")),
                       reason="needs nginx, curl and tcpdump"),
]

REPO = Path(__file__).resolve().parents[2]
PATHS = ["/small", "/mid", "/big", "/empty", "/small", "/big"]

COMBOS = [
    # (TLS version, curl option value, the IANA name shadowtap reports)
    ("1.2", "ECDHE-RSA-AES128-GCM-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    ("1.2", "AES256-GCM-SHA384", "TLS_RSA_WITH_AES_256_GCM_SHA384"),
    ("1.2", "ECDHE-RSA-CHACHA20-POLY1305", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    ("1.2", "ECDHE-RSA-AES128-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"),
    ("1.2", "AES256-SHA", "TLS_RSA_WITH_AES_256_CBC_SHA"),
    ("1.3", "TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"),
    ("1.3", "TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"),
    ("1.3", "TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256"),
]


@dataclass
class World:
    d: Path
    pcap: Path
    keylog: Path
    fetches: dict[str, list[Fetch]]
    """What curl got, by the cipher name shadowtap reports."""
    h2_status: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    d = tmp_path_factory.mktemp("tls")
    pcap, keylog = d / "cap.pcap", d / "keys.log"
    fetches: dict[str, list[Fetch]] = {}
    with tls_lab(d) as lab, capture(lab, pcap):
        for version, opt, name in COMBOS:
            kw = {"ciphers": opt} if version == "1.2" else {"tls13_ciphers": opt}
            fetches[name] = curl(lab, keylog, PATHS, tls=version, post="item=42&qty=3",
                                 **kw)  # type: ignore[arg-type]
        h2 = curl_h2(lab, keylog, "/small")
    return World(d, pcap, keylog, fetches, h2)


def _extract(pcap: Path, keylog: KeyLog | None, **kw: object) -> tuple[list[Exchange], Summary]:
    s = Summary()
    out = [e for e in extract_file(pcap, summary=s, keylog=keylog, **kw)]  # type: ignore[arg-type]
    assert all(isinstance(e, Exchange) for e in out)
    return out, s


def _keys(path: Path) -> KeyLog:
    kl = KeyLog()
    kl.add_file(path)
    return kl


def _by_cipher(exs: list[Exchange]) -> dict[str, list[Exchange]]:
    out: dict[str, list[Exchange]] = {}
    for e in exs:
        if e.request is not None and e.request.version == "HTTP/2":
            continue  # the HTTP/2 connection (replay.h2; tests/h2 has its own)
        out.setdefault(e.meta["tls"]["cipher"], []).append(e)
    return out


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_every_request_recovered_per_cipher_and_version(world: World, native: bool):
    exs, s = _extract(world.pcap, _keys(world.keylog), native=native)
    got = _by_cipher(exs)
    assert set(got) == set(world.fetches)
    for name, fetches in world.fetches.items():
        mine = got[name]
        assert [(e.request.method, e.request.target, e.response.status, len(e.response.body))
                for e in mine] == [(f.method, f.path, f.status, f.size) for f in fetches], name
        for e in mine:
            assert e.completeness.complete, (name, e.completeness)
            tls = e.meta["tls"]
            assert tls["version"] == ("TLS 1.3" if "_WITH_" not in name else "TLS 1.2")
            assert tls["sni"] == HOST and tls["alpn"] == "http/1.1"
            assert e.request.host == HOST
        post = mine[-1]
        assert post.request.body == b"item=42&qty=3" and post.response.body == b"created\n"
        # the bodies are the files nginx served, byte for byte
        big = next(e for e in mine if e.request.target == "/big")
        assert big.response.body == (world.d / "www" / "big").read_bytes()
    assert s.tls["connections"] == len(COMBOS) + 1
    assert s.tls["decrypted"] == len(COMBOS)
    assert s.tls["h2"] == 1  # HTTP/2 (ALPN h2): decrypted, read by replay.h2
    (h2,) = [e for e in exs if e.request.version == "HTTP/2"]
    assert h2.request.target == "/small" and h2.response.status == world.h2_status
    assert h2.meta["tls"]["alpn"] == "h2" and s.h2["via_tls"] == 1
    assert not s.tls.get("auth_failures") and not s.tls.get("no_key")
    assert s.exchanges == sum(len(f) for f in world.fetches.values()) + 1
    assert s.http_connections == len(COMBOS) + 1  # the HTTP/2 one is HTTP too


def test_agrees_with_tshark(world: World):
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    exs, _ = _extract(world.pcap, _keys(world.keylog))
    theirs = tshark_requests(world.pcap, world.keylog)
    # (tshark's http.request is HTTP/1 only: the HTTP/2 connection is in neither list)
    assert len(theirs) == sum(len(f) for f in world.fetches.values())
    assert Counter(theirs) == Counter((e.request.method, e.request.target) for e in exs
                                      if e.request.version != "HTTP/2")


def test_cli_with_and_without_keylog(world: World, tmp_path: Path):
    cli = [str(REPO / ".venv/bin/shadowtap"), "extract", str(world.pcap)]
    p = subprocess.run(cli + ["-o", str(tmp_path / "none.jsonl")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    n = len(COMBOS) + 1
    assert f"{n} TLS connections (SNI {HOST}, ALPN " in p.stderr
    assert "give --keylog to decrypt" in p.stderr
    assert "http/1.1" in p.stderr and "h2" in p.stderr
    assert (tmp_path / "none.jsonl").read_bytes() == b""
    # the key log split in two files, both given
    lines = world.keylog.read_text().splitlines(keepends=True)
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("".join(lines[::2]))
    b.write_text("".join(lines[1::2]))
    out = tmp_path / "x.jsonl"
    p = subprocess.run(cli + ["--keylog", str(a), "--keylog", str(b), "-o", str(out),
                              "--summary-json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    summ = json.loads(p.stderr.strip().splitlines()[-1])
    assert summ["tls"]["decrypted"] == len(COMBOS) and summ["tls"]["h2"] == 1
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == sum(len(f) for f in world.fetches.values()) + 1  # + the HTTP/2 one
    assert {r["meta"]["tls"]["cipher"] for r in recs} == set(world.fetches)
    # the marker survives a round trip through the JSONL reader
    back = list(read_jsonl(out))
    assert back[0].meta["tls"] == {"version": "TLS 1.2", "sni": HOST, "alpn": "http/1.1",
                                   "cipher": COMBOS[0][2]}
    # a missing key log is one line and exit 2
    p = subprocess.run(cli + ["--keylog", str(tmp_path / "nope.log")], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "nope.log" in p.stderr and "Traceback" not in p.stderr


def test_pcapng_decryption_secrets_block(world: World, tmp_path: Path):
    if shutil.which("editcap") is None:
        pytest.skip("editcap not installed")
    ng = tmp_path / "dsb.pcapng"
    subprocess.run(["editcap", "--inject-secrets", f"tls,{world.keylog}", str(world.pcap),
                    str(ng)], check=True, capture_output=True)
    exs, s = _extract(ng, None)
    assert s.tls["decrypted"] == len(COMBOS)
    assert len(exs) == sum(len(f) for f in world.fetches.values()) + 1  # + the HTTP/2 one


# -- hostile -------------------------------------------------------------------------------------

def test_wrong_keys_count_auth_failures(world: World, tmp_path: Path):
    bad = tmp_path / "bad.log"
    out = []
    for line in world.keylog.read_text().splitlines():
        label, cr, secret = line.split()
        flipped = f"{int(secret[0], 16) ^ 1:x}" + secret[1:]
        out.append(f"{label} {cr} {flipped}")
    bad.write_text("\n".join(out) + "\n")
    exs, s = _extract(world.pcap, _keys(bad))
    assert exs == []
    # (the HTTP/2 connection's ALPN is encrypted under TLS 1.3: it failed like the others)
    assert s.tls["auth_failed"] == len(COMBOS) + 1
    assert s.tls["auth_failures"] > 0
    assert not s.tls.get("decrypted")


def test_garbage_in_the_key_log(world: World, tmp_path: Path):
    lines = world.keylog.read_text().splitlines()
    noisy = []
    for i, line in enumerate(lines):
        noisy.append(line)
        noisy.append(["", "# comment", "garbage", "CLIENT_RANDOM zz", "\t\t", "x" * 5000,
                      line[: len(line) // 2]][i % 7])
    p = tmp_path / "noisy.log"
    p.write_bytes("\n".join(noisy).encode() + b"\n\x00\xff\xfe CLIENT_RANDOM")
    kl = _keys(p)
    assert kl.garbage >= 4
    exs, s = _extract(world.pcap, kl)
    assert s.tls["decrypted"] == len(COMBOS)
    assert len(exs) == sum(len(f) for f in world.fetches.values()) + 1  # + the HTTP/2 one


def test_truncated_capture(world: World, tmp_path: Path):
    data = world.pcap.read_bytes()
    for frac in (0.2, 0.5, 0.83):
        cut = tmp_path / f"cut{frac}.pcap"
        cut.write_bytes(data[: int(len(data) * frac)])
        exs, s = _extract(cut, _keys(world.keylog))
        assert any("truncated" in e for e in s.errors)
        total = sum(len(f) for f in world.fetches.values())
        assert len(exs) < total
        for e in exs:  # whatever came out is real
            if e.response is not None and e.completeness.complete:
                assert e.response.status in (200, 201)


def _frames(pcap: Path) -> list[tuple[float, bytes]]:
    with CaptureReader(pcap) as r:
        return [(ts, bytes(f)) for ts, _lt, f in r]


def _write(path: Path, frames: list[tuple[float, bytes]]) -> None:
    with path.open("wb") as f:
        w = dpkt.pcap.Writer(f, linktype=1)
        for ts, fr in frames:
            w.writepkt(fr, ts)


def _tcp(frame: bytes) -> dpkt.tcp.TCP:
    return dpkt.ethernet.Ethernet(frame).data.data


def test_capture_starting_mid_connection(world: World, tmp_path: Path):
    frames = _frames(world.pcap)
    # drop everything of the first connection up to its first request (handshake included)
    first = _tcp(frames[0][1]).sport
    kept, dropping = [], True
    seen_data = 0
    for ts, fr in frames:
        t = _tcp(fr)
        if dropping and first in (t.sport, t.dport):
            if t.data:
                seen_data += 1
            if seen_data < 12:
                continue
        dropping = False
        kept.append((ts, fr))
    mid = tmp_path / "mid.pcap"
    _write(mid, kept)
    exs, s = _extract(mid, _keys(world.keylog))
    assert s.tls["mid_stream"] == 1
    assert s.tls["decrypted"] == len(COMBOS) - 1
    assert any(k.startswith("- (") for k in s.tls_undecrypted)  # no SNI seen for that one
    # (+ 1: the HTTP/2 connection's exchange)
    assert len(exs) == sum(len(f) for f in world.fetches.values()) - len(PATHS) - 1 + 1


def test_missing_segments_inside_a_response(world: World, tmp_path: Path):
    """Two server segments in the middle of the first /big response of each connection are
    lost: that exchange records the hole, and every later exchange is still decrypted."""
    frames = _frames(world.pcap)
    per_conn: dict[int, int] = {}
    kept = []
    for ts, fr in frames:
        t = _tcp(fr)
        if t.sport in (443,) and len(t.data) == 1448:
            n = per_conn.get(t.dport, 0) + 1
            per_conn[t.dport] = n
            if n in (20, 21):  # inside the first /big (after /small and /mid)
                continue
        kept.append((ts, fr))
    lossy = tmp_path / "lossy.pcap"
    _write(lossy, kept)
    exs, s = _extract(lossy, _keys(world.keylog))
    assert s.gaps >= len(COMBOS)
    assert s.tls["decrypted"] == len(COMBOS)
    got = _by_cipher(exs)
    for name, fetches in world.fetches.items():
        mine = got[name]
        holed = [e for e in mine if not e.completeness.complete]
        assert holed and all(e.request.target == "/big" for e in holed), name
        # every request after the hole is there, with its status and length
        tail = [(f.method, f.path, f.status, f.size) for f in fetches][3:]
        assert [(e.request.method, e.request.target, e.response.status,
                 len(e.response.body)) for e in mine if e.completeness.complete][-len(tail):] \
            == tail, name


def test_tls13_key_updates(tmp_path: Path):
    """KeyUpdate both ways (RFC 8446 §4.6.3): the next secrets by "traffic upd", from seq 0."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    pcap, keylog = tmp_path / "ku.pcap", tmp_path / "ku.log"
    paths = ["/small", "/mid", "/small", "/big"]
    with tls_lab(tmp_path) as lab, capture(lab, pcap):
        assert openssl_key_updates(lab, keylog, paths) == len(paths)
    exs, s = _extract(pcap, _keys(keylog))
    assert [(e.request.target, e.response.status) for e in exs] == [(p, 200) for p in paths]
    assert all(e.completeness.complete for e in exs)
    # K: the client's and then the server's keys; k: the client's only
    assert s.tls["key_updates"] == 2 + 1 + 2
    assert not s.tls.get("auth_failures")


def test_a_handshake_the_server_never_answered_is_not_a_missing_key(world: World,
                                                                    tmp_path: Path):
    """A ClientHello the server never answered (refused, overloaded: seen with 100 concurrent
    curls against nginx) has no keys to log and nothing to decrypt: it is counted as such, not
    as "no key in the key log", which would send the user hunting a key-log problem."""
    frames = _frames(world.pcap)
    syn = next(_tcp(f) for _, f in frames if _tcp(f).flags & dpkt.tcp.TH_SYN)
    port = syn.sport
    kept: list[tuple[float, bytes]] = []
    for ts, f in frames:
        t = _tcp(f)
        if port not in (t.sport, t.dport):
            continue
        if t.dport == port and t.data:
            continue  # the server's answer never came
        kept.append((ts, f))
        if t.sport == port and t.data:
            break  # the ClientHello: the client waits for a ServerHello from here on
    cut = tmp_path / "unanswered.pcap"
    _write(cut, kept)
    exs, s = _extract(cut, _keys(world.keylog))
    assert exs == [] and s.tls["connections"] == 1
    assert s.tls.get("no_server_hello") == 1 and not s.tls.get("no_key"), s.tls
    r = subprocess.run([str(REPO / ".venv/bin/shadowtap"), "extract", str(cut), "-o",
                        str(tmp_path / "o.jsonl")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "handshake unanswered" in r.stdout + r.stderr
    assert "--keylog" not in r.stdout + r.stderr  # no key log would help
    # Not unanswered: the server's hello cut short, or a capture of the client's side only
    # (the client carried on past its hello: there was a handshake)
    conn = [(ts, f) for ts, f in frames if port in (_tcp(f).sport, _tcp(f).dport)]
    first_srv = next(i for i, (_, f) in enumerate(conn) if _tcp(f).dport == port
                     and _tcp(f).data)
    cut_hello = [x for x in conn[:first_srv] if not (_tcp(x[1]).dport == port
                                                     and _tcp(x[1]).data)]
    e = dpkt.ethernet.Ethernet(conn[first_srv][1])
    e.data.data.data = e.data.data.data[:40]
    e.data.len = len(e.data) - len(e.data.data.data) + 40
    e.data.sum = 0
    cut_hello.append((conn[first_srv][0], bytes(e)))
    one_sided = [x for x in conn if _tcp(x[1]).sport == port]
    for name, fr in (("cut-hello", cut_hello), ("client-only", one_sided)):
        _write(tmp_path / f"{name}.pcap", fr)
        _exs, s2 = _extract(tmp_path / f"{name}.pcap", None)
        assert s2.tls["connections"] == 1 and not s2.tls.get("no_server_hello"), (name, s2.tls)
