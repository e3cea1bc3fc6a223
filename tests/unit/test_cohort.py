"""The synthetic cohort: its extracts validate, its special cases are there, it is reproducible.

The demo and the system tests trust this cohort to say what should happen to every study and
which strings must never reach the DSH, so those promises are checked here, without services.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pydicom
import pytest

from pixl_cli.extract_reader import read_extract
from pixl_core.text.checker import nhs_number_is_valid
from stack.synthetic.cohort import (
    DUPLICATED_ROW,
    EXPORTED,
    MIN_IDENTIFIER_LENGTH,
    MISSING_FROM_VNA,
    NO_REPORT,
    NOT_FOUND,
    REFUSED,
    SCOUT_SERIES,
    SECOND_PROJECT_ONLY,
    SHARED,
    WRONG_MODALITY,
    Cohort,
    generate_cohort,
    load_into_vna,
)
from stack.synthetic.dicom_builder import EXAMPLE_CREATOR

PROJECT = "chest-xray"
SECOND = "chest-xray-research"
N_STUDIES = 12
SIZE = 64  # small images keep the test fast; the layout does not depend on the size


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    return generate_cohort(tmp_path_factory.mktemp("cohort"), n_studies=N_STUDIES, image_size=SIZE)


def test_extract_validates_and_collapses_duplicates(cohort: Cohort) -> None:
    extract = read_extract(cohort.out_dir / "extract")
    assert extract.project == PROJECT
    assert extract.omop_es_hash
    assert extract.duplicate_rows >= 1
    assert extract.rows_without_links == 0
    assert len(extract.cohort) == N_STUDIES
    expected = {(s.mrn, s.accession_number) for s in cohort.studies_for(PROJECT)}
    assert set(zip(extract.cohort["mrn"], extract.cohort["accession_number"], strict=True)) == (
        expected
    )
    accessions = set(extract.cohort["accession_number"])
    for role in (MISSING_FROM_VNA, WRONG_MODALITY, DUPLICATED_ROW, SHARED):
        assert cohort.by_role(role).accession_number in accessions
    assert cohort.by_role(SECOND_PROJECT_ONLY).accession_number not in accessions
    assert extract.cohort["study_datetime"].notna().all()


def test_second_project_extract(cohort: Cohort) -> None:
    extract = read_extract(cohort.out_dir / f"extract-{SECOND}")
    assert extract.project == SECOND
    assert set(extract.cohort["accession_number"]) == {
        cohort.by_role(SHARED).accession_number,
        cohort.by_role(SECOND_PROJECT_ONLY).accession_number,
    }
    assert cohort.by_role(SHARED).projects == [PROJECT, SECOND]


def test_expected_outcomes(cohort: Cohort) -> None:
    assert cohort.expected_counts(PROJECT) == {EXPORTED: N_STUDIES - 2, NOT_FOUND: 1, REFUSED: 1}
    assert cohort.expected_counts(SECOND) == {EXPORTED: 2, NOT_FOUND: 0, REFUSED: 0}
    assert cohort.by_role(MISSING_FROM_VNA).expected_outcome == NOT_FOUND
    assert not cohort.by_role(MISSING_FROM_VNA).in_vna
    assert cohort.by_role(WRONG_MODALITY).expected_outcome == REFUSED
    for project in (PROJECT, SECOND):  # both exercise the Philips DigitalDiagnost override
        assert any(
            s.model == "DigitalDiagnost" and s.expected_outcome == EXPORTED
            for s in cohort.studies_for(project)
        )


def test_dicom_files(cohort: Cohort) -> None:
    files = cohort.dicom_files()
    assert files == sorted(path for s in cohort.studies for path in s.files)
    assert not cohort.by_role(MISSING_FROM_VNA).files
    seen_uids: set[str] = set()
    modalities: set[str] = set()
    philips_private = 0
    for path in files:
        ds = pydicom.dcmread(path)
        seen_uids.add(str(ds.StudyInstanceUID))
        modalities.add(str(ds.Modality))
        assert ds.pixel_array.shape == (SIZE, SIZE)
        assert ds.BitsStored == 12
        if ds.Manufacturer == "Philips Medical Systems" and ds.Modality == "DX":
            block = ds.private_block(0x0021, EXAMPLE_CREATOR)
            assert block[0x10].VR == "DS"
            philips_private += 1
    assert modalities == {"CR", "DX", "MR"}
    assert philips_private >= 1
    assert cohort.by_role(WRONG_MODALITY).modality == "MR"
    assert cohort.by_role(MISSING_FROM_VNA).study_uid not in seen_uids
    scout = cohort.by_role(SCOUT_SERIES)
    assert [s.description for s in scout.series if s.filtered] == ["SCOUT"]
    assert scout.expected_instances == len(scout.sop_instance_uids) - 1


def test_file_names_carry_no_identifier(cohort: Cohort) -> None:
    identifiers = cohort.identifiers()
    for path in cohort.dicom_files():
        assert not any(value in path.name for value in identifiers)


def test_identifiers(cohort: Cohort) -> None:
    identifiers = cohort.identifiers()
    assert min(len(value) for value in identifiers) >= MIN_IDENTIFIER_LENGTH
    for study in cohort.studies:
        assert study.mrn in identifiers
        assert study.accession_number in identifiers
        assert {study.nhs_number, study.nhs_number_spaced, study.postcode} <= identifiers
        assert {study.family_name.upper(), study.patient_name, study.study_uid} <= identifiers
        assert set(study.sop_instance_uids) <= identifiers
        assert nhs_number_is_valid(study.nhs_number)  # what the checker looks for
    assert len({s.accession_number for s in cohort.studies}) == len(cohort.studies)


def test_public_files_hold_no_identifier(cohort: Cohort) -> None:
    identifiers = cohort.identifiers()
    for folder in cohort.extract_dirs.values():
        for path in (folder / "public").glob("*.parquet"):
            data = path.read_bytes()
            assert not [v for v in identifiers if v.encode() in data], path.name


def test_reports(cohort: Cohort) -> None:
    lines = [json.loads(line) for line in cohort.reports_path.read_text().splitlines()]
    with_report = [s for s in cohort.studies if s.has_report]
    assert len(lines) == len(with_report) == len(cohort.studies) - 1
    by_accession = {line["accession_number"]: line for line in lines}
    assert cohort.by_role(NO_REPORT).accession_number not in by_accession
    planted = 0
    for study in with_report:
        report = by_accession[study.accession_number]
        assert set(report) == {"mrn", "accession_number", "narrative", "impression", "addenda"}
        assert report["mrn"] == study.mrn
        text = "\n".join([report["narrative"], report["impression"], *report["addenda"]])
        for value in study.report_identifiers:
            assert value in text
        planted += bool(study.report_identifiers)
    assert 0 < planted < len(with_report)  # some reports carry identifiers, some are clean
    everything = "\n".join(json.dumps(line) for line in lines)
    for needle in (
        "Swan-Ganz",
        "Kerley B",
        "Pancoast",
        "CTR 0.55",
        "5 mm",
        "Consultant Radiologist",
    ):
        assert needle in everything


def test_same_seed_same_bytes(cohort: Cohort, tmp_path: Path) -> None:
    again = generate_cohort(tmp_path / "again", n_studies=N_STUDIES, image_size=SIZE)
    assert again.identifiers() == cohort.identifiers()
    for path in sorted(cohort.out_dir.rglob("*")):
        if path.is_file():
            twin = tmp_path / "again" / path.relative_to(cohort.out_dir)
            assert twin.read_bytes() == path.read_bytes(), path.name
    other = generate_cohort(tmp_path / "other", n_studies=N_STUDIES, seed=8, image_size=SIZE)
    assert not {s.study_uid for s in other.studies} & {s.study_uid for s in cohort.studies}


def test_too_few_studies(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        generate_cohort(tmp_path, n_studies=3)


class _FakeOrthanc(BaseHTTPRequestHandler):
    """Answers POST /instances like Orthanc: Success once, AlreadyStored after."""

    stored: ClassVar[set[bytes]] = set()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.path == "/instances"
        status = "AlreadyStored" if body in self.stored else "Success"
        self.stored.add(body)
        payload = json.dumps({"Status": status}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_orthanc() -> Iterator[tuple[str, set[bytes]]]:
    _FakeOrthanc.stored = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOrthanc)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", _FakeOrthanc.stored
    finally:
        server.shutdown()
        server.server_close()


def test_load_into_vna_is_idempotent(cohort: Cohort, fake_orthanc: tuple[str, set[bytes]]) -> None:
    url, stored = fake_orthanc
    count = len(cohort.dicom_files())
    assert load_into_vna(cohort, url) == count
    assert load_into_vna(cohort, url) == count
    assert len(stored) == count
