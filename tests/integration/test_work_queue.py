"""The Postgres work queue: claims are disjoint, leases expire, state changes apply once."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import psycopg2
import pytest

from pixl_core.db import work_queue
from pixl_core.db.connection import available_migrations, connect, database_url, migrate
from pixl_core.errors import PixlConfigError
from tests.fixtures.postgres import with_database


def add_studies(conn, count: int, project: str = "chest-xray") -> list[int]:
    with conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO study (project, mrn, accession_number) VALUES (%s, %s, %s)",
            [(project, f"mrn{i}", f"acc{i}") for i in range(count)],
        )
        cur.execute("SELECT id FROM study WHERE project = %s ORDER BY id", (project,))
        return [row[0] for row in cur.fetchall()]


def state_of(conn, item_id: int, table: str = "study") -> tuple:
    with conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT state, attempts, last_error_code, claimed_by, "
            f"next_attempt_at > now() FROM {table} WHERE id = %s",
            (item_id,),
        )
        return cur.fetchone()


def test_migrate_twice_is_a_no_op(db_url):
    assert migrate(db_url) == []
    with connect(db_url) as c, c.cursor() as cur:
        cur.execute("SELECT count(*) FROM schema_migrations")
        assert cur.fetchone()[0] == len(available_migrations())
    c.close()


def test_migrate_when_up_to_date_reads_without_taking_the_lock(db_url):
    """Every `pixl` command migrates first: when nothing is missing that is one query, not a
    locked transaction per migration (so it does not wait behind a migration lock either)."""
    holder = connect(db_url)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (0x7069786C,))
        results: list[list[str]] = []
        thread = threading.Thread(target=lambda: results.append(migrate(db_url)), daemon=True)
        thread.start()
        thread.join(10)
        assert results == [[]], "migrate waited for the migration lock although up to date"
    finally:
        holder.close()


def test_concurrent_migrations_apply_once(pg_url):
    """Several processes starting at once against a fresh database must not collide."""
    admin = psycopg2.connect(pg_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE pixl_concurrent_migrate TEMPLATE template0")
    url = with_database(pg_url, "pixl_concurrent_migrate")
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(url))
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE pixl_concurrent_migrate WITH (FORCE)")
    admin.close()
    assert not errors
    # Each migration is applied by exactly one process (not necessarily all by the same one).
    applied = [name for names in results for name in names]
    assert sorted(applied) == sorted(m.name for m in available_migrations())


def test_changed_migration_is_refused(db_url, tmp_path: Path):
    for migration in available_migrations():
        (tmp_path / migration.name).write_text(migration.sql + "\n-- edited\n")
    with pytest.raises(PixlConfigError, match="changed after it was applied"):
        migrate(db_url, directory=tmp_path)


def test_missing_database_url_names_the_fix(monkeypatch):
    monkeypatch.delenv("PIXL_DB_URL", raising=False)
    with pytest.raises(PixlConfigError, match="PIXL_DB_URL is not set: export"):
        database_url()


def test_claim_from_two_connections_gets_disjoint_rows(conn, db_url):
    add_studies(conn, 6)
    other = connect(db_url)
    try:
        first = work_queue.claim(conn, "study", "worker-a", 4, 60)
        second = work_queue.claim(other, "study", "worker-b", 4, 60)
    finally:
        other.close()
    assert len(first) == 4
    assert len(second) == 2
    assert not {i.id for i in first} & {i.id for i in second}
    assert {i.state for i in first + second} == {"fetching"}
    assert {i.attempts for i in first + second} == {1}


def test_claim_skips_rows_locked_by_another_transaction(conn, db_url):
    ids = add_studies(conn, 3)
    locker = connect(db_url)
    try:
        with locker.cursor() as cur:  # an open transaction holding a row lock, as mid-claim
            cur.execute("SELECT id FROM study WHERE id = %s FOR UPDATE", (ids[0],))
        with conn, conn.cursor() as cur:
            cur.execute("SET lock_timeout = '1s'")  # would fail rather than hang if it waited
        claimed = work_queue.claim(conn, "study", "worker-a", 10, 60)
    finally:
        locker.rollback()
        locker.close()
    assert [i.id for i in claimed] == ids[1:]


def test_concurrent_claims_never_share_a_row(conn, db_url):
    add_studies(conn, 40)
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        connection = connect(db_url)
        try:
            while items := work_queue.claim(connection, "study", name, 3, 60):
                with lock:
                    claimed.extend(i.id for i in items)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 40
    assert len(set(claimed)) == 40


def test_claim_respects_project_and_next_attempt_at(conn):
    add_studies(conn, 2, project="chest-xray")
    add_studies(conn, 2, project="other")
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE study SET next_attempt_at = now() + interval '1 hour' WHERE id = 1")
    claimed = work_queue.claim(conn, "study", "w", 10, 60, project="chest-xray")
    assert [(i.id, i.project) for i in claimed] == [(2, "chest-xray")]


def test_expired_lease_is_reclaimed_from_the_first_step(conn):
    (item_id,) = add_studies(conn, 1)
    work_queue.claim(conn, "study", "worker-a", 1, 60)
    assert work_queue.claim(conn, "study", "worker-b", 1, 60) == []  # lease still held
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE study SET claimed_until = now() - interval '1 second'")
    (again,) = work_queue.claim(conn, "study", "worker-b", 1, 60)
    assert (again.id, again.state, again.claimed_by, again.attempts) == (
        item_id,
        "fetching",
        "worker-b",
        2,
    )
    assert not work_queue.renew(conn, "study", item_id, "worker-a", 60)  # lost its claim
    assert work_queue.renew(conn, "study", item_id, "worker-b", 60)


def test_a_study_marked_off_the_cap_frees_its_place_until_it_is_claimed_again(conn):
    first, second, third = add_studies(conn, 3)
    (item,) = work_queue.claim(conn, "study", "worker-a", 5, 60, in_progress_cap=1)
    assert item.id == first
    assert work_queue.claim(conn, "study", "worker-b", 5, 60, in_progress_cap=1) == []
    assert not work_queue.mark_off_cap(conn, "study", first, "worker-b")  # not its claim
    assert work_queue.mark_off_cap(conn, "study", first, "worker-a")
    assert work_queue.in_progress_on_cap(conn, "study") == 0
    (item,) = work_queue.claim(conn, "study", "worker-b", 5, 60, in_progress_cap=1)
    assert item.id == second
    assert work_queue.in_progress_on_cap(conn, "study") == 1
    # The first study's lease runs out (its worker died mid hand-off): claimed again, it
    # asks the archive again and counts on the cap.
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE study SET claimed_until = now() - interval '1 second' WHERE id = %s", (first,)
        )
    work_queue.complete(conn, "study", second, "anonymising", "fetching", instances_sent=1)
    (again,) = work_queue.claim(conn, "study", "worker-c", 5, 60, in_progress_cap=1)
    assert again.id == first
    assert work_queue.in_progress_on_cap(conn, "study") == 1
    assert work_queue.claim(conn, "study", "worker-c", 5, 60, in_progress_cap=1) == []
    assert state_of(conn, third)[0] == "queued"


def test_anonymising_study_is_never_reclaimed_by_the_fetch_worker(conn):
    """'anonymising' belongs to orthanc-anon's exporter, which holds its own lease."""
    (item_id,) = add_studies(conn, 1)
    work_queue.claim(conn, "study", "worker-a", 1, 60)
    assert work_queue.complete(conn, "study", item_id, "anonymising", "fetching")
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE study SET claimed_until = now() - interval '1 second'")
    assert work_queue.claim(conn, "study", "worker-b", 1, 60) == []


