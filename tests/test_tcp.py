"""TCP reassembly: order, retransmission, overlap, wrap-around, pickup, gaps, limits."""

from __future__ import annotations

import random

from netsim import Conv, run, segments

REQ = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n" + bytes(
    (i * 7) % 251 for i in range(3000)
)
RESP = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nmade!"


def _conv_frames(conv: Conv, req: bytes, resp: bytes, seg: int = 500, shuffle: bool = False,
                 dup: bool = False, seed: int = 0) -> list:
    frames = conv.handshake()
    parts = [conv.c(p) for p in segments(req, seg)]
    if dup:
        parts = [x for p in parts for x in (p, p)]
    if shuffle:
        random.Random(seed).shuffle(parts)
    frames += parts
    frames.append(conv.s(resp))
    frames += [conv.fin_c(), conv.fin_s()]
    return frames


def test_in_order_body_is_exact() -> None:
    exs, _e = run(_conv_frames(Conv(), REQ, RESP))
    assert len(exs) == 1
    ex = exs[0]
    assert ex.request is not None and ex.response is not None
    assert ex.request.body == REQ.split(b"\r\n\r\n", 1)[1]
    assert ex.response.status == 201 and ex.response.body == b"made!"
    assert ex.completeness.complete


def test_out_of_order_segments_are_reordered() -> None:
    for seed in range(5):
        exs, e = run(_conv_frames(Conv(), REQ, RESP, seg=97, shuffle=True, seed=seed))
        assert len(exs) == 1
        assert exs[0].request.body == REQ.split(b"\r\n\r\n", 1)[1]  # type: ignore[union-attr]
        assert exs[0].completeness.complete
        assert e.reasm.stats.get("out_of_order", 0) > 0


def test_retransmissions_are_dropped_and_counted() -> None:
    exs, e = run(_conv_frames(Conv(), REQ, RESP, seg=300, dup=True))
    assert exs[0].request.body == REQ.split(b"\r\n\r\n", 1)[1]  # type: ignore[union-attr]
    n = len(segments(REQ, 300))
    assert e.reasm.stats["retransmits"] == n
    assert exs[0].completeness.retransmits == n


def test_overlapping_segments_are_trimmed() -> None:
    conv = Conv()
    frames = conv.handshake()
    start = conv.cseq
    # Segments [0,600) [400,1000) [900, end): overlaps must not duplicate bytes.
    frames.append(conv.c(REQ[0:600], seq=start))
    frames.append(conv.c(REQ[400:1000], seq=start + 400))
    frames.append(conv.c(REQ[900:], seq=start + 900))
    conv.cseq = start + len(REQ)
    frames += [conv.s(RESP), conv.fin_c(), conv.fin_s()]
    exs, e = run(frames)
    assert exs[0].request.body == REQ.split(b"\r\n\r\n", 1)[1]  # type: ignore[union-attr]
    assert e.reasm.stats["overlaps_trimmed"] == 2


def test_sequence_wraparound() -> None:
    conv = Conv(isn_c=0xFFFFFFFF - 700, isn_s=0xFFFFFF00)
    exs, _ = run(_conv_frames(conv, REQ, RESP, seg=250, shuffle=True, seed=3))
    assert len(exs) == 1
    assert exs[0].request.body == REQ.split(b"\r\n\r\n", 1)[1]  # type: ignore[union-attr]
    assert exs[0].response.body == b"made!"  # type: ignore[union-attr]


