"""The shadow pool: ephemeral shadows (TTL, merge events), fences, ssh/vagrant, scaling."""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from imagehelpers import Env, make_image

from appliance.images.feedback import merge_webhook_server, merged_branch, verify_signature
from appliance.images.imagesync import ImageStore, Replicator, push, remote_hash, tree_hash
from appliance.images.shadows import (
    Pool,
    parse_duration,
    parse_ssh_config,
    scale_target,
    write_ssh_config,
)
from netconfig import lab
from netconfig import netns as nsmod

REPO = Path(__file__).resolve().parents[2]

GITHUB_MERGED = {"action": "closed", "number": 7,
                 "pull_request": {"merged": True, "head": {"ref": "feat-b"},
                                  "base": {"ref": "main"}}}
GITLAB_MERGED = {"object_kind": "merge_request", "event_type": "merge_request",
                 "object_attributes": {"action": "merge", "state": "merged",
                                       "source_branch": "feat-c", "target_branch": "main"}}


def cli(env: Env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ, SHADOWTAP_HOME=str(env.home), SHADOWTAP_STATE_DIR=str(env.tmp / "state"),
             SHADOWTAP_POOL_PREFIX=env.prefix, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True,
                          text=True, env=e, timeout=timeout, cwd=REPO)


@pytest.mark.root
def test_ephemeral_shadows_ttl_gc_and_merge_webhook(env: Env) -> None:
    img = make_image(env.tmp / "img", files=2)
    r = cli(env, "shadow", "create", "--name", "e1", "--image", str(img), "--ttl", "2s",
            "--branch", "feat-a")
    assert r.returncode == 0, r.stderr
    r = cli(env, "shadow", "create", "--name", "e2", "--image", str(img), "--branch", "feat-b")
    assert r.returncode == 0, r.stderr
    recs = {x["name"]: x for x in json.loads(cli(env, "shadow", "list", "--json").stdout)}
    assert set(recs) == {"e1", "e2"} and recs["e1"]["release"] == recs["e2"]["release"]
    assert nsmod.exists(recs["e1"]["ns"]) and recs["e1"]["ns"].startswith(env.prefix)
    h = Pool(env.home).get("e2")
    assert h.http_get(8080, "/VERSION") == (200, b"v1\n")  # the image's service runs

    # debugging: a shell inside the shadow (its namespace, its release) and a port forward
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "shadow", "shell", "e2"],
                       input="ip -o -4 addr show dev eth0; pwd; cat VERSION; exit\n",
                       capture_output=True, text=True, timeout=30, cwd=REPO,
                       env=dict(os.environ, SHADOWTAP_HOME=str(env.home), SHELL="/bin/sh"))
    assert h.addr in r.stdout and "/shadows/e2/releases/" in r.stdout and "v1" in r.stdout, r
    from appliance.images.cli import forward

    srv = forward(h, 8080, ("127.0.0.1", 0))
    try:
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/VERSION"
        assert urllib.request.urlopen(url, timeout=10).read() == b"v1\n"
    finally:
        srv.close()

    time.sleep(max(0.0, recs["e1"]["expires"] - time.time()) + 0.1)
    r = cli(env, "shadow", "gc")
    assert r.returncode == 0 and "e1" in r.stderr
    assert not nsmod.exists(recs["e1"]["ns"]) and not Path(recs["e1"]["root"]).exists()
    assert [x["name"] for x in Pool(env.home).records()] == ["e2"]

    # a GitHub merge of feat-b, POSTed to the merge webhook, deletes e2
    srv = merge_webhook_server(Pool(env.home), "127.0.0.1", 0, secret="s3cret")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        body = json.dumps(GITHUB_MERGED).encode()
        sig = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        req = urllib.request.Request(
            f"http://127.0.0.1:{srv.server_address[1]}/", data=body, method="POST",
            headers={"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": sig,
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read()) == {"branch": "feat-b", "deleted": ["e2"]}
    finally:
        srv.shutdown()
        srv.server_close()
    assert Pool(env.home).records() == []
    assert not nsmod.exists(recs["e2"]["ns"])
    r = cli(env, "shadow", "delete", "nope")
    assert r.returncode == 2 and r.stderr.startswith("error: no shadow named")


def _probe(ns: str, addr: str, port: int) -> int:
    """0 if a TCP connect from ``ns`` succeeds, else the errno (ETIMEDOUT for a timeout)."""
    s = nsmod.socket_in_netns(ns)
    s.settimeout(1.0)
    try:
        s.connect((addr, port))
        return 0
    except TimeoutError:
        return errno.ETIMEDOUT
    except OSError as e:
        return e.errno or -1
    finally:
        s.close()


@pytest.mark.root
def test_pool_shadow_behind_lab_gateway_cannot_reach_production(env: Env) -> None:
    labp = f"{env.prefix}l-"
    spec = yaml.safe_load(lab.DEFAULT_SPEC_YAML)
    spec["prefix"] = labp
    lab.up(lab.parse_spec(spec))
    try:
        pool = Pool(env.home, prefix=env.prefix, attach_lab=labp)
        h = pool.create("f0", image="demo")
        ns = h.rec["ns"]
        assert h.client_netns == f"{labp}gateway"
        # positive control: the appliance address answers (RST from a closed port)
        assert _probe(ns, h.rec["appliance_addr"], 9) == errno.ECONNREFUSED
        targets = ["10.77.2.2", "10.77.100.10", "10.77.3.2", "10.77.1.2", "10.77.2.1",
                   "10.77.11.2"]
        for t in targets:
            assert _probe(ns, t, 80) not in (0, errno.ECONNREFUSED), t
        # a compromised shadow drops its own fence and adds a default route: still nothing
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet",
                        "shadowtap_fence"], check=True)
        subprocess.run(["ip", "-n", ns, "route", "add", "default", "via",
                        h.rec["appliance_addr"]], check=True)
        for t in targets[:3]:
            assert _probe(ns, t, 80) not in (0, errno.ECONNREFUSED), t
        # and image sync still works through the fence
        img = make_image(env.tmp / "img", files=2)
        _, res = push(img, "base", pool=pool)
        assert [a.ok for a in res] == [True]
        assert h.http_get(8080, "/VERSION")[1] == b"v1\n"
        pool.delete("f0")
        assert not nsmod.exists(ns)
    finally:
        lab.down(labp)


