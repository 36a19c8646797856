"""Image sync for real: rsync daemons in fenced namespaces, batch deltas, drift, kills, hangs."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from imagehelpers import Env, make_image

from appliance.images.imagesync import (
    ImageStore,
    Replicator,
    load_manifest,
    push,
    release_snapshot,
    remote_hash,
    tree_hash,
)
from appliance.images.shadows import LabShadow, Pool

pytestmark = pytest.mark.root


def _pool(env: Env, n: int) -> tuple[Pool, list[LabShadow]]:
    pool = Pool(env.home, prefix=env.prefix)
    hosts = [pool.create(f"s{i}", image="demo") for i in range(n)]
    return pool, hosts  # type: ignore[return-value]


def _served_version(h: LabShadow) -> str:
    status, body = h.http_get(8080, "/VERSION")
    assert status == 200
    return body.decode().strip()


def _daemon_log(h: LabShadow) -> str:
    p = Path(h.root).parent / f"{h.name}.d" / "rsyncd.log"
    return p.read_text() if p.exists() else ""


def _procs_with(needle: bytes) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(int(pid))
            except OSError:
                pass
    return out


def test_small_change_in_100mb_image_reaches_three_shadows(env: Env,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    img = make_image(env.tmp / "img", files=50, size=2_000_000)  # 100 MB
    pool, hosts = _pool(env, 3)
    snap, res = push(img, "base", pool=pool)
    assert snap and all(r.ok and r.mode == "full" and r.service == "up" for r in res), res
    assert {_served_version(h) for h in hosts} == {"v1"}

    (img / "VERSION").write_text("v2\n")
    (img / "data" / "blob007").write_bytes(os.urandom(300_000))
    (img / "data" / "new-file").write_bytes(os.urandom(50_000))
    (img / "data" / "blob013").unlink()
    os.chmod(img / "data" / "blob020", 0o600)  # metadata only: rsync changes it in place
    old_release = Path(hosts[0].root) / "releases" / str(hosts[0].current_release())
    served: list = []
    real_close = Replicator.close

    def close(self: Replicator) -> None:  # keep what the batch servers served
        served.extend(self.served)
        real_close(self)

    monkeypatch.setattr(Replicator, "close", close)
    t0 = time.monotonic()
    snap2, res2 = push(img, "install packages", pool=pool)
    took = time.monotonic() - t0
    assert snap2 is not None and snap2.parent == snap.id
    assert snap2.batch_bytes < 1_000_000  # a delta, not the image
    assert [r.mode for r in res2] == ["batch"] * 3, res2
    want = tree_hash(img, deep=True)  # content included: byte-identical
    for h, r in zip(hosts, res2, strict=True):
        assert r.ok and r.service == "up", r
        assert release_snapshot(h.current_release()) == snap2.id
        assert remote_hash(h, "current", deep=True) == want
        assert _served_version(h) == "v2"  # the service runs the new build
        assert (h.addr, snap2.id) in served  # streamed over the veth from the appliance side
    assert took < 20
    assert snap2.meta_only == ["data/blob020"]
    # the previous release (the rollback target, and what ran until the switch) is untouched
    assert (old_release / "data" / "blob020").stat().st_mode & 0o777 == 0o644
    assert (old_release / "VERSION").read_text() == "v1\n"

    # nothing significant changed: no snapshot, nothing sent
    assert push(img, "noop", pool=pool) == (None, [])


def test_drifted_shadow_is_fully_resynced_and_never_gets_the_batch(env: Env) -> None:
    img = make_image(env.tmp / "img", files=8)
    pool, (good, bad) = _pool(env, 2)
    push(img, "base", pool=pool)
    # tamper: one byte more in a file of the running release
    with open(Path(bad.root) / "current" / "data" / "blob002", "ab") as fh:
        fh.write(b"x")
    (img / "VERSION").write_text("v2\n")
    store = ImageStore("demo", env.home)
    snap = store.take(img, "next")
    assert snap is not None
    rep = Replicator(store)
    res = rep.apply([good, bad], snap)
    by = {r.shadow: r for r in res}
    assert by["s0"].mode == "batch" and by["s0"].ok
    assert by["s1"].mode == "full" and by["s1"].ok, by["s1"]
    assert "drifted" in by["s1"].note and "full rsync" in by["s1"].note
    assert (good.addr, snap.id) in rep.served and (bad.addr, snap.id) not in rep.served
    assert f"incoming/{snap.id}.batch" not in _daemon_log(bad)
    want = tree_hash(img, deep=True)
    assert remote_hash(good, "current", deep=True) == want
    assert remote_hash(bad, "current", deep=True) == want
    assert _served_version(bad) == "v2"


def test_same_size_same_mtime_tamper_needs_deep_verify(env: Env) -> None:
    img = make_image(env.tmp / "img", files=4)
    pool, (h,) = _pool(env, 1)
    push(img, "base", pool=pool)
    f = Path(h.root) / "current" / "data" / "blob001"
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[10] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    (img / "VERSION").write_text("v2\n")
    store = ImageStore("demo", env.home)
    snap = store.take(img, "next")
    assert snap is not None
    res = Replicator(store, deep_verify=True).apply_one(h, snap)
    assert res.mode == "full" and "drifted" in res.note
    assert remote_hash(h, "current", deep=True) == tree_hash(img, deep=True)


def _batch_readers(h: LabShadow) -> list[int]:
    """``rsync --read-batch`` processes still alive in the shadow's network namespace."""
    ns_ino = os.stat(f"/run/netns/{h.ns}").st_ino
    out = []
    for pid in _procs_with(b"--read-batch"):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == ns_ino:
                out.append(pid)
        except OSError:
            pass
    return out


