"""CLI: ``shadowtap replay`` (send captured traffic to targets) and ``shadowtap diff`` (replay to a
candidate, and a secondary, and judge the differences from production).

Errors a user can make (missing file, bad URL, bad regex, bad rules file) are one ``error:`` line
and exit 2, never a traceback. A target that is down or misbehaves is not a user error: its
failures are counted per kind and the run completes. ``diff`` exits 0 when the regression rate is
at most ``--fail-on``, 1 when above, 2 when the run itself failed (nothing could be compared).
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from replay.cli import PORT, check_output, fail, output_format
from replay.errors import InputError

EXIT_REGRESSION = 1
EXIT_FAILED = 2

# Options shared by replay and diff --------------------------------------------------------------
Speed = Annotated[str | None, typer.Option(
    "--speed", help="Scale the capture's timing by F (2 = twice as fast), or 'max'")]
Rate = Annotated[float | None, typer.Option(
    "--rate", min=0.001, help="Fixed requests per second instead of the capture's timing")]
Concurrency = Annotated[int, typer.Option(
    "--concurrency", "-c", min=1, help="Exchanges in flight at most (each to every target)")]
Loops = Annotated[int, typer.Option("--loop", min=1, help="Replay the input N times")]
Methods = Annotated[list[str] | None, typer.Option("--method", help="Only these methods (repeat)")]
HostRe = Annotated[str | None, typer.Option("--host", help="Only requests whose Host matches "
                                                           "this regex")]
PathRe = Annotated[list[str] | None, typer.Option(
    "--path", help="Only paths matching this regex (repeat: any)")]
ExcludeRe = Annotated[list[str] | None, typer.Option(
    "--exclude-path", help="Skip paths matching this regex (repeat)")]
SetHeader = Annotated[list[str] | None, typer.Option(
    "--set-header", help="'Name: value' to set on every request (repeat)")]
RemoveHeader = Annotated[list[str] | None, typer.Option(
    "--remove-header", help="Header to drop from every request (repeat)")]
RewritePath = Annotated[list[str] | None, typer.Option(
    "--rewrite-path", help="'REGEX=>REPLACEMENT' applied to the path (repeat; \\1 groups)")]
KeepHost = Annotated[bool, typer.Option(
    "--keep-host", help="Send the captured Host header instead of the target's")]
Timeout = Annotated[float, typer.Option("--timeout", min=0.001,
                                        help="Seconds to wait for a complete answer")]
ConnectTimeout = Annotated[float, typer.Option("--connect-timeout", min=0.001,
                                               help="Seconds to wait for a connection")]
Retries = Annotated[int, typer.Option("--retries", min=0, help="Retries of a failed request "
                                                              "(default none)")]
Incomplete = Annotated[bool, typer.Option(
    "--include-incomplete", help="Also replay exchanges whose request is intact but whose "
                                 "capture is incomplete (no/partial response, timeout)")]
Insecure = Annotated[bool, typer.Option("--insecure", help="Do not verify https certificates")]
Port = Annotated[int | None, typer.Option("--port", help="Captures: only this TCP port",
                                          **PORT)]
Output = Annotated[Path | None, typer.Option(
    "-o", "--output", help="Record every replayed exchange here (jsonl, .har, .mitm)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No summary tables")]
SummaryJson = Annotated[bool, typer.Option("--summary-json",
                                           help="Print the summary as JSON on stdout")]


def _stderr_console() -> Any:
    """Rich console on stderr; when it is not a terminal (CI logs, pipes) wide enough for the
    tables instead of rich's 80-column default."""
    import os

    from rich.console import Console

    # COLUMNS set (a user's ``COLUMNS=80``, a CI that sets it): rich reads it and fits the
    # tables to it; otherwise a pipe gets 160 columns.
    wide = sys.stderr.isatty() or os.environ.get("COLUMNS", "").isdigit()
    return Console(stderr=True, width=None if wide else 160)


