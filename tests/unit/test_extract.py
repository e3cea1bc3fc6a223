"""Reading OMOP ES extracts and CSV cohorts: validation, joins and one-line errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pixl_cli.extract_reader import (
    project_slug,
    read_csv_cohort,
    read_extract,
    stage_public_files,
)
from pixl_core.errors import PixlConfigError
from pixl_core.public_scan import SCAN_RECORD, sha256_of
from stack.synthetic.omop_es import (
    EXAMPLE_PERSONS,
    EXAMPLE_PROCEDURES,
    EXAMPLE_SUMMARY,
    write_example_extract,
)

MRNS = [person.mrn for person in EXAMPLE_PERSONS]
# What projects/chest-xray.yaml lets out of the example extract's public files.
ALLOW_SOURCE_VALUES = {
    "PROCEDURE_OCCURRENCE.procedure_source_value": "exam code",
    "PROCEDURE_OCCURRENCE.modifier_source_value": "modifier code",
}
ACCESSIONS = [p.accession_number for p in EXAMPLE_PROCEDURES if p.accession_number]


def example_extract(
    root: Path,
    *,
    procedures: pd.DataFrame | None = None,
    persons: pd.DataFrame | None = None,
    links: pd.DataFrame | None = None,
    summary: object = None,
) -> Path:
    """The example extract, with the tables a test gives written over the example's own.

    (Three people, five procedures, one of them without a link: see ``omop_es``.)
    """
    write_example_extract(root, summary)
    for frame, relative in (
        (procedures, "public/PROCEDURE_OCCURRENCE.parquet"),
        (persons, "private/PERSON_LINKS.parquet"),
        (links, "private/PROCEDURE_OCCURRENCE_LINKS.parquet"),
    ):
        if frame is not None:
            frame.to_parquet(root / relative)
    return root


@pytest.fixture
def extract_dir(tmp_path: Path) -> Path:
    return write_example_extract(tmp_path / "extract")


def one_line_error(call, *args) -> str:
    with pytest.raises(PixlConfigError) as raised:
        call(*args)
    message = str(raised.value)
    assert "\n" not in message
    for value in MRNS + ACCESSIONS:
        assert value not in message
    return message


# --- reading ----------------------------------------------------------------------------------


def test_extract_is_joined_into_one_row_per_study(extract_dir: Path):
    extract = read_extract(extract_dir)
    assert extract.project == "chest-xray"
    assert extract.extract_datetime == datetime(2024, 3, 1, 10, 15, tzinfo=UTC)
    assert extract.omop_es_hash == "0123abcd"
    assert extract.rows_without_links == 1  # procedure 5 has no accession number
    rows = extract.cohort.sort_values("procedure_occurrence_id").to_dict("records")
    assert [(r["mrn"], r["accession_number"], r["procedure_occurrence_id"]) for r in rows] == [
        ("FAKEMRN001", "FAKEACC0001", 1),
        ("FAKEMRN001", "FAKEACC0002", 2),
        ("FAKEMRN002", "FAKEACC0003", 3),
        ("FAKEMRN003", "FAKEACC0004", 4),
    ]
    # procedure_datetime wins; where it is missing, procedure_date is used
    assert [r["study_datetime"] for r in rows] == [
        pd.Timestamp("2023-01-01 09:00"),
        pd.Timestamp("2023-02-01 10:00"),
        pd.Timestamp("2023-03-01"),
        pd.Timestamp("2023-04-01 12:00"),
    ]
    assert {p.name for p in extract.public_files} == {
        "PERSON.parquet",
        "PROCEDURE_OCCURRENCE.parquet",
    }
    for value in MRNS + ACCESSIONS:
        assert value not in repr(extract)


def test_exact_duplicate_rows_collapse(tmp_path: Path):
    procedures = pd.DataFrame(
        {
            "procedure_occurrence_id": [1, 1, 2],
            "person_id": [10, 10, 20],
            "procedure_datetime": pd.to_datetime(["2023-01-01", "2023-01-01", "2023-01-02"]),
        }
    )
    links = pd.DataFrame(
        {"procedure_occurrence_id": [1, 2, 2], "AccessionNumber": ["A1", "A2", "A2"]}
    )
    extract = read_extract(example_extract(tmp_path / "x", procedures=procedures, links=links))
    assert len(extract.cohort) == 2
    assert extract.duplicate_rows == 2


def test_summary_variants_are_accepted(tmp_path: Path):
    summary = {
        "extract_datetime": "2024-03-01T10:15:00+01:00",
        "project_name": "Chest_Xray  Pilot",
        "settings": {"omop_es_hash": "beef"},
    }
    extract = read_extract(example_extract(tmp_path / "x", summary=summary))
    assert extract.project == "chest-xray-pilot"
    assert extract.omop_es_hash == "beef"
    assert extract.staging_name == "2024-03-01T10-15-00"


def test_project_slug_refuses_odd_names():
    assert project_slug("Chest X-ray") == "chest-x-ray"
    assert "does not make a valid slug" in one_line_error(project_slug, "chest/xray")


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        (
            "private/PERSON_LINKS.parquet",
            "private/PERSON_LINKS.parquet is missing from the extract",
        ),
        ("public/PROCEDURE_OCCURRENCE.parquet", "public/PROCEDURE_OCCURRENCE.parquet is missing"),
        ("extract_summary.json", "extract_summary.json is missing from the extract folder"),
    ],
)
def test_missing_file_is_named(extract_dir: Path, relative: str, expected: str):
    (extract_dir / relative).unlink()
    assert one_line_error(read_extract, extract_dir).startswith(expected)


def test_missing_column_is_named_with_the_fix(tmp_path: Path):
    persons = pd.DataFrame({"person_id": [10, 20, 30], "mrn_typo": MRNS})
    message = one_line_error(read_extract, example_extract(tmp_path / "x", persons=persons))
    assert message.startswith("private/PERSON_LINKS.parquet is missing column PrimaryMrn: ")
    assert "re-export" in message


def test_missing_date_column_is_named(tmp_path: Path):
    procedures = pd.DataFrame({"procedure_occurrence_id": [1], "person_id": [10]})
    links = pd.DataFrame({"procedure_occurrence_id": [1], "AccessionNumber": ["A1"]})
    message = one_line_error(
        read_extract, example_extract(tmp_path / "x", procedures=procedures, links=links)
    )
    assert message.startswith(
        "public/PROCEDURE_OCCURRENCE.parquet is missing column procedure_datetime"
    )


def test_non_integer_ids_are_refused(tmp_path: Path):
    persons = pd.DataFrame({"person_id": ["10", "20", "30"], "PrimaryMrn": MRNS})
    message = one_line_error(read_extract, example_extract(tmp_path / "x", persons=persons))
    assert message.startswith("private/PERSON_LINKS.parquet column person_id must hold integer ids")


def test_malformed_parquet_is_one_line(extract_dir: Path):
    (extract_dir / "private" / "PROCEDURE_OCCURRENCE_LINKS.parquet").write_bytes(b"PAR1 not really")
    message = one_line_error(read_extract, extract_dir)
    assert message.startswith(
        "private/PROCEDURE_OCCURRENCE_LINKS.parquet is not a readable parquet file"
    )


def test_bad_json_is_one_line(extract_dir: Path):
    (extract_dir / "extract_summary.json").write_text('{"datetime": "2024-03-01",')
    message = one_line_error(read_extract, extract_dir)
    assert message.startswith("extract_summary.json is not valid JSON (line 1)")


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        ({**EXAMPLE_SUMMARY, "datetime": "yesterday"}, 'field "datetime" is not ISO 8601'),
        ({k: v for k, v in EXAMPLE_SUMMARY.items() if k != "datetime"}, 'has no "datetime"'),
        ({k: v for k, v in EXAMPLE_SUMMARY.items() if k != "settings"}, "has no project name"),
        (
            {k: v for k, v in EXAMPLE_SUMMARY.items() if k != "repository_hash"},
            'has no "omop_es_hash"',
        ),
        ([EXAMPLE_SUMMARY], "must hold a JSON object"),
        ({**EXAMPLE_SUMMARY, "repository_hash": "f" * 65}, '"omop_es_hash" must be a commit id'),
        ({**EXAMPLE_SUMMARY, "repository_hash": "FAKEMRN001\n"}, "must be a commit id"),
    ],
)
def test_incomplete_summary_is_named(tmp_path: Path, summary, expected: str):
    message = one_line_error(read_extract, example_extract(tmp_path / "x", summary=summary))
    assert message.startswith("extract_summary.json")
    assert expected in message


def test_public_file_of_a_table_outside_the_allow_list_is_refused(extract_dir: Path):
    pd.DataFrame({"person_id": [10], "PrimaryMrn": ["FAKEMRN001"]}).to_parquet(
        extract_dir / "public" / "LEAKY.parquet"
    )
    message = one_line_error(read_extract, extract_dir)
    assert message.startswith(
        "public/LEAKY.parquet is not a file of an OMOP CDM 5.4 table that PIXL exports"
    )


@pytest.mark.parametrize("column", ["Surname", "nhs_no", "PrimaryMrn", "person_id\nSurname"])
def test_public_column_outside_the_cdm_is_refused_by_name(extract_dir: Path, column: str):
    """The deny-list let ``Surname`` and ``nhs_no`` through; the allow-list names each."""
    path = extract_dir / "public" / "PERSON.parquet"
    table = pq.read_table(path).append_column(column, pa.array(["Quintrell"] * 3))
    pq.write_table(table, path)
    message = one_line_error(read_extract, extract_dir)
    shown = column.replace("\n", "\\n")  # a control character is escaped, never printed
    assert message.startswith(
        f"public/PERSON.parquet: column PERSON.{shown} is not an OMOP CDM 5.4 column"
    )
    assert "Quintrell" not in message


def test_text_dates_that_do_not_parse_are_refused_without_their_value(tmp_path: Path):
    procedures = pd.DataFrame(
        {"procedure_occurrence_id": [1], "person_id": [10], "procedure_date": ["FAKEMRN001"]}
    )
    message = one_line_error(read_extract, example_extract(tmp_path / "x", procedures=procedures))
    assert "column procedure_date has 1 value(s) that are not ISO 8601 dates" in message


# --- CSV cohort -------------------------------------------------------------------------------


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_cohort_is_read(tmp_path: Path):
    path = write_csv(
        tmp_path / "cohort.csv",
        "project,mrn,accession_number,study_datetime,procedure_occurrence_id\n"
        "chest-xray,FAKEMRN001,FAKEACC0001,2023-01-01T09:00:00,7\n"
        "chest-xray,FAKEMRN001,FAKEACC0001,2023-01-01T09:00:00,7\n"
        "chest-xray,FAKEMRN002,FAKEACC0002,,\n"
        "chest-xray,,FAKEACC0003,2023-01-03,\n",
    )
    extract = read_csv_cohort(path, "chest-xray")
    assert (extract.duplicate_rows, extract.rows_without_links) == (1, 1)
    rows = extract.cohort.to_dict("records")
    assert rows[0]["procedure_occurrence_id"] == 7
    assert rows[0]["study_datetime"] == pd.Timestamp("2023-01-01 09:00")
    assert pd.isna(rows[1]["procedure_occurrence_id"])
    assert pd.isna(rows[1]["study_datetime"])
    assert extract.omop_es_hash is None and extract.public_files == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mrn,study_datetime\nFAKEMRN001,2023-01-01\n", "is missing column accession_number"),
        (
            "project,mrn,accession_number,study_datetime\nother,FAKEMRN001,FAKEACC0001,\n",
            "column project has rows for other projects",
        ),
        (
            "mrn,accession_number,study_datetime\nFAKEMRN001,FAKEACC0001,FAKEACC0002\n",
            "column study_datetime has 1 value(s) that are not ISO 8601 dates",
        ),
        (
            "mrn,accession_number,study_datetime,procedure_occurrence_id\n"
            "FAKEMRN001,FAKEACC0001,,FAKEACC0002\n",
            "row 2 column procedure_occurrence_id must hold a whole number",
        ),
        ('mrn,accession_number\n"FAKEMRN001,FAKEACC0001\n', "is not a readable CSV file"),
    ],
)
def test_bad_csv_cohort_is_one_line(tmp_path: Path, text: str, expected: str):
    path = write_csv(tmp_path / "cohort.csv", text)
    message = one_line_error(read_csv_cohort, path, "chest-xray")
    assert message.startswith("cohort.csv")
    assert expected in message


# --- populate ---------------------------------------------------------------------------------


def test_populate_stages_what_it_checked_and_records_the_scan(extract_dir: Path, tmp_path: Path):
    extract = read_extract(extract_dir)
    staging = tmp_path / "staging"
    stale = staging / "chest-xray" / extract.staging_name / "public" / "OLD.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier staging")
    folder = stage_public_files(extract, staging, ALLOW_SOURCE_VALUES)
    assert folder is not None
    assert sorted(p.name for p in folder.iterdir()) == [
        "PERSON.parquet",
        "PROCEDURE_OCCURRENCE.parquet",
    ]
    record = json.loads((folder.parent / SCAN_RECORD).read_text())
    assert record["files"] == {p.name: sha256_of(p) for p in folder.glob("*.parquet")}
    assert record["identifiers_scanned"] == {"MRN": 3, "accession number": 4}
    for value in MRNS + ACCESSIONS:
        assert value not in (folder.parent / SCAN_RECORD).read_text()


def test_a_source_value_column_needs_the_projects_leave(extract_dir: Path, tmp_path: Path):
    extract = read_extract(extract_dir)
    with pytest.raises(PixlConfigError) as raised:
        stage_public_files(extract, tmp_path / "staging", {})
    message = str(raised.value)
    assert message.startswith(
        "public/PROCEDURE_OCCURRENCE.parquet: column PROCEDURE_OCCURRENCE.procedure_source_value"
        " may hold the hospital's own value"
    )
    assert "allow_omop_columns" in message and "projects/chest-xray.yaml" in message
    assert "XCHES" not in message
    assert not list((tmp_path / "staging").rglob("*.parquet"))  # nothing staged


def _add_public(extract_dir: Path, name: str, columns: dict[str, pa.Array]) -> None:
    pq.write_table(pa.table(columns), extract_dir / "public" / name)


@pytest.mark.parametrize(
    ("name", "columns", "allowed", "where", "kind"),
    [
        (  # the MRN as person_source_value, even where the project lets that column out
            "PERSON.parquet",
            {"person_id": pa.array([10, 20]), "person_source_value": pa.array(["x", "FAKEMRN002"])},
            {"PERSON.person_source_value": "a reviewer was told it is a code"},
            "PERSON.person_source_value",
            "MRN",
        ),
        (  # an NHS number spaced out inside free text
            "OBSERVATION.parquet",
            {
                "observation_id": pa.array([1]),
                "value_as_string": pa.array(["seen, NHS 943 476 5919, fine"]),
            },
            {"OBSERVATION.value_as_string": "results only"},
            "OBSERVATION.value_as_string",
            "NHS number",
        ),
        (  # an accession number as a word in a CDM text column that is not restricted
            "CARE_SITE.parquet",
            {"care_site_id": pa.array([1]), "care_site_name": pa.array(["ward FAKEACC0003"])},
            {},
            "CARE_SITE.care_site_name",
            "accession number",
        ),
        (  # a numeric identifier travelling as an integer
            "MEASUREMENT.parquet",
            {"measurement_id": pa.array([1, 2]), "value_as_number": pa.array([1.5, 9434765919.0])},
            {},
            "MEASUREMENT.value_as_number",
            "NHS number",
        ),
    ],
)
def test_a_public_value_equal_to_a_cohort_identifier_is_refused(
    tmp_path: Path, name, columns, allowed, where, kind
):
    persons = pd.DataFrame(
        {
            "person_id": [10, 20, 30],
            "PrimaryMrn": MRNS,
            "NhsNumber": ["9434765919", None, "943-476-5870"],
        }
    )
    extract_dir = example_extract(tmp_path / "x", persons=persons)
    _add_public(extract_dir, name, columns)
    extract = read_extract(extract_dir)
    with pytest.raises(PixlConfigError) as raised:
        stage_public_files(extract, tmp_path / "staging", {**ALLOW_SOURCE_VALUES, **allowed})
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"public/{name}: column {where} holds 1 value(s) equal to or ")
    assert f"an {kind} of the cohort" in message
    for value in [*MRNS, *ACCESSIONS, "9434765919", "943 476 5919", "5919"]:
        assert value not in message
    assert not (tmp_path / "staging" / "chest-xray" / extract.staging_name / SCAN_RECORD).exists()


def test_short_or_unrelated_values_are_not_taken_for_identifiers(extract_dir: Path, tmp_path: Path):
    """Sequential ids, concept ids and codes are ordinary values, not identifiers."""
    _add_public(
        extract_dir,
        "OBSERVATION.parquet",
        {
            "observation_id": pa.array([1, 2, 3]),
            "observation_concept_id": pa.array([4163872, 0, 10]),
            "value_as_number": pa.array([float("nan"), float("inf"), 2.0]),
        },
    )
    assert stage_public_files(read_extract(extract_dir), tmp_path / "s", ALLOW_SOURCE_VALUES)


# --- cohort identifiers PIXL may ask the archive for -------------------------------------------

BAD_IDENTIFIERS = [
    ("*", "holds a DICOM wildcard ('*' or '?')"),
    ("FAKEACC000?", "holds a DICOM wildcard ('*' or '?')"),
    ("FAKE*", "holds a DICOM wildcard ('*' or '?')"),
    ("FAKEMRN001\\FAKEMRN002", "holds a backslash (DICOM's value separator)"),
    ("FAKE\x00MRN", "holds a control character"),
    ("FAKE\x1bMRN", "holds a control character"),
    ("FAKE\x85MRN", "holds a control character"),
    ("F" * 200_000, "is longer than 64 characters"),
]


@pytest.mark.parametrize(("value", "problem"), BAD_IDENTIFIERS)
def test_csv_identifier_that_is_not_exact_is_refused_with_row_and_column(
    tmp_path: Path, value: str, problem: str
):
    path = tmp_path / "cohort.csv"
    path.write_text(
        "mrn,accession_number,study_datetime\n"
        "FAKEMRN001,FAKEACC0001,2023-01-01\n"
        f"FAKEMRN002,{value},2023-01-02\n",
        encoding="utf-8",
    )
    message = one_line_error(read_csv_cohort, path, "chest-xray")
    assert message.startswith(f"cohort.csv row 3 column accession_number {problem}: ")
    assert "exact identifiers only" in message
    assert value not in message or len(value) == 1
    assert len(message) < 300


@pytest.mark.parametrize(("value", "problem"), BAD_IDENTIFIERS[:5])
def test_extract_identifier_that_is_not_exact_is_refused_with_row_and_column(
    tmp_path: Path, value: str, problem: str
):
    persons = pd.DataFrame({"person_id": [10, 20, 30], "PrimaryMrn": ["FAKEMRN001", value, "x1"]})
    message = one_line_error(read_extract, example_extract(tmp_path / "x", persons=persons))
    assert message.startswith(f"private/PERSON_LINKS.parquet row 2 column PrimaryMrn {problem}")
    assert value not in message or len(value) == 1


def test_csv_with_a_huge_procedure_id_is_one_line(tmp_path: Path):
    path = tmp_path / "cohort.csv"
    path.write_text(
        "mrn,accession_number,study_datetime,procedure_occurrence_id\n"
        "FAKEMRN001,FAKEACC0001,,7.0\n"
        f"FAKEMRN002,FAKEACC0002,,{'9' * 30}\n"
    )
    message = one_line_error(read_csv_cohort, path, "chest-xray")
    assert message.startswith("cohort.csv row 3 column procedure_occurrence_id must hold a whole")


def test_csv_with_a_huge_or_binary_value_elsewhere_is_one_line(tmp_path: Path):
    path = tmp_path / "cohort.csv"
    path.write_text(
        f"mrn,accession_number,study_datetime\nFAKEMRN001,FAKEACC0001,{'2' * 200_000}\n"
    )
    assert "column study_datetime has 1 value(s)" in one_line_error(read_csv_cohort, path, "p")
    path.write_bytes(b"mrn,accession_number,study_datetime\n\xff\xfe,FAKEACC0001,\n")
    assert "is not a readable CSV file" in one_line_error(read_csv_cohort, path, "p")


def test_a_project_name_that_makes_no_slug_is_not_echoed():
    for name in ("x" * 100_000, "chest\x00xray", "a" * 65):
        message = one_line_error(project_slug, name)
        assert name not in message and len(message) < 300