def _releases(h: LabShadow) -> list[str]:
    return sorted(os.listdir(Path(h.root) / "releases"))


def test_drifted_batch_fails_fast_and_shadow_stays_on_its_release(env: Env) -> None:
    """rsync refuses a batch for a destination that drifted, in one of two ways depending on
    its version: 3.2.x may hang at 0 % CPU after applying part of it (cut off by the time
    limit), 3.5 stops at once with a protocol error. Either way: failed fast, reported, the
    shadow on its whole previous release, nothing left of the attempt."""
    img = make_image(env.tmp / "img", files=6, size=1_000_000)
    pool, (h,) = _pool(env, 1)
    push(img, "base", pool=pool)
    before = h.current_release()
    # a file the delta patches disappears on the shadow (the drift)
    with open(img / "data" / "blob003", "r+b") as fh:
        fh.seek(500_000)
        fh.write(os.urandom(10_000))
    (Path(h.root) / "current" / "data" / "blob003").unlink()
    running = remote_hash(h, "current", deep=True)  # the release as it runs, drift included
    releases = _releases(h)
    store = ImageStore("demo", env.home, block_delta=True)  # a patch inside the file
    snap = store.take(img, "patch")
    assert snap is not None
    rep = Replicator(store, timeout=3)
    t0 = time.monotonic()
    res = rep.apply_one(h, snap, verify=False, allow_full=False)  # no checks: rsync must cope
    assert time.monotonic() - t0 < 10  # a hang is cut off at 3 s; a refusal is at once
    assert not res.ok and res.mode == "failed", res
    if "timed out" in res.note:  # the hang (rsync 3.2.x)
        assert res.note.startswith("batch timed out after 3 s and was killed"), res
    else:  # the refusal (rsync 3.5): rsync's own words, whatever they are, are in the report
        assert res.note.startswith("batch failed: "), res
        said = res.note.split(": ", 2)[-1]
        assert "rsync" in said and said != "no output", res
    assert h.current_release() == before == res.release  # never switched
    assert remote_hash(h, "current", deep=True) == running  # not touched
    assert _releases(h) == releases  # no half-applied staging tree left behind
    assert _served_version(h) == "v1"
    assert not _batch_readers(h)  # killed or exited, not left hanging
    # with verification the drift is seen first, and repaired by a full copy
    res = rep.apply_one(h, snap)
    assert res.ok and res.mode == "full" and "drifted" in res.note
    assert remote_hash(h, "current", deep=True) == tree_hash(img, deep=True)


def test_stalled_batch_stream_is_cut_off_by_the_timeout(env: Env) -> None:
    """The time limit itself, on any rsync version: the shadow is in step (rsync has nothing
    to refuse) but the batch stream stalls after its first 64 KiB, so ``--read-batch=-`` waits
    for input that does not come until long after the limit. The batch server's throttle
    (1 KiB/s: 64 s per chunk) makes a real stalled stream between real processes."""
    img = make_image(env.tmp / "img", files=3)
    pool, (h,) = _pool(env, 1)
    push(img, "base", pool=pool)
    before = h.current_release()
    releases = _releases(h)
    (img / "VERSION").write_text("v2\n")
    (img / "data" / "big").write_bytes(os.urandom(1_000_000))
    store = ImageStore("demo", env.home)
    snap = store.take(img, "big")
    assert snap is not None and snap.batch_bytes > 256 << 10  # more than the first chunk
    rep = Replicator(store, timeout=3, bwlimit_kbps=1, transport="tcp")
    t0 = time.monotonic()
    res = rep.apply_one(h, snap, allow_full=False)
    took = time.monotonic() - t0
    assert 3 <= took < 10, (took, res)  # waited for the limit, then cut off
    assert not res.ok and res.mode == "failed", res
    assert res.note.startswith("batch timed out after 3 s and was killed"), res
    assert not _batch_readers(h)  # the whole process group was killed
    assert h.current_release() == before
    assert _releases(h) == releases  # the half-applied staging tree is gone
    assert _served_version(h) == "v1"
    # an unthrottled retry goes through as a batch
    res = Replicator(store).apply_one(h, snap)
    assert res.ok and res.mode == "batch", res
    assert _served_version(h) == "v2"
    assert remote_hash(h, "current", deep=True) == tree_hash(img, deep=True)


