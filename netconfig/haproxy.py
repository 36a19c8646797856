"""Request-level canary split: HAProxy in the gateway namespace, weights through its runtime API.

The nft split (``netconfig.routing``) chooses a backend once per *connection*: keep-alive
clients, pooled load balancers, HTTP/2 and gRPC never move. Here a real L7 proxy chooses per
*request*:

- ``netconfig`` writes a ``haproxy.cfg`` (HTTP mode, ``option http-keep-alive``, ``balance
  random(1)`` over a ``prod`` and a ``canary`` server with weights, optional sticky cookie,
  optional header/cookie-matched A/B routes through ``use_backend ... if <acl>``, and an admin
  stats socket) and starts HAProxy (Debian's package) inside the gateway namespace, bound on
  the VIP, which the lab puts on the gateway's loopback.
- A weight change is one line on the stats socket (``set weight be_app/canary N; set weight
  be_app/prod M``): no reload, no new process, no request dropped; the next request is balanced
  with the new weights, also on a connection that is already open.
- HAProxy connects to each backend's own address (prod 10.77.2.2, canary 10.77.3.2 in the
  lab), so the mirror on the gateway's backend-facing links sees both legs and the judge tells
  them apart by server address (``appliance.canary.rollout.AddressBackends``).

Weights have 0.5 % resolution: the canary gets ``round(2 * percent)`` and production the rest
of ``SCALE`` = 200 (HAProxy allows 0-256).

A record per namespace (``<state dir>/haproxy-<netns>.json``) says where the config, the socket
and the pid are; ``split_of`` uses it to tell which split a gateway runs, and ``show``/``set``
dispatch on it, so ``route set``, ``route show`` and ``canary run`` work with either.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from netconfig import netns as nsmod
from netconfig import state
from netconfig.errors import NetconfigError

SCALE = 200
BACKEND = "be_app"
FRONTEND = "fe_vip"
SERVERS = ("prod", "canary")
COOKIE = "SHADOWTAP_BACKEND"
MAX_REUSE = 100
"""Requests per server-side connection before HAProxy opens a new one (see ``render``)."""
HDR_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
VALUE_RE = re.compile(r"^[A-Za-z0-9._:/@+=-]{1,128}$")


@dataclass
class ABRoute:
    """Requests matching a header or a cookie always go to one backend (an A/B route)."""

    to: str  # "prod" or "canary"
    header: str | None = None
    cookie: str | None = None
    value: str = ""

    def validate(self, where: str) -> None:
        if self.to not in SERVERS:
            raise NetconfigError(f"{where}.to must be prod or canary, not {self.to!r}")
        if (self.header is None) == (self.cookie is None):
            raise NetconfigError(f"{where}: give exactly one of header or cookie")
        name = self.header if self.header is not None else self.cookie
        if not HDR_RE.match(str(name)):
            raise NetconfigError(f"{where}: bad header/cookie name {name!r}")
        if not VALUE_RE.match(str(self.value)):
            raise NetconfigError(f"{where}.value {self.value!r}: use letters, digits and ._:/@+=-")


@dataclass
class HAProxySplit:
    """What the proxy in one gateway namespace balances."""

    netns: str | None
    vip: str
    prod: str
    canary: str
    port: int = 80
    backend_port: int | None = None
    sticky: bool = False
    routes: list[ABRoute] = field(default_factory=list)
    maxconn: int = 4000

    def validate(self) -> None:
        for name in ("vip", "prod", "canary"):
            try:
                ipaddress.IPv4Address(getattr(self, name))
            except ValueError:
                raise NetconfigError(f"haproxy split: {name} must be an IPv4 address, not "
                                     f"{getattr(self, name)!r}") from None
        for p in (self.port, self.backend_port or self.port):
            if not 1 <= int(p) <= 65535:
                raise NetconfigError(f"haproxy split: port {p} is not in 1..65535")
        for i, r in enumerate(self.routes):
            r.validate(f"routes[{i}]")


def weights(percent: float) -> tuple[int, int]:
    """(prod, canary) HAProxy weights for ``percent`` of requests to the canary."""
    if not 0 <= percent <= 100:
        raise NetconfigError(f"canary percent must be between 0 and 100, not {percent}")
    c = round(percent * SCALE / 100)
    return SCALE - c, c


# ---- files and records ---------------------------------------------------------------------

def _key(ns: str | None) -> str:
    return ns or "host"


def workdir(ns: str | None) -> Path:
    return state.state_dir() / "haproxy" / _key(ns)


def record_path(ns: str | None) -> Path:
    return state.state_dir() / f"haproxy-{_key(ns)}.json"


def socket_path(ns: str | None) -> Path:
    p = workdir(ns) / "admin.sock"
    if len(str(p)) > 100:  # sun_path holds 108 bytes
        h = hashlib.sha256(str(p).encode()).hexdigest()[:12]
        p = Path("/run" if os.access("/run", os.W_OK) else "/tmp") / f"shadowtap-hap-{h}.sock"
    return p


def render(cfg: HAProxySplit, percent: float, sock: Path, pidfile: Path) -> str:
    """The whole haproxy.cfg for ``cfg`` with the canary at ``percent``."""
    cfg.validate()
    wp, wc = weights(percent)
    bport = cfg.backend_port or cfg.port
    ck = f" cookie {COOKIE} insert indirect nocache httponly" if cfg.sticky else ""
    lines = [
        "# written by shadowtap (netconfig.haproxy): the canary's request-level split",
        "global",
        f"    pidfile {pidfile}",
        f"    stats socket {sock} mode 600 level admin",
        "    stats timeout 10s",
        f"    maxconn {cfg.maxconn}",
        "    nbthread 1",
        "",
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        "    timeout connect 3s",
        "    timeout client 120s",
        "    timeout server 60s",
        "    timeout http-keep-alive 120s",
        "    timeout http-request 30s",
        "    retries 3",
        "    option redispatch 1",
        "",
        f"frontend {FRONTEND}",
        f"    bind {cfg.vip}:{cfg.port}",
        "    http-request set-header X-Forwarded-For %[src]",
    ]
    for i, r in enumerate(cfg.routes):
        fetch = f"req.hdr({r.header})" if r.header is not None else f"req.cook({r.cookie})"
        lines.append(f"    acl ab_{i} {fetch} -m str {r.value}")
    for i, r in enumerate(cfg.routes):
        lines.append(f"    use_backend be_only_{r.to} if ab_{i}")
    lines += [
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        # random(1): each request picks a server with probability weight/total, and a weight
        # change holds from the next request. Weighted round robin re-places a server whose
        # weight rose and hands it a catch-up burst: measured in the lab, 100 % of requests to
        # the canary for ~0.4 s (~250 requests) after each step up, the opposite of a canary.
        # One draw: with two servers, "the least loaded of two draws" would undo the weights.
        "    balance random(1)",
    ]
    if cfg.sticky:
        lines.append(f"    cookie {COOKIE} insert indirect nocache httponly")
    # max-reuse: server-side keep-alive connections are renewed every MAX_REUSE requests, so a
    # capture (the judge) started after they were opened sees new ones from their SYN at once
    opt = f" max-reuse {MAX_REUSE}"
    lines += [
        f"    server prod {cfg.prod}:{bport} weight {wp}{opt}" + (" cookie prod" if ck else ""),
        f"    server canary {cfg.canary}:{bport} weight {wc}{opt}"
        + (" cookie canary" if ck else ""),
    ]
    for name, addr in (("prod", cfg.prod), ("canary", cfg.canary)):
        if any(r.to == name for r in cfg.routes):
            lines += ["", f"backend be_only_{name}", f"    server {name} {addr}:{bport}{opt}"]
    return "\n".join(lines) + "\n"


# ---- the runtime API -------------------------------------------------------------------------

def command(sock: Path | str, cmd: str, timeout: float = 5.0) -> str:
    """One command line on HAProxy's stats socket; the answer (the socket closes after it)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock))
        s.sendall(cmd.encode() + b"\n")
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    except OSError as exc:
        raise NetconfigError(f"haproxy's runtime API at {sock} did not answer ({exc}): is the "
                             "proxy running? ('shadowtap lab up' starts it)") from None
    finally:
        s.close()
    return b"".join(chunks).decode(errors="replace")


