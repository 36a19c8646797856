#!/usr/bin/env python3
"""shop: the demo service shadowtap mirrors, replays and compares (standard library only).

A small JSON API over SQLite (users, products, orders) with the things that make shadow testing
hard in real life, on purpose:

* **State.** Every instance owns its data dir; it is reseeded to the same deterministic data on
  every start, so production and its shadows begin identical and shadow writes stay in the shadow.
  Order ids are ``user_id * 100000 + n`` with ``n`` counted per user, so the ids a shadow hands
  out match production's as long as each user's requests arrive in order, however requests of
  different users interleave (a global autoincrement would diverge on the first race).
* **Auth.** ``POST /login`` returns an HS256 JWT with a numeric ``uid`` claim, signed with a key
  that is part of the image (the same in every build), so a token production issued is valid on
  a shadow. The appliance's sanitiser pseudonymises bearer tokens (a JWT stays a JWT, numbers are
  kept, the signature changes), so a shadow started with ``--trust-tokens`` skips the signature
  and password checks and trusts ``uid``: the identity survives sanitising, the secret does not.
  The pool starts shadows that way (``SHADOW_NAME`` is set, see ``shadowtap-image.yaml``).
* **Noise.** Every answer carries a fresh ``meta.request_id`` (also in ``X-Request-Id``) and
  ``meta.server_time``, orders carry ``created_at``/``updated_at``, and product ``tags`` (a set)
  come in a different order on every call. Two identical requests never get identical bytes.
* **Transport.** HTTP/1.1 keep-alive (ThreadingHTTPServer, one thread per connection), headers
  and body written in one send with Nagle off (no 40 ms delayed-ACK stalls), gzip when the client
  accepts it and the body is worth compressing.

Run: ``python3 app.py --host 127.0.0.1 --port 8080 --data-dir /tmp/shop``.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import hmac
import json
import os
import random
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

VERSION = "2.0.0"
SIGNING_KEY = os.environ.get("SHOP_SIGNING_KEY", "shop-demo-signing-key-not-a-secret").encode()
TOKEN_TTL = 86400
GZIP_MIN = 200  # below this gzip costs more than it saves
MAX_PER_PAGE = 100
ORDER_ID_BASE = 100000  # order id = user_id * ORDER_ID_BASE + per-user sequence
CURRENCY = "EUR"  # v2: prices now say their currency (CHANGES.md #1)
TRACKING_LOOKUP_S = 0.08  # v2: the carrier's tracking service, called on every order view

# ---- seed data --------------------------------------------------------------------------------

FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "uma", "victor",
         "walter", "xena", "yusuf", "zoe", "amir", "bea", "chen", "dara", "emil", "fatima",
         "goran", "hana", "ines", "jonas", "kofi", "lena", "mateo", "noor", "oskar", "priya"]
ADJ = ["Classic", "Compact", "Deluxe", "Eco", "Ultra", "Smart", "Rugged", "Vintage", "Pro",
       "Mini"]
NOUN = ["Kettle", "Lamp", "Backpack", "Headphones", "Mug", "Notebook", "Umbrella", "Watch",
        "Blender", "Chair", "Jacket", "Speaker"]
TAGS = ["new", "sale", "eco", "gift", "bestseller", "limited", "outdoor", "kitchen", "office",
        "audio"]
N_PRODUCTS = 60
BUYERS_UP_TO = 30  # users 2..30 have seeded orders; 31..40 ("new customers") have none


def seed(db: sqlite3.Connection) -> None:
    """Fill a fresh database with the same users, products and orders on every start."""
    rng = random.Random(20240601)
    db.executescript("""
        CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT UNIQUE NOT NULL,
            email TEXT NOT NULL, display_name TEXT NOT NULL, password_hash TEXT NOT NULL,
            role TEXT NOT NULL, order_seq INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, sku TEXT NOT NULL,
            price_cents INTEGER NOT NULL, stock INTEGER NOT NULL, tags TEXT NOT NULL);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL,
            status TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL);
        CREATE TABLE order_items (order_id INTEGER NOT NULL, product_id INTEGER NOT NULL,
            quantity INTEGER NOT NULL, unit_cents INTEGER NOT NULL);
        CREATE INDEX orders_user ON orders(user_id);
        CREATE INDEX items_order ON order_items(order_id);
    """)
    users = [("admin", "Admin")] + [(n, n.capitalize()) for n in FIRST]
    for i, (name, display) in enumerate(users, start=1):
        db.execute("INSERT INTO users VALUES (?,?,?,?,?,?,0)",
                   (i, name, f"{name}@example.com", display, password_hash(f"{name}-pw"),
                    "admin" if i == 1 else "customer"))
    for pid in range(1, N_PRODUCTS + 1):
        name = f"{rng.choice(ADJ)} {rng.choice(NOUN)} {pid:02d}"
        tags = sorted(rng.sample(TAGS, rng.randint(2, 4)))
        db.execute("INSERT INTO products VALUES (?,?,?,?,?,?)",
                   (pid, name, f"SKU-{pid:05d}", rng.randint(199, 19999), rng.randint(0, 500),
                    ",".join(tags)))
    stamp = "2024-06-01T12:00:00+00:00"
    for uid in range(2, BUYERS_UP_TO + 1):
        for _ in range(rng.randint(1, 3)):
            items = [(rng.randint(1, N_PRODUCTS), rng.randint(1, 3))
                     for _ in range(rng.randint(1, 3))]
            _insert_order(db, uid, items, "delivered", "", stamp)
    db.commit()


def password_hash(pw: str) -> str:
    """Salted with the username-independent image key: enough for a demo, not for production."""
    return hashlib.sha256(SIGNING_KEY + b":" + pw.encode()).hexdigest()


def _insert_order(db: sqlite3.Connection, uid: int, items: list[tuple[int, int]], status: str,
                  note: str, stamp: str) -> int:
    """Create an order with the user's next id, inside the caller's write transaction."""
    seq = db.execute("UPDATE users SET order_seq = order_seq + 1 WHERE id = ? "
                     "RETURNING order_seq", (uid,)).fetchone()[0]
    oid = uid * ORDER_ID_BASE + seq
    db.execute("INSERT INTO orders VALUES (?,?,?,?,?,?)", (oid, uid, status, note, stamp, stamp))
    _insert_items(db, oid, items)
    return oid


def _insert_items(db: sqlite3.Connection, oid: int, items: list[tuple[int, int]]) -> None:
    for pid, qty in items:
        row = db.execute("SELECT price_cents FROM products WHERE id = ?", (pid,)).fetchone()
        db.execute("INSERT INTO order_items VALUES (?,?,?,?)", (oid, pid, qty, row[0]))


# ---- tokens -----------------------------------------------------------------------------------

def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def make_token(uid: int, username: str) -> str:
    """An HS256 JWT; ``uid`` is a number so it survives the sanitiser's JWT pseudonym."""
    now = int(time.time())
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps({"uid": uid, "sub": username, "iat": now, "exp": now + TOKEN_TTL,
                            "jti": uuid.uuid4().hex[:16]}, separators=(",", ":")).encode())
    sig = hmac.new(SIGNING_KEY, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def read_token(token: str, trust: bool) -> int | None:
    """The token's user id, or None. ``trust`` (shadows): skip signature and expiry checks."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError):
        return None
    uid = claims.get("uid") if isinstance(claims, dict) else None
    if not isinstance(uid, int) or isinstance(uid, bool):
        return None
    if trust:
        return uid
    want = hmac.new(SIGNING_KEY, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        ok = hmac.compare_digest(want, _unb64(parts[2]))
    except ValueError:
        return None
    if not ok or int(claims.get("exp", 0)) < time.time():
        return None
    return uid


# ---- the application --------------------------------------------------------------------------

class HTTPError(Exception):
    """An error answer: status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _money(cents: int) -> float:
    return round(cents / 100, 2)


class Shop:
    """The API's logic over SQLite: a connection per thread (one thread per HTTP connection).

    Reads run concurrently (WAL); writes are transactions that take SQLite's write lock up front
    (``BEGIN IMMEDIATE``), so the per-user order sequence is atomic without a Python lock, and a
    slow request holds up nobody else.
    """

    def __init__(self, data_dir: Path, trust_tokens: bool = False, keep_data: bool = False
                 ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "shop.sqlite3"
        if not keep_data:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        fresh = not path.exists()
        self.path = path
        self._local = threading.local()
        if fresh:
            self.db.execute("BEGIN")
            seed(self.db)
        self.trust_tokens = trust_tokens
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, Any]]]] = [
            ("GET", re.compile(r"/healthz"), self.health),
            ("POST", re.compile(r"/login"), self.login),
            ("GET", re.compile(r"/products"), self.list_products),
            ("POST", re.compile(r"/products"), self.create_product),
            ("GET", re.compile(r"/products/(\d+)"), self.get_product),
            ("PUT", re.compile(r"/products/(\d+)"), self.update_product),
            ("DELETE", re.compile(r"/products/(\d+)"), self.delete_product),
            ("GET", re.compile(r"/users/me"), self.get_me),
            ("PUT", re.compile(r"/users/me"), self.update_me),
            ("GET", re.compile(r"/users/(\d+)/orders"), self.user_orders),
            ("POST", re.compile(r"/orders"), self.create_order),
            ("GET", re.compile(r"/orders/(\d+)"), self.get_order),
            ("PUT", re.compile(r"/orders/(\d+)"), self.update_order),
            ("DELETE", re.compile(r"/orders/(\d+)"), self.delete_order),
        ]

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared between threads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "db", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")  # demo data: speed over durability
            self._local.db = conn
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: all of it or nothing, holding the write lock from the start."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- dispatch --
    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> tuple[int, Any, dict[str, Any]]:
        """Route one request: (status, data, extra meta). Raises HTTPError for error answers."""
        allowed = []
        for m, rx, fn in self.routes:
            match = rx.fullmatch(path)
            if not match:
                continue
            if m != method:
                allowed.append(m)
                continue
            req = Req(query, headers, body, self)
            status, data = fn(req, *match.groups())
            return status, data, req.meta
        if allowed:
            raise HTTPError(405, f"use {', '.join(sorted(set(allowed)))} on {path}")
        raise HTTPError(404, f"no route for {method} {path}")

    # -- views --
    def product_json(self, row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
        pid, name, sku, cents, stock, tags = row
        tag_list = tags.split(",")
        random.shuffle(tag_list)  # a set: its order is not part of the contract
        return {"id": pid, "name": name, "sku": sku, "price": _money(cents), "stock": stock,
                "in_stock": stock > 0, "tags": tag_list, "currency": CURRENCY}  # v2: CHANGES.md #1

    def product_detail_json(self, row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
        out = self.product_json(row)
        # v2: the detail page shows a formatted price (CHANGES.md #2: number became a string)
        out["price"] = f"{row[3] / 100:.2f}"
        return out

    def order_json(self, oid: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT id, user_id, status, note, created_at, updated_at "
                              "FROM orders WHERE id = ?", (oid,)).fetchone()
        if row is None:
            return None
        items = self.db.execute(
            "SELECT i.product_id, p.name, i.quantity, i.unit_cents FROM order_items i "
            "JOIN products p ON p.id = i.product_id WHERE i.order_id = ? ORDER BY i.rowid",
            (oid,)).fetchall()
        total = sum(q * c for _, _, q, c in items)
        return {"id": row[0], "user_id": row[1], "status": row[2], "note": row[3],
                "created_at": row[4], "updated_at": row[5],
                "items": [{"product_id": p, "name": n, "quantity": q, "unit_price": _money(c)}
                          for p, n, q, c in items],
                "item_count": sum(q for _, _, q, _ in items), "total": _money(total)}

    def user_json(self, row: tuple[Any, ...]) -> dict[str, Any]:
        return {"id": row[0], "username": row[1], "email": row[2], "display_name": row[3],
                "role": row[4]}

    def _user(self, uid: int) -> tuple[Any, ...] | None:
        return self.db.execute("SELECT id, username, email, display_name, role FROM users "
                               "WHERE id = ?", (uid,)).fetchone()

    # -- handlers: each returns (status, data) or raises HTTPError --
    def health(self, req: Req) -> tuple[int, Any]:
        return 200, {"status": "ok", "version": VERSION}

    def login(self, req: Req) -> tuple[int, Any]:
        doc = req.json()
        name, pw = doc.get("username"), doc.get("password")
        if not isinstance(name, str) or not isinstance(pw, str):
            raise HTTPError(400, "send {\"username\": ..., \"password\": ...}")
        row = self.db.execute("SELECT id, username, email, display_name, role, password_hash "
                              "FROM users WHERE username = ?", (name,)).fetchone()
        # A shadow sees the password masked by the sanitiser: it checks the user exists only.
        if row is None or (not self.trust_tokens
                           and not hmac.compare_digest(row[5], password_hash(pw))):
            raise HTTPError(401, "wrong username or password")
        return 200, {"token": make_token(row[0], row[1]), "token_type": "Bearer",
                     "expires_in": TOKEN_TTL, "user": self.user_json(row[:5])}

    def list_products(self, req: Req) -> tuple[int, Any]:
        page, per_page = req.paging()
        tag = req.arg("tag")
        where, args = ("WHERE ',' || tags || ',' LIKE ?", [f"%,{tag},%"]) if tag else ("", [])
        total = self.db.execute(f"SELECT COUNT(*) FROM products {where}", args).fetchone()[0]
        # v2: "pages after the first continue from the previous page's last row" (CHANGES.md #3)
        offset = (page - 1) * per_page - (1 if page > 1 else 0)
        rows = self.db.execute(f"SELECT id, name, sku, price_cents, stock, tags FROM products "
                               f"{where} ORDER BY id LIMIT ? OFFSET ?",
                               [*args, per_page, offset]).fetchall()
        req.meta.update(page=page, per_page=per_page, total=total,
                        pages=(total + per_page - 1) // per_page)
        return 200, [self.product_json(r) for r in rows]

    def get_product(self, req: Req, pid: str) -> tuple[int, Any]:
        row = self.db.execute("SELECT id, name, sku, price_cents, stock, tags FROM products "
                              "WHERE id = ?", (int(pid),)).fetchone()
        if row is None:
            raise HTTPError(404, f"no product {pid}")
        return 200, self.product_detail_json(row)

    def _product_fields(self, doc: dict[str, Any], partial: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, kind in (("name", str), ("sku", str), ("price", (int, float)),
                          ("stock", int), ("tags", list)):
            if key not in doc:
                if not partial:
                    raise HTTPError(400, f"missing field {key!r}")
                continue
            if not isinstance(doc[key], kind) or isinstance(doc[key], bool):
                raise HTTPError(400, f"field {key!r} has the wrong type")
            out[key] = doc[key]
        if "price" in out:
            out["price_cents"] = round(out.pop("price") * 100)
        if "tags" in out:
            out["tags"] = ",".join(sorted({str(t) for t in out["tags"]}))
        return out

    def create_product(self, req: Req) -> tuple[int, Any]:
        req.need_admin()
        f = self._product_fields(req.json(), partial=False)
        cur = self.db.execute("INSERT INTO products (name, sku, price_cents, stock, tags) "
                              "VALUES (?,?,?,?,?)",
                              (f["name"], f["sku"], f["price_cents"], f["stock"], f["tags"]))
        return 201, self.get_product(req, str(cur.lastrowid))[1]

    def update_product(self, req: Req, pid: str) -> tuple[int, Any]:
        req.need_admin()
        f = self._product_fields(req.json(), partial=True)
        self.get_product(req, pid)  # 404 if absent
        if f:
            sets = ", ".join(f"{k} = ?" for k in f)
            self.db.execute(f"UPDATE products SET {sets} WHERE id = ?", [*f.values(), int(pid)])
        return self.get_product(req, pid)

    def delete_product(self, req: Req, pid: str) -> tuple[int, Any]:
        req.need_admin()
        if self.db.execute("DELETE FROM products WHERE id = ?", (int(pid),)).rowcount == 0:
            raise HTTPError(404, f"no product {pid}")
        return 200, {"deleted": int(pid)}

    def get_me(self, req: Req) -> tuple[int, Any]:
        row = self._user(req.user())
        if row is None:
            raise HTTPError(401, "the token's user does not exist")
        return 200, self.user_json(row)

    def update_me(self, req: Req) -> tuple[int, Any]:
        uid = req.user()
        name = req.json().get("display_name")
        if not isinstance(name, str) or not 0 < len(name) <= 80:
            raise HTTPError(400, "display_name must be a string of 1 to 80 characters")
        self.db.execute("UPDATE users SET display_name = ? WHERE id = ?", (name, uid))
        return self.get_me(req)

    def user_orders(self, req: Req, uid_s: str) -> tuple[int, Any]:
        uid = int(uid_s)
        req.need_self_or_admin(uid)
        if self._user(uid) is None:
            raise HTTPError(404, f"no user {uid}")
        page, per_page = req.paging()
        status = req.arg("status")
        where, args = ("AND status = ?", [status]) if status else ("", [])
        ids = [r[0] for r in self.db.execute(
            f"SELECT id FROM orders WHERE user_id = ? {where} ORDER BY id", [uid, *args])]
        orders = [self.order_json(i) for i in ids[(page - 1) * per_page:page * per_page]]
        req.meta.update(page=page, per_page=per_page, total=len(ids))
        return 200, {"user_id": uid, "orders": orders, "summary": self._summary(uid, ids)}

    def _summary(self, uid: int, ids: list[int]) -> dict[str, Any]:
        orders = [self.order_json(i) for i in ids]
        spent = sum(o["total"] for o in orders if o and o["status"] != "cancelled")
        # v2: the summary shows the latest order's date; max() of nothing raises (CHANGES.md #4)
        last = max(o["created_at"] for o in orders if o)
        return {"order_count": len(ids), "total_spent": round(spent, 2), "last_order_at": last}

    def _items(self, doc: dict[str, Any]) -> list[tuple[int, int]]:
        items = doc.get("items")
        if not isinstance(items, list) or not items:
            raise HTTPError(400, "items must be a non-empty list of {product_id, quantity}")
        out = []
        for it in items:
            pid = it.get("product_id") if isinstance(it, dict) else None
            qty = it.get("quantity", 1) if isinstance(it, dict) else None
            if not isinstance(pid, int) or not isinstance(qty, int) or not 0 < qty <= 100:
                raise HTTPError(400, "each item needs an integer product_id and 1..100 quantity")
            if self.db.execute("SELECT 1 FROM products WHERE id = ?", (pid,)).fetchone() is None:
                raise HTTPError(422, f"no product {pid}")
            out.append((pid, qty))
        return out

    def create_order(self, req: Req) -> tuple[int, Any]:
        uid = req.user()
        doc = req.json()
        items = self._items(doc)
        note = str(doc.get("note", ""))[:200]
        with self.tx() as db:
            oid = _insert_order(db, uid, items, "pending", note, _now())
        return 201, self.order_json(oid)

    def _own_order(self, req: Req, oid: int) -> dict[str, Any]:
        order = self.order_json(oid)
        if order is None:
            raise HTTPError(404, f"no order {oid}")
        req.need_self_or_admin(order["user_id"], not_found=f"no order {oid}")
        return order

    def get_order(self, req: Req, oid: str) -> tuple[int, Any]:
        order = self._own_order(req, int(oid))
        # v2: ask the carrier for tracking on every view, synchronously (CHANGES.md #5)
        time.sleep(TRACKING_LOOKUP_S)
        return 200, order

    def update_order(self, req: Req, oid_s: str) -> tuple[int, Any]:
        oid = int(oid_s)
        order = self._own_order(req, oid)
        doc = req.json()
        if order["status"] != "pending":
            raise HTTPError(409, f"order {oid} is {order['status']}, only pending orders change")
        status = doc.get("status", "pending")
        if status not in ("pending", "cancelled"):
            raise HTTPError(400, "status may only become 'cancelled'")
        items = self._items(doc) if "items" in doc else None
        note = str(doc.get("note", order["note"]))[:200]
        with self.tx() as db:
            if items is not None:
                db.execute("DELETE FROM order_items WHERE order_id = ?", (oid,))
                _insert_items(db, oid, items)
            db.execute("UPDATE orders SET status = ?, note = ?, updated_at = ? WHERE id = ?",
                       (status, note, _now(), oid))
        return 200, self.order_json(oid)

    def delete_order(self, req: Req, oid_s: str) -> tuple[int, Any]:
        oid = int(oid_s)
        self._own_order(req, oid)
        with self.tx() as db:
            db.execute("DELETE FROM order_items WHERE order_id = ?", (oid,))
            db.execute("DELETE FROM orders WHERE id = ?", (oid,))
        return 200, {"deleted": oid}


class Req:
    """What a handler needs from the request, with the checks every handler repeats."""

    def __init__(self, query: dict[str, list[str]], headers: dict[str, str], body: bytes,
                 shop: Shop) -> None:
        self.query, self.headers, self.body, self.shop = query, headers, body, shop
        self.meta: dict[str, Any] = {}

    def arg(self, name: str) -> str | None:
        v = self.query.get(name)
        return v[0] if v else None

    def int_arg(self, name: str, default: int, lo: int, hi: int) -> int:
        v = self.arg(name)
        if v is None:
            return default
        try:
            n = int(v)
        except ValueError:
            raise HTTPError(400, f"{name} must be an integer") from None
        if not lo <= n <= hi:
            raise HTTPError(400, f"{name} must be between {lo} and {hi}")
        return n

    def paging(self) -> tuple[int, int]:
        return (self.int_arg("page", 1, 1, 10**6),
                self.int_arg("per_page", 10, 1, MAX_PER_PAGE))

    def json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.body or b"{}")
        except ValueError:
            raise HTTPError(400, "the body is not JSON") from None
        if not isinstance(doc, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return doc

    def user(self) -> int:
        auth = self.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPError(401, "send Authorization: Bearer <token from POST /login>")
        uid = read_token(token.strip(), self.shop.trust_tokens)
        if uid is None:
            raise HTTPError(401, "invalid or expired token")
        return uid

    def is_admin(self, uid: int) -> bool:
        row = self.shop._user(uid)
        return row is not None and row[4] == "admin"

    def need_admin(self) -> None:
        if not self.is_admin(self.user()):
            raise HTTPError(403, "admins only")

    def need_self_or_admin(self, owner: int, not_found: str | None = None) -> None:
        uid = self.user()
        if uid != owner and not self.is_admin(uid):
            # Someone else's order is 'not found', not 'forbidden': ids are not to be probed.
            raise HTTPError(404 if not_found else 403, not_found or "not your account")


# ---- HTTP -------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; each answer is one buffered write (wbufsize) with Nagle off."""

    protocol_version = "HTTP/1.1"
    # No version here: an unlisted header is compared exactly, and the version string is not
    # a regression. GET /healthz says which build runs.
    server_version = "shop"
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    timeout = 120  # an idle keep-alive connection is closed after this
    shop: Shop  # set on the subclass made by serve()

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        rid = str(uuid.uuid4())
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or self.headers.get("Transfer-Encoding"):
            self._reply(400, {"error": "send bodies with a Content-Length"}, {}, rid)
            self.close_connection = True
            return
        body = self.rfile.read(n) if n else b""
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, data, meta = self.shop.handle(method, url.path.rstrip("/") or "/",
                                                  parse_qs(url.query), headers, body)
            payload: dict[str, Any] = {"data": data}
        except HTTPError as e:
            status, payload, meta = e.status, {"error": e.message}, {}
        except Exception as e:  # a bug: answer 500 and keep serving, as real services do
            self.log_error("500 on %s %s: %r", method, self.path, e)
            status, payload, meta = 500, {"error": "internal server error"}, {}
        self._reply(status, payload, meta, rid)

    def _reply(self, status: int, payload: dict[str, Any], meta: dict[str, Any], rid: str
               ) -> None:
        payload["meta"] = {"request_id": rid, "server_time": _now(), **meta}
        raw = json.dumps(payload, separators=(",", ":")).encode()
        gz = len(raw) >= GZIP_MIN and "gzip" in self.headers.get("Accept-Encoding", "").lower()
        if gz:
            raw = gzip.compress(raw, compresslevel=5, mtime=0)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("X-Request-Id", rid)
        self.send_header("Vary", "Accept-Encoding")
        if gz:
            self.send_header("Content-Encoding", "gzip")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    verbose = False


class Server6(Server):
    address_family = socket.AF_INET6


def serve(host: str, port: int, data_dir: Path, trust_tokens: bool = False,
          keep_data: bool = False, verbose: bool = False) -> Server:
    """Build (not start) the server; ``serve_forever()`` it, ``shutdown()`` to stop."""
    shop = Shop(data_dir, trust_tokens=trust_tokens, keep_data=keep_data)
    handler = type("ShopHandler", (Handler,), {"shop": shop})
    server_cls = Server6 if ":" in host else Server
    srv = server_cls((host, port), handler)
    srv.verbose = verbose
    return srv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=f"shop {VERSION}: the shadowtap demo service")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8080))
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("SHADOW_ROOT") or "/tmp/shop") / "data",
                    help="SQLite lives here; reseeded on every start unless --keep-data")
    ap.add_argument("--keep-data", action="store_true", help="keep the data of the last run")
    ap.add_argument("--trust-tokens", action="store_true",
                    default=bool(os.environ.get("SHOP_TRUST_TOKENS")),
                    help="shadow mode: accept sanitised tokens (no signature or password check)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every request")
    a = ap.parse_args(argv)
    srv = serve(a.host, a.port, a.data_dir, a.trust_tokens, a.keep_data, a.verbose)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown).start())
    mode = " (shadow mode: tokens trusted)" if a.trust_tokens else ""
    print(f"shop {VERSION} listening on http://{a.host}:{srv.server_address[1]} "
          f"data {a.data_dir}{mode}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
