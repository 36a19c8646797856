"""HTTP/1.x framing and pairing over reassembled streams (fed as real TCP frames)."""

from __future__ import annotations

from netsim import Conv, run, segments

from replay.http1 import parse_request_head


def _exchange(client_msgs: list[bytes], server_msgs: list[bytes], *, interleave: bool = True,
              seg: int = 0, close_server: bool = True, conv: Conv | None = None) -> list:
    conv = conv or Conv()
    frames = conv.handshake()
    if interleave:
        for i in range(max(len(client_msgs), len(server_msgs))):
            if i < len(client_msgs):
                frames += [conv.c(p) for p in (segments(client_msgs[i], seg) if seg
                                               else [client_msgs[i]])]
            if i < len(server_msgs):
                frames += [conv.s(p) for p in (segments(server_msgs[i], seg) if seg
                                               else [server_msgs[i]])]
    else:
        frames += [conv.c(m) for m in client_msgs]
        frames += [conv.s(m) for m in server_msgs]
    frames.append(conv.fin_c())
    if close_server:
        frames.append(conv.fin_s())
    exs, _ = run(frames)
    return exs


def test_content_length_and_headers_kept_in_order_and_case() -> None:
    req = (b"POST /api/items?x=1 HTTP/1.1\r\nHost: shop\r\nX-Custom: A\r\ncontent-type: "
           b"application/json\r\nX-Custom: B\r\nContent-Length: 13\r\n\r\n{\"name\":\"a\"}\n")
    resp = b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nSet-Cookie: a=1\r\n\r\nabcd"
    (ex,) = _exchange([req], [resp], seg=7)
    assert ex.request.method == "POST" and ex.request.target == "/api/items?x=1"
    assert ex.request.headers == [("Host", "shop"), ("X-Custom", "A"),
                                  ("content-type", "application/json"), ("X-Custom", "B"),
                                  ("Content-Length", "13")]
    assert ex.request.body == b'{"name":"a"}\n'
    assert (ex.response.status, ex.response.reason, ex.response.body) == (201, "Created", b"abcd")
    assert ex.completeness.complete
    assert ex.ts_request_start <= ex.ts_request_end <= ex.ts_response_start


def test_chunked_body_with_extensions_and_trailers() -> None:
    req = b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Sum: 42\r\n\r\n")
    (ex,) = _exchange([req], [resp], seg=3)
    assert ex.response.body == b"hello, world"
    assert ex.response.trailers == [("X-Sum", "42")]
    assert ex.completeness.complete


def test_chunked_request_body() -> None:
    req = (b"PUT /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\n")
    resp = b"HTTP/1.1 204 No Content\r\n\r\n"
    (ex,) = _exchange([req], [resp])
    assert ex.request.body == b"abc" and ex.response.status == 204


def test_close_delimited_response() -> None:
    req = b"GET /old HTTP/1.0\r\n\r\n"
    resp = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 5000
    (ex,) = _exchange([req], [resp], seg=1000)
    assert ex.response.body == b"x" * 5000
    assert ex.completeness.complete


def test_close_delimited_response_cut_by_capture_end_is_kept() -> None:
    req = b"GET /old HTTP/1.0\r\n\r\n"
    resp = b"HTTP/1.0 200 OK\r\n\r\npartial"
    (ex,) = _exchange([req], [resp], close_server=False)
    assert ex.response.body == b"partial"


