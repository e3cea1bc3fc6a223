"""orthanc-raw's hand-off against stand-in Orthancs and a real Postgres: only instances the VNA
listed and that pass screening reach orthanc-anon; a malformed one is refused with its reason,
and a study during which orthanc-anon died counts a crash."""

from __future__ import annotations

import requests
import urllib3

from pixl_core.db import work_queue
from pixl_core.dicom.handoff import read_bytes
from pixl_core.dicom.screening import ScreeningLimits
from pixl_core.transport.orthanc_rest import OrthancError
from pixl_imaging.export import AnonExporter, ExportSettings
from pixl_imaging.fetch_worker import RawWorker, RawWorkerSettings
from pixl_imaging.ingest import AnonIngest
from stack.synthetic.cohort import NORMAL, Cohort, SyntheticStudy
from stack.synthetic.dicom_builder import to_bytes
from tests.fixtures import malformed_dicom
from tests.integration.imaging_fakes import (
    SECRET,
    FakeDsh,
    FakeOrthanc,
    StoredInstance,
    add_study,
    orthanc_id,
    study_row,
)

PROJECT = "chest-xray"


def refusals(conn, study_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT reason FROM instance_refusal WHERE study_id = %s ORDER BY reason", (study_id,)
        )
        return [row[0] for row in cur.fetchall()]


def crafted(study: SyntheticStudy, sop_uid: str, data: bytes, **extra: str) -> StoredInstance:
    """An instance of ``study`` as the VNA holds it, whatever its bytes (no parser needed)."""
    return StoredInstance(
        id=orthanc_id("instance", sop_uid),
        data=data,
        study_uid=study.study_uid,
        series_uid=study.series_uids[0],
        sop_uid=sop_uid,
        modality="CR",
        accession_number=study.accession_number,
        patient_id=study.mrn,
        **extra,
    )


def identifiers(study: SyntheticStudy, sop_uid: str) -> dict[str, str]:
    return {
        "sop_uid": sop_uid,
        "study_uid": study.study_uid,
        "series_uid": study.series_uids[0],
        "patient_id": study.mrn,
        "accession": study.accession_number,
    }


class Imaging:
    def __init__(self, db_url: str, study: SyntheticStudy, **settings: object) -> None:
        self.db_url = db_url
        self.vna = FakeOrthanc("vna")
        self.vna.load(study.files)
        self.raw = FakeOrthanc("raw", vna=self.vna)
        self.anon = FakeOrthanc("anon", on_received=AnonIngest(db_url, SECRET).on_received)
        self.worker = RawWorker(
            db_url,
            self.raw,
            self.anon,
            SECRET,
            RawWorkerSettings(worker_id="raw:test", **settings),  # type: ignore[arg-type]
        )

    def fetch(self, conn) -> None:  # type: ignore[no-untyped-def]
        (item,) = work_queue.claim(conn, "study", "raw:test", 1, 60, max_crashes=2)
        self.worker.process(item)

    def export(self, tmp_path) -> str:  # type: ignore[no-untyped-def]
        exporter = AnonExporter(
            self.db_url,
            self.anon,
            SECRET,
            FakeDsh().client,
            ExportSettings(worker_id="anon:test", work_dir=tmp_path),
        )
        item = exporter.claim()
        assert item is not None
        return exporter.export(item)


def test_malformed_instances_are_refused_with_their_reason_and_never_sent(
    db_url, conn, cohort: Cohort, tmp_path
):
    study = cohort.by_role(NORMAL)
    imaging = Imaging(db_url, study)
    nested = malformed_dicom.nested_sequences(1000, **identifiers(study, "2.25.71"))
    bomb = malformed_dicom.deflate_bomb(600, **identifiers(study, "2.25.72"))
    imaging.vna.put(crafted(study, "2.25.71", nested))
    imaging.vna.put(crafted(study, "2.25.72", bomb))
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)

    imaging.fetch(conn)

    row = study_row(conn, study_id)
    assert (row["state"], row["instances_sent"]) == ("anonymising", len(study.files) + 2)
    assert refusals(conn, study_id) == [
        "malformed_inflates_too_large",
        "malformed_nesting_too_deep",
    ]
    assert len(imaging.anon.posted) == len(study.files)  # the two were never sent
    assert imaging.worker.counters["screened_out"] == 2
    assert imaging.export(tmp_path) == "exported"  # the rest of the study still leaves
    assert study_row(conn, study_id)["instance_count"] == len(study.files)