def set_weights(sock: Path | str, percent: float) -> tuple[int, int]:
    """Both servers' weights in one runtime-API call (no reload); returns (prod, canary)."""
    wp, wc = weights(percent)
    # The server that keeps a weight first: between the two commands the sum never reaches 0
    # (100 -> 0 sets prod 200 before canary 0; 0 -> 100 sets canary 200 before prod 0).
    order = [("canary", wc), ("prod", wp)] if wp == 0 else [("prod", wp), ("canary", wc)]
    out = command(sock, "; ".join(f"set weight {BACKEND}/{s} {w}" for s, w in order))
    if out.strip():
        raise NetconfigError(f"haproxy refused the weight change: {out.strip()}")
    return wp, wc


def get_weights(sock: Path | str) -> tuple[int, int]:
    """(prod, canary) weights HAProxy uses now."""
    out = command(sock, f"get weight {BACKEND}/prod; get weight {BACKEND}/canary")
    nums = re.findall(r"^(\d+) \(initial \d+\)", out, re.M)
    if len(nums) != 2:
        raise NetconfigError(f"haproxy answered 'get weight' with {out.strip()!r}")
    return int(nums[0]), int(nums[1])


def server_stats(sock: Path | str) -> dict[str, dict[str, int]]:
    """Requests answered per server of the split backend (``show stat``), plus sessions."""
    out = command(sock, "show stat")
    lines = out.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise NetconfigError(f"haproxy answered 'show stat' with {out[:80]!r}")
    cols = lines[0][2:].split(",")
    res: dict[str, dict[str, int]] = {}
    for line in lines[1:]:
        row = dict(zip(cols, line.split(","), strict=False))
        if row.get("pxname") != BACKEND or row.get("svname") not in SERVERS:
            continue

        def num(k: str, row: dict[str, str] = row) -> int:
            v = row.get(k) or "0"
            return int(v) if v.isdigit() else 0
        res[row["svname"]] = {
            "responses": sum(num(k) for k in ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx",
                                              "hrsp_5xx", "hrsp_other")),
            "errors_5xx": num("hrsp_5xx"), "sessions": num("stot"), "weight": num("weight")}
    return res


