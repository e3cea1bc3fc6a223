"""Short leases with a heartbeat (fault F1) and connections that survive a Postgres restart
(fault F4), against a real Postgres."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2

from pixl_core.db import ThreadConnections, work_queue
from pixl_core.db.leases import Heartbeat
from tests.integration.imaging_fakes import add_study, seconds_until, study_row

LEASE = 1.0


def test_a_held_item_outlives_its_lease_and_is_not_taken_over(db_url, conn):
    study_id = add_study(conn, "chest-xray", "MRN-LEASE-1", "ACC-LEASE-1")
    (item,) = work_queue.claim(conn, "study", "raw:alive", 1, LEASE)
    beat = Heartbeat(ThreadConnections(db_url, "test"), "study", "raw:alive", LEASE)
    stop = threading.Event()
    beat.start(stop)
    try:
        with beat.hold(item.id):
            time.sleep(3 * LEASE)  # three leases: only the heartbeat keeps it
            assert work_queue.claim(conn, "study", "raw:other", 1, LEASE, max_crashes=2) == []
            assert seconds_until(conn, study_id, "claimed_until") > 0
        time.sleep(1.5 * LEASE)  # let go: the lease runs out like a dead worker's
        (taken,) = work_queue.claim(conn, "study", "raw:other", 1, LEASE, max_crashes=2)
    finally:
        stop.set()
    assert taken.id == study_id
    assert study_row(conn, study_id)["crash_count"] == 1  # the one who let go counts as dead


def test_a_worker_does_not_take_back_or_count_a_crash_on_what_it_still_holds(conn):
    """Postgres was away longer than a lease: the worker that still works on an item neither
    claims it a second time nor counts itself as crashed."""
    study_id = add_study(conn, "chest-xray", "MRN-LEASE-2", "ACC-LEASE-2")
    (item,) = work_queue.claim(conn, "study", "raw:alive", 1, 0.01)
    time.sleep(0.05)
    again = work_queue.claim(conn, "study", "raw:alive", 1, LEASE, max_crashes=2, held=[item.id])
    assert again == []
    row = study_row(conn, study_id)
    assert (row["state"], row["crash_count"], row["attempts"]) == ("fetching", 0, 1)


def test_after_a_postgres_restart_no_thread_fails_on_its_old_connection(db_url, conn):
    """Every pool thread's connection dies with the server (here: every backend of the set is
    terminated, as a restart does); each thread's next ``get`` gives a working one, without
    first failing a statement (fault F4: each thread used to fail once)."""
    connections = ThreadConnections(db_url, "pixl-f4-test")
    barrier = threading.Barrier(3)

    def use() -> BaseException | None:
        barrier.wait(10)  # all three threads at once: three threads, three connections
        try:
            with connections.get() as c, c.cursor() as cur:
                cur.execute("SELECT 1")
        except psycopg2.Error as exc:
            return exc
        return None

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda _: use(), range(3))) == [None] * 3
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'pixl-f4-test'"
            )
            assert cur.fetchone()[0] == 3
        time.sleep(0.2)  # the termination notices reach the idle sockets
        assert list(pool.map(lambda _: use(), range(3))) == [None] * 3


def test_a_dead_connection_of_a_long_lived_thread_is_replaced_before_use(db_url, conn):
    connections = ThreadConnections(db_url, "pixl-f4-same-thread")
    first = connections.get()
    with first, first.cursor() as cur:
        cur.execute("SELECT 1")
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'pixl-f4-same-thread'"
        )
    time.sleep(0.2)
    second = connections.get()
    assert second is not first
    with second, second.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_a_reset_in_one_thread_reconnects_every_thread(db_url):
    connections = ThreadConnections(db_url, "pixl-f4-reset")
    mine = connections.get()
    seen: list[object] = []

    def other() -> None:
        seen.append(connections.get())

    connections.reset()
    assert mine.closed
    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert connections.get() is not mine
