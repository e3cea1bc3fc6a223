"""The fault suite's own stack, shared by every module in tests/faults.

Fault drills run with PRODUCTION lease, heartbeat and backoff settings (issue 8: "the fault
tests run with the production lease settings"): no ``PIXL_*`` override in ``extra_env``, unlike
the system tests' shared stack (tests/fixtures/stack.py), whose 15 s leases would hide how long
recovery really takes. So this fixture overrides the session-wide ``stack`` fixture
(tests/fixtures/stack.py) inside this folder. It is package-scoped: one stack for all the fault
modules rather than one each, stopped when the last of them is done rather than at the end of
the session (two idle stacks would share two cores for the rest of ``make test``). It runs
without the EHR module and its Cogstack stand-in: the drills are about the imaging path.

Each drill gets a project of its own (``DRILL_PROJECTS``, rendered as copies of
chest-xray.yaml), so its work items, audit rows and DSH folder are its alone.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.driver import Stack
from stack.settings import StackSettings
from tests.fixtures.stack import running, temp_root

DRILL_PROJECTS = (
    "drill-postgres",
    "drill-raw-kill",
    "drill-anon-kill",
    "drill-vna-down",
    "drill-dsh-down",
    "drill-populate-kill",
)


# Where the stack's logs are kept when a drill failed (the stack's own folder is removed).
KEPT_LOGS = Path(tempfile.gettempdir()) / "pixl-faults-logs"


@pytest.fixture(scope="package")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    settings = StackSettings.for_tests(temp_root("pixl-faults-"))
    settings.with_reports = False  # production leases and backoffs: no PIXL_* overrides
    settings.test_projects = DRILL_PROJECTS
    with running(settings, request=request, keep_logs_in=KEPT_LOGS) as stack:
        yield stack
