"""OMOP ES extracts from rows: the one writer behind the demo cohort and the tests.

``pixl populate`` reads what OMOP ES writes (see ``cli/pixl_cli/extract_reader.py``)::

    EXTRACT_DIR/
      public/PROCEDURE_OCCURRENCE.parquet          OMOP CDM 5.4 columns, sequential ids only
      public/PERSON.parquet
      private/PERSON_LINKS.parquet                 person_id ↔ MRN, NHS number, name, ...
      private/PROCEDURE_OCCURRENCE_LINKS.parquet   procedure_occurrence_id ↔ accession number
      extract_summary.json                         when, which project, which OMOP ES version

The demo's cohort and the tests describe an extract as ``Person`` and ``Procedure`` rows and
``write_extract`` lays them out in those files, so every extract PIXL is tested against has the
same shape. A procedure without an accession number gets no link row (OMOP ES found none); a
procedure listed twice is written twice in both files (OMOP ES does that too). Tests of broken
extracts write this one and then replace a file with their broken version.

``write_example_extract`` is a small fixed extract (three people, five procedures, one without
a link) that the extract reader's and ``populate``'s tests share.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# OMOP concepts: 4163872 is SNOMED "Plain chest X-ray"; an unmapped source gets concept 0, as
# OMOP ES writes for local codes it cannot map.
CHEST_XRAY_CONCEPT = 4163872
UNMAPPED_CONCEPT = 0
EHR_TYPE_CONCEPT = 32817  # "EHR"
GENDER_CONCEPTS = {"M": 8507, "F": 8532}
VISIT_ID_OFFSET = 1000  # visit_occurrence_id = this + procedure_occurrence_id

SUMMARY_FILE = "extract_summary.json"


@dataclass(frozen=True)
class Person:
    """One patient: the public PERSON row and the private link (identifiers may be missing)."""

    person_id: int
    mrn: str
    year_of_birth: int
    sex: str | None = None  # "M" or "F"
    nhs_number: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    date_of_birth: date | None = None
    postcode: str | None = None


@dataclass(frozen=True)
class Procedure:
    """One imaging procedure: the public PROCEDURE_OCCURRENCE row and its link, if any."""

    procedure_occurrence_id: int
    person_id: int
    accession_number: str | None  # None: no link row
    procedure_date: date
    procedure_datetime: datetime | None = None
    concept_id: int = CHEST_XRAY_CONCEPT
    source_value: str = "XCHES"


def extract_summary(project: str, extracted_at: datetime, omop_es_hash: str) -> dict[str, object]:
    """The summary OMOP ES writes, in the form with ``project_name`` and ``omop_es_hash``."""
    return {
        "datetime": extracted_at.isoformat(),
        "project_name": project,
        "omop_es_hash": omop_es_hash,
        "settings": {"cdm_source_name": project, "cdm_version": "5.4"},
        "synthetic": True,
    }


def write_extract(
    root: Path, persons: Sequence[Person], procedures: Sequence[Procedure], summary: object
) -> Path:
    """Write the extract under ``root`` (created); ``summary`` is written as JSON, as given."""
    root = Path(root)
    write_public(root / "public", persons, procedures)
    _write_table(
        root / "private" / "PERSON_LINKS.parquet",
        {
            "person_id": pa.array([p.person_id for p in persons], pa.int64()),
            "PrimaryMrn": pa.array([p.mrn for p in persons], pa.string()),
            "NhsNumber": pa.array([p.nhs_number for p in persons], pa.string()),
            "Forename": pa.array([p.given_name for p in persons], pa.string()),
            "Surname": pa.array([p.family_name for p in persons], pa.string()),
            "DateOfBirth": pa.array([p.date_of_birth for p in persons], pa.date32()),
            "Sex": pa.array([p.sex for p in persons], pa.string()),
            "Postcode": pa.array([p.postcode for p in persons], pa.string()),
        },
    )
    linked = [p for p in procedures if p.accession_number is not None]
    _write_table(
        root / "private" / "PROCEDURE_OCCURRENCE_LINKS.parquet",
        {
            "procedure_occurrence_id": pa.array(
                [p.procedure_occurrence_id for p in linked], pa.int64()
            ),
            "AccessionNumber": pa.array([p.accession_number for p in linked], pa.string()),
            "procedure_date": pa.array([p.procedure_date for p in linked], pa.date32()),
        },
    )
    (root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return root


def write_public(folder: Path, persons: Sequence[Person], procedures: Sequence[Procedure]) -> Path:
    """The public tables alone (PROCEDURE_OCCURRENCE, PERSON): what is staged for the DSH."""
    folder = Path(folder)
    rows = list(procedures)
    ids = [p.procedure_occurrence_id for p in rows]
    nothing = [None] * len(rows)
    _write_table(
        folder / "PROCEDURE_OCCURRENCE.parquet",
        {
            "procedure_occurrence_id": pa.array(ids, pa.int64()),
            "person_id": pa.array([p.person_id for p in rows], pa.int64()),
            "procedure_concept_id": pa.array([p.concept_id for p in rows], pa.int64()),
            "procedure_date": pa.array([p.procedure_date for p in rows], pa.date32()),
            "procedure_datetime": pa.array(
                [p.procedure_datetime for p in rows], pa.timestamp("us")
            ),
            "procedure_end_date": pa.array(nothing, pa.date32()),
            "procedure_type_concept_id": pa.array([EHR_TYPE_CONCEPT] * len(rows), pa.int64()),
            "modifier_concept_id": pa.array([0] * len(rows), pa.int64()),
            "quantity": pa.array([1] * len(rows), pa.int64()),
            "provider_id": pa.array(nothing, pa.int64()),
            "visit_occurrence_id": pa.array([VISIT_ID_OFFSET + i for i in ids], pa.int64()),
            "visit_detail_id": pa.array(nothing, pa.int64()),
            "procedure_source_value": pa.array([p.source_value for p in rows], pa.string()),
            "procedure_source_concept_id": pa.array([0] * len(rows), pa.int64()),
            "modifier_source_value": pa.array(nothing, pa.string()),
        },
    )
    _write_table(
        folder / "PERSON.parquet",
        {
            "person_id": pa.array([p.person_id for p in persons], pa.int64()),
            "gender_concept_id": pa.array(
                [GENDER_CONCEPTS.get(p.sex or "", 0) for p in persons], pa.int64()
            ),
            "year_of_birth": pa.array([p.year_of_birth for p in persons], pa.int64()),
            "race_concept_id": pa.array([0] * len(persons), pa.int64()),
            "ethnicity_concept_id": pa.array([0] * len(persons), pa.int64()),
        },
    )
    return folder


def _write_table(path: Path, columns: dict[str, pa.Array]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


# --- the example extract ----------------------------------------------------------------------

# Fake identifiers, distinctive so a test can assert they never appear in a message.
EXAMPLE_PERSONS = (
    Person(10, "FAKEMRN001", 1950),
    Person(20, "FAKEMRN002", 1960),
    Person(30, "FAKEMRN003", 1970),
)
EXAMPLE_PROCEDURES = (
    Procedure(1, 10, "FAKEACC0001", date(2023, 1, 1), datetime(2023, 1, 1, 9)),
    Procedure(2, 10, "FAKEACC0002", date(2023, 2, 1), datetime(2023, 2, 1, 10)),
    Procedure(3, 20, "FAKEACC0003", date(2023, 3, 1)),  # no datetime: the date is used
    Procedure(4, 30, "FAKEACC0004", date(2023, 4, 1), datetime(2023, 4, 1, 12)),
    Procedure(5, 30, None, date(2023, 5, 1)),  # OMOP ES found no accession number
)
# The summary variant with "settings.cdm_source_name" and "repository_hash".
EXAMPLE_SUMMARY = {
    "datetime": "2024-03-01T10:15:00",
    "settings": {"cdm_source_name": "Chest Xray"},
    "repository_hash": "0123abcd",
}


def write_example_extract(root: Path, summary: object = None) -> Path:
    """The example extract under ``root``: project ``chest-xray``, hash ``0123abcd``."""
    chosen = EXAMPLE_SUMMARY if summary is None else summary
    return write_extract(root, EXAMPLE_PERSONS, EXAMPLE_PROCEDURES, chosen)
