"""What the operator sees: per project, the work in each state and the reasons behind it.

One source for ``pixl status`` (text and ``--json``), ``/pixl/status`` and the page
``/pixl/ui/`` on both Orthancs, so the CLI and the page never disagree. Everything here is
counts, reason codes (``vna_timeout``, ``modality_not_allowed``…), kinds and project names:
never an identifier, so the page may show all of it.

Reasons:

- **refused** / **failed**: the ``last_error_code`` of the studies (reports) that ended so.
- **backing off**: queued work with a ``last_error_code`` (tried and waiting for its next try,
  or put back because the VNA did not answer: ``vna_unreachable``), and studies the exporter
  deferred (``anonymising`` with failed export tries, e.g. ``ftps_connect`` while the DSH is
  down).

Archives (issue 11): per project, the studies by the archive they came from (``archives``:
``primary``, ``secondary``; only studies that were found), and how many queued studies wait
for the secondary archive (``waiting_for_secondary``: the VNA had none, the secondary is
outside its hours or at its rate).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pixl_core.db import destination_records
from pixl_core.db.connection import Connection
from pixl_core.db.states import REPORT_STATES, STUDY_STATES

REVIEW_DECISIONS = ("approved", "redacted", "rejected")

_REASONS_SQL = """
SELECT project, 'studies', CASE
         WHEN state IN ('refused', 'failed') THEN state
         ELSE 'backing_off' END, last_error_code, count(*)
FROM study
WHERE last_error_code IS NOT NULL
  AND (state IN ('refused', 'failed')
       OR state = 'queued'
       OR (state = 'anonymising' AND export_attempts > 0))
  AND (%(project)s::text IS NULL OR project = %(project)s)
GROUP BY 1, 2, 3, 4
UNION ALL
SELECT project, 'reports', CASE WHEN state = 'failed' THEN 'failed' ELSE 'backing_off' END,
       last_error_code, count(*)
FROM report
WHERE last_error_code IS NOT NULL AND state IN ('failed', 'queued')
  AND (%(project)s::text IS NULL OR project = %(project)s)
