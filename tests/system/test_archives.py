"""Archives as hospitals have them (issue 11), through the real stack: a study asked for by
its StudyInstanceUID, two studies behind one accession number (exported apart, or refused),
and a secondary archive (a second Orthanc, AE title PACS) asked only when the VNA has no such
study, inside its own hours and at its own rate, with the archive recorded and counted.

The studies here are built for these tests, with identifiers of their own (never the shared
cohort's, whose accession numbers other tests count on), and uploaded to the archive
stand-ins over their REST APIs.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import time
import zipfile
from pathlib import Path

import pytest
import requests
import yaml
from pydicom import dcmread

from pixl_core.hashing import ProjectHasher, hash_accession_number
from stack import local_stack
from stack.driver import Stack
from stack.settings import REPO_DIR
from stack.synthetic.dicom_builder import base_dataset, to_bytes

pytestmark = pytest.mark.system


def new_uid() -> str:
    return "2.25." + str(secrets.randbits(120))


def project(stack: Stack, slug: str, **extra: object) -> str:
    """A project of the stack's own (a copy of chest-xray with ``extra`` keys), read by every
    process when first used; its slug gets a suffix of its own, so a rerun on the same stack
    starts from nothing."""
    slug = f"{slug}-{secrets.token_hex(3)}"
    raw = yaml.safe_load((REPO_DIR / "projects" / "chest-xray.yaml").read_text())
    raw.update(extra)
    source = stack.settings.root / f"{slug}.source.yaml"
    source.write_text(yaml.safe_dump(raw, sort_keys=False))
    local_stack.write_project(stack.settings, slug, source, stack.settings.local_destination())
    return slug


def upload(stack: Stack, archive: str, mrn: str, accession: str, instances: int = 2) -> str:
    """A chest study of ``instances`` CR images in the archive stand-in; returns its UID."""
    study_uid = new_uid()
    series_uid = study_uid + ".1"
    for n in range(1, instances + 1):
        ds = base_dataset(
            sop_uid=f"{series_uid}.{n}",
            study_uid=study_uid,
            series_uid=series_uid,
            patient_id=mrn,
            patient_name="ARCHIVE^TEST",
            accession=accession,
            instance_number=n,
            rows=128,
            columns=128,
            pixel_seed=n,
        )
        response = requests.post(
            stack.settings.url(archive) + "/instances", data=to_bytes(ds), timeout=30
        )
        assert response.status_code == 200, response.text
    return study_uid


def identifiers() -> tuple[str, str]:
    """A fresh MRN and accession number (never the cohort's)."""
    return f"ARCM{secrets.randbelow(10**8):08d}", f"ARCA{secrets.randbelow(10**8):08d}"


def populate(stack: Stack, slug: str, rows: list[dict[str, str]]) -> None:
    csv = stack.settings.root / f"{slug}-{secrets.token_hex(4)}.csv"
    header = "mrn,accession_number,study_datetime,study_uid\n"
    csv.write_text(
        header + "".join(f"{r['mrn']},{r['accession']},,{r.get('study_uid', '')}\n" for r in rows)
    )
    stack.pixl("populate", str(csv), "--project", slug)


def zips(stack: Stack, slug: str) -> dict[str, Path]:
    return {p.stem: p for p in (stack.settings.dsh_dir / slug / "dicom").glob("*.zip")}


def hasher(stack: Stack, slug: str) -> ProjectHasher:
    return ProjectHasher.for_project(slug, stack.settings.secrets["PIXL_HASH_KEY"].encode())


def studies(stack: Stack, slug: str) -> list[tuple]:
    return stack.query(
        "SELECT study_uid, state, last_error_code, source_archive, split_from IS NOT NULL "
        "FROM study WHERE project = %s ORDER BY id",
        slug,
    )


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


STUDY_FIND = "DICOM C-Find request at level: Study"


def study_level_finds(stack: Stack, archive: str = "vna") -> int:
    """Study-level C-FINDs the archive stand-in served, from its own (verbose) log."""
    return stack.archive_log(archive).count(STUDY_FIND)


def last_study_find_keys(stack: Stack, archive: str = "vna") -> dict[str, str]:
    """The keys of the last study-level C-FIND, as the archive logged them (it hides the
    values of identifying keys as ``*** POTENTIAL PHI ***``; an empty key is logged empty)."""
    log = stack.archive_log(archive)
    block = log[log.rindex(STUDY_FIND) :].splitlines()[1:]
    keys = {}
    for line in block:
        if "(dicom)   (" not in line:
            break
        match = re.search(r"\([0-9a-f]{4},[0-9a-f]{4}\)\s+(\w+) =(.*)$", line)
        assert match is not None, "a C-FIND key line the test cannot read"
        keys[match.group(1)] = match.group(2).strip()
    return keys


def test_study_uid_from_the_cohort_is_what_the_vna_is_asked_for(stack: Stack):
    slug = project(stack, "archives-uid")
    mrn, accession = identifiers()
    wanted = upload(stack, "vna", mrn, accession)
    other = upload(stack, "vna", mrn, accession)  # behind the same accession number
    # The VNA is shared with the other system tests: count from a moment nothing is fetched,
    # nor queued to be asked for within the test (another test's study retried after a backoff
    # would be a C-FIND of its own).
    wait_for(
        lambda: (
            not stack.query(
                "SELECT 1 FROM study WHERE state = 'fetching' OR (state = 'queued' "
                "AND next_attempt_at < now() + interval '2 minutes') LIMIT 1"
            )
        ),
        180,
        "the other tests' fetches to end",
    )
    finds = study_level_finds(stack)
    # The accession number in the cohort is wrong on purpose: only a query by UID finds it.
    populate(stack, slug, [{"mrn": mrn, "accession": accession + "X", "study_uid": wanted}])

    stack.wait_until_settled([slug], timeout=120)

    assert studies(stack, slug) == [(wanted, "exported", None, "primary", False)]
    assert set(zips(stack, slug)) == {hasher(stack, slug).uid(wanted)}
    assert hasher(stack, slug).uid(other) not in zips(stack, slug)
    assert study_level_finds(stack) == finds + 1, "one study-level C-FIND"
    keys = last_study_find_keys(stack)
    assert keys["StudyInstanceUID"] == "*** POTENTIAL PHI ***", "asked by UID"
    assert keys["AccessionNumber"] == "" and keys["PatientID"] == "", "not by accession"


def test_two_studies_behind_one_accession_arrive_as_two_zips(stack: Stack):
    slug = project(stack, "archives-split")
    mrn, accession = identifiers()
    uids = sorted([upload(stack, "vna", mrn, accession), upload(stack, "vna", mrn, accession, 3)])
    populate(stack, slug, [{"mrn": mrn, "accession": accession}])

    stack.wait_until_settled([slug], timeout=180)

    assert studies(stack, slug) == [
        (uids[0], "exported", None, "primary", False),
        (uids[1], "exported", None, "primary", True),
    ]
    project_hasher = hasher(stack, slug)
    arrived = zips(stack, slug)
    assert set(arrived) == {project_hasher.uid(uid) for uid in uids}
    hashed_accession = hash_accession_number(project_hasher, accession)
    for uid in uids:
        with zipfile.ZipFile(arrived[project_hasher.uid(uid)]) as archive:
            for name in archive.namelist():
                ds = dcmread(io.BytesIO(archive.read(name)))
                assert ds.StudyInstanceUID == project_hasher.uid(uid), "never merged"
                assert ds.AccessionNumber == hashed_accession, "both link to the one report"
    sizes = sorted(len(zipfile.ZipFile(p).namelist()) for p in arrived.values())
    assert sizes == [2, 3]
    ((reports,),) = stack.query("SELECT count(*) FROM report WHERE project = %s", slug)
    assert reports == 1, "one report per accession number, linked to both studies"


def test_a_project_that_refuses_several_studies_per_accession_exports_none(stack: Stack):
    slug = project(stack, "archives-refuse", multiple_studies_per_accession="refuse")
    mrn, accession = identifiers()
    upload(stack, "vna", mrn, accession)
    upload(stack, "vna", mrn, accession)
    moves = stack.archive_moves("vna")
    populate(stack, slug, [{"mrn": mrn, "accession": accession}])

    stack.wait_until_settled([slug], timeout=120)

    assert studies(stack, slug) == [
        (None, "refused", "several_studies_per_accession", "primary", False)
    ]
    assert zips(stack, slug) == {}
    assert stack.archive_moves("vna") == moves
    status = stack.status()
    assert status["_details"][slug]["reasons"]["studies"]["refused"] == {
        "several_studies_per_accession": 1
    }


def test_study_only_in_the_secondary_archive_comes_from_it_and_is_counted(stack: Stack):
    slug = project(stack, "archives-secondary")
    mrn, accession = identifiers()
    uid = upload(stack, "secondary", mrn, accession)
    moves = stack.archive_moves("secondary"), stack.archive_moves("vna")
    finds = study_level_finds(stack, "vna"), study_level_finds(stack, "secondary")

    populate(stack, slug, [{"mrn": mrn, "accession": accession}])
    stack.wait_until_settled([slug], timeout=120)

    # The VNA was asked first (by accession number and MRN), then the secondary, once each.
    assert (study_level_finds(stack, "vna"), study_level_finds(stack, "secondary")) == (
        finds[0] + 1,
        finds[1] + 1,
    )
    assert last_study_find_keys(stack, "secondary")["AccessionNumber"] == "*** POTENTIAL PHI ***"

    assert studies(stack, slug) == [(uid, "exported", None, "secondary", False)]
    assert set(zips(stack, slug)) == {hasher(stack, slug).uid(uid)}
    assert (stack.archive_moves("secondary"), stack.archive_moves("vna")) == (
        moves[0] + 1,
        moves[1],
    )
    status = json.loads(stack.pixl("status", slug, "--json").stdout)
    assert status[slug]["exported"] == 1
    assert status["_details"][slug]["archives"] == {"secondary": 1}
    assert status["_details"][slug]["waiting_for_secondary"] == 0


def test_outside_its_hours_the_secondary_is_not_asked_and_the_study_waits(stack: Stack):
    slug = project(stack, "archives-hours")
    mrn, accession = identifiers()
    uid = upload(stack, "secondary", mrn, accession)
    # A window that opens in over an hour, on no weekend: closed now, whatever the clock says.
    hour = time.localtime().tm_hour
    closed = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
    stack.pixl("hours", closed, "--archive", "secondary")
    moves = stack.archive_moves("secondary")
    try:
        populate(stack, slug, [{"mrn": mrn, "accession": accession}])
        wait_for(
            lambda: (
                studies(stack, slug) == [(None, "queued", "waiting_for_secondary", None, False)]
            ),
            what="the study to wait for the secondary",
        )
        time.sleep(5)  # several worker rounds: still waiting, never claimed, never failed
        assert stack.query(
            "SELECT state, attempts, awaiting_archive FROM study WHERE project = %s", slug
        ) == [("queued", 0, "secondary")]
        assert stack.archive_moves("secondary") == moves
        status = stack.status()
        assert status["_details"][slug]["waiting_for_secondary"] == 1
        assert status["_details"][slug]["reasons"]["studies"]["backing_off"] == {
            "waiting_for_secondary": 1
        }
        assert status["_details"]["*"]["secondary"]["fetch"]["hold"] == "outside_hours"
        text = stack.pixl("status", slug).stdout
        assert "waiting for secondary 1" in text and "OUTSIDE ITS HOURS" in text
    finally:
        stack.pixl("hours", "off", "--archive", "secondary")
    stack.wait_until_settled([slug], timeout=120)
    assert studies(stack, slug) == [(uid, "exported", None, "secondary", False)]
    assert stack.archive_moves("secondary") == moves + 1


def test_the_secondary_is_asked_at_its_own_rate(stack: Stack):
    slug = project(stack, "archives-rate")
    rows = []
    for _ in range(2):
        mrn, accession = identifiers()
        upload(stack, "secondary", mrn, accession, 1)
        rows.append({"mrn": mrn, "accession": accession})
    stack.pixl("rate", "0.05", "--archive", "secondary")  # one study every 20 s
    try:
        populate(stack, slug, rows)
        stack.wait_until_settled([slug], timeout=120)
    finally:
        stack.pixl("rate", "2", "--archive", "secondary")
    moved = stack.query(
        "SELECT extract(epoch FROM m.requested_at)::float8 FROM vna_move m "
        "JOIN study s ON s.id = m.study_id WHERE s.project = %s ORDER BY m.requested_at",
        slug,
    )
    assert [state for _, state, *_ in studies(stack, slug)] == ["exported", "exported"]
    assert len(moved) == 2
    gap = moved[1][0] - moved[0][0]
    assert gap >= 18, f"the secondary was asked twice within {gap:.1f} s at 0.05 studies/s"
    ((waited,),) = stack.query(
        "SELECT count(*) FROM study WHERE project = %s AND source_archive = 'secondary'", slug
    )
    assert waited == 2
