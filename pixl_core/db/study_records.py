"""What the imaging services record about a study beside its state: VNA moves and refusals.

The state of a study moves through ``work_queue``; these tables hold the facts around it, and
this module is the only SQL on them:

- ``vna_move``: the audit of every C-MOVE orthanc-raw asked of the VNA. At most one completed
  move is recorded per study (a unique index), so a top-up move after a partial transfer adds
  no second row.
- ``instance_refusal``: one row per instance orthanc-anon discarded, keyed by a keyed hash of
  its UID (never the UID itself), with a short reason code. A re-sent instance is counted once.
  The exporter reads the counts to tell a study that was wholly refused from one whose
  instances went missing.

Each call is its own transaction. Reasons are validated like every error code
(``^[a-z][a-z0-9_.-]{0,63}$``), so an identifier cannot be stored as one.
"""

from __future__ import annotations

from collections import Counter

from pixl_core.db.connection import Connection
from pixl_core.db.states import STUDY_BUSY
from pixl_core.db.work_queue import check_error_code


def record_completed_move(
    conn: Connection, study_id: int, project: str, requested_by: str, instance_count: int
) -> None:
    """Audit a completed C-MOVE of the study (the first one only; later ones add nothing)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO vna_move (study_id, project, requested_by, finished_at, outcome, "
            "instance_count) VALUES (%s, %s, %s, now(), 'completed', %s) "
            "ON CONFLICT DO NOTHING",
            (study_id, project, requested_by, instance_count),
        )


def record_refusal(conn: Connection, study_id: int, instance_key: str, reason: str) -> None:
    """Record that one instance of the study was discarded, and why (idempotent per instance)."""
    check_error_code(reason)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO instance_refusal (study_id, instance_key, reason) "
            "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (study_id, instance_key, reason),
        )


def refusals(conn: Connection, study_id: int) -> Counter[str]:
    """How many of the study's instances were refused, by reason."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT reason, count(*) FROM instance_refusal WHERE study_id = %s GROUP BY reason",
            (study_id,),
        )
        return Counter(dict(cur.fetchall()))


def busy_study_uids(conn: Connection) -> list[tuple[str, str]]:
    """(project, Study Instance UID) of every study still queued or in progress whose UID is
    known: what orthanc-anon may legitimately hold (its orphan sweep keeps these)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT project, study_uid FROM study WHERE state IN %s AND study_uid IS NOT NULL",
            (tuple(str(state) for state in STUDY_BUSY),),
        )
        return [(project, uid) for project, uid in cur.fetchall()]
