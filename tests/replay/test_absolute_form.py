"""A URL inside the query is not an absolute-form target (RFC 9112 §3.2.2).

``/login?next=http://example.com/account/42`` is the path ``/login`` with a query. It used to be
read as absolute-form wherever ``://`` appeared, so the shadows were sent
``GET /account/42``, the request was counted under the endpoint ``GET /account/{id}``, and a
short query holding a scheme within its first 16 bytes skipped the sanitiser's query walk.
"""

from __future__ import annotations

from replay.compare import endpoint_of
from replay.formats.har import request_url
from replay.model import Exchange, Request, absolute_form
from replay.rewrite import Rewrite, Target, WireBuilder, encode_request, rewrite_request
from replay.sanitise import Policy, Sanitiser

KEY = b"absolute-form-test-key-012345678"
ORIGIN = "/login?next=http://example.com/account/42"


def _req(target: str) -> Request:
    return Request("GET", target, "HTTP/1.1", [("Host", "shop.test"), ("Accept", "*/*")], b"")


def test_only_a_scheme_first_makes_absolute_form() -> None:
    assert not absolute_form(ORIGIN)
    assert not absolute_form("/r?u=https://a/b#c")
    assert absolute_form("http://shop.test/a?b=1")
    assert absolute_form("https://shop.test")
    assert not absolute_form("*") and not absolute_form("shop.test:443")


def test_path_and_host_of_an_origin_form_target_with_a_url_in_its_query() -> None:
    r = _req(ORIGIN)
    assert r.path == ORIGIN
    assert r.host == "shop.test"
    a = Request("GET", "http://other.test/p/1?x=http://y/z", "HTTP/1.1", [], b"")
    assert a.path == "/p/1?x=http://y/z" and a.host == "other.test"


def test_endpoint_keeps_the_path_not_the_url_in_the_query() -> None:
    assert endpoint_of("GET", ORIGIN) == "GET /login"
    assert endpoint_of("GET", "/orders/7?back=https://shop.test/x/y") == "GET /orders/{id}"
    assert endpoint_of("GET", "http://shop.test/orders/7?q=1") == "GET /orders/{id}"


def test_the_shadows_are_sent_the_path_and_query() -> None:
    ex = Exchange("c.1", request=_req(ORIGIN))
    targets = [Target.parse("http://127.0.0.1:8081"), Target.parse("http://127.0.0.1:8082")]
    rw = Rewrite()
    wire = WireBuilder(targets, rw).build(ex.request)
    for t, data in zip(targets, wire, strict=True):
        assert data.startswith(f"GET {ORIGIN} HTTP/1.1\r\n".encode())
        assert data == encode_request(rewrite_request(ex, t, rw))


def test_har_url_is_built_from_host_and_the_whole_target() -> None:
    ex = Exchange("c.1", request=_req(ORIGIN))
    assert request_url(ex.request, ex) == "http://shop.test" + ORIGIN


def test_a_scheme_early_in_the_query_does_not_skip_the_query_walk() -> None:
    secret = "tok_9f8e7d6c5b4a39281706"
    target = f"/cb?c=x://y&token={secret}"  # "://" within the first 16 bytes
    san = Sanitiser(Policy.default(), KEY)
    out = san.apply(Exchange("c.1", request=_req(target)))
    assert out.request is not None
    assert secret not in out.request.target
    assert out.request.target.startswith("/cb?c=")
