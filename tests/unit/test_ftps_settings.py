"""Where a project's files go: the project file's ``destination:`` plus secrets from the env.

``FtpsSettings.for_project`` is the one place FTPS settings are built (orthanc-anon's exporter
and the EHR export both use it). Precedence under test: the per-project variable
(``PIXL_DSH_PASSWORD__<SLUG>``) wins over the global one, the global one is the fallback, and a
missing secret is one line naming both variables, never the password.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from pixl_core.config.projects import Destination, Project, load_project_file
from pixl_core.errors import PixlConfigError
from pixl_core.transport.ftps import FtpsSettings, project_variable

SLUG = "chest-xray-study"
OWN_PASSWORD = "PIXL_DSH_PASSWORD__CHEST_XRAY_STUDY"
# Drawn per run: no password is written in the repository.
DSH_SECRET, OWN_SECRET, GLOBAL_SECRET, NOT_MINE = (secrets.token_hex(8) for _ in range(4))
DESTINATION = {"host": "dsh.example.org", "port": 2990, "user": "pixl", "root": "/incoming"}


@pytest.fixture(autouse=True)
def repo_allowlists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIXL_ALLOWLISTS_DIR", raising=False)


def project_file(tmp_path: Path, ftps: dict[str, Any] | None, slug: str = SLUG) -> Project:
    raw: dict[str, Any] = {"modalities": ["DX"], "allowlists": ["base.yaml", "xray.yaml"]}
    if ftps is not None:
        raw["destination"] = {"ftps": ftps}
    path = tmp_path / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_project_file(path)


# --- the project file's destination --------------------------------------------------------


def test_destination_reads_every_key(tmp_path: Path) -> None:
    ftps = {**DESTINATION, "implicit_tls": True, "ca_file": "/etc/pixl/ca.pem", "verify": False}
    assert project_file(tmp_path, ftps).destination == Destination(
        host="dsh.example.org",
        user="pixl",
        port=2990,
        root="/incoming",
        implicit_tls=True,
        ca_file="/etc/pixl/ca.pem",
        verify=False,
    )


def test_destination_port_defaults_by_tls_mode(tmp_path: Path) -> None:
    base = {"host": "h", "user": "u"}
    explicit = project_file(tmp_path, base).destination
    implicit = project_file(tmp_path, {**base, "implicit_tls": True}).destination
    assert explicit is not None and implicit is not None
    assert (explicit.port, explicit.root) == (21, "/")
    assert implicit.port == 990


def test_project_without_destination_loads_but_names_none(tmp_path: Path) -> None:
    """``pixl anonymise`` and ``allowlist check`` need no destination; exports refuse (below)."""
    assert project_file(tmp_path, None).destination is None


@pytest.mark.parametrize(
    ("ftps", "words"),
    [
        ({"user": "u"}, ("needs 'host:'",)),
        ({"host": "h"}, ("needs 'user:'",)),
        ({"host": "h", "user": "u", "port": "twenty-one"}, ("'port:'", "1-65535")),
        ({"host": "h", "user": "u", "port": 70000}, ("'port:'",)),
        ({"host": "h", "user": "u", "verify": "maybe"}, ("'verify:'", "true or false")),
        ({"host": "h", "user": "u", "implicit_tls": "yes"}, ("'implicit_tls:'",)),
        ({"host": "h", "user": "u", "root": "incoming"}, ("'root:'", "absolute")),
        ({"host": "h", "user": "u", "ca_file": 5}, ("'ca_file:'",)),
        ({"host": "h", "user": "u", "password": "hunter2"}, (OWN_PASSWORD, "PIXL_DSH_PASSWORD")),
    ],
)
def test_bad_destination_is_one_line_naming_file_and_key(
    tmp_path: Path, ftps: dict[str, Any], words: tuple[str, ...]
) -> None:
    with pytest.raises(PixlConfigError) as caught:
        project_file(tmp_path, ftps)
    message = str(caught.value)
    assert message.startswith(f"projects/{SLUG}.yaml: ") and "\n" not in message
    for word in words:
        assert word in message
    assert "hunter2" not in message


# --- secrets and tuning from the environment -----------------------------------------------


def test_project_variable_is_the_slug_upper_cased_with_underscores() -> None:
    assert project_variable("PIXL_DSH_PASSWORD", "chest-xray") == "PIXL_DSH_PASSWORD__CHEST_XRAY"


def test_settings_come_from_the_project_file_and_the_environment(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not parsed here")
    ftps = {**DESTINATION, "implicit_tls": True, "verify": True}
    environ = {
        "PIXL_DSH_PASSWORD": DSH_SECRET,
        "PIXL_DSH_CA_FILE": str(ca_file),
        "PIXL_DSH_TIMEOUT": "12.5",
        "PIXL_DSH_RETRIES": "5",
        "PIXL_DSH_BACKOFF_SECONDS": "0.5",
        # Where files go is the project file's alone: these are not read.
        "PIXL_DSH_HOST": "elsewhere.example.org",
        "PIXL_DSH_PORT": "21",
    }
    settings = FtpsSettings.for_project(project_file(tmp_path, ftps), environ)
    assert settings == FtpsSettings(
        "dsh.example.org",
        2990,
        "pixl",
        DSH_SECRET,
        "/incoming",
        implicit_tls=True,
        ca_file=str(ca_file),
        verify=True,
        timeout=12.5,
        retries=5,
        backoff_seconds=0.5,
    )
    assert DSH_SECRET not in repr(settings)


def test_per_project_password_wins_over_the_global_one(tmp_path: Path) -> None:
    project = project_file(tmp_path, DESTINATION)
    environ = {OWN_PASSWORD: OWN_SECRET, "PIXL_DSH_PASSWORD": GLOBAL_SECRET}
    assert FtpsSettings.for_project(project, environ).password == OWN_SECRET


def test_global_password_is_the_fallback(tmp_path: Path) -> None:
    project = project_file(tmp_path, DESTINATION)
    environ = {"PIXL_DSH_PASSWORD": GLOBAL_SECRET, "PIXL_DSH_PASSWORD__OTHER": NOT_MINE}
    assert FtpsSettings.for_project(project, environ).password == GLOBAL_SECRET


def test_an_empty_per_project_password_falls_back_to_the_global_one(tmp_path: Path) -> None:
    project = project_file(tmp_path, DESTINATION)
    environ = {OWN_PASSWORD: "", "PIXL_DSH_PASSWORD": GLOBAL_SECRET}
    assert FtpsSettings.for_project(project, environ).password == GLOBAL_SECRET


def test_missing_password_names_both_variables(tmp_path: Path) -> None:
    project = project_file(tmp_path, DESTINATION)
    with pytest.raises(PixlConfigError) as caught:
        FtpsSettings.for_project(project, {"PIXL_DSH_PASSWORD__OTHER": NOT_MINE})
    message = str(caught.value)
    assert OWN_PASSWORD in message and "PIXL_DSH_PASSWORD " in message
    assert "export" in message and "\n" not in message and NOT_MINE not in message


def test_project_without_destination_is_refused_naming_the_file_and_fix(tmp_path: Path) -> None:
    project = project_file(tmp_path, None)
    with pytest.raises(PixlConfigError) as caught:
        FtpsSettings.for_project(project, {"PIXL_DSH_PASSWORD": "p", "PIXL_DSH_HOST": "h"})
    message = str(caught.value)
    assert message.startswith(f"projects/{SLUG}.yaml has no 'destination:'")
    assert "ftps" in message and "host" in message and "\n" not in message


def test_ca_file_most_specific_first(tmp_path: Path) -> None:
    """Per-project variable, then the project file's ``ca_file:``, then the global variable."""
    own, in_file, shared = (tmp_path / f"{name}.pem" for name in ("own", "file", "global"))
    for path in (own, in_file, shared):
        path.write_text("not parsed here")
    with_file = project_file(tmp_path, {**DESTINATION, "ca_file": str(in_file)})
    (tmp_path / "other").mkdir()
    without_file = project_file(tmp_path / "other", DESTINATION)
    base = {"PIXL_DSH_PASSWORD": "p", "PIXL_DSH_CA_FILE": str(shared)}
    own_variable = "PIXL_DSH_CA_FILE__CHEST_XRAY_STUDY"
    assert FtpsSettings.for_project(with_file, {**base, own_variable: str(own)}).ca_file == str(own)
    assert FtpsSettings.for_project(with_file, base).ca_file == str(in_file)
    assert FtpsSettings.for_project(without_file, base).ca_file == str(shared)
    assert FtpsSettings.for_project(without_file, {"PIXL_DSH_PASSWORD": "p"}).ca_file is None


