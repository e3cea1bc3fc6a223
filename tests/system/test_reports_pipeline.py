"""Radiology reports through the real stack: EMAP (a schema in the stack's Postgres) → Cogstack
stand-in → checker → radiology parquet → FTPS DSH, linked to the images by the hashed accession
number. Runs after the imaging tests (file order) on the same cohort.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from pydicom import dcmread

from pixl_core.db.states import REPORT_BUSY
from pixl_core.hashing import ProjectHasher, hash_accession_number
from stack.driver import PIXL_CLI, Stack
from stack.synthetic.cohort import Cohort
from tests.fixtures.stack import MAIN

pytestmark = pytest.mark.system


def parquet_folder(stack: Stack, project: str) -> Path:
    (folder,) = (stack.settings.dsh_dir / project).glob("*/parquet")
    return folder


def radiology(stack: Stack, project: str) -> pd.DataFrame:
    return pd.read_parquet(parquet_folder(stack, project) / "radiology" / "radiology.parquet")


@pytest.fixture(scope="module")
def exported(stack: Stack, cohort: Cohort, first_run) -> dict[str, int]:
    counts = stack.wait_until_settled([MAIN], timeout=120, reports=True).reports[MAIN]
    result = json.loads(stack.pixl("export-patient-data", MAIN, "--json").stdout)
    assert result["reports_exported"] > 0
    return counts


def test_reports_are_checked_and_missing_ones_recorded(stack: Stack, cohort: Cohort, exported):
    without_report = [s for s in cohort.studies_for(MAIN) if not s.has_report]
    assert exported.get("missing", 0) == len(without_report)
    assert exported.get("failed", 0) == 0


def test_radiology_parquet_links_reports_to_the_exported_images(
    stack: Stack, cohort: Cohort, exported
):
    frame = radiology(stack, MAIN)
    assert list(frame.columns)[:2] == ["procedure_occurrence_id", "hashed_accession_number"]
    hasher = ProjectHasher.for_project(MAIN, stack.settings.secrets["PIXL_HASH_KEY"].encode())
    by_hash = dict(zip(frame.hashed_accession_number, frame.procedure_occurrence_id, strict=True))
    linked = 0
    for study in cohort.studies_for(MAIN):
        if study.expected_outcome != "exported" or not study.has_report:
            continue
        hashed = hash_accession_number(hasher, study.accession_number)
        if hashed not in by_hash:
            continue  # withheld: flagged by the checker (next test)
        assert by_hash[hashed] == study.procedure_ids[MAIN]
        archive = stack.settings.dsh_dir / MAIN / "dicom" / f"{hasher.uid(study.study_uid)}.zip"
        with zipfile.ZipFile(archive) as zipped:
            ds = dcmread(io.BytesIO(zipped.read(zipped.namelist()[0])))
        assert ds.AccessionNumber == hashed  # the same keyed hash on both sides
        linked += 1
    assert linked >= 3


def test_public_parquet_and_manifest_arrive_intact(stack: Stack, exported):
    folder = parquet_folder(stack, MAIN)
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {item["path"]: item for item in manifest["files"]}
    assert "public/PROCEDURE_OCCURRENCE.parquet" in files
    assert "radiology/radiology.parquet" in files
    for path, item in files.items():
        assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == item["sha256"]


def test_second_export_sends_nothing_again(stack: Stack, exported):
    result = json.loads(stack.pixl("export-patient-data", MAIN, "--json").stdout)
    assert result["files_sent"] == 0
    assert result["files_skipped"] >= 3


def test_dsh_reports_and_parquet_hold_no_identifier(stack: Stack, cohort: Cohort, exported):
    identifiers = sorted(cohort.identifiers(), key=len, reverse=True)
    texts = []
    for path in stack.settings.dsh_dir.rglob("*.parquet"):
        frame = pd.read_parquet(path)
        texts += [str(v) for column in frame.columns for v in frame[column].tolist()]
        texts.append(path.read_bytes().decode("latin-1"))
    assert any(len(t) > 200 for t in texts), "expected report texts in the parquet"
    for value in identifiers:
        for text in texts:
            assert value not in text, "an identifier of the cohort reached the DSH"


def review_cli(
    stack: Stack, *args: str, answer: str = "", operator: str = "sysreviewer"
) -> subprocess.CompletedProcess[str]:
    """``pixl reports ARGS`` as an operator types it: stdin answers the confirmation."""
    return subprocess.run(
        [str(PIXL_CLI), "reports", *args],
        env={**stack.env, "PIXL_OPERATOR": operator},
        input=answer,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def report_row(stack: Stack, report_id: int) -> tuple[str, int, str]:
    """(state, procedure id, accession number) of a report."""
    return stack.query(
        "SELECT state, procedure_occurrence_id, accession_number FROM report WHERE id = %s",
        report_id,
    )[0]


def test_flagged_reports_are_withheld_until_approved_or_redacted(
    stack: Stack, cohort: Cohort, exported
):
    flagged = json.loads(stack.pixl("reports", "flagged", MAIN, "--json").stdout)
    assert len(flagged) >= 2, "the default cohort has reports the stand-in de-identifier misses"
    to_redact, to_approve = flagged[0]["report_id"], flagged[1]["report_id"]
    in_parquet = set(radiology(stack, MAIN).procedure_occurrence_id)
    for report_id in (to_redact, to_approve):
        assert report_row(stack, report_id)[1] not in in_parquet
    shown = stack.pixl("reports", "show", str(to_approve)).stdout
    assert f"report {to_approve} (flagged)" in shown

    # approve needs a reason; without --yes it asks, and "no" changes nothing.
    no_reason = review_cli(stack, "approve", str(to_approve), "--yes")
    assert no_reason.returncode == 2 and "add --reason" in no_reason.stderr
    declined = review_cli(
        stack, "approve", str(to_approve), "--reason", "eponym, reviewed", answer="n\n"
    )
    assert declined.returncode == 1 and "nothing changed" in declined.stderr
    assert report_row(stack, to_approve)[0] == "flagged"
    assert json.loads(stack.pixl("reports", "history", MAIN, "--json").stdout) == []

    # Redact: released with every finding masked, re-checked first.
    redacted = review_cli(stack, "redact", str(to_redact), "--reason", "left by Cogstack", "--yes")
    assert redacted.returncode == 0, redacted.stderr
    # Approve (this releases what the checker found, which is why it runs after the DSH scan
    # above: a real reviewer would redact or reject such a report).
    approved = review_cli(
        stack, "approve", str(to_approve), "--reason", "eponym, reviewed", answer="y\n"
    )
    assert approved.returncode == 0, approved.stderr
    assert review_cli(stack, "approve", str(to_approve), "-r", "again", "--yes").returncode == 1

    result = json.loads(stack.pixl("export-patient-data", MAIN, "--json").stdout)
    assert "radiology/radiology.parquet" in result["sent"]
    assert "public/PROCEDURE_OCCURRENCE.parquet" not in result["sent"]
    assert result["reports_withheld"] == 0
    frame = radiology(stack, MAIN).set_index("procedure_occurrence_id")

    _state, procedure_id, accession = report_row(stack, to_redact)
    text, status = frame.loc[procedure_id, ["report_text", "check_status"]]
    assert status == "redacted"
    assert "[" in text and any(f"[{f['kind'].upper()}]" in text for f in flagged[0]["findings"])
    (study,) = [s for s in cohort.studies_for(MAIN) if s.accession_number == accession]
    for value in study.patient_identifiers():
        assert value not in text, "a redacted report reached the DSH with an identifier"

    procedure_id = report_row(stack, to_approve)[1]
    assert frame.loc[procedure_id, "check_status"] == "approved"
    history = json.loads(stack.pixl("reports", "history", MAIN, "--json").stdout)
    assert [(h["report_id"], h["decision"], h["reviewed_by"], h["reason"]) for h in history] == [
        (to_redact, "redacted", "sysreviewer", "left by Cogstack"),
        (to_approve, "approved", "sysreviewer", "eponym, reviewed"),
    ]
    released = hashlib.sha256(str(frame.loc[procedure_id, "report_text"]).encode()).hexdigest()
    assert history[1]["released_sha256"] == released


def test_cogstack_down_then_back_reports_exported_once(stack: Stack, cohort: Cohort, exported):
    project = "retry-cogstack"
    studies = [s for s in cohort.studies_for(MAIN) if s.has_report][:3]
    csv = stack.settings.root / f"{project}.csv"
    csv.write_text(
        "mrn,accession_number,study_datetime,procedure_occurrence_id\n"
        + "".join(f"{s.mrn},{s.accession_number},,{s.procedure_ids[MAIN]}\n" for s in studies)
    )
    stack.supervisor("stop", "cogstack")
    try:
        stack.pixl("populate", str(csv), "--project", project)
        time.sleep(8)
        counts = stack.report_status().get(project, {})
        assert sum(counts.get(s, 0) for s in REPORT_BUSY) == len(studies), counts
        assert counts.get("failed", 0) == 0
    finally:
        stack.supervisor("start", "cogstack")
    settled = stack.wait_until_settled([project], timeout=180, reports=True)
    assert settled.reports[project].get("failed", 0) == 0
    result = json.loads(stack.pixl("export-patient-data", project, "--json").stdout)
    frame = radiology(stack, project)
    assert len(frame) == result["reports_in_parquet"] == len(frame.procedure_occurrence_id.unique())
    again = json.loads(stack.pixl("export-patient-data", project, "--json").stdout)
    assert again["files_sent"] == 0 and again["reports_exported"] == 0


def test_no_log_of_any_process_holds_an_identifier(stack: Stack, cohort: Cohort, exported):
    """Runs last: every process's log after the whole flow, failures and retries included."""
    identifiers = sorted(cohort.identifiers(), key=len, reverse=True)
    logs = sorted(stack.settings.logs_dir.glob("*.log"))
    assert {p.stem for p in logs} >= {"orthanc-raw", "orthanc-anon", "ehr", "dsh", "postgres"}
    for log in logs:
        text = log.read_text(errors="replace")
        for value in identifiers:
            assert value not in text, f"an identifier of the cohort is in {log.name}"
