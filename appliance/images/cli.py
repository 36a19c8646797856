"""CLI: ``shadowtap image ...``, ``shadowtap build-hook``, ``shadowtap shadow ...``, ``history``.

Same conventions as the rest of shadowtap: a user's mistake (a missing directory, a bad checks
file, an unknown shadow, not root) is one ``error: ...`` line and exit code 2; ``build-hook``
exits 0 when the build passed and 1 when a shadow could not be synced or a check failed, so a
build pipeline halts on the failing step. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_FAIL = 1
EXIT_USAGE = 2

Json = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=1, help="Limit per rsync/step, s")]
KeepOpt = Annotated[int, typer.Option("--keep", min=2, help="Snapshots kept for rollback")]
DeepOpt = Annotated[bool, typer.Option(
    "--deep", help="Verify content too (catches a change that kept size and mtime; slower)")]


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _errors() -> tuple[type[BaseException], ...]:
    from appliance.images.checks import CheckSpecError
    from appliance.images.imagesync import ImageError
    from appliance.images.shadows import ShadowError
    from netconfig.errors import NetconfigError

    return (ImageError, ShadowError, CheckSpecError, NetconfigError)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise _fail("shadows live in network namespaces: run this command as root (sudo)")


def _console() -> Any:
    """Stage names, notes, check summaries and paths are the operator's and the build's text:
    printed as they are (``escape`` for markup; no emoji codes: ``:cd:`` in a path stays)."""
    from rich.console import Console

    return Console(stderr=True, emoji=False)


def escape(text: str) -> str:
    """User text (stage names, notes) must not be read as rich markup: '[install]' is a tag."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _apply_table(applies: list[Any], title: str) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in ("shadow", "mode", "ok", "switched in", "service", "note"):
        t.add_column(c)
    for a in applies:
        t.add_row(a.shadow, a.mode, "yes" if a.ok else "[red]NO[/]", f"{a.seconds:.2f} s",
                  escape(a.service or "-"), escape(a.note))
    return t


def _checks_table(checks: list[Any]) -> Any:
    from rich.table import Table

    t = Table(title="checks", title_justify="left")
    for c in ("check", "type", "shadow", "result", "time", "summary"):
        t.add_column(c)
    for c in checks:
        t.add_row(escape(c.name), c.kind, c.shadow, "pass" if c.ok else "[red]FAIL[/]",
                  f"{c.seconds:.1f} s", escape(c.summary))
    return t


# ---- image ------------------------------------------------------------------------------------

def image_push(
    directory: Annotated[Path, typer.Argument(help="The image tree a build writes")],
    stage: Annotated[str, typer.Option("--stage", help="Build step name, for the history")] = "push",
    timeout: TimeoutOpt = 120.0,
    keep: KeepOpt = 5,
    deep: DeepOpt = False,
    as_json: Json = False,
) -> None:
    """Snapshot the image and bring every shadow following it to the new snapshot."""
    from dataclasses import asdict

    from appliance.images.imagesync import push
    from appliance.images.shadows import Pool

    _need_root()
    con = _console()
    try:
        snap, applies = push(directory, stage, pool=Pool(), keep=keep, timeout=timeout,
                             log=lambda m: con.print(f"[yellow]{escape(m)}[/]"), deep=deep)
    except _errors() as e:
        raise _fail(str(e)) from None
    if as_json:
        print(json.dumps({"snapshot": asdict(snap) if snap else None,
                          "applies": [asdict(a) for a in applies]}, indent=1))
    elif snap is None:
        con.print("no significant change since the last snapshot: nothing pushed "
                  "('shadowtap shadow verify' checks the shadows, 'build-hook --force' "
                  "re-runs the checks)")
    else:
        con.print(f"snapshot {snap.id} ({escape(stage)}): {len(snap.changed)} changed, "
                  f"{len(snap.removed)} removed, delta {snap.batch_bytes:,} bytes")
        con.print(_apply_table(applies, f"push {snap.id}"))
    if any(not a.ok for a in applies):
        raise typer.Exit(EXIT_FAIL)


