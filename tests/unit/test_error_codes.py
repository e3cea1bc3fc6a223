"""Every configuration error names itself in its code, which is what workers record."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pixl_core.config.allowlist import load_allowlist_file
from pixl_core.config.projects import load_project, load_project_file
from pixl_core.db.work_queue import check_error_code
from pixl_core.errors import (
    HashKeyError,
    InvalidAllowlistError,
    InvalidProjectError,
    PixlConfigError,
    UnknownProjectError,
)
from pixl_core.hashing import secret_from_env
from pixl_core.transport.ftps import FtpsError

CODE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


def test_missing_hash_key_is_hash_key_missing(monkeypatch):
    monkeypatch.delenv("PIXL_HASH_KEY", raising=False)
    with pytest.raises(HashKeyError) as raised:
        secret_from_env()
    assert raised.value.code == "hash_key_missing"


def test_short_hash_key_is_hash_key_short(monkeypatch):
    monkeypatch.setenv("PIXL_HASH_KEY", "s3cr3t")
    with pytest.raises(HashKeyError) as raised:
        secret_from_env()
    assert raised.value.code == "hash_key_short"
    assert "s3cr3t" not in str(raised.value)  # the key itself is never echoed


def test_invalid_allowlist_is_invalid_allowlist(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("attributes: [unclosed\n")
    with pytest.raises(InvalidAllowlistError) as raised:
        load_allowlist_file(path)
    assert raised.value.code == "invalid_allowlist"
    path.write_text("attributes:\n  - {attribute: PatientName, action: shred}\n")
    with pytest.raises(PixlConfigError) as raised:
        load_allowlist_file(path)
    assert raised.value.code == "invalid_allowlist"


def test_project_file_with_an_unknown_key_is_invalid_project(tmp_path: Path):
    path = tmp_path / "typo.yaml"
    path.write_text("name: Typo\nmodalities: [CR]\nallowlists: [base.yaml]\ncolour: blue\n")
    with pytest.raises(InvalidProjectError) as raised:
        load_project_file(path)
    assert raised.value.code == "invalid_project"


def test_project_whose_allowlist_is_broken_is_invalid_allowlist(tmp_path: Path, monkeypatch):
    (tmp_path / "broken.yaml").write_text("attributes: [unclosed\n")
    monkeypatch.setenv("PIXL_ALLOWLISTS_DIR", str(tmp_path))
    path = tmp_path / "p.yaml"
    path.write_text("name: P\nmodalities: [CR]\nallowlists: [broken.yaml]\n")
    with pytest.raises(PixlConfigError) as raised:
        load_project_file(path)
    assert raised.value.code == "invalid_allowlist"


def test_unknown_project_is_unknown_project():
    with pytest.raises(UnknownProjectError) as raised:
        load_project("no-such-project")
    assert raised.value.code == "unknown_project"


@pytest.mark.parametrize(
    "error",
    [
        HashKeyError("x"),
        HashKeyError("x", code="hash_key_short"),
        InvalidAllowlistError("x"),
        InvalidProjectError("x"),
        UnknownProjectError("x"),
        PixlConfigError("x"),
        FtpsError("dsh.example.org", 21, "STOR", "timed out"),
        FtpsError("dsh.example.org", 21, "TLS handshake", "refused"),
    ],
)
def test_every_code_fits_the_work_queue(error):
    assert CODE.match(error.code)
    check_error_code(error.code)  # the work queue would store it
