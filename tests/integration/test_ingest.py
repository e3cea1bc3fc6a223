"""orthanc-anon's per-instance step against a real Postgres: only what orthanc-raw signed, for
a study it is handing over now, is de-identified; everything else is discarded, and each
refusal is recorded once, by reason."""

from __future__ import annotations

import io

import pydicom
import pytest

from pixl_core.config.projects import load_project
from pixl_core.db import study_records
from pixl_core.dicom.handoff import HANDOFF_CREATOR, HANDOFF_GROUP, Handoff, mark
from pixl_core.hashing import ProjectHasher, hash_accession_number
from pixl_imaging.ingest import AnonIngest
from stack.synthetic.cohort import (
    NAME_IN_DESCRIPTION,
    NORMAL,
    WRONG_MODALITY,
    Cohort,
    SyntheticStudy,
)
from tests.integration.imaging_fakes import SECRET, add_study, study_row

PROJECT = "chest-xray"


def marked(study: SyntheticStudy, work_item_id: int, project: str = PROJECT) -> bytes:
    return mark(study.files[0].read_bytes(), Handoff(project, work_item_id), SECRET)


def refusals(conn) -> list[tuple[int, str, str]]:  # type: ignore[no-untyped-def]
    with conn, conn.cursor() as cur:
        cur.execute("SELECT study_id, instance_key, reason FROM instance_refusal")
        return cur.fetchall()


def fetching(conn, study_id: int) -> int:  # type: ignore[no-untyped-def]
    """Put the study where orthanc-raw has it while handing it over."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE study SET state = 'fetching', claimed_by = 'raw:test' WHERE id = %s",
            (study_id,),
        )
    return study_id


@pytest.fixture
def ingest(db_url: str) -> AnonIngest:
    return AnonIngest(db_url, SECRET)


def test_instance_from_orthanc_raw_is_deidentified(ingest, conn, cohort: Cohort):
    study = cohort.by_role(NORMAL)
    study_id = fetching(conn, add_study(conn, PROJECT, study.mrn, study.accession_number))

    out = ingest.on_received(marked(study, study_id))

    assert out is not None
    ds = pydicom.dcmread(io.BytesIO(out))
    hasher = ProjectHasher.for_project(PROJECT, SECRET)
    assert ds.AccessionNumber == hash_accession_number(hasher, study.accession_number)
    assert ds.StudyInstanceUID == hasher.uid(study.study_uid)
    assert ds.SOPInstanceUID == hasher.uid(study.series[0].sop_instance_uids[0])
    assert ds.PatientID != study.mrn
    assert ds.private_creators(HANDOFF_GROUP) == []  # the hand-off note never leaves
    text = out.decode("latin-1")
    for identifier in (study.mrn, study.accession_number, study.family_name, study.study_uid):
        assert identifier not in text
    assert HANDOFF_CREATOR not in text
    assert ingest.counters["deidentified"] == 1
    assert refusals(conn) == []


def test_description_with_the_surname_is_emptied_and_counted(ingest, conn, cohort: Cohort):
    """Issue 9 §2 in orthanc-anon's step: the count by kind, never the value."""
    study = cohort.by_role(NAME_IN_DESCRIPTION)
    study_id = fetching(conn, add_study(conn, PROJECT, study.mrn, study.accession_number))
    out = ingest.on_received(marked(study, study_id))
    assert out is not None
    assert pydicom.dcmread(io.BytesIO(out)).StudyDescription == ""
    assert study.family_name.upper().encode() not in out
    assert ingest.counters["descriptions_cleaned"] >= 1
    assert ingest.counters["descriptions_cleaned_name"] == ingest.counters["descriptions_cleaned"]
    assert not any(study.family_name.upper() in name for name in ingest.counters.snapshot())


def test_instance_without_handoff_is_discarded(ingest, conn, cohort: Cohort):
    study = cohort.by_role(NORMAL)
    add_study(conn, PROJECT, study.mrn, study.accession_number)

    assert ingest.on_received(study.files[0].read_bytes()) is None
    assert ingest.on_received(b"not DICOM at all") is None

    assert ingest.counters["discarded_without_handoff"] == 2
    assert refusals(conn) == []  # nothing says which work item it was: nothing to record


def test_instance_signed_with_another_secret_is_discarded(ingest, conn, cohort: Cohort):
    study = cohort.by_role(NORMAL)
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)
    forged = mark(study.files[0].read_bytes(), Handoff(PROJECT, study_id), b"x" * 32)

    assert ingest.on_received(forged) is None
    assert ingest.counters["discarded_without_handoff"] == 1


