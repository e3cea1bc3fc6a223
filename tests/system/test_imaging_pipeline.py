"""The imaging pipeline through the real stack: OMOP ES extract → VNA → orthanc-raw →
orthanc-anon → FTPS DSH. Tests run in file order and share one cohort: the first settles the
main project, later ones build on what it left (cache, DSH contents).
"""

from __future__ import annotations

import io
import re
import time
import zipfile
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

from pixl_core.hashing import ProjectHasher, hash_accession_number
from stack.driver import Stack
from stack.synthetic.cohort import NAME_IN_DESCRIPTION, Cohort
from tests.fixtures.stack import MAIN

pytestmark = pytest.mark.system


def hasher(stack: Stack, project: str) -> ProjectHasher:
    return ProjectHasher.for_project(project, stack.settings.secrets["PIXL_HASH_KEY"].encode())


def zips(stack: Stack, project: str) -> dict[str, Path]:
    folder = stack.settings.dsh_dir / project / "dicom"
    return {p.stem: p for p in folder.glob("*.zip")}


def study_state(stack: Stack, project: str, accession: str) -> tuple[str, str | None]:
    (row,) = stack.query(
        "SELECT state, last_error_code FROM study WHERE project = %s AND accession_number = %s",
        project,
        accession,
    )
    return row


def test_every_expected_study_arrives_deidentified(stack: Stack, cohort: Cohort, first_run):
    expected = cohort.expected_counts(MAIN)
    assert first_run["exported"] == expected["exported"] > 0
    assert first_run["failed"] == 0
    arrived = zips(stack, MAIN)
    project_hasher = hasher(stack, MAIN)
    for study in cohort.studies_for(MAIN):
        if study.expected_outcome != "exported":
            continue
        pseudo_uid = project_hasher.uid(study.study_uid)
        assert pseudo_uid in arrived, "an expected study is missing from the DSH"
        with zipfile.ZipFile(arrived[pseudo_uid]) as archive:
            names = archive.namelist()
            assert len(names) == study.expected_instances
            for name in names:
                ds = dcmread(io.BytesIO(archive.read(name)))
                assert ds.StudyInstanceUID == pseudo_uid
                assert name == f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
                # The link to the radiology parquet: the same keyed hash, from the same function.
                assert ds.AccessionNumber == hash_accession_number(
                    project_hasher, study.accession_number
                )
                assert ds.PatientIdentityRemoved == "YES"
                assert "PatientName" not in ds or not ds.PatientName


def test_a_description_with_the_patients_surname_arrives_empty(
    stack: Stack, cohort: Cohort, first_run
):
    """Issue 9 §2 through the real pipeline: orthanc-anon's engine checks kept descriptions
    against each instance's identifiers; examination names of the other studies are kept."""
    study = cohort.by_role(NAME_IN_DESCRIPTION)
    assert study.family_name.upper() in study.study_description
    arrived = zips(stack, MAIN)
    pseudo_uid = hasher(stack, MAIN).uid(study.study_uid)
    state = study_state(stack, MAIN, study.accession_number)
    assert pseudo_uid in arrived, f"the study's zip is not in the DSH (study {state})"
    with zipfile.ZipFile(arrived[pseudo_uid]) as archive:
        for name in archive.namelist():
            data = archive.read(name)
            ds = dcmread(io.BytesIO(data))
            assert ds.StudyDescription == ""
            assert "113105" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
            assert study.family_name.upper().encode() not in data
    other = next(
        s
        for s in cohort.studies_for(MAIN)
        if s.expected_outcome == "exported" and s.role != NAME_IN_DESCRIPTION
    )
    with zipfile.ZipFile(arrived[hasher(stack, MAIN).uid(other.study_uid)]) as archive:
        first = dcmread(io.BytesIO(archive.read(archive.namelist()[0])))
        assert first.StudyDescription == other.study_description


def test_wrong_modality_is_refused_and_missing_study_is_not_found(
    stack: Stack, cohort: Cohort, first_run
):
    for study in cohort.studies_for(MAIN):
        state, code = study_state(stack, MAIN, study.accession_number)
        assert state == study.expected_outcome
        if study.modality == "MR":
            assert (state, code) == ("refused", "modality_not_allowed")
        if not study.in_vna:
            assert state == "not_found"


def test_repopulating_asks_the_vna_for_nothing_new(stack: Stack, cohort: Cohort, first_run):
    moves = stack.vna_moves()
    assert moves >= first_run["exported"], "the VNA log should show the first run's C-MOVEs"
    output = stack.pixl("populate", str(cohort.extract_dir)).stdout
    assert re.search(r"\b0 studies added\b", output)
    time.sleep(3)
    assert stack.status()[MAIN] == first_run
    assert stack.vna_moves() == moves


