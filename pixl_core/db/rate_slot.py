"""A start slot of a rate shared by every replica: orthanc-raw's asking of the VNA, and the
number of studies in flight across replicas.

Why in Postgres: the VNA must be asked at a bounded rate whatever the number of orthanc-raw
replicas, on one host or several, and Postgres is the one thing they all share. A slot is taken
by one conditional ``UPDATE`` on the scope's row of ``fetch_rate_slot``: concurrent replicas are
serialised on the row lock, and the one that waited re-reads ``next_start`` (READ COMMITTED
re-checks the ``WHERE``) and finds the slot gone. Like the in-memory slot it replaces, an idle
scope does not bank slots: the next start is ``max(now, next_start) + interval``.
"""

from __future__ import annotations

from pixl_core.db.connection import Connection
from pixl_core.db.work_queue import in_progress_on_cap

_TAKE = """
UPDATE fetch_rate_slot
   SET next_start = greatest(next_start, clock_timestamp()) + make_interval(secs => %s)
 WHERE scope = %s AND next_start <= clock_timestamp()
RETURNING 0.0
"""
_WAIT = "SELECT extract(epoch FROM next_start - clock_timestamp()) FROM fetch_rate_slot WHERE scope = %s"


def take(conn: Connection, scope: str, interval_seconds: float) -> float:
    """Take the scope's next start slot if it is due (return 0.0); else return the seconds to
    wait before asking again (nothing is taken)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO fetch_rate_slot (scope) VALUES (%s) ON CONFLICT DO NOTHING", (scope,)
        )
        cur.execute(_TAKE, (interval_seconds, scope))
        if cur.fetchone() is not None:
            return 0.0
        cur.execute(_WAIT, (scope,))
        row = cur.fetchone()
    return max(0.0, float(row[0])) if row else 0.0


def fetching_now(conn: Connection) -> int:
    """Studies some orthanc-raw replica is asking the archive for now (``fetching`` under a live
    lease and not yet fetched): the in-flight count of all replicas together, for waiting before
    a claim. The limit itself is kept by the claim (``work_queue.claim(in_progress_cap=…)``),
    which counts and claims under one lock; a study being handed on to orthanc-anon is off it
    (``work_queue.mark_off_cap``)."""
    return in_progress_on_cap(conn, "study")
