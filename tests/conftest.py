"""Fixtures that own real services (see tests/fixtures/): a Postgres cluster, FTPS servers, and
the whole local stack shared by the system and security tests."""

from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.ftps", "tests.fixtures.stack"]

# Tests that share one real stack, and so must run in one process: `make test` runs the suites
# side by side with pytest-xdist (`-n 3 --dist loadgroup`), because the fault drills spend most
# of their time waiting out outages (a 3-minute VNA outage among them) while the other suites
# need the CPU. Each group gets its own worker and its own stack; the rest is spread over all.
_STACK_GROUPS = {"faults": "faults-stack", "system": "session-stack", "security": "session-stack"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        try:
            folder = item.path.relative_to(tests_dir).parts[0]
        except ValueError:
            continue
        group = _STACK_GROUPS.get(folder)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
