"""Drift found on demand (``shadow verify``, ``build-hook --force``) and an empty pool that
leaves nothing behind; all through the CLI, against real shadows in fenced namespaces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from imagehelpers import Env, error_lines, make_image, run_cli

from appliance.images.feedback import History
from appliance.images.imagesync import push
from appliance.images.shadows import Pool
from netconfig import lab
from netconfig import netns as nsmod

pytestmark = pytest.mark.root


def _same_size_same_mtime_tamper(f: Path) -> None:
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[10] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_shadow_verify_reports_in_step_drifted_and_repairs(env: Env) -> None:
    img = make_image(env.tmp / "img", files=4)
    pool = Pool(env.home, prefix=env.prefix)
    a, b = pool.create("va", image="demo"), pool.create("vb", image="demo")
    push(img, "base", pool=pool)
    r = run_cli(env, "shadow", "verify")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("in step") == 2

    cur = Path(b.root) / "current"
    _same_size_same_mtime_tamper(cur / "data" / "blob001")
    (cur / "data" / "blob002").unlink()
    (cur / "stray").write_text("left by hand\n")
    # metadata: the missing and the added file; the same-size same-mtime edit needs --deep
    out = {v["shadow"]: v for v in json.loads(run_cli(env, "shadow", "verify", "--json").stdout)}
    assert out["va"]["state"] == "in step" and out["va"]["files"] == []
    assert out["vb"]["state"] == "drifted"
    assert out["vb"]["files"] == ["missing: data/blob002", "added: stray"]
    r = run_cli(env, "shadow", "verify", "vb", "--deep", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)[0]["files"] == [
        "changed: data/blob001 (content)", "missing: data/blob002", "added: stray"]
    r = run_cli(env, "shadow", "verify")
    assert r.returncode == 1 and "drifted" in r.stderr and "--repair" in r.stderr

    r = run_cli(env, "shadow", "verify", "--deep", "--repair")
    assert r.returncode == 0 and "repaired" in r.stderr, r.stderr
    assert run_cli(env, "shadow", "verify", "--deep").returncode == 0
    assert b.http_get(8080, "/VERSION") == (200, b"v1\n")  # its service runs the repaired tree
    assert a.current_release() != b.current_release()  # b got a fresh release

    r = run_cli(env, "shadow", "verify", "nope")
    assert r.returncode == 2 and len(error_lines(r.stderr)) == 1, r.stderr
    assert "no shadow named 'nope'" in error_lines(r.stderr)[0]


CHECKS = "checks:\n  - {name: smoke, type: http, path: /VERSION, status: 200, contains: %s}\n"


def test_build_hook_force_verifies_checks_and_records_without_a_change(env: Env) -> None:
    img = make_image(env.tmp / "img", files=2)
    checks = env.tmp / "checks.yaml"
    checks.write_text(CHECKS % "v1")
    pool = Pool(env.home, prefix=env.prefix)
    h = pool.create("f0", image="demo")
    assert run_cli(env, "build-hook", "--image", str(img), "--checks", str(checks)).returncode == 0

    r = run_cli(env, "build-hook", "--image", str(img), "--checks", str(checks))
    assert r.returncode == 0 and "--force" in r.stderr  # nothing changed, nothing run
    assert len(History(pool_home=env.home).builds("demo")) == 1

    # tampered between builds: --force finds it, repairs it, runs the checks, records it all
    (Path(h.root) / "current" / "VERSION").write_text("v9\n")
    r = run_cli(env, "build-hook", "--image", str(img), "--checks", str(checks), "--force",
                "--stage", "nightly", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["forced"] and res["snapshot"]["id"] == "000001"
    assert [(a["mode"], a["ok"]) for a in res["applies"]] == [("full", True)]
    assert "tampered" in res["applies"][0]["note"]
    assert [(c["name"], c["ok"]) for c in res["checks"]] == [("smoke", True)]
    assert h.http_get(8080, "/VERSION") == (200, b"v1\n")

    # a check that fails now fails the forced build too, and that verdict is kept
    checks.write_text(CHECKS % "v2")
    r = run_cli(env, "build-hook", "--image", str(img), "--checks", str(checks), "--force")
    assert r.returncode == 1 and "smoke on f0" in r.stderr
    rows = History(pool_home=env.home).builds("demo")
    assert [(x["verdict"], x["trigger"], x["stage"]) for x in rows] == [
        ("fail", "forced", "build"), ("pass", "forced", "nightly"), ("pass", "change", "build")]
    assert rows[0]["snapshot"] == "000001" and rows[0]["batch_bytes"] == 0
    r = run_cli(env, "history", "--image", "demo")
    assert r.returncode == 0 and r.stderr.count("re-check") == 2


def test_deleting_the_last_shadow_removes_the_pools_gateway(env: Env) -> None:
    img = make_image(env.tmp / "img", files=1)
    pool = Pool(env.home, prefix=env.prefix)
    for n in ("d0", "d1"):
        pool.create(n, image="demo")
    push(img, "base", pool=pool)
    gw = pool.gateway_ns()
    assert gw.startswith(env.prefix) and nsmod.exists(gw)

    r = run_cli(env, "shadow", "delete", "d0")
    assert r.returncode == 0 and "gateway" not in r.stderr
    assert nsmod.exists(gw)  # d1 still needs it
    r = run_cli(env, "shadow", "delete", "d1")
    assert r.returncode == 0 and f"removed its gateway namespace {gw}" in r.stderr, r.stderr
    assert not nsmod.exists(gw)
    assert not [n for n in nsmod.list_netns() if n.startswith(env.prefix)]
    assert lab.read_state(env.prefix) is None and not (env.home / "pool.json").exists()

    # what an earlier version left after deleting the last shadow: an empty record and the
    # gateway with its lab record; 'shadow gc' removes them
    pool = Pool(env.home, prefix=env.prefix)
    pool._net_up([])
    with pool._edit():
        pass
    assert nsmod.exists(gw) and (env.home / "pool.json").exists()
    r = run_cli(env, "shadow", "gc")
    assert r.returncode == 0 and f"removed its gateway namespace {gw}" in r.stderr, r.stderr
    assert not nsmod.exists(gw) and lab.read_state(env.prefix) is None
    assert not (env.home / "pool.json").exists()
