"""CLI for replay: ``shadowtap extract``, ``shadowtap generate``.

Exchanges go to stdout or ``-o``; the summary, progress and errors go to stderr, so the output
can be piped. A user's mistake (missing file, not a capture) is one line on stderr and exit code
2, never a traceback; a damaged capture yields what came before the damage and exits 1.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from replay.errors import InputError

EXIT_DAMAGED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


PORT = {"min": 1, "max": 65535}
"""``typer.Option(..., **PORT)``: a TCP/UDP port number."""

OUTPUT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".har": "har", ".mitm": "mitm",
                   ".flows": "mitm", ".flow": "mitm"}


def output_format(path: Path | str | None, option: str = "-o", fmt: str | None = None) -> str:
    """The exchange format to write to ``path``: from ``fmt`` when given, else from the file
    name (``.jsonl``, ``.har``, ``.mitm``; no suffix or ``-`` is JSONL). A suffix that names
    another format (``out.xml``, ``out.pcap``) is an ``InputError``, never silently JSONL."""
    if fmt is not None:
        if fmt not in ("jsonl", "har", "mitm"):
            raise InputError(f"--format {fmt!r}: choose jsonl, har or mitm")
        return fmt
    if path is None or str(path) == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "jsonl"
    if suffix in OUTPUT_SUFFIXES:
        return OUTPUT_SUFFIXES[suffix]
    hint = " (.json is ambiguous: HAR is .har, one exchange per line is .jsonl)" if (
        suffix == ".json") else ""
    raise InputError(f"{option} {path}: cannot write exchanges as {suffix!r}{hint}; name the "
                     "file .jsonl, .har or .mitm")


def check_output(path: Path | str | None, option: str = "-o") -> None:
    """Fail now, naming the option and the path, when ``path`` cannot be written (not a
    directory, a parent that is a file, no permission), before any work is done."""
    if path is None or str(path) == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option} {p}: is a directory; give a file name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{option} {p}: cannot write there ({parent} is not a directory)")
    import os

    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(f"{option} {p}: cannot write there (permission denied)")


def _open_output(path: Path | None):
    if path is None or str(path) == "-":
        return sys.stdout.buffer, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # 1 MiB buffer: lines are a few KB, and the default 8 KiB made a write call per line
        return path.open("wb", buffering=1 << 20), True
    except OSError as e:
        raise fail(f"{path}: cannot write ({e.strerror or e})") from None


def summary_table(s: Any) -> Any:
    """A rich table of an extraction Summary."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title="shadowtap extract", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    pps = f"{s.packets / s.seconds:,.0f}/s" if s.seconds else "-"
    rows = [
        ("files", str(len(s.files))),
        ("packets", f"{s.packets:,}"),
        ("bytes", f"{s.bytes:,}"),
        ("TCP connections", f"{s.connections:,}"),
        ("HTTP connections", f"{s.http_connections:,}"),
        ("non-HTTP streams", f"{s.non_http_streams:,}"),
        ("exchanges", f"{s.exchanges:,}"),
        ("incomplete exchanges", f"{s.incomplete_exchanges:,}"),
        ("gaps (bytes)", f"{s.gaps:,} ({s.gap_bytes:,})"),
        ("retransmitted segments", f"{s.retransmits:,}"),
        ("tunnels (CONNECT/Upgrade)", f"{s.tunnels:,}"),
        ("bytes skipped", f"{s.bytes_skipped:,}"),
        ("desync messages (never replayed)", f"{getattr(s, 'desync_messages', 0):,}"),
        ("HTTP weirds", _weird_cell(getattr(s, "weird", None) or {})),
        ("time", f"{s.seconds:.2f} s ({pps})"),
    ]
    if s.vxlan_packets:
        rows.insert(2, ("VXLAN-decapsulated packets", f"{s.vxlan_packets:,}"))
    tls = getattr(s, "tls", None) or {}
    if tls.get("connections"):
        at = next(i for i, r in enumerate(rows) if r[0] == "non-HTTP streams") + 1
        rows[at:at] = tls_rows(s)
    h2 = getattr(s, "h2", None) or {}
    if h2.get("connections"):
        at = next(i for i, r in enumerate(rows) if r[0] == "exchanges")
        rows[at:at] = h2_rows(h2)
    # Cells as plain Text: SNI, ALPN and weird names come from the capture, and rich would
    # read "[/]" or ":smile:" in them as markup (a MarkupError on an unbalanced tag).
    for k, v in rows:
        t.add_row(k, Text(v))
    skipped = {**s.skipped_packets}
    for k in ("fragments_reassembled",):
        skipped.pop(k, None)
    if skipped:
        t.add_row("packets skipped",
                  Text(", ".join(f"{k}={v:,}" for k, v in sorted(skipped.items()))))
    return t