def test_head_204_304_have_no_body_even_with_content_length() -> None:
    reqs = [b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /etag HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"v1\"\r\n\r\n",
            b"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"]
    resps = [b"HTTP/1.1 200 OK\r\nContent-Length: 123456\r\n\r\n",
             b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: \"v1\"\r\n\r\n",
             b"HTTP/1.1 204 No Content\r\n\r\n",
             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    exs = _exchange(reqs, resps)
    assert [x.response.status for x in exs] == [200, 304, 204, 200]
    assert [x.response.body for x in exs] == [b"", b"", b"", b"ok"]
    assert all(x.completeness.complete for x in exs)


def test_expect_100_continue_interim_kept_apart() -> None:
    conv = Conv()
    frames = conv.handshake()
    frames.append(conv.c(b"POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                         b"Content-Length: 6\r\n\r\n"))
    frames.append(conv.s(b"HTTP/1.1 100 Continue\r\n\r\n"))
    frames.append(conv.c(b"abcdef"))
    frames.append(conv.s(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    frames += [conv.fin_c(), conv.fin_s()]
    (ex,), _ = run(frames)
    assert [i.status for i in ex.interim] == [100]
    assert ex.response.status == 200 and ex.request.body == b"abcdef"
    assert ex.completeness.complete


def test_pipelining_pairs_in_order() -> None:
    reqs = b"".join(f"GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode() for i in range(6))
    resps = b"".join(f"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{i}".encode()
                     for i in range(6))
    exs = _exchange([reqs], [resps], seg=11)
    assert [(x.request.target, x.response.body) for x in exs] == [
        (f"/{i}", str(i).encode()) for i in range(6)
    ]


def test_websocket_upgrade_becomes_tunnel() -> None:
    req = (b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    resp = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05hello")
    conv = Conv()
    frames = conv.handshake() + [conv.c(req), conv.s(resp),
                                 conv.c(b"\x81\x85GET / HTTP/1.1 junk"),
                                 conv.s(b"HTTP/1.1 200 looks like http but is not"),
                                 conv.fin_c(), conv.fin_s()]
    exs, e = run(frames)
    assert len(exs) == 1  # websocket frames are not parsed as HTTP
    assert exs[0].tunnel == "upgrade:websocket" and exs[0].response.status == 101
    assert e.http_stats["tunnel_bytes"] > 0


def test_refused_upgrade_continues_as_http() -> None:
    req1 = b"GET /a HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    req2 = b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    resp1 = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
    resp2 = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"
    exs = _exchange([req1 + req2], [resp1 + resp2])
    assert [(x.request.target, x.response.body, x.tunnel) for x in exs] == [
        ("/a", b"a", None), ("/b", b"b", None)]


def test_connect_tunnel() -> None:
    req = b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n"
    resp = b"HTTP/1.1 200 Connection established\r\n\r\n"
    conv = Conv(server=("10.0.0.2", 3128))
    frames = conv.handshake() + [conv.c(req), conv.s(resp), conv.c(b"\x16\x03\x01 tls hello"),
                                 conv.s(b"\x16\x03\x03 server hello"), conv.fin_c(),
                                 conv.fin_s()]
    exs, _ = run(frames)
    assert len(exs) == 1
    assert exs[0].request.method == "CONNECT" and exs[0].request.target == "db.example:5432"
    assert exs[0].tunnel == "connect" and exs[0].response.body == b""


def test_refused_connect_stays_http() -> None:
    req = b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"
    resp = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
    req2 = b"GET http://y/ HTTP/1.1\r\nHost: y\r\n\r\n"
    resp2 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    exs = _exchange([req, req2], [resp, resp2])
    assert [(x.request.method, x.response.status) for x in exs] == [("CONNECT", 407),
                                                                   ("GET", 200)]


def test_http09_request_and_response() -> None:
    exs = _exchange([b"GET /old.html\r\n"], [b"<html>hi</html>"])
    assert len(exs) == 1
    ex = exs[0]
    assert ex.request.version == "HTTP/0.9" and ex.request.target == "/old.html"
    assert ex.response.body == b"<html>hi</html>" and ex.response.version == "HTTP/0.9"


def test_non_http_stream_is_counted_not_parsed() -> None:
    conv = Conv(server=("10.0.0.2", 22))
    frames = conv.handshake() + [conv.s(b"SSH-2.0-OpenSSH_9.2\r\n"),
                                 conv.c(b"SSH-2.0-client\r\n" + b"\x00" * 300),
                                 conv.fin_c(), conv.fin_s()]
    exs, e = run(frames)
    assert exs == []
    assert e.reasm.stats["non_http_streams"] == 1
    assert e.http_stats["bytes_skipped"] >= 300


def test_tls_on_port_443_is_tls_not_non_http() -> None:
    """TLS is told apart (``replay.tls``): a TLS connection without a key, never "non-HTTP"."""
    conv = Conv(server=("10.0.0.2", 443))
    frames = conv.handshake() + [conv.c(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
                                 conv.fin_c(), conv.fin_s()]
    exs, e = run(frames)
    assert exs == [] and "non_http_streams" not in e.reasm.stats
    assert e.tls_stats["connections"] == 1 and e.tls_stats["no_key"] == 1


def test_http_on_any_port_and_port_filter() -> None:
    conv = Conv(server=("10.0.0.2", 31337))
    req = b"GET /odd HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    frames = conv.handshake() + [conv.c(req), conv.s(resp), conv.fin_c(), conv.fin_s()]
    exs, _ = run(frames)
    assert len(exs) == 1
    exs, e = run(frames, port=80)
    assert exs == [] and e.reasm.stats["connections_ignored"] == 1
    exs, _ = run(frames, port=31337)
    assert len(exs) == 1


def test_request_without_response_is_unpaired() -> None:
    exs = _exchange([b"GET /void HTTP/1.1\r\nHost: h\r\n\r\n"], [])
    assert len(exs) == 1 and exs[0].response is None and exs[0].completeness.unpaired


def test_truncated_body_at_close_is_flagged() -> None:
    req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    (ex,) = _exchange([req], [resp])
    assert ex.response.body == b"only this" and ex.completeness.response_truncated


def test_smuggling_shapes_are_noted() -> None:
    req = (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
           b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n")
    exs = _exchange([req], [])
    # Transfer-Encoding with Content-Length (RFC 9112 6.3, 11.2): where the request ends depends
    # on who reads it, so it is a desync; the smuggled request is reported as what it is
    # (desync too, never replayed), not read as a request of the connection.
    assert [x.request.target for x in exs] == ["/", "/smuggled"]
    assert exs[1].completeness.desync and exs[1].completeness.desync_reason == "smuggled"
    assert "te+cl" in exs[0].completeness.notes
    assert exs[0].completeness.desync
    assert exs[0].completeness.desync_reason == "te_with_content_length"


def test_lenient_head_is_parsed_and_noted() -> None:
    req = b"get /lower HTTP/1.1\nHost: h\n\n"  # lower-case method, bare LF line ends
    resp = b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"
    (ex,) = _exchange([req], [resp])
    assert ex.request.method == "get" and ex.request.target == "/lower"
    assert ex.request.headers == [("Host", "h")]
    assert ex.response.body == b"ok"
    assert any(n.startswith("lenient-head") for n in ex.completeness.notes)


def test_strict_and_lenient_heads_agree_on_valid_input() -> None:
    head = b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\nX-A:  spaced value \t\r\nEmpty:\r\n\r\n"
    req, err = parse_request_head(head)
    assert err is None
    assert req.headers == [("Host", "a"), ("X-A", "spaced value"), ("Empty", "")]
    req2, err2 = parse_request_head(head.replace(b"\r\n", b"\n"))
    assert err2 is not None and req2.headers == req.headers and req2.target == req.target
