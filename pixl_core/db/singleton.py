"""Work that must run in one replica at a time: a Postgres advisory lock per job name.

Most of PIXL's background work is shared out by the queue (``SKIP LOCKED`` claims), which is
safe with any number of replicas. A few loops act on everything at once (orthanc-anon's orphan
sweep deletes from the Orthanc database all anon replicas share); two of them at once would
race each other. Each such loop takes a session-level advisory lock named for the job before a
round and releases it after; a replica that does not get it skips the round. A replica that
dies loses its session and so its lock: the next round elsewhere takes it, nothing to clean up.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from pixl_core.db.connection import Connection

# Advisory lock keys are 64-bit; PIXL's are "pixl" in the high half and a CRC of the name below,
# apart from the migration lock (0x7069786C, "pixl" alone).
_PREFIX = 0x7069786C << 32


def lock_key(name: str) -> int:
    """The advisory lock key of a job name (stable across processes and hosts)."""
    return (_PREFIX | zlib.crc32(name.encode())) - (1 << 63)  # into bigint's signed range


@contextmanager
def only_one(conn: Connection, name: str) -> Iterator[bool]:
    """``with only_one(conn, "anon-orphan-sweep") as mine: if mine: ...`` — ``mine`` is
    whether this session holds the job's lock; it is released when the block ends."""
    key = lock_key(name)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
        mine = bool(cur.fetchone()[0])
    try:
        yield mine
    finally:
        if mine and not conn.closed:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
