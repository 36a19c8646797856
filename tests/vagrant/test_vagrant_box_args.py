"""The box builder refuses bad arguments with one clear line, before touching anything."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = REPO / "vagrant" / "build-box.sh"


def run(*args: str, out: Path, user: int | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["bash", str(SCRIPT), *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    env = {**os.environ, "SHADOWTAP_VAGRANT_CACHE": str(out)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def test_help(tmp_path: Path) -> None:
    p = run("--help", out=tmp_path)
    assert p.returncode == 0
    assert p.stdout.startswith("usage: vagrant/build-box.sh")
    assert "--out DIR" in p.stdout and "--force" in p.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--bogus"], "unknown argument '--bogus' (see --help)"),
    (["--size", "lots"], "size 'lots' must look like 3G or 2500M"),
    (["--suite", "Bookworm!"], "suite 'Bookworm!' is not a Debian suite name"),
    (["--mirror", "ftp://x"], "mirror 'ftp://x' must be an http(s) URL"),
    (["--out"], "--out needs a directory"),
])
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    p = run(*args, out=tmp_path / "cache")
    assert p.returncode == 2
    assert f"build-box: error: {message}" in p.stderr
    assert not (tmp_path / "cache").exists()  # nothing was made


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to drop to another user")
def test_not_root(tmp_path: Path) -> None:
    p = run(out=tmp_path / "cache", user=65534)
    assert p.returncode == 2
    assert "build-box: error: run as root" in p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_up_to_date_box_is_kept(tmp_path: Path) -> None:
    """A box whose recipe stamp matches is not rebuilt (idempotent, and fast)."""
    if not all(shutil.which(t) for t in ("debootstrap", "qemu-img", "mke2fs")) or not list(
            Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-*/keys/vagrant.pub")):
        pytest.skip("box tools missing: bash scripts/setup.sh")
    out = tmp_path / "cache"
    out.mkdir()
    (out / "shadowtap-debian.box").write_text("a box")
    recipe = subprocess.run(
        ["bash", "-c", f'cat "{SCRIPT}" "{SCRIPT.parent}"/guest/* | sha256sum | cut -d" " -f1; '
                       'echo "bookworm http://mirror.invalid/debian 3G"'],
        capture_output=True, text=True, check=True).stdout
    (out / "shadowtap-debian.recipe").write_text(recipe)
    p = run("--mirror", "http://mirror.invalid/debian", out=out)
    assert p.returncode == 0, p.stderr
    assert "box is up to date" in p.stdout
    assert (out / "shadowtap-debian.box").read_text() == "a box"
