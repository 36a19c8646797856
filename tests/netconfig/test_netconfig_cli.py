"""The CLI: user mistakes give one ``error: ...`` line, exit 2, no traceback, no changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nethelpers import (
    REPO,
    default_spec_dict,
    force_cleanup,
    namespaces_with,
    unique_prefix,
    write_spec,
)

pytestmark = pytest.mark.root


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every user can read (the non-root runs need to read the spec)."""
    d = Path(tempfile.mkdtemp(prefix="shadowtap-cli-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def cli(*args: str, state: Path, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "appliance.cli", *args]
    if user:
        argv = ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", *argv]
    env = {**os.environ, "SHADOWTAP_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def assert_user_error(p: subprocess.CompletedProcess[str], *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    for w in words:
        assert w in lines[0], (w, lines[0])


def _bad(kind: str, d: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    if kind == "unknown node":
        d["links"][1]["b"]["node"] = "prdo"
        return d, ("unknown node", "prdo")
    if kind == "duplicate address":
        d["links"][4]["b"]["addr"] = "10.77.2.2/24"
        return d, ("duplicate address", "10.77.2.2")
    if kind == "missing interface":
        d["mirrors"][0]["dev"] = "eth9"
        return d, ("has no interface", "eth9")
    if kind == "route via nowhere":
        d["nodes"][0]["routes"][0]["via"] = "10.99.0.1"
        return d, ("10.99.0.1",)
    if kind == "unknown key":
        d["links"][0]["colour"] = "red"
        return d, ("colour",)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["unknown node", "duplicate address", "missing interface",
                                  "route via nowhere", "unknown key"])
def test_bad_spec_is_one_clear_line_and_changes_nothing(kind: str, tmp_path: Path) -> None:
    prefix = unique_prefix()
    d, words = _bad(kind, default_spec_dict(prefix))
    spec = write_spec(tmp_path / "bad.yaml", d)
    state = tmp_path / "state"
    try:
        for cmd in (["lab", "up"], ["lab", "up", "--dry-run"]):
            assert_user_error(cli(*cmd, "--spec", str(spec), state=state), *words)
        assert namespaces_with(prefix) == []
        assert not state.exists() or list(state.iterdir()) == []
    finally:
        force_cleanup(prefix)


def test_unreadable_or_invalid_spec_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert_user_error(cli("lab", "up", "--spec", str(tmp_path / "nope.yaml"), state=state),
                      "cannot read spec")
    (tmp_path / "broken.yaml").write_text("nodes: [a, b\n")
    assert_user_error(cli("lab", "up", "--spec", str(tmp_path / "broken.yaml"), state=state),
                      "not valid YAML")


def test_without_root_every_command_says_so_and_changes_nothing(world_dir: Path) -> None:
    prefix = unique_prefix()
    spec = write_spec(world_dir / "lab.yaml", default_spec_dict(prefix))
    spec.chmod(0o644)
    state = world_dir / "state"
    for cmd in (["lab", "up", "--spec", str(spec)], ["lab", "down", "--spec", str(spec)],
                ["route", "set", "--canary", "10", "--spec", str(spec)],
                ["mirror", "add", "--dev", "eth0", "--to", "tap0"]):
        p = cli(*cmd, state=state, user="65534")
        if cmd[1] == "down":  # nothing recorded: nothing to do, nothing needed
            assert p.returncode == 0 and "nothing" in p.stdout, p
            continue
        assert_user_error(p, "root")
    assert namespaces_with(prefix) == []
    assert not state.exists()
    # planning needs no privileges
    p = cli("lab", "up", "--dry-run", "--spec", str(spec), state=state, user="65534")
    assert p.returncode == 0, p.stderr
    assert f"ip netns add {prefix}gateway" in p.stdout
    assert "tc -n" in p.stdout and "nft -j -f -" in p.stdout
    assert namespaces_with(prefix) == []


def test_full_cycle_through_the_cli(tmp_path: Path) -> None:
    prefix = unique_prefix()
    spec = str(write_spec(tmp_path / "lab.yaml", default_spec_dict(prefix)))
    state = tmp_path / "state"
    try:
        assert cli("lab", "up", "--spec", spec, state=state).returncode == 0
        st = json.loads(cli("lab", "status", "--json", "--spec", spec, state=state).stdout)
        assert st["state"] == "up" and all(n["exists"] for n in st["nodes"])
        # the default spec under --prefix is the same lab
        st2 = json.loads(cli("lab", "status", "--json", "--prefix", prefix, state=state).stdout)
        assert st2["state"] == "up" and st2["nodes"] == st["nodes"]
        table = cli("lab", "status", "--spec", spec, state=state).stdout
        assert f"{prefix}gateway" in table and "cap0" in table
        assert cli("route", "set", "--canary", "12.5", "--spec", spec, state=state).returncode == 0
        show = json.loads(cli("route", "show", "--json", "--spec", spec, state=state).stdout)
        assert show["canary_percent"] == 12.5
        bad = cli("route", "set", "--canary", "150", "--spec", spec, state=state)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr  # a usage error (range)
        assert "--canary" in bad.stderr and "100" in bad.stderr
        listing = cli("mirror", "list", state=state).stdout
        assert listing.count("active") == 2, listing
        assert_user_error(cli("mirror", "remove", "mir-nope", state=state), "no mirror")
        assert_user_error(cli("mirror", "add", "--netns", f"{prefix}gateway", "--dev", "client0",
                              "--to", "nosuch", state=state), "nosuch")
        p = cli("mirror", "add", "--netns", f"{prefix}gateway", "--dev", "client0", "--to",
                "tap0", "--proto", "tcp", "--port", "80", "--json", state=state)
        mid = json.loads(p.stdout)["id"]
        assert cli("mirror", "remove", mid, state=state).returncode == 0
        down = cli("lab", "down", "--spec", spec, state=state)
        assert down.returncode == 0 and "6 namespaces removed" in down.stdout
        assert namespaces_with(prefix) == []
    finally:
        cli("lab", "down", "--spec", spec, state=state)
        force_cleanup(prefix)
