"""The Vagrant lab's launcher: libvirt in a private network namespace, vagrant, clean teardown.

Why a namespace: libvirt makes bridges, runs dnsmasq for DHCP and writes NAT rules for its
networks. Run inside a namespace made for the lab, all of that stays off the host network, and
deleting the namespace removes it. PID 1 here is not systemd, so ``virtlogd`` and ``libvirtd``
are started by this module (inside the namespace) and stopped by it, by process id.

``up`` writes a state record (``/run/shadowtap/vagrant-lab.json``) *before* creating the
namespace and before starting each daemon, so ``down`` after a crash at any point removes
exactly what was made: VMs (``vagrant destroy``), libvirt networks, every process left in the
namespace (qemu, dnsmasq: children of our libvirtd), the daemons, and the namespace itself.
A failed ``up`` runs ``down`` itself unless asked to keep the wreck for debugging.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from netconfig import lab, state, vagrant
from netconfig import netns as nsmod
from netconfig.errors import NetconfigError, require_root

NETNS = "shadowtap-vm"
REPO = Path(__file__).resolve().parents[1]
VAGRANT_DIR = REPO / "vagrant"
LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")
TOOLS = {"vagrant": "vagrant", "libvirtd": "libvirt-daemon-system",
         "virtlogd": "libvirt-daemon-system", "virsh": "libvirt-clients",
         "qemu-system-x86_64": "qemu-system-x86", "dnsmasq": "dnsmasq-base",
         "debootstrap": "debootstrap", "qemu-img": "qemu-utils"}

Say = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"vagrant-lab: [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Box, debs, wheelhouse, Vagrant's home and the lab's work files (override: env)."""
    return Path(os.environ.get("SHADOWTAP_VAGRANT_CACHE", "/var/cache/shadowtap-vagrant"))


def work_dir() -> Path:
    return cache_dir() / "lab"


def state_path() -> Path:
    return state.state_dir() / "vagrant-lab.json"


def env() -> dict[str, str]:
    """The environment vagrant runs with: its home, machine state and our lab files."""
    w = work_dir()
    return {**os.environ,
            "VAGRANT_HOME": str(cache_dir() / "vagrant.d"),
            "VAGRANT_DOTFILE_PATH": str(w / ".vagrant"),
            "VAGRANT_CWD": str(VAGRANT_DIR),
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_NO_COLOR": "1",
            "SHADOWTAP_LAB_JSON": str(w / "lab.json"),
            "SHADOWTAP_LAB_SHARE": str(w / "share")}


def check_tools() -> None:
    """Every program the lab needs, or one message naming the packages to install."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)
                      and not Path("/usr/sbin", tool).exists()})
    if missing:
        raise NetconfigError(f"missing packages for the Vagrant lab: {', '.join(missing)}; "
                             "run 'bash scripts/setup.sh' (it installs them)")
    if not (VAGRANT_DIR / "Vagrantfile").is_file():
        raise NetconfigError(f"{VAGRANT_DIR}/Vagrantfile is missing: the Vagrant lab runs from a "
                             "clone of the shadowtap repository")


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _foreign_libvirtd() -> int | None:
    """A libvirtd this lab did not start, answering on the system socket (we must not clash)."""
    if not LIBVIRT_SOCK.exists():
        return None
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(LIBVIRT_SOCK))
    except OSError:
        return None
    finally:
        s.close()
    pid_file = Path("/run/libvirtd.pid")
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return -1


def _ns_run(argv: list[str], timeout: float, check: bool = True, capture: bool = True,
            say: Say | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the lab's namespace with vagrant's environment."""
    full = ["ip", "netns", "exec", NETNS, *argv]
    if say is None:
        try:
            p = subprocess.run(full, env=env(), text=True, timeout=timeout,
                               capture_output=capture)
        except subprocess.TimeoutExpired:
            msg = (f"'{' '.join(argv[:3])}' did not finish in {timeout:.0f} s; the host may be "
                   "overloaded: retry, or raise the timeout")
            raise NetconfigError(msg) from None
    else:  # stream its output line by line, as progress
        proc = subprocess.Popen(full, env=env(), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        lines: list[str] = []
        expired = threading.Event()

        def expire() -> None:  # a silent vagrant is stopped too, not only a chatty one
            expired.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

        timer = threading.Timer(timeout, expire)
        timer.start()
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line)
                say(line.rstrip())
            proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:  # interrupted (Ctrl-C): stop vagrant before tearing down
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
        if expired.is_set():
            raise NetconfigError(f"'{' '.join(argv[:3])}' did not finish in {timeout:.0f} s "
                                 "(TCG guests are slow on a loaded host): raise --timeout, or "
                                 "boot fewer nodes with --nodes")
        p = subprocess.CompletedProcess(full, proc.returncode, "".join(lines), "")
    if check and p.returncode != 0:
        tail = "\n".join(((p.stdout or "") + (p.stderr or "")).strip().splitlines()[-15:])
        raise NetconfigError(f"'{' '.join(argv[:3])}' failed (exit {p.returncode}):\n{tail}")
    return p


