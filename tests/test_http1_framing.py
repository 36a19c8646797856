"""Framing under attack (RFC 9112 §6.3, §11.2): every rule, in both HTTP/1 readers.

Each case runs through the Python reader (the definition) and through the native fast path
(which reads the common case itself and hands anything odd back to Python): both must give the
same exchanges, the same desync flag and reason, and the same counters. A desync message is
never followed by requests read from the rest of its connection; garbage between messages is
skipped and counted, never turned into a request.
"""

from __future__ import annotations

import orjson
import pytest
from netsim import Conv, run
from smuggling_cases import CASES, GARBAGE, SMUGGLED, frames_for

from replay._native import load_c
from replay.extract import Summary
from replay.formats.jsonl import exchange_from_record, exchange_to_record
from replay.http1 import NOT_DESYNC, WEIRD_REASONS

FAST = load_c("replay._fastpath", "FastPath")
READERS = ["python", pytest.param("native", marks=pytest.mark.skipif(
    FAST is None, reason="replay._fastpath is not built"))]


def _run(frames: list, reader: str) -> tuple[list, Summary]:
    exs, ex = run(frames, native=reader == "native")
    s = Summary()
    ex.fill(s)
    return exs, s


def _records(exs: list) -> list[bytes]:
    return [orjson.dumps(exchange_to_record(x)) for x in exs]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name: str, reader: str) -> None:
    case = CASES[name]
    exs, s = _run(frames_for(case.stream), reader)
    smuggled = [x for x in exs if x.completeness.desync_reason == "smuggled"]
    exs = [x for x in exs if x.completeness.desync_reason != "smuggled"]
    assert tuple(x.request.target for x in exs if x.request) == case.targets
    assert tuple(x.request.target for x in smuggled) == case.smuggled
    for x in smuggled:  # reported, never answered, never replayed
        assert x.completeness.desync and "smuggled_request" in x.completeness.weird
        assert x.response is None and not x.completeness.complete
    assert s.weird.get("smuggled_request", 0) == len(case.smuggled)
    desync = [x for x in exs if x.completeness.desync]
    if case.desync is None:
        assert not desync and s.desync_messages == 0
        assert exs[0].completeness.complete  # (a pipelined second request has no answer)
    else:
        (x,) = desync
        assert x is exs[0] and x.completeness.desync_reason == case.desync
        assert case.desync in x.completeness.weird and not x.completeness.complete
        assert x.response is not None and x.response.status == 200  # its answer still pairs
        assert s.desync_messages == 1 and s.weird[case.desync] >= 1
        assert s.http["desync_bytes_skipped"] > 0  # the rest of the stream, not read
    if name in GARBAGE:
        assert s.weird.get("garbage_between_messages") == 1
        assert s.bytes_skipped > 0
    assert set(s.weird) <= set(WEIRD_REASONS)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seg", [1, 7])
def test_readers_agree_whatever_the_segments(name: str, seg: int) -> None:
    if FAST is None:
        pytest.skip("replay._fastpath is not built")
    frames = frames_for(CASES[name].stream, seg=seg)
    py, sp = _run(frames, "python")
    na, sn = _run(frames, "native")
    assert _records(na) == _records(py)
    assert sn.to_dict() | {"seconds": 0} == sp.to_dict() | {"seconds": 0}
    assert tuple(x.request.target for x in py if x.request) == (CASES[name].targets
                                                               + CASES[name].smuggled)


