"""Study Instance UIDs in a cohort (issue 11): read when the cohort has them, checked as UIDs,
refused with the row and column only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pixl_cli.extract_reader import read_csv_cohort, read_extract
from pixl_core.errors import PixlConfigError
from tests.unit.test_extract import example_extract, one_line_error

UID = "1.2.826.0.1.3680043.8.498.12345"


def test_csv_study_uid_is_read_and_blank_is_none(tmp_path: Path):
    path = tmp_path / "cohort.csv"
    path.write_text(
        "mrn,accession_number,study_datetime,study_uid\n"
        f"FAKEMRN001,FAKEACC0001,2023-01-01, {UID} \n"
        "FAKEMRN002,FAKEACC0002,2023-01-02,\n",
        encoding="utf-8",
    )
    cohort = read_csv_cohort(path, "chest-xray").cohort.set_index("accession_number")
    assert cohort.loc["FAKEACC0001", "study_uid"] == UID
    assert pd.isna(cohort.loc["FAKEACC0002", "study_uid"])


def test_csv_without_study_uid_column_has_none(tmp_path: Path):
    path = tmp_path / "cohort.csv"
    path.write_text("mrn,accession_number,study_datetime\nM1,ACC00001,\n", encoding="utf-8")
    assert read_csv_cohort(path, "chest-xray").cohort["study_uid"].isna().all()


BAD_UIDS = ["1.2.*", "1.02.3", "1..2", "1.2.", "abc", "1.2 .3", "1." + "2" * 70, "1\\2.3", "7"]


@pytest.mark.parametrize("value", BAD_UIDS)
def test_csv_study_uid_that_is_not_a_uid_is_refused_naming_the_row_only(tmp_path: Path, value: str):
    path = tmp_path / "cohort.csv"
    path.write_text(
        "mrn,accession_number,study_datetime,study_uid\n"
        f"FAKEMRN001,FAKEACC0001,2023-01-01,{UID}\n"
        f"FAKEMRN002,FAKEACC0002,2023-01-02,{value}\n",
        encoding="utf-8",
    )
    with pytest.raises(PixlConfigError) as raised:
        read_csv_cohort(path, "chest-xray")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("cohort.csv row 3 column study_uid is not a DICOM UID")
    assert value.strip() not in message
    assert raised.value.code == "invalid_cohort_value"


def test_extract_links_may_carry_study_uids(tmp_path: Path):
    root = example_extract(tmp_path / "x")
    import pyarrow.parquet as pq

    links = pq.read_table(root / "private/PROCEDURE_OCCURRENCE_LINKS.parquet").to_pandas()
    uids = [UID + f".{n}" if n % 2 else None for n in range(len(links))]
    links["StudyInstanceUID"] = pd.array(uids, dtype="string")
    links.to_parquet(root / "private/PROCEDURE_OCCURRENCE_LINKS.parquet")
    cohort = read_extract(root).cohort
    by_accession = dict(zip(links["AccessionNumber"], uids, strict=True))
    assert len(cohort) > 0
    for accession, study_uid in zip(cohort["accession_number"], cohort["study_uid"], strict=True):
        expected = by_accession[accession]
        assert (pd.isna(study_uid) and expected is None) or study_uid == expected
    assert cohort["study_uid"].notna().any()


def test_extract_study_uid_that_is_not_a_uid_is_refused_naming_the_row_only(tmp_path: Path):
    root = example_extract(tmp_path / "x")
    import pyarrow.parquet as pq

    links = pq.read_table(root / "private/PROCEDURE_OCCURRENCE_LINKS.parquet").to_pandas()
    links["StudyInstanceUID"] = pd.array([UID] * (len(links) - 1) + ["1.2.x"], dtype="string")
    links.to_parquet(root / "private/PROCEDURE_OCCURRENCE_LINKS.parquet")
    message = one_line_error(read_extract, root)
    assert message.startswith(
        f"private/PROCEDURE_OCCURRENCE_LINKS.parquet row {len(links)} column StudyInstanceUID "
        "is not a DICOM UID"
    )
    assert "1.2.x" not in message
