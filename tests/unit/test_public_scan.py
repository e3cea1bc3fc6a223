"""The OMOP column allow-list, a project's leave for restricted columns, and the identifier scan."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pixl_core.config.omop_columns import DATA_FILE, omop_columns
from pixl_core.config.projects import REPO_ROOT, load_project_file
from pixl_core.errors import InvalidProjectError
from pixl_core.public_scan import (
    Identifiers,
    PublicFileRefused,
    check_columns,
    check_public_file,
    read_scan_record,
    write_scan_record,
)

PROJECT_HEAD = "name: T\nmodalities: [CR]\nallowlists: [base.yaml, xray.yaml]\n"


def test_the_shipped_list_is_cdm_54_and_every_restriction_names_a_listed_column():
    cdm = omop_columns()
    assert cdm.cdm_version == "5.4"
    assert {"PERSON", "PROCEDURE_OCCURRENCE", "MEASUREMENT", "OBSERVATION", "DEATH"} <= set(
        cdm.tables
    )
    assert "NOTE" not in cdm.tables and "NOTE_NLP" not in cdm.tables  # free text
    assert cdm.restriction("PERSON", "person_source_value")  # every *_source_value
    assert cdm.restriction("LOCATION", "zip")
    assert cdm.restriction("PERSON", "year_of_birth") is None
    assert "CDM v5.4" in (DATA_FILE.parent / "README.md").read_text()


def test_file_names_are_tables_whatever_their_case():
    assert check_columns("public/person.parquet", "person.parquet", ["person_id"]) == "PERSON"


@pytest.mark.parametrize(
    ("allow", "expected"),
    [
        ("  PERSON.year_of_birth: fine\n", "PERSON.year_of_birth may leave without being listed"),
        ("  PERSON.Surname: a name\n", "PERSON.Surname is not an OMOP CDM 5.4 column"),
        ("  NOTE.note_text: text\n", "NOTE.note_text is not an OMOP CDM 5.4 column"),
        ("  PERSON.person_source_value: ''\n", "needs a justification for the reviewer"),
    ],
)
def test_a_project_may_let_out_only_restricted_columns_each_with_a_justification(
    tmp_path: Path, allow: str, expected: str
):
    path = tmp_path / "t.yaml"
    path.write_text(PROJECT_HEAD + "allow_omop_columns:\n" + allow)
    with pytest.raises(InvalidProjectError) as raised:
        load_project_file(path)
    assert expected in str(raised.value)


def test_the_example_project_lets_out_its_exam_codes_only():
    project = load_project_file(REPO_ROOT / "projects" / "chest-xray.yaml")
    assert set(project.allow_omop_columns) == {
        "PROCEDURE_OCCURRENCE.procedure_source_value",
        "PROCEDURE_OCCURRENCE.modifier_source_value",
    }


def test_identifiers_never_show_in_a_repr():
    identifiers = Identifiers.from_values({"MRN": ["FAKEMRN001"], "NHS number": ["943 476 5919"]})
    assert repr(identifiers) == "Identifiers({'MRN': 1, 'NHS number': 1})"
    assert identifiers.kind_in_text("nhs no. 943-476-5919") == "NHS number"
    assert identifiers.kind_in_text("FAKEMRN0010") is None  # a longer word is another word
    assert Identifiers.from_values({"MRN": ["1234"]}).texts == {}  # too short to look for


def test_a_column_of_a_type_pixl_cannot_check_is_refused(tmp_path: Path):
    path = tmp_path / "OBSERVATION.parquet"
    pq.write_table(pa.table({"value_as_string": pa.array([["FAKEMRN001"]])}), path)
    with pytest.raises(PublicFileRefused) as raised:
        check_public_file(
            path,
            "public/OBSERVATION.parquet",
            "p",
            {"OBSERVATION.value_as_string": "x"},
            Identifiers(),
        )
    assert "OBSERVATION.value_as_string has values of type list<" in str(raised.value)


def test_scan_record_round_trips_and_a_broken_one_vouches_for_nothing(tmp_path: Path):
    write_scan_record(tmp_path, {"PERSON.parquet": "ab" * 32}, Identifiers())
    assert read_scan_record(tmp_path) == {"PERSON.parquet": "ab" * 32}
    (tmp_path / "public_scan.json").write_text("[1, 2")
    assert read_scan_record(tmp_path) == {}
