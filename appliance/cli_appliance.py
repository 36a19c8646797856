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
    app.command("worker")(worker)


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


def worker(
    redis_url: Annotated[str, typer.Option("--redis", help="The bus: redis://HOST:PORT/DB or "
                                           "unix:///path/redis.sock")],
    candidate: Annotated[str, typer.Option("--candidate", help="URL of the build under test")],
    secondary: Annotated[str | None, typer.Option(
        "--secondary", help="URL of a shadow running production's build (noise)")] = None,
    index: Annotated[int, typer.Option("--index", help="This worker's number, 0..of-1")] = 0,
    of: Annotated[int, typer.Option("--of", help="How many workers share the shards")] = 1,
    stream: Annotated[str, typer.Option("--stream", help="bus.stream of the capture nodes")
                      ] = "shadowtap",
    shards: Annotated[int, typer.Option("--shards", help="bus.shards of the capture nodes")
                      ] = 4,
    group: Annotated[str, typer.Option("--group", help="Consumer group: one per verdict")
                     ] = "shadowtap-workers",
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write the merged report of every worker here (+ .html)")] = None,
    verdict_every: Annotated[float, typer.Option("--verdict-every", help="Seconds")] = 5.0,
    min_samples: Annotated[int, typer.Option("--min-samples")] = 8,
    until_idle: Annotated[float | None, typer.Option(
        "--until-idle", help="Stop once the shards have been empty this many seconds")] = None,
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Only merge the workers' states into --report, then exit")
                           ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")
                         ] = "info",
) -> None:
    """A scale-out worker: consume sanitised exchanges from Redis Streams (published by
    appliances with a ``bus:`` section), replay them to the shadows, compare three ways, and
    merge every worker's state into one verdict."""
    import asyncio

    from appliance import config as cfgmod
    from appliance.live.bus import BusConfig, BusConsumer, merged_report
    from appliance.shadowing import run_loop, write_reports

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s shadowtap-worker %(levelname)s %(message)s",
                        stream=sys.stderr)
    if not 0 <= index < of:
        raise _fail(f"--index {index}: must be in 0..{of - 1} (--of {of})")
    doc: dict[str, Any] = {"candidate": candidate, "verdict_every": f"{verdict_every}s",
                           "min_samples": min_samples}
    if secondary:
        doc["secondary"] = secondary
    try:
        sh = cfgmod._shadowing(cfgmod._Reader(doc, "shadowing"))
    except cfgmod.ConfigError as e:
        raise _fail(str(e).replace("shadowing.", "--")) from None
    bus = BusConfig(url=redis_url, stream=stream, shards=shards)
    try:
        if not report_only:
            c = BusConsumer(bus, sh, index=index, of=of, group=group)

            async def main() -> None:
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, c.stop.set)
                asyncio.get_running_loop().add_signal_handler(signal.SIGINT, c.stop.set)
                await c.run(until_idle=until_idle)

            run_loop(main())
            logging.getLogger("shadowtap.bus").info(
                "worker %d: %d exchanges compared or skipped, %d taken back", index,
                c.acked, c.reclaimed)
        if report is not None:
            out, _ = merged_report(bus, sh, group=group)
            write_reports(report, out)
            s = out["summary"]
            typer.echo(f"verdict over {out['bus']['workers']} workers: {s['compared']} "
                       f"compared, {s['regressions']} regressions; report in {report}")
    except Exception as e:
        import redis

        if isinstance(e, redis.RedisError):
            raise _fail(f"redis at {redis_url}: {e}; is redis-server running there?") from None
        raise
