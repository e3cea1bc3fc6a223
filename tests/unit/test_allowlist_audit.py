"""The PS3.15 allow-list audit, the before/after preview and the ``pixl allowlist`` commands.

The audit is what an information-governance reviewer relies on to approve an allow-list, so these
tests check that it really catches identifying attributes (names, institutions, private blocks,
real dates), that it respects the options a project claims, and that the shipped chest-xray
project passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
from typer.testing import CliRunner

from pixl_cli import output
from pixl_cli.main import app
from pixl_core.config.allowlist import AttributeKey
from pixl_core.config.projects import Project, load_project, load_project_file
from pixl_core.config.ps315_audit import (
    AuditReport,
    audit,
    fallback_code,
    load_profile,
)
from pixl_core.dicom.preview import REMOVED, preview, refusal_reason
from pixl_core.hashing import ProjectHasher

REPO = Path(__file__).resolve().parents[2]
PIXL = REPO / ".venv" / "bin" / "pixl"
REQUIRED = [
    {"attribute": "SOPClassUID", "action": "keep"},
    {"attribute": "SOPInstanceUID", "action": "uid"},
    {"attribute": "StudyInstanceUID", "action": "uid"},
    {"attribute": "SeriesInstanceUID", "action": "uid"},
    {"attribute": "Modality", "action": "keep"},
    {"attribute": "PixelData", "action": "keep"},
]
PRIVATE_KEEP = {
    "attribute": "(0019,xx10)",
    "private_creator": "ACME 1.0",
    "vr": "DS",
    "action": "keep",
}


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private projects/ and tag_allowlists/ pair, so tests never depend on shipped files."""
    (tmp_path / "projects").mkdir()
    (tmp_path / "tag_allowlists").mkdir()
    monkeypatch.setenv("PIXL_PROJECTS_DIR", str(tmp_path / "projects"))
    monkeypatch.setenv("PIXL_ALLOWLISTS_DIR", str(tmp_path / "tag_allowlists"))
    load_project.cache_clear()
    yield tmp_path
    load_project.cache_clear()


def write_project(
    root: Path,
    entries: list[dict[str, Any]],
    options: tuple[str, ...] = (),
    override: list[dict[str, Any]] | None = None,
    slug: str = "test-project",
) -> Path:
    """Write a project whose base list is REQUIRED plus ``entries`` (in extra.yaml)."""
    lists = root / "tag_allowlists"
    (lists / "base.yaml").write_text(yaml.safe_dump({"attributes": REQUIRED}))
    files = ["base.yaml"]
    if entries:
        extra = "extra.yaml" if slug == "test-project" else f"extra-{slug}.yaml"
        (lists / extra).write_text(yaml.safe_dump({"attributes": entries}))
        files.append(extra)
    project: dict[str, Any] = {
        "modalities": ["DX", "CR"],
        "allowlists": files,
        "ps315_options": list(options),
    }
    if override is not None:
        (lists / "vendor.yaml").write_text(
            yaml.safe_dump({"match": {"manufacturer": "(?i)acme"}, "attributes": override})
        )
        project["overrides"] = ["vendor.yaml"]
    path = root / "projects" / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(project))
    return path


def run_audit(
    root: Path, entries: list[dict[str, Any]], options: tuple[str, ...] = ()
) -> AuditReport:
    return audit(load_project_file(write_project(root, entries, options)))


def labels(report: AuditReport) -> list[str]:
    return [f.label for f in report.findings]


# --- the audit ---------------------------------------------------------------------------------


def test_kept_patient_name_is_an_unjustified_finding(dirs: Path) -> None:
    report = run_audit(dirs, [{"attribute": "PatientName", "action": "keep"}])
    assert labels(report) == ["PatientName"]
    finding = report.findings[0]
    assert finding.source == "tag_allowlists/extra.yaml: entry 1"
    assert finding.action == "keep"
    assert "Basic Profile: Z" in finding.profile
    assert not finding.justified
    assert not report.passed
    assert report.summary().endswith("1 kept beyond the Basic Profile, 1 without justification")


def test_kept_institution_name_is_a_finding_unless_institution_option(dirs: Path) -> None:
    entry = {"attribute": "InstitutionName", "action": "keep"}
    report = run_audit(dirs, [entry])
    assert labels(report) == ["InstitutionName"]
    assert "X/Z/D" in report.findings[0].profile
    assert "rtnInstIdOpt K" in report.findings[0].profile  # tells the reviewer what would allow it
    assert run_audit(dirs, [entry], ("rtnInstIdOpt",)).findings == ()


