"""The report worker: EMAP → Cogstack → checker → checked / flagged / missing, with retries."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from pixl_core.db import work_queue
from pixl_core.db.connection import connect
from pixl_ehr.report_worker import ReportWorker, ReportWorkerSettings, error_code
from tests.integration.ehr_fixtures import (
    FakeCogstack,
    Identifiers,
    add_extract,
    fake_check,
    load_emap,
    row,
)


@pytest.fixture
def conn(db_url):
    connection = connect(db_url)
    yield connection
    connection.close()


def make_worker(db_url: str, cogstack: FakeCogstack, **settings) -> ReportWorker:
    options = {"worker_id": "ehr:test", "backoff_base_seconds": 0.0, **settings}
    return ReportWorker(
        db_url,
        cogstack,
        ReportWorkerSettings(**options),
        emap_db_url=db_url,
        checker=fake_check,
        identifiers_factory=Identifiers,
        checker_version="fake-1",
    )


STUDIES = [("MRN0001", "ACC0001", 1), ("MRN0002", "ACC0002", 2), ("MRN0003", "ACC0003", 3)]


def test_reports_end_checked_flagged_or_missing(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    _extract, (clean, leaky, absent) = add_extract(conn, STUDIES)
    cogstack = FakeCogstack(remove=("Quintrell",))  # misses "Oakhurst" in report 2
    worker = make_worker(db_url, cogstack)

    result = worker.run_once()
    worker.close()

    assert result.claimed == 3
    assert dict(result.states) == {"checked": 1, "flagged": 1, "missing": 1}
    assert cogstack.calls == [("bulk", 2)]

    passed = row(conn, clean)
    assert passed["state"] == "checked"
    assert passed["check_flagged"] is False and passed["check_findings"] == []
    assert passed["deidentified_text"].startswith("PA chest radiograph.")
    assert passed["checked_at"] is not None and passed["claimed_by"] is None

    flagged = row(conn, leaky)
    assert flagged["state"] == "flagged" and flagged["check_flagged"] is True
    text = flagged["deidentified_text"]
    [finding] = flagged["check_findings"]
    # Offsets and kind only: the finding never holds the matched text.
    assert set(finding) == {"kind", "start", "end"}
    assert finding["kind"] == "family_name"
    assert text[finding["start"] : finding["end"]] == "Oakhurst"
    assert "Oakhurst" not in json.dumps(flagged["check_findings"])

    assert row(conn, absent)["state"] == "missing"


def test_single_report_uses_single_call(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    add_extract(conn, STUDIES[:1])
    cogstack = FakeCogstack()
    make_worker(db_url, cogstack).run_once()
    assert cogstack.calls == [("single", 1)]


def test_each_round_records_a_check_run(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    add_extract(conn, STUDIES)
    make_worker(db_url, FakeCogstack()).run_once()
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT project, checker_version, reports_checked, reports_flagged, flagged_by_kind, "
            "finished_at >= started_at FROM check_run"
        )
        assert cur.fetchall() == [("chest-xray", "fake-1", 2, 1, {"family_name": 1}, True)]


def test_checker_gets_emap_identifiers_and_the_work_items_mrn(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    add_extract(conn, STUDIES[:1])
    seen: list[Identifiers] = []

    def spy(text: str, identifiers: Identifiers):
        seen.append(identifiers)
        return fake_check(text, identifiers)

    worker = make_worker(db_url, FakeCogstack())
    worker.checker = spy
    worker.run_once()
    # One call: the checker takes the accession number in a field of its own (issue 9), so the
    # worker no longer runs it a second time with the accession number in the MRN's place.
    (ids,) = seen
    assert (ids.mrn, ids.family_name, ids.date_of_birth, ids.postcode, ids.accession_number) == (
        "MRN0001",
        "Quintrell",
        "1961-04-12",
        "EX4 6PL",
        "ACC0001",
    )


def test_cogstack_error_retries_then_fails_with_its_code(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    _extract, (report_id,) = add_extract(conn, STUDIES[:1])
    worker = make_worker(db_url, FakeCogstack(error="cogstack_unreachable"), max_attempts=2)

    first = worker.run_once()
    assert first.cogstack_error == "cogstack_unreachable"
    state = row(conn, report_id)
    assert (state["state"], state["last_error_code"], state["attempts"]) == (
        "queued",
        "cogstack_unreachable",
        1,
    )
    assert state["deidentified_text"] is None

    worker.run_once()
    state = row(conn, report_id)
    assert (state["state"], state["last_error_code"], state["attempts"]) == (
        "failed",
        "cogstack_unreachable",
        2,
    )


def test_cogstack_back_after_an_outage_finishes_the_report(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    _extract, (report_id,) = add_extract(conn, STUDIES[:1])
    cogstack = FakeCogstack(error="cogstack_timeout")
    worker = make_worker(db_url, cogstack)
    worker.run_once()
    assert row(conn, report_id)["state"] == "queued"
    cogstack.error = None
    worker.run_once()
    assert row(conn, report_id)["state"] == "checked"


def test_unexpected_errors_fail_closed(db_url, conn, tmp_path: Path):
    """A crash in the de-identifier or the checker never lets a report through unchecked."""
    load_emap(db_url, tmp_path)
    _extract, (report_id,) = add_extract(conn, STUDIES[:1])

    class Broken(FakeCogstack):
        def deidentify(self, text: str) -> str:
            raise RuntimeError("boom")

    worker = make_worker(db_url, Broken())
    worker.run_once()
    assert row(conn, report_id)["last_error_code"] == "cogstack_runtimeerror"

    def broken_check(text, identifiers):
        raise ValueError("boom")

    worker = make_worker(db_url, FakeCogstack())
    worker.checker = broken_check
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE report SET next_attempt_at = now() WHERE id = %s", (report_id,))
    worker.run_once()
    state = row(conn, report_id)
    assert (state["state"], state["last_error_code"]) == ("queued", "checker_error")
    assert state["deidentified_text"] is None


def test_bulk_answer_of_the_wrong_length_is_refused(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    _extract, ids = add_extract(conn, STUDIES[:2])

    class Short(FakeCogstack):
        def deidentify_bulk(self, texts):
            return texts[:1]

    make_worker(db_url, Short()).run_once()
    assert {row(conn, i)["last_error_code"] for i in ids} == {"cogstack_bad_response"}


def test_emap_down_sends_reports_back(db_url, conn, tmp_path: Path):
    _extract, (report_id,) = add_extract(conn, STUDIES[:1])
    worker = ReportWorker(
        db_url,
        FakeCogstack(),
        ReportWorkerSettings(worker_id="ehr:test", backoff_base_seconds=0.0),
        emap_db_url="postgresql://nobody@127.0.0.1:1/none",
        checker=fake_check,
        identifiers_factory=Identifiers,
    )
    worker.run_once()
    state = row(conn, report_id)
    assert (state["state"], state["last_error_code"]) == ("queued", "emap_unavailable")


def test_expired_lease_in_deidentifying_is_reclaimed(db_url, conn, tmp_path: Path):
    """A worker that died while Cogstack was working leaves the report to be taken again."""
    load_emap(db_url, tmp_path)
    _extract, (report_id,) = add_extract(conn, STUDIES[:1])
    [item] = work_queue.claim(conn, "report", "ehr:dead", 1, 60)
    assert work_queue.complete(conn, "report", item.id, "deidentifying", "fetching")
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE report SET claimed_until = now() - interval '1 s' WHERE id = %s", (item.id,)
        )
    make_worker(db_url, FakeCogstack()).run_once()
    assert row(conn, report_id)["state"] == "checked"


def test_logs_hold_no_text_or_identifiers(db_url, conn, tmp_path: Path, caplog):
    load_emap(db_url, tmp_path)
    add_extract(conn, STUDIES)
    caplog.set_level(logging.DEBUG)
    make_worker(db_url, FakeCogstack(error="cogstack_http_503")).run_once()
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE report SET next_attempt_at = now()")
    make_worker(db_url, FakeCogstack()).run_once()
    for forbidden in ("MRN000", "ACC000", "Quintrell", "Oakhurst", "chest radiograph"):
        assert forbidden not in caplog.text


def test_run_loop_stops_when_asked(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    _extract, ids = add_extract(conn, STUDIES)
    worker = make_worker(db_url, FakeCogstack(), poll_seconds=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        for _ in range(100):
            if all(row(conn, i)["state"] != "queued" for i in ids):
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert sorted(row(conn, i)["state"] for i in ids) == ["checked", "flagged", "missing"]


def test_error_codes_are_valid_work_queue_codes():
    assert error_code("cogstack", "cogstack_http_503") == "cogstack_http_503"
    assert (
        error_code("cogstack", "HTTP 503: Service Unavailable")
        == "cogstack_http_503_service_unavailable"
    )
    assert error_code("cogstack", "") == "cogstack_error"
    assert len(error_code("cogstack", "x" * 200)) == 64


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("PIXL_REPORT_LEASE_SECONDS", "7.5")
    monkeypatch.setenv("PIXL_REPORT_MAX_ATTEMPTS", "3")
    settings = ReportWorkerSettings.from_env("ehr:x")
    assert (settings.lease_seconds, settings.max_attempts, settings.batch_size) == (7.5, 3, 8)


def test_accession_number_in_the_text_is_flagged(db_url, conn, tmp_path: Path):
    """The work item's accession number is passed to the checker, which flags it."""
    report = {"mrn": "MRN0001", "accession_number": "ACC0001", "narrative": "See ACC0001."}
    load_emap(db_url, tmp_path, reports=[report])
    _extract, (report_id,) = add_extract(conn, STUDIES[:1])
    make_worker(db_url, FakeCogstack()).run_once()
    state = row(conn, report_id)
    assert state["state"] == "flagged"
    assert state["check_findings"] == [{"kind": "accession_number", "start": 4, "end": 11}]


