"""The HTTP/1 reader's states and the hand-back contract with the native fast path.

``replay.http1.TRANSITIONS`` writes down every change of ``_Reader.state``; here the code is
held to it (every change seen while reading hostile streams and whole conversations must be
listed). The contract methods (``export_state``/``import_state`` of the readers, the connection
and the reassembler's ``_Conn``; ``Reassembler.replay_native``/``end_native``) are checked in
pure Python; tests/test_fastpath.py checks that the C code goes through them.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from netsim import Conv, run
from test_http1_fuzz import random_steps

from replay import http1
from replay._native import load_c
from replay.http1 import (
    HANDBACK_STATES,
    HEAD,
    TRANSITIONS,
    HttpConnection,
    ReaderState,
)
from replay.model import ConnKey
from replay.packets import SYN
from replay.tcp import Reassembler

TLS_HELLO = bytes.fromhex("16030100310100002d0303") + bytes(32) + bytes.fromhex(
    "000002130101000000")


def test_the_table_names_every_state_and_only_states() -> None:
    assert set(TRANSITIONS) == set(ReaderState)
    for src, dsts in TRANSITIONS.items():
        assert src not in dsts, f"{src.name}: a change to itself is no change"
        assert all(isinstance(d, ReaderState) and why for d, why in dsts.items())
    # the module constants the reader compares are the enum's values, as plain ints (the
    # interpreter's int fast paths), and what C reads
    for s in ReaderState:
        v = getattr(http1, s.name)
        assert v == s.value and type(v) is int
    assert {HEAD} == HANDBACK_STATES


def test_the_native_path_uses_the_python_state_numbers() -> None:
    mod = load_c("replay._fastpath", "READER_STATES")
    if mod is None:
        pytest.skip("replay._fastpath is not built (or SHADOWTAP_PURE_PYTHON)")
    assert mod == {name: ReaderState[name].value for name in mod}
    assert set(mod) == {"HEAD", "BODY_CL", "CHUNK_SIZE", "CHUNK_DATA", "CHUNK_CRLF", "TRAILERS"}


@pytest.fixture
def changes(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[int, int]]:
    """Every change of a reader's state from now on, as (from, to)."""
    slot = http1._Reader.__dict__["state"]
    seen: Counter[tuple[int, int]] = Counter()

    def get(r: object) -> int:
        return slot.__get__(r, http1._Reader)  # type: ignore[no-any-return]

    def put(r: object, v: int) -> None:
        try:
            old = slot.__get__(r, http1._Reader)
        except AttributeError:
            old = v  # (__init__)
        if old != v:
            seen[(old, v)] += 1
        slot.__set__(r, v)

    monkeypatch.setattr(http1._Reader, "state", property(get, put))
    return seen


def _check(seen: Counter[tuple[int, int]]) -> None:
    bad = [f"{ReaderState(a).name} -> {ReaderState(b).name}" for a, b in seen
           if ReaderState(b) not in TRANSITIONS[ReaderState(a)]]
    assert not bad, f"state changes missing from http1.TRANSITIONS: {bad}"


def test_hostile_streams_change_states_only_as_the_table_says(
        changes: Counter[tuple[int, int]]) -> None:
    rng = random.Random(7)
    for it in range(1500):
        c = HttpConnection(ConnKey("10.0.0.1", 1, "10.0.0.2", 80), "c", lambda e: None, {},
                           max_body=4096, resync=rng.random() < 0.3)
        random_steps(rng, c, float(it))
        c.finish(float(it) + 1)
    _check(changes)
    # the common changes were seen (the hostile streams do reach them)
    for a, b in [(HEAD, http1.BODY_CL), (http1.CHUNK_SIZE, http1.CHUNK_DATA),
                 (HEAD, http1.WAIT), (http1.WAIT, http1.TUNNEL), (HEAD, http1.RESYNC),
                 (HEAD, http1.DESYNC), (http1.RESYNC, HEAD)]:
        assert changes[(a, b)], (ReaderState(a).name, ReaderState(b).name)


