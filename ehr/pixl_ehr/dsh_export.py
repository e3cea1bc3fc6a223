"""Export of one extract's parquet files to the project's DSH over FTPS.

``POST /export/{project}`` of the EHR service (``pixl export-patient-data``) runs
:func:`export_project`; the service itself is only the HTTP layer (``pixl_ehr.service``).

DSH layout of one extract (``<stamp>`` is the extract datetime as ``YYYY-MM-DDTHH-MM-SS``, the
name of its staging folder)::

    <project>/<stamp>/parquet/public/<file>.parquet        the OMOP ES public files, as staged
    <project>/<stamp>/parquet/radiology/radiology.parquet  see pixl_ehr.radiology_parquet
    <project>/<stamp>/parquet/manifest.json                every file above, SHA-256 and size

The server is the one ``projects/<project>.yaml`` names (:func:`dsh_client`). Running an export
again re-sends nothing that is already there and complete: a file is skipped when the DSH holds
a file of the same size under its name *and* the manifest already in the DSH gives it the same
SHA-256 (the manifest is written last, so it only vouches for files that were complete when it
was written). Uploads go to a temporary name and are renamed (``FtpsClient``). Reports written
to the radiology parquet are marked ``exported`` once the manifest is there. A flagged report
goes in only with the exact text a reviewer released (``pixl_ehr.radiology_parquet``); one whose
text no recorded release applies to is withheld, counted in ``reports_withheld`` and logged by
report id only.

Before anything is sent, every staged public file is checked again (``pixl_core.public_scan``):
it must be the very file ``pixl populate`` scanned (its SHA-256 in the scan record next to the
staging folder), hold only OMOP CDM columns the project lets out, and hold no value equal to
an MRN or accession number PIXL's database has for the project, nor to any identifier of the
extract's private link files while its folder is still readable here. A file that fails refuses
the whole export, so nothing reaches the DSH.

An export that cannot start raises :class:`ExportRefused` with the HTTP status that says why:
unknown extract → 404; nothing to export, or an export of the project already running → 409;
a public file that may not leave → 422 (one line naming the file, table and column, never a
value).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pixl_core import db
from pixl_core.config.projects import load_project
from pixl_core.db.states import REPORT_BUSY
from pixl_core.errors import PixlError
from pixl_core.hashing import ProjectHasher
from pixl_core.public_scan import (
    ACCESSION,
    MRN,
    Identifiers,
    PublicFileRefused,
    check_public_file,
    link_identifiers,
    read_scan_record,
)
from pixl_core.transport.ftps import FtpsClient, FtpsSettings
from pixl_ehr import radiology_parquet

logger = logging.getLogger("pixl.ehr.export")

MANIFEST_NAME = "manifest.json"
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}$")


def dsh_client(project: str) -> FtpsClient:
    """A client for the DSH server of ``project``: its file names the server, the environment
    its secrets (read at each export, so a fixed secret applies without a restart)."""
    return FtpsClient(FtpsSettings.for_project(load_project(project)))


class ExportRefused(PixlError):
    """The export cannot start; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _File:
    relative: str  # under <project>/<stamp>/parquet/
    data: bytes | None
    path: Path | None
    sha256: str
    size: int


@dataclass
class ExportResult:
    """What an export did, in counts only (safe to print and log)."""

    project: str
    extract_id: int
    destination: str
    files_sent: int = 0
    files_skipped: int = 0
    reports_in_parquet: int = 0
    reports_exported: int = 0
    reports_flagged: int = 0
    reports_in_progress: int = 0
    # flagged reports whose current text no recorded release applies to (pixl_ehr.review)
    reports_withheld: int = 0
    sent: list[str] = field(default_factory=list)


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _find_extract(
    conn: db.Connection, project: str, extract_id: int | None
) -> tuple[int, datetime, str | None, str | None, str]:
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, extract_datetime, public_staging_path, omop_es_hash, source_path "
            "FROM extract "
            "WHERE project = %s AND (%s::bigint IS NULL OR id = %s) "
            "ORDER BY extract_datetime DESC, id DESC LIMIT 1",
            (project, extract_id, extract_id),
        )
        row = cur.fetchone()
    if row is None:
        if extract_id is not None:
            raise ExportRefused(404, f"project {project} has no extract {extract_id}")
        raise ExportRefused(
            409, f"nothing to export: project {project} has no extract; run `pixl populate` first"
        )
    return row


