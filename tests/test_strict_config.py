"""Strict configuration everywhere: every YAML reader goes through ``strictconf``.

A typo'd key is an error naming the file, the key's dotted path and the closest known key
(never silently ignored: ``p95ms:`` in a checks file would turn the latency gate off); a wrong
type names the path and the type expected; broken YAML is one line with file:line:column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import strictconf
from strictconf import ANY, ConfigError, MapOf, Tagged

# ---- the helper --------------------------------------------------------------------------------

SCHEMA: dict[str, Any] = {
    "source": {"file": str, "ring": {"block_size": (int, str)}},
    "pipeline": {"sinks": [{"type": str, "path": str, "keep": int}], "sample": float},
    "headers": MapOf(str),
    "checks": [Tagged("type", {"http": {"path": str}, "locust": {"p95_ms": float}},
                      common={"name": str, "type": str})],
    "free": ANY,
}


def _err(data: Any, file: str | None = "c.yaml") -> str:
    with pytest.raises(ConfigError) as e:
        strictconf.check(data, SCHEMA, file=file)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(("data", "expected"), [
    ({"sourse": {}}, "c.yaml: sourse: unknown key; did you mean 'source'?"),
    ({"pipeline": {"sinks": [{"type": "jsonl", "pth": "x"}]}},
     "c.yaml: pipeline.sinks[0].pth: unknown key; did you mean 'path'?"),
    ({"source": {"ring": {"blocksize": 1}}},
     "c.yaml: source.ring.blocksize: unknown key; did you mean 'block_size'?"),
    ({"checks": [{"type": "http"}, {"type": "locust", "p95ms": 300}]},
     "c.yaml: checks[1].p95ms: unknown key; did you mean 'p95_ms'?"),
])
def test_unknown_keys_name_the_path_and_the_nearest_key(data: Any, expected: str) -> None:
    assert _err(data) == expected


def test_no_close_key_lists_the_known_ones() -> None:
    assert _err({"zzz": 1}, None) == "zzz: unknown key; known keys: checks, free, headers, " \
                                     "pipeline, source"


def test_tagged_keys_depend_on_the_tag() -> None:
    assert "checks[0].p95_ms: unknown key" in _err({"checks": [{"type": "http", "p95_ms": 1}]})
    strictconf.check({"checks": [{"type": "locust", "p95_ms": 300}]}, SCHEMA)
    # an unknown tag is the reader's to report (with its own list of types)
    strictconf.check({"checks": [{"type": "nope", "whatever": 1}]}, SCHEMA)


@pytest.mark.parametrize(("data", "words"), [
    ({"source": {"file": 3}}, ("source.file", "expected a string", "3")),
    ({"pipeline": {"sinks": [{"keep": "many"}]}}, ("pipeline.sinks[0].keep", "whole number")),
    ({"pipeline": {"sinks": [{"keep": True}]}}, ("pipeline.sinks[0].keep", "whole number")),
    ({"pipeline": {"sinks": {"type": "jsonl"}}}, ("pipeline.sinks", "a list of mappings")),
    ({"pipeline": {"sample": "half"}}, ("pipeline.sample", "a number")),
    ({"source": {"ring": {"block_size": [1]}}}, ("block_size", "a whole number or a string")),
    ({"headers": {"date": 1}}, ("headers.date", "a string")),
    ({"source": "eth0"}, ("source", "a mapping")),
    ([1, 2], ("the document", "a mapping")),
])
def test_wrong_types_name_the_path_and_the_type(data: Any, words: tuple[str, ...]) -> None:
    msg = _err(data)
    for w in words:
        assert w in msg, msg


def test_null_means_not_given_and_ints_are_numbers() -> None:
    strictconf.check({"source": None, "pipeline": {"sample": 50, "sinks": None}, "free": [{}]},
                     SCHEMA)
    strictconf.check(None, SCHEMA)


def test_yaml_syntax_error_is_one_line_with_file_line_column(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("source:\n  file: a\n   ring: 1\n")
    with pytest.raises(ConfigError) as e:
        strictconf.load(p, SCHEMA)
    msg = str(e.value)
    assert msg.startswith(f"{p}:3:") and "not valid YAML" in msg and "\n" not in msg
    assert "indentation" in msg  # what to do


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("source:\n  file: a\nsource:\n  file: b\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:3:1: .*'source' given twice"):
        strictconf.load_yaml(p)


def test_unreadable_files_are_one_line(tmp_path: Path) -> None:
    for path, words in ((tmp_path / "none.yaml", "no such"), (tmp_path, "is a directory")):
        with pytest.raises(ConfigError, match=words):
            strictconf.load_yaml(path)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not a text file"):
        strictconf.load_yaml(tmp_path / "bin.yaml")


def test_the_callers_error_type_is_raised() -> None:
    class Mine(Exception):
        pass

    with pytest.raises(Mine, match="sourse"):
        strictconf.check({"sourse": 1}, SCHEMA, error=Mine)


# ---- every reader ------------------------------------------------------------------------------

def _one_line(e: pytest.ExceptionInfo[BaseException], *words: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_appliance_config(tmp_path: Path) -> None:
    from appliance.live import config as cfgmod

    cap = tmp_path / "c.pcap"
    cap.write_bytes(b"")
    p = tmp_path / "appliance.yaml"
    p.write_text(f"source: {{file: {cap}}}\npipeline:\n  sanitise: {{enabled: false}}\n"
                 f"  sinks: [{{type: jsonl, pth: {tmp_path}/x.jsonl}}]\n")
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.load(p)
    _one_line(e, str(p), "pipeline.sinks[0].pth", "did you mean 'path'?")
    p.write_text(f"sourse: {{file: {cap}}}\n")
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.load(p)
    _one_line(e, "sourse: unknown key; did you mean 'source'?")
    p.write_text(f"source: {{file: {cap}}}\nextract: {{port: http}}\n")
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.load(p)
    _one_line(e, "extract.port", "whole number", "'http'")


def test_checks_file(tmp_path: Path) -> None:
    from appliance.images.checks import CheckSpecError, load_checks

    p = tmp_path / "checks.yaml"
    p.write_text("checks:\n  - {type: http, path: /}\n"
                 "  - {type: locust, locustfile: l.py, p95ms: 300}\n")
    with pytest.raises(CheckSpecError) as e:
        load_checks(p)
    _one_line(e, str(p), "checks[1].p95ms", "did you mean 'p95_ms'?")
    p.write_text("checks:\n  - {type: locust, locustfile: l.py, p95_ms: 300}\n")
    assert load_checks(p).checks[0].opts["p95_ms"] == 300
    p.write_text("checks:\n  - {type: http, path: /\n")
    with pytest.raises(CheckSpecError) as e:
        load_checks(p)
    _one_line(e, f"{p}:", "not valid YAML")


def test_image_manifest(tmp_path: Path) -> None:
    from appliance.images.imagesync import ImageError, load_manifest

    (tmp_path / "shadowtap-image.yaml").write_text(
        "name: shop\nservice: {command: run, prot: 8080}\n")
    with pytest.raises(ImageError) as e:
        load_manifest(tmp_path)
    _one_line(e, "shadowtap-image.yaml", "service.prot", "did you mean 'port'?")
    (tmp_path / "shadowtap-image.yaml").write_text("nmae: shop\n")
    with pytest.raises(ImageError) as e:
        load_manifest(tmp_path)
    _one_line(e, "nmae", "did you mean 'name'?")


def test_lab_spec(tmp_path: Path) -> None:
    from netconfig import lab
    from netconfig.errors import SpecError

    p = tmp_path / "lab.yaml"
    p.write_text(lab.DEFAULT_SPEC_YAML.replace("offloads: false", "ofloads: false", 1))
    with pytest.raises(SpecError) as e:
        lab.load_spec(p)
    _one_line(e, str(p), "links[0].ofloads", "did you mean 'offloads'?")
    p.write_text(lab.DEFAULT_SPEC_YAML.replace("fences:", "fence:"))
    with pytest.raises(SpecError) as e:
        lab.load_spec(p)
    _one_line(e, "fence: unknown key", "did you mean 'fences'?")


def test_sanitise_policy(tmp_path: Path) -> None:
    from replay.errors import InputError
    from replay.sanitise import Policy

    p = tmp_path / "policy.yaml"
    p.write_text("rules:\n  - {name: a, locaton: header, names: [x], action: mask}\n")
    with pytest.raises(InputError) as e:
        Policy.load(p)
    _one_line(e, str(p), "rules[0].locaton", "did you mean 'location'?")
    p.write_text("mask: '#'\nskip_header: [host]\nrules: []\n")
    with pytest.raises(InputError) as e:
        Policy.load(p)
    _one_line(e, "skip_header", "did you mean 'skip_headers'?")
    p.write_text("rules:\n  - name: x\n   location: [header\n")
    with pytest.raises(InputError) as e:
        Policy.load(p)
    _one_line(e, f"{p}:3:", "not valid YAML")


def test_canary_policy(tmp_path: Path) -> None:
    from appliance.canary.rollout import CanaryConfigError, load_policy

    p = tmp_path / "canary.yaml"
    p.write_text("steps: [10, 50, 100]\nstep_secs: 5\n")
    with pytest.raises(CanaryConfigError) as e:
        load_policy(p)
    _one_line(e, str(p), "step_secs", "did you mean 'step_seconds'?")
    p.write_text("steps: 10,50,100\nstep_seconds: 5\nmax_latency_ratio: 2\n")
    pol = load_policy(p)
    assert pol.steps == [10.0, 50.0, 100.0] and pol.step_seconds == 5.0
    p.write_text("steps: [50, 10]\n")
    with pytest.raises(CanaryConfigError) as e:
        load_policy(p)
    _one_line(e, str(p), "steps must increase")


def test_noise_rules(tmp_path: Path) -> None:
    from replay.compare import Rules
    from replay.errors import InputError

    p = tmp_path / "rules.yaml"
    p.write_text("headers: {date: ignore}\nfeilds: []\n")
    with pytest.raises(InputError) as e:
        Rules.load(p)
    _one_line(e, str(p), "feilds", "did you mean 'fields'?")
    p.write_text("fields:\n  - {field: 'body:id', knds: [value]}\n")
    with pytest.raises(InputError) as e:
        Rules.load(p)
    _one_line(e, "fields[0].knds", "did you mean 'kinds'?")


def test_canary_cli_reads_its_policy_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from appliance import cli

    cli._register_all()
    p = tmp_path / "canary.yaml"
    p.write_text("stepz: [1]\n")
    r = CliRunner().invoke(cli.app, ["canary", "run", "--config", str(p)])
    assert r.exit_code == 2
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "did you mean 'steps'?" in lines[0]
