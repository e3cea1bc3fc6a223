"""The radiology parquet (columns, the hashed accession link, what is left out) and review."""

from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pixl_core.hashing import ProjectHasher, hash_accession_number
from pixl_ehr import radiology_parquet, review
from tests.integration.ehr_fixtures import PROJECT, SECRET, add_extract, row, set_state


@pytest.fixture
def hasher() -> ProjectHasher:
    return ProjectHasher.for_project(PROJECT, SECRET)


STATES = ["checked", "flagged", "approved", "rejected", "missing", "failed", "exported", "queued"]


def approve(conn, report_id: int, operator: str = "reviewer1") -> bool:
    """Approve the report's current text, as ``pixl reports approve --yes`` does."""
    report = review.load(conn, report_id)
    assert report is not None
    return review.approve(conn, report, "eponym, not the patient", operator)


@pytest.fixture
def extract(conn) -> tuple[int, dict[str, int]]:
    """One report in each state; 'approved' and 'exported' went through review (flagged, then
    approved with a recorded reason), as only recorded releases are exported."""
    studies = [(f"MRN{i}", f"ACC{i}", 100 + i) for i in range(len(STATES))]
    extract_id, ids = add_extract(conn, studies)
    by_state = dict(zip(STATES, ids, strict=True))
    for state, report_id in by_state.items():
        if state in ("approved", "exported"):
            set_state(conn, report_id, "flagged")
            assert approve(conn, report_id, "someone")
            if state == "exported":
                set_state(conn, report_id, state, check_flagged=True)
        elif state in ("missing", "failed", "queued"):
            set_state(conn, report_id, state, deidentified_text=None, check_flagged=None)
        else:
            set_state(conn, report_id, state)
    return extract_id, by_state


def test_columns_and_rows(conn, hasher, extract):
    extract_id, by_state = extract
    frame = radiology_parquet.build(conn, PROJECT, extract_id, hasher)
    assert list(frame.columns) == [
        "procedure_occurrence_id",
        "hashed_accession_number",
        "report_text",
        "check_status",
    ]
    rows = frame.to_dict("records")
    assert [(r["procedure_occurrence_id"], r["check_status"]) for r in rows] == [
        (100, "passed"),  # checked
        (102, "approved"),
        (106, "approved"),  # exported after review
    ]
    assert rows[0]["report_text"] == f"de-identified report {by_state['checked']}"


def test_hashed_accession_is_the_dicom_one(conn, hasher, extract):
    extract_id, _ = extract
    frame = radiology_parquet.build(conn, PROJECT, extract_id, hasher)
    expected = [hash_accession_number(hasher, f"ACC{i}") for i in (0, 2, 6)]
    assert list(frame["hashed_accession_number"]) == expected
    other = ProjectHasher.for_project("chest-xray-research", SECRET)
    assert hash_accession_number(other, "ACC0") not in expected


def test_parquet_bytes_are_stable_and_readable(conn, hasher, extract):
    extract_id, _ = extract
    first = radiology_parquet.build_bytes(conn, PROJECT, extract_id, hasher)
    second = radiology_parquet.build_bytes(conn, PROJECT, extract_id, hasher)
    assert first == second
    table = pq.read_table(io.BytesIO(first))
    assert table.schema.names == list(radiology_parquet.COLUMNS)
    assert str(table.schema.field("procedure_occurrence_id").type) == "int64"
    assert len(pd.read_parquet(io.BytesIO(first))) == 3


def test_no_identifier_in_the_parquet(conn, hasher, extract):
    extract_id, _ = extract
    data = radiology_parquet.build_bytes(conn, PROJECT, extract_id, hasher)
    for i in range(len(STATES)):
        assert f"ACC{i}".encode() not in data and f"MRN{i}".encode() not in data


def test_flagged_report_appears_once_approved(conn, hasher, extract):
    extract_id, by_state = extract
    flagged = by_state["flagged"]
    before = radiology_parquet.build(conn, PROJECT, extract_id, hasher)
    assert 101 not in set(before["procedure_occurrence_id"])

    assert approve(conn, flagged)
    after = radiology_parquet.build(conn, PROJECT, extract_id, hasher)
    [status] = after.loc[after["procedure_occurrence_id"] == 101, "check_status"]
    assert status == "approved"


def test_list_flagged_gives_kinds_and_offsets(conn, extract):
    _, by_state = extract
    findings = [
        {"kind": "nhs_number", "start": 3, "end": 13},
        {"kind": "name", "start": 20, "end": 25},
    ]
    set_state(conn, by_state["flagged"], "flagged", check_findings=json.dumps(findings))
    assert review.list_flagged(conn, PROJECT) == [(by_state["flagged"], findings)]
    assert review.list_flagged(conn, "chest-xray-research") == []


def test_approve_and_reject_apply_only_from_flagged(conn, extract):
    _, by_state = extract
    flagged = by_state["flagged"]
    shown = review.load(conn, flagged)
    assert review.reject(conn, flagged, "holds the patient's name", "reviewer1")
    state = row(conn, flagged)
    assert (state["state"], state["reviewed_by"]) == ("rejected", "reviewer1")
    assert state["reviewed_at"] is not None
    # Already decided: neither decision applies again, and the first one stands.
    assert not review.approve(conn, shown, "second opinion", "reviewer2")
    assert not review.reject(conn, flagged, "second opinion", "reviewer2")
    assert row(conn, flagged)["reviewed_by"] == "reviewer1"
    # Reports that were never flagged cannot be approved into the export.
    for state in ("checked", "rejected"):
        report = review.load(conn, by_state[state])
        assert not review.approve(conn, report, "not flagged", "reviewer1")
    for state in ("missing", "failed", "queued"):
        assert review.load(conn, by_state[state]) is None  # no text: nothing to approve
        assert not review.reject(conn, by_state[state], "not flagged", "reviewer1")
    assert not review.reject(conn, 999_999, "no such report", "reviewer1")