@pytest.mark.parametrize("reader", READERS)
def test_smuggled_request_with_its_own_response_is_not_paired(reader: str) -> None:
    """CL.TE where the server answered both (it read TE): the smuggled request is reported
    (desync, never replayed) but the second response is skipped, not paired: which request
    production answered with it cannot be known from the capture."""
    conv = Conv()
    stream = CASES["te_cl"].stream
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    frames = [*conv.handshake(), conv.c(stream), conv.s(ok + ok.replace(b"ok", b"no")),
              conv.fin_c(), conv.fin_s()]
    exs, s = _run(frames, reader)
    assert [(x.request.target, x.response and x.response.body) for x in exs] == [
        ("/", b"ok"), ("/smuggled", None)]  # the second answer pairs with nothing
    assert exs[0].completeness.desync and exs[1].completeness.desync_reason == "smuggled"
    assert s.http["desync_bytes_skipped"] >= len(SMUGGLED) + len(ok)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(("resp", "reason", "body"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc", "bad_content_length", b"abc"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
     "conflicting_content_length", b"abcd"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
     b"0\r\n\r\n", "te_with_content_length", b"abc"),
    (b"HTTP/1.1 200 OK\r\nX-A : b\r\nContent-Length: 3\r\n\r\nabc", "space_before_colon",
     b"abc"),
])
def test_response_desync(reader: str, resp: bytes, reason: str, body: bytes) -> None:
    """A response whose framing is not to be trusted is a desync too (never replayed); an
    invalid Content-Length makes it close-delimited (RFC 9112 §6.3 item 5)."""
    conv = Conv()
    frames = [*conv.handshake(), conv.c(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"), conv.s(resp),
              conv.fin_s(), conv.fin_c()]
    exs, s = _run(frames, reader)
    (x,) = exs
    assert x.completeness.desync and x.completeness.desync_reason == reason
    assert x.response.body == body
    assert s.weird[reason] == 1


@pytest.mark.parametrize("reader", READERS)
def test_response_te_not_chunked_is_close_delimited_not_weird(reader: str) -> None:
    conv = Conv()
    frames = [*conv.handshake(), conv.c(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"),
              conv.s(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz"), conv.fin_s(),
              conv.fin_c()]
    exs, s = _run(frames, reader)
    assert exs[0].response.body == b"zzz" and not exs[0].completeness.desync
    assert not s.weird


@pytest.mark.parametrize("reader", READERS)
def test_obs_fold_elsewhere_is_weird_but_not_desync(reader: str) -> None:
    req = b"GET /f HTTP/1.1\r\nHost: t\r\nX-A: one\r\n two\r\n\r\n" + SMUGGLED
    exs, s = _run(frames_for(req), reader)
    assert [x.request.target for x in exs] == ["/f", "/smuggled"]
    assert exs[0].completeness.weird == ["obs_fold"] and not exs[0].completeness.desync
    assert s.weird == {"obs_fold": 1} and "obs_fold" in NOT_DESYNC


def test_garbage_never_becomes_a_request_named_from_its_middle() -> None:
    """Stray bytes then a request on the same line: no request 'T /x' or 'ET /x' is invented
    from the middle of 'GET', whatever the segmentation."""
    stream = (b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n@@GET /x HTTP/1.1\r\nHost: t\r\n\r\n"
              b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
    for seg in (0, 1, 2, 3, 5, 30):
        exs, s = _run(frames_for(stream, seg=seg), "python")
        assert [x.request.target for x in exs] == ["/a", "/b"], seg
        assert s.weird == {"garbage_between_messages": 1}


def test_desync_round_trips_through_jsonl() -> None:
    exs, _ = _run(frames_for(CASES["te_cl"].stream), "python")
    rec = exchange_to_record(exs[0])
    assert rec["completeness"]["desync"] is True
    assert rec["completeness"]["desync_reason"] == "te_with_content_length"
    back = exchange_from_record(orjson.loads(orjson.dumps(rec)))
    assert back.completeness == exs[0].completeness
    assert not back.completeness.complete


def test_native_encoder_leaves_desync_records_to_python() -> None:
    if FAST is None:
        pytest.skip("replay._fastpath is not built")
    from replay._fastpath import encode_line  # type: ignore[import-not-found]

    exs, _ = _run(frames_for(CASES["te_cl"].stream), "python")
    line = encode_line(exs[0])
    assert line is None or orjson.loads(line) == exchange_to_record(exs[0])


def test_tab_after_chunked_is_read_alike_by_both_readers() -> None:
    """Found by the long fuzz run: llhttp refuses ``Transfer-Encoding: chunked<TAB>`` in a
    request (a lenient head), which the C code read strictly; it now hands it to Python."""
    if FAST is None:
        pytest.skip("replay._fastpath is not built")
    stream = CASES["te_tab_value"].stream
    frames = frames_for(stream, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n", seg=1)
    py, _ = _run(frames, "python")
    na, _ = _run(frames, "native")
    assert _records(na) == _records(py)
    assert not py[0].completeness.desync


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("field", [b"Transfer_Encoding: chunked", b"Content_Length: 0"])
def test_underscore_framing_name_is_desync_even_where_nothing_follows(reader: str,
                                                                      field: bytes) -> None:
    """A well-formed head the C code could read itself: it must hand it to Python, which marks
    it (CGI/WSGI-style servers read '_' as '-')."""
    stream = b"GET / HTTP/1.1\r\nHost: t\r\n" + field + b"\r\n\r\n"
    exs, s = _run(frames_for(stream), reader)
    (x,) = exs
    assert x.completeness.desync_reason == "bad_framing_field_name"
    assert s.weird == {"bad_framing_field_name": 1}


@pytest.mark.parametrize("reader", READERS)
def test_request_after_connection_close_is_not_replayed(reader: str) -> None:
    """The server answered /a with Connection: close and closed: /b was never served. It is
    read (the client did send it) but has no response and is skipped by replay."""
    from replay.rewrite import skip_reason

    conv = Conv()
    frames = [*conv.handshake(), conv.c(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\n"
                                        b"Host: t\r\n\r\n"),
              conv.s(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"),
              conv.fin_s(), conv.fin_c()]
    exs, _ = _run(frames, reader)
    assert [(x.request.target, x.response is not None) for x in exs] == [("/a", True),
                                                                        ("/b", False)]
    assert skip_reason(exs[0]) is None and skip_reason(exs[1]) is not None


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"DELETE"])
@pytest.mark.parametrize("chunked", [False, True])
def test_request_in_body_is_desync_and_never_replayed(reader: str, method: bytes,
                                                      chunked: bool) -> None:
    """CL.0: a body on a method with no body semantics that holds a request line. A server
    that ignores the body reads the inner request as the next one: the outer request is a
    desync (not replayed), the inner one is body bytes, never an exchange of its own. The
    native path hands such a well-formed head to Python, which marks it."""
    from replay.rewrite import skip_reason

    inner = b"\r\nGET /admin HTTP/1.1\r\nHost: t\r\n\r\n"
    head = method + b" /o HTTP/1.1\r\nHost: t\r\n"
    if chunked:
        stream = head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(inner) + inner + (
            b"\r\n0\r\n\r\n")
    else:
        stream = head + b"Content-Length: %d\r\n\r\n" % len(inner) + inner
    exs, s = _run(frames_for(stream, seg=5), reader)
    (x,) = exs
    assert x.request.target == "/o" and x.request.body == inner
    assert x.completeness.desync_reason == "request_in_body" and x.completeness.desync
    assert x.response is not None and x.response.status == 200
    assert skip_reason(x) is not None
    assert s.weird == {"request_in_body": 1} and s.desync_messages == 1


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(("method", "body"), [
    (b"GET", b'{"query": {"match": "GET /x HTTP/1.1"}}'),
    (b"DELETE", b'{"ids": [1, 2, 3]}'),
    (b"GET", b"GET/x HTTP/1.1\r\n"),  # no SP after the method: not a request line
    (b"POST", b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"),  # a body servers do read
])
def test_ordinary_body_on_get_is_kept(reader: str, method: bytes, body: bytes) -> None:
    """No false positive: a GET (or DELETE) with a JSON body stays a normal, replayable
    exchange, and so does a POST whose body happens to hold a request."""
    from replay.rewrite import skip_reason

    stream = method + b" /q HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    exs, s = _run(frames_for(stream), reader)
    (x,) = exs
    assert x.request.body == body and not x.completeness.desync
    assert skip_reason(x) is None and not s.weird
    assert "request_in_body" in WEIRD_REASONS and "request_in_body" not in NOT_DESYNC