def test_refused_instance_is_recorded_once_by_reason_without_its_uid(ingest, conn, cohort):
    study = cohort.by_role(WRONG_MODALITY)
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)
    data = marked(study, study_id)

    assert ingest.on_received(data) is None
    assert ingest.on_received(data) is None  # orthanc-raw sent it again

    [(recorded_study, key, reason)] = refusals(conn)
    assert (recorded_study, reason) == (study_id, "modality_not_allowed")
    assert key == ProjectHasher.for_project(PROJECT, SECRET).uid(
        study.series[0].sop_instance_uids[0]
    )
    assert ingest.counters["refused_modality_not_allowed"] == 2


@pytest.mark.parametrize(
    ("project", "code"),
    [
        ("broken-allowlist", "invalid_allowlist"),
        ("broken-project", "invalid_project"),
        ("nowhere", "unknown_project"),
    ],
)
def test_configuration_error_refuses_the_instance_as_what_it_is(
    ingest, conn, cohort, broken_config, project, code
):
    study = cohort.by_role(NORMAL)
    study_id = add_study(conn, project, study.mrn, study.accession_number)

    assert ingest.on_received(marked(study, study_id, project)) is None

    assert [reason for _id, _key, reason in refusals(conn)] == [code]


def test_refused_instance_is_discarded_even_when_the_database_is_down(cohort: Cohort):
    load_project(PROJECT)  # loaded before the outage, as in a running orthanc-anon
    ingest = AnonIngest("postgresql://pixl@127.0.0.1:1/pixl", SECRET)  # nothing listens there

    assert ingest.on_received(marked(cohort.by_role(WRONG_MODALITY), 1)) is None
    assert ingest.counters["refused_modality_not_allowed"] == 1


@pytest.mark.parametrize("state", ["queued", "anonymising", "exported", "failed"])
def test_genuine_handoff_replayed_outside_its_fetch_is_discarded(ingest, conn, cohort, state):
    """A correctly signed instance arriving when orthanc-raw is not handing its study over (a
    replay, a late copy after export) would only become an orphan in orthanc-anon."""
    study = cohort.by_role(NORMAL)
    study_id = add_study(conn, PROJECT, study.mrn, study.accession_number)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE study SET state = %s WHERE id = %s", (state, study_id))

    assert ingest.on_received(marked(study, study_id)) is None

    assert ingest.counters["discarded_not_fetching"] == 1
    assert ingest.counters["deidentified"] == 0
    assert study_row(conn, study_id)["state"] == state


def test_burned_in_text_is_masked_and_counted_by_kind_never_as_text(ingest, conn, cohort):
    """A film with the patient's identifiers burned in: orthanc-anon masks them and records how
    many regions of each kind it found, in Postgres and the metrics, with no text anywhere."""
    from stack.synthetic.burned_in import PHI, build_image

    study = cohort.by_role(NORMAL)
    study_id = fetching(conn, add_study(conn, PROJECT, study.mrn, study.accession_number))
    image = build_image(0, PHI, rows=768, columns=768, seed=11)
    out = ingest.on_received(mark(image.data, Handoff(PROJECT, study_id), SECRET))

    assert out is not None
    assert pydicom.dcmread(io.BytesIO(out)).BurnedInAnnotation == "NO"
    with conn, conn.cursor() as cur:
        cur.execute("SELECT study_id, instance_key, kind, regions, masked FROM instance_pixel_text")
        rows = cur.fetchall()
    kinds = {kind for _, _, kind, _, _ in rows}
    assert kinds and kinds <= set(study_records.PIXEL_TEXT_KINDS)
    assert kinds & {"patient_name", "mrn", "dob", "accession", "nhs_number", "date"}
    assert all(masked for *_, masked in rows)
    assert {r[0] for r in rows} == {study_id}
    stored = repr(rows) + repr(ingest.counters.snapshot())
    for planted in image.planted:
        for word in planted.text.replace(",", " ").split():
            if len(word) >= 4 and planted.is_identifier:
                assert word not in stored
    assert ingest.counters["pixel_text_masked_instances"] == 1
    assert study_records.pixel_text(conn, study_id) == {k: n for _, _, k, n, _ in rows}
    ingest.on_received(mark(image.data, Handoff(PROJECT, study_id), SECRET))  # sent again
    assert study_records.pixel_text(conn, study_id) == {k: n for _, _, k, n, _ in rows}