def _load(input_path: Path, port: int | None, flt: Any, *, include_incomplete: bool,
          need_response: bool, stats: Any, weird: dict[str, int] | None = None) -> list[Any]:
    """Read the input, keep what can be replayed, count the rest by reason. ``weird``, when
    given, counts the HTTP framing weirds recorded on the exchanges read, by reason."""
    from replay.formats import read_exchanges
    from replay.pacing import order_by_time
    from replay.rewrite import skip_reason

    items = []
    for ex in read_exchanges(input_path, port=port):
        stats.read += 1
        if weird is not None:
            for w in ex.completeness.weird:
                weird[w] = weird.get(w, 0) + 1
        why = skip_reason(ex, include_incomplete=include_incomplete, need_response=need_response)
        if why is not None:
            stats.skipped[why] += 1
            continue
        if not flt.accepts(ex):
            stats.filtered += 1
            continue
        items.append(ex)
    # The capture stays in memory for the whole run: move it out of the collector's way, or
    # every full collection would walk all of it again while the replay allocates responses.
    # Replies and parsed bodies are many small short-lived containers: a larger young
    # generation halves the collector's share of the comparison (as in extraction).
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(gc.get_threshold()[0], 100_000), *gc.get_threshold()[1:])
    return order_by_time(items, lambda e: e.ts_request_start)


def _error_record(ex: Any, i: int, err: Any) -> Any:
    """The record of a request that got no answer (same id scheme as answered ones)."""
    from replay.model import Completeness, Exchange

    c = Completeness(unpaired=True, timed_out=err.kind == "timeout")
    rid = f"{ex.id}@{i}" if not err.loop else f"{ex.id}@{i}.{err.loop}"
    return Exchange(id=rid, request=ex.request, response=None, completeness=c,
                    meta={"original_id": ex.id, "target": err.target, "loop": err.loop,
                          "error": err.to_dict()})


def _common(speed: str | None, rate: float | None, loops: int, methods: list[str] | None,
            host: str | None, paths: list[str] | None, exclude: list[str] | None,
            set_header: list[str] | None, remove_header: list[str] | None,
            rewrite_path: list[str] | None, keep_host: bool) -> tuple[Any, Any, Any]:
    from replay.pacing import Pacing, PacingError
    from replay.rewrite import Filter, Rewrite

    try:
        pacing = Pacing.parse(speed, rate)
    except PacingError as e:
        raise fail(str(e)) from None
    flt = Filter.build(methods or (), host, paths or (), exclude or ())
    rw = Rewrite.build(set_header or (), remove_header or (), rewrite_path or (), keep_host)
    return pacing, flt, rw