@contextlib.contextmanager
def _record() -> Iterator[dict[str, Any]]:
    """The state record, locked and written back (atomically) when the block ends."""
    path = state_path()
    with state.locked(path):
        rec = state.read(path) or {"netns": NETNS, "pids": {}, "status": "new"}
        try:
            yield rec
        finally:
            if rec.get("status") == "gone":
                path.unlink(missing_ok=True)
            else:
                state.write(path, rec)


def _start_daemon(rec: dict[str, Any], name: str, say: Say) -> None:
    """Start virtlogd or libvirtd in the namespace (foreground mode, so its pid is ours)."""
    if _alive(rec["pids"].get(name)):
        return
    log = open(work_dir() / f"{name}.log", "ab")  # noqa: SIM115 - handed to the daemon
    binary = shutil.which(name) or f"/usr/sbin/{name}"
    argv = ["ip", "netns", "exec", NETNS, binary]
    if name == "libvirtd":
        argv = ["ip", "netns", "exec", NETNS, "unshare", "--mount", "--propagation", "private",
                "sh", "-c", f'mount --bind "$1" /dev/kvm && exec {binary}', "sh", _no_kvm()]
    # 'ip netns exec', unshare and sh all exec in place: the pid we get is the daemon's
    proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    rec["pids"][name] = proc.pid
    state.write(state_path(), rec)
    say(f"{name} started in namespace {NETNS} (pid {proc.pid})")


