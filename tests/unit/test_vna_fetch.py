"""VNA fetch policy against a stand-in for Orthanc's REST API (the real thing is in
tests/system): ask the VNA as little as possible, and accept from it only what was asked for."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from pixl_core.transport.orthanc_rest import OrthancError
from pixl_imaging.vna_fetch import FetchError, FetchSettings, Outcome, StudyQuery, fetch_study

CHEST = frozenset({"CR", "DX"})
STUDY_UID = "1.2.3.4"


@dataclass
class VnaStudy:
    uid: str
    sops: list[str]
    patient_id: str = "MRN"
    accession: str = "ACC"
    modality: str = "CR"
    # What the VNA says the study holds, if not len(sops) (a VNA that truncates its listing).
    reported_count: int | None = None
    series: dict[str, str] = field(default_factory=dict)  # sop -> series uid, else "9.9"


@dataclass
class RecordingAudit:
    """The ``vna_move`` audit as a list: [level, outcome, instances, error_code] per request."""

    rows: list[list[Any]] = field(default_factory=list)

    def requested(self, level: str) -> int:
        self.rows.append([level, "pending", None, None])
        return len(self.rows) - 1

    def finished(
        self,
        move_id: int,
        outcome: str,
        *,
        instances: int | None = None,
        error_code: str | None = None,
    ) -> None:
        self.rows[move_id][1:] = [outcome, instances, error_code]


@dataclass
class FakeVnaAndRaw:
    """orthanc-raw's REST API with a VNA behind it: C-FIND answers and C-MOVE copies.

    The VNA matches C-FIND keys the way a DICOM archive does: ``*`` and ``?`` are wildcards
    and an empty key matches anything; it answers with the values it holds. It is
    hierarchical, as real archives are: a series-level query must name one study and an
    instance-level one a study and a series, or it fails as orthanc-raw reports an archive's
    refusal (HTTP 500). ``answers_counts=False`` plays an archive (dcmqrscp) that answers
    neither ModalitiesInStudy nor NumberOfStudyRelatedInstances."""

    studies: list[VnaStudy]
    lose: int = 0  # instances the next C-MOVE silently fails to deliver
    local: dict[str, tuple[str, str]] = field(default_factory=dict)  # sop -> (orthanc id, study)
    moves: list[Any] = field(default_factory=list)
    audit: RecordingAudit = field(default_factory=RecordingAudit)
    fail_moves: bool = False  # the VNA goes away: every C-MOVE fails
    answers_counts: bool = True
    queries: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (level, keys)
    _queries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def study(self, uid: str) -> VnaStudy:
        return next(s for s in self.studies if s.uid == uid)

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        if path == "/modalities/vna/query":
            self.queries.append((body["Level"], dict(body["Query"])))
            query_id = f"q{len(self._queries)}"
            self._queries[query_id] = self._answers(body["Level"], body["Query"])
            return {"ID": query_id}
        if path == "/tools/find":
            uid = body["Query"]["StudyInstanceUID"]
            return [
                {"ID": oid, "FileSize": 100, "MainDicomTags": {"SOPInstanceUID": sop}}
                for sop, (oid, study) in self.local.items()
                if study == uid
            ]
        if self.fail_moves and (path.endswith("/retrieve") or path.endswith("/move")):
            raise OrthancError("the VNA is gone", "http_500", 500)
        if path.endswith("/retrieve"):
            parts = path.split("/")
            answer = self._queries[parts[2]][int(parts[4])]
            self.moves.append(("study", answer["StudyInstanceUID"]))
            self._deliver(answer["StudyInstanceUID"], self.study(answer["StudyInstanceUID"]).sops)
            return {}
        if path == "/modalities/vna/move" and body["Level"] == "Series":
            for resource in body["Resources"]:
                study = self.study(resource["StudyInstanceUID"])
                self.moves.append(("series", resource["SeriesInstanceUID"]))
                self._deliver(study.uid, study.sops)
            return {}
        if path == "/modalities/vna/move":
            for resource in body["Resources"]:  # Orthanc itself refuses it otherwise
                assert resource["StudyInstanceUID"] and resource["SeriesInstanceUID"]
            sops = [r["SOPInstanceUID"] for r in body["Resources"]]
            self.moves.append(("instances", sops))
            self._deliver(body["Resources"][0]["StudyInstanceUID"], sops)
            return {}
        raise AssertionError(path)

    def _deliver(self, study_uid: str, sops: list[str]) -> None:
        for sop in sops[: len(sops) - self.lose]:
            self.local[sop] = (f"id-{sop}", study_uid)
        self.lose = 0

    def _answers(self, level: str, query: dict[str, str]) -> list[dict[str, Any]]:
        def matches(key: str, value: str) -> bool:
            wanted = query.get(key, "").strip()
            if not wanted:
                return True
            pattern = "".join(
                ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in wanted
            )
            return re.fullmatch(pattern, value.strip()) is not None

        def single(key: str) -> str:
            value = query.get(key, "").strip()
            if not value or any(c in value for c in "*?\\"):
                raise OrthancError("C-FIND SCU failed with DIMSE status 0xA900", "http_500", 500)
            return value

        if level in ("Series", "Instance"):
            study = self.study(single("StudyInstanceUID"))
            series = {sop: study.series.get(sop, "9.9") for sop in study.sops}
            if level == "Series":
                return [
                    {
                        "StudyInstanceUID": study.uid,
                        "SeriesInstanceUID": uid,
                        "Modality": study.modality,
                    }
                    for uid in sorted(set(series.values()))
                    if matches("SeriesInstanceUID", uid)
                ]
            wanted = single("SeriesInstanceUID")
            return [
                {"StudyInstanceUID": study.uid, "SeriesInstanceUID": uid, "SOPInstanceUID": sop}
                for sop, uid in series.items()
                if uid == wanted
            ]
        answers = []
        for s in self.studies:
            if not (
                matches("StudyInstanceUID", s.uid)
                and matches("PatientID", s.patient_id)
                and matches("AccessionNumber", s.accession)
            ):
                continue
            answer = {"StudyInstanceUID": s.uid, "PatientID": s.patient_id}
            answer["AccessionNumber"] = s.accession
            if self.answers_counts:
                answer["ModalitiesInStudy"] = s.modality
                count = len(s.sops) if s.reported_count is None else s.reported_count
                answer["NumberOfStudyRelatedInstances"] = str(count)
            answers.append(answer)
        return answers

    def get(self, path: str) -> Any:
        parts = path.split("?")[0].split("/")
        answers = self._queries[parts[2]]
        if path.endswith("/answers"):
            return list(range(len(answers)))
        return answers[int(parts[4])]

    def get_bytes(self, path: str) -> bytes:
        raise AssertionError(path)

    def post_bytes(self, path: str, data: bytes) -> Any:
        raise AssertionError(path)

    def delete(self, path: str) -> None:
        raise AssertionError(path)


QUERY = StudyQuery(mrn="MRN", accession_number="ACC")


def one_study(**options: Any) -> FakeVnaAndRaw:
    return FakeVnaAndRaw([VnaStudy(STUDY_UID, ["1", "2", "3"], **options)])


def test_study_is_moved_once_then_served_from_the_cache():
    api = one_study()
    first = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert (first.outcome, first.moves, len(first.instance_ids)) == (Outcome.FETCHED, 1, 3)
    second = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert (second.outcome, second.moves, len(second.instance_ids)) == (Outcome.CACHED, 0, 3)
    assert len(api.moves) == 1


def test_partial_transfer_fetches_only_the_missing_instances():
    api = one_study()
    api.lose = 1
    with pytest.raises(FetchError, match="incomplete_transfer"):
        fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    result = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert result.outcome is Outcome.FETCHED
    assert api.moves[-1] == ("instances", ["3"])


def test_study_of_another_modality_is_refused_without_a_move():
    api = one_study(modality="MR")
    assert (
        fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit).outcome is Outcome.WRONG_MODALITY
    )
    assert api.moves == []


def test_study_missing_from_the_vna_is_not_found():
    api = one_study()
    missing = StudyQuery(mrn="MRN", accession_number="NOPE")
    assert fetch_study(api, missing, CHEST, FetchSettings(), api.audit).outcome is Outcome.NOT_FOUND
    assert api.moves == []


def test_two_studies_behind_one_accession_are_named_and_nothing_is_moved():
    api = FakeVnaAndRaw([VnaStudy("5.6.7", ["2"]), VnaStudy(STUDY_UID, ["1"])])
    result = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert result.outcome is Outcome.SEVERAL_STUDIES
    assert result.study_uids == [STUDY_UID, "5.6.7"]
    assert api.moves == [] and api.audit.rows == []


def test_each_of_several_studies_is_then_fetched_alone_by_its_uid():
    api = FakeVnaAndRaw([VnaStudy("5.6.7", ["2"]), VnaStudy(STUDY_UID, ["1"])])
    for uid, sop in ((STUDY_UID, "1"), ("5.6.7", "2")):
        by_uid = StudyQuery(mrn="MRN", accession_number="ACC", study_uid=uid)
        result = fetch_study(api, by_uid, CHEST, FetchSettings(), api.audit)
        assert result.outcome is Outcome.FETCHED
        assert result.study_uid == uid
        assert [i.sop_uid for i in result.instances] == [sop]
    assert len(api.moves) == 2


def test_one_uid_answered_twice_is_an_error_not_a_guess():
    api = FakeVnaAndRaw([VnaStudy(STUDY_UID, ["1"]), VnaStudy(STUDY_UID, ["2"])])
    with pytest.raises(FetchError, match="ambiguous_study"):
        fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)


def test_wildcard_answers_about_other_patients_are_never_moved():
    """`*` as MRN and `ACC1?` as accession: the archive answers with another patient's study
    (its values differ from the ones asked for), which is dropped: not found, no move."""
    api = FakeVnaAndRaw([VnaStudy(STUDY_UID, ["1"], patient_id="OTHER", accession="ACC12")])
    wildcard = StudyQuery(mrn="*", accession_number="ACC1?")
    assert (
        fetch_study(api, wildcard, CHEST, FetchSettings(), api.audit).outcome is Outcome.NOT_FOUND
    )
    assert api.moves == []


def test_only_the_exactly_matching_answer_is_moved():
    """Among several answers, the one whose PatientID and AccessionNumber equal the request is
    moved, by its own index."""
    api = FakeVnaAndRaw(
        [
            VnaStudy("5.6.7", ["a"], patient_id="MRN", accession="ACC0"),
            VnaStudy(STUDY_UID, ["1", "2"], patient_id="MRN", accession="ACC?"),
        ]
    )
    result = fetch_study(
        api, StudyQuery(mrn="MRN", accession_number="ACC?"), CHEST, FetchSettings(), api.audit
    )
    assert (result.outcome, result.study_uid) == (Outcome.FETCHED, STUDY_UID)
    assert api.moves == [("study", STUDY_UID)]


def test_padding_spaces_are_not_a_difference():
    api = one_study(patient_id="MRN ", accession=" ACC")
    assert fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit).outcome is Outcome.FETCHED


def test_query_by_uid_accepts_only_that_uid():
    api = FakeVnaAndRaw([VnaStudy("1.2.3.40", ["1"]), VnaStudy(STUDY_UID, ["2"])])
    api.studies[0].uid = "1.2.3.4*"  # an archive whose matching is looser than asked
    by_uid = StudyQuery(mrn="MRN", accession_number="ACC", study_uid=STUDY_UID)
    result = fetch_study(api, by_uid, CHEST, FetchSettings(), api.audit)
    assert result.study_uid == STUDY_UID
    assert api.moves == [("study", STUDY_UID)]


def test_a_local_instance_the_vna_did_not_list_is_not_handed_on():
    """Something stored an extra instance into orthanc-raw's copy of the study: it is counted,
    never part of what is handed on."""
    api = one_study()
    fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    api.local["injected"] = ("id-injected", STUDY_UID)
    result = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert result.outcome is Outcome.CACHED
    assert sorted(result.instance_ids) == ["id-1", "id-2", "id-3"]
    assert result.unlisted == 1


def test_an_extra_instance_does_not_stand_in_for_a_missing_one():
    """Three local instances for a three-instance study, but one is not the archive's: the
    missing one is still moved (a count alone would have called the study complete)."""
    api = one_study()
    fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    del api.local["2"]
    api.local["injected"] = ("id-injected", STUDY_UID)
    result = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert result.outcome is Outcome.FETCHED
    assert api.moves[-1] == ("instances", ["2"])
    assert "id-injected" not in result.instance_ids


def test_a_listing_shorter_than_the_study_is_an_error():
    """The archive says 5 and holds 3: the one move of an uncached study brings 3, the listing
    then shows the archive short, and nothing more is asked for, now or on the next try."""
    api = one_study(reported_count=5)
    for _ in range(2):
        with pytest.raises(FetchError, match="vna_listing_incomplete"):
            fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert api.moves == [("study", STUDY_UID)]


def test_a_series_that_lost_most_of_its_instances_is_moved_whole_in_one_request():
    """An interrupted transfer left 1 of 5: one C-MOVE for the series, not four."""
    api = FakeVnaAndRaw([VnaStudy(STUDY_UID, ["1", "2", "3", "4", "5"])])
    api.lose = 4
    with pytest.raises(FetchError, match="incomplete_transfer"):
        fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    result = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert (result.outcome, result.moves, len(result.instance_ids)) == (Outcome.FETCHED, 1, 5)
    assert api.moves[-1] == ("series", "9.9")


def test_a_lone_missing_instance_is_asked_for_by_itself():
    """A series of one whose instance is missing: asked for at instance level (one request
    either way, and nothing else of the series is sent again)."""
    api = FakeVnaAndRaw([VnaStudy(STUDY_UID, ["1", "2", "3"], series={"1": "8.8"})])
    fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    del api.local["1"]
    result = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert result.moves == 1
    assert api.moves[-1] == ("instances", ["1"])


def test_every_move_request_is_audited_before_it_is_sent_and_after():
    """One audit row per C-MOVE request the VNA sees (fault F3): the whole study, then a top-up
    series and a lone instance, each with its outcome and instance count."""
    api = FakeVnaAndRaw([VnaStudy(STUDY_UID, ["1", "2", "3", "4"], series={"4": "8.8"})])
    fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    for sop in ("1", "2", "4"):
        del api.local[sop]
    fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert len(api.audit.rows) == len(api.moves) == 3
    assert api.audit.rows == [
        ["study", "completed", 4, None],
        ["series", "completed", 3, None],
        ["instance", "completed", 1, None],
    ]


def test_a_move_that_fails_stays_in_the_audit_as_failed():
    """The VNA was asked (its log shows the request) even though the move failed: the row
    stays, with the failure's code."""
    api = one_study()
    api.fail_moves = True
    with pytest.raises(OrthancError):
        fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert api.audit.rows == [["study", "failed", None, "orthanc_http_500"]]