def test_study_of_malformed_instances_only_ends_refused_with_the_reason(
    db_url, conn, cohort: Cohort, tmp_path
):
    study = cohort.by_role(NORMAL)
    imaging = Imaging(db_url, study)
    imaging.vna.instances.clear()
    broken = malformed_dicom.length_beyond_file(**identifiers(study, "2.25.73"))
    imaging.vna.put(crafted(study, "2.25.73", broken))
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)

    imaging.fetch(conn)
    assert imaging.export(tmp_path) == "refused"

    row = study_row(conn, study_id)
    assert (row["state"], row["last_error_code"]) == ("refused", "malformed_length_beyond_file")
    assert imaging.anon.posted == []


def test_an_instance_too_large_is_refused_without_being_read(db_url, conn, cohort: Cohort):
    study = cohort.by_role(NORMAL)
    imaging = Imaging(db_url, study, screening=ScreeningLimits(max_bytes=1000))
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)

    imaging.fetch(conn)

    assert set(refusals(conn, study_id)) == {"malformed_too_large"}
    assert not [path for _method, path in imaging.raw.calls if path.endswith("/file")]
    assert imaging.anon.posted == []


def test_a_cached_instance_the_vna_did_not_list_is_not_handed_on(db_url, conn, cohort: Cohort):
    """Someone stored an extra instance into orthanc-raw's copy of the study (an archive
    impostor's C-STORE): it is not the archive's, so it never reaches orthanc-anon."""
    study = cohort.by_role(NORMAL)
    imaging = Imaging(db_url, study)
    imaging.raw.load(study.files)
    imaging.raw.store(to_bytes(malformed_dicom.instance(**identifiers(study, "2.25.74"))))
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)

    imaging.fetch(conn)

    posted_uids = {
        str(read_bytes(data, SECRET)[1].dataset.SOPInstanceUID) for data in imaging.anon.posted
    }
    assert posted_uids == set(study.sop_instance_uids)
    assert study_row(conn, study_id)["instances_sent"] == len(study.files)
    assert imaging.worker.counters["unlisted_skipped"] == 1


def _anon_dies(data: bytes) -> bytes:
    """What the client sees when orthanc-anon crashes while receiving an instance."""
    try:
        raise requests.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted."))
    except requests.ConnectionError:
        raise OrthancError("Orthanc at anon is not reachable", "unreachable") from None


def test_a_study_that_crashes_orthanc_anon_twice_ends_failed_worker_crashed(
    db_url, conn, cohort: Cohort
):
    study = cohort.by_role(NORMAL)
    imaging = Imaging(db_url, study)
    imaging.anon.on_received = _anon_dies
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)

    imaging.fetch(conn)
    row = study_row(conn, study_id)
    assert (row["state"], row["crash_count"], row["last_error_code"]) == (
        "queued",
        1,
        "worker_crashed",
    )
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE study SET next_attempt_at = now() WHERE id = %s", (study_id,))
    imaging.fetch(conn)
    row = study_row(conn, study_id)
    assert (row["state"], row["crash_count"], row["last_error_code"]) == (
        "failed",
        2,
        "worker_crashed",
    )


def test_orthanc_anon_down_is_not_a_crash(db_url, conn, cohort: Cohort):
    """A refused connection (orthanc-anon not running) is an outage: retried, not counted."""
    study = cohort.by_role(NORMAL)
    imaging = Imaging(db_url, study)
    imaging.anon.down = True
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)

    imaging.fetch(conn)

    row = study_row(conn, study_id)
    assert (row["state"], row["crash_count"], row["last_error_code"]) == (
        "queued",
        0,
        "orthanc_unreachable",
    )
