"""What PIXL's records say reached a project's DSH folder of images, and the manifest's state.

The one SQL behind the images' ``manifest.json`` (``pixl_core.dsh.manifest_writer``) and
``pixl verify`` (``pixl_core.dsh.verify``):

- ``exported`` reads, in one snapshot, the project's exported studies (pseudonymised study
  UID, SHA-256, instance count, size, extract) with the extracts they came from, and a
  *fingerprint* of exactly those rows;
- ``fingerprints`` computes the same fingerprint for every project in one query, so a writer
  can tell cheaply which manifests no longer say what Postgres says (``stale_projects``);
- ``record_manifest`` remembers the fingerprint a manifest was built from;
- ``requeue_exported`` puts exported studies whose zip is missing or corrupt on the DSH back
  in the queue (one conditional UPDATE: only rows still ``exported`` move).

Rows carry pseudonymised UIDs only: no MRN, accession number or original UID leaves here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from psycopg2.extras import RealDictCursor

from pixl_core.db.connection import Connection
from pixl_core.db.work_queue import check_error_code

# The fingerprint of a project's exported rows: every column the manifest shows, in id order.
# The same expression in both queries below, so their results compare.
_FINGERPRINT = (
    "md5(coalesce(string_agg(concat_ws(':', s.id, s.pseudo_study_uid, s.sha256, "
    "s.instance_count, s.zip_bytes, s.extract_id, extract(epoch FROM s.exported_at)), ',' "
    "ORDER BY s.id), ''))"
)


@dataclass(frozen=True)
class ExportedZip:
    """One study's zip as PIXL recorded it when it reached the DSH."""

    study_id: int
    pseudo_study_uid: str
    sha256: str
    instance_count: int
    zip_bytes: int | None
    extract_id: int | None
    exported_at: datetime | None

    @property
    def file_name(self) -> str:
        return f"{self.pseudo_study_uid}.zip"


@dataclass(frozen=True)
class ExtractInfo:
    """An extract the exported studies came from: when OMOP ES made it, from which commit."""

    id: int
    extract_datetime: datetime
    omop_es_hash: str | None


@dataclass(frozen=True)
class ExportedSnapshot:
    """A project's exported zips and their extracts, read in one snapshot with the fingerprint
    of exactly those rows; ``busy`` counts studies still on their way (queued or in progress),
    whose zips may appear on the DSH before their record does."""

    project: str
    zips: tuple[ExportedZip, ...]
    extracts: tuple[ExtractInfo, ...]
    fingerprint: str
    busy: int


def exported(conn: Connection, project: str) -> ExportedSnapshot:
    """The project's exported studies (state ``exported``) with the fingerprint of those rows."""
    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        # One snapshot for the three reads: the fingerprint is of exactly the rows returned.
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute(
            "SELECT id, pseudo_study_uid, sha256, instance_count, zip_bytes, extract_id, "
            "exported_at FROM study WHERE project = %s AND state = 'exported' ORDER BY id",
            (project,),
        )
        zips = tuple(
            ExportedZip(
                study_id=row["id"],
                pseudo_study_uid=row["pseudo_study_uid"],
                sha256=row["sha256"],
                instance_count=row["instance_count"],
                zip_bytes=row["zip_bytes"],
                extract_id=row["extract_id"],
                exported_at=row["exported_at"],
            )
            for row in cur.fetchall()
        )
        cur.execute(
            f"SELECT {_FINGERPRINT} AS fingerprint FROM study s "
            "WHERE s.project = %s AND s.state = 'exported'",
            (project,),
        )
        fingerprint = cur.fetchone()["fingerprint"]
        cur.execute(
            "SELECT count(*) AS busy FROM study WHERE project = %s "
            "AND state IN ('queued', 'fetching', 'anonymising')",
            (project,),
        )
        busy = cur.fetchone()["busy"]
        extract_ids = sorted({z.extract_id for z in zips if z.extract_id is not None})
        cur.execute(
            "SELECT id, extract_datetime, omop_es_hash FROM extract WHERE id = ANY(%s) ORDER BY id",
            (extract_ids,),
        )
        extracts = tuple(
            ExtractInfo(row["id"], row["extract_datetime"], row["omop_es_hash"])
            for row in cur.fetchall()
        )
    return ExportedSnapshot(project, zips, extracts, fingerprint, busy)


