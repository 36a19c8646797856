"""The ``shadowtap`` command: one typer app, a thin face over replay, netconfig and appliance.

Sub-commands live next to the code they drive (``replay/cli.py``, ``netconfig/cli.py``); this
module only mounts them. Heavy imports (scapy, mitmproxy, pyroute2) stay inside the commands so
``shadowtap --help`` starts fast.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

try:  # typer 0.2x ships its own copy of click, whose exceptions its commands raise
    from typer._click.exceptions import BadParameter, MissingParameter, UsageError
except ImportError:  # pragma: no cover - an older typer on click itself
    from click import BadParameter, MissingParameter, UsageError

from appliance.envvars import help_epilog

CONTEXT = {"help_option_names": ["-h", "--help"]}
"""``-h`` and ``--help`` on every command (sub-commands inherit it from the root)."""


def usage_line(e: UsageError) -> str:
    """One ``error:`` line for a usage mistake (a bad option value, a missing argument, an
    unknown option or command), saying where to look next: the command's own ``--help``.

    ``--canary: 150 is not in the range 0<=x<=100 (see 'shadowtap route set --help')``."""
    ctx = e.ctx
    path = ctx.command_path if ctx is not None else "shadowtap"
    param = getattr(e, "param", None)
    if (isinstance(e, BadParameter) and not isinstance(e, MissingParameter)
            and param is not None and e.param_hint is None):
        if getattr(param, "param_type_name", "") == "option" and param.opts:
            longs = [o for o in param.opts if o.startswith("--")]
            name = longs[0] if longs else param.opts[0]
        else:
            name = param.human_readable_name
        msg = f"{name}: {e.message}"
    else:
        msg = e.format_message()
    msg = " ".join(msg.split()).rstrip(".")
    return f"error: {msg} (see '{path} --help')"


def _usage_exit(e: UsageError) -> NoReturn:
    typer.echo(usage_line(e), err=True)
    raise typer.Exit(e.exit_code)


_KEEP_BREAK = re.compile(r"\s|[-*•] |\d+[.)] |\$ ")


def reflow(text: str) -> str:
    """A docstring as ``--help`` should show it: the line breaks inside a paragraph (where the
    source wraps at 100 columns) become spaces, so the terminal wraps it at its own width
    (typer's rich help keeps them: at 80 columns every source line wrapped into two). Kept:
    paragraphs, a click ``\\b`` paragraph, list items and indented lines."""
    out = []
    for para in inspect.cleandoc(text).split("\n\n"):
        lines = para.split("\n")
        if para.startswith("\b"):
            out.append(para)
            continue
        keep = [lines[0]]
        for ln in lines[1:]:
            if _KEEP_BREAK.match(ln) or keep[-1][:1].isspace():
                keep.append(ln)
            else:
                keep[-1] += " " + ln
        out.append("\n".join(keep))
    return "\n\n".join(out)


def reflow_help(cmd: Any) -> None:
    """``reflow`` the help of ``cmd`` and of every command below it (once)."""
    if getattr(cmd, "_reflowed", False):
        return
    cmd._reflowed = True
    for attr in ("help", "short_help"):
        if getattr(cmd, attr, None):
            setattr(cmd, attr, reflow(getattr(cmd, attr)))
    for sub in (getattr(cmd, "commands", None) or {}).values():
        reflow_help(sub)


class OneLineErrors(TyperGroup):
    """The root group: a usage mistake anywhere below it is one ``error:`` line and exit 2
    (click/typer would print a usage block and a boxed panel). Both places such mistakes are
    raised pass through here: parsing the root's own arguments (``make_context``) and everything
    below it, sub-groups, sub-commands and their callbacks (``invoke``)."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: Any = None, **extra: Any) -> Any:
        reflow_help(self)
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as e:
            _usage_exit(e)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as e:
            _usage_exit(e)


app = typer.Typer(
    name="shadowtap",
    cls=OneLineErrors,
    help="Mirror production HTTP traffic, extract and sanitise it, replay it to shadows.",
    epilog=help_epilog(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
)


def version() -> str:
    """The installed distribution's version (``pyproject.toml``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("shadowtap")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"shadowtap {version()}")
        raise typer.Exit(0)


@app.callback()
def root(
    show_version: bool = typer.Option(False, "--version", is_eager=True,
                                      callback=_show_version,
                                      help="Print the version and exit."),
) -> None:
    """Mirror production HTTP traffic, extract and sanitise it, replay it to shadows."""


def _register_all() -> None:
    """Mount every sub-command (their modules are imported here, not at start-up)."""
    from appliance.canary import cli as cli_canary
    from appliance.images import cli as cli_images
    from appliance.live import cli as cli_appliance
    from netconfig import cli as netconfig_cli
    from replay import cli as replay_cli
    from replay import cli_replay, cli_sanitise

    replay_cli.register(app)
    cli_sanitise.register(app)
    cli_replay.register(app)
    netconfig_cli.register(app)
    cli_appliance.register(app)
    cli_images.register(app)
    cli_canary.register(app)


@app.command("demo")
def demo(
    workdir: Path = typer.Option(Path("out/demo"), help="Where the demo writes its files"),
    duration: float = typer.Option(20.0, help="Seconds of client traffic", min=0.1),
    users: int = typer.Option(6, help="Concurrent virtual users", min=1, max=10_000),
    baseline: float = typer.Option(4.0, help="Seconds of traffic before the appliance starts "
                                   "(to compare client latency); 0 skips it", min=0.0),
    keep: bool = typer.Option(False, "--keep", help="Leave the lab running afterwards"),
    prefix: str = typer.Option("st-", help="Namespace name prefix of the lab"),
    seed: int = typer.Option(1, help="Traffic seed (same seed, same requests)"),
    stop_shadow_at: float | None = typer.Option(
        None, help="Stop shadow-2 this many seconds into the traffic (to see it marked down)",
        min=0.0),
    restart_shadow_after: float | None = typer.Option(
        None, help="Restart shadow-2 this many seconds after stopping it", min=0.0),
    offline: bool = typer.Option(False, "--offline", help="No lab, no root: make a sample "
                                 "capture with the generator and extract it"),
    connections: int = typer.Option(400, help="--offline: connections in the sample capture",
                                    min=1),
) -> None:
    """The end-to-end demo: lab, production traffic, live shadowing, three-way comparison.

    Needs root (namespaces, veths, tc). Writes report.json, report.html and exchanges.jsonl to
    the work directory and tears the lab down (also on Ctrl-C) unless --keep.
    """
    if not offline:
        from appliance.demo import DemoError, run_demo

        try:
            report = run_demo(duration=duration, users=users, baseline=baseline,
                              workdir=workdir, prefix=prefix, keep=keep, seed=seed,
                              stop_shadow_at=stop_shadow_at,
                              restart_shadow_after=restart_shadow_after)
        except DemoError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: the lab was torn down", err=True)
            raise typer.Exit(130) from None
        raise typer.Exit(0 if report else 1)
    _offline_demo(workdir, connections)


def _offline_demo(workdir: Path, connections: int) -> None:
    """Make a sample capture of realistic HTTP traffic, extract it, and show what came out."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from replay import cli as replay_cli
    from replay.extract import Summary, extract_file
    from replay.formats import open_writer
    from replay.synth import generate_pcap

    con = Console(stderr=True)
    workdir.mkdir(parents=True, exist_ok=True)
    cap = workdir / "sample.pcap"
    st = generate_pcap(cap, connections=connections, concurrency=100, seed=7, loss=0.002,
                       reorder=0.01, retransmit=0.01)
    con.print(f"[bold]1.[/] generated {cap}: {st.packets:,} packets, {st.connections:,} "
              f"connections, {st.requests:,} requests (with a little loss and reordering)")
    out = workdir / "exchanges.jsonl"
    summary = Summary()
    examples = []
    with out.open("wb") as fp:
        w = open_writer("jsonl", fp)
        for ex in extract_file(cap, summary=summary):
            w.write(ex)
            if len(examples) < 8 and ex.request is not None:
                examples.append(ex)
        w.close()
    con.print(f"[bold]2.[/] shadowtap extract {cap} -o {out}")
    con.print(replay_cli.summary_table(summary))
    t = Table(title="first exchanges", title_justify="left")
    for col in ("id", "client", "method", "target", "status", "bytes", "complete"):
        t.add_column(col)
    for ex in examples:
        r, p = ex.request, ex.response
        assert r is not None
        t.add_row(ex.id, f"{ex.conn.client_ip}:{ex.conn.client_port}" if ex.conn else "",
                  Text(r.method), Text(r.target[:48]), str(p.status) if p else "-",
                  str(len(p.body)) if p else "-", "yes" if ex.completeness.complete else "no")
    con.print(t)
    con.print(f"exchange log: {out} (one JSON object per line; see docs/formats.md)")


def _one_line_warnings() -> None:
    """Warnings (a HAR file cut short, ...) as one ``warning:`` line, like the errors."""
    import warnings

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def _no_collection_at_exit() -> None:
    """At interpreter exit, let the garbage collector skip what is still alive.

    Finalisation runs full collections over every object left (typer's, rich's and the
    extractor's modules and state) before tearing the modules down: ~40 ms of an extract that
    takes ~0.3 s when the capture is empty. ``gc.freeze`` from an ``atexit`` hook moves them
    out of the collector's reach only once the process is exiting, so a caller that goes on
    after ``main`` is unaffected. Nothing observable changes: atexit hooks and the flush of
    stdout and stderr still run, the command closes its output itself, and nothing on the
    extract path needs a finalizer of a garbage cycle to run."""
    import atexit
    import gc

    atexit.unregister(gc.freeze)  # once, however often main() is called
    atexit.register(gc.freeze)


def main() -> None:
    _one_line_warnings()
    if len(sys.argv) > 1 and sys.argv[1] == "extract":
        # The one-shot command that scripts run once per capture: mount it alone, so a run
        # does not pay for importing and building the ~40 other commands (~0.2 s).
        from replay import cli as replay_cli

        _no_collection_at_exit()

        one = typer.Typer(name="shadowtap", add_completion=False, pretty_exceptions_enable=False,
                          context_settings=CONTEXT, cls=OneLineErrors)
        one.callback()(lambda: None)  # a group, so the command keeps its name: shadowtap extract
        one.command("extract")(replay_cli.extract_cmd)
        one()
        return
    _register_all()
    app()


if __name__ == "__main__":
    main()
