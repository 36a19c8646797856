"""The compiled hot modules (``setup.py``, ``replay/_native.py``) behave exactly as their source.

Cython compiles the unchanged ``.py`` files, but a compiled module is not the interpreter: a few
constructs differ (iterating a bytes literal yields bytes there, for one). So the same seeded
corpora are run through the compiled build in this process and through the source in a child
process (``SHADOWTAP_PURE_PYTHON=1``), and every output byte and count must agree. The comparator
has its own reference tests (tests/replay/test_replay_compare_fast.py), which run on whatever
build is installed; here it gets the differential check too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import replay.compare
import replay.sanitise.core
from replay import _native

ROOT = Path(__file__).resolve().parents[1]

_PROBE = r"""
import hashlib, random, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests/sanitise", sys.argv[1] + "/bench/replay"]
import functools, gzip
gzip.compress = functools.partial(gzip.compress, mtime=0)  # the corpus's gzip headers: no clock
import orjson
from sanitise_corpus import build_seeded, corpus_policy, clean_json_body
from replay.formats.jsonl import exchange_to_record
from replay.model import Response
from replay.sanitise import Policy, Sanitiser
from replay.compare import Comparator, Rules, ThreeWay, prepare
from replay import _native
import replay.compare, replay.sanitise.core

h = hashlib.sha256()
for policy in (corpus_policy(), Policy.default()):
    san = Sanitiser(policy, b"native-test-key-0123456789abcdef")
    for ex in build_seeded(seed=11, n=400).exchanges:
        out = san.apply(ex)
        h.update(b"-" if out is None else orjson.dumps(exchange_to_record(out)))
    h.update(orjson.dumps(san.report.to_dict(), option=orjson.OPT_SORT_KEYS))
rng = random.Random(5)
from run import json_pair
comp = Comparator(Rules())
tw = ThreeWay(Rules())
from replay.model import Request
req = Request("GET", "/api/orders/1")
for i in range(400):
    a, b = json_pair(rng)
    h.update(repr(comp.diff(prepare(a), prepare(b))).encode())
    body = clean_json_body(rng)
    c = Response(200, "OK", headers=[("Content-Type", "application/json")], body=body)
    h.update(repr(comp.compare(a, c)).encode())
    tw.add(str(i), req, a, b, a)
v = tw.verdict()
h.update(repr(([f.to_dict() for f in v.regressions + v.noise + v.undecided], v.endpoints,
               v.compared, v.regression_requests)).encode())
print(_native.compiled(replay.compare), _native.compiled(replay.sanitise.core), h.hexdigest())
"""


def _probe(pure: bool) -> tuple[str, str, str]:
    env = dict(os.environ)
    env.pop("SHADOWTAP_PURE_PYTHON", None)
    env["PYTHONHASHSEED"] = "0"  # one string hash for both runs: a difference is the build's
    if pure:
        env["SHADOWTAP_PURE_PYTHON"] = "1"
    r = subprocess.run([sys.executable, "-c", _PROBE, str(ROOT)], capture_output=True,
                       text=True, env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b, digest = r.stdout.split()
    return a, b, digest


def test_compiled_build_gives_the_same_bytes_as_the_source() -> None:
    if not (_native.compiled(replay.compare) and _native.compiled(replay.sanitise.core)):
        pytest.skip("the hot modules are not compiled here (no build, a stale build, or "
                    "SHADOWTAP_PURE_PYTHON): nothing to compare")
    compiled = _probe(pure=False)
    source = _probe(pure=True)
    assert compiled[:2] == ("True", "True")
    assert source[:2] == ("False", "False")
    assert compiled[2] == source[2]


def test_a_build_older_than_its_source_is_not_used(tmp_path: Path) -> None:
    """The guard: a stand-in package whose build is older than its edited source loads the
    source, and says so once; a fresh build is used."""
    src = ROOT / "replay" / "compare.py"
    builds = [p for p in src.parent.glob("compare.*.so")]
    if not builds:
        pytest.skip("no compiled build of replay/compare.py here (pure-Python install)")
    pkg = tmp_path / "replay"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from replay import _native\n_native.install()\n")
    (pkg / "_native.py").write_bytes((ROOT / "replay" / "_native.py").read_bytes())
    # A build of a trivial module, made with the same suffix, stands in for the real build:
    # the real one cannot be renamed, so the source beside it is what changes.
    so = pkg / builds[0].name
    so.write_bytes(builds[0].read_bytes())
    (pkg / "compare.py").write_text("MARK = 'source'\n")
    old = 1_000_000_000
    os.utime(so, (old, old))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import replay.compare as c; "
            "print(c.__file__); print(getattr(c, 'MARK', 'build'))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, timeout=60, check=False, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(pkg / "compare.py"), "source"]
    assert r.stderr.count("newer than its compiled build") == 1
    os.utime(so, None)  # now the build is the newer one: it is used
    os.utime(pkg / "compare.py", (old, old))
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, timeout=60, check=False, cwd=tmp_path)
    assert r.stdout.split()[0] == str(so), r.stdout + r.stderr
    assert "newer than" not in r.stderr


def test_the_install_compiled_the_hot_modules() -> None:
    """scripts/setup.sh installs a C compiler and the build compiles ``NATIVE`` (and builds
    ``PYX`` and ``C_EXT``); the benchmark
    figures in docs/benchmarks.md are for that build. A missing build is a failed install, not a
    slower pass; a stale one (source edited since) is the developer's, and skips."""
    if os.environ.get("SHADOWTAP_PURE_PYTHON"):
        pytest.skip("SHADOWTAP_PURE_PYTHON is set")
    missing, stale = [], []
    sources = [name.replace(".", "/") + ".py" for name in _native.NATIVE]
    sources += [name.replace(".", "/") + ".pyx" for name in _native.PYX]
    sources += [name.replace(".", "/") + ".c" for name in _native.C_EXT]
    for name in sources:
        src = ROOT / name
        so = list(src.parent.glob(src.stem + ".*.so"))
        if not so:
            missing.append(name)
        elif src.stat().st_mtime > so[0].stat().st_mtime:
            stale.append(name)
    assert not missing, (f"not compiled: {missing}; run bash scripts/setup.sh (needs gcc, "
                         "python3-dev and Cython, which it installs)")
    if stale:
        pytest.skip(f"source newer than its build (edited since the install): {stale}")
    assert _native.compiled(replay.compare) and _native.compiled(replay.sanitise.core)
    from replay.sanitise.keyscan import KeyScan

    assert KeyScan.native_available()
    assert _native.load_c("replay._fastpath", "FastPath") is not None