def test_expired_lease_past_max_attempts_fails_instead_of_cycling(conn):
    (item_id,) = add_studies(conn, 1)
    work_queue.claim(conn, "study", "w", 1, 60)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE study SET claimed_until = now() - interval '1 second'")
    assert work_queue.claim(conn, "study", "w", 1, 60, max_attempts=1) == []
    assert state_of(conn, item_id)[:3] == ("failed", 1, "lease_expired")


def test_complete_with_wrong_expected_state_does_not_apply(conn):
    (item_id,) = add_studies(conn, 1)
    work_queue.claim(conn, "study", "w", 1, 60)
    assert not work_queue.complete(conn, "study", item_id, "exported", "anonymising")
    assert state_of(conn, item_id)[0] == "fetching"
    assert work_queue.complete(conn, "study", item_id, "anonymising", "fetching")
    assert work_queue.complete(
        conn, "study", item_id, "exported", "anonymising", instance_count=3, sha256="ab" * 32
    )
    assert not work_queue.complete(conn, "study", item_id, "exported", "anonymising")  # retried
    with conn, conn.cursor() as cur:
        cur.execute("SELECT instance_count, claimed_by, exported_at IS NOT NULL FROM study")
        assert cur.fetchone() == (3, None, True)


def test_complete_stores_report_findings_as_json(conn):
    (study_id,) = add_studies(conn, 1)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO report (project, study_id, mrn, accession_number) "
            "VALUES ('chest-xray', %s, 'm', 'a') RETURNING id",
            (study_id,),
        )
        (report_id,) = cur.fetchone()
    (item,) = work_queue.claim(conn, "report", "ehr", 1, 60)
    assert item.id == report_id
    assert work_queue.complete(conn, "report", report_id, "deidentifying", "fetching")
    findings = [{"kind": "name", "start": 4, "end": 9}]
    assert work_queue.complete(
        conn, "report", report_id, "flagged", "deidentifying", check_flagged=True,
        check_findings=findings, deidentified_text="text",
    )  # fmt: skip
    with conn, conn.cursor() as cur:
        cur.execute("SELECT state, check_findings FROM report")
        assert cur.fetchone() == ("flagged", findings)


