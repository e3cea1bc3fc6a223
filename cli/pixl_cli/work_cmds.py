"""``pixl populate``, ``pixl status``, ``pixl rate`` and ``pixl retry``: the work queue from the
operator's side. (Pausing and the VNA's hours: ``control_cmds``.)"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pixl_cli.database import connect
from pixl_cli.output import console, err_console, operator_errors
from pixl_core.config.projects import SLUG_RULE, is_valid_slug, list_projects, load_project
from pixl_core.errors import PixlConfigError

if TYPE_CHECKING:
    from pixl_core import db
    from pixl_core.db import fetch_control, work_queue

# Bounds of `pixl rate`: far above what a VNA should be asked for, well inside what is stored.
MAX_STUDIES_PER_SECOND = 100.0
MAX_IN_FLIGHT = 100
# Bounds of `pixl populate --priority` (the schema's CHECK).
MAX_PRIORITY = 1000


def _staging_dir() -> Path:
    return Path(os.environ.get("PIXL_STAGING_DIR", ".pixl-staging"))


def populate(
    source: Path = typer.Argument(..., help="OMOP ES extract folder, or a CSV cohort file."),
    project: str | None = typer.Option(
        None, "--project", "-p", help="Project slug; required for a CSV cohort."
    ),
    priority: int | None = typer.Option(
        None,
        "--priority",
        help="Claimed before queued work of lower priority (-1000 to 1000; default: the "
        "project's `priority:`, else 0). Given, it also applies to the cohort's studies and "
        "reports still queued.",
    ),
) -> None:
    """Record one imaging and one report work item per study of the cohort (idempotent)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pixl_cli.extract_reader import read_csv_cohort, read_extract
    from pixl_cli.populate import populate as populate_extract

    with operator_errors():
        if project is not None and not is_valid_slug(project):
            raise PixlConfigError(f"--project must be a project slug ({SLUG_RULE})")
        if priority is not None and not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise PixlConfigError(
                f"--priority must be a whole number from -{MAX_PRIORITY} to {MAX_PRIORITY}"
            )
        try:
            exists = source.exists()
            is_file, is_dir = source.is_file(), source.is_dir()
        except OSError as exc:  # e.g. a name too long for the file system: not echoed
            raise PixlConfigError(
                f"SOURCE cannot be read ({exc.strerror}): give an OMOP ES extract folder or a "
                ".csv cohort file"
            ) from None
        if not exists:
            raise PixlConfigError(
                f"{source} does not exist: give the path of an OMOP ES extract folder or of a "
                ".csv cohort file"
            )
        if is_file and source.suffix.lower() == ".csv":
            if not project:
                raise PixlConfigError("a CSV cohort needs --project SLUG")
            extract = read_csv_cohort(source, project)
        elif is_dir:
            extract = read_extract(source)
        else:
            raise PixlConfigError(
                f"{source} is neither an OMOP ES extract folder nor a .csv cohort file"
            )
        if project and project != extract.project:
            raise PixlConfigError(
                f"the extract is for project '{extract.project}', not '{project}'; drop --project"
            )
        project_priority = load_project(extract.project).priority
        conn = connect()
        with Progress(
            TextColumn("recording work items"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task("rows", total=None)

            def on_progress(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            result = populate_extract(
                conn,
                extract,
                _staging_dir(),
                on_progress,
                priority=priority if priority is not None else project_priority,
                reprioritise=priority is not None,
            )
    console.print(
        f"{result.project}: {result.added_studies} studies added, "
        f"{result.existing_studies} already recorded; {result.added_reports} reports added; "
        f"{result.duplicate_rows} duplicate rows and {result.rows_without_links} rows without "
        "links skipped",
        highlight=False,
    )


def status(
    project_arg: str | None = typer.Argument(
        None, metavar="[PROJECT]", help="Only this project.", show_default=False
    ),
    project: str | None = typer.Option(None, "--project", "-p", help="Only this project."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="One JSON object: project → state → count, and under `_details` the reasons, "
        "reports, reviews and the fetch hold.",
    ),
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh in place (Ctrl-C stops)."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between --watch refreshes."),
) -> None:
    """Count each project's studies and reports in each state, and say why work is refused,
    failed or waiting (reason codes with counts), and whether orthanc-raw is paused or outside
    its VNA hours."""
    from rich.live import Live
    from rich.text import Text

    with operator_errors():
        if project_arg is not None and project is not None and project_arg != project:
            raise PixlConfigError("give the project once: `pixl status PROJECT`")
        given = "PROJECT" if project_arg is not None else "--project"
        project = project_arg or project
        if project is not None and not is_valid_slug(project):
            raise PixlConfigError(f"{given} must be a project slug ({SLUG_RULE})")
        if not (0.2 <= interval <= 3600 and math.isfinite(interval)):
            raise PixlConfigError("--interval must be a number of seconds from 0.2 to 3600")
        conn = connect()
        if project is not None:
            _check_known(conn, project)
        if as_json:
            typer.echo(json.dumps(_status_json(conn, project), sort_keys=True))
            return
        if not watch:
            for line in _status_lines(conn, project):
                console.print(line, highlight=False, markup=False, soft_wrap=True)
            return
        with Live(console=console, auto_refresh=False, transient=False) as live:
            try:
                while True:
                    stamp = time.strftime("%H:%M:%S")
                    lines = [
                        f"pixl status at {stamp} (Ctrl-C stops)",
                        *_status_lines(conn, project),
                    ]
                    live.update(Text("\n".join(lines)), refresh=True)
                    time.sleep(interval)
            except KeyboardInterrupt:
                pass


def _check_known(conn: db.Connection, project: str) -> None:
    """A project with a file or with work is known; anything else is a typo, said in one line
    rather than a row of zeros."""
    from pixl_core.db import overview

    if project in list_projects() or project in overview.projects_with_work(conn):
        return
    known = ", ".join(sorted(set(list_projects()) | set(overview.projects_with_work(conn))))
    raise PixlConfigError(
        f"unknown project '{project}': no projects/{project}.yaml and no work recorded; "
        f"use one of: {known or 'none'}"
    )


def _status_lines(conn: db.Connection, project: str | None) -> list[str]:
    from pixl_cli.status_view import render
    from pixl_core.db import fetch_control, overview, work_queue

    projects = overview.project_overview(conn, project)
    controls = fetch_control.controls(conn)
    gate = fetch_control.gate(controls, fetch_control.now_local())
    rates = work_queue.fetch_rates(conn)
    return render(projects, rates, controls, gate, width=console.width)


def _status_json(conn: db.Connection, project: str | None) -> dict[str, Any]:
    """The fixed interface (project → state → count) plus ``_details``, a key no project slug
    can be: per project its reports, reasons, reviews and hold, and the global fetch state."""
    from pixl_core.db import fetch_control, overview, work_queue

    projects = overview.project_overview(conn, project)
    controls = fetch_control.controls(conn)
    now = fetch_control.now_local()
    rates = work_queue.fetch_rates(conn)
    result: dict[str, Any] = {name: info["studies"] for name, info in projects.items()}
    details: dict[str, Any] = {"*": _fetch_json(fetch_control.ALL, rates, controls, now)}
    # The secondary archive's own rate and hold (issue 11), beside the global fetch state.
    details["*"]["secondary"] = _fetch_json(
        fetch_control.archive_scope("secondary"), rates, controls, now
    )
    for name, info in projects.items():
        details[name] = {
            "reports": info["reports"],
            "reasons": info["reasons"],
            "review": info["review"],
            "destination_error": info.get("destination_error"),
            "archives": info["archives"],
            "waiting_for_secondary": info["waiting_for_secondary"],
            **_fetch_json(name, rates, controls, now),
        }
    result["_details"] = details
    return result


def _fetch_json(
    scope: str,
    rates: dict[str, work_queue.FetchRate],
    controls: dict[str, fetch_control.Control],
    now: Any,
) -> dict[str, Any]:
    from pixl_core.db import fetch_control

    rate = rates.get(scope)
    control = controls.get(scope, fetch_control.Control(scope))
    return {
        "rate": (
            {"studies_per_second": rate.studies_per_second, "max_in_flight": rate.max_in_flight}
            if rate
            else None
        ),
        "fetch": control.as_json(now),
    }


def rate(
    studies_per_second: float | None = typer.Argument(
        None, help="New rate (studies/s) at which orthanc-raw asks the VNA; omit to show."
    ),
    in_flight: int | None = typer.Option(None, "--in-flight", help="Studies fetched at once."),
    project: str = typer.Option(
        "*",
        "--project",
        "-p",
        help="A project's own limit, or '*' (default) for the limit on all asking together.",
    ),
    archive: str | None = typer.Option(
        None,
        "--archive",
        help="The secondary archive's own rate (`secondary`): asked only when the VNA has no "
        "such study, never faster than this.",
    ),
) -> None:
    """Show or change how fast orthanc-raw asks the VNA (applies while it runs).

    Without ``--project`` this is the limit on all of orthanc-raw's asking together; with it, a
    project's own limit, which holds that project's studies back further (never faster).

    The rate is a number of studies per second above 0 and at most 100 (``nan`` and ``inf``
    are refused: stored, either would switch the limit off); ``--in-flight`` a whole number
    from 1 to 100. ``pixl rate 0`` pauses (as ``pixl pause``): the stored rate is kept for
    ``pixl resume``.
    """
    from pixl_core.db import work_queue

    with operator_errors():
        if archive is not None:
            from pixl_cli.control_cmds import _scope

            project = _scope(None if project == "*" else project, archive)
        if studies_per_second == 0 and in_flight is None:
            if project != "*" and archive is None:
                load_project(project)
            from pixl_cli.control_cmds import pause_now

            pause_now(project)
            return
        _check_rate(studies_per_second, in_flight)
        if project != "*" and archive is None:
            load_project(project)
        conn = connect()
        current = _current_rate(conn, project)
        if studies_per_second is not None or in_flight is not None:
            new_rate = (
                studies_per_second if studies_per_second is not None else current.studies_per_second
            )
            new_in_flight = in_flight if in_flight is not None else current.max_in_flight
            work_queue.set_fetch_rate(conn, project, new_rate, new_in_flight)
            current = _current_rate(conn, project)
    per_minute = (
        f" ({current.studies_per_second * 60:g} studies/min)" if archive is not None else ""
    )
    console.print(
        f"{project}: {current.studies_per_second:g} studies/s{per_minute}, "
        f"{current.max_in_flight} in flight",
        highlight=False,
    )


def _current_rate(conn: db.Connection, scope: str) -> work_queue.FetchRate:
    """The stored rate of ``scope``; an archive without one has the default archive rate
    (never the VNA's '*' rate, which does not apply to it)."""
    from pixl_core.db import fetch_control, work_queue

    if scope.startswith(fetch_control.ARCHIVE_PREFIX):
        stored = work_queue.fetch_rates(conn).get(scope)
        return stored or work_queue.FetchRate(fetch_control.DEFAULT_ARCHIVE_STUDIES_PER_SECOND, 1)
    return work_queue.get_fetch_rate(conn, scope)


def _check_rate(studies_per_second: float | None, in_flight: int | None) -> None:
    """Refuse, before anything is stored, a rate or concurrency that would not limit the VNA."""
    if studies_per_second is not None and not (
        math.isfinite(studies_per_second) and 0 < studies_per_second <= MAX_STUDIES_PER_SECOND
    ):
        raise PixlConfigError(
            f"the rate must be a number of studies per second above 0 and at most "
            f"{MAX_STUDIES_PER_SECOND:g}, e.g. `pixl rate 0.5` (to stop asking: `pixl pause` "
            "or `pixl rate 0`)"
        )
    if in_flight is not None and not 1 <= in_flight <= MAX_IN_FLIGHT:
        raise PixlConfigError(f"--in-flight must be a whole number from 1 to {MAX_IN_FLIGHT}")


def retry(
    project: str = typer.Argument(..., help="Project whose failed studies to queue again."),
) -> None:
    """Queue a project's failed studies and reports again (after fixing what made them fail)."""
    from pixl_core.db import work_queue

    with operator_errors():
        load_project(project)
        conn = connect()
        studies = work_queue.requeue_failed(conn, "study", project)
        reports = work_queue.requeue_failed(conn, "report", project)
    console.print(
        f"{project}: {studies} failed studies and {reports} failed reports queued again",
        highlight=False,
    )
