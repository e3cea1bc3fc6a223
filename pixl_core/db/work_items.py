"""Recording an extract and its work items: one imaging and one report item per study.

``record_extract`` inserts the extract and one imaging and one report work item per (project,
MRN, accession number), with ``ON CONFLICT DO NOTHING`` so that running it twice adds nothing.
The unique constraints make "once per project" a fact of the schema. It takes what the reader
(``pixl_cli.extract_reader``) validated; it never reads files itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from psycopg2.extras import execute_values

from pixl_core.db.connection import Connection

_BATCH = 1000

ProgressCallback = Callable[[int, int], None]


class ExtractRecord(Protocol):
    """What is recorded of a validated extract (``pixl_cli.extract_reader.Extract``)."""

    source_path: Path
    project: str
    extract_datetime: datetime
    omop_es_hash: str | None
    cohort: pd.DataFrame
    rows_without_links: int
    duplicate_rows: int


@dataclass(frozen=True)
class PopulateResult:
    """What ``populate`` did, in counts only (safe to print and log)."""

    extract_id: int
    project: str
    new_extract: bool
    added_studies: int
    existing_studies: int
    added_reports: int
    existing_reports: int
    rows_without_links: int
    duplicate_rows: int
    staging_path: Path | None


def _rows(cohort: pd.DataFrame) -> Iterator[tuple[Any, ...]]:
    study_uids = (
        cohort["study_uid"] if "study_uid" in cohort else pd.Series(None, index=cohort.index)
    )
    for (mrn, accession, procedure_id, study_datetime), study_uid in zip(
        cohort[["mrn", "accession_number", "procedure_occurrence_id", "study_datetime"]].itertuples(
            index=False, name=None
        ),
        study_uids,
        strict=True,
    ):
        yield (
            mrn,
            accession,
            None if pd.isna(procedure_id) else int(procedure_id),
            None if pd.isna(study_datetime) else study_datetime.to_pydatetime(),
            None if pd.isna(study_uid) else str(study_uid),
        )


def record_extract(
    conn: Connection,
    extract: ExtractRecord,
    staging_path: Path | None,
    on_progress: ProgressCallback | None = None,
    *,
    priority: int = 0,
    reprioritise: bool = False,
) -> PopulateResult:
    """Record the extract and its imaging and report work items; stage its public files.

    New items get ``priority`` (claimed before queued items of lower priority). With
    ``reprioritise``, the cohort's items already recorded and still ``queued`` take it too, so
    ``pixl populate EXTRACT --priority 10`` run again moves a waiting cohort ahead.

    Everything in the database happens in one transaction: a failure leaves nothing behind.
    Work items that already exist for the project (from this or an earlier extract) are left
    as they are, so running this twice adds nothing. ``on_progress(done, total)`` is called
    as rows are loaded.
    """
    rows = list(_rows(extract.cohort))
    total = len(rows)
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO extract (project, extract_datetime, omop_es_hash, source_path,
                                 public_staging_path)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (project, extract_datetime) DO UPDATE
                SET public_staging_path = COALESCE(EXCLUDED.public_staging_path,
                                                   extract.public_staging_path)
            RETURNING id, (xmax = 0) AS inserted
            """,
            (
                extract.project,
                extract.extract_datetime,
                extract.omop_es_hash,
                str(extract.source_path),
                str(staging_path) if staging_path else None,
            ),
        )
        extract_id, new_extract = cur.fetchone()
        cur.execute(
            """
            CREATE TEMP TABLE pixl_incoming (
                mrn text NOT NULL, accession_number text NOT NULL,
                procedure_occurrence_id bigint, study_datetime timestamp, study_uid text
            ) ON COMMIT DROP
            """
        )
        for start in range(0, total, _BATCH):
            execute_values(cur, "INSERT INTO pixl_incoming VALUES %s", rows[start : start + _BATCH])
            if on_progress:
                on_progress(min(start + _BATCH, total), total)
        cur.execute(
            "SELECT count(*) FROM (SELECT DISTINCT mrn, accession_number FROM pixl_incoming) k"
        )
        (distinct_studies,) = cur.fetchone()
        # One study per (mrn, accession number): if OMOP ES gave several procedures for one
        # accession number, the lowest procedure id is kept. A Study Instance UID the cohort
        # knows is recorded: the archive is then asked by it (issue 11). Studies found behind
        # the same accession number are split off later by orthanc-raw (split_from).
        cur.execute(
            """
            INSERT INTO study (project, extract_id, procedure_occurrence_id, mrn,
                               accession_number, study_datetime, priority, study_uid)
            SELECT DISTINCT ON (mrn, accession_number)
                   %(project)s, %(extract_id)s, procedure_occurrence_id, mrn, accession_number,
                   study_datetime, %(priority)s, study_uid
            FROM pixl_incoming
            ORDER BY mrn, accession_number, procedure_occurrence_id NULLS LAST, study_datetime
            ON CONFLICT (project, mrn, accession_number) WHERE split_from IS NULL DO NOTHING
            """,
            {"project": extract.project, "extract_id": extract_id, "priority": priority},
        )
        added_studies = cur.rowcount
        cur.execute(
            """
            INSERT INTO report (project, extract_id, study_id, procedure_occurrence_id, mrn,
                                accession_number, study_datetime, priority)
            SELECT s.project, %(extract_id)s, s.id, s.procedure_occurrence_id, s.mrn,
                   s.accession_number, s.study_datetime, %(priority)s
            FROM study s
            JOIN (SELECT DISTINCT mrn, accession_number FROM pixl_incoming) i
              ON s.mrn = i.mrn AND s.accession_number = i.accession_number
            WHERE s.project = %(project)s AND s.split_from IS NULL
            ON CONFLICT (project, mrn, accession_number) DO NOTHING
            """,
            {"project": extract.project, "extract_id": extract_id, "priority": priority},
        )
        added_reports = cur.rowcount
        if reprioritise:
            for table in ("study", "report"):
                cur.execute(
                    f"UPDATE {table} t SET priority = %(priority)s "
                    "FROM (SELECT DISTINCT mrn, accession_number FROM pixl_incoming) i "
                    "WHERE t.project = %(project)s AND t.state = 'queued' "
                    "AND t.mrn = i.mrn AND t.accession_number = i.accession_number "
                    "AND t.priority <> %(priority)s",
                    {"project": extract.project, "priority": priority},
                )
    return PopulateResult(
        extract_id=extract_id,
        project=extract.project,
        new_extract=new_extract,
        added_studies=added_studies,
        existing_studies=distinct_studies - added_studies,
        added_reports=added_reports,
        existing_reports=distinct_studies - added_reports,
        rows_without_links=extract.rows_without_links,
        duplicate_rows=extract.duplicate_rows,
        staging_path=staging_path,
    )


