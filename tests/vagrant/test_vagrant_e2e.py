"""End to end: real VMs under QEMU TCG. Build the box, boot client, gateway and prod, send HTTP
from the client VM to the VIP, check prod answered, and that the gateway's mirror delivered
every exchange to ``shadowtap capture`` on cap0 inside the gateway VM.

Slow (a few minutes on 2 shared cores; the first run also builds the box, ~2 minutes), so it
runs only with SHADOWTAP_VAGRANT_E2E=1 (see docs/vagrant.md). Everything it starts (VMs,
libvirt networks, libvirtd, virtlogd, the namespace) is removed afterwards, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netconfig import lab, vmlab
from netconfig import netns as nsmod

NODES = ["client", "gateway", "prod"]
N = 6

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(os.environ.get("SHADOWTAP_VAGRANT_E2E") != "1",
                       reason="boots VMs under TCG (minutes): set SHADOWTAP_VAGRANT_E2E=1"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("vagrant", "virsh", "debootstrap")),
                       reason="vagrant/libvirt/debootstrap missing: bash scripts/setup.sh"),
]

CLIENT = f"""
import json, sys, time, urllib.request
out = []
for i in range({N}):
    for attempt in range(20):  # the backend's web server may still be starting
        try:
            with urllib.request.urlopen("http://10.77.100.10/e2e/%d" % i, timeout=10) as r:
                out.append([r.status, r.headers["X-Served-By"], json.loads(r.read())["path"]])
            break
        except OSError:
            time.sleep(1)
    else:
        sys.exit("no answer from the VIP for /e2e/%d" % i)
print(json.dumps(out))
"""


def test_a_failed_up_leaves_nothing_behind(tmp_path: Path) -> None:
    """'vagrant up' cut short (a 5 s limit): everything up made is removed, nothing else.

    First in the module: the lab of the tests below is up until the module ends.
    """
    from netconfig.errors import NetconfigError

    if nsmod.exists(vmlab.NETNS):
        pytest.skip(f"namespace {vmlab.NETNS} exists: a Vagrant lab is running")
    old = os.environ.get("SHADOWTAP_STATE_DIR")
    os.environ["SHADOWTAP_STATE_DIR"] = str(tmp_path)
    try:
        with pytest.raises(NetconfigError, match="did not finish in 5 s"):
            vmlab.up(lab.load_spec(None), ["client"], install=False, timeout=5, say=print)
        assert not nsmod.exists(vmlab.NETNS)
        assert vmlab.status()["state"] == "down"
        assert vmlab.down(say=print) == []  # nothing left to remove
    finally:
        if old is None:
            os.environ.pop("SHADOWTAP_STATE_DIR", None)
        else:
            os.environ["SHADOWTAP_STATE_DIR"] = old
    assert not list(Path("/var/lib/libvirt/images").glob("shadowtap-client*"))
    assert not [d for d in Path("/etc/libvirt/qemu").glob("shadowtap-*.xml")]


@pytest.fixture(scope="module")
def vmlab_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("vmstate")
    old = os.environ.get("SHADOWTAP_STATE_DIR")
    if nsmod.exists(vmlab.NETNS):
        pytest.skip(f"namespace {vmlab.NETNS} exists: a Vagrant lab is running; "
                    "'scripts/vagrant-lab.sh down' first")
    os.environ["SHADOWTAP_STATE_DIR"] = str(state)
    t0 = time.monotonic()
    try:
        st = vmlab.up(lab.load_spec(None), NODES, timeout=900)
        st["seconds"] = time.monotonic() - t0
        print(f"\nvagrant lab up in {st['seconds']:.0f} s")
        yield st
    finally:
        t1 = time.monotonic()
        try:
            vmlab.down()
        finally:
            print(f"vagrant lab down in {time.monotonic() - t1:.0f} s")
            if old is None:
                os.environ.pop("SHADOWTAP_STATE_DIR", None)
            else:
                os.environ["SHADOWTAP_STATE_DIR"] = old
    assert not nsmod.exists(vmlab.NETNS)
    assert not Path("/run/libvirt/libvirt-sock").exists() or vmlab._foreign_libvirtd() is None


def test_client_to_vip_is_answered_by_prod_and_captured_on_the_gateway(
        vmlab_up: dict[str, Any]) -> None:
    assert vmlab_up["machines"] == {n: "running" for n in NODES}
    cfg = vmlab.work_dir() / "ssh_config"
    cap = subprocess.Popen(
        ["ip", "netns", "exec", vmlab.NETNS, "ssh", "-F", str(cfg), "-o", "LogLevel=ERROR",
         "gateway", "--", "sudo", "timeout", "300", "shadowtap", "capture", "-i", "cap0",
         "--port", "80", "--count", str(N), "-o", "/tmp/e2e.jsonl"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert cap.stderr is not None
        first = cap.stderr.readline()  # printed once the capture socket is open
        assert "capturing on cap0" in first, first
        p = vmlab.ssh("client", ["python3", "-c", CLIENT], timeout=300, capture=True)
        assert p.returncode == 0, p.stderr
        answers = json.loads(p.stdout)
        assert answers == [[200, "prod", f"/e2e/{i}"] for i in range(N)]
        rest = cap.communicate(timeout=300)[1]
        assert cap.returncode == 0, first + rest
        assert f"written: {N} exchanges" in rest, rest
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    out = vmlab.ssh("gateway", ["cat", "/tmp/e2e.jsonl"], timeout=120, capture=True)
    exchanges = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert sorted(x["request"]["target"] for x in exchanges) == [f"/e2e/{i}" for i in range(N)]
    for x in exchanges:
        assert x["conn"]["client_ip"] == "10.77.1.2"
        assert x["conn"]["server_ip"] == "10.77.100.10" and x["conn"]["server_port"] == 80
        assert x["response"]["status"] == 200
        assert ["X-Served-By", "prod"] in x["response"]["headers"]


def test_shadowtap_in_the_gateway_is_this_tree(vmlab_up: dict[str, Any]) -> None:
    """The VM runs the working tree's netconfig (installed from the wheelhouse, offline)."""
    p = vmlab.ssh("gateway", ["shadowtap", "lab", "vagrant", "spec", "--nodes", "gateway"],
                  timeout=300, capture=True)
    assert p.returncode == 0, p.stderr
    from netconfig import vagrant

    assert json.loads(p.stdout) == vagrant.describe(lab.load_spec(None), ["gateway"])

