"""Fixtures that own real services: a Postgres cluster, FTPS servers (see tests/fixtures/)."""

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.ftps"]