def test_complete_refuses_unknown_columns_and_states(conn):
    (item_id,) = add_studies(conn, 1)
    with pytest.raises(ValueError, match="no settable columns"):
        work_queue.complete(conn, "study", item_id, "exported", "fetching", mrn_typo="x")
    with pytest.raises(ValueError, match="not a study state"):
        work_queue.complete(conn, "study", item_id, "flagged", "fetching")


def test_fail_backs_off_then_fails(conn):
    (item_id,) = add_studies(conn, 1)
    for attempt in (1, 2):
        (item,) = work_queue.claim(conn, "study", "w", 1, 60)
        assert item.attempts == attempt
        assert work_queue.fail(conn, "study", item_id, "vna_timeout", 3, 10) == "queued"
        state, attempts, code, claimed_by, in_future = state_of(conn, item_id)
        assert (state, attempts, code, claimed_by, in_future) == (
            "queued", attempt, "vna_timeout", None, True,
        )  # fmt: skip
        assert work_queue.claim(conn, "study", "w", 1, 60) == []  # not due yet
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT extract(epoch FROM next_attempt_at - now()) FROM study WHERE id = %s",
                (item_id,),
            )
            assert cur.fetchone()[0] == pytest.approx(10 * 2 ** (attempt - 1), abs=1)
            cur.execute("UPDATE study SET next_attempt_at = now()")
    work_queue.claim(conn, "study", "w", 1, 60)
    assert work_queue.fail(conn, "study", item_id, "vna_timeout", 3, 10) == "failed"
    assert state_of(conn, item_id)[:3] == ("failed", 3, "vna_timeout")
    assert work_queue.fail(conn, "study", item_id, "vna_timeout", 3, 10) is None  # retried call


def test_error_codes_that_look_like_identifiers_are_refused(conn):
    (item_id,) = add_studies(conn, 1)
    work_queue.claim(conn, "study", "w", 1, 60)
    with pytest.raises(ValueError, match="short lowercase words") as raised:
        work_queue.fail(conn, "study", item_id, "Accession ACC123 not found", 3, 1)
    assert "ACC123" not in str(raised.value)


def test_counts_by_state_lists_every_state_per_project(conn):
    add_studies(conn, 3, project="chest-xray")
    add_studies(conn, 1, project="other")
    work_queue.claim(conn, "study", "w", 1, 60, project="chest-xray")
    counts = work_queue.counts_by_state(conn)
    assert counts["chest-xray"]["queued"] == 2
    assert counts["chest-xray"]["fetching"] == 1
    assert counts["chest-xray"]["exported"] == 0
    assert counts["other"] == {**dict.fromkeys(work_queue.QUEUES["study"].states, 0), "queued": 1}
    assert work_queue.counts_by_state(conn, project="empty") == {
        "empty": dict.fromkeys(work_queue.QUEUES["study"].states, 0)
    }


def test_fetch_rate_falls_back_to_global_and_changes_at_runtime(conn):
    default = work_queue.get_fetch_rate(conn, "chest-xray")
    assert default.studies_per_second > 0
    work_queue.set_fetch_rate(conn, "chest-xray", 5.0, 3)
    assert work_queue.get_fetch_rate(conn, "chest-xray") == work_queue.FetchRate(5.0, 3)
    assert work_queue.get_fetch_rate(conn, "other") == default


def test_work_item_repr_holds_no_identifiers(conn):
    add_studies(conn, 1)
    (item,) = work_queue.claim(conn, "study", "w", 1, 60)
    assert "mrn0" not in repr(item)
    assert "acc0" not in repr(item)