def test_justification_makes_the_audit_pass(dirs: Path) -> None:
    report = run_audit(
        dirs,
        [{"attribute": "InstitutionName", "action": "keep", "justification": "single-site study"}],
    )
    assert len(report.findings) == 1
    assert report.findings[0].justified
    assert report.passed
    assert report.summary() == (
        "test-project: 7 attributes, 1 kept beyond the Basic Profile, all justified"
    )


def test_private_attribute_is_always_a_finding(dirs: Path) -> None:
    report = run_audit(dirs, [PRIVATE_KEEP])
    assert labels(report) == ["(0019,xx10) [ACME 1.0]"]
    assert "rtnSafePrivOpt" in report.findings[0].problem
    assert not report.passed
    claimed = run_audit(dirs, [PRIVATE_KEEP], ("rtnSafePrivOpt",))
    assert labels(claimed) == ["(0019,xx10) [ACME 1.0]"]
    assert "known to be safe" in claimed.findings[0].problem
    justified = run_audit(dirs, [{**PRIVATE_KEEP, "justification": "a dose number"}])
    assert justified.passed


def test_removing_or_emptying_private_and_identifying_attributes_is_fine(dirs: Path) -> None:
    report = run_audit(
        dirs,
        [
            {**PRIVATE_KEEP, "action": "remove"},
            {"attribute": "PatientName", "action": "empty"},
            {"attribute": "InstitutionName", "action": "remove"},
            {"attribute": "PatientAddress", "action": "replace", "value": "none"},
        ],
    )
    assert report.findings == ()
    assert report.summary() == "test-project: 10 attributes, none kept beyond the Basic Profile"


def test_shifted_date_needs_a_dates_option(dirs: Path) -> None:
    entry = {"attribute": "StudyDate", "action": "shift"}
    report = run_audit(dirs, [entry])
    assert labels(report) == ["StudyDate"]
    assert "rtnLongModifDatesOpt" in report.findings[0].problem
    assert run_audit(dirs, [entry], ("rtnLongModifDatesOpt",)).findings == ()
    assert run_audit(dirs, [entry], ("rtnLongFullDatesOpt",)).findings == ()
    truncated = {"attribute": "SeriesDate", "action": "truncate", "to": "year"}
    assert labels(run_audit(dirs, [truncated])) == ["SeriesDate"]


def test_birth_date_has_no_option_that_retains_it(dirs: Path) -> None:
    entry = {"attribute": "PatientBirthDate", "action": "truncate", "to": "year"}
    report = run_audit(dirs, [entry], ("rtnLongModifDatesOpt", "rtnPatCharsOpt"))
    assert labels(report) == ["PatientBirthDate"]
    assert "no PS3.15 option retains this date" in report.findings[0].problem


def test_kept_date_with_modified_dates_option_is_still_a_finding(dirs: Path) -> None:
    # rtnLongModifDatesOpt says C: dates may leave *modified*; keeping them is not modifying.
    report = run_audit(
        dirs, [{"attribute": "StudyDate", "action": "keep"}], ("rtnLongModifDatesOpt",)
    )
    assert labels(report) == ["StudyDate"]
    assert "asks to clean" in report.findings[0].problem


def test_patient_sex_respects_patient_characteristics_option(dirs: Path) -> None:
    entry = {"attribute": "PatientSex", "action": "keep"}
    assert labels(run_audit(dirs, [entry])) == ["PatientSex"]
    report = run_audit(dirs, [entry], ("rtnPatCharsOpt",))
    assert report.findings == ()
    assert report.unused_options == ()


def test_unused_claims_are_reported(dirs: Path) -> None:
    report = run_audit(dirs, [{"attribute": "KVP", "action": "keep"}], ("rtnDevIdOpt",))
    assert report.findings == ()
    assert report.unused_options == ("rtnDevIdOpt",)


def test_clean_descriptors_option_makes_kept_free_text_fine_and_nothing_else(
    dirs: Path,
) -> None:
    # Issue 9: the engine checks every kept free-text value (SH/LO/ST/LT/UT/UC) for the
    # instance's identifiers and empties a flagged one, so keeping a description under a claimed
    # cleanDescOpt is what the option asks for. Before, nothing cleaned, and it was a finding.
    report = run_audit(
        dirs, [{"attribute": "StudyDescription", "action": "keep"}], ("cleanDescOpt",)
    )
    assert report.findings == ()
    assert report.unused_options == ()
    # A coded (CS) value the option asks to clean is not read by the descriptor check.
    coded = run_audit(
        dirs,
        [{"attribute": "ReasonForTheAttributeModification", "action": "keep"}],
        ("cleanDescOpt",),
    )
    assert labels(coded) == ["ReasonForTheAttributeModification"]
    assert "cleanDescOpt asks to clean" in coded.findings[0].problem


