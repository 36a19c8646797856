"""The shadow pool: where images run under test, on lab namespaces or real machines.

A shadow is anything that can (1) receive files over the network, (2) run a shell snippet and
(3) run the image's service. That is all image sync and the checks need, so one small interface
covers three backends:

* ``lab`` (default): a network namespace fenced by ``netconfig`` (it reaches only the
  appliance's address on its own link), its own copy of the image on this host, an rsync daemon
  listening *inside* the namespace (so every byte of a delta crosses a veth, as it would cross a
  wire to a VM), and the image's service started in the namespace from the command its manifest
  declares. The appliance side of every transfer runs in the pool's gateway namespace, the only
  place the fence lets in.
* ``ssh``: a real machine. Snippets run through ``ssh``, files move with rsync over ssh.
* ``vagrant``: an ssh shadow whose connection comes from ``vagrant ssh-config`` (parsed here).

On every backend a shadow's image root holds ``releases/<snapshot>/`` trees and a ``current``
symlink; the service always runs from ``current``. The switch to a new release is a rename of a
symlink, so a shadow never runs a half-copied tree (see ``imagesync``).

The pool's record (``$SHADOWTAP_HOME/pool.json``) is written before anything is created, under a
lock, so a crash leaves something ``shadow delete``/``gc`` can clean up.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import procs
from netconfig import netns as nsmod
from netconfig import state

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,20}$")
RSYNC_PORT = 873
DEFAULT_PREFIX = "stp-"
DEFAULT_SUBNET = "10.78"  # shadow i gets 10.78.i.0/24: .1 the appliance, .2 the shadow
GATEWAY_NODE = "gw"


class ShadowError(Exception):
    """A user-facing failure of the pool; the message says what to do."""


def home() -> Path:
    """Where snapshots, shadow trees and records live; ``SHADOWTAP_HOME`` overrides.

    Not /run (tmpfs): a 500 MB image times N snapshots and M shadows belongs on disk.
    """
    return Path(os.environ.get("SHADOWTAP_HOME", "/var/lib/shadowtap"))


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds (TTLs and timeouts on the CLI)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ShadowError(f"bad duration {text!r}: use e.g. 90s, 30m, 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


# ---- snippets every backend runs the same way -------------------------------------------------

# A dead service can linger as a zombie when the host's PID 1 is slow to reap (seen here), and
# ``kill -0`` succeeds on a zombie: liveness is read from /proc, so a stop costs milliseconds,
# not the whole grace period.
SVC_STOP = r"""
p=$(cat "$1/service.pid" 2>/dev/null) || exit 0
alive() { [ -e "/proc/$p" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null; }
kill -TERM "-$p" 2>/dev/null
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  alive || break; sleep 0.05
done
kill -KILL "-$p" 2>/dev/null
rm -f "$1/service.pid"; exit 0
"""

# setsid: the service gets its own session, so the exec wrapper's group kill spares it and
# SVC_STOP can kill everything the service forked.
#
# Where run-time writes go: the release is the image, verified by hash before and after every
# switch, so a service should not write there. It gets SHADOW_DATA, a directory of its own per
# shadow that outlives every release (pushes, repairs, rollbacks), is never hashed and never
# sent anywhere. CPython's bytecode, which it writes next to the sources by default, goes to
# cache/python instead (PYTHONPYCACHEPREFIX; a command may set its own). What a service still
# writes into the release is drift, unless the manifest's ``ignore`` names it (imagesync).
SVC_START = r"""
cd "$1/current" || { echo "no current release in $1" >&2; exit 3; }
mkdir -p "$1/data" "$1/cache/python"
export PORT="$3" SHADOW_NAME="$4" SHADOW_ROOT="$1" SHADOW_DATA="$1/data" \
  PYTHONPYCACHEPREFIX="$1/cache/python"
setsid sh -c "$2" >>"$1/service.log" 2>&1 </dev/null &
echo $! >"$1/service.pid"
"""


@dataclass
class ShadowHost:
    """One shadow, whatever its backend. Subclasses say how to run snippets and move files."""

    rec: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.rec["name"])

    @property
    def addr(self) -> str:
        return str(self.rec["addr"])

    @property
    def root(self) -> str:
        """The image root on the shadow (its filesystem's view)."""
        return str(self.rec["root"])

    @property
    def backend(self) -> str:
        return str(self.rec["backend"])

    # -- to be provided by a backend --
    def exec(self, script: str, *args: str, timeout: float = 30.0,
             stdin_file: str | None = None) -> procs.Result:
        """Run a POSIX sh snippet on the shadow with ``$1..`` = ``args``."""
        raise NotImplementedError

    def rsync_target(self, rel: str) -> str:
        """The rsync destination for ``root/rel`` (network path)."""
        raise NotImplementedError

    def rsync_extra(self) -> list[str]:
        return []

    @property
    def client_netns(self) -> str | None:
        """The namespace the appliance side of a transfer or a check runs in."""
        return None

    def shell_argv(self) -> list[str]:
        raise NotImplementedError

    def connect(self, port: int, timeout: float = 2.0) -> socket.socket:
        """A TCP connection to the shadow, from where the appliance may reach it."""
        s = nsmod.socket_in_netns(self.client_netns)
        s.settimeout(timeout)
        try:
            s.connect((self.addr, port))
        except OSError:
            s.close()
            raise
        return s

    # -- shared behaviour --
    def rsync(self, src: str, rel: str, *, timeout: float, extra: list[str] | None = None
              ) -> procs.Result:
        """rsync ``src`` to ``root/rel`` on the shadow over the network, under a hard limit."""
        argv = ["rsync", "-a", f"--timeout={max(5, int(timeout))}", *self.rsync_extra(),
                *(extra or []), src, self.rsync_target(rel)]
        return procs.run(argv, timeout=timeout, netns=self.client_netns)

    def current_release(self, timeout: float = 10.0) -> str | None:
        r = self.exec('readlink "$1/current" 2>/dev/null || true', self.root, timeout=timeout)
        link = r.stdout.strip()
        return link.rsplit("/", 1)[-1] if r.ok and link else None

    def stop_service(self, timeout: float = 10.0) -> procs.Result:
        return self.exec(SVC_STOP, self.root, timeout=timeout)

    def start_service(self, command: str, port: int | None, timeout: float = 10.0
                      ) -> procs.Result:
        self.stop_service(timeout)
        return self.exec(SVC_START, self.root, command, str(port or ""), self.name,
                         timeout=timeout)

    def http_get(self, port: int, path: str = "/", timeout: float = 3.0) -> tuple[int, bytes]:
        """A plain HTTP/1.1 GET through :meth:`connect` (status, body); raises OSError."""
        s = self.connect(port, timeout)
        try:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.addr}\r\nConnection: close\r\n\r\n"
                      .encode())
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
        finally:
            s.close()
        head, _, body = buf.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise OSError(f"not an HTTP response from {self.addr}:{port}") from None
        if b"transfer-encoding: chunked" in head.lower():
            body = _dechunk(body)
        return status, body

    def wait_http(self, port: int, path: str = "/", timeout: float = 10.0) -> tuple[bool, str]:
        """Health check: poll until the service answers below 500, or say why not."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                status, _ = self.http_get(port, path, timeout=2.0)
                if status < 500:
                    return True, f"HTTP {status}"
                last = f"HTTP {status}"
            except OSError as e:
                last = str(e) or type(e).__name__
            time.sleep(0.1)
        return False, f"{self.addr}:{port}{path}: {last}"

    def logs(self, lines: int = 100) -> str:
        r = self.exec('tail -n "$2" "$1/service.log" 2>/dev/null || true', self.root,
                      str(lines), timeout=10)
        return r.stdout


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            n = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2:]
    return out


class LabShadow(ShadowHost):
    """A fenced namespace on this host with an rsync daemon inside it."""

    @property
    def ns(self) -> str:
        return str(self.rec["ns"])

    @property
    def client_netns(self) -> str | None:
        return str(self.rec["gw_ns"])

    def exec(self, script: str, *args: str, timeout: float = 30.0,
             stdin_file: str | None = None) -> procs.Result:
        return procs.run(["sh", "-c", script, "sh", *args], timeout=timeout, netns=self.ns,
                         stdin_file=stdin_file)

    def rsync_target(self, rel: str) -> str:
        return f"rsync://{self.addr}:{RSYNC_PORT}/shadow/{rel}"

    def shell_argv(self) -> list[str]:
        sh = os.environ.get("SHELL", "/bin/bash")
        return ["nsenter", f"--net={nsmod.NETNS_DIR}/{self.ns}", "--", "sh", "-c",
                f'cd -P "$1/current" 2>/dev/null || cd "$1"; exec {shlex.quote(sh)} -i', "sh",
                self.root]


class SshShadow(ShadowHost):
    """A real machine reached with ssh (its config file names host, user, key, port).

    ``via_netns`` (optional) runs the ssh side in a namespace, for VMs on a lab network that
    only the gateway namespace reaches.
    """

    @property
    def client_netns(self) -> str | None:
        v = self.rec.get("via_netns")
        return str(v) if v else None

    def _ssh(self) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if self.rec.get("ssh_config"):
            argv += ["-F", str(self.rec["ssh_config"])]
        return argv

    def exec(self, script: str, *args: str, timeout: float = 30.0,
             stdin_file: str | None = None) -> procs.Result:
        remote = shlex.join(["sh", "-c", script, "sh", *args])
        return procs.run([*self._ssh(), str(self.rec["host"]), remote], timeout=timeout,
                         stdin_file=stdin_file, netns=self.client_netns)

    def rsync_target(self, rel: str) -> str:
        return f"{self.rec['host']}:{self.root}/{rel}"

    def rsync_extra(self) -> list[str]:
        return ["-e", shlex.join(self._ssh())]

    def shell_argv(self) -> list[str]:
        argv = [*self._ssh()[:1], "-t", *self._ssh()[1:], str(self.rec["host"]),
                f"cd -P {shlex.quote(self.root)}/current 2>/dev/null; exec $SHELL -l"]
        if self.client_netns:
            argv = ["nsenter", f"--net={nsmod.NETNS_DIR}/{self.client_netns}", "--", *argv]
        return argv


def host_for(rec: dict[str, Any]) -> ShadowHost:
    """The backend object for a pool record."""
    return LabShadow(rec) if rec["backend"] == "lab" else SshShadow(rec)


# ---- vagrant ----------------------------------------------------------------------------------

def parse_ssh_config(text: str) -> dict[str, dict[str, str]]:
    """``vagrant ssh-config`` output -> {host: {option: value}} (options lower-cased).

    Vagrant prints one ``Host NAME`` block per machine, two-space indented ``Key value`` lines,
    values possibly quoted (paths with spaces) and sometimes ``Key=value``.
    """
    hosts: dict[str, dict[str, str]] = {}
    cur: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+?)(?:\s*=\s*|\s+)(.*)$", line)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if key == "host":
            cur = hosts.setdefault(value, {})
        elif cur is not None:
            cur.setdefault(key, value)  # ssh semantics: the first value wins
    return hosts


def write_ssh_config(hosts: dict[str, dict[str, str]], path: Path) -> None:
    """Write parsed hosts back as an ssh config file ``ssh -F`` accepts."""
    names = {"hostname": "HostName", "user": "User", "port": "Port", "identityfile": "IdentityFile",
             "userknownhostsfile": "UserKnownHostsFile",
             "stricthostkeychecking": "StrictHostKeyChecking",
             "passwordauthentication": "PasswordAuthentication", "identitiesonly": "IdentitiesOnly",
             "loglevel": "LogLevel", "proxycommand": "ProxyCommand"}
    lines = []
    for host, opts in hosts.items():
        lines.append(f"Host {host}")
        for k, v in opts.items():
            key = names.get(k, k)
            lines.append(f'  {key} "{v}"' if " " in v and k != "proxycommand" else f"  {key} {v}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def vagrant_ssh_config(vagrant_dir: Path, machine: str, timeout: float = 60) -> str:
    r = procs.run(["vagrant", "ssh-config", machine], timeout=timeout, cwd=str(vagrant_dir))
    if not r.ok:
        raise ShadowError(f"vagrant ssh-config {machine} failed ({r.why()}): is the machine up "
                          f"('vagrant up {machine}' in {vagrant_dir})?")
    return r.stdout


# ---- scaling ----------------------------------------------------------------------------------

def scale_target(size: int, *, minimum: int, maximum: int, queued: int, idle_seconds: float,
                 idle_after: float) -> int:
    """How many pool shadows there should be: one more per queued build (up to ``maximum``)
    while builds wait, one fewer per idle period (down to ``minimum``) once they stop.

    Growing by queue length rather than one at a time matters because a new shadow needs a full
    copy before it is useful; shrinking one at a time keeps warm shadows around for a burst.
    """
    if queued > 0:
        target = size + queued
    elif idle_seconds >= idle_after:
        target = size - 1
    else:
        target = size
    return max(minimum, min(maximum, target))


# ---- the pool ---------------------------------------------------------------------------------

class Pool:
    """The record of all shadows plus the lab network they live in."""

    def __init__(self, root: Path | None = None, *, prefix: str | None = None,
                 subnet: str = DEFAULT_SUBNET, attach_lab: str | None = None) -> None:
        self.home = root or home()
        self.path = self.home / "pool.json"
        rec = state.read(self.path) or {}
        self.prefix = (rec.get("prefix") or prefix or os.environ.get("SHADOWTAP_POOL_PREFIX")
                       or DEFAULT_PREFIX)
        self.subnet = rec.get("subnet") or subnet
        self.attach_lab = rec.get("attach_lab", attach_lab)
        self.released: list[str] = []  # namespaces removed because the pool became empty

    # -- record --
    @contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write the record under its lock; ``_drop`` set: remove it instead."""
        with state.locked(self.path):
            rec = state.read(self.path) or {"prefix": self.prefix, "subnet": self.subnet,
                                            "attach_lab": self.attach_lab, "shadows": []}
            yield rec
            if rec.pop("_drop", False) and not rec["shadows"]:
                self.path.unlink(missing_ok=True)
            else:
                state.write(self.path, rec)

    def records(self) -> list[dict[str, Any]]:
        return list((state.read(self.path) or {}).get("shadows", []))

    def get(self, name: str) -> ShadowHost:
        for r in self.records():
            if r["name"] == name:
                return host_for(r)
        raise ShadowError(f"no shadow named {name!r} ('shadowtap shadow list' shows them)")

    def hosts(self, image: str | None = None) -> list[ShadowHost]:
        return [host_for(r) for r in self.records()
                if r.get("status") == "ready" and (image is None or r.get("image") == image)]

    def update(self, name: str, **fields: Any) -> None:
        with self._edit() as rec:
            for r in rec["shadows"]:
                if r["name"] == name:
                    r.update(fields)

    # -- lab network --
    def gateway_ns(self) -> str:
        if self.attach_lab:
            return f"{self.attach_lab}gateway"
        return f"{self.prefix}{GATEWAY_NODE}"

    def _spec(self, shadows: list[dict[str, Any]]) -> dict[str, Any]:
        from netconfig import lab

        if self.attach_lab:
            base = (lab.read_state(self.attach_lab) or {}).get("spec")
            if not base:
                raise ShadowError(f"no lab with prefix {self.attach_lab!r} is up: run "
                                  "'shadowtap lab up' first or create the pool without attaching")
            d = copy.deepcopy(base)
            gw = "gateway"
            # the lab's record holds the spec last applied, pool shadows ("sh-*") included:
            # start from the lab's own nodes so a deleted shadow is not re-created
            d["nodes"] = [n for n in d.get("nodes", []) if not n["name"].startswith("sh-")]
            d["links"] = [ln for ln in d.get("links", [])
                          if not (ln["a"]["node"].startswith("sh-")
                                  or ln["b"]["node"].startswith("sh-"))]
            d["fences"] = [f for f in d.get("fences") or [] if not f["shadow"].startswith("sh-")]
        else:
            d = {"prefix": self.prefix, "nodes": [{"name": GATEWAY_NODE}], "links": []}
            gw = GATEWAY_NODE
        d.setdefault("fences", [])
        for r in shadows:
            if r["backend"] != "lab":
                continue
            node = r["node"]
            d["nodes"].append({"name": node})
            d["links"].append({"a": {"node": gw, "dev": f"stp{r['index']}",
                                     "addr": f"{self.subnet}.{r['index']}.1/24"},
                               "b": {"node": node, "dev": "eth0",
                                     "addr": f"{self.subnet}.{r['index']}.2/24"}})
            d["fences"].append({"shadow": node, "appliance": gw})
        return d

    def _net_up(self, shadows: list[dict[str, Any]]) -> None:
        from netconfig import lab
        from netconfig.errors import NetconfigError

        try:
            lab.up(lab.parse_spec(self._spec(shadows)))
        except NetconfigError as e:
            raise ShadowError(f"lab network: {e}") from e

    # -- lifecycle --
    def create(self, name: str, *, image: str, backend: str = "lab", ttl: float | None = None,
               branch: str | None = None, ssh_host: str | None = None,
               ssh_config: str | None = None, remote_root: str = "/srv/shadowtap",
               role: str = "pool", via_netns: str | None = None) -> ShadowHost:
        """Make a shadow (empty: image sync gives it its first release) and record it first."""
        if not NAME_RE.match(name):
            raise ShadowError(f"bad shadow name {name!r}: lower-case letters, digits and '-', "
                              "starting with a letter, at most 21 characters")
        if backend not in ("lab", "ssh", "vagrant"):
            raise ShadowError(f"unknown backend {backend!r}: use lab, ssh or vagrant")
        now = time.time()
        with self._edit() as rec:
            if any(r["name"] == name for r in rec["shadows"]):
                raise ShadowError(f"a shadow named {name!r} exists: pick another name or delete it")
            r: dict[str, Any] = {"name": name, "backend": backend, "image": image,
                                 "created": now, "expires": now + ttl if ttl else None,
                                 "branch": branch, "role": role, "status": "creating"}
            if backend == "lab":
                used = {x.get("index") for x in rec["shadows"]}
                idx = next((i for i in range(1, 251) if i not in used), None)
                if idx is None:
                    raise ShadowError("the lab pool is full (250 shadows)")
                sd = self.home / "shadows" / name
                net_prefix = self.attach_lab or self.prefix  # lab.up names namespaces so
                r.update(index=idx, node=f"sh-{name}", ns=f"{net_prefix}sh-{name}",
                         gw_ns=self.gateway_ns(), addr=f"{self.subnet}.{idx}.2",
                         appliance_addr=f"{self.subnet}.{idx}.1", root=str(sd))
            else:
                if not ssh_host:
                    raise ShadowError("an ssh shadow needs --host (an ssh config alias or host)")
                r.update(host=ssh_host, ssh_config=ssh_config, root=remote_root, via_netns=via_netns,
                         addr=ssh_host if not ssh_config else _ssh_hostname(ssh_config, ssh_host))
            rec["shadows"].append(r)
            all_lab = [x for x in rec["shadows"] if x["backend"] == "lab"]
        try:
            if backend == "lab":
                self._net_up(all_lab)
                self._lab_prepare(r)
            else:
                res = host_for(r).exec('mkdir -p "$1/releases" "$1/incoming"', r["root"],
                                       timeout=30)
                if not res.ok:
                    raise ShadowError(f"{name}: cannot prepare {r['root']}: {res.why()}")
        except BaseException:
            self.delete(name)
            raise
        self.update(name, status="ready")
        r["status"] = "ready"
        return host_for(r)

    def _lab_prepare(self, r: dict[str, Any]) -> None:
        root = Path(r["root"])
        (root / "releases").mkdir(parents=True, exist_ok=True)
        (root / "incoming").mkdir(exist_ok=True)
        d = root.parent / f"{r['name']}.d"
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "rsyncd.conf"
        # Only the appliance's address on this shadow's link may talk to the daemon; chroot
        # keeps a client inside the image root.
        conf.write_text(
            f"pid file = {d}/rsyncd.pid\nlog file = {d}/rsyncd.log\nport = {RSYNC_PORT}\n"
            f"address = {r['addr']}\nuse chroot = yes\nuid = root\ngid = root\n"
            f"reverse lookup = no\n[shadow]\npath = {root}\nread only = false\n"
            f"hosts allow = {r['appliance_addr']}\n")
        (d / "rsyncd.pid").unlink(missing_ok=True)
        p = procs.popen_detached(["rsync", "--daemon", "--no-detach", f"--config={conf}"],
                                 netns=r["ns"], log=str(d / "rsyncd.out"))
        self.update(r["name"], daemon_pid=p.pid)
        host = host_for(r)
        deadline = time.monotonic() + 5
        while True:
            try:
                host.connect(RSYNC_PORT, 0.5).close()
                return
            except OSError as e:
                if time.monotonic() > deadline or p.poll() is not None:
                    raise ShadowError(f"{r['name']}: rsync daemon did not start ({e}); see "
                                      f"{d}/rsyncd.out") from e
                time.sleep(0.05)

    def delete(self, name: str) -> list[str]:
        """Stop everything of a shadow, remove its namespace and files, then its record.

        Returns what went with it besides: when it was the pool's last lab shadow, the pool's
        own gateway namespace (and its lab record); when it was the last shadow of all, the
        pool's record too. A pool leaves nothing behind once it is empty.
        """
        recs = [r for r in self.records() if r["name"] == name]
        if not recs:
            raise ShadowError(f"no shadow named {name!r} ('shadowtap shadow list' shows them)")
        r = recs[0]
        self.update(name, status="deleting")
        if r["backend"] == "lab":
            ns = r.get("ns")
            if ns and nsmod.exists(ns):
                _kill_netns_pids(ns)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            shutil.rmtree(r["root"], ignore_errors=True)
            shutil.rmtree(Path(r["root"]).parent / f"{name}.d", ignore_errors=True)
        else:
            host_for(r).stop_service()
            host_for(r).exec('rm -rf "$1/releases" "$1/incoming" "$1/current" "$1/data" '
                             '"$1/cache" "$1/service.log" "$1/service.pid"', r["root"],
                             timeout=60)
        with self._edit() as rec:
            rec["shadows"] = [x for x in rec["shadows"] if x["name"] != name]
            left = [x for x in rec["shadows"] if x["backend"] == "lab"]
            # under the pool's lock: a shadow being created meanwhile is either in ``left``
            # (the network stays) or waits for the lock and builds the network again
            gone, err = self._release_if_empty(rec)
        if err:
            raise ShadowError(f"{name} is deleted, but removing the pool's gateway failed: {err}"
                              "; run 'shadowtap shadow gc' to retry")
        if r["backend"] == "lab" and (left or self.attach_lab):
            self._net_up(left)  # re-fence without the removed link
        return gone

    def _release_if_empty(self, rec: dict[str, Any]) -> tuple[list[str], str | None]:
        """Inside ``_edit``: remove the gateway (no shadow left behind it or reached through
        it) and the record (no shadow at all).

        Returns (namespaces removed, why removing them failed); the record is written either
        way, so a failure here never leaves a deleted shadow on the books.
        """
        gone: list[str] = []
        gw = self.gateway_ns()
        needed = any(x["backend"] == "lab" or x.get("via_netns") == gw for x in rec["shadows"])
        if not self.attach_lab and not needed:
            from netconfig import lab
            from netconfig.errors import NetconfigError

            try:
                gone = [c.rsplit(" ", 1)[-1] for c in lab.down(self.prefix)]
            except NetconfigError as e:
                return gone, str(e)
            self.released += gone
        if not rec["shadows"]:
            rec["_drop"] = True
        return gone, None

    def destroy(self) -> None:
        """Delete every shadow and, for a pool with its own gateway, the lab network."""
        for r in self.records():
            self.delete(r["name"])
        if not self.attach_lab:
            from netconfig import lab

            lab.down(self.prefix)
        self.path.unlink(missing_ok=True)

    def expired(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        return [r["name"] for r in self.records() if r.get("expires") and r["expires"] <= now]

    def gc(self, now: float | None = None) -> list[str]:
        """Reap ephemeral shadows whose TTL has passed; an empty pool's leftovers too (a
        gateway left by a version that kept it, or by a crash)."""
        gone = self.expired(now)
        for n in gone:
            self.delete(n)
        if not gone and self.path.exists():
            with self._edit() as rec:
                err = self._release_if_empty(rec)[1] if not rec["shadows"] else None
            if err:
                raise ShadowError(f"removing the empty pool's gateway failed: {err}")
        return gone

    def delete_branch(self, branch: str) -> list[str]:
        """A merged branch's shadows have done their job: delete them."""
        names = [r["name"] for r in self.records() if r.get("branch") == branch]
        for n in names:
            self.delete(n)
        return names

    def health(self, name: str, port: int | None, path: str = "/") -> dict[str, Any]:
        """Is the shadow reachable, on which release, and does its service answer?"""
        h = self.get(name)
        out: dict[str, Any] = {"name": name, "release": None, "reachable": False,
                               "service": None}
        r = h.exec("true", timeout=10)
        out["reachable"] = r.ok
        if r.ok:
            out["release"] = h.current_release()
        if port:
            ok, why = h.wait_http(port, path, timeout=2.0)
            out["service"] = "up" if ok else f"down: {why}"
        return out

    def autoscale(self, image: str, *, minimum: int, maximum: int, queued: int,
                  idle_seconds: float, idle_after: float,
                  provision: Callable[[ShadowHost], None]) -> list[str]:
        """Grow or shrink the image's pool shadows toward :func:`scale_target`.

        ``provision`` gives a new shadow its first release (a full sync of the latest
        snapshot) and starts its service. Returns what changed, for the log.
        """
        mine = [r for r in self.records() if r.get("image") == image and r.get("role") == "pool"]
        target = scale_target(len(mine), minimum=minimum, maximum=maximum, queued=queued,
                              idle_seconds=idle_seconds, idle_after=idle_after)
        changes = []
        names = {r["name"] for r in self.records()}
        base = re.sub(r"[^a-z0-9-]", "-", image.lower())[:14].strip("-") or "img"
        i = 1
        while len(mine) < target:
            while f"{base}-{i}" in names:
                i += 1
            name = f"{base}-{i}"
            names.add(name)
            h = self.create(name, image=image)
            provision(h)
            mine.append(h.rec)
            changes.append(f"+{name}")
        while len(mine) > target:
            r = mine.pop()  # newest first: the oldest have the warmest caches
            self.delete(r["name"])
            changes.append(f"-{r['name']}")
        return changes


def _ssh_hostname(config: str, host: str) -> str:
    try:
        return parse_ssh_config(Path(config).read_text()).get(host, {}).get("hostname", host)
    except OSError:
        return host


def _kill_netns_pids(ns: str) -> None:
    """Everything running in a lab shadow's namespace is the shadow's: kill it all."""
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    for p in r.stdout.split():
        try:
            os.kill(int(p), 9)
        except (ProcessLookupError, ValueError):
            pass
