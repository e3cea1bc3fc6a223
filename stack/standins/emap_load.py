"""Load synthetic radiology reports and patient demographics into the demo's EMAP schema.

The demo and the tests have no hospital EMAP, so the synthetic cohort's reports are written to
the schema ``emap`` (``stack/emap_schema.sql``) of the local Postgres, where the EHR module's
query (``ehr/pixl_ehr/sql/report.sql``) finds them exactly as it would in the hospital.

Inputs are plain data so that this does not depend on the cohort generator's classes:

- ``reports.jsonl``: one JSON object a line, ``{"mrn", "accession_number", "narrative",
  "impression", "addenda": [...]}`` (any text part may be missing or empty);
- ``patients``: dicts with ``mrn`` and any of ``name``, ``given_name``, ``family_name``,
  ``nhs_number``, ``date_of_birth`` (``YYYY-MM-DD`` or a date), ``address``, ``postcode``,
  ``phone`` (a few common spellings such as ``nhs`` or ``dob`` are accepted too). Several
  dicts for one MRN (e.g. one per study) are fine: the first one with a value wins per field.

Loading is idempotent: patients and reports are upserted by MRN and (MRN, accession number),
and a report's sections are replaced, so loading the same files twice changes nothing.

Run as ``python -m stack.standins.emap_load DB_URL reports.jsonl [patients.json]``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psycopg2

SCHEMA_FILE = Path(__file__).with_name("emap_schema.sql")

# Accepted spellings of each patient field, first match wins.
_PATIENT_KEYS: dict[str, tuple[str, ...]] = {
    "name": ("name", "full_name", "patient_name"),
    "given_name": ("given_name", "first_name", "firstname", "forename"),
    "family_name": ("family_name", "last_name", "lastname", "surname"),
    "nhs_number": ("nhs_number", "nhs"),
    "date_of_birth": ("date_of_birth", "dob", "birth_date"),
    "address": ("address", "home_address"),
    "postcode": ("postcode", "post_code", "home_postcode"),
    "phone": ("phone", "phone_number", "telephone", "home_phone"),
}


@dataclass(frozen=True)
class LoadResult:
    """Counts only, safe to print."""

    patients: int
    reports: int
    sections: int


def apply_schema(conn: psycopg2.extensions.connection) -> None:
    """Create the ``emap`` schema and tables if they are not there yet."""
    with conn, conn.cursor() as cur:
        cur.execute(SCHEMA_FILE.read_text())


def _pick(patient: Mapping[str, Any], field: str) -> Any:
    for key in _PATIENT_KEYS[field]:
        value = patient.get(key)
        if value not in (None, ""):
            return value
    return None


def _as_date(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _merge_patients(patients: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """One record per MRN, taking for each field the first non-empty value seen."""
    merged: dict[str, dict[str, Any]] = {}
    for patient in patients:
        mrn = str(patient.get("mrn") or "").strip()
        if not mrn:
            continue
        record = merged.setdefault(mrn, dict.fromkeys(_PATIENT_KEYS))
        for field in _PATIENT_KEYS:
            if record[field] is None:
                record[field] = _pick(patient, field)
    for record in merged.values():
        given, family = record["given_name"], record["family_name"]
        if (given is None or family is None) and record["name"]:
            parts = str(record["name"]).split()
            record["given_name"] = given or parts[0]
            record["family_name"] = family or (parts[-1] if len(parts) > 1 else None)
        middle = None
        if record["name"] and record["given_name"] and record["family_name"]:
            inner = str(record["name"]).split()[1:-1]
            middle = " ".join(inner) or None
        record["middle_name"] = middle
        record["date_of_birth"] = _as_date(record["date_of_birth"])
    return merged


def _read_reports(path: Path) -> list[dict[str, Any]]:
    reports = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                report = json.loads(line)
            except json.JSONDecodeError:
                # The line is not echoed: it holds report text.
                raise ValueError(f"{Path(path).name} line {number} is not valid JSON") from None
            if not report.get("mrn") or not report.get("accession_number"):
                raise ValueError(f"{Path(path).name} line {number} lacks mrn or accession_number")
            reports.append(report)
    return reports


def _sections(report: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    sections: list[tuple[str, int, str]] = []
    for kind in ("narrative", "impression"):
        text = report.get(kind)
        if text and str(text).strip():
            sections.append((kind, 0, str(text)))
    addenda = report.get("addenda") or []
    if isinstance(addenda, str):
        addenda = [addenda]
    for order, text in enumerate(addenda):
        if text and str(text).strip():
            sections.append(("addendum", order, str(text)))
    return sections


def _upsert_mrn(cur: Any, mrn: str, nhs_number: str | None) -> int:
    cur.execute(
        "INSERT INTO emap.mrn (mrn, nhs_number) VALUES (%s, %s) "
        "ON CONFLICT (mrn) DO UPDATE SET nhs_number = "
        "COALESCE(EXCLUDED.nhs_number, emap.mrn.nhs_number) RETURNING mrn_id",
        (mrn, nhs_number),
    )
    return int(cur.fetchone()[0])


def load_reports(
    db_url: str, reports_jsonl: Path, patients: Iterable[Mapping[str, Any]]
) -> LoadResult:
    """Create the EMAP schema if needed and upsert the patients and their reports.

    A report whose MRN is not among ``patients`` is still loaded (EMAP knows the MRN but no
    demographics), so the EHR module's check then runs with the MRN alone.
    """
    merged = _merge_patients(patients)
    reports = _read_reports(Path(reports_jsonl))
    conn = psycopg2.connect(db_url, application_name="pixl-emap-load")
    try:
        apply_schema(conn)
        sections_loaded = 0
        with conn, conn.cursor() as cur:
            for mrn, record in merged.items():
                mrn_id = _upsert_mrn(cur, mrn, record["nhs_number"])
                cur.execute(
                    """
                    INSERT INTO emap.core_demographic (mrn_id, firstname, middlename, lastname,
                        date_of_birth, home_address, home_postcode, home_phone)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (mrn_id) DO UPDATE SET
                        firstname = EXCLUDED.firstname, middlename = EXCLUDED.middlename,
                        lastname = EXCLUDED.lastname, date_of_birth = EXCLUDED.date_of_birth,
                        home_address = EXCLUDED.home_address,
                        home_postcode = EXCLUDED.home_postcode, home_phone = EXCLUDED.home_phone
                    """,
                    (
                        mrn_id,
                        record["given_name"],
                        record["middle_name"],
                        record["family_name"],
                        record["date_of_birth"],
                        record["address"],
                        record["postcode"],
                        record["phone"],
                    ),
                )
            for report in reports:
                mrn_id = _upsert_mrn(cur, str(report["mrn"]).strip(), None)
                cur.execute(
                    "INSERT INTO emap.radiology_report (mrn_id, accession_number) "
                    "VALUES (%s, %s) ON CONFLICT (mrn_id, accession_number) "
                    "DO UPDATE SET stored_from = emap.radiology_report.stored_from "
                    "RETURNING radiology_report_id",
                    (mrn_id, str(report["accession_number"]).strip()),
                )
                report_id = cur.fetchone()[0]
                cur.execute(
                    "DELETE FROM emap.radiology_report_section WHERE radiology_report_id = %s",
                    (report_id,),
                )
                sections = _sections(report)
                cur.executemany(
                    "INSERT INTO emap.radiology_report_section "
                    "(radiology_report_id, section_kind, section_order, section_text) "
                    "VALUES (%s, %s, %s, %s)",
                    [(report_id, kind, order, text) for kind, order, text in sections],
                )
                sections_loaded += len(sections)
    finally:
        conn.close()
    return LoadResult(patients=len(merged), reports=len(reports), sections=sections_loaded)


def load_cohort_reports(db_url: str, cohort: Any) -> LoadResult:
    """Load a synthetic cohort's reports (``stack.synthetic.cohort.Cohort``, used duck-typed: its
    ``reports_path`` and its ``studies``, each with ``checker_identifiers()``)."""
    patients = [study.checker_identifiers() for study in cohort.studies]
    return load_reports(db_url, Path(cohort.reports_path), patients)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m stack.standins.emap_load DB_URL reports.jsonl [patients.json]")
        return 2
    patients = json.loads(Path(args[2]).read_text()) if len(args) == 3 else []
    result = load_reports(args[0], Path(args[1]), patients)
    print(
        f"EMAP: {result.patients} patients, {result.reports} reports "
        f"({result.sections} sections) loaded"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
