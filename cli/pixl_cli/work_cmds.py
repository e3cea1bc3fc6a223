"""``pixl populate``, ``pixl status`` and ``pixl rate``: the work queue from the operator's side."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from pixl_cli.database import connect
from pixl_cli.extract_reader import read_csv_cohort, read_extract
from pixl_cli.output import console, err_console, operator_errors
from pixl_cli.populate import populate as populate_extract
from pixl_core.config.projects import load_project
from pixl_core.db import work_queue
from pixl_core.db.states import STUDY_STATES
from pixl_core.errors import PixlConfigError


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
        if source.is_file() and source.suffix.lower() == ".csv":
            if not project:
                raise PixlConfigError("a CSV cohort needs --project SLUG")
            extract = read_csv_cohort(source, project)
        elif source.is_dir():
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
    project: str = typer.Option("*", "--project", "-p", help="A project, or '*' for the default."),
) -> None:
    """Show or change how fast orthanc-raw asks the VNA (applies while it runs)."""
    with operator_errors():
        conn = connect()
        current = work_queue.get_fetch_rate(conn, project)
        if studies_per_second is not None or in_flight is not None:
            new_rate = studies_per_second or current.studies_per_second
            new_in_flight = in_flight or current.max_in_flight
            if new_rate <= 0 or new_in_flight <= 0:
                raise PixlConfigError("rate and --in-flight must be greater than zero")
            work_queue.set_fetch_rate(conn, project, new_rate, new_in_flight)
            current = work_queue.get_fetch_rate(conn, project)
    console.print(
        f"{project}: {current.studies_per_second:g} studies/s, {current.max_in_flight} in flight",
        highlight=False,
    )


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
