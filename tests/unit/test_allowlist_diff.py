"""``pixl allowlist diff``: what a pull request changes in what leaves, on real git repositories.

Each test builds a git repository in a temporary folder from copies of this repository's
``tag_allowlists/`` and ``projects/``, commits a change a reviewer could meet in a pull request,
and reads the diff between the two commits (or the work tree). Only git is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pixl_cli.main import app
from stack.synthetic.dicom_builder import base_dataset, write_file

REPO = Path(__file__).resolve().parents[2]
PIXL = REPO / ".venv" / "bin" / "pixl"
PHILIPS = "overrides/philips-digitaldiagnost.yaml"
runner = CliRunner()
GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "-c",
            "user.name=Reviewer",
            "-c",
            "user.email=ig@example.org",
            *args,
        ],
        capture_output=True,
        text=True,
        env=GIT_ENV,
        check=True,
    )
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A clone-like repository holding this repository's allow-lists and projects, committed."""
    root = tmp_path / "clone"
    root.mkdir()
    shutil.copytree(REPO / "tag_allowlists", root / "tag_allowlists")
    shutil.copytree(REPO / "projects", root / "projects")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "as shipped")
    return root


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def add_entries(repo: Path, file: str, *entries: dict[str, Any]) -> None:
    path = repo / "tag_allowlists" / file
    data = load(path)
    data["attributes"].extend(entries)
    save(path, data)


