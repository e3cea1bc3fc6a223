"""The secondary archive from the operator's side on a real Postgres: its own hours, pause and
rate (`--archive secondary`), and `pixl status` counting studies by source archive (issue 11)."""

from __future__ import annotations

import json

from pixl_core.db import fetch_control
from pixl_core.db.connection import Connection
from tests.integration.test_operator_cli import conn, pixl  # noqa: F401 (fixture)


def add_studies(conn: Connection) -> None:  # noqa: F811
    rows = [
        ("exported", "primary", None, None),
        ("exported", "primary", None, None),
        ("anonymising", "secondary", None, None),
        ("queued", None, "secondary", "waiting_for_secondary"),
        ("queued", None, "secondary", "waiting_for_secondary"),
        ("not_found", None, None, None),
    ]
    with conn, conn.cursor() as cur:
        for n, (state, source, awaiting, code) in enumerate(rows):
            cur.execute(
                "INSERT INTO study (project, mrn, accession_number, state, source_archive, "
                "awaiting_archive, last_error_code) VALUES ('chest-xray', %s, %s, %s, %s, %s, %s)",
                (f"M{n}", f"A{n}", state, source, awaiting, code),
            )


def test_secondary_hours_and_rate_are_its_own(conn):  # noqa: F811
    result = pixl("hours", "20:00-07:00", "--weekends", "--archive", "secondary")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("secondary archive: hours 20:00-07:00 and weekends")
    rows = fetch_control.controls(conn)
    assert rows["archive:secondary"].hours == fetch_control.HoursWindow.parse("20:00-07:00", True)
    assert "*" not in rows or rows["*"].hours is None, "the VNA's hours are untouched"

    shown = pixl("rate", "--archive", "secondary")
    assert "archive:secondary: 0.1 studies/s (6 studies/min), 1 in flight" in shown.output
    result = pixl("rate", "0.05", "--archive", "secondary")
    assert result.exit_code == 0, result.output
    assert "0.05 studies/s (3 studies/min)" in result.output
    assert "1 studies/s" in pixl("rate").output, "the VNA's rate is untouched"

    assert pixl("pause", "--archive", "secondary").exit_code == 0
    assert fetch_control.is_paused(conn, "archive:secondary")
    assert not fetch_control.is_paused(conn, "*")
    assert "resumed" in pixl("resume", "--archive", "secondary").output


def test_archive_other_than_secondary_is_one_line(conn):  # noqa: F811
    result = pixl("hours", "20:00-07:00", "--archive", "pacs2")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: --archive must be one of: secondary"]


def test_status_counts_studies_by_source_archive_and_the_waiting(conn):  # noqa: F811
    add_studies(conn)
    pixl("hours", "20:00-07:00", "--archive", "secondary")
    result = pixl("status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["chest-xray"]["queued"] == 2 and status["chest-xray"]["exported"] == 2
    details = status["_details"]["chest-xray"]
    assert details["archives"] == {"primary": 2, "secondary": 1}
    assert details["waiting_for_secondary"] == 2
    assert details["reasons"]["studies"]["backing_off"] == {"waiting_for_secondary": 2}
    secondary = status["_details"]["*"]["secondary"]
    assert secondary["fetch"]["vna_hours"] == "20:00-07:00"

    text = pixl("status").output
    assert "from primary 2, from secondary 1, waiting for secondary 2" in text
    assert "secondary archive: " in text and "hours 20:00-07:00" in text


def test_the_page_may_set_the_secondary_archives_hours(conn):  # noqa: F811
    from pixl_imaging.operator_view import apply_control

    answer = apply_control(
        conn, {"action": "hours", "project": "archive:secondary", "hours": "20:00-07:00"}, "bob"
    )
    assert answer["project"] == "archive:secondary"
    assert answer["fetch"]["vna_hours"] == "20:00-07:00"
    assert fetch_control.controls(conn).get("*") is None, "the VNA's own hours are untouched"
