"""Short leases kept alive by a heartbeat while a worker is busy with what it holds.

A claimed item carries a lease (``claimed_until``); when it runs out, another worker takes the
item over. Long leases made a crash expensive: a killed orthanc-raw came back in seconds, but
its studies waited for their 600 s leases to run out (fault F1). So leases are short (30 s by
default) and a ``Heartbeat`` renews, every third of a lease, exactly the items its worker is
working on now (``hold``), in one statement. A worker that dies stops renewing, and its items
are taken over within one lease.

Only held items are renewed, never "every row claimed by this worker": the exporter's backoff
(``work_queue.defer``) uses the lease as the wait, and renewing those rows would postpone their
next try for ever. A Postgres outage shorter than two thirds of a lease costs nothing; a longer
one lets leases run out, and claimers skip the items their own worker still holds
(``work_queue.claim(held=…)``), so a live worker is never counted as crashed by itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pixl_core.db import work_queue
from pixl_core.db.connection import ThreadConnections

logger = logging.getLogger("pixl.leases")

# Production lease: a dead worker's items are taken over within this many seconds.
DEFAULT_LEASE_SECONDS = 30.0


class Heartbeat:
    """Renew the leases of the items one worker holds, from a thread of its own."""

    def __init__(
        self,
        connections: ThreadConnections,
        table: str,
        worker_id: str,
        lease_seconds: float,
        *,
        state: str | None = None,
        every_seconds: float | None = None,
    ) -> None:
        self.connections = connections
        self.table = table
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.state = state
        self.every_seconds = every_seconds or lease_seconds / 3
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def hold(self, item_id: int) -> Iterator[None]:
        """Keep ``item_id``'s lease alive while the block runs."""
        with self._lock:
            self._held.add(item_id)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(item_id)

    def held(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._held)

    def start(self, stop: threading.Event) -> None:
        """Start the renewing thread (once; later calls do nothing)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self.run, args=(stop,), name=f"pixl-heartbeat-{self.table}", daemon=True
            )
        self._thread.start()

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.every_seconds):
            self.beat()

    def beat(self) -> int:
        """Renew every held item now; return how many this worker still holds."""
        held = self.held()
        if not held:
            return 0
        try:
            kept = work_queue.renew_held(
                self.connections.get(),
                self.table,
                held,
                self.worker_id,
                self.lease_seconds,
                state=self.state,
            )
        except Exception as exc:  # database away: the next beat tries again
            logger.warning("cannot renew leases (%s); retrying", type(exc).__name__)
            self.connections.reset()
            return 0
        lost = len(held) - kept
        if lost > 0:
            logger.warning("%d held %s item(s) were taken over by another worker", lost, self.table)
        return kept