def _stamp(extract_datetime: datetime, staging_path: str | None) -> str:
    """The extract's folder name: its staging folder's, else the UTC datetime."""
    if staging_path:
        name = Path(staging_path).parent.name
        if _STAMP.match(name):
            return name
    return extract_datetime.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%S")


def _public_files(project: str, staging_path: str | None) -> list[_File]:
    if not staging_path:
        return []
    folder = Path(staging_path)
    if not folder.is_dir():
        raise ExportRefused(
            409,
            f"the staged public files of project {project} are gone from the staging folder: "
            "run `pixl populate` on the extract again",
        )
    files = []
    for path in sorted(folder.glob("*.parquet")):
        sha256, size = _sha256_file(path)
        files.append(_File(f"public/{path.name}", None, path, sha256, size))
    return files


def _cohort_identifiers(conn: db.Connection, project: str, source_path: str) -> Identifiers:
    """The project's MRNs and accession numbers from PIXL's database, and every identifier of
    the extract's private link files if its folder is readable from here."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT mrn, accession_number FROM study WHERE project = %s "
            "UNION SELECT mrn, accession_number FROM report WHERE project = %s",
            (project, project),
        )
        rows = cur.fetchall()
    identifiers = Identifiers.from_values(
        {MRN: (row[0] for row in rows), ACCESSION: (row[1] for row in rows)}
    )
    private = Path(source_path) / "private" if source_path else None
    if private is not None and private.is_dir():
        identifiers = identifiers.merged(link_identifiers(private))
    return identifiers


def _check_public_files(
    conn: db.Connection, project: str, source_path: str, staging_path: str, files: list[_File]
) -> None:
    """Refuse the export unless every staged public file may leave (see the module docstring)."""
    scanned = read_scan_record(Path(staging_path).parent)
    identifiers = _cohort_identifiers(conn, project, source_path)
    allowed = load_project(project).allow_omop_columns
    for item in files:
        assert item.path is not None
        label = item.relative
        if not scanned:
            raise ExportRefused(
                422,
                f"the staged public files of project {project} carry no record of the checks "
                "`pixl populate` makes (staged by an older PIXL?): run `pixl populate` on the "
                "extract again",
            )
        if scanned.get(item.path.name) != item.sha256:
            raise ExportRefused(
                422,
                f"{label} of project {project} is not the file `pixl populate` checked (added "
                "or changed in the staging folder since): run `pixl populate` on the extract "
                "again",
            )
        try:
            check_public_file(item.path, label, project, allowed, identifiers)
        except PublicFileRefused as exc:
            raise ExportRefused(422, str(exc)) from None


def _report_counts(conn: db.Connection, project: str, extract_id: int) -> tuple[int, int]:
    """(flagged awaiting review, still in progress) for the extract."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FILTER (WHERE state = 'flagged'), "
            "count(*) FILTER (WHERE state IN %s) FROM report "
            "WHERE project = %s AND extract_id = %s",
            (REPORT_BUSY, project, extract_id),
        )
        flagged, in_progress = cur.fetchone()
    return int(flagged), int(in_progress)


def _parse_manifest(raw: bytes | None) -> dict[str, str]:
    """``{relative path: sha256}`` from a manifest's bytes; empty if none or unreadable."""
    if raw is None:
        return {}
    try:
        entries = json.loads(raw.decode("utf-8"))["files"]
        return {str(e["path"]): str(e["sha256"]) for e in entries}
    except (ValueError, KeyError, TypeError):
        return {}