def test_a_move_that_cannot_be_audited_is_not_sent():
    class NoDatabase(RecordingAudit):
        def requested(self, level: str) -> int:
            raise ConnectionError("database away")

    api = one_study()
    with pytest.raises(ConnectionError):
        fetch_study(api, QUERY, CHEST, FetchSettings(), NoDatabase())
    assert api.moves == []


def test_instance_level_queries_name_the_study_and_one_series():
    """A hierarchical archive refuses an instance-level C-FIND without its series: the series
    are listed first, then each one's instances by study and series UID."""
    api = FakeVnaAndRaw(
        [VnaStudy(STUDY_UID, ["1", "2", "3"], series={"1": "8.8", "2": "8.8", "3": "7.7"})],
        answers_counts=False,  # else the study-level answer is enough (see the next tests)
    )
    result = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert (result.outcome, len(result.instance_ids)) == (Outcome.FETCHED, 3)
    levels = [level for level, _ in api.queries]
    assert levels == ["Study", "Series", "Instance", "Instance"]
    instance_keys = [keys for level, keys in api.queries if level == "Instance"]
    assert sorted(keys["SeriesInstanceUID"] for keys in instance_keys) == ["7.7", "8.8"]
    assert all(keys["StudyInstanceUID"] == STUDY_UID for keys in instance_keys)


