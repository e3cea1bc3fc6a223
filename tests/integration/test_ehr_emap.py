"""EMAP: the demo schema, its loader and the report query (parts in reading order)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixl_core.db.connection import connect
from pixl_core.errors import PixlConfigError
from pixl_ehr.emap import fetch_report, load_report_query
from tests.integration.ehr_fixtures import PATIENTS, REPORTS, load_emap


@pytest.fixture
def conn(db_url):
    connection = connect(db_url)
    yield connection
    connection.close()


def test_parts_come_narrative_impression_addenda(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    report = fetch_report(conn, "MRN0001", "ACC0001")
    assert report is not None
    assert report.kinds == ("narrative", "impression", "addendum", "addendum")
    assert report.text == "\n\n".join(
        [
            REPORTS[0]["narrative"],
            REPORTS[0]["impression"],
            *REPORTS[0]["addenda"],
        ]
    )


def test_identifiers_come_from_emap(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    report = fetch_report(conn, "MRN0001", "ACC0001")
    assert report is not None
    patient = PATIENTS[0]
    assert report.identifiers == {
        "name": "Alice Quintrell",
        "given_name": "Alice",
        "family_name": "Quintrell",
        "nhs_number": patient["nhs_number"],
        "date_of_birth": "1961-04-12",
        "address": patient["address"],
        "postcode": patient["postcode"],
        "phone": patient["phone"],
    }


def test_repr_leaks_neither_text_nor_identifiers(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    report = fetch_report(conn, "MRN0001", "ACC0001")
    assert "Quintrell" not in repr(report) and "Heart" not in repr(report)


def test_order_holds_whatever_order_sections_were_stored(db_url, conn, tmp_path: Path):
    """Sections inserted impression-first still read narrative, impression, addenda."""
    load_emap(db_url, tmp_path)
    with conn, conn.cursor() as cur:
        cur.execute(
            "DELETE FROM emap.radiology_report_section s USING emap.radiology_report r "
            "WHERE s.radiology_report_id = r.radiology_report_id AND r.accession_number = 'ACC0002'"
        )
        cur.execute(
            "INSERT INTO emap.radiology_report_section "
            "(radiology_report_id, section_kind, section_order, section_text) "
            "SELECT radiology_report_id, k, o, t FROM emap.radiology_report, "
            "(VALUES ('addendum', 1, 'second addendum'), ('impression', 0, 'impression'), "
            "        ('addendum', 0, 'first addendum'), ('narrative', 0, 'narrative')) v(k, o, t) "
            "WHERE accession_number = 'ACC0002'"
        )
    report = fetch_report(conn, "MRN0002", "ACC0002")
    assert report is not None
    assert [text for _kind, text in report.parts] == [
        "narrative",
        "impression",
        "first addendum",
        "second addendum",
    ]


def test_a_custom_query_is_reordered_by_kind(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    query = load_report_query().replace("ORDER BY", "ORDER BY s.section_kind DESC,")
    report = fetch_report(conn, "MRN0001", "ACC0001", query)
    assert report is not None
    assert report.kinds == ("narrative", "impression", "addendum", "addendum")


def test_no_report_and_wrong_patient_give_none(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    assert fetch_report(conn, "MRN0001", "ACC9999") is None
    # The accession number exists, but for another patient.
    assert fetch_report(conn, "MRN0002", "ACC0001") is None


def test_blank_report_counts_as_missing(db_url, conn, tmp_path: Path):
    load_emap(
        db_url,
        tmp_path,
        reports=[{"mrn": "MRN0001", "accession_number": "ACC7", "narrative": "  ", "addenda": []}],
    )
    assert fetch_report(conn, "MRN0001", "ACC7") is None


def test_loading_twice_changes_nothing(db_url, conn, tmp_path: Path):
    load_emap(db_url, tmp_path)
    load_emap(db_url, tmp_path)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM emap.mrn), (SELECT count(*) FROM emap.radiology_report),"
            " (SELECT count(*) FROM emap.radiology_report_section)"
        )
        assert cur.fetchone() == (2, 2, 6)


def test_report_sql_env_names_another_query(db_url, conn, tmp_path: Path, monkeypatch):
    load_emap(db_url, tmp_path)
    custom = tmp_path / "custom.sql"
    custom.write_text(
        "SELECT 'impression' AS section_kind, 'only this' AS section_text "
        "WHERE %(mrn)s IS NOT NULL AND %(accession_number)s IS NOT NULL"
    )
    monkeypatch.setenv("PIXL_EMAP_REPORT_SQL", str(custom))
    report = fetch_report(conn, "x", "y")
    assert report is not None
    assert report.text == "only this"
    assert report.identifiers["family_name"] is None


def test_query_breaking_the_contract_is_one_line(db_url, conn, tmp_path: Path):
    bad = "SELECT 1 AS x WHERE %(mrn)s IS NOT NULL AND %(accession_number)s IS NOT NULL"
    with pytest.raises(PixlConfigError) as error:
        fetch_report(conn, "x", "y", bad)
    assert "section_kind" in str(error.value) and "\n" not in str(error.value)


def test_jsonl_error_does_not_echo_the_line(db_url, tmp_path: Path):
    from stack.standins.emap_load import load_reports

    path = tmp_path / "reports.jsonl"
    path.write_text(json.dumps(REPORTS[0]) + "\n{not json Quintrell\n")
    with pytest.raises(ValueError) as error:
        load_reports(db_url, path, PATIENTS)
    assert "line 2" in str(error.value) and "Quintrell" not in str(error.value)
