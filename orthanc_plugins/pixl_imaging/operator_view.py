"""What ``/pixl/status`` answers and what the page's controls (``POST /pixl/control``) do.

Plain functions of a database connection and the workers' counters, so they are tested without
Orthanc; ``plugin_support`` serves them. Both Orthancs read the same Postgres, so both pages show
every project's work (``pixl_core.db.overview``, the same figures ``pixl status`` prints);
orthanc-raw adds the fetch controls and throughput, orthanc-anon its refusals, burned-in text
and descriptor findings by kind, and each destination's reachability. Counts, reason codes,
kinds and project names only: no identifier reaches the page.

Controls change ``fetch_control`` and ``fetch_rate`` rows exactly as ``pixl pause``, ``pixl
resume``, ``pixl hours`` and ``pixl rate`` do; a bad value is refused with the same one-line
message (``PixlConfigError``), which the page shows.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from pixl_core.config.projects import load_project
from pixl_core.db import fetch_control, overview, work_queue
from pixl_core.db.connection import Connection
from pixl_core.db.fetch_control import ALL, HoursWindow
from pixl_core.errors import PixlConfigError

MAX_STUDIES_PER_SECOND = 100.0
MAX_IN_FLIGHT = 100
ACTIONS = ("pause", "resume", "rate", "hours")


def fetch_state(conn: Connection) -> dict[str, Any]:
    """``'*'`` and every project with settings of its own: rate and hold (pause, hours)."""
    rates = work_queue.fetch_rates(conn)
    controls = fetch_control.controls(conn)
    now = fetch_control.now_local()
    result: dict[str, Any] = {}
    for scope in sorted(set(rates) | set(controls) | {ALL}):
        rate = rates.get(scope)
        result[scope] = {
            "studies_per_second": rate.studies_per_second if rate else None,
            "max_in_flight": rate.max_in_flight if rate else None,
            **controls.get(scope, fetch_control.Control(scope)).as_json(now),
        }
    return result


def raw_status(conn: Connection, counters: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "service": "orthanc-raw",
        "identifiable": True,
        **counters,
        "projects": overview.project_overview(conn),
        "fetch": fetch_state(conn),
        "throughput": overview.throughput(conn),
    }


def anon_status(
    conn: Connection, counters: Mapping[str, Any], destinations_down: Collection[str]
) -> dict[str, Any]:
    """orthanc-anon's figures; ``destinations_down`` are the projects the exporter holds back
    because their destination refused connections (``AnonExporter._down``)."""
    anon = overview.anon_overview(conn)
    for project, info in anon.items():
        info["destination_reachable"] = project not in destinations_down
    descriptors = {
        key.removeprefix("descriptions_cleaned_"): value
        for key, value in counters.items()
        if key.startswith("descriptions_cleaned_")
    }
    return {
        "service": "orthanc-anon",
        "identifiable": False,
        **counters,
        "projects": overview.project_overview(conn),
        "anon": anon,
        "descriptor_findings": descriptors,
        "destinations_down": sorted(destinations_down),
    }


def _scope(body: Mapping[str, Any]) -> str:
    project = body.get("project", ALL)
    if not isinstance(project, str):
        raise PixlConfigError("'project' must be '*' or a project slug")
    if project == fetch_control.archive_scope("secondary"):
        return project  # the secondary archive's own pause, rate and hours (issue 11)
    if project != ALL:
        load_project(project)  # one line naming the projects there are
    return project


def apply_control(conn: Connection, body: object, who: str) -> dict[str, Any]:
    """Apply one control from the page; return what holds now for its scope."""
    if not isinstance(body, dict):
        raise PixlConfigError("send a JSON object with 'action' and 'project'")
    action = body.get("action")
    if action not in ACTIONS:
        raise PixlConfigError(f"'action' must be one of {', '.join(ACTIONS)}")
    scope = _scope(body)
    if action in ("pause", "resume"):
        fetch_control.set_paused(conn, scope, action == "pause", who)
    elif action == "rate":
        rate, in_flight = body.get("studies_per_second"), body.get("max_in_flight")
        if rate == 0:
            fetch_control.set_paused(conn, scope, True, who)
        else:
            if not (
                isinstance(rate, int | float)
                and not isinstance(rate, bool)
                and math.isfinite(rate)
                and 0 < rate <= MAX_STUDIES_PER_SECOND
            ):
                raise PixlConfigError(
                    f"the rate must be a number of studies per second above 0 and at most "
                    f"{MAX_STUDIES_PER_SECOND:g} (0 pauses)"
                )
            if not (
                isinstance(in_flight, int)
                and not isinstance(in_flight, bool)
                and 1 <= in_flight <= MAX_IN_FLIGHT
            ):
                raise PixlConfigError(f"in flight must be a whole number from 1 to {MAX_IN_FLIGHT}")
            work_queue.set_fetch_rate(conn, scope, float(rate), in_flight)
    else:
        window = body.get("hours")
        if not isinstance(window, str):
            raise PixlConfigError(f"'hours' must be {fetch_control.HOURS_RULE} or 'off'")
        weekends = bool(body.get("weekends", False))
        if window.strip().lower() in {"", "off", "any", "always"}:
            fetch_control.set_hours(conn, scope, None)
        else:
            fetch_control.set_hours(conn, scope, HoursWindow.parse(window, weekends))
    return {"ok": True, "project": scope, "fetch": fetch_state(conn).get(scope)}
