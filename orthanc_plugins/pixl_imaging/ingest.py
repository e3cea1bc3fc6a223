"""orthanc-anon's per-instance step: verify the hand-off, de-identify, or discard.

Called from Orthanc's received-instance callback with the bytes of each arriving instance.
Returns the de-identified bytes (Orthanc stores those instead of the original) or ``None``
(Orthanc discards the instance). Fail closed: anything unexpected discards, and the reason is
recorded against the work item in Postgres (``pixl_core.db.study_records``), never with an
identifier: a refusal reason from the engine (``wrong_modality``…), or the ``code`` of the
configuration error that stopped it (``unknown_project``, ``invalid_allowlist``…).
"""

from __future__ import annotations

import logging

from pixl_core import db
from pixl_core.config.projects import load_project
from pixl_core.db import study_records
from pixl_core.db.polling import Counters
from pixl_core.dicom.deid import Refused, deidentify_parsed
from pixl_core.dicom.handoff import HandoffError, read_bytes
from pixl_core.dicom.header import UnreadableDicom
from pixl_core.errors import PixlConfigError
from pixl_core.hashing import ProjectHasher

logger = logging.getLogger("pixl.anon")


class AnonIngest:
    def __init__(self, db_url: str, secret: bytes) -> None:
        self.db_url = db_url
        self.secret = secret
        self.counters = Counters("deidentified", "discarded_without_handoff")
        self._connections = db.ThreadConnections(db_url, "orthanc-anon-ingest")

    def _conn(self) -> db.Connection:
        return self._connections.get()

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
        self.counters.add("deidentified")
        return result.data

    def _refuse(
        self, work_item_id: int, sop_uid: str, reason: str, hasher: ProjectHasher | None
    ) -> None:
        """Record one refused instance (idempotent: a re-sent instance is counted once)."""
        self.counters.add(f"refused_{reason}")
        key = hasher.uid(sop_uid) if hasher is not None else ProjectHasher(self.secret).uid(sop_uid)
        try:
            study_records.record_refusal(self._conn(), work_item_id, key, reason)
        except Exception as exc:  # the instance is discarded either way
            self._connections.reset()
            logger.error("could not record a refusal (%s)", type(exc).__name__)
        logger.info("refused an instance of study item %s: %s", work_item_id, reason)
