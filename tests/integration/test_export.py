"""orthanc-anon's exporter against stand-ins for Orthanc and the DSH and a real Postgres.

Studies reach the exporter the way they do in production: the fetch worker hands them from a
stand-in orthanc-raw to a stand-in orthanc-anon whose received-instance callback is the real
``AnonIngest``. Then the exporter zips, uploads, records and deletes, exactly once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import time
import zipfile
from pathlib import Path

import pytest

from pixl_core.db import work_queue
from pixl_core.db.connection import connect
from pixl_core.dicom.handoff import Handoff, mark
from pixl_core.hashing import ProjectHasher
from pixl_imaging.export import AnonExporter, ExportSettings
from pixl_imaging.fetch_worker import RawWorker, RawWorkerSettings
from pixl_imaging.ingest import AnonIngest
from stack.synthetic.cohort import NO_REPORT, NORMAL, SCOUT_SERIES, WRONG_MODALITY, Cohort
from tests.integration.imaging_fakes import (
    SECRET,
    FakeDsh,
    FakeOrthanc,
    add_study,
    orthanc_id,
    seconds_until,
    study_row,
)

PROJECT = "chest-xray"
HASHER = ProjectHasher.for_project(PROJECT, SECRET)


class Pipeline:
    """VNA → orthanc-raw → orthanc-anon (with the real ingest) → DSH, all but Postgres faked."""

    def __init__(self, db_url: str, cohort: Cohort, work_dir: Path) -> None:
        self.db_url = db_url
        self.cohort = cohort
        self.work_dir = work_dir
        self.vna = FakeOrthanc("vna")
        for study in cohort.studies:
            if study.in_vna:
                self.vna.load(study.files)
        self.raw = FakeOrthanc("raw", vna=self.vna)
        self.anon = FakeOrthanc("anon", on_received=AnonIngest(db_url, SECRET).on_received)
        self.dsh = FakeDsh()
        self.fetcher = RawWorker(
            db_url, self.raw, self.anon, SECRET, RawWorkerSettings(worker_id="raw:test")
        )
        self.exporter = self.exporter_named("anon:test")

    def exporter_named(self, worker_id: str) -> AnonExporter:
        settings = ExportSettings(
            worker_id=worker_id, poll_seconds=0.05, work_dir=self.work_dir, lease_seconds=60
        )
        return AnonExporter(self.db_url, self.anon, SECRET, self.dsh.client, settings)

    def hand_over(self, conn, role: str) -> int:  # type: ignore[no-untyped-def]
        """Queue the study of ``role`` and let the fetch worker hand it to orthanc-anon."""
        study = self.cohort.by_role(role)
        study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)
        self.fetch(conn)
        assert study_row(conn, study_id)["state"] == "anonymising"
        return study_id

    def fetch(self, conn) -> None:  # type: ignore[no-untyped-def]
        (item,) = work_queue.claim(conn, "study", "raw:test", 1, 60)
        self.fetcher.process(item)

    def export_next(self) -> str:
        item = self.exporter.claim()
        assert item is not None, "nothing to export"
        return self.exporter.export(item)


@pytest.fixture
def pipeline(db_url: str, cohort: Cohort, tmp_path: Path) -> Pipeline:
    return Pipeline(db_url, cohort, tmp_path)


def remote_path(role_study_uid: str) -> str:
    return f"{PROJECT}/dicom/{HASHER.uid(role_study_uid)}.zip"


def make_due(conn, study_id: int) -> None:  # type: ignore[no-untyped-def]
    """Let a deferred study's backoff run out now."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE study SET claimed_until = now() - interval '1 second' WHERE id = %s",
            (study_id,),
        )


def test_export_uploads_once_and_deletes_local_copy(pipeline, conn, cohort):
    study = cohort.by_role(NORMAL)
    study_id = pipeline.hand_over(conn, NORMAL)

    assert pipeline.export_next() == "exported"

    remote = remote_path(study.study_uid)
    manifest = f"{PROJECT}/dicom/manifest.json"
    assert sorted(pipeline.dsh.files) == sorted([remote, manifest])
    assert pipeline.dsh.uploads == [remote]
    data = pipeline.dsh.files[remote]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = sorted(archive.namelist())
    assert names == sorted(
        f"{HASHER.uid(series.series_uid)}/{HASHER.uid(sop)}.dcm"
        for series in study.series
        for sop in series.sop_instance_uids
    )
    row = study_row(conn, study_id)
    assert (row["state"], row["instance_count"], row["sha256"], row["claimed_by"]) == (
        "exported",
        len(study.files),
        hashlib.sha256(data).hexdigest(),
        None,
    )
    assert row["pseudo_study_uid"] == HASHER.uid(study.study_uid)
    assert pipeline.anon.instances == {}  # the local copy is gone
    assert pipeline.exporter.claim() is None  # nothing left to export
    counters = pipeline.exporter.counters.snapshot()
    assert (counters["uploaded"], counters["exported"]) == (1, 1)


