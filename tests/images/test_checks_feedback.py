"""Checks for real against a shadow's service, build-hook exit codes, webhooks, history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from imagehelpers import Env, make_image

from appliance.images.checks import ChecksFile, load_checks, run_checks
from appliance.images.feedback import History
from appliance.images.imagesync import ImageStore, push
from appliance.images.shadows import Pool

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]

SUITE = '''
import os, urllib.request

URL = os.environ["SHADOW_URL"]

def test_version_is_a_release():
    body = urllib.request.urlopen(URL + "/VERSION", timeout=5).read().decode()
    assert body.startswith("v"), body

def test_index_answers():
    assert urllib.request.urlopen(URL + "/", timeout=5).status == 200
'''

LOCUSTFILE = '''
from locust import HttpUser, constant, task

class Visitor(HttpUser):
    wait_time = constant(0.05)

    @task
    def version(self):
        self.client.get("/VERSION")
'''

CHECKS = """
timeout: 60
checks:
  - {name: smoke, type: http, path: /VERSION, status: 200, contains: v}
  - {name: api, type: pytest, path: suite}
  - {name: load, type: locust, locustfile: load.py, users: 4, spawn_rate: 4, duration: 5s,
     p95_ms: 500, max_error_rate: 0.01}
  - {name: security, type: security, allowed_ports: [8080]}
"""


def write_checks(d: Path, with_load: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "suite").mkdir(exist_ok=True)
    (d / "suite" / "test_shadow_api.py").write_text(SUITE)
    (d / "load.py").write_text(LOCUSTFILE)
    text = CHECKS if with_load else "\n".join(
        ln for ln in CHECKS.splitlines() if "locust" not in ln and "p95_ms" not in ln)
    (d / "checks.yaml").write_text(text)
    return d / "checks.yaml"


class Hook:
    """A real HTTP listener that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                hook.bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                return None

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/hook"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def cli(env: Env, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ, SHADOWTAP_HOME=str(env.home),
             SHADOWTAP_STATE_DIR=str(env.tmp / "state"), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True,
                          text=True, env=e, timeout=timeout, cwd=REPO)


def test_checks_run_for_real_and_security_scan_catches_plants(env: Env) -> None:
    img = make_image(env.tmp / "img", files=3)
    pool = Pool(env.home, prefix=env.prefix)
    hosts = [pool.create(f"c{i}", image="demo") for i in range(2)]
    snap, res = push(img, "base", pool=pool)
    assert snap and all(r.ok for r in res)
    cf = load_checks(write_checks(env.tmp / "checks"))
    store = ImageStore("demo", env.home)
    out = run_checks(cf, hosts, snap, store, env.tmp / "artefacts", 8080)
    by = {(r.name, r.shadow): r for r in out}
    assert all(r.ok for r in out), [(r.name, r.shadow, r.summary) for r in out if not r.ok]
    assert ("smoke", "c1") in by and ("security", "c1") in by  # cheap checks: every shadow
    assert ("load", "c1") not in by  # heavy ones: one shadow
    assert by[("api", "c0")].metrics["tests"] == 2
    assert Path(by[("api", "c0")].artefacts[0]).read_text().startswith("<?xml")  # JUnit kept
    load = by[("load", "c0")]
    assert load.metrics["requests"] > 50 and load.metrics["error_rate"] == 0
    assert 0 < load.metrics["p95_ms"] < 500

    # plant a setuid binary and a private key, and a too-strict p95, in the next delta
    (img / "bin").mkdir()
    (img / "bin" / "helper").write_bytes(b"\x7fELF fake")
    os.chmod(img / "bin" / "helper", 0o4755)
    (img / "deploy_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n"
                                    "-----END OPENSSH PRIVATE KEY-----\n")
    snap2, res2 = push(img, "plant", pool=pool)
    assert snap2 and all(r.ok for r in res2)
    sec = ChecksFile([c for c in cf.checks if c.kind == "security"], cf.base)
    out2 = run_checks(sec, hosts[:1], snap2, store, env.tmp / "artefacts2", 8080)
    assert len(out2) == 1 and not out2[0].ok
    assert "setuid/setgid: bin/helper" in out2[0].summary
    assert "deploy_key: private key" in out2[0].summary


def test_security_scan_flags_a_port_not_allowed(env: Env) -> None:
    img = make_image(env.tmp / "img", files=1)
    pool = Pool(env.home, prefix=env.prefix)
    h = pool.create("p0", image="demo")
    snap, _ = push(img, "base", pool=pool)
    assert snap
    d = env.tmp / "c"
    d.mkdir()
    (d / "checks.yaml").write_text("checks: [{type: security, allowed_ports: [9999]}]\n")
    out = run_checks(load_checks(d / "checks.yaml"), [h], snap, ImageStore("demo", env.home),
                     env.tmp / "a", 8080)
    assert not out[0].ok and "ports not allowed: 8080" in out[0].summary
    assert "873" not in out[0].summary  # shadowtap's own rsync daemon is not the image's


