"""Each project's files go to the DSH server its project file names, through the real stack.

A second TLS FTP server runs in this process, with its own certificate and account name. A
project file written into the stack's projects folder names it (host, port, user, root, and
its certificate as ``ca_file:``); no process has loaded that project yet, so each reads it fresh
when first used. The server starts before the main project's first run, so both servers are up
while both projects export: chest-xray's zips must reach only the stack's DSH, the other
project's zips and radiology parquet only the second server.

The second server's password is the stack's global ``PIXL_DSH_PASSWORD``: the stack's
environment is fixed when it starts, before this server exists. The per-project variable
(``PIXL_DSH_PASSWORD__<SLUG>``) winning over the global one is tested without the stack
(tests/unit/test_ftps_settings.py, and the EHR export in tests/integration/test_ehr_service.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixl_core.hashing import ProjectHasher
from stack import local_stack
from stack.driver import Stack
from stack.settings import REPO_DIR
from stack.standins.dsh_ftps import ServerHandle, start_in_thread
from stack.synthetic.cohort import Cohort
from tests.fixtures.stack import MAIN

pytestmark = pytest.mark.system

OTHER = "other-dsh"
OTHER_USER = "pixl-other"


@pytest.fixture(scope="session")
def second_dsh(stack: Stack) -> Iterator[ServerHandle]:
    """A second DSH stand-in, and the project file that sends ``OTHER`` to it."""
    folder = stack.settings.root / "second-dsh"
    password = stack.settings.secrets["PIXL_DSH_PASSWORD"]
    handle = start_in_thread(folder / "files", OTHER_USER, password, folder / "cert")
    try:
        assert handle.ca_file is not None
        local_stack.write_project(
            stack.settings,
            OTHER,
            REPO_DIR / "projects" / "chest-xray.yaml",
            {
                "host": "127.0.0.1",
                "port": handle.port,
                "user": OTHER_USER,
                "root": "/",
                "ca_file": str(handle.ca_file),
            },
        )
        yield handle
    finally:
        handle.stop()


def zip_names(root: Path, project: str) -> set[str]:
    return {path.stem for path in (root / project / "dicom").glob("*.zip")}


def pseudo_uids(stack: Stack, project: str, studies: list) -> set[str]:
    hasher = ProjectHasher.for_project(project, stack.settings.secrets["PIXL_HASH_KEY"].encode())
    return {hasher.uid(study.study_uid) for study in studies}


def test_two_projects_reach_two_dsh_servers(
    stack: Stack, second_dsh: ServerHandle, cohort: Cohort, first_run
) -> None:
    exported = [s for s in cohort.studies_for(MAIN) if s.expected_outcome == "exported"]
    csv = stack.settings.root / f"{OTHER}.csv"
    csv.write_text(
        "mrn,accession_number,study_datetime,procedure_occurrence_id\n"
        + "".join(f"{s.mrn},{s.accession_number},,{s.procedure_ids[MAIN]}\n" for s in exported)
    )
    stack.pixl("populate", str(csv), "--project", OTHER)
    counts = stack.wait_until_settled([OTHER]).studies[OTHER]
    assert counts["exported"] == len(exported) > 0, counts

    stack_dsh, other_dsh = stack.settings.dsh_dir, second_dsh.root
    assert zip_names(other_dsh, OTHER) == pseudo_uids(stack, OTHER, exported)
    assert not (stack_dsh / OTHER).exists(), "the other project's files reached the stack's DSH"
    assert zip_names(stack_dsh, MAIN) == pseudo_uids(stack, MAIN, exported)
    assert not (other_dsh / MAIN).exists(), "chest-xray's files reached the second server"

    # The report export (the EHR module) honours the same destination.
    stack.wait_until_settled([OTHER], reports=True, timeout=120)
    result = json.loads(stack.pixl("export-patient-data", OTHER, "--json").stdout)
    assert result["reports_in_parquet"] > 0, result
    assert list(other_dsh.glob(f"{OTHER}/*/parquet/radiology/radiology.parquet"))
    assert list(other_dsh.glob(f"{OTHER}/*/parquet/manifest.json"))
    assert not (stack_dsh / OTHER).exists(), "the other project's parquet reached the stack's DSH"
