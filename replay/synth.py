"""Synthetic, realistic HTTP/1.1 packet captures, fast.

Why this exists: the extractor (``shadowtap extract``) must be tested and benchmarked on
captures far larger than anything we can record by hand or check into the repository, with a
known ground truth (which requests were sent on which connection). scapy builds ~10k packets/s,
far too slow for the 2M-packet captures the benchmark needs, so this module writes classic pcap
records with :mod:`struct` directly (~150k+ packets/s on one core).

What the captures look like, and why each feature is there:

* Ethernet + IPv4 (optionally IPv6 and an 802.1Q tag) + TCP with correct sequence and
  acknowledgement numbers: reassembly must be exercised for real, not just concatenation.
* Three-way handshake with MSS/SACK/window-scale options, MSS segmentation of large bodies,
  delayed pure ACKs from the receiver, FIN closes from either side and some RST closes;
  a small share of initial sequence numbers sit just below 2**32 so that wrap-around happens.
* Keep-alive connections carrying several exchanges, ``concurrency`` connections open at once
  and their packets interleaved at packet granularity, the way a busy gateway sees them.
* Varied requests (GET with query strings, POST/PUT/PATCH JSON and form bodies, some chunked
  request bodies, HEAD, DELETE, OPTIONS, ``Expect: 100-continue`` with an interim response) and
  responses (200/201/204/301/304/404/500, Content-Length, chunked with several chunks and a few
  trailers, gzip, a few close-delimited bodies, binary image bodies).
* Optional impairments -- ``loss`` (segments missing from the capture), ``reorder`` (adjacent
  data segments swapped) and ``retransmit`` (a data segment repeated) -- so that gap and
  retransmission accounting can be checked against known numbers.

IPv4 header checksums are correct (cheap: a precomputed partial sum per direction); TCP
checksums are zero, as in captures taken on NICs with checksum offload.

The ground truth (one tuple per exchange: ``((client_ip, client_port, server_ip, server_port),
method, target, host, status)``) is appended to ``truth`` if a list is passed; ``status`` is the
final status code (never the interim 100).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import socket
import struct
import sys
import zlib
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO

__all__ = ["GenStats", "TruthRow", "generate_pcap", "main"]

TruthRow = tuple[tuple[str, int, str, int], str, str, str, int]

_M32 = 0xFFFFFFFF
_FIN, _SYN, _RST, _PSH, _ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_PCAP_HDR = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)  # LINKTYPE_ETHERNET
_REC = struct.Struct("<IIII")
# IPv4 header (20 B, no options) + 12 B of addresses/ports + the rest of a 20 B TCP header.
_V4 = struct.Struct("!HHHHHH12sIIHHHH")
# IPv6 header (40 B) + 36 B of addresses/ports + the rest of a 20 B TCP header.
_V6 = struct.Struct("!IHH36sIIHHHH")
# SYN options: MSS, NOP, NOP, SACK permitted, NOP, window scale 7 -> 12 bytes, data offset 8.
_SYN_OPTS = b"\x02\x04%s\x01\x01\x04\x02\x01\x03\x03\x07"


@dataclass
class GenStats:
    """What a run produced; ``requests`` is the number of exchanges (the ground-truth size)."""

    packets: int = 0
    connections: int = 0
    requests: int = 0
    bytes: int = 0  # bytes written to the pcap file, headers included
    payload_bytes: int = 0  # TCP payload bytes emitted (retransmissions included)
    dropped_segments: int = 0  # data segments left out of the capture (``loss``)
    reordered_segments: int = 0  # adjacent data-segment swaps (``reorder``)
    retransmitted_segments: int = 0  # data segments repeated (``retransmit``)
    rst_closes: int = 0
    duration: float = 0.0  # seconds between the first and the last packet


# --------------------------------------------------------------------------- content pools


_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
    "python-requests/2.31.0",
    "okhttp/4.12.0",
    "Go-http-client/1.1",
    "axios/1.6.8",
    "PostmanRuntime/7.37.3",
)
_ACCEPT_HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
_ACCEPT_LANG = ("en-US,en;q=0.9", "de-DE,de;q=0.9,en;q=0.8", "fr-FR,fr;q=0.8", "en-GB,en;q=0.7")
_WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu", "red", "green", "blue", "shoes",
    "socks", "jacket", "winter", "summer", "sale", "new", "used", "cheap", "premium", "café",
    "über", "naïve",
)
_CATEGORIES = ("books", "electronics", "garden", "toys", "sports", "food", "music", "tools")
_SERVERS = ("nginx/1.24.0", "Apache/2.4.57 (Debian)", "gunicorn", "envoy", "openresty")

# Per server: (IPv4 last octet / IPv6 low word, port, host header values).
_SITES = (
    (10, 80, ("api.shop.example", "api.shop.example:80")),
    (11, 80, ("www.shop.example", "shop.example")),
    (12, 80, ("static.shop.example",)),
    (13, 8080, ("internal.svc.local:8080", "192.0.2.13:8080")),
    (14, 80, ("blog.shop.example",)),
)


def _pct(s: str) -> str:
    """Percent-encode a query value the way browsers do (space as '+')."""
    out = []
    for ch in s:
        if ch.isascii() and (ch.isalnum() or ch in "-._~"):
            out.append(ch)
        elif ch == " ":
            out.append("+")
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out)


class _Pools:
    """Bodies built once per run: building a 60 KB body per response would dominate the cost."""

    def __init__(self, rng: random.Random) -> None:
        sizes = [int(200 * (300 ** (i / 39))) for i in range(40)]  # 200 B .. 60 KB, log-spaced
        self.json = [self._json_body(rng, n) for n in sizes]
        self.html = [self._html_body(rng, n) for n in sizes]
        self.js = [self._js_body(rng, n) for n in sizes[:32]]
        self.png = [self._png_body(rng, n) for n in sizes[5:30:2]]
        self.gz: dict[int, bytes] = {}
        self.req_json = [self._json_body(rng, int(40 * (200 ** (i / 23)))) for i in range(24)]
        self.req_form = [self._form_body(rng, int(30 * (60 ** (i / 11)))) for i in range(12)]

    def gzip(self, body: bytes) -> bytes:
        """gzip once per pooled body (mtime=0 keeps runs byte-identical for one seed)."""
        key = id(body)
        z = self.gz.get(key)
        if z is None:
            z = self.gz[key] = gzip.compress(body, compresslevel=6, mtime=0)
        return z

    @staticmethod
    def _json_body(rng: random.Random, size: int) -> bytes:
        items = []
        total = 20
        while total < size:
            item = {
                "id": rng.randrange(1, 10**7),
                "name": " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(1, 4))),
                "price": round(rng.uniform(0.5, 900), 2),
                "tags": rng.sample(_CATEGORIES, rng.randrange(0, 3)),
                "active": rng.random() < 0.8,
                "updated": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T"
                f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
            }
            items.append(item)
            total += 110
        doc = {"data": items, "page": rng.randrange(1, 50), "total": len(items) * 7}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    @staticmethod
    def _html_body(rng: random.Random, size: int) -> bytes:
        head = (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{rng.choice(_WORDS).title()} | Shop</title>"
            "<link rel=\"stylesheet\" href=\"/static/css/main.css\"></head>\n<body>\n"
        )
        parts = [head]
        total = len(head)
        while total < size:
            p = "<p>" + " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(8, 40))) + "</p>\n"
            parts.append(p)
            total += len(p)
        parts.append("</body></html>\n")
        return "".join(parts).encode()

    @staticmethod
    def _js_body(rng: random.Random, size: int) -> bytes:
        parts = ["\"use strict\";\n"]
        total = 0
        while total < size:
            a, b = rng.choice(_WORDS).replace("é", "e"), rng.choice(_WORDS).replace("ü", "u")
            line = f"function {a}_{b}{rng.randrange(999)}(x){{return x*{rng.randrange(97)}+1;}}\n"
            parts.append(line)
            total += len(line)
        return "".join(parts).encode("ascii", "replace")

    @staticmethod
    def _png_body(rng: random.Random, size: int) -> bytes:
        """A well-formed PNG chunk layout (so dissectors do not flag it malformed) with an
        incompressible IDAT: binary bodies must survive the exchange log (base64) intact."""

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack("!I", len(data)) + kind + data + struct.pack(
                "!I", zlib.crc32(kind + data))

        ihdr = struct.pack("!IIBBBBB", rng.randrange(64, 2048), rng.randrange(64, 2048),
                           8, 6, 0, 0, 0)
        idat = rng.randbytes(max(16, size - 57))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                + chunk(b"IEND", b""))

    @staticmethod
    def _form_body(rng: random.Random, size: int) -> bytes:
        fields = []
        total = 0
        while total < size:
            k = rng.choice(("username", "email", "q", "comment", "qty", "sku", "note"))
            v = _pct(" ".join(rng.choice(_WORDS) for _ in range(rng.randrange(1, 6))))
            fields.append(f"{k}={v}")
            total += len(k) + len(v) + 2
        return "&".join(fields).encode()


# --------------------------------------------------------------------------- packets


class _Side:
    """One direction of a connection: prebuilt header bytes, its sequence number, its IP id.

    Everything constant per direction (Ethernet/VLAN header, addresses, ports, the constant
    part of the IPv4 checksum) is computed once so that a data segment costs one struct.pack.
    """

    __slots__ = ("csum0", "ipid", "mid", "pre", "seq", "v6", "win")

    def __init__(
        self, src_mac: bytes, dst_mac: bytes, vlan: int | None, v6: bool,
        src: bytes, dst: bytes, sport: int, dport: int, isn: int, win: int, ipid: int,
    ) -> None:
        tag = struct.pack("!HH", 0x8100, vlan & 0x0FFF) if vlan is not None else b""
        self.pre = dst_mac + src_mac + tag + (b"\x86\xdd" if v6 else b"\x08\x00")
        self.mid = src + dst + struct.pack("!HH", sport, dport)
        self.v6 = v6
        self.seq = isn
        self.win = win
        self.ipid = ipid
        s = 0x4500 + 0x4000 + 0x4006  # version/IHL/TOS, DF, TTL 64 + proto 6
        if not v6:
            s += sum(struct.unpack("!4H", src + dst))
        self.csum0 = s

    def frame(self, flags: int, ack: int, payload: bytes = b"") -> bytes:
        """A complete Ethernet frame carrying one TCP segment from this side."""
        if self.v6:
            return self.pre + _V6.pack(
                0x60000000, 20 + len(payload), 0x0640, self.mid,
                self.seq, ack, 0x5000 | flags, self.win, 0, 0,
            ) + payload
        tot = 40 + len(payload)
        ipid = self.ipid = (self.ipid + 1) & 0xFFFF
        s = self.csum0 + tot + ipid
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        return self.pre + _V4.pack(
            0x4500, tot, ipid, 0x4000, 0x4006, ~s & 0xFFFF, self.mid,
            self.seq, ack, 0x5000 | flags, self.win, 0, 0,
        ) + payload

    def syn_frame(self, flags: int, ack: int, mss: int) -> bytes:
        """SYN or SYN/ACK with options (data offset 8 words): slow path, twice per connection.

        The window field of a SYN is never scaled, so it carries a plain ~64 KB value; later
        segments carry ``win`` which the peer scales by 2**7 (window-scale option 7).
        """
        opts = _SYN_OPTS % struct.pack("!H", mss)
        if self.v6:
            hdr = _V6.pack(0x60000000, 32, 0x0640, self.mid, self.seq, ack, 0x8000 | flags,
                           64800, 0, 0)
            return self.pre + hdr + opts
        tot = 52
        ipid = self.ipid = (self.ipid + 1) & 0xFFFF
        s = self.csum0 + tot + ipid
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        hdr = _V4.pack(0x4500, tot, ipid, 0x4000, 0x4006, ~s & 0xFFFF, self.mid,
                       self.seq, ack, 0x8000 | flags, 64240, 0, 0)
        return self.pre + hdr + opts


# --------------------------------------------------------------------------- generator


class _Gen:
    """Holds the run-wide state; connections are plain objects driven by :meth:`burst`."""

    def __init__(self, *, seed: int, mss: int, chunked_share: float, post_share: float,
                 gzip_share: float, ipv6_share: float, vlan: int | None, loss: float,
                 reorder: float, retransmit: float, requests_per_conn: tuple[int, int],
                 connections: int, truth: list[TruthRow] | None, stats: GenStats,
                 start_us: int) -> None:
        self.rng = random.Random(seed)
        self.pools = _Pools(random.Random(seed ^ 0x5EED))
        self.mss = mss
        self.chunked_share = chunked_share
        self.post_share = post_share
        self.gzip_share = gzip_share
        self.ipv6_share = ipv6_share
        self.vlan = vlan
        self.loss = loss
        self.reorder = reorder
        self.retransmit = retransmit
        self.impaired = loss > 0 or reorder > 0 or retransmit > 0
        self.rpc = requests_per_conn
        self.truth = truth
        self.stats = stats
        self.now_us = start_us
        self._date_sec = -1
        self._date = ""
        # Enough distinct clients that every 4-tuple is unique within the capture (no reuse of
        # a closed connection's tuple: that is a separate, deliberate test case elsewhere).
        self.n_clients = max(50, min(60000, connections // 8 + 1))
        self.next_port = [0] * self.n_clients
        self.conn_no = 0
        self.gw_mac = bytes.fromhex("0200deadbe01")
        self.srv_macs = [bytes.fromhex(f"0200cafe00{i:02x}") for i in range(len(_SITES))]

    # ---------------------------------------------------------------- HTTP messages

    def date(self) -> str:
        sec = self.now_us // 1_000_000
        if sec != self._date_sec:
            self._date_sec = sec
            self._date = formatdate(sec, usegmt=True)
        return self._date

    def make_exchange(self, host: str, last: bool, closer: str) -> _Exchange:
        """Choose a request and its response; returns the wire bytes and the plan to send them."""
        rng = self.rng
        r = rng.random
        pools = self.pools
        ua = rng.choice(_USER_AGENTS)
        hdrs = [f"Host: {host}", f"User-Agent: {ua}"]
        body = b""
        inm = False
        req_chunked = False
        expect = False
        kind = "json"  # response content kind
        if r() < self.post_share:
            x = r()
            method = "POST" if x < 0.7 else ("PUT" if x < 0.9 else "PATCH")
            uid = rng.randrange(1, 10**6)
            if method == "POST":
                target = rng.choice((
                    "/api/v1/orders", "/api/v1/events", "/api/v1/login", "/graphql",
                    f"/api/v1/users/{uid}/comments", "/api/v1/cart/items?sync=1",
                    "/contact", "/api/v1/upload?kind=avatar",
                ))
            else:
                target = f"/api/v1/{rng.choice(('users', 'orders', 'products'))}/{uid}"
            if target in ("/api/v1/login", "/contact"):
                body = rng.choice(pools.req_form)
                ctype = "application/x-www-form-urlencoded"
                kind = "html" if target == "/contact" else "json"
            else:
                body = rng.choice(pools.req_json)
                ctype = "application/json"
            hdrs.append("Accept: application/json, text/plain, */*")
            hdrs.append(f"Content-Type: {ctype}")
            if r() < self.chunked_share * 0.25:
                req_chunked = True
                hdrs.append("Transfer-Encoding: chunked")
            else:
                hdrs.append(f"Content-Length: {len(body)}")
            if len(body) > 1024 and r() < 0.15:
                expect = True
                hdrs.append("Expect: 100-continue")
        else:
            x = r()
            method = "GET" if x < 0.85 else ("HEAD" if x < 0.93 else
                                             ("DELETE" if x < 0.97 else "OPTIONS"))
            target, kind = self._get_target(method)
            if kind == "html":
                hdrs.append(f"Accept: {_ACCEPT_HTML}")
            elif kind == "png":
                hdrs.append("Accept: image/avif,image/webp,image/apng,image/*,*/*;q=0.8")
            elif kind == "js":
                hdrs.append("Accept: */*")
            else:
                hdrs.append("Accept: application/json")
            if method == "GET" and r() < 0.08:
                inm = True
                hdrs.append(f"If-None-Match: \"{rng.getrandbits(48):012x}\"")
        hdrs.append("Accept-Encoding: gzip, deflate, br")
        if r() < 0.6:
            hdrs.append(f"Accept-Language: {rng.choice(_ACCEPT_LANG)}")
        if r() < 0.45:
            hdrs.append(f"Cookie: sid={rng.getrandbits(128):032x}; theme=dark; "
                        f"_ga=GA1.2.{rng.randrange(10**9)}.{rng.randrange(10**9)}")
        if target.startswith("/api") and r() < 0.6:
            hdrs.append(f"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.{rng.getrandbits(192):048x}")
        if r() < 0.3:
            hdrs.append(f"X-Request-Id: {rng.getrandbits(128):032x}")
        if r() < 0.2:
            hdrs.append(f"Referer: http://{host}/")
        hdrs.append("Connection: close" if last and closer == "server" else
                    "Connection: keep-alive")
        head = f"{method} {target} HTTP/1.1\r\n" + "\r\n".join(hdrs) + "\r\n\r\n"
        req_head = head.encode()
        if req_chunked:
            body = _chunk(rng, body, trailer=False)

        # ---- response
        status = self._status(method, inm)
        close_delim = last and closer == "server" and r() < 0.1 and status not in (204, 304)
        close_delim = close_delim and method != "HEAD"
        rh = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Date: {self.date()}",
              f"Server: {_SERVERS[self.conn_no % len(_SERVERS)]}"]
        rbody = b""
        if status in (204, 304):
            if status == 304:
                rh.append(f"ETag: \"{rng.getrandbits(48):012x}\"")
            if method == "OPTIONS":
                rh.append("Allow: GET, HEAD, POST, PUT, OPTIONS")
        else:
            if status == 301:
                loc = f"https://{host.split(':')[0]}{target}"
                rh.append(f"Location: {loc}")
                rbody = f"<html><body>Moved <a href=\"{loc}\">here</a></body></html>\n".encode()
                ctype = "text/html"
            elif status >= 400 and kind != "html":
                rbody = json.dumps({"error": _REASONS[status].lower(), "status": status,
                                    "path": target}).encode()
                ctype = "application/json"
            else:
                rbody, ctype = self._body(kind)
            rh.append(f"Content-Type: {ctype}")
            if kind in ("js", "png"):
                rh.append("Cache-Control: public, max-age=31536000, immutable")
            else:
                rh.append("Cache-Control: no-cache")
            if kind != "png" and len(rbody) > 600 and r() < self.gzip_share:
                rbody = pools.gzip(rbody)
                rh.append("Content-Encoding: gzip")
                rh.append("Vary: Accept-Encoding")
            if r() < 0.1:
                rh.append(f"Set-Cookie: sid={rng.getrandbits(96):024x}; Path=/; HttpOnly")
            if close_delim:
                pass  # the body ends where the server closes the connection
            elif method != "HEAD" and r() < self.chunked_share:
                rh.append("Transfer-Encoding: chunked")
                rbody = _chunk(rng, rbody, trailer=r() < 0.05)
            else:
                rh.append(f"Content-Length: {len(rbody)}")
            if method == "HEAD":
                rbody = b""
        if last and closer == "server":
            rh.append("Connection: close")
        elif r() < 0.3:
            rh.append("Connection: keep-alive")
        resp = ("\r\n".join(rh) + "\r\n\r\n").encode() + rbody
        return _Exchange(method, target, status, req_head, body, expect, resp)

    def _get_target(self, method: str) -> tuple[str, str]:
        rng = self.rng
        if method == "DELETE":
            return f"/api/v1/sessions/{rng.getrandbits(64):016x}", "json"
        if method == "OPTIONS":
            return rng.choice(("/api/v1/users", "/api/v1/orders", "/graphql")), "json"
        x = rng.random()
        uid = rng.randrange(1, 10**6)
        if x < 0.35:
            t = rng.choice((
                f"/api/v1/users/{uid}",
                f"/api/v1/users/{uid}/orders?status={rng.choice(('open', 'paid', 'shipped'))}"
                f"&page={rng.randrange(1, 20)}&per_page={rng.choice((10, 25, 50, 100))}",
                f"/api/v2/products?category={rng.choice(_CATEGORIES)}&sort=price&order="
                f"{rng.choice(('asc', 'desc'))}&limit={rng.choice((12, 24, 48))}",
                f"/api/v1/cart?ts={rng.randrange(1_700_000_000_000, 1_800_000_000_000)}",
                "/api/v1/me",
            ))
            return t, "json"
        if x < 0.5:
            q = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(1, 4)))
            return f"/search?q={_pct(q)}&lang=en-US&page={rng.randrange(1, 5)}", "html"
        if x < 0.7:
            t = rng.choice((
                "/", "/index.html", f"/products/{rng.choice(_WORDS)}-{uid}",
                f"/blog/2026/{rng.randrange(1, 13):02d}/{rng.choice(_WORDS)}-{rng.choice(_WORDS)}",
                f"/category/{rng.choice(_CATEGORIES)}?page={rng.randrange(1, 9)}",
            ))
            return _pct_path(t), "html"
        if x < 0.85:
            ext = rng.choice(("js", "css"))
            return f"/static/{ext}/app.{rng.getrandbits(32):08x}.{ext}", "js"
        if x < 0.95:
            return f"/images/products/{uid}_{rng.choice((320, 640, 1280))}.png", "png"
        return rng.choice(("/health", "/metrics", "/favicon.ico", "/robots.txt")), "js"

    def _status(self, method: str, inm: bool) -> int:
        x = self.rng.random()
        if method == "OPTIONS" or method == "DELETE":
            return 204 if x < 0.9 else 404
        if method in ("POST", "PUT", "PATCH"):
            if x < 0.4 and method == "POST":
                return 201
            return 200 if x < 0.93 else (500 if x < 0.97 else 404)
        if inm and x < 0.7:
            return 304
        if x < 0.86:
            return 200
        if x < 0.9:
            return 301
        return 404 if x < 0.97 else 500

    def _body(self, kind: str) -> tuple[bytes, str]:
        p = self.pools
        c = self.rng.choice
        if kind == "html":
            return c(p.html), "text/html; charset=utf-8"
        if kind == "js":
            return c(p.js), "application/javascript"
        if kind == "png":
            return c(p.png), "image/png"
        return c(p.json), "application/json"

    # ---------------------------------------------------------------- connections

    def new_conn(self) -> _Conn:
        rng = self.rng
        n = self.conn_no
        self.conn_no += 1
        ci = n % self.n_clients
        port = 32768 + ((ci * 7919 + self.next_port[ci]) % 28000)
        self.next_port[ci] += 1
        site = rng.randrange(len(_SITES))
        octet, sport, hosts = _SITES[site]
        v6 = self.ipv6_share > 0 and rng.random() < self.ipv6_share
        if v6:
            cip = b"\x20\x01\x0d\xb8\x00\x01" + bytes(8) + struct.pack("!H", ci + 1)
            sip = b"\x20\x01\x0d\xb8\xff\xff" + bytes(8) + struct.pack("!H", octet)
        else:
            cip = bytes((10, 1 + (ci >> 16), (ci >> 8) & 0xFF, ci & 0xFF))
            sip = bytes((192, 0, 2, octet))
        isn_c = rng.getrandbits(32) if rng.random() > 0.02 else _M32 - rng.randrange(4000)
        isn_s = rng.getrandbits(32) if rng.random() > 0.02 else _M32 - rng.randrange(4000)
        smac = self.srv_macs[site]
        cli = _Side(self.gw_mac, smac, self.vlan, v6, cip, sip, port, sport, isn_c,
                    rng.choice((502, 1024, 2052, 64240)), rng.getrandbits(16))
        srv = _Side(smac, self.gw_mac, self.vlan, v6, sip, cip, sport, port, isn_s,
                    rng.choice((501, 509, 65160)), rng.getrandbits(16))
        lo, hi = self.rpc
        x = rng.random()
        closer = "client" if x < 0.6 else ("server" if x < 0.88 else "rst")
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        key = (socket.inet_ntop(fam, cip), port, socket.inet_ntop(fam, sip), sport)
        return _Conn(cli, srv, rng.randint(lo, hi), site, rng.choice(hosts), closer, key)

    def burst(self, c: _Conn) -> None:
        """Queue the next causal step of ``c`` (handshake, one exchange, close).

        Packets within a burst keep their order; bursts of different connections interleave
        packet by packet in :func:`_run`. After the close burst ``c.state`` is 3 (finished).
        """
        out: list[bytes] = []
        data: list[tuple[int, int]] = []  # (index in out, direction) of data segments
        cli, srv = c.cli, c.srv
        if c.state == 0:  # handshake
            out.append(cli.syn_frame(_SYN, 0, self.mss))
            cli.seq = (cli.seq + 1) & _M32
            out.append(srv.syn_frame(_SYN | _ACK, cli.seq, min(self.mss, 1460)))
            srv.seq = (srv.seq + 1) & _M32
            out.append(cli.frame(_ACK, srv.seq))
            c.state = 1
        elif c.state == 1:  # one exchange
            c.done += 1
            last = c.done >= c.n
            ex = self.make_exchange(c.host, last, c.closer)
            if self.truth is not None:
                self.truth.append((c.key, ex.method, ex.target, c.host, ex.status))
            self.stats.requests += 1
            rng = self.rng
            if ex.expect:
                self._send(cli, srv, ex.req_head, out, data, 0)
                self._send(srv, cli, b"HTTP/1.1 100 Continue\r\n\r\n", out, data, 1)
                self._send(cli, srv, ex.req_body, out, data, 0)
            elif ex.req_body and rng.random() < 0.3:  # headers and body in separate writes
                self._send(cli, srv, ex.req_head, out, data, 0)
                self._send(cli, srv, ex.req_body, out, data, 0)
            else:
                self._send(cli, srv, ex.req_head + ex.req_body, out, data, 0)
            if rng.random() < 0.5:  # delayed ACK fired before the response was ready
                out.append(srv.frame(_ACK, cli.seq))
            self._send(srv, cli, ex.resp, out, data, 1)
            if not last and rng.random() < 0.5:
                out.append(cli.frame(_ACK, srv.seq))
            if last:
                c.state = 2
        else:  # close
            if c.closer == "client":
                out.append(cli.frame(_FIN | _ACK, srv.seq))
                cli.seq = (cli.seq + 1) & _M32
                out.append(srv.frame(_FIN | _ACK, cli.seq))
                srv.seq = (srv.seq + 1) & _M32
                out.append(cli.frame(_ACK, srv.seq))
            elif c.closer == "server":
                out.append(srv.frame(_FIN | _ACK, cli.seq))
                srv.seq = (srv.seq + 1) & _M32
                out.append(cli.frame(_FIN | _ACK, srv.seq))
                cli.seq = (cli.seq + 1) & _M32
                out.append(srv.frame(_ACK, cli.seq))
            else:
                out.append(cli.frame(_RST | _ACK, srv.seq))
                self.stats.rst_closes += 1
            c.state = 3
        if self.impaired and data:
            out = self._impair(out, data)
        c.q.extend(out)

    def _send(self, src: _Side, dst: _Side, payload: bytes, out: list[bytes],
              data: list[tuple[int, int]], direction: int) -> None:
        """Segment ``payload`` at the MSS; the receiver ACKs every second full segment."""
        mss = self.mss
        n = len(payload)
        self.stats.payload_bytes += n
        if n <= mss:
            data.append((len(out), direction))
            out.append(src.frame(_ACK | _PSH, dst.seq, payload))
            src.seq = (src.seq + n) & _M32
            return
        off = 0
        k = 0
        while off < n:
            seg = payload[off:off + mss]
            off += mss
            data.append((len(out), direction))
            out.append(src.frame(_ACK | _PSH if off >= n else _ACK, dst.seq, seg))
            src.seq = (src.seq + len(seg)) & _M32
            k += 1
            if k & 1 == 0 and off < n:
                out.append(dst.frame(_ACK, src.seq))

    def _impair(self, out: list[bytes], data: list[tuple[int, int]]) -> list[bytes]:
        """Apply loss (omit), reorder (swap adjacent same-direction data) and retransmission."""
        r = self.rng.random
        st = self.stats
        if self.reorder > 0:
            for j in range(len(data) - 1):
                i, d = data[j]
                i2, d2 = data[j + 1]
                if i2 == i + 1 and d2 == d and r() < self.reorder:
                    out[i], out[i2] = out[i2], out[i]
                    st.reordered_segments += 1
        drop: set[int] = set()
        if self.loss > 0:
            for i, _ in data:
                if r() < self.loss:
                    drop.add(i)
        dup: set[int] = set()
        if self.retransmit > 0:
            for i, _ in data:
                if i not in drop and r() < self.retransmit:
                    dup.add(i)
        if not drop and not dup:
            return out
        st.dropped_segments += len(drop)
        st.retransmitted_segments += len(dup)
        res: list[bytes] = []
        for i, f in enumerate(out):
            if i in drop:
                continue
            res.append(f)
            if i in dup:
                res.append(f)
        return res


_REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
    304: "Not Modified", 404: "Not Found", 500: "Internal Server Error",
}


def _pct_path(t: str) -> str:
    """Non-ASCII in a path is percent-encoded on the wire (our words include 'café')."""
    if t.isascii():
        return t
    return "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode()) for c in t)


def _chunk(rng: random.Random, body: bytes, trailer: bool) -> bytes:
    """Chunked transfer coding with 1-6 chunks of uneven size (and sometimes a trailer)."""
    n = len(body)
    k = min(n, rng.randint(1, 6)) if n else 0
    cuts = sorted(rng.sample(range(1, n), k - 1)) if k > 1 else []
    parts = []
    prev = 0
    for cut in [*cuts, n]:
        if cut > prev:
            piece = body[prev:cut]
            parts.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
        prev = cut
    parts.append(b"0\r\nX-Checksum: %08x\r\n\r\n" % rng.getrandbits(32) if trailer
                 else b"0\r\n\r\n")
    return b"".join(parts)


class _Exchange:
    __slots__ = ("expect", "method", "req_body", "req_head", "resp", "status", "target")

    def __init__(self, method: str, target: str, status: int, req_head: bytes,
                 req_body: bytes, expect: bool, resp: bytes) -> None:
        self.method = method
        self.target = target
        self.status = status
        self.req_head = req_head
        self.req_body = req_body
        self.expect = expect
        self.resp = resp


class _Conn:
    __slots__ = ("cli", "closer", "done", "host", "key", "n", "q", "site", "srv", "state")

    def __init__(self, cli: _Side, srv: _Side, n: int, site: int, host: str, closer: str,
                 key: tuple[str, int, str, int]) -> None:
        self.cli = cli
        self.srv = srv
        self.n = n
        self.done = 0
        self.site = site
        self.host = host
        self.closer = closer
        self.key = key
        self.state = 0  # 0 handshake, 1 exchanges, 2 close, 3 finished
        self.q: deque[bytes] = deque()


def generate_pcap(
    path_or_fp: str | Path | BinaryIO,
    *,
    connections: int,
    requests_per_conn: tuple[int, int] = (1, 8),
    concurrency: int = 200,
    seed: int = 0,
    mss: int = 1448,
    chunked_share: float = 0.2,
    post_share: float = 0.25,
    gzip_share: float = 0.1,
    ipv6_share: float = 0.0,
    vlan: int | None = None,
    loss: float = 0.0,
    reorder: float = 0.0,
    retransmit: float = 0.0,
    start_ts: float = 1.7e9,
    truth: list[TruthRow] | None = None,
) -> GenStats:
    """Write a pcap of ``connections`` HTTP/1.1 keep-alive connections; return what was made.

    ``concurrency`` connections are open at any moment; each packet comes from a randomly chosen
    open connection, so thousands of connections interleave over the capture. The same
    arguments and ``seed`` always give the same bytes. ``chunked_share`` applies to responses
    (a quarter of it to request bodies), ``post_share`` is the share of requests with a body.
    Pass a list as ``truth`` to receive one row per exchange (see the module docstring).
    """
    if connections < 0 or concurrency < 1 or mss < 64:
        raise ValueError("need connections >= 0, concurrency >= 1, mss >= 64")
    lo, hi = requests_per_conn
    if not 1 <= lo <= hi:
        raise ValueError("requests_per_conn must be (lo, hi) with 1 <= lo <= hi")
    stats = GenStats()
    start_us = round(start_ts * 1e6)
    g = _Gen(seed=seed, mss=mss, chunked_share=chunked_share, post_share=post_share,
             gzip_share=gzip_share, ipv6_share=ipv6_share, vlan=vlan, loss=loss,
             reorder=reorder, retransmit=retransmit, requests_per_conn=(lo, hi),
             connections=connections, truth=truth, stats=stats, start_us=start_us)
    if isinstance(path_or_fp, (str, Path)):
        with open(path_or_fp, "wb") as fp:
            _run(g, fp, connections, concurrency, stats)
    else:
        _run(g, path_or_fp, connections, concurrency, stats)
    stats.duration = (g.now_us - start_us) / 1e6
    return stats


def _run(g: _Gen, fp: BinaryIO, connections: int, concurrency: int, stats: GenStats) -> None:
    """The interleaving loop: pick an open connection, emit its next packet, refill the window.

    Mean inter-packet gap is 40 µs (25k packets/s, a busy but ordinary gateway); a connection's
    consecutive packets are therefore ~concurrency x 40 µs apart.
    """
    rnd = g.rng.random
    rec = _REC.pack
    fp.write(_PCAP_HDR)
    written = len(_PCAP_HDR)
    active: list[_Conn] = []
    started = 0
    while started < min(connections, concurrency):
        active.append(g.new_conn())
        started += 1
    parts: list[bytes] = []
    npk = 0
    now = g.now_us
    burst = g.burst
    while active:
        i = int(rnd() * len(active))
        c = active[i]
        q = c.q
        if not q:
            if c.state == 3:  # finished: replace it, keeping the window full
                if started < connections:
                    active[i] = g.new_conn()
                    started += 1
                else:
                    active[i] = active[-1]
                    active.pop()
                continue
            g.now_us = now
            burst(c)
            if not q:  # every segment of the burst was "lost"
                continue
        f = q.popleft()
        now += int(rnd() * 80) + 1
        n = len(f)
        parts.append(rec(now // 1_000_000, now % 1_000_000, n, n))
        parts.append(f)
        written += 16 + n
        npk += 1
        if len(parts) >= 8192:
            fp.write(b"".join(parts))
            parts.clear()
    if parts:
        fp.write(b"".join(parts))
    g.now_us = now
    stats.packets = npk
    stats.connections = started
    stats.bytes = written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (``python -m replay.synth OUT.pcap --connections N``)."""
    ap = argparse.ArgumentParser(prog="python -m replay.synth",
                                 description="Write a synthetic HTTP/1.1 capture.")
    ap.add_argument("out", help="pcap file to write")
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--requests-per-conn", default="1,8", help="lo,hi (default 1,8)")
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mss", type=int, default=1448)
    ap.add_argument("--chunked-share", type=float, default=0.2)
    ap.add_argument("--post-share", type=float, default=0.25)
    ap.add_argument("--gzip-share", type=float, default=0.1)
    ap.add_argument("--ipv6-share", type=float, default=0.0)
    ap.add_argument("--vlan", type=int, default=None)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--reorder", type=float, default=0.0)
    ap.add_argument("--retransmit", type=float, default=0.0)
    ap.add_argument("--truth", help="also write the ground truth as JSON Lines to this file")
    a = ap.parse_args(argv)
    lo, _, hi = a.requests_per_conn.partition(",")
    truth: list[TruthRow] | None = [] if a.truth else None
    st = generate_pcap(
        a.out, connections=a.connections, requests_per_conn=(int(lo), int(hi or lo)),
        concurrency=a.concurrency, seed=a.seed, mss=a.mss, chunked_share=a.chunked_share,
        post_share=a.post_share, gzip_share=a.gzip_share, ipv6_share=a.ipv6_share,
        vlan=a.vlan, loss=a.loss, reorder=a.reorder, retransmit=a.retransmit, truth=truth,
    )
    if a.truth and truth is not None:
        with open(a.truth, "w", encoding="utf-8") as f:
            for key, method, target, host, status in truth:
                f.write(json.dumps({"conn": list(key), "method": method, "target": target,
                                    "host": host, "status": status}) + "\n")
    print(json.dumps(st.__dict__), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