def _manifest(
    project: str, extract_datetime: datetime, omop_es_hash: str | None, files: list[_File]
) -> bytes:
    """The manifest's bytes: no export time in it, so the same files give the same manifest."""
    document = {
        "project": project,
        "extract_datetime": extract_datetime.astimezone(UTC).isoformat(),
        "omop_es_hash": omop_es_hash,
        "files": [{"path": f.relative, "sha256": f.sha256, "size": f.size} for f in files],
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def _mark_exported(conn: db.Connection, report_ids: list[int]) -> int:
    if not report_ids:
        return 0
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE report SET state = 'exported', exported_at = now(), claimed_by = NULL, "
            "claimed_until = NULL WHERE id = ANY(%s) AND state IN ('checked', 'approved')",
            (report_ids,),
        )
        return cur.rowcount


def export_project(
    conn: db.Connection,
    project: str,
    client_factory: Callable[[str], FtpsClient],
    hasher: ProjectHasher,
    extract_id: int | None = None,
) -> ExportResult:
    """Push one extract's public parquet files, radiology parquet and manifest to the DSH.

    Only one export per project runs at a time (a Postgres advisory lock), so two operators
    cannot interleave uploads of the same folder.
    """
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"pixl-export:{project}",))
        if not cur.fetchone()[0]:
            raise ExportRefused(409, f"an export of project {project} is already running")
    try:
        return _export(conn, project, client_factory, hasher, extract_id)
    finally:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"pixl-export:{project}",))


def _export(
    conn: db.Connection,
    project: str,
    client_factory: Callable[[str], FtpsClient],
    hasher: ProjectHasher,
    extract_id: int | None,
) -> ExportResult:
    found_id, extract_datetime, staging_path, omop_es_hash, source_path = _find_extract(
        conn, project, extract_id
    )
    folder = f"{project}/{_stamp(extract_datetime, staging_path)}/parquet"
    files = _public_files(project, staging_path)
    if files:
        assert staging_path is not None
        _check_public_files(conn, project, source_path, staging_path, files)
    frame = radiology_parquet.build(conn, project, found_id, hasher)
    report_ids: list[int] = frame.attrs["report_ids"]
    withheld: list[int] = frame.attrs["withheld_report_ids"]
    for report_id in withheld:
        logger.warning(
            "report %d withheld from the radiology parquet of %s: its text is not one a "
            "reviewer released (decide again with `pixl reports approve|redact|reject`)",
            report_id,
            project,
        )
    if report_ids:
        data = radiology_parquet.to_parquet_bytes(frame)
        files.append(
            _File(
                f"radiology/{radiology_parquet.FILE_NAME}",
                data,
                None,
                hashlib.sha256(data).hexdigest(),
                len(data),
            )
        )
    flagged, in_progress = _report_counts(conn, project, found_id)
    result = ExportResult(
        project=project,
        extract_id=found_id,
        destination=folder + "/",
        reports_in_parquet=len(report_ids),
        reports_flagged=flagged,
        reports_in_progress=in_progress,
        reports_withheld=len(withheld),
    )
    if not files:
        raise ExportRefused(
            409,
            f"nothing to export for project {project}: no staged public files and no checked "
            f"or approved report ({in_progress} in progress, {flagged} awaiting review)",
        )
    manifest = _manifest(project, extract_datetime, omop_es_hash, files)
    remote_manifest = f"{folder}/{MANIFEST_NAME}"
    with client_factory(project) as client:
        manifest_there = client.read_bytes(remote_manifest)
        already = _parse_manifest(manifest_there)
        for item in files:
            remote = f"{folder}/{item.relative}"
            if already.get(item.relative) == item.sha256 and client.size(remote) == item.size:
                result.files_skipped += 1
                continue
            if item.data is not None:
                client.upload_bytes(remote, item.data)
            else:
                assert item.path is not None
                client.upload_file(remote, item.path)
            result.files_sent += 1
            result.sent.append(item.relative)
        if manifest_there != manifest:
            client.upload_bytes(remote_manifest, manifest)
            result.files_sent += 1
            result.sent.append(MANIFEST_NAME)
        else:
            result.files_skipped += 1
    result.reports_exported = _mark_exported(conn, report_ids)
    logger.info(
        "export of %s extract %d: %d files sent, %d skipped, %d reports exported",
        project,
        found_id,
        result.files_sent,
        result.files_skipped,
        result.reports_exported,
    )
    return result
