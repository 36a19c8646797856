"""Named network namespaces: existence checks, per-namespace netlink handles, sockets inside.

pyroute2's ``IPRoute(netns=...)``/``NetNS`` silently *create* a namespace that is missing, so
every handle here is opened only after checking ``/run/netns``. Sockets keep the namespace they
were created in, so ``socket_in_netns`` lets one process (the appliance, a test) talk from any
namespace without forking: a short-lived thread enters the namespace, creates the socket, exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from netconfig.errors import NetconfigError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def exists(ns: str | None) -> bool:
    """True for the host namespace (``None``) or a named namespace under /run/netns."""
    return ns is None or os.path.exists(os.path.join(NETNS_DIR, ns))


def list_netns() -> list[str]:
    """Names of all named namespaces (readable without root)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns_context(ns: str | None) -> Iterator[None]:
    """Move the *calling thread* into ``ns`` and back; sockets made inside stay in ``ns``.

    setns(CLONE_NEWNET) is per thread, so other threads are unaffected.
    """
    if ns is None:
        yield
        return
    if not exists(ns):
        raise NetconfigError(f"network namespace {ns!r} does not exist")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def run_in_netns(ns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread that lives in ``ns``; return its result or re-raise."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            with netns_context(ns):
                box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=body, name=f"netns-{ns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def socket_in_netns(
    ns: str | None, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A socket bound to namespace ``ns`` for its whole life, usable from any thread."""
    return run_in_netns(ns, lambda: socket.socket(family, type, proto))


def write_sysctl(ns: str | None, key: str, value: str | int) -> None:
    """Write ``/proc/sys/<key>`` as seen from ``ns`` (pyroute2 has no sysctl API)."""
    path = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(path, "w") as fh:
            fh.write(str(value))

    run_in_netns(ns, write)


def ns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """Prefix ``argv`` with ``ip netns exec NS`` (no shell involved)."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def run_tool(ns: str | None, argv: Sequence[str], stdin: str | None = None) -> str:
    """Run an external tool (nft, ethtool) inside ``ns`` and return stdout; clear error if not.

    The child enters the namespace itself (setns between fork and exec) instead of going
    through ``ip netns exec``, which also unshares and remounts /sys: this halves the time of
    a canary flip.
    """
    if shutil.which(argv[0]) is None:
        raise NetconfigError(f"{argv[0]} is not installed: install it (Debian: apt-get install {argv[0]})")
    if not exists(ns):
        raise NetconfigError(f"network namespace {ns!r} does not exist")
    fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY) if ns else -1
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, check=False,
            preexec_fn=(lambda: _setns(fd)) if ns else None, pass_fds=(fd,) if ns else (),
        )
    finally:
        if fd >= 0:
            os.close(fd)
    if proc.returncode != 0:
        where = f" in namespace {ns}" if ns else ""
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise NetconfigError(f"{argv[0]} failed{where}: {msg[0] if msg else proc.returncode}")
    return proc.stdout


def iproute(ns: str | None) -> Any:
    """An ``IPRoute`` handle for ``ns``; refuses (instead of creating) a missing namespace."""
    from pyroute2 import IPRoute

    if not exists(ns):
        raise NetconfigError(f"network namespace {ns!r} does not exist")
    return IPRoute(netns=ns) if ns else IPRoute()
