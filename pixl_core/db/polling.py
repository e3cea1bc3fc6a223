"""The one polling-worker loop, and the counters every worker keeps.

Each PIXL worker (orthanc-raw's fetch worker, orthanc-anon's exporter, the EHR module's report
worker) does the same thing: wait for Postgres and bring its schema up to date, then, until told
to stop, claim work; if the database does not answer, forget the connection and try again a few
seconds later; if there is nothing to do, sleep the poll interval; otherwise process what was
claimed. ``run_loop`` is that loop, written once; a worker passes its own steps:

- ``claim()`` returns the work (an item, a list of items) or something empty;
- ``process(work)`` does it and may return seconds to pause before the next claim (the report
  worker pauses while Cogstack is down);
- ``ready(stop)``, if given, runs before each claim and returns False after waiting itself when
  no claim may be made yet (the fetch worker's rate slots and in-flight limit);
- ``idle(stop, seconds)``, if given, is the sleep when there was nothing to do: it may end early
  when new work is announced (the exporter's ``pixl_core.db.wakeup.Wakeup``).

Only type names are logged, never an exception's text, which may quote a value from a row.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pixl_core.db.connection import migrate_when_ready

Work = TypeVar("Work")

# How long a worker waits before trying the database again after an error.
DB_RETRY_SECONDS = 5.0


def run_loop(
    stop: threading.Event,
    *,
    name: str,
    logger: logging.Logger,
    db_url: str | None,
    claim: Callable[[], Work | None],
    process: Callable[[Work], float | None],
    reset: Callable[[], None],
    poll_seconds: float,
    ready: Callable[[threading.Event], bool] | None = None,
    idle: Callable[[threading.Event, float], None] | None = None,
    retry_seconds: float = DB_RETRY_SECONDS,
) -> None:
    """Claim and process work until ``stop`` is set; survive database outages.

    ``reset`` forgets the worker's connection after a database error (in ``ready``, ``claim``
    or ``process``: each step handles its own expected errors, so what reaches here means the
    database went away), so the next round reconnects. With ``db_url``, first waits for the
    database and migrates it (None: the caller knows the schema is current); returns at once if
    ``stop`` is set before the database answers.
    """
    if db_url is not None and not migrate_when_ready(db_url, stop, logger):
        return
    while not stop.is_set():
        try:
            if ready is not None and not ready(stop):
                continue
            work = claim()
        except Exception as exc:  # database down: wait and try again
            logger.warning("%s cannot claim work (%s); retrying", name, type(exc).__name__)
            reset()
            stop.wait(retry_seconds)
            continue
        if not work:
            if idle is not None:
                idle(stop, poll_seconds)
            else:
                stop.wait(poll_seconds)
            continue
        try:
            pause = process(work)
        except Exception as exc:  # lost the database mid-way: the lease brings the work back
            logger.warning("%s stopped mid-work (%s); retrying", name, type(exc).__name__)
            reset()
            stop.wait(retry_seconds)
            continue
        if pause:
            stop.wait(pause)


class Counters:
    """What a worker has done since it started, for its status page and metrics.

    Safe to update from several threads. Names given at construction start at zero so a status
    page lists them before anything happened; others appear when first counted (for example
    ``refused_<reason>``). Values are counts, or with ``set`` a short code (never an identifier).
    """

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Any] = dict.fromkeys(names, 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def set(self, name: str, value: Any) -> None:
        with self._lock:
            self._values[name] = value

    def __getitem__(self, name: str) -> Any:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, Any]:
        """A copy of every value, taken at one instant."""
        with self._lock:
            return dict(self._values)