@pytest.mark.parametrize("transport", ["tcp", "daemon"])
def test_killed_sync_leaves_every_shadow_on_its_previous_image(env: Env, transport: str) -> None:
    """Kill each shadow's transfer mid-way: the stream into --read-batch=- (tcp) or the rsync
    sending the batch file to the shadow's daemon."""
    img = make_image(env.tmp / "img", files=4)
    pool, hosts = _pool(env, 2)
    push(img, "base", pool=pool)
    before = [h.current_release() for h in hosts]
    (img / "VERSION").write_text("v2\n")
    (img / "data" / "big").write_bytes(os.urandom(6_000_000))
    store = ImageStore("demo", env.home)
    snap = store.take(img, "big")
    assert snap is not None
    rep = Replicator(store, timeout=60, bwlimit_kbps=1500, transport=transport)  # ~4 s each
    needle = (b"--read-batch=-" if transport == "tcp"
              else f"incoming/{snap.id}.batch".encode())
    out: list = []
    t = threading.Thread(target=lambda: out.extend(rep.apply(hosts, snap, allow_full=False)))
    t.start()
    killed: set[bytes] = set()  # destinations (one per shadow) whose transfer was killed
    deadline = time.monotonic() + 10
    while len(killed) < 2 and time.monotonic() < deadline:  # kill each transfer mid-way
        for pid in _procs_with(needle):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0] != b"rsync" or argv[-2] in killed:
                continue
            time.sleep(1.0)
            os.kill(pid, 9)
            killed.add(argv[-2])
        time.sleep(0.1)
    t.join(60)
    assert len(killed) == 2
    assert [r.ok for r in out] == [False, False], out
    assert [h.current_release() for h in hosts] == before
    assert [_served_version(h) for h in hosts] == ["v1", "v1"]
    # the next attempt works and switches both
    res = Replicator(store).apply(hosts, snap)
    assert all(r.ok for r in res) and {_served_version(h) for h in hosts} == {"v2"}


def test_rollback_to_an_earlier_snapshot(env: Env) -> None:
    img = make_image(env.tmp / "img", files=3)
    pool, hosts = _pool(env, 2)
    s1, _ = push(img, "base", pool=pool)
    (img / "VERSION").write_text("v2\n")
    push(img, "v2", pool=pool)
    assert {_served_version(h) for h in hosts} == {"v2"}
    store = ImageStore(load_manifest(img).name, env.home)
    assert s1 is not None
    res = Replicator(store).rollback(hosts, s1.id)
    assert all(r.ok and r.mode == "full" for r in res), res
    assert {_served_version(h) for h in hosts} == {"v1"}
    assert {release_snapshot(h.current_release()) for h in hosts} == {s1.id}


def test_snapshots_are_pruned_to_keep(env: Env) -> None:
    img = make_image(env.tmp / "img", files=2)
    store = ImageStore("demo", env.home, keep=3)
    for i in range(5):
        (img / "VERSION").write_text(f"v{i}\n")
        assert store.take(img, f"step {i}") is not None
    assert [s.id for s in store.snapshots()] == ["000003", "000004", "000005"]
    shutil.rmtree(img)


def test_concurrent_pushes_never_leave_an_older_snapshot_current(env: Env) -> None:
    img = make_image(env.tmp / "img", files=3)
    pool, (h,) = _pool(env, 1)
    push(img, "base", pool=pool)
    store = ImageStore("demo", env.home)
    (img / "VERSION").write_text("v2\n")
    s2 = store.take(img, "two")
    (img / "VERSION").write_text("v3\n")
    s3 = store.take(img, "three")
    assert s2 and s3
    rep = Replicator(store)
    # the newer push wins the race; the older one must not switch the shadow back
    assert rep.apply_one(h, s3).ok
    late = rep.apply_one(h, s2)
    assert late.ok and late.mode == "unchanged" and "newer snapshot 000003" in late.note
    assert release_snapshot(h.current_release()) == s3.id
    # both at once, from two threads: serialised per shadow, the newest ends up current
    (img / "VERSION").write_text("v4\n")
    s4 = store.take(img, "four")
    (img / "VERSION").write_text("v5\n")
    s5 = store.take(img, "five")
    assert s4 and s5
    out: list = []
    ts = [threading.Thread(target=lambda s=s: out.append(rep.apply_one(h, s))) for s in (s4, s5)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert all(r.ok for r in out) and len(out) == 2
    assert release_snapshot(h.current_release()) == s5.id
    assert _served_version(h) == "v5"
