"""Review of flagged reports: list them, approve, redact or reject them, and the record of it.

A report the second-method check flagged stays ``flagged`` until a person decides:

- **approve** releases the de-identified text exactly as it is (what the checker found stays);
- **redact** releases it with every finding masked (``pixl_ehr.redaction``), after the masked
  text has passed the same check again (``prepare_redaction``);
- **reject** withholds it for good.

Every decision needs a reason and an operator, and is recorded in ``report_review`` (migration
0006): who, when, the decision, the reason, the findings counted by kind, and for a release the
SHA-256 of the exact text released (``released_sha256``) and of the de-identified text it was
made from (``source_sha256``). The released text itself is kept in ``report.released_text``;
the export (``pixl_ehr.radiology_parquet``) writes it only while both digests still hold.

Each decision is one transaction around a conditional ``UPDATE … WHERE id = %s AND state =
'flagged' AND deidentified_text = %s``: deciding twice, on a report that is not flagged, or on a
text other than the one the operator was shown changes nothing and returns False, so two
reviewers cannot both "win" and nobody approves a text they did not see.

Who decides is ``PIXL_OPERATOR`` when set (a staff user name, e.g. where several people share
one service account), else the operating-system user. Listings and the history carry report
ids, kinds, offsets and counts only, never report text; only ``load`` returns the text, for the
review commands run inside the hospital.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg2.extras import Json

from pixl_core.db.connection import Connection
from pixl_core.errors import PixlConfigError, PixlError
from pixl_ehr import redaction
from pixl_ehr.report_check import check_text

Finding = dict[str, Any]

OPERATOR_ENV = "PIXL_OPERATOR"
_OPERATOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")  # as the migration's CHECK
REASON_MIN, REASON_MAX = 3, 500
DECISIONS = ("approved", "redacted", "rejected")


class RecheckFailed(PixlError):
    """The masked text still flags: nothing is released. Kinds and counts only."""

    code = "review_recheck_flagged"


@dataclass(frozen=True)
class Report:
    """A report under review (identifiers and text left out of ``repr``)."""

    id: int
    project: str
    state: str
    mrn: str = field(repr=False)
    accession_number: str = field(repr=False)
    text: str = field(repr=False)
    findings: list[Finding]


@dataclass(frozen=True)
class Decision:
    """One row of the review record, as ``pixl reports history`` lists it (no text)."""

    review_id: int
    report_id: int
    decision: str
    reviewed_by: str
    reviewed_at: datetime
    reason: str
    findings_by_kind: dict[str, int]
    released_sha256: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "review_id": self.review_id,
            "report_id": self.report_id,
            "decision": self.decision,
            "reviewed_by": self.reviewed_by,
            "reviewed_at": self.reviewed_at.isoformat(),
            "reason": self.reason,
            "findings_by_kind": self.findings_by_kind,
            "released_sha256": self.released_sha256,
        }


def text_sha256(text: str) -> str:
    """The digest a release is recorded and exported under: SHA-256 of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _clean_findings(findings: Iterable[Mapping[str, Any]] | None) -> list[Finding]:
    return [
        {"kind": str(f["kind"]), "start": int(f["start"]), "end": int(f["end"])}
        for f in findings or []
    ]


def findings_by_kind(findings: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``{kind: count}``, sorted by kind: what the record keeps of the findings."""
    return dict(sorted(Counter(str(f["kind"]) for f in findings).items()))


# --- who and why --------------------------------------------------------------------------------


def operator_name() -> str:
    """Who is deciding: ``PIXL_OPERATOR``, else the operating-system user.

    Raises PixlConfigError (one line, naming the fix) when neither gives a usable user name:
    a decision nobody can be held to is not recorded.
    """
    value = os.environ.get(OPERATOR_ENV, "").strip()
    source = OPERATOR_ENV
    if not value:
        source = "the operating-system user"
        try:
            value = getpass.getuser()
        except (KeyError, OSError):
            value = ""
    if not _OPERATOR.match(value):
        raise PixlConfigError(
            f"cannot tell who is deciding ({source} is not a user name of letters, digits and "
            f"._@-, at most 64): set {OPERATOR_ENV} to your staff user name"
        )
    return value


def validate_reason(reason: str | None, command: str) -> str:
    """The reason, stripped; PixlConfigError naming the fix when missing or not one line."""
    if reason is None or not reason.strip():
        raise PixlConfigError(
            f'`pixl reports {command}` needs a reason: add --reason "why" (one line, recorded '
            "with your user name; no patient identifiers)"
        )
    reason = reason.strip()
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in reason):
        raise PixlConfigError("--reason must be one line of text: remove line breaks and tabs")
    if not REASON_MIN <= len(reason) <= REASON_MAX:
        raise PixlConfigError(
            f"--reason must be {REASON_MIN} to {REASON_MAX} characters: say briefly why"
        )
    return reason


def check_reason(report: Report, reason: str, identifiers: Mapping[str, Any]) -> None:
    """Refuse a reason that holds one of the patient's identifiers or an identifier pattern:
    the record is read outside the review, so it must not become a way out."""
    flagged, findings = check_text(reason, report.mrn, report.accession_number, identifiers)
    if flagged:
        kinds = ", ".join(findings_by_kind(findings))
        raise PixlConfigError(
            f"--reason looks like it holds an identifier ({kinds}): describe the decision "
            "without it"
        )


# --- reading ------------------------------------------------------------------------------------


def list_flagged(conn: Connection, project: str) -> list[tuple[int, list[Finding]]]:
    """``(report id, [{"kind", "start", "end"}, ...])`` of the project's flagged reports."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, coalesce(check_findings, '[]'::jsonb) FROM report "
            "WHERE project = %s AND state = 'flagged' ORDER BY id",
            (project,),
        )
        rows = cur.fetchall()
    return [(int(report_id), _clean_findings(findings)) for report_id, findings in rows]