@pytest.mark.parametrize(
    ("where", "source"),
    [
        ("own", "PIXL_DSH_CA_FILE__CHEST_XRAY_STUDY"),
        ("file", f"projects/{SLUG}.yaml 'ca_file:'"),
        ("global", "PIXL_DSH_CA_FILE names"),
    ],
)
def test_missing_ca_file_names_where_it_was_given(tmp_path: Path, where: str, source: str) -> None:
    ftps = {**DESTINATION, "ca_file": "/nx/file.pem"} if where == "file" else DESTINATION
    environ = {"PIXL_DSH_PASSWORD": "p"}
    if where == "own":
        environ["PIXL_DSH_CA_FILE__CHEST_XRAY_STUDY"] = "/nx/own.pem"
    if where == "global":
        environ["PIXL_DSH_CA_FILE"] = "/nx/global.pem"
    with pytest.raises(PixlConfigError) as caught:
        FtpsSettings.for_project(project_file(tmp_path, ftps), environ)
    message = str(caught.value)
    assert message.startswith(source) and "names no file" in message and "\n" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PIXL_DSH_TIMEOUT", "soon"),
        ("PIXL_DSH_TIMEOUT", "0"),
        ("PIXL_DSH_RETRIES", "many"),
        ("PIXL_DSH_BACKOFF_SECONDS", "x"),
    ],
)
def test_bad_tuning_names_the_variable(tmp_path: Path, name: str, value: str) -> None:
    project = project_file(tmp_path, DESTINATION)
    with pytest.raises(PixlConfigError, match=name):
        FtpsSettings.for_project(project, {"PIXL_DSH_PASSWORD": "p", name: value})
