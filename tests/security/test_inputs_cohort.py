"""Finding 5 (first half): a cohort row with DICOM wildcards never reaches the archive.

The review's CSV row had ``*`` as MRN and ``RRV6002588?`` as accession number: orthanc-raw's
C-FIND matched a patient outside the cohort and PIXL exported them. ``pixl populate`` now
refuses such a row with one line naming file, row and column (never the value) and records
nothing, so there is no work item to fetch and no C-MOVE. On the old code the populate succeeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.driver import Stack
from stack.synthetic.cohort import Cohort

pytestmark = pytest.mark.system

PROJECT = "chest-xray-research"


@pytest.mark.parametrize(
    ("mrn", "accession", "column", "problem"),
    [
        ("*", "{accession}?", "mrn", "holds a DICOM wildcard"),
        ("{mrn}", "{accession}\\OTHER", "accession_number", "holds a backslash"),
    ],
)
def test_wildcard_cohort_row_is_refused_and_nothing_is_moved(
    stack: Stack, cohort: Cohort, tmp_path: Path, mrn: str, accession: str, column: str, problem
):
    study = cohort.studies_for("chest-xray")[0]  # a study the VNA holds
    row_mrn = mrn.format(mrn=study.mrn)
    row_accession = accession.format(accession=study.accession_number[:-1])
    path = tmp_path / "cohort.csv"
    path.write_text(
        f"mrn,accession_number,study_datetime\n{row_mrn},{row_accession},\n", encoding="utf-8"
    )
    studies_before = stack.query("SELECT count(*) FROM study WHERE project = %s", PROJECT)
    moves_before = stack.query("SELECT count(*) FROM vna_move WHERE project = %s", PROJECT)
    result = stack.pixl("populate", str(path), "--project", PROJECT, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert f"cohort.csv row 2 column {column} {problem}" in lines[0]
    assert study.mrn not in result.stderr and study.accession_number[:-1] not in result.stderr
    assert stack.query("SELECT count(*) FROM study WHERE project = %s", PROJECT) == studies_before
    assert stack.query("SELECT count(*) FROM vna_move WHERE project = %s", PROJECT) == moves_before