FAKE_SSH = """#!/bin/sh
# TEST DOUBLE for ssh: only the transport is mocked. It drops ssh's options and the host name
# and runs the remote command line locally, so the ssh backend's real commands (rsync --server
# started by 'rsync -e ssh', the image scripts) all run for real.
while [ $# -gt 0 ]; do
  case "$1" in -o|-F|-p|-i|-l) shift 2;; -t|-T|-q|-n) shift;; *) break;; esac
done
shift
exec sh -c "$*"
"""


@pytest.mark.root
def test_ssh_backend_through_a_mock_transport(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = env.tmp / "bin"
    bindir.mkdir()
    (bindir / "ssh").write_text(FAKE_SSH)
    (bindir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    img = make_image(env.tmp / "img", files=5)
    # no service in this image: a service here would listen in the host namespace
    (img / "shadowtap-image.yaml").write_text("name: demo\n")
    pool = Pool(env.home, prefix=env.prefix)
    vm_root = env.tmp / "vm" / "srv"
    h = pool.create("vm1", image="demo", backend="ssh", ssh_host="build-vm",
                    remote_root=str(vm_root))
    assert h.rsync_extra()[0] == "-e" and "BatchMode=yes" in h.rsync_extra()[1]
    _, res = push(img, "base", pool=pool)
    assert [a.mode for a in res] == ["full"] and res[0].service == "none declared"
    (img / "VERSION").write_text("v2\n")
    (img / "data" / "blob001").write_bytes(os.urandom(1000))
    _, res2 = push(img, "next", pool=pool)
    assert [a.mode for a in res2] == ["batch"], res2
    assert remote_hash(h, "current", deep=True) == tree_hash(img, deep=True)
    assert (vm_root / "current" / "VERSION").read_text() == "v2\n"
    pool.delete("vm1")
    assert not (vm_root / "releases").exists()


VAGRANT_SSH_CONFIG = """Host web
  HostName 192.168.121.45
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/dev/shadow lab/.vagrant/machines/web/libvirt/private_key
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

Host db
  HostName 127.0.0.1
  User vagrant
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/home/dev/shadow lab/.vagrant/machines/db/virtualbox/private_key"
  IdentitiesOnly yes
  LogLevel FATAL
"""


def test_vagrant_ssh_config_parsed_and_accepted_by_ssh(tmp_path: Path) -> None:
    hosts = parse_ssh_config(VAGRANT_SSH_CONFIG)
    assert list(hosts) == ["web", "db"]
    assert hosts["web"]["hostname"] == "192.168.121.45" and hosts["web"]["user"] == "vagrant"
    assert hosts["db"]["port"] == "2222"
    assert hosts["web"]["identityfile"].endswith("shadow lab/.vagrant/machines/web/libvirt/"
                                                 "private_key")
    assert hosts["db"]["identityfile"] == ("/home/dev/shadow lab/.vagrant/machines/db/"
                                           "virtualbox/private_key")
    cfg = tmp_path / "ssh_config"
    write_ssh_config(hosts, cfg)
    # the real ssh client reads our file back the same way (-G: print the resolved config)
    out = subprocess.run(["ssh", "-G", "-F", str(cfg), "db"], capture_output=True, text=True,
                         check=True).stdout.lower().splitlines()
    assert "hostname 127.0.0.1" in out and "port 2222" in out and "user vagrant" in out
    assert any(x.startswith("identityfile ") and "shadow lab" in x for x in out)


def test_scale_target_follows_the_build_queue() -> None:
    kw = {"minimum": 1, "maximum": 4, "idle_after": 60.0}
    assert scale_target(1, queued=2, idle_seconds=0, **kw) == 3
    assert scale_target(3, queued=5, idle_seconds=0, **kw) == 4  # capped
    assert scale_target(3, queued=0, idle_seconds=10, **kw) == 3  # recently busy: keep
    assert scale_target(3, queued=0, idle_seconds=61, **kw) == 2  # idle: one fewer
    assert scale_target(1, queued=0, idle_seconds=999, **kw) == 1  # floor
    assert scale_target(0, queued=0, idle_seconds=0, **kw) == 1  # minimum is kept


@pytest.mark.root
def test_autoscale_grows_with_queue_and_shrinks_after_idle(env: Env) -> None:
    img = make_image(env.tmp / "img", files=2)
    pool = Pool(env.home, prefix=env.prefix)
    store = ImageStore("demo", env.home)
    store.take(img, "base")
    rep = Replicator(store)

    def provision(h: object) -> None:
        snap = store.latest()
        assert snap is not None
        assert rep.apply_one(h, snap).ok  # type: ignore[arg-type]

    kw = {"minimum": 1, "maximum": 3, "idle_after": 60.0, "provision": provision}
    assert pool.autoscale("demo", queued=2, idle_seconds=0, **kw) == ["+demo-1", "+demo-2"]
    assert pool.autoscale("demo", queued=0, idle_seconds=5, **kw) == []
    assert pool.autoscale("demo", queued=0, idle_seconds=120, **kw) == ["-demo-2"]
    assert [h.name for h in pool.hosts("demo")] == ["demo-1"]
    assert pool.health("demo-1", 8080, "/VERSION")["service"] == "up"


def test_merge_events_and_signatures() -> None:
    gh = json.dumps(GITHUB_MERGED).encode()
    assert merged_branch({"X-GitHub-Event": "pull_request"}, gh) == "feat-b"
    closed = dict(GITHUB_MERGED, pull_request={"merged": False, "head": {"ref": "x"}})
    assert merged_branch({"X-GitHub-Event": "pull_request"}, json.dumps(closed).encode()) is None
    gl = json.dumps(GITLAB_MERGED).encode()
    assert merged_branch({"X-Gitlab-Event": "Merge Request Hook"}, gl) == "feat-c"
    opened = {**GITLAB_MERGED, "object_attributes": {"action": "open", "state": "opened",
                                                     "source_branch": "feat-c"}}
    assert merged_branch({}, json.dumps(opened).encode()) is None
    assert merged_branch({}, b"not json") is None
    sig = "sha256=" + hmac.new(b"k", gh, hashlib.sha256).hexdigest()
    assert verify_signature({"X-Hub-Signature-256": sig}, gh, "k")
    assert not verify_signature({"X-Hub-Signature-256": sig}, gh, "other")
    assert verify_signature({"X-Gitlab-Token": "k"}, gl, "k")
    assert not verify_signature({}, gl, "k")


def test_parse_duration() -> None:
    assert parse_duration("2s") == 2 and parse_duration("30m") == 1800
    assert parse_duration("2h") == 7200 and parse_duration("90") == 90
    with pytest.raises(Exception, match="bad duration"):
        parse_duration("soon")


def test_permission_and_secret_scanners(tmp_path: Path) -> None:
    from appliance.images.checks import scan_secrets, scan_tree_permissions

    (tmp_path / "tmp").mkdir()
    os.chmod(tmp_path / "tmp", 0o1777)  # sticky: fine
    (tmp_path / "open").write_text("x")
    os.chmod(tmp_path / "open", 0o666)
    (tmp_path / "su").write_text("x")
    os.chmod(tmp_path / "su", 0o2755)
    ww, suid = scan_tree_permissions(tmp_path, set())
    assert ww == ["open"] and suid == ["su"]
    assert stat.S_IMODE((tmp_path / "tmp").stat().st_mode) == 0o1777
    (tmp_path / "cfg.env").write_text("AWS_KEY=AKIAABCDEFGHIJKLMNOP\n")
    (tmp_path / "gh").write_text("token: ghp_" + "a" * 36 + "\n")
    (tmp_path / "ok.txt").write_text("password: short\nnothing to see\n")
    hits = scan_secrets(tmp_path, ["cfg.env", "gh", "ok.txt", "missing"])
    assert hits == ["cfg.env: AWS access key", "gh: GitHub token"]


def test_watcher_pushes_once_per_settled_burst(tmp_path: Path) -> None:
    from appliance.images.imagesync import TreeWatcher

    calls: list[float] = []
    w = TreeWatcher(tmp_path, lambda: calls.append(time.monotonic()), settle=0.4,
                    ignore=["*.tmp"])
    w.start()
    try:
        t0 = time.monotonic()
        for i in range(15):  # a build writing for ~0.75 s
            (tmp_path / f"f{i}").write_text("x" * i)
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.6)
        assert len(calls) == 1 and calls[0] - t0 >= 0.75 + 0.4 - 0.1
        (tmp_path / "scratch.tmp").write_text("ignored")
        time.sleep(0.8)
        assert len(calls) == 1  # ignored pattern: no push
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "g").write_text("y")
        time.sleep(1.0)
        assert len(calls) == 2
    finally:
        w.stop()


