"""Images, snapshots and deltas: keep every shadow in step with an image while it is built.

An *image* is a directory tree a build writes (a rootfs, an application tree) with a manifest,
``shadowtap-image.yaml``, at its root that names it and declares its service::

    name: shop
    service: {command: "python3 -m http.server 8080", port: 8080, health: /}
    checks: checks.yaml          # optional, relative to the image root
    ignore: ["*.tmp", ".git/"]   # never pushed; on a shadow: run-time files (appliance.images.ignore)

Why the machinery is shaped the way it is:

* **A delta is computed once.** ``rsync --only-write-batch`` against the last snapshot writes a
  batch file (what changed, as rsync deltas); each shadow replays it with ``--read-batch``. The
  sender's work (checksums, delta search) is not repeated per shadow: measured here, 4 shadows
  cost 0.62 s instead of 0.85 s (docs/benchmarks.md has ours).
* **Snapshots are frozen copies.** The build keeps writing while we work, so the delta is taken
  between two snapshots (hard-linked to each other, so unchanged files cost nothing), never
  against the live build directory. The last N are kept for rollback.
* **A batch is only ever run where it fits.** ``--read-batch`` on a drifted destination was seen
  to hang forever after applying part of the batch (rsync 3.2.x; 3.5 refuses such a batch at
  once with "protocol incompatibility (code 2)"), and a drifted file of the same size and
  mtime is silently left wrong. So each shadow is checked first (its release is the batch's
  parent and its tree hashes to the parent's manifest hash), the batch is applied to a *staging*
  copy, the result is hashed again, and only then does ``current`` move: a symlink replaced by
  rename, atomic. Every child runs under a hard time limit (the process group is killed). A
  shadow that fails any of this gets a full rsync of the snapshot instead, and the report says
  why (in rsync's own words when rsync refused; a staging tree left by a failed batch is
  removed). A shadow is therefore always on a whole release, old or new, never half of one.
* **Staging copies are hard links, with the files the delta touches un-shared first.** A
  ``cp -al`` copy costs no data, but rsync changes metadata (mode, mtime) in place, which would
  reach the running release through a shared inode; the paths that differ between the two
  snapshot manifests get their own inode in staging before the batch runs.

The tree hash (``TREE_SCRIPT``) is a POSIX sh + GNU find pipeline run the same way on the
appliance and on every shadow, so lab namespaces and real VMs are verified by one definition:
type, mode, size, mtime (ns) and link target of every entry; with ``deep`` the content too.
Paths the manifest's ``ignore`` matches are left out: what a service writes into its release
at run time (a cache, a log) is not drift. They are carried into the next release, except
Python bytecode (see ``NO_CARRY``); a service's own data belongs in ``$SHADOW_DATA``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance import procs
from appliance.images.ignore import IgnoreError, IgnoreRules
from appliance.images.shadows import ShadowHost, home
from netconfig import state

MANIFEST_NAME = "shadowtap-image.yaml"
# -@-1: mtimes compared to the nanosecond; rsync otherwise treats a file rewritten within the
# same second, with the same size, as unchanged (a build does that all the time).
RSYNC_DELTA_OPTS = ["-a", "--delete", "--modify-window=-1"]

# The ignore rules reach the snippets as two EREs (appliance.images.ignore): directories only, any
# type; "^$" matches nothing. A pruned entry is not hashed and find does not descend into it.
# With no rules the records are those of earlier versions, so recorded hashes stay valid.
TREE_FN = r"""
tree_hash() (
  cd "$1" || exit 3
  dre=${3:-'^$'} are=${4:-'^$'}
  {
    find . -mindepth 1 -regextype posix-extended \
      \( \( -type d -regex "$dre" \) -o -regex "$are" \) -prune -o \
      \( -type d -printf 'd %m %U:%G\t%P\0' \) -o -printf '%y %m %U:%G %s %T@ %l\t%P\0' \
      | LC_ALL=C sort -z
    if [ "$2" = deep ]; then
      find . -regextype posix-extended \( \( -type d -regex "$dre" \) -o -regex "$are" \) \
        -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum
    fi
  } | sha256sum | cut -c1-64
)
"""
TREE_SCRIPT = TREE_FN + 'tree_hash "$1" "$2" "$3" "$4"\n'

# $1 dir, $2 dirs-only ERE, $3 any-type ERE, $4 deep|"": every entry the hash counts, as
# "meta<TAB>path" records; with deep, an empty record, then "sha256  ./path" records.
LIST_SCRIPT = r"""
cd "$1" || exit 3
dre=${2:-'^$'} are=${3:-'^$'}
find . -mindepth 1 -regextype posix-extended \
  \( \( -type d -regex "$dre" \) -o -regex "$are" \) -prune -o \
  \( -type d -printf 'd %m %U:%G\t%P\0' \) -o -printf '%y %m %U:%G %s %T@ %l\t%P\0'
if [ "$4" = deep ]; then
  printf '\0'
  find . -regextype posix-extended \( \( -type d -regex "$dre" \) -o -regex "$are" \) \
    -prune -o -type f -print0 | xargs -0r sha256sum -z
