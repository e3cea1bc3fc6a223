"""``pixl verify`` and the images' manifest through the real stack and the real FTPS DSH.

A project of its own (``verify-dsh``, a copy of chest-xray) exports a few studies of the
cohort; then the DSH's folder is damaged by hand, as a disk or a person would: one zip's bytes
overwritten (same size), one zip deleted, a file PIXL never wrote put beside them. ``pixl
verify`` must name exactly those, exit non-zero, and ``--requeue`` must bring the study
back. The manifest is read from the DSH's own folder, not from PIXL.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from stack.driver import Stack
from stack.synthetic.cohort import Cohort
from tests.fixtures.stack import MAIN

pytestmark = pytest.mark.system

PROJECT = "verify-dsh"


def folder(stack: Stack) -> Path:
    return stack.settings.dsh_dir / PROJECT / "dicom"


def zips_on_dsh(stack: Stack) -> dict[str, Path]:
    return {p.name: p for p in folder(stack).glob("*.zip")}


def read_manifest(stack: Stack) -> dict[str, Any] | None:
    path = folder(stack) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def wait_for_manifest_listing(stack: Stack, names: set[str], timeout: float = 30.0) -> dict:
    """The manifest on the DSH once it lists exactly ``names`` (it follows the exports within
    PIXL_EXPORT_MANIFEST_SECONDS)."""
    deadline = time.monotonic() + timeout
    while True:
        document = read_manifest(stack)
        listed = {z["file"] for z in document["zips"]} if document else None
        if listed == names:
            return document
        assert time.monotonic() < deadline, f"the manifest lists {listed}, not {sorted(names)}"
        time.sleep(0.5)


def verify(stack: Stack, *args: str) -> tuple[int, dict[str, Any]]:
    result = stack.pixl("verify", PROJECT, "--json", *args, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(stack: Stack, cohort: Cohort) -> list[str]:
    """Four of the cohort's exportable studies exported for the project; their zip names."""
    studies = [s for s in cohort.studies_for(MAIN) if s.expected_outcome == "exported"][:4]
    assert len(studies) == 4
    csv = stack.settings.root / f"{PROJECT}.csv"
    csv.write_text(
        "mrn,accession_number,study_datetime\n"
        + "".join(f"{s.mrn},{s.accession_number},\n" for s in studies)
    )
    stack.pixl("populate", str(csv), "--project", PROJECT)
    counts = stack.wait_until_settled([PROJECT]).studies[PROJECT]
    assert counts["exported"] == 4
    names = sorted(zips_on_dsh(stack))
    assert len(names) == 4
    return names


def test_the_manifest_lists_exactly_the_zips_present_with_their_digests(stack: Stack, exported):
    document = wait_for_manifest_listing(stack, set(exported))
    present = zips_on_dsh(stack)
    for entry in document["zips"]:
        path = present[entry["file"]]
        assert entry["sha256"] == sha256(path)
        assert entry["bytes"] == path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            assert entry["instances"] == len(archive.namelist())
    assert document["project"] == PROJECT
    assert document["counts"]["zips"] == 4
    assert sum(e["zips"] for e in document["extracts"]) == 4
    recorded = dict(
        stack.query(
            "SELECT pseudo_study_uid || '.zip', sha256 FROM study WHERE project = %s", PROJECT
        )
    )
    assert recorded == {e["file"]: e["sha256"] for e in document["zips"]}

    code, report = verify(stack)
    assert code == 0, json.dumps(report)
    assert (report["expected"], report["found"], report["ok"]) == (4, 4, 4)
    assert report["missing"] == report["corrupt"] == report["extra"] == []
    assert report["manifest"] == {"problem": None, "listed": 4}
    text = stack.pixl("verify", PROJECT).stdout
    assert "nothing missing, extra or corrupt" in text


def test_verify_names_the_corrupt_missing_and_extra_zips_and_requeue_repairs(
    stack: Stack, exported
):
    wait_for_manifest_listing(stack, set(exported))
    corrupt, missing = exported[0], exported[1]
    target = folder(stack) / corrupt
    original = sha256(target)
    with target.open("r+b") as handle:  # same size, other bytes
        handle.seek(target.stat().st_size // 2)
        handle.write(b"\x00corrupted by hand\x00")
    (folder(stack) / missing).unlink()
    (folder(stack) / "2.25.424242.zip").write_bytes(b"not from PIXL")
    (folder(stack) / "notes by someone.txt").write_text("who knows")

    code, report = verify(stack)
    assert code == 1
    assert report["corrupt"] == [corrupt]
    assert report["missing"] == [missing]
    assert report["extra"] == ["2.25.424242.zip"]
    assert report["extra_unnamed"] == 1
    assert report["ok"] == 2
    lines = stack.pixl("verify", PROJECT, check=False)
    assert lines.returncode == 1
    assert f"corrupt 1: {corrupt}" in lines.stdout
    assert f"missing 1: {missing}" in lines.stdout
    assert f"`pixl verify {PROJECT} --requeue`" in lines.stdout
    assert "notes by someone" not in lines.stdout  # a name PIXL never writes is not echoed

    code, report = verify(stack, "--requeue")
    assert code == 1 and report["requeued"] == 2
    counts = stack.wait_until_settled([PROJECT], timeout=120).studies[PROJECT]
    assert counts["exported"] == 4
    # The zip of a study is reproducible: the re-export has the bytes PIXL first sent. (Had
    # the corrupt zip not been deleted first, the exporter would have taken a file of the
    # right size for a complete upload and kept the corrupted bytes.)
    assert sha256(folder(stack) / corrupt) == original
    assert (folder(stack) / missing).exists()

    (folder(stack) / "2.25.424242.zip").unlink()  # the operator removes what PIXL did not write
    (folder(stack) / "notes by someone.txt").unlink()
    wait_for_manifest_listing(stack, set(exported))
    code, report = verify(stack)
    assert code == 0, json.dumps(report)
    assert report["ok"] == 4