def split_studies(
    conn: Connection, item_id: int, study_uids: list[str], *, awaiting_archive: str | None = None
) -> int:
    """The archive holds several studies behind the accession number of work item ``item_id``:
    keep the first UID (sorted, so every try picks the same) on the item itself and give each
    other one a work item of its own (``split_from``), queued, with the same cohort facts
    (MRN, accession number, procedure id, extract, priority). Return how many were added.

    One transaction; idempotent (a retried split adds nothing twice). The report stays one per
    accession number, on the item the cohort gave: every study's export carries the same
    hashed accession number, which is what the radiology parquet links by.
    ``awaiting_archive``: the archive that answered, when not the primary, so the new items
    ask it directly.
    """
    first, *others = sorted(study_uids)
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE study SET study_uid = %s WHERE id = %s AND split_from IS NULL",
            (first, item_id),
        )
        if not others:
            return 0
        cur.execute(
            """
            INSERT INTO study (project, extract_id, procedure_occurrence_id, mrn,
                               accession_number, study_datetime, priority, study_uid, split_from,
                               awaiting_archive)
            SELECT p.project, p.extract_id, p.procedure_occurrence_id, p.mrn,
                   p.accession_number, p.study_datetime, p.priority, u.uid, p.id, %(awaiting)s
            FROM study p, unnest(%(uids)s::text[]) AS u (uid)
            WHERE p.id = %(id)s
            ON CONFLICT (split_from, study_uid) WHERE split_from IS NOT NULL DO NOTHING
            """,
            {"awaiting": awaiting_archive, "uids": others, "id": item_id},
        )
        return cur.rowcount
