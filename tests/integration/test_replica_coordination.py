"""What lets several orthanc-raw and orthanc-anon replicas share one Postgres (issue 12): the
VNA's rate slot is taken once across replicas, a singleton job runs in one replica at a time,
and the hand-off spreads studies over every anon replica and passes over one that is down."""

from __future__ import annotations

import time

from pixl_core.db import connect, rate_slot, singleton, work_queue
from pixl_imaging.fetch_worker import RawWorker, RawWorkerSettings
from pixl_imaging.ingest import AnonIngest
from stack.synthetic.cohort import NAME_IN_DESCRIPTION, NO_REPORT, NORMAL, SHARED, Cohort
from tests.integration.imaging_fakes import SECRET, FakeOrthanc, add_study, study_row

PROJECT = "chest-xray"


def test_two_replicas_take_one_rate_slot_between_them(db_url, conn):
    other = connect(db_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM fetch_rate_slot")
        assert rate_slot.take(conn, "*", 2.0) == 0.0
        wait = rate_slot.take(other, "*", 2.0)
        assert 1.5 < wait <= 2.0  # the second replica must wait for the next slot
        assert rate_slot.take(conn, "*", 2.0) > 1.5
    finally:
        other.close()


def test_rate_slots_over_replicas_follow_the_rate(db_url, conn):
    """Two sessions asking as fast as they can get one slot per interval between them."""
    other = connect(db_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM fetch_rate_slot")
        taken = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for session in (conn, other):
                taken += rate_slot.take(session, "*", 0.25) == 0.0
            time.sleep(0.01)
        assert 4 <= taken <= 5  # 1 s at 4 a second, the first slot at once
    finally:
        other.close()


def test_a_singleton_job_runs_in_one_session_at_a_time(db_url, conn):
    other = connect(db_url)
    try:
        with singleton.only_one(conn, "anon-orphan-sweep") as mine:
            assert mine
            with singleton.only_one(other, "anon-orphan-sweep") as theirs:
                assert not theirs
            with singleton.only_one(other, "another-job") as theirs:
                assert theirs
        with singleton.only_one(other, "anon-orphan-sweep") as theirs:
            assert theirs  # released when the first block ended
    finally:
        other.close()


def test_a_singleton_lock_is_released_when_its_replica_dies(db_url, conn):
    dying = connect(db_url)
    with dying, dying.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (singleton.lock_key("anon-orphan-sweep"),))
    dying.close()  # a killed replica's session ends
    # Postgres releases a session's locks once its backend has seen the disconnect: soon, not
    # at once (under load this took longer than the first try).
    deadline = time.monotonic() + 10
    while True:
        with singleton.only_one(conn, "anon-orphan-sweep") as mine:
            if mine or time.monotonic() > deadline:
                break
        time.sleep(0.1)
    assert mine


def _worker(db_url: str, cohort: Cohort, anons: list[FakeOrthanc]) -> tuple[RawWorker, object]:
    vna = FakeOrthanc("vna")
    for study in cohort.studies:
        vna.load(study.files)
    raw = FakeOrthanc("raw", vna=vna)
    return RawWorker(db_url, raw, anons, SECRET, RawWorkerSettings(worker_id="raw:test")), vna


def test_studies_are_handed_to_every_anon_replica_in_turn(db_url, conn, cohort: Cohort):
    anons = [
        FakeOrthanc(f"anon{n}", on_received=AnonIngest(db_url, SECRET).on_received) for n in (1, 2)
    ]
    worker, _ = _worker(db_url, cohort, anons)
    normal = [cohort.by_role(role) for role in (NORMAL, NO_REPORT, NAME_IN_DESCRIPTION, SHARED)]
    ids = [add_study(conn, PROJECT, s.mrn, s.accession_number) for s in normal]
    for _ in normal:
        (item,) = work_queue.claim(conn, "study", "raw:test", 1, 60)
        worker.process(item)
    states = [study_row(conn, i)["state"] for i in ids]
    assert states == ["anonymising"] * 4
    assert all(anon.posted for anon in anons), [len(a.posted) for a in anons]
    assert sum(len(a.posted) for a in anons) == sum(len(s.files) for s in normal)


def test_an_anon_replica_that_is_down_is_passed_over(db_url, conn, cohort: Cohort):
    down = FakeOrthanc("anon1", down=True)
    up = FakeOrthanc("anon2", on_received=AnonIngest(db_url, SECRET).on_received)
    worker, _ = _worker(db_url, cohort, [down, up])
    study = cohort.by_role(NORMAL)
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)
    (item,) = work_queue.claim(conn, "study", "raw:test", 1, 60)
    worker.process(item)
    row = study_row(conn, study_id)
    assert (row["state"], row["crash_count"]) == ("anonymising", 0)
    assert len(up.posted) == len(study.files) and not down.posted
