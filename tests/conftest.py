"""Fixtures that own real services (see tests/fixtures/): a Postgres cluster, FTPS servers, and
the whole local stack shared by the system and security tests."""

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.ftps", "tests.fixtures.stack"]
