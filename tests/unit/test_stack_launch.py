"""The local stack's secrets never reach supervisord.conf (finding 7), without starting it.

``supervisor_config`` is rendered for a stack in a temporary folder (nothing is started): the
configuration must hold no secret, every program with secrets must read them through
``stack.launch`` from its own mode-600 file, and each Orthanc must get a memory limit.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stack import local_stack
from stack.launch import EnvFileError, read_env_file, write_env_file
from stack.postgres import cluster_url
from stack.settings import StackSettings

REPO = Path(__file__).resolve().parents[2]


def test_env_files_round_trip_any_value_and_are_private(tmp_path):
    values = {"PLAIN": "abc", "SPACES": "a b", "QUOTES": 'it\'s "x"', "DOLLAR": "$HOME;`x`"}
    path = tmp_path / "secrets.env"
    write_env_file(path, values)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_env_file(path) == values
    # The same file is a POSIX shell file: `set -a; . FILE` gives the same values.
    shown = subprocess.run(
        ["sh", "-c", f'set -a; . "{path}"; printf %s "$DOLLAR|$QUOTES"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == '$HOME;`x`|it\'s "x"'


def test_a_malformed_env_file_names_its_line(tmp_path):
    path = tmp_path / "bad.env"
    path.write_text("GOOD=1\nthis is not an assignment\n")
    with pytest.raises(EnvFileError, match=r"bad.env:2"):
        read_env_file(path)


def test_the_launcher_sets_env_and_memory_limit_then_execs(tmp_path):
    env_file = tmp_path / "program.env"
    value = f"{secrets.token_hex(6)} value"  # drawn per run, with a space to quote
    write_env_file(env_file, {"PIXL_SECRET_FOR_TEST": value})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stack.launch",
            "--env-file",
            str(env_file),
            "--memory-mb",
            "512",
            "--",
            "sh",
            "-c",
            'echo "$$ $PIXL_SECRET_FOR_TEST"; ulimit -v',
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    first, limit = result.stdout.splitlines()
    assert first.split(" ", 1)[1] == value
    assert limit == str(512 * 1024)  # ulimit -v counts KiB


def test_the_launcher_fails_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "stack.launch", "--env-file", str(tmp_path / "no"), "--", "true"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def rendered(tmp_path) -> tuple[StackSettings, str]:
    root = tmp_path / "stack"
    root.mkdir()
    root.chmod(0o755)
    settings = StackSettings.for_tests(root)
    local_stack.prepare_folders(settings)
    return settings, local_stack.supervisor_config(settings)


def test_supervisord_conf_holds_no_secret(tmp_path):
    root = tmp_path / "stack"
    root.mkdir()
    settings = StackSettings.for_tests(root)
    # A test's own secret (a per-project DSH password) is kept out of it too.
    settings.extra_env = {"PIXL_DSH_PASSWORD__RETRY_FTPS": secrets.token_hex(12)}
    local_stack.prepare_folders(settings)
    conf = local_stack.supervisor_config(settings)
    held = settings.secret_environment()
    assert "PIXL_DSH_PASSWORD__RETRY_FTPS" in held
    assert set(held) >= {"PIXL_HASH_KEY", "PIXL_DB_URL", "PIXL_EHR_TOKEN", "PIXL_DB_PASSWORD"}
    for name, value in held.items():
        assert value not in conf, name


def test_each_program_reads_only_its_own_secrets(rendered):
    settings, conf = rendered
    files = {path.stem: read_env_file(path) for path in settings.secrets_dir.glob("*.env")}
    assert set(files) == {"orthanc-raw", "orthanc-anon", "orthanc-dicomweb", "dsh", "ehr"}
    for name in files:
        path = settings.secrets_dir / f"{name}.env"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert f"--env-file {path}" in conf, name
    assert set(files["dsh"]) == {"PIXL_DSH_PASSWORD"}
    assert set(files["orthanc-dicomweb"]) == {"PIXL_DICOMWEB_PASSWORD"}
    assert "PIXL_DICOMWEB_PASSWORD" not in files["orthanc-raw"]
    assert (
        files["orthanc-anon"]["PIXL_DICOMWEB_PASSWORD"]
        == (files["orthanc-dicomweb"]["PIXL_DICOMWEB_PASSWORD"])
    )
    assert "PIXL_DSH_PASSWORD" not in files["orthanc-raw"]
    assert "PIXL_ORTHANC_RAW_PASSWORD" not in files["orthanc-anon"]
    assert (
        files["orthanc-raw"]["PIXL_ORTHANC_PASSWORD"]
        == files["orthanc-anon"]["PIXL_ORTHANC_PASSWORD"]
    )


def test_each_orthanc_gets_a_memory_limit_and_its_user(rendered):
    settings, conf = rendered
    for program in ("vna", "orthanc-raw", "orthanc-anon", "orthanc-dicomweb"):
        section = conf.split(f"[program:{program}]", 1)[1].split("[program:", 1)[0]
        command = next(line for line in section.splitlines() if line.startswith("command="))
        assert f"--memory-mb {settings.orthanc_memory_mb}" in command, program
        if os.geteuid() == 0 and local_stack.orthanc_user():
            assert "--user orthanc" in command, program
    assert "umask=077" in conf


def test_the_database_url_carries_the_password_quoted():
    assert cluster_url(5432, password="a/b@c") == "postgresql://pixl:a%2Fb%40c@127.0.0.1:5432/pixl"
    assert cluster_url(5432) == "postgresql://pixl@127.0.0.1:5432/pixl"


def test_a_clone_the_orthanc_user_cannot_read_runs_the_orthancs_as_root(monkeypatch, capsys):
    """``d=$(mktemp -d); git clone . $d`` as root: the orthanc user cannot list the clone, so the
    Orthancs run as the invoking user and one line says why, instead of never answering."""
    monkeypatch.setattr(local_stack, "_is_root", lambda: True)
    monkeypatch.setattr(local_stack, "_user_exists", lambda name: True)
    monkeypatch.setattr(local_stack, "_unreadable_for", lambda user: Path("/tmp/private-clone"))
    local_stack.orthanc_user.cache_clear()
    try:
        assert local_stack.orthanc_user() is None
        message = capsys.readouterr().err
        assert "cannot read /tmp/private-clone" in message and "chmod o+rx" in message
        monkeypatch.setattr(local_stack, "_unreadable_for", lambda user: None)
        local_stack.orthanc_user.cache_clear()
        assert local_stack.orthanc_user() == "orthanc"
    finally:
        local_stack.orthanc_user.cache_clear()
