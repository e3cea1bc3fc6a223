"""Security tests through the real stack (issue 8): one test per finding, each failing on the
code before its fix. They reuse the system tests' session fixtures (the stack on free ports in a
temporary folder, the synthetic cohort in its VNA and EMAP), imported here so that pytest
registers them for this folder too.
"""

from __future__ import annotations

from tests.system.conftest import cohort, first_run, stack  # noqa: F401