def test_pickup_without_syn_mid_stream() -> None:
    """The capture starts in the middle of a connection: the first request is partial and
    must not be invented; the next exchanges are found."""
    conv = Conv()
    conv.handshake()  # not captured
    first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    frames = [conv.c(first[10:])]  # tail of the first request only
    frames.append(conv.s(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    frames.append(conv.c(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"))
    frames.append(conv.s(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
    exs, _e = run(frames)
    reqs = [x for x in exs if x.request is not None]
    assert [x.request.target for x in reqs] == ["/b"]  # type: ignore[union-attr]
    b = reqs[0]
    assert b.response is not None and b.response.status == 404
    # The response to the unseen first request is kept, but marked as having no request.
    orphans = [x for x in exs if x.request is None]
    assert len(orphans) == 1 and orphans[0].completeness.unpaired


def test_pickup_direction_from_content_on_odd_ports() -> None:
    """Without a SYN, and on ports that say nothing, the client is the side that sends a
    request."""
    conv = Conv(client=("10.0.0.1", 9000), server=("10.0.0.2", 31000))
    frames = [conv.s(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA"),
              conv.c(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"),
              conv.s(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB")]
    exs, _ = run(frames)
    paired = [x for x in exs if x.request is not None]
    assert len(paired) == 1
    assert paired[0].conn is not None and paired[0].conn.client_port == 9000
    assert paired[0].response.body == b"B"  # type: ignore[union-attr]


def test_gap_in_body_is_recorded_not_papered_over() -> None:
    conv = Conv()
    frames = conv.handshake()
    parts = segments(REQ, 500)
    for i, p in enumerate(parts):
        f = conv.c(p)
        if i != 3:  # segment 3 is never captured
            frames.append(f)
    frames += [conv.s(RESP), conv.fin_c(), conv.fin_s()]
    exs, e = run(frames)
    assert len(exs) == 1
    ex = exs[0]
    head_len = REQ.index(b"\r\n\r\n") + 4
    body = REQ[head_len:]
    # Body offset of the hole: segment 3 starts at byte 1500 of the stream.
    assert ex.completeness.request_gaps == [(1500 - head_len, 500)]
    assert not ex.completeness.complete
    assert ex.request.body == body[: 1500 - head_len] + body[2000 - head_len :]  # type: ignore[union-attr]
    assert e.reasm.stats["gaps"] == 1 and e.reasm.stats["gap_bytes"] == 500
    # The response is still paired: the gap did not derail framing.
    assert ex.response is not None and ex.response.status == 201


def test_gap_between_messages_keeps_later_exchanges() -> None:
    conv = Conv()
    frames = conv.handshake()
    for i in range(5):
        req = f"GET /item/{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
        resp = f"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nitem-{i}".encode()
        f = conv.c(req)
        if i != 2:
            frames.append(f)
        frames.append(conv.s(resp))
    frames += [conv.fin_c(), conv.fin_s()]
    exs, _ = run(frames)
    targets = [x.request.target for x in exs if x.request is not None]
    assert "/item/2" not in targets
    assert {"/item/0", "/item/1", "/item/3", "/item/4"} <= set(targets)
    by_target = {x.request.target: x for x in exs if x.request is not None}
    assert by_target["/item/0"].response.body == b"item-0"  # type: ignore[union-attr]


def test_buffer_limit_forces_a_counted_gap() -> None:
    conv = Conv()
    frames = conv.handshake()
    parts = segments(REQ, 200)
    frames += [conv.c(p) for p in parts[:2]]
    conv.c(parts[2])  # lost
    frames += [conv.c(p) for p in parts[3:]]
    frames += [conv.s(RESP)]
    exs, e = run(frames, max_buffer=1000)
    assert e.reasm.stats["gaps_buffer_limit"] >= 1
    assert exs[0].completeness.request_gaps  # recorded on the exchange


def test_connection_limit_evicts_and_counts() -> None:
    frames = []
    for i in range(50):
        conv = Conv(client=("10.0.0.1", 20000 + i), ts=1000.0 + i)
        frames += conv.handshake()
        frames.append(conv.c(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"))
    exs, e = run(frames, max_connections=10)
    assert e.reasm.stats["evicted_connection_limit"] >= 40
    assert len(exs) == 50  # evicted requests are emitted (unpaired), not lost
    assert all(x.completeness.unpaired for x in exs)
    assert e.reasm.tracked == 0


def test_idle_timeout_finishes_connection() -> None:
    a = Conv(client=("10.0.0.1", 1111), ts=0.0)
    frames = a.handshake() + [a.c(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")]
    b = Conv(client=("10.0.0.1", 2222), ts=500.0)  # much later traffic triggers the sweep
    frames += b.handshake() + [b.c(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"),
                               b.s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")]
    out: list = []
    from replay.extract import Extractor

    e = Extractor(out.append, idle_timeout=60.0)
    for ts, lt, f in frames:
        e.feed(ts, lt, f)
    # Before finish(): the idle one was already ended by the sweep.
    slow = [x for x in out if x.request is not None and x.request.target == "/slow"]
    assert len(slow) == 1 and slow[0].completeness.timed_out
    assert e.reasm.stats["connections_timed_out"] == 1


def test_rst_ends_connection() -> None:
    conv = Conv()
    frames = conv.handshake() + [conv.c(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), conv.rst_c()]
    out: list = []
    from replay.extract import Extractor

    e = Extractor(out.append)
    for ts, lt, f in frames:
        e.feed(ts, lt, f)
    assert len(out) == 1 and out[0].completeness.unpaired  # emitted at the RST, not at finish
    assert e.reasm.tracked == 0


def test_port_reuse_starts_a_new_connection() -> None:
    frames = []
    for isn in (1000, 900000):
        conv = Conv(isn_c=isn, isn_s=isn + 77)
        frames += conv.handshake()
        frames += [conv.c(f"GET /{isn} HTTP/1.1\r\nHost: h\r\n\r\n".encode()),
                   conv.s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
                   conv.fin_c()]  # the server's FIN is not captured
    exs, _e = run(frames)
    assert sorted(x.request.target for x in exs) == ["/1000", "/900000"]  # type: ignore[union-attr]
    assert all(x.response is not None for x in exs)


def test_ack_of_fin_is_not_a_missing_byte() -> None:
    """A lost data segment before the server's FIN, declared from the client's ACK that also
    covers the FIN: the gap is the segment's bytes, not one more for the FIN's sequence slot."""
    conv = Conv()
    frames = [*conv.handshake(), conv.c(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")]
    body = b"x" * 3000
    frames.append(conv.s(b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + body[:1000]))
    conv.s(body[1000:2000])  # lost by the capture
    frames.append(conv.s(body[2000:]))
    frames.append(conv.fin_s())
    frames.append(conv.fin_c())  # its ACK covers the server's data and its FIN
    exs, e = run(frames)
    assert e.reasm.stats["gaps"] == 1 and e.reasm.stats["gap_bytes"] == 1000
    assert exs[0].completeness.response_gaps == [(1000, 1000)]


def _keepalive(n: int, swap: int | None = None, drop: int | None = None,
               gap_s: float = 0.0) -> list:
    """``n`` GETs on one connection; exchange ``swap`` has its answer copied to the capture
    before its request (cross-direction reordering on a mirror port); exchange ``drop`` has its
    request lost by the capture. ``gap_s`` seconds pass between exchanges."""
    conv = Conv()
    frames = conv.handshake()
    for i in range(n):
        req = conv.c(b"GET /r/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        body = b"answer %d" % i
        resp = conv.s(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        if i == swap:
            (t1, lt1, f1), (t2, lt2, f2) = req, resp
            frames += [(t1, lt2, f2), (t2, lt1, f1)]  # the answer first, at the earlier time
        elif i == drop:
            frames.append(resp)
        else:
            frames += [req, resp]
        conv.ts += gap_s
    frames += [conv.fin_c(), conv.fin_s()]
    return frames


def test_an_answer_copied_before_its_request_is_still_paired() -> None:
    """Mirror copies of the two directions can be handed over on different CPUs: the answer
    (whose ACK covers the request) may be captured first. Nothing is lost or mispaired."""
    exs, e = run(_keepalive(5, swap=2))
    assert [ex.request.path for ex in exs if ex.request] == [f"/r/{i}" for i in range(5)]
    assert all(ex.completeness.complete for ex in exs), [ex.completeness for ex in exs]
    assert [ex.response.body for ex in exs if ex.response] == [b"answer %d" % i
                                                             for i in range(5)]
    assert e.reasm.stats["parked_for_reorder"] == 1
    assert "gaps" not in e.reasm.stats and e.reasm.tracked == 0


def test_a_request_the_capture_lost_is_a_gap_once_the_window_passes() -> None:
    """Real loss: the answer waits at most the reorder window (capture time), then the bytes
    its ACK covers are declared a gap and the answer is delivered; later exchanges are whole."""
    exs, e = run(_keepalive(5, drop=2, gap_s=0.5))
    assert e.reasm.stats["gaps"] == 1
    assert e.reasm.stats.get("parked_expired", 0) + e.reasm.stats.get("parked_flushed_by_ack",
                                                                      0) >= 1
    paths = [ex.request.path for ex in exs if ex.request]
    assert paths == ["/r/0", "/r/1", "/r/3", "/r/4"]
    lost = [ex for ex in exs if not ex.completeness.complete]
    assert len(lost) == 1 and lost[0].response is not None
    assert lost[0].response.body == b"answer 2"
    for ex in exs:
        if ex.request is not None:
            i = int(ex.request.path.rsplit("/", 1)[1])
            assert ex.response is not None and ex.response.body == b"answer %d" % i


def test_reorder_window_zero_declares_at_once() -> None:
    from replay.tcp import Reassembler

    seen: list[tuple[str, object]] = []

    class H:
        retransmits = 0
        non_http = False

        def feeder(self, from_client: bool):
            return lambda data, ts: seen.append(("data", from_client))

        def gap(self, from_client: bool, n: int, ts: float) -> None:
            seen.append(("gap", n))

        def close(self, from_client: bool, ts: float) -> None:
            pass

        def finish(self, ts: float, timed_out: bool = False) -> None:
            pass

    for window, first in ((0.0, ("gap", 10)), (0.2, None)):
        seen.clear()
        r = Reassembler(lambda *a: H(), reorder_window=window)
        ck = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + (40000).to_bytes(2, "big") + (80).to_bytes(2, "big")
        sk = ck[4:8] + ck[0:4] + ck[10:12] + ck[8:10]
        r.segment(1.0, ck, 100, 0x02, b"", None)  # SYN
        r.segment(1.001, sk, 500, 0x12, b"", 101)  # SYN+ACK
        r.segment(1.002, ck, 101, 0x18, b"0123456789", 501)
        r.segment(1.003, sk, 501, 0x18, b"abc", 121)  # acks 10 bytes we have not seen
        if first is None:
            assert seen == [("data", True)]  # the answer waits for them
            r.segment(1.004, ck, 111, 0x18, b"9876543210", 501)
            assert seen == [("data", True), ("data", True), ("data", False)]
        else:
            assert seen[1] == first
