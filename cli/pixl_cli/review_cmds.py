"""``pixl reports flagged|show|approve|redact|reject|history``: a person's review of flagged reports.

Flagged reports are withheld from the radiology parquet until someone decides. Listings show
report ids and the findings' kinds and offsets only (never text), so they can be pasted into a
ticket. A decision needs ``--reason`` and is recorded with the operator (``PIXL_OPERATOR``, else
the operating-system user), the time, the findings counted by kind and the SHA-256 of the text
released; ``history`` lists those records.

``approve`` and ``redact`` show the findings and ask for confirmation (``--yes`` skips the
question, for scripts). They show the report's text too, with the findings highlighted, only
when the output is an interactive terminal: the operator at a console inside the hospital, never
a pipe or a CI log that may be copied elsewhere (``--no-text`` hides it there too; ``show``
prints it on purpose). The logic and its SQL are in ``pixl_ehr.review``; these are the typer
commands around them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table
from rich.text import Text

from pixl_cli.database import connect, connection
from pixl_cli.output import EXIT_DATA_ERROR, console, err_console, operator_errors
from pixl_core.config.projects import load_project
from pixl_core.errors import PixlConfigError

if TYPE_CHECKING:
    from pixl_core import db
    from pixl_ehr import review

REPORT_ID_MAX = 2**63 - 1  # report.id is a bigint

REASON_HELP = "Why (one line, recorded with your user name; no patient identifiers)."


def flagged(
    project: str = typer.Argument(..., help="Project slug, e.g. chest-xray."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON list."),
) -> None:
    """List the project's flagged reports: ids, and the kinds and offsets of the findings."""
    from pixl_ehr import review

    with operator_errors():
        load_project(project)
        with connection() as conn:
            reports = review.list_flagged(conn, project)
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
        table.add_row(str(report_id), _findings_line(findings))
    console.print(table)


def _findings_line(findings: list[dict[str, Any]]) -> str:
    return ", ".join(f"{f['kind']} {f['start']}-{f['end']}" for f in findings) or "-"


def _check_id(report_id: int) -> None:
    if not 1 <= report_id <= REPORT_ID_MAX:
        raise PixlConfigError(
            "ID must be a report id, a whole number from 1 to 2^63-1 (see `pixl reports flagged`)"
        )


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_DATA_ERROR)


def _not_decidable(conn: db.Connection, report_id: int, decision: str) -> typer.Exit:
    """The one-line error for a report that cannot be decided on (missing or not flagged)."""
    from pixl_core.db import work_queue

    state = work_queue.state_of(conn, "report", report_id)
    if state is None:
        return _fail(f"there is no report {report_id}")
    return _fail(
        f"report {report_id} is {state}, not flagged: only flagged reports can be {decision} "
        "(see `pixl reports flagged PROJECT`)"
    )


def _patient_identifiers(report: review.Report, required: bool) -> Mapping[str, Any]:
    """The patient's identifiers from EMAP, for checking a masked text or a reason.

    ``required`` (redact): EMAP must answer, or the re-check could not look for the patient's
    own name, birth date and the rest. Otherwise an unreachable EMAP leaves the MRN, the
    accession number and the identifier patterns to check against.
    """
    from pixl_core import db
    from pixl_ehr.emap import EMAP_URL_ENV, emap_url, fetch_report

    try:
        conn = db.connect(emap_url(), application_name="pixl-cli")
        try:
            conn.set_session(readonly=True)
            found = fetch_report(conn, report.mrn, report.accession_number)
        finally:
            conn.close()
    except Exception as exc:
        if not required:
            return {}
        if isinstance(exc, PixlConfigError):
            raise
        raise PixlConfigError(
            f"cannot read the patient's identifiers from EMAP ({type(exc).__name__}), which "
            f"the re-check of the masked text needs: check {EMAP_URL_ENV}"
        ) from None
    if found is None:
        if not required:
            return {}
        raise PixlConfigError(
            f"EMAP no longer has report {report.id}, so the masked text cannot be checked "
            f"against the patient's identifiers: reject it instead (`pixl reports reject "
            f"{report.id} --reason …`)"
        )
    return found.identifiers


def _show(
    report: review.Report, text: str, highlights: list[dict[str, Any]], no_text: bool
) -> None:
    """The findings (always) and the text (at an interactive terminal only, see the module)."""
    console.print(
        f"report {report.id} ({report.state}, project {report.project}): "
        f"{len(report.findings)} findings: {_findings_line(report.findings)}",
        highlight=False,
        soft_wrap=True,
    )
    if no_text or not console.is_terminal:
        console.print(
            "(text not shown here: run at a terminal inside the hospital, or "
            f"`pixl reports show {report.id}`)",
            highlight=False,
            soft_wrap=True,
        )
        return
    rendered = Text(text)
    for finding in highlights:
        rendered.stylize("bold reverse red", finding["start"], finding["end"])
    console.print(rendered, highlight=False, soft_wrap=True)


def _confirmed(question: str, yes: bool) -> bool:
    if yes:
        return True
    try:
        return typer.confirm(question, default=False)
    except typer.Abort:  # end of input: no answer is not a yes (typer's own Abort since it
        # vendors click: click's would not catch it and the command ended in "Aborted!")
        return False


def _load_flagged(conn: db.Connection, report_id: int, decision: str) -> review.Report:
    from pixl_ehr import review

    report = review.load(conn, report_id)
    if report is None or report.state != "flagged":
        raise _not_decidable(conn, report_id, decision)
    return report