def _no_kvm() -> str:
    """A /dev/null device node with mode 0, mounted over /dev/kvm for libvirtd only.

    /dev/kvm here is nested paravirtual KVM: guests cannot use it (the lab runs TCG), and
    libvirt finds it half usable (its capability probe, run as root, gets KVM; the access
    check for the qemu user does not), so it declares its capability cache stale and re-probes
    QEMU on every call: ~4 s per API call, minutes per 'vagrant up'. With the device hidden
    in libvirtd's private mount namespace both views agree (no KVM) and the cache holds.
    """
    import stat

    path = work_dir() / "no-kvm"
    if not path.exists():
        os.mknod(path, stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(path, 0)
    return str(path)


def _wait_libvirt(rec: dict[str, Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(rec["pids"].get("libvirtd")):
            raise NetconfigError(f"libvirtd exited at start; see {work_dir() / 'libvirtd.log'}")
        p = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True,
                           text=True)
        if p.returncode == 0:
            return
        time.sleep(0.5)
    raise NetconfigError(f"libvirtd did not answer in {timeout:.0f} s; see "
                         f"{work_dir() / 'libvirtd.log'}")


def _virsh(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, timeout=120, check=check)


def _box_volumes() -> list[str]:
    """The box's base volumes in libvirt's 'default' pool (started first: it is no autostart)."""
    if _virsh("pool-info", "default").returncode != 0:
        return []
    _virsh("pool-start", "default")  # fails harmlessly when it is active already
    _virsh("pool-refresh", "default")
    prefix = vagrant.BOX.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"
    return [v for v in _virsh("vol-list", "default", "--name").stdout.split()
            if v.startswith(prefix)]


def build_box(say: Say, timeout: float = 1800) -> Path:
    """Run vagrant/build-box.sh (idempotent: an up-to-date box is kept)."""
    p = subprocess.Popen(["bash", str(VAGRANT_DIR / "build-box.sh"), "--out", str(cache_dir())],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout is not None
    for line in p.stdout:
        say(line.rstrip())
    if p.wait(timeout=timeout) != 0:
        raise NetconfigError("building the box failed (see the lines above)")
    return cache_dir() / "shadowtap-debian.box"


def build_wheelhouse(say: Say) -> Path:
    """shadowtap and every dependency as wheels, for an install in the VM with no index.

    Dependencies are fetched from PyPI once (kept in the cache); shadowtap's own wheel is
    rebuilt on every ``up`` so the VM runs the working tree's code.
    """
    wh = work_dir() / "wheelhouse"
    wh.mkdir(parents=True, exist_ok=True)
    for old in wh.glob("shadowtap-*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    t0 = time.monotonic()
    p = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wh), str(REPO)], text=True,
                       capture_output=True)
    if p.returncode != 0:
        raise NetconfigError(f"building shadowtap's wheel failed:\n{p.stderr.strip()[-2000:]}")
    own = next(wh.glob("shadowtap-*.whl"))
    # offline first (a warm cache needs no network), then with the index for what is missing
    p = subprocess.run([*pip, "wheel", "--no-index", "--find-links", str(wh), "-w", str(wh),
                        str(own)], text=True, capture_output=True)
    if p.returncode != 0:
        say("wheelhouse: fetching shadowtap's dependencies from the package index (once)")
        p = subprocess.run([*pip, "wheel", "--find-links", str(wh), "-w", str(wh), str(own)],
                           text=True, capture_output=True)
        if p.returncode != 0:
            raise NetconfigError("could not gather shadowtap's dependencies as wheels (is PyPI "
                                 f"reachable?):\n{p.stderr.strip()[-2000:]}")
    n = len(list(wh.glob("*.whl")))
    say(f"wheelhouse: {n} wheels in {wh} ({time.monotonic() - t0:.0f} s)")
    return wh


def build_share(say: Say) -> Path:
    """What the gateway VM receives: shadowtap installed from the wheelhouse, as one tar.

    Installing 87 wheels with pip inside a TCG guest takes ~2 minutes (venv + resolve +
    unpack at 1/5 of the host's speed). The box runs Debian's Python 3.11, like this host's
    interpreter, so ``pip install --no-index --target`` runs here (byte-compiled too) and the
    VM only unpacks a tar. With another Python here the wheelhouse itself is shipped and the
    VM installs it with pip, slowly but offline all the same.
    """
    wh = build_wheelhouse(say)
    share = work_dir() / "share"
    shutil.rmtree(share, ignore_errors=True)
    share.mkdir(parents=True)
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != vagrant.BOX_PYTHON:
        say(f"this Python is not the box's {vagrant.BOX_PYTHON}: the gateway installs the "
            "wheelhouse with pip itself (~2 minutes under TCG)")
        shutil.copytree(wh, share / "wheelhouse")
        return share
    t0 = time.monotonic()
    site = work_dir() / "site"
    shutil.rmtree(site, ignore_errors=True)
    p = subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check",
                        "install", "--no-index", "--find-links", str(wh), "--target", str(site),
                        "shadowtap"], text=True, capture_output=True)
    if p.returncode != 0:
        raise NetconfigError(f"installing the wheelhouse for the VM failed:\n"
                             f"{p.stderr.strip()[-2000:]}")
    subprocess.run(["tar", "-C", str(site), "-cf", str(share / "site.tar"), "."], check=True)
    shutil.rmtree(site)
    size = (share / "site.tar").stat().st_size >> 20
    say(f"shadowtap for the gateway VM: {share / 'site.tar'} ({size} MB, "
        f"{time.monotonic() - t0:.0f} s)")
    return share


