"""The imaging pipeline with an archive that is not Orthanc: DCMTK's ``dcmqrscp`` as the VNA
(issue 11 §2), through the real stack.

A stack of its own (module-scoped, without the EHR module), so the shared Orthanc-VNA stack of
the other system tests is not disturbed: ``vna_kind="dcmqrscp"`` starts dcmqrscp with AE title
VNA where the Orthanc VNA would be, loaded with the same synthetic cohort by ``storescu``, and
a second dcmqrscp (``secondary``, AE title PACS) as orthanc-raw's secondary archive. Each test holds the stack to what the
Orthanc VNA passes in tests/system/test_imaging_pipeline.py (named in its docstring), and counts
what the archive did from the archive's OWN log (``Stack.archive().log()``), not PIXL's record.

Tests run in file order and share one cohort: the first settles the main project, later ones
build on orthanc-raw's cache and the archive's log. Identifiers are synthetic; assertion
messages never carry one.
"""

from __future__ import annotations

import io
import re
import secrets
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

from pixl_core.hashing import ProjectHasher
from stack.driver import Stack
from stack.settings import StackSettings
from stack.standins.dcmqrscp_archive import instance_level_without_series
from stack.synthetic.cohort import SCOUT_SERIES, Cohort, SyntheticStudy, generate_cohort
from tests.fixtures.stack import running, temp_root

pytestmark = pytest.mark.system

MAIN = "chest-xray"
PARTIAL = "dq-partial"
REFUSED = "dq-refused"
SECONDARY = "dq-secondary"


@pytest.fixture(scope="module")
def dq_stack() -> Iterator[Stack]:
    if shutil.which("dcmqrscp") is None or shutil.which("Orthanc") is None:
        pytest.fail("dcmtk or Orthanc is not installed: run `make system-deps` (make test does)")
    settings = StackSettings.for_tests(temp_root("pixl-dcmqrscp-"))
    settings.vna_kind = "dcmqrscp"
    settings.with_reports = False
    settings.secondary_kind = "dcmqrscp"  # the secondary archive (AE title PACS) too
    settings.test_projects = (PARTIAL, REFUSED, SECONDARY)
    settings.extra_env = {
        "PIXL_FETCH_LEASE_SECONDS": "15",
        "PIXL_FETCH_BACKOFF_SECONDS": "1",
        "PIXL_VNA_PROBE_SECONDS": "2",
        "PIXL_EXPORT_LEASE_SECONDS": "15",
        "PIXL_EXPORT_BACKOFF_SECONDS": "1",
    }
    with running(settings) as stack:
        yield stack


@pytest.fixture(scope="module")
def dq_cohort(dq_stack: Stack) -> Cohort:
    cohort = generate_cohort(dq_stack.settings.root / "cohort")
    assert dq_stack.load_vna(cohort) == len(cohort.dicom_files()) > 0
    # One study at a time: dcmqrscp forks a child per association and their log lines, all on
    # one stderr, can cut into each other; the tests read requests back from that log (one in
    # five runs lost one with 4 in flight).
    dq_stack.pixl("rate", "10", "--in-flight", "1")
    return cohort


@pytest.fixture(scope="module")
def dq_first_run(dq_stack: Stack, dq_cohort: Cohort) -> dict[str, int]:
    dq_stack.pixl("populate", str(dq_cohort.extract_dir))
    return dq_stack.wait_until_settled([MAIN], timeout=240).studies[MAIN]


def pseudo_uid(stack: Stack, project: str, study: SyntheticStudy) -> str:
    key = stack.settings.secrets["PIXL_HASH_KEY"].encode()
    return ProjectHasher.for_project(project, key).uid(study.study_uid)


def zips(stack: Stack, project: str) -> dict[str, Path]:
    return {p.stem: p for p in (stack.settings.dsh_dir / project / "dicom").glob("*.zip")}


def raw_session(stack: Stack) -> requests.Session:
    session = requests.Session()
    session.auth = stack.orthanc_auth
    return session


