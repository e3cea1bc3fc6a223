"""The secondary archive's configuration (PIXL_SECONDARY_*), the project key for several
studies behind one accession number, and the archive scopes of fetch_control."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from pixl_core.config.projects import InvalidProjectError, load_project_file
from pixl_core.db import fetch_control
from pixl_core.db.fetch_control import Control, HoursWindow
from pixl_core.errors import PixlConfigError
from pixl_imaging.archives import ArchivePeer, secondary_from_env

REPO = Path(__file__).resolve().parents[2]


def test_no_secondary_archive_unless_its_ae_title_is_set():
    assert secondary_from_env({}) is None
    assert secondary_from_env({"PIXL_SECONDARY_HOST": "pacs"}) is None


def test_secondary_archive_is_known_by_ae_title_host_and_port_with_the_vnas_rights_only():
    peer = secondary_from_env(
        {
            "PIXL_SECONDARY_AET": "PACS",
            "PIXL_SECONDARY_HOST": "10.0.0.5",
            "PIXL_SECONDARY_PORT": "11112",
        }
    )
    assert peer == ArchivePeer("PACS", "10.0.0.5", 11112)
    modality = peer.modality()
    allowed = {key for key, value in modality.items() if key.startswith("Allow") and value}
    assert allowed == {"AllowStore", "AllowEcho"}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PIXL_SECONDARY_AET": "A" * 17, "PIXL_SECONDARY_HOST": "h"}, "PIXL_SECONDARY_AET"),
        ({"PIXL_SECONDARY_AET": "PA\\CS", "PIXL_SECONDARY_HOST": "h"}, "PIXL_SECONDARY_AET"),
        ({"PIXL_SECONDARY_AET": "PACS"}, "PIXL_SECONDARY_HOST"),
        ({"PIXL_SECONDARY_AET": "PACS", "PIXL_SECONDARY_HOST": "h; rm"}, "PIXL_SECONDARY_HOST"),
        (
            {"PIXL_SECONDARY_AET": "PACS", "PIXL_SECONDARY_HOST": "h", "PIXL_SECONDARY_PORT": "0"},
            "PIXL_SECONDARY_PORT",
        ),
    ],
)
def test_a_malformed_secondary_setting_is_one_line_naming_the_variable(env, variable):
    with pytest.raises(PixlConfigError) as raised:
        secondary_from_env(env)
    assert str(raised.value).startswith(variable) and "\n" not in str(raised.value)


def test_several_studies_policy_defaults_to_export_and_is_checked(tmp_path: Path):
    text = (REPO / "projects" / "chest-xray.yaml").read_text()
    assert "multiple_studies_per_accession: export" in text
    path = tmp_path / "default.yaml"
    path.write_text(text.replace("multiple_studies_per_accession: export\n", ""))
    assert load_project_file(path).multiple_studies_per_accession == "export"
    assert (
        load_project_file(REPO / "projects" / "chest-xray.yaml").multiple_studies_per_accession
        == "export"
    )
    path = tmp_path / "refusing.yaml"
    path.write_text(
        text.replace(
            "multiple_studies_per_accession: export", "multiple_studies_per_accession: refuse"
        )
    )
    assert load_project_file(path).multiple_studies_per_accession == "refuse"
    path.write_text(
        text.replace(
            "multiple_studies_per_accession: export", "multiple_studies_per_accession: merge"
        )
    )
    with pytest.raises(InvalidProjectError, match="must be one of export, refuse"):
        load_project_file(path)


def test_an_archive_row_holds_back_the_archive_only_never_a_project():
    window = HoursWindow.parse("20:00-07:00")
    rows = {"archive:secondary": Control("archive:secondary", hours=window)}
    noon = datetime(2026, 12, 1, 12, 0)  # a Tuesday
    gate = fetch_control.gate(rows, noon)
    assert gate.everything is None and gate.projects == {}
    hold = fetch_control.archive_gate(rows, "secondary", noon)
    assert hold is not None and hold.reason == "outside_hours"
    assert hold.until == datetime(2026, 12, 1, 20, 0)
    assert fetch_control.archive_gate(rows, "secondary", datetime(2026, 12, 1, 23, 0)) is None