# ---- process ---------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_record(ns: str | None) -> dict[str, Any] | None:
    return state.read(record_path(ns))


def running(ns: str | None) -> dict[str, Any] | None:
    """The record of the proxy in ``ns`` when its process is alive."""
    rec = read_record(ns)
    if rec is None:
        return None
    try:
        pid = int(Path(rec["pidfile"]).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return rec if _pid_alive(pid) else None


def install(cfg: HAProxySplit, percent: float) -> dict[str, Any]:
    """Write the config and start HAProxy in ``cfg.netns`` (idempotent).

    Already running there: the weights are set through the runtime API only when the record
    differs in nothing else; a different config restarts it (lab up with a changed spec).
    """
    if shutil.which("haproxy") is None:
        raise NetconfigError("haproxy is not installed: install it (Debian: apt-get install "
                             "haproxy) or choose the proxy-free split (canary.split: nft)")
    cfg.validate()
    weights(percent)
    wd = workdir(cfg.netns)
    wd.mkdir(parents=True, exist_ok=True)
    os.chmod(wd, 0o700)
    sock, pidfile, cfgfile = socket_path(cfg.netns), wd / "haproxy.pid", wd / "haproxy.cfg"
    rec = {"netns": cfg.netns, "split": asdict(cfg), "config": str(cfgfile),
           "socket": str(sock), "pidfile": str(pidfile)}
    live = running(cfg.netns)
    if live is not None:
        if live.get("split") == rec["split"]:
            set_weights(sock, percent)
            return live
        stop(cfg.netns)
    cfgfile.write_text(render(cfg, percent, sock, pidfile))
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfgfile)], capture_output=True,
                           text=True)
    if check.returncode != 0:
        msg = (check.stderr or check.stdout).strip().splitlines()
        raise NetconfigError(f"haproxy refused {cfgfile}: {msg[-1] if msg else check.returncode}")
    if not nsmod.exists(cfg.netns):
        raise NetconfigError(f"network namespace {cfg.netns!r} does not exist")
    log = open(wd / "haproxy.log", "ab")  # noqa: SIM115 - handed to the daemon
    fd = os.open(os.path.join(nsmod.NETNS_DIR, cfg.netns), os.O_RDONLY) if cfg.netns else -1
    try:
        proc = subprocess.run(
            ["haproxy", "-D", "-f", str(cfgfile)], stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, check=False,
            preexec_fn=(lambda: nsmod._setns(fd)) if cfg.netns else None,
            pass_fds=(fd,) if cfg.netns else (), start_new_session=True)
    finally:
        log.close()
        if fd >= 0:
            os.close(fd)
    if proc.returncode != 0:
        tail = (wd / "haproxy.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise NetconfigError(f"haproxy did not start in {cfg.netns or 'the host'}: "
                             f"{' | '.join(tail) or proc.returncode}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            get_weights(sock)
            break
        except NetconfigError:
            time.sleep(0.05)
    else:
        raise NetconfigError(f"haproxy started but its runtime API {sock} does not answer")
    state.write(record_path(cfg.netns), rec)
    return rec


def stop(ns: str | None, timeout: float = 5.0) -> bool:
    """Stop the proxy in ``ns`` (if any) and forget it; True when one was running."""
    rec = read_record(ns)
    if rec is None:
        return False
    was = False
    try:
        pid = int(Path(rec["pidfile"]).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0
    if pid and _pid_alive(pid):
        was = True
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    Path(rec["socket"]).unlink(missing_ok=True)
    record_path(ns).unlink(missing_ok=True)
    return was


# ---- either split ----------------------------------------------------------------------------

def split_of(ns: str | None) -> str:
    """'haproxy' when a proxy shadowtap started runs in ``ns``, else 'nft'."""
    return "haproxy" if running(ns) is not None else "nft"


def show(ns: str | None) -> dict[str, Any]:
    """The live split in ``ns`` (either kind): like ``routing.show`` plus ``split`` and, for
    HAProxy, the servers' addresses and requests answered per backend."""
    rec = running(ns)
    if rec is None:
        from netconfig import routing

        return {**routing.show(ns), "split": "nft"}
    sock = rec["socket"]
    wp, wc = get_weights(sock)
    st = server_stats(sock)
    reqs = {s: st.get(s, {}).get("responses", 0) for s in SERVERS}
    total = sum(reqs.values())
    sp = rec["split"]
    return {"netns": ns, "split": "haproxy", "vip": sp["vip"],
            "canary_percent": round(wc * 100 / (wp + wc), 2) if wp + wc else 0.0,
            "weights": {"prod": wp, "canary": wc},
            "servers": {"prod": sp["prod"], "canary": sp["canary"]},
            "requests": reqs,
            "observed_canary_percent": round(100 * reqs["canary"] / total, 2) if total else None,
            "sticky": sp.get("sticky", False), "routes": sp.get("routes", [])}


def set_canary(ns: str | None, percent: float) -> None:
    """Set the canary's share in ``ns``: per request (HAProxy) or per new connection (nft)."""
    rec = running(ns)
    if rec is None:
        from netconfig import routing

        routing.set_canary(ns, percent)
        return
    set_weights(rec["socket"], percent)


def live_percent(ns: str | None) -> float:
    """The canary share the split in ``ns`` applies now (read back from the proxy or nft)."""
    return float(show(ns)["canary_percent"])