def image_watch(
    directory: Annotated[Path, typer.Argument(help="The build directory to watch")],
    settle: Annotated[float, typer.Option("--settle", help="Quiet seconds before a push")] = 2.0,
    checks: Annotated[Path | None, typer.Option("--checks", help="Checks YAML to run")] = None,
    webhook: Annotated[list[str] | None, typer.Option("--webhook", help="POST results here")
                       ] = None,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Push (and check) every time the build directory settles after changes. Ctrl-C stops."""
    from appliance.images.feedback import build
    from appliance.images.imagesync import TreeWatcher, load_manifest
    from appliance.images.shadows import Pool

    _need_root()
    con = _console()
    try:
        m = load_manifest(directory)
    except _errors() as e:
        raise _fail(str(e)) from None
    n = [0]

    def on_settled() -> None:
        n[0] += 1
        res = build(directory, f"watch #{n[0]}", pool=Pool(), checks_file=checks,
                    webhooks=webhook, timeout=timeout, log=lambda s: con.print(f"[yellow]{escape(s)}[/]"))
        con.print(escape(res.text()))

    w = TreeWatcher(directory, on_settled, settle=settle, ignore=m.ignore)
    w.start()
    con.print(f"watching {directory} (image {m.name}); a push follows {settle:g} s of quiet")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        w.stop()


def image_list(
    image: Annotated[str, typer.Argument(help="Image name (from its manifest)")],
    as_json: Json = False,
) -> None:
    """Snapshots kept for an image (rollback targets)."""
    from dataclasses import asdict

    from appliance.images.imagesync import ImageStore

    snaps = ImageStore(image).snapshots()
    if as_json:
        print(json.dumps([asdict(s) for s in snaps], indent=1))
        return
    from rich.table import Table

    t = Table(title=f"snapshots of {image}", title_justify="left")
    for c in ("id", "parent", "stage", "created", "changed", "removed", "delta bytes"):
        t.add_column(c)
    for s in snaps:
        t.add_row(s.id, s.parent or "-", escape(s.stage), time.strftime("%F %T", time.localtime(s.created)),
                  str(len(s.changed)), str(len(s.removed)), f"{s.batch_bytes:,}")
    _console().print(t)


def image_rollback(
    image: Annotated[str, typer.Argument(help="Image name")],
    to: Annotated[str, typer.Option("--to", help="Snapshot id to go back to")],
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Put every shadow of an image back on an earlier snapshot (atomic switch per shadow)."""
    from appliance.images.imagesync import ImageStore, Replicator
    from appliance.images.shadows import Pool

    _need_root()
    try:
        store = ImageStore(image)
        res = Replicator(store, timeout=timeout).rollback(Pool().hosts(image), to)
    except _errors() as e:
        raise _fail(str(e)) from None
    _console().print(_apply_table(res, f"rollback {image} to {to}"))
    if any(not a.ok for a in res):
        raise typer.Exit(EXIT_FAIL)


def history_cmd(
    image: Annotated[str | None, typer.Option("--image", help="Only this image")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 20,
    as_json: Json = False,
) -> None:
    """Every build's verdict and figures, newest first, with trends."""
    from rich.table import Table

    from appliance.images.feedback import History, trend

    rows = History().builds(image, limit)
    if as_json:
        print(json.dumps(rows, indent=1, default=str))
        return
    t = Table(title="shadowtap builds", title_justify="left")
    for c in ("#", "when", "image", "snapshot", "stage", "verdict", "shadows", "delta",
              "push s", "verdict s", "p95 ms", "failed"):
        t.add_column(c)

    def p95(r: dict[str, Any]) -> float | None:
        for c in r["checks"]:
            v = json.loads(c["metrics"] or "{}").get("p95_ms")
            if v is not None:
                return float(v)
        return None

    for i, r in enumerate(rows):
        later = [x for x in rows[i:] if x["image"] == r["image"]]
        tr_push = trend([x["push_seconds"] for x in later])
        tr_verdict = trend([x["verdict_seconds"] for x in later])
        tr_p95 = trend([p95(x) for x in later])
        failed = sorted({c["name"] for c in r["checks"] if not c["ok"]})
        pv = p95(r)
        t.add_row(str(r["id"]), time.strftime("%F %T", time.localtime(r["started"])),
                  escape(r["image"]), r["snapshot"] or "-", escape(r["stage"]),
                  "pass" if r["verdict"] == "pass" else "[red]FAIL[/]",
                  f"{r['switched']}/{r['shadows']}",
                  "re-check" if r.get("trigger") == "forced" else f"{r['batch_bytes'] or 0:,}",
                  f"{r['push_seconds']:.2f} {tr_push}", f"{r['verdict_seconds']:.1f} {tr_verdict}",
                  f"{pv:.0f} {tr_p95}" if pv is not None else "-", escape(", ".join(failed)))
    _console().print(t)


# ---- build-hook -------------------------------------------------------------------------------

def build_hook(
    image: Annotated[Path, typer.Option("--image", help="The image tree the build writes")],
    stage: Annotated[str, typer.Option("--stage", help="Build step name")] = "build",
    checks: Annotated[Path | None, typer.Option(
        "--checks", help="Checks YAML (default: the one the image manifest names)")] = None,
    webhook: Annotated[list[str] | None, typer.Option(
        "--webhook", help="POST the result as JSON (Slack-compatible 'text') here; repeat")] = None,
    timeout: TimeoutOpt = 120.0,
    keep: KeepOpt = 5,
    min_shadows: Annotated[int | None, typer.Option(
        "--min-shadows", help="Scale the image's pool first: at least this many lab shadows")
    ] = None,
    max_shadows: Annotated[int | None, typer.Option(
        "--max-shadows", help="... and at most this many (one more per build waiting)")] = None,
    idle_after: Annotated[float, typer.Option(
        "--idle-after", help="Seconds without builds before the pool shrinks by one")] = 600.0,
    force: Annotated[bool, typer.Option(
        "--force", help="Without a change too: verify the shadows against the latest snapshot"
                        " (repairing drift), run the checks, record the verdict")] = False,
    deep: DeepOpt = False,
    as_json: Json = False,
) -> None:
    """For build pipelines: push the delta, wait for the checks, print a summary, exit 0 or 1."""
    from appliance.images.feedback import build
    from appliance.images.shadows import Pool

    _need_root()
    con = _console()
    try:
        res = build(image, stage, pool=Pool(), checks_file=checks, webhooks=webhook or [],
                    timeout=timeout, keep=keep, log=lambda m: con.print(f"[yellow]{escape(m)}[/]"),
                    min_shadows=min_shadows, max_shadows=max_shadows, idle_after=idle_after,
                    force=force, deep=deep)
    except _errors() as e:
        raise _fail(str(e)) from None
    if as_json:
        print(json.dumps(res.to_dict(), indent=1, default=str))
    if res.snapshot is None:
        con.print(escape(res.note))
        raise typer.Exit(0 if res.ok else EXIT_FAIL)
    if not as_json:
        s = res.snapshot
        if res.forced:
            con.print(f"[bold]{escape(res.image)}[/] snapshot {s.id} ({escape(stage)}): no "
                      f"change, re-checked (--force); shadows verified in "
                      f"{res.push_seconds:.2f} s, verdict in {res.verdict_seconds:.1f} s")
        else:
            con.print(f"[bold]{escape(res.image)}[/] snapshot {s.id} ({escape(stage)}): "
                      f"{len(s.changed)} changed, "
                      f"{len(s.removed)} removed, delta {s.batch_bytes:,} bytes; pushed in "
                      f"{res.push_seconds:.2f} s, verdict in {res.verdict_seconds:.1f} s")
        con.print(_apply_table(res.applies, "shadows"))
        if res.checks:
            con.print(_checks_table(res.checks))
        if res.note:
            con.print(escape(res.note))
    if res.ok:
        con.print(f"[green]PASS[/] (build #{res.build_id})")
        raise typer.Exit(0)
    con.print(f"[red]FAIL[/] (build #{res.build_id}): " + escape("; ".join(res.failed)))
    raise typer.Exit(EXIT_FAIL)


# ---- shadow -----------------------------------------------------------------------------------

def shadow_create(
    name: Annotated[str, typer.Option("--name", help="Shadow name")],
    image: Annotated[Path, typer.Option("--image", help="Image tree to run")],
    ttl: Annotated[str | None, typer.Option("--ttl", help="Delete after this long (30m, 2h)")
                   ] = None,
    branch: Annotated[str | None, typer.Option("--branch", help="Deleted when this merges")
                      ] = None,
    backend: Annotated[str, typer.Option("--backend", help="lab | ssh | vagrant")] = "lab",
    host: Annotated[str | None, typer.Option("--host", help="ssh: host or config alias")] = None,
    ssh_config: Annotated[Path | None, typer.Option("--ssh-config", help="ssh: config file")
                          ] = None,
    vagrant_dir: Annotated[Path | None, typer.Option("--vagrant-dir", help="vagrant: project")
                           ] = None,
    machine: Annotated[str, typer.Option("--machine", help="vagrant: machine name")] = "default",
    remote_root: Annotated[str, typer.Option("--root", help="ssh/vagrant: image root there")
                           ] = "/srv/shadowtap",
    attach_lab: Annotated[str | None, typer.Option(
        "--attach-lab", help="Put lab shadows behind this lab's gateway (its prefix, e.g. st-);"
                             " only when the pool is first created")] = None,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Create a shadow running an image (fenced like every shadow); ephemeral with --ttl."""
    from appliance.images.imagesync import ImageStore, Replicator, load_manifest
    from appliance.images.shadows import Pool, parse_duration, parse_ssh_config, vagrant_ssh_config
    from appliance.images.shadows import write_ssh_config as write_cfg

    if backend == "lab":
        _need_root()
    con = _console()
    try:
        m = load_manifest(image)
        pool = Pool(attach_lab=attach_lab)
        ttl_s = parse_duration(ttl) if ttl else None
        cfg = str(ssh_config) if ssh_config else None
        if backend == "vagrant":
            if not vagrant_dir:
                raise _fail("--backend vagrant needs --vagrant-dir (the Vagrantfile's directory)")
            hosts = parse_ssh_config(vagrant_ssh_config(vagrant_dir, machine))
            if not hosts:
                raise _fail(f"vagrant ssh-config {machine} printed no Host entry")
            p = pool.home / "shadows" / f"{name}.d" / "ssh_config"
            write_cfg(hosts, p)
            cfg, host = str(p), next(iter(hosts))
        h = pool.create(name, image=m.name, backend=backend, ttl=ttl_s, branch=branch,
                        ssh_host=host, ssh_config=cfg, remote_root=remote_root,
                        role="ephemeral" if ttl_s or branch else "pool")
        store = ImageStore(m.name, pool.home)
        rep = Replicator(store, timeout=timeout, log=lambda s: con.print(f"[yellow]{escape(s)}[/]"))
        snap = store.take(image, f"shadow create {name}", m.ignore)
        if snap is not None:  # everyone following the image moves together
            res = rep.apply(pool.hosts(m.name), snap)
        else:
            latest = store.latest()
            assert latest is not None
            res = [rep.apply_one(h, latest)]
    except _errors() as e:
        raise _fail(str(e)) from None
    con.print(_apply_table(res, f"shadow {name}"))
    exp = f", expires in {ttl}" if ttl else ""
    con.print(f"shadow {name} ({backend}) at {h.addr}{exp}; shell: shadowtap shadow shell {name}")
    if any(not a.ok for a in res):
        raise typer.Exit(EXIT_FAIL)


def shadow_list(as_json: Json = False) -> None:
    """All shadows: backend, address, image, release, expiry."""
    from appliance.images.imagesync import release_snapshot
    from appliance.images.shadows import Pool, host_for

    recs = Pool().records()
    for r in recs:
        try:
            r["release"] = release_snapshot(host_for(r).current_release(timeout=5))
        except Exception:
            r["release"] = None
    if as_json:
        print(json.dumps(recs, indent=1))
        return
    from rich.table import Table

    t = Table(title="shadows", title_justify="left")
    for c in ("name", "backend", "address", "image", "snapshot", "branch", "expires", "status"):
        t.add_column(c)
    now = time.time()
    for r in recs:
        exp = r.get("expires")
        t.add_row(r["name"], r["backend"], r.get("addr", "-"), r.get("image", "-"),
                  r.get("release") or "-", r.get("branch") or "-",
                  ("expired" if exp <= now else f"in {int(exp - now)} s") if exp else "-",
                  r.get("status", "-"))
    _console().print(t)


def shadow_delete(
    names: Annotated[list[str] | None, typer.Argument(help="Shadows to delete")] = None,
    branch: Annotated[str | None, typer.Option("--branch", help="Every shadow of this branch")
                      ] = None,
) -> None:
    """Delete shadows (by name, or all of a merged branch)."""
    from appliance.images.shadows import Pool

    pool = Pool()
    try:
        gone = list(names or [])
        for n in gone:
            pool.delete(n)
        if branch:
            gone += pool.delete_branch(branch)
    except _errors() as e:
        raise _fail(str(e)) from None
    typer.echo(f"deleted: {', '.join(gone) or 'nothing'}" + _released(pool), err=True)


def _released(pool: Any) -> str:
    """What an emptied pool removed besides the shadows (its gateway namespace)."""
    if not pool.released:
        return ""
    return f"; the pool is empty: removed its gateway namespace {', '.join(pool.released)}"


def shadow_gc() -> None:
    """Reap ephemeral shadows whose TTL has passed."""
    from appliance.images.shadows import Pool

    pool = Pool()
    try:
        gone = pool.gc()
    except _errors() as e:
        raise _fail(str(e)) from None
    typer.echo(f"reaped: {', '.join(gone) or 'nothing expired'}" + _released(pool), err=True)


def shadow_verify(
    names: Annotated[list[str] | None, typer.Argument(help="Shadows (default: all)")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Only this image's shadows")
                     ] = None,
    deep: DeepOpt = False,
    repair: Annotated[bool, typer.Option(
        "--repair", help="Give a drifted shadow a full copy of its snapshot")] = False,
    timeout: TimeoutOpt = 120.0,
    as_json: Json = False,
) -> None:
    """Is every shadow still on the snapshot it claims? In step or drifted, and which files.

    Exit 0 when all are in step (or were repaired), 1 otherwise.
    """
    from dataclasses import asdict

    from appliance.images.shadows import Pool
    from appliance.images.verify import verify

    pool = Pool()
    try:
        hosts = [pool.get(n) for n in names] if names else pool.hosts()
    except _errors() as e:
        raise _fail(str(e)) from None
    if image:
        hosts = [h for h in hosts if h.rec.get("image") == image]
    if not hosts:
        raise _fail("no shadow to verify" + (f" runs image {image!r}" if image else "")
                    + ": 'shadowtap shadow list' shows them")
    if any(h.backend == "lab" for h in hosts):
        _need_root()
    try:
        out = verify(hosts, pool.home, deep=deep, fix=repair, timeout=timeout)
    except _errors() as e:
        raise _fail(str(e)) from None
    if as_json:
        print(json.dumps([asdict(v) | {"ok": v.ok} for v in out], indent=1))
    else:
        _console().print(_verify_table(out, deep))
    bad = [v for v in out if not v.ok and not v.repaired]
    if bad:
        if not as_json:
            hint = "" if repair else " ('--repair' restores drifted ones)"
            typer.echo(f"not in step: {', '.join(v.shadow for v in bad)}{hint}", err=True)
        raise typer.Exit(EXIT_FAIL)


def _verify_table(out: list[Any], deep: bool) -> Any:
    from rich.table import Table

    t = Table(title="shadows verified" + (" (content too)" if deep else " (metadata)"),
              title_justify="left")
    for c in ("shadow", "snapshot", "state", "files / note"):
        t.add_column(c)
    for v in out:
        state = v.state if v.ok else f"[red]{v.state}[/]"
        if v.repaired:
            state = f"{v.state}, [green]repaired[/]"
        lines = v.files[:5] + ([f"... and {len(v.files) - 5} more"] if len(v.files) > 5 else [])
        if v.note:
            lines.append(v.note)
        t.add_row(v.shadow, v.snapshot or "-", state, escape("\n".join(lines) or "-"))
    return t


def shadow_shell(name: Annotated[str, typer.Argument()]) -> None:
    """A shell inside the shadow: its network namespace and image dir (or ssh)."""
    from appliance.images.shadows import Pool

    try:
        argv = Pool().get(name).shell_argv()
    except _errors() as e:
        raise _fail(str(e)) from None
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def shadow_logs(
    name: Annotated[str, typer.Argument()],
    lines: Annotated[int, typer.Option("-n", "--lines")] = 100,
) -> None:
    """The shadow's service log (stdout and stderr of the image's service)."""
    from appliance.images.shadows import Pool

    try:
        sys.stdout.write(Pool().get(name).logs(lines))
    except _errors() as e:
        raise _fail(str(e)) from None


def shadow_health(name: Annotated[str, typer.Argument()]) -> None:
    """Reachable? On which release? Does the service answer?"""
    from appliance.images.imagesync import ImageStore, load_manifest
    from appliance.images.shadows import Pool

    pool = Pool()
    try:
        h = pool.get(name)
        snap = ImageStore(h.rec["image"], pool.home).latest()
        m = load_manifest(ImageStore(h.rec["image"], pool.home).tree(snap.id)) if snap else None
        out = pool.health(name, m.service_port if m else None, m.health_path if m else "/")
    except _errors() as e:
        raise _fail(str(e)) from None
    print(json.dumps(out))
    if not out["reachable"] or (out["service"] and out["service"] != "up"):
        raise typer.Exit(EXIT_FAIL)


def forward(host: Any, port: int, listen: tuple[str, int]) -> socket.socket:
    """Listen locally and relay each connection to ``port`` on the shadow (through the fence's
    one door: the appliance side of its link). Returns the listening socket; threads relay."""
    srv = socket.create_server(listen, reuse_port=False)

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept_loop() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            try:
                u = host.connect(port, 5)
            except OSError:
                c.close()
                continue
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return srv


def shadow_forward(
    name: Annotated[str, typer.Argument()],
    port: Annotated[int, typer.Argument(help="Port on the shadow")],
    local_port: Annotated[int, typer.Option("--local-port", help="Default: same as PORT")] = 0,
    bind: Annotated[str, typer.Option("--bind")] = "127.0.0.1",
) -> None:
    """Expose a shadow's port on this host until Ctrl-C."""
    from appliance.images.shadows import Pool

    try:
        h = Pool().get(name)
        srv = forward(h, port, (bind, local_port or port))
    except (*_errors(), OSError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"{bind}:{srv.getsockname()[1]} -> {name} {h.addr}:{port} (Ctrl-C stops)", err=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        srv.close()


def shadow_merge_webhook(
    port: Annotated[int, typer.Option("--port")] = 9099,
    bind: Annotated[str, typer.Option("--bind")] = "0.0.0.0",
    secret_env: Annotated[str | None, typer.Option(
        "--secret-env", help="Env var holding the webhook secret (GitHub HMAC / GitLab token)")
                          ] = None,
) -> None:
    """Serve GitHub/GitLab merge webhooks: a merged branch's shadows are deleted."""
    from appliance.images.feedback import merge_webhook_server
    from appliance.images.shadows import Pool

    secret = os.environ.get(secret_env) if secret_env else None
    srv = merge_webhook_server(Pool(), bind, port, secret)
    typer.echo(f"merge webhook on {bind}:{srv.server_address[1]}", err=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        srv.server_close()


def shadow_scale(
    image: Annotated[Path, typer.Option("--image", help="Image tree")],
    minimum: Annotated[int, typer.Option("--min", min=0)] = 1,
    maximum: Annotated[int, typer.Option("--max", min=1)] = 4,
    queued: Annotated[int, typer.Option("--queued", min=0, help="Builds waiting now")] = 0,
    idle: Annotated[float, typer.Option("--idle-seconds", help="Seconds since the last build")
                    ] = 0.0,
    idle_after: Annotated[float, typer.Option("--idle-after")] = 600.0,
) -> None:
    """Grow or shrink the image's pool shadows (what the appliance does on every build)."""
    from appliance.images.imagesync import ImageStore, Replicator, load_manifest
    from appliance.images.shadows import Pool

    _need_root()
    try:
        m = load_manifest(image)
        pool = Pool()
        store = ImageStore(m.name, pool.home)
        if store.latest() is None:
            store.take(image, "scale", m.ignore)
        rep = Replicator(store)

        def provision(h: Any) -> None:
            snap = store.latest()
            assert snap is not None
            rep.apply_one(h, snap)

        changes = pool.autoscale(m.name, minimum=minimum, maximum=maximum, queued=queued,
                                 idle_seconds=idle, idle_after=idle_after, provision=provision)
    except _errors() as e:
        raise _fail(str(e)) from None
    typer.echo(f"pool {m.name}: {' '.join(changes) or 'no change'}", err=True)


def register(app: typer.Typer) -> None:
    """Mount this module's commands on the root app."""
    from appliance.envvars import help_epilog

    env = help_epilog(("SHADOWTAP_HOME", "SHADOWTAP_STATE_DIR", "SHADOWTAP_POOL_PREFIX"))
    img = typer.Typer(help="Images: snapshots, deltas pushed to shadows, rollback.",
                      no_args_is_help=True, epilog=env)
    img.command("push")(image_push)
    img.command("watch")(image_watch)
    img.command("list")(image_list)
    img.command("rollback")(image_rollback)
    img.command("history")(history_cmd)
    app.add_typer(img, name="image")
    app.command("build-hook", epilog=env)(build_hook)
    app.command("history")(history_cmd)
    sh = typer.Typer(help="Shadows: create (ephemeral with --ttl), list, verify, delete, gc, "
                          "shell, ...", no_args_is_help=True, epilog=env)
    sh.command("create")(shadow_create)
    sh.command("list")(shadow_list)
    sh.command("verify")(shadow_verify)
    sh.command("delete")(shadow_delete)
    sh.command("gc")(shadow_gc)
    sh.command("shell")(shadow_shell)
    sh.command("logs")(shadow_logs)
    sh.command("health")(shadow_health)
    sh.command("forward")(shadow_forward)
    sh.command("scale")(shadow_scale)
    sh.command("merge-webhook")(shadow_merge_webhook)
    app.add_typer(sh, name="shadow")