def _ensure_box(box: Path, say: Say) -> None:
    """Add the box to Vagrant when it is new or was rebuilt (the recipe stamp changed)."""
    stamp_src = box.with_suffix(".recipe")
    vhome = cache_dir() / "vagrant.d"
    added = vhome / "shadowtap-box.added"
    recipe = stamp_src.read_text() if stamp_src.exists() else ""
    if added.exists() and added.read_text() == recipe:
        return
    say(f"adding the box {vagrant.BOX} to Vagrant")
    _ns_run(["vagrant", "box", "add", "--force", "--name", vagrant.BOX, str(box)], timeout=600)
    # the old box's base volume (700 MB) would stay in libvirt's pool for ever: remove it
    for v in _box_volumes():
        _virsh("vol-delete", v, "--pool", "default")
    vhome.mkdir(parents=True, exist_ok=True)
    added.write_text(recipe)


def up(spec: lab.LabSpec, nodes: list[str] | None = None, install: bool = True,
       timeout: float = 1500, keep_on_failure: bool = False, say: Say = _say) -> dict[str, Any]:
    """Build the box, start libvirt in a private namespace, and bring the VMs up."""
    require_root()
    check_tools()
    selected = vagrant.select_nodes(spec, nodes)
    t0 = time.monotonic()
    foreign = _foreign_libvirtd()
    rec0 = state.read(state_path()) or {}
    if foreign is not None and foreign not in (rec0.get("pids") or {}).values():
        raise NetconfigError(f"a libvirtd this lab did not start is running (pid {foreign}); "
                             "stop it first: the lab runs its own, inside a private namespace")
    box = build_box(say)
    w = work_dir()
    w.mkdir(parents=True, exist_ok=True)
    data = vagrant.write(spec, w / "lab.json", selected)
    share = w / "share"
    if install and data["gateway"] in selected:
        build_share(say)
    elif share.exists():
        shutil.rmtree(share)
    try:
        with _record() as rec:
            rec.update(status="starting", nodes=selected, started=time.time())
            state.write(state_path(), rec)
            if not nsmod.exists(NETNS):
                subprocess.run(["ip", "netns", "add", NETNS], check=True)
                subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
                say(f"namespace {NETNS} created (libvirt's bridges, DHCP and NAT live there)")
            _start_daemon(rec, "virtlogd", say)
            _start_daemon(rec, "libvirtd", say)
            _wait_libvirt(rec)
            _ensure_box(box, say)
            say(f"vagrant up: {', '.join(selected)} (QEMU TCG on a busy 2-core host: ~3 "
                "minutes for 3 VMs, ~4 for all 6; full output in "
                f"{w / 'vagrant-up.log'})")
            log = open(w / "vagrant-up.log", "w")  # noqa: SIM115 - closed below

            def progress(line: str) -> None:
                """Everything to the log; to the user, less the box upload and VM settings."""
                log.write(line + "\n")
                if "Progress:" not in line and not re.search(r"^==> [\w-]+:  -- ", line):
                    say(f"  {line}")

            try:
                _ns_run(["vagrant", "up", "--provider", "libvirt"], timeout=timeout,
                        say=progress)
            finally:
                log.close()
            cfg = _ns_run(["vagrant", "ssh-config"], timeout=120).stdout
            (w / "ssh_config").write_text(cfg)
            rec["status"] = "up"
            rec["up_seconds"] = round(time.monotonic() - t0, 1)
        say(f"lab is up in {time.monotonic() - t0:.0f} s: "
            "'scripts/vagrant-lab.sh ssh NODE -- CMD' runs a command in a VM")
        return status()
    except BaseException:
        if keep_on_failure:
            say("up failed; kept for debugging: run 'scripts/vagrant-lab.sh down' to clean up")
        else:
            say("up failed; tearing down what was made")
            with contextlib.suppress(Exception):
                down(say=say)
        raise


def _stop(pid: int, name: str, say: Say, grace: float = 15) -> None:
    if not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    say(f"stopped {name} (pid {pid})")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _ns_pids() -> list[int]:
    if not nsmod.exists(NETNS):
        return []
    p = subprocess.run(["ip", "netns", "pids", NETNS], capture_output=True, text=True)
    return [int(x) for x in p.stdout.split()]


