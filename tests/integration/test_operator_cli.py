"""The operator's CLI on a real Postgres: `pixl status` with reasons at 80 columns, pause,
resume, `rate 0`, VNA hours, priority, and the one-line errors a new user hit (issue 10)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pixl_cli.main import app
from pixl_core.db import fetch_control
from pixl_core.db.connection import Connection, connect

runner = CliRunner()
LONG = "a-research-project-with-a-rather-long-name-for-status"


def pixl(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def conn(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Connection]:
    monkeypatch.setenv("PIXL_DB_URL", db_url)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("PIXL_OPERATOR", "alice")
    pixl("rate")  # migrates
    connection = connect(db_url)
    yield connection
    connection.close()


def add(conn: Connection, table: str, project: str, n: int, state: str, code: str | None) -> None:
    with conn, conn.cursor() as cur:
        for i in range(n):
            cur.execute(
                f"INSERT INTO {table} (project, mrn, accession_number, state, last_error_code) "
                "VALUES (%s, %s, %s, %s, %s)",
                (project, f"M{table}{state}{code}{i}", f"A{table}{state}{code}{i}", state, code),
            )


@pytest.fixture
def work(conn: Connection) -> Connection:
    add(conn, "study", "chest-xray", 3, "exported", None)
    add(conn, "study", "chest-xray", 2, "refused", "modality_not_allowed")
    add(conn, "study", "chest-xray", 1, "failed", "vna_timeout")
    add(conn, "study", "chest-xray", 4, "queued", "vna_unreachable")
    add(conn, "study", LONG, 1, "queued", None)
    add(conn, "study", LONG, 1, "failed", "invalid_project")
    add(conn, "report", "chest-xray", 2, "failed", "cogstack_timeout")
    add(conn, "report", "chest-xray", 1, "queued", "emap_unreachable")
    add(conn, "report", "chest-xray", 1, "flagged", None)
    return conn


def one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for word in words:
        assert word in lines[0]


def test_status_names_every_project_and_reason_within_80_columns(work):
    result = pixl("status")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("chest-xray: asking the VNA") for line in lines)
    assert any(line.startswith(f"{LONG}: asking the VNA") for line in lines)
    text = result.output
    for expected in (
        "images refused modality_not_allowed 2",
        "images failed  vna_timeout 1",
        "images waiting vna_unreachable 4",
        "reports failed cogstack_timeout 2",
        "reports waiting emap_unreachable 1",
        "images failed  invalid_project 1",
        "1 flagged awaiting review",
        "`pixl reports flagged chest-xray`",
    ):
        assert expected in text


def test_status_of_one_project_and_its_json_carry_the_same_reasons(work):
    text = pixl("status", "chest-xray")
    assert text.exit_code == 0 and LONG not in text.output
    result = pixl("status", "--json")
    data = json.loads(result.output)
    assert data["chest-xray"]["refused"] == 2 and data[LONG]["failed"] == 1
    details = data["_details"]["chest-xray"]
    assert details["reasons"]["studies"] == {
        "refused": {"modality_not_allowed": 2},
        "failed": {"vna_timeout": 1},
        "backing_off": {"vna_unreachable": 4},
    }
    assert details["reasons"]["reports"]["failed"] == {"cogstack_timeout": 2}
    assert data["_details"]["*"]["fetch"]["paused"] is False


def test_status_of_an_unknown_project_is_one_line_not_zeros(work):
    one_line_error(pixl("status", "--project", "typo"), "unknown project 'typo'", "chest-xray")
    one_line_error(pixl("status", "typo"), "unknown project 'typo'")


def test_pause_and_resume_are_stored_and_said(work):
    result = pixl("pause")
    assert result.exit_code == 0 and "paused" in result.output and "pixl resume" in result.output
    assert fetch_control.controls(work)["*"].paused
    assert fetch_control.controls(work)["*"].paused_by == "alice"
    status = pixl("status").output
    assert "PAUSED" in status and "by alice" in status
    assert pixl("resume").output.strip() == "all projects: resumed"
    assert "was not paused; nothing changed" in pixl("resume").output
    assert not fetch_control.controls(work)["*"].paused
    assert pixl("pause", "chest-xray").exit_code == 0
    assert fetch_control.controls(work)["chest-xray"].paused
    assert "`pixl resume chest-xray`" in pixl("status", "chest-xray").output
    one_line_error(pixl("pause", "typo"), "unknown project 'typo'")


def test_rate_zero_pauses_and_keeps_the_rate(work):
    pixl("rate", "3", "--in-flight", "2")
    result = pixl("rate", "0")
    assert result.exit_code == 0 and "paused" in result.output
    assert fetch_control.controls(work)["*"].paused
    assert "3 studies/s, 2 in flight" in pixl("rate").output
    one_line_error(pixl("rate", "0", "--in-flight", "2"), "pixl pause")
    one_line_error(pixl("rate", "nan"), "above 0")


def test_vna_hours_are_checked_stored_and_shown(work):
    one_line_error(pixl("hours", "25:00-07:00"), "HH:MM-HH:MM")
    one_line_error(pixl("hours", "08:00-08:00"), "off")
    result = pixl("hours", "20:00-07:00", "--weekends", "--project", "chest-xray")
    assert result.exit_code == 0, result.output
    assert "20:00-07:00 and weekends" in result.output
    window = fetch_control.controls(work)["chest-xray"].hours
    assert window is not None and window.text == "20:00-07:00" and window.weekends
    assert "VNA hours 20:00-07:00 and weekends" in pixl("status", "chest-xray").output
    assert "any time" in pixl("hours", "off", "--project", "chest-xray").output
    assert fetch_control.controls(work)["chest-xray"].hours is None


def test_populate_priority_is_recorded_and_raised_on_a_second_run(conn, tmp_path: Path):
    csv = tmp_path / "cohort.csv"
    csv.write_text("mrn,accession_number,study_datetime\nM1,A1,\nM2,A2,\n")
    assert pixl("populate", str(csv), "--project", "chest-xray", "--priority", "7").exit_code == 0
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT priority FROM study UNION SELECT DISTINCT priority FROM report"
        )
        assert cur.fetchall() == [(7,)]
    assert pixl("populate", str(csv), "--project", "chest-xray", "--priority", "9").exit_code == 0
    with conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT priority FROM study")
        assert cur.fetchall() == [(9,)]
    one_line_error(pixl("populate", str(csv), "-p", "chest-xray", "--priority", "5000"), "1000")


def test_populate_of_a_path_that_does_not_exist_says_so(conn):
    one_line_error(pixl("populate", "/no/such/path"), "/no/such/path does not exist")


def test_reports_show_of_no_such_report_says_so(conn, monkeypatch):
    monkeypatch.setenv("PIXL_HASH_KEY", "k" * 32)
    result = pixl("reports", "show", "99999")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [
        "error: no report 99999: `pixl reports flagged PROJECT` lists the ids of the reports "
        "to review"
    ]


class _DshDown(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.dumps({"detail": "FTPS 127.0.0.1:2121: connect failed: connection refused"})
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


def test_export_while_the_dsh_is_down_says_what_to_check(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _DshDown)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("PIXL_EHR_URL", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("PIXL_EHR_TOKEN", "token")
        result = pixl("export-patient-data", "chest-xray")
    finally:
        server.shutdown()
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "connect failed" in lines[0]
    assert "projects/chest-xray.yaml" in lines[0] and "run the command again" in lines[0]


def test_status_watch_redraws_until_interrupted(work, monkeypatch):
    import pixl_cli.work_cmds as work_cmds

    rounds = []

    def sleep(seconds: float) -> None:
        rounds.append(seconds)
        if len(rounds) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(work_cmds.time, "sleep", sleep)
    result = pixl("status", "--watch", "--interval", "0.5")
    assert result.exit_code == 0, result.output
    assert rounds == [0.5, 0.5]
    assert "pixl status at" in result.output and "vna_unreachable 4" in result.output
