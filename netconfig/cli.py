"""CLI for netconfig: ``shadowtap lab``, ``shadowtap mirror``, ``shadowtap route``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount netconfig's commands on the root app."""
    return None