@pytest.mark.parametrize("table", sorted(work_queue.QUEUES))
def test_queue_states_match_the_schema(conn, table: str):
    """The Python list of states and the CHECK constraint must not drift apart."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND pg_get_constraintdef(oid) LIKE '%%state%%'",
            (table,),
        )
        (definition,) = cur.fetchone()
    assert set(re.findall(r"'([a-z_]+)'::text", definition)) == set(work_queue.QUEUES[table].states)


def hand_over(conn, item_id: int, instances: int = 2) -> None:
    """What orthanc-raw does: claim, fetch, and move the study into the 'anonymising' stage."""
    work_queue.claim(conn, "study", "raw:a", 1, 60)
    assert work_queue.complete(
        conn,
        "study",
        item_id,
        "anonymising",
        "fetching",
        study_uid="1.2.3",
        instances_sent=instances,
    )


def test_stage_is_claimed_in_place_only_by_its_own_workers(conn):
    (item_id,) = add_studies(conn, 1)
    assert work_queue.claim_stage(conn, "study", "anonymising", "anon:a", 1, 60) == []  # queued
    hand_over(conn, item_id)
    with pytest.raises(ValueError, match="only workers named anon:"):
        work_queue.claim_stage(conn, "study", "anonymising", "raw:a", 1, 60)
    with pytest.raises(ValueError, match="not a stage"):
        work_queue.claim_stage(conn, "study", "fetching", "anon:a", 1, 60)
    (item,) = work_queue.claim_stage(conn, "study", "anonymising", "anon:a", 1, 60)
    assert (item.id, item.state, item.claimed_by, item.attempts) == (
        item_id,
        "anonymising",
        "anon:a",
        1,
    )
    assert item.row["instances_sent"] == 2
    assert work_queue.claim_stage(conn, "study", "anonymising", "anon:b", 1, 60) == []  # held
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE study SET claimed_until = now() - interval '1 second'")
    (again,) = work_queue.claim_stage(conn, "study", "anonymising", "anon:b", 1, 60)
    assert again.claimed_by == "anon:b"  # a dead exporter's study is taken over
    assert not work_queue.renew(conn, "study", item_id, "anon:a", 60, state="anonymising")
    assert work_queue.renew(conn, "study", item_id, "anon:b", 60, state="anonymising")
    assert not work_queue.renew(conn, "study", item_id, "anon:b", 60)  # not an in-progress state


def test_stage_waits_until_the_study_is_ready(conn):
    (item_id,) = add_studies(conn, 1)
    work_queue.claim(conn, "study", "raw:a", 1, 60)
    work_queue.complete(conn, "study", item_id, "anonymising", "fetching")  # no instances_sent
    assert work_queue.claim_stage(conn, "study", "anonymising", "anon:a", 1, 60) == []


def test_defer_keeps_the_state_and_backs_off_exponentially(conn):
    (item_id,) = add_studies(conn, 1)
    hand_over(conn, item_id)
    for tries, delay in ((1, 5), (2, 10), (3, 20), (4, 30)):  # capped at 30
        (item,) = work_queue.claim_stage(conn, "study", "anonymising", "anon:a", 1, 60)
        waited = work_queue.defer(
            conn, "study", "anonymising", item.id, "anon:a", "ftps_login", 5, max_backoff_seconds=30
        )
        assert waited == pytest.approx(delay, abs=0.01)
        assert work_queue.claim_stage(conn, "study", "anonymising", "anon:b", 1, 60) == []
        with conn, conn.cursor() as cur:
            cur.execute("SELECT state, export_attempts, attempts, last_error_code FROM study")
            assert cur.fetchone() == ("anonymising", tries, 1, "ftps_login")
            cur.execute("UPDATE study SET claimed_until = now() - interval '1 second'")
    assert work_queue.defer(conn, "study", "anonymising", item_id, "anon:b", "x", 5) is None


def test_requeue_sends_a_held_study_back_to_the_first_step(conn):
    (item_id,) = add_studies(conn, 1)
    hand_over(conn, item_id)
    work_queue.claim_stage(conn, "study", "anonymising", "anon:a", 1, 60)
    assert not work_queue.requeue(conn, "study", "anonymising", item_id, "anon:b", "incomplete")
    assert work_queue.requeue(conn, "study", "anonymising", item_id, "anon:a", "incomplete")
    assert state_of(conn, item_id) == ("queued", 1, "incomplete", None, False)
    (again,) = work_queue.claim(conn, "study", "raw:a", 1, 60)
    assert (again.id, again.attempts) == (item_id, 2)


def test_state_of_names_the_state_or_none(conn):
    (item_id,) = add_studies(conn, 1)
    assert work_queue.state_of(conn, "study", item_id) == "queued"
    assert work_queue.state_of(conn, "study", item_id + 100) is None
