"""``pixl pause``, ``pixl resume`` and ``pixl hours``: when orthanc-raw may ask the VNA.

Stored in Postgres (``pixl_core.db.fetch_control``), so every orthanc-raw replica obeys within a
poll interval and ``pixl status`` and the page ``/pixl/ui/`` show it. A paused or out-of-hours
orthanc-raw claims nothing; queued studies stay queued and lose no try. Each command says what
it changed, and what it did not (resuming what was not paused is said, not silently done).
"""

from __future__ import annotations

import getpass
import os
from typing import TYPE_CHECKING

import typer

from pixl_cli.database import connect
from pixl_cli.output import console, operator_errors
from pixl_core.config.projects import load_project

if TYPE_CHECKING:  # pixl_core.db imports psycopg2: the commands import it when they run
    from pixl_core.db import fetch_control

OPERATOR_ENV = "PIXL_OPERATOR"


def _who() -> str:
    """The staff user recorded as having paused (PIXL_OPERATOR, else the login name)."""
    try:
        return os.environ.get(OPERATOR_ENV) or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


ARCHIVES = ("secondary",)
ARCHIVE_HELP = (
    "The secondary archive's own setting (asked only when the VNA has no such study); "
    "`secondary` is the one there is."
)


def _scope(project: str | None, archive: str | None = None) -> str:
    from pixl_core.db import fetch_control
    from pixl_core.db.fetch_control import ALL
    from pixl_core.errors import PixlConfigError

    if archive is not None:
        if archive not in ARCHIVES:
            raise PixlConfigError(f"--archive must be one of: {', '.join(ARCHIVES)}")
        if project is not None:
            raise PixlConfigError("give --archive or a project, not both")
        return fetch_control.archive_scope(archive)
    if project is None:
        return ALL
    load_project(project)  # one line naming the typo and the projects there are
    return project


def _name(scope: str) -> str:
    from pixl_core.db import fetch_control
    from pixl_core.db.fetch_control import ALL

    if scope.startswith(fetch_control.ARCHIVE_PREFIX):
        return f"{scope.removeprefix(fetch_control.ARCHIVE_PREFIX)} archive"
    return "all projects" if scope == ALL else scope


def _resume_command(scope: str) -> str:
    from pixl_core.db import fetch_control
    from pixl_core.db.fetch_control import ALL

    if scope.startswith(fetch_control.ARCHIVE_PREFIX):
        return f"pixl resume --archive {scope.removeprefix(fetch_control.ARCHIVE_PREFIX)}"
    return "pixl resume" + ("" if scope == ALL else f" {scope}")


def pause_now(scope: str) -> None:
    """Pause asking the VNA for ``scope`` and say so (also ``pixl rate 0``)."""
    from pixl_core.db import fetch_control

    conn = connect()
    was = fetch_control.is_paused(conn, scope)
    fetch_control.set_paused(conn, scope, True, _who())
    resume = _resume_command(scope)
    console.print(
        f"{_name(scope)}: {'already ' if was else ''}paused: orthanc-raw claims no new study "
        f"(queued studies stay queued; studies being fetched finish); `{resume}` resumes",
        highlight=False,
        soft_wrap=True,
    )


def pause(
    project: str | None = typer.Argument(
        None, metavar="[PROJECT]", help="Only this project; without it, all asking."
    ),
    archive: str | None = typer.Option(None, "--archive", help=ARCHIVE_HELP),
) -> None:
    """Stop orthanc-raw asking the VNA (all projects, or one) until `pixl resume`."""
    with operator_errors():
        pause_now(_scope(project, archive))


def resume(
    project: str | None = typer.Argument(
        None, metavar="[PROJECT]", help="Only this project; without it, all asking."
    ),
    archive: str | None = typer.Option(None, "--archive", help=ARCHIVE_HELP),
) -> None:
    """Let orthanc-raw ask the VNA again (within its rate and VNA hours)."""
    from pixl_core.db import fetch_control

    with operator_errors():
        scope = _scope(project, archive)
        conn = connect()
        was = fetch_control.is_paused(conn, scope)
        fetch_control.set_paused(conn, scope, False, _who())
        still = _hold(conn, scope)
    if not was:
        message = f"{_name(scope)}: was not paused; nothing changed"
    else:
        message = f"{_name(scope)}: resumed"
    if still is not None:
        message += f" (still held back: {still.describe()})"
    console.print(message, highlight=False, soft_wrap=True)


def hours(
    window: str | None = typer.Argument(
        None,
        metavar="[WINDOW]",
        help='"HH:MM-HH:MM" local time (may run over midnight, e.g. "20:00-07:00"), or `off`. '
        "Omit to show.",
    ),
    weekends: bool = typer.Option(
        False, "--weekends", help="Saturdays and Sundays are open all day as well."
    ),
    project: str | None = typer.Option(
        None, "--project", "-p", help="A project's own window (within the global one)."
    ),
    archive: str | None = typer.Option(None, "--archive", help=ARCHIVE_HELP),
) -> None:
    """Show or set the hours in which orthanc-raw may ask the VNA (or, with `--archive
    secondary`, the secondary archive); outside them it claims nothing until the window opens
    (`pixl status` says until when)."""
    from pixl_core.db import fetch_control

    with operator_errors():
        scope = _scope(project, archive)
        conn = connect()
        if window is not None:
            if window.strip().lower() in {"off", "any", "always"}:
                fetch_control.set_hours(conn, scope, None)
            else:
                fetch_control.set_hours(
                    conn, scope, fetch_control.HoursWindow.parse(window, weekends)
                )
        control = fetch_control.controls(conn).get(scope)
        hold = _hold(conn, scope)
    what = "hours" if scope.startswith(fetch_control.ARCHIVE_PREFIX) else "VNA hours"
    if control is None or control.hours is None:
        message = f"{_name(scope)}: {what}: any time"
    else:
        message = f"{_name(scope)}: {what} {control.hours.describe()} (local time)"
    if hold is not None:
        message += f"; now {hold.describe()}"
    console.print(message, highlight=False, soft_wrap=True)


def _hold(conn: object, scope: str) -> fetch_control.Hold | None:
    """What holds ``scope`` back now: an archive by its own row, anything else by the gate."""
    from pixl_core.db import fetch_control

    if scope.startswith(fetch_control.ARCHIVE_PREFIX):
        archive = scope.removeprefix(fetch_control.ARCHIVE_PREFIX)
        rows = fetch_control.controls(conn)  # type: ignore[arg-type]
        return fetch_control.archive_gate(rows, archive, fetch_control.now_local())
    return fetch_control.current_gate(conn).hold_for(scope)  # type: ignore[arg-type]
