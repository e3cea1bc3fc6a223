"""What lets several orthanc-raw and orthanc-anon replicas share one Postgres (issue 12): the
VNA's rate slot, a project's own rate and in-flight limit and the secondary archive's rate are
each kept across replicas, a singleton job runs in one replica at a time, and the hand-off
spreads studies over every anon replica and passes over one that is down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg2
import pytest

from pixl_core.db import connect, rate_slot, singleton, work_queue
from pixl_core.db.connection import Connection
from pixl_core.db.fetch_control import archive_scope
from pixl_core.db.work_queue import FetchRate
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


def test_a_slot_that_comes_while_it_is_asked_for_is_not_reported_taken(conn, monkeypatch):
    """The slot may come between the UPDATE that found it not due and the reading of the wait:
    ``take`` must then say "ask again" (a wait above 0), not 0.0, which means "taken"."""
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO fetch_rate_slot VALUES ('*', clock_timestamp() + interval '1 h')")
    monkeypatch.setattr(rate_slot, "_WAIT", "SELECT -0.002 WHERE %s IS NOT NULL")  # came just now
    assert rate_slot.take(conn, "*", 1.0) > 0.0


def _in_two_sessions(
    db_url: str, seconds: float, step: Callable[[Connection], bool]
) -> list[tuple[float, float]]:
    """Run ``step`` as fast as it goes for ``seconds`` in each of two threads, each with its
    own connection (two replicas); for each step that took something, when it began and ended
    (``time.monotonic``: what it took, it took in between)."""
    took: list[tuple[float, float]] = []
    start = threading.Barrier(2)

    def session() -> None:
        own = connect(db_url)
        try:
            start.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                began = time.monotonic()
                if step(own):
                    took.append((began, time.monotonic()))
                time.sleep(0.005)
        finally:
            own.close()

    threads = [threading.Thread(target=session) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return took


def _at_most_one_per_interval(took: list[tuple[float, float]], interval: float) -> None:
    """Slots an interval apart: however slow the machine, n slots need (n - 1) intervals
    between the first step's start and the last one's end. Twice the rate would not fit."""
    span = max(end for _, end in took) - min(began for began, _ in took)
    assert len(took) <= 1 + span / interval + 0.01, (len(took), round(span, 2))


def _queue_studies(conn: Connection, project: str, count: int) -> None:
    with conn, conn.cursor() as cur:
        for n in range(count):
            cur.execute(
                "INSERT INTO study (project, mrn, accession_number) VALUES (%s, %s, %s)",
                (project, f"M{n:04d}", f"A{n:04d}"),
            )


def _claimer(rates: dict[str, FetchRate]) -> Callable[[Connection], bool]:
    """One claim of one study as a replica makes it, with ``rates`` as the projects' own."""

    def claim(session: Connection) -> bool:
        return bool(
            work_queue.claim(
                session, "study", "raw:replica", 1, 60, in_progress_cap=100, project_rates=rates
            )
        )

    return claim


def test_two_claimers_keep_a_projects_rate_together(db_url, conn):
    """`pixl rate --project P` at 5 a second: two replicas claiming P's studies as fast as they
    can get 5 or 6 between them in a second (the first slot at once), not 5 or 6 each."""
    _queue_studies(conn, "slow-project", 40)
    rates = {"slow-project": FetchRate(studies_per_second=5.0, max_in_flight=100)}
    took = _in_two_sessions(db_url, 1.0, _claimer(rates))
    assert 3 <= len(took) <= 7, len(took)
    _at_most_one_per_interval(took, 0.2)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM study WHERE state = 'fetching'")
        assert cur.fetchone()[0] == len(took)


def test_a_claim_of_several_takes_one_slot_of_a_rated_project(db_url, conn):
    """A claim of many items takes them one at a time: of a project with a rate of its own,
    only as many as its slots allow (one, here), the rest from the others."""
    _queue_studies(conn, "slow-project", 3)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO study (project, mrn, accession_number) "
            "SELECT 'fast-project', 'F' || n, 'F' || n FROM generate_series(1, 3) AS n"
        )
    rates = {"slow-project": FetchRate(studies_per_second=0.01, max_in_flight=10)}
    claimed = work_queue.claim(conn, "study", "raw:a", 10, 60, project_rates=rates)
    projects = sorted(i.project for i in claimed)
    assert projects == ["fast-project"] * 3 + ["slow-project"]
    assert 99 < rate_slot.take(conn, "slow-project", 100.0) <= 100  # the slot was taken


def test_two_claimers_keep_a_projects_in_flight_limit_together(db_url, conn):
    """A project's own in-flight limit (2) counts every replica's studies in flight."""
    _queue_studies(conn, "narrow-project", 10)
    rates = {"narrow-project": FetchRate(studies_per_second=1000.0, max_in_flight=2)}
    assert len(_in_two_sessions(db_url, 0.5, _claimer(rates))) == 2
    with conn, conn.cursor() as cur:  # one lease runs out: a place is free again
        cur.execute(
            "UPDATE study SET claimed_until = now() - interval '1 s' WHERE id = "
            "(SELECT min(id) FROM study WHERE state = 'fetching')"
        )
    claimed = work_queue.claim(conn, "study", "raw:b", 5, 60, project_rates=rates)
    assert len(claimed) == 1


def test_two_replicas_take_the_secondary_archives_slots_together(db_url, conn):
    """The secondary archive's rate (5 a second) over two replicas asking as fast as they can."""
    scope = archive_scope("secondary")
    assert rate_slot.is_due(conn, scope)  # never taken

    took = _in_two_sessions(db_url, 1.0, lambda session: rate_slot.take(session, scope, 0.2) == 0)
    assert 3 <= len(took) <= 7, len(took)
    _at_most_one_per_interval(took, 0.2)
    assert not rate_slot.is_due(conn, scope)


@pytest.mark.parametrize("scope", ["archive:Secondary", "archive:", "x:y", "Chest"])
def test_a_slot_scope_is_a_project_an_archive_or_all(conn, scope):
    with pytest.raises(psycopg2.errors.CheckViolation), conn, conn.cursor() as cur:
        cur.execute("INSERT INTO fetch_rate_slot (scope) VALUES (%s)", (scope,))


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
