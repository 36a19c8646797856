"""What ``netconfig.cli`` and ``netconfig.vagrant_cli`` share: the common options, the error
wrapper and the JSON printer (here, so that neither CLI module imports the other at load)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

SpecOpt = typer.Option(None, "--spec", help="Lab spec (YAML); default: the built-in lab.",
                       dir_okay=False)
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def friendly(fn: F) -> F:
    """Turn expected failures into ``error: ...`` + exit 2, unexpected ones into exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from netconfig.errors import NetconfigError

        try:
            return fn(*args, **kwargs)
        except NetconfigError as exc:
            _fail(str(exc))
        except PermissionError as exc:
            _fail(f"permission denied ({exc.filename or exc}): run as root")
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug or an unexpected kernel answer: say it in one line
            name = type(exc).__name__
            _fail(f"unexpected {name}: {exc} (please report this)", code=1)

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
