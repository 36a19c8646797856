"""``shadowtap capture`` (tcpdump for exchanges) and ``shadowtap appliance run`` (the daemon).

Both are thin faces over ``appliance.live.daemon``. Mistakes (bad filter, missing interface or
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


LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"{value!r}; choose one of {', '.join(LOG_LEVELS)}")
    return value.lower()


LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error",
                                       callback=_log_level)]


def register(app: typer.Typer) -> None:
    """Mount ``capture``, ``appliance run|check`` and ``worker`` on the root app."""
    app.command("capture")(capture)
    group = typer.Typer(help="The gateway appliance daemon.", no_args_is_help=True)
    group.command("run")(appliance_run)
    group.command("check")(appliance_check)
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
    duration: Annotated[float | None, typer.Option("--duration", help="Stop after S seconds",
                                                   min=0.001)] = None,
    count: Annotated[int | None, typer.Option("--count", "-c", help="Stop after N exchanges",
                                              min=1)] = None,
    port: Annotated[int | None, typer.Option("--port", help="Only connections on this port",
                                             min=1, max=65535)] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Sanitise with this policy")
                      ] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="Pseudonym key file")
                        ] = None,
    key_env: Annotated[str | None, typer.Option(
        "--key-env", help="Environment variable holding the pseudonym key")] = None,
) -> None:
    """Capture live traffic and write the HTTP exchanges it carries: tcpdump for exchanges."""
    from appliance.live.capture import CaptureError, SourceSpec
    from appliance.live.config import ApplianceConfig, PipelineConfig, SanitiseConfig
    from appliance.live.daemon import Worker
    from replay.cli import check_output, output_format, summary_table
    from replay.errors import InputError
    from replay.extract import Summary
    from replay.formats import open_writer

    if duration is not None and count is not None:
        raise _fail("give --duration or --count, not both")
    if not interface or len(interface) > 15 or "/" in interface or interface.strip() != interface:
        raise _fail(f"--interface {interface!r}: not an interface name (at most 15 characters, "
                    "e.g. eth0; ip link lists them)")
    if (key_file or key_env) and policy is None:
        raise _fail("--key-file/--key-env go with --policy (the sanitise policy that uses them)")
    try:
        out_fmt = output_format(output, "-o")
        check_output(output, "-o")
    except InputError as e:
        raise _fail(str(e)) from None
    san = SanitiseConfig(enabled=policy is not None, policy=str(policy) if policy else None,
                         key_file=str(key_file) if key_file else None, key_env=key_env)
    cfg = ApplianceConfig(source=SourceSpec(kind="interface", interface=interface, netns=netns,
                                            bpf=filter_),
                          pipeline=PipelineConfig(sanitise=san), metrics_listen=None)
    cfg.extract.port = port
    if san.enabled:
        _check_capture_policy(san)
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
    sink = _FileSink(open_writer(out_fmt, fp), count, stop)
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


def _check_capture_policy(san: Any) -> None:
    """capture --policy: the policy and its key, in capture's own flags."""
    from replay.cli_sanitise import MAKE_KEY
    from replay.errors import InputError
    from replay.sanitise import Policy, load_key

    try:
        pol = Policy.load(san.policy)
    except InputError as e:
        raise _fail(f"--policy: {e}") from None
    if san.key_file or san.key_env:
        try:
            load_key(san.key_file, san.key_env)
        except InputError as e:
            raise _fail(f"{'--key-file' if san.key_file else '--key-env'}: {e}; {MAKE_KEY}"
                        ) from None
    elif pol.needs_key and not (pol.key_file or pol.key_env):
        raise _fail(f"--policy {san.policy}: the policy makes pseudonyms and needs a key; pass "
                    f"--key-file FILE or --key-env VAR; {MAKE_KEY}")


def appliance_check(
    config: Annotated[Path, typer.Option("--config", "-c", help="appliance.yaml to check")],
) -> None:
    """Check a config file completely (keys, values, filter, policy and key, sink paths)
    without capturing anything; print what it would run. Exit 0 when valid, 2 when not."""
    from appliance.live import config as cfgmod

    try:
        cfg = cfgmod.load(config)
    except cfgmod.ConfigError as e:
        raise _fail(str(e)) from None
    for line in config_summary(cfg):
        typer.echo(line)


