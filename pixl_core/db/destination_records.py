"""What the exporter records about destinations: DICOMweb instances stored, and each project's
last destination error. The only SQL on ``dicomweb_instance`` and ``destination_error``
(migration 0009).

- ``dicomweb_instance``: per study, the pseudonymised SOP Instance UIDs a DICOMweb destination
  confirmed storing, written after every STOW-RS batch, so a study sent again sends only the
  rest (exactly once per instance).
- ``destination_error``: per project, the last failure of its image destination (a message
  naming host:port, step and status only), until a study of the project is exported again.

Each call is its own transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pixl_core.db.connection import Connection
from pixl_core.db.work_queue import check_error_code

DESTINATIONS = ("ftps", "dicomweb")
MESSAGE_MAX = 300


def stored_instances(conn: Connection, study_id: int) -> set[str]:
    """The SOP Instance UIDs of the study its DICOMweb destination confirmed storing."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT sop_instance_uid FROM dicomweb_instance WHERE study_id = %s", (study_id,)
        )
        return {row[0] for row in cur.fetchall()}


def record_stored(conn: Connection, study_id: int, sop_uids: Iterable[str]) -> int:
    """Record instances as stored (once each; recording one again changes nothing). Returns
    how many rows are new."""
    uids = sorted(set(sop_uids))
    if not uids:
        return 0
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO dicomweb_instance (study_id, sop_instance_uid) "
            "SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
            (study_id, uids),
        )
        return cur.rowcount


def set_error(conn: Connection, project: str, destination: str, code: str, message: str) -> None:
    """Remember a project's latest destination failure (replacing the one before)."""
    if destination not in DESTINATIONS:
        raise ValueError(f"{destination!r} is not a destination: use one of {DESTINATIONS}")
    check_error_code(code)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO destination_error (project, destination, code, message) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (project) DO UPDATE SET "
            "destination = EXCLUDED.destination, code = EXCLUDED.code, "
            "message = EXCLUDED.message, at = now()",
            (project, destination, code, message[:MESSAGE_MAX]),
        )


def clear_error(conn: Connection, project: str) -> None:
    """The destination took a study again: its last error is history."""
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM destination_error WHERE project = %s", (project,))


def errors(conn: Connection, project: str | None = None) -> dict[str, dict[str, Any]]:
    """Per project with a standing error: ``{"destination", "code", "message", "at"}``."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT project, destination, code, message, at FROM destination_error "
            "WHERE %(project)s::text IS NULL OR project = %(project)s ORDER BY project",
            {"project": project},
        )
        return {
            name: {
                "destination": destination,
                "code": code,
                "message": message,
                "at": at.isoformat(),
            }
            for name, destination, code, message, at in cur.fetchall()
        }
