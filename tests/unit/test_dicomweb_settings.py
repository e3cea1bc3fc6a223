"""A project's ``destination: dicomweb:``: parsed and checked key by key, secrets from the env.

Images go by STOW-RS to the DICOMweb service; the tabular files (radiology parquet, OMOP public
files) still need an ``ftps:`` block beside it. Every bad value is one line naming the file and
the key; a password or token in the file is refused naming the variables to use instead.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from pixl_core.config.projects import DicomwebDestination, Project, load_project_file
from pixl_core.errors import PixlConfigError
from pixl_core.transport.dicomweb import DicomwebSettings
from pixl_core.transport.ftps import FtpsSettings

SLUG = "cxr-research"
WEB = {"url": "https://research.example.org/dicom-web", "auth": "basic", "user": "pixl"}
FTPS = {"host": "dsh.example.org", "user": "pixl"}


@pytest.fixture(autouse=True)
def repo_allowlists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIXL_ALLOWLISTS_DIR", raising=False)


def project_file(tmp_path: Path, destination: Any) -> Project:
    raw: dict[str, Any] = {"modalities": ["DX"], "allowlists": ["base.yaml", "xray.yaml"]}
    if destination is not None:
        raw["destination"] = destination
    path = tmp_path / f"{SLUG}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_project_file(path)


def test_dicomweb_beside_ftps_reads_every_key(tmp_path: Path) -> None:
    web = {**WEB, "ca_file": "/etc/pixl/research-ca.pem", "batch_size": 7}
    project = project_file(tmp_path, {"dicomweb": web, "ftps": FTPS})
    assert project.dicomweb == DicomwebDestination(
        url="https://research.example.org/dicom-web",
        auth="basic",
        user="pixl",
        ca_file="/etc/pixl/research-ca.pem",
        batch_size=7,
    )
    assert project.destination is not None and project.destination.host == "dsh.example.org"


def test_ftps_only_project_has_no_dicomweb(tmp_path: Path) -> None:
    project = project_file(tmp_path, {"ftps": FTPS})
    assert project.dicomweb is None and project.destination is not None


def test_trailing_slash_of_the_url_is_dropped_and_defaults_apply(tmp_path: Path) -> None:
    web = {"url": "https://h.example/dicom-web/", "auth": "bearer"}
    project = project_file(tmp_path, {"dicomweb": web})
    assert project.dicomweb == DicomwebDestination(url="https://h.example/dicom-web", auth="bearer")


def test_dicomweb_only_project_refuses_file_export_naming_the_fix(tmp_path: Path) -> None:
    project = project_file(tmp_path, {"dicomweb": WEB})
    assert project.destination is None
    with pytest.raises(PixlConfigError) as caught:
        FtpsSettings.for_project(project, {"PIXL_DSH_PASSWORD": "x"})
    message = str(caught.value)
    assert "dicomweb:" in message and "ftps:" in message and "\n" not in message


@pytest.mark.parametrize(
    ("destination", "words"),
    [
        ({"sftp": {}}, ("'ftps:'", "'dicomweb:'")),
        ({"dicomweb": "https://h/dicom-web"}, ("'destination: dicomweb:' must be a mapping",)),
        ({"dicomweb": {**WEB, "url": "http://h/dicom-web"}}, ("https://", "'dicomweb: url:'")),
        ({"dicomweb": {**WEB, "url": "https://u:p@h/dw"}}, ("'dicomweb: url:'",)),
        ({"dicomweb": {**WEB, "auth": "digest"}}, ("basic, bearer, none",)),
        ({"dicomweb": {"url": WEB["url"], "auth": "basic"}}, ("needs 'user:'",)),
        ({"dicomweb": {**WEB, "auth": "bearer"}}, ("only for auth: basic",)),
        ({"dicomweb": {**WEB, "batch_size": 0}}, ("'dicomweb: batch_size:'", "1-500")),
        ({"dicomweb": {**WEB, "batch_size": True}}, ("'dicomweb: batch_size:'",)),
        ({"dicomweb": {**WEB, "ca_file": 3}}, ("'dicomweb: ca_file:'",)),
        ({"dicomweb": {**WEB, "verify": False}}, ("unknown dicomweb key 'verify'",)),
        (
            {"dicomweb": {**WEB, "password": "hunter2"}},
            ("PIXL_DICOMWEB_PASSWORD__CXR_RESEARCH", "PIXL_DICOMWEB_PASSWORD"),
        ),
        (
            {"dicomweb": {**WEB, "token": "hunter2"}},
            ("PIXL_DICOMWEB_TOKEN__CXR_RESEARCH", "PIXL_DICOMWEB_TOKEN"),
        ),
    ],
)
def test_bad_dicomweb_destination_is_one_line_naming_file_and_key(
    tmp_path: Path, destination: dict[str, Any], words: tuple[str, ...]
) -> None:
    with pytest.raises(PixlConfigError) as caught:
        project_file(tmp_path, destination)
    message = str(caught.value)
    assert message.startswith(f"projects/{SLUG}.yaml: ") and "\n" not in message
    for word in words:
        assert word in message
    assert "hunter2" not in message


# --- secrets from the environment ------------------------------------------------------------


def test_per_project_password_wins_over_the_global_one(tmp_path: Path) -> None:
    project = project_file(tmp_path, {"dicomweb": WEB})
    own, shared = secrets.token_hex(8), secrets.token_hex(8)  # drawn per run
    env = {"PIXL_DICOMWEB_PASSWORD__CXR_RESEARCH": own, "PIXL_DICOMWEB_PASSWORD": shared}
    assert DicomwebSettings.for_project(project, env).password == own
    fallback = DicomwebSettings.for_project(project, {"PIXL_DICOMWEB_PASSWORD": shared})
    assert fallback.password == shared
    assert shared not in repr(fallback)


def test_bearer_token_from_the_environment(tmp_path: Path) -> None:
    project = project_file(tmp_path, {"dicomweb": {"url": WEB["url"], "auth": "bearer"}})
    settings = DicomwebSettings.for_project(project, {"PIXL_DICOMWEB_TOKEN__CXR_RESEARCH": "t0k"})
    assert settings.token == "t0k" and settings.password is None


@pytest.mark.parametrize(
    ("auth", "variables"),
    [
        ("basic", ("PIXL_DICOMWEB_PASSWORD__CXR_RESEARCH", "PIXL_DICOMWEB_PASSWORD")),
        ("bearer", ("PIXL_DICOMWEB_TOKEN__CXR_RESEARCH", "PIXL_DICOMWEB_TOKEN")),
    ],
)
def test_missing_secret_names_both_variables(
    tmp_path: Path, auth: str, variables: tuple[str, ...]
) -> None:
    web = {**WEB, "auth": auth} if auth == "basic" else {"url": WEB["url"], "auth": auth}
    project = project_file(tmp_path, {"dicomweb": web})
    with pytest.raises(PixlConfigError) as caught:
        DicomwebSettings.for_project(project, {})
    assert caught.value.code == "dicomweb_secret_missing"
    for variable in variables:
        assert variable in str(caught.value)


def test_auth_none_needs_no_secret(tmp_path: Path) -> None:
    project = project_file(tmp_path, {"dicomweb": {"url": WEB["url"], "auth": "none"}})
    settings = DicomwebSettings.for_project(project, {})
    assert settings.password is None and settings.token is None


def test_ca_file_per_project_then_file_then_global(tmp_path: Path) -> None:
    own, in_file, shared = (tmp_path / name for name in ("own.pem", "file.pem", "global.pem"))
    for path in (own, in_file, shared):
        path.write_text("pem")
    project = project_file(tmp_path, {"dicomweb": {**WEB, "ca_file": str(in_file)}})
    env = {"PIXL_DICOMWEB_PASSWORD": "p", "PIXL_DICOMWEB_CA_FILE": str(shared)}
    own_env = {**env, "PIXL_DICOMWEB_CA_FILE__CXR_RESEARCH": str(own)}
    assert DicomwebSettings.for_project(project, own_env).ca_file == str(own)
    assert DicomwebSettings.for_project(project, env).ca_file == str(in_file)
    bare = project_file(tmp_path, {"dicomweb": WEB})
    assert DicomwebSettings.for_project(bare, env).ca_file == str(shared)
    with pytest.raises(PixlConfigError) as caught:
        DicomwebSettings.for_project(
            bare, {**env, "PIXL_DICOMWEB_CA_FILE": str(tmp_path / "nothing.pem")}
        )
    assert caught.value.code == "dicomweb_ca_file_missing"


def test_committed_research_project_sends_images_by_dicomweb_and_files_by_ftps() -> None:
    path = Path(__file__).resolve().parents[2] / "projects" / "chest-xray-research.yaml"
    project = load_project_file(path)
    assert project.dicomweb is not None and project.dicomweb.url.startswith("https://")
    assert project.destination is not None
