"""orthanc-anon's exporter to a DICOMweb destination, with a real Postgres and the real STOW-RS
client talking to a fake server (a session that parses each multipart body as a server would).

The fake server counts every instance it is sent, so "exactly once" is judged on the receiving
side: a study whose export died after a partial batch, or after the server stored a batch PIXL
never recorded, is finished without sending any instance twice.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread

from pixl_core.db import destination_records, work_queue
from pixl_core.hashing import ProjectHasher
from pixl_core.transport.dicomweb import DicomwebClient, DicomwebSettings
from pixl_imaging.export import AnonExporter, ExportSettings
from pixl_imaging.fetch_worker import RawWorker, RawWorkerSettings
from pixl_imaging.ingest import AnonIngest
from stack.synthetic.cohort import Cohort, SyntheticStudy
from tests.integration.imaging_fakes import SECRET, FakeDsh, FakeOrthanc, add_study, study_row

PROJECT = "chest-xray-research"  # its committed file sends images by DICOMweb
HASHER = ProjectHasher.for_project(PROJECT, SECRET)


class FakeResponse:
    def __init__(self, status: int, body: Any = None) -> None:
        self.status_code = status
        self._body = body
        self.content = b"{}" if body is not None else b""

    def json(self) -> Any:
        return self._body


class FakeDicomwebServer:
    """Stores instances by SOP Instance UID, counts every one it is sent, answers QIDO-RS.
    ``fail_after`` STOW requests it stops answering (the connection fails)."""

    def __init__(self) -> None:
        self.held: dict[str, dict[str, str]] = {}  # study → SOP → series
        self.received: Counter[str] = Counter()
        self.stow_requests = 0
        self.fail_after: int | None = None
        self.down = False

    def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
        if self.down:
            raise requests.exceptions.ConnectionError("connection refused")
        path = url.split("/dicom-web", 1)[1]
        if method == "POST" and path == "/studies":
            if self.fail_after is not None and self.stow_requests >= self.fail_after:
                raise requests.exceptions.ConnectionError("connection reset")
            self.stow_requests += 1
            return self._stow(kwargs["data"], kwargs["headers"]["Content-Type"])
        if path == "/studies":
            return FakeResponse(200, [])
        study = path.split("/")[2]
        found = self.held.get(study, {})
        items = [
            {"00080018": {"Value": [sop]}, "0020000E": {"Value": [series]}}
            for sop, series in found.items()
        ]
        return FakeResponse(200, items) if items else FakeResponse(204)

    def _stow(self, body: bytes, content_type: str) -> FakeResponse:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        stored = []
        for part in message.iter_parts():
            ds = dcmread(io.BytesIO(part.get_payload(decode=True)))
            sop = str(ds.SOPInstanceUID)
            self.received[sop] += 1
            self.held.setdefault(str(ds.StudyInstanceUID), {})[sop] = str(ds.SeriesInstanceUID)
            stored.append({"00081155": {"Value": [sop]}})
        return FakeResponse(200, {"00081199": {"Value": stored}})

    def client(self, project: str) -> DicomwebClient:
        session = requests.Session()
        session.request = self.request  # type: ignore[method-assign]
        settings = DicomwebSettings(
            url="https://dw.example/dicom-web", user="pixl", password="pw", batch_size=1,
            retries=0,
        )  # fmt: skip
        return DicomwebClient(settings, session=session, sleep=lambda _: None)


@pytest.fixture
def server() -> FakeDicomwebServer:
    return FakeDicomwebServer()


@pytest.fixture
def exporter(db_url: str, tmp_path: Path, server: FakeDicomwebServer):  # type: ignore[no-untyped-def]
    anon = FakeOrthanc("anon", on_received=AnonIngest(db_url, SECRET).on_received)
    settings = ExportSettings(
        worker_id="anon:test", poll_seconds=0.05, work_dir=tmp_path, lease_seconds=60
    )
    made = AnonExporter(db_url, anon, SECRET, FakeDsh().client, settings, dicomweb=server.client)
    return made


def hand_over(db_url: str, conn, exporter: AnonExporter, study: SyntheticStudy) -> int:  # type: ignore[no-untyped-def]
    vna = FakeOrthanc("vna")
    vna.load(study.files)
    raw = FakeOrthanc("raw", vna=vna)
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)
    fetcher = RawWorker(db_url, raw, exporter.anon, SECRET, RawWorkerSettings(worker_id="raw:t"))
    (item,) = work_queue.claim(conn, "study", "raw:t", 1, 60)
    fetcher.process(item)
    assert study_row(conn, study_id)["state"] == "anonymising"
    return study_id


def multi_instance_study(cohort: Cohort) -> SyntheticStudy:
    return next(
        s
        for s in cohort.studies
        if s.in_vna and s.expected_outcome == "exported" and s.expected_instances >= 2
    )


def export_next(exporter: AnonExporter) -> str:
    item = exporter.claim()
    assert item is not None, "nothing to export"
    return exporter.export(item)


def make_due(conn, study_id: int) -> None:  # type: ignore[no-untyped-def]
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE study SET claimed_until = now() - interval '1 second' WHERE id = %s",
            (study_id,),
        )


def test_study_goes_by_stow_rs_once_per_instance(db_url, conn, cohort, exporter, server):
    study = multi_instance_study(cohort)
    study_id = hand_over(db_url, conn, exporter, study)

    assert export_next(exporter) == "exported"

    pseudo = HASHER.uid(study.study_uid)
    assert set(server.held) == {pseudo}
    assert len(server.held[pseudo]) == study.expected_instances
    assert set(server.received.values()) == {1}
    assert server.stow_requests == study.expected_instances  # batch_size 1
    row = study_row(conn, study_id)
    assert (row["state"], row["instance_count"], row["sha256"]) == (
        "exported",
        study.expected_instances,
        None,
    )
    assert exporter.anon.instances == {}  # removed locally


def test_crash_after_a_partial_batch_sends_only_the_rest(db_url, conn, cohort, exporter, server):
    study = multi_instance_study(cohort)
    study_id = hand_over(db_url, conn, exporter, study)
    server.fail_after = 1  # the first batch is stored, then the connection fails

    assert export_next(exporter) == "retry"
    row = study_row(conn, study_id)
    assert (row["state"], row["last_error_code"]) == ("anonymising", "dicomweb_connect")
    assert len(destination_records.stored_instances(conn, study_id)) == 1
    errors = destination_records.errors(conn, PROJECT)
    assert (
        errors[PROJECT]["message"] == "DICOMweb dw.example:443: connect failed: connection failed"
    )
    assert PROJECT in exporter.destinations_down()

    server.fail_after = None
    exporter._down.clear()
    make_due(conn, study_id)
    assert export_next(exporter) == "exported"
    assert sum(server.received.values()) == study.expected_instances
    assert set(server.received.values()) == {1}
    assert destination_records.errors(conn, PROJECT) == {}


def test_batch_stored_but_never_recorded_is_found_by_qido_not_sent_again(
    db_url, conn, cohort, exporter, server
):
    """The server stored a batch, then PIXL died before recording it: the retry asks the server
    (QIDO-RS) and sends only what it lacks."""
    study = multi_instance_study(cohort)
    study_id = hand_over(db_url, conn, exporter, study)
    server.fail_after = 1
    assert export_next(exporter) == "retry"
    with conn, conn.cursor() as cur:  # as if the record after the first batch never happened
        cur.execute("DELETE FROM dicomweb_instance WHERE study_id = %s", (study_id,))

    server.fail_after = None
    exporter._down.clear()
    make_due(conn, study_id)
    assert export_next(exporter) == "exported"
    assert set(server.received.values()) == {1}
    assert len(server.received) == study.expected_instances
    assert exporter.counters["dicomweb_already_there"] == 1


def test_unreachable_destination_is_probed_by_qido_and_resumed(
    db_url, conn, cohort, exporter, server
):
    study = multi_instance_study(cohort)
    study_id = hand_over(db_url, conn, exporter, study)
    exporter.settings.probe_seconds = 0.0
    server.down = True
    assert export_next(exporter) == "retry"
    make_due(conn, study_id)
    assert exporter.claim() is None  # paused: the probe failed again
    server.down = False
    item = exporter.claim()  # the probe answers: resumed
    assert item is not None and exporter.export(item) == "exported"
    assert set(server.received.values()) == {1}
