"""CLI for replay: ``shadowtap extract`` and friends."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount replay's commands on the root app."""
    return None
