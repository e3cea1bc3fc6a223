"""The radiology parquet: OMOP ES procedure id ↔ hashed accession number ↔ de-identified report.

Researchers link it to the OMOP tables by ``procedure_occurrence_id`` and to the images by
``hashed_accession_number``, which is ``pixl_core.hashing.hash_accession_number`` under the
project's key: the same function orthanc-anon writes into the DICOM AccessionNumber, so the two
match for every study and differ between projects.

Only reports that passed the check (``checked``), were released by a reviewer (``approved``),
or were already exported in an earlier run (``exported``) are written; flagged, rejected,
missing and failed reports are absent. Exported rows stay in so that building the file again for
the same extract gives the same bytes, which is what lets a second export see the file is already
in the DSH.

A report the check flagged is written only with the text a person released (``pixl reports
approve`` or ``redact``, recorded in ``report_review`` by ``pixl_ehr.review``), and only while
that is still true: the text written must have the SHA-256 recorded for the release, and the
report's de-identified text must still have the SHA-256 it had when the decision was made.
Anything else (no recorded decision, an approval made before decisions were recorded, a text
changed since, by a re-run or by hand) withholds the report: it is left out and its id is
listed in ``frame.attrs["withheld_report_ids"]`` for the export to count and log.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pixl_core.db.connection import Connection
from pixl_core.hashing import ProjectHasher, hash_accession_number
from pixl_ehr.review import text_sha256

FILE_NAME = "radiology.parquet"
COLUMNS = ("procedure_occurrence_id", "hashed_accession_number", "report_text", "check_status")
EXPORTABLE_STATES = ("checked", "approved", "exported")
RELEASE_DECISIONS = ("approved", "redacted")
SCHEMA = pa.schema(
    [
        pa.field("procedure_occurrence_id", pa.int64()),
        pa.field("hashed_accession_number", pa.string()),
        pa.field("report_text", pa.string()),
        pa.field("check_status", pa.string()),
    ]
)


@dataclass(frozen=True)
class _Row:
    report_id: int
    procedure_occurrence_id: int | None
    accession_number: str = field(repr=False)
    text: str = field(repr=False)
    check_status: str


def _released(
    text: str,
    released_text: str | None,
    decision: str | None,
    source_sha256: str | None,
    released_sha256: str | None,
) -> str | None:
    """The text a reviewer released for a flagged report, or None if no release holds now."""
    if decision not in RELEASE_DECISIONS or released_text is None:
        return None
    if text_sha256(text) != source_sha256 or text_sha256(released_text) != released_sha256:
        return None
    return released_text


def exportable_reports(
    conn: Connection, project: str, extract_id: int
) -> tuple[list[_Row], list[int]]:
    """The rows to write (ordered by procedure id then report id) and the ids of the flagged
    reports withheld because no recorded release applies to their current text."""
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            SELECT r.id, r.procedure_occurrence_id, r.accession_number, r.deidentified_text,
                   coalesce(r.check_flagged, false) OR r.state = 'approved',
                   r.released_text, v.decision, v.source_sha256, v.released_sha256
            FROM report r
            LEFT JOIN LATERAL (
                SELECT decision, source_sha256, released_sha256 FROM report_review
                WHERE report_id = r.id ORDER BY id DESC LIMIT 1
            ) v ON true
            WHERE r.project = %s AND r.extract_id = %s AND r.state IN %s
              AND r.deidentified_text IS NOT NULL
            ORDER BY r.procedure_occurrence_id NULLS LAST, r.id
            """,
            (project, extract_id, EXPORTABLE_STATES),
        )
        found = cur.fetchall()
    rows: list[_Row] = []
    withheld: list[int] = []
    for report_id, procedure_id, accession, text, reviewed, released, decision, src, rel in found:
        if not reviewed:
            rows.append(_Row(report_id, procedure_id, accession, text, "passed"))
            continue
        out = _released(text, released, decision, src, rel)
        if out is None:
            withheld.append(int(report_id))
        else:
            rows.append(_Row(report_id, procedure_id, accession, out, decision))
    return rows, withheld


def build(conn: Connection, project: str, extract_id: int, hasher: ProjectHasher) -> pd.DataFrame:
    """One row per exportable report of the extract (see the module docstring).

    ``check_status`` is ``passed`` when the check found nothing, ``approved`` when it flagged
    the report and a reviewer released the text as it was, and ``redacted`` when a reviewer
    released it with every finding masked.
    """
    rows, withheld = exportable_reports(conn, project, extract_id)
    frame = pd.DataFrame(
        {
            "procedure_occurrence_id": pd.array(
                [r.procedure_occurrence_id for r in rows], dtype="Int64"
            ),
            "hashed_accession_number": pd.array(
                [hash_accession_number(hasher, r.accession_number) for r in rows], dtype="string"
            ),
            "report_text": pd.array([r.text for r in rows], dtype="string"),
            "check_status": pd.array([r.check_status for r in rows], dtype="string"),
        }
    )
    frame.attrs["report_ids"] = [r.report_id for r in rows]
    frame.attrs["withheld_report_ids"] = withheld
    return frame


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    """The frame as parquet bytes, byte-for-byte the same for the same rows.

    Written through an explicit Arrow schema without pandas metadata, so the file's bytes
    depend only on the rows (a rebuilt file has the same SHA-256 as the one already sent).
    """
    table = pa.Table.from_pandas(
        frame[list(COLUMNS)], schema=SCHEMA, preserve_index=False
    ).replace_schema_metadata(None)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def build_bytes(conn: Connection, project: str, extract_id: int, hasher: ProjectHasher) -> bytes:
    """``build`` then ``to_parquet_bytes``."""
    return to_parquet_bytes(build(conn, project, extract_id, hasher))