def commit(repo: Path, message: str = "change") -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def diff(repo: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """Exit code and the JSON report of ``pixl allowlist diff ARGS --repo REPO --json``."""
    result = runner.invoke(app, ["allowlist", "diff", *args, "--repo", str(repo), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def rows(report: dict[str, Any], project: str | None = None) -> list[dict[str, Any]]:
    return [c for c in report["changes"] if project is None or c["project"] == project]


def brief(report: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    return [
        (c["project"], c["scope"], c["attribute"], c["kind"], c["before"], c["after"])
        for c in report["changes"]
    ]


INSTITUTION = {"attribute": "InstitutionName", "action": "keep"}


def test_kept_attribute_the_profile_removes_is_flagged_and_fails(repo: Path) -> None:
    add_entries(repo, "xray.yaml", INSTITUTION)
    commit(repo)
    code, report = diff(repo, "HEAD~1", "HEAD")
    assert code == 1
    assert brief(report) == [
        (slug, "all devices", "InstitutionName", "newly leaves", "not listed", "keep")
        for slug in ("chest-xray", "chest-xray-research")  # both compose xray.yaml
    ]
    row = rows(report)[0]
    assert row["status"] == "not justified" and row["fails"] is True
    assert "Basic Profile: X/Z/D" in row["ps315"] and "rtnInstIdOpt K" in row["ps315"]
    assert row["verdict"].startswith("NOT JUSTIFIED: kept, but the Basic Profile says X/Z/D")
    assert report["passed"] is False and report["failing"] == 2


def test_justified_kept_attribute_passes_and_shows_its_justification(repo: Path) -> None:
    reason = "single-site study; the site is named in the protocol"
    add_entries(repo, "xray.yaml", {**INSTITUTION, "justification": reason})
    commit(repo)
    code, report = diff(repo, "HEAD~1", "HEAD")
    assert code == 0
    assert [(c["attribute"], c["status"], c["justification"]) for c in rows(report)] == [
        ("InstitutionName", "justified", reason)
    ] * 2
    shown = runner.invoke(app, ["allowlist", "diff", "HEAD~1", "--repo", str(repo), "--markdown"])
    assert shown.exit_code == 0
    assert "### chest-xray\n" in shown.stdout and "### chest-xray-research\n" in shown.stdout
    assert (
        "|  | newly leaves | `InstitutionName` | all devices | not listed → keep | " in shown.stdout
    )
    assert f"| {reason} |" in shown.stdout
    assert "✅ 2 changes in 2 projects" in shown.stdout


def test_override_changes_an_action_for_one_manufacturer_only(repo: Path) -> None:
    save(
        repo / "tag_allowlists/overrides/acme.yaml",
        {
            "description": "ACME writes the real acquisition day; keep the year only",
            "match": {"manufacturer": "(?i)^acme"},
            "attributes": [{"attribute": "StudyDate", "action": "truncate", "to": "year"}],
        },
    )
    project = load(repo / "projects/chest-xray.yaml")
    project["overrides"].append("overrides/acme.yaml")
    save(repo / "projects/chest-xray.yaml", project)
    commit(repo)
    code, report = diff(repo, "HEAD~1", "HEAD")
    assert code == 0
    assert brief(report) == [
        (
            "chest-xray",
            "overrides/acme.yaml (manufacturer matches (?i)^acme)",
            "StudyDate",
            "action changed",
            "shift",
            "truncate to year",
        )
    ]
    assert rows(report)[0]["verdict"] == "allowed by rtnLongModifDatesOpt"


def test_private_attribute_added_by_creator(repo: Path) -> None:
    new_creator = {
        "attribute": "(0021,xx10)",  # the offset the example override keeps, another vendor
        "private_creator": "ACME DOSE 2",
        "vr": "DS",
        "action": "keep",
    }
    add_entries(repo, PHILIPS, new_creator)
    commit(repo)
    code, report = diff(repo, "HEAD~1", "HEAD")
    assert code == 1
    scope = f"{PHILIPS} (manufacturer matches (?i)^philips, model matches (?i)digitaldiagnost)"
    assert brief(report) == [
        (slug, scope, "(0021,xx10) [ACME DOSE 2]", "newly leaves", "not listed", "keep")
        for slug in ("chest-xray", "chest-xray-research")
    ]
    assert "rtnSafePrivOpt" in rows(report)[0]["verdict"]
    # The same offset under the example creator was already kept: it is not reported again.
    assert "PIXL EXAMPLE EXPOSURE" not in json.dumps(report)


def test_sequence_item_list_widened(repo: Path) -> None:
    path = repo / "tag_allowlists/xray.yaml"
    data = load(path)
    sequence = next(e for e in data["attributes"] if e["attribute"] == "AnatomicRegionSequence")
    sequence["items"].append({"attribute": "CodingSchemeVersion", "action": "keep"})
    sequence["items"].append(
        {"attribute": "ContextIdentifier", "action": "empty"}  # leaves, with no value
    )
    save(path, data)
    commit(repo)
    code, report = diff(repo, "HEAD~1", "HEAD")
    assert code == 0
    assert [
        (c["attribute"], c["kind"], c["after"], c["verdict"]) for c in rows(report, "chest-xray")
    ] == [
        (
            "AnatomicRegionSequence > CodingSchemeVersion",
            "newly leaves",
            "keep",
            "allowed by the Basic Profile",
        ),
        (
            "AnatomicRegionSequence > ContextIdentifier",
            "newly leaves",
            "empty",
            "allowed: no original value leaves",
        ),
    ]


def test_claimed_option_allows_previously_flagged_attributes(repo: Path) -> None:
    add_entries(repo, "xray.yaml", INSTITUTION, {"attribute": "StationName", "action": "keep"})
    commit(repo, "keep the institution (flagged)")
    project = load(repo / "projects/chest-xray.yaml")
    project["ps315_options"].append("rtnInstIdOpt")
    save(repo / "projects/chest-xray.yaml", project)
    commit(repo, "claim rtnInstIdOpt")
    code, report = diff(repo, "HEAD~1", "HEAD")
    assert code == 0
    changes = rows(report)
    assert [(c["project"], c["attribute"], c["kind"]) for c in changes] == [
        ("chest-xray", "ps315_options", "setting changed"),
        ("chest-xray", "InstitutionName", "verdict changed"),
    ]
    assert changes[0]["verdict"] == "claims rtnInstIdOpt"
    assert changes[0]["after"].endswith(", rtnInstIdOpt")
    assert changes[1]["verdict"].startswith("NOT JUSTIFIED: kept")
    assert changes[1]["verdict"].endswith("→ allowed by rtnInstIdOpt")
    assert changes[1]["status"] == "allowed by option"
    # StationName needs rtnDevIdOpt: still flagged, and unchanged, so not shown.
    # Dropping the option again makes the kept name a finding: the reverse diff fails.
    code, reverse = diff(repo, "HEAD", "HEAD~1")
    assert code == 1
    flagged = [c for c in rows(reverse) if c["fails"]]
    assert [(c["attribute"], c["kind"]) for c in flagged] == [
        ("InstitutionName", "verdict changed")
    ]


def test_reordering_reformatting_and_moving_entries_reports_nothing(repo: Path) -> None:
    lists = repo / "tag_allowlists"
    xray, base = load(lists / "xray.yaml"), load(lists / "base.yaml")
    kvp = next(e for e in xray["attributes"] if e["attribute"] == "KVP")
    xray["attributes"].remove(kvp)
    base["attributes"].insert(3, kvp)  # moved to the other list both projects compose
    xray["attributes"].reverse()
    for entry in base["attributes"]:  # folded justifications re-wrapped
        if "justification" in entry:
            entry["justification"] = "  " + entry["justification"].replace(" ", "\n ") + "\n"
    # Block style, keys in another order, same meaning.
    (lists / "xray.yaml").write_text(yaml.safe_dump(xray, default_flow_style=False))
    (lists / "base.yaml").write_text(yaml.safe_dump(base, default_flow_style=False))
    project = load(repo / "projects/chest-xray.yaml")
    project["modalities"].reverse()
    project["ps315_options"].reverse()
    project["series_filters"].reverse()
    save(repo / "projects/chest-xray.yaml", dict(reversed(list(project.items()))))
    commit(repo, "tidy")
    assert git(repo, "diff", "--stat", "HEAD~1", "HEAD").count("|") == 3  # the files did change
    code, report = diff(repo, "HEAD~1", "HEAD")
    assert (code, report["changes"], report["passed"]) == (0, [], True)
    text = runner.invoke(app, ["allowlist", "diff", "HEAD~1", "--repo", str(repo)])
    assert "No difference in what leaves between HEAD~1" in text.stdout


def test_pixel_text_and_benign_markers_are_compared(repo: Path) -> None:
    markers = load(repo / "tag_allowlists/benign_markers.yaml")
    markers["words"].append("SITTING")
    save(repo / "tag_allowlists/benign_markers.yaml", markers)
    project = load(repo / "projects/chest-xray-research.yaml")
    project["pixel_text"] = "off"
    project["pixel_text_justification"] = "films from a detector that never burns in text"
    save(repo / "projects/chest-xray-research.yaml", project)
    commit(repo)
    code, report = diff(repo, "HEAD~1", "HEAD")
    assert code == 0
    assert [(c["project"], c["attribute"], c["before"], c["after"]) for c in rows(report)] == [
        ("chest-xray", "burned-in word 'SITTING' (benign markers)", "masked", "stays burned in"),
        ("chest-xray-research", "pixel_text (burned-in text in PixelData)", "mask", "off"),
    ]
    assert rows(report)[1]["status"] == "justified"
    assert rows(report)[1]["justification"] == "films from a detector that never burns in text"


def test_work_tree_is_the_default_head_and_markdown_in_a_fresh_clone(repo: Path) -> None:
    """As a new user would: edit, commit, run `pixl allowlist diff HEAD~1` in the clone."""
    add_entries(repo, "xray.yaml", INSTITUTION)
    commit(repo)
    add_entries(repo, "base.yaml", {"attribute": "StationName", "action": "keep"})  # not committed
    command = [str(PIXL)] if PIXL.exists() else [sys.executable, "-m", "pixl_cli.main"]
    done = subprocess.run(
        [*command, "allowlist", "diff", "HEAD~1", "--markdown"],
        cwd=repo / "projects",  # any folder inside the clone
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("## What leaves: `HEAD~1 (")
    assert "→ `work tree`" in done.stdout
    assert (
        "| ❌ | newly leaves | `InstitutionName` | all devices | not listed → keep |" in done.stdout
    )
    assert "| ❌ | newly leaves | `StationName` | all devices | not listed → keep |" in done.stdout
    assert "4 NOT allowed by PS3.15 nor justified" in done.stdout
    assert done.stderr.startswith("allow-list diff failed: 4 newly let out")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-branch"], "unknown revision 'no-such-branch'"),
        (["--", "--output=x"], "a revision must be a branch, tag or commit"),
    ],
)
def test_unknown_revision_is_one_line(repo: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["allowlist", "diff", "--repo", str(repo), *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_folder_that_is_not_a_repository_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["allowlist", "diff", "main", "--repo", str(tmp_path)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "is not a git repository" in result.stderr and "--repo" in result.stderr


def test_broken_head_is_one_line_naming_the_file(repo: Path) -> None:
    add_entries(repo, "xray.yaml", {"attribute": "InstitutionNam", "action": "keep"})
    result = runner.invoke(app, ["allowlist", "diff", "HEAD", "--repo", str(repo)])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith("error: work tree: tag_allowlists/xray.yaml: entry")
    assert "InstitutionNam" in line


def test_new_project_shows_every_row_and_a_removed_project_one(repo: Path) -> None:
    project = load(repo / "projects/chest-xray.yaml")
    project["allowlists"] = ["base.yaml"]
    del project["overrides"]
    save(repo / "projects/new-study.yaml", project)
    (repo / "projects/chest-xray-research.yaml").unlink()
    commit(repo)
    code, report = diff(repo, "HEAD~1", "HEAD")
    assert code == 0
    assert rows(report, "chest-xray-research") == [
        {
            "project": "chest-xray-research",
            "scope": "project",
            "attribute": "project",
            "kind": "setting changed",
            "before": "exists",
            "after": "removed",
            "ps315": "",
            "status": "setting",
            "verdict": "the project file was removed",
            "justification": None,
            "fails": False,
        }
    ]
    new = rows(report, "new-study")
    assert [c["attribute"] for c in new[:2]] == ["project", "ps315_options"]
    leaving = {c["attribute"] for c in new if c["kind"] == "newly leaves"}
    base_entries = load(repo / "tag_allowlists/base.yaml")["attributes"]
    listed = {e["attribute"] for e in base_entries}  # base.yaml removes nothing
    assert leaving == listed | {"pixel_text (burned-in text in PixelData)"}
    accession = next(c for c in new if c["attribute"] == "AccessionNumber")
    assert accession["after"] == "hash" and accession["status"] == "allowed"


def test_broken_base_is_compared_as_letting_nothing_out(repo: Path) -> None:
    """A pull request that repairs a broken list can still be reviewed: all it lets out shows."""
    good = (repo / "tag_allowlists/xray.yaml").read_text()
    (repo / "tag_allowlists/xray.yaml").write_text(
        good.replace("attribute: KVP,", "attribute: KVPP,")
    )
    commit(repo, "a typo")
    (repo / "tag_allowlists/xray.yaml").write_text(good)
    code, report = diff(repo, "HEAD")
    assert code == 0
    assert len(report["notes"]) == 2  # both projects compose xray.yaml
    assert "tag_allowlists/xray.yaml: entry 15" in report["notes"][0]
    assert report["notes"][0].endswith("(compared as if it let nothing out)")
    kvp = [c for c in rows(report, "chest-xray") if c["attribute"] == "KVP"]
    assert [(c["kind"], c["before"], c["after"]) for c in kvp] == [
        ("newly leaves", "not listed", "keep")
    ]


# --- --sample ----------------------------------------------------------------------------------


def sample_files(folder: Path) -> None:
    folder.mkdir()
    for number, manufacturer in enumerate(("ACME Imaging", "Philips Medical Systems"), start=1):
        ds = base_dataset(
            sop_uid=f"1.2.826.0.1.3680043.10.976.9.{number}",
            study_uid=f"1.2.826.0.1.3680043.10.976.8.{number}",
            series_uid=f"1.2.826.0.1.3680043.10.976.7.{number}",
            modality="DX",
            manufacturer=manufacturer,
        )
        ds.InstitutionName = "ST ELSEWHERE GENERAL"
        ds.OperatorsName = "RADIOGRAPHER^JANE"
        write_file(ds, folder / f"sample{number}.dcm")
    (folder / "notes.txt").write_text("not DICOM")


def test_sample_counts_files_and_shows_vr_length_and_engine_output_only(
    repo: Path, tmp_path: Path
) -> None:
    save(
        repo / "tag_allowlists/overrides/acme.yaml",
        {
            "match": {"manufacturer": "(?i)^acme"},
            "attributes": [{"attribute": "StudyDate", "action": "truncate", "to": "year"}],
        },
    )
    project = load(repo / "projects/chest-xray.yaml")
    project["overrides"].append("overrides/acme.yaml")
    save(repo / "projects/chest-xray.yaml", project)
    add_entries(repo, "xray.yaml", INSTITUTION, {"attribute": "OperatorsName", "action": "keep"})
    commit(repo)
    sample = tmp_path / "sample"
    sample_files(sample)
    result = runner.invoke(
        app,
        ["allowlist", "diff", "HEAD~1", "--repo", str(repo), "--json", "--sample", str(sample)],
        env={"PIXL_HASH_KEY": ""},  # not needed: the sample uses a throwaway key
    )
    assert result.exit_code == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["sample"] == {"files": 2, "unreadable": 1}
    by_row = {(c["project"], c["attribute"]): c["sample"] for c in report["changes"]}
    # The override applies to the ACME file only; its output year is shown (allowed by option).
    assert by_row["chest-xray", "StudyDate"] == {
        "files": 1,
        "before": "DA, 8 bytes",
        "after": "20230101",
    }
    # Both files carry the operator; a finding's output value is withheld, its size shown.
    operator = by_row["chest-xray", "OperatorsName"]
    assert operator == {
        "files": 2,
        "before": "PN, 18 bytes",
        "after": "PN, 18 bytes (value withheld: a finding, not yet approved)",
    }
    # The kept institution name is a free-text value the descriptor check empties.
    assert by_row["chest-xray", "InstitutionName"]["after"].startswith("LO, 0 bytes (value")
    assert "ELSEWHERE" not in result.stdout and "RADIOGRAPHER" not in result.stdout
