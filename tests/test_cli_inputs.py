"""Every CLI input checked, every help page renders (tried as a new user would).

In-process with typer's runner (fast): a usage mistake is exit 2 with the option named and no
traceback; a help page is exit 0. Messages are matched on our own words and the option's name,
never on one click/typer version's wording.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from appliance import cli

ROOT = Path(__file__).resolve().parents[1]
cli._register_all()
COMMAND = typer.main.get_command(cli.app)


def _walk(cmd: Any, path: list[str]) -> list[list[str]]:
    out = [path]
    if hasattr(cmd, "list_commands"):
        ctx = cmd.context_class(cmd)
        for name in cmd.list_commands(ctx):
            out += _walk(cmd.get_command(ctx, name), [*path, name])
    return out


ALL_COMMANDS = _walk(COMMAND, [])


def run(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args), prog_name="shadowtap")


def _text(r: Any) -> str:
    return (r.stdout or "") + (getattr(r, "stderr", "") or "")


def _errors(r: Any) -> list[str]:
    """Our own ``error:`` lines (stale-build notices of a tree being edited are left out)."""
    return [ln for ln in _text(r).splitlines() if ln.startswith("error:")]


def usage_error(r: Any, *words: str) -> None:
    """Exit 2, no traceback, and every word in the output (option name, value)."""
    text = _text(r)
    assert r.exit_code == 2, (r.exit_code, text, r.exception)
    assert "Traceback" not in text
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), \
        repr(r.exception)
    for w in words:
        assert w in text, (w, text)


def usage_mistake(r: Any, *words: str) -> str:
    """A usage mistake caught by the command line parser (a bad option value, a missing
    argument, an unknown option or command): exit 2 and exactly one line of output, ``error:``
    with the words in it and where to look next (the command's ``--help``); no usage block,
    no boxed panel. The parser's own wording is not pinned."""
    usage_error(r, *words)
    text = _text(r)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("shadowtap: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "--help'" in lines[0] and "╭" not in text and "Usage:" not in text, text
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def one_error_line(r: Any, *words: str) -> str:
    usage_error(r)
    lines = _errors(r)
    assert len(lines) == 1, _text(r)
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ---- help, version ---------------------------------------------------------------------------

def test_the_walk_finds_every_group_and_command() -> None:
    names = {" ".join(p) for p in ALL_COMMANDS}
    assert {"", "replay", "extract", "appliance run", "appliance check", "lab vagrant up",
            "canary run", "image push"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "shadowtap")
def test_every_help_page_renders(path: list[str]) -> None:
    for flag in ("--help", "-h"):
        r = run(*path, flag)
        assert r.exit_code == 0, (flag, _text(r), r.exception)
        assert r.exception is None or isinstance(r.exception, SystemExit)
        assert "Traceback" not in _text(r)
        assert "Usage" in r.stdout


def test_help_paragraphs_follow_the_terminal_width() -> None:
    """Docstrings wrap at 100 columns in the source; at 80 the help joins a paragraph's lines
    and the terminal wraps them (not every source line cut in two: a long line, then a
    stub)."""
    r = CliRunner().invoke(cli.app, ["diff", "--help"], prog_name="shadowtap",
                           env={"COLUMNS": "80"})
    assert r.exit_code == 0, _text(r)
    lines = [ln.rstrip() for ln in r.stdout.splitlines()]
    assert max(map(len, lines)) <= 80
    i = next(k for k, ln in enumerate(lines) if "Replays the input" in ln)
    para = lines[i:lines.index("", i)]
    assert len(para) >= 3 and all(len(ln) > 60 for ln in para[:-1]), para
    assert any("(--speed max unless told otherwise)" in ln for ln in para), para


def test_reflow_keeps_paragraphs_lists_and_verbatim_blocks() -> None:
    text = """First line.

    Wrapped in the
    source here.

    - one item
    - another
      continued

    \b
    kept
    as is"""
    assert cli.reflow(text) == ("First line.\n\nWrapped in the source here.\n\n"
                                "- one item\n- another\n  continued\n\n\b\nkept\nas is")


def test_version() -> None:
    r = run("--version")
    assert r.exit_code == 0
    assert r.stdout.strip() == f"shadowtap {cli.version()}"
    assert cli.version()[0].isdigit()


def test_console_script_help_version_and_the_extract_fast_path() -> None:
    exe = ROOT / ".venv/bin/shadowtap"
    for args in (["replay", "--help"], ["-h"], ["--version"], ["extract", "-h"]):
        p = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, (args, p.stderr)
        assert "Traceback" not in p.stderr


# ---- numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("generate", "{tmp}/x.pcap", "--connections", "-5"),
    ("generate", "{tmp}/x.pcap", "--connections", "0"),
    ("generate", "{tmp}/x.pcap", "--concurrency", "0"),
    ("generate", "{tmp}/x.pcap", "--loss", "2"),
    ("generate", "{tmp}/x.pcap", "--loss", "-0.1"),
    ("generate", "{tmp}/x.pcap", "--reorder", "-1"),
    ("generate", "{tmp}/x.pcap", "--reorder", "1.5"),
    ("extract", "{tmp}/in.pcap", "--port", "99999"),
    ("extract", "{tmp}/in.pcap", "--port", "0"),
    ("sanitise", "{tmp}/in.pcap", "-o", "{tmp}/o.jsonl", "--port", "70000"),
    ("replay", "{tmp}/in.pcap", "-t", "http://127.0.0.1:9", "--port", "-1"),
    ("replay", "{tmp}/in.pcap", "-t", "http://127.0.0.1:9", "--concurrency", "0"),
    ("replay", "{tmp}/in.pcap", "-t", "http://127.0.0.1:9", "--rate", "0"),
    ("replay", "{tmp}/in.pcap", "-t", "http://127.0.0.1:9", "--loop", "0"),
    ("diff", "{tmp}/in.pcap", "--candidate", "http://127.0.0.1:9", "--min-samples", "0"),
    ("diff", "{tmp}/in.pcap", "--candidate", "http://127.0.0.1:9", "--alpha", "2"),
    ("capture", "-i", "eth0", "-o", "{tmp}/o.jsonl", "--count", "0"),
    ("capture", "-i", "eth0", "-o", "{tmp}/o.jsonl", "--duration", "-1"),
    ("capture", "-i", "eth0", "-o", "{tmp}/o.jsonl", "--port", "65536"),
    ("worker", "--redis", "redis://h", "--candidate", "http://a", "--of", "0"),
    ("worker", "--redis", "redis://h", "--candidate", "http://a", "--shards", "0"),
    ("worker", "--redis", "redis://h", "--candidate", "http://a", "--log-level", "loud"),
    ("appliance", "run", "-c", "{tmp}/a.yaml", "--log-level", "loud"),
    ("canary", "run", "--max-error-rate", "2"),
    ("canary", "run", "--step-seconds", "0"),
    ("canary", "run", "--min-requests", "0"),
    ("canary", "run", "--max-latency-ratio", "0.5"),
    ("canary", "run", "--port", "0"),
    ("route", "set", "--canary", "150"),
    ("route", "set", "--canary", "-1"),
    ("mirror", "add", "--dev", "eth0", "--vni", "-1"),
    ("mirror", "add", "--dev", "eth0", "--vxlan-port", "0"),
    ("demo", "--users", "0"),
    ("demo", "--offline", "--connections", "0"),
])
def test_out_of_range_numbers_are_usage_errors(args: tuple[str, ...], tmp_path: Path) -> None:
    (tmp_path / "in.pcap").write_bytes(b"")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    option = next(a for a in reversed(argv) if a.startswith("--"))
    line = usage_mistake(run(*argv), option)
    assert f"'shadowtap {argv[0]}" in line  # the help of the command that was mistyped
    assert not (tmp_path / "x.pcap").exists()