def load(conn: Connection, report_id: int) -> Report | None:
    """The report with its de-identified text and findings, or None if it has no text yet."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, project, state, mrn, accession_number, deidentified_text, check_findings "
            "FROM report WHERE id = %s",
            (report_id,),
        )
        row = cur.fetchone()
    if row is None or row[5] is None:
        return None
    return Report(
        id=int(row[0]),
        project=row[1],
        state=row[2],
        mrn=row[3],
        accession_number=row[4],
        text=row[5],
        findings=_clean_findings(row[6]),
    )


def history(conn: Connection, project: str) -> list[Decision]:
    """Every decision on the project's reports, oldest first."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, report_id, decision, reviewed_by, reviewed_at, reason, findings_by_kind, "
            "released_sha256 FROM report_review WHERE project = %s ORDER BY reviewed_at, id",
            (project,),
        )
        rows = cur.fetchall()
    return [
        Decision(
            review_id=int(r[0]),
            report_id=int(r[1]),
            decision=r[2],
            reviewed_by=r[3],
            reviewed_at=r[4],
            reason=r[5],
            findings_by_kind={str(k): int(v) for k, v in dict(r[6]).items()},
            released_sha256=r[7],
        )
        for r in rows
    ]


# --- deciding -----------------------------------------------------------------------------------


def prepare_redaction(report: Report, identifiers: Mapping[str, Any]) -> str:
    """The report's text with every finding masked, checked again with the patient's
    identifiers; raises RecheckFailed (kinds and counts) if the masked text still flags."""
    try:
        masked = redaction.mask(report.text, report.findings)
    except ValueError:
        raise RecheckFailed(
            f"report {report.id}'s findings do not fit its text: it cannot be redacted; "
            f"reject it (`pixl reports reject {report.id} --reason …`)"
        ) from None
    flagged, left = check_text(masked, report.mrn, report.accession_number, identifiers)
    if flagged:
        counts = ", ".join(f"{kind} {n}" for kind, n in findings_by_kind(left).items())
        raise RecheckFailed(
            f"report {report.id}: the masked text still flags ({counts}), so it was not "
            "released; the checker now finds more than it found when the report was checked: "
            f"reject it (`pixl reports reject {report.id} --reason …`)"
        )
    return masked


def _release(
    conn: Connection,
    report: Report,
    decision: str,
    released: str,
    reason: str,
    operator: str,
) -> bool:
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE report SET state = 'approved', released_text = %s, reviewed_by = %s, "
            "reviewed_at = now() WHERE id = %s AND state = 'flagged' AND deidentified_text = %s",
            (released, operator, report.id, report.text),
        )
        if cur.rowcount != 1:
            return False
        _record(
            cur,
            report.id,
            report.project,
            decision,
            operator,
            reason,
            report.findings,
            text_sha256(report.text),
            text_sha256(released),
        )
    return True


def _record(
    cur: Any,
    report_id: int,
    project: str,
    decision: str,
    operator: str,
    reason: str,
    findings: Iterable[Mapping[str, Any]],
    source_sha256: str | None,
    released_sha256: str | None,
) -> None:
    cur.execute(
        "INSERT INTO report_review (report_id, project, decision, reviewed_by, reason, "
        "findings_by_kind, source_sha256, released_sha256) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            report_id,
            project,
            decision,
            operator,
            reason,
            Json(findings_by_kind(findings)),
            source_sha256,
            released_sha256,
        ),
    )


def approve(conn: Connection, report: Report, reason: str, operator: str) -> bool:
    """Release ``report.text`` unchanged; True if the report was flagged with exactly that
    text and is now approved (and the decision recorded)."""
    return _release(conn, report, "approved", report.text, reason, operator)


def redact(conn: Connection, report: Report, masked: str, reason: str, operator: str) -> bool:
    """Release ``masked`` (from ``prepare_redaction``) in place of ``report.text``; True if
    the report was flagged with exactly ``report.text`` and is now released masked."""
    return _release(conn, report, "redacted", masked, reason, operator)


def reject(conn: Connection, report_id: int, reason: str, operator: str) -> bool:
    """Withhold a flagged report for good; True if it was flagged and is now rejected."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE report SET state = 'rejected', released_text = NULL, reviewed_by = %s, "
            "reviewed_at = now() WHERE id = %s AND state = 'flagged' "
            "RETURNING project, check_findings",
            (operator, report_id),
        )
        row = cur.fetchone()
        if row is None:
            return False
        project, findings = row
        _record(
            cur,
            report_id,
            project,
            "rejected",
            operator,
            reason,
            _clean_findings(findings),
            None,
            None,
        )
    return True
