"""The EHR module's HTTP service: runs the report worker and exports parquet files to the DSH.

Run with ``python -m pixl_ehr.service --port N [--host 127.0.0.1]`` (the local stack does, under
supervisord). The report worker (``pixl_ehr.report_worker``) runs in a background thread from
start-up to shut-down; the HTTP side answers:

- ``GET /health`` → 200 while the process is up (what the stack's health check waits for);
- ``GET /status`` → report counts by state per project, and the worker's counters;
- ``POST /export/{project}[?extract_id=N]`` → pushes the extract's public parquet files and the
  radiology parquet over FTPS, then a manifest; answers with counts only.

DSH layout of one extract (``<stamp>`` is the extract datetime as ``YYYY-MM-DDTHH-MM-SS``, the
name of its staging folder)::

    <project>/<stamp>/parquet/public/<file>.parquet        the OMOP ES public files, as staged
    <project>/<stamp>/parquet/radiology/radiology.parquet  see pixl_ehr.radiology_parquet
    <project>/<stamp>/parquet/manifest.json                every file above, SHA-256 and size

Running an export again re-sends nothing that is already there and complete: a file is skipped
when the DSH holds a file of the same size under its name *and* the manifest already in the DSH
gives it the same SHA-256 (the manifest is written last, so it only vouches for files that were
complete when it was written). Uploads go to a temporary name and are renamed (``FtpsClient``).
Reports written to the radiology parquet are marked ``exported`` once the manifest is there.

Errors are one line: unknown project or extract → 404; nothing to export, or an export of the
project already running → 409; the DSH unreachable → 503 with the FTPS error; PIXL's database
unreachable → 503; configuration missing (hash key, FTPS settings) → 500.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request

from pixl_core import db
from pixl_core.config.projects import load_project
from pixl_core.db import work_queue
from pixl_core.db.states import REPORT_BUSY
from pixl_core.errors import PixlConfigError, PixlError
from pixl_core.hashing import ProjectHasher
from pixl_core.transport.ftps import FtpsClient, FtpsError, FtpsSettings
from pixl_ehr import radiology_parquet
from pixl_ehr.report_worker import Deidentifier, ReportWorker, ReportWorkerSettings

logger = logging.getLogger("pixl.ehr.service")

MANIFEST_NAME = "manifest.json"
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}$")


# --- FTPS -------------------------------------------------------------------------------------


class DshClient(FtpsClient):
    """``FtpsClient`` plus reading a small file back (the manifest already in the DSH)."""

    def read_bytes(self, remote_path: str) -> bytes | None:
        """The content of the file at ``remote_path``; None if there is no such file."""
        path = self._absolute(remote_path)

        def read(ftp: Any) -> bytes | None:
            if self._size(ftp, path) is None:
                return None
            buffer = io.BytesIO()
            self._step = "RETR"
            ftp.retrbinary(f"RETR {path}", buffer.write)
            return buffer.getvalue()

        return self._with_retries(read)


def dsh_client_from_env() -> DshClient:
    """A DSH client configured from ``PIXL_DSH_*`` (read at each export, so a fixed setting
    applies without a restart)."""
    return DshClient(FtpsSettings.from_env("PIXL_DSH_"))


# --- export -----------------------------------------------------------------------------------


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
) -> tuple[int, datetime, str | None, str | None]:
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, extract_datetime, public_staging_path, omop_es_hash FROM extract "
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
    client_factory: Callable[[], DshClient],
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
    client_factory: Callable[[], DshClient],
    hasher: ProjectHasher,
    extract_id: int | None,
) -> ExportResult:
    found_id, extract_datetime, staging_path, omop_es_hash = _find_extract(
        conn, project, extract_id
    )
    folder = f"{project}/{_stamp(extract_datetime, staging_path)}/parquet"
    files = _public_files(project, staging_path)
    frame = radiology_parquet.build(conn, project, found_id, hasher)
    report_ids: list[int] = frame.attrs["report_ids"]
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
    )
    if not files:
        raise ExportRefused(
            409,
            f"nothing to export for project {project}: no staged public files and no checked "
            f"or approved report ({in_progress} in progress, {flagged} awaiting review)",
        )
    manifest = _manifest(project, extract_datetime, omop_es_hash, files)
    remote_manifest = f"{folder}/{MANIFEST_NAME}"
    with client_factory() as client:
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


# --- the app ----------------------------------------------------------------------------------


@dataclass
class ServiceConfig:
    """What the service runs against; every default comes from the environment.

    ``deidentifier`` defaults to ``CogstackClient(CogstackSettings.from_env())``; ``ftps`` to a
    client from ``PIXL_DSH_*``; ``start_worker=False`` serves HTTP only (tests of the export).
    """

    db_url: str
    start_worker: bool = True
    deidentifier: Deidentifier | None = None
    ftps: Callable[[], DshClient] = dsh_client_from_env
    worker_settings: ReportWorkerSettings | None = None
    worker_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> ServiceConfig:
        return cls(db_url=db.database_url())


class _WorkerThread:
    """The report worker and the thread it runs in."""

    def __init__(self) -> None:
        self.worker: ReportWorker | None = None
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()
        self.error: str | None = None

    def start(self, config: ServiceConfig) -> None:
        try:
            deidentifier = config.deidentifier
            if deidentifier is None:
                from pixl_ehr.cogstack import CogstackClient, CogstackSettings

                deidentifier = CogstackClient(CogstackSettings.from_env())
            worker_id = f"ehr:{socket.gethostname()}:{os.getpid()}"
            settings = config.worker_settings or ReportWorkerSettings.from_env(worker_id)
            self.worker = ReportWorker(
                config.db_url, deidentifier, settings, **config.worker_options
            )
        except (PixlError, ImportError) as exc:
            # Keep serving /health and /export: the operator sees why in /status and the log.
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            logger.error("report worker not started: %s", self.error)
            return
        self.thread = threading.Thread(
            target=self.worker.run, args=(self.stop,), name="pixl-report-worker", daemon=True
        )
        self.thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def status(self) -> dict[str, Any]:
        running = self.thread is not None and self.thread.is_alive()
        counters = self.worker.snapshot() if self.worker else {}
        return {"running": running, "error": self.error, **counters}


def _connect(config: ServiceConfig) -> db.Connection:
    try:
        return db.connect(config.db_url, application_name="pixl-ehr")
    except PixlConfigError as exc:
        raise HTTPException(503, str(exc)) from None


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    """The FastAPI app; ``config`` defaults to ``ServiceConfig.from_env()`` at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.config = config or ServiceConfig.from_env()
        app.state.worker = _WorkerThread()
        if app.state.config.start_worker:
            app.state.worker.start(app.state.config)
        try:
            yield
        finally:
            app.state.worker.shutdown()

    app = FastAPI(title="PIXL EHR module", lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/status")
    def status(request: Request, project: str | None = None) -> dict[str, Any]:
        conn = _connect(request.app.state.config)
        try:
            counts = work_queue.counts_by_state(conn, project, table="report")
        except Exception as exc:
            raise HTTPException(
                503, f"cannot read report states ({type(exc).__name__}): is the schema migrated?"
            ) from None
        finally:
            conn.close()
        return {"reports": counts, "worker": request.app.state.worker.status()}

    @app.post("/export/{project}")
    def export(
        request: Request, project: str, extract_id: int | None = Query(default=None)
    ) -> dict[str, Any]:
        config: ServiceConfig = request.app.state.config
        try:
            load_project(project)
        except PixlConfigError as exc:
            raise HTTPException(404, str(exc)) from None
        conn = _connect(config)
        try:
            hasher = ProjectHasher.for_project(project)
            result = export_project(conn, project, config.ftps, hasher, extract_id)
        except ExportRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except FtpsError as exc:
            logger.warning("export of %s: %s", project, exc)
            raise HTTPException(503, str(exc)) from None
        except PixlConfigError as exc:
            raise HTTPException(500, str(exc)) from None
        finally:
            conn.close()
        return asdict(result)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pixl_ehr.service", description="PIXL's EHR module (reports)."
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("PIXL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvicorn

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