def test_conversations_change_states_only_as_the_table_says(
        changes: Counter[tuple[int, int]]) -> None:
    """Through the extractor (either path): tunnels, an h2c upgrade, TLS, a close while
    waiting for a CONNECT's answer."""
    convs = []
    v = Conv()
    convs.append(v.handshake() + [
        v.c(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings"
            b"\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"),
        v.s(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"),
        v.fin_c(), v.fin_s()])
    v = Conv(client=("10.0.0.3", 40001), server=("10.0.0.2", 3128))
    convs.append(v.handshake() + [
        v.c(b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"), v.fin_c(),
        v.s(b"HTTP/1.1 200 Connection established\r\n\r\n"), v.s(b"\x16\x03\x03 hello"),
        v.fin_s()])
    v = Conv(client=("10.0.0.4", 40002), server=("10.0.0.2", 443))
    convs.append(v.handshake() + [v.c(TLS_HELLO), v.fin_c(), v.fin_s()])
    v = Conv(client=("10.0.0.5", 40003))
    convs.append(v.handshake() + [
        v.c(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        v.s(b"HTTP/1.0 200 OK\r\n\r\nclose-delimited"), v.fin_s(), v.fin_c()])
    for frames in convs:
        run(frames)
    _check(changes)
    assert changes[(http1.WAIT, http1.FOREIGN)] and changes[(http1.DEAD, http1.TUNNEL)]


# -- the hand-back contract, Python side ------------------------------------------------------

def _http() -> HttpConnection:
    return HttpConnection(ConnKey("10.0.0.1", 1, "10.0.0.2", 80), "c", lambda e: None, {})


def test_http_connection_state_round_trips() -> None:
    h = _http()
    h.data(True, b"GET / HTTP/1.1\r\n\r\n", 1.0)
    h.data(False, b"HTTP/1.1 204 No\r\n\r\n", 2.0)
    h.data(True, b"GET /next HT", 3.0)
    n, client, server, retransmits, non_http, max_body = h.export_state()
    assert (n, retransmits, non_http, max_body) == (1, 0, False, http1.DEFAULT_MAX_BODY)
    assert client == (HEAD, b"GET /next HT", False, 3.0, False)
    assert server == (HEAD, b"", False, 2.0, False)
    h2 = _http()
    h2.import_state(n, client[:4], server[:4])
    assert h2.export_state() == h.export_state()
    h2.data(True, b"TP/1.1\r\n\r\n", 4.0)
    assert h2.n == 2  # the next exchange is numbered on from n


def test_http_connection_takes_back_only_between_messages() -> None:
    h = _http()
    before = h.export_state()
    for state in ReaderState:
        if state.value in HANDBACK_STATES:
            continue
        with pytest.raises(ValueError):
            h.import_state(3, (state.value, b"", False, 1.0), (HEAD, b"", False, 1.0))
        assert h.export_state() == before
    h.data(True, b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc", 1.0)  # a body in progress
    with pytest.raises(ValueError):
        h.import_state(1, (HEAD, b"", False, 1.0), (HEAD, b"", False, 1.0))


def test_detach_breaks_the_reader_cycle() -> None:
    h = _http()
    h.detach()
    assert h.client.conn is None and h.server.conn is None


def _reasm() -> tuple[Reassembler, list]:
    handlers: list = []

    def factory(key: bytes, syn: bool, start: bool) -> HttpConnection:
        handlers.append(_http())
        return handlers[-1]

    return Reassembler(factory), handlers


KEY = bytes(range(12))  # (any 12 bytes: the reassembler only reverses and looks up keys)


def test_conn_state_round_trips_and_replays() -> None:
    from replay.packets import reverse_key

    ra, handlers = _reasm()
    ra.segment(1.0, KEY, 999, SYN, b"")
    conn, d = ra.keys[KEY]
    assert d == 0
    keys, handler, fwd_is_client, parked, last_ts, fwd, rev = conn.export_state()
    assert keys == (KEY, reverse_key(KEY)) and handler is handlers[0]
    assert (fwd_is_client, parked, last_ts) == (True, False, 1.0)
    assert fwd == (1000, None, False, 0) and rev == (None, None, False, 0)
    # held, then given back as at a checkpoint; the log replayed through the reassembler
    conn.set_fast(True)
    conn.import_state(1.5, (1000, False), (None, False))
    assert not conn.fast and conn.last_ts == 1.5
    ra.now, ra.next_sweep = 1.5, 99.0
    ra.replay_native(conn, [(True, 1, 1.6, 4999, SYN | 0x10, b"", 1000),
                            (True, 0, 1.7, 1000, 0x18, b"GET / HTTP/1.1\r\n", 5000),
                            (False, 0, 1.8, 0, 0, b"\r\n", 0)])
    assert ra.now == 1.5 and ra.next_sweep == 99.0  # the replay ran no timers, kept the clock
    assert conn.dirs[1].nxt == 5000 and conn.dirs[0].nxt == 1000 + 16
    assert handlers[0].n == 1 and handlers[0].client.last_ts == 1.8
    # a closed direction: its FIN was at nxt
    conn.import_state(2.0, (1018, True), (5000, False))
    assert conn.export_state()[5] == (1018, 1018, True, 0)
    # ended natively: gone from the tables, the readers detached
    ra.end_native(conn)
    assert KEY not in ra.keys and not ra.lru and handlers[0].client.conn is None
