"""orthanc-raw's fetch worker and the archives (issue 11), against stand-in Orthancs and a real
Postgres: several studies behind one accession number, and a secondary archive asked only
when the VNA has no such study, inside its hours and at its rate."""

from __future__ import annotations

import hashlib
import io
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from pixl_core.config.projects import load_project
from pixl_core.db import fetch_control, work_queue
from pixl_core.db.fetch_control import HoursWindow, archive_scope
from pixl_imaging.archives import SECONDARY_MODALITY
from pixl_imaging.fetch_worker import RawWorker, RawWorkerSettings
from stack.synthetic.cohort import MISSING_FROM_VNA, NORMAL, SHARED, SyntheticStudy
from tests.integration.imaging_fakes import SECRET, FakeOrthanc, add_study, study_row

PROJECT = "chest-xray"
REPO = Path(__file__).resolve().parents[2]


def other_uid(uid: str, suffix: str) -> str:
    """A UID of its own (``2.25.`` form) for the copy ``suffix`` of ``uid``."""
    return "2.25." + str(int(hashlib.sha256(f"{uid}/{suffix}".encode()).hexdigest()[:30], 16))


def copy_as_another_study(study: SyntheticStudy, suffix: str) -> list[bytes]:
    """The study's files as a second study under the same accession number and patient."""
    copies = []
    for path in study.files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = other_uid(ds.StudyInstanceUID, suffix)
        ds.SeriesInstanceUID = other_uid(ds.SeriesInstanceUID, suffix)
        ds.SOPInstanceUID = other_uid(ds.SOPInstanceUID, suffix)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer)
        copies.append(buffer.getvalue())
    return copies


class Archives:
    """A VNA and a secondary archive behind orthanc-raw, orthanc-anon, and a fetch worker."""

    def __init__(self, db_url: str, **settings: object) -> None:
        self.vna = FakeOrthanc("vna")
        self.secondary = FakeOrthanc("secondary")
        self.raw = FakeOrthanc("raw", vna=self.vna, archives={SECONDARY_MODALITY: self.secondary})
        self.anon = FakeOrthanc("anon")
        options = {"worker_id": "raw:test", "poll_seconds": 0.05, **settings}
        self.worker = RawWorker(
            db_url,
            self.raw,
            self.anon,
            SECRET,
            RawWorkerSettings(**options),  # type: ignore[arg-type]
        )

    def round(self) -> bool:
        """One round of the worker's loop, as ``run`` does it: read the gates, claim one study
        (if any may be claimed) and fetch it. False if nothing was claimed."""
        self.worker._read_rates()
        assert self.worker._gate_open(threading.Event())
        claimed = self.worker._claim(1)
        for item in claimed:
            self.worker.process(item)
        return bool(claimed)


@pytest.fixture
def archives(db_url: str) -> Iterator[Archives]:
    yield Archives(db_url, secondary_modality=SECONDARY_MODALITY)