def query(stack: Stack, level: str, keys: dict[str, str]) -> list[dict[str, str]]:
    """A C-FIND through orthanc-raw's ``/modalities/vna/query``, as vna_fetch sends it."""
    raw = raw_session(stack)
    base = stack.settings.url("raw")
    found = raw.post(
        f"{base}/modalities/vna/query", json={"Level": level, "Query": keys}, timeout=60
    )
    assert found.status_code == 200, f"{level}-level C-FIND failed: HTTP {found.status_code}"
    query_id = found.json()["ID"]
    answers = raw.get(f"{base}/queries/{query_id}/answers?expand&simplify", timeout=60)
    return answers.json()


def in_vna(cohort: Cohort, project: str = MAIN) -> list[SyntheticStudy]:
    return [s for s in cohort.studies_for(project) if s.expected_outcome == "exported"]


def test_every_expected_study_arrives_from_dcmqrscp_moved_once(
    dq_stack: Stack, dq_cohort: Cohort, dq_first_run: dict[str, int]
):
    """Mirrors test_every_expected_study_arrives_deidentified: every study the cohort expects
    is in the DSH with all its instances, and the archive moved each exactly once, whole."""
    expected = dq_cohort.expected_counts(MAIN)
    assert dq_first_run["exported"] == expected["exported"] > 0
    assert dq_first_run["failed"] == 0
    arrived = zips(dq_stack, MAIN)
    for number, study in enumerate(in_vna(dq_cohort)):
        uid = pseudo_uid(dq_stack, MAIN, study)
        assert uid in arrived, f"exported study {number} is missing from the DSH"
        with zipfile.ZipFile(arrived[uid]) as archive:
            names = archive.namelist()
            assert len(names) == study.expected_instances
            first = dcmread(io.BytesIO(archive.read(names[0])))
            assert first.StudyInstanceUID == uid
            assert first.PatientIdentityRemoved == "YES"
    log = dq_stack.archive().log()
    assert log.moves == expected["exported"], "one C-MOVE per exported study, none for others"
    assert log.instances_sent == sum(len(s.sop_instance_uids) for s in in_vna(dq_cohort))


def test_missing_study_is_not_found_and_wrong_modality_refused_without_a_move(
    dq_stack: Stack, dq_cohort: Cohort, dq_first_run: dict[str, int]
):
    """Mirrors test_wrong_modality_is_refused_and_missing_study_is_not_found. dcmqrscp does not
    answer ModalitiesInStudy: the MR study is refused from its series' Modality, before any
    C-MOVE (the first test counted exactly one move per exported study)."""
    rows = dict(
        (accession, (state, code))
        for accession, state, code in dq_stack.query(
            "SELECT accession_number, state, last_error_code FROM study WHERE project = %s", MAIN
        )
    )
    checked = 0
    for study in dq_cohort.studies_for(MAIN):
        state, code = rows[study.accession_number]
        assert state == study.expected_outcome
        if study.modality == "MR":
            assert (state, code) == ("refused", "modality_not_allowed")
            checked += 1
        if not study.in_vna:
            assert state == "not_found"
            checked += 1
    assert checked == 2


def test_every_instance_level_request_named_its_study_and_series(
    dq_stack: Stack, dq_cohort: Cohort, dq_first_run: dict[str, int]
):
    """Issue 11: instance-level queries carry StudyInstanceUID and SeriesInstanceUID. The
    archive's own log shows every study it holds listed by series, and every series of each
    study that was fetched listed by its study and series UID (a retried study may ask again:
    sets, not counts)."""
    requests_seen = dq_stack.archive().log().requests()
    assert instance_level_without_series(requests_seen) == []
    series_listed = {
        r.uids["StudyInstanceUID"]
        for r in requests_seen
        if r.kind == "find" and r.level == "SERIES"
    }
    assert series_listed == {s.study_uid for s in dq_cohort.studies_for(MAIN) if s.in_vna}
    instances_listed = {
        (r.uids["StudyInstanceUID"], r.uids["SeriesInstanceUID"])
        for r in requests_seen
        if r.kind == "find" and r.level == "IMAGE"
    }
    assert instances_listed == {
        (study.study_uid, series.series_uid)
        for study in in_vna(dq_cohort)
        for series in study.series
    }


