"""Fixtures of the imaging-service tests (``test_fetch_worker``, ``test_ingest``,
``test_export``); the stand-ins themselves are in ``imaging_fakes``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pixl_core.config.projects import load_project
from pixl_core.db.connection import Connection, connect
from stack.synthetic.cohort import MIN_STUDIES, Cohort, generate_cohort
from tests.integration.imaging_fakes import broken_projects


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    """The synthetic cohort (one study per special role), with small images."""
    return generate_cohort(tmp_path_factory.mktemp("cohort"), n_studies=MIN_STUDIES, image_size=32)


@pytest.fixture
def broken_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point PIXL at ``broken_projects`` for one test (projects are cached per process)."""
    projects, allowlists = broken_projects(tmp_path / "config")
    monkeypatch.setenv("PIXL_PROJECTS_DIR", str(projects))
    monkeypatch.setenv("PIXL_ALLOWLISTS_DIR", str(allowlists))
    load_project.cache_clear()
    yield
    load_project.cache_clear()


@pytest.fixture
def conn(db_url: str) -> Iterator[Connection]:
    connection = connect(db_url)
    yield connection
    connection.close()
