"""The CLI side of reports: review commands, and ``pixl export-patient-data`` over HTTP."""

from __future__ import annotations

import hashlib
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
from pixl_ehr.report_check import check_text
from pixl_ehr.service import ServiceConfig, create_app
from stack.ports import free_port
from tests.integration.ehr_fixtures import (
    PATIENTS,
    PROJECT,
    SECRET,
    add_extract,
    load_emap,
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


def reviews(conn, report_id: int) -> list[dict]:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM report_review WHERE report_id = %s ORDER BY id", (report_id,))
        names = [d.name for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def test_approve_without_a_reason_is_refused_in_one_line(items, conn):
    result = pixl_reports("approve", str(items["flagged"]), "--yes")
    assert result.exit_code == 2
    assert "`pixl reports approve` needs a reason: add --reason" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert row(conn, items["flagged"])["state"] == "flagged"
    assert reviews(conn, items["flagged"]) == []


def test_approve_shows_findings_not_text_and_a_no_changes_nothing(items, conn):
    result = runner.invoke(
        pixl_app,
        ["reports", "approve", str(items["flagged"]), "--reason", "eponym, reviewed"],
        input="n\n",
    )
    assert result.exit_code == 1
    assert "2 findings: name 5-12, postcode 30-37" in result.output
    assert "NOT masked?" in result.output  # the question was asked
    assert f"de-identified report {items['flagged']}" not in result.output  # not a terminal
    assert f"report {items['flagged']} not approved: nothing changed" in result.output
    assert row(conn, items["flagged"])["state"] == "flagged"
    assert reviews(conn, items["flagged"]) == []
    # No answer at all (end of input) is a no too.
    silent = pixl_reports("approve", str(items["flagged"]), "--reason", "eponym, reviewed")
    assert silent.exit_code == 1 and row(conn, items["flagged"])["state"] == "flagged"
    assert f"report {items['flagged']} not approved: nothing changed" in silent.output


def test_approve_confirmed_is_recorded_with_operator_reason_and_digest(items, conn, monkeypatch):
    monkeypatch.setenv("PIXL_OPERATOR", "jdoe")
    result = runner.invoke(
        pixl_app,
        ["reports", "approve", str(items["flagged"]), "-r", "eponym, reviewed"],
        input="y\n",
    )
    assert result.exit_code == 0, result.output
    assert f"report {items['flagged']} approved by jdoe" in result.output
    assert row(conn, items["flagged"])["state"] == "approved"
    [record] = reviews(conn, items["flagged"])
    text = f"de-identified report {items['flagged']}"
    assert (record["decision"], record["reviewed_by"], record["reason"]) == (
        "approved",
        "jdoe",
        "eponym, reviewed",
    )
    assert record["released_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert record["findings_by_kind"] == {"name": 1, "postcode": 1}

    again = pixl_reports("reject", str(items["flagged"]), "--reason", "second thoughts")
    assert again.exit_code == 1
    assert f"report {items['flagged']} is approved, not flagged" in again.output
    assert len(again.output.strip().splitlines()) == 1


def test_reject_of_a_checked_or_unknown_report_exits_1(items, conn):
    result = pixl_reports("reject", str(items["checked"]), "--reason", "not needed")
    assert result.exit_code == 1
    assert row(conn, items["checked"])["state"] == "checked"
    missing = pixl_reports("approve", "999999", "--reason", "eponym", "--yes")
    assert missing.exit_code == 1 and "no report 999999" in missing.output
    no_reason = pixl_reports("reject", str(items["flagged"]))
    assert no_reason.exit_code == 2 and "add --reason" in no_reason.output


def test_a_reason_with_an_identifier_is_refused(items, conn):
    result = pixl_reports("reject", str(items["flagged"]), "--reason", "patient MRN1 asked")
    assert result.exit_code == 2
    assert "holds an identifier (mrn)" in result.output and "MRN1" not in result.output
    assert row(conn, items["flagged"])["state"] == "flagged"


@pytest.fixture
def emap_flagged(conn, db_url, tmp_path, monkeypatch) -> int:
    """A report of EMAP's patient Oakhurst that the real checker flags for his name."""
    monkeypatch.delenv("PIXL_EMAP_URL", raising=False)  # EMAP is a schema of the test database
    load_emap(db_url, tmp_path)
    text = "AP chest. Mr Oakhurst has a right basal opacity."
    flagged, findings = check_text(text, "MRN0002", "ACC0002", PATIENTS[1])
    assert flagged
    _extract, (report_id,) = add_extract(conn, [("MRN0002", "ACC0002", 7)])
    set_state(
        conn, report_id, "flagged", deidentified_text=text, check_findings=json.dumps(findings)
    )
    return report_id


def test_redact_releases_the_masked_text_and_history_lists_it(emap_flagged, conn, monkeypatch):
    monkeypatch.setenv("PIXL_OPERATOR", "jdoe")
    result = pixl_reports("redact", str(emap_flagged), "--reason", "name left by Cogstack", "--yes")
    assert result.exit_code == 0, result.output
    assert f"report {emap_flagged} redacted by jdoe" in result.output
    assert "Oakhurst" not in result.output
    assert row(conn, emap_flagged)["released_text"] == (
        "AP chest. Mr [NAME] has a right basal opacity."
    )
    history = pixl_reports("history", PROJECT, "--json")
    assert history.exit_code == 0, history.output
    [entry] = json.loads(history.output)
    assert {k: entry[k] for k in ("report_id", "decision", "reviewed_by", "reason")} == {
        "report_id": emap_flagged,
        "decision": "redacted",
        "reviewed_by": "jdoe",
        "reason": "name left by Cogstack",
    }
    assert entry["findings_by_kind"] == {"name": 1}
    table = pixl_reports("history", PROJECT)
    assert table.exit_code == 0
    assert "redacted" in table.output and "name 1" in table.output
    assert "right basal" not in table.output and "right basal" not in history.output


def test_redact_refused_by_the_recheck_changes_nothing(emap_flagged, conn):
    # Findings that miss the name (as an older check might have stored): the re-check finds it.
    set_state(
        conn,
        emap_flagged,
        "flagged",
        deidentified_text="AP chest. Mr Oakhurst has a right basal opacity.",
        check_findings=json.dumps([{"kind": "name", "start": 0, "end": 2}]),
    )
    result = pixl_reports("redact", str(emap_flagged), "--reason", "masked", "--yes")
    assert result.exit_code == 1
    assert "the masked text still flags (name 1)" in result.output
    assert "Oakhurst" not in result.output
    assert row(conn, emap_flagged)["state"] == "flagged"
    assert reviews(conn, emap_flagged) == []


def test_history_of_a_project_without_decisions(items):
    result = pixl_reports("history", PROJECT)
    assert result.exit_code == 0 and "no review decision recorded" in result.output


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