def test_c_find_at_each_level_and_c_move_work_through_orthanc_raw(
    dq_stack: Stack, dq_cohort: Cohort, dq_first_run: dict[str, int]
):
    """orthanc-raw's /modalities API against dcmqrscp: C-FIND at study level (by accession
    number and patient id), series level (by study) and instance level (by study and series),
    and a C-MOVE of one series into orthanc-raw that the archive's log records."""
    study = next(s for s in in_vna(dq_cohort) if len(s.series) >= 2)
    by_accession = query(
        dq_stack,
        "Study",
        {"PatientID": study.mrn, "AccessionNumber": study.accession_number},
    )
    assert [a["StudyInstanceUID"] for a in by_accession] == [study.study_uid]
    series = query(
        dq_stack,
        "Series",
        {"StudyInstanceUID": study.study_uid, "SeriesInstanceUID": "", "Modality": ""},
    )
    assert sorted(a["SeriesInstanceUID"] for a in series) == sorted(study.series_uids)
    assert {a["Modality"] for a in series} == {study.modality}
    chosen = study.series[0]
    instances = query(
        dq_stack,
        "Instance",
        {
            "StudyInstanceUID": study.study_uid,
            "SeriesInstanceUID": chosen.series_uid,
            "SOPInstanceUID": "",
        },
    )
    assert [a["SOPInstanceUID"] for a in instances] == chosen.sop_instance_uids

    raw = raw_session(dq_stack)
    base = dq_stack.settings.url("raw")
    before = dq_stack.archive().log()
    moved = raw.post(
        f"{base}/modalities/vna/move",
        json={
            "Level": "Series",
            "Resources": [
                {"StudyInstanceUID": study.study_uid, "SeriesInstanceUID": chosen.series_uid}
            ],
            "TargetAet": "PIXLRAW",
            "Synchronous": True,
        },
        timeout=120,
    )
    assert moved.status_code == 200
    after = dq_stack.archive().log()
    assert after.moves == before.moves + 1
    assert after.instances_sent == before.instances_sent + len(chosen.sop_instance_uids)
    last = [r for r in after.requests() if r.kind == "move" and r.level == "SERIES"]
    assert last and last[-1].uids["SeriesInstanceUID"] == chosen.series_uid
    found = raw.post(
        f"{base}/tools/find",
        json={"Level": "Instance", "Query": {"SeriesInstanceUID": chosen.series_uid}},
        timeout=30,
    ).json()
    assert len(found) == len(chosen.sop_instance_uids)


def test_repopulating_asks_the_archive_for_nothing_new(
    dq_stack: Stack, dq_cohort: Cohort, dq_first_run: dict[str, int]
):
    """Mirrors test_repopulating_asks_the_vna_for_nothing_new."""
    moves = dq_stack.vna_moves()
    output = dq_stack.pixl("populate", str(dq_cohort.extract_dir)).stdout
    assert re.search(r"\b0 studies added\b", output)
    time.sleep(3)
    assert dq_stack.status()[MAIN] == dq_first_run
    assert dq_stack.vna_moves() == moves