def down(purge: bool = False, say: Say = _say) -> list[str]:
    """Remove everything ``up`` made, in the reverse order; safe to run at any point."""
    require_root()
    done: list[str] = []
    with _record() as rec:
        rec["status"] = "stopping"
        libvirt_ours = _alive(rec["pids"].get("libvirtd"))
        if libvirt_ours and (work_dir() / ".vagrant").exists():
            say("vagrant destroy")
            p = _ns_run(["vagrant", "destroy", "-f"], timeout=600, check=False)
            if p.returncode != 0:
                say(f"vagrant destroy failed (exit {p.returncode}); removing domains with virsh")
            done.append("vms")
        if libvirt_ours:
            # anything left of ours: domains named shadowtap-*, then every active network
            for dom in _virsh("list", "--all", "--name").stdout.split():
                if dom.startswith("shadowtap-"):
                    _virsh("destroy", dom)
                    _virsh("undefine", dom, "--remove-all-storage", "--nvram")
                    done.append(f"domain {dom}")
            for net in _virsh("net-list", "--name").stdout.split():
                _virsh("net-destroy", net)  # stops its dnsmasq and removes its bridge
                done.append(f"network {net}")
            for net in _virsh("net-list", "--all", "--name").stdout.split():
                if net.startswith("shadowtap-"):
                    _virsh("net-undefine", net)
            if purge:
                for v in _box_volumes():
                    _virsh("vol-delete", v, "--pool", "default")
                    done.append(f"volume {v}")
        for name in ("libvirtd", "virtlogd"):
            pid = rec["pids"].get(name)
            if pid:
                _stop(pid, name, say)
                done.append(name)
            rec["pids"].pop(name, None)
        # whatever is left in the namespace was started by our libvirtd (qemu, dnsmasq)
        for pid in _ns_pids():
            _stop(pid, f"process {_comm(pid)}", say, grace=5)
            done.append(f"pid {pid}")
        if nsmod.exists(NETNS):
            subprocess.run(["ip", "netns", "del", NETNS], check=False)
            if nsmod.exists(NETNS):
                raise NetconfigError(f"could not delete namespace {NETNS}: a process holds it "
                                     f"({_ns_pids()}); retry 'down'")
            done.append(f"namespace {NETNS}")
            say(f"namespace {NETNS} deleted")
        for f in ("ssh_config",):
            (work_dir() / f).unlink(missing_ok=True)
        shutil.rmtree(work_dir() / ".vagrant", ignore_errors=True)
        rec["status"] = "gone"
    return done


def status() -> dict[str, Any]:
    """The record, which daemons live, and Vagrant's view of the machines."""
    rec = state.read(state_path())
    out: dict[str, Any] = {"state": rec["status"] if rec else "down", "netns": NETNS,
                           "netns_exists": nsmod.exists(NETNS), "daemons": {}, "machines": {}}
    if not rec:
        return out
    out["nodes"] = rec.get("nodes", [])
    out["up_seconds"] = rec.get("up_seconds")
    for name, pid in rec.get("pids", {}).items():
        out["daemons"][name] = {"pid": pid, "alive": _alive(pid)}
    if out["daemons"].get("libvirtd", {}).get("alive"):
        p = _ns_run(["vagrant", "status", "--machine-readable"], timeout=120, check=False)
        for line in p.stdout.splitlines():
            f = line.split(",")
            if len(f) >= 4 and f[2] == "state" and f[1]:
                out["machines"][f[1]] = f[3]
    return out


def ssh(node: str, command: list[str] | None, timeout: float = 600,
        capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in VM ``node`` over plain ssh (Vagrant's own 'ssh -c' costs seconds).

    No command: an interactive login shell.
    """
    cfg = work_dir() / "ssh_config"
    if not cfg.exists() or not nsmod.exists(NETNS):
        raise NetconfigError("the Vagrant lab is not up: run 'scripts/vagrant-lab.sh up'")
    # ssh hands the remote shell one string: quote each word so it arrives as given
    argv = ["ip", "netns", "exec", NETNS, "ssh", "-F", str(cfg), "-o", "LogLevel=ERROR", node]
    if command:
        argv += ["-o", "BatchMode=yes", "--", shlex.join(command)]
    try:
        return subprocess.run(argv, text=True, timeout=timeout, capture_output=capture)
    except subprocess.TimeoutExpired:
        raise NetconfigError(f"ssh {node} {' '.join(command)[:60]} did not finish in "
                             f"{timeout:.0f} s") from None

