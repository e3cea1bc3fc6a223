"""The CLI side of reports: review commands, and ``pixl export-patient-data`` over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from typer.testing import CliRunner

from pixl_cli.main import app as pixl_app
from pixl_core.db.connection import connect
from pixl_core.transport.ftps import FtpsClient
from pixl_ehr.service import ServiceConfig, create_app
from stack.ports import free_port
from tests.integration.ehr_fixtures import (
    PROJECT,
    SECRET,
    add_extract,
    row,
    set_state,
    stage_public,
)

runner = CliRunner()


def pixl_reports(*args: str):
    """``pixl reports ARGS...`` through the real CLI."""
    return runner.invoke(pixl_app, ["reports", *args])


@pytest.fixture
def conn(db_url, monkeypatch):
    monkeypatch.setenv("PIXL_DB_URL", db_url)
    monkeypatch.setenv("PIXL_HASH_KEY", SECRET.decode())
    connection = connect(db_url)
    yield connection
    connection.close()


@pytest.fixture
def items(conn) -> dict[str, int]:
    _extract, ids = add_extract(conn, [("MRN1", "ACC1", 1), ("MRN2", "ACC2", 2)])
    findings = [
        {"kind": "name", "start": 5, "end": 12},
        {"kind": "postcode", "start": 30, "end": 37},
    ]
    set_state(conn, ids[0], "flagged", check_findings=json.dumps(findings))
    set_state(conn, ids[1], "checked")
    return {"flagged": ids[0], "checked": ids[1]}


def test_flagged_lists_ids_kinds_and_offsets(items):
    result = pixl_reports("flagged", PROJECT, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [
        {
            "report_id": items["flagged"],
            "findings": [
                {"kind": "name", "start": 5, "end": 12},
                {"kind": "postcode", "start": 30, "end": 37},
            ],
        }
    ]
    table = pixl_reports("flagged", PROJECT)
    assert table.exit_code == 0
    assert "name 5-12, postcode 30-37" in table.output


def test_flagged_for_an_unknown_project_is_one_line(items):
    result = pixl_reports("flagged", "nope")
    assert result.exit_code == 2
    assert "unknown project 'nope'" in result.output


def test_approve_then_reject_again_exits_1(items, conn):
    result = pixl_reports("approve", str(items["flagged"]))
    assert result.exit_code == 0, result.output
    assert row(conn, items["flagged"])["state"] == "approved"

    again = pixl_reports("reject", str(items["flagged"]))
    assert again.exit_code == 1
    assert f"report {items['flagged']} is approved, not flagged" in again.output
    assert len(again.output.strip().splitlines()) == 1


def test_reject_of_a_checked_or_unknown_report_exits_1(items, conn):
    result = pixl_reports("reject", str(items["checked"]))
    assert result.exit_code == 1
    assert row(conn, items["checked"])["state"] == "checked"
    missing = pixl_reports("approve", "999999")
    assert missing.exit_code == 1 and "no report 999999" in missing.output


@pytest.fixture
def ehr_url(db_url, conn, dsh_ftps_server, monkeypatch) -> Iterator[str]:
    """The EHR service (no worker) served by uvicorn in a thread, exporting to a real FTPS."""
    settings = dsh_ftps_server.settings()
    config = ServiceConfig(
        db_url=db_url, start_worker=False, ftps=lambda project: FtpsClient(settings)
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("PIXL_EHR_URL", url)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def test_export_patient_data_prints_counts(ehr_url, conn, tmp_path, dsh_ftps_server):
    staging = stage_public(tmp_path)
    _extract, (report_id,) = add_extract(conn, [("MRN1", "ACC1", 1)], staging_path=staging)
    set_state(conn, report_id, "checked")

    first = runner.invoke(pixl_app, ["export-patient-data", PROJECT])
    assert first.exit_code == 0, first.output
    assert "4 files sent, 0 already in the DSH, 1 reports exported" in first.output

    second = runner.invoke(pixl_app, ["export-patient-data", PROJECT, "--json"])
    assert second.exit_code == 0, second.output
    counts = json.loads(second.output)
    assert (counts["files_sent"], counts["files_skipped"], counts["reports_exported"]) == (0, 4, 0)


def test_export_errors_are_one_line(ehr_url, conn):
    unknown = runner.invoke(pixl_app, ["export-patient-data", "no-such-project"])
    assert unknown.exit_code == 2
    assert "unknown project 'no-such-project'" in unknown.output

    nothing = runner.invoke(pixl_app, ["export-patient-data", PROJECT])
    assert nothing.exit_code == 1
    assert "nothing to export" in nothing.output
    assert len(nothing.output.strip().splitlines()) == 1


def test_export_with_the_ehr_service_down_names_the_setting(monkeypatch):
    monkeypatch.setenv("PIXL_EHR_URL", f"http://127.0.0.1:{free_port()}")
    result = runner.invoke(pixl_app, ["export-patient-data", PROJECT])
    assert result.exit_code == 2
    assert "cannot reach the EHR service at PIXL_EHR_URL=http://127.0.0.1:" in result.output
    assert "make demo" in result.output

    monkeypatch.delenv("PIXL_EHR_URL")
    unset = runner.invoke(pixl_app, ["export-patient-data", PROJECT])
    assert unset.exit_code == 2 and "PIXL_EHR_URL is not set" in unset.output