def test_filtered_series_is_left_out_and_the_rest_exported(pipeline, conn, cohort):
    study = cohort.by_role(SCOUT_SERIES)
    study_id = pipeline.hand_over(conn, SCOUT_SERIES)

    assert pipeline.export_next() == "exported"

    assert study_row(conn, study_id)["instance_count"] == study.expected_instances
    with zipfile.ZipFile(io.BytesIO(pipeline.dsh.files[remote_path(study.study_uid)])) as zipped:
        folders = {name.split("/")[0] for name in zipped.namelist()}
    assert folders == {HASHER.uid(s.series_uid) for s in study.series if not s.filtered}


def test_retry_after_a_crash_between_upload_and_record_does_not_upload_again(
    pipeline, conn, cohort
):
    study_id = pipeline.hand_over(conn, NORMAL)
    pipeline.dsh.crash_after_upload = True  # the file arrives, then the connection is lost
    pipeline.exporter.settings.backoff_base_seconds = 0.01

    assert pipeline.export_next() == "retry"
    assert study_row(conn, study_id)["state"] == "anonymising"
    time.sleep(0.05)
    assert pipeline.export_next() == "exported"

    assert len(pipeline.dsh.uploads) == 1
    assert pipeline.exporter.counters["already_uploaded"] == 1


def test_one_connection_serves_a_threads_studies_and_a_failure_closes_it(pipeline, conn, cohort):
    """A TLS handshake and a login per study were most of the DSH's work: an exporter thread
    keeps its connection for the next study, and starts a fresh one after a failure."""
    pipeline.exporter.settings.backoff_base_seconds = 0.01
    pipeline.hand_over(conn, NORMAL)
    pipeline.hand_over(conn, SCOUT_SERIES)
    assert [pipeline.export_next(), pipeline.export_next()] == ["exported", "exported"]
    first, second = pipeline.dsh.upload_clients
    assert first == second and first not in pipeline.dsh.closed_clients

    pipeline.dsh.crash_after_upload = True
    pipeline.hand_over(conn, NO_REPORT)
    assert pipeline.export_next() == "retry"
    assert pipeline.dsh.upload_clients[-1] == first  # still the same connection
    assert first in pipeline.dsh.closed_clients  # which failed, and is closed, not kept
    time.sleep(0.05)
    assert pipeline.export_next() == "exported"  # already there: found by a new connection
    (kept,) = pipeline.exporter._kept.clients.values()
    assert id(kept[0]) != first
    pipeline.exporter._close_idle_clients(older_than=0)
    assert id(kept[0]) in pipeline.dsh.closed_clients
    assert pipeline.exporter._kept.clients == {}


def test_a_crash_between_upload_and_rename_is_finished_without_sending_again(
    pipeline, conn, cohort
):
    """orthanc-anon died after the zip reached the DSH as its temporary file but before the
    rename: the retry zips the study again (the same bytes) and renames the temporary file."""
    study = cohort.by_role(NORMAL)
    study_id = pipeline.hand_over(conn, NORMAL)
    first = pipeline.exporter.claim()
    assert first is not None
    archive = io.BytesIO()
    pipeline.exporter._zip(pipeline.exporter._instances(_anon_study_id(pipeline)), archive)
    folder, _, name = remote_path(study.study_uid).rpartition("/")
    pipeline.dsh.files[f"{folder}/.{name}.part"] = archive.getvalue()
    make_due(conn, study_id)

    assert pipeline.export_next() == "exported"

    assert pipeline.dsh.uploads == []  # nothing was sent a second time
    assert pipeline.dsh.files[remote_path(study.study_uid)] == archive.getvalue()
    assert pipeline.exporter.counters["already_uploaded"] == 1


def _anon_study_id(pipeline) -> str:  # type: ignore[no-untyped-def]
    (study,) = {i.study_uid for i in pipeline.anon.instances.values()}
    return orthanc_id("study", study)


