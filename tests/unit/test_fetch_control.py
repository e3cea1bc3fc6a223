"""The VNA's hours and what holds orthanc-raw back (pixl_core.db.fetch_control), without a
database; and `pixl status`'s text layout (pixl_cli.status_view)."""

from __future__ import annotations

from datetime import datetime

import pytest

from pixl_cli.status_view import render
from pixl_core.db.fetch_control import ALL, Control, HoursWindow, gate
from pixl_core.db.work_queue import FetchRate
from pixl_core.errors import PixlConfigError

TUESDAY = datetime(2026, 12, 1)  # a Tuesday
SATURDAY = datetime(2026, 12, 5)


def at(day: datetime, hh: int, mm: int = 0) -> datetime:
    return day.replace(hour=hh, minute=mm)


def test_a_window_over_midnight_is_open_at_night_and_closed_by_day():
    window = HoursWindow.parse("20:00-07:00")
    assert window.is_open(at(TUESDAY, 23)) and window.is_open(at(TUESDAY, 6, 59))
    assert not window.is_open(at(TUESDAY, 7)) and not window.is_open(at(TUESDAY, 19, 59))
    assert window.next_change(at(TUESDAY, 12)) == at(TUESDAY, 20)
    assert window.next_change(at(TUESDAY, 22)) == at(TUESDAY, 7).replace(day=2)


def test_weekends_are_open_all_day_when_asked_for():
    assert not HoursWindow.parse("20:00-07:00").is_open(at(SATURDAY, 12))
    assert HoursWindow.parse("20:00-07:00", weekends=True).is_open(at(SATURDAY, 12))


@pytest.mark.parametrize("text", ["25:00-07:00", "20:00", "8-9", "20:00-20:00", "x"])
def test_bad_windows_are_refused_in_one_line(text):
    with pytest.raises(PixlConfigError) as error:
        HoursWindow.parse(text)
    assert "\n" not in str(error.value)


def test_the_gate_holds_everything_or_only_the_projects_held():
    window = HoursWindow.parse("20:00-07:00")
    rows = {ALL: Control(ALL, hours=window), "p": Control("p", paused=True)}
    closed = gate(rows, at(TUESDAY, 12))
    assert closed.everything is not None and closed.everything.reason == "outside_hours"
    assert "until Tue 20:00" in closed.everything.describe()
    opened = gate(rows, at(TUESDAY, 22))
    assert opened.everything is None and list(opened.projects) == ["p"]
    assert "`pixl resume p`" in opened.projects["p"].describe()


def _overview(project: str) -> dict:
    return {
        project: {
            "studies": {"queued": 4, "fetching": 0, "exported": 3, "refused": 2, "failed": 1},
            "reports": {"checked": 2, "flagged": 1},
            "reasons": {
                "studies": {
                    "refused": {"modality_not_allowed": 2},
                    "failed": {"vna_timeout": 1},
                    "backing_off": {"vna_unreachable": 4},
                },
                "reports": {"failed": {}, "backing_off": {}},
            },
            "review": {"approved": 0, "redacted": 0, "rejected": 0},
        }
    }


@pytest.mark.parametrize("width", [40, 60, 80])
def test_status_text_never_cuts_a_name_or_command_and_fits_80_columns(width):
    project = "a-project-name-of-thirty-chars"
    rows = {project: Control(project, paused=True, paused_by="alice")}
    lines = render(
        _overview(project),
        {ALL: FetchRate(1.0, 2)},
        rows,
        gate(rows, at(TUESDAY, 12)),
        width=width,
    )
    text = "\n".join(lines)
    overlong = [line for line in lines if len(line) > width]
    # Only a command longer than a narrow line may stand out, alone on its line.
    assert all(line.count("`") == 2 and ", " not in line.strip(" ,") for line in overlong)
    assert width < 80 or not overlong
    assert any(line.startswith(f"{project}:") for line in lines) and "PAUSED by alice" in text
    assert f"`pixl resume {project}`" in text
    assert f"`pixl reports flagged {project}`" in text
    for reason in ("modality_not_allowed 2", "vna_timeout 1", "vna_unreachable 4"):
        assert reason in text


def test_status_text_shows_the_destinations_last_error_and_nothing_when_none():
    project = "research"
    rows: dict = {}
    overview = _overview(project)
    plain = "\n".join(render(overview, {}, rows, gate(rows, at(TUESDAY, 12)), width=80))
    assert "destination error" not in plain
    message = (
        "DICOMweb dw.example:443: connect failed: connection failed (gave up after 4 attempts)"
    )
    overview[project]["destination_error"] = {
        "destination": "dicomweb",
        "code": "dicomweb_connect",
        "message": message,
        "at": "2026-12-01T09:14:02.123+00:00",
    }
    lines = render(overview, {}, rows, gate(rows, at(TUESDAY, 12)), width=80)
    text = " ".join(" ".join(lines).split())
    assert "destination error" in text and message in text and "2026-12-01 09:14:02" in text