def _release(report_id: int, reason: str | None, yes: bool, no_text: bool, decision: str) -> None:
    """approve or redact: show, re-check (redact), confirm, record."""
    from pixl_ehr import review

    command = "approve" if decision == "approved" else "redact"
    with operator_errors():
        _check_id(report_id)
        reason = review.validate_reason(reason, command)
        operator = review.operator_name()
        conn = connect()
    try:
        with operator_errors():
            report = _load_flagged(conn, report_id, decision)
            identifiers = _patient_identifiers(report, required=decision == "redacted")
            review.check_reason(report, reason, identifiers)
            if decision == "redacted":
                released = review.prepare_redaction(report, identifiers)
                _show(report, released, [], no_text)
                question = (
                    f"Release report {report_id} with its {len(report.findings)} findings "
                    "masked as shown?"
                )
            else:
                released = report.text
                _show(report, report.text, report.findings, no_text)
                question = (
                    f"Release report {report_id}'s text exactly as it is, its "
                    f"{len(report.findings)} findings NOT masked?"
                )
            if not _confirmed(question, yes):
                raise _fail(f"report {report_id} not {decision}: nothing changed")
            if decision == "redacted":
                applied = review.redact(conn, report, released, reason, operator)
            else:
                applied = review.approve(conn, report, reason, operator)
            if not applied:
                report_now = review.load(conn, report_id)
                if report_now is not None and report_now.state == "flagged":
                    raise _fail(
                        f"report {report_id}'s text changed while you reviewed it: nothing "
                        "changed; look at it again"
                    )
                raise _not_decidable(conn, report_id, decision)
    finally:
        conn.close()
    console.print(
        f"report {report_id} {decision} by {operator} "
        f"(released text sha256 {review.text_sha256(released)})",
        highlight=False,
        soft_wrap=True,
    )


def approve(
    report_id: int = typer.Argument(..., metavar="ID", help="Report id."),
    reason: str | None = typer.Option(None, "--reason", "-r", help=REASON_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    no_text: bool = typer.Option(False, "--no-text", help="Show kinds and offsets only."),
) -> None:
    """Release a flagged report's text as it is (findings NOT masked) into the next export.

    Shows the findings, asks for confirmation, records who, when, why and the text's SHA-256.
    The export carries exactly that text: if it changes, the report is withheld again.
    """
    _release(report_id, reason, yes, no_text, "approved")


def redact(
    report_id: int = typer.Argument(..., metavar="ID", help="Report id."),
    reason: str | None = typer.Option(None, "--reason", "-r", help=REASON_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    no_text: bool = typer.Option(False, "--no-text", help="Show kinds and offsets only."),
) -> None:
    """Release a flagged report with every finding masked as [KIND] into the next export.

    The masked text is checked again first and refused if it still flags. Shows the findings,
    asks for confirmation, records who, when, why and the released text's SHA-256.
    """
    _release(report_id, reason, yes, no_text, "redacted")


def reject(
    report_id: int = typer.Argument(..., metavar="ID", help="Report id."),
    reason: str | None = typer.Option(None, "--reason", "-r", help=REASON_HELP),
) -> None:
    """Withhold a flagged report for good: it never leaves. Recorded with the reason."""
    from pixl_ehr import review

    with operator_errors():
        _check_id(report_id)
        reason = review.validate_reason(reason, "reject")
        operator = review.operator_name()
        conn = connect()
    try:
        with operator_errors():
            report = _load_flagged(conn, report_id, "rejected")
            review.check_reason(report, reason, _patient_identifiers(report, required=False))
            if not review.reject(conn, report_id, reason, operator):
                raise _not_decidable(conn, report_id, "rejected")
    finally:
        conn.close()
    console.print(f"report {report_id} rejected by {operator}", highlight=False, soft_wrap=True)


def history(
    project: str = typer.Argument(..., help="Project slug, e.g. chest-xray."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON list."),
) -> None:
    """List the project's review decisions: report id, decision, who, when, reason, findings.

    Findings are counted by kind; no report text is shown.
    """
    from pixl_ehr import review

    with operator_errors():
        load_project(project)
        with connection() as conn:
            decisions = review.history(conn, project)
    if json_output:
        console.print_json(json.dumps([d.as_json() for d in decisions]))
        return
    if not decisions:
        console.print(f"{project}: no review decision recorded")
        return
    table = Table(title=f"{project}: review decisions")
    for name in ("report id", "decision", "by", "when (UTC)", "reason", "findings by kind"):
        table.add_column(name, justify="right" if name == "report id" else "left")
    for d in decisions:
        table.add_row(
            str(d.report_id),
            d.decision,
            d.reviewed_by,
            d.reviewed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            d.reason,
            ", ".join(f"{kind} {n}" for kind, n in d.findings_by_kind.items()) or "-",
        )
    console.print(table)


def show(report_id: int = typer.Argument(..., metavar="ID", help="Report id.")) -> None:
    """Print a report's de-identified text with the checker's findings highlighted.

    The text may still hold what the checker flagged: run this inside the hospital only.
    """
    from pixl_core.db import work_queue
    from pixl_ehr import review

    with operator_errors():
        _check_id(report_id)
        with connection() as conn:
            report = review.load(conn, report_id)
            state = work_queue.state_of(conn, "report", report_id) if report is None else None
    if report is None:
        if state is None:
            message = (
                f"no report {report_id}: `pixl reports flagged PROJECT` lists the ids of the "
                "reports to review"
            )
        else:
            message = (
                f"report {report_id} has no checked text yet (it is {state}): see "
                "`pixl status` for why"
            )
        err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_DATA_ERROR)
    rendered = Text(report.text)
    for finding in report.findings:
        rendered.stylize("bold reverse red", finding["start"], finding["end"])
    console.print(f"report {report_id} ({report.state}); findings highlighted:", highlight=False)
    console.print(rendered, highlight=False, soft_wrap=True)
