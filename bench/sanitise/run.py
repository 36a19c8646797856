"""Sanitiser throughput: exchanges/s with the default policy on ~2 KB JSON bodies, one core.

Why this shape: the issue's target (>= 20,000 exchanges/s on one core) is about the common case
in the appliance pipeline, a JSON API exchange with a realistic header set and a response body
of about 2 KB that mentions a user (e-mail, phone, client IP) among ordinary fields (ids, prices,
timestamps, SKUs). No peer tool sanitises Exchanges in-process, so there is no ratio to print; we
print the absolute figure, plus a clean-body variant (no personal data at all) and a
no-key-lookup variant so regressions in either path show.

Usage: ``python bench/sanitise/run.py [--n 20000] [--no-write]``; by default the result is
written into docs/benchmarks.md between ``<!-- bench:sanitise -->`` markers (only that section).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import replay.sanitise.core  # noqa: E402
from replay import _native  # noqa: E402
from replay.extract import gc_tuned  # noqa: E402
from replay.model import ConnKey, Exchange, Request, Response  # noqa: E402
from replay.sanitise import Policy, Sanitiser  # noqa: E402

BEGIN = "<!-- bench:sanitise -->"
END = "<!-- /bench:sanitise -->"


def make_body(rng: random.Random, user: int, pii: bool | str) -> bytes:
    """~2 KB JSON: an order with line items; with ``pii`` it also names the customer."""
    items = [
        {
            "sku": f"SKU-{rng.randrange(10**5):05d}",
            "name": rng.choice(["Widget deluxe", "Gadget pro", "Sprocket", "Flux capacitor"]),
            "price": round(rng.uniform(1, 500), 2),
            "qty": rng.randrange(1, 9),
            "created": f"2024-0{rng.randrange(1, 9)}-1{rng.randrange(9)}T12:{rng.randrange(60):02d}:00Z",
            "tags": ["new", "sale"][: rng.randrange(3)],
        }
        for _ in range(11)
    ]
    doc: dict = {"order_id": rng.randrange(10**9), "status": "shipped", "items": items}
    if pii is True:
        doc["customer"] = {
            "id": user,
            "name": f"User Number{user}",
            "email": f"user{user}.name@example.com",
            "phone": f"+44 20 79{user % 100:02d} {rng.randrange(10**4):04d}",
            "ip": f"203.0.113.{user % 250 + 1}",
        }
    else:
        doc["customer"] = {"id": user, "tier": "gold", "locale": "en-GB"}
    if pii == "tokens":  # a login/refresh answer: secrets by field name, not by shape
        doc["access_token"] = f"at{user:06d}{rng.getrandbits(96):024x}"
        doc["refresh_token"] = f"rt{user:06d}{rng.getrandbits(96):024x}"
        doc["session_id"] = rng.getrandbits(40)
    body = orjson.dumps(doc)
    pad = 2048 - len(body)
    if pad > 20:
        doc["note"] = "x" * (pad - 12)
        body = orjson.dumps(doc)
    return body


def make_exchange(rng: random.Random, i: int, pii: bool | str) -> Exchange:
    user = rng.randrange(500)
    body = make_body(rng, user, pii)
    req = Request(
        "GET",
        f"/api/v1/orders/{rng.randrange(10**6)}?expand=items&page={i % 7}",
        headers=[
            ("Host", "shop.example.net"),
            (
                "User-Agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
            ),
            ("Accept", "application/json"),
            ("Accept-Encoding", "gzip, br"),
            ("Authorization", f"Bearer tok{user:05d}abcdefghijklmnopqrstuvwxyz"),
            ("Cookie", f"sid=s{user:08d}x; theme=dark"),
            ("X-Request-Id", f"{rng.getrandbits(64):016x}"),
        ],
    )
    resp = Response(
        200,
        "OK",
        headers=[
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Date", "Thu, 26 Nov 2026 13:18:21 GMT"),
            ("Server", "nginx"),
        ],
        body=body,
    )
    return Exchange(
        id=str(i),
        conn=ConnKey("198.51.100.7", 40000 + i % 20000, "10.0.0.2", 443),
        request=req,
        response=resp,
    )


def run(n: int, pii: bool | str, repeat: int = 5) -> float:
    """Best of ``repeat`` timed runs of ``n`` exchanges, with the garbage collector tuned as the
    appliance's workers and ``shadowtap sanitise`` run it (``replay.extract.gc_tuned``)."""
    rng = random.Random(1234)
    corpus = [make_exchange(rng, i, pii) for i in range(2000)]
    with gc_tuned():
        return _best(corpus, n, repeat)


