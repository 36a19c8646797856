"""``shadowtap sanitise``: mask secrets and personal data in a capture or exchange file.

A thin face over ``replay.sanitise``: read with ``replay.formats.read_exchanges`` (any format
``extract`` reads), sanitise each Exchange, write with the writer for the output's extension, and
print the redaction report (counts per rule and location, pseudonym samples, never originals) as a
table on stderr. User errors (missing key file, bad policy, unreadable input) are one line on
stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from replay.cli import PORT, check_output, output_format
from replay.errors import InputError
from replay.sanitise import Policy, Sanitiser, SanitiseReport, load_key

MAKE_KEY = ("make one with: head -c 32 /dev/urandom > sanitise.key && chmod 600 sanitise.key "
            "(keep it: the same key gives the same pseudonyms)")
"""How to make a pseudonym key: said by every error about a missing key."""


def register(app: typer.Typer) -> None:
    """Mount ``sanitise`` on the root app (called by the root CLI)."""
    app.command("sanitise")(sanitise)


def sanitise(
    input: Annotated[
        Path, typer.Argument(help="Capture (pcap/pcapng) or exchange file (jsonl, har, mitm).")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="Output file; format from extension (.jsonl, .har, .mitm)."
        ),
    ],
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Policy YAML (default: built-in policy).")
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", help="File holding the pseudonym key (>= 16 bytes)."),
    ] = None,
    key_env: Annotated[
        str | None,
        typer.Option("--key-env", help="Environment variable holding the pseudonym key."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the redaction report as JSON here.")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="For captures: server port to extract.", **PORT)
    ] = None,
) -> None:
    """Mask secrets and personal data; pseudonyms are keyed, deterministic and keep the format."""
    err = Console(stderr=True)
    try:
        rep = run_sanitise(input, output, policy, key_file, key_env, report, port)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    err.print(report_table(rep))


def run_sanitise(
    input: Path,
    output: Path,
    policy_path: Path | None = None,
    key_file: Path | None = None,
    key_env: str | None = None,
    report_path: Path | None = None,
    port: int | None = None,
) -> SanitiseReport:
    """The command without the CLI: returns the report. Raises InputError on user errors.

    The output is written to a temporary name and renamed at the end, so a run that fails half
    way never leaves a partial file that looks finished."""
    from replay.extract import gc_tuned
    from replay.formats import open_writer, read_exchanges

    out_fmt = output_format(output, "-o")
    check_output(output, "-o")
    if report_path is not None:
        if report_path.suffix.lower() != ".json":
            raise InputError(f"--report {report_path}: the report is JSON; name the file .json")
        check_output(report_path, "--report")
    pol = Policy.load(policy_path)
    key: bytes | None = None
    if key_file is not None or key_env is not None:
        key = _key(key_file, key_env)
    elif pol.key_file is not None or pol.key_env is not None:
        key = _key(pol.key_file, pol.key_env)
    elif pol.needs_key:
        raise InputError(
            "no pseudonym key: the policy makes pseudonyms; pass --key-file FILE or --key-env VAR "
            f"(or set key: in the policy); {MAKE_KEY}"
        )
    san = Sanitiser(pol, key)
    if input.resolve() == output.resolve():
        raise InputError(f"{output}: output would overwrite the input; choose another name")
    tmp = output.with_name(output.name + ".part")
    try:
        # Each exchange leaves many small short-lived objects: the appliance's young-generation
        # threshold (``gc_tuned``) keeps the collector from rescanning the sanitiser's caches.
        with tmp.open("wb") as fp, gc_tuned():
            writer = open_writer(out_fmt, fp)
            try:
                for ex in read_exchanges(input, port=port):
                    out = san.apply(ex)
                    if out is not None:
                        writer.write(out)
            finally:
                writer.close()
        os.replace(tmp, output)
    except OSError as e:
        raise InputError(f"{output}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    if report_path is not None:
        try:
            report_path.write_text(json.dumps(san.report.to_dict(), indent=2) + "\n")
        except OSError as e:
            raise InputError(f"{report_path}: cannot write report ({e.strerror or e})") from None
    return san.report


def _key(key_file: Path | None, key_env: str | None) -> bytes:
    """``load_key``; a key too short says how to make one."""
    try:
        return load_key(key_file, key_env)
    except InputError as e:
        if "too short" not in str(e):
            raise
        raise InputError(f"{e}; {MAKE_KEY}") from None


def report_table(rep: SanitiseReport) -> Table:
    """The redaction report as a rich table: one row per (rule, location)."""
    t = Table(
        title=(
            f"sanitise: {rep.exchanges_in} in, {rep.exchanges_out} out, "
            f"{rep.exchanges_dropped} dropped, {rep.bodies_rewritten} bodies rewritten"
        ),
        title_justify="left",
    )
    t.add_column("rule")
    t.add_column("location")
    t.add_column("count", justify="right")
    t.add_column("pseudonym samples (never originals)", overflow="fold")
    shown: set[str] = set()
    for (rule, loc), n in sorted(rep.counts.items()):
        samples = "" if rule in shown else ", ".join(rep.samples.get(rule, []))
        shown.add(rule)
        # Text: samples keep the traffic's punctuation (IPv6 '2001:cd:1::' holds ':cd:')
        t.add_row(Text(rule), Text(loc), str(n), Text(samples))
    for reason, n in sorted(rep.fallbacks.items()):  # reasons quote an encoding, a boundary
        t.add_row("[yellow]fallback[/]", Text(reason), str(n), "handled per on_mismatch")
    if not rep.counts and not rep.fallbacks:
        t.add_row("-", "-", "0", "nothing to mask")
    return t
