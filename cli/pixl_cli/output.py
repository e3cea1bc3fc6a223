"""How the CLI talks to the operator: one console for results, one for errors.

Errors that the operator can fix are printed as a single line, without a traceback, and exit
with status 2 (usage or configuration) so scripts can tell them apart from data problems.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from pixl_core.errors import PixlConfigError, PixlError

console = Console()
err_console = Console(stderr=True)

EXIT_OK = 0
EXIT_DATA_ERROR = 1
EXIT_USAGE = 2


@contextmanager
def operator_errors() -> Iterator[None]:
    """Turn PIXL's own errors into one-line messages and the documented exit codes."""
    try:
        yield
    except PixlConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except PixlError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_DATA_ERROR) from None