GROUP BY 1, 2, 3, 4
"""


def _empty(states: Iterable[str]) -> dict[str, int]:
    return dict.fromkeys(states, 0)


def _new_project() -> dict[str, Any]:
    return {
        "studies": _empty(STUDY_STATES),
        "reports": _empty(REPORT_STATES),
        "reasons": {
            "studies": {"refused": {}, "failed": {}, "backing_off": {}},
            "reports": {"failed": {}, "backing_off": {}},
        },
        "review": _empty(REVIEW_DECISIONS),
        # The image destination's last failure (destination_records), None when it took the
        # project's latest study: {"destination", "code", "message", "at"}.
        "destination_error": None,
        "archives": {},
        "waiting_for_secondary": 0,
    }


def projects_with_work(conn: Connection) -> list[str]:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT project FROM study UNION SELECT DISTINCT project FROM report")
        return sorted(row[0] for row in cur.fetchall())


def project_overview(conn: Connection, project: str | None = None) -> dict[str, dict[str, Any]]:
    """Per project: studies and reports in each state (zeros included), the reasons of the
    refused, failed and backing-off ones with their counts, and the review decisions of
    flagged reports. With ``project``, that project only (listed even without work)."""
    result: dict[str, dict[str, Any]] = {}
    if project is not None:
        result[project] = _new_project()
    params = {"project": project}
    with conn, conn.cursor() as cur:
        for table, key in (("study", "studies"), ("report", "reports")):
            cur.execute(
                f"SELECT project, state, count(*) FROM {table} "
                "WHERE %(project)s::text IS NULL OR project = %(project)s GROUP BY 1, 2",
                params,
            )
            for name, state, count in cur.fetchall():
                result.setdefault(name, _new_project())[key][state] = count
        cur.execute(_REASONS_SQL, params)
        for name, kind, category, code, count in cur.fetchall():
            result.setdefault(name, _new_project())["reasons"][kind][category][code] = count
        # A report's latest decision is what holds (a report may be decided again).
        cur.execute(
            "SELECT project, decision, count(*) FROM ("
            " SELECT DISTINCT ON (report_id) project, decision FROM report_review"
            " WHERE %(project)s::text IS NULL OR project = %(project)s"
            " ORDER BY report_id, id DESC) latest GROUP BY 1, 2",
            params,
        )
        for name, decision, count in cur.fetchall():
            result.setdefault(name, _new_project())["review"][decision] = count
        cur.execute(
            "SELECT project, source_archive, count(*) FROM study "
            "WHERE source_archive IS NOT NULL "
            "AND (%(project)s::text IS NULL OR project = %(project)s) GROUP BY 1, 2 ORDER BY 1, 2",
            params,
        )
        for name, archive, count in cur.fetchall():
            result.setdefault(name, _new_project())["archives"][archive] = count
        cur.execute(
            "SELECT project, count(*) FROM study "
            "WHERE state = 'queued' AND awaiting_archive = 'secondary' "
            "AND (%(project)s::text IS NULL OR project = %(project)s) GROUP BY 1",
            params,
        )
        for name, count in cur.fetchall():
            result.setdefault(name, _new_project())["waiting_for_secondary"] = count
    for name, error in destination_records.errors(conn, project).items():
        result.setdefault(name, _new_project())["destination_error"] = error
    for entry in result.values():
        for by_category in entry["reasons"].values():
            for category, codes in by_category.items():
                by_category[category] = dict(sorted(codes.items(), key=lambda kv: (-kv[1], kv[0])))
    return dict(sorted(result.items()))


def throughput(conn: Connection) -> dict[str, dict[str, float]]:
    """Per project, studies per minute over the last 5 and 60 minutes: fetched from the VNA
    (completed C-MOVEs, one per study) and exported."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT project, "
            " count(DISTINCT study_id) FILTER (WHERE finished_at > now() - interval '5 min'),"
            " count(DISTINCT study_id) FILTER (WHERE finished_at > now() - interval '60 min') "
            "FROM vna_move WHERE outcome = 'completed' "
            "AND finished_at > now() - interval '60 min' GROUP BY project"
        )
        fetched = {row[0]: row[1:] for row in cur.fetchall()}
        cur.execute(
            "SELECT project, "
            " count(*) FILTER (WHERE exported_at > now() - interval '5 min'),"
            " count(*) FILTER (WHERE exported_at > now() - interval '60 min') "
            "FROM study WHERE exported_at > now() - interval '60 min' GROUP BY project"
        )
        exported = {row[0]: row[1:] for row in cur.fetchall()}
    result = {}
    for name in sorted(set(fetched) | set(exported)):
        f5, f60 = fetched.get(name, (0, 0))
        e5, e60 = exported.get(name, (0, 0))
        result[name] = {
            "fetched_per_min_5": round(f5 / 5, 2),
            "fetched_per_min_60": round(f60 / 60, 2),
            "exported_per_min_5": round(e5 / 5, 2),
            "exported_per_min_60": round(e60 / 60, 2),
        }
    return result


def anon_overview(conn: Connection) -> dict[str, dict[str, Any]]:
    """What orthanc-anon did, per project: instances refused by reason, burned-in text regions
    by kind, and the exporter's queue (studies waiting, deferred, last success, last error)."""
    result: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return result.setdefault(
            name,
            {
                "instances_refused": {},
                "pixel_text": {},
                "export_queue": 0,
                "export_deferred": 0,
                "last_export": None,
                "last_export_error": None,
            },
        )

    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT s.project, r.reason, count(*) FROM instance_refusal r "
            "JOIN study s ON s.id = r.study_id GROUP BY 1, 2 ORDER BY 3 DESC, 2"
        )
        for name, reason, count in cur.fetchall():
            entry(name)["instances_refused"][reason] = count
        cur.execute(
            "SELECT s.project, p.kind, sum(p.regions) FROM instance_pixel_text p "
            "JOIN study s ON s.id = p.study_id GROUP BY 1, 2 ORDER BY 3 DESC, 2"
        )
        for name, kind, regions in cur.fetchall():
            entry(name)["pixel_text"][kind] = int(regions)
        cur.execute(
            "SELECT project, count(*) FILTER (WHERE state = 'anonymising'),"
            " count(*) FILTER (WHERE state = 'anonymising' AND export_attempts > 0),"
            " max(exported_at),"
            " (array_agg(last_error_code ORDER BY updated_at DESC) FILTER ("
            "   WHERE state = 'anonymising' AND export_attempts > 0))[1] "
            "FROM study GROUP BY project"
        )
        for name, queue, deferred, last, error in cur.fetchall():
            item = entry(name)
            item.update(
                export_queue=queue,
                export_deferred=deferred,
                last_export=last.isoformat() if last else None,
                last_export_error=error,
            )
    return dict(sorted(result.items()))
