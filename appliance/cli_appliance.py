"""``shadowtap capture`` (tcpdump for exchanges) and ``shadowtap appliance run`` (the daemon).

Both are thin faces over ``appliance.daemon``. Mistakes (bad filter, missing interface or
namespace, bad config key, not root) are one ``error:`` line on stderr and exit code 2, in the
style of ``shadowtap extract``. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_USAGE = 2


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def register(app: typer.Typer) -> None:
    """Mount ``capture`` and ``appliance run`` on the root app."""
    app.command("capture")(capture)
    group = typer.Typer(help="The gateway appliance daemon.", no_args_is_help=True)
    group.command("run")(appliance_run)
    app.add_typer(group, name="appliance")


class _FileSink:
    """A plain (non-rotating) writer sink for the one-shot capture, stopping after ``count``."""

    name = "output"

    def __init__(self, writer: Any, count: int | None, stop: threading.Event) -> None:
        self.writer = writer
        self.count = count
        self.stop = stop
        self.written = 0

    def process(self, ex: Any) -> Any:
        if self.count is not None and self.written >= self.count:
            return ex
        self.writer.write(ex)
        self.written += 1
        if self.count is not None and self.written >= self.count:
            self.stop.set()
        return ex

    def close(self) -> None:
        self.writer.close()


def capture(
    interface: Annotated[str, typer.Option("--interface", "-i", help="Interface to capture on")],
    output: Annotated[Path, typer.Option("-o", "--output",
                                         help="Exchange file (.jsonl, .har, .mitm); - = stdout")],
    netns: Annotated[str | None, typer.Option("--netns", help="Capture in this namespace")] = None,
    filter_: Annotated[str | None, typer.Option("--filter", "-f",
                                                help="pcap filter, e.g. 'tcp port 80'")] = None,
    duration: Annotated[float | None, typer.Option("--duration", help="Stop after S seconds")
                        ] = None,
    count: Annotated[int | None, typer.Option("--count", "-c", help="Stop after N exchanges")
                     ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Only connections on this port")
                    ] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Sanitise with this policy")
                      ] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="Pseudonym key file")
                        ] = None,
) -> None:
    """Capture live traffic and write the HTTP exchanges it carries: tcpdump for exchanges."""
    from appliance.capture import CaptureError, SourceSpec
    from appliance.config import ApplianceConfig, PipelineConfig, SanitiseConfig
    from appliance.daemon import Worker
    from replay.cli import summary_table
    from replay.errors import InputError
    from replay.extract import Summary
    from replay.formats import format_for_output, open_writer

    if duration is not None and count is not None:
        raise _fail("give --duration or --count, not both")
    if (duration is not None and duration <= 0) or (count is not None and count <= 0):
        raise _fail("--duration and --count must be positive")
    san = SanitiseConfig(enabled=policy is not None, policy=str(policy) if policy else None,
                         key_file=str(key_file) if key_file else None)
    cfg = ApplianceConfig(source=SourceSpec(kind="interface", interface=interface, netns=netns,
                                            bpf=filter_),
                          pipeline=PipelineConfig(sanitise=san), metrics_listen=None)
    cfg.extract.port = port
    if san.enabled:
        from appliance.config import ConfigError, _check_sanitise

        try:
            _check_sanitise(san)
        except ConfigError as e:
            raise _fail(str(e).replace("pipeline.sanitise.", "--").replace("_", "-")) from None
    try:
        worker = Worker(cfg)
    except (CaptureError, InputError) as e:
        raise _fail(str(e)) from None
    to_stdout = str(output) == "-"
    try:
        if to_stdout:
            fp = sys.stdout.buffer
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            fp = output.open("wb")
    except OSError as e:
        worker.source.close()
        raise _fail(f"{output}: cannot write ({e.strerror or e})") from None
    stop = worker.stop_event
    sink = _FileSink(open_writer(format_for_output(output), fp), count, stop)
    worker.pipeline.sinks.append(sink)
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if duration is not None:
        threading.Timer(duration, stop.set).start()
    where = f" in {netns}" if netns else ""
    typer.echo(f"capturing on {interface}{where}"
               f"{' (' + filter_ + ')' if filter_ else ''}; Ctrl-C to stop", err=True)
    t0 = time.monotonic()
    worker.run()
    if not to_stdout:
        fp.close()
    summary = Summary()
    worker.extractor.fill(summary)
    summary.seconds = time.monotonic() - t0
    snap = worker.snapshot()
    from rich.console import Console

    con = Console(stderr=True)
    con.print(summary_table(summary))
    con.print(f"written: {sink.written:,} exchanges to {output}; kernel: "
              f"{snap['kernel_packets']:,} packets, {snap['kernel_drops']:,} dropped")
    for t in threading.enumerate():
        if isinstance(t, threading.Timer):
            t.cancel()


def appliance_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="appliance.yaml")],
    netns: Annotated[str | None, typer.Option("--netns",
                                              help="Override source.netns from the config")
                     ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")
                         ] = "info",
) -> None:
    """Run the appliance: capture, extract, pipeline, metrics; SIGHUP reloads, SIGTERM drains."""
    from appliance import config as cfgmod
    from appliance.capture import CaptureError
    from appliance.daemon import run_daemon
    from replay.errors import InputError

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s shadowtap-appliance %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        cfg = cfgmod.load(config)
    except cfgmod.ConfigError as e:
        raise _fail(str(e)) from None
    if netns is not None:
        from netconfig import netns as nsmod

        if not nsmod.exists(netns):
            raise _fail(f"--netns: network namespace {netns!r} does not exist "
                        "(ip netns list shows the ones that do)")
        cfg.source.netns = cfg.netns_override = netns
    try:
        code = run_daemon(cfg)
    except (CaptureError, InputError, RuntimeError) as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"cannot start: {e.strerror or e}") from None
    raise typer.Exit(code)