def test_build_hook_exit_codes_history_and_webhooks(env: Env, hook: Hook) -> None:
    img = make_image(env.tmp / "img", files=3)
    checks = write_checks(env.tmp / "checks", with_load=False)
    pool = Pool(env.home, prefix=env.prefix)
    pool.create("b0", image="demo")
    pool.create("b1", image="demo")

    r = cli(env, "build-hook", "--image", str(img), "--stage", "base layer", "--checks",
            str(checks), "--webhook", hook.url)
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stderr
    assert len(hook.bodies) == 1 and "passed" in hook.bodies[0]["text"]
    assert hook.bodies[0]["shadowtap"]["ok"] is True

    # a broken build: the pytest suite fails and a private key is added
    (img / "VERSION").write_text("broken\n")
    (img / "id_rsa").write_text("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE "
                                "KEY-----\n")
    r = cli(env, "build-hook", "--image", str(img), "--stage", "install packages", "--checks",
            str(checks), "--webhook", hook.url)
    assert r.returncode == 1, r.stderr
    assert "FAIL" in r.stderr and "api on b0" in r.stderr and "security on b" in r.stderr
    assert "test_version_is_a_release" in r.stderr
    assert len(hook.bodies) == 2
    text = hook.bodies[1]["text"]
    assert "FAILED" in text and "api on b0" in text and "id_rsa: private key" in text

    # unchanged image: nothing to push, exit 0
    r = cli(env, "build-hook", "--image", str(img), "--checks", str(checks))
    assert r.returncode == 0 and "no significant change" in r.stderr

    rows = History(pool_home=env.home).builds("demo")
    assert [x["verdict"] for x in rows] == ["fail", "pass"]
    assert rows[1]["stage"] == "base layer" and rows[1]["switched"] == 2
    r = cli(env, "history", "--image", "demo")
    assert r.returncode == 0 and "install packages" in r.stderr and "FAIL" in r.stderr
    assert (env.home / "metrics" / "imagesync.prom").read_text().count("shadowtap_image_") > 4

    # a bad checks file is the user's mistake: one line, exit 2
    bad = env.tmp / "bad.yaml"
    bad.write_text("checks: [{type: nope}]\n")
    r = cli(env, "build-hook", "--image", str(img), "--checks", str(bad))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "type must be" in r.stderr


def test_replay_diff_check_against_the_shadow(env: Env) -> None:
    """Captured traffic (production answered 'v1') replayed to the shadow by `shadowtap diff`."""
    from replay.formats import open_writer
    from replay.model import Exchange, Request, Response

    img = make_image(env.tmp / "img", files=1)
    pool = Pool(env.home, prefix=env.prefix)
    h = pool.create("r0", image="demo")
    snap, _ = push(img, "base", pool=pool)
    assert snap
    d = env.tmp / "c"
    d.mkdir()
    # "production" answered as the v1 build does: record one real answer's headers
    s = h.connect(8080)
    s.sendall(b"GET /VERSION HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
    raw = b""
    while chunk := s.recv(65536):
        raw += chunk
    s.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = [tuple(x.decode().split(": ", 1)) for x in head.split(b"\r\n")[1:]]
    assert body == b"v1\n"
    with (d / "capture.jsonl").open("wb") as fp:
        w = open_writer("jsonl", fp)
        for i in range(20):
            w.write(Exchange(
                id=f"x{i}", request=Request("GET", "/VERSION", headers=[("Host", "shop")]),
                response=Response(200, "OK", headers=headers, body=body)))  # type: ignore[arg-type]
        w.close()
    (d / "checks.yaml").write_text(
        "checks: [{name: replay, type: replay, input: capture.jsonl, fail_on: '0'}]\n")
    cf = load_checks(d / "checks.yaml")
    store = ImageStore("demo", env.home)
    out = run_checks(cf, [h], snap, store, env.tmp / "a1", 8080)
    assert out[0].ok, (out[0].summary, (env.tmp / "a1" / "replay-r0.log").read_text())
    (img / "VERSION").write_text("v2\n")
    snap2, _ = push(img, "v2", pool=pool)
    assert snap2
    out = run_checks(cf, [h], snap2, store, env.tmp / "a2", 8080)
    assert not out[0].ok and "regression" in out[0].summary
    assert json.loads(Path(out[0].artefacts[0]).read_text())
