"""The stack's Postgres asks for a password, keeps it in step with the stack's secret, and
converts a cluster made with trust authentication before issue 8 (finding 7)."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest

from stack.ports import free_port
from stack.postgres import cluster_password, ensure_initialised, start_cluster, stop_cluster


@pytest.fixture
def data_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="pixl-pg-auth-"))
    root.chmod(0o711)  # the postgres user must reach the data folder inside
    data = root / "data"
    try:
        yield data
    finally:
        stop_cluster(data)
        shutil.rmtree(root, ignore_errors=True)


def _connects(port: int, password: str | None) -> bool:
    try:
        psycopg2.connect(
            host="127.0.0.1",
            port=port,
            user="pixl",
            password=password,
            dbname="pixl",
            connect_timeout=5,
        ).close()
    except psycopg2.OperationalError:
        return False
    return True


def test_the_password_follows_the_stack_and_nothing_else_gets_in(data_dir: Path):
    first, second = secrets.token_hex(8), secrets.token_hex(8)  # drawn per run
    port = free_port()
    url = start_cluster(data_dir, port, data_dir.with_suffix(".log"), password=first)
    assert urlsplit(url).password == first
    assert _connects(port, first)
    assert not _connects(port, None) and not _connects(port, "wrong")
    stop_cluster(data_dir)
    # secrets.env regenerated: the next start sets the new password.
    start_cluster(data_dir, port, data_dir.with_suffix(".log"), password=second)
    assert _connects(port, second) and not _connects(port, first)
    assert cluster_password(data_dir) == second


def test_a_trust_cluster_from_before_is_converted(data_dir: Path):
    port = free_port()
    start_cluster(data_dir, port, data_dir.with_suffix(".log"), password="p" * 20)
    stop_cluster(data_dir)
    hba = data_dir / "pg_hba.conf"
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    ensure_initialised(data_dir, "p" * 20)
    assert "trust" not in hba.read_text()
    start_cluster(data_dir, port, data_dir.with_suffix(".log"))
    assert not _connects(port, None) and _connects(port, "p" * 20)
