"""The connection pool that Orthanc's callback threads borrow from, against a real Postgres.

Orthanc gives every callback a fresh Python thread state, so a connection per thread meant a
new (scram-authenticated) connection per received instance; these tests hold the pool to
reusing connections across threads, starting each borrower clean, and surviving a killed
backend."""

from __future__ import annotations

import threading

import psycopg2
import pytest

from pixl_core.db import ConnectionPool


def _backend_pid(conn: psycopg2.extensions.connection) -> int:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])


def _in_fresh_thread(pool: ConnectionPool) -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(pool.run(_backend_pid, 1.0)))
    thread.start()
    thread.join()
    return seen[0]


def test_threads_that_come_and_go_share_one_connection(db_url):
    pool = ConnectionPool(db_url, "pixl-pool-test")
    first = _in_fresh_thread(pool)
    assert [_in_fresh_thread(pool) for _ in range(5)] == [first] * 5
    pool.reset()


def test_a_step_that_leaves_a_transaction_open_is_rolled_back_before_the_next(db_url, conn):
    pool = ConnectionPool(db_url, "pixl-pool-test")

    def leave_open(c: psycopg2.extensions.connection) -> int:
        cur = c.cursor()
        cur.execute("CREATE TEMP TABLE pool_probe (x int)")
        cur.execute("INSERT INTO pool_probe VALUES (1)")
        return _pid_no_commit(c)

    def _pid_no_commit(c: psycopg2.extensions.connection) -> int:
        cur = c.cursor()
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])

    def probe(c: psycopg2.extensions.connection) -> bool:
        with c, c.cursor() as cur:
            cur.execute("SELECT to_regclass('pg_temp.pool_probe') IS NOT NULL")
            return bool(cur.fetchone()[0])

    pid = pool.run(leave_open, 1.0)
    assert pool.run(_backend_pid, 1.0) == pid  # the same connection, lent again
    assert pool.run(probe, 1.0) is False  # and what the first step left open is gone
    pool.reset()


def test_a_killed_backend_is_replaced_and_the_step_runs(db_url, conn):
    pool = ConnectionPool(db_url, "pixl-pool-test")
    pid = pool.run(_backend_pid, 1.0)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    again = pool.run(_backend_pid, 10.0)
    assert again != pid
    pool.reset()


def test_an_error_in_the_step_is_raised_and_the_connection_not_lent_again(db_url):
    pool = ConnectionPool(db_url, "pixl-pool-test")
    pid = pool.run(_backend_pid, 1.0)

    def fails(c: psycopg2.extensions.connection) -> None:
        raise ValueError("the step's own error")

    with pytest.raises(ValueError, match="own error"):
        pool.run(fails, 1.0)
    assert pool.run(_backend_pid, 1.0) != pid


def test_reset_closes_the_idle_connections(db_url):
    pool = ConnectionPool(db_url, "pixl-pool-test")
    pid = pool.run(_backend_pid, 1.0)
    pool.reset()
    assert pool.run(_backend_pid, 1.0) != pid
    pool.reset()