def _best(corpus: list[Exchange], n: int, repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        san = Sanitiser(Policy.default(), b"bench-key-0123456789abcdef")
        apply = san.apply
        t0 = time.process_time()
        done = 0
        while done < n:
            for ex in corpus:
                apply(ex)
            done += len(corpus)
        dt = time.process_time() - t0
        best = max(best, done / dt)
    return best


def calibrate() -> float:
    """CPU microseconds for ``sum(range(1000))`` (best of many): a yardstick for how fast this
    core is right now, so figures from a loaded shared host can be put in proportion."""
    xs = list(range(1000))
    best = float("inf")
    for _ in range(200):
        t0 = time.process_time()
        for _ in range(100):
            sum(xs)
        best = min(best, (time.process_time() - t0) / 100)
    return best * 1e6


def naive_detect(corpus: list[Exchange]) -> float:
    """The obvious design, for scale: every detector's exact pattern over every header value and
    the whole body (detection only, no replacement, no JSON names). Exchanges per CPU-second."""
    from replay.sanitise import detectors as d

    pats = [
        d._EMAIL,
        d._JWT,
        d._CARD,
        d._SSN_C,
        d._PHONE_INTL,
        d._PHONE_NANP,
        d._IPV4,
        d._IPV6_CAND,
        d._IBAN,
    ]
    t0 = time.process_time()
    n = 0
    for ex in corpus:
        texts = []
        for msg in (ex.request, ex.response):
            if msg is None:
                continue
            texts += [v.encode("latin-1") for _k, v in msg.headers]
            texts.append(msg.body)
        for t in texts:
            for rx in pats:
                for _m in rx.finditer(t):
                    pass
        n += 1
    return n / (time.process_time() - t0)


def _fmt(row: list[float] | None, i: int) -> str:
    return "-" if row is None else f"{row[i]:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="exchanges per timed run")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    pii = run(args.n, True)
    clean = run(args.n, False)
    tokens = run(args.n, "tokens")
    if args.child:  # the pure-Python rows, for the parent
        print(orjson.dumps([pii, clean, tokens]).decode())
        return
    compiled = _native.compiled(replay.sanitise.core)
    pure = None
    if compiled:  # the same rows from the unchanged source, for comparison
        import subprocess

        env = dict(os.environ, SHADOWTAP_PURE_PYTHON="1")
        r = subprocess.run([sys.executable, __file__, "--child", "--n", str(args.n)],
                           capture_output=True, text=True, env=env, check=False)
        if r.returncode == 0:
            pure = orjson.loads(r.stdout.strip().splitlines()[-1])
    naive = naive_detect([make_exchange(random.Random(5), i, True) for i in range(2000)])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    yard = calibrate()
    cpu = platform.processor() or platform.machine()
    lines = [
        BEGIN,
        "### sanitise (bench/sanitise/run.py)",
        "",
        "Default policy, one core, one process, ~2 KB JSON response bodies, 7 request headers "
        "(Authorization, Cookie, ...), 5 response headers; best of 5 runs of "
        f"{args.n} exchanges. No external peer sanitises Exchanges in-process, so absolute figures.",
        "",
        "| body | exchanges/s | target | pure Python (same source, not compiled) |",
        "|---|---:|---:|---:|",
        f"| 2 KB JSON with e-mail, phone, IP (pseudonymised) | {pii:,.0f} | 20,000 | "
        f"{_fmt(pure, 0)} |",
        f"| 2 KB JSON, no personal data | {clean:,.0f} | 20,000 | {_fmt(pure, 1)} |",
        f"| 2 KB JSON with access/refresh tokens and a session id (named fields) | "
        f"{tokens:,.0f} | 20,000 | {_fmt(pure, 2)} |",
        "",
        ("Build: the sanitiser's modules compiled by Cython at install (`setup.py`, "
         "`replay/_native.py`); the last column runs the same `.py` files with "
         "`SHADOWTAP_PURE_PYTHON=1`." if compiled else
         "Build: pure Python (no compiled modules were found: run `bash scripts/setup.sh`)."),
        "Garbage collector: young-generation threshold 100,000, as the appliance's workers and "
        "`shadowtap sanitise` run it.",
        "",
        f"For scale, the obvious design (each detector's exact pattern run over every header "
        f"value and the whole body, detection only) manages {naive:,.0f}/s on the same "
        f"exchanges: the anchored detectors are {pii / naive:.1f}x faster while also "
        f"replacing, re-encoding and counting.",
        "",
        f"Exchanges per CPU-second (process time, so other load on the machine inflates it less "
        f"than wall time would). Python {platform.python_version()}, {platform.system()} {cpu}, "
        f"{os.cpu_count()} CPUs visible (one used), 1-min load average {load:.1f} at the run; "
        f"yardstick: `sum(range(1000))` takes {yard:.1f} µs at best on this core (3-4 µs is "
        f"typical), so the core is not slow; with a load average above the CPU count the runs "
        f"share it, and the figures are lower than a dedicated core would give.",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    if args.no_write:
        return
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        a = text.index(BEGIN)
        b = text.index(END) + len(END)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
