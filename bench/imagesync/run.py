"""Benchmark: a 20 MB change in a 500 MB image, to 1, 4 and 8 shadows, three ways, one run.

Why (issue 8): the delta is computed once (``rsync --only-write-batch``) and replayed on every
shadow; the claim to check is that this, *with* everything that makes it safe (verify the
shadow's tree hash, hard-linked staging copy, hash again, atomic symlink switch), is still
faster than the plain way (one ``rsync --no-whole-file`` from the build tree per shadow, which
repeats the sender's checksum and delta search per shadow and switches nothing atomically), and
far faster than a full copy. Targets: 4 shadows in under 2 s; change to tested verdict under
30 s.

What is timed, for each shadow count N (lab shadows: fenced namespaces, rsync daemons inside,
every byte over a veth), each way from the same starting state:

* ``batch``: ``ImageStore.take`` (snapshot + batch) + ``Replicator.apply`` to N shadows in
  parallel, until every shadow has switched (service restarts are not part of the switch);
* ``plain rsync``: N parallel ``rsync -a --delete --no-whole-file`` runs from the build tree to
  a copy on each shadow (through its daemon);
* ``full copy``: N parallel copies of the whole image into an empty directory on each shadow.

Then one ``build()`` on 4 shadows with checks (HTTP smoke on all, a pytest suite, the security
scan, a 5-second locust run) times change -> tested verdict.

Run as root: ``.venv/bin/python bench/imagesync/run.py [--image-mb 500] [--change-mb 20]
[--shadows 1,4,8] [--rounds 3] [--no-docs]``. Rewrites only its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.common import update_docs  # noqa: E402

FILE_MB = 2

SUITE = '''
import os, urllib.request

def test_version():
    u = os.environ["SHADOW_URL"] + "/VERSION"
    assert urllib.request.urlopen(u, timeout=5).read().startswith(b"r")
'''
LOCUST = '''
from locust import HttpUser, constant, task

class U(HttpUser):
    wait_time = constant(0.05)

    @task
    def v(self):
        self.client.get("/VERSION")
'''
CHECKS = """
checks:
  - {name: smoke, type: http, path: /VERSION, status: 200}
  - {name: api, type: pytest, path: suite}
  - {name: security, type: security, allowed_ports: [8080]}
  - {name: load, type: locust, locustfile: load.py, users: 4, duration: 5s, p95_ms: 1000}