TLS_OUTCOMES = (("decrypted", "decrypted"), ("no_key", "no key"),
                ("auth_failed", "authentication failed"), ("h2", "decrypted, HTTP/2"),
                ("mid_stream", "picked up mid-stream"),
                ("unsupported_cipher", "cipher not supported"),
                ("no_server_hello", "handshake unanswered"))


def tls_rows(s: Any) -> list[tuple[str, str]]:
    """The summary's TLS rows: connections by outcome, the undecrypted ones by SNI and ALPN,
    records that failed authentication."""
    tls = s.tls
    parts = [f"{label} {tls[k]:,}" for k, label in TLS_OUTCOMES if tls.get(k)]
    rows = [("TLS connections", f"{tls['connections']:,} ({', '.join(parts)})")]
    if s.tls_undecrypted:
        rows.append(("TLS not decrypted (SNI, ALPN)", _top(s.tls_undecrypted)))
    if tls.get("auth_failures"):
        rows.append(("TLS records failing authentication", f"{tls['auth_failures']:,}"))
    return rows


def h2_rows(h2: dict[str, int]) -> list[tuple[str, str]]:
    """The summary's HTTP/2 rows: connections by how they were found, streams, gRPC calls,
    errors by kind (``replay.h2.reader.ERROR_KINDS``)."""
    from replay.h2.reader import ERROR_KINDS

    via = [f"{label} {h2[k]:,}" for k, label in (("via_tls", "TLS"), ("via_h2c", "h2c"),
                                                 ("via_upgrade", "Upgrade: h2c"))
           if h2.get(k)]
    rows = [("HTTP/2 connections", f"{h2['connections']:,} ({', '.join(via)})"),
            ("HTTP/2 streams", f"{h2.get('streams', 0):,}"
                               + (f" (gRPC calls {h2['grpc_calls']:,})"
                                  if h2.get("grpc_calls") else ""))]
    errs = {k: h2[k] for k in ERROR_KINDS if h2.get(k)}
    for k in ("rst_stream", "goaway", "hpack_unknown_refs", "gaps", "mid_stream"):
        if h2.get(k):
            errs[k] = h2[k]
    if errs:
        rows.append(("HTTP/2 errors and events", _top(errs, 12)))
    return rows


def _top(d: dict[str, int], n: int = 5) -> str:
    items = sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))
    out = ", ".join(f"{k} ×{v:,}" for k, v in items[:n])
    return out + (f", … ({len(items) - n} more)" if len(items) > n else "")


def tls_hint(s: Any, keylogs: int) -> str | None:
    """One line for TLS connections that were not decrypted: what they were and what to give."""
    tls = getattr(s, "tls", None) or {}
    n = sum(tls.get(k, 0) for k in ("no_key", "mid_stream"))
    if not n:
        return None
    snis: dict[str, int] = {}
    alpns: dict[str, int] = {}
    for k, v in s.tls_undecrypted.items():
        sni, _, alpn = k.partition(" (")
        if sni != "-":
            snis[sni] = snis.get(sni, 0) + v
        for a in alpn.rstrip(")").split(","):
            if a and a != "-":
                alpns[a] = alpns.get(a, 0) + v
    seen = ", ".join(x for x in (
        "SNI " + ", ".join(sorted(snis, key=lambda k: -snis[k])[:5]) if snis else "",
        "ALPN " + "/".join(sorted(alpns, key=lambda k: -alpns[k])) if alpns else "") if x)
    what = f"{n:,} TLS connection{'s' if n != 1 else ''}" + (f" ({seen})" if seen else "")
    if not keylogs and not s.keylog_keys:
        return f"{what}: give --keylog to decrypt"
    mid = tls.get("mid_stream", 0)
    extra = f" ({mid:,} picked up after their handshake)" if mid else ""
    return f"{what}: no key in the key log{extra}"


def _weird_cell(weird: dict[str, int]) -> str:
    """``Summary.weird`` for the table: the total, then each reason with its count (framing
    oddities such as request smuggling shapes are a security signal, so each is named)."""
    if not weird:
        return "0"
    parts = ", ".join(f"{k}={v:,}" for k, v in sorted(weird.items()))
    return f"{sum(weird.values()):,} ({parts})"


