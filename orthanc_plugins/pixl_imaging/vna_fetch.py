"""Fetch one study from the VNA into orthanc-raw, asking the VNA as little as possible, and
name exactly the instances the VNA reported for it.

The VNA is the hospital's archive and the rule is to ask it for each study at most once per
project, at a bounded rate. So: C-FIND first (by accession number and MRN, or by Study Instance
UID when known). In the common case that is all the asking before the move: orthanc-raw holds
nothing of the study, and the study-level answer names one of the project's modalities
(ModalitiesInStudy) and how many instances the study has (NumberOfStudyRelatedInstances), so
the study is moved whole and exactly that many instances arriving is the listing (anything
else falls back to the listing below; ``_fetch_uncached_study``). Otherwise: list the study's
series (a C-FIND at series level), refuse without moving when
the study has none of the project's modalities, list each series' instances (a C-FIND at
instance level per series), skip the move entirely when orthanc-raw already holds every one of
them (a study a second project asks for is reused), and after a partial transfer move only what
is missing (a series that lost most of its instances in one request, else the missing instances
one by one).

Real archives are hierarchical (DICOM PS3.4 C.4.1.2.1, the baseline a Q/R SCP without
relational queries offers): a query below study level must name the unique key of every level
above it with one value, so an instance-level C-FIND without its SeriesInstanceUID is refused.
Hence series first, then instances series by series; and every instance-level C-MOVE (a
top-up) names the study, the series and the instance. The system tests run this against DCMTK's
``dcmqrscp`` as well as an Orthanc (``stack/standins/dcmqrscp_archive.py`` lists its quirks).
What such an archive does not answer is not required: the modalities are taken from
ModalitiesInStudy and from each series' Modality (dcmqrscp answers only the latter), and the
instance count is checked only when the archive gives NumberOfStudyRelatedInstances.

What the archive says is checked, not trusted:

- a study-level answer is accepted only when its PatientID and AccessionNumber equal the ones
  asked for (its StudyInstanceUID, when asking by UID), up to DICOM's insignificant padding
  spaces. A C-FIND key holding ``*`` or ``?`` is a wildcard to the archive, so an answer about
  another patient is possible; such answers are dropped, never moved;
- only instances the archive listed for the study are handed on (``FetchResult.instances``). An
  instance orthanc-raw holds for that study which the archive did not list (stored into the
  cache by anything else) is counted in ``unlisted`` and never leaves;
- an archive that lists fewer instances than it says the study has
  (NumberOfStudyRelatedInstances) is an error, not a smaller study.

Several studies behind one accession number (an archive that filed a repeat or a second part
under the same accession): the study-level C-FIND answers with more than one exact match. They
are never moved as one: ``fetch_study`` returns ``SEVERAL_STUDIES`` with their UIDs and moves
nothing, and the caller decides (the project's ``multiple_studies_per_accession``: a work item
per study, each then asked for by its UID, or the item refused).

The archive asked is ``FetchSettings.vna_modality``, an Orthanc modality name (the VNA, or a
secondary archive such as a PACS): nothing here depends on which archive it is.

Every C-MOVE request is audited through a ``MoveAudit``: the intent is recorded before the
request and the outcome after it, so the audit counts exactly what the archive's own log counts
even when the process or the database dies in between (fault F3). One REST call is one C-MOVE
request: Orthanc sends one request per resource, so a top-up names one resource per call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

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
    # The accession number and MRN matched several studies (``FetchResult.study_uids``).
    SEVERAL_STUDIES = "several_studies"


class MoveAudit(Protocol):
    """Where each C-MOVE request asked of the VNA is recorded (``vna_move``)."""

    def requested(self, level: str) -> int:
        """Record the intent to send one C-MOVE at ``level``; return its audit id. Must succeed
        before the request is sent: a move that cannot be audited is not made."""
        ...

    def finished(
        self,
        move_id: int,
        outcome: str,
        *,
        instances: int | None = None,
        error_code: str | None = None,
    ) -> None:
        """Record how the request ended (``completed`` or ``failed``)."""
        ...


@dataclass(frozen=True)
class StudyQuery:
    mrn: str
    accession_number: str
    study_uid: str | None = None


@dataclass(frozen=True)
class LocalInstance:
    """An instance of the study that orthanc-raw holds (``file_size`` from Orthanc's index)."""

    id: str
    sop_uid: str
    file_size: int = 0


@dataclass
class FetchResult:
    outcome: Outcome
    study_uid: str | None = None
    # The instances the VNA listed for the study, as orthanc-raw holds them: what is handed on.
    instances: list[LocalInstance] = field(default_factory=list)
    # C-MOVE requests the VNA was sent (what its own log counts): 1 for a whole study.
    moves: int = 0
    # Instances orthanc-raw holds for the study that the VNA did not list: never handed on.
    unlisted: int = 0
    # SEVERAL_STUDIES: the Study Instance UIDs the archive answered with, sorted.
    study_uids: list[str] = field(default_factory=list)

    @property
    def instance_ids(self) -> list[str]:
        return [instance.id for instance in self.instances]


@dataclass(frozen=True)
class FetchSettings:
    vna_modality: str = "vna"
    own_aet: str = "PIXLRAW"
    move_timeout_seconds: float = 600.0


def fetch_study(
    raw: OrthancApi,
    query: StudyQuery,
    modalities: frozenset[str],
    settings: FetchSettings,
    audit: MoveAudit,
) -> FetchResult:
    """Make sure orthanc-raw holds every instance the VNA lists for the study; return them."""
    answers = _find_study(raw, query, settings)
    if not answers:
        return FetchResult(Outcome.NOT_FOUND)
    if len(answers) > 1:
        uids = sorted(
            {str(content.get("StudyInstanceUID", "")).strip(" \x00") for *_, content in answers}
        )
        if "" in uids:
            raise FetchError("vna_answer_without_uid")
        if len(uids) < len(answers):
            raise FetchError("ambiguous_study")  # one study answered twice: not to be trusted
        return FetchResult(Outcome.SEVERAL_STUDIES, study_uids=uids)
    query_index, query_id, content = answers[0]
    study_uid = str(content.get("StudyInstanceUID", ""))
    if not study_uid:
        raise FetchError("vna_answer_without_uid")
    fetched, moves = _fetch_uncached_study(
        raw, query_id, query_index, content, modalities, settings, audit
    )
    if fetched is not None:
        return fetched
    series = _listed_series(raw, study_uid, settings)
    in_study = {m for m in str(content.get("ModalitiesInStudy", "")).split("\\") if m}
    in_study |= {modality for modality in series.values() if modality}
    if in_study and not in_study & modalities:
        return FetchResult(Outcome.WRONG_MODALITY, study_uid=study_uid)
    listed = _listed_instances(raw, study_uid, series, settings)
    expected = _as_int(content.get("NumberOfStudyRelatedInstances"))
    if not listed or (expected and len(listed) < expected):
        raise FetchError("vna_listing_incomplete")
    local = local_instances(raw, study_uid)
    missing = [sop for sop in listed if sop not in local]
    if missing and moves:
        raise FetchError("incomplete_transfer")
    if missing:
        if not set(listed) & set(local):
            arrived = _Arrived(raw, study_uid, set(listed))
            _audited_move(
                raw,
                audit,
                "study",
                len(listed),
                f"/queries/{query_id}/answers/{query_index}/retrieve",
                {"TargetAet": settings.own_aet, "Synchronous": True},
                settings,
                arrived=arrived,
            )
            moves += 1
            local = arrived.local
        else:
            moves += _move_missing(raw, study_uid, listed, set(missing), settings, audit)
            local = local_instances(raw, study_uid)
        if any(sop not in local for sop in listed):
            raise FetchError("incomplete_transfer")
    return FetchResult(
        Outcome.FETCHED if moves else Outcome.CACHED,
        study_uid,
        [local[sop] for sop in listed],
        moves,
        unlisted=sum(1 for sop in local if sop not in listed),
    )


def _fetch_uncached_study(
    raw: OrthancApi,
    query_id: str,
    query_index: int,
    content: dict[str, Any],
    modalities: frozenset[str],
    settings: FetchSettings,
    audit: MoveAudit,
) -> tuple[FetchResult | None, int]:
    """The common case in one C-FIND and one C-MOVE: the result, or None to take the listing
    path, and the C-MOVE requests made here.

    When orthanc-raw holds nothing of the study and the study-level answer already says what
    the listing would (ModalitiesInStudy with one of the project's modalities, and
    NumberOfStudyRelatedInstances), the series and instance C-FINDs add nothing but time: the
    study is moved whole, and what arrived is the listing when it is exactly as many instances
    as the archive said. Anything else (a partial cache, an archive that does not answer those
    keys, a study without the project's modalities, another count after the move) goes the
    listing way, which decides refusals, short listings and top-ups as before; after a move
    here it asks for nothing more in this try (what is missing is an ``incomplete_transfer``,
    topped up by the next try, as after any short transfer).
    """
    study_uid = str(content["StudyInstanceUID"])
    in_study = {m for m in str(content.get("ModalitiesInStudy", "")).split("\\") if m}
    expected = _as_int(content.get("NumberOfStudyRelatedInstances"))
    if not expected or not in_study & modalities or local_instances(raw, study_uid):
        return None, 0
    arrived = _Arrived(raw, study_uid)
    _audited_move(
        raw,
        audit,
        "study",
        expected,
        f"/queries/{query_id}/answers/{query_index}/retrieve",
        {"TargetAet": settings.own_aet, "Synchronous": True},
        settings,
        arrived=arrived,
    )
    local = arrived.local
    if len(local) != expected:  # the listing tells a short transfer from a short listing
        return None, 1
    return FetchResult(Outcome.FETCHED, study_uid, [local[sop] for sop in sorted(local)], 1), 1


class _Arrived:
    """How many of ``wanted`` (else of any) instances of the study orthanc-raw holds after a
    move, for its audit; the same read is then the caller's view of the study (``local``)."""

    def __init__(self, raw: OrthancApi, study_uid: str, wanted: set[str] | None = None) -> None:
        self.raw, self.study_uid, self.wanted = raw, study_uid, wanted
        self.local: dict[str, LocalInstance] = {}

    def __call__(self) -> int:
        self.local = local_instances(self.raw, self.study_uid)
        return len(self.local if self.wanted is None else self.wanted & set(self.local))


def _same(value: Any, wanted: str) -> bool:
    """Equal as DICOM compares them: leading and trailing spaces are padding, nothing else."""
    return isinstance(value, str) and value.strip(" \x00") == wanted.strip(" \x00")


def _find_study(
    raw: OrthancApi, query: StudyQuery, settings: FetchSettings
) -> list[tuple[int, str, dict[str, Any]]]:
    """The study-level answers that are exactly the study asked for: (index among the answers,
    the query id, content) of each; more than one when an accession number holds several
    studies. Asked by UID, two answers are one study answered twice: refused."""
    keys: dict[str, str] = {
        "StudyInstanceUID": query.study_uid or "",
        "ModalitiesInStudy": "",
        "NumberOfStudyRelatedInstances": "",
        "AccessionNumber": "",
        "PatientID": "",
    }
    if not query.study_uid:
        keys["AccessionNumber"] = query.accession_number
        keys["PatientID"] = query.mrn
    found = raw.post(
        f"/modalities/{settings.vna_modality}/query", {"Level": "Study", "Query": keys}
    )
    query_id = found["ID"]
    matches = []
    for index in raw.get(f"/queries/{query_id}/answers"):
        content = raw.get(f"/queries/{query_id}/answers/{index}/content?simplify")
        if query.study_uid:
            exact = _same(content.get("StudyInstanceUID"), query.study_uid)
        else:
            exact = _same(content.get("PatientID"), query.mrn) and _same(
                content.get("AccessionNumber"), query.accession_number
            )
        if exact:
            matches.append((int(index), query_id, content))
    if query.study_uid and len(matches) > 1:
        raise FetchError("ambiguous_study")
    return matches


def _answers(
    raw: OrthancApi, level: str, keys: dict[str, str], settings: FetchSettings
) -> list[dict[str, Any]]:
    """The VNA's answers to one C-FIND through orthanc-raw, each as a simplified dict."""
    found = raw.post(f"/modalities/{settings.vna_modality}/query", {"Level": level, "Query": keys})
    query_id = found["ID"]
    return [
        raw.get(f"/queries/{query_id}/answers/{index}/content?simplify")
        for index in raw.get(f"/queries/{query_id}/answers")
    ]


def _uid(value: Any) -> str:
    return str(value or "").strip(" \x00")


def _listed_series(raw: OrthancApi, study_uid: str, settings: FetchSettings) -> dict[str, str]:
    """Series Instance UID → Modality of every series the VNA lists for the study."""
    keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "Modality": ""}
    series: dict[str, str] = {}
    for content in _answers(raw, "Series", keys, settings):
        if not _same(content.get("StudyInstanceUID", study_uid), study_uid):
            continue  # an answer about another study is no answer
        uid = _uid(content.get("SeriesInstanceUID"))
        if uid:
            series[uid] = _uid(content.get("Modality"))
    return series