fi
"""

# One round trip per phase (an ssh round trip to a VM costs far more than the work):
#
# STAGE: $1 root, $2 snapshot the current release must be ("*": any), $3 its expected hash
# ("-": do not check), $4 new release dir, $5 deep|"", $6 $7 that snapshot's ignore EREs.
# Prints "ok:<cur>", or exits 10 (no release), 11 (at another snapshot), 12 (drifted). Then a
# hard-linked staging copy (run-time files the rules ignore come along: carried to the next
# release), less the Python bytecode among them (NO_CARRY); stdin: NUL-separated paths whose
# metadata (not content) the delta changes: rsync would change them in place, through the inode
# the running release shares, so they get their own inode first. Changed content always
# arrives in a new inode (temp file + rename).
STAGE_SCRIPT = TREE_FN + r"""
cd "$1" || exit 3
cur=$(readlink current 2>/dev/null) || { echo none; exit 10; }
cur=${cur##*/}
case "$cur" in "$2"~*) ;; *) [ "$2" = "*" ] || { echo "at:$cur"; exit 11; } ;; esac
if [ "$3" != "-" ]; then
  h=$(tree_hash "$1/releases/$cur" "$5" "$6" "$7")
  [ "$h" = "$3" ] || { echo "drift:$cur"; exit 12; }
fi
cd "$1/releases" || exit 3
rm -rf -- "$4.staging" && cp -al -- "$cur" "$4.staging" || exit 4
cd "$4.staging" || exit 5
if [ -n "$6$7" ]; then
  find . -mindepth 1 -regextype posix-extended \
    \( \( -type d -regex "$6" \) -o -regex "$7" \) -prune \
    \( -name __pycache__ -o -name '*.py[co]' \) -exec rm -rf -- {} + || exit 4
fi
xargs -0r -n 64 sh -c 'for p; do
  if [ -f "$p" ] && [ ! -L "$p" ]; then
    cp -p -- "$p" "$p.st~" && mv -f -- "$p.st~" "$p" || exit 1
  fi; done' sh || exit 6
echo "ok:$cur"
"""

# APPLY: $1 root, $2 snapshot id, $3 new release dir, $4 --whole-file|--no-whole-file,
# $5 expected hash of the result ("-": do not check), $6 deep|"", $7 releases kept besides
# current, $8 where the batch comes from: "tcp:ADDR:PORT" (streamed from the appliance's batch
# server over the shadow's link: bash's /dev/tcp), "stdin" (ssh carries it), else
# "incoming/<id>.batch" sent earlier through the rsync daemon; $9 the snapshot's ignore
# patterns, one per line (as rsync --exclude they keep --delete off the run-time files they
# match), ${10} ${11} the same as EREs (for the hash).
# Exits 20 (batch failed), 21 (result differs from the snapshot), else switches.
APPLY_SCRIPT = TREE_FN + r"""
root=$1 sid=$2 new=$3 wf=$4 want=$5 deep=$6 keep=$7 src=$8 ign=$9 dre=${10} are=${11}
cd "$root" || exit 3
set --
while IFS= read -r p; do [ -n "$p" ] && set -- "$@" "--exclude=$p"; done <<IGNORE_RULES
$ign
IGNORE_RULES
case "$src" in
  tcp:*)
    bash -c 'exec 3<>"/dev/tcp/${1%:*}/${1##*:}" && printf "%s\n" "$2" >&3 &&
      exec rsync -a --delete "$3" --modify-window=-1 "${@:5}" --read-batch=- "$4" <&3' \
      bash "${src#tcp:}" "$sid" "$wf" "releases/$new.staging/" "$@" || exit 20 ;;
  stdin)
    rsync -a --delete "$wf" --modify-window=-1 "$@" --read-batch=- \
      "releases/$new.staging/" || exit 20 ;;
  *)
    rsync -a --delete "$wf" --modify-window=-1 "$@" --read-batch="incoming/$sid.batch" \
      "releases/$new.staging/" || exit 20 ;;
esac
if [ "$want" != "-" ]; then
  h=$(tree_hash "$root/releases/$new.staging" "$deep" "$dre" "$are")
  [ "$h" = "$want" ] || exit 21
fi
set -- "$root" "$new" "$keep"
"""

# FRESH (the staging tree of a full copy): $1 root, $2 new release dir, $3 $4 the snapshot's
# ignore EREs. The run-time files of the current release that the rules ignore are carried
# into the empty staging tree (hard links); rsync then fills in the image around them.
#
# NO_CARRY: Python bytecode is never carried. CPython trusts a .pyc whose source has the same
# size and the same mtime in whole seconds; a module rewritten at the same size within the
# second (builds do that) would run the old code in the new release.
FRESH_SCRIPT = r"""
cd "$1" || exit 3
mkdir -p releases incoming && rm -rf -- "releases/$2.staging" && mkdir "releases/$2.staging" \
  || exit 4