def extract_cmd(
    captures: Annotated[list[Path], typer.Argument(help="pcap or pcapng files (gzip is fine)")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", "-f", help="jsonl | har | mitm (default: from -o, else jsonl)"),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Only connections with this port (either side)",
                                 **PORT)
    ] = None,
    summary_json: Annotated[
        bool, typer.Option("--summary-json", help="Print the summary as JSON on stderr")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary")] = False,
    keylog: Annotated[
        list[Path] | None,
        typer.Option("--keylog", help="TLS key log (SSLKEYLOGFILE format) to decrypt TLS "
                                      "connections with; repeatable"),
    ] = None,
) -> None:
    """Turn packet captures into HTTP exchanges (requests paired with responses).

    HTTP/1.x is found by content on any port; each exchange records what the capture missed
    (gaps, retransmissions, truncation, no response). TLS connections are decrypted with the
    secrets of --keylog files (and of pcapng Decryption Secrets Blocks). The summary on stderr
    counts every packet and byte that did not become part of an exchange, by reason.
    """
    import orjson

    from replay.extract import Lines, Summary, extract_file
    from replay.formats import detect_format, open_writer
    from replay.tls.keylog import KeyLog

    # Check every input (and the output's name and place) before writing anything.
    try:
        out_fmt = output_format(output, "-o", fmt)
        check_output(output)
        for c in captures:
            kind = detect_format(c)
            if kind not in ("pcap", "pcapng"):
                raise InputError(f"{c}: is a {kind} exchange file, not a packet capture")
        keys = KeyLog()
        for k in keylog or []:
            try:
                keys.add_file(k)
            except OSError as e:
                raise InputError(f"--keylog {k}: cannot read ({e.strerror or e})") from None
            if not keys.lines:
                raise InputError(f"--keylog {k}: no key log lines in it (expected lines like "
                                 "'CLIENT_RANDOM <hex> <hex>', as SSLKEYLOGFILE writes)")
    except InputError as e:
        raise fail(str(e)) from None
    if keys.garbage and not quiet:
        typer.echo(f"warning: --keylog: {keys.garbage:,} line(s) that are not key log lines "
                   "were skipped", err=True)

    summary = Summary()
    fp, close = _open_output(output)
    try:
        writer = open_writer(out_fmt, fp)
    except InputError as e:
        raise fail(str(e)) from None
    show_progress = sys.stderr.isatty() and not quiet and not summary_json
    progress = None
    try:
        if show_progress:
            from rich.markup import escape
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

            progress = Progress(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                TimeRemainingColumn(), transient=True, console=_stderr_console(),
            )
            progress.start()
        for i, cap in enumerate(captures):
            task = None
            cb = None
            if progress is not None:
                task = progress.add_task(escape(cap.name),  # a file name is not markup
                                         total=max(cap.stat().st_size, 1))

                def cb(pos: int, size: int, task: Any = task) -> None:
                    progress.update(task, completed=pos)

            prefix = f"f{i + 1}." if len(captures) > 1 else ""
            lines = out_fmt == "jsonl"  # finished lines from the native path: no objects
            for ex in extract_file(cap, summary=summary, id_prefix=prefix, port=port,
                                   progress=cb, lines=lines, keylog=keys):
                if type(ex) is Lines:
                    writer.write_lines(ex.data, ex.n)
                else:
                    writer.write(ex)
        writer.close()
    except InputError as e:
        raise fail(str(e)) from None
    except BrokenPipeError:
        sys.stderr.close()
        raise typer.Exit(0) from None
    except OSError as e:
        raise fail(f"write failed: {e}") from None
    finally:
        if progress is not None:
            progress.stop()
        if close:
            # After a failed write the close's flush fails the same way: the error above
            # has been said once already.
            with contextlib.suppress(OSError):
                fp.close()
    if summary_json:
        sys.stderr.buffer.write(orjson.dumps(summary.to_dict()) + b"\n")
        sys.stderr.flush()
    elif not quiet:
        _stderr_console().print(summary_table(summary))
        hint = tls_hint(summary, len(keylog or []))
        if hint:
            typer.echo(hint, err=True)
    for w in summary.warnings:
        typer.echo(f"warning: {w}", err=True)
    if summary.errors:
        for e in summary.errors:
            typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_DAMAGED)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def generate_cmd(
    output: Annotated[Path, typer.Argument(help="pcap file to write")],
    connections: Annotated[int, typer.Option(help="TCP connections", min=1)] = 200,
    concurrency: Annotated[int, typer.Option(help="Connections open at once", min=1)] = 50,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes")] = 1,
    loss: Annotated[float, typer.Option(help="Share of data segments left out (0..1)",
                                        min=0.0, max=1.0)] = 0.0,
    reorder: Annotated[float, typer.Option(help="Share of data segments swapped (0..1)",
                                           min=0.0, max=1.0)] = 0.0,
) -> None:
    """Write a synthetic but realistic HTTP/1.1 capture (for trying shadowtap out, and tests)."""
    from replay.synth import generate_pcap

    if output.suffix.lower() not in (".pcap", ".cap") and output.suffix:
        raise fail(f"{output}: generate writes a pcap; name the file .pcap")
    try:
        check_output(output, "OUTPUT")
    except InputError as e:
        raise fail(str(e)) from None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        st = generate_pcap(output, connections=connections, concurrency=concurrency, seed=seed,
                           loss=loss, reorder=reorder)
    except OSError as e:
        raise fail(f"{output}: cannot write ({e.strerror or e})") from None
    typer.echo(
        f"wrote {output}: {st.packets:,} packets, {st.connections:,} connections, "
        f"{st.requests:,} requests",
        err=True,
    )


def register(app: typer.Typer) -> None:
    """Mount replay's commands on the root app."""
    app.command("extract")(extract_cmd)
    app.command("generate")(generate_cmd)
