"""What services write at run time is theirs: never drift, never lost, never shipped back.

Real services in fenced namespaces, with ``PYTHONDONTWRITEBYTECODE`` removed from their
environment (development machines export it; production services do not): a Python service
that imports modules of its own image, and a Node service that writes a cache directory, a log
and a pid file into its working directory (the release) and uploads into ``$SHADOW_DATA``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from imagehelpers import Env, run_cli

from appliance.images.ignore import IgnoreRules
from appliance.images.imagesync import (
    ImageError,
    ignored,
    load_manifest,
    push,
    remote_hash,
    tree_hash,
    tree_listing,
)
from appliance.images.shadows import LabShadow, Pool

APP_PY = '''
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shop import catalog
from shop.util import render

with open(os.path.join(os.environ["SHADOW_DATA"], "starts.log"), "a") as fh:
    fh.write(f"{os.getpid()} {catalog.VERSION}\\n")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = render(catalog.VERSION).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
'''

SERVER_JS = '''
const http = require("http"), fs = require("fs"), path = require("path");
const leftPad = require("left-pad");
const VERSION = "%s";
// what babel-loader and webpack do: a cache under node_modules/.cache in the working tree
fs.mkdirSync("node_modules/.cache/app", {recursive: true});
fs.writeFileSync(`node_modules/.cache/app/${VERSION}.json`, JSON.stringify({at: Date.now()}));
fs.mkdirSync("logs", {recursive: true});
fs.appendFileSync("logs/app.log", `start ${process.pid} ${VERSION}\\n`);
fs.writeFileSync("server.pid", String(process.pid));
const uploads = path.join(process.env.SHADOW_DATA, "uploads");
fs.mkdirSync(uploads, {recursive: true});
http.createServer((req, res) => {
  if (req.method === "POST") {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      fs.writeFileSync(path.join(uploads, "u" + Date.now()), Buffer.concat(chunks));
      res.end("stored\\n");
    });
    return;
  }
  res.end(leftPad(VERSION, 2) + "\\n");
}).listen(Number(process.env.PORT), "0.0.0.0");
'''


def python_image(root: Path, command: str, ignore: list[str]) -> Path:
    (root / "shop").mkdir(parents=True)
    (root / "shadowtap-image.yaml").write_text(
        f"name: pyshop\nservice: {{command: '{command}', port: 8080, health: /}}\n"
        f"ignore: {ignore!r}\n")
    (root / "app.py").write_text(APP_PY)
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "catalog.py").write_text('VERSION = "v1"\n')
    os.utime(root / "shop" / "catalog.py", ns=(1_700_000_000_000_000_000,) * 2)
    (root / "shop" / "util.py").write_text("def render(v):\n    return v + '\\n'\n")
    (root / "data.bin").write_bytes(os.urandom(1_000_000))
    return root


def node_image(root: Path, version: str) -> Path:
    (root / "node_modules" / "left-pad").mkdir(parents=True, exist_ok=True)
    (root / "shadowtap-image.yaml").write_text(
        "name: nodeshop\nservice: {command: 'exec node server.js', port: 8080, health: /}\n"
        "ignore: ['node_modules/.cache/', 'logs/', '*.pid']\n")
    (root / "node_modules" / "left-pad" / "index.js").write_text(
        "module.exports = (s, n) => String(s).padStart(n);\n")
    (root / "server.js").write_text(SERVER_JS % version)
    return root


def _get(h: LabShadow) -> str:
    status, body = h.http_get(8080, "/")
    assert status == 200
    return body.decode().strip()


def _post(h: LabShadow, data: bytes) -> None:
    s = h.connect(8080, 5)
    try:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        while s.recv(65536):
            pass
    finally:
        s.close()


def _current(h: LabShadow) -> Path:
    return Path(h.root) / "releases" / str(h.current_release())


def _pycs(d: Path) -> list[Path]:
    return sorted(d.rglob("*.pyc"))


# ---- the patterns mean what rsync means ----------------------------------------------------

PATHS = ["app.py", "pkg/__init__.py", "pkg/__pycache__/m.cpython-311.pyc", "__pycache__/a.pyc",
         "x.pyc", "pkg/sub/y.pyc", "logs/app.log", "sub/logs/app.log", "logs.txt", "server.pid",
         "node_modules/.cache/babel/1.json", "node_modules/left-pad/index.js",
         "a/node_modules/.cache/z", "uploads/u1", "data/uploads/u2", "srv/a.log",
         "srv/sub/b.log", "cache", "cachedir/cache/f", "weird[1].txt", "dot.dir/f",
         "var/run/x.sock", "var/lib/keep", "tmp/deep/x.tmp"]
PATTERNS = ["__pycache__/", "*.pyc", "logs/", "*.pid", "node_modules/.cache/", "/uploads/",
            "/srv/*.log", "cache", "weird\\[1\\].txt", "var/**/*.sock", "dot.dir/***", "*.tmp"]


def test_ignore_patterns_mean_what_rsync_means(tmp_path: Path) -> None:
    """The snapshot (rsync), the shadows' hash (find) and the watcher (Python) agree."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for p in PATHS:
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        (src / p).write_text(p)
    rules = IgnoreRules.parse(PATTERNS)
    subprocess.run(["rsync", "-a", *rules.rsync_args(), f"{src}/", f"{dst}/"], check=True)
    copied = {str(p.relative_to(dst)) for p in dst.rglob("*")}
    assert "srv/sub/b.log" in copied and "srv/a.log" not in copied  # '*' stops at '/'
    assert "uploads/u1" not in copied and "data/uploads/u2" in copied  # anchored
    assert set(tree_listing(src, rules).meta) == copied
    kept = {str(p.relative_to(src)) for p in src.rglob("*")
            if not ignored(str(p.relative_to(src)), PATTERNS, p.is_dir())}
    assert kept == copied
    # hashing with the rules: the source (ignored files and all) hashes as its clean copy
    assert tree_hash(src, rules=rules) == tree_hash(dst, rules=rules) == tree_hash(dst)


