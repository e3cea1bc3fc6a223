"""Shared helpers for the EHR module's unit tests: EMAP content, report work items, fakes.

Everything here is synthetic: the names and numbers below are invented.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pixl_core import public_scan
from pixl_core.db.connection import Connection
from pixl_core.text.checker import CheckResult, Finding, PatientIdentifiers
from pixl_ehr.cogstack import CogstackError
from stack.standins.emap_load import load_reports
from stack.synthetic.omop_es import EXAMPLE_PERSONS, EXAMPLE_PROCEDURES, write_public

PROJECT = "chest-xray"
SECRET = secrets.token_hex(32).encode()  # drawn per run: no key is written in the repository

PATIENTS: list[dict[str, Any]] = [
    {
        "mrn": "MRN0001",
        "name": "Alice Quintrell",
        "given_name": "Alice",
        "family_name": "Quintrell",
        "nhs_number": "9434765919",
        "date_of_birth": "1961-04-12",
        "address": "12 Larkspur Road, Exeter EX4 6PL",
        "postcode": "EX4 6PL",
        "phone": "01632 960123",
    },
    {
        "mrn": "MRN0002",
        "name": "Bertram Oakhurst",
        "given_name": "Bertram",
        "family_name": "Oakhurst",
        "nhs_number": "9434765870",
        "date_of_birth": "1950-11-02",
        "address": "3 Mill Lane, Truro TR1 2AB",
        "postcode": "TR1 2AB",
        "phone": "01632 960456",
    },
]

REPORTS: list[dict[str, Any]] = [
    {
        "mrn": "MRN0001",
        "accession_number": "ACC0001",
        "narrative": "PA chest radiograph. Heart size normal.",
        "impression": "No acute cardiopulmonary abnormality.",
        "addenda": ["Addendum one: compared with prior.", "Addendum two: discussed."],
    },
    {
        "mrn": "MRN0002",
        "accession_number": "ACC0002",
        "narrative": "AP chest. Mr Oakhurst has a right basal opacity.",
        "impression": "Right lower lobe consolidation.",
        "addenda": [],
    },
]


def load_emap(
    db_url: str,
    tmp_path: Path,
    reports: list[dict[str, Any]] | None = None,
    patients: list[dict[str, Any]] | None = None,
) -> None:
    """Write ``reports`` as reports.jsonl and load them with the patients into ``emap``."""
    path = tmp_path / "reports.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (reports or REPORTS)))
    load_reports(db_url, path, patients if patients is not None else PATIENTS)


def add_extract(
    conn: Connection,
    studies: list[tuple[str, str, int | None]],
    *,
    project: str = PROJECT,
    staging_path: Path | None = None,
    extract_datetime: datetime | None = None,
) -> tuple[int, list[int]]:
    """An extract row and one report work item per ``(mrn, accession, procedure id)``."""
    when = extract_datetime or datetime(2024, 3, 1, 10, 15, tzinfo=UTC)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO extract (project, extract_datetime, omop_es_hash, source_path, "
            "public_staging_path) VALUES (%s, %s, 'abc123', '/nowhere', %s) RETURNING id",
            (project, when, str(staging_path) if staging_path else None),
        )
        extract_id = cur.fetchone()[0]
        ids = []
        for mrn, accession, procedure_id in studies:
            cur.execute(
                "INSERT INTO report (project, extract_id, procedure_occurrence_id, mrn, "
                "accession_number) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (project, extract_id, procedure_id, mrn, accession),
            )
            ids.append(cur.fetchone()[0])
    return extract_id, ids


def stage_public(tmp_path: Path, when: str = "2024-03-01T10-15-00") -> Path:
    """A staging folder like ``pixl populate`` leaves: STAGING/<project>/<stamp>/public/, with
    the record of the scan populate makes (the export requires it)."""
    folder = tmp_path / "staging" / PROJECT / when / "public"
    write_public(folder, EXAMPLE_PERSONS, EXAMPLE_PROCEDURES)
    digests = {path.name: public_scan.sha256_of(path) for path in folder.glob("*.parquet")}
    public_scan.write_scan_record(folder.parent, digests, public_scan.Identifiers())
    return folder


def set_state(conn: Connection, report_id: int, state: str, **fields: Any) -> None:
    """Put a report straight into a state (with text and verdict), bypassing the worker."""
    values = {
        "deidentified_text": f"de-identified report {report_id}",
        "check_flagged": state in ("flagged", "approved", "rejected"),
        "check_findings": json.dumps([]),
        **fields,
    }
    assignments = ", ".join(f"{name} = %({name})s" for name in values)
    with conn, conn.cursor() as cur:
        cur.execute(
            f"UPDATE report SET state = %(state)s, {assignments} WHERE id = %(id)s",
            {**values, "state": state, "id": report_id},
        )


def row(conn: Connection, report_id: int) -> dict[str, Any]:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM report WHERE id = %s", (report_id,))
        names = [d.name for d in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


@dataclass
class FakeCogstack:
    """Replaces each word of ``remove`` by ``[REDACTED]``; or raises ``error`` if set."""

    remove: tuple[str, ...] = ("Quintrell",)
    error: str | None = None
    calls: list[tuple[str, int]] = field(default_factory=list)

    def _clean(self, text: str) -> str:
        for word in self.remove:
            text = text.replace(word, "[REDACTED]")
        return text

    def deidentify(self, text: str) -> str:
        self.calls.append(("single", 1))
        if self.error:
            raise CogstackError(self.error, f"Cogstack API fake: failed ({self.error})")
        return self._clean(text)

    def deidentify_bulk(self, texts: list[str]) -> list[str]:
        self.calls.append(("bulk", len(texts)))
        if self.error:
            raise CogstackError(self.error, f"Cogstack API fake: failed ({self.error})")
        return [self._clean(t) for t in texts]


# The checker's own types: the fake below differs only in how it finds things.
Identifiers = PatientIdentifiers


def fake_check(text: str, identifiers: Identifiers) -> CheckResult:
    """Flags the family name, the MRN and the accession number where they occur (a stand-in for
    the real checker, which has had an accession number field since issue 9)."""
    findings = []
    for kind, value in (
        ("family_name", identifiers.family_name),
        ("mrn", identifiers.mrn),
        ("accession_number", identifiers.accession_number),
    ):
        if value and value in text:
            start = text.index(value)
            findings.append(Finding(kind, start, start + len(value)))
    return CheckResult(bool(findings), findings)