def _listed_instances(
    raw: OrthancApi, study_uid: str, series: dict[str, str], settings: FetchSettings
) -> dict[str, str]:
    """SOP Instance UID → Series Instance UID of every instance the VNA lists for the study:
    one instance-level C-FIND per series, naming the study and the series (a hierarchical
    archive refuses an instance-level query without them)."""
    listed: dict[str, str] = {}
    for series_uid in series:
        keys = {
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": series_uid,
            "SOPInstanceUID": "",
        }
        for content in _answers(raw, "Instance", keys, settings):
            if not _same(content.get("StudyInstanceUID", study_uid), study_uid) or not _same(
                content.get("SeriesInstanceUID", series_uid), series_uid
            ):
                continue  # an answer about another study or series is no answer
            sop_uid = _uid(content.get("SOPInstanceUID"))
            if sop_uid:
                listed[sop_uid] = series_uid
    return listed


def local_instances(raw: OrthancApi, study_uid: str) -> dict[str, LocalInstance]:
    """SOP Instance UID → the instance, for what orthanc-raw holds of the study."""
    found = raw.post(
        "/tools/find",
        {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
    )
    return {
        item["MainDicomTags"]["SOPInstanceUID"]: LocalInstance(
            id=item["ID"],
            sop_uid=item["MainDicomTags"]["SOPInstanceUID"],
            file_size=int(item.get("FileSize") or 0),
        )
        for item in found
    }


def _audited_move(
    raw: OrthancApi,
    audit: MoveAudit,
    level: str,
    instances: int,
    path: str,
    body: dict[str, Any],
    settings: FetchSettings,
    arrived: Callable[[], int] | None = None,
) -> None:
    """Send one C-MOVE request through orthanc-raw, its intent audited before and its outcome
    after. With ``arrived`` (how many of the ``instances`` orthanc-raw holds now), a move the
    archive reported done that brought fewer is audited as what it was: ``failed``
    (``incomplete_transfer``) with the count that arrived, not ``completed``; an archive may
    report success, or a warning Orthanc passes as success, when some of its sub-operations
    failed (orthanc-raw could not store while its index was away)."""
    move_id = audit.requested(level)
    try:
        raw.post(path, body, timeout=settings.move_timeout_seconds)
    except PixlError as exc:
        audit.finished(move_id, "failed", error_code=f"orthanc_{exc.code}")
        raise
    got = arrived() if arrived is not None else instances
    if got < instances:
        audit.finished(move_id, "failed", instances=got, error_code="incomplete_transfer")
    else:
        audit.finished(move_id, "completed", instances=instances)


def _move_missing(
    raw: OrthancApi,
    study_uid: str,
    listed: dict[str, str],
    missing: set[str],
    settings: FetchSettings,
    audit: MoveAudit,
) -> int:
    """Move what orthanc-raw lacks; return how many C-MOVE requests the VNA was sent.

    A series that lost most (and more than one) of its instances, as after an interrupted
    transfer, is asked for whole in one request (orthanc-raw ignores the copies it already
    holds); otherwise each missing instance is asked for by itself, so nothing is sent twice.
    """
    by_series: dict[str, list[str]] = {}
    for sop, series in listed.items():
        by_series.setdefault(series, []).append(sop)
    series_level: list[dict[str, str]] = []
    instance_level: list[dict[str, str]] = []
    for series, sops in by_series.items():
        lacking = [sop for sop in sops if sop in missing]
        if len(lacking) > 1 and 2 * len(lacking) > len(sops):
            series_level.append({"StudyInstanceUID": study_uid, "SeriesInstanceUID": series})
        else:
            instance_level += [
                {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series, "SOPInstanceUID": sop}
                for sop in lacking
            ]
    for level, resources in (("Series", series_level), ("Instance", instance_level)):
        for resource in resources:
            count = (
                sum(1 for series in listed.values() if series == resource["SeriesInstanceUID"])
                if level == "Series"
                else 1
            )
            _audited_move(
                raw,
                audit,
                level.lower(),
                count,
                f"/modalities/{settings.vna_modality}/move",
                {
                    "Level": level,
                    "Resources": [resource],
                    "TargetAet": settings.own_aet,
                    "Synchronous": True,
                },
                settings,
            )
    return len(series_level) + len(instance_level)


def _as_int(value: Any) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return 0
