"""orthanc-anon's orphan sweep against a real Postgres: studies no work item will export are
deleted once idle for the grace period; studies being worked on never are."""

from __future__ import annotations

from typing import Any

import pytest

from pixl_core.hashing import ProjectHasher
from pixl_imaging.ingest import OrphanSweeper
from tests.integration.imaging_fakes import SECRET, add_study

PROJECT = "chest-xray"
HASHER = ProjectHasher.for_project(PROJECT, SECRET)


class FakeAnon:
    """orthanc-anon's ``/studies?expand`` and ``DELETE /studies/{id}``."""

    def __init__(self) -> None:
        self.studies: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []

    def add(self, study_id: str, study_uid: str, stamp: str = "20250101T000000") -> None:
        self.studies[study_id] = {
            "ID": study_id,
            "MainDicomTags": {"StudyInstanceUID": study_uid},
            "LastUpdate": stamp,
        }

    def get(self, path: str) -> Any:
        assert path == "/studies?expand", path
        return list(self.studies.values())

    def delete(self, path: str) -> None:
        study_id = path.rsplit("/", 1)[1]
        del self.studies[study_id]
        self.deleted.append(study_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def set_study(conn, study_id: int, state: str, study_uid: str | None) -> None:  # type: ignore[no-untyped-def]
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE study SET state = %s, study_uid = %s WHERE id = %s",
            (state, study_uid, study_id),
        )


@pytest.fixture
def setup(db_url, conn):  # type: ignore[no-untyped-def]
    anon = FakeAnon()
    clock = Clock()
    sweeper = OrphanSweeper(db_url, anon, SECRET, grace_seconds=600, clock=clock)
    return anon, clock, sweeper


def test_study_of_an_exported_work_item_is_deleted_after_the_grace(setup, conn):
    anon, clock, sweeper = setup
    study_id = add_study(conn, PROJECT, "mrn", "acc")
    set_study(conn, study_id, "exported", "1.2.3")
    anon.add("orphan", HASHER.uid("1.2.3"))

    assert sweeper.sweep() == 0  # first seen idle now
    clock.now += 599
    assert sweeper.sweep() == 0
    clock.now += 2
    assert sweeper.sweep() == 1
    assert anon.deleted == ["orphan"]


@pytest.mark.parametrize("state", ["queued", "fetching", "anonymising"])
def test_study_being_worked_on_is_kept(setup, conn, state):
    anon, clock, sweeper = setup
    study_id = add_study(conn, PROJECT, "mrn", "acc")
    set_study(conn, study_id, state, "1.2.3")
    anon.add("live", HASHER.uid("1.2.3"))

    sweeper.sweep()
    clock.now += 10_000
    assert sweeper.sweep() == 0
    assert anon.deleted == []


def test_study_still_changing_is_kept_until_it_stops(setup, conn):
    """A first hand-off: the work item does not know the study's UID yet, but instances keep
    arriving (LastUpdate moves), so the grace starts again each time."""
    anon, clock, sweeper = setup
    anon.add("arriving", HASHER.uid("9.9.9"), stamp="t1")
    sweeper.sweep()
    clock.now += 500
    anon.add("arriving", HASHER.uid("9.9.9"), stamp="t2")
    sweeper.sweep()
    clock.now += 500
    assert sweeper.sweep() == 0
    clock.now += 101
    assert sweeper.sweep() == 1


def test_same_study_uid_of_another_project_does_not_keep_it(setup, conn):
    """Pseudonymised UIDs differ per project: a busy item of another project keeps its own."""
    anon, clock, sweeper = setup
    study_id = add_study(conn, "chest-xray-research", "mrn", "acc")
    set_study(conn, study_id, "anonymising", "1.2.3")
    anon.add("other", HASHER.uid("1.2.3"))
    sweeper.sweep()
    clock.now += 601
    assert sweeper.sweep() == 1


def test_nothing_is_deleted_when_the_database_cannot_be_read():
    anon = FakeAnon()
    anon.add("x", "2.25.1")
    clock = Clock()
    sweeper = OrphanSweeper("postgresql://pixl@127.0.0.1:1/pixl", anon, SECRET, 600, clock)
    with pytest.raises(Exception):  # noqa: B017 - any database error
        sweeper.sweep()
    clock.now += 10_000
    with pytest.raises(Exception):  # noqa: B017
        sweeper.sweep()
    assert anon.deleted == []
