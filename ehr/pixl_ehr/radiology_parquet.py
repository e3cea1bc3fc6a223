"""The radiology parquet: OMOP ES procedure id ↔ hashed accession number ↔ de-identified report.

Researchers link it to the OMOP tables by ``procedure_occurrence_id`` and to the images by
``hashed_accession_number``, which is ``pixl_core.hashing.hash_accession_number`` under the
project's key: the same function orthanc-anon writes into the DICOM AccessionNumber, so the two
match for every study and differ between projects.

Only reports that passed the check (``checked``), were approved by a reviewer (``approved``), or
were already exported in an earlier run (``exported``) are written; flagged, rejected, missing
and failed reports are absent. Exported rows stay in so that building the file again for the
same extract gives the same bytes, which is what lets a second export see the file is already
in the DSH.
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pixl_core.db.connection import Connection
from pixl_core.hashing import ProjectHasher, hash_accession_number

FILE_NAME = "radiology.parquet"
COLUMNS = ("procedure_occurrence_id", "hashed_accession_number", "report_text", "check_status")
EXPORTABLE_STATES = ("checked", "approved", "exported")
SCHEMA = pa.schema(
    [
        pa.field("procedure_occurrence_id", pa.int64()),
        pa.field("hashed_accession_number", pa.string()),
        pa.field("report_text", pa.string()),
        pa.field("check_status", pa.string()),
    ]
)


def exportable_reports(
    conn: Connection, project: str, extract_id: int
) -> list[tuple[int, int | None, str, str, bool]]:
    """``(report id, procedure id, accession number, de-identified text, approved)`` of every
    report of the extract that may leave, ordered by procedure id then report id."""
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            SELECT id, procedure_occurrence_id, accession_number, deidentified_text,
                   coalesce(check_flagged, false) OR state = 'approved'
            FROM report
            WHERE project = %s AND extract_id = %s AND state IN %s
              AND deidentified_text IS NOT NULL
            ORDER BY procedure_occurrence_id NULLS LAST, id
            """,
            (project, extract_id, EXPORTABLE_STATES),
        )
        return list(cur.fetchall())


def build(conn: Connection, project: str, extract_id: int, hasher: ProjectHasher) -> pd.DataFrame:
    """One row per exportable report of the extract (see the module docstring).

    ``check_status`` is ``passed`` when the check found nothing and ``approved`` when it
    flagged the report and a reviewer released it.
    """
    rows = exportable_reports(conn, project, extract_id)
    frame = pd.DataFrame(
        {
            "procedure_occurrence_id": pd.array([r[1] for r in rows], dtype="Int64"),
            "hashed_accession_number": pd.array(
                [hash_accession_number(hasher, r[2]) for r in rows], dtype="string"
            ),
            "report_text": pd.array([r[3] for r in rows], dtype="string"),
            "check_status": pd.array(
                ["approved" if r[4] else "passed" for r in rows], dtype="string"
            ),
        }
    )
    frame.attrs["report_ids"] = [r[0] for r in rows]
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
