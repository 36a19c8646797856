"""The ``shadowtap`` command: one typer app, a thin face over replay, netconfig and appliance.

Sub-commands live next to the code they drive (``replay/cli.py``, ``netconfig/cli.py``); this
module only mounts them. Heavy imports (scapy, mitmproxy, pyroute2) stay inside the commands so
``shadowtap --help`` starts fast.
"""

from __future__ import annotations

import typer

from netconfig import cli as netconfig_cli
from replay import cli as replay_cli

app = typer.Typer(
    name="shadowtap",
    help="Mirror production HTTP traffic, extract and sanitise it, replay it to shadows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

replay_cli.register(app)
netconfig_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