cur=$(readlink current 2>/dev/null) || exit 0
[ -n "$3$4" ] || exit 0
dre=${3:-'^$'} are=${4:-'^$'}
cd "releases/${cur##*/}" 2>/dev/null || exit 0
find . -mindepth 1 -regextype posix-extended \
  \( \( -type d -regex "$dre" \) -o -regex "$are" \) -prune \
  ! -name __pycache__ ! -name '*.py[co]' -print0 \
  | xargs -0r cp -al --parents -t "$1/releases/$2.staging" || exit 5
"""

# $1 root, $2 new release dir, $3 releases to keep besides current. The bytecode cache
# (PYTHONPYCACHEPREFIX, see shadows.SVC_START) is of the releases that ran before: dropped.
SWITCH_BODY = r"""
cd "$1" || exit 3
mv -T -- "releases/$2.staging" "releases/$2" || exit 4
ln -sfn -- "releases/$2" .current.new && mv -T -- .current.new current || exit 5
rm -f incoming/*.batch
rm -rf cache/python
ls -1 releases | LC_ALL=C sort | grep -vx -- "$2" | head -n -"$3" | while IFS= read -r d; do
  rm -rf -- "releases/$d"; done
exit 0
"""
SWITCH_SCRIPT = SWITCH_BODY
APPLY_SCRIPT += SWITCH_BODY


class ImageError(Exception):
    """A user-facing failure of image handling."""


# ---- manifest ---------------------------------------------------------------------------------

@dataclass
class ImageManifest:
    """What an image says about itself."""

    name: str
    service_command: str | None = None
    service_port: int | None = None
    health_path: str = "/"
    checks: str | None = None
    ignore: list[str] = field(default_factory=list)


def load_manifest(root: Path) -> ImageManifest:
    """Read ``shadowtap-image.yaml`` (optional: without it the image is named after its dir)."""
    p = root / MANIFEST_NAME
    if not root.is_dir():
        raise ImageError(f"{root}: not a directory")
    if not p.exists():
        return ImageManifest(name=_clean_name(root.resolve().name))
    import strictconf  # unknown keys are errors with their path and a did-you-mean

    d = strictconf.load(p, {"name": str, "checks": str, "ignore": strictconf.ANY,
                            "service": {"command": (str, [(str, float)]), "port": int,
                                        "health": str},
                            # read by other tools (demo, tests): known, not used here
                            "version": (str, float), "description": str, "start": str,
                            "shadow_start": str, "health": str},
                        what="image manifest", error=ImageError) or {}
    if not isinstance(d, dict):
        raise ImageError(f"{p}: the manifest must be a mapping (name, service, checks)")
    svc = d.get("service") or {}
    if not isinstance(svc, dict):
        raise ImageError(f"{p}: 'service' must be a mapping with 'command' and 'port'")
    cmd = svc.get("command")
    if isinstance(cmd, list):
        import shlex

        cmd = shlex.join(str(c) for c in cmd)
    return ImageManifest(
        name=_clean_name(str(d.get("name") or root.resolve().name)),
        service_command=cmd, service_port=int(svc["port"]) if svc.get("port") else None,
        health_path=str(svc.get("health", "/")), checks=d.get("checks"),
        ignore=list(_manifest_rules(p, d.get("ignore")).patterns))


def _manifest_rules(p: Path, raw: Any) -> IgnoreRules:
    if raw is None:
        return IgnoreRules()
    if not isinstance(raw, list):
        raise ImageError(f"{p}: 'ignore' must be a list of patterns, e.g. "
                         "['__pycache__/', '*.log']")
    try:
        return IgnoreRules.parse(raw, f"{p}: ignore")
    except IgnoreError as e:
        raise ImageError(str(e)) from None


def _clean_name(s: str) -> str:
    import re

    return re.sub(r"[^a-z0-9-]+", "-", s.lower()).strip("-") or "image"


def ignored(rel: str, patterns: Iterable[str], is_dir: bool | None = None) -> bool:
    """Does a change to ``rel`` (path relative to the image) not count? rsync's rules."""
    return IgnoreRules.parse(patterns).matches(rel, is_dir)


# ---- tree hashing -----------------------------------------------------------------------------

def rule_args(rules: IgnoreRules | None) -> tuple[str, str]:
    """The two EREs the snippets take ("" and "": nothing is ignored)."""
    return rules.find_regexes() if rules else ("", "")


def tree_hash(path: Path, deep: bool = False, timeout: float = 300,
              rules: IgnoreRules | None = None) -> str:
    """The manifest hash of a local tree (same definition as on the shadows)."""
    r = procs.run(["sh", "-c", TREE_SCRIPT, "sh", str(path), "deep" if deep else "",
                   *rule_args(rules)], timeout=timeout)
    if not r.ok:
        raise ImageError(f"cannot hash {path}: {r.why()}")
    return r.stdout.strip()


@dataclass
class Listing:
    """What a tree hash counts, entry by entry: to name the files that differ."""

    meta: dict[str, str]  # path -> 'type mode owner size mtime link'
    content: dict[str, str] | None = None  # path -> sha256 (deep listings)


def parse_listing(out: str) -> Listing:
    """The output of ``LIST_SCRIPT`` (the same on the appliance and on a shadow)."""
    recs = out.split("\0")
    cut = recs[:-1].index("") if "" in recs[:-1] else None  # the empty record: deep follows
    meta = {}
    for rec in recs[:cut]:
        if rec:
            m, _, rel = rec.partition("\t")
            meta[rel] = m
    if cut is None:
        return Listing(meta)
    content = {}
    for rec in recs[cut + 1:]:
        if len(rec) > 66:  # "<64 hex>  ./path" (or " *./path")
            content[rec[66:].removeprefix("./")] = rec[:64]
    return Listing(meta, content)


def tree_listing(path: Path, rules: IgnoreRules | None = None, deep: bool = False) -> Listing:
    """Every entry of a local tree the hash counts (to name what a delta or a drift changed)."""
    r = procs.run(["sh", "-c", LIST_SCRIPT, "sh", str(path), *rule_args(rules),
                   "deep" if deep else ""], timeout=300)
    if not r.ok:
        raise ImageError(f"cannot list {path}: {r.why()}")
    return parse_listing(r.stdout)


def _size_mtime(meta: str) -> tuple[str, ...]:
    """(type, size, mtime) of a listing entry: equal means rsync will not rewrite the content."""
    f = meta.split(" ")
    return (f[0], f[3], f[4]) if f[0] != "d" and len(f) >= 5 else (f[0],)


def remote_hash(host: ShadowHost, rel: str, deep: bool = False, timeout: float = 120,
                rules: IgnoreRules | None = None) -> str | None:
    """The tree hash of ``root/rel`` on the shadow, run there (None: it could not be run)."""
    r = host.exec(TREE_SCRIPT, f"{host.root}/{rel}", "deep" if deep else "", *rule_args(rules),
                  timeout=timeout)
    return r.stdout.strip() if r.ok else None


# ---- snapshots --------------------------------------------------------------------------------

@dataclass
class Snapshot:
    """One frozen state of an image, and the delta that leads to it from its parent."""

    id: str
    image: str
    hash: str
    parent: str | None
    created: float
    stage: str
    batch_bytes: int = 0
    changed: list[str] = field(default_factory=list)
    meta_only: list[str] = field(default_factory=list)
    block_delta: bool = False
    removed: list[str] = field(default_factory=list)
    snapshot_seconds: float = 0.0
    ignore: list[str] = field(default_factory=list)  # the manifest's, when it was taken

    @property
    def rules(self) -> IgnoreRules:
        """What a shadow's copy of this snapshot may hold besides it (run-time files)."""
        return IgnoreRules(tuple(self.ignore))


class ImageStore:
    """Snapshots of one image under ``$SHADOWTAP_HOME/images/<name>``."""

    def __init__(self, name: str, root: Path | None = None, keep: int = 5,
                 block_delta: bool = False) -> None:
        """``block_delta``: rsync's rolling-checksum delta inside changed files. Off by default:
        measured here it made writing the batch ~5x slower for new content (the search finds
        nothing) while on a LAN or veth the bytes saved cost less than the CPU; turn it on for
        images with big files changed in small places, over slow links."""
        self.name = name
        self.block_delta = block_delta
        self.dir = (root or home()) / "images" / name
        self.keep = max(2, keep)
        self._lock = threading.Lock()

    def tree(self, sid: str) -> Path:
        return self.dir / "snapshots" / sid

    def batch(self, sid: str) -> Path:
        return self.dir / "batches" / f"{sid}.batch"

    def snapshots(self) -> list[Snapshot]:
        d = self.dir / "snapshots"
        if not d.is_dir():
            return []
        out = []
        for p in sorted(d.glob("*.json")):
            try:
                out.append(Snapshot(**json.loads(p.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return [s for s in out if self.tree(s.id).is_dir()]

    def latest(self) -> Snapshot | None:
        snaps = self.snapshots()
        return snaps[-1] if snaps else None

    def get(self, sid: str) -> Snapshot:
        for s in self.snapshots():
            if s.id == sid:
                return s
        have = ", ".join(s.id for s in self.snapshots()) or "none"
        raise ImageError(f"image {self.name} has no snapshot {sid!r} (kept: {have})")

    def take(self, src: Path, stage: str, ignore: Iterable[str] | IgnoreRules = ()
             ) -> Snapshot | None:
        """Freeze ``src`` as a new snapshot and write the delta from the last one.

        Returns None when nothing significant changed (the tree hashes as the last snapshot).
        The hash leaves out what ``ignore`` does, as every shadow's will.
        """
        rules = ignore if isinstance(ignore, IgnoreRules) else IgnoreRules.parse(ignore)
        t0 = time.monotonic()
        with self._lock, state.locked(self.dir / "store"):
            parent = self.latest()
            (self.dir / "snapshots").mkdir(parents=True, exist_ok=True)
            (self.dir / "batches").mkdir(parents=True, exist_ok=True)
            seq = int(parent.id) + 1 if parent else 1
            sid = f"{seq:06d}"
            tmp = self.dir / "snapshots" / f".{sid}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            argv = ["rsync", "-a", "--delete", "--modify-window=-1", *rules.rsync_args()]
            if parent:
                argv.append(f"--link-dest={self.tree(parent.id)}")
            r = procs.run([*argv, f"{src}/", f"{tmp}/"], timeout=1800)
            if not r.ok:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ImageError(f"cannot snapshot {src}: {r.why()}")
            h = tree_hash(tmp, rules=rules)
            if parent and h == parent.hash and parent.ignore == list(rules.patterns):
                shutil.rmtree(tmp)
                return None
            os.rename(tmp, self.tree(sid))
            snap = Snapshot(id=sid, image=self.name, hash=h, parent=parent.id if parent else None,
                            created=time.time(), stage=stage, ignore=list(rules.patterns))
            if parent:
                snap.block_delta = self.block_delta
                wf = "--no-whole-file" if self.block_delta else "--whole-file"
                r = procs.run(["rsync", *RSYNC_DELTA_OPTS, wf,
                               f"--only-write-batch={self.batch(sid)}",
                               f"{self.tree(sid)}/", f"{self.tree(parent.id)}/"], timeout=1800)
                if not r.ok:
                    shutil.rmtree(self.tree(sid), ignore_errors=True)
                    raise ImageError(f"cannot compute the delta: {r.why()}")
                self.batch(sid).with_name(f"{sid}.batch.sh").unlink(missing_ok=True)
                snap.batch_bytes = self.batch(sid).stat().st_size
                old = tree_listing(self.tree(parent.id)).meta
                new = tree_listing(self.tree(sid)).meta
                snap.changed = sorted(p for p, m in new.items() if old.get(p) != m)
                snap.meta_only = [p for p in snap.changed
                                  if p in old and _size_mtime(old[p]) == _size_mtime(new[p])]
                snap.removed = sorted(p for p in old if p not in new)
            snap.snapshot_seconds = time.monotonic() - t0
            state.write(self.dir / "snapshots" / f"{sid}.json", asdict(snap))
            self.prune()
            return snap

    def prune(self) -> None:
        """Keep the last ``keep`` snapshots (rollback targets); drop older ones and batches."""
        snaps = self.snapshots()
        for s in snaps[:-self.keep]:
            shutil.rmtree(self.tree(s.id), ignore_errors=True)
            (self.dir / "snapshots" / f"{s.id}.json").unlink(missing_ok=True)
            self.batch(s.id).unlink(missing_ok=True)


# ---- applying to shadows ----------------------------------------------------------------------

@dataclass
class ShadowApply:
    """What happened on one shadow for one snapshot."""

    shadow: str
    snapshot: str
    mode: str  # batch | full | unchanged | failed
    ok: bool
    seconds: float
    note: str = ""
    release: str | None = None
    service: str | None = None
    service_seconds: float = 0.0


def release_snapshot(release: str | None) -> str | None:
    """Release dirs are ``<snapshot>~<nonce>``: unique, so a repair never removes ``current``."""
    return release.split("~", 1)[0] if release else None


class BatchServer:
    """Serves batch files on a TCP port in the appliance's (gateway) namespace.

    A lab shadow's apply step connects from inside its namespace to the appliance address on
    its link (the one place its fence lets it reach), names a snapshot, and pipes the answer
    straight into ``rsync --read-batch=-``: the batch crosses the veth once and is never
    written to the shadow's disk as a file. Only ids of existing batches are served.
    """

    def __init__(self, store: ImageStore, netns: str | None, addr: str, timeout: float,
                 served: list[tuple[str, str]], rate_kbps: int | None = None) -> None:
        import socket

        from netconfig import netns as nsmod

        self.store = store
        self.timeout = timeout
        self.served = served
        self.rate = rate_kbps
        self.sock = nsmod.socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self._thread = threading.Thread(target=self._loop, name="batch-server", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, peer[0]), daemon=True).start()

    def _serve(self, conn: Any, peer: str) -> None:
        import re

        try:
            conn.settimeout(self.timeout)
            line = b""
            while not line.endswith(b"\n") and len(line) < 64:
                chunk = conn.recv(64 - len(line))
                if not chunk:
                    return
                line += chunk
            sid = line.strip().decode(errors="replace")
            path = self.store.batch(sid)
            if not re.fullmatch(r"\d{6}", sid) or not path.exists():
                return
            with path.open("rb") as fh:
                if not self.rate:
                    conn.sendfile(fh)
                else:  # throttled, like rsync --bwlimit (a link shared with other traffic)
                    while chunk := fh.read(64 << 10):
                        conn.sendall(chunk)
                        time.sleep(len(chunk) / (self.rate * 1024))
            self.served.append((peer, sid))
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        import socket

        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(2)


class Replicator:
    """Applies snapshots to shadows: batch where it is safe, full rsync where it is not."""

    def __init__(self, store: ImageStore, *, timeout: float = 60.0, keep_releases: int = 2,
                 deep_verify: bool = False, restart_service: bool = True,
                 bwlimit_kbps: int | None = None, transport: str = "auto",
                 log: Callable[[str], None] | None = None) -> None:
        self.store = store
        # a shadow link shared with other traffic (a VM's only NIC) may need a cap
        self.extra = [f"--bwlimit={bwlimit_kbps}"] if bwlimit_kbps else []
        self.bwlimit = bwlimit_kbps
        self.timeout = timeout
        self.keep_releases = keep_releases
        self.deep = deep_verify
        self.restart = restart_service
        self.log = log or (lambda _m: None)
        self._deep_hashes: dict[str, str] = {}
        self._deep_lock = threading.Lock()
        if transport not in ("auto", "tcp", "stdin", "daemon"):
            raise ImageError(f"unknown transport {transport!r}: auto, tcp, stdin or daemon")
        self.transport = transport
        self._servers: dict[tuple[str | None, str], BatchServer] = {}
        self._in_apply = False
        self._servers_lock = threading.Lock()
        self.served: list[tuple[str, str]] = []  # (peer address, snapshot): for reports/tests

    def expected(self, sid: str) -> str:
        """The hash a shadow's copy of snapshot ``sid`` must have (content too when deep)."""
        snap = self.store.get(sid)
        if not self.deep:
            return snap.hash
        with self._deep_lock:
            if sid not in self._deep_hashes:
                self._deep_hashes[sid] = tree_hash(self.store.tree(sid), deep=True,
                                                   rules=snap.rules)
            return self._deep_hashes[sid]

    def in_step(self, host: ShadowHost, release: str, snap: Snapshot) -> bool:
        """Does ``release`` on the shadow hash as ``snap`` (run-time files left out)?"""
        got = remote_hash(host, f"releases/{release}", self.deep, rules=snap.rules)
        return got == self.expected(snap.id)

    def apply(self, hosts: list[ShadowHost], snap: Snapshot, **kw: Any) -> list[ShadowApply]:
        """Every shadow in parallel (they are independent machines)."""
        if not hosts:
            return []
        self._in_apply = True
        try:
            with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as ex:
                return list(ex.map(lambda h: self.apply_one(h, snap, **kw), hosts))
        finally:
            self._in_apply = False
            self.close()

    def _transport(self, host: ShadowHost) -> str:
        """How the batch reaches ``host``: ``tcp`` (lab: streamed into --read-batch=- over
        the shadow's link, one pass on the shadow instead of write-then-read), ``stdin``
        (ssh: the same stream, carried by ssh), ``daemon`` (sent as a file first)."""
        if self.transport != "auto":
            return self.transport
        return "tcp" if host.backend == "lab" else "stdin"

    def _server(self, host: ShadowHost) -> BatchServer:
        # bound to the appliance address on this shadow's link only: on a gateway that also
        # faces production and clients, nobody else can fetch the image's deltas
        key = (host.client_netns, str(host.rec["appliance_addr"]))
        with self._servers_lock:
            srv = self._servers.get(key)
            if srv is None:
                srv = self._servers[key] = BatchServer(self.store, key[0], key[1],
                                                       self.timeout, self.served, self.bwlimit)
            return srv

    def close(self) -> None:
        """Stop the batch servers (one per gateway namespace, started on first use)."""
        with self._servers_lock:
            for srv in self._servers.values():
                srv.close()
            self._servers.clear()

    def apply_one(self, host: ShadowHost, snap: Snapshot, *, verify: bool = True,
                  allow_full: bool = True) -> ShadowApply:
        """Batch if the shadow is provably at the batch's parent, else a full rsync.

        ``verify=False`` skips the checks (only for tests that need a batch to hang).
        """
        # One apply per shadow at a time, across processes (a watcher and a build-hook may push
        # together): otherwise two switches could race and leave the older snapshot current.
        try:
            with state.locked(self.store.dir.parent.parent / "locks" / f"{host.name}"):
                return self._apply_locked(host, snap, verify, allow_full)
        finally:
            if not self._in_apply:
                self.close()

    def _apply_locked(self, host: ShadowHost, snap: Snapshot, verify: bool, allow_full: bool
                      ) -> ShadowApply:
        t0 = time.monotonic()
        reason: str | None = None
        cur: str | None = None
        if snap.parent is None or not self.store.batch(snap.id).exists():
            reason = ("no delta for this snapshot (first release)" if snap.parent is None
                      else f"no delta for snapshot {snap.id} (pruned)")
            cur = host.current_release()
        else:
            ok, reason, cur, rel = self._batch(host, snap, verify)
            if ok:
                res = ShadowApply(host.name, snap.id, "batch", True, time.monotonic() - t0,
                                  reason or "", rel)
                self._activate(host, snap, res)
                return res
        at = release_snapshot(cur)
        if at and at.isdigit() and int(at) > int(snap.id):  # never go backwards (rollback is
            return ShadowApply(host.name, snap.id, "unchanged", True,  # explicit)
                               time.monotonic() - t0, f"already at newer snapshot {at}", cur)
        if cur and at == snap.id:
            if self.in_step(host, cur, snap):
                return ShadowApply(host.name, snap.id, "unchanged", True,
                                   time.monotonic() - t0, "already at this snapshot", cur)
            reason = f"tampered: release {cur} no longer matches snapshot {snap.id}"
        if not allow_full:
            self.log(f"{host.name}: {reason}; full sync not allowed, left on {cur}")
            return ShadowApply(host.name, snap.id, "failed", False, time.monotonic() - t0,
                               reason or "", cur or host.current_release())
        self.log(f"{host.name}: {reason}: falling back to a full rsync")
        res = self.full_sync(host, snap, reason=reason or "")
        res.seconds = time.monotonic() - t0
        return res

    def _batch(self, host: ShadowHost, snap: Snapshot, verify: bool
               ) -> tuple[bool, str, str | None, str | None]:
        """(ok, note or why not, current release, new release): three round trips."""
        assert snap.parent is not None
        new = f"{snap.id}~{secrets.token_hex(3)}"
        deep = "deep" if self.deep else ""
        lst = self.store.dir / "batches" / f".{snap.id}.{host.name}.meta"
        lst.write_bytes(b"".join(p.encode() + b"\0" for p in snap.meta_only))
        try:
            parent = self.store.get(snap.parent)
            r = host.exec(STAGE_SCRIPT, host.root, snap.parent if verify else "*",
                          self.expected(snap.parent) if verify else "-", new, deep,
                          *rule_args(parent.rules), timeout=self.timeout, stdin_file=str(lst))
        finally:
            lst.unlink(missing_ok=True)
        tag, _, cur = r.stdout.strip().rpartition("\n")[2].partition(":")
        if r.returncode == 10:
            return False, "shadow has no release yet", None, None
        if r.returncode == 11:
            return (False, f"at snapshot {release_snapshot(cur)}, the delta starts from "
                    f"{snap.parent}", cur, None)
        if r.returncode == 12:
            return (False, f"drifted: release {cur} differs from snapshot {snap.parent}",
                    cur, None)
        if not r.ok or tag != "ok":
            return False, f"staging copy failed: {r.why()}", None, None
        how = self._transport(host)
        stdin = None
        if how == "daemon":
            r = host.rsync(str(self.store.batch(snap.id)), f"incoming/{snap.id}.batch",
                           timeout=self.timeout, extra=self.extra)
            if not r.ok:
                return False, f"sending the batch failed: {r.why()}", cur, None
            source = f"incoming/{snap.id}.batch"
        elif how == "stdin":
            source, stdin = "stdin", str(self.store.batch(snap.id))
        else:
            port = self._server(host).port
            source = f"tcp:{host.rec['appliance_addr']}:{port}"
        r = host.exec(APPLY_SCRIPT, host.root, snap.id, new,
                      "--no-whole-file" if snap.block_delta else "--whole-file",
                      self.expected(snap.id) if verify else "-", deep, str(self.keep_releases),
                      source, snap.rules.lines(), *rule_args(snap.rules), timeout=self.timeout,
                      stdin_file=stdin)
        if r.ok:
            return True, f"batch {snap.batch_bytes:,} bytes", cur, new
        # A batch that did not finish leaves a half-applied staging tree: never switched to,
        # but it would sit among the releases and count against keep_releases. Remove it.
        host.exec('rm -rf -- "$1/releases/$2.staging"', host.root, new, timeout=30)
        if r.timed_out:
            # rsync 3.2.x can hang at 0 % CPU on a drifted destination (3.5 refuses at once);
            # a stalled stream looks the same. Whatever it printed before the kill is kept.
            lines = r.stderr.strip().splitlines()
            said = f"; its last output: {lines[-1]}" if lines else ""
            return False, (f"batch timed out after {self.timeout:.0f} s and was killed "
                           f"(rsync --read-batch made no progress){said}"), cur, None
        if r.returncode == 21:
            return False, "after the batch the staging tree differs from the snapshot", cur, None
        return False, f"batch failed: {r.why()}", cur, None

    def full_sync(self, host: ShadowHost, snap: Snapshot, *, reason: str = "",
                  link_current: bool = False) -> ShadowApply:
        """Copy the whole snapshot into a fresh staging tree, verify, switch.

        ``link_current`` (rollback) lets rsync hard-link unchanged files from the current
        release; a repair never does, since the current release is what cannot be trusted.
        """
        t0 = time.monotonic()
        new = f"{snap.id}~{secrets.token_hex(3)}"
        cur = host.current_release()
        # run-time files the rules ignore are carried over first; the excludes keep rsync's
        # --delete off them
        r = host.exec(FRESH_SCRIPT, host.root, new, *rule_args(snap.rules), timeout=self.timeout)
        extra = ["--delete", "--modify-window=-1", *snap.rules.rsync_args(), *self.extra]
        if link_current and cur:
            extra.append(f"--link-dest=../{cur}")
        if r.ok:
            r = host.rsync(f"{self.store.tree(snap.id)}/", f"releases/{new}.staging/",
                           timeout=self.timeout, extra=extra)
        note = f"full rsync ({reason})" if reason else "full rsync"
        if not r.ok:
            host.exec('rm -rf -- "$1/releases/$2.staging"', host.root, new, timeout=30)
            return ShadowApply(host.name, snap.id, "failed", False, time.monotonic() - t0,
                               f"{note} failed: {r.why()}; still on {cur}", cur)
        if (remote_hash(host, f"releases/{new}.staging", self.deep, rules=snap.rules)
                != self.expected(snap.id)):
            host.exec('rm -rf -- "$1/releases/$2.staging"', host.root, new, timeout=30)
            return ShadowApply(host.name, snap.id, "failed", False, time.monotonic() - t0,
                               f"{note}: copy does not match the snapshot; still on {cur}", cur)
        r = host.exec(SWITCH_SCRIPT, host.root, new, str(self.keep_releases),
                      timeout=self.timeout)
        if not r.ok:
            return ShadowApply(host.name, snap.id, "failed", False, time.monotonic() - t0,
                               f"{note}: switch failed: {r.why()}", cur)
        res = ShadowApply(host.name, snap.id, "full", True, time.monotonic() - t0, note, new)
        self._activate(host, snap, res)
        return res

    def _activate(self, host: ShadowHost, snap: Snapshot, res: ShadowApply) -> None:
        """Restart the image's service on the new release and wait until it answers."""
        if not self.restart:
            return
        t0 = time.monotonic()
        try:
            self._start(host, snap, res)
        finally:
            res.service_seconds = time.monotonic() - t0

    def _start(self, host: ShadowHost, snap: Snapshot, res: ShadowApply) -> None:
        m = load_manifest(self.store.tree(snap.id))
        if not m.service_command:
            res.service = "none declared"
            return
        r = host.start_service(m.service_command, m.service_port)
        if not r.ok:
            res.service = f"failed to start: {r.why()}"
            return
        if m.service_port:
            ok, why = host.wait_http(m.service_port, m.health_path, timeout=15)
            res.service = "up" if ok else f"not answering: {why}"
        else:
            res.service = "started"

    def rollback(self, hosts: list[ShadowHost], sid: str) -> list[ShadowApply]:
        snap = self.store.get(sid)
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(hosts)))) as ex:
            return list(ex.map(lambda h: self._rollback_one(h, snap), hosts))

    def repair(self, host: ShadowHost, snap: Snapshot, *, reason: str) -> ShadowApply:
        """A full copy of ``snap`` into a fresh tree (never linked to the drifted release)."""
        with state.locked(self.store.dir.parent.parent / "locks" / f"{host.name}"):
            return self.full_sync(host, snap, reason=reason)

    def _rollback_one(self, host: ShadowHost, snap: Snapshot) -> ShadowApply:
        with state.locked(self.store.dir.parent.parent / "locks" / f"{host.name}"):
            return self.full_sync(host, snap, reason=f"rollback to {snap.id}", link_current=True)


# ---- watching a build directory ----------------------------------------------------------------

class TreeWatcher:
    """Calls ``on_settled()`` once a build directory has been quiet for ``settle`` seconds.

    inotify (through watchdog) reports every write of a build; pushing on each would ship
    half-written files. Waiting until the tree settles turns a burst of writes into one delta.
    """

    def __init__(self, root: Path, on_settled: Callable[[], None], *, settle: float = 2.0,
                 ignore: Iterable[str] | IgnoreRules = ()) -> None:
        self.root = root.resolve()
        self.on_settled = on_settled
        self.settle = settle
        self.rules = ignore if isinstance(ignore, IgnoreRules) else IgnoreRules.parse(ignore)
        self.last_event: float | None = None
        self.events = 0
        self._stop = threading.Event()
        self._cv = threading.Condition()
        self._observer: Any = None
        self._thread: threading.Thread | None = None

    def _event(self, path: str, is_dir: bool | None = None) -> None:
        try:
            rel = str(Path(path).resolve().relative_to(self.root))
        except ValueError:
            return
        if rel == "." or self.rules.matches(rel, is_dir):
            return
        with self._cv:
            self.last_event = time.monotonic()
            self.events += 1
            self._cv.notify()

    def start(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                is_dir = bool(event.is_directory)
                watcher._event(str(event.src_path), is_dir)
                dest = getattr(event, "dest_path", "")
                if dest:
                    watcher._event(str(dest), is_dir)

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.root), recursive=True)
        self._observer.start()
        self._thread = threading.Thread(target=self._loop, name="tree-watcher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                if self.last_event is None:
                    self._cv.wait(0.5)
                    continue
                quiet = time.monotonic() - self.last_event
                if quiet < self.settle:
                    self._cv.wait(self.settle - quiet)
                    continue
                self.last_event = None
            try:
                self.on_settled()
            except Exception as e:  # keep watching; the callback reports its own failures
                print(f"error: push after change failed: {e}")

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
        if self._thread is not None:
            self._thread.join(5)


def push(src: Path, stage: str, *, pool: Any = None, keep: int = 5, timeout: float = 60.0,
         log: Callable[[str], None] | None = None, deep: bool = False
         ) -> tuple[Snapshot | None, list[ShadowApply]]:
    """Snapshot ``src`` and bring every ready shadow following its image to the new snapshot.

    Returns (None, []) when nothing significant changed since the last snapshot.
    """
    from appliance.images.shadows import Pool

    pool = pool or Pool()
    m = load_manifest(src)
    store = ImageStore(m.name, pool.home, keep)
    snap = store.take(src, stage, m.ignore)
    if snap is None:
        return None, []
    rep = Replicator(store, timeout=timeout, log=log, deep_verify=deep)
    return snap, rep.apply(pool.hosts(m.name), snap)