def test_top_up_moves_name_the_study_and_the_series_of_each_instance():
    api = FakeVnaAndRaw([VnaStudy(STUDY_UID, ["1", "2", "3"], series={"1": "8.8", "3": "7.7"})])
    fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    del api.local["1"]
    del api.local["3"]
    moved: list[dict[str, str]] = []
    post = api.post

    def recording(path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        if path == "/modalities/vna/move":
            moved.extend(body["Resources"])
        return post(path, body, timeout=timeout)

    api.post = recording  # type: ignore[method-assign]
    result = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert result.moves == 2
    assert sorted(moved, key=lambda r: r["SOPInstanceUID"]) == [
        {"StudyInstanceUID": STUDY_UID, "SeriesInstanceUID": "8.8", "SOPInstanceUID": "1"},
        {"StudyInstanceUID": STUDY_UID, "SeriesInstanceUID": "7.7", "SOPInstanceUID": "3"},
    ]


def test_an_archive_without_modalities_in_study_is_judged_by_its_series():
    """dcmqrscp answers neither ModalitiesInStudy nor the instance count: an MR study is still
    refused before any move, from its series' Modality, and a CR study is fetched whole."""
    mr = FakeVnaAndRaw([VnaStudy(STUDY_UID, ["1"], modality="MR")], answers_counts=False)
    assert fetch_study(mr, QUERY, CHEST, FetchSettings(), mr.audit).outcome is (
        Outcome.WRONG_MODALITY
    )
    assert mr.moves == []
    cr = FakeVnaAndRaw([VnaStudy(STUDY_UID, ["1", "2"])], answers_counts=False)
    result = fetch_study(cr, QUERY, CHEST, FetchSettings(), cr.audit)
    assert (result.outcome, len(result.instance_ids)) == (Outcome.FETCHED, 2)


def test_an_uncached_study_whose_answer_says_enough_costs_one_c_find_and_one_c_move():
    """ModalitiesInStudy and NumberOfStudyRelatedInstances in the study-level answer, nothing
    cached: no series or instance C-FIND, and exactly the instances that arrived are handed on."""
    api = FakeVnaAndRaw([VnaStudy(STUDY_UID, ["1", "2", "3"], series={"3": "7.7"})])
    result = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert (result.outcome, result.moves) == (Outcome.FETCHED, 1)
    assert sorted(result.instance_ids) == ["id-1", "id-2", "id-3"]
    assert [level for level, _ in api.queries] == ["Study"]
    assert api.moves == [("study", STUDY_UID)]
    assert api.audit.rows == [["study", "completed", 3, None]]


def test_a_short_transfer_after_the_one_c_find_move_is_listed_and_topped_up_next_try():
    api = one_study()
    api.lose = 1
    with pytest.raises(FetchError, match="incomplete_transfer"):
        fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert [level for level, _ in api.queries] == ["Study", "Series", "Instance"]
    assert len(api.moves) == 1  # nothing more asked for in the same try
    result = fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit)
    assert (result.outcome, result.moves) == (Outcome.FETCHED, 1)
    assert api.moves[-1] == ("instances", ["3"])
    # The archive called the first move done; the audit says what it brought.
    assert api.audit.rows == [
        ["study", "failed", 2, "incomplete_transfer"],
        ["instance", "completed", 1, None],
    ]


def test_an_answer_without_the_projects_modality_is_decided_by_the_series_listing():
    """ModalitiesInStudy may be incomplete: a study it does not show as the project's is
    listed by series before it is refused, and a CR series found there is fetched."""
    api = one_study(modality="MR")
    assert (
        fetch_study(api, QUERY, CHEST, FetchSettings(), api.audit).outcome is Outcome.WRONG_MODALITY
    )
    assert [level for level, _ in api.queries] == ["Study", "Series"]
    assert api.moves == []
