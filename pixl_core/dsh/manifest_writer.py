"""When and how the images' ``manifest.json`` is written to the DSH, so that it is always right.

Studies are exported one at a time, by several exporter threads in each of several orthanc-anon
replicas, and a study may leave ``exported`` again (``pixl verify --requeue``). Whatever writes
the manifest must therefore not trust what it last wrote, nor a list kept in one process. So:

- **Built from Postgres, never patched.** The manifest is rebuilt whole from the project's
  ``exported`` rows (``db.exported_studies.exported``: SHA-256, instance count and size,
  recorded by the exporter when the zip reached the DSH), so two writers can only disagree
  about *when* they read, never about what a row says.
- **One writer at a time, per project, across replicas.** A Postgres advisory lock
  (``pg_try_advisory_lock``) is held while a writer reads the rows and uploads. A writer that
  finds the lock taken leaves the work to the holder, which, *after releasing the lock*, checks
  again whether the records moved on while it wrote and, if they did, writes again. Whoever
  commits an export and then fails to take the lock did so while someone held it, so that
  holder's check after release sees the export: no export is ever left out for good.
- **Atomic on the DSH.** ``FtpsClient.upload_bytes`` writes ``.manifest.json.part`` and renames
  it, so the DSH never shows half a manifest, and the lock keeps two writers off the same
  ``.part`` file.
- **Written after the zips, so it never vouches for what is not there.** The exporter records
  a study ``exported`` only once its zip is complete on the DSH, and the manifest lists only
  such rows: a zip may be on the DSH for a moment before the manifest lists it, never the
  other way round.
- **Cheap enough to keep up.** Rewriting the whole manifest after every study would make an
  extract of N studies cost N manifests of up to N entries. A fingerprint of the rows the
  manifest was built from is kept in ``dsh_manifest``; one query (``stale_projects``) tells
  which manifests are behind. The exporter writes one right after an export unless it wrote
  that project's manifest less than ``min_interval_seconds`` ago, and every exporter checks
  for stale manifests every ``min_interval_seconds`` (``catch_up``). So during a run the
  manifest is rewritten at most every few seconds per project, at the end of an extract it is
  complete within that interval, and a writer that crashed (or a DSH that was down) is caught
  up by the next check. ``pixl manifest PROJECT`` rewrites it at once.

A manifest that cannot be written (the DSH is down) never fails a study: the study is exported
when its zip is there; the manifest follows when the DSH answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pixl_core.db import exported_studies
from pixl_core.db.connection import Connection
from pixl_core.dsh import manifest
from pixl_core.errors import PixlError

logger = logging.getLogger("pixl.dsh.manifest")
_LOCK_PREFIX = "pixl-image-manifest:"


class ManifestUploader(Protocol):
    """What writing a manifest needs of a destination client (``FtpsClient`` has it)."""

    def upload_bytes(self, remote_path: str, data: bytes) -> None: ...

    def __enter__(self) -> ManifestUploader: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class Written:
    """What one write did: the zips it lists and the fingerprint of their rows."""

    project: str
    zips: int
    instances: int
    fingerprint: str


def manifest_path(project: str) -> str:
    return f"{manifest.images_folder(project)}/{manifest.MANIFEST_NAME}"


def _try_lock(conn: Connection, project: str) -> bool:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (_LOCK_PREFIX + project,))
        return bool(cur.fetchone()[0])


def _unlock(conn: Connection, project: str) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (_LOCK_PREFIX + project,))


def write_now(
    conn: Connection,
    project: str,
    client_factory: Callable[[str], ManifestUploader],
    writer_id: str,
    *,
    only_if_stale: bool = False,
) -> Written | None:
    """Under the project's lock, build the manifest from Postgres and upload it atomically;
    record the fingerprint. Returns None if another writer holds the lock (it will see these
    records after it releases), or, with ``only_if_stale``, if the manifest is already current.
    """
    if not _try_lock(conn, project):
        return None
    try:
        snapshot = exported_studies.exported(conn, project)
        if only_if_stale and snapshot.fingerprint == exported_studies.written_fingerprint(
            conn, project
        ):
            return None
        data = manifest.build(snapshot)
        with client_factory(project) as client:
            client.upload_bytes(manifest_path(project), data)
        exported_studies.record_manifest(
            conn, project, snapshot.fingerprint, len(snapshot.zips), writer_id
        )
        instances = sum(z.instance_count for z in snapshot.zips)
        logger.info("project %s: manifest written (%d zips)", project, len(snapshot.zips))
        return Written(project, len(snapshot.zips), instances, snapshot.fingerprint)
    finally:
        _unlock(conn, project)


def refresh(
    conn: Connection,
    project: str,
    client_factory: Callable[[str], ManifestUploader],
    writer_id: str,
) -> int:
    """Bring the project's manifest up to date with Postgres; return how many times it was
    written (0 when it was current, or another writer holds the lock and will finish the job).

    The check after each release is what makes concurrent exports safe (see the module
    docstring): the loop ends only when the manifest is current or someone else holds the lock.
    """
    writes = 0
    while True:
        written = write_now(conn, project, client_factory, writer_id, only_if_stale=True)
        if written is not None:
            writes += 1
        if not exported_studies.stale_projects(conn, [project]):
            return writes
        if written is None and _held_elsewhere(conn, project):
            return writes  # the holder checks again after it releases


def _held_elsewhere(conn: Connection, project: str) -> bool:
    """Whether another session holds the project's lock now (so it will re-check)."""
    if _try_lock(conn, project):
        _unlock(conn, project)
        return False
    return True