def test_second_project_reuses_the_cached_study(stack: Stack, cohort: Cohort, first_run):
    second = cohort.second_project
    assert second is not None
    shared = [s for s in cohort.studies_for(second) if MAIN in s.projects]
    own = [s for s in cohort.studies_for(second) if MAIN not in s.projects]
    assert shared, "the cohort should share a study between the two projects"
    moves = stack.vna_moves()
    stack.pixl("populate", str(cohort.extract_dirs[second]))
    counts = stack.wait_until_settled([second]).studies[second]
    assert counts["exported"] == cohort.expected_counts(second)["exported"]
    new_moves = stack.vna_moves() - moves
    assert new_moves == sum(1 for s in own if s.in_vna and s.expected_outcome == "exported")
    for study in shared:
        main_uid = hasher(stack, MAIN).uid(study.study_uid)
        second_uid = hasher(stack, second).uid(study.study_uid)
        assert main_uid != second_uid, "projects must not be linkable"
        # chest-xray-research sends its images to the DICOMweb server (its project file).
        held = stack.dicomweb().instances_of_study(second_uid)
        assert len(held) == study.expected_instances > 0
        assert second_uid not in zips(stack, second)


def test_dsh_holds_no_identifier_of_the_cohort(stack: Stack, cohort: Cohort, first_run):
    identifiers = sorted(cohort.identifiers(), key=len, reverse=True)
    assert len(identifiers) > 50
    scanned = 0
    for path in stack.settings.dsh_dir.rglob("*"):
        if not path.is_file():
            continue
        blobs = [(str(path.relative_to(stack.settings.dsh_dir)).encode(), path.read_bytes())]
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                blobs += [(n.encode(), archive.read(n)) for n in archive.namelist()]
        for name, data in blobs:
            scanned += 1
            for value in identifiers:
                needle = value.encode()
                assert needle not in name, f"identifier in a DSH file name ({path.name})"
                assert needle not in data, f"identifier in DSH content ({path.name})"
    assert scanned > 10


def _stor_count(stack: Stack, pseudo_uid: str) -> int:
    log = (stack.settings.logs_dir / "dsh.log").read_text(errors="replace")
    return sum(1 for line in log.splitlines() if "STOR" in line and pseudo_uid in line)


def test_partial_cache_fetches_only_the_missing_instances(stack: Stack, cohort: Cohort, first_run):
    project = "partial-fetch"
    study = next(
        s
        for s in cohort.studies_for(MAIN)
        if s.expected_outcome == "exported" and len(s.sop_instance_uids) >= 2
    )
    raw = requests.Session()
    raw.auth = stack.orthanc_auth
    found = raw.post(
        stack.settings.url("raw") + "/tools/find",
        json={"Level": "Instance", "Query": {"StudyInstanceUID": study.study_uid}},
        timeout=30,
    ).json()
    assert len(found) >= 2, "the study should be in orthanc-raw's cache"
    raw.delete(f"{stack.settings.url('raw')}/instances/{found[0]}", timeout=30)
    csv = stack.settings.root / f"{project}.csv"
    csv.write_text(f"mrn,accession_number,study_datetime\n{study.mrn},{study.accession_number},\n")
    moves = stack.vna_moves()
    stack.pixl("populate", str(csv), "--project", project)
    assert stack.wait_until_settled([project]).studies[project]["exported"] == 1
    assert stack.vna_moves() == moves + 1, "one C-MOVE, for the missing instance only"
    log = (stack.settings.logs_dir / "vna.log").read_text(errors="replace")
    last_move = log[log.rindex("Incoming Move request") :]
    assert "QueryRetrieveLevel = IMAGE" in last_move[:2000]
    pseudo_uid = hasher(stack, project).uid(study.study_uid)
    with zipfile.ZipFile(zips(stack, project)[pseudo_uid]) as archive:
        assert len(archive.namelist()) == study.expected_instances


def test_dsh_down_then_back_exports_each_study_once(stack: Stack, cohort: Cohort, first_run):
    project = "retry-ftps"
    studies = [s for s in cohort.studies_for(MAIN) if s.expected_outcome == "exported"]
    csv = stack.settings.root / f"{project}.csv"
    csv.write_text(
        "mrn,accession_number,study_datetime\n"
        + "".join(f"{s.mrn},{s.accession_number},\n" for s in studies)
    )
    stack.supervisor("stop", "dsh")
    try:
        stack.pixl("populate", str(csv), "--project", project)
        deadline = time.monotonic() + 120
        while True:
            # Every study handed over and waiting; the destination paused after a first try
            # (the others are not tried while it is paused).
            (waiting, tried) = stack.query(
                "SELECT count(*), count(*) FILTER (WHERE export_attempts > 0) FROM study "
                "WHERE project = %s AND state = 'anonymising'",
                project,
            )[0]
            if waiting == len(studies) and tried >= 1:
                break
            assert time.monotonic() < deadline, "studies did not wait for the DSH"
            time.sleep(1)
        assert stack.status()[project]["exported"] == 0
        codes = stack.query(
            "SELECT DISTINCT last_error_code FROM study WHERE project = %s AND export_attempts > 0",
            project,
        )
        assert codes == [("ftps_connect",)]
    finally:
        stack.supervisor("start", "dsh")
    counts = stack.wait_until_settled([project]).studies[project]
    assert counts["exported"] == len(studies)
    for study in studies:
        pseudo_uid = hasher(stack, project).uid(study.study_uid)
        assert pseudo_uid in zips(stack, project)
        assert _stor_count(stack, pseudo_uid) == 1


