"""What the imaging services record about a study beside its state: VNA moves and refusals.

The state of a study moves through ``work_queue``; these tables hold the facts around it, and
this module is the only SQL on them:

- ``vna_move``: the audit of every C-MOVE request orthanc-raw sent the VNA, one row each (a
  top-up after a partial transfer is a row of its own, level ``series`` or ``instance``). The
  row is written ``pending`` before the request and finished after it, so its count equals the
  VNA's own log even when the process or the database dies in between.
- ``instance_refusal``: one row per instance orthanc-anon discarded, keyed by a keyed hash of
  its UID (never the UID itself), with a short reason code. A re-sent instance is counted once.
  The exporter reads the counts to tell a study that was wholly refused from one whose
  instances went missing.
- ``instance_pixel_text``: per instance (same key), how many regions of burned-in text of each
  kind the pixel check found (``patient_name``, ``mrn``, ``dob``... ``benign``), and whether
  any was masked. Kinds and counts only, never the text.

Each call is its own transaction. Reasons are validated like every error code
(``^[a-z][a-z0-9_.-]{0,63}$``), so an identifier cannot be stored as one.
"""

from __future__ import annotations

from collections import Counter

from pixl_core.db.connection import Connection
from pixl_core.db.states import STUDY_BUSY
from pixl_core.db.work_queue import check_error_code
from pixl_core.dicom.burned_in_text import KINDS as BURNED_IN_TEXT_KINDS

MOVE_LEVELS = ("study", "series", "instance")
MOVE_OUTCOMES = ("completed", "failed")


def record_move_intent(
    conn: Connection, study_id: int, project: str, requested_by: str, level: str
) -> int:
    """Audit a C-MOVE request about to be sent (``pending``); return the row's id."""
    if level not in MOVE_LEVELS:
        raise ValueError(f"{level!r} is not a C-MOVE level: use one of {MOVE_LEVELS}")
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO vna_move (study_id, project, requested_by, level) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (study_id, project, requested_by, level),
        )
        (move_id,) = cur.fetchone()
    return int(move_id)


def record_move_outcome(
    conn: Connection,
    move_id: int,
    outcome: str,
    *,
    instance_count: int | None = None,
    error_code: str | None = None,
) -> None:
    """Finish an audited C-MOVE request: ``completed`` (with the instances it brought) or
    ``failed`` (with the error's code)."""
    if outcome not in MOVE_OUTCOMES:
        raise ValueError(f"{outcome!r} is not a C-MOVE outcome: use one of {MOVE_OUTCOMES}")
    if error_code is not None:
        check_error_code(error_code)
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE vna_move SET outcome = %s, finished_at = now(), instance_count = %s, "
            "error_code = %s WHERE id = %s AND outcome = 'pending'",
            (outcome, instance_count, error_code, move_id),
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


# The kinds burned-in text is counted by, as the pixel check names them.
PIXEL_TEXT_KINDS = BURNED_IN_TEXT_KINDS


def record_pixel_text(
    conn: Connection, study_id: int, instance_key: str, counts: dict[str, int]
) -> None:
    """Record the burned-in text regions of one instance by kind (idempotent per instance)."""
    rows = [(k, n) for k, n in sorted(counts.items()) if n > 0]
    if not rows:
        return
    unknown = [k for k, _ in rows if k not in PIXEL_TEXT_KINDS]
    if unknown:
        raise ValueError(f"not a pixel text kind: use one of {PIXEL_TEXT_KINDS}")
    masked = any(k != "benign" for k, _ in rows)
    with conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO instance_pixel_text (study_id, instance_key, kind, regions, masked) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(study_id, instance_key, kind, n, masked) for kind, n in rows],
        )


def pixel_text(conn: Connection, study_id: int) -> Counter[str]:
    """Regions of burned-in text found in the study's instances, by kind."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT kind, sum(regions) FROM instance_pixel_text WHERE study_id = %s GROUP BY kind",
            (study_id,),
        )
        return Counter({kind: int(n) for kind, n in cur.fetchall()})


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
