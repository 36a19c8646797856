"""Every environment variable the commands read is documented: in the README's table and, for
the ones a user sets, in ``shadowtap --help``. Read from the sources, so a new one cannot hide."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from appliance.envvars import ENV_VARS

REPO = Path(__file__).resolve().parents[2]
READS = re.compile(r"""(?:environ\.get\(|environ\[|getenv\(|ENV\[)\s*["'](SHADOWTAP_[A-Z0-9_]+)"""
                   r"""|\$\{(SHADOWTAP_[A-Z0-9_]+)""")
SOURCES = ["appliance", "netconfig", "replay", "strictconf", "vagrant", "scripts"]


def _read_in_sources() -> set[str]:
    names = set()
    for top in SOURCES:
        for p in (REPO / top).rglob("*"):
            if p.is_file() and (p.suffix in (".py", ".sh", ".rb") or p.name == "Vagrantfile"):
                for m in READS.finditer(p.read_text(errors="replace")):
                    names.add(m.group(1) or m.group(2))
    return names


def _readme_table() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("### Environment variables", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"`(SHADOWTAP_[A-Z0-9_]+)`", section))


def test_every_variable_read_is_in_the_readme_table() -> None:
    read = _read_in_sources()
    assert {"SHADOWTAP_HOME", "SHADOWTAP_STATE_DIR", "SHADOWTAP_POOL_PREFIX"} <= read
    assert read - _readme_table() == set()


def test_variables_a_user_sets_are_in_help_and_all_are_still_read() -> None:
    env = dict(os.environ, COLUMNS="200")
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "--help"], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=60).stdout
    shadow = subprocess.run([sys.executable, "-m", "appliance.cli", "shadow", "--help"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=60).stdout
    read = _read_in_sources()
    for v in ENV_VARS:
        assert v.name in out and v.name in read, v.name
    assert "SHADOWTAP_POOL_PREFIX" in shadow and "SHADOWTAP_STATE_DIR" in shadow
