"""A start slot of a rate shared by every replica: orthanc-raw's asking of the VNA, a project's
own rate, an archive's own rate (the numbers in flight are counted by ``work_queue.claim``).

Why in Postgres: the VNA must be asked at a bounded rate whatever the number of orthanc-raw
replicas, on one host or several, and Postgres is the one thing they all share. A slot is taken
by one conditional ``UPDATE`` on the scope's row of ``fetch_rate_slot``: concurrent replicas are
serialised on the row lock, and the one that waited re-reads ``next_start`` (READ COMMITTED
re-checks the ``WHERE``) and finds the slot gone. Like the in-memory slot it replaces, an idle
scope does not bank slots: the next start is ``max(now, next_start) + interval``.

Scopes (migration 0014): ``'*'`` (all asking, taken with ``take`` before a claim), a project's
slug (its own rate: taken by the claim of one of its studies, ``work_queue.claim(
project_rates=…)``, with ``due_locked`` and ``advance`` inside the claim's transaction, so a
study is claimed only while its project's slot is due), and ``archive:<name>``
(``fetch_control.archive_scope``: an archive's own rate, taken with ``take`` before it is
asked; ``is_due`` tells whether studies waiting for it may be claimed).
"""

from __future__ import annotations

from collections.abc import Collection

from psycopg2.extensions import cursor

from pixl_core.db.connection import Connection

_TAKE = """
UPDATE fetch_rate_slot
   SET next_start = greatest(next_start, clock_timestamp()) + make_interval(secs => %s)
 WHERE scope = %s AND next_start <= clock_timestamp()
RETURNING 0.0
"""
# The least wait ``take`` answers when it took nothing: "ask again at once", but not 0.0.
MIN_WAIT_SECONDS = 0.001
_WAIT = "SELECT extract(epoch FROM next_start - clock_timestamp()) FROM fetch_rate_slot WHERE scope = %s"


def take(conn: Connection, scope: str, interval_seconds: float) -> float:
    """Take the scope's next start slot if it is due (return 0.0); else return the seconds to
    wait before asking again (nothing is taken), never 0.0: the slot may come between the
    ``UPDATE`` that found it not due and the reading of the wait, and a caller told 0.0 would
    start without a slot (another replica takes that one)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO fetch_rate_slot (scope) VALUES (%s) ON CONFLICT DO NOTHING", (scope,)
        )
        cur.execute(_TAKE, (interval_seconds, scope))
        if cur.fetchone() is not None:
            return 0.0
        cur.execute(_WAIT, (scope,))
        row = cur.fetchone()
    return max(MIN_WAIT_SECONDS, float(row[0]) if row else 0.0)


def is_due(conn: Connection, scope: str) -> bool:
    """Whether the scope's next slot has come (a scope never taken is due). Nothing is taken:
    a replica that then finds the slot gone to another (``take`` answers a wait) must not ask."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT next_start <= clock_timestamp() FROM fetch_rate_slot WHERE scope = %s",
            (scope,),
        )
        row = cur.fetchone()
    return row is None or bool(row[0])


def due_locked(cur: cursor, scopes: Collection[str]) -> set[str]:
    """Of ``scopes``, those whose next slot has come, their rows locked until the caller's
    transaction ends (on ``cur``): no other replica can take them meanwhile, and one that took
    a slot just before is waited for and its new ``next_start`` read. Rows missing are added
    (due) first."""
    if not scopes:
        return set()
    ordered = sorted(scopes)  # one lock order for every replica: no deadlock between them
    cur.execute(
        "INSERT INTO fetch_rate_slot (scope) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
        (ordered,),
    )
    cur.execute(
        "SELECT scope, next_start <= clock_timestamp() FROM fetch_rate_slot "
        "WHERE scope = ANY(%s) ORDER BY scope FOR UPDATE",
        (ordered,),
    )
    return {scope for scope, due in cur.fetchall() if due}


def advance(cur: cursor, scope: str, interval_seconds: float) -> None:
    """Take the slot of a scope ``due_locked`` found due and locked, in the caller's
    transaction: its next start is one interval on."""
    cur.execute(
        "UPDATE fetch_rate_slot SET next_start = greatest(next_start, clock_timestamp()) "
        "+ make_interval(secs => %s) WHERE scope = %s",
        (interval_seconds, scope),
    )