def test_attribute_outside_the_profile_may_be_kept(dirs: Path) -> None:
    report = run_audit(
        dirs,
        [
            {"attribute": "KVP", "action": "keep"},
            {"attribute": "ImagerPixelSpacing", "action": "keep"},
            {"attribute": "(6000,0010)", "action": "keep"},  # Overlay Rows,
        ],
    )
    assert report.findings == ()


def test_hash_and_uid_actions(dirs: Path) -> None:
    report = run_audit(
        dirs,
        [
            {"attribute": "AccessionNumber", "action": "hash"},  # Z
            {"attribute": "PatientID", "action": "hash"},  # Z/D
            {"attribute": "OtherPatientIDs", "action": "hash"},  # X: a hash still links
            {"attribute": "FrameOfReferenceUID", "action": "uid"},  # U
            {"attribute": "ReferencedSOPInstanceUID", "action": "keep"},  # U, kept as is
        ],
    )
    assert labels(report) == ["OtherPatientIDs", "ReferencedSOPInstanceUID"]
    kept_uids = run_audit(
        dirs, [{"attribute": "ReferencedSOPInstanceUID", "action": "keep"}], ("rtnUIDsOpt",)
    )
    assert kept_uids.findings == ()


def test_nested_sequence_items_are_audited_with_their_path(dirs: Path) -> None:
    entries = [
        {
            "attribute": "RequestAttributesSequence",
            "action": "keep",
            "items": [
                {"attribute": "RequestedProcedureDescription", "action": "keep"},
                {"attribute": "ScheduledProcedureStepID", "action": "empty"},
            ],
        }
    ]
    report = run_audit(dirs, entries)
    assert labels(report) == [
        "RequestAttributesSequence",
        "RequestAttributesSequence > RequestedProcedureDescription",
    ]
    assert report.findings[1].source == "tag_allowlists/extra.yaml: entry 1.1"
    assert report.attributes == 6 + 3
    # With cleanDescOpt the container may stay (its items are the cleaning), and the kept
    # description inside is cleaned by the descriptor check (issue 9), which reads kept items.
    claimed = run_audit(dirs, entries, ("cleanDescOpt",))
    assert labels(claimed) == []


def test_sequence_the_profile_lets_stay_is_judged_by_its_items(dirs: Path) -> None:
    entries = [
        {
            "attribute": "ReferencedImageSequence",  # X/Z/U*
            "action": "keep",
            "items": [
                {"attribute": "ReferencedSOPClassUID", "action": "keep"},
                {"attribute": "ReferencedSOPInstanceUID", "action": "uid"},
            ],
        }
    ]
    assert run_audit(dirs, entries).findings == ()


def test_overrides_are_audited_too(dirs: Path) -> None:
    path = write_project(dirs, [], override=[{"attribute": "PatientName", "action": "keep"}])
    report = audit(load_project_file(path))
    assert labels(report) == ["PatientName"]
    assert report.findings[0].source == "tag_allowlists/vendor.yaml: entry 1"


def test_fallback_2026c_covers_attributes_missing_from_2024b(dirs: Path) -> None:
    profile = load_profile()
    key = AttributeKey(0x0018, 0x1010)  # Secondary Capture Device ID, not in the 2024b table
    assert key.tag not in profile.exact
    entry = profile.lookup(key)
    assert entry is not None and entry.basic == "X" and entry.from_fallback
    report = run_audit(dirs, [{"attribute": "SecondaryCaptureDeviceID", "action": "keep"}])
    assert labels(report) == ["SecondaryCaptureDeviceID"]
    assert "dicom-anonymizer 2026c" in report.findings[0].profile


def test_fallback_list_names_map_to_profile_codes() -> None:
    assert fallback_code("X_Z_U_STAR_TAGS") == "X/Z/U*"
    assert fallback_code("Z_D_TAGS") == "Z/D"
    assert fallback_code("X_U_TAGS") == "X/U"  # a list a later edition might add


