"""The real local stack for system tests: Postgres, a VNA, orthanc-raw, orthanc-anon and an FTPS
DSH under supervisord, on free ports in a temporary folder (never the demo's).

The stack is started once per session and torn down at the end, even on failure. Leases and
backoffs are shortened through the environment so failure-recovery tests take seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from stack import local_stack
from stack.settings import REPO_DIR, StackSettings
from stack.standins.emap_load import load_cohort_reports
from stack.synthetic.cohort import Cohort, generate_cohort, load_into_vna

PIXL = str(REPO_DIR / ".venv" / "bin" / "pixl")
TERMINAL = ("exported", "not_found", "refused", "failed")

pytestmark = pytest.mark.system


@dataclass
class Stack:
    settings: StackSettings

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.environment()}

    def pixl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [PIXL, *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pixl {args[0]} failed: {result.stderr.strip()}")
        return result

    def status(self) -> dict[str, dict[str, int]]:
        return json.loads(self.pixl("status", "--json").stdout)

    def wait_until_settled(self, project: str, timeout: float = 180.0) -> dict[str, int]:
        """Wait until no study of ``project`` is queued or in progress; return the counts."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.status().get(project, {})
            busy = sum(counts.get(s, 0) for s in ("queued", "fetching", "anonymising"))
            if counts and not busy:
                return counts
            if time.monotonic() > deadline:
                raise AssertionError(f"{project} did not settle: {counts}")
            time.sleep(1)

    def query(self, sql: str, *params: object) -> list[tuple]:
        with psycopg2.connect(self.settings.db_url) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        conn.close()
        return rows

    def supervisor(self, *args: str) -> None:
        local_stack.supervisorctl(self.settings, *args)

    def vna_moves(self) -> int:
        """C-MOVE requests the VNA has served, counted from its own (verbose) log."""
        log = self.settings.logs_dir / "vna.log"
        return log.read_text(errors="replace").count("Incoming Move request")


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
    try:
        local_stack.up(settings, timeout=120)
        yield Stack(settings)
    finally:
        local_stack.down(settings)
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
    return stack.wait_until_settled(MAIN)