def test_orthanc_raw_killed_mid_run_loses_nothing(stack: Stack, cohort: Cohort, first_run):
    project = "retry-raw"
    studies = [s for s in cohort.studies_for(MAIN) if s.expected_outcome == "exported"]
    raw = requests.Session()
    raw.auth = stack.orthanc_auth
    for study_id in raw.get(stack.settings.url("raw") + "/studies", timeout=30).json():
        raw.delete(f"{stack.settings.url('raw')}/studies/{study_id}", timeout=30)
    stack.pixl("rate", "0.5", "--in-flight", "1")
    csv = stack.settings.root / f"{project}.csv"
    csv.write_text(
        "mrn,accession_number,study_datetime\n"
        + "".join(f"{s.mrn},{s.accession_number},\n" for s in studies)
    )
    try:
        stack.pixl("populate", str(csv), "--project", project)
        deadline = time.monotonic() + 60
        while stack.status()[project]["queued"] == len(studies):
            assert time.monotonic() < deadline, "orthanc-raw never started on the studies"
            time.sleep(0.2)
        stack.supervisor("signal", "KILL", "orthanc-raw")  # supervisord restarts it
        counts = stack.wait_until_settled([project], timeout=240).studies[project]
    finally:
        stack.pixl("rate", "10", "--in-flight", "4")
    assert counts["exported"] == len(studies)
    assert counts["failed"] == 0
    for study in studies:
        pseudo_uid = hasher(stack, project).uid(study.study_uid)
        assert _stor_count(stack, pseudo_uid) == 1


def test_both_orthancs_report_status_and_prometheus_metrics(stack: Stack, first_run):
    session = requests.Session()
    session.auth = stack.orthanc_auth
    raw = session.get(stack.settings.url("raw") + "/pixl/status", timeout=10).json()
    anon = session.get(stack.settings.url("anon") + "/pixl/status", timeout=10).json()
    # counters are per process (orthanc-raw was restarted by an earlier test)
    assert raw["service"] == "orthanc-raw" and raw["running"] and "handed_off" in raw
    assert anon["service"] == "orthanc-anon" and anon["deidentified"] > 0
    deadline = time.monotonic() + 15  # metrics are published every 5 s
    while True:
        metrics = session.get(
            stack.settings.url("anon") + "/tools/metrics-prometheus", timeout=10
        ).text
        if "pixl_anon_deidentified" in metrics:
            break
        assert time.monotonic() < deadline, "orthanc-anon publishes no PIXL metrics"
        time.sleep(1)
    assert "pixl_anon_export_exported" in metrics


def test_vna_down_pauses_the_work_and_it_resumes_without_failing(
    stack: Stack, cohort: Cohort, first_run
):
    """Fault F5: with the VNA away, the study waits in the queue without using up its tries
    (`vna_unreachable`), orthanc-raw says the VNA is unreachable, and once the VNA is back the
    study is fetched and exported with no `pixl retry`."""
    project = "retry-vna"
    study = next(s for s in cohort.studies_for(MAIN) if s.expected_outcome == "exported")
    csv = stack.settings.root / f"{project}.csv"
    csv.write_text(f"mrn,accession_number,study_datetime\n{study.mrn},{study.accession_number},\n")
    raw = requests.Session()
    raw.auth = stack.orthanc_auth
    stack.supervisor("stop", "vna")
    try:
        stack.pixl("populate", str(csv), "--project", project)
        deadline = time.monotonic() + 60
        while stack.query("SELECT last_error_code FROM study WHERE project = %s", project) != [
            ("vna_unreachable",)
        ]:
            assert time.monotonic() < deadline, "the study never waited for the VNA"
            time.sleep(0.5)
        time.sleep(10)  # several probe periods: a worker burning tries would have used some
        ((state, attempts, code),) = stack.query(
            "SELECT state, attempts, last_error_code FROM study WHERE project = %s", project
        )
        assert (state, attempts, code) == ("queued", 0, "vna_unreachable")
        status = raw.get(stack.settings.url("raw") + "/pixl/status", timeout=10).json()
        assert status["vna_reachable"] == 0 and status["vna_unreachable"] >= 1
    finally:
        stack.supervisor("start", "vna")
    counts = stack.wait_until_settled([project], timeout=60).studies[project]
    assert counts["exported"] == 1
    ((attempts,),) = stack.query("SELECT attempts FROM study WHERE project = %s", project)
    assert attempts == 1
    status = raw.get(stack.settings.url("raw") + "/pixl/status", timeout=10).json()
    assert status["vna_reachable"] == 1