def stale_projects(conn: Connection, projects: Collection[str] | None = None) -> list[str]:
    """Projects whose manifest on the DSH was built from other rows than Postgres holds now:
    exported studies were added, requeued or changed since it was written, or it was never
    written. A project whose studies are all still busy and that has no manifest is not stale
    (there is nothing to list yet). ``projects`` limits the answer."""
    with conn, conn.cursor() as cur:
        cur.execute(
            f"""
            WITH now_exported AS (
                SELECT s.project, {_FINGERPRINT} AS fingerprint FROM study s
                WHERE s.state = 'exported' GROUP BY s.project
            )
            SELECT coalesce(n.project, m.project)
            FROM now_exported n FULL JOIN dsh_manifest m ON m.project = n.project
            WHERE m.fingerprint IS DISTINCT FROM coalesce(n.fingerprint, md5(''))
              AND (%(projects)s::text[] IS NULL OR coalesce(n.project, m.project) = ANY(%(projects)s))
            ORDER BY 1
            """,
            {"projects": sorted(projects) if projects is not None else None},
        )
        return [row[0] for row in cur.fetchall()]


def written_fingerprint(conn: Connection, project: str) -> str | None:
    """The fingerprint of the rows the project's manifest was last built from, if any."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT fingerprint FROM dsh_manifest WHERE project = %s", (project,))
        row = cur.fetchone()
    return row[0] if row else None


def record_manifest(
    conn: Connection, project: str, fingerprint: str, zips: int, written_by: str
) -> None:
    """Remember that the manifest now on the DSH was built from rows of ``fingerprint``."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO dsh_manifest (project, fingerprint, zips, written_by) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (project) DO UPDATE SET "
            "fingerprint = EXCLUDED.fingerprint, zips = EXCLUDED.zips, "
            "written_by = EXCLUDED.written_by, written_at = now()",
            (project, fingerprint, zips, written_by),
        )


def requeue_exported(
    conn: Connection, project: str, pseudo_study_uids: Collection[str], error_code: str
) -> int:
    """Put exported studies of the project back in the queue, due now, with fresh tries; return
    how many moved. Only rows still ``exported`` move (one conditional UPDATE), so running it
    twice, or while another operator does, counts each study once. ``error_code`` says why
    (``dsh_missing``, ``dsh_corrupt``). orthanc-raw then fetches the study again (from its
    cache when it still holds it) and orthanc-anon uploads a fresh zip."""
    check_error_code(error_code)
    if not pseudo_study_uids:
        return 0
    with conn, conn.cursor() as cur:
        # A DICOMweb destination that lost instances: forget PIXL's record of storing them, so
        # the export asks the destination (QIDO-RS) and sends what it no longer holds.
        cur.execute(
            "DELETE FROM dicomweb_instance WHERE study_id IN (SELECT id FROM study "
            "WHERE project = %s AND state = 'exported' AND pseudo_study_uid = ANY(%s))",
            (project, sorted(pseudo_study_uids)),
        )
        cur.execute(
            "UPDATE study SET state = 'queued', attempts = 0, crash_count = 0, "
            "export_attempts = 0, next_attempt_at = now(), claimed_by = NULL, "
            "claimed_until = NULL, last_error_code = %s "
            "WHERE project = %s AND state = 'exported' AND pseudo_study_uid = ANY(%s)",
            (error_code, project, sorted(pseudo_study_uids)),
        )
        return cur.rowcount