def test_table_has_every_row_and_repeating_groups_match() -> None:
    profile = load_profile()
    assert len(profile.exact) + len(profile.masked) + 1 == 621
    overlay = profile.lookup(AttributeKey(0x6000, 0x3000))  # any (60xx,3000)
    assert overlay is not None and overlay.name == "Overlay Data"
    assert profile.lookup(AttributeKey(0x5000, 0x1234)) is not None  # (50xx,xxxx) curves
    assert profile.lookup(AttributeKey(0x6000, 0x0010)) is None  # Overlay Rows: not listed


def test_kept_overlay_data_or_icon_is_refused(dirs: Path) -> None:
    """Overlays and icon images are pictures the burned-in text check does not read: an
    allow-list that lets them out is refused on load (before issue 9 it was an audit finding)."""
    from pixl_core.errors import InvalidAllowlistError

    for attribute in ("(6002,3000)", "IconImageSequence"):
        entry = {"attribute": attribute, "action": "keep"}
        if attribute == "IconImageSequence":
            entry["items"] = [{"attribute": "Rows", "action": "keep"}]
        with pytest.raises(InvalidAllowlistError) as refused:
            run_audit(dirs, [entry])
        assert "never leave" in str(refused.value) and "\n" not in str(refused.value)


def test_shipped_chest_xray_project_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIXL_PROJECTS_DIR", raising=False)
    monkeypatch.delenv("PIXL_ALLOWLISTS_DIR", raising=False)
    load_project.cache_clear()
    report = audit(load_project("chest-xray"))
    load_project.cache_clear()
    assert report.passed, [f.label for f in report.unjustified]
    # The project claims cleanDescOpt with the descriptor check on (issue 9): the kept
    # descriptions are cleaned by the engine, no longer findings.
    assert "cleanDescOpt" in report.options and report.unused_options == ()
    assert "StudyDescription" not in labels(report)
    assert "PatientName" not in labels(report)


# --- preview -------------------------------------------------------------------------------


def make_dx(modality: str = "DX") -> bytes:
    """A small synthetic DX instance carrying identifiers, a sequence and a private block."""
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = "1.2.3.4.1"
    ds.StudyInstanceUID = "1.2.3.4.2"
    ds.SeriesInstanceUID = "1.2.3.4.3"
    ds.Modality = modality
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN0001"
    ds.AccessionNumber = "ACC0001"
    ds.InstitutionName = "General Hospital"
    ds.StudyDate = "20240102"
    ds.Manufacturer = "ACME"
    item = Dataset()
    item.CodeValue = "R-10214"
    item.CodeMeaning = "postero-anterior"
    ds.ViewCodeSequence = Sequence([item])
    block = ds.private_block(0x0019, "ACME 1.0", create=True)
    block.add_new(0x10, "DS", "1.5")
    block.add_new(0x11, "LO", "operator name")
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x00" * 8
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def preview_project(root: Path) -> Project:
    entries = [
        {"attribute": "PatientName", "action": "empty"},
        {"attribute": "AccessionNumber", "action": "hash"},
        {"attribute": "StudyDate", "action": "shift"},
        {"attribute": "Manufacturer", "action": "keep"},
        {
            "attribute": "ViewCodeSequence",
            "action": "keep",
            "items": [{"attribute": "CodeValue", "action": "keep"}],
        },
    ]
    return load_project_file(write_project(root, entries, override=[PRIVATE_KEEP]))


def test_preview_shows_engine_output(dirs: Path) -> None:
    hasher = ProjectHasher.for_project("test-project", b"k" * 32)
    rows = {r.path: r for r in preview(make_dx(), preview_project(dirs), hasher)}
    assert rows["PatientName"].before == "Doe^Jane"
    assert rows["PatientName"].after == "(empty)"
    assert rows["InstitutionName"].after == REMOVED
    assert rows["InstitutionName"].action == "not listed"
    assert rows["AccessionNumber"].after == hasher.text("ACC0001", 16)
    assert rows["StudyDate"].after not in ("20240102", REMOVED)
    assert rows["SOPInstanceUID"].after == hasher.uid("1.2.3.4.1")
    assert rows["PixelData"].before == rows["PixelData"].after == "<8 bytes>"
    assert rows["ViewCodeSequence[1] > CodeValue"].after == "R-10214"
    assert rows["ViewCodeSequence[1] > CodeValue"].depth == 2
    assert rows["ViewCodeSequence[1] > CodeMeaning"].after == REMOVED
    assert rows["(0019,xx10) [ACME 1.0]"].after == "1.5"
    assert rows["(0019,xx11) [ACME 1.0]"].after == REMOVED
    assert rows["PatientIdentityRemoved"].action == "added"


