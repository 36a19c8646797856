"""``sanitise`` command: any input format extract reads, any output format, report on stderr,
user errors as one ``error:`` line with exit status 2 and no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from sanitise_corpus import USER_DETECTOR_POLICY, build_seeded
from typer.testing import CliRunner

from replay.cli_sanitise import register
from replay.formats import read_exchanges
from replay.formats.jsonl import JsonlWriter
from replay.sanitise import DEFAULT_POLICY_YAML

KEY = "cli-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    a = typer.Typer()
    register(a)

    @a.command("noop", hidden=True)
    def _noop() -> None:  # a second command keeps typer from flattening the app
        return None

    return a


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list, Path]:
    d = tmp_path_factory.mktemp("clis")
    sd = build_seeded(seed=21, n=160)
    src = d / "in.jsonl"
    with src.open("wb") as fp:
        w = JsonlWriter(fp)
        for ex in sd.exchanges:
            w.write(ex)
        w.close()
    key = d / "key"
    key.write_text(KEY + "\n")
    policy = d / "policy.yaml"  # the default plus the corpus's user pattern (ORDREF-...)
    pol = yaml.safe_load(DEFAULT_POLICY_YAML)
    pol["detectors"] = USER_DETECTOR_POLICY["detectors"]
    pol["rules"] += USER_DETECTOR_POLICY["rules"]
    policy.write_text(yaml.safe_dump(pol))
    return src, key, sd.secrets, policy


def invoke(app: typer.Typer, *args: str | Path, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["sanitise", *map(str, args)], env=env)


@pytest.mark.parametrize("suffix", [".jsonl", ".har", ".mitm"])
def test_sanitise_end_to_end(app, inputs, tmp_path: Path, suffix: str) -> None:
    src, key, secrets, policy = inputs
    out = tmp_path / f"out{suffix}"
    rep = tmp_path / "report.json"
    r = invoke(app, src, "-o", out, "--key-file", key, "--report", rep, "--policy", policy)
    assert r.exit_code == 0, r.output
    assert "sanitise:" in r.output and "email" in r.output  # the report table
    raw = out.read_bytes()
    assert not [v for *_x, v in secrets if v.encode() in raw]
    back = list(read_exchanges(out))
    assert len(back) == 160
    report = json.loads(rep.read_text())
    assert report["exchanges"] == {"in": 160, "out": 160, "dropped": 0}
    assert not [v for *_x, v in secrets if v in rep.read_text()]
    assert KEY not in rep.read_text() and KEY not in raw.decode("utf-8", "replace")


def test_key_from_environment_gives_same_output(app, inputs, tmp_path: Path) -> None:
    src, key, _, _p = inputs
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert invoke(app, src, "-o", a, "--key-file", key).exit_code == 0
    r = invoke(app, src, "-o", b, "--key-env", "ST_CLI_KEY", env={"ST_CLI_KEY": KEY})
    assert r.exit_code == 0, r.output
    assert a.read_bytes() == b.read_bytes()


def test_capture_input(app, tmp_path: Path) -> None:
    from replay.synth import generate_pcap

    pcap = tmp_path / "s.pcap"
    generate_pcap(pcap, connections=5, concurrency=2, seed=3)
    key = tmp_path / "k"
    key.write_text(KEY)
    out = tmp_path / "o.jsonl"
    r = invoke(app, pcap, "-o", out, "--key-file", key)
    assert r.exit_code == 0, r.output
    assert len(list(read_exchanges(out))) > 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--key-file", "{d}/missing.key"], "key file not found"),
        (["--key-env", "ST_NOT_SET_ANYWHERE"], "ST_NOT_SET_ANYWHERE is not set"),
        ([], "no pseudonym key"),
        (["--key-file", "{key}", "--policy", "{d}/bad.yaml"], "unknown detector 'nope'"),
        (["--key-file", "{key}", "--policy", "{d}/badpath.yaml"], "bad JSON path"),
        (["--key-file", "{key}", "--policy", "{d}/nopolicy.yaml"], "policy file not found"),
    ],
)
def test_user_errors_are_one_line_exit_2(app, inputs, tmp_path: Path, args, needle) -> None:
    src, key, _, _p = inputs
    (tmp_path / "bad.yaml").write_text("rules: [{location: any, detector: nope}]\n")
    (tmp_path / "badpath.yaml").write_text("rules: [{location: json, paths: ['$.a[x]']}]\n")
    args = [a.format(d=tmp_path, key=key) for a in args]
    out = tmp_path / "o.jsonl"
    r = invoke(app, src, "-o", out, *args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], r.output
    assert not out.exists()


def test_missing_input_is_an_error(app, inputs, tmp_path: Path) -> None:
    _src, key, _, _p = inputs
    r = invoke(app, tmp_path / "nope.jsonl", "-o", tmp_path / "o.jsonl", "--key-file", key)
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.part").exists()


def test_console_script(inputs, tmp_path: Path) -> None:
    """The real ``shadowtap sanitise`` (root app mounts ``register``), in a subprocess."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "shadowtap"
    if not exe.exists():
        pytest.skip(f"console script not installed at {exe}")
    src, key, secrets, policy = inputs
    out = tmp_path / "o.jsonl"
    p = subprocess.run(
        [
            str(exe),
            "sanitise",
            str(src),
            "-o",
            str(out),
            "--key-file",
            str(key),
            "--policy",
            str(policy),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr.decode()
    assert b"sanitise:" in p.stderr and b"email" in p.stderr
    assert not [v for *_x, v in secrets if v.encode() in out.read_bytes()]
    p = subprocess.run(
        [str(exe), "sanitise", str(src), "-o", str(out), "--key-file", str(tmp_path / "nokey")],
        capture_output=True,
        timeout=120,
        check=False,
    )
    err = p.stderr.decode()
    assert p.returncode == 2 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: {tmp_path / 'nokey'}: key file not found"
    ]
