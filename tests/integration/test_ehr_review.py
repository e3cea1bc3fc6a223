"""The review of flagged reports on a real Postgres: approve, redact, reject, the record of each,
and the export's rule that a flagged report leaves only with the exact text a person released."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from pixl_core.db.connection import MIGRATIONS_DIR, connect, migrate
from pixl_core.errors import PixlConfigError
from pixl_core.hashing import ProjectHasher
from pixl_ehr import radiology_parquet, review
from pixl_ehr.report_check import check_text
from tests.integration.ehr_fixtures import PATIENTS, PROJECT, SECRET, add_extract, row, set_state

PATIENT = {k: v for k, v in PATIENTS[1].items() if k != "mrn"}  # Bertram Oakhurst
MRN, ACCESSION = "MRN0002", "ACC0002"
TEXT = (
    "AP chest. Mr Oakhurst has a right basal opacity. "
    "Telephone 01632 960456 if worse; NHS 943 476 5870."
)


@pytest.fixture
def hasher() -> ProjectHasher:
    return ProjectHasher.for_project(PROJECT, SECRET)


def findings_of(text: str) -> list[dict[str, Any]]:
    flagged, findings = check_text(text, MRN, ACCESSION, PATIENT)
    assert flagged
    return findings


@pytest.fixture
def flagged(conn) -> tuple[int, int]:
    """(extract id, report id) of one report the real checker flagged, with its findings."""
    extract_id, (report_id,) = add_extract(conn, [(MRN, ACCESSION, 500)])
    set_state(
        conn,
        report_id,
        "flagged",
        deidentified_text=TEXT,
        check_findings=json.dumps(findings_of(TEXT)),
    )
    return extract_id, report_id


def reviews(conn, report_id: int) -> list[dict[str, Any]]:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM report_review WHERE report_id = %s ORDER BY id", (report_id,))
        names = [d.name for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def parquet_texts(conn, hasher, extract_id: int) -> dict[int, tuple[str, str]]:
    frame = radiology_parquet.build(conn, PROJECT, extract_id, hasher)
    return {
        int(p): (str(t), str(s))
        for p, t, s in zip(
            frame.procedure_occurrence_id, frame.report_text, frame.check_status, strict=True
        )
    }


def test_the_checker_flags_the_example_for_name_phone_and_nhs_number():
    kinds = {f["kind"] for f in findings_of(TEXT)}
    assert {"name", "phone", "nhs_number"} <= kinds


def test_approve_records_who_why_and_the_digest_and_exports_that_text(conn, hasher, flagged):
    extract_id, report_id = flagged
    report = review.load(conn, report_id)
    assert review.approve(conn, report, "surname is the referrer's, reviewed", "jdoe")
    assert row(conn, report_id)["state"] == "approved"
    [record] = reviews(conn, report_id)
    assert (record["decision"], record["reviewed_by"], record["reason"]) == (
        "approved",
        "jdoe",
        "surname is the referrer's, reviewed",
    )
    digest = hashlib.sha256(TEXT.encode()).hexdigest()
    assert record["released_sha256"] == record["source_sha256"] == digest
    assert record["findings_by_kind"] == review.findings_by_kind(report.findings)
    assert record["reviewed_at"] is not None
    assert parquet_texts(conn, hasher, extract_id) == {500: (TEXT, "approved")}


def test_redact_masks_every_finding_rechecks_and_exports_the_masked_text(conn, hasher, flagged):
    extract_id, report_id = flagged
    report = review.load(conn, report_id)
    masked = review.prepare_redaction(report, PATIENT)
    assert masked == (
        "AP chest. Mr [NAME] has a right basal opacity. Telephone [PHONE] if worse; NHS "
        "[NHS_NUMBER]."
    )
    assert check_text(masked, MRN, ACCESSION, PATIENT) == (False, [])
    assert review.redact(conn, report, masked, "identifiers left by Cogstack", "jdoe")
    [record] = reviews(conn, report_id)
    assert record["decision"] == "redacted"
    assert record["released_sha256"] == hashlib.sha256(masked.encode()).hexdigest()
    assert record["source_sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert parquet_texts(conn, hasher, extract_id) == {500: (masked, "redacted")}
    data = radiology_parquet.build_bytes(conn, PROJECT, extract_id, hasher)
    for value in (b"Oakhurst", b"960456", b"5870"):
        assert value not in data


def test_redact_refuses_when_the_masked_text_still_flags(conn, flagged):
    """Findings stored by an older check (here: the name only) leave the phone and NHS number
    unmasked; the re-check finds them and nothing is released."""
    _extract_id, report_id = flagged
    name_only = [f for f in findings_of(TEXT) if f["kind"] == "name"]
    set_state(
        conn, report_id, "flagged", deidentified_text=TEXT, check_findings=json.dumps(name_only)
    )
    report = review.load(conn, report_id)
    with pytest.raises(review.RecheckFailed) as raised:
        review.prepare_redaction(report, PATIENT)
    message = str(raised.value)
    assert "still flags" in message and "nhs_number 1" in message and "phone 1" in message
    assert "Oakhurst" not in message and "5870" not in message
    assert row(conn, report_id)["state"] == "flagged"
    assert reviews(conn, report_id) == []


def test_findings_outside_the_text_refuse_redaction(conn, flagged):
    _extract_id, report_id = flagged
    set_state(
        conn,
        report_id,
        "flagged",
        deidentified_text=TEXT,
        check_findings=json.dumps([{"kind": "name", "start": 5, "end": len(TEXT) + 3}]),
    )
    with pytest.raises(review.RecheckFailed, match="do not fit its text"):
        review.prepare_redaction(review.load(conn, report_id), PATIENT)


@pytest.mark.parametrize("decision", ["approve", "redact"])
def test_text_changed_after_the_decision_is_withheld(conn, hasher, flagged, decision, caplog):
    """A re-run (or anyone) changing the de-identified text after a release: the release no
    longer applies and the report is withheld, by id only."""
    extract_id, report_id = flagged
    report = review.load(conn, report_id)
    if decision == "approve":
        assert review.approve(conn, report, "eponym, reviewed", "jdoe")
    else:
        masked = review.prepare_redaction(report, PATIENT)
        assert review.redact(conn, report, masked, "identifiers left", "jdoe")
    assert 500 in parquet_texts(conn, hasher, extract_id)
    changed = TEXT.replace("right basal", "left basal")
    set_state(conn, report_id, "approved", deidentified_text=changed, check_flagged=True)
    frame = radiology_parquet.build(conn, PROJECT, extract_id, hasher)
    assert list(frame.procedure_occurrence_id) == []
    assert frame.attrs["withheld_report_ids"] == [report_id]


def test_released_text_changed_by_hand_is_withheld(conn, hasher, flagged):
    extract_id, report_id = flagged
    assert review.approve(conn, review.load(conn, report_id), "eponym, reviewed", "jdoe")
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE report SET released_text = released_text || ' x' WHERE id = %s", (report_id,)
        )
    assert parquet_texts(conn, hasher, extract_id) == {}


def test_approval_of_a_text_other_than_the_one_shown_changes_nothing(conn, hasher, flagged):
    extract_id, report_id = flagged
    shown = review.load(conn, report_id)
    set_state(conn, report_id, "flagged", deidentified_text=TEXT + " Addendum.")
    assert not review.approve(conn, shown, "eponym, reviewed", "jdoe")
    assert row(conn, report_id)["state"] == "flagged"
    assert reviews(conn, report_id) == []
    assert parquet_texts(conn, hasher, extract_id) == {}


def test_approved_without_a_recorded_decision_is_withheld(conn, hasher, flagged):
    """The state alone (as the first review code set it) does not release a flagged text."""
    extract_id, report_id = flagged
    set_state(conn, report_id, "approved", deidentified_text=TEXT, released_text=TEXT)
    frame = radiology_parquet.build(conn, PROJECT, extract_id, hasher)
    assert len(frame) == 0 and frame.attrs["withheld_report_ids"] == [report_id]


def test_reject_records_the_reason_and_history_lists_every_decision(conn, hasher):
    extract_id, ids = add_extract(conn, [(MRN, ACCESSION, 1), ("MRN9", "ACC9", 2), ("M8", "A8", 3)])
    for report_id in ids:
        set_state(
            conn,
            report_id,
            "flagged",
            deidentified_text=TEXT,
            check_findings=json.dumps(findings_of(TEXT)),
        )
    assert review.reject(conn, ids[0], "name and NHS number in the impression", "asmith")
    assert review.approve(conn, review.load(conn, ids[1]), "eponym, reviewed", "jdoe")
    report = review.load(conn, ids[2])
    assert review.redact(conn, report, review.prepare_redaction(report, PATIENT), "masked", "jdoe")
    decisions = review.history(conn, PROJECT)
    assert [(d.report_id, d.decision, d.reviewed_by) for d in decisions] == [
        (ids[0], "rejected", "asmith"),
        (ids[1], "approved", "jdoe"),
        (ids[2], "redacted", "jdoe"),
    ]
    counts = review.findings_by_kind(findings_of(TEXT))
    assert all(d.findings_by_kind == counts for d in decisions)
    assert decisions[0].reason == "name and NHS number in the impression"
    assert decisions[0].released_sha256 is None
    assert row(conn, ids[0])["state"] == "rejected"
    assert review.history(conn, "chest-xray-research") == []
    assert sorted(s for _t, s in parquet_texts(conn, hasher, extract_id).values()) == [
        "approved",
        "redacted",
    ]


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (None, "needs a reason: add --reason"),
        ("   ", "needs a reason: add --reason"),
        ("two\nlines", "one line"),
        ("ok", "3 to 500 characters"),
        ("x" * 501, "3 to 500 characters"),
    ],
)
def test_a_missing_or_malformed_reason_is_refused(reason, message):
    with pytest.raises(PixlConfigError, match=message):
        review.validate_reason(reason, "approve")


def test_a_reason_holding_the_patients_identifiers_is_refused(conn, flagged):
    _extract_id, report_id = flagged
    report = review.load(conn, report_id)
    with pytest.raises(PixlConfigError) as raised:
        review.check_reason(report, "Oakhurst is the referrer", PATIENT)
    assert "name" in str(raised.value) and "Oakhurst" not in str(raised.value)
    with pytest.raises(PixlConfigError, match="mrn"):
        review.check_reason(report, f"about {MRN}", {})
    review.check_reason(report, "the flagged word is an eponym", PATIENT)


def test_operator_is_pixl_operator_else_the_os_user(monkeypatch):
    monkeypatch.setenv("PIXL_OPERATOR", "jdoe")
    assert review.operator_name() == "jdoe"
    monkeypatch.setenv("PIXL_OPERATOR", "not a name")
    with pytest.raises(PixlConfigError, match="set PIXL_OPERATOR"):
        review.operator_name()
    monkeypatch.delenv("PIXL_OPERATOR")
    monkeypatch.setattr(review.getpass, "getuser", lambda: "osuser")
    assert review.operator_name() == "osuser"


def test_migration_sends_unrecorded_approvals_back_to_review(pg_url, tmp_path: Path):
    """Approvals made before 0006 have no reason or digest: they become flagged again."""
    from tests.fixtures.postgres import fresh_database

    with fresh_database(pg_url) as url:
        older = tmp_path / "migrations"
        older.mkdir()
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if path.name < "0006":
                shutil.copy(path, older / path.name)
        migrate(url, directory=older)
        conn = connect(url)
        try:
            _extract, (approved, checked) = add_extract(conn, [("M1", "A1", 1), ("M2", "A2", 2)])
            set_state(conn, approved, "approved")
            set_state(conn, checked, "checked")
            migrate(url)
            assert row(conn, approved)["state"] == "flagged"
            assert row(conn, checked)["state"] == "checked"
        finally:
            conn.close()
