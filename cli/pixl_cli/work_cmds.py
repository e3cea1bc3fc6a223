"""``pixl populate``, ``pixl status`` and ``pixl rate``: the work queue from the operator's side."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from pixl_cli.database import connect
from pixl_cli.extract_reader import read_csv_cohort, read_extract
from pixl_cli.output import console, err_console, operator_errors
from pixl_cli.populate import populate as populate_extract
from pixl_core.config.projects import SLUG_RULE, is_valid_slug, load_project
from pixl_core.db import work_queue
from pixl_core.db.states import STUDY_STATES
from pixl_core.errors import PixlConfigError

# Bounds of `pixl rate`: far above what a VNA should be asked for, well inside what is stored.
MAX_STUDIES_PER_SECOND = 100.0
MAX_IN_FLIGHT = 100


def _staging_dir() -> Path:
    return Path(os.environ.get("PIXL_STAGING_DIR", ".pixl-staging"))


def populate(
    source: Path = typer.Argument(..., help="OMOP ES extract folder, or a CSV cohort file."),
    project: str | None = typer.Option(
        None, "--project", "-p", help="Project slug; required for a CSV cohort."
    ),
) -> None:
    """Record one imaging and one report work item per study of the cohort (idempotent)."""
    with operator_errors():
        if project is not None and not is_valid_slug(project):
            raise PixlConfigError(f"--project must be a project slug ({SLUG_RULE})")
        try:
            is_file, is_dir = source.is_file(), source.is_dir()
        except OSError as exc:  # e.g. a name too long for the file system: not echoed
            raise PixlConfigError(
                f"SOURCE cannot be read ({exc.strerror}): give an OMOP ES extract folder or a "
                ".csv cohort file"
            ) from None
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
        load_project(extract.project)
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

            result = populate_extract(conn, extract, _staging_dir(), on_progress)
    console.print(
        f"{result.project}: {result.added_studies} studies added, "
        f"{result.existing_studies} already recorded; {result.added_reports} reports added; "
        f"{result.duplicate_rows} duplicate rows and {result.rows_without_links} rows without "
        "links skipped",
        highlight=False,
    )


def status(
    project: str | None = typer.Option(None, "--project", "-p", help="Only this project."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: project → state → count."),
) -> None:
    """Count the studies of each project in each state."""
    with operator_errors():
        if project is not None and not is_valid_slug(project):
            raise PixlConfigError(f"--project must be a project slug ({SLUG_RULE})")
        conn = connect()
        counts = work_queue.counts_by_state(conn, project)
    if as_json:
        typer.echo(json.dumps(counts, sort_keys=True))
        return
    table = Table(title="studies by state")
    table.add_column("project")
    for state in STUDY_STATES:
        table.add_column(state, justify="right")
    for name, states in sorted(counts.items()):
        table.add_row(name, *(str(states.get(state, 0)) for state in STUDY_STATES))
    console.print(table)


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
) -> None:
    """Show or change how fast orthanc-raw asks the VNA (applies while it runs).

    Without ``--project`` this is the limit on all of orthanc-raw's asking together; with it, a
    project's own limit, which holds that project's studies back further (never faster).

    The rate is a number of studies per second above 0 and at most 100 (``nan`` and ``inf``
    are refused: stored, either would switch the limit off); ``--in-flight`` a whole number
    from 1 to 100.
    """
    with operator_errors():
        _check_rate(studies_per_second, in_flight)
        if project != "*":
            load_project(project)
        conn = connect()
        current = work_queue.get_fetch_rate(conn, project)
        if studies_per_second is not None or in_flight is not None:
            new_rate = (
                studies_per_second if studies_per_second is not None else current.studies_per_second
            )
            new_in_flight = in_flight if in_flight is not None else current.max_in_flight
            work_queue.set_fetch_rate(conn, project, new_rate, new_in_flight)
            current = work_queue.get_fetch_rate(conn, project)
    console.print(
        f"{project}: {current.studies_per_second:g} studies/s, {current.max_in_flight} in flight",
        highlight=False,
    )


def _check_rate(studies_per_second: float | None, in_flight: int | None) -> None:
    """Refuse, before anything is stored, a rate or concurrency that would not limit the VNA."""
    if studies_per_second is not None and not (
        math.isfinite(studies_per_second) and 0 < studies_per_second <= MAX_STUDIES_PER_SECOND
    ):
        raise PixlConfigError(
            f"the rate must be a number of studies per second above 0 and at most "
            f"{MAX_STUDIES_PER_SECOND:g}, e.g. `pixl rate 0.5`"
        )
    if in_flight is not None and not 1 <= in_flight <= MAX_IN_FLIGHT:
        raise PixlConfigError(f"--in-flight must be a whole number from 1 to {MAX_IN_FLIGHT}")


def retry(
    project: str = typer.Argument(..., help="Project whose failed studies to queue again."),
) -> None:
    """Queue a project's failed studies and reports again (after fixing what made them fail)."""
    with operator_errors():
        load_project(project)
        conn = connect()
        studies = work_queue.requeue_failed(conn, "study", project)
        reports = work_queue.requeue_failed(conn, "report", project)
    console.print(
        f"{project}: {studies} failed studies and {reports} failed reports queued again",
        highlight=False,
    )
