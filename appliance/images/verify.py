"""Is each shadow still what it claims to run? Checked on demand, not only by the next push.

A push verifies a shadow before it sends a delta, but a build that changes nothing sends
nothing, so a shadow tampered with between builds (or damaged by its own service) would go
unseen until the next real change. ``shadowtap shadow verify`` asks every shadow for the tree
hash of its current release (one round trip; ``deep`` hashes content too, which is what catches
a change that kept size and mtime) and compares it with the snapshot the release was made from.
Only when they differ does it fetch the listing (a second round trip) to name the files, so the
common case costs one hash per shadow.

Run-time files the image's ``ignore`` names are not the image's and are left out, exactly as a
push leaves them out (``appliance.images.ignore``). ``repair`` gives a drifted shadow a full copy of
its own snapshot (not the latest: a shadow put back by ``image rollback`` stays there).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from appliance.images.imagesync import (
    LIST_SCRIPT,
    ImageError,
    ImageStore,
    Listing,
    Replicator,
    Snapshot,
    parse_listing,
    release_snapshot,
    remote_hash,
    rule_args,
    tree_listing,
)
from appliance.images.shadows import ShadowHost

IN_STEP = "in step"
DRIFTED = "drifted"


@dataclass
class Verdict:
    """One shadow's answer: ``state`` is in step, drifted, no release, unreachable or
    unverifiable (its snapshot is no longer kept)."""

    shadow: str
    image: str
    state: str
    release: str | None = None
    snapshot: str | None = None
    latest: str | None = None
    files: list[str] = field(default_factory=list)  # "changed: p", "added: p", "missing: p"
    note: str = ""
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return self.state == IN_STEP


def _meta_fields(meta: str) -> dict[str, str]:
    f = meta.split(" ")
    if f[0] == "d":
        return {"type": "d", "mode": f[1], "owner": f[2] if len(f) > 2 else ""}
    keys = ("type", "mode", "owner", "size", "mtime", "link")
    return dict(zip(keys, f + [""] * (len(keys) - len(f)), strict=False))


def differences(want: Listing, got: Listing) -> list[str]:
    """What differs between the snapshot's listing and the shadow's, one line per path."""
    out = []
    for p in sorted(set(want.meta) | set(got.meta)):
        if p not in got.meta:
            out.append(f"missing: {p}")
        elif p not in want.meta:
            out.append(f"added: {p}")
        elif want.meta[p] != got.meta[p]:
            a, b = _meta_fields(want.meta[p]), _meta_fields(got.meta[p])
            what = [k for k in ("type", "mode", "owner", "size", "mtime", "link")
                    if a.get(k) != b.get(k)]
            out.append(f"changed: {p} ({', '.join(what)})")
        elif (want.content is not None and got.content is not None
              and want.content.get(p) != got.content.get(p)):
            out.append(f"changed: {p} (content)")
    return out


def verify_one(host: ShadowHost, store: ImageStore, *, deep: bool = False,
               timeout: float = 120.0) -> Verdict:
    """Hash the shadow's current release against its snapshot; name the files if it drifted."""
    v = Verdict(host.name, store.name, "unreachable")
    latest = store.latest()
    v.latest = latest.id if latest else None
    r = host.exec('readlink "$1/current" 2>/dev/null || true', host.root, timeout=timeout)
    if not r.ok:
        v.note = f"cannot run a command on it: {r.why()}"
        return v
    link = r.stdout.strip()
    if not link:
        v.state, v.note = "no release", "nothing pushed yet: 'shadowtap image push' it"
        return v
    v.release = link.rsplit("/", 1)[-1]
    v.snapshot = release_snapshot(v.release)
    try:
        snap = store.get(v.snapshot or "")
    except ImageError:
        v.state = "unverifiable"
        v.note = (f"snapshot {v.snapshot} is no longer kept; push or roll back "
                  "to give it one that is")
        return v
    rep = Replicator(store, deep_verify=deep, timeout=timeout, restart_service=False)
    got = remote_hash(host, f"releases/{v.release}", deep, timeout, rules=snap.rules)
    if got is None:
        v.note = "the tree hash did not run on the shadow"
        return v
    if v.latest and v.snapshot != v.latest:
        v.note = f"latest snapshot is {v.latest}"
    if got == rep.expected(snap.id):
        v.state = IN_STEP
        return v
    v.state = DRIFTED
    v.files = _drifted_files(host, store, snap, v.release, deep, timeout)
    return v


def _drifted_files(host: ShadowHost, store: ImageStore, snap: Snapshot, release: str,
                   deep: bool, timeout: float) -> list[str]:
    want = tree_listing(store.tree(snap.id), snap.rules, deep)
    r = host.exec(LIST_SCRIPT, f"{host.root}/releases/{release}", *rule_args(snap.rules),
                  "deep" if deep else "", timeout=timeout)
    if not r.ok:
        return [f"(could not list the release: {r.why()})"]
    return differences(want, parse_listing(r.stdout)) or ["(the hashes differ; no entry does)"]


def repair(host: ShadowHost, store: ImageStore, v: Verdict, *, deep: bool = False,
           timeout: float = 120.0) -> Verdict:
    """A full copy of the shadow's own snapshot, verified, switched to, service restarted."""
    if v.state != DRIFTED or v.snapshot is None:
        return v
    rep = Replicator(store, deep_verify=deep, timeout=timeout)
    res = rep.repair(host, store.get(v.snapshot), reason="verify --repair: drifted")
    v.repaired = res.ok
    v.note = res.note if res.ok else f"repair failed: {res.note}"
    return v


def verify(hosts: list[ShadowHost], home: Any, *, deep: bool = False, fix: bool = False,
           timeout: float = 120.0) -> list[Verdict]:
    """Every shadow in parallel, each against the snapshot its release was made from."""
    def one(h: ShadowHost) -> Verdict:
        store = ImageStore(str(h.rec.get("image")), home)
        v = verify_one(h, store, deep=deep, timeout=timeout)
        return repair(h, store, v, deep=deep, timeout=timeout) if fix else v

    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as ex:
        return list(ex.map(one, hosts))