@pytest.fixture
def refuse_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A copy of chest-xray that refuses several studies behind one accession number."""
    projects = tmp_path / "projects"
    shutil.copytree(REPO / "projects", projects)
    text = (projects / "chest-xray.yaml").read_text()
    (projects / "refuse-several.yaml").write_text(text + "multiple_studies_per_accession: refuse\n")
    monkeypatch.setenv("PIXL_PROJECTS_DIR", str(projects))
    load_project.cache_clear()
    yield "refuse-several"
    load_project.cache_clear()


def test_two_studies_behind_one_accession_become_two_work_items_fetched_apart(
    archives, conn, cohort
):
    study = cohort.by_role(NORMAL)
    archives.vna.load(study.files)
    for data in copy_as_another_study(study, "9"):
        archives.vna.store(data)
    parent = add_study(conn, PROJECT, study.mrn, study.accession_number)

    assert archives.round()
    assert archives.round()

    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, split_from, study_uid, state, source_archive FROM study ORDER BY id"
        )
        rows = cur.fetchall()
    first, second = sorted([study.study_uid, other_uid(study.study_uid, "9")])
    assert rows == [
        (parent, None, first, "anonymising", "primary"),
        (rows[1][0], parent, second, "anonymising", "primary"),
    ]
    handed = {i.study_uid for i in archives.anon.instances.values()}
    assert handed == {first, second}
    assert archives.raw.moves == ["study", "study"]
    assert archives.worker.counters["split_studies"] == 1
    assert archives.secondary.moves_served == 0


def test_a_project_may_refuse_several_studies_behind_one_accession(
    archives, conn, cohort, refuse_project
):
    study = cohort.by_role(NORMAL)
    archives.vna.load(study.files)
    for data in copy_as_another_study(study, "9"):
        archives.vna.store(data)
    item = add_study(conn, refuse_project, study.mrn, study.accession_number)

    assert archives.round()

    row = study_row(conn, item)
    assert (row["state"], row["last_error_code"]) == ("refused", "several_studies_per_accession")
    assert archives.raw.moves == [] and archives.anon.instances == {}
    assert archives.round() is False  # nothing split off


def test_study_missing_from_the_vna_waits_outside_the_secondarys_hours_then_comes_from_it(
    archives, conn, cohort
):
    study = cohort.by_role(NORMAL)  # in the secondary archive only
    archives.secondary.load(study.files)
    item = add_study(conn, PROJECT, study.mrn, study.accession_number)
    now = fetch_control.now_local()
    closed = HoursWindow.parse(
        f"{(now.hour + 2) % 24:02d}:00-{(now.hour + 3) % 24:02d}:00"
    )  # opens in over an hour: closed now, whatever the day
    fetch_control.set_hours(conn, archive_scope("secondary"), closed)

    assert archives.round()
    row = study_row(conn, item)
    assert (row["state"], row["last_error_code"], row["awaiting_archive"], row["attempts"]) == (
        "queued",
        "waiting_for_secondary",
        "secondary",
        0,
    )
    assert archives.round() is False, "not claimed again while the secondary is closed"
    assert archives.secondary.moves_served == 0
    vna_finds = sum(1 for _, path in archives.raw.calls if path == "/modalities/vna/query")

    fetch_control.set_hours(conn, archive_scope("secondary"), None)
    assert archives.round()
    row = study_row(conn, item)
    assert (row["state"], row["source_archive"], row["awaiting_archive"]) == (
        "anonymising",
        "secondary",
        None,
    )
    assert archives.secondary.moves_served == 1
    # the VNA was not asked again: the study went straight to the secondary
    assert sum(1 for _, p in archives.raw.calls if p == "/modalities/vna/query") == vna_finds
    assert {i.study_uid for i in archives.anon.instances.values()} == {study.study_uid}


def test_secondary_is_asked_at_its_own_rate(archives, conn, cohort):
    first = cohort.by_role(NORMAL)  # both in the secondary archive only
    second = cohort.by_role(SHARED)
    archives.secondary.load(first.files)
    archives.secondary.load(second.files)
    ids = [add_study(conn, PROJECT, s.mrn, s.accession_number) for s in (first, second)]
    work_queue.set_fetch_rate(conn, archive_scope("secondary"), 0.001, 1)  # one in 1000 s

    assert archives.round() and archives.round()

    states = [(study_row(conn, i)["state"], study_row(conn, i)["last_error_code"]) for i in ids]
    assert states == [("anonymising", None), ("queued", "waiting_for_secondary")]
    assert archives.secondary.moves_served == 1
    assert archives.round() is False, "the waiting study is not claimed before its slot"


def test_two_replicas_ask_the_secondary_at_its_rate_together(db_url, conn, cohort):
    """Issue 12: the secondary's rate is of all orthanc-raw replicas: with one slot in 1000 s,
    the second replica's study waits instead of asking the secondary at its own first slot."""
    replicas = [
        Archives(db_url, secondary_modality=SECONDARY_MODALITY, worker_id=f"raw:replica{n}")
        for n in (1, 2)
    ]
    studies = (cohort.by_role(NORMAL), cohort.by_role(SHARED))  # in the secondary archive only
    for replica in replicas:
        for study in studies:
            replica.secondary.load(study.files)
    ids = [add_study(conn, PROJECT, s.mrn, s.accession_number) for s in studies]
    work_queue.set_fetch_rate(conn, archive_scope("secondary"), 0.001, 1)  # one in 1000 s

    assert replicas[0].round() and replicas[1].round()

    assert sum(r.secondary.moves_served for r in replicas) == 1
    states = sorted(
        (study_row(conn, i)["state"], study_row(conn, i)["last_error_code"]) for i in ids
    )
    assert states == [("anonymising", None), ("queued", "waiting_for_secondary")]
    assert replicas[0].round() is False and replicas[1].round() is False


def test_study_in_neither_archive_is_not_found(archives, conn, cohort):
    study = cohort.by_role(MISSING_FROM_VNA)
    item = add_study(conn, PROJECT, study.mrn, study.accession_number)
    assert archives.round()
    row = study_row(conn, item)
    assert (row["state"], row["awaiting_archive"], row["source_archive"]) == (
        "not_found",
        None,
        None,
    )


def test_an_unreachable_secondary_keeps_the_study_waiting_without_a_try(archives, conn, cohort):
    study = cohort.by_role(NORMAL)
    archives.secondary.load(study.files)
    archives.secondary.down = True
    item = add_study(conn, PROJECT, study.mrn, study.accession_number)
    assert archives.round()
    row = study_row(conn, item)
    assert (row["state"], row["last_error_code"], row["attempts"]) == (
        "queued",
        "secondary_unreachable",
        0,
    )


def test_without_a_secondary_any_more_a_waiting_study_is_asked_of_the_vna(db_url, conn, cohort):
    study = cohort.by_role(NORMAL)
    item = add_study(conn, PROJECT, study.mrn, study.accession_number)
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE study SET awaiting_archive = 'secondary', "
            "last_error_code = 'waiting_for_secondary' WHERE id = %s",
            (item,),
        )
    archives = Archives(db_url)  # orthanc-raw restarted without PIXL_SECONDARY_*
    archives.vna.load(study.files)
    assert archives.round()
    row = study_row(conn, item)
    assert (row["state"], row["source_archive"], row["awaiting_archive"]) == (
        "anonymising",
        "primary",
        None,
    )
