"""CLI commands (filled in by the issue that owns them); mounted by appliance/cli.py."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount this module's commands on the root app."""
    return None