def test_partial_cache_tops_up_exactly_the_missing_instances(
    dq_stack: Stack, dq_cohort: Cohort, dq_first_run: dict[str, int]
):
    """Mirrors test_partial_cache_fetches_only_the_missing_instances, with two of a study's
    three instances (each alone in its series) gone from orthanc-raw: the archive's log shows
    two instance-level C-MOVEs, each naming the study, the instance's series and the instance,
    and exactly two instances sent; the study arrives whole."""
    study = next(s for s in in_vna(dq_cohort) if s.role == SCOUT_SERIES)
    assert len(study.series) == 3 and all(len(s.sop_instance_uids) == 1 for s in study.series)
    raw = raw_session(dq_stack)
    base = dq_stack.settings.url("raw")
    gone = study.series[:2]
    for series in gone:
        (instance_id,) = raw.post(
            f"{base}/tools/find",
            json={"Level": "Instance", "Query": {"SOPInstanceUID": series.sop_instance_uids[0]}},
            timeout=30,
        ).json()
        assert raw.delete(f"{base}/instances/{instance_id}", timeout=30).status_code == 200
    csv = dq_stack.settings.root / f"{PARTIAL}.csv"
    csv.write_text(f"mrn,accession_number,study_datetime\n{study.mrn},{study.accession_number},\n")
    before = dq_stack.archive().log()
    dq_stack.pixl("populate", str(csv), "--project", PARTIAL)
    assert dq_stack.wait_until_settled([PARTIAL]).studies[PARTIAL]["exported"] == 1
    after = dq_stack.archive().log()
    assert after.moves == before.moves + 2
    assert after.instances_sent == before.instances_sent + 2
    top_ups = [r for r in after.requests() if r.kind == "move"][-2:]
    assert sorted((r.level, r.uids["StudyInstanceUID"]) for r in top_ups) == [
        ("IMAGE", study.study_uid),
        ("IMAGE", study.study_uid),
    ]
    assert sorted((r.uids["SeriesInstanceUID"], r.uids["SOPInstanceUID"]) for r in top_ups) == (
        sorted((s.series_uid, s.sop_instance_uids[0]) for s in gone)
    )
    audit = dq_stack.query(
        "SELECT m.level, m.outcome, m.instance_count FROM vna_move m JOIN study s "
        "ON s.id = m.study_id WHERE s.project = %s ORDER BY m.id",
        PARTIAL,
    )
    assert audit == [("instance", "completed", 1), ("instance", "completed", 1)]
    with zipfile.ZipFile(zips(dq_stack, PARTIAL)[pseudo_uid(dq_stack, PARTIAL, study)]) as zipped:
        assert len(zipped.namelist()) == study.expected_instances


def test_archive_refusing_the_association_pauses_the_work_and_it_resumes(
    dq_stack: Stack, dq_cohort: Cohort, dq_first_run: dict[str, int]
):
    """Mirrors test_vna_down_pauses_the_work_and_it_resumes_without_failing, with an archive
    that is up but refuses orthanc-raw's association (it does not know PIXLRAW: an AE title
    it was never told about, or a wrong one). The study waits in the queue without using a try
    (vna_unreachable), orthanc-raw says the VNA is unreachable, and once the archive accepts
    PIXL again the study is exported with no `pixl retry`."""
    study = in_vna(dq_cohort)[0]
    csv = dq_stack.settings.root / f"{REFUSED}.csv"
    csv.write_text(f"mrn,accession_number,study_datetime\n{study.mrn},{study.accession_number},\n")
    raw = raw_session(dq_stack)
    archive = dq_stack.archive()
    archive.refuse_pixl()
    refusals = archive.log().associations_refused
    try:
        dq_stack.pixl("populate", str(csv), "--project", REFUSED)
        deadline = time.monotonic() + 60
        while dq_stack.query("SELECT last_error_code FROM study WHERE project = %s", REFUSED) != [
            ("vna_unreachable",)
        ]:
            assert time.monotonic() < deadline, "the study never waited for the archive"
            time.sleep(0.5)
        time.sleep(10)  # several probe periods: a worker burning tries would have used some
        ((state, attempts, code),) = dq_stack.query(
            "SELECT state, attempts, last_error_code FROM study WHERE project = %s", REFUSED
        )
        assert (state, attempts, code) == ("queued", 0, "vna_unreachable")
        status = raw.get(dq_stack.settings.url("raw") + "/pixl/status", timeout=10).json()
        assert status["vna_reachable"] == 0 and status["vna_unreachable"] >= 1
        assert archive.log().associations_refused > refusals, "the archive's log shows none"
    finally:
        archive.accept_pixl()
    counts = dq_stack.wait_until_settled([REFUSED], timeout=60).studies[REFUSED]
    assert counts["exported"] == 1
    ((attempts,),) = dq_stack.query("SELECT attempts FROM study WHERE project = %s", REFUSED)
    assert attempts == 1
    status = raw.get(dq_stack.settings.url("raw") + "/pixl/status", timeout=10).json()
    assert status["vna_reachable"] == 1


