"""The images' manifest document and ``pixl verify``'s comparison, as pure functions."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from pixl_core.db.exported_studies import ExportedSnapshot, ExportedZip, ExtractInfo
from pixl_core.dsh import manifest
from pixl_core.dsh.verify import (
    DestinationKind,
    Expected,
    Found,
    Holding,
    compare,
    expected_items,
)

WHEN = datetime(2024, 3, 1, 10, 15, tzinfo=UTC)


def digest(n: int) -> str:
    return hashlib.sha256(f"zip {n}".encode()).hexdigest()


def zip_row(n: int, extract_id: int | None = 1) -> ExportedZip:
    return ExportedZip(
        study_id=n,
        pseudo_study_uid=f"2.25.{900 + n}",
        sha256=digest(n),
        instance_count=n,
        zip_bytes=1000 + n,
        extract_id=extract_id,
        exported_at=WHEN,
    )


def snapshot(*zips: ExportedZip, busy: int = 0) -> ExportedSnapshot:
    return ExportedSnapshot(
        project="chest-xray",
        zips=zips,
        extracts=(ExtractInfo(1, WHEN, "abc123"),),
        fingerprint="0" * 32,
        busy=busy,
    )


FTPS_LIKE = DestinationKind(
    read=lambda project, progress: Holding({}), key=lambda z: z.file_name, has_manifest=True
)


# --- the manifest document --------------------------------------------------------------------


def test_manifest_lists_zips_sorted_with_digest_counts_and_extracts():
    raw = manifest.build(snapshot(zip_row(3), zip_row(1), zip_row(2, None)), generated_at=WHEN)
    document = json.loads(raw)
    assert [z["file"] for z in document["zips"]] == ["2.25.901.zip", "2.25.902.zip", "2.25.903.zip"]
    assert document["zips"][0] == {
        "file": "2.25.901.zip",
        "sha256": digest(1),
        "instances": 1,
        "bytes": 1001,
        "extract_id": 1,
        "exported_at": "2024-03-01T10:15:00+00:00",
    }
    assert document["counts"] == {"zips": 3, "instances": 6}
    assert document["extracts"] == [
        {
            "id": 1,
            "extract_datetime": "2024-03-01T10:15:00+00:00",
            "omop_es_hash": "abc123",
            "zips": 2,
            "instances": 4,
        },
        {"id": None, "extract_datetime": None, "omop_es_hash": None, "zips": 1, "instances": 2},
    ]
    assert (document["format"], document["project"], document["folder"]) == (
        manifest.FORMAT,
        "chest-xray",
        "chest-xray/dicom",
    )
    assert document["generated_at"] == "2024-03-01T10:15:00+00:00"
    assert document["pixl_version"]


def test_manifest_reads_back_what_was_built():
    rows = (zip_row(1), zip_row(2))
    parsed = manifest.parse(manifest.build(snapshot(*rows)))
    assert parsed.entries == manifest.entries_of(snapshot(*rows))
    assert parsed.project == "chest-xray"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[]", "no 'format'"),
        (json.dumps({"format": manifest.FORMAT}).encode(), "no 'zips' list"),
        (
            json.dumps(
                {
                    "format": manifest.FORMAT,
                    "zips": [{"file": "x.zip", "sha256": digest(1), "instances": 1}],
                }
            ).encode(),
            "zip 1 has no valid 'file'",
        ),
        (
            json.dumps(
                {
                    "format": manifest.FORMAT,
                    "zips": [{"file": "2.25.1.zip", "sha256": "abc", "instances": 1}],
                }
            ).encode(),
            "zip 1 has no valid 'sha256'",
        ),
        (
            json.dumps(
                {
                    "format": manifest.FORMAT,
                    "zips": [{"file": "2.25.1.zip", "sha256": digest(1), "instances": 1}] * 2,
                }
            ).encode(),
            "zip 2 is listed twice",
        ),
    ],
)
def test_a_manifest_that_is_not_pixls_is_refused_saying_what_is_wrong(raw, problem):
    with pytest.raises(manifest.ManifestUnreadable, match=problem):
        manifest.parse(raw)


# --- the comparison ---------------------------------------------------------------------------


def found_for(*rows: ExportedZip) -> dict[str, Found]:
    return {r.file_name: Found(r.file_name, sha256=r.sha256, size=r.zip_bytes) for r in rows}


def test_everything_in_place_is_reported_ok():
    rows = (zip_row(1), zip_row(2))
    snap = snapshot(*rows)
    holding = Holding(found_for(*rows), manifest.build(snap))
    result = compare(
        "chest-xray", "ftps", expected_items(snap, FTPS_LIKE), holding, has_manifest=True
    )
    assert (result.expected, result.found, result.ok) == (2, 2, 2)
    assert not result.problems
    assert result.lines()[-1] == "nothing missing, extra or corrupt"
    assert result.manifest is not None and result.manifest.problem is None


def test_missing_corrupt_and_extra_are_each_named_once():
    rows = (zip_row(1), zip_row(2), zip_row(3))
    snap = snapshot(*rows)
    found = found_for(rows[0], rows[2])
    found[rows[2].file_name] = Found(rows[2].file_name, sha256=digest(99), size=1003)  # same size
    found["2.25.777.zip"] = Found("2.25.777.zip", sha256=digest(7))
    holding = Holding(found, manifest.build(snap))
    result = compare(
        "chest-xray", "ftps", expected_items(snap, FTPS_LIKE), holding, has_manifest=True
    )
    assert result.missing == ["2.25.902.zip"]
    assert result.corrupt == ["2.25.903.zip"]
    assert result.extra == ["2.25.777.zip"]
    assert result.ok == 1
    assert result.problems
    lines = result.lines()
    assert "missing 1: 2.25.902.zip" in lines
    assert "corrupt 1: 2.25.903.zip" in lines
    assert "extra 1: 2.25.777.zip" in lines
    fixes = [line for line in lines if line.startswith("fix:")]
    assert any("`pixl verify chest-xray --requeue`" in line for line in fixes)
    assert any("remove them" in line for line in fixes)
    assert json.loads(json.dumps(result.as_json()))["corrupt"] == ["2.25.903.zip"]


def test_a_file_named_as_pixl_never_names_one_is_counted_not_echoed():
    snap = snapshot(zip_row(1))
    found = found_for(zip_row(1))
    found["Smith John 1234567890.txt"] = Found("Smith John 1234567890.txt", sha256=digest(5))
    result = compare(
        "chest-xray",
        "ftps",
        expected_items(snap, FTPS_LIKE),
        Holding(found, manifest.build(snap)),
        has_manifest=True,
    )
    assert result.extra == [] and result.extra_unnamed == 1
    text = "\n".join(result.lines()) + json.dumps(result.as_json())
    assert "Smith" not in text and "1234567890" not in text
    assert result.problems


def test_a_missing_or_stale_manifest_is_a_problem_with_its_fix():
    rows = (zip_row(1), zip_row(2))
    snap = snapshot(*rows)
    expected = expected_items(snap, FTPS_LIKE)

    missing = compare("chest-xray", "ftps", expected, Holding(found_for(*rows)), has_manifest=True)
    assert missing.manifest is not None and missing.manifest.problem == "missing"
    assert "fix: `pixl manifest chest-xray` writes the manifest again from PIXL's records" in (
        missing.lines()
    )

    older = manifest.build(snapshot(rows[0]))  # written before the second export
    stale = compare(
        "chest-xray", "ftps", expected, Holding(found_for(*rows), older), has_manifest=True
    )
    assert stale.manifest is not None and stale.manifest.problem == "stale"
    assert "1 exported zip(s) not listed" in stale.manifest.detail
    assert stale.missing == stale.corrupt == stale.extra == []

    unreadable = compare(
        "chest-xray", "ftps", expected, Holding(found_for(*rows), b"{"), has_manifest=True
    )
    assert unreadable.manifest is not None and unreadable.manifest.problem == "unreadable"


def test_a_kind_that_counts_instances_finds_a_study_with_too_few():
    """How a DICOMweb reader plugs in: items by pseudonymised UID, instances counted there,
    no digest and no manifest."""
    rows = (zip_row(2), zip_row(3))
    kind = DestinationKind(
        read=lambda project, progress: Holding({}),
        key=lambda z: z.pseudo_study_uid,
        has_manifest=False,
    )
    expected = expected_items(snapshot(*rows), kind)
    assert expected["2.25.902"] == Expected("2.25.902", digest(2), 2)
    holding = Holding(
        {"2.25.902": Found("2.25.902", instances=2), "2.25.903": Found("2.25.903", instances=1)}
    )
    result = compare(
        "chest-xray", "dicomweb", expected, holding, has_manifest=False, name_ok=lambda n: True
    )
    assert (result.ok, result.corrupt, result.manifest) == (1, ["2.25.903"], None)


def test_a_project_with_nothing_exported_needs_no_manifest():
    result = compare("chest-xray", "ftps", {}, Holding({}), has_manifest=True)
    assert not result.problems
    assert result.manifest is not None and result.manifest.problem is None