class ManifestKeeper:
    """The exporter's side: write a project's manifest after its exports, at most every
    ``min_interval_seconds``, and catch up stale manifests on the same beat.

    ``wanted(project)`` says whether a project's manifest is PIXL's to write on this
    destination (its images go over FTPS); ``skip(project)`` whether its destination is paused
    now. Thread-safe: one catch-up at a time per process.
    """

    def __init__(
        self,
        client_factory: Callable[[str], ManifestUploader],
        writer_id: str,
        wanted: Callable[[str], bool],
        min_interval_seconds: float = 5.0,
    ) -> None:
        self.client_factory = client_factory
        self.writer_id = writer_id
        self.wanted = wanted
        self.min_interval_seconds = min_interval_seconds
        self._last_write: dict[str, float] = {}
        self._next_catch_up = 0.0
        self._lock = threading.Lock()
        self.writes = 0
        self.failures = 0

    def after_export(self, conn: Connection, project: str) -> None:
        """A study of ``project`` was just recorded exported: write the manifest now, unless
        this process wrote it moments ago (then the next catch-up does)."""
        if not self.wanted(project):
            return
        if time.monotonic() - self._last_write.get(project, float("-inf")) < (
            self.min_interval_seconds
        ):
            return
        self._refresh(conn, project)

    def catch_up(self, conn: Connection, skip: Callable[[str], bool] = lambda _p: False) -> None:
        """Every ``min_interval_seconds``: write every manifest that is behind Postgres."""
        now = time.monotonic()
        if now < self._next_catch_up or not self._lock.acquire(blocking=False):
            return
        try:
            self._next_catch_up = now + self.min_interval_seconds
            for project in exported_studies.stale_projects(conn):
                if not skip(project) and self.wanted(project):
                    self._refresh(conn, project)
        finally:
            self._lock.release()

    def _refresh(self, conn: Connection, project: str) -> None:
        self._last_write[project] = time.monotonic()
        try:
            self.writes += refresh(conn, project, self.client_factory, self.writer_id)
        except (PixlError, OSError) as exc:  # the DSH is away: the next catch-up tries again
            self.failures += 1
            logger.warning(
                "project %s: manifest not written (%s); retried within %.0f s",
                project,
                getattr(exc, "code", type(exc).__name__),
                self.min_interval_seconds,
            )
