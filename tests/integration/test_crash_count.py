"""Crashes are counted per study: a study that crashed a worker twice ends failed with
``worker_crashed`` instead of being tried again (migration 0003, ``work_queue``)."""

from __future__ import annotations

from pixl_core.db import work_queue


def add_study(conn, mrn: str = "mrn1") -> int:
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO study (project, mrn, accession_number) VALUES ('chest-xray', %s, 'acc') "
            "RETURNING id",
            (mrn,),
        )
        return cur.fetchone()[0]


def row(conn, study_id: int) -> tuple:
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT state, crash_count, last_error_code, claimed_by FROM study WHERE id = %s",
            (study_id,),
        )
        return cur.fetchone()


def expire(conn, study_id: int) -> None:
    """The worker holding the study died: its lease runs out without being renewed."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE study SET claimed_until = now() - interval '1 second' WHERE id = %s",
            (study_id,),
        )


def claim(conn, worker: str) -> list[int]:
    items = work_queue.claim(conn, "study", worker, 5, 60, max_attempts=5, max_crashes=2)
    return [item.id for item in items]


def test_a_study_whose_worker_died_twice_ends_failed_worker_crashed(conn):
    study = add_study(conn)
    assert claim(conn, "raw:a") == [study]
    expire(conn, study)
    assert claim(conn, "raw:b") == [study]  # taken over once: one crash counted
    assert row(conn, study) == ("fetching", 1, "worker_crashed", "raw:b")
    expire(conn, study)
    assert claim(conn, "raw:c") == []  # a second crash: not tried again
    assert row(conn, study) == ("failed", 2, "worker_crashed", None)


def test_an_expired_study_is_counted_once_even_when_not_claimed_at_once(conn):
    """Expired items beyond the claim's limit are counted and requeued in the same statement,
    so the next claim does not count them again."""
    studies = [add_study(conn, f"mrn{i}") for i in range(3)]
    work_queue.claim(conn, "study", "raw:a", 3, 60, max_crashes=2)
    for study in studies:
        expire(conn, study)
    taken = work_queue.claim(conn, "study", "raw:b", 1, 60, max_crashes=2)
    assert len(taken) == 1
    rest = work_queue.claim(conn, "study", "raw:b", 5, 60, max_crashes=2)
    assert len(rest) == 2
    assert [row(conn, s)[1] for s in studies] == [1, 1, 1]


def test_record_crash_requeues_then_fails(conn):
    study = add_study(conn)
    claim(conn, "raw:a")
    assert work_queue.record_crash(conn, "study", study, 2, 1.0) == "queued"
    assert row(conn, study)[:3] == ("queued", 1, "worker_crashed")
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE study SET next_attempt_at = now() WHERE id = %s", (study,))
    assert claim(conn, "raw:a") == [study]
    assert work_queue.record_crash(conn, "study", study, 2, 1.0) == "failed"
    assert row(conn, study) == ("failed", 2, "worker_crashed", None)


def test_retry_gives_a_crashed_study_a_fresh_start(conn):
    study = add_study(conn)
    claim(conn, "raw:a")
    work_queue.record_crash(conn, "study", study, 1, 1.0)
    assert row(conn, study)[0] == "failed"
    assert work_queue.requeue_failed(conn, "study", "chest-xray") == 1
    assert row(conn, study)[:2] == ("queued", 0)


def test_without_max_crashes_an_expired_lease_is_simply_taken_over(conn):
    study = add_study(conn)
    work_queue.claim(conn, "study", "raw:a", 1, 60)
    expire(conn, study)
    assert [i.id for i in work_queue.claim(conn, "study", "raw:b", 1, 60)] == [study]
    assert row(conn, study)[:2] == ("fetching", 0)