def test_a_second_archive_runs_beside_with_its_own_ae_title_and_log(
    dq_stack: Stack, dq_cohort: Cohort
):
    """The stand-in started twice: ``secondary`` (AE title PACS, its own port, folder and log)
    takes a study, answers a C-FIND by its own AE title, and rejects an AE title it does not
    know, as the VNA does."""
    pacs = dq_stack.archive("secondary")
    assert (pacs.aet, pacs.log_path.name) == ("PACS", "secondary.log")
    assert pacs.port != dq_stack.archive().port
    study = in_vna(dq_cohort)[-1]
    assert pacs.load(study.files) == len(study.files)
    # PIXL asks the secondary about studies the VNA lacks (earlier tests): count from here.
    finds_before = pacs.log().finds

    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}"]

    def find(calling: str, called: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "findscu",
                "-v",
                "-S",
                "-aet",
                calling,
                "-aec",
                called,
                "127.0.0.1",
                str(pacs.port),
                *keys,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    answered = find("PIXLRAW", "PACS")
    assert answered.returncode == 0
    assert "Find Response: 1 (Pending)" in answered.stdout + answered.stderr
    refused = find("NOBODY", "PACS")
    assert "Association Rejected" in refused.stdout + refused.stderr
    # supervisord copies the archive's stderr into its log a moment after findscu has its
    # answer: wait for the refusal's line rather than read the log once.
    deadline = time.monotonic() + 15
    while pacs.log().associations_refused < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pacs.log().associations_refused >= 1, "the archive's log shows no refusal"
    assert pacs.log().finds == finds_before + 1


def test_the_archive_log_holds_no_patient_identifier(
    dq_stack: Stack, dq_cohort: Cohort, dq_first_run: dict[str, int]
):
    """dcmqrscp's verbose log dumps every request's keys; the stack's log configuration drops
    the study-level C-FIND dumps, which hold the MRN and accession number asked for. What
    stays is UIDs (the archive's own record, as its storage is) and no name, MRN or
    accession number."""
    text = dq_stack.archive().log_path.read_text(errors="replace")
    assert "Find SCP Request Identifiers" in text  # series and instance level are kept
    for value in dq_cohort.identifiers():
        if re.fullmatch(r"[0-9.]+", value) and value.count(".") > 3:
            continue  # a UID
        assert value not in text, "a patient identifier is in the archive's log"


def test_a_study_only_in_the_dcmqrscp_secondary_comes_from_it(dq_stack: Stack, tmp_path: Path):
    """dcmqrscp as the secondary archive (as tests/system/test_archives.py holds the Orthanc
    one): a study the VNA does not have is asked of the secondary, moved from it once, and
    recorded as coming from it; a study in neither archive ends not_found. Counted from both
    archives' own logs."""
    from stack.synthetic.dicom_builder import base_dataset, to_bytes

    study_uid = "2.25." + str(secrets.randbits(120))
    mrn, accession = f"DQS{secrets.randbelow(10**8):08d}", f"DQA{secrets.randbelow(10**8):08d}"
    files = []
    for n in (1, 2, 3):
        ds = base_dataset(
            sop_uid=f"{study_uid}.1.{n}",
            study_uid=study_uid,
            series_uid=f"{study_uid}.1",
            patient_id=mrn,
            patient_name="SECONDARY^TEST",
            accession=accession,
            instance_number=n,
            rows=64,
            columns=64,
            pixel_seed=n,
        )
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(to_bytes(ds))
        files.append(path)
    secondary, vna = dq_stack.archive("secondary"), dq_stack.archive()
    assert secondary.load(files) == 3
    before = secondary.log().moves, vna.log().moves
    csv = tmp_path / "cohort.csv"
    csv.write_text(
        f"mrn,accession_number,study_datetime\n{mrn},{accession},\nDQX00000001,DQX00000002,\n"
    )
    dq_stack.pixl("populate", str(csv), "--project", SECONDARY)
    counts = dq_stack.wait_until_settled([SECONDARY], timeout=120).studies[SECONDARY]
    assert counts.get("exported") == 1 and counts.get("not_found") == 1, counts
    rows = dq_stack.query(
        "SELECT state, source_archive FROM study WHERE project = %s ORDER BY state", SECONDARY
    )
    assert rows == [("exported", "secondary"), ("not_found", None)]
    assert (secondary.log().moves, vna.log().moves) == (before[0] + 1, before[1])
    (zip_path,) = zips(dq_stack, SECONDARY).values()
    with zipfile.ZipFile(zip_path) as archive:
        assert len([n for n in archive.namelist() if n.endswith(".dcm")]) == 3
