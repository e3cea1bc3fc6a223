"""Finding 4: a public parquet file with columns that identify patients never reaches the DSH.

The review added ``person_source_value`` (an MRN), ``Surname`` and ``nhs_no`` to
``public/PERSON.parquet``: the deny-list of column names let all three through and the export
put them in the DSH. Now ``pixl populate`` refuses the extract (allow-list of OMOP CDM columns,
and every value scanned against the cohort's identifiers), and ``pixl export-patient-data``
refuses a staged file that no populate checked, before connecting to the DSH. On the old code
the populate succeeds (first assertion) and the export sends the file (second part).
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stack.driver import Stack
from stack.synthetic.omop_es import Person, Procedure, extract_summary, write_extract

pytestmark = pytest.mark.system

PROJECT = "sec-extract"  # a copy of chest-xray that no other test populates
PERSONS = [
    Person(1, "SECMRN0000101", 1950, "F", "9434765919", "Ada", "Quintrell"),
    Person(2, "SECMRN0000102", 1961, "M", "9434765870", "Bert", "Oakhurst"),
]
PROCEDURES = [
    Procedure(1, 1, "SECACC000101", date(2023, 5, 1)),
    Procedure(2, 2, "SECACC000102", date(2023, 5, 2)),
]
IDENTIFIERS = ["SECMRN0000101", "SECMRN0000102", "9434765919", "Quintrell", "Oakhurst"]
EXTRACTED_AT = datetime(2024, 6, 1, 8, 30)
STAMP = "2024-06-01T08-30-00"


def _leaky_person_table(extract: Path) -> pa.Table:
    """PERSON as the review wrote it: the MRN, the surname and the NHS number added."""
    table = pq.read_table(extract / "public" / "PERSON.parquet")
    table = table.append_column("person_source_value", pa.array([p.mrn for p in PERSONS]))
    table = table.append_column("Surname", pa.array([p.family_name for p in PERSONS]))
    return table.append_column("nhs_no", pa.array([p.nhs_number for p in PERSONS]))


def _clean_extract(root: Path) -> Path:
    return write_extract(
        root, PERSONS, PROCEDURES, extract_summary(PROJECT, EXTRACTED_AT, "5ec0ffee")
    )


def _dsh_files(stack: Stack) -> list[Path]:
    return [p for p in (stack.settings.dsh_dir / PROJECT).rglob("*") if p.is_file()]


def _assert_one_line_without_identifiers(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    for value in IDENTIFIERS:
        assert value not in output
    return lines[0]


def test_extra_columns_in_public_parquet_never_reach_the_dsh(stack: Stack, tmp_path: Path):
    # 1. pixl populate refuses the extract and records nothing.
    leaky = _clean_extract(tmp_path / "leaky")
    pq.write_table(_leaky_person_table(leaky), leaky / "public" / "PERSON.parquet")
    result = stack.pixl("populate", str(leaky), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    line = _assert_one_line_without_identifiers(result.stderr)
    assert "public/PERSON.parquet: column PERSON." in line
    assert stack.query("SELECT count(*) FROM extract WHERE project = %s", PROJECT) == [(0,)]
    assert not list((stack.settings.staging_dir / PROJECT).rglob("*.parquet"))

    # 2. A leaky file in the staging folder (staged by an older PIXL, or put there by hand)
    # is refused by the export, and nothing is sent.
    clean = _clean_extract(tmp_path / "clean")
    stack.pixl("populate", str(clean))
    staged = stack.settings.staging_dir / PROJECT / STAMP / "public" / "PERSON.parquet"
    pq.write_table(_leaky_person_table(clean), staged)
    result = stack.pixl("export-patient-data", PROJECT, check=False)
    assert result.returncode != 0, result.stdout
    line = _assert_one_line_without_identifiers(result.stderr)
    assert "public/PERSON.parquet" in line and "run `pixl populate` on the extract again" in line
    assert _dsh_files(stack) == []
