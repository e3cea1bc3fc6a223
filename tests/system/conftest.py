"""The real local stack for system tests: Postgres, a VNA, orthanc-raw, orthanc-anon and an FTPS
DSH under supervisord, on free ports in a temporary folder (never the demo's).

The stack is started once per session and torn down at the end, even on failure. Leases and
backoffs are shortened through the environment so failure-recovery tests take seconds. Tests
drive it through ``stack.driver.Stack``, as the demo and the pipeline benchmark do.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.driver import Stack
from stack.settings import StackSettings
from stack.standins.emap_load import load_cohort_reports
from stack.synthetic.cohort import Cohort, generate_cohort, load_into_vna

pytestmark = pytest.mark.system


# Test-only projects (same allow-lists as chest-xray) so failure tests get fresh work items.
TEST_PROJECTS = ("retry-ftps", "retry-raw", "retry-vna", "retry-cogstack", "partial-fetch")
MAIN = "chest-xray"


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make system-deps` (make test does)")
    root = Path(tempfile.mkdtemp(prefix="pixl-system-"))
    root.chmod(0o755)  # the postgres user must reach its data folder
    settings = StackSettings.for_tests(root)
    settings.extra_env = {
        "PIXL_FETCH_LEASE_SECONDS": "15",
        "PIXL_FETCH_BACKOFF_SECONDS": "1",
        "PIXL_EXPORT_LEASE_SECONDS": "15",
        "PIXL_EXPORT_BACKOFF_SECONDS": "1",
        "PIXL_REPORT_LEASE_SECONDS": "15",
        "PIXL_REPORT_BACKOFF_SECONDS": "1",
    }
    settings.test_projects = TEST_PROJECTS
    stack = Stack(settings)
    try:
        stack.up(timeout=120)
        yield stack
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def cohort(stack: Stack) -> Cohort:
    """The default synthetic cohort, its images in the VNA and its reports in EMAP."""
    cohort = generate_cohort(stack.settings.root / "cohort")
    assert load_into_vna(cohort, stack.settings.url("vna")) > 0
    load_cohort_reports(stack.settings.db_url, cohort)
    stack.pixl("rate", "10", "--in-flight", "4")
    return cohort


@pytest.fixture(scope="session")
def first_run(stack: Stack, cohort: Cohort) -> dict[str, int]:
    """The main project's extract populated once and settled (images)."""
    stack.pixl("populate", str(cohort.extract_dir))
    return stack.wait_until_settled([MAIN]).studies[MAIN]
