"""``pixl reports flagged|approve|reject``: a person's review of reports the check flagged.

Flagged reports are withheld from the radiology parquet until someone decides. The listing
shows report ids and the findings' kinds and offsets only (never text), so it can be pasted into
a ticket; the decision is recorded with the operating-system user name of whoever ran it.
The logic and its SQL are in ``pixl_ehr.review`` and ``pixl_core.db.work_queue``; these are the
typer commands around them.
"""

from __future__ import annotations

import json

import typer
from rich.table import Table
from rich.text import Text

from pixl_cli.database import connect
from pixl_cli.output import EXIT_DATA_ERROR, console, err_console, operator_errors
from pixl_core.config.projects import load_project
from pixl_core.db import work_queue
from pixl_core.errors import PixlConfigError
from pixl_ehr import review


def flagged(
    project: str = typer.Argument(..., help="Project slug, e.g. chest-xray."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON list."),
) -> None:
    """List the project's flagged reports: ids, and the kinds and offsets of the findings."""
    with operator_errors():
        load_project(project)
        conn = connect()
        try:
            reports = review.list_flagged(conn, project)
        finally:
            conn.close()
    if json_output:
        console.print_json(
            json.dumps([{"report_id": rid, "findings": findings} for rid, findings in reports])
        )
        return
    if not reports:
        console.print(f"{project}: no flagged report awaits review")
        return
    table = Table(title=f"{project}: flagged reports awaiting review")
    table.add_column("report id", justify="right")
    table.add_column("findings (kind start-end)")
    for report_id, findings in reports:
        table.add_row(
            str(report_id),
            ", ".join(f"{f['kind']} {f['start']}-{f['end']}" for f in findings) or "-",
        )
    console.print(table)


REPORT_ID_MAX = 2**63 - 1  # report.id is a bigint


def _check_id(report_id: int) -> None:
    if not 1 <= report_id <= REPORT_ID_MAX:
        raise PixlConfigError(
            "ID must be a report id, a whole number from 1 to 2^63-1 (see `pixl reports flagged`)"
        )


def _decide(report_id: int, decision: str) -> None:
    with operator_errors():
        _check_id(report_id)
        conn = connect()
        try:
            reviewer = review.reviewer_name()
            action = review.approve if decision == "approved" else review.reject
            applied = action(conn, report_id, reviewer)
            state = None if applied else work_queue.state_of(conn, "report", report_id)
        finally:
            conn.close()
    if applied:
        console.print(f"report {report_id} {decision} by {reviewer}", soft_wrap=True)
        return
    if state is None:
        err_console.print(
            f"[red]error:[/red] there is no report {report_id}", highlight=False, soft_wrap=True
        )
    else:
        err_console.print(
            f"[red]error:[/red] report {report_id} is {state}, not flagged: only flagged reports "
            f"can be {decision} (see `pixl reports flagged PROJECT`)",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(EXIT_DATA_ERROR)


def approve(report_id: int = typer.Argument(..., metavar="ID", help="Report id.")) -> None:
    """Release a flagged report: it goes into the next radiology parquet."""
    _decide(report_id, "approved")


def reject(report_id: int = typer.Argument(..., metavar="ID", help="Report id.")) -> None:
    """Withhold a flagged report for good: it never leaves."""
    _decide(report_id, "rejected")


def show(report_id: int = typer.Argument(..., metavar="ID", help="Report id.")) -> None:
    """Print a report's de-identified text with the checker's findings highlighted.

    The text may still hold what the checker flagged: run this inside the hospital only.
    """
    with operator_errors():
        _check_id(report_id)
        conn = connect()
        try:
            report = review.checked_text(conn, report_id)
        finally:
            conn.close()
    if report is None:
        err_console.print(f"[red]error:[/red] report {report_id} has no checked text yet")
        raise typer.Exit(EXIT_DATA_ERROR)
    rendered = Text(report.text)
    for finding in report.findings:
        rendered.stylize("bold reverse red", finding["start"], finding["end"])
    console.print(f"report {report_id} ({report.state}); findings highlighted:", highlight=False)
    console.print(rendered, highlight=False, soft_wrap=True)
