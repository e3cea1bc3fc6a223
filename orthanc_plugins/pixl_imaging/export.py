"""orthanc-anon's exporter: zip each complete de-identified study and push it to the DSH.

A study is complete when every instance orthanc-raw handed over is either stored (de-identified)
in orthanc-anon or recorded as refused; orthanc-raw hands instances over synchronously, so that
holds as soon as the study is in the ``anonymising`` state. The zip is uploaded over FTPS as
``<project>/dicom/<pseudonymised study UID>.zip`` (to a temporary name, then renamed), recorded
as exported with its instance count and SHA-256, and deleted from orthanc-anon.

"Never uploaded twice": the state change to ``exported`` is a single conditional UPDATE, and a
retry after a crash between upload and update finds the complete file already there (same size)
and does not send it again. When the DSH is down the study stays ``anonymising`` and is retried
with exponential backoff.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixl_core import db
from pixl_core.config.projects import load_project
from pixl_core.db import work_queue
from pixl_core.errors import PixlConfigError, PixlError
from pixl_core.hashing import ProjectHasher
from pixl_core.transport.ftps import FtpsClient, FtpsError
from pixl_core.transport.orthanc_rest import OrthancApi, OrthancError

logger = logging.getLogger("pixl.anon.export")
WORKER_PREFIX = "anon:"


@dataclass
class ExportSettings:
    worker_id: str = "anon:1"
    lease_seconds: float = 600.0
    poll_seconds: float = 0.2
    backoff_base_seconds: float = 5.0
    max_backoff_seconds: float = 600.0
    work_dir: Path | None = None


@dataclass(frozen=True)
class ExportItem:
    id: int
    project: str
    study_uid: str
    instances_sent: int
    export_attempts: int


class AnonExporter:
    def __init__(
        self,
        db_url: str,
        anon: OrthancApi,
        secret: bytes,
        ftps: Callable[[str], FtpsClient],
        settings: ExportSettings,
    ) -> None:
        self.db_url = db_url
        self.anon = anon
        self.secret = secret
        self.ftps = ftps
        self.settings = settings
        self.counters: Counter[str] = Counter()
        self._connections = db.ThreadConnections(db_url, self.settings.worker_id)

    def _conn(self) -> db.Connection:
        return self._connections.get()

    def run(self, stop: threading.Event) -> None:
        if not db.migrate_when_ready(self.db_url, stop, logger):
            return
        while not stop.is_set():
            try:
                item = self.claim()
            except Exception as exc:  # database down: wait and try again
                logger.warning("exporter cannot claim work (%s); retrying", type(exc).__name__)
                self._connections.reset()
                stop.wait(5)
                continue
            if item is None:
                stop.wait(self.settings.poll_seconds)
                continue
            self.export(item)

    def claim(self) -> ExportItem | None:
        """Take one handed-over study whose export is due (SKIP LOCKED, with a lease)."""
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute(
                """
                WITH picked AS (
                    SELECT id FROM study
                    WHERE state = 'anonymising' AND instances_sent IS NOT NULL
                      AND (claimed_by IS NULL OR claimed_by NOT LIKE %(prefix)s
                           OR claimed_until < now())
                    ORDER BY updated_at, id
                    LIMIT 1
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE study AS s
                SET claimed_by = %(me)s,
                    claimed_until = now() + make_interval(secs => %(lease)s)
                FROM picked WHERE s.id = picked.id
                RETURNING s.id, s.project, s.study_uid, s.instances_sent, s.export_attempts
                """,
                {
                    "prefix": WORKER_PREFIX + "%",
                    "me": self.settings.worker_id,
                    "lease": self.settings.lease_seconds,
                },
            )
            row = cur.fetchone()
        return ExportItem(*row) if row else None

    def export(self, item: ExportItem) -> str:
        """Export one study; returns the state it ends in (or 'retry')."""
        try:
            return self._export(item)
        except (FtpsError, OrthancError, OSError) as exc:
            code = exc.code if isinstance(exc, OrthancError) else _ftps_code(exc)
            self._backoff(item, code)
            return "retry"
        except PixlConfigError:
            self._set_state(item, "failed", last_error_code="unknown_project")
            return "failed"
        except Exception as exc:  # never let one study kill the exporter
            logger.exception("unexpected export error on study item %s", item.id)
            self._backoff(item, "internal_" + type(exc).__name__.lower()[:40])
            return "retry"

    def _export(self, item: ExportItem) -> str:
        project = load_project(item.project)
        hasher = ProjectHasher.for_project(project.slug, self.secret)
        pseudo_uid = hasher.uid(item.study_uid)
        studies = self.anon.post(
            "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": pseudo_uid}}
        )
        instances = self._instances(studies[0]) if studies else []
        refused = self._refusals(item.id)
        if len(instances) + sum(refused.values()) < item.instances_sent:
            # Something handed over never arrived (orthanc-anon restarted mid-study?): let
            # orthanc-raw send the study again; it comes from its cache, not the VNA.
            self._requeue(item, "incomplete_in_anon")
            self.counters["requeued"] += 1
            return "queued"
        if not instances:
            reason = refused.most_common(1)[0][0] if refused else "nothing_to_export"
            self._set_state(item, "refused", last_error_code=reason)
            self.counters["refused"] += 1
            return "refused"
        remote = f"{project.slug}/dicom/{pseudo_uid}.zip"
        with tempfile.TemporaryDirectory(dir=self.settings.work_dir) as work:
            archive = Path(work) / "study.zip"
            digest = self._zip(instances, archive)
            size = archive.stat().st_size
            with self.ftps(project.slug) as client:
                if client.size(remote) != size:
                    client.upload_file(remote, archive)
                    self.counters["uploaded"] += 1
                else:
                    self.counters["already_uploaded"] += 1
        applied = self._set_state(
            item,
            "exported",
            pseudo_study_uid=pseudo_uid,
            instance_count=len(instances),
            sha256=digest,
            last_error_code=None,
        )
        if applied:
            self.counters["exported"] += 1
            self.anon.delete(f"/studies/{studies[0]}")
        logger.info("study item %s exported (%d instances)", item.id, len(instances))
        return "exported"

    def _instances(self, orthanc_study_id: str) -> list[dict[str, Any]]:
        """The study's instances, each with its series UID added (from Orthanc's index, so no
        file is parsed again just to name it in the zip)."""
        series_uids = {
            series["ID"]: series["MainDicomTags"]["SeriesInstanceUID"]
            for series in self.anon.get(f"/studies/{orthanc_study_id}/series")
        }
        instances = list(self.anon.get(f"/studies/{orthanc_study_id}/instances"))
        for instance in instances:
            instance["SeriesInstanceUID"] = series_uids[instance["ParentSeries"]]
        return instances

    def _refusals(self, study_id: int) -> Counter[str]:
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT reason, count(*) FROM instance_refusal WHERE study_id = %s GROUP BY reason",
                (study_id,),
            )
            return Counter(dict(cur.fetchall()))

    def _zip(self, instances: list[dict[str, Any]], target: Path) -> str:
        """Zip the instances as ``<series UID>/<instance UID>.dcm``; return the SHA-256."""
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
            for instance in sorted(instances, key=lambda i: i["MainDicomTags"]["SOPInstanceUID"]):
                sop_uid = instance["MainDicomTags"]["SOPInstanceUID"]
                name = f"{instance['SeriesInstanceUID']}/{sop_uid}.dcm"
                archive.writestr(name, self.anon.get_bytes(f"/instances/{instance['ID']}/file"))
        digest = hashlib.sha256()
        with target.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def _set_state(self, item: ExportItem, state: str, **fields: Any) -> bool:
        return work_queue.complete(self._conn(), "study", item.id, state, "anonymising", **fields)

    def _requeue(self, item: ExportItem, code: str) -> None:
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE study SET state = 'queued', claimed_by = NULL, claimed_until = NULL, "
                "next_attempt_at = now(), last_error_code = %s "
                "WHERE id = %s AND state = 'anonymising' AND claimed_by = %s",
                (code, item.id, self.settings.worker_id),
            )

    def _backoff(self, item: ExportItem, code: str) -> None:
        delay = min(
            self.settings.backoff_base_seconds * 2 ** min(item.export_attempts, 16),
            self.settings.max_backoff_seconds,
        )
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE study SET claimed_until = now() + make_interval(secs => %s), "
                "export_attempts = export_attempts + 1, last_error_code = %s "
                "WHERE id = %s AND state = 'anonymising' AND claimed_by = %s",
                (delay, code, item.id, self.settings.worker_id),
            )
        self.counters["export_retries"] += 1
        logger.warning("export of study item %s failed (%s); retry in %.0fs", item.id, code, delay)


def _ftps_code(exc: Exception) -> str:
    """A short error code (no paths, no identifiers) for the work item."""
    if isinstance(exc, FtpsError):
        step = "".join(c if c.isalnum() else "_" for c in exc.step.lower())
        return f"ftps_{step}"[:60]
    if isinstance(exc, PixlError):
        return "export_error"
    return "local_io_error"
