"""Review of flagged reports: list them, approve (release for export) or reject (withhold).

A report the second-method check flagged stays ``flagged`` until a person looks at it. These
are plain functions on a connection so the CLI and tests share them. Each decision is a single
conditional ``UPDATE … WHERE id = %s AND state = 'flagged'``: deciding twice, or on a report that
is not flagged, changes nothing and returns False, so two reviewers cannot both "win". Who
decided (a staff user name, not patient data) and when is recorded on the row.

Listings carry report ids and the findings' kinds and offsets only, never text; only
``checked_text`` returns the de-identified text, for ``pixl reports show`` inside the hospital.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from typing import Any

from pixl_core.db.connection import Connection

Finding = dict[str, Any]


@dataclass(frozen=True)
class CheckedText:
    """A report's de-identified text with the checker's findings (text left out of ``repr``)."""

    state: str
    text: str = field(repr=False)
    findings: list[Finding]


def list_flagged(conn: Connection, project: str) -> list[tuple[int, list[Finding]]]:
    """``(report id, [{"kind", "start", "end"}, ...])`` of the project's flagged reports."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, coalesce(check_findings, '[]'::jsonb) FROM report "
            "WHERE project = %s AND state = 'flagged' ORDER BY id",
            (project,),
        )
        rows = cur.fetchall()
    return [
        (
            int(report_id),
            [
                {"kind": str(f["kind"]), "start": int(f["start"]), "end": int(f["end"])}
                for f in findings
            ],
        )
        for report_id, findings in rows
    ]


def checked_text(conn: Connection, report_id: int) -> CheckedText | None:
    """The report's de-identified text and findings, or None if it has no checked text yet."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT state, deidentified_text, check_findings FROM report WHERE id = %s",
            (report_id,),
        )
        row = cur.fetchone()
    if row is None or row[1] is None:
        return None
    state, text, findings = row
    return CheckedText(state=state, text=text, findings=list(findings or []))


def reviewer_name() -> str:
    """The operating-system user running the review (recorded as ``reviewed_by``)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _decide(conn: Connection, report_id: int, reviewer: str, new_state: str) -> bool:
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE report SET state = %s, reviewed_by = %s, reviewed_at = now() "
            "WHERE id = %s AND state = 'flagged'",
            (new_state, reviewer, report_id),
        )
        return cur.rowcount == 1


def approve(conn: Connection, report_id: int, reviewer: str | None = None) -> bool:
    """Release a flagged report for export; True if it was flagged and is now approved."""
    return _decide(conn, report_id, reviewer or reviewer_name(), "approved")


def reject(conn: Connection, report_id: int, reviewer: str | None = None) -> bool:
    """Withhold a flagged report for good; True if it was flagged and is now rejected."""
    return _decide(conn, report_id, reviewer or reviewer_name(), "rejected")