def test_with_the_real_checker(db_url, conn, tmp_path: Path):
    """The default checker (pixl_core.text.checker) through the worker, on EMAP's identifiers."""
    load_emap(db_url, tmp_path)
    _extract, (clean, leaky) = add_extract(conn, STUDIES[:2])
    worker = ReportWorker(
        db_url,
        FakeCogstack(remove=()),  # misses "Mr Oakhurst"
        ReportWorkerSettings(worker_id="ehr:test", backoff_base_seconds=0.0),
        emap_db_url=db_url,
    )
    worker.run_once()
    assert row(conn, clean)["state"] == "checked"
    flagged = row(conn, leaky)
    assert flagged["state"] == "flagged"
    kinds = {f["kind"] for f in flagged["check_findings"]}
    assert kinds == {"name"}
    [finding] = flagged["check_findings"]
    assert "Oakhurst" in flagged["deidentified_text"][finding["start"] : finding["end"]]


def test_a_long_cogstack_outage_leaves_reports_queued(db_url, conn, tmp_path: Path):
    """While Cogstack is down the loop only probes it: no claim, so no attempt is used up."""
    load_emap(db_url, tmp_path)
    _extract, (report_id,) = add_extract(conn, STUDIES[:1])
    cogstack = FakeCogstack(error="cogstack_unreachable")
    worker = make_worker(
        db_url, cogstack, max_attempts=2, backoff_base_seconds=0.01, max_backoff_seconds=0.02
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while worker.snapshot()["cogstack_probes_failed"] < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        state = row(conn, report_id)
        assert (state["state"], state["attempts"]) == ("queued", 1)
        assert state["last_error_code"] == "cogstack_unreachable"

        cogstack.error = None  # Cogstack is back
        while row(conn, report_id)["state"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(10)
    assert row(conn, report_id)["state"] == "checked"
    assert row(conn, report_id)["attempts"] == 2