def _open_writer(output: Path | None) -> tuple[Any, Any]:
    if output is None:
        return None, None
    from replay.formats import open_writer

    try:
        fmt = output_format(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        fp = output.open("wb")
    except InputError as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(f"-o {output}: cannot write ({e.strerror or e})") from None
    return open_writer(fmt, fp), fp


def _dead_targets(stats: Any) -> list[str]:
    """Targets that never answered at all, described with their commonest error."""
    out = []
    for url, ts in stats.targets.items():
        if ts.sent and not ts.ok:
            kind, n = ts.errors.most_common(1)[0]
            out.append(f"{url}: no answers ({kind} × {n}: {ts.error_examples.get(kind, '')})")
    return out


def replay_cmd(
    input_path: Annotated[Path, typer.Argument(
        metavar="INPUT", help="pcap, pcapng, JSONL, HAR or mitmproxy flows")],
    target: Annotated[list[str], typer.Option(
        "--target", "-t", help="Target URL, e.g. http://10.0.0.5:8080 or https://host/base "
                               "(repeat: every target gets every request)")],
    speed: Speed = None,
    rate: Rate = None,
    concurrency: Concurrency = 64,
    loops: Loops = 1,
    method: Methods = None,
    host: HostRe = None,
    path: PathRe = None,
    exclude_path: ExcludeRe = None,
    set_header: SetHeader = None,
    remove_header: RemoveHeader = None,
    rewrite_path: RewritePath = None,
    keep_host: KeepHost = False,
    timeout: Timeout = 10.0,
    connect_timeout: ConnectTimeout = 5.0,
    retries: Retries = 0,
    include_incomplete: Incomplete = False,
    insecure: Insecure = False,
    port: Port = None,
    output: Output = None,
    summary_json: SummaryJson = False,
    quiet: Quiet = False,
) -> None:
    """Replay captured requests to one or more HTTP targets and record their answers.

    Paced like the capture (--speed 1, the default), scaled (--speed F), at a fixed --rate, or
    as fast as allowed (--speed max). Every target gets the same request at the same time over keep-alive connections. Exchanges
    the capture did not see whole are skipped and counted. With ``-o`` every answer (or error)
    is recorded as an exchange whose ``meta.original_id`` names the captured one.
    """
    import orjson

    from replay.model import Exchange
    from replay.pacing import PacingError, Schedule
    from replay.replayer import Replayer, run_async

    try:
        output_format(output)
        check_output(output)
        pacing, flt, rw = _common(speed if speed is not None or rate is not None else "1", rate,
                                  loops, method, host, path, exclude_path, set_header,
                                  remove_header, rewrite_path, keep_host)
        rp = Replayer(target, concurrency=concurrency, timeout=timeout,
                      connect_timeout=connect_timeout, rewrite=rw, retries=retries,
                      verify_tls=not insecure)
        items = _load(input_path, port, flt, include_incomplete=include_incomplete,
                      need_response=False, stats=rp.stats)
        schedule = Schedule(pacing, [e.ts_request_start for e in items], loops)
    except (InputError, PacingError) as e:
        raise fail(str(e)) from None
    except ValueError as e:  # duplicate targets
        raise fail(f"--target: {e}") from None
    if not items:
        raise fail(f"{input_path}: nothing to replay ({_skips(rp.stats)})")
    writer, fp = _open_writer(output)

    def sink(ex: Exchange, results: dict[str, Any]) -> None:
        if writer is None:
            return
        for i, out in enumerate(results.values()):
            if isinstance(out, Exchange):
                writer.write(out)
            else:
                writer.write(_error_record(ex, i, out))

    async def main() -> None:
        async with rp:
            await rp.run(items, schedule, sink)

    try:
        run_async(main())
    finally:
        if writer is not None:
            writer.close()
            fp.close()
    st = rp.stats
    if summary_json:
        sys.stdout.buffer.write(orjson.dumps(st.to_dict()) + b"\n")
        sys.stdout.flush()
    elif not quiet:
        from replay.report import replay_tables

        con = _stderr_console()
        for t in replay_tables(st):
            con.print(t)
    dead = _dead_targets(st)
    for d in dead:
        typer.echo(f"warning: {d}", err=True)
    if dead:
        raise typer.Exit(1)


def _skips(stats: Any) -> str:
    parts = [f"{n} {why}" for why, n in stats.skipped.most_common()]
    if stats.filtered:
        parts.append(f"{stats.filtered} filtered out")
    return f"read {stats.read}" + (": " + ", ".join(parts) if parts else "")


def _parse_rate(s: str) -> float:
    t = s.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise InputError(f"--fail-on {s!r}: give a fraction (0.01) or a percentage (1%)") from None
    if not 0 <= v <= 1:
        raise InputError(f"--fail-on {s!r}: must be between 0 and 1 (or 0% and 100%)")
    return v


def add_ignores(rules: Any, headers: Any, fields: Any) -> None:
    """``--ignore-header NAME`` and ``--ignore-field PATTERN``: ad-hoc noise rules, no file.

    A field pattern is a report field name (``body:$.ts``, ``header:etag``, ``status``) or, for
    short, a JSON path (``$.meta.*`` means ``body:$.meta.*``); ``*`` matches anything."""
    from replay.compare import FieldRule

    for h in headers:
        name = h.strip().rstrip(":").strip().lower()
        if not name or any(c in name for c in " \t:"):
            raise InputError(f"--ignore-header {h!r}: give a header name, e.g. X-Trace-Id")
        rules.headers[name] = "ignore"
    for f in fields:
        pat = f.strip()
        if not pat:
            raise InputError("--ignore-field: give a field, e.g. '$.meta.request_id'")
        if pat.startswith("$"):
            pat = "body:" + pat
        rules.add(FieldRule("*", pat, (), f"--ignore-field {f}"))


class LatencySamples:
    """Answer times per endpoint: production's (from the capture), the candidate's and the
    secondary's (measured by the replayer), in seconds, for ``replay.latency.judge_latency``."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[float]]] = {}

    def add(self, ex: Any, cand: Any, sec: Any) -> None:
        from replay.compare import endpoint_of

        s = self.samples.get(ep := endpoint_of(ex.request.method, ex.request.target))
        if s is None:
            s = self.samples[ep] = {"production": [], "secondary": [], "candidate": []}
        if ex.ts_response_end is not None and ex.ts_request_end is not None:
            s["production"].append(ex.ts_response_end - ex.ts_request_end)
        elif ex.latency is not None:
            s["production"].append(ex.latency)
        for role, r in (("candidate", cand), ("secondary", sec)):
            ms = getattr(r, "meta", {}).get("latency_ms") if r is not None else None
            if ms is not None and getattr(r, "response", None) is not None:
                s[role].append(ms / 1000)


def add_latency(doc: dict[str, Any], samples: dict[str, dict[str, list[float]]], *,
                baseline: str, min_samples: int, fail: bool = True) -> None:
    """Judge latency per endpoint into the report: ``latency`` rows and
    ``latency_regressions``; with ``fail``, a latency regression fails the run like a field
    regression."""
    from replay.latency import judge_latency

    doc["latency"] = judge_latency(samples, baseline=baseline, min_samples=min_samples)
    slow = [r["endpoint"] for r in doc["latency"] if r["regression"]]
    doc["latency_regressions"] = slow
    doc["summary"]["latency_regressions"] = len(slow)
    if slow and fail:
        doc["summary"]["verdict"] = "fail"


def diff_cmd(
    input_path: Annotated[Path, typer.Argument(
        metavar="INPUT", help="Capture or exchange file with production's answers")],
    candidate: Annotated[str, typer.Option("--candidate", help="The new build: http[s]://...")],
    secondary: Annotated[str | None, typer.Option(
        "--secondary", help="A shadow running production's build, to learn what is noise")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write the report: .json (machines) or .html (people)")] = None,
    fail_on: Annotated[str, typer.Option(
        "--fail-on", help="Exit 1 when the share of requests with a regression is above this "
                          "(0.01 or 1%)")] = "0",
    noise_rules: Annotated[Path | None, typer.Option(
        "--noise-rules", help="Rules file (YAML/JSON) of headers and fields to ignore")] = None,
    learn_noise: Annotated[Path | None, typer.Option(
        "--learn-noise", help="Write the rules plus the noise learned here (needs --secondary)"
    )] = None,
    allow_extra_fields: Annotated[bool, typer.Option(
        "--allow-extra-fields", help="New JSON fields in the candidate are not regressions")
    ] = False,
    ignore_header: Annotated[list[str] | None, typer.Option(
        "--ignore-header", help="Header whose differences are noise, e.g. X-Trace-Id (repeat)")
    ] = None,
    ignore_field: Annotated[list[str] | None, typer.Option(
        "--ignore-field", help="Field whose differences are noise: a JSON path or report field "
                               "name, * matches anything, e.g. '$.meta.*' or 'body:$.ts' "
                               "(repeat)")] = None,
    latency_warn_only: Annotated[bool, typer.Option(
        "--latency-warn-only", help="Report endpoints the candidate is slower on, but do not "
                                    "fail the run for them (always so without --secondary: "
                                    "production's times come from another host)")] = False,
    alpha: Annotated[float, typer.Option(
        "--alpha", min=1e-9, max=0.5, help="Family-wise significance level (Holm)")] = 0.05,
    proto: Annotated[list[Path] | None, typer.Option(
        "--proto", help="gRPC: .proto files or FileDescriptorSets (protoc --descriptor_set_out"
                        " --include_imports) giving the messages' field names (repeat)")
    ] = None,
    min_samples: Annotated[int, typer.Option(
        "--min-samples", min=1, help="Compared requests an endpoint needs for a verdict")] = 10,
    speed: Speed = None,
    rate: Rate = None,
    concurrency: Concurrency = 64,
    method: Methods = None,
    host: HostRe = None,
    path: PathRe = None,
    exclude_path: ExcludeRe = None,
    set_header: SetHeader = None,
    remove_header: RemoveHeader = None,
    rewrite_path: RewritePath = None,
    keep_host: KeepHost = False,
    timeout: Timeout = 10.0,
    connect_timeout: ConnectTimeout = 5.0,
    retries: Retries = 0,
    insecure: Insecure = False,
    port: Port = None,
    output: Output = None,
    quiet: Quiet = False,
) -> None:
    """Does the new build answer real traffic the way production did?

    Replays the input to the candidate (and the secondary) as fast as allowed (--speed max
    unless told otherwise), compares each answer with the production answer in the capture, and
    reports per endpoint which fields regressed. With ``--secondary``, a field counts as a
    regression only when the candidate differs from production significantly more often than
    the secondary does (exact one-sided McNemar test, Holm-corrected; see docs/replay.md).
    """
    from replay.compare import Rules, ThreeWay
    from replay.model import NO_ANSWER, Exchange
    from replay.pacing import PacingError, Schedule
    from replay.replayer import Replayer, run_async
    from replay.report import build_report, diff_tables, write_report

    try:
        fail_rate = _parse_rate(fail_on)
        if learn_noise is not None and secondary is None:
            raise InputError("--learn-noise needs --secondary (noise is what the secondary "
                             "shows too)")
        if report is not None and report.suffix.lower() not in (".json", ".html", ".htm"):
            raise InputError(f"--report {report}: give a .json or .html file name")
        check_output(report, "--report")
        if learn_noise is not None and learn_noise.suffix.lower() not in (
                ".yaml", ".yml", ".json"):
            raise InputError(f"--learn-noise {learn_noise}: give a .yaml or .json file name")
        check_output(learn_noise, "--learn-noise")
        output_format(output)
        check_output(output)
        rules = Rules.load(noise_rules) if noise_rules is not None else Rules()
        if proto:
            from replay.h2.grpc import load_descriptors

            try:
                load_descriptors(list(proto))
            except Exception as e:  # a bad file: one line, no traceback
                raise InputError(f"--proto: {e}") from None
        if allow_extra_fields:
            rules.allow_extra_fields = True
        add_ignores(rules, ignore_header or (), ignore_field or ())
        pacing, flt, rw = _common(speed, rate, 1, method, host, path, exclude_path, set_header,
                                  remove_header, rewrite_path, keep_host)
        targets = [candidate] + ([secondary] if secondary else [])
        rp = Replayer(targets, concurrency=concurrency, timeout=timeout,
                      connect_timeout=connect_timeout, rewrite=rw, retries=retries,
                      verify_tls=not insecure)
        weird: dict[str, int] = {}  # framing weirds of the input, listed in the report
        items = _load(input_path, port, flt, include_incomplete=False, need_response=True,
                      stats=rp.stats, weird=weird)
        schedule = Schedule(pacing, [e.ts_request_start for e in items], 1)
    except (InputError, PacingError) as e:
        raise fail(str(e)) from None
    except ValueError as e:
        raise fail(f"--candidate/--secondary: {e}") from None
    if not items:
        raise fail(f"{input_path}: nothing to compare ({_skips(rp.stats)})")
    cand_url = rp.targets[0].url
    sec_url = rp.targets[1].url if secondary else None
    tw = ThreeWay(rules, alpha=alpha, min_samples=min_samples, three_way=secondary is not None)
    writer, fp = _open_writer(output)
    lat = LatencySamples()

    def sink(ex: Exchange, results: dict[str, Any]) -> None:
        c = results[cand_url]
        s = results.get(sec_url) if sec_url else None
        lat.add(ex, c, s)
        tw.add(ex.id, ex.request, ex.response,
               c.response if isinstance(c, Exchange) and c.response else getattr(c, "kind", NO_ANSWER),
               None if s is None else s.response if isinstance(s, Exchange) else s.kind)
        if writer is not None:
            for i, out in enumerate(results.values()):
                if isinstance(out, Exchange):
                    writer.write(out)
                else:
                    writer.write(_error_record(ex, i, out))

    async def main() -> None:
        async with rp:
            await rp.run(items, schedule, sink)

    try:
        run_async(main())
    finally:
        if writer is not None:
            writer.close()
            fp.close()
    st = rp.stats
    dead = _dead_targets(st)
    if dead:
        for d in dead:
            typer.echo(f"error: {d}", err=True)
        raise typer.Exit(EXIT_FAILED)
    verdict = tw.verdict()
    if verdict.compared == 0:
        raise fail("no request could be compared (the secondary answered none of them)",
                   EXIT_FAILED)
    skipped = dict(st.skipped)
    if st.filtered:
        skipped["filtered out"] = st.filtered
    doc = build_report(verdict, st, input_path=str(input_path), candidate=cand_url,
                       secondary=sec_url, fail_on=fail_rate, skipped=skipped,
                       rules_file=str(noise_rules) if noise_rules else None, weird=weird)
    add_latency(doc, lat.samples, baseline="secondary" if secondary else "production",
                min_samples=min_samples,
                fail=not latency_warn_only and secondary is not None)
    try:
        if report is not None:
            write_report(report, doc)
        if learn_noise is not None:
            try:
                tw.learned_rules(verdict).save(learn_noise)
            except OSError as e:
                raise InputError(f"--learn-noise {learn_noise}: cannot write "
                                 f"({e.strerror or e})") from None
    except InputError as e:
        raise fail(str(e)) from None
    if not quiet:
        from replay.report import replay_tables

        con = _stderr_console()
        for t in diff_tables(doc, width=con.width):
            con.print(t)
        con.print(replay_tables(st, roles={cand_url: "candidate", sec_url: "secondary"},
                                width=con.width)[1])
        if report is not None:
            con.print(f"report: {report}")
        if learn_noise is not None:
            con.print(f"noise rules: {learn_noise}")
    if doc["summary"]["verdict"] == "fail":
        raise typer.Exit(EXIT_REGRESSION)


def register(app: typer.Typer) -> None:
    """Mount ``replay`` and ``diff`` on the root app."""
    app.command("replay")(replay_cmd)
    app.command("diff")(diff_cmd)