@pytest.mark.parametrize(("args", "words"), [
    (("extract",), ("captures", "'shadowtap extract --help'")),
    (("sanitise",), ("input", "'shadowtap sanitise --help'")),
    (("route", "set", "--canary", "abc"), ("--canary", "'shadowtap route set --help'")),
    (("canary", "run", "--no-such-flag"), ("--no-such-flag", "'shadowtap canary run --help'")),
    (("extract", "--port"), ("--port",)),
    (("no-such-command",), ("no-such-command", "'shadowtap --help'")),
    (("--bogus",), ("--bogus",)),
    (("generate", "a.pcap", "b.pcap"), ("b.pcap",)),
])
def test_usage_mistakes_are_one_error_line(args: tuple[str, ...], words: tuple[str, ...]) -> None:
    usage_mistake(run(*args), *words)


def test_console_script_usage_mistake_is_one_line() -> None:
    exe = ROOT / ".venv/bin/shadowtap"
    for option, args in (("--canary", ["route", "set", "--canary", "150"]),
                         ("--port", ["extract", "--port", "99999", "x.pcap"])):  # fast path
        p = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)
        lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("shadowtap: ")]
        assert p.returncode == 2 and p.stdout == "", (args, p.stdout, p.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
        assert option in lines[0] and f"'shadowtap {args[0]}" in lines[0], lines[0]


# ---- paths and formats -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from replay.synth import generate_pcap

    p = tmp_path_factory.mktemp("cap") / "in.pcap"
    generate_pcap(p, connections=4, concurrency=2, seed=3)
    return p


@pytest.mark.parametrize("suffix", [".xml", ".pcap", ".json", ".csv"])
def test_sanitise_refuses_an_output_format_it_cannot_write(suffix: str, capture: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / f"out{suffix}"
    one_error_line(run("sanitise", str(capture), "-o", str(out)), f"out{suffix}", ".jsonl",
                   ".har")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("cmd", [
    ("extract", "{cap}", "-o", "{tmp}/out.xml"),
    ("replay", "{cap}", "-t", "http://127.0.0.1:9", "-o", "{tmp}/out.xml"),
    ("diff", "{cap}", "--candidate", "http://127.0.0.1:9", "-o", "{tmp}/out.xml"),
    ("capture", "-i", "eth0", "-o", "{tmp}/out.xml"),
])
def test_every_exchange_output_checks_its_suffix(cmd: tuple[str, ...], capture: Path,
                                                 tmp_path: Path) -> None:
    argv = [a.replace("{cap}", str(capture)).replace("{tmp}", str(tmp_path)) for a in cmd]
    one_error_line(run(*argv), "out.xml", ".jsonl")
    assert not (tmp_path / "out.xml").exists()


def test_sanitise_honours_the_formats_it_knows(capture: Path, tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(os.urandom(32))
    for name in ("o.har", "o.jsonl"):
        r = run("sanitise", str(capture), "-o", str(tmp_path / name), "--key-file", str(key))
        assert r.exit_code == 0, _text(r)
    assert (tmp_path / "o.har").read_bytes().lstrip().startswith(b"{")


@pytest.mark.parametrize("cmd", [
    ("extract", "{cap}", "-o", "{blocker}/sub/out.jsonl"),
    ("sanitise", "{cap}", "-o", "{blocker}/out.jsonl"),
    ("replay", "{cap}", "-t", "http://127.0.0.1:9", "-o", "{blocker}/o.jsonl"),
    ("diff", "{cap}", "--candidate", "http://127.0.0.1:9", "--report", "{blocker}/r.json"),
    ("generate", "{blocker}/g.pcap"),
])
def test_an_unwritable_output_names_the_option_and_the_path(cmd: tuple[str, ...], capture: Path,
                                                            tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    argv = [a.replace("{cap}", str(capture)).replace("{blocker}", str(blocker)) for a in cmd]
    line = one_error_line(run(*argv), str(blocker))
    assert "Errno" not in line


def test_sanitise_key_errors_say_how_to_make_a_key(capture: Path, tmp_path: Path) -> None:
    one_error_line(run("sanitise", str(capture), "-o", str(tmp_path / "o.jsonl")),
                   "--key-file", "/dev/urandom")
    short = tmp_path / "short.key"
    short.write_text("abc")
    one_error_line(run("sanitise", str(capture), "-o", str(tmp_path / "o.jsonl"),
                       "--key-file", str(short)), "too short", "/dev/urandom")


def test_capture_policy_errors_name_captures_own_flags(tmp_path: Path) -> None:
    r = run("capture", "-i", "eth0", "-o", str(tmp_path / "o.jsonl"), "--policy", "-")
    line = one_error_line(r, "--policy")
    pol = tmp_path / "p.yaml"
    pol.write_text("extends: default\nrules: []\n")
    line = one_error_line(run("capture", "-i", "eth0", "-o", str(tmp_path / "o.jsonl"),
                              "--policy", str(pol)), "--key-file", "/dev/urandom")
    assert "enabled" not in line and "pipeline" not in line and "key-env VAR" in line
    one_error_line(run("capture", "-i", "eth0", "-o", str(tmp_path / "o.jsonl"), "--key-file",
                       str(pol)), "--policy")


def test_broken_policy_yaml_is_one_line_with_the_spot(capture: Path, tmp_path: Path) -> None:
    pol = tmp_path / "p.yaml"
    pol.write_text("rules:\n  - name: x\n   location: [header\n")
    one_error_line(run("sanitise", str(capture), "-o", str(tmp_path / "o.jsonl"),
                   "--policy", str(pol)), f"{pol}:3:")


# ---- appliance check -------------------------------------------------------------------------

def _no_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.live.daemon as daemon

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("appliance check started the appliance")

    monkeypatch.setattr(daemon, "run_daemon", boom)
    monkeypatch.setattr(daemon, "Worker", boom)
    monkeypatch.setattr(daemon, "Appliance", boom)


def _config(tmp_path: Path, sink_path: str, extra: str = "") -> Path:
    cap = tmp_path / "c.pcap"
    cap.write_bytes(b"")
    cfg = tmp_path / "appliance.yaml"
    cfg.write_text(f"source:\n  file: {cap}\n{extra}pipeline:\n  sanitise: {{enabled: false}}\n"
                   f"  sinks:\n    - {{type: jsonl, path: {sink_path}}}\n")
    return cfg


def test_appliance_check_valid_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_capture(monkeypatch)
    sink = tmp_path / "logs" / "x.jsonl"
    r = run("appliance", "check", "--config", str(_config(tmp_path, str(sink))))
    assert r.exit_code == 0, _text(r)
    assert "valid" in r.stdout and str(sink) in r.stdout
    assert len(r.stdout.splitlines()) < 12
    assert not sink.parent.exists()  # checked, not created


@pytest.mark.parametrize(("text", "words"), [
    ("sourse:\n  file: x\n", ("sourse", "did you mean 'source'")),
    ("pipline: {}\n", ("pipline", "did you mean 'pipeline'")),
    ("metrics: {lisen: '127.0.0.1:1'}\n", ("metrics.lisen", "did you mean 'listen'")),
])
def test_appliance_check_top_level_typos(text: str, words: tuple[str, ...], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _no_capture(monkeypatch)
    cfg = _config(tmp_path, str(tmp_path / "x.jsonl"))
    if text.startswith("sourse"):
        cfg.write_text(cfg.read_text().replace("source:", "sourse:"))
    else:
        cfg.write_text(cfg.read_text() + text)
    one_error_line(run("appliance", "check", "--config", str(cfg)), str(cfg), *words)


def test_appliance_check_unwritable_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    _no_capture(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = _config(tmp_path, f"{blocker}/logs/x.jsonl")
    line = one_error_line(run("appliance", "check", "--config", str(cfg)),
                          "pipeline.sinks[0].path", f"{blocker}/logs/x.jsonl")
    assert "No such file" not in line
    one_error_line(run("appliance", "check", "--config", str(tmp_path / "none.yaml")),
                   "none.yaml")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_sink_where_files_cannot_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    _no_capture(monkeypatch)
    cfg = _config(tmp_path, "/proc/shadowtap-nowhere/x.jsonl")
    one_error_line(run("appliance", "check", "--config", str(cfg)), "pipeline.sinks[0].path",
                   "/proc/shadowtap-nowhere/x.jsonl")


# ---- a HAR cut short -------------------------------------------------------------------------

def test_a_har_cut_short_gives_its_complete_entries_with_a_warning(capture: Path,
                                                                   tmp_path: Path) -> None:
    from replay.formats import open_writer, read_exchanges
    from replay.formats.har import TruncatedHarWarning

    exs = list(read_exchanges(capture))[:8]
    assert len(exs) == 8
    whole = tmp_path / "whole.har"
    with whole.open("wb") as fp:
        w = open_writer("har", fp)
        for ex in exs:
            w.write(ex)
        w.close()
    data = whole.read_bytes()
    cut = tmp_path / "cut.har"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.warns(TruncatedHarWarning, match="cut short"):
        got = list(read_exchanges(cut))
    assert 0 < len(got) < len(exs)
    assert [e.id for e in got] == [e.id for e in exs[: len(got)]]
    # only the closing brackets missing: every entry
    (tmp_path / "end.har").write_bytes(data.rstrip()[:-2])
    with pytest.warns(TruncatedHarWarning):
        assert len(list(read_exchanges(tmp_path / "end.har"))) == len(exs)
    # damage in the middle is still an error, and so is a file with no entry at all
    from replay.errors import FormatError

    (tmp_path / "none.har").write_bytes(data[:20])
    with pytest.raises(FormatError, match="not valid JSON"):
        list(read_exchanges(tmp_path / "none.har"))
    # the console script prints it as one warning line and goes on
    p = subprocess.run([str(ROOT / ".venv/bin/shadowtap"), "sanitise", str(cut), "-o",
                        str(tmp_path / "o.jsonl"), "--policy", str(_mask_policy(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    warn = [ln for ln in p.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "cut short" in warn[0] and "Traceback" not in p.stderr
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == len(got)


def _mask_policy(tmp_path: Path) -> Path:
    p = tmp_path / "mask.yaml"
    p.write_text("rules:\n  - {name: auth, location: header, names: [authorization], "
                 "action: mask}\n")
    return p


def test_module_entry_point_is_the_console_script() -> None:
    p = subprocess.run([sys.executable, "-m", "appliance.cli", "--version"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.startswith("shadowtap ")
