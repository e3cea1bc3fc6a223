"""The exporter's wake-up on a hand-off (LISTEN/NOTIFY), against a real Postgres: a study that
becomes ``anonymising`` ends the sleep at once, other changes do not, and a listening
connection that is killed comes back."""

from __future__ import annotations

import threading
import time

from pixl_core.db import work_queue
from pixl_core.db.wakeup import HANDED_ON, Wakeup
from tests.integration.imaging_fakes import add_study

LONG_POLL = 30.0


def _sleep_took(wakeup: Wakeup, stop: threading.Event, action) -> float:  # type: ignore[no-untyped-def]
    """Seconds one ``wait`` with a long poll lasted while ``action`` ran beside it."""
    took: list[float] = []

    def sleeper() -> None:
        start = time.monotonic()
        wakeup.wait(stop, LONG_POLL)
        took.append(time.monotonic() - start)

    thread = threading.Thread(target=sleeper)
    thread.start()
    time.sleep(0.2)  # the sleeper is waiting
    action()
    thread.join(timeout=LONG_POLL + 5)
    return took[0]


def _hand_on(conn) -> None:  # type: ignore[no-untyped-def]
    study_id = add_study(conn, "chest-xray", "mrn-w", f"acc-{time.monotonic_ns()}")
    work_queue.claim(conn, "study", "raw:test", 1, 60)
    work_queue.complete(conn, "study", study_id, "anonymising", "fetching", instances_sent=1)


def _listening(wakeup: Wakeup) -> None:
    assert wakeup.listening.wait(10), "the wake-up never listened"


def test_a_hand_off_ends_the_sleep_and_nothing_else_does(db_url, conn):
    stop = threading.Event()
    wakeup = Wakeup(db_url, HANDED_ON, "pixl-wakeup-test")
    wakeup.start(stop)
    wakeup.start(stop)  # every exporter thread calls it: one listener
    try:
        _listening(wakeup)
        assert _sleep_took(wakeup, stop, lambda: _hand_on(conn)) < 5
        # A study queued (another state) does not wake anyone: the sleep runs to its end.
        started = time.monotonic()
        add_study(conn, "chest-xray", "mrn-x", "acc-x")
        wakeup.wait(stop, 1.0)
        assert time.monotonic() - started >= 0.9
    finally:
        stop.set()
    assert sum(t.name == f"pixl-listen-{HANDED_ON}" for t in threading.enumerate()) <= 1


def test_a_killed_listening_connection_reconnects(db_url, conn, monkeypatch):
    monkeypatch.setattr("pixl_core.db.wakeup.RECONNECT_SECONDS", 0.2)
    stop = threading.Event()
    wakeup = Wakeup(db_url, HANDED_ON, "pixl-wakeup-killed")
    wakeup.start(stop)
    try:
        _listening(wakeup)
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'pixl-wakeup-killed'"
            )
            assert cur.fetchone()[0]
        deadline = time.monotonic() + 10
        while wakeup.listening.is_set():  # it notices the loss...
            assert time.monotonic() < deadline, "the loss was not noticed"
            time.sleep(0.05)
        _listening(wakeup)  # ...and listens again
        assert _sleep_took(wakeup, stop, lambda: _hand_on(conn)) < 5
    finally:
        stop.set()