"""



def make_image(root: Path, mb: int) -> list[Path]:
    (root / "data").mkdir(parents=True)
    (root / "shadowtap-image.yaml").write_text(
        "name: bench\nservice: {command: 'exec python3 -m http.server 8080', port: 8080, "
        "health: /VERSION}\n")
    (root / "VERSION").write_text("r0\n")
    files = []
    for i in range(mb // FILE_MB):
        p = root / "data" / f"f{i:04d}"
        p.write_bytes(os.urandom(FILE_MB << 20))
        files.append(p)
    return files


def change(files: list[Path], mb: int, round_no: int, img: Path) -> None:
    """Rewrite ``mb`` of the image (whole files, new content: all of it must travel)."""
    n = max(1, mb // FILE_MB)
    start = (round_no * n) % len(files)
    for p in (files[(start + k) % len(files)] for k in range(n)):
        p.write_bytes(os.urandom(FILE_MB << 20))
    (img / "VERSION").write_text(f"r{round_no}\n")


def parallel(hosts: list[Any], fn: Any) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(hosts)) as ex:
        return list(ex.map(fn, hosts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-mb", type=int, default=500)
    ap.add_argument("--change-mb", type=int, default=20)
    ap.add_argument("--shadows", default="1,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("error: run as root (lab shadows are network namespaces)", file=sys.stderr)
        return 2
    counts = [int(x) for x in args.shadows.split(",")]
    work = Path(tempfile.mkdtemp(prefix="st-bench-imagesync-"))
    os.environ["SHADOWTAP_HOME"] = str(work / "home")
    os.environ["SHADOWTAP_STATE_DIR"] = str(work / "state")
    from appliance.images.feedback import build
    from appliance.images.imagesync import ImageStore, Replicator
    from appliance.images.shadows import Pool

    prefix = f"stb{secrets.token_hex(2)}-"
    pool = Pool(work / "home", prefix=prefix)
    results: dict[tuple[str, int], list[float]] = {}
    notes: list[str] = []
    try:
        img = work / "img"
        t0 = time.monotonic()
        files = make_image(img, args.image_mb)
        print(f"image: {args.image_mb} MB in {len(files)} files ({time.monotonic() - t0:.1f} s)")
        hosts = [pool.create(f"b{i}", image="bench") for i in range(max(counts))]
        store = ImageStore("bench", work / "home", keep=3)
        rep = Replicator(store, restart_service=False, timeout=300)
        base = store.take(img, "base")
        assert base is not None
        t0 = time.monotonic()
        res = rep.apply(hosts, base)
        assert all(r.ok for r in res), res
        print(f"initial full sync of {len(hosts)} shadows: {time.monotonic() - t0:.1f} s")
        # the plain way keeps its own copy on each shadow, in step with the image
        plain = parallel(hosts, lambda h: h.rsync(f"{img}/", "plain/", timeout=600,
                                                  extra=["--delete"]))
        assert all(r.ok for r in plain), [r.why() for r in plain if not r.ok]

        rnd = 0
        for _ in range(args.rounds):
            for n in counts:
                sel = hosts[:n]
                rnd += 1
                change(files, args.change_mb, rnd, img)
                # batch: snapshot + delta once, then N shadows verified, staged, switched
                t0 = time.monotonic()
                snap = store.take(img, f"round {rnd}")
                assert snap is not None
                res = rep.apply(sel, snap)
                dt_batch = time.monotonic() - t0
                bad = [r for r in res if not r.ok or r.mode != "batch"]
                if bad:
                    notes.append(f"round {rnd}: {[(r.shadow, r.mode, r.note) for r in bad]}")
                results.setdefault(("batch", n), []).append(dt_batch)
                results.setdefault(("snapshot", n), []).append(snap.snapshot_seconds)
                # plain rsync from the build tree, per shadow, in parallel
                t0 = time.monotonic()
                rr = parallel(sel, lambda h: h.rsync(f"{img}/", "plain/", timeout=600,
                                                     extra=["--delete", "--no-whole-file"]))
                results.setdefault(("plain rsync", n), []).append(time.monotonic() - t0)
                assert all(r.ok for r in rr), [r.why() for r in rr if not r.ok]
                # full copy into an empty tree (a reference: measured in the first round only,
                # it writes N x the image to disk)
                if ("full copy", n) not in results:
                    t0 = time.monotonic()
                    rr = parallel(sel, lambda h: h.rsync(f"{img}/", "full/", timeout=600,
                                                         extra=["--whole-file"]))
                    results[("full copy", n)] = [time.monotonic() - t0]
                    assert all(r.ok for r in rr)
                    parallel(sel, lambda h: h.exec('rm -rf "$1/full"', h.root, timeout=120))
                # shadows not in this round catch up (untimed) so every round starts level
                rest = hosts[n:]
                if rest:
                    rep.apply(rest, snap)
                    parallel(rest, lambda h: h.rsync(f"{img}/", "plain/", timeout=600,
                                                     extra=["--delete"]))
                print(f"round {rnd}: n={n} batch {dt_batch:.2f} s (delta "
                      f"{snap.batch_bytes / 1e6:.1f} MB)", flush=True)
        parallel(hosts, lambda h: h.exec('rm -rf "$1/full" "$1/plain"', h.root, timeout=120))

        # change -> tested verdict, 4 shadows with their service
        for h in hosts[4:]:
            pool.delete(h.name)
        cdir = work / "checks"
        (cdir / "suite").mkdir(parents=True)
        (cdir / "suite" / "test_v.py").write_text(SUITE)
        (cdir / "load.py").write_text(LOCUST)
        (cdir / "checks.yaml").write_text(CHECKS)
        Replicator(store).apply(hosts[:4], store.latest())  # type: ignore[arg-type]
        rnd += 1
        change(files, args.change_mb, rnd, img)
        b = build(img, "verdict", pool=pool, checks_file=cdir / "checks.yaml")
        verdict = (b.verdict_seconds, b.push_seconds, b.ok, [c.name for c in b.checks if not c.ok])
        per_check = ", ".join(f"{c.name}@{c.shadow} {c.seconds:.1f} s" for c in b.checks)
        load = os.getloadavg()[0]
        print(f"verdict: {b.verdict_seconds:.1f} s (push incl. service restarts "
              f"{b.push_seconds:.1f} s), ok={b.ok} {verdict[3]}")
    finally:
        pool.destroy()
        subprocess.run(["sh", "-c", f"for n in $(ip netns | grep -o '^{prefix}[^ ]*'); do "
                        "ip netns del $n; done"], check=False)
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    lines = [
        f"Image sync (`bench/imagesync/run.py`, {dt.date.today()}, {platform.node()}, "
        f"{os.cpu_count()} cores): a {args.change_mb} MB change (new content in "
        f"{args.change_mb // FILE_MB} files) in a {args.image_mb} MB image, to N lab shadows "
        f"(fenced namespaces, rsync daemon inside, over veths), all N in parallel; median of "
        f"{args.rounds} rounds (full copy: one), seconds from push to every shadow done.",
        "",
        "| shadows | batch delta, total | of which snapshot + batch (once) | plain rsync per "
        "shadow | full copy | plain / batch | full / batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in counts:
        b_, p_, f_ = med[("batch", n)], med[("plain rsync", n)], med[("full copy", n)]
        lines.append(f"| {n} | {b_:.2f} | {med[('snapshot', n)]:.2f} | {p_:.2f} | {f_:.2f} | "
                     f"{p_ / b_:.2f}× | {f_ / b_:.1f}× |")
    lines += [
        "",
        "- batch = snapshot of the build tree and the batch file (once), then per shadow in "
        "parallel: tree-hash check and hard-linked staging copy (one round trip), the batch "
        "streamed over the veth into `rsync --read-batch=-`, tree-hash check, symlink switch "
        "(a second round trip). Plain rsync (`rsync -a --delete --no-whole-file` from the "
        "build tree to each shadow's daemon) checks nothing, keeps no snapshot and switches "
        "nothing atomically: a shadow running from its tree would see a half-updated image.",
        f"- change → tested verdict on 4 shadows (push with service restarts, HTTP smoke on all, "
        f"pytest, security scan, 5 s locust): **{verdict[0]:.1f} s** (push part "
        f"{verdict[1]:.1f} s); verdict {'pass' if verdict[2] else 'FAIL ' + str(verdict[3])}. "
        f"Checks one after another: {per_check}. 1-min load average {load:.1f} at the end.",
    ]
    if notes:
        lines.append(f"- rounds where a shadow did not take the batch: {'; '.join(notes)}")
    section = "\n".join(lines)
    print("\n" + section)
    if not args.no_docs:
        update_docs("imagesync", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
