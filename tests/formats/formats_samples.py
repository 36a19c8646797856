"""Hand-built Exchanges covering the corners every format must carry through a round trip.

Built by hand (not extracted from captures) so the format tests do not depend on the extractor and
so each corner is named: target forms, header case/order/duplicates, binary and empty bodies,
trailers, interim responses, one-sided exchanges, HTTP/1.0 and 0.9, completeness flags.
"""

from __future__ import annotations

import gzip

import brotli

from replay.model import Completeness, ConnKey, Exchange, Request, Response

T0 = 1764163084.123456789  # a float with all its digits: timestamps must survive exactly
C4 = ConnKey("10.0.0.1", 51234, "10.0.0.2", 80)
C6 = ConnKey("2001:db8::1", 40000, "2001:db8::2", 8080)
ALL_BYTES = bytes(range(256))


def _ts(i: int) -> dict[str, float]:
    return {
        "ts_request_start": T0 + i,
        "ts_request_end": T0 + i + 0.001,
        "ts_response_start": T0 + i + 0.0125,
        "ts_response_end": T0 + i + 0.02,
    }


def sample_exchanges() -> dict[str, Exchange]:
    """Name -> Exchange. Names appear in test ids."""
    s: dict[str, Exchange] = {}
    s["origin_dup_headers_trailers"] = Exchange(
        id="c1-1",
        conn=C4,
        request=Request(
            "GET",
            "/search?q=a+b&q=c&empty=&flag",
            headers=[
                ("Host", "example.com"),
                ("user-agent", "curl/8.5.0"),
                ("X-Dup", "one"),
                ("x-dup", "two"),
                ("X-DUP", "three"),
                ("Cookie", "sid=abc; theme=dark"),
                ("X-Spaces", "  padded  value "),
            ],
        ),
        response=Response(
            200,
            "OK",
            headers=[
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Transfer-Encoding", "chunked"),
                ("Set-Cookie", "a=1; Path=/; HttpOnly"),
                ("set-cookie", "b=2; Domain=example.com; Secure"),
                ("Trailer", "X-Checksum"),
            ],
            body="héllo wörld ✓ 🚀\n\x00tab\there".encode(),
            trailers=[("X-Checksum", "abc123"), ("x-checksum", "again")],
        ),
        **_ts(0),
    )
    s["post_binary_gzip_response"] = Exchange(
        id="c1-2",
        conn=C4,
        request=Request(
            "POST",
            "/upload",
            headers=[
                ("Host", "example.com:8080"),
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", "256"),
            ],
            body=ALL_BYTES,
        ),
        response=Response(
            201,
            "Created",
            headers=[("Content-Encoding", "gzip"), ("Content-Type", "application/json")],
            body=gzip.compress(b'{"ok": true}', mtime=0),
        ),
        **_ts(1),
    )
    s["form_post_brotli"] = Exchange(
        id="c1-3",
        conn=C4,
        request=Request(
            "POST",
            "/login",
            headers=[
                ("Host", "example.com"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body=b"user=alice&pass=s%20cret&empty=",
        ),
        response=Response(
            200,
            "OK",
            headers=[("Content-Encoding", "br"), ("Content-Type", "text/html")],
            body=brotli.compress(b"<html>welcome</html>"),
        ),
        **_ts(2),
    )
    s["absolute_form_redirect"] = Exchange(
        id="c2-1",
        conn=C4,
        request=Request(
            "GET",
            "http://Example.COM:8080/p/a?x=1",
            headers=[("Host", "Example.COM:8080"), ("Proxy-Connection", "keep-alive")],
        ),
        response=Response(
            301,
            "Moved Permanently",
            headers=[("Location", "http://example.com/new"), ("Content-Length", "0")],
        ),
        **_ts(3),
    )
    s["absolute_form_no_path"] = Exchange(
        id="c2-2",
        conn=C4,
        request=Request("GET", "http://example.com", headers=[("Host", "example.com")]),
        response=Response(200, "OK", headers=[("Content-Length", "2")], body=b"hi"),
        **_ts(4),
    )
    s["connect_authority_form"] = Exchange(
        id="c3-1",
        conn=C4,
        request=Request("CONNECT", "example.com:443", headers=[("Host", "example.com:443")]),
        response=Response(200, "Connection established"),
        tunnel="connect",
        **_ts(5),
    )
    s["options_asterisk"] = Exchange(
        id="c4-1",
        conn=C6,
        request=Request("OPTIONS", "*", headers=[("Host", "[2001:db8::2]:8080")]),
        response=Response(200, "OK", headers=[("Allow", "GET, HEAD, OPTIONS")]),
        **_ts(6),
    )
    s["expect_100_interim"] = Exchange(
        id="c5-1",
        conn=C4,
        request=Request(
            "PUT",
            "/file.txt",
            headers=[
                ("Host", "example.com"),
                ("Expect", "100-continue"),
                ("Content-Length", "5"),
            ],
            body=b"12345",
        ),
        interim=[
            Response(100, "Continue"),
            Response(103, "Early Hints", headers=[("Link", "</s.css>; rel=preload")]),
        ],
        response=Response(204, "No Content"),
        **_ts(7),
    )
    s["request_only_timed_out"] = Exchange(
        id="c6-1",
        conn=C4,
        request=Request("GET", "/slow", headers=[("Host", "example.com")]),
        ts_request_start=T0 + 8,
        ts_request_end=T0 + 8.001,
        completeness=Completeness(unpaired=True, timed_out=True, notes=["no-response"]),
    )
    s["response_only"] = Exchange(
        id="c7-1",
        conn=C4,
        response=Response(
            500, "Internal Server Error", headers=[("Content-Length", "4")], body=b"oops"
        ),
        ts_response_start=T0 + 9,
        ts_response_end=T0 + 9.5,
        completeness=Completeness(unpaired=True, notes=["request-missing"]),
    )
    s["http10_truncated_gaps"] = Exchange(
        id="c8-1",
        conn=C4,
        request=Request("GET", "/old", version="HTTP/1.0", headers=[("Accept", "*/*")]),
        response=Response(
            200,
            "OK",
            version="HTTP/1.0",
            headers=[("Content-Type", "application/octet-stream")],
            body=b"\x89PNG\r\n\x1a\n" + b"\x00" * 10 + b"\xff\xfe",
        ),
        completeness=Completeness(
            request_gaps=[],
            response_gaps=[(8, 100), (500, 3)],
            retransmits=4,
            response_truncated=True,
            notes=["close-delimited"],
        ),
        **_ts(10),
    )
    s["http09"] = Exchange(
        id="c9-1",
        conn=C4,
        request=Request("GET", "/ancient", version="HTTP/0.9"),
        response=Response(200, "", version="HTTP/0.9", body=b"<html>old</html>"),
        **_ts(11),
    )
    s["latin1_headers_reason_custom_method"] = Exchange(
        id="c10-1",
        conn=C4,
        request=Request(
            "purge",
            "/caf\xe9?n=\xff",
            headers=[("Host", "example.com"), ("X-Latin", "caf\xe9 \xa0\xff")],
        ),
        response=Response(200, "Tr\xe8s bien", headers=[("X-R", "\xe9")], body=b"\xe9t\xe9"),
        **_ts(12),
    )
    s["no_host_no_timestamps_truncated_gzip"] = Exchange(
        id="c11-1",
        conn=None,
        request=Request(
            "POST",
            "/x",
            headers=[("Content-Type", "text/plain")],
            body=b"",
        ),
        response=Response(
            200,
            "OK",
            headers=[("Content-Encoding", "gzip")],
            body=gzip.compress(b"a" * 1000, mtime=0)[:15],
        ),
        completeness=Completeness(
            request_truncated=True, request_gaps=[(0, 7)], response_truncated=True
        ),
    )
    s["websocket_upgrade_meta"] = Exchange(
        id="c12-1",
        conn=C6,
        request=Request(
            "GET",
            "/chat",
            headers=[
                ("Host", "example.com"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
        ),
        response=Response(
            101,
            "Switching Protocols",
            headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")],
        ),
        tunnel="upgrade:websocket",
        meta={
            "sanitise": {"report": "r-1", "hits": [1, 2, 3]},
            "weight": 0.25,
            "ok": True,
            "none": None,
        },
        **_ts(13),
    )
    s["head_empty_body"] = Exchange(
        id="c13-1",
        conn=C4,
        request=Request("HEAD", "/big", headers=[("Host", "example.com")]),
        response=Response(200, "OK", headers=[("Content-Length", "123456")]),
        **_ts(14),
    )
    return s
