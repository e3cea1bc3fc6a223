"""Wake waiting workers when Postgres says there is new work (LISTEN/NOTIFY).

A worker with nothing to do sleeps its poll interval before it asks again. For orthanc-anon's
exporter that sleep sat between every hand-off and its export: about half the poll per study,
and at the end of a run the last study waited a whole poll after it was ready. Postgres
announces the hand-off itself (a trigger on ``study``, migration 0016, channel
``pixl_study_handed_on``, with an empty payload: no identifier travels), and a ``Wakeup`` ends
the workers' sleep as soon as it hears it.

The poll stays as the fallback and the upper bound: a notification lost while the listening
connection was down (a Postgres restart), or work that becomes due by time (a deferral ending),
is found by the next poll as before. One listening connection serves every worker thread of a
process.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading

import psycopg2
import psycopg2.extensions

from pixl_core.db.connection import DATABASE_ERRORS, Connection, connect

logger = logging.getLogger("pixl.wakeup")  # under "pixl": into Orthanc's log in the plugins

HANDED_ON = "pixl_study_handed_on"
RECONNECT_SECONDS = 5.0


class Wakeup:
    """A LISTEN on one channel, in a thread of its own, that ends ``wait`` early."""

    def __init__(self, db_url: str, channel: str, application_name: str) -> None:
        self.db_url = db_url
        self.channel = channel
        self.application_name = application_name
        self.heard = 0  # wake-ups given: notifications heard, and each (re)connection
        self.listening = threading.Event()
        self._condition = threading.Condition()
        self._started = False

    def start(self, stop: threading.Event) -> None:
        """Start listening (once, however many worker threads call it) until ``stop``."""
        with self._condition:
            if self._started:
                return
            self._started = True
        threading.Thread(
            target=self._listen, args=(stop,), name=f"pixl-listen-{self.channel}", daemon=True
        ).start()

    def wait(self, stop: threading.Event, timeout: float) -> None:
        """Sleep until a notification, ``stop``, or ``timeout`` seconds (the poll)."""
        with self._condition:
            heard = self.heard
            self._condition.wait_for(lambda: self.heard != heard or stop.is_set(), timeout)

    def _listen(self, stop: threading.Event) -> None:
        while not stop.is_set():
            conn: Connection | None = None
            try:
                conn = connect(self.db_url, application_name=self.application_name)
                conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
                with conn.cursor() as cur:
                    cur.execute(f"LISTEN {self.channel}")
                self.listening.set()
                self._wake()  # anything announced while nobody listened: look once
                self._hear(conn, stop)
            except DATABASE_ERRORS as exc:
                logger.warning(
                    "not listening for %s (%s); polling meanwhile", self.channel, type(exc).__name__
                )
            finally:
                self.listening.clear()
                if conn is not None:
                    with contextlib.suppress(psycopg2.Error):
                        conn.close()
            stop.wait(RECONNECT_SECONDS)
        self._wake()  # let waiters see stop at once

    def _hear(self, conn: Connection, stop: threading.Event) -> None:
        """Wake the waiters on each notification until ``stop`` or the connection fails."""
        while not stop.is_set():
            readable, _, _ = select.select([conn], [], [], 1.0)
            if not readable:
                continue
            conn.poll()  # raises a DATABASE_ERRORS error when the server went away
            if conn.notifies:
                conn.notifies.clear()
                self._wake()

    def _wake(self) -> None:
        with self._condition:
            self.heard += 1
            self._condition.notify_all()
