"""Finding 7: what the demo and test stacks write is private, and each process gets only its own.

Before issue 8 the rendered ``supervisord.conf`` was mode 644 and held all three secrets, the
data folders were 755, Postgres trusted every local connection, and every process but Postgres
ran as root with every secret in its environment; each test below failed on that code. The
last one covers finding 2's last sentence: each Orthanc runs under a memory limit.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import psycopg2
import pytest

from stack import local_stack
from stack.driver import Stack
from stack.launch import read_env_file
from stack.settings import REPO_DIR
from tests.security.deploy_probes import (
    address_space_limit,
    is_root,
    process_environment,
    process_user,
)

pytestmark = pytest.mark.system

ORTHANCS = ("vna", "secondary", "orthanc-raw", "orthanc-anon", "orthanc-dicomweb")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_rendered_files_and_folders_are_private(stack: Stack):
    settings = stack.settings
    private_files = [
        settings.run_dir / "supervisord.conf",
        settings.root / "secrets.env",
        settings.cli_env_file,
        *settings.secrets_dir.glob("*.env"),
        *settings.run_dir.glob("orthanc-*.json"),
    ]
    assert len(private_files) > 5
    for path in private_files:
        assert _mode(path) == 0o600, f"{path} is {oct(_mode(path))}"
    for folder in (
        settings.logs_dir,
        settings.dsh_dir,
        settings.staging_dir,
        *(p for p in settings.data_dir.iterdir() if p.is_dir()),
    ):
        assert _mode(folder) == 0o700, f"{folder} is {oct(_mode(folder))}"
    # The root, data and run folders only let the service users through (no listing).
    for folder in (settings.root, settings.data_dir, settings.run_dir, settings.secrets_dir):
        assert _mode(folder) & 0o066 == 0, f"{folder} is {oct(_mode(folder))}"


def _readable_by_others(path: Path) -> bool:
    """Whether a user other than the owner (and not in its group) can read ``path``: the file
    is world-readable and every folder above it world-traversable."""
    if not _mode(path) & 0o004:
        return False
    return all(_mode(parent) & 0o001 for parent in path.parents)


def test_no_secret_is_readable_by_other_users(stack: Stack):
    """Nothing under the data, log, run, DSH and staging folders can be read by another local
    user, except the three stand-ins' public certificates (the CA files the clients load)."""
    settings = stack.settings
    public = {
        settings.run_dir / "dsh-cert" / "dsh-ftps-cert.pem",
        settings.cogstack_ca_file,
        settings.dicomweb_ca_file,
    }
    for top in (
        settings.data_dir,
        settings.logs_dir,
        settings.run_dir,
        settings.dsh_dir,
        settings.staging_dir,
    ):
        for path in top.rglob("*"):
            if path.is_symlink() or path.is_socket() or path in public:
                continue
            if path.is_file():
                assert not _readable_by_others(path), f"{path} is {oct(_mode(path))}"


def test_supervisord_conf_holds_no_secret(stack: Stack):
    text = (stack.settings.run_dir / "supervisord.conf").read_text()
    for name, value in stack.settings.secret_environment().items():
        assert value not in text, f"{name} is in supervisord.conf"


def test_postgres_refuses_a_connection_without_the_password(stack: Stack):
    settings = stack.settings
    port = settings.ports["postgres"]
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(host="127.0.0.1", port=port, user="pixl", dbname="pixl", connect_timeout=5)
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(
            host="127.0.0.1",
            port=port,
            user="pixl",
            password="not-the-password",
            dbname="pixl",
            connect_timeout=5,
        )
    # The unix socket (in the 700 data folder) asks for it too.
    socket_dir = str(settings.data_dir / "pg")
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(host=socket_dir, port=port, user="pixl", dbname="pixl")
    psycopg2.connect(settings.db_url, connect_timeout=5).close()


def test_each_process_runs_as_its_own_user_with_its_own_secrets(stack: Stack):
    """Postgres as postgres and the Orthancs as orthanc (Debian's users) when the stack runs as
    root; and no process holds a secret it does not use. In a clone the orthanc user cannot
    reach (``d=$(mktemp -d); git clone . $d``) the Orthancs run as root, and the stack says so
    (``local_stack.orthanc_user``)."""
    secrets = stack.settings.secrets
    orthanc = local_stack.orthanc_user() or "root"
    expected = {"postgres": "postgres", **dict.fromkeys(ORTHANCS, orthanc)}
    for name, user in expected.items():
        pid = stack.process_pid(name)
        assert pid, f"{name} is not running"
        if is_root():
            assert process_user(pid) == user, name
    for name in ("postgres", "vna", "secondary", "cogstack", "dicomweb-tls"):
        env = process_environment(stack.process_pid(name))
        assert not {k for k, v in env.items() if v in secrets.values()}, name
    raw = process_environment(stack.process_pid("orthanc-raw"))
    anon = process_environment(stack.process_pid("orthanc-anon"))
    assert "PIXL_DSH_PASSWORD" not in raw and "PIXL_EHR_TOKEN" not in raw
    assert "PIXL_ORTHANC_RAW_PASSWORD" not in anon and "PIXL_EHR_TOKEN" not in anon
    assert raw["PIXL_HASH_KEY"] == secrets["PIXL_HASH_KEY"] == anon["PIXL_HASH_KEY"]


def test_the_cli_env_file_is_all_the_cli_needs(stack: Stack):
    """``.demo/env`` (here ``<root>/env``): `pixl status` runs with nothing else set."""
    env_file = stack.settings.cli_env_file
    command = f"set -a; . {env_file}; set +a; exec {REPO_DIR / '.venv/bin/pixl'} status --json"
    result = subprocess.run(
        ["env", "-i", f"PATH={os.environ['PATH']}", "bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-500:]
    assert isinstance(json.loads(result.stdout), dict)
    names = set(read_env_file(env_file))
    for needed in ("PIXL_DB_URL", "PIXL_HASH_KEY", "PIXL_EHR_URL", "PIXL_EHR_TOKEN"):
        assert needed in names, needed


def test_each_orthanc_has_a_memory_limit(stack: Stack):
    limit = stack.settings.orthanc_memory_mb * 1024 * 1024
    for name in ORTHANCS:
        assert address_space_limit(stack.process_pid(name)) == limit, name
