"""What `/pixl/status` answers and what the page's controls do (pixl_imaging.operator_view),
on a real Postgres: the same rows `pixl pause/resume/rate/hours` change, the same one-line
refusals, and figures made of counts, codes and project names only."""

from __future__ import annotations

import json

import pytest

from pixl_core import db
from pixl_core.db import fetch_control, work_queue
from pixl_core.errors import PixlConfigError
from pixl_imaging.operator_view import anon_status, apply_control, raw_status
from tests.integration.imaging_fakes import add_study


@pytest.fixture
def conn(db_url: str):
    db.migrate(db_url)
    connection = db.connect(db_url)
    yield connection
    connection.close()


def test_the_controls_change_what_the_cli_changes(conn):
    apply_control(conn, {"action": "pause", "project": "chest-xray"}, "page:pixl")
    control = fetch_control.controls(conn)["chest-xray"]
    assert control.paused and control.paused_by == "page:pixl"
    apply_control(conn, {"action": "resume", "project": "chest-xray"}, "page:pixl")
    assert not fetch_control.controls(conn)["chest-xray"].paused
    apply_control(conn, {"action": "rate", "studies_per_second": 2, "max_in_flight": 3}, "p")
    assert work_queue.fetch_rates(conn)["*"] == work_queue.FetchRate(2.0, 3)
    apply_control(conn, {"action": "rate", "studies_per_second": 0}, "page:pixl")
    assert fetch_control.controls(conn)["*"].paused
    answer = apply_control(
        conn, {"action": "hours", "hours": "20:00-07:00", "weekends": True}, "page:pixl"
    )
    assert answer["fetch"]["vna_hours"] == "20:00-07:00" and answer["fetch"]["vna_weekends"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([], "JSON object"),
        ({"action": "explode"}, "'action' must be one of"),
        ({"action": "pause", "project": "typo"}, "unknown project 'typo'"),
        ({"action": "rate", "studies_per_second": float("inf"), "max_in_flight": 1}, "above 0"),
        ({"action": "rate", "studies_per_second": 1, "max_in_flight": True}, "in flight"),
        ({"action": "hours", "hours": "7-8"}, "HH:MM-HH:MM"),
    ],
)
def test_bad_controls_are_refused_in_one_line_and_change_nothing(conn, body, expected):
    with pytest.raises(PixlConfigError) as error:
        apply_control(conn, body, "page:pixl")
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert fetch_control.controls(conn) == {}


def test_status_carries_reasons_per_project_and_no_identifier(conn):
    study = add_study(conn, "chest-xray", "MRNSECRET1", "ACCSECRET1")
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE study SET state = 'refused', last_error_code = 'modality_not_allowed' "
            "WHERE id = %s",
            (study,),
        )
        cur.execute(
            "INSERT INTO instance_refusal (study_id, instance_key, reason) "
            "VALUES (%s, 'k1', 'series_filtered')",
            (study,),
        )
    raw = raw_status(conn, {"claimed": 1})
    assert raw["projects"]["chest-xray"]["studies"]["refused"] == 1
    assert raw["projects"]["chest-xray"]["reasons"]["studies"]["refused"] == {
        "modality_not_allowed": 1
    }
    assert raw["fetch"]["*"]["hold"] is None and raw["identifiable"] is True
    anon = anon_status(conn, {"descriptions_cleaned_name": 2}, ["chest-xray"])
    assert anon["anon"]["chest-xray"]["instances_refused"] == {"series_filtered": 1}
    assert anon["anon"]["chest-xray"]["destination_reachable"] is False
    assert anon["descriptor_findings"] == {"name": 2}
    for answer in (raw, anon):
        text = json.dumps(answer, default=str)
        assert "SECRET" not in text