def test_dsh_down_backs_off_and_keeps_state(pipeline, conn, cohort):
    study_id = pipeline.hand_over(conn, NORMAL)
    pipeline.dsh.down = True

    for tries, backoff in ((1, 5), (2, 10), (3, 20)):  # ExportSettings: 5 s, doubling
        assert pipeline.export_next() == "retry"
        row = study_row(conn, study_id)
        assert (row["state"], row["export_attempts"], row["last_error_code"]) == (
            "anonymising",
            tries,
            "ftps_login",
        )
        assert row["attempts"] == 1  # the fetch worker's count is untouched
        assert seconds_until(conn, study_id, "claimed_until") == pytest.approx(backoff, abs=1)
        assert pipeline.exporter.claim() is None  # not due yet, for this exporter
        assert pipeline.exporter_named("anon:other").claim() is None  # nor for another
        make_due(conn, study_id)

    pipeline.dsh.down = False
    assert pipeline.export_next() == "exported"
    assert study_row(conn, study_id)["last_error_code"] is None
    assert pipeline.exporter.counters["retries"] == 3


def test_an_unreachable_destination_pauses_its_project_and_resumes_at_once(pipeline, conn, cohort):
    """A destination that refuses connections is paused for its project (no claims, one probe
    per period); when it answers again, a backoff that grew during the outage is cut short, so
    the study goes out within a probe period of its return, not minutes later."""
    study_id = pipeline.hand_over(conn, NORMAL)
    pipeline.exporter.settings.probe_seconds = 0.2
    pipeline.dsh.unreachable = True
    for _ in range(6):  # a long outage: the backoff has grown to 5 * 2**5 s
        assert pipeline.export_next() == "retry"
        make_due(conn, study_id)
        pipeline.exporter._down.clear()  # as if each try came after a probe that failed
    assert pipeline.export_next() == "retry"
    assert seconds_until(conn, study_id, "claimed_until") > 150
    assert pipeline.exporter.counters["destinations_down"] >= 1

    make_due(conn, study_id)
    probes = len(pipeline.dsh.clients_for)
    assert pipeline.exporter.claim() is None  # paused: a due study is not claimed
    assert len(pipeline.dsh.clients_for) == probes  # and the probe is not due yet
    with conn, conn.cursor() as cur:  # the backoff again, as the outage goes on
        cur.execute(
            "UPDATE study SET claimed_until = now() + interval '300 s' WHERE id = %s", (study_id,)
        )

    pipeline.dsh.unreachable = False
    time.sleep(0.25)
    item = pipeline.exporter.claim()  # the probe succeeds and ends the deferral
    assert item is not None and item.id == study_id
    assert pipeline.exporter.export(item) == "exported"
    assert pipeline.exporter._down == {}


def test_ending_deferrals_never_touches_a_study_being_exported(pipeline, conn, cohort):
    """A study an exporter holds has at most a lease ahead of it: it is not made due, so no
    second exporter takes it."""
    study_id = pipeline.hand_over(conn, NORMAL)
    held = pipeline.exporter.claim()
    assert held is not None
    assert work_queue.end_deferrals(conn, "study", "anonymising", PROJECT, 60) == 0
    assert pipeline.exporter_named("anon:other").claim() is None
    assert study_row(conn, study_id)["claimed_by"] == "anon:test"


def test_orthanc_anon_down_backs_off_with_its_code(pipeline, conn, cohort):
    study_id = pipeline.hand_over(conn, NORMAL)
    pipeline.anon.down = True

    assert pipeline.export_next() == "retry"

    row = study_row(conn, study_id)
    assert (row["state"], row["last_error_code"]) == ("anonymising", "unreachable")
    assert pipeline.dsh.files == {}


def test_handed_over_study_is_claimed_only_by_an_anon_exporter(pipeline, conn, cohort):
    pipeline.hand_over(conn, NORMAL)
    with pytest.raises(ValueError, match="anon:"):
        pipeline.exporter_named("raw:impostor").claim()
    assert work_queue.claim(conn, "study", "raw:test", 5, 60) == []  # nor the fetch worker

    first = pipeline.exporter.claim()
    assert first is not None
    assert pipeline.exporter_named("anon:other").claim() is None  # held by the first


def test_missing_instances_send_the_study_back_to_orthanc_raw(pipeline, conn, cohort):
    study = cohort.by_role(NORMAL)
    study_id = pipeline.hand_over(conn, NORMAL)
    lost = pipeline.anon.of_study(HASHER.uid(study.study_uid))[0]
    del pipeline.anon.instances[lost.id]  # orthanc-anon lost one (restarted mid-study)

    assert pipeline.export_next() == "queued"

    row = study_row(conn, study_id)
    assert (row["state"], row["last_error_code"], row["claimed_by"]) == (
        "queued",
        "incomplete_in_anon",
        None,
    )
    assert pipeline.dsh.files == {}
    pipeline.fetch(conn)  # orthanc-raw sends it again, from its cache
    assert pipeline.raw.moves == ["study"]
    assert pipeline.export_next() == "exported"
    assert study_row(conn, study_id)["instance_count"] == len(study.files)


