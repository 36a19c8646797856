"""The demo's building blocks, for real: both shop builds as processes on loopback, the traffic
driver against them, and every documented difference of v2 (CHANGES.md) checked on the wire.

Why this matters: the demo's promise is "finds every seeded regression, reports no noise or
harmless change". That is only testable if the seeded differences are exactly what CHANGES.md
says, the noise is really there in both builds, and nothing else differs. Timing is only ever
compared as ratios between builds and endpoints measured in the same run, never against a
number of milliseconds (CI machines are slow and noisy).
"""

from __future__ import annotations

import difflib
import gzip
import http.client
import importlib.util
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
LISTENING = re.compile(r"listening on http://[^:]+:(\d+)")


def _load_traffic() -> ModuleType:
    """examples/ is not a package; load traffic.py by path (registered, for its dataclasses)."""
    spec = importlib.util.spec_from_file_location("shop_traffic", SHOP / "traffic.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


traffic = _load_traffic()


# ---- running a build ------------------------------------------------------------------------

@dataclass
class Instance:
    """One running build: its process, its address, its data dir."""

    build: str
    proc: subprocess.Popen[str]
    port: int
    data_dir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _spawn(argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None
           ) -> tuple[subprocess.Popen[str], int]:
    """Start a service told to bind port 0; the port it got comes from its start-up line.

    stderr goes to a file, not a pipe: nobody reads a pipe after start-up, and a full one would
    block the service the first time it logs (v2 logs every 500).
    """
    with log.open("w") as err:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                text=True, start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        m = LISTENING.search(log.read_text())
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{argv} did not start: {log.read_text()}")


def _argv(cmd: str) -> list[str]:
    argv = shlex.split(cmd)
    if argv[0] == "python3":  # the manifest says python3; run it with this interpreter
        argv[0] = sys.executable
    return argv


def start_build(build: str, data_dir: Path, *extra: str, key: str = "start") -> Instance:
    """Start a build the way the demo does: a manifest template (``start`` for production,
    ``shadow_start`` for a shadow), cwd = the image root."""
    root = SHOP / build
    manifest = yaml.safe_load((root / "shadowtap-image.yaml").read_text())
    cmd = manifest[key].format(host="127.0.0.1", port=0, data_dir=shlex.quote(str(data_dir)))
    proc, port = _spawn([*_argv(cmd), *extra], root, data_dir.parent / f"{data_dir.name}.log")
    return Instance(build, proc, port, data_dir)


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    inst = start_build("v1", tmp_path_factory.mktemp("v1-data"))
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    inst = start_build("v2", tmp_path_factory.mktemp("v2-data"))
    yield inst
    inst.stop()


# ---- a small client -------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    raw: bytes
    """The body as sent (possibly gzip)."""
    doc: dict[str, Any]
    seconds: float

    @property
    def data(self) -> Any:
        return self.doc.get("data")


class Client:
    """One keep-alive connection to an instance (as the traffic and the replayer use)."""

    def __init__(self, inst: Instance) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=10)

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             gzip_ok: bool = False) -> Answer:
        headers = {"Accept": "application/json"}
        if gzip_ok:
            headers["Accept-Encoding"] = "gzip"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        raw_body = json.dumps(body).encode() if body is not None else None
        t0 = time.perf_counter()
        self.conn.request(method, path, body=raw_body, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        dt = time.perf_counter() - t0
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        plain = gzip.decompress(raw) if hdrs.get("content-encoding") == "gzip" else raw
        return Answer(resp.status, hdrs, raw, json.loads(plain), dt)

    def login(self, username: str, password: str | None = None) -> str:
        a = self.call("POST", "/login", {"username": username,
                                         "password": password or f"{username}-pw"})
        assert a.status == 200, a.doc
        return str(a.data["token"])

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def c1(v1: Instance) -> Iterator[Client]:
    c = Client(v1)
    yield c
    c.close()


@pytest.fixture
def c2(v2: Instance) -> Iterator[Client]:
    c = Client(v2)
    yield c
    c.close()


def pair(c1: Client, c2: Client) -> list[tuple[str, Client]]:
    return [("v1", c1), ("v2", c2)]


def settled(doc: Any) -> Any:
    """A document without its noise (meta, tag order, timestamps), to compare builds with."""
    if isinstance(doc, dict):
        return {k: (sorted(v) if k == "tags" else settled(v)) for k, v in doc.items()
                if k not in ("meta", "created_at", "updated_at", "token")}
    if isinstance(doc, list):
        return [settled(x) for x in doc]
    return doc


# ---- the API works (both builds) ------------------------------------------------------------

def test_login_auth_and_users(c1: Client, c2: Client) -> None:
    for build, c in pair(c1, c2):
        assert c.call("GET", "/healthz").data == {"status": "ok",
                                                  "version": "1.0.0" if build == "v1" else "2.0.0"}
        assert c.call("POST", "/login", {"username": "alice", "password": "nope"}).status == 401
        assert c.call("POST", "/login", {"username": "alice"}).status == 400
        assert c.call("GET", "/users/me").status == 401
        assert c.call("GET", "/users/me", token="not.a.token").status == 401
        tok = c.login("alice")
        me = c.call("GET", "/users/me", token=tok)
        assert me.status == 200 and me.data["id"] == 2 and me.data["username"] == "alice"
        # a forged signature is refused outside shadow mode
        head, body, _ = tok.split(".")
        assert c.call("GET", "/users/me", token=f"{head}.{body}.AAAA").status == 401
        renamed = c.call("PUT", "/users/me", {"display_name": "Alice A."}, token=tok)
        assert renamed.status == 200 and renamed.data["display_name"] == "Alice A."
        assert c.call("PUT", "/users/me", {"display_name": ""}, token=tok).status == 400
        # another customer's history is not yours
        assert c.call("GET", "/users/3/orders", token=tok).status == 403
        assert c.call("GET", "/nowhere").status == 404
        assert c.call("DELETE", "/users/me", token=tok).status == 405


def test_order_crud(c1: Client, c2: Client) -> None:
    for _, c in pair(c1, c2):
        tok = c.login("bob")  # uid 3
        made = c.call("POST", "/orders", {"items": [{"product_id": 4, "quantity": 2}],
                                          "note": "gift wrap"}, token=tok)
        assert made.status == 201
        oid = made.data["id"]
        assert oid // 100000 == 3 and made.data["status"] == "pending"
        assert made.data["total"] == round(2 * made.data["items"][0]["unit_price"], 2)
        got = c.call("GET", f"/orders/{oid}", token=tok)
        assert got.status == 200 and settled(got.data) == settled(made.data)
        upd = c.call("PUT", f"/orders/{oid}", {"items": [{"product_id": 5, "quantity": 1}]},
                     token=tok)
        assert upd.status == 200 and [i["product_id"] for i in upd.data["items"]] == [5]
        assert c.call("PUT", f"/orders/{oid}", {"items": [{"product_id": 999}]},
                      token=tok).status == 422
        assert c.call("POST", "/orders", {"items": []}, token=tok).status == 400
        # someone else's order does not exist for you; the admin sees it
        other = c.login("carol")
        assert c.call("GET", f"/orders/{oid}", token=other).status == 404
        assert c.call("GET", f"/orders/{oid}", token=c.login("admin")).status == 200
        cancelled = c.call("PUT", f"/orders/{oid}", {"status": "cancelled"}, token=tok)
        assert cancelled.status == 200 and cancelled.data["status"] == "cancelled"
        assert c.call("PUT", f"/orders/{oid}", {"note": "x"}, token=tok).status == 409
        assert c.call("DELETE", f"/orders/{oid}", token=tok).status == 200
        assert c.call("GET", f"/orders/{oid}", token=tok).status == 404
        assert c.call("DELETE", f"/orders/{oid}", token=tok).status == 404


def test_product_admin_crud(c1: Client, c2: Client) -> None:
    for _, c in pair(c1, c2):
        admin, user = c.login("admin"), c.login("dave")
        new = {"name": "Test Thing", "sku": "SKU-T", "price": 9.5, "stock": 3, "tags": ["x", "y"]}
        assert c.call("POST", "/products", new, token=user).status == 403
        made = c.call("POST", "/products", new, token=admin)
        assert made.status == 201 and made.data["price"] in (9.5, "9.50")
        pid = made.data["id"]
        upd = c.call("PUT", f"/products/{pid}", {"stock": 0}, token=admin)
        assert upd.status == 200 and upd.data["in_stock"] is False
        assert c.call("PUT", f"/products/{pid}", {"price": "free"}, token=admin).status == 400
        assert c.call("DELETE", f"/products/{pid}", token=admin).status == 200
        assert c.call("GET", f"/products/{pid}").status == 404


def test_pagination_v1_covers_every_product_once(c1: Client) -> None:
    seen: list[int] = []
    for page in range(1, 8):
        a = c1.call("GET", f"/products?page={page}&per_page=10")
        assert a.status == 200
        assert a.doc["meta"]["total"] == 60 and a.doc["meta"]["pages"] == 6
        seen += [p["id"] for p in a.data]
    assert seen == list(range(1, 61))
    assert c1.call("GET", "/products?per_page=101").status == 400
    assert c1.call("GET", "/products?page=0").status == 400
    assert c1.call("GET", "/products?page=x").status == 400
    sale = c1.call("GET", "/products?tag=sale&per_page=100")
    assert sale.data and all("sale" in p["tags"] for p in sale.data)
    assert sale.doc["meta"]["total"] == len(sale.data)


def test_gzip_only_when_accepted_and_worth_it(c1: Client, c2: Client) -> None:
    for _, c in pair(c1, c2):
        zipped = c.call("GET", "/products?per_page=20", gzip_ok=True)
        assert zipped.headers.get("content-encoding") == "gzip"
        assert zipped.raw[:2] == b"\x1f\x8b" and int(zipped.headers["content-length"]) == len(
            zipped.raw)
        assert "accept-encoding" in zipped.headers["vary"].lower()
        plain = c.call("GET", "/products?per_page=20")
        assert "content-encoding" not in plain.headers and plain.raw[:1] == b"{"
        assert settled(zipped.doc) == settled(plain.doc)
        small = c.call("GET", "/nowhere", gzip_ok=True)  # a short error body is not worth it
        assert "content-encoding" not in small.headers


def test_keep_alive_one_connection(c1: Client, c2: Client) -> None:
    for _, c in pair(c1, c2):
        c.call("GET", "/healthz")
        sock = c.conn.sock
        for _ in range(5):
            c.call("GET", "/products/1", gzip_ok=True)
            c.call("POST", "/login", {"username": "erin", "password": "erin-pw"})
        assert sock is not None and c.conn.sock is sock


def test_seed_is_deterministic_and_data_dirs_are_separate(v1: Instance, tmp_path: Path
                                                          ) -> None:
    """A second v1 gets the same data; writes to one instance never reach another."""
    other = start_build("v1", tmp_path / "data")
    a, b = Client(v1), Client(other)
    try:
        pa = a.call("GET", "/products?per_page=100").data
        pb = b.call("GET", "/products?per_page=100").data
        assert settled(pa) == settled(pb)
        ta, tb = a.login("frank"), b.login("frank")  # uid 7
        ha = a.call("GET", "/users/7/orders", token=ta).data
        hb = b.call("GET", "/users/7/orders", token=tb).data
        assert settled(ha) == settled(hb)
        oid = a.call("POST", "/orders", {"items": [{"product_id": 1}]}, token=ta).data["id"]
        assert b.call("GET", f"/orders/{oid}", token=tb).status == 404
        # same per-customer history of writes -> same ids, whatever else happened elsewhere
        assert b.call("POST", "/orders", {"items": [{"product_id": 1}]}, token=tb
                      ).data["id"] == oid
        assert (tmp_path / "data" / "shop.sqlite3").exists()
    finally:
        a.close()
        b.close()
        other.stop()


def test_shadow_mode_from_the_manifest_service_command(tmp_path: Path) -> None:
    """The pool's start (sh -c, PORT/SHADOW_ROOT/SHADOW_NAME) trusts sanitised credentials."""
    root = SHOP / "v1"
    manifest = yaml.safe_load((root / "shadowtap-image.yaml").read_text())
    assert manifest["service"]["health"] == "/healthz" and manifest["service"]["port"] == 8080
    cmd = manifest["service"]["command"].replace("python3", shlex.quote(sys.executable), 1)
    env = {**os.environ, "PORT": "0", "SHADOW_ROOT": str(tmp_path), "SHADOW_NAME": "shadow-1"}
    proc, port = _spawn(["sh", "-c", cmd], root, tmp_path / "service.log", env)
    inst = Instance("v1", proc, port, tmp_path / "data")
    c = Client(inst)
    try:
        assert (tmp_path / "data" / "shop.sqlite3").exists()
        masked = c.call("POST", "/login", {"username": "alice", "password": "****"})
        assert masked.status == 200
        head, body, _ = str(masked.data["token"]).split(".")
        forged = f"{head}.{body}.{'x' * 43}"  # what a pseudonymised signature looks like
        me = c.call("GET", "/users/me", token=forged)
        assert me.status == 200 and me.data["id"] == 2
        assert c.call("GET", "/users/me", token="garbage").status == 401
        assert c.call("POST", "/login", {"username": "nobody", "password": "x"}).status == 401
        made = c.call("POST", "/orders", {"items": [{"product_id": 2}]}, token=forged)
        assert made.status == 201
    finally:
        c.close()
        inst.stop()
    # restarted by the pool (a crash, a new release): the shadow keeps its state
    proc, port = _spawn(["sh", "-c", cmd], root, tmp_path / "service2.log", env)
    inst = Instance("v1", proc, port, tmp_path / "data")
    c = Client(inst)
    try:
        assert c.call("GET", f"/orders/{made.data['id']}", token=forged).status == 200
    finally:
        c.close()
        inst.stop()


# ---- noise: in both builds, two identical calls never answer the same bytes ------------------

def test_noise_differs_between_identical_calls(c1: Client, c2: Client) -> None:
    for build, c in pair(c1, c2):
        a, b = c.call("GET", "/products/7"), c.call("GET", "/products/7")
        assert a.doc["meta"]["request_id"] != b.doc["meta"]["request_id"], build
        assert a.headers["x-request-id"] == a.doc["meta"]["request_id"]
        assert a.headers["x-request-id"] != b.headers["x-request-id"]
        assert a.doc["meta"]["server_time"] != b.doc["meta"]["server_time"]
        assert "date" in a.headers
        assert a.raw != b.raw and settled(a.doc) == settled(b.doc)
        assert a.headers["server"] == "shop"  # the same in both builds: not a difference
        # tags are a set: over a few calls the order changes (P(same) for 3+ tags < 1e-9)
        orders = {tuple(p["tags"]) for _ in range(12)
                  for p in c.call("GET", "/products?per_page=20").data if len(p["tags"]) >= 3}
        assert len(orders) > 20, build
        t1, t2 = c.login("grace"), c.login("grace")
        assert t1 != t2


# ---- the seeded differences, exactly as CHANGES.md documents them ---------------------------

def _changes_table() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in (SHOP / "CHANGES.md").read_text().splitlines():
        cells = [x.strip() for x in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(r"\d+b?", cells[0]):
            rows[cells[0]] = cells
    return rows


def test_changes_md_lists_every_seeded_change_with_its_verdict() -> None:
    rows = _changes_table()
    want = {"1": ("`GET /products/{id}`", "$.data.currency", "harmless"),
            "1b": ("`GET /users/{id}/orders`", "last_order_at", "harmless"),
            "2": ("`GET /products/{id}`", "$.data.price", "regression"),
            "3": ("`GET /products?page=N`", "$.data[*].id", "regression"),
            "4": ("`GET /users/{id}/orders`", "500", "regression"),
            "5": ("`GET /orders/{id}`", "80 ms", "regression"),
            "6": ("`GET /healthz`", "$.data.version", "harmless")}
    assert set(rows) == set(want)
    for num, needles in want.items():
        text = " | ".join(rows[num])
        for n in needles:
            assert n in text, (num, n)


def test_v2_is_v1_plus_the_documented_changes_only() -> None:
    """Every changed hunk of v2/app.py is marked ``v2:`` (or is the version string)."""
    a = (SHOP / "v1" / "app.py").read_text().splitlines()
    b = (SHOP / "v2" / "app.py").read_text().splitlines()
    hunks: list[list[str]] = []
    for line in difflib.unified_diff(a, b, n=0, lineterm=""):
        if line.startswith("@@"):
            hunks.append([])
        elif hunks and line[:1] in "+-" and not line.startswith(("+++", "---")):
            hunks[-1].append(line)
    assert 5 <= len(hunks) <= 8, hunks
    for h in hunks:
        assert any("v2:" in x or x.startswith("+VERSION") for x in h), h
    assert {p.name for p in (SHOP / "v1").iterdir() if p.suffix in (".py", ".yaml")} == {
        p.name for p in (SHOP / "v2").iterdir() if p.suffix in (".py", ".yaml")}


def test_harmless_new_fields(c1: Client, c2: Client) -> None:
    """#1, #1b: v2 adds fields; everything v1 says is still there with the same value."""
    l1 = c1.call("GET", "/products?per_page=10").data
    l2 = c2.call("GET", "/products?per_page=10").data
    assert all("currency" not in p for p in l1)
    assert all(p.pop("currency") == "EUR" for p in l2)
    assert settled(l1) == settled(l2)
    d2 = c2.call("GET", "/products/9").data
    assert d2["currency"] == "EUR"
    h1 = c1.call("GET", "/users/10/orders", token=c1.login("ivan")).data
    h2 = c2.call("GET", "/users/10/orders", token=c2.login("ivan")).data
    assert "last_order_at" not in h1["summary"]
    assert h2["summary"].pop("last_order_at") == "2024-06-01T12:00:00+00:00"
    assert settled(h1) == settled(h2)


def test_price_changes_type_on_product_detail_only(c1: Client, c2: Client) -> None:
    """#2: ``$.data.price`` number -> string on GET /products/{id}; the list keeps numbers."""
    for pid in (1, 17, 60):
        p1, p2 = c1.call("GET", f"/products/{pid}").data, c2.call("GET", f"/products/{pid}").data
        assert isinstance(p1["price"], float) and isinstance(p2["price"], str)
        assert p2["price"] == f"{p1['price']:.2f}"
        del p1["price"], p2["price"], p2["currency"]
        assert settled(p1) == settled(p2)
    assert all(isinstance(p["price"], float)
               for p in c2.call("GET", "/products?per_page=100").data)


def test_pagination_off_by_one(c1: Client, c2: Client) -> None:
    """#3: page N >= 2 of v2 starts one early: it repeats page N-1's last item."""
    ids = {b: {p: [x["id"] for x in c.call("GET", f"/products?page={p}&per_page=10").data]
               for p in range(1, 7)} for b, c in pair(c1, c2)}
    assert ids["v1"][1] == ids["v2"][1] == list(range(1, 11))
    for p in range(2, 7):
        assert ids["v2"][p] == [ids["v1"][p - 1][-1], *ids["v1"][p][:-1]]
    shown = {i for page in ids["v2"].values() for i in page}
    assert shown == set(range(1, 60))  # the last product is never shown
    t1 = [x["id"] for x in c1.call("GET", "/products?tag=gift&page=2&per_page=3").data]
    t1p = [x["id"] for x in c1.call("GET", "/products?tag=gift&page=1&per_page=3").data]
    t2 = [x["id"] for x in c2.call("GET", "/products?tag=gift&page=2&per_page=3").data]
    assert t2 == [t1p[-1], *t1[:-1]]


def test_500_on_empty_order_history(c1: Client, c2: Client) -> None:
    """#4: v2 answers 500 for a customer with no orders (31-40), or a filter matching none."""
    for uid, name in ((31, "goran"), (40, "priya")):
        e1 = c1.call("GET", f"/users/{uid}/orders", token=c1.login(name))
        e2 = c2.call("GET", f"/users/{uid}/orders", token=c2.login(name))
        assert e1.status == 200 and e1.data["orders"] == []
        assert e2.status == 500 and e2.doc["error"] == "internal server error"
    t1, t2 = c1.login("heidi"), c2.login("heidi")  # uid 9, has delivered orders
    assert c1.call("GET", "/users/9/orders?status=pending", token=t1).status == 200
    assert c2.call("GET", "/users/9/orders?status=pending", token=t2).status == 500
    assert c2.call("GET", "/users/9/orders", token=t2).status == 200


def test_latency_regression_on_order_view_only(c1: Client, c2: Client) -> None:
    """#5: GET /orders/{id} got slower in v2; GET /products/{id} did not (ratios, one run)."""
    def median(c: Client, path: str, tok: str | None, n: int = 15) -> float:
        c.call("GET", path, token=tok)  # warm
        return statistics.median(c.call("GET", path, token=tok).seconds for _ in range(n))

    t1, t2 = c1.login("judy"), c2.login("judy")  # uid 11
    order = "/orders/1100001"
    r_order = median(c2, order, t2) / median(c1, order, t1)
    r_product = median(c2, "/products/5", None) / median(c1, "/products/5", None)
    assert r_order > 4 * r_product, (r_order, r_product)


# ---- the traffic driver ---------------------------------------------------------------------

def test_traffic_against_v1_has_no_errors(v1: Instance) -> None:
    report = traffic.run_traffic(v1.base, users=6, duration=3.0, seed=3)
    d = report.to_dict()
    assert report.errors == 0, report.format()
    assert report.requests > 100 and set(d["statuses"]) <= {"200", "201"}
    assert sum(e["count"] for e in d["endpoints"].values()) == report.requests
    assert {"POST /login", "GET /products", "GET /products/{id}", "POST /orders",
            "GET /orders/{id}", "GET /users/{id}/orders"} <= set(d["endpoints"])
    assert 0 < d["latency_ms"]["p50"] <= d["latency_ms"]["p90"] <= d["latency_ms"]["p99"]
    json.dumps(d)  # the demo writes it out


def test_traffic_is_deterministic_and_finds_the_rare_path(v2: Instance) -> None:
    """Same seed and request count: the same requests, so the same 500s, run after run."""
    runs = [traffic.run_traffic(v2.base, users=4, requests=400, duration=None, seed=7)
            for _ in range(2)]
    for r in runs:
        assert r.requests == 400
        assert not r.transport_errors
        assert set(r.unexpected) == {"GET /users/{id}/orders -> 500"}
    assert runs[0].unexpected == runs[1].unexpected
    assert {k: v.count for k, v in runs[0].endpoints.items()} == {
        k: v.count for k, v in runs[1].endpoints.items()}


def test_traffic_cli_json(v1: Instance) -> None:
    out = subprocess.run([sys.executable, str(SHOP / "traffic.py"), v1.base, "--users", "2",
                          "--requests", "60", "--json"], capture_output=True, text=True,
                         timeout=30, check=True)
    d = json.loads(out.stdout)
    assert d["requests"] == 60 and d["errors"] == 0
    bad = subprocess.run([sys.executable, str(SHOP / "traffic.py"), "ftp://x", "--requests",
                          "1"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "error:" in bad.stderr
