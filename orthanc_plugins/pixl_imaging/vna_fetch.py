"""Fetch one study from the VNA into orthanc-raw, asking the VNA as little as possible.

The VNA is the hospital's archive and the rule is to ask it for each study at most once per
project, at a bounded rate. So: C-FIND first (by accession number and MRN, or by Study Instance
UID when known), skip the move entirely when orthanc-raw already holds every instance the VNA
reports (a study a second project asks for is reused), refuse without moving when the study has
none of the project's modalities, and after a partial transfer move only the missing instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pixl_core.errors import PixlError
from pixl_core.transport.orthanc_rest import OrthancApi


class FetchError(PixlError):
    """Fetching failed in a way worth retrying; ``code`` is recorded on the work item."""

    def __init__(self, code: str) -> None:
        super().__init__(f"fetch failed: {code}")
        self.code = code


class Outcome(StrEnum):
    FETCHED = "fetched"
    CACHED = "cached"
    NOT_FOUND = "not_found"
    WRONG_MODALITY = "wrong_modality"


@dataclass(frozen=True)
class StudyQuery:
    mrn: str
    accession_number: str
    study_uid: str | None = None


@dataclass
class FetchResult:
    outcome: Outcome
    study_uid: str | None = None
    instance_ids: list[str] = field(default_factory=list)
    moves: int = 0


@dataclass(frozen=True)
class FetchSettings:
    vna_modality: str = "vna"
    own_aet: str = "PIXLRAW"
    move_timeout_seconds: float = 600.0


def fetch_study(
    raw: OrthancApi, query: StudyQuery, modalities: frozenset[str], settings: FetchSettings
) -> FetchResult:
    """Make sure orthanc-raw holds the whole study; return its local instance ids."""
    answer = _find_study(raw, query, settings)
    if answer is None:
        return FetchResult(Outcome.NOT_FOUND)
    query_id, content = answer
    study_uid = str(content.get("StudyInstanceUID", ""))
    if not study_uid:
        raise FetchError("vna_answer_without_uid")
    in_study = {m for m in str(content.get("ModalitiesInStudy", "")).split("\\") if m}
    if in_study and not in_study & modalities:
        return FetchResult(Outcome.WRONG_MODALITY, study_uid=study_uid)
    expected = _as_int(content.get("NumberOfStudyRelatedInstances"))
    local = local_instances(raw, study_uid)
    if expected and len(local) >= expected:
        return FetchResult(Outcome.CACHED, study_uid, list(local.values()))
    moves = 0
    if not local:
        raw.post(
            f"/queries/{query_id}/answers/0/retrieve",
            {"TargetAet": settings.own_aet, "Synchronous": True},
            timeout=settings.move_timeout_seconds,
        )
        moves += 1
    else:
        moves += _move_missing(raw, study_uid, set(local), settings)
    local = local_instances(raw, study_uid)
    if not local or (expected and len(local) < expected):
        raise FetchError("incomplete_transfer")
    return FetchResult(Outcome.FETCHED, study_uid, list(local.values()), moves)


def _find_study(
    raw: OrthancApi, query: StudyQuery, settings: FetchSettings
) -> tuple[str, dict[str, Any]] | None:
    keys: dict[str, str] = {
        "StudyInstanceUID": query.study_uid or "",
        "ModalitiesInStudy": "",
        "NumberOfStudyRelatedInstances": "",
    }
    if not query.study_uid:
        keys["AccessionNumber"] = query.accession_number
        keys["PatientID"] = query.mrn
    found = raw.post(
        f"/modalities/{settings.vna_modality}/query", {"Level": "Study", "Query": keys}
    )
    query_id = found["ID"]
    answers = raw.get(f"/queries/{query_id}/answers")
    if not answers:
        return None
    if len(answers) > 1:
        raise FetchError("ambiguous_study")
    return query_id, raw.get(f"/queries/{query_id}/answers/0/content?simplify")


def local_instances(raw: OrthancApi, study_uid: str) -> dict[str, str]:
    """SOP Instance UID → Orthanc instance id, for what orthanc-raw holds of the study."""
    found = raw.post(
        "/tools/find",
        {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
    )
    return {item["MainDicomTags"]["SOPInstanceUID"]: item["ID"] for item in found}


def _move_missing(
    raw: OrthancApi, study_uid: str, present: set[str], settings: FetchSettings
) -> int:
    """Move just the instances orthanc-raw lacks, in one C-MOVE job."""
    found = raw.post(
        f"/modalities/{settings.vna_modality}/query",
        {
            "Level": "Instance",
            "Query": {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "SOPInstanceUID": ""},
        },
    )
    query_id = found["ID"]
    missing = []
    for index in raw.get(f"/queries/{query_id}/answers"):
        content = raw.get(f"/queries/{query_id}/answers/{index}/content?simplify")
        if content.get("SOPInstanceUID") not in present:
            missing.append(
                {
                    "StudyInstanceUID": study_uid,
                    "SeriesInstanceUID": content.get("SeriesInstanceUID", ""),
                    "SOPInstanceUID": content.get("SOPInstanceUID", ""),
                }
            )
    if not missing:
        return 0
    raw.post(
        f"/modalities/{settings.vna_modality}/move",
        {
            "Level": "Instance",
            "Resources": missing,
            "TargetAet": settings.own_aet,
            "Synchronous": True,
        },
        timeout=settings.move_timeout_seconds,
    )
    return 1


def _as_int(value: Any) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return 0
