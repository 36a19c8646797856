"""``shadowtap canary start|status|pause|resume|promote|abort``: verbs for a running controller.

The controller is ``shadowtap canary run --control 127.0.0.1:0`` (in the foreground, or under
systemd); it writes ``control.json`` (its URL) next to its state record and reads its bearer
token from a 0600 file. These commands read both and call its control API
(``appliance.canary.control``). Exit 0 when the verb was applied, 2 when it was refused or no
controller answers (one ``error:`` line).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

ControlFileOpt = typer.Option(
    "--control-file", help="The controller's control.json (default $SHADOWTAP_HOME/canary/"
    "control.json)")
TokenOpt = typer.Option("--token-file", help="Bearer token file (default: the one the "
                        "controller names in control.json)")


def _client(control_file: Path | None, token_file: Path | None) -> Any:
    from appliance.canary import control as ctl
    from appliance.canary import state as cstate

    return ctl.ControlClient.discover(control_file or cstate.default_dir() / "control.json",
                                      token_file)


def _call(verb: str, control_file: Path | None, token_file: Path | None,
          args: dict[str, Any] | None = None, as_json: bool = False) -> None:
    from appliance.canary.control import ControlError

    try:
        out = _client(control_file, token_file).call(verb, args)
    except ControlError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    if verb == "status":
        paused = " (paused)" if out.get("paused") else ""
        hold = " (waiting for confirm-promotion)" if out.get("gate_holding") else ""
        typer.echo(f"{out.get('name')}: {out.get('state')}{paused}{hold}, step "
                   f"{int(out.get('step', -1)) + 1}/{len(out.get('steps') or [])}, canary "
                   f"weight {out.get('weight', 0):g} %")
        for r in out.get("reasons") or []:
            typer.echo(f"  {r}")
        return
    typer.echo(f"{verb}: {out.get('state')}, step {out.get('step', '?')}, weight "
               f"{out.get('weight', 0):g} %" + (" (paused)" if out.get("paused") else ""))


def register(group: typer.Typer) -> None:
    @group.command("status")
    def status(control_file: Annotated[Path | None, ControlFileOpt] = None,
               token_file: Annotated[Path | None, TokenOpt] = None,
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """The running rollout: state, step, weight (from its controller)."""
        _call("status", control_file, token_file, as_json=as_json)

    @group.command("start")
    def start(control_file: Annotated[Path | None, ControlFileOpt] = None,
              token_file: Annotated[Path | None, TokenOpt] = None) -> None:
        """Start a rollout its controller holds ('canary run --control ... --hold')."""
        _call("start", control_file, token_file)

    @group.command("pause")
    def pause(control_file: Annotated[Path | None, ControlFileOpt] = None,
              token_file: Annotated[Path | None, TokenOpt] = None) -> None:
        """Hold the current step: its weight stays, it is never promoted (errors and latency
        still roll back)."""
        _call("pause", control_file, token_file)

    @group.command("resume")
    def resume(control_file: Annotated[Path | None, ControlFileOpt] = None,
               token_file: Annotated[Path | None, TokenOpt] = None) -> None:
        """Continue a paused rollout (the pause does not count towards the step's time)."""
        _call("resume", control_file, token_file)

    @group.command("promote")
    def promote(control_file: Annotated[Path | None, ControlFileOpt] = None,
                token_file: Annotated[Path | None, TokenOpt] = None,
                full: Annotated[bool, typer.Option("--full", help="To the last step at once")
                                ] = False) -> None:
        """Move to the next step now (the operator's word instead of the judge's)."""
        _call("promote", control_file, token_file, {"full": full})

    @group.command("abort")
    def abort(control_file: Annotated[Path | None, ControlFileOpt] = None,
              token_file: Annotated[Path | None, TokenOpt] = None,
              reason: Annotated[str | None, typer.Option("--reason")] = None) -> None:
        """Roll back now: the canary's weight goes to 0."""
        _call("abort", control_file, token_file, {"reason": reason} if reason else {})