def config_summary(cfg: Any) -> list[str]:
    """A few lines saying what a valid config would run."""
    src = cfg.source
    if src.kind == "interface":
        where = f"interface {src.interface}" + (f" in netns {src.netns}" if src.netns else "")
        if src.bpf:
            where += f", filter {src.bpf!r}"
    elif src.kind == "vxlan":
        where = f"VXLAN on {src.listen}:{src.port}" + (f", VNIs {src.vnis}" if src.vnis else "")
    else:
        where = f"capture file {src.path}"
    p = cfg.pipeline
    san = p.sanitise
    sanitise = (f"sanitise with {san.policy or 'the built-in policy'}" if san.enabled
                else "no sanitising")
    workers = "auto" if p.workers is None else str(p.workers)
    lines = [f"{cfg.path}: valid",
             f"  source: {where} ({cfg.workers} capture process{'es' * (cfg.workers > 1)})",
             f"  pipeline: {workers} workers, sample {p.sample_percent:g} %, "
             f"{len(p.filters)} filters, {sanitise}"]
    for sk in p.sinks:
        lines.append(f"  sink: {sk.type}" + (f" -> {sk.path}" if sk.path else ""))
    if cfg.shadowing is not None:
        sh = cfg.shadowing
        lines.append(f"  shadowing: candidate {sh.candidate.url}"
                     + (f", secondary {sh.secondary.url}" if sh.secondary else ""))
    if cfg.bus is not None:
        lines.append(f"  bus: {cfg.bus.url} ({cfg.bus.shards} shards)")
    lines.append(f"  metrics: {cfg.metrics_listen or 'off'}")
    c = cfg.console
    lines.append("  console: off" if c is None else
                 f"  console: http://{c.listen}/ (token "
                 + (f"from {c.token_file})" if c.token_file else "random, printed at start)"))
    return lines


def appliance_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="appliance.yaml")],
    netns: Annotated[str | None, typer.Option("--netns",
                                              help="Override source.netns from the config")
                     ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Run the appliance: capture, extract, pipeline, metrics; SIGHUP reloads, SIGTERM drains."""
    from appliance.live import config as cfgmod
    from appliance.live.capture import CaptureError
    from appliance.live.daemon import run_daemon
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
        what = f"{e.filename}: " if e.filename else ""
        raise _fail(f"cannot start: {what}{e.strerror or e} (check the paths in {config})"
                    ) from None
    raise typer.Exit(code)


def worker(
    redis_url: Annotated[str, typer.Option("--redis", help="The bus: redis://HOST:PORT/DB or "
                                           "unix:///path/redis.sock")],
    candidate: Annotated[str, typer.Option("--candidate", help="URL of the build under test")],
    secondary: Annotated[str | None, typer.Option(
        "--secondary", help="URL of a shadow running production's build (noise)")] = None,
    index: Annotated[int, typer.Option("--index", help="This worker's number, 0..of-1", min=0)
                     ] = 0,
    of: Annotated[int, typer.Option("--of", help="How many workers share the shards", min=1)
                  ] = 1,
    stream: Annotated[str, typer.Option("--stream", help="bus.stream of the capture nodes")
                      ] = "shadowtap",
    shards: Annotated[int, typer.Option("--shards", help="bus.shards of the capture nodes",
                                        min=1, max=1024)] = 4,
    group: Annotated[str, typer.Option("--group", help="Consumer group: one per verdict")
                     ] = "shadowtap-workers",
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write the merged report of every worker here (+ .html)")] = None,
    verdict_every: Annotated[float, typer.Option("--verdict-every", help="Seconds", min=0.1)
                             ] = 5.0,
    min_samples: Annotated[int, typer.Option(
        "--min-samples", help="Compared requests an endpoint needs for a verdict", min=1)] = 8,
    until_idle: Annotated[float | None, typer.Option(
        "--until-idle", help="Stop once the shards have been empty this many seconds", min=0.0)
    ] = None,
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Only merge the workers' states into --report, then exit")
                           ] = False,
    log_level: LogLevel = "info",
) -> None:
    """A scale-out worker: consume sanitised exchanges from Redis Streams (published by
    appliances with a ``bus:`` section), replay them to the shadows, compare three ways, and
    merge every worker's state into one verdict."""
    import asyncio

    from appliance.live import config as cfgmod
    from appliance.live.bus import BusConfig, BusConsumer, merged_report
    from appliance.live.shadowing import run_loop, write_reports

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s shadowtap-worker %(levelname)s %(message)s",
                        stream=sys.stderr)
    if not 0 <= index < of:
        raise _fail(f"--index {index}: must be in 0..{of - 1} (--of {of})")
    if report is not None:
        from replay.cli import check_output
        from replay.errors import InputError

        try:
            if report.suffix.lower() != ".json":
                raise InputError(f"--report {report}: the report is JSON (an .html is written "
                                 "beside it); name the file .json")
            check_output(report, "--report")
        except InputError as e:
            raise _fail(str(e)) from None
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
