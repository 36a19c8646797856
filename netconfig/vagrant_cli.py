"""``shadowtap lab vagrant ...``: the lab as VMs (Vagrant + libvirt, QEMU TCG).

A thin face over :mod:`netconfig.vmlab` (launcher) and :mod:`netconfig.vagrant` (the lab spec
as the JSON the Vagrantfile reads). ``scripts/vagrant-lab.sh`` calls these commands.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from netconfig.cli_common import JsonOpt, SpecOpt, friendly, print_json

app = typer.Typer(help="The same lab as VMs: Vagrant + libvirt in a private namespace.",
                  no_args_is_help=True)

NodesOpt = typer.Option(None, "--nodes", help="Comma-separated nodes to boot (default: "
                        "$SHADOWTAP_LAB_NODES, else all), e.g. client,gateway,prod.")


def _nodes(nodes: str | None) -> list[str] | None:
    from netconfig import vagrant

    return vagrant.parse_nodes(nodes or os.environ.get("SHADOWTAP_LAB_NODES"))


@app.command("up")
@friendly
def vm_up(
    spec: Path | None = SpecOpt, nodes: str | None = NodesOpt,
    install: bool = typer.Option(True, "--install/--no-install",
                                 help="Install shadowtap in the gateway VM (wheelhouse)."),
    timeout: float = typer.Option(1500, "--timeout", help="Seconds for 'vagrant up'.",
                                  min=1.0),
    keep: bool = typer.Option(False, "--keep-on-failure", help="Leave a failed lab for debugging."),
    as_json: bool = JsonOpt,
) -> None:
    """Build the box (once), start libvirt in namespace shadowtap-vm, boot and provision VMs."""
    from netconfig import lab, vmlab

    st = vmlab.up(lab.load_spec(spec), _nodes(nodes), install=install, timeout=timeout,
                  keep_on_failure=keep)
    if as_json:
        print_json(st)


@app.command("down")
@friendly
def vm_down(purge: bool = typer.Option(False, "--purge", help="Also drop the box's base "
                                       "volume from libvirt's pool (re-uploaded next up).")) -> None:
    """Destroy the VMs, libvirt networks and daemons, and delete the namespace."""
    from netconfig import vmlab

    done = vmlab.down(purge=purge)
    typer.echo(f"vagrant lab is down ({len(done)} things removed)" if done
               else "vagrant lab: nothing to remove")


@app.command("status")
@friendly
def vm_status(as_json: bool = JsonOpt) -> None:
    """The namespace, the daemons and each VM's state."""
    from netconfig import vmlab

    st = vmlab.status()
    if as_json:
        print_json(st)
        return
    typer.echo(f"vagrant lab: {st['state']} (namespace {st['netns']}: "
               f"{'present' if st['netns_exists'] else 'absent'})")
    for name, d in st["daemons"].items():
        typer.echo(f"  {name}: pid {d['pid']} {'running' if d['alive'] else 'gone'}")
    for m, s in st["machines"].items():
        typer.echo(f"  vm {m}: {s}")


@app.command("ssh", context_settings={"allow_extra_args": True,
                                      "ignore_unknown_options": True})
@friendly
def vm_ssh(ctx: typer.Context, node: str = typer.Argument(..., help="VM (a node of the lab).")
           ) -> None:
    """Run a command in a VM (after '--'), or open a shell there."""
    from netconfig import vmlab

    p = vmlab.ssh(node, list(ctx.args) or None, timeout=24 * 3600)
    raise typer.Exit(p.returncode)


@app.command("spec")
@friendly
def vm_spec(
    spec: Path | None = SpecOpt, nodes: str | None = NodesOpt,
    output: Path | None = typer.Option(None, "-o", "--output", help="Write here (else stdout)."),
) -> None:
    """Print (or write) the JSON the Vagrantfile reads, generated from the lab spec."""
    from netconfig import lab, vagrant

    s = lab.load_spec(spec)
    if output:
        vagrant.write(s, output, _nodes(nodes))
        typer.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.write(json.dumps(vagrant.describe(s, _nodes(nodes)), indent=1) + "\n")


@app.command("box")
@friendly
def vm_box() -> None:
    """Build the Vagrant box from debootstrap (idempotent; what 'up' does first)."""
    from netconfig import vmlab
    from netconfig.errors import require_root

    require_root()
    typer.echo(str(vmlab.build_box(vmlab._say)))
