"""Child processes with a hard wall-clock limit, optionally inside a network namespace.

Why a module of its own: image sync runs rsync, shell snippets, pytest and locust as children,
and every one of them must be killable. ``rsync --read-batch`` was seen to hang forever at 0 %
CPU on a drifted destination, so a limit that only *raises* (``subprocess.run(timeout=)``) is not
enough: the whole process group is killed, grandchildren included, and the caller gets a result
that says it timed out instead of an exception it might forget to handle.

Namespaces are entered between fork and exec (``setns``), like ``netconfig.netns.run_tool``,
instead of through ``ip netns exec``, which also remounts /sys and costs a few milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from netconfig import netns as nsmod


@dataclass
class Result:
    """What a child did: exit code (None when killed by the limit), output, time taken."""

    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def why(self) -> str:
        """One line for a report: the timeout, or the last line of stderr."""
        if self.timed_out:
            return f"{self.argv[0]} timed out after {self.seconds:.1f} s and was killed"
        lines = (self.stderr or self.stdout).strip().splitlines()
        return f"{self.argv[0]} exited {self.returncode}: {lines[-1] if lines else 'no output'}"


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    netns: str | None = None,
    stdin: str | bytes | None = None,
    stdin_file: str | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Run ``argv`` to completion or kill its process group after ``timeout`` seconds."""
    fd = -1
    if netns:
        if not nsmod.exists(netns):
            return Result(list(argv), 1, "", f"network namespace {netns} does not exist", 0.0)
        fd = os.open(os.path.join(nsmod.NETNS_DIR, netns), os.O_RDONLY)

    def child_setup() -> None:
        if fd >= 0:
            nsmod._setns(fd)

    text = not isinstance(stdin, bytes)
    t0 = time.monotonic()
    fin = open(stdin_file, "rb") if stdin_file else None  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(
            list(argv), stdin=fin if fin else (subprocess.PIPE if stdin is not None else
                                               subprocess.DEVNULL),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
            env=dict(env) if env is not None else None, start_new_session=True,
            preexec_fn=child_setup if fd >= 0 else None, pass_fds=(fd,) if fd >= 0 else (),
            text=text,
        )
    except OSError as e:
        if fin:
            fin.close()
        if fd >= 0:
            os.close(fd)
        return Result(list(argv), 127, "", f"cannot run {argv[0]}: {e.strerror or e}", 0.0)
    finally:
        if fd >= 0:
            os.close(fd)
            fd = -1
    try:
        out, err = proc.communicate(input=stdin if stdin is not None and not fin else None,
                                    timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        timed_out = True
    finally:
        if fin:
            fin.close()
    if isinstance(out, bytes):
        out = out.decode(errors="replace")
        err = err.decode(errors="replace")
    return Result(list(argv), None if timed_out else proc.returncode, out or "", err or "",
                  time.monotonic() - t0, timed_out)


def popen_detached(
    argv: Sequence[str], *, netns: str | None = None, cwd: str | None = None,
    env: Mapping[str, str] | None = None, log: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-lived child (a service, a daemon) in its own session, optionally in ``netns``."""
    fd = os.open(os.path.join(nsmod.NETNS_DIR, netns), os.O_RDONLY) if netns else -1
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
            env=dict(env) if env is not None else None, start_new_session=True,
            preexec_fn=(lambda: nsmod._setns(fd)) if fd >= 0 else None,
            pass_fds=(fd,) if fd >= 0 else (),
        )
    finally:
        if fd >= 0:
            os.close(fd)
        if log and not isinstance(out, int):
            out.close()
