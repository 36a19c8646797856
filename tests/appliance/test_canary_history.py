"""Rollout history (SQLite, ``shadowtap canary history``) and the canary's image rollback with
the real image pipeline: a shadow of the pool running snapshot 2 of an image is put back on
snapshot 1 when its rollout is rolled back."""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.canary.history import (
    ImageTarget,
    RolloutHistory,
    finish_rollout,
    previous_snapshot,
)
from appliance.canary.rollout import CANARY, PROD, CanaryPolicy, Rollout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "images"))
from imagehelpers import make_image

SHADOWTAP = [str(Path(sys.executable).parent / "shadowtap")]


def _rollout(bad: bool, seed: int = 1) -> Rollout:
    """A rollout fed synthetic exchanges: a bad canary answers GET /orders/{id} 80 ms late."""
    r = Rollout(CanaryPolicy(steps=[10, 50, 100], step_seconds=2, min_requests=40),
                lambda w: None)
    r.start(0.0)
    rng = random.Random(seed)
    t = 0.0
    while not r.done and t < 60:
        for _ in range(300):
            side = CANARY if rng.random() < 0.3 else PROD
            ep = "GET /orders/{id}" if rng.random() < 0.2 else "GET /products"
            lat = 0.003 * rng.uniform(0.8, 1.2) + (0.08 if bad and side == CANARY
                                                   and ep == "GET /orders/{id}" else 0.0)
            r.add(side, 200, lat, ep)
        t += 1.0
        r.tick(t)
    return r


def test_rollouts_and_their_evidence_are_recorded(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    good, bad = _rollout(False), _rollout(True)
    assert good.state == "promoted" and bad.state == "rolled_back"
    for r in (good, bad):
        finish_rollout(r.report(), r.policy, started=1_700_000_000.0, history=db)
    h = RolloutHistory(db)
    rows = h.rollouts()
    assert [r["state"] for r in rows] == ["rolled_back", "promoted"]  # newest first
    assert rows[1]["step_reached"] == 3 and rows[0]["step_reached"] == 1
    assert rows[0]["reasons"][0].startswith("latency: GET /orders/{id}: ")
    full = h.get(rows[0]["id"])
    assert full is not None and full["report"]["state"] == "rolled_back"
    step = full["step_log"][0]
    assert step["decision"] == "rollback" and step["outcome"] == "fail"
    tests = [t for m in step["evidence"]["metrics"] for t in m["tests"]]
    slow = next(t for t in tests if t["metric"] == "latency"
                and t["endpoint"] == "GET /orders/{id}")
    assert slow["result"] == "fail" and 70 < slow["effect"] < 90 and slow["p_beyond"] < 0.01
    assert full["policy"]["judge"]["metrics"][0]["name"] == "errors"


def test_canary_history_command_table_fits_80_columns_and_json(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    for bad in (False, True, True):
        r = _rollout(bad)
        finish_rollout(r.report(), r.policy, started=time.time() - 95, history=db)
    env = {**os.environ, "COLUMNS": "80"}
    p = subprocess.run([*SHADOWTAP, "canary", "history", "--history", str(db)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80, p.stdout
    assert sum("rollback" in ln for ln in lines) == 2 and "promoted" in p.stdout, p.stdout
    assert "latency: GET /orders/{id}" in p.stdout  # the first reason, cut to fit
    j = subprocess.run([*SHADOWTAP, "canary", "history", "--history", str(db), "--json",
                        "-n", "2"], capture_output=True, text=True, timeout=60)
    doc = json.loads(j.stdout)
    assert [d["id"] for d in doc] == [3, 2] and doc[0]["step_log"][0]["outcome"] == "fail"
    one = subprocess.run([*SHADOWTAP, "canary", "history", "--history", str(db), "--id", "3"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert one.returncode == 0 and "GET /orders/{id}" in one.stdout and "fail" in one.stdout
    assert max(len(ln) for ln in one.stdout.splitlines()) <= 80, one.stdout
    missing = subprocess.run([*SHADOWTAP, "canary", "history", "--history", str(db), "--id",
                              "99"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no rollout 99" in missing.stderr


def test_image_target_parsing() -> None:
    assert ImageTarget.parse("shop:canary-1") == ImageTarget("shop", "canary-1")
    assert ImageTarget.parse("shop:c@000002") == ImageTarget("shop", "c", "000002")
    with pytest.raises(ValueError, match="IMAGE:SHADOW"):
        ImageTarget.parse("shop")


# ---- with the real image pipeline (root: namespaces, rsync daemons) ------------------------------

@pytest.fixture
def pool_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (a shadow in a namespace)")
    from appliance.images.shadows import Pool
    from netconfig import netns as nsmod

    prefix = f"kj{secrets.token_hex(2)}-"
    home = tmp_path / "home"
    monkeypatch.setenv("SHADOWTAP_HOME", str(home))
    monkeypatch.setenv("SHADOWTAP_STATE_DIR", str(tmp_path / "state"))
    pool = Pool(home, prefix=prefix)
    try:
        yield pool, tmp_path
    finally:
        try:
            if (home / "pool.json").exists():
                Pool(home).destroy()
        finally:
            for ns in nsmod.list_netns():
                if ns.startswith(prefix):
                    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _served(h: Any) -> str:
    status, body = h.http_get(8080, "/VERSION")
    assert status == 200
    return body.decode().strip()


@pytest.mark.root
def test_a_rolled_back_canary_runs_the_previous_release(pool_env: tuple[Any, Path]) -> None:
    from appliance.images.imagesync import ImageStore, push, release_snapshot

    pool, tmp = pool_env
    img = make_image(tmp / "img", files=3)
    canary = pool.create("canary", image="demo")
    s1, _ = push(img, "release 1", pool=pool)
    (img / "VERSION").write_text("v2\n")
    s2, res = push(img, "release 2", pool=pool)
    assert s1 and s2 and all(a.ok for a in res), res
    assert _served(canary) == "v2"
    assert previous_snapshot(ImageStore("demo", pool.home), s2.id) == s1.id

    r = _rollout(True)
    r.policy.image = ImageTarget("demo", "canary")
    db = tmp / "h.sqlite"
    said: list[str] = []
    doc = r.report()
    rid = finish_rollout(doc, r.policy, started=0.0, history=db, say=said.append, pool=pool)
    img_doc = doc["image_rollback"]
    assert img_doc["ok"] and img_doc["from"] == s2.id and img_doc["to"] == s1.id, img_doc
    assert _served(canary) == "v1"  # the previous release answers
    assert release_snapshot(canary.current_release()) == s1.id
    row = RolloutHistory(db).rollouts()[0]
    assert row["id"] == rid and row["image_from"] == s2.id and row["image_to"] == s1.id
    assert row["image_ok"] == 1
    assert any("rolling the canary's image back" in s for s in said)

    # a promoted canary keeps its image; a second rollback goes one further back only if kept
    good = _rollout(False)
    good.policy.image = ImageTarget("demo", "canary")
    d2 = good.report()
    finish_rollout(d2, good.policy, started=0.0, history=db, pool=pool)
    assert "image_rollback" not in d2 and _served(canary) == "v1"
    again = _rollout(True)
    again.policy.image = ImageTarget("demo", "canary")
    d3 = again.report()
    finish_rollout(d3, again.policy, started=0.0, history=db, pool=pool)
    assert not d3["image_rollback"]["ok"] and "no snapshot kept before" in d3[
        "image_rollback"]["note"]
    assert d3["state"] == "rolled_back" and _served(canary) == "v1"
