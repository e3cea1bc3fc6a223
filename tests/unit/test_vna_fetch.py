"""VNA fetch policy against a stand-in for Orthanc's REST API (the real thing is in
tests/system): ask the VNA as little as possible."""

from __future__ import annotations

from typing import Any

import pytest

from pixl_imaging.vna_fetch import FetchError, FetchSettings, Outcome, StudyQuery, fetch_study

CHEST = frozenset({"CR", "DX"})
STUDY_UID = "1.2.3.4"


class FakeVnaAndRaw:
    """orthanc-raw's REST API with a VNA behind it: C-FIND answers and C-MOVE copies."""

    def __init__(self, vna: dict[str, list[str]], modality: str = "CR", lose: int = 0) -> None:
        self.vna = vna  # study uid -> SOP instance uids
        self.local: dict[str, str] = {}  # sop uid -> orthanc id
        self.modality = modality
        self.lose = lose  # instances a C-MOVE silently fails to deliver
        self.moves: list[Any] = []
        self._queries: dict[str, tuple[str, dict[str, Any]]] = {}

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        if path == "/modalities/vna/query":
            query_id = f"q{len(self._queries)}"
            self._queries[query_id] = (body["Level"], body["Query"])
            return {"ID": query_id}
        if path == "/tools/find":
            uid = body["Query"]["StudyInstanceUID"]
            return [
                {"ID": oid, "MainDicomTags": {"SOPInstanceUID": sop}}
                for sop, oid in self.local.items()
                if sop in self.vna.get(uid, [])
            ]
        if path.endswith("/retrieve"):
            self.moves.append(("study", path))
            self._deliver(self.vna[STUDY_UID])
            return {}
        if path == "/modalities/vna/move":
            self.moves.append(("instances", [r["SOPInstanceUID"] for r in body["Resources"]]))
            self._deliver([r["SOPInstanceUID"] for r in body["Resources"]])
            return {}
        raise AssertionError(path)

    def _deliver(self, sops: list[str]) -> None:
        for sop in sops[: len(sops) - self.lose]:
            self.local[sop] = f"id-{sop}"
        self.lose = 0

    def get(self, path: str) -> Any:
        query_id = path.split("/")[2]
        level, query = self._queries[query_id]
        matches = (
            [uid for uid in self.vna if query.get("StudyInstanceUID") in ("", uid)]
            if query.get("AccessionNumber") != "NOPE"
            else []
        )
        if level == "Instance":
            answers = [
                {"SOPInstanceUID": sop, "SeriesInstanceUID": "9.9"} for sop in self.vna[STUDY_UID]
            ]
        else:
            answers = [
                {
                    "StudyInstanceUID": uid,
                    "ModalitiesInStudy": self.modality,
                    "NumberOfStudyRelatedInstances": str(len(self.vna[uid])),
                }
                for uid in matches
            ]
        if path.endswith("/answers"):
            return list(range(len(answers)))
        return answers[int(path.split("/")[4])]

    def get_bytes(self, path: str) -> bytes:
        raise AssertionError(path)

    def post_bytes(self, path: str, data: bytes) -> Any:
        raise AssertionError(path)

    def delete(self, path: str) -> None:
        raise AssertionError(path)


QUERY = StudyQuery(mrn="MRN", accession_number="ACC")


def test_study_is_moved_once_then_served_from_the_cache():
    api = FakeVnaAndRaw({STUDY_UID: ["1", "2", "3"]})
    first = fetch_study(api, QUERY, CHEST, FetchSettings())
    assert (first.outcome, first.moves, len(first.instance_ids)) == (Outcome.FETCHED, 1, 3)
    second = fetch_study(api, QUERY, CHEST, FetchSettings())
    assert (second.outcome, second.moves, len(second.instance_ids)) == (Outcome.CACHED, 0, 3)
    assert len(api.moves) == 1


def test_partial_transfer_fetches_only_the_missing_instances():
    api = FakeVnaAndRaw({STUDY_UID: ["1", "2", "3"]}, lose=1)
    with pytest.raises(FetchError, match="incomplete_transfer"):
        fetch_study(api, QUERY, CHEST, FetchSettings())
    result = fetch_study(api, QUERY, CHEST, FetchSettings())
    assert result.outcome is Outcome.FETCHED
    assert api.moves[-1] == ("instances", ["3"])


def test_study_of_another_modality_is_refused_without_a_move():
    api = FakeVnaAndRaw({STUDY_UID: ["1"]}, modality="MR")
    assert fetch_study(api, QUERY, CHEST, FetchSettings()).outcome is Outcome.WRONG_MODALITY
    assert api.moves == []


def test_study_missing_from_the_vna_is_not_found():
    api = FakeVnaAndRaw({STUDY_UID: ["1"]})
    missing = StudyQuery(mrn="MRN", accession_number="NOPE")
    assert fetch_study(api, missing, CHEST, FetchSettings()).outcome is Outcome.NOT_FOUND
    assert api.moves == []


def test_two_matching_studies_are_an_error_not_a_guess():
    api = FakeVnaAndRaw({STUDY_UID: ["1"], "5.6.7": ["2"]})
    with pytest.raises(FetchError, match="ambiguous_study"):
        fetch_study(api, QUERY, CHEST, FetchSettings())
