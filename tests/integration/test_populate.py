"""``pixl populate``'s recording step against a real Postgres: idempotent, staged, counted."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pixl_cli.extract_reader import read_csv_cohort, read_extract
from pixl_cli.populate import populate
from pixl_core.db.connection import connect
from pixl_core.db.work_queue import counts_by_state
from pixl_core.errors import PixlConfigError
from stack.synthetic.omop_es import write_example_extract


@pytest.fixture
def extract_dir(tmp_path: Path) -> Path:
    return write_example_extract(tmp_path / "extract")


def test_populate_twice_adds_nothing_and_stages_public_files(
    db_url: str,
    extract_dir: Path,
    tmp_path: Path,
):
    extract = read_extract(extract_dir)
    staging = tmp_path / "staging"
    progress: list[tuple[int, int]] = []
    conn = connect(db_url)
    try:
        first = populate(conn, extract, staging, on_progress=lambda *p: progress.append(p))
        second = populate(conn, read_extract(extract_dir), staging)
        counts = counts_by_state(conn)
        report_counts = counts_by_state(conn, table="report")
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*), min(public_staging_path), min(omop_es_hash) FROM extract")
            extract_rows = cur.fetchone()
            cur.execute(
                "SELECT count(*) FROM report r JOIN study s ON s.id = r.study_id "
                "WHERE s.accession_number = r.accession_number"
            )
            linked_reports = cur.fetchone()[0]
    finally:
        conn.close()

    assert (first.added_studies, first.existing_studies, first.added_reports) == (4, 0, 4)
    assert first.new_extract and not second.new_extract
    assert (second.added_studies, second.existing_studies) == (0, 4)
    assert (second.added_reports, second.existing_reports) == (0, 4)
    assert counts["chest-xray"]["queued"] == 4
    assert report_counts["chest-xray"]["queued"] == 4
    assert linked_reports == 4
    assert progress[-1] == (4, 4)

    public = staging / "chest-xray" / "2024-03-01T10-15-00" / "public"
    assert first.staging_path == public
    assert extract_rows == (1, str(public), "0123abcd")
    for name in ("PROCEDURE_OCCURRENCE.parquet", "PERSON.parquet"):
        assert (public / name).read_bytes() == (extract_dir / "public" / name).read_bytes()
    assert sorted(p.name for p in public.iterdir()) == [
        "PERSON.parquet",
        "PROCEDURE_OCCURRENCE.parquet",
    ]


def test_populate_from_csv_skips_studies_already_queued(db_url: str, tmp_path: Path):
    conn = connect(db_url)
    try:
        populate(conn, read_extract(write_example_extract(tmp_path / "x")), tmp_path / "staging")
        path = tmp_path / "more.csv"
        path.write_text(
            "mrn,accession_number,study_datetime\n"
            "FAKEMRN001,FAKEACC0001,2023-01-01\n"
            "FAKEMRN009,FAKEACC0009,2023-01-09\n"
        )
        result = populate(conn, read_csv_cohort(path, "chest-xray"), tmp_path / "staging")
    finally:
        conn.close()
    assert (result.added_studies, result.existing_studies, result.added_reports) == (1, 1, 1)
    assert result.staging_path is None


def _count(conn, table: str) -> int:
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        # The review's case: an MRN as person_source_value, a surname, an NHS number.
        (
            "person_source_value",
            ["FAKEMRN001", "LOCAL0002", "LOCAL0003"],
            "PERSON.person_source_value may hold",
        ),
        ("Surname", ["Quintrell", "Oakhurst", "Smith"], "PERSON.Surname is not an OMOP CDM"),
        ("nhs_no", ["9434765919", None, None], "PERSON.nhs_no is not an OMOP CDM"),
    ],
)
def test_populate_refuses_a_public_file_that_may_not_leave_and_records_nothing(
    db_url: str, extract_dir: Path, tmp_path: Path, column: str, values: list, expected: str
):
    path = extract_dir / "public" / "PERSON.parquet"
    table = pq.read_table(path)
    pq.write_table(table.append_column(column, pa.array(values, pa.string())), path)
    conn = connect(db_url)
    try:
        with pytest.raises(PixlConfigError) as raised:
            populate(conn, read_extract(extract_dir), tmp_path / "staging")
        counts = (_count(conn, "extract"), _count(conn, "study"), _count(conn, "report"))
    finally:
        conn.close()
    message = str(raised.value)
    assert message.startswith(f"public/PERSON.parquet: column {expected}")
    for value in values:
        assert value is None or value not in message
    assert counts == (0, 0, 0)  # nothing for orthanc-raw to ask the archive for
    assert not list((tmp_path / "staging").rglob("*.parquet"))


def test_populate_refuses_a_wildcard_cohort_row_and_records_nothing(db_url: str, tmp_path: Path):
    path = tmp_path / "cohort.csv"
    path.write_text(
        "mrn,accession_number,study_datetime\nFAKEMRN001,FAKEACC0001,\n*,FAKEACC000?,\n"
    )
    conn = connect(db_url)
    try:
        with pytest.raises(PixlConfigError) as raised:
            populate(conn, read_csv_cohort(path, "chest-xray"), tmp_path / "staging")
        assert _count(conn, "study") == 0
    finally:
        conn.close()
    assert str(raised.value).startswith("cohort.csv row 3 column mrn holds a DICOM wildcard")


def test_csv_study_uid_is_recorded_on_the_work_item(db_url: str, tmp_path: Path):
    path = tmp_path / "cohort.csv"
    path.write_text(
        "mrn,accession_number,study_datetime,study_uid\n"
        "FAKEMRN001,FAKEACC0001,2023-01-01,1.2.826.0.1.3680043.8.498.1\n"
        "FAKEMRN002,FAKEACC0002,2023-01-02,\n",
        encoding="utf-8",
    )
    conn = connect(db_url)
    try:
        populate(conn, read_csv_cohort(path, "chest-xray"), tmp_path / "staging")
        populate(conn, read_csv_cohort(path, "chest-xray"), tmp_path / "staging")
        with conn, conn.cursor() as cur:
            cur.execute("SELECT accession_number, study_uid FROM study ORDER BY accession_number")
            rows = cur.fetchall()
    finally:
        conn.close()
    assert rows == [("FAKEACC0001", "1.2.826.0.1.3680043.8.498.1"), ("FAKEACC0002", None)]
