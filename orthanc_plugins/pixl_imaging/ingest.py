"""orthanc-anon's per-instance step: verify the hand-off, de-identify, or discard; and the
sweep that keeps orthanc-anon from holding studies nobody will export.

Called from Orthanc's received-instance callback with the bytes of each arriving instance.
Returns the de-identified bytes (Orthanc stores those instead of the original) or ``None``
(Orthanc discards the instance). Fail closed: anything unexpected discards, and the reason is
recorded against the work item in Postgres (``pixl_core.db.study_records``), never with an
identifier: a refusal reason from the engine (``wrong_modality``…), or the ``code`` of the
configuration error that stopped it (``unknown_project``, ``invalid_allowlist``…).

The hand-off block is signed over the instance's UIDs and pixels (``pixl_core.dicom.handoff``),
so a block lifted onto another instance is refused. A genuine block replayed later is refused
too: an instance is stored only while its work item is being fetched, which is the only time
orthanc-raw sends it. What still ends up in orthanc-anon without a study being exported (a
study that failed half-way, an instance that arrived as its study was finishing) is an orphan:
``OrphanSweeper`` deletes a study once no queued or in-progress work item names it and it has
not changed for a grace period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pixl_core import db
from pixl_core.config.projects import load_project
from pixl_core.db import singleton, study_records, work_queue
from pixl_core.db.polling import Counters
from pixl_core.dicom.deid import Refused, deidentify_parsed
from pixl_core.dicom.handoff import HandoffError, read_bytes
from pixl_core.dicom.header import UnreadableDicom
from pixl_core.errors import PixlConfigError
from pixl_core.hashing import ProjectHasher
from pixl_core.transport.orthanc_rest import OrthancApi

logger = logging.getLogger("pixl.anon")
# How long an instance's verdict waits for a database that went away (a restart takes seconds;
# orthanc-raw's hand-off request waits meanwhile).
DB_WAIT_SECONDS = 20.0


class AnonIngest:
    def __init__(self, db_url: str, secret: bytes) -> None:
        self.db_url = db_url
        self.secret = secret
        self.counters = Counters(
            "deidentified", "discarded_without_handoff", "discarded_not_fetching"
        )
        # Orthanc calls on_received on threads of its own: a pool, not one connection per thread.
        self._connections = db.ConnectionPool(db_url, "orthanc-anon-ingest")

    def on_received(self, data: bytes) -> bytes | None:
        try:
            handoff, parsed = read_bytes(data, self.secret)
        except (HandoffError, UnreadableDicom):
            self.counters.add("discarded_without_handoff")
            logger.warning("discarded an instance that did not come from orthanc-raw")
            return None
        sop_uid = str(parsed.dataset.get("SOPInstanceUID", ""))
        try:
            project = load_project(handoff.project)
            hasher = ProjectHasher.for_project(project.slug, self.secret)
        except PixlConfigError as exc:
            self._refuse(handoff.work_item_id, sop_uid, exc.code, None)
            return None
        try:
            result = deidentify_parsed(parsed, project, hasher)
        except Refused as refusal:
            self._refuse(handoff.work_item_id, sop_uid, refusal.reason, hasher)
            return None
        except Exception as exc:  # fail closed: an engine error never forwards the instance
            logger.error(
                "de-identification error %s on study item %s",
                type(exc).__name__,
                handoff.work_item_id,
            )
            self._refuse(handoff.work_item_id, sop_uid, "internal_error", hasher)
            return None
        if not self._being_fetched(handoff.work_item_id):
            self.counters.add("discarded_not_fetching")
            logger.warning(
                "discarded an instance of study item %s, which is not being fetched",
                handoff.work_item_id,
            )
            return None
        self.counters.add("deidentified")
        if result.descriptors.cleaned:  # counts by kind only, never the values
            self.counters.add("descriptions_cleaned", result.descriptors.cleaned)
            for kind, count in result.descriptors.by_kind.items():
                self.counters.add(f"descriptions_cleaned_{kind}", count)
        if result.pixel_text:
            self._record_pixel_text(handoff.work_item_id, sop_uid, result.pixel_text, hasher)
        return result.data

    def _record_pixel_text(
        self, work_item_id: int, sop_uid: str, counts: dict[str, int], hasher: ProjectHasher
    ) -> None:
        """Count burned-in text regions by kind, in the metrics and in Postgres (never the text).
        The instance goes on either way: its pixels are already clean."""
        for kind, regions in counts.items():
            self.counters.add(f"pixel_text_{kind}", regions)
        if any(kind != "benign" for kind in counts):
            self.counters.add("pixel_text_masked_instances")
        key = hasher.uid(sop_uid)
        try:
            self._connections.run(
                lambda conn: study_records.record_pixel_text(conn, work_item_id, key, counts),
                DB_WAIT_SECONDS,
            )
        except Exception as exc:
            self._connections.reset()
            logger.error("could not record burned-in text counts (%s)", type(exc).__name__)

    def _being_fetched(self, work_item_id: int) -> bool:
        """Whether orthanc-raw is handing the study over now (else the instance would be an
        orphan: a replay, or a late copy of a study already exported). Through a Postgres
        restart the answer waits for the database (orthanc-raw's request waits with it), so a
        short outage does not discard a hand-off; still unknown after that: no."""
        try:
            state = self._connections.run(
                lambda conn: work_queue.state_of(conn, "study", work_item_id), DB_WAIT_SECONDS
            )
        except Exception as exc:
            self._connections.reset()
            logger.error("could not read a study's state (%s)", type(exc).__name__)
            return False
        return state == "fetching"

    def _refuse(
        self, work_item_id: int, sop_uid: str, reason: str, hasher: ProjectHasher | None
    ) -> None:
        """Record one refused instance (idempotent: a re-sent instance is counted once)."""
        self.counters.add(f"refused_{reason}")
        key = hasher.uid(sop_uid) if hasher is not None else ProjectHasher(self.secret).uid(sop_uid)
        try:
            self._connections.run(
                lambda conn: study_records.record_refusal(conn, work_item_id, key, reason),
                DB_WAIT_SECONDS,
            )
        except Exception as exc:  # the instance is discarded either way
            self._connections.reset()
            logger.error("could not record a refusal (%s)", type(exc).__name__)
        logger.info("refused an instance of study item %s: %s", work_item_id, reason)


class OrphanSweeper:
    """Delete the studies orthanc-anon holds that no work item will export.

    orthanc-anon should only hold studies being handed over or exported: the exporter deletes a
    study once it is exported. A study is an orphan when no queued or in-progress work item
    names it (its pseudonymised Study Instance UID, computed per project from the items' UIDs)
    and Orthanc's ``LastUpdate`` of it has not changed for ``grace_seconds``: the grace covers a
    first hand-off, during which the work item does not know the study's UID yet. The sweep
    only deletes from orthanc-anon, whose copies are de-identified and can be made again from
    orthanc-raw's cache; if the database cannot be read it deletes nothing.
    """

    def __init__(
        self,
        db_url: str,
        anon: OrthancApi,
        secret: bytes,
        grace_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.anon = anon
        self.secret = secret
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.counters = Counters("orphans_deleted")
        self._connections = db.ThreadConnections(db_url, "orthanc-anon-sweeper")
        self._idle: dict[str, tuple[float, str]] = {}  # study id -> (first seen idle, stamp)
        self._hashers: dict[str, ProjectHasher] = {}

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``grace_seconds / 4`` (at most every minute) until ``stop`` is set."""
        period = min(60.0, max(1.0, self.grace_seconds / 4))
        while not stop.wait(period):
            try:
                # One anon replica sweeps at a time: they share one Orthanc database.
                with singleton.only_one(self._connections.get(), "anon-orphan-sweep") as mine:
                    if mine:
                        self.sweep()
            except Exception as exc:  # a failed sweep deletes nothing; the next one tries again
                self._connections.reset()
                logger.warning("orphan sweep failed (%s)", type(exc).__name__)

    def sweep(self) -> int:
        """Delete the orphans whose grace has run out; return how many were deleted."""
        live = self._live_study_uids()
        now = self.clock()
        idle: dict[str, tuple[float, str]] = {}
        deleted = 0
        for study in self.anon.get("/studies?expand"):
            study_id = study["ID"]
            if study.get("MainDicomTags", {}).get("StudyInstanceUID") in live:
                continue
            stamp = str(study.get("LastUpdate", ""))
            since, seen_stamp = self._idle.get(study_id, (now, stamp))
            if seen_stamp != stamp:  # it changed: something is still adding to it
                since = now
            if now - since >= self.grace_seconds:
                self.anon.delete(f"/studies/{study_id}")
                deleted += 1
            else:
                idle[study_id] = (since, stamp)
        self._idle = idle
        if deleted:
            self.counters.add("orphans_deleted", deleted)
            logger.info("deleted %d orphaned studies from orthanc-anon", deleted)
        return deleted

    def _live_study_uids(self) -> set[str]:
        """Pseudonymised UIDs of the studies of queued and in-progress work items."""
        live = set()
        for project, study_uid in study_records.busy_study_uids(self._connections.get()):
            hasher = self._hashers.get(project)
            if hasher is None:
                hasher = self._hashers[project] = ProjectHasher.for_project(project, self.secret)
            live.add(hasher.uid(study_uid))
        return live