def test_port_probe_helper_reports_refused(tmp_path: Path) -> None:
    """The fence test relies on telling 'refused' (reachable) from 'dropped'."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert _probe(None, "127.0.0.1", port) == errno.ECONNREFUSED  # type: ignore[arg-type]


SSHD = "/usr/sbin/sshd"


@pytest.mark.root
@pytest.mark.skipif(not Path(SSHD).exists(), reason="openssh-server is not installed")
def test_ssh_backend_against_a_real_sshd_in_a_namespace(env: Env) -> None:
    """A 'VM' = a fenced namespace running a real sshd; the ssh side runs in the gateway
    namespace (via_netns), as it would for VMs on a lab network."""
    from appliance import procs

    pool = Pool(env.home, prefix=env.prefix)
    vm = pool.create("vm-host", image="(none)")  # only provides the namespace and the fence
    d = env.tmp / "sshd"
    d.mkdir()
    for name in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    (d / "sshd_config").write_text(
        f"Port 22\nListenAddress {vm.addr}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    procs.popen_detached([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], netns=vm.rec["ns"],
                         log=str(d / "sshd.log"))
    cfg = d / "ssh_config"
    cfg.write_text(f"Host build-vm\n  HostName {vm.addr}\n  User root\n  IdentityFile {d}/id\n"
                   "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                   "  LogLevel ERROR\n")
    deadline = time.monotonic() + 10
    while True:
        try:
            vm.connect(22, 0.5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, (d / "sshd.log").read_text()
            time.sleep(0.1)

    img = make_image(env.tmp / "img", files=5)
    h = pool.create("vm1", image="demo", backend="ssh", ssh_host="build-vm",
                    ssh_config=str(cfg), remote_root=str(env.tmp / "vmroot"),
                    via_netns=vm.client_netns)
    assert h.addr == vm.addr
    _, res = push(img, "base", pool=pool)
    assert [(a.mode, a.ok, a.service) for a in res] == [("full", True, "up")], res
    assert h.http_get(8080, "/VERSION") == (200, b"v1\n")  # the service runs on the "VM"
    (img / "VERSION").write_text("v2\n")
    (img / "data" / "blob002").write_bytes(os.urandom(5000))
    _, res = push(img, "next", pool=pool)
    assert [(a.mode, a.ok) for a in res] == [("batch", True)], res
    assert remote_hash(h, "current", deep=True) == tree_hash(img, deep=True)
    assert h.http_get(8080, "/VERSION") == (200, b"v2\n")
    # it really went through sshd: sshd logged sessions from the gateway side's address (the
    # address, not sshd's wording for a login, which is its own)
    src = str(vm.rec["appliance_addr"])
    assert re.search(rf"(?<![\d.]){re.escape(src)}(?![\d.])", (d / "sshd.log").read_text()), \
        (d / "sshd.log").read_text()


@pytest.mark.root
def test_build_scales_the_pool_with_queued_builds_and_idle_time(env: Env) -> None:
    from appliance.images.feedback import build

    img = make_image(env.tmp / "img", files=2)
    pool = Pool(env.home, prefix=env.prefix)
    queue = env.home / "queue" / "demo"
    queue.mkdir(parents=True)
    waiting = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]  # two builds waiting
    try:
        for p in waiting:
            (queue / str(p.pid)).write_text("0")
        res = build(img, "one", pool=pool, min_shadows=1, max_shadows=4)
        assert sorted(h.name for h in pool.hosts("demo")) == ["demo-1", "demo-2"]
    finally:
        for p in waiting:
            p.kill()
            p.wait()
    assert res.ok and [a.mode for a in res.applies] == ["full", "full"]
    (img / "VERSION").write_text("v2\n")
    res = build(img, "two", pool=pool, min_shadows=1, max_shadows=4)
    assert len(pool.hosts("demo")) == 2  # nothing queued, not idle: keep
    assert res.ok and [a.mode for a in res.applies] == ["batch", "batch"]
    assert not list(queue.iterdir())  # dead waiters and our own entry are gone
    (img / "VERSION").write_text("v3\n")
    res = build(img, "three", pool=pool, min_shadows=1, max_shadows=4, idle_after=0)
    assert [h.name for h in pool.hosts("demo")] == ["demo-1"]  # idle: one fewer
    assert res.ok and [a.mode for a in res.applies] == ["batch"]


@pytest.mark.root
def test_image_watch_pushes_when_the_build_tree_settles(env: Env) -> None:
    import signal

    img = make_image(env.tmp / "img", files=2)
    pool = Pool(env.home, prefix=env.prefix)
    h = pool.create("w0", image="demo")
    push(img, "base", pool=pool)
    e = dict(os.environ, SHADOWTAP_HOME=str(env.home), SHADOWTAP_STATE_DIR=str(env.tmp / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "image", "watch", str(img),
                             "--settle", "0.5"], cwd=REPO, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2.0)  # watcher up (imports, inotify watches)
        for i in range(5):  # a build step writing for a while
            (img / "data" / f"pkg{i}").write_bytes(os.urandom(10_000))
            time.sleep(0.1)
        (img / "VERSION").write_text("v2\n")
        deadline = time.monotonic() + 30
        got = None
        while time.monotonic() < deadline and got != (200, b"v2\n"):
            time.sleep(0.2)
            try:
                got = h.http_get(8080, "/VERSION")
            except OSError:  # the service restarting on the new release
                got = None
        assert got == (200, b"v2\n")
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=20)[0]
    assert "watching" in out and "passed" in out, out
    snaps = ImageStore("demo", env.home).snapshots()
    assert [s.stage for s in snaps] == ["base", "watch #1"]  # one push for the whole burst