@pytest.mark.parametrize("bad", ["ignore: '*.pyc'", "ignore: ['ok', '']", "ignore: ['!']"])
def test_bad_ignore_list_is_a_clear_error(tmp_path: Path, bad: str) -> None:
    (tmp_path / "shadowtap-image.yaml").write_text(f"name: x\n{bad}\n")
    with pytest.raises(ImageError, match="ignore") as e:
        load_manifest(tmp_path)
    assert "\n" not in str(e.value)


# ---- real services -------------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("variant", ["plain", "ignores-env"])
def test_python_service_keeps_getting_deltas(env: Env, monkeypatch: pytest.MonkeyPatch,
                                             variant: str) -> None:
    """``plain``: bytecode goes to the shadow's cache (PYTHONPYCACHEPREFIX), the manifest
    ignores nothing. ``ignores-env`` (python -E): bytecode lands in the release, where the
    manifest's ignore keeps it out of verification."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    if variant == "plain":
        img = python_image(env.tmp / "img", "exec python3 app.py", [])
    else:
        img = python_image(env.tmp / "img", "exec python3 -E app.py", ["__pycache__/", "*.pyc"])
    pool = Pool(env.home, prefix=env.prefix)
    h: LabShadow = pool.create("py0", image="pyshop")  # type: ignore[assignment]
    _, res = push(img, "base", pool=pool)
    assert [(a.mode, a.service) for a in res] == [("full", "up")], res
    assert _get(h) == "v1"
    cache = Path(h.root) / "cache" / "python"
    if variant == "plain":  # bytecode was written, outside the release
        assert any(p.name.startswith("catalog.") for p in _pycs(cache))
        assert not _pycs(_current(h))
    else:
        assert any(p.name.startswith("util.") for p in _pycs(_current(h) / "shop"))
    for n, version in ((2, "v2"), (3, "v3")):
        # the same size, within the same whole second: CPython would trust bytecode of the
        # old text, so bytecode must not be carried into the new release
        catalog = img / "shop" / "catalog.py"
        sec = catalog.stat().st_mtime_ns // 10**9
        catalog.write_text(f'VERSION = "{version}"\n')
        os.utime(catalog, ns=(sec * 10**9 + n * 100_000_000,) * 2)
        snap, res = push(img, f"change {n}", pool=pool)
        assert snap is not None and snap.changed == ["shop/catalog.py"]  # nothing shipped back
        assert [a.mode for a in res] == ["batch"], res  # no false "drifted", no full copy
        assert res[0].service == "up" and _get(h) == version
    assert (Path(h.root) / "data" / "starts.log").read_text().count("\n") == 3  # data kept
    if variant == "plain":
        assert not _pycs(_current(h)) and any(p.name.startswith("catalog.") for p in _pycs(cache))
    rules = IgnoreRules.parse(load_manifest(img).ignore)
    assert remote_hash(h, "current", deep=True, rules=rules) == tree_hash(img, True, rules=rules)


@pytest.mark.root
@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed (apt-get install "
                    "nodejs)")
def test_node_service_cache_logs_and_uploads_survive_pushes_and_repairs(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    img = node_image(env.tmp / "img", "v1")
    pool = Pool(env.home, prefix=env.prefix)
    h: LabShadow = pool.create("n0", image="nodeshop")  # type: ignore[assignment]
    _, res = push(img, "base", pool=pool)
    assert [(a.mode, a.service) for a in res] == [("full", "up")], res
    _post(h, b"an upload")
    assert (_current(h) / "node_modules" / ".cache" / "app" / "v1.json").exists()

    (img / "server.js").write_text(SERVER_JS % "v2")
    snap, res = push(img, "v2", pool=pool)
    assert snap is not None and snap.changed == ["server.js"]
    assert [a.mode for a in res] == ["batch"], res
    assert _get(h) == "v2"
    cur = _current(h)
    # carried into the new release: the cache of both runs, the log of both starts
    assert {p.name for p in (cur / "node_modules" / ".cache" / "app").iterdir()} == \
        {"v1.json", "v2.json"}
    assert (cur / "logs" / "app.log").read_text().count("start ") == 2
    assert (cur / "server.pid").read_text().strip().isdigit()
    r = run_cli(env, "shadow", "verify", "n0")
    assert r.returncode == 0 and "in step" in r.stderr, r.stderr

    # a real drift (the image's own file) is found and named; run-time files are not
    with open(cur / "node_modules" / "left-pad" / "index.js", "a") as fh:
        fh.write("// patched by hand\n")
    r = run_cli(env, "shadow", "verify", "--json")
    assert r.returncode == 1
    out = {v["shadow"]: v for v in json.loads(r.stdout)}
    assert out["n0"]["state"] == "drifted"
    assert out["n0"]["files"] == ["changed: node_modules/left-pad/index.js (size, mtime)"]
    r = run_cli(env, "shadow", "verify", "--repair")
    assert r.returncode == 0 and "repaired" in r.stderr, r.stderr
    cur = _current(h)
    assert "patched" not in (cur / "node_modules" / "left-pad" / "index.js").read_text()
    assert (cur / "logs" / "app.log").read_text().count("start ") == 3  # a full copy carries too
    assert (cur / "node_modules" / ".cache" / "app" / "v1.json").exists()
    assert [p.read_bytes() for p in (Path(h.root) / "data" / "uploads").iterdir()] == \
        [b"an upload"]
    assert run_cli(env, "shadow", "verify", "--deep").returncode == 0
