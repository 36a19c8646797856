"""``lab status`` and ``route`` address the namespace lab, say so, and reach a gateway that is
its own namespace (the Vagrant lab's gateway VM) with ``--netns -``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nethelpers import REPO, default_spec_dict, force_cleanup, unique_prefix, write_spec

from netconfig import netns

pytestmark = pytest.mark.root


def cli(*args: str, state: Path, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "appliance.cli", *args]
    if ns:  # as inside a VM whose own namespace is the gateway
        argv = ["ip", "netns", "exec", ns, *argv]
    env = {**os.environ, "SHADOWTAP_STATE_DIR": str(state), "PYTHONPATH": str(REPO),
           "COLUMNS": "80"}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_route_and_status_say_which_lab_and_reach_a_gateway_vm(tmp_path: Path) -> None:
    prefix = unique_prefix()
    state = tmp_path / "state"
    spec = str(write_spec(tmp_path / "lab.yaml", default_spec_dict(prefix)))
    # no lab: one line naming both ways on
    r = cli("route", "show", "--spec", spec, state=state)
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "namespace lab" in err[0] and "lab up" in err[0] and "--netns -" in err[0]
    assert "Traceback" not in r.stderr
    try:
        assert cli("lab", "up", "--spec", spec, state=state).returncode == 0
        out = cli("lab", "status", "--spec", spec, state=state).stdout
        assert "namespace lab" in out and "lab vagrant status" in out
        assert max(len(x) for x in out.splitlines()) <= 80
        gw = f"{prefix}gateway"
        r = cli("route", "set", "--canary", "30", "--netns", "-", state=state, ns=gw)
        assert r.returncode == 0 and "own namespace" in r.stdout, r.stderr
        show = json.loads(cli("route", "show", "--json", "--netns", "-", state=state,
                              ns=gw).stdout)
        assert show["canary_percent"] == 30 and show["netns"] is None
        # the same split, seen from outside through the namespace lab's gateway
        r = cli("route", "show", "--spec", spec, state=state)
        assert r.returncode == 0 and "canary 30%" in r.stdout and gw in r.stdout
    finally:
        cli("lab", "down", "--spec", spec, state=state)
        force_cleanup(prefix)
    assert not [n for n in netns.list_netns() if n.startswith(prefix)]
