"""orthanc-anon's exporter: zip each complete de-identified study and push it to the DSH.

A study is complete when every instance orthanc-raw handed over is either stored (de-identified)
in orthanc-anon or recorded as refused; orthanc-raw hands instances over synchronously, so that
holds as soon as the study is in the ``anonymising`` state. The zip is uploaded over FTPS as
``<project>/dicom/<pseudonymised study UID>.zip`` (to a temporary name, then renamed), recorded
as exported with its instance count and SHA-256, and deleted from orthanc-anon.

"Never uploaded twice": the state change to ``exported`` is a single conditional UPDATE, and a
retry after a crash between upload and update finds the complete file already there (same size)
and does not send it again; a crash between the upload of the temporary file and its rename
leaves a complete ``.part`` file, which the retry renames instead of sending the study again
(the zip is reproducible, so the same size means the same bytes); and the exporter renews its lease after zipping, so a study another
exporter took over meanwhile (this one's lease ran out) is not uploaded by both. Leases are
short (30 s) and a heartbeat renews them while a study is exported (``pixl_core.db.leases``),
so a killed orthanc-anon's studies are taken over within a lease.

A destination that does not answer (connecting or securing the connection fails) is paused, per project: its studies
are deferred as usual and not claimed, one connection every ``probe_seconds`` tells when it is
back, and then the deferrals that grew during the outage are cut short
(``work_queue.end_deferrals``), so the studies go out within seconds of the destination's
return rather than after a backoff that may have grown to minutes.

A project whose file has ``destination: dicomweb:`` gets its instances by STOW-RS instead
(``pixl_core.transport.dicomweb``), in batches, **exactly once per instance**: the instances the
destination confirmed are recorded after every batch (``dicomweb_instance``, migration 0009),
and before sending anything the exporter asks the destination by QIDO-RS which instances of
the study it already holds (a crash between its answer and the record), so a study sent again
sends only what is missing. The lease is checked before every batch. A DICOMweb destination
that does not answer is paused and probed (a QIDO-RS request) exactly like an FTPS one. The last
error of either kind is kept per project (``destination_error``) for ``pixl status`` and
``/pixl/status``, until a study of the project is exported again.

The queue is ``pixl_core.db.work_queue``, where ``anonymising`` is a *stage* of the study queue:
``claim_stage`` gives a study only to a worker named ``anon:…`` and leaves its state alone;
``renew`` extends the lease for the upload; ``defer`` is the backoff when the DSH or
orthanc-anon fails (the study stays ``anonymising``, ``export_attempts`` grows, the next try is
due after an exponentially growing pause); ``requeue`` sends a study whose instances went
missing back to orthanc-raw. The loop is ``pixl_core.db.polling.run_loop``; its idle sleep ends
as soon as Postgres announces a hand-off (``pixl_core.db.wakeup``), the poll bounding it. Failures are
recorded as the error's ``code`` (``ftps_login``, ``invalid_allowlist``…), never an identifier.

The project's ``<project>/dicom/manifest.json`` (every zip with its SHA-256, instance count and
size) is rebuilt from Postgres after exports and on a beat (``manifest_seconds``), one writer
at a time across replicas: why it is written then and so, ``pixl_core.dsh.manifest_writer``.
A manifest that cannot be written never fails a study.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pixl_core import db
from pixl_core.config.projects import load_project
from pixl_core.db import destination_records, study_records, work_queue
from pixl_core.db.leases import DEFAULT_LEASE_SECONDS, Heartbeat
from pixl_core.db.polling import Counters, run_loop
from pixl_core.db.wakeup import HANDED_ON, Wakeup
from pixl_core.db.work_queue import WorkItem
from pixl_core.dsh.kinds import images_over_ftps
from pixl_core.dsh.manifest_writer import ManifestKeeper
from pixl_core.errors import PixlConfigError
from pixl_core.hashing import ProjectHasher
from pixl_core.transport.dicomweb import DicomwebClient, DicomwebError, client_for_project
from pixl_core.transport.ftps import FtpsClient, FtpsError
from pixl_core.transport.orthanc_rest import OrthancApi, OrthancError

logger = logging.getLogger("pixl.anon.export")
TABLE = "study"
STAGE = "anonymising"  # the study-queue stage the exporter owns (work_queue.QUEUES)
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # every entry's: the zip of a study is reproducible
COUNTERS = (
    "exported",
    "uploaded",
    "already_uploaded",
    "refused",
    "requeued",
    "retries",
    "destinations_down",
    "manifests_written",
    "manifest_failures",
    "dicomweb_stored",
    "dicomweb_already_there",
)
# FTPS steps whose transient failure means the destination is away (pause it), not that it
# refused this study.
UNREACHABLE_STEPS = frozenset({"connect", "AUTH TLS"})


class LeaseLostError(Exception):
    """Another exporter took the study over (this one's lease ran out): stop sending it."""


def _dicomweb_for(project: str) -> DicomwebClient:
    return client_for_project(load_project(project))


@dataclass
class ExportSettings:
    worker_id: str = "anon:1"
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    poll_seconds: float = 0.2
    backoff_base_seconds: float = 5.0
    max_backoff_seconds: float = 600.0
    work_dir: Path | None = None
    # While a project's destination is down, one connection this often tells when it is back.
    probe_seconds: float = 10.0
    # A project's manifest is rewritten at most this often, and stale ones caught up as often.
    manifest_seconds: float = 5.0
    # An exporter thread keeps its FTPS connection to a project's DSH open between studies
    # (a new one per study cost a TLS handshake and a login each: most of the DSH's CPU in the
    # pipeline benchmark), closing it once unused this long (servers drop idle ones at 300 s).
    keep_connection_seconds: float = 30.0
    # A study's zip is built in memory up to this size, in a file in ``work_dir`` beyond it:
    # a chest study (a few films) then never goes through the page cache three times (written,
    # read back for its SHA-256, read again to upload), and a CT of thousands of slices still
    # cannot exhaust memory (each exporter thread holds at most one zip).
    zip_in_memory_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class ExportItem:
    """A claimed study as the exporter sees it (identifiers left out of ``repr``)."""

    id: int
    project: str
    study_uid: str = field(repr=False)
    instances_sent: int

    @classmethod
    def from_work_item(cls, item: WorkItem) -> ExportItem:
        return cls(
            id=item.id,
            project=item.project,
            study_uid=item.row["study_uid"],
            instances_sent=item.row["instances_sent"],
        )


class AnonExporter:
    def __init__(
        self,
        db_url: str,
        anon: OrthancApi,
        secret: bytes,
        ftps: Callable[[str], FtpsClient],
        settings: ExportSettings,
        dicomweb: Callable[[str], DicomwebClient] = _dicomweb_for,
    ) -> None:
        self.db_url = db_url
        self.anon = anon
        self.secret = secret
        self.ftps = ftps
        self.dicomweb = dicomweb
        self.settings = settings
        self.counters = Counters(*COUNTERS)
        self._connections = db.ThreadConnections(db_url, self.settings.worker_id)
        self.heartbeat = Heartbeat(
            self._connections,
            TABLE,
            self.settings.worker_id,
            self.settings.lease_seconds,
            state=STAGE,
        )
        self._down: dict[str, float] = {}  # project whose destination is down → next probe
        self._kept = threading.local()  # this thread's open FTPS clients: project → (client, t)
        self._probe_lock = threading.Lock()
        self.wakeup = Wakeup(db_url, HANDED_ON, f"{settings.worker_id}:listen")
        self.manifests = ManifestKeeper(
            ftps, settings.worker_id, images_over_ftps, settings.manifest_seconds
        )

    def _conn(self) -> db.Connection:
        return self._connections.get()

    def run(self, stop: threading.Event) -> None:
        """Export studies until ``stop`` is set (several threads may run it). Survives Postgres
        outages."""
        self.heartbeat.start(stop)
        self.wakeup.start(stop)
        try:
            run_loop(
                stop,
                name="exporter",
                logger=logger,
                db_url=self.db_url,
                claim=self.claim,
                process=self._export_one,
                reset=self._connections.reset,
                poll_seconds=self.settings.poll_seconds,
                idle=self.wakeup.wait,  # a hand-off ends the sleep (LISTEN), the poll bounds it
            )
        finally:
            self._close_idle_clients(older_than=0)

    def claim(self) -> ExportItem | None:
        """Take one handed-over study whose export is due (SKIP LOCKED, with a lease), from a
        project whose destination is not paused."""
        self._probe_destinations()
        self._keep_manifests(None)
        self._close_idle_clients()
        items = work_queue.claim_stage(
            self._conn(),
            TABLE,
            STAGE,
            self.settings.worker_id,
            1,
            self.settings.lease_seconds,
            held=self.heartbeat.held(),
            exclude_projects=list(self._down),
        )
        return ExportItem.from_work_item(items[0]) if items else None

    def _export_one(self, item: ExportItem) -> None:
        with self.heartbeat.hold(item.id):
            self.export(item)

    def _keep_manifests(self, exported_project: str | None) -> None:
        """After an export of ``exported_project``, and on the manifest beat: bring manifests
        up to date with Postgres (``pixl_core.dsh.manifest_writer``)."""
        if exported_project is not None:
            self.manifests.after_export(self._conn(), exported_project)
        else:
            self.manifests.catch_up(self._conn(), skip=lambda project: project in self._down)
        self.counters.set("manifests_written", self.manifests.writes)
        self.counters.set("manifest_failures", self.manifests.failures)

    # --- destinations that are down ------------------------------------------------------------

    def destinations_down(self) -> list[str]:
        """The projects whose destination is paused now (for ``/pixl/status`` and the page).
        Not under the probe lock: a probe holds it for as long as a connection takes."""
        return sorted(list(self._down))

    def _destination_down(self, project: str) -> None:
        with self._probe_lock:
            if project not in self._down:
                self.counters.add("destinations_down")
                logger.warning(
                    "project %s: destination unreachable; paused, probing every %.0f s",
                    project,
                    self.settings.probe_seconds,
                )
            self._down[project] = time.monotonic() + self.settings.probe_seconds

    def _probe_destinations(self) -> None:
        """Try each paused destination whose probe is due (one thread at a time); when one
        answers, resume its project and make its long-deferred studies due now."""
        if not self._down or not self._probe_lock.acquire(blocking=False):
            return
        try:
            now = time.monotonic()
            for project, due in list(self._down.items()):
                if due > now:
                    continue
                try:
                    self._probe(project)
                except (FtpsError, DicomwebError):
                    self._down[project] = now + self.settings.probe_seconds
                    continue
                del self._down[project]
                resumed = work_queue.end_deferrals(
                    self._conn(), TABLE, STAGE, project, self.settings.lease_seconds
                )
                logger.warning(
                    "project %s: destination answers again; %d deferred stud(ies) due now",
                    project,
                    resumed,
                )
        finally:
            self._probe_lock.release()

    def _probe(self, project: str) -> None:
        """One connection to the project's image destination; raises if it does not answer."""
        if load_project(project).dicomweb is not None:
            with self.dicomweb(project) as client:
                client.probe()
        else:
            with self.ftps(project):
                pass

    def _record_error(
        self, item: ExportItem, destination: str, exc: FtpsError | DicomwebError
    ) -> None:
        """Keep the destination's last error for the operator (host:port, step, status only).
        A malformed code is not stored (ValueError); the backoff still records the failure."""
        with contextlib.suppress(ValueError):
            destination_records.set_error(
                self._conn(), item.project, destination, exc.code, str(exc)
            )

    def export(self, item: ExportItem) -> str:
        """Export one study; returns the state it ends in ('retry' after a backoff, 'lost' if
        another exporter took it over)."""
        try:
            return self._export(item)
        except db.DATABASE_ERRORS:
            raise  # run_loop reconnects; the lease brings the study back
        except FtpsError as exc:
            if exc.transient and exc.step in UNREACHABLE_STEPS:
                self._destination_down(item.project)
            self._record_error(item, "ftps", exc)
            self._backoff(item, exc.code)
            return "retry"
        except DicomwebError as exc:
            if exc.unreachable:
                self._destination_down(item.project)
            self._record_error(item, "dicomweb", exc)
            self._backoff(item, exc.code)
            return "retry"
        except LeaseLostError:
            logger.warning("study item %s was taken over; not sending the rest", item.id)
            return "lost"
        except OrthancError as exc:
            self._backoff(item, exc.code)
            return "retry"
        except OSError:
            self._backoff(item, "local_io_error")
            return "retry"
        except PixlConfigError as exc:  # the operator must fix it: retrying would not help
            self._set_state(item, "failed", last_error_code=exc.code)
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
        refused = study_records.refusals(self._conn(), item.id)
        if len(instances) + sum(refused.values()) < item.instances_sent:
            # Something handed over never arrived (orthanc-anon restarted mid-study?): let
            # orthanc-raw send the study again; it comes from its cache, not the VNA.
            work_queue.requeue(
                self._conn(), TABLE, STAGE, item.id, self.settings.worker_id, "incomplete_in_anon"
            )
            self.counters.add("requeued")
            return "queued"
        if not instances:
            reason = refused.most_common(1)[0][0] if refused else "nothing_to_export"
            self._set_state(item, "refused", last_error_code=reason)
            self.counters.add("refused")
            return "refused"
        if project.dicomweb is not None:
            self._send_dicomweb(item, pseudo_uid, instances)
            return self._exported(item, studies[0], pseudo_uid, len(instances), None, None)
        remote = f"{project.slug}/dicom/{pseudo_uid}.zip"
        with tempfile.SpooledTemporaryFile(
            max_size=self.settings.zip_in_memory_bytes, dir=self.settings.work_dir
        ) as archive:
            digest, size = self._zip(instances, archive)
            if not work_queue.renew(
                self._conn(),
                TABLE,
                item.id,
                self.settings.worker_id,
                self.settings.lease_seconds,
                state=STAGE,
            ):  # the lease ran out while zipping and another exporter took the study over
                logger.warning("study item %s was taken over; not uploading it", item.id)
                return "lost"
            with self._kept_client(project.slug) as client:
                # Already there, or sent whole and not renamed before a crash: not sent again.
                if client.size(remote) == size or client.complete_upload(remote, size):
                    self.counters.add("already_uploaded")
                else:
                    archive.seek(0)
                    client.upload_bytes(remote, archive)  # type: ignore[arg-type]
                    self.counters.add("uploaded")
        return self._exported(item, studies[0], pseudo_uid, len(instances), digest, size)

    def _kept_clients(self) -> dict[str, tuple[FtpsClient, float]]:
        """This thread's open FTPS clients: project → (client, when last used)."""
        clients: dict[str, tuple[FtpsClient, float]] = self._kept.__dict__.setdefault("clients", {})
        return clients

    @contextlib.contextmanager
    def _kept_client(self, project: str) -> Iterator[FtpsClient]:
        """This thread's open FTPS client for ``project``, opened if there is none. A failure
        while it is used closes it, so the next study starts on a fresh connection."""
        kept = self._kept_clients()
        entry = kept.pop(project, None)
        client = entry[0] if entry else self.ftps(project).__enter__()
        try:
            yield client
        except BaseException:
            with contextlib.suppress(Exception):
                client.__exit__(None, None, None)
            raise
        kept[project] = (client, time.monotonic())

    def _close_idle_clients(self, older_than: float | None = None) -> None:
        """Close this thread's FTPS clients unused for ``keep_connection_seconds``."""
        kept = self._kept_clients()
        limit = self.settings.keep_connection_seconds if older_than is None else older_than
        now = time.monotonic()
        for project, (client, used) in list(kept.items()):
            if now - used >= limit:
                del kept[project]
                with contextlib.suppress(Exception):
                    client.__exit__(None, None, None)

    def _exported(
        self,
        item: ExportItem,
        orthanc_id: str,
        pseudo_uid: str,
        count: int,
        digest: str | None,
        size: int | None,
    ) -> str:
        applied = self._set_state(
            item,
            "exported",
            pseudo_study_uid=pseudo_uid,
            instance_count=count,
            sha256=digest,
            zip_bytes=size,
            last_error_code=None,
        )
        destination_records.clear_error(self._conn(), item.project)
        if applied:
            self.counters.add("exported")
            self.anon.delete(f"/studies/{orthanc_id}")
        logger.info("study item %s exported (%d instances)", item.id, count)
        self._keep_manifests(item.project)
        return "exported"

    def _send_dicomweb(
        self, item: ExportItem, pseudo_uid: str, instances: list[dict[str, Any]]
    ) -> None:
        """STOW-RS every instance the destination does not hold yet, exactly once: those
        recorded as stored are skipped, then those QIDO-RS finds there (recorded now), and the
        rest are sent in batches, each batch recorded as soon as the server confirms it."""
        by_uid = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in instances}
        done = destination_records.stored_instances(self._conn(), item.id)
        with self.dicomweb(item.project) as client:
            missing = set(by_uid) - done
            if missing:
                there = set(client.instances_of_study(pseudo_uid)) & missing
                if there:
                    destination_records.record_stored(self._conn(), item.id, there)
                    self.counters.add("dicomweb_already_there", len(there))
                    missing -= there
            if not missing:
                return

            def check_lease() -> None:
                if not work_queue.renew(
                    self._conn(),
                    TABLE,
                    item.id,
                    self.settings.worker_id,
                    self.settings.lease_seconds,
                    state=STAGE,
                ):
                    raise LeaseLostError

            def stored(uids: frozenset[str]) -> None:
                destination_records.record_stored(self._conn(), item.id, uids)
                self.counters.add("dicomweb_stored", len(uids))

            client.stow_batched(
                sorted(missing),
                lambda uid: self.anon.get_bytes(f"/instances/{by_uid[uid]}/file"),
                stored,
                before_batch=check_lease,
            )

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

    def _zip(self, instances: list[dict[str, Any]], target: BinaryIO) -> tuple[str, int]:
        """Zip the instances as ``<series UID>/<instance UID>.dcm`` into ``target`` (a seekable
        stream, in memory or on disk); return the zip's SHA-256 and size.

        The zip is the same bytes every time it is made from the same instances (sorted names,
        a fixed timestamp), so a retry can tell a complete earlier upload by its size alone.
        """
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
            for instance in sorted(instances, key=lambda i: i["MainDicomTags"]["SOPInstanceUID"]):
                sop_uid = instance["MainDicomTags"]["SOPInstanceUID"]
                entry = zipfile.ZipInfo(
                    f"{instance['SeriesInstanceUID']}/{sop_uid}.dcm", date_time=ZIP_TIMESTAMP
                )
                archive.writestr(entry, self.anon.get_bytes(f"/instances/{instance['ID']}/file"))
        size = target.tell()
        target.seek(0)
        digest = hashlib.sha256()
        for block in iter(lambda: target.read(1 << 20), b""):
            digest.update(block)
        return digest.hexdigest(), size

    def _set_state(self, item: ExportItem, state: str, **fields: Any) -> bool:
        return work_queue.complete(self._conn(), TABLE, item.id, state, STAGE, **fields)

    def _backoff(self, item: ExportItem, code: str) -> None:
        delay = work_queue.defer(
            self._conn(),
            TABLE,
            STAGE,
            item.id,
            self.settings.worker_id,
            code,
            self.settings.backoff_base_seconds,
            max_backoff_seconds=self.settings.max_backoff_seconds,
        )
        self.counters.add("retries")
        logger.warning(
            "export of study item %s failed (%s); retry in %.0fs", item.id, code, delay or 0
        )