def test_wholly_refused_study_ends_refused_with_its_reason(pipeline, conn, cohort):
    study = cohort.by_role(WRONG_MODALITY)  # orthanc-raw would refuse it; here it got through
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)
    work_queue.claim(conn, "study", "raw:test", 1, 60)
    for path in study.files:
        pipeline.anon.post_bytes(
            "/instances", mark(path.read_bytes(), Handoff(PROJECT, study_id), SECRET)
        )
    assert work_queue.complete(
        conn, "study", study_id, "anonymising", "fetching",
        study_uid=study.study_uid, instances_sent=len(study.files),
    )  # fmt: skip

    assert pipeline.export_next() == "refused"

    row = study_row(conn, study_id)
    assert (row["state"], row["last_error_code"]) == ("refused", "modality_not_allowed")
    assert pipeline.dsh.files == {}


@pytest.mark.parametrize(
    ("project", "code"),
    [("broken-allowlist", "invalid_allowlist"), ("nowhere", "unknown_project")],
)
def test_configuration_error_fails_the_export_as_what_it_is(
    pipeline, conn, cohort, broken_config, project, code
):
    study = cohort.by_role(NORMAL)
    study_id = add_study(conn, project, study.mrn, study.accession_number)
    work_queue.claim(conn, "study", "raw:test", 1, 60)
    work_queue.complete(
        conn, "study", study_id, "anonymising", "fetching",
        study_uid=study.study_uid, instances_sent=1,
    )  # fmt: skip

    assert pipeline.export_next() == "failed"

    row = study_row(conn, study_id)
    assert (row["state"], row["last_error_code"]) == ("failed", code)


def test_study_taken_over_while_zipping_is_not_uploaded(pipeline, conn, db_url, cohort):
    study_id = pipeline.hand_over(conn, NORMAL)
    other = connect(db_url)

    def taken_over(_instance_id: str) -> None:  # the lease ran out; another exporter claimed it
        with other, other.cursor() as cur:
            cur.execute("UPDATE study SET claimed_by = 'anon:other' WHERE id = %s", (study_id,))

    pipeline.anon.on_read = taken_over
    try:
        assert pipeline.export_next() == "lost"
    finally:
        other.close()
    assert pipeline.dsh.uploads == []
    row = study_row(conn, study_id)
    assert (row["state"], row["claimed_by"]) == ("anonymising", "anon:other")


def test_loop_exports_every_handed_over_study(pipeline, conn, cohort):
    ids = [pipeline.hand_over(conn, role) for role in (NORMAL, NO_REPORT)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=pipeline.exporter.run, args=(stop,), daemon=True) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while {study_row(conn, i)["state"] for i in ids} != {"exported"}:
            assert time.monotonic() < deadline, "the exporter never finished"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert len(pipeline.dsh.uploads) == 2
    assert pipeline.exporter.counters["exported"] == 2


def test_a_hand_off_wakes_the_exporter_before_its_poll(pipeline, conn, cohort):
    """The exporter sleeps its poll when there is nothing to do; a hand-off (announced by
    Postgres) ends the sleep, so the study is exported long before a 30 s poll would."""
    exporter = AnonExporter(
        pipeline.db_url,
        pipeline.anon,
        SECRET,
        pipeline.dsh.client,
        ExportSettings(
            worker_id="anon:woken", poll_seconds=30.0, work_dir=pipeline.work_dir, lease_seconds=60
        ),
    )
    stop = threading.Event()
    thread = threading.Thread(target=exporter.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert exporter.wakeup.listening.wait(10)
        time.sleep(0.3)  # it found nothing and sleeps
        study_id = pipeline.hand_over(conn, NORMAL)
        handed = time.monotonic()
        while study_row(conn, study_id)["state"] != "exported":
            assert time.monotonic() - handed < 10, "not woken by the hand-off"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=40)
    assert not thread.is_alive()
    assert len(pipeline.dsh.uploads) == 1


def test_a_zip_larger_than_memory_allows_goes_through_a_file_and_arrives_whole(
    pipeline, conn, cohort
):
    """Above ``zip_in_memory_bytes`` the zip spills to a file in ``work_dir``: the upload is
    the same bytes with the same digest, and nothing is left in ``work_dir``."""
    study_id = pipeline.hand_over(conn, NORMAL)
    exporter = pipeline.exporter
    exporter.settings = dataclasses.replace(exporter.settings, zip_in_memory_bytes=1024)
    assert pipeline.export_next() == "exported"
    (remote,) = pipeline.dsh.uploads
    data = pipeline.dsh.files[remote]
    row = study_row(conn, study_id)
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["zip_bytes"] == len(data) > 1024
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None
    assert list(pipeline.work_dir.iterdir()) == []
