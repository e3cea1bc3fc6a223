"""Finding 11: report text never reaches Cogstack in clear unless a setting says so, loudly.

The stack's Cogstack stand-in speaks HTTPS only and the EHR module verifies it against the
stand-in's certificate. An EHR module pointed at ``http://`` (a downgrade, or a typo in
``PIXL_COGSTACK_URL``) refuses to start its worker and says why, and with the explicit
``PIXL_COGSTACK_ALLOW_PLAIN_HTTP=true`` it works but logs a warning. Before issue 8 the stand-in
spoke plain HTTP and the EHR module took any ``http://`` URL silently, so these tests failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import requests
from psycopg2 import sql

from pixl_core.db.connection import migrate
from stack.driver import Stack
from stack.ports import free_port
from stack.settings import REPO_DIR
from tests.fixtures.postgres import with_database

pytestmark = pytest.mark.system


def test_the_stacks_cogstack_speaks_tls_only(stack: Stack):
    settings = stack.settings
    assert settings.environment()["PIXL_COGSTACK_URL"].startswith("https://127.0.0.1:")
    https = settings.url("cogstack") + "/api/health"
    ca_file = str(settings.cogstack_ca_file)
    assert requests.get(https, verify=ca_file, timeout=10).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(https, timeout=10)  # not signed by a CA the system trusts
    plain = https.replace("https://", "http://")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(plain, timeout=10)


@pytest.fixture
def empty_db(stack: Stack) -> Iterator[str]:
    """A fresh, migrated database on the stack's server: an EHR module started here must not
    claim (and fail) the reports of the other tests."""
    name = f"pixl_security_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(stack.settings.db_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(stack.settings.db_url, name)
    migrate(url)
    try:
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def _run_ehr(stack: Stack, tmp_path: Path, db_url: str, **env: str) -> tuple[dict, str]:
    """Start an EHR module of the stack's own on a free port, on ``db_url``, with ``env``
    changed; return its worker status and its log."""
    port = free_port()
    token = stack.settings.secrets["PIXL_EHR_TOKEN"]
    log = tmp_path / "ehr.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "pixl_ehr.service", "--port", str(port)],
            cwd=REPO_DIR,
            env={
                **os.environ,
                **stack.settings.environment(),
                "PIXL_DB_URL": db_url,
                "PIXL_EMAP_URL": db_url,
                **env,
            },
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status = requests.get(
                    f"http://127.0.0.1:{port}/status",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=5,
                ).json()
                if status["worker"]["running"] or status["worker"]["error"]:
                    break
            except requests.RequestException:
                pass
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return status["worker"], log.read_text(errors="replace")


def test_plain_http_cogstack_is_refused(stack: Stack, tmp_path: Path, empty_db: str):
    cogstack_port = stack.settings.ports["cogstack_http"]
    worker, log = _run_ehr(
        stack, tmp_path, empty_db, PIXL_COGSTACK_URL=f"http://127.0.0.1:{cogstack_port}"
    )
    assert worker["running"] is False
    assert "PIXL_COGSTACK_URL is http://" in worker["error"]
    assert "PIXL_COGSTACK_ALLOW_PLAIN_HTTP" in log


def test_plain_http_allowed_explicitly_is_logged_loudly(
    stack: Stack, tmp_path: Path, empty_db: str
):
    worker, log = _run_ehr(
        stack,
        tmp_path,
        empty_db,
        PIXL_COGSTACK_URL=f"http://127.0.0.1:{free_port()}",
        PIXL_COGSTACK_ALLOW_PLAIN_HTTP="true",
    )
    assert worker["running"] is True
    warning = next(line for line in log.splitlines() if "TLS OFF" in line)
    assert "WARNING" in warning and "unencrypted" in warning