def test_preview_shows_refusal_reason(dirs: Path) -> None:
    hasher = ProjectHasher.for_project("test-project", b"k" * 32)
    rows = preview(make_dx("CT"), preview_project(dirs), hasher)
    assert refusal_reason(rows) == "modality_not_allowed"
    assert all(r.after in (REMOVED, "") for r in rows if r.label != "(instance)")
    assert refusal_reason(preview(b"not dicom", preview_project(dirs), hasher)) == "unreadable"


# --- the CLI -------------------------------------------------------------------------------------


def run_pixl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real installed command, without PIXL_HASH_KEY unless given."""
    base = {k: v for k, v in os.environ.items() if k != "PIXL_HASH_KEY"}
    base.update(env or {})
    command = [str(PIXL)] if PIXL.exists() else [sys.executable, "-m", "pixl_cli.main"]
    result = subprocess.run(
        [*command, *args], capture_output=True, text=True, env=base, timeout=60, cwd=REPO
    )
    assert "Traceback" not in result.stderr
    return result


def test_cli_check_shipped_project_passes_without_hash_key() -> None:
    env = {
        "PIXL_PROJECTS_DIR": str(REPO / "projects"),
        "PIXL_ALLOWLISTS_DIR": str(REPO / "tag_allowlists"),
    }
    result = run_pixl("allowlist", "check", "chest-xray", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chest-xray:" in result.stdout and "all justified" in result.stdout


def test_cli_check_unjustified_file_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "leaky.yaml"
    path.write_text(
        yaml.safe_dump({"attributes": [{"attribute": "PatientName", "action": "keep"}]})
    )
    result = run_pixl("allowlist", "check", str(path))
    assert result.returncode == 1
    assert "PatientName" in result.stdout
    assert "1 without justification" in result.stdout


def test_cli_check_broken_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"attributes": [{"attribute": "PatientNam", "action": "keep"}]}))
    result = run_pixl("allowlist", "check", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0] and "entry 1" in lines[0] and "PatientNam" in lines[0]


runner = CliRunner()


def test_cli_check_all_and_unknown_project(dirs: Path) -> None:
    write_project(dirs, [{"attribute": "KVP", "action": "keep"}], slug="alpha")
    write_project(dirs, [{"attribute": "StationName", "action": "keep"}], slug="beta")
    result = runner.invoke(app, ["allowlist", "check", "--all"])
    assert result.exit_code == 1
    assert "alpha: 7 attributes, none kept beyond the Basic Profile" in result.stdout
    assert "beta: 7 attributes, 1 kept beyond the Basic Profile, 1 without" in result.stdout
    unknown = runner.invoke(app, ["allowlist", "check", "no-such-project"])
    assert unknown.exit_code == 2
    nothing = runner.invoke(app, ["allowlist", "check"])
    assert nothing.exit_code == 2


def test_cli_check_project_file_path_uses_its_options(dirs: Path) -> None:
    path = write_project(dirs, [{"attribute": "PatientSex", "action": "keep"}], ("rtnPatCharsOpt",))
    result = runner.invoke(app, ["allowlist", "check", str(path)])
    assert result.exit_code == 0, result.stdout


def test_cli_preview_needs_hash_key(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preview_project(dirs)
    dicom = dirs / "x.dcm"
    dicom.write_bytes(make_dx())
    monkeypatch.delenv("PIXL_HASH_KEY", raising=False)
    result = run_pixl("allowlist", "preview", "--project", "test-project", str(dicom))
    assert result.returncode == 2
    assert "PIXL_HASH_KEY" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("PIXL_HASH_KEY", "a-test-secret-of-32-characters!!")
    # The console's width is fixed when it is made (from COLUMNS or the terminal, which a test
    # worker may not have): widen it so no column is cut.
    monkeypatch.setattr(output.console, "width", 200)
    shown = runner.invoke(
        app,
        ["allowlist", "preview", "--project", "test-project", str(dicom)],
        env={"COLUMNS": "200"},
    )
    assert shown.exit_code == 0, shown.stdout
    assert "InstitutionName" in shown.stdout and REMOVED in shown.stdout
    refused = dirs / "ct.dcm"
    refused.write_bytes(make_dx("CT"))
    result = runner.invoke(app, ["allowlist", "preview", "--project", "test-project", str(refused)])
    assert "refused: modality_not_allowed" in result.stdout
